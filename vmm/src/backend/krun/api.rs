//! A thin seam over the `krun_*` calls we use: the [`KrunApi`] trait, one method per call, with
//! the real libkrun behind it ([`LibKrun`]) and a recording fake in the tests of
//! [`super::configure`].
//!
//! Every failure is a [`KrunError`] naming the call, its main argument and the errno, e.g.
//! `krun_set_root(/images/x) failed: No such file or directory (errno 2)`.

use std::path::Path;

use super::kernel_format::KernelFormat;

/// `krun_init_log`'s styles and options (libkrun's `KRUN_LOG_*`).
pub const LOG_STYLE_NEVER: u32 = 2;
/// Ignore `RUST_LOG` (our level wins).
pub const LOG_OPTION_NO_ENV: u32 = 1;
/// TSI feature flag: hijack the guest's AF_INET/AF_INET6 sockets (`KRUN_TSI_HIJACK_INET`).
pub const TSI_HIJACK_INET: u32 = 1 << 0;

/// A `krun_*` call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KrunError {
    /// The call returned `-errno`.
    #[error("{call} failed: {} (errno {errno})", errno_text(*.errno))]
    Call {
        /// The call and its main argument, e.g. `krun_set_root(/images/x)`.
        call: String,
        /// The errno libkrun returned (positive).
        errno: i32,
    },
    /// An argument cannot cross into C (a NUL byte, a non-UTF-8 path).
    #[error("{call}: {problem}")]
    Argument {
        /// The call and its main argument.
        call: String,
        /// What is wrong with it.
        problem: String,
    },
}

fn errno_text(errno: i32) -> &'static str {
    nix::errno::Errno::from_raw(errno).desc()
}

/// Turns a `krun_*` return value into a result: negative is `-errno`.
pub fn check(call: impl FnOnce() -> String, rc: i32) -> Result<i32, KrunError> {
    if rc < 0 {
        Err(KrunError::Call {
            call: call(),
            errno: rc.saturating_neg(),
        })
    } else {
        Ok(rc)
    }
}

/// The `krun_*` calls krunbox makes, one method each (a context id is libkrun's `ctx_id`).
///
/// Order matters to libkrun in two places, which [`super::configure`] respects:
/// `disable_implicit_init` before `set_root` (the root's virtual entries are fixed there), and
/// `disable_implicit_vsock` before `add_vsock`.
pub trait KrunApi {
    /// `krun_init_log(2, level, NEVER, NO_ENV)`: libkrun's log to stderr.
    fn init_log(&mut self, level: u32) -> Result<(), KrunError>;
    /// `krun_create_ctx()`.
    fn create_ctx(&mut self) -> Result<u32, KrunError>;
    /// `krun_set_vm_config(ctx, vcpus, ram_mib)`.
    fn set_vm_config(&mut self, ctx: u32, cpus: u8, memory_mib: u32) -> Result<(), KrunError>;
    /// `krun_disable_implicit_init(ctx)`: no libkrun init at /init.krun.
    fn disable_implicit_init(&mut self, ctx: u32) -> Result<(), KrunError>;
    /// `krun_set_root(ctx, path)`: the root filesystem (virtio-fs tag `/dev/root`).
    fn set_root(&mut self, ctx: u32, root: &Path) -> Result<(), KrunError>;
    /// `krun_fs_add_overlay_file(ctx, tag, path, data, len, mode, one_shot)`: a read-only file
    /// served from memory in a virtio-fs share. libkrun keeps the pointer for the VM's life,
    /// hence `'static`.
    fn fs_add_overlay_file(
        &mut self,
        ctx: u32,
        fs_tag: &str,
        path: &str,
        data: &'static [u8],
        mode: u32,
        one_shot: bool,
    ) -> Result<(), KrunError>;
    /// `krun_add_virtiofs3(ctx, tag, path, shm_size, read_only)`.
    fn add_virtiofs3(
        &mut self,
        ctx: u32,
        tag: &str,
        path: &Path,
        shm_size: u64,
        read_only: bool,
    ) -> Result<(), KrunError>;
    /// `krun_disable_implicit_vsock(ctx)`.
    fn disable_implicit_vsock(&mut self, ctx: u32) -> Result<(), KrunError>;
    /// `krun_add_vsock(ctx, tsi_features)`.
    fn add_vsock(&mut self, ctx: u32, tsi_features: u32) -> Result<(), KrunError>;
    /// `krun_add_net_unixstream(ctx, path, -1, mac, features = 0, flags = 0)`: a virtio-net
    /// card whose frames libkrun exchanges with the stream socket at `path` (4-byte length
    /// prefix, passt's framing), no offloads.
    fn add_net_unixstream(&mut self, ctx: u32, path: &Path, mac: [u8; 6]) -> Result<(), KrunError>;
    /// `krun_add_vsock_port2(ctx, port, path, listen)`: with `listen`, libkrun creates a Unix
    /// socket at `path`; each connection to it is a vsock connection to the guest's `port`.
    /// Without, the guest connects to host vsock `port` and libkrun connects each such
    /// connection to the existing Unix socket `path`.
    fn add_vsock_port2(
        &mut self,
        ctx: u32,
        port: u32,
        path: &Path,
        listen: bool,
    ) -> Result<(), KrunError>;
    /// `krun_set_kernel(ctx, path, format, initramfs, cmdline)`.
    fn set_kernel(
        &mut self,
        ctx: u32,
        path: &Path,
        format: KernelFormat,
        initramfs: Option<&Path>,
        cmdline: Option<&str>,
    ) -> Result<(), KrunError>;
    /// `krun_set_env(ctx, envp)`: libkrun appends each word, double-quoted, to the kernel
    /// command line.
    fn set_env(&mut self, ctx: u32, env: &[String]) -> Result<(), KrunError>;
    /// `krun_set_console_output(ctx, path)`.
    fn set_console_output(&mut self, ctx: u32, path: &Path) -> Result<(), KrunError>;
    /// `krun_start_enter(ctx)`: runs the VM; returns only if it could not start (libkrun exits
    /// the process itself when the guest powers off).
    fn start_enter(&mut self, ctx: u32) -> KrunError;
}

