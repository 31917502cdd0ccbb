//! Directories only this user can reach, made safely even in a shared place such as `/tmp`.
//!
//! Another local user can create `/tmp/krunbox-$UID` before krunbox does: as a symbolic link
//! to a directory of ours (krunbox would then create and remove files there), or as a
//! directory of theirs (they could then swap our sockets and read what we send). So a private
//! directory is made with `mkdir(path, 0700)` — never by following a link — and then opened
//! with `O_NOFOLLOW | O_DIRECTORY` and checked: a real directory, owned by our effective uid,
//! with no group or other permission bits. Anything else is refused, never repaired: we do
//! not chmod or remove what someone may have planted. Root gets the same checks.
//!
//! The parent must also be safe: owned by root or by us, and not writable by others unless
//! it is sticky (as `/tmp` is), so nobody else can rename our directory away.

use std::fs::{DirBuilder, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::io_error::io;

/// Why a private directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PrivateDirError {
    /// The path is a symbolic link.
    #[error(
        "{path} is a symbolic link (to {target}, owned by uid {owner}), not a directory of \
         yours: someone may have planted it to redirect krunbox; remove it or set {setting}"
    )]
    Symlink {
        /// The private directory's path.
        path: PathBuf,
        /// Where the link points.
        target: String,
        /// The link's owner.
        owner: u32,
        /// The setting that picks another place.
        setting: &'static str,
    },
    /// The path is a file, socket, ….
    #[error(
        "{path} is not a directory (owner uid {owner}, mode {mode:04o}); remove it or set \
         {setting}"
    )]
    NotADirectory {
        /// The private directory's path.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// Its permission bits.
        mode: u32,
        /// The setting that picks another place.
        setting: &'static str,
    },
    /// Someone else owns the directory.
    #[error(
        "{path} is owned by uid {owner}, not by you (uid {you}), mode {mode:04o}: another \
         user may have planted it to take over krunbox's sockets and files; remove it (as \
         its owner or root) or set {setting}"
    )]
    WrongOwner {
        /// The private directory's path.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// Our effective uid.
        you: u32,
        /// Its permission bits.
        mode: u32,
        /// The setting that picks another place.
        setting: &'static str,
    },
    /// Group or others have access.
    #[error(
        "{path} (owner uid {owner}) has mode {mode:04o}: group and others can reach it, so \
         krunbox will not keep sockets and state there; `chmod 700` it if you made it and \
         nothing in it is someone else's, remove it, or set {setting} elsewhere"
    )]
    OpenToOthers {
        /// The private directory's path.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// Its permission bits.
        mode: u32,
        /// The setting that picks another place.
        setting: &'static str,
    },
    /// The parent lets others replace the directory.
    #[error(
        "{parent}, the parent of {path}, is owned by uid {owner} with mode {mode:04o}: \
         another user could replace {path}; set {setting} to a directory in a safe place"
    )]
    UnsafeParent {
        /// The private directory's path.
        path: PathBuf,
        /// Its parent.
        parent: PathBuf,
        /// The parent's owner.
        owner: u32,
        /// The parent's permission bits.
        mode: u32,
        /// The setting that picks another place.
        setting: &'static str,
    },
    /// A file operation.
    #[error(transparent)]
    Io(#[from] crate::io_error::IoError),
}

/// The permission bits that let group or others in.
const GROUP_OTHER: u32 = 0o077;
/// The sticky bit: only an entry's owner may rename or remove it.
const STICKY: u32 = 0o1000;

/// Makes `path` (mode 0700) if it is missing, then checks it is a private directory of ours;
/// returns it opened. `setting` names what the user can set to pick another place (it goes
/// into the error).
pub fn ensure(path: &Path, setting: &'static str) -> Result<File, PrivateDirError> {
    check_parent(path, setting)?;
    match DirBuilder::new().mode(0o700).create(path) {
        Ok(()) => {}
        // Whatever exists is checked below, without following it.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(source) => return Err(io("create", path)(source).into()),
    }
    let dir = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path)
        .map_err(|source| classify_unopenable(path, setting, source))?;
    let meta = dir.metadata().map_err(io("inspect", path))?;
    let you = nix::unistd::geteuid().as_raw();
    let (owner, mode) = (meta.uid(), meta.mode() & 0o7777);
    if owner != you {
        return Err(PrivateDirError::WrongOwner {
            path: path.to_owned(),
            owner,
            you,
            mode,
            setting,
        });
    }
    if mode & GROUP_OTHER != 0 {
        return Err(PrivateDirError::OpenToOthers {
            path: path.to_owned(),
            owner,
            mode,
            setting,
        });
    }
    Ok(dir)
}

/// Creates `path` and its missing parents with mode 0700 (for directories below a private
/// one, and for the user's own places such as `~/.local/share/krunbox`).
pub fn create_all(path: &Path) -> std::io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(path)
}

