//! VM backends behind one lifecycle.
//!
//! A [`Backend`] starts a VM from a [`VmSpec`] and hands back a [`VmHandle`]: where the agent
//! listens, the console log, how and whether the VM ended, and a way to kill it. Dropping the
//! handle stops the VM and removes everything the backend created for it (processes, sockets,
//! run directory). The session above it (`krunbox run`) only ever talks to the agent through
//! the [`AgentAddress`] and never knows which backend runs the VM.
//!
//! - [`qemu`]: qemu-system with KVM or TCG, vhost-device-vsock and virtiofsd; works on hosts
//!   without usable KVM (and is what the end-to-end tests boot);
//! - [`krun`]: libkrun in a VMM child process (KVM on Linux, Hypervisor.framework on macOS).

pub mod agent_wait;
pub mod console;
pub mod guest_boot;
pub mod host;
pub mod krun;
pub mod net;
pub mod qemu;
pub mod run_layout;
pub mod ssh_agent_relay;

use std::fmt;
use std::path::{Path, PathBuf};

use krunbox_protocol::transport::AgentAddress;

/// Which backend (`krun` or `qemu` in a sandbox's `sandbox.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// libkrun.
    Krun,
    /// QEMU.
    Qemu,
}

impl BackendKind {
    /// The name users type.
    pub fn name(self) -> &'static str {
        match self {
            Self::Krun => "krun",
            Self::Qemu => "qemu",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Hardware acceleration for backends that can choose (QEMU); `auto`, `tcg` or `kvm` in a
/// sandbox's `sandbox.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM when it can really run guests, TCG otherwise.
    #[default]
    Auto,
    /// Software emulation.
    Tcg,
    /// KVM (fails when /dev/kvm is unusable).
    Kvm,
}

/// A host directory shared into the guest over virtio-fs (beyond the root); a sandbox's
/// `sandbox.json` keeps it as `{"host", "guest", "read_only"}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SharedDir {
    /// The host directory (absolute).
    #[serde(rename = "host")]
    pub host_path: PathBuf,
    /// Where it appears in the guest.
    #[serde(rename = "guest")]
    pub guest_path: String,
    /// Mounted read-only in the guest.
    pub read_only: bool,
}

/// The guest's network.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Network {
    /// A virtio-net card whose other end is krunbox's own user-mode gateway (`krunbox __net`,
    /// crate `krunbox-net`): egress under an [`EgressPolicy`](krunbox_net::policy::EgressPolicy)
    /// with every decision logged, DNS, published ports. Both backends; any kernel with
    /// virtio-net.
    User(Box<UserNetwork>),
    /// libkrun only: TSI (transparent socket impersonation) — the guest's TCP/UDP sockets are
    /// opened by the VMM process on the host, so the guest reaches whatever the host reaches,
    /// its loopback included: no egress policy. Needs libkrunfw's patched kernel.
    Tsi,
    /// No network device at all: the guest talks to the host only through the agent's vsock.
    Disabled,
}

impl Default for Network {
    fn default() -> Self {
        Self::User(Box::default())
    }
}

/// The user-mode network of one VM.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UserNetwork {
    /// Policy, published ports, static names.
    pub config: krunbox_net::NetConfig,
    /// Where the gateway logs its decisions (egress, DNS, published connections) besides the
    /// run directory's `net.log`, which goes with the VM.
    pub log: Option<PathBuf>,
    /// How `log` is written.
    #[serde(default)]
    pub log_format: net::LogFormat,
    /// The sandbox the network is of, named in its JSON records.
    #[serde(default)]
    pub sandbox: Option<String>,
}

/// What VM to start.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// The root filesystem directory.
    pub rootfs: PathBuf,
    /// The root is an image shared by many sandboxes: share it read-only and let the guest
    /// stack a writable overlay on it (guest-init's `krunbox.overlay=tmpfs`), so the
    /// directory is never written. `false`: the directory is the guest's writable root.
    pub root_overlay: bool,
    /// Further shared directories.
    pub shares: Vec<SharedDir>,
    /// vCPUs.
    pub cpus: u8,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// A kernel to boot instead of the backend's default (drivers built in).
    pub kernel: Option<PathBuf>,
    /// The guest agent binary (static, for the guest's architecture).
    pub guest_init: PathBuf,
    /// The guest's hostname.
    pub hostname: String,
    /// Acceleration (QEMU only).
    pub accel: Accel,
    /// guest-init's log level (`krunbox.log=`), if not the default.
    pub guest_log_level: Option<String>,
    /// The guest's network.
    pub network: Network,
    /// The host's SSH agent socket (`SSH_AUTH_SOCK`) to forward into the guest: guest
    /// connections to vsock port [`krunbox_protocol::SSH_AGENT_VSOCK_PORT`] of the host reach
    /// it, and guest-init offers them as `SSH_AUTH_SOCK` (the keys never leave the agent).
    pub ssh_agent: Option<PathBuf>,
    /// The guest path of a CA bundle (in one of the shares) every exec trusts.
    pub ca_bundle: Option<String>,
}

