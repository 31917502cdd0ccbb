//! The filesystems every guest needs, and the host's virtio-fs shares.

use std::path::Path;

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};

use crate::config::Share;

/// A mount that failed.
#[derive(Debug, thiserror::Error)]
#[error("mount {what} on {target}: {errno}")]
pub struct MountError {
    pub what: String,
    pub target: String,
    pub errno: Errno,
}

fn mount_one(
    source: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), MountError> {
    let err = |errno| MountError {
        what: format!("{fstype} ({source})"),
        target: target.into(),
        errno,
    };
    std::fs::create_dir_all(target)
        .map_err(|e| err(Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))))?;
    match mount(Some(source), target, Some(fstype), flags, data) {
        Ok(()) | Err(Errno::EBUSY) => Ok(()),
        Err(errno) => Err(err(errno)),
    }
}

/// Mounts /proc, /sys, /dev, /dev/pts, /dev/shm, /tmp, /run and the cgroup2 hierarchy. Each
/// failure is logged and the rest still mounted: a guest with one of them missing is more
/// useful than a PID 1 that stops.
pub fn mount_essentials() {
    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let table: [(&str, &str, &str, MsFlags, Option<&str>); 8] = [
        ("proc", "/proc", "proc", nosuid_nodev_noexec, None),
        ("sysfs", "/sys", "sysfs", nosuid_nodev_noexec, None),
        (
            "devtmpfs",
            "/dev",
            "devtmpfs",
            MsFlags::MS_NOSUID,
            Some("mode=0755"),
        ),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=0620"),
        ),
        (
            "shm",
            "/dev/shm",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777"),
        ),
        (
            "tmpfs",
            "/tmp",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777"),
        ),
        (
            "tmpfs",
            "/run",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755"),
        ),
        (
            "cgroup2",
            "/sys/fs/cgroup",
            "cgroup2",
            nosuid_nodev_noexec,
            None,
        ),
    ];
    for (source, target, fstype, flags, data) in table {
        if let Err(err) = mount_one(source, target, fstype, flags, data) {
            tracing::warn!(%err, "essential mount failed");
        }
    }
    // /dev/ptmx must be the devpts instance's, for PTYs to work in a fresh devtmpfs.
    if !Path::new("/dev/ptmx").exists() {
        let _ = std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx");
    }
}

/// Mounts a virtio-fs share.
pub fn mount_share(share: &Share) -> Result<(), MountError> {
    let mut flags = MsFlags::empty();
    if share.read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    mount_one(
        &share.tag,
        &share.path.to_string_lossy(),
        "virtiofs",
        flags,
        None,
    )
}
