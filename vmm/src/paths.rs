//! Where krunbox keeps things on the host.
//!
//! - data (kernels, the default image, initramfs cache): `$KRUNBOX_DATA_DIR`, else
//!   `$XDG_DATA_HOME/krunbox`, else `~/.local/share/krunbox`, else `/tmp/krunbox-$UID/data`;
//! - runtime (one directory per running VM, with its sockets and console log):
//!   `$KRUNBOX_RUNTIME_DIR`, else `$XDG_RUNTIME_DIR/krunbox`, else `/run/krunbox` for root,
//!   else `/tmp/krunbox-$UID`.
//!
//! `/tmp` is shared with every other local user, so the fallbacks there are only used once
//! [`private_dir::ensure`] has made or found them ours and closed to others; the runtime root
//! gets that check wherever it is ([`crate::rundir`] does it before each use).

use std::path::PathBuf;

use crate::private_dir::{self, PrivateDirError};

/// What picks the data directory (named in errors about it).
pub const DATA_SETTING: &str = "KRUNBOX_DATA_DIR";
/// What picks the runtime root (named in errors about it).
pub const RUNTIME_SETTING: &str = "KRUNBOX_RUNTIME_DIR";

/// The data directory. In the `/tmp` fallback it is made (0700) and checked here, since a
/// shared place is safe only once it is ours; elsewhere it is the user's own place and not
/// created.
pub fn data_dir() -> Result<PathBuf, PrivateDirError> {
    if let Some(dir) = non_empty_env("KRUNBOX_DATA_DIR") {
        return Ok(dir);
    }
    if let Some(dir) = non_empty_env("XDG_DATA_HOME") {
        return Ok(dir.join("krunbox"));
    }
    if let Some(home) = non_empty_env("HOME") {
        return Ok(home.join(".local/share/krunbox"));
    }
    let fallback = tmp_fallback();
    private_dir::ensure(&fallback, DATA_SETTING)?;
    let data = fallback.join("data");
    private_dir::ensure(&data, DATA_SETTING)?;
    Ok(data)
}

/// The directory holding the per-VM run directories (neither created nor checked here: see
/// [`crate::rundir`]).
pub fn runtime_root() -> PathBuf {
    if let Some(dir) = non_empty_env("KRUNBOX_RUNTIME_DIR") {
        return dir;
    }
    if let Some(dir) = non_empty_env("XDG_RUNTIME_DIR") {
        return dir.join("krunbox");
    }
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/run/krunbox");
    }
    tmp_fallback()
}

/// `/tmp/krunbox-$UID`: the runtime root, and the parent of the data directory, of a user
/// with neither `$XDG_RUNTIME_DIR` nor `$HOME` (macOS never sets the former).
fn tmp_fallback() -> PathBuf {
    PathBuf::from(format!("/tmp/krunbox-{}", nix::unistd::geteuid()))
}

fn non_empty_env(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Finds a program: an absolute/relative path as given, else `$PATH`, else `~/.cargo/bin`
/// (where `cargo install` puts vhost-device-vsock).
pub fn find_program(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let path = PathBuf::from(program);
        return is_executable(&path).then_some(path);
    }
    let mut dirs: Vec<PathBuf> =
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).collect();
    if let Some(home) = non_empty_env("HOME") {
        dirs.push(home.join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|dir| dir.join(program))
        .find(|path| is_executable(path))
}

fn is_executable(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_programs_on_path_and_rejects_missing_ones() {
        assert!(find_program("sh").is_some());
        assert!(find_program("/bin/sh").is_some());
        assert!(find_program("definitely-not-a-program-krunbox").is_none());
        assert!(find_program("/nonexistent/prog").is_none());
    }
}
