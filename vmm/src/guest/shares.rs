//! Host directories shared into the guest: `-v HOST:GUEST[:ro]` (HOST a directory, or the
//! name of a volume, [`crate::volumes`]) and `--workspace`.
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
    /// A review copy of the workspace.
    #[error(transparent)]
    Review(#[from] crate::review::ReviewError),
    /// The current directory.
    #[error("--workspace: {0}")]
    Workspace(String),
    /// The host's CAs (`--host-ca`).
    #[error(transparent)]
    HostCa(#[from] crate::guest::host_ca::HostCaError),
    /// A named volume.
    #[error("-v {spec:?}: {source}")]
    Volume {
        /// The argument.
        spec: String,
        /// What went wrong with the volume.
        source: crate::volumes::VolumeError,
    },
}

/// Finds (or creates) the named volume of a `-v NAME:GUEST`; `owner` is who commands run as,
/// for a volume created now. Returns the directory to share.
pub type VolumeResolver<'a> =
    dyn FnMut(&str, Option<(u32, u32)>) -> Result<PathBuf, crate::volumes::VolumeError> + 'a;

/// Shares and what they imply for commands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shares {
    /// The directories.
    pub dirs: Vec<SharedDir>,
    /// Where commands start unless told otherwise (the workspace).
    pub workdir: Option<String>,
    /// Who commands run as unless told otherwise (the workspace's owner).
    pub user: Option<(u32, u32)>,
    /// The guest path of a CA bundle every command trusts (`--host-ca`).
    pub ca_bundle: Option<String>,
    /// The name of the review copy shared as the workspace (`--workspace=review`).
    pub review: Option<String>,
}

/// Resolves `-v` arguments (a bare name is a named volume, found or created by `volume`;
/// relative host paths are against `cwd`) and `--workspace` (`cwd` itself, at the same path).
pub fn resolve(
    volumes: &[String],
    workspace: bool,
    cwd: &Path,
    volume: &mut VolumeResolver<'_>,
) -> Result<Shares, ShareError> {
    let mut shares = Shares::default();
    // The workspace's owner first: a volume created now belongs to whom commands run as.
    let workspace_owner = if workspace {
        let meta = std::fs::metadata(cwd)
            .map_err(|e| ShareError::Workspace(format!("{}: {e}", cwd.display())))?;
        Some((meta.uid(), meta.gid()))
    } else {
        None
    };
    for spec in volumes {
        let parsed = parse_volume(spec)?;
        let host_path = if crate::volumes::is_volume_name(parsed.host) {
            volume(parsed.host, workspace_owner).map_err(|source| ShareError::Volume {
                spec: spec.clone(),
                source,
            })?
        } else {
            host_directory(spec, parsed.host, cwd)?
        };
        shares.dirs.push(SharedDir {
            host_path,
            guest_path: parsed.guest,
            read_only: parsed.read_only,
        });
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

/// A `-v` argument, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeArg<'a> {
    /// A host directory, or a volume's name.
    pub host: &'a str,
    /// Where the guest sees it (absolute, normalized).
    pub guest: String,
    /// `:ro`.
    pub read_only: bool,
}

/// `HOST:GUEST[:ro|rw]`.
pub fn parse_volume(spec: &str) -> Result<VolumeArg<'_>, ShareError> {
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
    Ok(VolumeArg {
        host,
        guest,
        read_only,
    })
}

/// The host directory of a `-v` (relative to `cwd`), canonical.
fn host_directory(spec: &str, host: &str, cwd: &Path) -> Result<PathBuf, ShareError> {
    let host_path = cwd.join(host);
    std::fs::canonicalize(&host_path)
        .ok()
        .filter(|p| p.is_dir())
        .ok_or_else(|| ShareError::NotADirectory {
            spec: spec.to_owned(),
            path: host_path.clone(),
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

    /// Resolves without named volumes (a test that names one fails).
    fn resolve_paths(
        volumes: &[String],
        workspace: bool,
        cwd: &Path,
    ) -> Result<Shares, ShareError> {
        resolve(volumes, workspace, cwd, &mut |name, _| {
            panic!("{name} taken for a volume")
        })
    }

    #[test]
    fn volumes_parse_with_modes_and_relative_hosts() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        let real = std::fs::canonicalize(dir.path()).unwrap();
        let shares = resolve_paths(&["./data:/srv/data/:ro".into()], false, dir.path()).unwrap();
        let share = &shares.dirs[0];
        assert_eq!(share.host_path, real.join("data"));
        assert_eq!(share.guest_path, "/srv/data");
        assert!(share.read_only);
        let arg = parse_volume("/h:/w:rw").unwrap();
        assert!(!arg.read_only);
        assert_eq!((arg.host, arg.guest.as_str()), ("/h", "/w"));
        assert!(!parse_volume("/h:/w").unwrap().read_only);
    }

    #[test]
    fn a_bare_name_is_a_named_volume_owned_by_the_workspace_owner() {
        let dir = tempfile::tempdir().unwrap();
        let owner = {
            let meta = std::fs::metadata(dir.path()).unwrap();
            (meta.uid(), meta.gid())
        };
        let mut asked = Vec::new();
        let shares = resolve(
            &["home:/home/agent".into()],
            true,
            dir.path(),
            &mut |name, for_owner| {
                asked.push((name.to_owned(), for_owner));
                Ok(PathBuf::from("/volumes/home/data"))
            },
        )
        .unwrap();
        assert_eq!(asked, [("home".to_owned(), Some(owner))]);
        assert_eq!(shares.dirs[0].host_path, Path::new("/volumes/home/data"));
        assert_eq!(shares.dirs[0].guest_path, "/home/agent");
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
            let err = resolve_paths(std::slice::from_ref(&spec), false, Path::new("/"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{spec}: {err}");
        }
    }

    #[test]
    fn the_workspace_is_the_cwd_at_the_same_path_owned_by_its_owner() {
        let dir = tempfile::tempdir().unwrap();
        let real = std::fs::canonicalize(dir.path()).unwrap();
        let meta = std::fs::metadata(&real).unwrap();
        let shares = resolve_paths(&[], true, dir.path()).unwrap();
        assert_eq!(shares.dirs.len(), 1);
        assert_eq!(shares.dirs[0].host_path, real);
        assert_eq!(shares.dirs[0].guest_path, real.to_str().unwrap());
        assert_eq!(shares.workdir.as_deref(), real.to_str());
        assert_eq!(shares.user, Some((meta.uid(), meta.gid())));
        let twice = [format!("{}:{}", real.display(), real.display())];
        assert!(matches!(
            resolve_paths(&twice, true, dir.path()),
            Err(ShareError::Duplicate(_))
        ));
    }
}
