//! The file-system calls the unpacker makes relative to an open directory (`*at(2)`), and
//! extended attributes.

use std::ffi::{OsStr, OsString};
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::fcntl::AtFlags;
use nix::sys::stat::Mode;
use nix::sys::time::TimeSpec;

use super::UnpackError;

/// `mkfifoat(2)` (nix does not offer it on macOS).
pub(super) fn mkfifo_at(dir: &OwnedFd, name: &OsStr, mode: u32) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let name = std::ffi::CString::new(name.as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `dir` is an open directory descriptor for the duration of the call and `name`
    // a NUL-terminated string that outlives it; mkfifoat only reads them.
    let rc = unsafe {
        libc::mkfifoat(
            dir.as_raw_fd(),
            name.as_ptr(),
            (mode & 0o7777) as libc::mode_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

pub(super) fn mkdir(dir: &OwnedFd, name: &OsStr) -> io::Result<()> {
    nix::sys::stat::mkdirat(dir, name, Mode::from_bits_truncate(0o755)).map_err(io::Error::from)
}

pub(super) fn same_file(dir_a: &OwnedFd, a: &OsStr, dir_b: &OwnedFd, b: &OsStr) -> bool {
    let stat = |dir: &OwnedFd, name: &OsStr| {
        nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW).ok()
    };
    match (stat(dir_a, a), stat(dir_b, b)) {
        (Some(x), Some(y)) => x.st_dev == y.st_dev && x.st_ino == y.st_ino,
        _ => false,
    }
}

pub(super) fn set_mtime_at(dir: &OwnedFd, name: &OsStr, mtime: i64) -> io::Result<()> {
    let time = TimeSpec::new(mtime, 0);
    nix::sys::stat::utimensat(
        dir,
        name,
        &time,
        &time,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .map_err(io::Error::from)
}

pub(super) type Xattrs = Vec<(OsString, Vec<u8>)>;

pub(super) fn xattrs_of<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Xattrs, UnpackError> {
    let mut out = Vec::new();
    if let Some(extensions) = entry.pax_extensions().map_err(UnpackError::Archive)? {
        for extension in extensions {
            let extension = extension.map_err(UnpackError::Archive)?;
            if let Some(name) = extension.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                out.push((
                    OsStr::from_bytes(name).to_owned(),
                    extension.value_bytes().to_vec(),
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(target_os = "linux")]
pub(super) fn set_xattrs(fd: &OwnedFd, xattrs: &Xattrs, entry: &Path) {
    use std::os::fd::AsRawFd;
    for (name, value) in xattrs {
        let Ok(cname) = std::ffi::CString::new(name.as_bytes()) else {
            continue;
        };
        // SAFETY: fd is an open descriptor we own, cname is NUL-terminated, value is a valid
        // buffer of value.len() bytes; fsetxattr only reads them.
        let rc = unsafe {
            libc::fsetxattr(
                fd.as_raw_fd(),
                cname.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        if rc != 0 {
            let err = io::Error::last_os_error();
            tracing::debug!(entry = %entry.display(), xattr = ?name, %err, "could not set xattr; continuing");
        }
    }
}

#[cfg(not(target_os = "linux"))]
pub(super) fn set_xattrs(_fd: &OwnedFd, xattrs: &Xattrs, entry: &Path) {
    if !xattrs.is_empty() {
        tracing::debug!(entry = %entry.display(), "xattrs are not applied on this host");
    }
}
