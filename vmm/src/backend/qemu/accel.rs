//! Choosing QEMU's accelerator: KVM only where it can really run a standard Linux guest.
//!
//! `/dev/kvm` opening is not enough: a nested paravirtual host (`kvm_pvm`) exposes it, yet an
//! ordinary guest kernel dies there after minutes of emulation (KVM_EXIT_INTERNAL_ERROR). So
//! KVM counts as usable when `/dev/kvm` opens read-write, the hardware module (`kvm_intel` or
//! `kvm_amd`) is loaded, and `kvm_pvm` is not (the probe lives in [`crate::backend::host`],
//! shared with the libkrun backend). Users override with `--accel` or `KRUNBOX_ACCEL=tcg|kvm`.

use super::super::Accel;
pub use crate::backend::host::{probe_kvm, KvmStatus};

/// Environment variable forcing the accelerator.
pub const ENV: &str = "KRUNBOX_ACCEL";

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
