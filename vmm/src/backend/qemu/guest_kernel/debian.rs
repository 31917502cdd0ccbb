//! Debian's cloud kernel for the QEMU backend, prepared once: the fallback when krunbox's
//! own kernel ([`super::own`]) is not installed, and the KVM host's kernel (`cargo xtask
//! kvm-host`).
//!
//! `krunbox kernel fetch` (also run on first use) resolves the current ABI
//! (`apt-cache depends linux-image-cloud-amd64`), downloads that package with
//! `apt-get download`, unpacks it with `dpkg-deb -x`, and keeps only `vmlinuz` and the
//! modules a krunbox guest needs, in load order, decompressed:
//!
//! ```text
//! $DATA/kernels/<abi>/vmlinuz
//! $DATA/kernels/<abi>/modules/00-virtio_ring.ko, 01-..., ...
//! $DATA/kernels/<abi>/kvm-host-modules/00-irqbypass.ko, ... (KVM_HOST_MODULES, see there)
//! $DATA/kernels/<abi>/initramfs-<guest-init hash>.cpio   (built by crate::backend::qemu::initramfs)
//! $DATA/kernels/current                                  (the ABI to use)
//! ```
//!
//! The modules are loaded by guest-init from the initramfs (`/krunbox/modules/NN-name.ko`). A
//! kernel with these drivers built in (`cargo xtask build-kernel`, or any `--kernel`) needs none.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{io, kernels_dir, modinfo, put_in_place, set_current, KernelError};

/// The modules a guest of the QEMU backend needs (their dependencies are added):
/// virtio-pci, vsock over virtio, virtio-fs, overlayfs for copy-on-write roots,
/// virtio-balloon (free page reporting gives memory the guest frees back to the host),
/// virtio-net (the guest's interface to the host's user-mode network stack; it brings
/// `net_failover` and `failover` by its `depends=`) and virtio-rng (entropy from the host). A
/// kernel prepared before a module was added here is prepared again.
pub const GUEST_MODULES: &[&str] = &[
    "virtio_ring",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio",
    "virtio_pci",
    "virtio_mmio",
    "vsock",
    "vmw_vsock_virtio_transport_common",
    "vmw_vsock_virtio_transport",
    "fuse",
    "virtiofs",
    "overlay",
    "virtio_balloon",
    "virtio_net",
    "virtio_rng",
];

/// What `cargo xtask kvm-host` loads after [`GUEST_MODULES`] to make a guest of QEMU's TCG a
/// KVM host for the libkrun backend: KVM on AMD SVM (TCG emulates SVM, not VMX) with
/// `irqbypass` by its `depends=`. Kept apart in [`KVM_HOST_MODULES_DIR`] (with any dependency
/// not among the guest's), so the initramfs of ordinary guests stays as it is; a kernel whose
/// package lacks them gets the directory empty.
pub const KVM_HOST_MODULES: &[&str] = &["kvm", "kvm_amd"];

/// The directory of [`KVM_HOST_MODULES`] in a prepared kernel's directory, in load order
/// (to be loaded after `modules/`).
pub const KVM_HOST_MODULES_DIR: &str = "kvm-host-modules";

/// The Debian metapackage that depends on the current cloud kernel.
pub const METAPACKAGE: &str = "linux-image-cloud-amd64";

/// A prepared kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedKernel {
    /// The kernel ABI, e.g. `6.1.0-28-cloud-amd64`.
    pub abi: String,
    /// Its directory under `$DATA/kernels`.
    pub dir: PathBuf,
    /// The bzImage.
    pub vmlinuz: PathBuf,
    /// The modules, in load order.
    pub modules: Vec<PathBuf>,
}

/// The kernel prepared earlier, if any.
pub fn prepared(data: &Path) -> Option<PreparedKernel> {
    let kernels = kernels_dir(data);
    let abi = super::current(&kernels)?;
    load(&kernels.join(&abi), &abi)
}