/// `name(arg)` for error messages and the fake's log.
pub fn call_name(name: &str, arg: impl std::fmt::Display) -> String {
    format!("{name}({arg})")
}

#[cfg(krunbox_libkrun)]
pub use real::LibKrun;

#[cfg(krunbox_libkrun)]
mod real {
    use std::ffi::{c_char, CString};
    use std::path::Path;

    use super::LOG_STYLE_NEVER;
    use super::{call_name, check, KernelFormat, KrunApi, KrunError, LOG_OPTION_NO_ENV};

    /// The linked libkrun.
    #[derive(Debug, Default)]
    pub struct LibKrun;

    fn c_string(call: &str, text: &str) -> Result<CString, KrunError> {
        CString::new(text).map_err(|_| KrunError::Argument {
            call: call.to_owned(),
            problem: format!("{text:?} contains a NUL byte"),
        })
    }

    fn c_path(call: &str, path: &Path) -> Result<CString, KrunError> {
        // libkrun takes paths as UTF-8 (`CStr::to_str`): refuse others here, by name.
        let text = path.to_str().ok_or_else(|| KrunError::Argument {
            call: call.to_owned(),
            problem: format!("{} is not valid UTF-8", path.display()),
        })?;
        c_string(call, text)
    }

    impl KrunApi for LibKrun {
        fn init_log(&mut self, level: u32) -> Result<(), KrunError> {
            // SAFETY: plain integers; fd 2 stays open for the process's life.
            let rc = unsafe { krun::krun_init_log(2, level, LOG_STYLE_NEVER, LOG_OPTION_NO_ENV) };
            check(|| call_name("krun_init_log", level), rc).map(drop)
        }

        fn create_ctx(&mut self) -> Result<u32, KrunError> {
            let rc = krun::krun_create_ctx();
            let ctx = check(|| "krun_create_ctx()".into(), rc)?;
            Ok(ctx.unsigned_abs())
        }