impl VmSpec {
    /// A spec with the defaults: 1 vCPU, 512 MiB, the backend's kernel.
    pub fn new(rootfs: PathBuf, guest_init: PathBuf) -> Self {
        Self {
            rootfs,
            root_overlay: false,
            shares: Vec::new(),
            cpus: 1,
            memory_mib: 512,
            kernel: None,
            guest_init,
            hostname: "krunbox".into(),
            accel: Accel::Auto,
            guest_log_level: None,
            network: Network::default(),
            ssh_agent: None,
            ca_bundle: None,
        }
    }

    /// Rejects what no backend can carry to guest-init: its settings travel on the kernel
    /// command line (QEMU's `-append`; libkrun's double-quoted `krun_set_env` words), so no
    /// spaces, quotes or control characters, and share paths without `,` or `:`.
    pub fn validate(&self) -> Result<(), BackendError> {
        let spec = self;
        let plain = |s: &str| {
            !s.is_empty()
                && !s
                    .chars()
                    .any(|c| c.is_whitespace() || c == '"' || c.is_control())
        };
        if !plain(&spec.hostname) || spec.hostname.len() > 64 {
            return Err(BackendError::InvalidSpec(format!(
                "hostname {:?} must be 1-64 characters without spaces or quotes",
                spec.hostname
            )));
        }
        for share in &spec.shares {
            if !plain(&share.guest_path)
                || share.guest_path.contains([',', ':'])
                || !share.guest_path.starts_with('/')
            {
                return Err(BackendError::InvalidSpec(format!(
                    "guest path {:?} must be absolute, without spaces, commas, colons or quotes",
                    share.guest_path
                )));
            }
            if !share.host_path.is_dir() {
                return Err(BackendError::InvalidSpec(format!(
                    "{} is not a directory",
                    share.host_path.display()
                )));
            }
        }
        if spec.cpus == 0 || spec.memory_mib < 128 {
            return Err(BackendError::InvalidSpec(format!(
                "{} vCPUs and {} MiB: need at least 1 vCPU and 128 MiB",
                spec.cpus, spec.memory_mib
            )));
        }
        if let Some(level) = &spec.guest_log_level {
            if !plain(level) {
                return Err(BackendError::InvalidSpec(format!(
                    "guest log level {level:?}"
                )));
            }
        }
        if let Some(socket) = &spec.ssh_agent {
            check_ssh_agent(socket).map_err(|reason| {
                BackendError::InvalidSpec(format!("SSH agent {}: {reason}", socket.display()))
            })?;
        }
        Ok(())
    }
}

/// Checks that `socket` is a Unix socket (after symlinks), as an SSH agent's is; the error
/// says why not.
pub fn check_ssh_agent(socket: &Path) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::metadata(socket) {
        Ok(meta) if meta.file_type().is_socket() => Ok(()),
        Ok(_) => Err("not a socket".into()),
        Err(err) => Err(err.to_string()),
    }
}

/// Whether a backend can boot guests on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Availability {
    /// It can; the detail says with what (e.g. "TCG (KVM unusable: ...)").
    Available(String),
    /// It cannot, and why.
    Unavailable(String),
}

impl Availability {
    /// Whether it can.
    pub fn is_available(&self) -> bool {
        matches!(self, Self::Available(_))
    }
}

/// One line of `krunbox doctor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// What was checked.
    pub what: String,
    /// Whether it is fine.
    pub ok: bool,
    /// What was found, or what to do.
    pub detail: String,
}

/// How a VM ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum VmExit {
    /// The VMM exited with this status (QEMU exits 0 on guest power-off and on a guest
    /// kernel panic with `panic=-1`).
    Exited(i32),
    /// The VMM was killed by this signal.
    Killed(i32),
    /// A process the VM cannot work without died, so the VM was stopped.
    HelperDied(Helper),
}

impl fmt::Display for VmExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exited(code) => write!(f, "the VMM exited with status {code}"),
            Self::Killed(signal) => write!(f, "the VMM was killed by signal {signal}"),
            Self::HelperDied(helper) => write!(f, "{helper} died, so the VM was stopped"),
        }
    }
}

