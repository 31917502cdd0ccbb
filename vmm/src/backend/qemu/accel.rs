//! Choosing QEMU's accelerator: KVM only where it can really run a standard Linux guest.
//!
//! `/dev/kvm` opening is not enough: a nested paravirtual host (`kvm_pvm`) exposes it, yet an
//! ordinary guest kernel dies there after minutes of emulation (KVM_EXIT_INTERNAL_ERROR). So
//! KVM counts as usable when `/dev/kvm` opens read-write, the hardware module (`kvm_intel` or
//! `kvm_amd`) is loaded, and `kvm_pvm` is not. Users override with `--accel` or
//! `KRUNBOX_ACCEL=tcg|kvm`.

use std::path::Path;

use super::super::Accel;

/// Environment variable forcing the accelerator.
pub const ENV: &str = "KRUNBOX_ACCEL";

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

/// The accelerator QEMU gets, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Use KVM (else TCG).
    pub kvm: bool,
    /// Why, for logs and `krunbox doctor`.
    pub reason: String,
}

/// Decides from the request (CLI), the environment override and the probe.
pub fn decide(requested: Accel, env: Option<&str>, kvm: &KvmStatus) -> Result<Decision, String> {
    let requested = match (requested, env.map(str::trim)) {
        (Accel::Auto, Some("tcg")) => Accel::Tcg,
        (Accel::Auto, Some("kvm")) => Accel::Kvm,
        (Accel::Auto, Some(other)) if !other.is_empty() && other != "auto" => {
            return Err(format!("{ENV}={other:?}: expected tcg, kvm or auto"))
        }
        (requested, _) => requested,
    };
    match (requested, kvm) {
        (Accel::Tcg, _) => Ok(Decision {
            kvm: false,
            reason: "TCG (requested)".into(),
        }),
        (Accel::Kvm, KvmStatus::Missing(why)) => Err(format!("KVM requested but {why}")),
        (Accel::Kvm, _) => Ok(Decision {
            kvm: true,
            reason: "KVM (requested)".into(),
        }),
        (Accel::Auto, KvmStatus::Usable) => Ok(Decision {
            kvm: true,
            reason: "KVM".into(),
        }),
        (Accel::Auto, KvmStatus::Missing(why) | KvmStatus::Unusable(why)) => Ok(Decision {
            kvm: false,
            reason: format!("TCG software emulation ({why})"),
        }),
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

    #[test]
    fn requests_and_the_environment_override_the_probe() {
        let unusable = KvmStatus::Unusable("kvm_pvm".into());
        assert!(!decide(Accel::Auto, None, &unusable).unwrap().kvm);
        assert!(decide(Accel::Auto, None, &KvmStatus::Usable).unwrap().kvm);
        assert!(
            !decide(Accel::Auto, Some("tcg"), &KvmStatus::Usable)
                .unwrap()
                .kvm
        );
        assert!(decide(Accel::Auto, Some("kvm"), &unusable).unwrap().kvm);
        assert!(
            !decide(Accel::Tcg, Some("kvm"), &KvmStatus::Usable)
                .unwrap()
                .kvm
        );
        assert!(decide(Accel::Kvm, None, &KvmStatus::Missing("no /dev/kvm".into())).is_err());
        assert!(decide(Accel::Auto, Some("hvf"), &unusable).is_err());
    }
}
