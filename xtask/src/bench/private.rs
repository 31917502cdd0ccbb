//! A krunbox of the benchmarks' own: a private data directory (its own image store, initramfs
//! cache and sandboxes) and runtime directory, so a benchmark never sees or touches the
//! user's sandboxes and images. The user's prepared guest kernels are shared through a
//! symlink, as the end-to-end tests do, so nothing is downloaded again: all of them, or only
//! Debian's (to time the QEMU backend's fallback kernel).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

use crate::workspace;

/// Which of the user's guest kernels a private krunbox sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelSet {
    /// All of them (krunbox's own, when installed, is the QEMU default).
    User,
    /// Only the prepared Debian kernel.
    DebianOnly,
}

pub struct PrivateKrunbox {
    binary: PathBuf,
    data: tempfile::TempDir,
    runtime: tempfile::TempDir,
}

impl PrivateKrunbox {
    /// Builds krunbox (release) and guest-init (a stale agent would be timed otherwise),
    /// makes sure the Debian kernel is prepared in the user's data directory
    /// (`krunbox kernel fetch`: instant when it is) and creates the directories.
    pub fn new() -> anyhow::Result<Self> {
        Self::with_binary(Self::build()?)
    }

    /// What [`new`](Self::new) builds and prepares before it makes the directories; returns
    /// the release krunbox.
    pub fn build() -> anyhow::Result<PathBuf> {
        let binary = workspace::release_krunbox()?;
        crate::build_init::run(&crate::build_init::Args::x86_64())?;
        workspace::run(
            Command::new(&binary)
                .args(["kernel", "fetch"])
                .stdout(std::process::Stdio::null()),
        )
        .context("prepare the guest kernel (krunbox kernel fetch)")?;
        Ok(binary)
    }

    /// The private directories for an already built `binary` (inside the KVM host, which
    /// cannot build).
    pub fn with_binary(binary: PathBuf) -> anyhow::Result<Self> {
        Self::with_kernels(binary, KernelSet::User)
    }

    /// [`with_binary`](Self::with_binary), seeing only `kernels` of the user's.
    pub fn with_kernels(binary: PathBuf, kernels: KernelSet) -> anyhow::Result<Self> {
        let default_image = workspace::target_dir().join("rootfs/default");
        anyhow::ensure!(
            default_image.is_dir(),
            "no default image in {}: run `cargo xtask build-rootfs`",
            default_image.display()
        );
        let data = tempfile::Builder::new()
            .prefix("krunbox-bench-data-")
            .tempdir()
            .context("create a private data directory")?;
        let user_kernels = user_data_dir().join("kernels");
        let link = |from: &Path, to: &Path| {
            std::os::unix::fs::symlink(from, to).with_context(|| format!("link {}", from.display()))
        };
        match kernels {
            KernelSet::User => link(&user_kernels, &data.path().join("kernels"))?,
            KernelSet::DebianOnly => {
                let abi = std::fs::read_to_string(user_kernels.join("current"))
                    .context("no prepared Debian kernel (krunbox kernel fetch)")?;
                let abi = abi.trim();
                let own = data.path().join("kernels");
                std::fs::create_dir(&own).context("create the kernels directory")?;
                link(&user_kernels.join(abi), &own.join(abi))?;
                std::fs::write(own.join("current"), abi).context("write kernels/current")?;
            }
        }
        // Short: Unix socket paths in it must stay under 108 bytes.
        let runtime = tempfile::Builder::new()
            .prefix("kbx-bench-")
            // krunbox refuses a runtime root others can reach.
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .tempdir_in("/tmp")
            .context("create a private runtime directory")?;
        Ok(Self {
            binary,
            data,
            runtime,
        })
    }

    /// `krunbox ARGS` with the private directories and nothing of the caller's krunbox
    /// environment (backend, kernel, log level).
    pub fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(&self.binary);
        cmd.args(args)
            .env("KRUNBOX_DATA_DIR", self.data.path())
            .env("KRUNBOX_RUNTIME_DIR", self.runtime.path());
        for name in [
            "KRUNBOX_BACKEND",
            "KRUNBOX_KERNEL",
            "KRUNBOX_ACCEL",
            "KRUNBOX_LOG",
            "KRUNBOX_DEFAULT_IMAGE",
        ] {
            cmd.env_remove(name);
        }
        cmd
    }

    /// `krunbox ARGS` (stdin empty), failing with its stderr; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let output = self
            .command(args)
            .stdin(std::process::Stdio::null())
            .output()
            .with_context(|| format!("run krunbox {}", args.join(" ")))?;
        if !output.status.success() {
            anyhow::bail!(
                "krunbox {} failed with {}: {}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        String::from_utf8(output.stdout)
            .with_context(|| format!("krunbox {}'s output", args.join(" ")))
    }

    /// The private data directory.
    pub fn data_dir(&self) -> &Path {
        self.data.path()
    }

    /// The private runtime directory.
    pub fn runtime_dir(&self) -> &Path {
        self.runtime.path()
    }
}

/// The user's data directory, by krunbox's rule: `$KRUNBOX_DATA_DIR`,
/// `$XDG_DATA_HOME/krunbox`, `~/.local/share/krunbox`.
fn user_data_dir() -> PathBuf {
    krunbox_image::store::default_data_dir()
}

/// The x86_64 kernel `cargo xtask build-kernel` leaves in `$KRUNBOX_CACHE_DIR` (else the
/// workspace's `.krunbox-cache/`), if it was built.
pub fn built_kernel() -> Option<PathBuf> {
    let cache = std::env::var_os("KRUNBOX_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace::root().join(".krunbox-cache"));
    let vmlinux = cache.join("kernel/x86_64/vmlinux");
    vmlinux.is_file().then_some(vmlinux)
}
