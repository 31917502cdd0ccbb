//! What the host's hypervisor can do, for every backend: KVM on Linux, Hypervisor.framework on
//! macOS.
//!
//! `/dev/kvm` opening is not enough: a nested paravirtual host (`kvm_pvm`) exposes it, yet an
//! ordinary guest kernel dies there after minutes of emulation (KVM_EXIT_INTERNAL_ERROR). So
//! KVM counts as usable when `/dev/kvm` opens read-write, the hardware module (`kvm_intel` or
//! `kvm_amd`) is loaded, and `kvm_pvm` is not.

use std::path::Path;

/// What the host's KVM can do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmStatus {
    /// KVM can run standard guests.
    Usable,
    /// No KVM at all.
    Missing(String),
    /// KVM is present but cannot run standard guests.
    Unusable(String),
}

/// Probes the real host.
pub fn probe_kvm() -> KvmStatus {
    probe_kvm_at(Path::new("/dev/kvm"), Path::new("/sys/module"))
}

/// Probes with the given device node and module directory (for tests).
pub fn probe_kvm_at(dev_kvm: &Path, sys_module: &Path) -> KvmStatus {
    if sys_module.join("kvm_pvm").exists() {
        return KvmStatus::Unusable(
            "KVM present but cannot run standard guests: it is kvm_pvm, a nested paravirtual \
             host on which ordinary kernels die (KVM_EXIT_INTERNAL_ERROR)"
                .into(),
        );
    }
    if !dev_kvm.exists() {
        return KvmStatus::Missing(format!("{} does not exist", dev_kvm.display()));
    }
    if let Err(err) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev_kvm)
    {
        return KvmStatus::Unusable(format!("cannot open {}: {err}", dev_kvm.display()));
    }
    if !["kvm_intel", "kvm_amd"]
        .iter()
        .any(|m| sys_module.join(m).exists())
    {
        return KvmStatus::Unusable(
            "neither kvm_intel nor kvm_amd is loaded: not a hardware KVM host".into(),
        );
    }
    KvmStatus::Usable
}

/// Whether macOS's Hypervisor.framework can run VMs here (`sysctl kern.hv_support`).
#[cfg(target_os = "macos")]
pub fn probe_hvf() -> Result<(), String> {
    let mut value: libc::c_int = 0;
    let mut size = std::mem::size_of::<libc::c_int>();
    // SAFETY: the name is a NUL-terminated literal, `value` and `size` are valid for writes of
    // the sizes given, and no new value is set (null, 0).
    let rc = unsafe {
        libc::sysctlbyname(
            c"kern.hv_support".as_ptr(),
            (&mut value as *mut libc::c_int).cast(),
            &mut size,
            std::ptr::null_mut(),
            0,
        )
    };
    if rc != 0 {
        return Err(format!(
            "sysctl kern.hv_support failed: {}",
            std::io::Error::last_os_error()
        ));
    }
    if value == 1 {
        Ok(())
    } else {
        Err(
            "Hypervisor.framework is not supported on this Mac (kern.hv_support=0; \
             a VM without nested virtualisation, or an Intel Mac without VT-x)"
                .into(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_pvm_is_never_usable() {
        let dir = tempfile::tempdir().unwrap();
        let modules = dir.path().join("module");
        std::fs::create_dir_all(modules.join("kvm_pvm")).unwrap();
        std::fs::create_dir_all(modules.join("kvm_intel")).unwrap();
        let dev = dir.path().join("kvm");
        std::fs::write(&dev, b"").unwrap();
        assert!(
            matches!(probe_kvm_at(&dev, &modules), KvmStatus::Unusable(why) if why.contains("kvm_pvm"))
        );
    }

    #[test]
    fn kvm_needs_the_device_and_a_hardware_module() {
        let dir = tempfile::tempdir().unwrap();
        let modules = dir.path().join("module");
        std::fs::create_dir_all(&modules).unwrap();
        let dev = dir.path().join("kvm");
        assert!(matches!(
            probe_kvm_at(&dev, &modules),
            KvmStatus::Missing(_)
        ));
        std::fs::write(&dev, b"").unwrap();
        assert!(matches!(
            probe_kvm_at(&dev, &modules),
            KvmStatus::Unusable(_)
        ));
        std::fs::create_dir_all(modules.join("kvm_amd")).unwrap();
        assert_eq!(probe_kvm_at(&dev, &modules), KvmStatus::Usable);
    }
}
