//! Host directories shared into the guest: `-v HOST:GUEST[:ro]` and `--workspace`.
//!
//! Each share is one virtio-fs device (one `virtiofsd` under QEMU) that guest-init mounts at
//! the guest path (`krunbox.mounts=` on the kernel command line). Read-only shares are mounted
//! `MS_RDONLY` in the guest and served read-only by the host (`backend::qemu::virtiofs`,
//! libkrun's read-only devices), so a guest that remounts them read-write still cannot write.
//!
//! Ownership: the guest sees the files' host owners, and under QEMU what it writes belongs to
//! the share's owner on the host. `--workspace` therefore runs commands as the owner of the
//! current directory (unless `--user` says otherwise): a non-root user is what coding agents
//! expect.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::backend::SharedDir;

/// A share that cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    /// Not `HOST:GUEST[:ro|rw]`.
    #[error("-v {0:?}: expected HOST:GUEST or HOST:GUEST:ro (GUEST an absolute path)")]
    Syntax(String),
    /// The host side is not a directory.
    #[error("-v {spec:?}: {path} is not a directory (only directories can be shared)")]
    NotADirectory {
        /// The argument.
        spec: String,
        /// The host path.
        path: PathBuf,
    },
    /// The guest path cannot be carried on the kernel command line.
    #[error("guest path {0:?} must be absolute, not /, without spaces, commas, colons or quotes")]
    GuestPath(String),
    /// Two shares at one guest path.
    #[error("two shares are mounted at {0}")]
    Duplicate(String),
    /// The current directory.
    #[error("--workspace: {0}")]
    Workspace(String),
}

/// Shares and what they imply for commands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shares {
    /// The directories.
    pub dirs: Vec<SharedDir>,
    /// Where commands start unless told otherwise (the workspace).
    pub workdir: Option<String>,
    /// Who commands run as unless told otherwise (the workspace's owner).
    pub user: Option<(u32, u32)>,
}

/// Resolves `-v` arguments (relative host paths against `cwd`) and `--workspace` (`cwd`
/// itself, at the same path).
pub fn resolve(volumes: &[String], workspace: bool, cwd: &Path) -> Result<Shares, ShareError> {
    let mut shares = Shares::default();
    for spec in volumes {
        shares.dirs.push(parse_volume(spec, cwd)?);
    }
    if workspace {
        let dir = std::fs::canonicalize(cwd)
            .map_err(|e| ShareError::Workspace(format!("{}: {e}", cwd.display())))?;
        let guest = dir
            .to_str()
            .ok_or_else(|| ShareError::Workspace(format!("{} is not UTF-8", dir.display())))?
            .to_owned();
        check_guest_path(&guest)?;
        let meta = std::fs::metadata(&dir)
            .map_err(|e| ShareError::Workspace(format!("{}: {e}", dir.display())))?;
        shares.user = Some((meta.uid(), meta.gid()));
        shares.workdir = Some(guest.clone());
        shares.dirs.push(SharedDir {
            host_path: dir,
            guest_path: guest,
            read_only: false,
        });
    }
    let mut seen = std::collections::HashSet::new();
    for dir in &shares.dirs {
        if !seen.insert(dir.guest_path.as_str()) {
            return Err(ShareError::Duplicate(dir.guest_path.clone()));
        }
    }
    Ok(shares)
}

/// `HOST:GUEST[:ro|rw]`.
pub fn parse_volume(spec: &str, cwd: &Path) -> Result<SharedDir, ShareError> {
    let syntax = || ShareError::Syntax(spec.to_owned());
    let (rest, read_only) = match spec.rsplit_once(':') {
        Some((rest, "ro")) => (rest, true),
        Some((rest, "rw")) => (rest, false),
        _ => (spec, false),
    };
    let (host, guest) = rest.rsplit_once(':').ok_or_else(syntax)?;
    if host.is_empty() || guest.is_empty() {
        return Err(syntax());
    }
    let guest = normalize_guest(guest);
    check_guest_path(&guest)?;
    let host_path = cwd.join(host);
    let host_path = std::fs::canonicalize(&host_path)
        .ok()
        .filter(|p| p.is_dir())
        .ok_or_else(|| ShareError::NotADirectory {
            spec: spec.to_owned(),
            path: host_path.clone(),
        })?;
    Ok(SharedDir {
        host_path,
        guest_path: guest,
        read_only,
    })
}

fn normalize_guest(path: &str) -> String {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".into()
    } else {
        trimmed.into()
    }
}

fn check_guest_path(path: &str) -> Result<(), ShareError> {
    let bad = !path.starts_with('/')
        || path == "/"
        || path.split('/').any(|c| c == "..")
        || path
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, ',' | ':' | '"'));
    if bad {
        return Err(ShareError::GuestPath(path.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_parse_with_modes_and_relative_hosts() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        let real = std::fs::canonicalize(dir.path()).unwrap();
        let share = parse_volume("data:/srv/data/:ro", dir.path()).unwrap();
        assert_eq!(share.host_path, real.join("data"));
        assert_eq!(share.guest_path, "/srv/data");
        assert!(share.read_only);
        let share = parse_volume(&format!("{}:/w:rw", real.display()), Path::new("/")).unwrap();
        assert!(!share.read_only);
        assert_eq!(share.guest_path, "/w");
        let share = parse_volume(&format!("{}:/w", real.display()), Path::new("/")).unwrap();
        assert!(!share.read_only);
    }

    #[test]
    fn bad_volumes_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().display().to_string();
        for (spec, needle) in [
            ("/nonexistent-krunbox:/x".to_owned(), "is not a directory"),
            (format!("{host}:relative"), "must be absolute"),
            (format!("{host}:/"), "must be absolute, not /"),
            (format!("{host}:/a b"), "without spaces"),
            (format!("{host}:/a,b"), "commas"),
            (format!("{host}:/x/../etc"), "guest path"),
            ("nocolon".to_owned(), "expected HOST:GUEST"),
            (format!("{host}:"), "expected HOST:GUEST"),
        ] {
            let err = parse_volume(&spec, Path::new("/")).unwrap_err().to_string();
            assert!(err.contains(needle), "{spec}: {err}");
        }
    }

    #[test]
    fn the_workspace_is_the_cwd_at_the_same_path_owned_by_its_owner() {
        let dir = tempfile::tempdir().unwrap();
        let real = std::fs::canonicalize(dir.path()).unwrap();
        let meta = std::fs::metadata(&real).unwrap();
        let shares = resolve(&[], true, dir.path()).unwrap();
        assert_eq!(shares.dirs.len(), 1);
        assert_eq!(shares.dirs[0].host_path, real);
        assert_eq!(shares.dirs[0].guest_path, real.to_str().unwrap());
        assert_eq!(shares.workdir.as_deref(), real.to_str());
        assert_eq!(shares.user, Some((meta.uid(), meta.gid())));
        let twice = [format!("{}:{}", real.display(), real.display())];
        assert!(matches!(
            resolve(&twice, true, dir.path()),
            Err(ShareError::Duplicate(_))
        ));
    }
}