fn load(dir: &Path, abi: &str) -> Option<PreparedKernel> {
    let vmlinuz = dir.join("vmlinuz");
    if !vmlinuz.is_file() {
        return None;
    }
    let mut modules: Vec<PathBuf> = std::fs::read_dir(dir.join("modules"))
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "ko"))
        .collect();
    modules.sort();
    let has = |wanted: &str| {
        modules.iter().any(|m| {
            m.file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.split_once('-'))
                .is_some_and(|(_, name)| name == wanted)
        })
    };
    if !GUEST_MODULES.iter().all(|wanted| has(wanted)) {
        tracing::info!(dir = %dir.display(), "the prepared kernel lacks a module krunbox now needs");
        return None;
    }
    Some(PreparedKernel {
        abi: abi.to_owned(),
        dir: dir.to_owned(),
        vmlinuz,
        modules,
    })
}

/// The prepared kernel, fetching it first when there is none.
pub fn prepared_or_fetch(data: &Path) -> Result<PreparedKernel, KernelError> {
    match prepared(data) {
        Some(kernel) => Ok(kernel),
        None => {
            eprintln!(
                "krunbox: preparing the guest kernel (Debian's {METAPACKAGE}); this happens once"
            );
            fetch(data)
        }
    }
}

/// Downloads and prepares the current Debian cloud kernel (a no-op when that ABI is already
/// prepared). Safe against concurrent krunbox processes (a lock) and interruption (everything
/// is built in a temporary directory and renamed into place).
pub fn fetch(data: &Path) -> Result<PreparedKernel, KernelError> {
    let kernels = kernels_dir(data);
    crate::private_dir::create_all(&kernels).map_err(io("create", &kernels))?;
    let _lock = crate::lock::exclusive(&kernels.join(".lock"))?;
    let package = resolve_package()?;
    let abi = package
        .strip_prefix("linux-image-")
        .unwrap_or(&package)
        .to_owned();
    let dir = kernels.join(&abi);
    if let Some(kernel) = load(&dir, &abi) {
        // Prepared before the KVM host's modules were kept: prepared again.
        if dir.join(KVM_HOST_MODULES_DIR).is_dir() {
            set_current(&kernels, &abi)?;
            return Ok(kernel);
        }
    }
    tracing::info!(%package, "downloading the guest kernel");
    let work = tempfile::Builder::new()
        .prefix(".fetch-")
        .tempdir_in(&kernels)
        .map_err(io("create a temporary directory in", &kernels))?;
    run(Command::new("apt-get")
        .args(["download", "-q", &package])
        .current_dir(work.path()))?;
    let deb = find_file(work.path(), |name| name.ends_with(".deb")).ok_or_else(|| {
        KernelError::NotInPackage {
            what: "the downloaded .deb".into(),
            package: package.clone(),
        }
    })?;
    let unpacked = work.path().join("unpacked");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;

    let staged = work.path().join(&abi);
    let staged_modules = staged.join("modules");
    std::fs::create_dir_all(&staged_modules).map_err(io("create", &staged_modules))?;
    let vmlinuz = find_file(&unpacked.join("boot"), |name| name.starts_with("vmlinuz-"))
        .ok_or_else(|| KernelError::NotInPackage {
            what: "boot/vmlinuz-*".into(),
            package: package.clone(),
        })?;
    std::fs::copy(&vmlinuz, staged.join("vmlinuz")).map_err(io("copy", &vmlinuz))?;

    let modules = ModuleTree::scan(&unpacked.join("lib/modules"))
        .or_else(|| ModuleTree::scan(&unpacked.join("usr/lib/modules")))
        .ok_or_else(|| KernelError::NotInPackage {
            what: "lib/modules".into(),
            package: package.clone(),
        })?;
    let mut images = std::collections::HashMap::new();
    let mut failure = None;
    let mut depends_of = |name: &str| {
        let path = modules.find(name)?;
        match read_module(&path).and_then(|bytes| {
            let deps = modinfo::depends(&path, &bytes)?;
            Ok((bytes, deps))
        }) {
            Ok((bytes, deps)) => {
                images.insert(name.to_owned(), bytes);
                Some(deps)
            }
            Err(err) => {
                failure.get_or_insert(err);
                Some(Vec::new())
            }
        }
    };
    let order = modinfo::load_order(GUEST_MODULES, &mut depends_of);
    let with_kvm_host: Vec<&str> = GUEST_MODULES
        .iter()
        .chain(KVM_HOST_MODULES)
        .copied()
        .collect();
    let kvm_host_order = modinfo::load_order(&with_kvm_host, &mut depends_of);
    if let Some(err) = failure {
        return Err(err);
    }
    let order = order?;
    let kvm_host_extras = match kvm_host_order {
        Ok(full) => loaded_after(&order, full),
        Err(err) => {
            tracing::warn!(%err, "the kernel package has no KVM modules: no `cargo xtask kvm-host`");
            Vec::new()
        }
    };
    let staged_kvm_host = staged.join(KVM_HOST_MODULES_DIR);
    std::fs::create_dir_all(&staged_kvm_host).map_err(io("create", &staged_kvm_host))?;
    for (dir, names) in [
        (&staged_modules, &order),
        (&staged_kvm_host, &kvm_host_extras),
    ] {
        for (index, name) in names.iter().enumerate() {
            let bytes = images.get(name).ok_or_else(|| KernelError::NotInPackage {
                what: format!("module {name}"),
                package: package.clone(),
            })?;
            let dest = dir.join(format!("{index:02}-{name}.ko"));
            std::fs::write(&dest, bytes).map_err(io("write", &dest))?;
        }
    }
    // One prepared before GUEST_MODULES grew is replaced.
    put_in_place(&staged, &kernels, &abi)?;
    load(&dir, &abi).ok_or_else(|| KernelError::NotInPackage {
        what: "vmlinuz after unpacking".into(),
        package,
    })
}

