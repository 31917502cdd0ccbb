//! File operations confined beneath a root directory file descriptor.
//!
//! Every path is walked one component at a time with `openat(O_NOFOLLOW | O_DIRECTORY)`
//! from the root's descriptor, so no symlink is ever followed — not in a parent, not at the
//! leaf — and `..` never appears (callers pass normalised components). This is the
//! openat-style confinement the unpacker relies on; it works the same on Linux and macOS,
//! and unlike one `openat2(RESOLVE_BENEATH)` call it tells which component was a symlink.
//! The single-name primitives are public for `krunbox cp`, which confines its host side the
//! same way.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag};

/// A path inside the root, as normalised components (never empty, never `..`).
pub(crate) type Components = Vec<OsString>;

/// Why a path from an archive cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PathProblem {
    /// A `..` component.
    ParentComponent,
}

/// Normalises an archive path: leading `/` and `.` components are dropped (as Docker does),
/// `..` is refused. An empty result means the root itself.
pub(crate) fn normalize(path: &Path) -> Result<Components, PathProblem> {
    let mut out = Vec::new();
    for component in path.components() {
        match component {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => return Err(PathProblem::ParentComponent),
            Component::Normal(name) => out.push(name.to_owned()),
        }
    }
    Ok(out)
}

/// Joins components for messages and sets.
pub(crate) fn display(components: &[OsString]) -> PathBuf {
    components.iter().collect()
}

/// What went wrong while walking to a parent directory.
#[derive(Debug)]
pub(crate) enum WalkError {
    /// This prefix of the path is a symlink.
    Symlink(PathBuf),
    /// This prefix of the path exists but is not a directory.
    NotADirectory(PathBuf),
    /// This prefix does not exist (only when not creating).
    Missing(PathBuf),
    /// Another OS error on this prefix.
    Io(PathBuf, io::Error),
}

/// Opens `name` in `dir` as a directory without following a symlink.
pub fn open_dir(dir: impl AsFd, name: &OsStr) -> nix::Result<OwnedFd> {
    nix::fcntl::openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// Opens a directory on the host (the root itself may be reached through symlinks: it is ours).
pub fn open_root(path: &Path) -> io::Result<OwnedFd> {
    nix::fcntl::openat(
        nix::fcntl::AT_FDCWD,
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(io::Error::from)
}

/// The type of `name` in `dir`, without following a symlink; `None` when absent.
pub fn file_type_at(dir: impl AsFd, name: &OsStr) -> io::Result<Option<SFlag>> {
    match nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(stat) => Ok(Some(SFlag::from_bits_truncate(
            stat.st_mode & SFlag::S_IFMT.bits(),
        ))),
        Err(Errno::ENOENT) => Ok(None),
        Err(errno) => Err(errno.into()),
    }
}

/// Walks `components` from `root`, each one a real directory (never a symlink), creating
/// missing ones with `dir_mode` when `create` is set.
pub(crate) fn walk(
    root: &OwnedFd,
    components: &[OsString],
    create: bool,
    dir_mode: Mode,
) -> Result<OwnedFd, WalkError> {
    let mut current = root
        .try_clone()
        .map_err(|e| WalkError::Io(PathBuf::new(), e))?;
    for (i, name) in components.iter().enumerate() {
        let prefix = || display(&components[..=i]);
        let next = match open_dir(&current, name) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) if create => {
                match nix::sys::stat::mkdirat(&current, name.as_os_str(), dir_mode) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(errno) => return Err(WalkError::Io(prefix(), errno.into())),
                }
                open_dir(&current, name).map_err(|e| classify(&current, name, prefix(), e))?
            }
            Err(errno) => return Err(classify(&current, name, prefix(), errno)),
        };
        current = next;
    }
    Ok(current)
}

fn classify(dir: &OwnedFd, name: &OsStr, prefix: PathBuf, errno: Errno) -> WalkError {
    match errno {
        Errno::ENOENT => WalkError::Missing(prefix),
        Errno::ELOOP | Errno::ENOTDIR | Errno::EMLINK => match file_type_at(dir, name) {
            Ok(Some(SFlag::S_IFLNK)) => WalkError::Symlink(prefix),
            Ok(_) => WalkError::NotADirectory(prefix),
            Err(e) => WalkError::Io(prefix, e),
        },
        other => WalkError::Io(prefix, other.into()),
    }
}

