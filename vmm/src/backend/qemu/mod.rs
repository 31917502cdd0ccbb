//! The QEMU backend: for hosts without usable KVM (TCG) and for every end-to-end test here.
//!
//! One VM is qemu-system-x86_64 (q35, memfd shared memory for vhost-user) with
//! - vsock through `vhost-user-vsock-pci` and `vhost-device-vsock`, which exposes the guest's
//!   vsock as a hybrid-vsock Unix socket in the run directory (the agent's address);
//! - the root filesystem and every shared directory through `vhost-user-fs-pci` and one
//!   `virtiofsd` each;
//! - krunbox's own kernel (an ELF `vmlinux`, PVH entry) when installed, else Debian's cloud
//!   kernel, or `--kernel` ([`crate::backend::qemu::guest_kernel`]), and an initramfs holding guest-init (and
//!   for Debian's kernel the modules it loads) before it switches to the virtio-fs root;
//! - the serial console written to `console.log`.
//!
//! All of these run under a per-VM supervisor process ([`supervisor`]), which guarantees that
//! they stop, and the run directory goes away, however krunbox ends.

pub mod accel;
pub mod guest_kernel;
pub mod initramfs;
pub mod plan;
pub mod supervisor;
pub mod tools;
pub mod virtiofs;
pub mod vm;

use std::path::{Path, PathBuf};

use super::{Availability, Backend, BackendError, BackendKind, Check, VmHandle, VmSpec};
use crate::io_error::io;
use crate::{paths, rundir};
use guest_kernel::{debian, DefaultKernel};

use tools::Tool;

/// Unix socket paths are limited to 108 bytes (including the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// The QEMU backend.
#[derive(Debug, Clone)]
pub struct QemuBackend {
    runtime_root: PathBuf,
}

impl Default for QemuBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl QemuBackend {
    /// The backend with krunbox's standard directories.
    pub fn new() -> Self {
        Self {
            runtime_root: paths::runtime_root(),
        }
    }

    /// Looked up at each use: in the `/tmp` fallback this checks that it is still ours.
    fn data_dir(&self) -> Result<PathBuf, BackendError> {
        Ok(paths::data_dir()?)
    }

    /// Doctor's line about the guest kernel.
    fn kernel_check(&self) -> Check {
        let what = "guest kernel".to_owned();
        let data_dir = match self.data_dir() {
            Ok(dir) => dir,
            Err(err) => {
                return Check {
                    what,
                    ok: false,
                    detail: err.to_string(),
                }
            }
        };
        let (ok, detail) = match guest_kernel::default_kernel(&data_dir) {
            DefaultKernel::Own(kernel) => (
                true,
                format!(
                    "krunbox's own {} in {} (Debian's cloud kernel is the fallback)",
                    kernel.release,
                    kernel.dir.display()
                ),
            ),
            DefaultKernel::Debian(Some(kernel)) => (
                true,
                format!(
                    "Debian cloud kernel {} with {} modules in {}; krunbox's own kernel boots \
                     about twice as fast: `cargo xtask build-kernel` and `krunbox kernel install \
                     .krunbox-cache/kernel/x86_64` (scripts/setup.sh does both)",
                    kernel.abi,
                    kernel.modules.len(),
                    kernel.dir.display()
                ),
            ),
            DefaultKernel::Debian(None) => (
                false,
                format!(
                    "none installed or prepared: `krunbox kernel install DIR` installs krunbox's \
                     own (built by `cargo xtask build-kernel`); without it `krunbox kernel fetch` \
                     (or the first `krunbox run`) downloads Debian's with apt into {}",
                    guest_kernel::kernels_dir(&data_dir).display()
                ),
            ),
        };
        Check { what, ok, detail }
    }

    fn tools(&self) -> Result<(PathBuf, PathBuf, PathBuf), BackendError> {
        let locate = |tool: Tool| {
            tool.locate().map_err(|reason| BackendError::Unavailable {
                backend: BackendKind::Qemu,
                reason,
            })
        };
        Ok((
            locate(Tool::Qemu)?,
            locate(Tool::Virtiofsd)?,
            locate(Tool::VhostDeviceVsock)?,
        ))
    }

