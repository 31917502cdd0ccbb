//! What the VMM child does for one VM, as plain data: [`KrunVmConfig`], built by the parent
//! from a [`VmSpec`] (pure, unit-tested here), written as JSON into the VM's run directory and
//! read back by `krunbox __krun-vmm RUNDIR`.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::kernel_format::{self, Arch, KernelFormat};
use crate::backend::guest_boot::{self, guest_boot};
use crate::backend::run_layout::RunLayout;
use crate::backend::ssh_agent_relay::SshAgentRelay;
use crate::backend::{BackendError, Network, VmSpec};
use krunbox_protocol::boot::GuestBoot;

/// The files of a krun VM's run directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    run: RunLayout,
}

/// The files every backend has ([`RunLayout`]) are this layout's too.
impl std::ops::Deref for Layout {
    type Target = RunLayout;

    fn deref(&self) -> &RunLayout {
        &self.run
    }
}

impl Layout {
    /// The layout of `dir`.
    pub fn new(dir: PathBuf) -> Self {
        Self {
            run: RunLayout::new(dir),
        }
    }

    /// The [`KrunVmConfig`] the child reads.
    pub fn config(&self) -> PathBuf {
        self.dir().join("krun-vm.json")
    }

    /// The Unix socket libkrun creates for the agent's vsock port.
    pub fn agent_socket(&self) -> PathBuf {
        self.dir().join("agent.sock")
    }

    /// The filtering relay to the host's SSH agent (`--ssh`), which libkrun connects guest
    /// connections to host vsock port [`krunbox_protocol::SSH_AGENT_VSOCK_PORT`] to.
    pub fn ssh_agent_relay(&self) -> PathBuf {
        self.dir().join("ssh-agent.sock")
    }
}

/// A further virtio-fs share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Share {
    /// The virtio-fs tag (what guest-init mounts).
    pub tag: String,
    /// The host directory.
    pub host_path: PathBuf,
    /// Read-only for the guest (enforced by libkrun's virtio-fs server).
    pub read_only: bool,
}

/// A kernel of the user's own (`--kernel`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kernel {
    /// The file.
    pub path: PathBuf,
    /// Its format, detected by the parent.
    pub format: KernelFormat,
}

/// Everything the VMM child applies through `krun_*` calls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KrunVmConfig {
    /// The run directory (must be the child's argument).
    pub run_dir: PathBuf,
    /// vCPUs.
    pub cpus: u8,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// The root filesystem directory (virtio-fs `/dev/root`, mounted by the kernel).
    pub root: PathBuf,
    /// The root is an image shared by many sandboxes: libkrun serves it read-only (and
    /// guest-init stacks a tmpfs overlay on it, `krunbox.overlay=tmpfs`).
    pub root_read_only: bool,
    /// Further shares.
    pub shares: Vec<Share>,
    /// guest-init, served as `/init.krun` from memory.
    pub guest_init: PathBuf,
    /// A kernel instead of libkrunfw's.
    pub kernel: Option<Kernel>,
    /// The guest's network.
    pub network: Network,
    /// Where the user network's helper listens (libkrun connects the guest's card to it).
    pub net_socket: PathBuf,
    /// The guest vsock port the agent listens on.
    pub agent_port: u32,
    /// The host Unix socket libkrun maps to that port.
    pub agent_socket: PathBuf,
    /// With `--ssh`: the filtering relay the VMM child starts before entering the VM, which
    /// libkrun connects guest connections to host vsock port
    /// [`krunbox_protocol::SSH_AGENT_VSOCK_PORT`] to.
    #[serde(default)]
    pub ssh_agent_relay: Option<SshAgentRelay>,
    /// The FIFO libkrun writes the guest console into; the VMM child relays it, capped, into
    /// the run directory's `console.log`.
    pub console_pipe: PathBuf,
    /// guest-init's settings (`krunbox.*` words), which libkrun puts on the kernel command line.
    pub guest_config: Vec<String>,
    /// libkrun's log level (0 off … 5 trace), to the VMM log.
    pub log_level: u32,
}

/// Environment variable with libkrun's log level (0-5) for `vmm.log`; default 2 (warnings).
pub const LOG_LEVEL_ENV: &str = "KRUNBOX_KRUN_LOG";

impl KrunVmConfig {
    /// The configuration for `spec` in `layout`; detects the format of a `--kernel`.
    pub fn build(spec: &VmSpec, layout: &Layout, log_level: u32) -> Result<Self, BackendError> {
        spec.validate()?;
        if !spec.rootfs.is_dir() {
            return Err(BackendError::InvalidSpec(format!(
                "root filesystem {} is not a directory",
                spec.rootfs.display()
            )));
        }
        let kernel = spec
            .kernel
            .as_ref()
            .map(|path| {
                Ok::<_, BackendError>(Kernel {
                    path: path.clone(),
                    format: detect_kernel(path, Arch::host())?,
                })
            })
            .transpose()?;
        let shares: Vec<Share> = spec
            .shares
            .iter()
            .enumerate()
            .map(|(i, s)| Share {
                tag: guest_boot::share_tag(i + 1),
                host_path: s.host_path.clone(),
                read_only: s.read_only,
            })
            .collect();
        // libkrun's kernel mounts the root itself (virtio-fs `/dev/root`), so no root tag.
        let boot = GuestBoot {
            libkrun: true,
            ..guest_boot(spec)
        };
        let agent_port = boot.port;
        let guest_config = boot.to_words();
        Ok(Self {
            run_dir: layout.dir().to_owned(),
            cpus: spec.cpus,
            memory_mib: spec.memory_mib,
            root: spec.rootfs.clone(),
            root_read_only: spec.root_overlay,
            shares,
            guest_init: spec.guest_init.clone(),
            kernel,
            network: spec.network.clone(),
            net_socket: layout.net_socket(),
            agent_port,
            agent_socket: layout.agent_socket(),
            ssh_agent_relay: spec.ssh_agent.as_ref().map(|agent| SshAgentRelay {
                listen: layout.ssh_agent_relay(),
                agent: agent.clone(),
            }),
            console_pipe: layout.console_pipe(),
            guest_config,
            log_level,
        })
    }