/// Removes `name` from `dir` whatever it is (a directory recursively); absent is fine.
pub(crate) fn remove_at(dir: &OwnedFd, name: &OsStr) -> io::Result<()> {
    match file_type_at(dir, name)? {
        None => Ok(()),
        Some(SFlag::S_IFDIR) => remove_tree_at(dir, name),
        Some(_) => {
            match nix::unistd::unlinkat(dir, name, nix::unistd::UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => Ok(()),
                Err(errno) => Err(errno.into()),
            }
        }
    }
}

/// Removes the directory `name` in `dir` and everything beneath it, never following a symlink.
/// Directories are made writable first so that read-only image directories can be removed
/// without root.
///
/// Iterative and with two descriptors open at any depth: a tree deeper than the descriptor
/// limit (or the stack) is removed like any other. Going back up is `openat(cur, "..")`,
/// checked to be the directory we came from (same device and inode as its entry there).
pub(crate) fn remove_tree_at(dir: &OwnedFd, name: &OsStr) -> io::Result<()> {
    struct Level {
        /// This directory's name in its parent.
        name: OsString,
        /// Subdirectories still to remove.
        subdirs: Vec<OsString>,
    }
    let mut current = match open_dir(dir, name) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(()),
        Err(errno) => return Err(errno.into()),
    };
    let mut levels = vec![Level {
        name: name.to_owned(),
        subdirs: clear_files(&current)?,
    }];
    while let Some(top) = levels.last_mut() {
        if let Some(subdir) = top.subdirs.pop() {
            match open_dir(&current, &subdir) {
                Ok(child) => {
                    let subdirs = clear_files(&child)?;
                    current = child;
                    levels.push(Level {
                        name: subdir,
                        subdirs,
                    });
                }
                Err(Errno::ENOENT) => {}
                Err(errno) => return Err(errno.into()),
            }
            continue;
        }
        let Some(done) = levels.pop() else {
            break;
        };
        if levels.is_empty() {
            break;
        }
        let parent = open_dir(&current, OsStr::new(".."))?;
        let here = nix::sys::stat::fstat(&current)?;
        let entry =
            nix::sys::stat::fstatat(&parent, done.name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)?;
        if (entry.st_dev, entry.st_ino) != (here.st_dev, here.st_ino) {
            return Err(io::Error::other(format!(
                "{}: the directory moved while it was being removed",
                done.name.to_string_lossy()
            )));
        }
        drop(current);
        unlink_dir(&parent, &done.name)?;
        current = parent;
    }
    drop(current);
    unlink_dir(dir, name)
}

fn unlink_dir(dir: &OwnedFd, name: &OsStr) -> io::Result<()> {
    match nix::unistd::unlinkat(dir, name, nix::unistd::UnlinkatFlags::RemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(errno) => Err(errno.into()),
    }
}

/// Makes `dir` writable, removes every non-directory in it and returns its subdirectories.
fn clear_files(dir: &OwnedFd) -> io::Result<Vec<OsString>> {
    let _ = nix::sys::stat::fchmod(dir, Mode::from_bits_truncate(0o700));
    let mut subdirs = Vec::new();
    for name in list_dir(dir)? {
        match file_type_at(dir, &name)? {
            None => {}
            Some(SFlag::S_IFDIR) => subdirs.push(name),
            Some(_) => {
                match nix::unistd::unlinkat(
                    dir,
                    name.as_os_str(),
                    nix::unistd::UnlinkatFlags::NoRemoveDir,
                ) {
                    Ok(()) | Err(Errno::ENOENT) => {}
                    Err(errno) => return Err(errno.into()),
                }
            }
        }
    }
    Ok(subdirs)
}