    /// The kernel and initramfs for `spec`.
    fn boot_files(&self, spec: &VmSpec) -> Result<(PathBuf, PathBuf), BackendError> {
        match &spec.kernel {
            Some(kernel) => {
                if !kernel.is_file() {
                    return Err(BackendError::InvalidSpec(format!(
                        "kernel {} does not exist",
                        kernel.display()
                    )));
                }
                // A kernel of the user's own has its drivers built in: no modules.
                let image =
                    initramfs::cached(&self.data_dir()?.join("initramfs"), &spec.guest_init, &[])?;
                Ok((kernel.clone(), image))
            }
            None => match guest_kernel::default_kernel(&self.data_dir()?) {
                DefaultKernel::Own(kernel) => {
                    let image = initramfs::cached(&kernel.dir, &spec.guest_init, &[])?;
                    Ok((kernel.vmlinux, image))
                }
                DefaultKernel::Debian(_) => {
                    let kernel = debian::prepared_or_fetch(&self.data_dir()?)?;
                    let image = initramfs::cached(&kernel.dir, &spec.guest_init, &kernel.modules)?;
                    Ok((kernel.vmlinuz, image))
                }
            },
        }
    }
}

impl Backend for QemuBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Qemu
    }

    fn availability(&self) -> Availability {
        match self.tools() {
            Err(err) => Availability::Unavailable(err.to_string()),
            Ok(_) => match accel::decide(
                super::Accel::Auto,
                std::env::var(accel::ENV).ok().as_deref(),
                &accel::probe_kvm(),
            ) {
                Ok(decision) => Availability::Available(decision.reason),
                Err(reason) => Availability::Unavailable(reason),
            },
        }
    }

    fn checks(&self) -> Vec<Check> {
        let mut checks: Vec<Check> = Tool::ALL
            .iter()
            .map(|tool| match tool.locate() {
                Ok(path) => Check {
                    what: tool.name().into(),
                    ok: true,
                    detail: path.display().to_string(),
                },
                Err(why) => Check {
                    what: tool.name().into(),
                    ok: false,
                    detail: why,
                },
            })
            .collect();
        let kvm = accel::probe_kvm();
        checks.push(Check {
            what: "KVM".into(),
            ok: kvm == accel::KvmStatus::Usable,
            detail: match &kvm {
                accel::KvmStatus::Usable => "usable".into(),
                accel::KvmStatus::Missing(why) | accel::KvmStatus::Unusable(why) => why.clone(),
            },
        });
        let decision = accel::decide(
            super::Accel::Auto,
            std::env::var(accel::ENV).ok().as_deref(),
            &kvm,
        );
        checks.push(Check {
            what: "accelerator".into(),
            ok: decision.is_ok(),
            detail: decision.map(|d| d.reason).unwrap_or_else(|e| e),
        });
        checks.push(self.kernel_check());
        checks.extend(super::pause_and_snapshot_checks(
            "QEMU is stopped (SIGSTOP) by its supervisor; the guest clock follows the host's",
            "every guest's root is a vhost-user-fs device, which QEMU before 8.2 cannot migrate",
        ));
        checks
    }

    fn start(&self, spec: &VmSpec) -> Result<Box<dyn VmHandle>, BackendError> {
        rundir::collect_stale(&self.runtime_root)?;
        let (qemu, virtiofsd, vhost_device_vsock) = self.tools()?;
        let decision = accel::decide(
            spec.accel,
            std::env::var(accel::ENV).ok().as_deref(),
            &accel::probe_kvm(),
        )
        .map_err(|reason| BackendError::Unavailable {
            backend: BackendKind::Qemu,
            reason,
        })?;
        tracing::debug!(accel = %decision.reason, "QEMU accelerator");
        let (kernel, initramfs) = self.boot_files(spec)?;
        let layout = plan::Layout::new(self.runtime_root.join(rundir::new_id()));
        check_socket_path(&layout.vsock_backend())?;
        let inputs = plan::Inputs {
            qemu,
            virtiofsd,
            vhost_device_vsock,
            kernel,
            initramfs,
            kvm: decision.kvm,
            privilege: virtiofs::Privilege::current(),
            krunbox: std::env::current_exe()
                .map_err(io("find", std::path::Path::new("/proc/self/exe")))?,
        };
        let plan = plan::build(spec, &layout, &inputs)?;
        let secrets = super::net::secret_values(&spec.network)?;
        Ok(Box::new(vm::QemuVm::launch(&plan, layout, &secrets)?))
    }
}

fn check_socket_path(path: &Path) -> Result<(), BackendError> {
    if path.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(BackendError::InvalidSpec(format!(
            "the run directory's socket path {} is longer than {MAX_SOCKET_PATH} bytes; set KRUNBOX_RUNTIME_DIR to a shorter directory",
            path.display()
        )));
    }
    Ok(())
}
