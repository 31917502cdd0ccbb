//! The `krun_*` call sequence that turns a [`KrunVmConfig`] into a libkrun context.
//!
//! 1. `krun_init_log`, `krun_create_ctx`, `krun_set_vm_config`;
//! 2. the root: `krun_disable_implicit_init` (before `krun_set_root`, which is where libkrun
//!    would add its own `/init.krun`), `krun_set_root` (for an image shared by many
//!    sandboxes: `krun_add_virtiofs3("/dev/root", .., read_only)`), then guest-init as the virtual file
//!    `/init.krun` of the root share (`krun_fs_add_overlay_file`, served from memory: the image
//!    directory is never written). Not one-shot: guest-init re-executes `/proc/self/exe` to
//!    start commands, and a one-shot entry disappears after its first open;
//! 3. further shares (`krun_add_virtiofs3`, read-only where asked);
//! 4. vsock, explicitly: `krun_disable_implicit_vsock`, then `krun_add_vsock` with TSI's
//!    `HIJACK_INET` or with no TSI at all, then the agent's port mapped to a host Unix socket
//!    (`krun_add_vsock_port2(.., listen = true)`); with `--ssh`, the guest's connections to
//!    host port [`krunbox_protocol::SSH_AGENT_VSOCK_PORT`] go to the filtering relay to the
//!    host's SSH agent ([`crate::backend::ssh_agent_relay`], which the VMM child starts first;
//!    `listen = false`: libkrun connects to it for each guest connection);
//! 5. `krun_set_kernel` for a `--kernel` (no initramfs; a null command line keeps libkrun's,
//!    which boots `/init.krun` from the virtio-fs root);
//! 6. guest-init's `krunbox.*` settings (`krun_set_env`: libkrun appends them, double-quoted,
//!    to the kernel command line, where guest-init reads them from `/proc/cmdline`);
//! 7. the console into the FIFO the VMM child relays, capped (`krun_set_console_output`).
//!
//! `krun_start_enter` is the caller's (it never returns on success).

use super::api::{KrunApi, KrunError, TSI_HIJACK_INET};
use super::config::KrunVmConfig;
use crate::backend::Network;

/// The virtio-fs tag libkrun gives the root.
pub const ROOT_TAG: &str = "/dev/root";
/// Where the kernel looks for init (libkrun's command line says `init=/init.krun`).
pub const INIT_NAME: &str = "init.krun";
/// The DAX window `krun_set_root` gives the root; a read-only root gets the same.
pub const ROOT_SHM_SIZE: u64 = 1 << 29;

/// Applies `config` through `api`; returns the context to start. `guest_init` is the agent
/// binary's content.
pub fn configure(
    api: &mut dyn KrunApi,
    config: &KrunVmConfig,
    guest_init: &'static [u8],
) -> Result<u32, KrunError> {
    api.init_log(config.log_level)?;
    let ctx = api.create_ctx()?;
    api.set_vm_config(ctx, config.cpus, config.memory_mib)?;
    api.disable_implicit_init(ctx)?;
    if config.root_read_only {
        // `krun_set_root` has no read-only mode; this is the same share, served read-only.
        api.add_virtiofs3(ctx, ROOT_TAG, &config.root, ROOT_SHM_SIZE, true)?;
    } else {
        api.set_root(ctx, &config.root)?;
    }
    api.fs_add_overlay_file(ctx, ROOT_TAG, INIT_NAME, guest_init, 0o755, false)?;
    for share in &config.shares {
        api.add_virtiofs3(ctx, &share.tag, &share.host_path, 0, share.read_only)?;
    }
    api.disable_implicit_vsock(ctx)?;
    let tsi = match config.network {
        Network::Tsi => TSI_HIJACK_INET,
        Network::User(_) | Network::Disabled => 0,
    };
    api.add_vsock(ctx, tsi)?;
    if let Network::User(_) = config.network {
        // No offloads: the gateway takes plain, checksummed frames of at most the MTU.
        api.add_net_unixstream(ctx, &config.net_socket, super::super::net::GUEST_MAC)?;
    }
    api.add_vsock_port2(ctx, config.agent_port, &config.agent_socket, true)?;
    if let Some(relay) = &config.ssh_agent_relay {
        api.add_vsock_port2(
            ctx,
            krunbox_protocol::SSH_AGENT_VSOCK_PORT,
            &relay.listen,
            false,
        )?;
    }
    if let Some(kernel) = &config.kernel {
        api.set_kernel(ctx, &kernel.path, kernel.format, None, None)?;
    }
    api.set_env(ctx, &config.guest_config)?;
    api.set_console_output(ctx, &config.console_pipe)?;
    Ok(ctx)
}