/// Removes every entry of `dir` for which `remove` says yes.
pub(crate) fn clear_dir(dir: &OwnedFd, mut remove: impl FnMut(&OsStr) -> bool) -> io::Result<()> {
    // Owner rwx so entries can be listed and unlinked without CAP_DAC_OVERRIDE.
    let _ = nix::sys::stat::fchmod(dir, Mode::from_bits_truncate(0o700));
    for name in list_dir(dir)? {
        if remove(&name) {
            remove_at(dir, &name)?;
        }
    }
    Ok(())
}

/// The names in `dir` (without `.` and `..`).
pub fn list_dir(dir: &OwnedFd) -> io::Result<Vec<OsString>> {
    use std::os::unix::ffi::OsStrExt;
    let mut listing = nix::dir::Dir::from_fd(dir.try_clone()?)?;
    let mut names = Vec::new();
    for entry in listing.iter() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(name).to_owned());
        }
    }
    Ok(names)
}

/// Opens `path` for reading only if it is a regular file: opened with `O_NONBLOCK` (a FIFO
/// does not block the open) and checked with `fstat` before anything is read.
pub(crate) fn open_regular(path: &Path) -> io::Result<std::fs::File> {
    let fd = nix::fcntl::openat(
        nix::fcntl::AT_FDCWD,
        path,
        OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    regular_only(fd)
}

/// Like [`open_regular`], for `name` in `dir`, without following a symlink at the leaf
/// (`ELOOP` then).
pub(crate) fn open_regular_at(dir: impl AsFd, name: &OsStr) -> io::Result<std::fs::File> {
    let fd = nix::fcntl::openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    regular_only(fd)
}

fn regular_only(fd: OwnedFd) -> io::Result<std::fs::File> {
    let stat = nix::sys::stat::fstat(&fd)?;
    if stat.st_mode & SFlag::S_IFMT.bits() != SFlag::S_IFREG.bits() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file (FIFOs, devices, sockets and directories are refused)",
        ));
    }
    // Back to blocking reads (a no-op for regular files, kept so nothing depends on it).
    let flags = OFlag::from_bits_truncate(nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFL)?);
    nix::fcntl::fcntl(
        &fd,
        nix::fcntl::FcntlArg::F_SETFL(flags & !OFlag::O_NONBLOCK),
    )?;
    Ok(std::fs::File::from(fd))
}

/// Removes a directory tree given by host path (the store's own directories).
pub(crate) fn remove_dir_all(path: &Path) -> io::Result<()> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "refusing to remove a root path",
        ));
    };
    let parent = match open_root(parent) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    remove_at(&parent, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_strips_root_and_refuses_parent() {
        assert_eq!(
            normalize(Path::new("/a/./b/")).unwrap(),
            vec![OsString::from("a"), "b".into()]
        );
        assert!(normalize(Path::new("./")).unwrap().is_empty());
        assert_eq!(
            normalize(Path::new("a/../b")),
            Err(PathProblem::ParentComponent)
        );
    }

    #[test]
    fn walk_refuses_symlinked_parent_and_removes_read_only_trees() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("d/e")).unwrap();
        std::fs::write(tmp.path().join("d/e/f"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc", tmp.path().join("link")).unwrap();
        let root = open_root(tmp.path()).unwrap();
        let comps = |s: &str| normalize(Path::new(s)).unwrap();
        assert!(
            matches!(walk(&root, &comps("link/x"), true, Mode::from_bits_truncate(0o755)), Err(WalkError::Symlink(p)) if p == Path::new("link"))
        );
        assert!(matches!(
            walk(
                &root,
                &comps("d/e/f/g"),
                true,
                Mode::from_bits_truncate(0o755)
            ),
            Err(WalkError::NotADirectory(_))
        ));
        walk(
            &root,
            &comps("new/dir"),
            true,
            Mode::from_bits_truncate(0o755),
        )
        .unwrap();
        assert!(tmp.path().join("new/dir").is_dir());
        std::fs::set_permissions(
            tmp.path().join("d/e"),
            std::os::unix::fs::PermissionsExt::from_mode(0o500),
        )
        .unwrap();
        remove_dir_all(&tmp.path().join("d")).unwrap();
        assert!(!tmp.path().join("d").exists());
        assert!(Path::new("/etc").is_dir());
    }
}