/// A host process that serves a VM's devices (its death leaves the guest without them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Helper {
    /// The vsock device (QEMU: vhost-device-vsock): the guest agent's connection.
    Vsock,
    /// A virtio-fs server (QEMU: virtiofsd): the root filesystem or a share.
    FileServer,
    /// The guest network's gateway (`krunbox __net`).
    Network,
}

impl fmt::Display for Helper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Vsock => "the vsock device (vhost-device-vsock)",
            Self::FileServer => "a shared-directory server (virtiofsd)",
            Self::Network => "the network gateway",
        })
    }
}

/// A running (or ended) VM. Dropping it stops the VM and cleans up after it.
pub trait VmHandle: Send {
    /// Where the guest agent listens.
    fn agent_address(&self) -> AgentAddress;
    /// The guest console log (kernel and guest-init messages); valid until the handle drops.
    fn console_log(&self) -> PathBuf;
    /// What the VMM itself said (e.g. the tail of QEMU's log), for error reports.
    fn diagnostics(&self) -> String {
        String::new()
    }
    /// Whether the host may connect to the agent yet (QEMU: only once the guest says it
    /// listens, see [`krunbox_protocol::AGENT_READY_LINE`]); connecting before is harmless
    /// elsewhere.
    fn agent_connectable(&mut self) -> bool {
        true
    }
    /// How the VM ended, if it has.
    fn try_wait(&mut self) -> Result<Option<VmExit>, BackendError>;
    /// Stops the VM now, without waiting for the guest.
    fn kill(&mut self) -> Result<(), BackendError>;
    /// Freezes the VM until [`Self::resume`]: its VMM process is stopped (no CPU), its memory
    /// kept. The guest's clock follows the host's (kvmclock; TCG's TSC is host time), so it is
    /// right again once resumed; its timers that came due fire then.
    fn pause(&mut self) -> Result<(), BackendError>;
    /// Thaws a paused VM (a VM that runs is left as it is).
    fn resume(&mut self) -> Result<(), BackendError>;
}

/// A way to run VMs.
pub trait Backend {
    /// Which backend this is.
    fn kind(&self) -> BackendKind;
    /// Whether it can boot guests here.
    fn availability(&self) -> Availability;
    /// Whether it can boot guests here when the spec brings its own kernel (`--kernel`) or not:
    /// a backend whose default kernel is missing may still boot one given.
    fn availability_for(&self, custom_kernel: bool) -> Availability {
        let _ = custom_kernel;
        self.availability()
    }
    /// What it needs and what it found, for `krunbox doctor`.
    fn checks(&self) -> Vec<Check> {
        Vec::new()
    }
    /// Starts a VM. Returns once the VMM runs; the guest may still be booting.
    fn start(&self, spec: &VmSpec) -> Result<Box<dyn VmHandle>, BackendError>;
}

/// Doctor's lines on what a backend can do with a running VM: `krunbox pause`/`resume` (how),
/// and snapshot/restore/fork (not yet: why not).
pub fn pause_and_snapshot_checks(pause_how: &str, no_snapshot_because: &str) -> [Check; 2] {
    [
        Check {
            what: "pause/resume".into(),
            ok: true,
            detail: pause_how.into(),
        },
        Check {
            what: "snapshot/restore/fork".into(),
            ok: false,
            detail: format!("not supported: {no_snapshot_because}"),
        },
    ]
}