/// A parent owned by root or us that others cannot write to (or that is sticky) keeps our
/// directory where we put it. A missing parent is the user's own setting: made 0700.
fn check_parent(path: &Path, setting: &'static str) -> Result<(), PrivateDirError> {
    let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) else {
        return Ok(());
    };
    let meta = match std::fs::metadata(parent) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            create_all(parent).map_err(io("create", parent))?;
            std::fs::metadata(parent).map_err(io("inspect", parent))?
        }
        Err(e) => return Err(io("inspect", parent)(e).into()),
    };
    let (owner, mode) = (meta.uid(), meta.mode() & 0o7777);
    let trusted_owner = owner == 0 || owner == nix::unistd::geteuid().as_raw();
    let others_may_rename = mode & 0o022 != 0 && mode & STICKY == 0;
    if trusted_owner && !others_may_rename {
        return Ok(());
    }
    Err(PrivateDirError::UnsafeParent {
        path: path.to_owned(),
        parent: parent.to_owned(),
        owner,
        mode,
        setting,
    })
}

/// Why `path` could not be opened as a directory without following links.
fn classify_unopenable(
    path: &Path,
    setting: &'static str,
    source: std::io::Error,
) -> PrivateDirError {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return PrivateDirError::Io(crate::io_error::IoError {
            action: "open",
            path: path.to_owned(),
            source,
        });
    };
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(path)
            .map(|t| t.display().to_string())
            .unwrap_or_else(|e| format!("unreadable: {e}"));
        return PrivateDirError::Symlink {
            path: path.to_owned(),
            target,
            owner: meta.uid(),
            setting,
        };
    }
    if !meta.is_dir() {
        return PrivateDirError::NotADirectory {
            path: path.to_owned(),
            owner: meta.uid(),
            mode: meta.mode() & 0o7777,
            setting,
        };
    }
    PrivateDirError::Io(crate::io_error::IoError {
        action: "open",
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const SETTING: &str = "KRUNBOX_TEST_DIR";

    fn mode_of(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn a_missing_directory_is_created_0700_and_accepted_again() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("private");
        ensure(&dir, SETTING).unwrap();
        assert!(dir.is_dir());
        assert_eq!(mode_of(&dir), 0o700);
        ensure(&dir, SETTING).unwrap();
    }

    #[test]
    fn a_planted_symlink_is_refused_and_its_target_untouched() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("precious");
        std::fs::create_dir(&target).unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::create_dir(target.join("keep")).unwrap();
        let link = tmp.path().join("private");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = ensure(&link, SETTING).unwrap_err();
        assert!(
            matches!(&err, PrivateDirError::Symlink { path, target: t, .. }
                if path == &link && t == &target.display().to_string()),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(
            message.contains("symbolic link") && message.contains(SETTING),
            "{message}"
        );
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert!(target.join("keep").is_dir());
        // A dangling link is refused the same way (mkdir does not create its target).
        let dangling = tmp.path().join("dangling");
        std::os::unix::fs::symlink(tmp.path().join("nowhere"), &dangling).unwrap();
        assert!(matches!(
            ensure(&dangling, SETTING),
            Err(PrivateDirError::Symlink { .. })
        ));
        assert!(!tmp.path().join("nowhere").exists());
    }

    #[test]
    fn group_or_other_bits_are_refused_not_repaired() {
        let tmp = tempfile::tempdir().unwrap();
        for mode in [0o770, 0o707, 0o750, 0o777] {
            let dir = tmp.path().join(format!("d{mode:o}"));
            std::fs::create_dir(&dir).unwrap();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = ensure(&dir, SETTING).unwrap_err();
            assert!(
                matches!(err, PrivateDirError::OpenToOthers { mode: m, .. } if m == mode),
                "{err:?}"
            );
            assert!(err.to_string().contains(&format!("{mode:04o}")), "{err}");
            assert_eq!(mode_of(&dir), mode, "refusing must not chmod");
        }
    }

    #[test]
    fn a_file_is_not_a_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(
            ensure(&file, SETTING),
            Err(PrivateDirError::NotADirectory { .. })
        ));
    }

    #[test]
    fn a_world_writable_parent_without_the_sticky_bit_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let parent = tmp.path().join("open");
        std::fs::create_dir(&parent).unwrap();
        std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(
            ensure(&parent.join("private"), SETTING),
            Err(PrivateDirError::UnsafeParent { .. })
        ));
        assert!(!parent.join("private").exists());
        std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o1777)).unwrap();
        ensure(&parent.join("private"), SETTING).unwrap();
    }

    /// Another owner needs root to set up; skipped loudly otherwise.
    #[test]
    fn a_directory_of_another_user_is_refused() {
        if !nix::unistd::geteuid().is_root() {
            assert!(
                std::env::var("KRUNBOX_REQUIRE_E2E").is_err(),
                "KRUNBOX_REQUIRE_E2E is set but this test needs root to chown"
            );
            eprintln!("SKIPPED a_directory_of_another_user_is_refused: needs root to chown");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("theirs");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
        let err = ensure(&dir, SETTING).unwrap_err();
        assert!(
            matches!(
                err,
                PrivateDirError::WrongOwner {
                    owner: 65534,
                    you: 0,
                    mode: 0o700,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("uid 65534"), "{err}");
    }
}