/// The modules of `full` (a load order that includes all of `first`) that are not in `first`,
/// in `full`'s order: loading `first` and then these satisfies every dependency.
fn loaded_after(first: &[String], full: Vec<String>) -> Vec<String> {
    full.into_iter().filter(|m| !first.contains(m)).collect()
}

/// `linux-image-<abi>-cloud-amd64`, as the metapackage depends on it today.
fn resolve_package() -> Result<String, KernelError> {
    let out = run(Command::new("apt-cache").args(["depends", METAPACKAGE]))?;
    parse_depends(&out).ok_or(KernelError::UnknownPackage(out))
}

fn parse_depends(apt_cache_output: &str) -> Option<String> {
    apt_cache_output
        .lines()
        .filter_map(|line| line.trim().strip_prefix("Depends: "))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-") && p.ends_with("-cloud-amd64") && *p != METAPACKAGE)
        .map(str::to_owned)
}

fn run(cmd: &mut Command) -> Result<String, KernelError> {
    let command = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| KernelError::Tool {
        command: command.clone(),
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(KernelError::Tool {
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

fn find_file(dir: &Path, matches: impl Fn(&str) -> bool) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.is_file() && p.file_name().and_then(|n| n.to_str()).is_some_and(&matches))
}

/// The module files of an unpacked kernel package, by module name.
struct ModuleTree {
    by_name: std::collections::HashMap<String, PathBuf>,
}

impl ModuleTree {
    fn scan(root: &Path) -> Option<Self> {
        if !root.is_dir() {
            return None;
        }
        let mut by_name = std::collections::HashMap::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for path in entries.filter_map(Result::ok).map(|e| e.path()) {
                if path.is_dir() {
                    stack.push(path);
                } else if let Some(name) = module_name(&path) {
                    by_name.insert(name, path);
                }
            }
        }
        Some(Self { by_name })
    }

    /// Module names use `_` and `-` interchangeably (modinfo reports `_`).
    fn find(&self, name: &str) -> Option<PathBuf> {
        self.by_name.get(&name.replace('-', "_")).cloned()
    }
}

fn module_name(path: &Path) -> Option<String> {
    let file = path.file_name()?.to_str()?;
    let stem = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .find_map(|suffix| file.strip_suffix(suffix))?;
    Some(stem.replace('-', "_"))
}

/// The module's ELF image, decompressed with the matching tool when needed.
fn read_module(path: &Path) -> Result<Vec<u8>, KernelError> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        Some("xz")
    } else if name.ends_with(".zst") {
        Some("zstd")
    } else if name.ends_with(".gz") {
        Some("gzip")
    } else {
        None
    };
    match tool {
        None => Ok(std::fs::read(path).map_err(io("read", path))?),
        Some(tool) => {
            let out = Command::new(tool)
                .args(["-d", "-c"])
                .arg(path)
                .output()
                .map_err(|e| KernelError::Tool {
                    command: format!("{tool} -d -c {}", path.display()),
                    detail: e.to_string(),
                })?;
            if !out.status.success() {
                return Err(KernelError::Tool {
                    command: format!("{tool} -d -c {}", path.display()),
                    detail: String::from_utf8_lossy(&out.stderr).into_owned(),
                });
            }
            Ok(out.stdout)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_abi_package_is_read_from_apt_cache_depends() {
        let out = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-28-cloud-amd64\n";
        assert_eq!(
            parse_depends(out).as_deref(),
            Some("linux-image-6.1.0-28-cloud-amd64")
        );
        assert_eq!(parse_depends("linux-image-cloud-amd64\n"), None);
    }

    #[test]
    fn the_kvm_host_modules_come_after_the_guest_ones_without_repeats() {
        let names = |list: &[&str]| list.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
        let guest = names(&["virtio_ring", "virtio", "fuse"]);
        let full = names(&[
            "irqbypass",
            "virtio_ring",
            "kvm",
            "virtio",
            "fuse",
            "kvm_amd",
        ]);
        assert_eq!(
            loaded_after(&guest, full),
            names(&["irqbypass", "kvm", "kvm_amd"])
        );
    }

    #[test]
    fn module_names_accept_compressed_files_and_dashes() {
        assert_eq!(
            module_name(Path::new("/x/virtio-ring.ko.xz")).as_deref(),
            Some("virtio_ring")
        );
        assert_eq!(
            module_name(Path::new("/x/fuse.ko")).as_deref(),
            Some("fuse")
        );
        assert_eq!(module_name(Path::new("/x/README")), None);
    }

    #[test]
    fn a_prepared_kernel_lists_its_modules_in_load_order() {
        let data = tempfile::tempdir().unwrap();
        let dir = kernels_dir(data.path()).join("6.1.0-1-cloud-amd64");
        std::fs::create_dir_all(dir.join("modules")).unwrap();
        std::fs::write(dir.join("vmlinuz"), b"k").unwrap();
        let files: Vec<String> = GUEST_MODULES
            .iter()
            .enumerate()
            .map(|(i, name)| format!("{i:02}-{name}.ko"))
            .collect();
        // Written in reverse: the order comes from the names.
        for file in files.iter().rev() {
            std::fs::write(dir.join("modules").join(file), b"m").unwrap();
        }
        assert_eq!(prepared(data.path()), None, "no `current` yet");
        set_current(&kernels_dir(data.path()), "6.1.0-1-cloud-amd64").unwrap();
        let kernel = prepared(data.path()).unwrap();
        assert_eq!(kernel.abi, "6.1.0-1-cloud-amd64");
        let names: Vec<_> = kernel
            .modules
            .iter()
            .map(|m| m.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, files);
        // A kernel prepared before a module was added is not good enough.
        std::fs::remove_file(dir.join("modules").join(files.last().unwrap())).unwrap();
        assert_eq!(prepared(data.path()), None);
    }
}
