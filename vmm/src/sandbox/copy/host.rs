//! The host side of `krunbox cp`, confined beneath the directory the user named.
//!
//! The destination (or source) may be a share the guest writes into, so everything beneath
//! the path the user typed is hostile: a guest can plant a symlink, a FIFO or a directory at
//! any name at any moment. Every operation here therefore works on one name relative to an
//! open directory, never follows a symlink, and decides on the object it opened (`fstat` of
//! the descriptor), not on an earlier look at a path:
//!
//! - directories are opened with `O_DIRECTORY | O_NOFOLLOW`; a symlink in the way is refused;
//! - files are written to a fresh temporary name (`O_CREAT | O_EXCL | O_NOFOLLOW`) and renamed
//!   over the destination name, which replaces a symlink there instead of writing through it;
//! - modes are masked to the permission bits (no setuid, setgid or sticky) and the kernel
//!   applies the user's umask when creating, as `cp` without `-p` does.
//!
//! The path the user typed is resolved as typed (it may be a symlink to a directory, as
//! `/tmp` is on macOS); only names beneath it are confined.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use krunbox_image::confined;
use nix::errno::Errno;
use nix::fcntl::{openat, renameat, OFlag};
use nix::sys::stat::{fchmod, fstat, mkdirat, FileStat, Mode, SFlag};
use nix::unistd::{unlinkat, UnlinkatFlags};

use super::CopyError;
use crate::io_error::io;

/// What a name beneath a directory is, looked at without following it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    File,
    Dir,
    Symlink,
    Other,
}

impl Kind {
    fn of(stat: &FileStat) -> Self {
        Self::from_type(SFlag::from_bits_truncate(
            stat.st_mode & SFlag::S_IFMT.bits(),
        ))
    }

    fn from_type(file_type: SFlag) -> Self {
        match file_type {
            SFlag::S_IFREG => Self::File,
            SFlag::S_IFDIR => Self::Dir,
            SFlag::S_IFLNK => Self::Symlink,
            _ => Self::Other,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::File => "a file",
            Self::Dir => "a directory",
            Self::Symlink => "a symlink",
            Self::Other => "a special file",
        }
    }
}

/// Permission bits only: a guest's setuid, setgid and sticky bits never reach the host.
pub(super) fn permission_bits(mode: u32) -> Mode {
    // The mask keeps the value within `mode_t` (16 bits on macOS).
    Mode::from_bits_truncate((mode & 0o777) as libc::mode_t)
}

/// The mode bits of an `fstat`.
#[allow(clippy::useless_conversion)] // `mode_t` is `u16` on macOS
pub(super) fn mode_of(stat: &FileStat) -> u32 {
    u32::from(stat.st_mode) & 0o7777
}

/// An open host directory; `path` is only for messages.
#[derive(Debug)]
pub(super) struct HostDir {
    fd: OwnedFd,
    path: PathBuf,
}

impl HostDir {
    /// Opens the directory the user named, resolved as typed.
    pub(super) fn open(path: &Path) -> Result<Self, CopyError> {
        let fd = confined::open_root(path).map_err(io("open", path))?;
        Ok(Self {
            fd,
            path: path.to_owned(),
        })
    }

    /// The path of `name` beneath this directory, for messages.
    pub(super) fn path_of(&self, name: &OsStr) -> PathBuf {
        self.path.join(name)
    }

    fn error(&self, action: &'static str, name: &OsStr, errno: Errno) -> CopyError {
        host_error(action, &self.path_of(name), errno)
    }

    /// What `name` is, without following it (`None`: nothing there).
    pub(super) fn kind_of(&self, name: &OsStr) -> Result<Option<Kind>, CopyError> {
        confined::file_type_at(&self.fd, name)
            .map(|found| found.map(Kind::from_type))
            .map_err(|source| {
                CopyError::Host(crate::io_error::IoError {
                    action: "inspect",
                    path: self.path_of(name),
                    source,
                })
            })
    }

    /// The mode bits of this directory.
    pub(super) fn mode(&self) -> Result<u32, CopyError> {
        let stat = fstat(&self.fd).map_err(|errno| host_error("inspect", &self.path, errno))?;
        Ok(mode_of(&stat))
    }

    /// Opens the existing directory `name`; a symlink or anything else there is refused.
    pub(super) fn open_dir(&self, name: &OsStr) -> Result<Self, CopyError> {
        // O_DIRECTORY is checked before a FIFO planted at the name could block the open.
        match confined::open_dir(&self.fd, name) {
            Ok(fd) => Ok(Self {
                fd,
                path: self.path_of(name),
            }),
            Err(errno @ (Errno::ELOOP | Errno::ENOTDIR)) => Err(self.in_the_way(name, errno)),
            Err(errno) => Err(self.error("open", name, errno)),
        }
    }

