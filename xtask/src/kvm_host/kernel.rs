//! The KVM host's kernel: the QEMU backend's guest kernel (Debian's cloud kernel), prepared by
//! `krunbox kernel fetch` in the user's data directory, which also keeps the KVM modules
//! apart (`kvm-host-modules/`, see vmm's `guest_kernel::KVM_HOST_MODULES`). So there is one
//! fetcher, krunbox's, and this only reads what it prepared.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Mirrors vmm's `guest_kernel::KVM_HOST_MODULES_DIR` (xtask cannot link the binary crate).
const KVM_HOST_MODULES_DIR: &str = "kvm-host-modules";

/// Why there is no kernel for the KVM host.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// `krunbox kernel fetch|path` failed or could not run.
    #[error("`{command}` failed: {detail}")]
    Krunbox {
        /// The command line.
        command: String,
        /// Its error output or the spawn error.
        detail: String,
    },
    /// A directory of the prepared kernel could not be read.
    #[error("read {path}: {source}")]
    Read {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The prepared kernel has no KVM modules.
    #[error("the prepared kernel in {0} has no kvm-amd module in kvm-host-modules/ (its package lacks KVM?)")]
    NoKvmModules(PathBuf),
}

/// The kernel image and the modules the KVM host loads, in order.
#[derive(Debug)]
pub struct HostKernel {
    /// The bzImage.
    pub vmlinuz: PathBuf,
    /// `modules/` (virtio, virtio-fs, overlay, ...) and then `kvm-host-modules/`.
    pub modules: Vec<PathBuf>,
}

/// The prepared kernel, prepared first with `krunbox kernel fetch` when there is none or it
/// lacks the KVM modules (`kernel path` is instant; `fetch` asks apt, seconds on a busy
/// machine, even when it has nothing to do).
pub fn prepare(krunbox: &Path) -> Result<HostKernel, KernelError> {
    match krunbox_output(krunbox, "path").map(|dir| listed(Path::new(dir.trim()))) {
        Ok(Ok(kernel)) => Ok(kernel),
        _ => {
            eprintln!("kvm-host: preparing the kernel with `krunbox kernel fetch`");
            krunbox_output(krunbox, "fetch")?;
            listed(Path::new(krunbox_output(krunbox, "path")?.trim()))
        }
    }
}

fn listed(dir: &Path) -> Result<HostKernel, KernelError> {
    let mut modules = ko_files(&dir.join("modules"))?;
    let kvm = ko_files(&dir.join(KVM_HOST_MODULES_DIR))?;
    if !kvm
        .iter()
        .any(|m| m.to_string_lossy().ends_with("-kvm_amd.ko"))
    {
        return Err(KernelError::NoKvmModules(dir.to_owned()));
    }
    modules.extend(kvm);
    Ok(HostKernel {
        vmlinuz: dir.join("vmlinuz"),
        modules,
    })
}

fn krunbox_output(krunbox: &Path, subcommand: &str) -> Result<String, KernelError> {
    let mut cmd = Command::new(krunbox);
    cmd.args(["kernel", subcommand]);
    let command = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| KernelError::Krunbox {
        command: command.clone(),
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(KernelError::Krunbox {
            command,
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The `.ko` files of `dir`, sorted by name (their `NN-` prefix is the load order).
fn ko_files(dir: &Path) -> Result<Vec<PathBuf>, KernelError> {
    let entries = std::fs::read_dir(dir).map_err(|source| KernelError::Read {
        path: dir.to_owned(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "ko"))
        .collect();
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_are_listed_in_name_order_and_only_ko_files() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["01-kvm_amd.ko", "00-kvm.ko", "README"] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        let names: Vec<String> = ko_files(dir.path())
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["00-kvm.ko", "01-kvm_amd.ko"]);
        let err = ko_files(&dir.path().join("missing")).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
