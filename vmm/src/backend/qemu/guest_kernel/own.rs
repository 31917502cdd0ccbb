//! krunbox's own guest kernel, as `cargo xtask build-kernel` builds it, installed for this user
//! by `krunbox kernel install BUILD_DIR`:
//!
//! ```text
//! $DATA/kernels/krunbox/<release>/vmlinux   the ELF image QEMU boots through PVH
//! $DATA/kernels/krunbox/<release>/bzImage   (when the build has one)
//! $DATA/kernels/krunbox/<release>/config    (when the build has one)
//! $DATA/kernels/krunbox/current             the release to use
//! ```
//!
//! Installing copies (a build tree may be rebuilt or removed under a running VM) into a
//! temporary directory that is renamed into place, under the kernels lock, like
//! [`super::debian::fetch`].

use std::path::{Path, PathBuf};

use super::{current, io, kernels_dir, put_in_place, KernelError};

/// The directory of krunbox's own kernels under `$DATA/kernels`.
pub const OWN_DIR: &str = "krunbox";
/// The image the QEMU backend boots.
const VMLINUX: &str = "vmlinux";
/// Copied along when the build has them.
const OPTIONAL_FILES: &[&str] = &["bzImage", "config", "build-info"];
/// The kernel release file of a build (`make kernelrelease`).
const RELEASE_FILE: &str = "release";

/// An installed kernel of krunbox's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnKernel {
    /// Its `uname -r`, e.g. `6.1.192-krunbox`.
    pub release: String,
    /// `$DATA/kernels/krunbox/<release>`.
    pub dir: PathBuf,
    /// The ELF image.
    pub vmlinux: PathBuf,
}

/// The installed kernel `current` names, if any.
pub fn installed(data: &Path) -> Option<OwnKernel> {
    let own = kernels_dir(data).join(OWN_DIR);
    let release = current(&own)?;
    let dir = own.join(&release);
    let vmlinux = dir.join(VMLINUX);
    vmlinux.is_file().then_some(OwnKernel {
        release,
        dir,
        vmlinux,
    })
}

/// Installs the kernel build in `build` (a directory of `cargo xtask build-kernel`) and makes
/// it the current one; a release installed already is replaced.
pub fn install(data: &Path, build: &Path) -> Result<OwnKernel, KernelError> {
    let release = read_release(build)?;
    check_vmlinux(&build.join(VMLINUX))?;
    let own = kernels_dir(data).join(OWN_DIR);
    crate::private_dir::create_all(&own).map_err(io("create", &own))?;
    let _lock = crate::lock::exclusive(&kernels_dir(data).join(".lock"))?;
    let staging = tempfile::Builder::new()
        .prefix(".install-")
        .tempdir_in(&own)
        .map_err(io("create a temporary directory in", &own))?;
    for name in std::iter::once(&VMLINUX).chain(OPTIONAL_FILES) {
        let from = build.join(name);
        if *name != VMLINUX && !from.is_file() {
            continue;
        }
        let to = staging.path().join(name);
        std::fs::copy(&from, &to).map_err(io("copy", &from))?;
    }
    // Renamed away, the staging directory leaves nothing for its drop to remove.
    put_in_place(staging.path(), &own, &release)?;
    installed(data).ok_or_else(|| KernelError::NotABuild {
        path: build.to_owned(),
        why: format!("{} vanished after installing", own.join(&release).display()),
    })
}

/// The build's `release`: one line of letters, digits and `.`, `-`, `_`, `+` (it names a
/// directory).
fn read_release(build: &Path) -> Result<String, KernelError> {
    let path = build.join(RELEASE_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| KernelError::NotABuild {
        path: path.clone(),
        why: e.to_string(),
    })?;
    let release = text.trim();
    let valid = !release.is_empty()
        && release.len() <= 64
        && release != "."
        && release != ".."
        && release
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-+".contains(&b));
    if valid {
        Ok(release.to_owned())
    } else {
        Err(KernelError::NotABuild {
            path,
            why: format!("{release:?} is not a kernel release"),
        })
    }
}

/// An ELF file for this machine's architecture (QEMU boots it through its PVH note).
fn check_vmlinux(path: &Path) -> Result<(), KernelError> {
    use std::io::Read;
    let not_a_build = |why: String| KernelError::NotABuild {
        path: path.to_owned(),
        why,
    };
    let mut head = Vec::with_capacity(20);
    std::fs::File::open(path)
        .and_then(|file| file.take(20).read_to_end(&mut head))
        .map_err(|e| not_a_build(e.to_string()))?;
    if head.len() < 20 || &head[..4] != b"\x7fELF" {
        return Err(not_a_build("not an ELF file".into()));
    }
    // e_machine, little-endian at offset 18.
    let machine = u16::from_le_bytes([head[18], head[19]]);
    let expected: u16 = if cfg!(target_arch = "aarch64") {
        183 // EM_AARCH64
    } else {
        62 // EM_X86_64
    };
    if machine != expected {
        return Err(not_a_build(format!(
            "an ELF file for machine {machine}, not this host's ({expected})"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake build: an ELF header for this host's machine and a release.
    fn build(dir: &Path, release: &str) {
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        let machine: u16 = if cfg!(target_arch = "aarch64") {
            183
        } else {
            62
        };
        elf[18..20].copy_from_slice(&machine.to_le_bytes());
        std::fs::write(dir.join(VMLINUX), elf).unwrap();
        std::fs::write(dir.join("bzImage"), b"bz").unwrap();
        std::fs::write(dir.join(RELEASE_FILE), format!("{release}\n")).unwrap();
    }

    #[test]
    fn an_installed_build_is_found_and_a_second_install_replaces_it() {
        let data = tempfile::tempdir().unwrap();
        let built = tempfile::tempdir().unwrap();
        assert_eq!(installed(data.path()), None);
        build(built.path(), "6.1.1-krunbox");
        let kernel = install(data.path(), built.path()).unwrap();
        assert_eq!(kernel.release, "6.1.1-krunbox");
        assert!(kernel.dir.join("bzImage").is_file());
        assert_eq!(installed(data.path()), Some(kernel.clone()));
        std::fs::write(built.path().join("bzImage"), b"new").unwrap();
        let again = install(data.path(), built.path()).unwrap();
        assert_eq!(std::fs::read(again.dir.join("bzImage")).unwrap(), b"new");
        build(built.path(), "6.1.2-krunbox");
        let newer = install(data.path(), built.path()).unwrap();
        assert_eq!(installed(data.path()).unwrap().release, newer.release);
    }

    #[test]
    fn what_is_not_a_build_is_refused_with_the_reason() {
        let data = tempfile::tempdir().unwrap();
        let built = tempfile::tempdir().unwrap();
        let err = install(data.path(), built.path()).unwrap_err().to_string();
        assert!(err.contains("release"), "{err}");
        for release in ["../evil", "a/b", "", ".."] {
            build(built.path(), release);
            let err = install(data.path(), built.path()).unwrap_err().to_string();
            assert!(err.contains("is not a kernel release"), "{release}: {err}");
        }
        build(built.path(), "6.1.1-krunbox");
        std::fs::write(built.path().join(VMLINUX), b"#!/bin/sh\n").unwrap();
        let err = install(data.path(), built.path()).unwrap_err().to_string();
        assert!(err.contains("not an ELF file"), "{err}");
        assert_eq!(installed(data.path()), None);
    }
}
