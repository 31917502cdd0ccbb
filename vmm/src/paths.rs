//! Where krunbox keeps things on the host.
//!
//! - data (kernels, the default image, initramfs cache): `$KRUNBOX_DATA_DIR`, else
//!   `$XDG_DATA_HOME/krunbox`, else `~/.local/share/krunbox`;
//! - runtime (one directory per running VM, with its sockets and console log):
//!   `$KRUNBOX_RUNTIME_DIR`, else `$XDG_RUNTIME_DIR/krunbox`, else `/run/krunbox` for root,
//!   else `/tmp/krunbox-$UID`.

use std::path::PathBuf;

/// The data directory (not created).
pub fn data_dir() -> PathBuf {
    if let Some(dir) = non_empty_env("KRUNBOX_DATA_DIR") {
        return dir;
    }
    if let Some(dir) = non_empty_env("XDG_DATA_HOME") {
        return dir.join("krunbox");
    }
    if let Some(home) = non_empty_env("HOME") {
        return home.join(".local/share/krunbox");
    }
    runtime_fallback().join("data")
}

/// The directory holding the per-VM run directories (not created).
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
    runtime_fallback()
}

fn runtime_fallback() -> PathBuf {
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
