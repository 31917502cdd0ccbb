//! What the libkrun VMM child may do to host files, applied before it enters the VM.
//!
//! libkrun serves virtio-fs shares inside this process, with this process's identity, and has
//! no id mapping (unlike the Rust virtiofsd under QEMU, which squashes every guest id onto the
//! share's owner). As root, a guest root could otherwise leave a setuid-root program, a device
//! node or a file with capabilities in a read-write share, for any local user to run. So,
//! before `krun_start_enter` starts the virtio-fs workers (which inherit both):
//!
//! - a seccomp filter (all threads) refuses with `EPERM` every mode change or creation that
//!   asks for a setuid or setgid bit: `chmod`, `fchmod`, `fchmodat`, `fchmodat2`, `open`,
//!   `creat`, `openat`, `mknod`, `mknodat`; and `openat2`, whose mode it cannot see;
//! - as root, `CAP_MKNOD` (device nodes) and `CAP_SETFCAP` (file capabilities) leave every
//!   capability set of the process, the bounding set included.
//!
//! The filter holds as a normal user too, so under libkrun a guest cannot leave files setuid
//! to the share's owner either. A guest's `chmod u+s` or `chmod g+s` in a share fails with
//! "Operation not permitted". Writing to a file already clears its setuid bits (libkrun drops
//! `CAP_FSETID` around writes). Files created by guest root are still owned by root
//! (SECURITY.md says so).

/// Why the child could not confine itself (it then refuses to start the VM).
#[derive(Debug, thiserror::Error)]
// Only Linux has anything to confine.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub enum ConfineError {
    /// The seccomp filter could not be built or loaded.
    #[error("cannot load the seccomp filter for shares: {0}")]
    Seccomp(String),
    /// A capability could not be dropped.
    #[error("cannot drop {capability} from the VMM: {reason}")]
    Capability {
        /// Which.
        capability: &'static str,
        /// Why.
        reason: String,
    },
}

/// Applies the filter and, as root, drops the capabilities; see the module documentation.
#[cfg(target_os = "linux")]
pub fn confine_share_writes() -> Result<(), ConfineError> {
    linux::drop_capabilities()?;
    linux::load_filter()
}

/// macOS: libkrun runs as the user, and Hypervisor.framework's VMM has no root to drop.
#[cfg(not(target_os = "linux"))]
pub fn confine_share_writes() -> Result<(), ConfineError> {
    Ok(())
}

#[cfg(target_os = "linux")]
mod linux {
    use std::collections::BTreeMap;

    use caps::{CapSet, Capability};
    use seccompiler::{
        BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
        SeccompRule,
    };

    use super::ConfineError;

    /// `fchmodat2` (Linux 6.6), the same number on every architecture; not in every libc.
    const SYS_FCHMODAT2: i64 = 452;

    /// Each call that sets a file's mode, with the index of its mode argument.
    fn mode_arguments() -> Vec<(i64, u8)> {
        let mut calls = vec![
            (libc::SYS_fchmod, 1),
            (libc::SYS_fchmodat, 2),
            (SYS_FCHMODAT2, 2),
            (libc::SYS_openat, 3),
            (libc::SYS_mknodat, 2),
        ];
        #[cfg(target_arch = "x86_64")]
        calls.extend([
            (libc::SYS_chmod, 1),
            (libc::SYS_open, 2),
            (libc::SYS_creat, 1),
            (libc::SYS_mknod, 1),
        ]);
        calls
    }

    pub(super) fn load_filter() -> Result<(), ConfineError> {
        fn seccomp(e: impl std::fmt::Display) -> ConfineError {
            ConfineError::Seccomp(e.to_string())
        }
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        for (call, argument) in mode_arguments() {
            let mut either = Vec::new();
            for bit in [u64::from(libc::S_ISUID), u64::from(libc::S_ISGID)] {
                let condition = SeccompCondition::new(
                    argument,
                    SeccompCmpArgLen::Dword,
                    SeccompCmpOp::MaskedEq(bit),
                    bit,
                )
                .map_err(seccomp)?;
                either.push(SeccompRule::new(vec![condition]).map_err(seccomp)?);
            }
            rules.insert(call, either);
        }
        // Its mode is behind a pointer the filter cannot read; nothing in the VMM needs it.
        rules.insert(libc::SYS_openat2, Vec::new());
        let arch = std::env::consts::ARCH
            .try_into()
            .map_err(|e: seccompiler::BackendError| seccomp(e))?;
        let filter = SeccompFilter::new(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::EPERM as u32),
            arch,
        )
        .map_err(seccomp)?;
        let program: BpfProgram = filter
            .try_into()
            .map_err(|e: seccompiler::BackendError| seccomp(e))?;
        seccompiler::apply_filter_all_threads(&program).map_err(seccomp)
    }

    pub(super) fn drop_capabilities() -> Result<(), ConfineError> {
        if !nix::unistd::geteuid().is_root() {
            // A normal user holds neither capability.
            return Ok(());
        }
        for (capability, name) in [
            (Capability::CAP_MKNOD, "CAP_MKNOD"),
            (Capability::CAP_SETFCAP, "CAP_SETFCAP"),
        ] {
            for set in [
                CapSet::Bounding,
                CapSet::Inheritable,
                CapSet::Effective,
                CapSet::Permitted,
            ] {
                caps::drop(None, set, capability).map_err(|e| ConfineError::Capability {
                    capability: name,
                    reason: e.to_string(),
                })?;
            }
        }
        Ok(())
    }
}
