//! Loading kernel modules shipped in the initramfs.
//!
//! A distribution kernel (the QEMU backend's Debian cloud kernel) has virtio, vsock and
//! virtio-fs as modules. The host puts them in `/krunbox/modules/` named so that lexical order
//! is dependency order (`00-virtio_ring.ko`, ...); they are loaded with `finit_module`. A
//! kernel with the drivers built in (our own kernel, libkrunfw) ships no such directory.

use std::ffi::CString;
use std::path::Path;

use nix::errno::Errno;
use nix::kmod::{finit_module, ModuleInitFlags};

/// The directory the host fills.
pub const MODULES_DIR: &str = "/krunbox/modules";

/// Loads every module in `dir`, in name order; returns how many were loaded.
pub fn load_all(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut paths: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "ko"))
        .collect();
    paths.sort();
    let mut loaded = 0;
    for path in paths {
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(err) => {
                tracing::warn!(path = %path.display(), %err, "cannot open module");
                continue;
            }
        };
        let params = CString::default();
        match finit_module(&file, &params, ModuleInitFlags::empty()) {
            Ok(()) => loaded += 1,
            Err(Errno::EEXIST) => {}
            Err(errno) => tracing::warn!(path = %path.display(), %errno, "module failed to load"),
        }
    }
    loaded
}