/// Why a VM could not be started or supervised.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The backend cannot run guests on this host.
    #[error("the {backend} backend is not available: {reason}")]
    Unavailable {
        /// Which backend.
        backend: BackendKind,
        /// Why.
        reason: String,
    },
    /// The guest kernel.
    #[error("guest kernel: {0}")]
    Kernel(#[from] crate::backend::qemu::guest_kernel::KernelError),
    /// The initramfs.
    #[error("initramfs: {0}")]
    Initramfs(#[from] crate::backend::qemu::initramfs::InitramfsError),
    /// The spec is unusable.
    #[error("invalid VM configuration: {0}")]
    InvalidSpec(String),
    /// A process the VM needs failed to start.
    #[error("{name} failed to start: {detail}")]
    Helper {
        /// Which process (qemu, virtiofsd, vhost-device-vsock, the supervisor).
        name: String,
        /// What happened, with the tail of its log.
        detail: String,
    },
    /// Talking to the VM's supervisor failed.
    #[error("VM supervisor: {0}")]
    Supervisor(String),
    /// This handle cannot do that (it is not the VM's owner).
    #[error("{0}")]
    NotTheOwner(&'static str),
    /// A file operation.
    #[error(transparent)]
    Io(#[from] crate::io_error::IoError),
    /// A lock.
    #[error(transparent)]
    Lock(#[from] crate::lock::LockError),
    /// The VM's run directory (its errors name the path; transparent, so an unusable runtime
    /// root is reported once).
    #[error(transparent)]
    RunDir(#[from] crate::rundir::RunDirError),
    /// The data directory is not ours.
    #[error(transparent)]
    DataDir(#[from] crate::private_dir::PrivateDirError),
}

/// Why a helper process never created the socket it was started to create.
#[derive(Debug)]
pub enum SocketNotReady {
    /// It exited first.
    Exited(std::process::ExitStatus),
    /// It was still running when the time ran out.
    TimedOut,
}

/// Waits until `child` creates `socket`, it exits, or `timeout` passes.
pub fn wait_for_socket(
    child: &mut std::process::Child,
    socket: &Path,
    timeout: std::time::Duration,
) -> Result<(), SocketNotReady> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if socket.exists() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(SocketNotReady::Exited(status));
        }
        if std::time::Instant::now() >= deadline {
            return Err(SocketNotReady::TimedOut);
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// How much of the end of a log [`log_tail`] reads: the guest writes the console, so its
/// size is the guest's to choose.
const LOG_TAIL_BYTES: u64 = 64 * 1024;

/// The last `lines` lines of a (console) log, lossily decoded; empty if unreadable. Reads at
/// most the last [`LOG_TAIL_BYTES`], whatever the file's size.
pub fn log_tail(path: &Path, lines: usize) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(LOG_TAIL_BYTES);
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err()
        || file.take(LOG_TAIL_BYTES).read_to_end(&mut bytes).is_err()
    {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The backends compiled into this binary.
pub fn all() -> Vec<Box<dyn Backend>> {
    vec![
        Box::new(krun::KrunBackend::new()),
        Box::new(qemu::QemuBackend::new()),
    ]
}

/// The backend to use: `Some(kind)` as asked (refused with the reason when it cannot boot
/// guests here), `None` for auto (krun where it can boot guests, QEMU otherwise).
/// `custom_kernel`: the VM boots a kernel of the user's own.
pub fn select(
    kind: Option<BackendKind>,
    custom_kernel: bool,
) -> Result<Box<dyn Backend>, BackendError> {
    let mut backends = all();
    match kind {
        Some(kind) => {
            let backend = backends.into_iter().find(|b| b.kind() == kind).ok_or(
                BackendError::Unavailable {
                    backend: kind,
                    reason: "not compiled into this binary".into(),
                },
            )?;
            match backend.availability_for(custom_kernel) {
                Availability::Available(_) => Ok(backend),
                Availability::Unavailable(reason) => Err(BackendError::Unavailable {
                    backend: kind,
                    reason,
                }),
            }
        }
        None => {
            let mut reasons = Vec::new();
            for (index, backend) in backends.iter().enumerate() {
                match backend.availability_for(custom_kernel) {
                    Availability::Available(detail) => {
                        tracing::debug!(backend = %backend.kind(), %detail, "auto-selected");
                        return Ok(backends.swap_remove(index));
                    }
                    Availability::Unavailable(reason) => {
                        reasons.push(format!("{}: {reason}", backend.kind()))
                    }
                }
            }
            Err(BackendError::Unavailable {
                backend: BackendKind::Qemu,
                reason: format!("no backend can boot guests here ({})", reasons.join("; ")),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ssh_agent_must_be_a_socket() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&socket, &link).unwrap();
        let mut spec = VmSpec::new(dir.path().to_owned(), "/gi".into());
        for agent in [&socket, &link] {
            spec.ssh_agent = Some(agent.clone());
            spec.validate().unwrap();
        }
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        spec.ssh_agent = Some(file);
        let err = spec.validate().unwrap_err().to_string();
        assert!(err.ends_with("file: not a socket"), "{err}");
        spec.ssh_agent = Some(dir.path().join("missing"));
        let err = spec.validate().unwrap_err().to_string();
        assert!(err.contains("No such file"), "{err}");
    }

    #[test]
    fn the_log_tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        std::fs::write(&log, "a\nb\nc\nd\n").unwrap();
        assert_eq!(log_tail(&log, 2), "c\nd");
        assert_eq!(log_tail(&log, 10), "a\nb\nc\nd");
        assert_eq!(log_tail(&dir.path().join("missing"), 3), "");
        // A console the guest filled: only its end is read.
        let big = dir.path().join("big.log");
        let mut text = "x".repeat(10 * 1024 * 1024);
        text.push_str("\nlast line");
        std::fs::write(&big, text).unwrap();
        let tail = log_tail(&big, 3);
        assert!(tail.ends_with("\nlast line"));
        assert!(tail.len() <= LOG_TAIL_BYTES as usize);
    }
}