        fn set_vm_config(&mut self, ctx: u32, cpus: u8, memory_mib: u32) -> Result<(), KrunError> {
            let rc = krun::krun_set_vm_config(ctx, cpus, memory_mib);
            check(
                || {
                    call_name(
                        "krun_set_vm_config",
                        format!("{cpus} vCPUs, {memory_mib} MiB"),
                    )
                },
                rc,
            )
            .map(drop)
        }

        fn disable_implicit_init(&mut self, ctx: u32) -> Result<(), KrunError> {
            let rc = krun::krun_disable_implicit_init(ctx);
            check(|| call_name("krun_disable_implicit_init", ctx), rc).map(drop)
        }

        fn set_root(&mut self, ctx: u32, root: &Path) -> Result<(), KrunError> {
            let call = call_name("krun_set_root", root.display());
            let root = c_path(&call, root)?;
            // SAFETY: `root` is a valid NUL-terminated string that outlives the call; libkrun
            // copies it.
            let rc = unsafe { krun::krun_set_root(ctx, root.as_ptr()) };
            check(|| call, rc).map(drop)
        }

        fn fs_add_overlay_file(
            &mut self,
            ctx: u32,
            fs_tag: &str,
            path: &str,
            data: &'static [u8],
            mode: u32,
            one_shot: bool,
        ) -> Result<(), KrunError> {
            let call = call_name("krun_fs_add_overlay_file", format!("{fs_tag}, {path}"));
            let tag = c_string(&call, fs_tag)?;
            let c_path = c_string(&call, path)?;
            // SAFETY: the strings are valid and NUL-terminated for the call (libkrun copies
            // them); `data` is 'static, as libkrun keeps the pointer for the VM's life.
            let rc = unsafe {
                krun::krun_fs_add_overlay_file(
                    ctx,
                    tag.as_ptr(),
                    c_path.as_ptr(),
                    data.as_ptr(),
                    data.len(),
                    mode,
                    one_shot,
                )
            };
            check(|| call, rc).map(drop)
        }

        fn add_virtiofs3(
            &mut self,
            ctx: u32,
            tag: &str,
            path: &Path,
            shm_size: u64,
            read_only: bool,
        ) -> Result<(), KrunError> {
            let call = call_name("krun_add_virtiofs3", format!("{tag}, {}", path.display()));
            let c_tag = c_string(&call, tag)?;
            let c_dir = c_path(&call, path)?;
            // SAFETY: valid NUL-terminated strings for the duration of the call; libkrun copies
            // them.
            let rc = unsafe {
                krun::krun_add_virtiofs3(ctx, c_tag.as_ptr(), c_dir.as_ptr(), shm_size, read_only)
            };
            check(|| call, rc).map(drop)
        }

        fn disable_implicit_vsock(&mut self, ctx: u32) -> Result<(), KrunError> {
            let rc = krun::krun_disable_implicit_vsock(ctx);
            check(|| call_name("krun_disable_implicit_vsock", ctx), rc).map(drop)
        }

        fn add_net_unixstream(
            &mut self,
            ctx: u32,
            path: &Path,
            mac: [u8; 6],
        ) -> Result<(), KrunError> {
            let call = call_name("krun_add_net_unixstream", path.display());
            let c_socket = c_path(&call, path)?;
            // SAFETY: a valid NUL-terminated path and a 6-byte MAC, both alive for the call;
            // libkrun copies them. fd -1: libkrun connects to the path itself.
            let rc = unsafe {
                krun::krun_add_net_unixstream(ctx, c_socket.as_ptr(), -1, mac.as_ptr(), 0, 0)
            };
            check(|| call, rc).map(drop)
        }

        fn add_vsock(&mut self, ctx: u32, tsi_features: u32) -> Result<(), KrunError> {
            let rc = krun::krun_add_vsock(ctx, tsi_features);
            check(
                || call_name("krun_add_vsock", format!("tsi_features={tsi_features:#x}")),
                rc,
            )
            .map(drop)
        }