    /// Refuses what is at `name`, saying what it is.
    fn in_the_way(&self, name: &OsStr, errno: Errno) -> CopyError {
        match self.kind_of(name) {
            Ok(Some(found)) => CopyError::InTheWay {
                path: self.path_of(name),
                found: found.describe(),
            },
            _ => self.error("open", name, errno),
        }
    }

    /// Creates the directory `name` with the guest's `mode` (masked, under the umask), or
    /// opens the directory already there. Returns it and whether it was created.
    ///
    /// A new directory is created writable and searchable by its owner so that it can be
    /// filled; [`HostDir::restrict_owner`] takes those bits away afterwards if `mode` lacks
    /// them.
    pub(super) fn make_dir(&self, name: &OsStr, mode: u32) -> Result<(Self, bool), CopyError> {
        let created = match mkdirat(&self.fd, name, permission_bits(mode) | Mode::S_IRWXU) {
            Ok(()) => true,
            Err(Errno::EEXIST) => false,
            Err(errno) => return Err(self.error("create", name, errno)),
        };
        Ok((self.open_dir(name)?, created))
    }

    /// Clears the owner bits that `mode` lacks (see [`HostDir::make_dir`]).
    pub(super) fn restrict_owner(&self, mode: u32) -> Result<(), CopyError> {
        let current = self.mode()? & 0o777;
        let wanted = current & !(0o700 & !mode);
        fchmod(&self.fd, permission_bits(wanted))
            .map_err(|errno| host_error("chmod", &self.path, errno))
    }

    /// The names in this directory (without `.` and `..`), sorted.
    pub(super) fn names(&self) -> Result<Vec<OsString>, CopyError> {
        let mut names = confined::list_dir(&self.fd).map_err(io("list", &self.path))?;
        names.sort();
        Ok(names)
    }

    /// Opens the regular file `name` for reading, without following a symlink and without
    /// blocking on a FIFO; `None` when it is not a regular file (any more).
    pub(super) fn open_file(
        &self,
        name: &OsStr,
    ) -> Result<Option<(std::fs::File, FileStat)>, CopyError> {
        let flags = OFlag::O_RDONLY
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_NOCTTY
            | OFlag::O_CLOEXEC;
        let fd = match openat(&self.fd, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ELOOP) => return Ok(None),
            Err(errno) => return Err(self.error("open", name, errno)),
        };
        let stat = fstat(&fd).map_err(|errno| self.error("inspect", name, errno))?;
        if Kind::of(&stat) != Kind::File {
            return Ok(None);
        }
        Ok(Some((std::fs::File::from(fd), stat)))
    }

    /// Starts writing the file `name` with the guest's `mode` (masked, under the umask):
    /// a fresh file under a temporary name, renamed over `name` by [`NewFile::commit`].
    pub(super) fn new_file(
        &self,
        name: &OsStr,
        mode: u32,
    ) -> Result<(std::fs::File, NewFile<'_>), CopyError> {
        static SERIAL: AtomicU64 = AtomicU64::new(0);
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        // A name taken (by a guest guessing it, say) is skipped, never opened.
        for _ in 0..64 {
            let temp = OsString::from(format!(
                ".krunbox-cp-{}-{}.tmp",
                std::process::id(),
                SERIAL.fetch_add(1, Ordering::Relaxed)
            ));
            match openat(&self.fd, temp.as_os_str(), flags, permission_bits(mode)) {
                Ok(fd) => {
                    let new = NewFile {
                        dir: self,
                        temp,
                        name: name.to_owned(),
                        committed: false,
                    };
                    return Ok((std::fs::File::from(fd), new));
                }
                Err(Errno::EEXIST) => continue,
                Err(errno) => return Err(self.error("create", name, errno)),
            }
        }
        Err(self.error("create", name, Errno::EEXIST))
    }
}

fn host_error(action: &'static str, path: &Path, errno: Errno) -> CopyError {
    CopyError::Host(crate::io_error::IoError {
        action,
        path: path.to_owned(),
        source: errno.into(),
    })
}

/// A file being written under a temporary name; removed unless committed.
#[derive(Debug)]
pub(super) struct NewFile<'a> {
    dir: &'a HostDir,
    temp: OsString,
    name: OsString,
    committed: bool,
}

