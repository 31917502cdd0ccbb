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
/// places a workspace build puts it (`target/guest-init/x86_64/guest-init` from
/// `cargo xtask build-init`, `target/x86_64-unknown-linux-musl/{release,debug}/guest-init`).
pub fn locate() -> Result<PathBuf, GuestInitNotFound> {
    let exe = std::env::current_exe().ok();
    let candidates = candidates(std::env::var_os(ENV).map(PathBuf::from), exe.as_deref());
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

fn candidates(from_env: Option<PathBuf>, exe: Option<&Path>) -> Vec<PathBuf> {
    if let Some(path) = from_env {
        return vec![path];
    }
    let mut out = Vec::new();
    if let Some(dir) = exe.and_then(Path::parent) {
        out.push(dir.join("guest-init"));
        // target/<profile>/krunbox -> target/
        if let Some(target) = dir.parent() {
            out.push(target.join("guest-init/x86_64/guest-init"));
            for profile in ["release", "debug"] {
                out.push(
                    target
                        .join("x86_64-unknown-linux-musl")
                        .join(profile)
                        .join("guest-init"),
                );
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
                Some(Path::new("/w/target/debug/krunbox"))
            ),
            [PathBuf::from("/opt/gi")]
        );
        let found = candidates(None, Some(Path::new("/w/target/debug/krunbox")));
        assert_eq!(found[0], Path::new("/w/target/debug/guest-init"));
        assert!(found.contains(&PathBuf::from("/w/target/guest-init/x86_64/guest-init")));
        assert!(found.contains(&PathBuf::from(
            "/w/target/x86_64-unknown-linux-musl/release/guest-init"
        )));
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
