//! Finding the guest agent binary (static musl `guest-init`) on the host.

use std::path::{Path, PathBuf};

/// Environment variable naming the guest-init binary to use.
pub const ENV: &str = "KRUNBOX_GUEST_INIT";

/// guest-init could not be found.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot find a static guest agent (guest-init); looked at: {}.\n\
     Build it with `cargo xtask build-init` (or `cargo build -p guest-init --release \
     --target x86_64-unknown-linux-musl`), or point {ENV} at it",
    .searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
)]
pub struct GuestInitNotFound {
    /// Every place looked at, in order.
    pub searched: Vec<PathBuf>,
}

/// Locates guest-init: `$KRUNBOX_GUEST_INIT`, else next to the krunbox executable, else the
/// places a workspace build puts it (`target/guest-init/<arch>/guest-init` from
/// `cargo xtask build-init`, `target/<arch>-unknown-linux-musl/{release,debug}/guest-init`),
/// the host's architecture first (libkrun guests have it: aarch64 on an Apple-silicon Mac),
/// then x86_64 (the QEMU backend's guests).
pub fn locate() -> Result<PathBuf, GuestInitNotFound> {
    let exe = std::env::current_exe().ok();
    let candidates = candidates(
        std::env::var_os(ENV).map(PathBuf::from),
        exe.as_deref(),
        std::env::consts::ARCH,
    );
    // A host build of guest-init (target/debug/guest-init) is dynamically linked and cannot
    // run in the guest: only static binaries count.
    if let Some(found) = candidates
        .iter()
        .find(|p| p.is_file() && crate::elf::is_static_executable(p))
    {
        return Ok(found.clone());
    }
    Err(GuestInitNotFound {
        searched: candidates,
    })
}

fn candidates(from_env: Option<PathBuf>, exe: Option<&Path>, host_arch: &str) -> Vec<PathBuf> {
    if let Some(path) = from_env {
        return vec![path];
    }
    let mut out = Vec::new();
    if let Some(dir) = exe.and_then(Path::parent) {
        out.push(dir.join("guest-init"));
        // target/<profile>/krunbox -> target/
        if let Some(target) = dir.parent() {
            let mut arches = vec![host_arch];
            if host_arch != "x86_64" {
                arches.push("x86_64");
            }
            for arch in arches {
                out.push(target.join("guest-init").join(arch).join("guest-init"));
                for profile in ["release", "debug"] {
                    out.push(
                        target
                            .join(format!("{arch}-unknown-linux-musl"))
                            .join(profile)
                            .join("guest-init"),
                    );
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_wins_and_workspace_paths_follow_the_executable() {
        assert_eq!(
            candidates(
                Some("/opt/gi".into()),
                Some(Path::new("/w/target/debug/krunbox")),
                "x86_64"
            ),
            [PathBuf::from("/opt/gi")]
        );
        let found = candidates(None, Some(Path::new("/w/target/debug/krunbox")), "x86_64");
        assert_eq!(found[0], Path::new("/w/target/debug/guest-init"));
        assert!(found.contains(&PathBuf::from("/w/target/guest-init/x86_64/guest-init")));
        assert!(found.contains(&PathBuf::from(
            "/w/target/x86_64-unknown-linux-musl/release/guest-init"
        )));
        // An Apple-silicon Mac (libkrun) looks for the aarch64 agent first.
        let mac = candidates(None, Some(Path::new("/w/target/debug/krunbox")), "aarch64");
        assert_eq!(mac[1], Path::new("/w/target/guest-init/aarch64/guest-init"));
        assert!(mac.contains(&PathBuf::from("/w/target/guest-init/x86_64/guest-init")));
    }

    #[test]
    fn the_error_says_how_to_build_it() {
        let err = GuestInitNotFound {
            searched: vec!["/a/guest-init".into()],
        };
        let text = err.to_string();
        assert!(text.contains("/a/guest-init") && text.contains("cargo xtask build-init"));
    }
}