    /// Writes the configuration as JSON to `path`.
    pub fn write(&self, path: &Path) -> Result<(), BackendError> {
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| BackendError::Supervisor(format!("cannot encode the VM config: {e}")))?;
        Ok(std::fs::write(path, json).map_err(crate::io_error::io("write", path))?)
    }

    /// Reads a configuration written by [`KrunVmConfig::write`].
    pub fn read(path: &Path) -> Result<Self, String> {
        let bytes =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        serde_json::from_slice(&bytes).map_err(|e| format!("invalid {}: {e}", path.display()))
    }
}

/// The format of the kernel file at `path`, with the file named in errors.
pub fn detect_kernel(path: &Path, arch: Arch) -> Result<KernelFormat, BackendError> {
    let io = || crate::io_error::io("read the kernel", path);
    let mut head = Vec::with_capacity(kernel_format::HEADER_LEN);
    std::fs::File::open(path)
        .map_err(io())?
        .take(kernel_format::HEADER_LEN as u64)
        .read_to_end(&mut head)
        .map_err(io())?;
    kernel_format::detect(&head, arch).map_err(|why| {
        BackendError::InvalidSpec(format!(
            "kernel {} cannot be booted by libkrun: {why}",
            path.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::SharedDir;

    #[test]
    fn a_spec_becomes_a_config_that_survives_json() {
        let root = tempfile::tempdir().unwrap();
        let share = tempfile::tempdir().unwrap();
        let mut spec = VmSpec::new(root.path().to_owned(), "/gi".into());
        spec.cpus = 2;
        spec.memory_mib = 1024;
        spec.hostname = "box".into();
        spec.guest_log_level = Some("debug".into());
        spec.shares.push(SharedDir {
            host_path: share.path().to_owned(),
            guest_path: "/work".into(),
            read_only: true,
        });
        let layout = Layout::new("/run/krunbox/abc".into());
        let config = KrunVmConfig::build(&spec, &layout, 2).unwrap();
        assert_eq!(
            config.agent_socket,
            Path::new("/run/krunbox/abc/agent.sock")
        );
        assert_eq!(
            config.console_pipe,
            Path::new("/run/krunbox/abc/console.pipe")
        );
        assert_eq!(config.network, Network::default());
        assert_eq!(
            config.guest_config,
            [
                "krunbox.hostname=box",
                "krunbox.port=1024",
                "krunbox.mounts=share1:/work:ro",
                "krunbox.log=debug",
                "krunbox.net=10.0.2.15/24,10.0.2.2,10.0.2.2",
                "krunbox.vmm=libkrun",
            ]
        );
        spec.root_overlay = true;
        let overlaid = KrunVmConfig::build(&spec, &layout, 2).unwrap();
        assert!(overlaid
            .guest_config
            .contains(&"krunbox.overlay=tmpfs".to_owned()));
        assert_eq!(
            config.shares,
            [Share {
                tag: "share1".into(),
                host_path: share.path().to_owned(),
                read_only: true
            }]
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("krun-vm.json");
        config.write(&file).unwrap();
        assert_eq!(KrunVmConfig::read(&file).unwrap(), config);
        std::fs::write(&file, b"{\"cpus\": 1}").unwrap();
        let err = KrunVmConfig::read(&file).unwrap_err();
        assert!(
            err.contains("krun-vm.json") && err.contains("missing field"),
            "{err}"
        );
    }

    #[test]
    fn a_custom_kernel_is_detected_and_a_bad_one_refused_by_name() {
        let root = tempfile::tempdir().unwrap();
        let kernels = tempfile::tempdir().unwrap();
        let vmlinux = kernels.path().join("vmlinux");
        let mut elf = b"\x7fELF\x02\x01\x01".to_vec();
        elf.resize(64, 0);
        elf[18] = 62;
        std::fs::write(&vmlinux, &elf).unwrap();
        assert_eq!(
            detect_kernel(&vmlinux, Arch::X86_64).unwrap(),
            KernelFormat::Elf
        );
        let script = kernels.path().join("not-a-kernel");
        std::fs::write(&script, b"#!/bin/sh\n").unwrap();
        let mut spec = VmSpec::new(root.path().to_owned(), "/gi".into());
        spec.kernel = Some(script.clone());
        let err = KrunVmConfig::build(&spec, &Layout::new("/d".into()), 2).unwrap_err();
        assert!(
            err.to_string().contains(&script.display().to_string()),
            "{err}"
        );
        spec.kernel = Some(kernels.path().join("missing"));
        let err = KrunVmConfig::build(&spec, &Layout::new("/d".into()), 2).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn a_missing_root_and_a_bad_hostname_are_refused() {
        let spec = VmSpec::new("/nonexistent/root".into(), "/gi".into());
        let err = KrunVmConfig::build(&spec, &Layout::new("/d".into()), 2).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/root"), "{err}");
        let root = tempfile::tempdir().unwrap();
        let mut spec = VmSpec::new(root.path().to_owned(), "/gi".into());
        spec.hostname = "a\"b".into();
        assert!(KrunVmConfig::build(&spec, &Layout::new("/d".into()), 2).is_err());
    }
}
