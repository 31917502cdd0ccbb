//! The QEMU backend's guest kernels, under `$DATA/kernels/`:
//!
//! - krunbox's own ([`own`], built by `cargo xtask build-kernel`, installed with
//!   `krunbox kernel install`): every driver a guest needs built in, booted as an ELF `vmlinux`
//!   through PVH (no firmware, no decompression, no modules). The default when installed.
//! - Debian's cloud kernel ([`debian`], `krunbox kernel fetch`): the fallback, with the modules
//!   a guest needs loaded from the initramfs. Also the KVM host's kernel (`cargo xtask
//!   kvm-host`).
//!
//! [`default_kernel`] makes that choice, once, for the backend and for `doctor`.

pub mod debian;
pub mod modinfo;
pub mod own;

use crate::io_error::io;
use std::path::{Path, PathBuf};

/// Why a kernel could not be prepared or installed.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The data directory is not ours.
    #[error(transparent)]
    DataDir(#[from] crate::private_dir::PrivateDirError),
    /// A tool it needs failed or is missing.
    #[error("`{command}` failed: {detail}")]
    Tool {
        /// The command line.
        command: String,
        /// Its error output or the spawn error.
        detail: String,
    },
    /// apt does not know the metapackage.
    #[error("apt does not know {package} (is this Debian? run `apt-get update`); `apt-cache depends` said: {0}", package = debian::METAPACKAGE)]
    UnknownPackage(String),
    /// Something expected is not in the package.
    #[error("{what} not found in {package}")]
    NotInPackage {
        /// What was looked for.
        what: String,
        /// The package.
        package: String,
    },
    /// A directory given to `krunbox kernel install` is not a kernel build.
    #[error("{path} is not a kernel build of `cargo xtask build-kernel`: {why}")]
    NotABuild {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// Module metadata.
    #[error(transparent)]
    Modinfo(#[from] modinfo::ModinfoError),
    /// A file operation.
    #[error(transparent)]
    Io(#[from] crate::io_error::IoError),
    /// The cache lock.
    #[error(transparent)]
    Lock(#[from] crate::lock::LockError),
}

/// The kernels directory under the data dir.
pub fn kernels_dir(data: &Path) -> PathBuf {
    data.join("kernels")
}

/// Points `dir/current` at `name` (atomically: a reader sees the old name or the new one).
fn set_current(dir: &Path, name: &str) -> Result<(), KernelError> {
    let current = dir.join("current");
    let tmp = dir.join(".current.tmp");
    std::fs::write(&tmp, name).map_err(io("write", &tmp))?;
    Ok(std::fs::rename(&tmp, &current).map_err(io("write", &current))?)
}

/// Makes the kernel staged in `staged` the one called `name` in `dir` and the current one
/// there. A kernel of that name already in place is moved aside first (a VM booting from it
/// keeps its open files), then removed.
fn put_in_place(staged: &Path, dir: &Path, name: &str) -> Result<(), KernelError> {
    let target = dir.join(name);
    if target.exists() {
        let old = dir.join(format!(".old-{name}-{}", std::process::id()));
        std::fs::rename(&target, &old).map_err(io("move aside", &target))?;
        if let Err(err) = std::fs::remove_dir_all(&old) {
            tracing::warn!(%err, dir = %old.display(), "cannot remove the previous kernel");
        }
    }
    std::fs::rename(staged, &target).map_err(io("move the kernel into", &target))?;
    set_current(dir, name)
}

/// The kernel `dir/current` names, if any.
fn current(dir: &Path) -> Option<String> {
    let name = std::fs::read_to_string(dir.join("current")).ok()?;
    let name = name.trim();
    (!name.is_empty() && !name.contains('/') && name != "..").then(|| name.to_owned())
}

/// The kernel the QEMU backend boots when the spec brings none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DefaultKernel {
    /// krunbox's own, installed.
    Own(own::OwnKernel),
    /// Debian's cloud kernel: prepared already, or to be fetched on first use.
    Debian(Option<debian::PreparedKernel>),
}

/// krunbox's own kernel when installed, else Debian's.
pub fn default_kernel(data: &Path) -> DefaultKernel {
    match own::installed(data) {
        Some(kernel) => DefaultKernel::Own(kernel),
        None => DefaultKernel::Debian(debian::prepared(data)),
    }
}