#[cfg(test)]
pub mod fake {
    //! A [`KrunApi`] that records each call as text and can fail one of them.

    use std::path::Path;

    use super::super::api::{call_name, KrunApi, KrunError};
    use super::super::kernel_format::KernelFormat;

    /// Records calls; fails the first call whose name is `fail_at` with `errno`.
    #[derive(Debug, Default)]
    pub struct RecordingKrun {
        /// The calls so far, e.g. `krun_set_root(1, /r)`.
        pub calls: Vec<String>,
        /// The call to fail, by function name.
        pub fail_at: Option<(&'static str, i32)>,
        /// How many bytes of overlay data each overlay call got.
        pub overlay_bytes: Vec<usize>,
    }

    impl RecordingKrun {
        fn record(&mut self, name: &'static str, args: String) -> Result<(), KrunError> {
            let call = call_name(name, args);
            self.calls.push(call.clone());
            match self.fail_at {
                Some((failing, errno)) if failing == name => Err(KrunError::Call { call, errno }),
                _ => Ok(()),
            }
        }
    }

    impl KrunApi for RecordingKrun {
        fn init_log(&mut self, level: u32) -> Result<(), KrunError> {
            self.record("krun_init_log", level.to_string())
        }
        fn create_ctx(&mut self) -> Result<u32, KrunError> {
            self.record("krun_create_ctx", String::new())?;
            Ok(7)
        }
        fn set_vm_config(&mut self, ctx: u32, cpus: u8, memory_mib: u32) -> Result<(), KrunError> {
            self.record("krun_set_vm_config", format!("{ctx}, {cpus}, {memory_mib}"))
        }
        fn disable_implicit_init(&mut self, ctx: u32) -> Result<(), KrunError> {
            self.record("krun_disable_implicit_init", ctx.to_string())
        }
        fn set_root(&mut self, ctx: u32, root: &Path) -> Result<(), KrunError> {
            self.record("krun_set_root", format!("{ctx}, {}", root.display()))
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
            self.overlay_bytes.push(data.len());
            self.record(
                "krun_fs_add_overlay_file",
                format!("{ctx}, {fs_tag}, {path}, {mode:o}, one_shot={one_shot}"),
            )
        }
        fn add_virtiofs3(
            &mut self,
            ctx: u32,
            tag: &str,
            path: &Path,
            shm_size: u64,
            read_only: bool,
        ) -> Result<(), KrunError> {
            self.record(
                "krun_add_virtiofs3",
                format!(
                    "{ctx}, {tag}, {}, {shm_size}, ro={read_only}",
                    path.display()
                ),
            )
        }
        fn disable_implicit_vsock(&mut self, ctx: u32) -> Result<(), KrunError> {
            self.record("krun_disable_implicit_vsock", ctx.to_string())
        }
        fn add_net_unixstream(
            &mut self,
            ctx: u32,
            path: &Path,
            mac: [u8; 6],
        ) -> Result<(), KrunError> {
            let mac = crate::backend::net::mac_text(mac);
            self.record(
                "krun_add_net_unixstream",
                format!("{ctx}, {}, {mac}", path.display()),
            )
        }
        fn add_vsock(&mut self, ctx: u32, tsi_features: u32) -> Result<(), KrunError> {
            self.record("krun_add_vsock", format!("{ctx}, {tsi_features:#x}"))
        }
        fn add_vsock_port2(
            &mut self,
            ctx: u32,
            port: u32,
            path: &Path,
            listen: bool,
        ) -> Result<(), KrunError> {
            self.record(
                "krun_add_vsock_port2",
                format!("{ctx}, {port}, {}, listen={listen}", path.display()),
            )
        }
        fn set_kernel(
            &mut self,
            ctx: u32,
            path: &Path,
            format: KernelFormat,
            initramfs: Option<&Path>,
            cmdline: Option<&str>,
        ) -> Result<(), KrunError> {
            self.record(
                "krun_set_kernel",
                format!(
                    "{ctx}, {}, {}, {:?}, {:?}",
                    path.display(),
                    format.code(),
                    initramfs,
                    cmdline
                ),
            )
        }
        fn set_env(&mut self, ctx: u32, env: &[String]) -> Result<(), KrunError> {
            self.record("krun_set_env", format!("{ctx}, [{}]", env.join(" ")))
        }
        fn set_console_output(&mut self, ctx: u32, path: &Path) -> Result<(), KrunError> {
            self.record(
                "krun_set_console_output",
                format!("{ctx}, {}", path.display()),
            )
        }
        fn start_enter(&mut self, ctx: u32) -> KrunError {
            let call = call_name("krun_start_enter", ctx);
            self.calls.push(call.clone());
            KrunError::Call {
                call,
                errno: libc::EINVAL,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::RecordingKrun;
    use super::*;
    use crate::backend::krun::config::{Kernel, Layout};
    use crate::backend::krun::kernel_format::KernelFormat;
    use crate::backend::{SharedDir, VmSpec};

    static INIT: &[u8] = b"\x7fELF guest-init";

    fn config(spec: &VmSpec) -> KrunVmConfig {
        KrunVmConfig::build(spec, &Layout::new("/run/k/vm1".into()), 2).unwrap()
    }

    #[test]
    fn the_default_vm_uses_libkrunfw_our_gateway_and_our_init() {
        let root = tempfile::tempdir().unwrap();
        let spec = VmSpec::new(root.path().to_owned(), "/gi".into());
        let mut api = RecordingKrun::default();
        let ctx = configure(&mut api, &config(&spec), INIT).unwrap();
        assert_eq!(ctx, 7);
        let root = root.path().display();
        assert_eq!(
            api.calls,
            [
                "krun_init_log(2)".to_owned(),
                "krun_create_ctx()".into(),
                "krun_set_vm_config(7, 1, 512)".into(),
                "krun_disable_implicit_init(7)".into(),
                format!("krun_set_root(7, {root})"),
                "krun_fs_add_overlay_file(7, /dev/root, init.krun, 755, one_shot=false)".into(),
                "krun_disable_implicit_vsock(7)".into(),
                "krun_add_vsock(7, 0x0)".into(),
                "krun_add_net_unixstream(7, /run/k/vm1/net.sock, 52:54:00:12:34:56)".into(),
                "krun_add_vsock_port2(7, 1024, /run/k/vm1/agent.sock, listen=true)".into(),
                "krun_set_env(7, [krunbox.hostname=krunbox krunbox.port=1024 \
                 krunbox.net=10.0.2.15/24,10.0.2.2,10.0.2.2 krunbox.vmm=libkrun])"
                    .into(),
                "krun_set_console_output(7, /run/k/vm1/console.pipe)".into(),
            ]
        );
        assert_eq!(api.overlay_bytes, [INIT.len()]);
    }

    #[test]
    fn tsi_hijacks_inet_sockets_and_adds_no_card() {
        let root = tempfile::tempdir().unwrap();
        let mut spec = VmSpec::new(root.path().to_owned(), "/gi".into());
        spec.network = Network::Tsi;
        let mut api = RecordingKrun::default();
        configure(&mut api, &config(&spec), INIT).unwrap();
        assert!(api.calls.contains(&"krun_add_vsock(7, 0x1)".to_owned()));
        assert!(!api
            .calls
            .iter()
            .any(|c| c.starts_with("krun_add_net") || c.contains("krunbox.net=")));
    }

    #[test]
    fn cpus_memory_shares_a_kernel_and_no_tsi() {
        let root = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        let mut spec = VmSpec::new(root.path().to_owned(), "/gi".into());
        spec.cpus = 4;
        spec.memory_mib = 2048;
        spec.network = Network::Disabled;
        spec.shares = vec![
            SharedDir {
                host_path: work.path().to_owned(),
                guest_path: "/work".into(),
                read_only: false,
            },
            SharedDir {
                host_path: data.path().to_owned(),
                guest_path: "/data".into(),
                read_only: true,
            },
        ];
        let mut config = config(&spec);
        // (Format detection from a file is tested in `config`.)
        config.kernel = Some(Kernel {
            path: "/k/vmlinux".into(),
            format: KernelFormat::Elf,
        });
        let mut api = RecordingKrun::default();
        configure(&mut api, &config, INIT).unwrap();
        let (work, data) = (work.path().display(), data.path().display());
        let calls = api.calls.join("\n");
        for expected in [
            "krun_set_vm_config(7, 4, 2048)".to_owned(),
            format!("krun_add_virtiofs3(7, share1, {work}, 0, ro=false)"),
            format!("krun_add_virtiofs3(7, share2, {data}, 0, ro=true)"),
            "krun_add_vsock(7, 0x0)".into(),
            "krun_set_kernel(7, /k/vmlinux, 1, None, None)".into(),
            "krun_set_env(7, [krunbox.hostname=krunbox krunbox.port=1024 \
             krunbox.mounts=share1:/work,share2:/data:ro krunbox.vmm=libkrun])"
                .into(),
        ] {
            assert!(
                calls.contains(&expected),
                "{expected} missing from\n{calls}"
            );
        }
        let position = |prefix: &str| api.calls.iter().position(|c| c.starts_with(prefix));
        assert!(position("krun_disable_implicit_init") < position("krun_set_root"));
        assert!(position("krun_set_root") < position("krun_fs_add_overlay_file"));
        assert!(position("krun_disable_implicit_vsock") < position("krun_add_vsock("));
        assert!(position("krun_add_vsock(") < position("krun_add_vsock_port2"));
    }

    #[test]
    fn the_ssh_agent_is_a_vsock_port_libkrun_connects_to_the_relay() {
        let root = tempfile::tempdir().unwrap();
        let agent = root.path().join("agent.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&agent).unwrap();
        let mut spec = VmSpec::new(root.path().to_owned(), "/gi".into());
        spec.ssh_agent = Some(agent.clone());
        let mut api = RecordingKrun::default();
        configure(&mut api, &config(&spec), INIT).unwrap();
        let ports: Vec<&String> = api
            .calls
            .iter()
            .filter(|c| c.starts_with("krun_add_vsock_port2"))
            .collect();
        assert_eq!(
            ports,
            [
                "krun_add_vsock_port2(7, 1024, /run/k/vm1/agent.sock, listen=true)",
                "krun_add_vsock_port2(7, 1025, /run/k/vm1/ssh-agent.sock, listen=false)",
            ]
        );
        let env = api
            .calls
            .iter()
            .find(|c| c.starts_with("krun_set_env"))
            .unwrap();
        assert!(env.contains(" krunbox.ssh_agent=1025"), "{env}");
        let position = |prefix: &str| api.calls.iter().position(|c| c.starts_with(prefix));
        assert!(position("krun_add_vsock(") < position("krun_add_vsock_port2"));
    }

    #[test]
    fn a_shared_image_is_a_read_only_root() {
        let root = tempfile::tempdir().unwrap();
        let mut spec = VmSpec::new(root.path().to_owned(), "/gi".into());
        spec.root_overlay = true;
        let mut api = RecordingKrun::default();
        configure(&mut api, &config(&spec), INIT).unwrap();
        let root = root.path().display();
        assert_eq!(
            api.calls[3..6],
            [
                "krun_disable_implicit_init(7)".to_owned(),
                format!("krun_add_virtiofs3(7, /dev/root, {root}, 536870912, ro=true)"),
                "krun_fs_add_overlay_file(7, /dev/root, init.krun, 755, one_shot=false)".into(),
            ]
        );
        assert!(!api.calls.iter().any(|c| c.starts_with("krun_set_root")));
        let env = api
            .calls
            .iter()
            .find(|c| c.starts_with("krun_set_env"))
            .unwrap();
        assert!(env.contains("krunbox.overlay=tmpfs"), "{env}");
    }

    #[test]
    fn the_first_failing_call_stops_the_sequence_and_is_named() {
        let root = tempfile::tempdir().unwrap();
        let spec = VmSpec::new(root.path().to_owned(), "/gi".into());
        let mut api = RecordingKrun {
            fail_at: Some(("krun_add_vsock_port2", libc::EEXIST)),
            ..Default::default()
        };
        let err = configure(&mut api, &config(&spec), INIT).unwrap_err();
        assert_eq!(
            err.to_string(),
            "krun_add_vsock_port2(7, 1024, /run/k/vm1/agent.sock, listen=true) failed: \
             File exists (errno 17)"
        );
        assert!(api
            .calls
            .last()
            .unwrap()
            .starts_with("krun_add_vsock_port2"));
        assert!(!api.calls.iter().any(|c| c.starts_with("krun_set_env")));
    }
}
