//! What a sandbox is made of, recorded by `krunbox create` in `sandbox.json` and read by every
//! later command.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::backend::{Accel, BackendKind, Network, SharedDir, VmSpec};

/// A sandbox's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxSpec {
    /// Its name.
    pub name: String,
    /// IMAGE as given (`None`: the built-in default image).
    pub image: Option<String>,
    /// The root filesystem directory IMAGE resolved to when the sandbox was created (its
    /// `/etc/passwd` resolves `exec -u NAME`; `start` prepares IMAGE again and holds it).
    pub rootfs: PathBuf,
    /// The root is a read-only image with a writable overlay in guest memory (store images);
    /// `false` for a root filesystem directory, shared writable.
    #[serde(default)]
    pub overlay: bool,
    /// Shared directories.
    pub shares: Vec<SharedDir>,
    /// The guest's network (older sandboxes: the default).
    #[serde(default)]
    pub network: Network,
    /// vCPUs.
    pub cpus: u8,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Environment of every `exec` (the image's Env and `create -e`).
    pub env: Vec<(String, String)>,
    /// Default working directory of `exec`.
    pub workdir: Option<String>,
    /// Default uid and gid of `exec` (`None`: root).
    pub user: Option<(u32, u32)>,
    /// That user's supplementary groups (its memberships in the image's group file).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<u32>,
    /// The guest's hostname.
    pub hostname: String,
    /// A kernel instead of the backend's default.
    pub kernel: Option<PathBuf>,
    /// The backend asked for (`None`: the automatic choice).
    pub backend: Option<BackendKind>,
    /// QEMU's acceleration.
    pub accel: Accel,
    /// Seconds `start` waits for the guest agent.
    pub boot_timeout_secs: u64,
    /// Creation time, seconds since the epoch.
    pub created_at: u64,
    /// The host's SSH agent socket to forward into the guest (`create --ssh`).
    #[serde(default)]
    pub ssh_agent: Option<PathBuf>,
    /// The guest path of the host's CA bundle every exec trusts (`create --host-ca`).
    #[serde(default)]
    pub ca_bundle: Option<String>,
}

impl SandboxSpec {
    /// The VM to start for this sandbox.
    pub fn vm_spec(&self, guest_init: PathBuf) -> VmSpec {
        let mut spec = VmSpec::new(self.rootfs.clone(), guest_init);
        spec.root_overlay = self.overlay;
        spec.cpus = self.cpus;
        spec.memory_mib = self.memory_mib;
        spec.kernel = self.kernel.clone();
        spec.hostname = self.hostname.clone();
        spec.network = self.network.clone();
        spec.shares = self.shares.clone();
        spec.ssh_agent = self.ssh_agent.clone();
        spec.ca_bundle = self.ca_bundle.clone();
        spec.accel = self.accel;
        spec.guest_log_level = std::env::var("KRUNBOX_GUEST_LOG")
            .ok()
            .filter(|l| !l.is_empty());
        spec
    }
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}