impl NewFile<'_> {
    /// Puts the finished file in place: replaces a file or symlink at the name (never writing
    /// through it); a directory there is refused.
    pub(super) fn commit(mut self) -> Result<(), CopyError> {
        renameat(
            &self.dir.fd,
            self.temp.as_os_str(),
            &self.dir.fd,
            self.name.as_os_str(),
        )
        .map_err(|errno| match errno {
            Errno::EISDIR => CopyError::InTheWay {
                path: self.dir.path_of(&self.name),
                found: Kind::Dir.describe(),
            },
            errno => self.dir.error("rename into place", &self.name, errno),
        })?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for NewFile<'_> {
    fn drop(&mut self) {
        if !self.committed {
            let _ = unlinkat(
                self.dir.fd.as_fd(),
                self.temp.as_os_str(),
                UnlinkatFlags::NoRemoveDir,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn victim() -> (tempfile::TempDir, PathBuf) {
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        std::fs::write(&victim, "precious\n").unwrap();
        (outside, victim)
    }

    fn write(dir: &HostDir, name: &str, mode: u32, data: &[u8]) -> Result<(), CopyError> {
        let (mut file, new) = dir.new_file(OsStr::new(name), mode)?;
        file.write_all(data).unwrap();
        drop(file);
        new.commit()
    }

    #[test]
    fn a_file_replaces_a_planted_symlink_instead_of_writing_through_it() {
        let (_outside, victim) = victim();
        let dest = tempfile::tempdir().unwrap();
        symlink(&victim, dest.path().join("f")).unwrap();
        let dir = HostDir::open(dest.path()).unwrap();
        write(&dir, "f", 0o644, b"from guest").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
        let meta = std::fs::symlink_metadata(dest.path().join("f")).unwrap();
        assert!(meta.file_type().is_file());
        assert_eq!(std::fs::read(dest.path().join("f")).unwrap(), b"from guest");
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dest.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_directory_symlink_is_refused_not_entered() {
        let outside = tempfile::tempdir().unwrap();
        let dest = tempfile::tempdir().unwrap();
        symlink(outside.path(), dest.path().join("d")).unwrap();
        let dir = HostDir::open(dest.path()).unwrap();
        let err = dir.make_dir(OsStr::new("d"), 0o755).unwrap_err();
        assert!(
            matches!(
                err,
                CopyError::InTheWay {
                    found: "a symlink",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("not followed"), "{err}");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn setuid_setgid_and_sticky_bits_are_dropped() {
        let dest = tempfile::tempdir().unwrap();
        let dir = HostDir::open(dest.path()).unwrap();
        write(&dir, "suid", 0o6755, b"x").unwrap();
        let mode = std::fs::metadata(dest.path().join("suid"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7000, 0, "{mode:o}");
        assert_eq!(mode & 0o100, 0o100, "{mode:o}");
        let (sub, created) = dir.make_dir(OsStr::new("sticky"), 0o3777).unwrap();
        assert!(created);
        assert_eq!(sub.mode().unwrap() & 0o7000, 0);
    }

    #[test]
    fn a_directory_in_place_of_a_file_is_refused_and_kept() {
        let dest = tempfile::tempdir().unwrap();
        std::fs::create_dir(dest.path().join("f")).unwrap();
        std::fs::write(dest.path().join("f/keep"), "kept").unwrap();
        let dir = HostDir::open(dest.path()).unwrap();
        let err = write(&dir, "f", 0o644, b"x").unwrap_err();
        assert!(
            matches!(
                err,
                CopyError::InTheWay {
                    found: "a directory",
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(
            std::fs::read_to_string(dest.path().join("f/keep")).unwrap(),
            "kept"
        );
        assert_eq!(std::fs::read_dir(dest.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_read_only_directory_mode_is_applied_after_filling() {
        let dest = tempfile::tempdir().unwrap();
        let dir = HostDir::open(dest.path()).unwrap();
        let (sub, _) = dir.make_dir(OsStr::new("ro"), 0o555).unwrap();
        write(&sub, "inside", 0o644, b"x").unwrap();
        sub.restrict_owner(0o555).unwrap();
        assert_eq!(sub.mode().unwrap() & 0o700, 0o500);
        std::fs::set_permissions(
            dest.path().join("ro"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
    }

    #[test]
    fn reading_does_not_follow_symlinks_or_open_fifos() {
        let (_outside, victim) = victim();
        let src = tempfile::tempdir().unwrap();
        symlink(&victim, src.path().join("link")).unwrap();
        nix::unistd::mkfifo(&src.path().join("fifo"), Mode::S_IRWXU).unwrap();
        std::fs::write(src.path().join("plain"), "plain").unwrap();
        let dir = HostDir::open(src.path()).unwrap();
        assert!(dir.open_file(OsStr::new("link")).unwrap().is_none());
        assert!(dir.open_file(OsStr::new("fifo")).unwrap().is_none());
        assert!(dir.open_file(OsStr::new("plain")).unwrap().is_some());
        assert_eq!(dir.names().unwrap(), ["fifo", "link", "plain"]);
    }
}
