//! The libkrun backend: KVM on Linux, Hypervisor.framework on macOS (Apple silicon).
//!
//! libkrun is linked as an rlib (`libkrun` 1.19.7, lib name `krun`, without its `init-blob`
//! feature). One VM is one process: `krun_start_enter` takes the calling process over and
//! `_exit`s with the guest's status, so krunbox re-executes itself as `krunbox __krun-vmm
//! RUNDIR` ([`child`]) and supervises that child ([`vm`]). In the guest:
//!
//! - the root filesystem is the image directory over virtio-fs (`krun_set_root`; the kernel
//!   mounts it, so guest-init does no initramfs switch), further shares with
//!   `krun_add_virtiofs3`;
//! - guest-init is PID 1 as `/init.krun`, a virtual file served from memory
//!   (`krun_disable_implicit_init` + `krun_fs_add_overlay_file`): the image directory is never
//!   written;
//! - the agent's vsock port is a Unix socket in the run directory that libkrun listens on
//!   (`krun_add_vsock_port2(.., listen = true)`): the agent's address is a plain Unix socket;
//! - the network is by default a virtio-net card (`krun_add_net_unixstream`) to krunbox's
//!   gateway (`krunbox __net`, started by the VMM child), so the egress policy applies and any
//!   kernel with virtio-net works; `--network tsi` is TSI (`krun_add_vsock(.., HIJACK_INET)`:
//!   the VMM process opens the guest's inet sockets, no policy; libkrunfw's kernel only);
//!   [`crate::backend::Network::Disabled`] turns it off;
//! - the kernel is libkrunfw's (`dlopen`ed by libkrun) or a `--kernel` (`krun_set_kernel`,
//!   format detected by [`kernel_format`]); the console (`hvc0`) goes to `console.log`.
//!
//! Every `krun_*` call goes through the [`api::KrunApi`] seam, so the call sequence
//! ([`configure`]) is unit-tested without a hypervisor.

pub mod api;
pub mod child;
pub mod config;
pub mod configure;
pub mod confine;
pub mod kernel_format;
pub mod probe;
pub mod vm;

use std::path::{Path, PathBuf};

use super::{Availability, Backend, BackendError, BackendKind, Check, VmHandle, VmSpec};
use crate::{paths, rundir};
use config::{KrunVmConfig, Layout};
use probe::Probe;

/// Unix socket paths are limited to 108 bytes (including the NUL).
const MAX_SOCKET_PATH: usize = 107;
/// libkrun's default log level in the VMM log: warnings.
const DEFAULT_LOG_LEVEL: u32 = 2;

/// Environment variable: `1` makes the backend a dry run: everything but the guest — run
/// directory, VMM child, the real libkrun configured with every `krun_*` call — except that
/// the child never calls `krun_start_enter` (`__krun-vmm --no-enter`), so no agent ever
/// answers. It needs no hypervisor; it exists to test the VM lifecycle (boot timeout, Ctrl-C,
/// kill -9 of krunbox) on hosts that cannot run libkrun, such as CI.
pub const DRY_RUN_ENV: &str = "KRUNBOX_KRUN_DRY_RUN";

/// The libkrun backend.
#[derive(Debug, Clone)]
pub struct KrunBackend {
    runtime_root: PathBuf,
    dry_run: bool,
}

impl Default for KrunBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl KrunBackend {
    /// The backend with krunbox's standard runtime directory; a dry run if
    /// `KRUNBOX_KRUN_DRY_RUN=1`.
    pub fn new() -> Self {
        Self {
            runtime_root: paths::runtime_root(),
            dry_run: std::env::var(DRY_RUN_ENV).is_ok_and(|v| v == "1"),
        }
    }

    fn probe(&self) -> Probe {
        let mut probe = Probe::host();
        if self.dry_run {
            probe.hypervisor = Ok(format!(
                "dry run ({DRY_RUN_ENV}=1: the VM is configured, never entered)"
            ));
        }
        probe
    }
}

fn log_level() -> u32 {
    std::env::var(config::LOG_LEVEL_ENV)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|level| *level <= 5)
        .unwrap_or(DEFAULT_LOG_LEVEL)
}

impl Backend for KrunBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Krun
    }

    fn availability(&self) -> Availability {
        self.probe().availability(false)
    }

    fn availability_for(&self, custom_kernel: bool) -> Availability {
        self.probe().availability(custom_kernel)
    }

    fn checks(&self) -> Vec<Check> {
        let probe = self.probe();
        let check = |what: &str, result: &Result<String, String>| Check {
            what: what.into(),
            ok: result.is_ok(),
            detail: match result {
                Ok(found) => found.clone(),
                Err(why) => why.clone(),
            },
        };
        let mut checks = vec![Check {
            what: "libkrun".into(),
            ok: probe.built,
            detail: if probe.built {
                "1.19.7, linked in".into()
            } else {
                "not built for this platform".into()
            },
        }];
        checks.push(check(
            if cfg!(target_os = "macos") {
                "Hypervisor.framework"
            } else {
                "KVM"
            },
            &probe.hypervisor,
        ));
        checks.push(check("libkrunfw (guest kernel)", &probe.krunfw));
        checks.push(Check {
            what: "network".into(),
            ok: true,
            detail: "virtio-net to krunbox's gateway (egress policy, DNS, -p); --network tsi \
                     for TSI (libkrunfw's kernel, no policy)"
                .into(),
        });
        checks.extend(super::pause_and_snapshot_checks(
            "the VMM process is stopped (SIGSTOP); kvmclock keeps the guest's time right",
            "libkrun has no snapshot API",
        ));
        checks
    }

    fn start(&self, spec: &VmSpec) -> Result<Box<dyn VmHandle>, BackendError> {
        if let Availability::Unavailable(reason) = self.availability_for(spec.kernel.is_some()) {
            return Err(BackendError::Unavailable {
                backend: BackendKind::Krun,
                reason,
            });
        }
        rundir::collect_stale(&self.runtime_root)?;
        let id = rundir::new_id();
        let layout = Layout::new(self.runtime_root.join(&id));
        check_socket_path(&layout.agent_socket())?;
        let config = KrunVmConfig::build(spec, &layout, log_level())?;
        let secrets = super::net::secret_values(&spec.network)?;
        let run_dir = rundir::RunDir::create(&self.runtime_root, &id)?;
        Ok(Box::new(vm::KrunVm::launch(
            &config,
            run_dir,
            self.dry_run,
            &secrets,
        )?))
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