        fn add_vsock_port2(
            &mut self,
            ctx: u32,
            port: u32,
            path: &Path,
            listen: bool,
        ) -> Result<(), KrunError> {
            let call = call_name(
                "krun_add_vsock_port2",
                format!("{port}, {}", path.display()),
            );
            let c_socket = c_path(&call, path)?;
            // SAFETY: a valid NUL-terminated string for the duration of the call; libkrun
            // copies it.
            let rc = unsafe { krun::krun_add_vsock_port2(ctx, port, c_socket.as_ptr(), listen) };
            check(|| call, rc).map(drop)
        }

        fn set_kernel(
            &mut self,
            ctx: u32,
            path: &Path,
            format: KernelFormat,
            initramfs: Option<&Path>,
            cmdline: Option<&str>,
        ) -> Result<(), KrunError> {
            let call = call_name(
                "krun_set_kernel",
                format!("{}, format {}", path.display(), format.code()),
            );
            let c_kernel = c_path(&call, path)?;
            let c_initramfs = initramfs.map(|p| c_path(&call, p)).transpose()?;
            let c_cmdline = cmdline.map(|c| c_string(&call, c)).transpose()?;
            let ptr = |s: &Option<CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
            // SAFETY: every pointer is a valid NUL-terminated string or null (both allowed),
            // alive for the duration of the call; libkrun copies them.
            let rc = unsafe {
                krun::krun_set_kernel(
                    ctx,
                    c_kernel.as_ptr(),
                    format.code(),
                    ptr(&c_initramfs),
                    ptr(&c_cmdline),
                )
            };
            check(|| call, rc).map(drop)
        }

        fn set_env(&mut self, ctx: u32, env: &[String]) -> Result<(), KrunError> {
            let call = call_name("krun_set_env", env.join(" "));
            let words = env
                .iter()
                .map(|w| c_string(&call, w))
                .collect::<Result<Vec<_>, _>>()?;
            let mut envp: Vec<*const c_char> = words.iter().map(|w| w.as_ptr()).collect();
            envp.push(std::ptr::null());
            // SAFETY: `envp` is a null-terminated array of valid NUL-terminated strings, all
            // alive for the duration of the call; libkrun copies them.
            let rc = unsafe { krun::krun_set_env(ctx, envp.as_ptr()) };
            check(|| call, rc).map(drop)
        }

        fn set_console_output(&mut self, ctx: u32, path: &Path) -> Result<(), KrunError> {
            let call = call_name("krun_set_console_output", path.display());
            let c_log = c_path(&call, path)?;
            // SAFETY: a valid NUL-terminated string for the duration of the call; libkrun
            // copies it.
            let rc = unsafe { krun::krun_set_console_output(ctx, c_log.as_ptr()) };
            check(|| call, rc).map(drop)
        }

        fn start_enter(&mut self, ctx: u32) -> KrunError {
            let rc = krun::krun_start_enter(ctx);
            match check(|| call_name("krun_start_enter", ctx), rc) {
                Err(err) => err,
                // It returned without an error code: still a VM that did not run.
                Ok(_) => KrunError::Call {
                    call: call_name("krun_start_enter", ctx),
                    errno: libc::EIO,
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_call_and_the_errno() {
        let err = check(|| call_name("krun_set_root", "/path"), -2).unwrap_err();
        assert_eq!(
            err.to_string(),
            "krun_set_root(/path) failed: No such file or directory (errno 2)"
        );
        let err = check(
            || "krun_add_vsock_port2(1024, /r/a.sock)".into(),
            -libc::EEXIST,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "krun_add_vsock_port2(1024, /r/a.sock) failed: File exists (errno 17)"
        );
        assert_eq!(check(|| unreachable!(), 7), Ok(7));
    }

    #[cfg(krunbox_libkrun)]
    #[test]
    fn the_real_library_reports_bad_arguments_by_call() {
        let mut api = LibKrun;
        let err = api.set_root(0, Path::new("/a\0b")).unwrap_err();
        assert!(err.to_string().contains("NUL byte"), "{err}");
        // An unknown context: libkrun answers ENOENT, without touching any VM.
        let err = api.set_vm_config(u32::MAX, 1, 512).unwrap_err();
        assert_eq!(
            err.to_string(),
            "krun_set_vm_config(1 vCPUs, 512 MiB) failed: No such file or directory (errno 2)"
        );
    }
}
