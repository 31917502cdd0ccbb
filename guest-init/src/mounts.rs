//! The filesystems every guest needs, and the host's virtio-fs shares.
//!
//! "Already mounted" is decided from `/proc/self/mountinfo`, not from `mount(2)`'s error:
//! mounting proc, devtmpfs or tmpfs again on a mount point succeeds and stacks a second
//! instance (libkrun's kernel mounts `/dev` itself; the initramfs's `/proc` is carried into
//! the new root), so a target that already is a mount point is left as it is.

use std::path::Path;

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};

use krunbox_protocol::boot::Share;

/// A mount that failed.
#[derive(Debug, thiserror::Error)]
#[error("mount {what} on {target}: {errno}")]
pub struct MountError {
    pub what: String,
    pub target: String,
    pub errno: Errno,
}

/// Decodes the octal escapes (`\040` for a space, ...) mountinfo uses in paths.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|digits| {
            let text = std::str::from_utf8(digits).ok()?;
            u8::from_str_radix(text, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount points listed in a mountinfo table (the fifth field of each line).
fn mount_points(mountinfo: &str) -> impl Iterator<Item = String> + '_ {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mountinfo)
}

/// Whether `target` is a mount point now; false when /proc is not mounted yet.
pub fn is_mount_point(target: &str) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .is_ok_and(|table| mount_points(&table).any(|point| point == target))
}

/// Mounts /proc (the kernel command line lives there) unless it already is.
pub fn mount_proc() {
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if let Err(err) = mount_one("proc", "/proc", "proc", flags, None) {
        // No configuration then; the defaults still give a working agent.
        eprintln!("guest-init: {err}");
    }
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
    if is_mount_point(target) {
        tracing::debug!(target, "already mounted");
        return Ok(());
    }
    std::fs::create_dir_all(target)
        .map_err(|e| err(Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))))?;
    match mount(Some(source), target, Some(fstype), flags, data) {
        Ok(()) | Err(Errno::EBUSY) => Ok(()),
        Err(errno) => Err(err(errno)),
    }
}

/// Mounts /proc, /sys, /dev, /dev/pts, /dev/mqueue (POSIX message queues), /dev/shm, /tmp,
/// /run and the cgroup2 hierarchy. Each
/// failure is logged and the rest still mounted: a guest with one of them missing is more
/// useful than a PID 1 that stops.
pub fn mount_essentials() {
    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let table: [(&str, &str, &str, MsFlags, Option<&str>); 9] = [
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
        ("mqueue", "/dev/mqueue", "mqueue", nosuid_nodev_noexec, None),
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
    let mut dev_mounted = false;
    for (source, target, fstype, flags, data) in table {
        match mount_one(source, target, fstype, flags, data) {
            Ok(()) => dev_mounted |= target == "/dev",
            Err(err) => tracing::warn!(%err, "essential mount failed"),
        }
    }
    // Only in the guest's own /dev: without it, these would land in the image's directory.
    if dev_mounted {
        link_dev();
    }
}

/// /dev's links: to the devpts instance's ptmx and to /proc/self/fd.
fn link_dev() {
    // /dev/ptmx is the devpts instance's (a link, as the OCI runtime spec has it), not
    // devtmpfs's node of the kernel's first instance.
    let ptmx = Path::new("/dev/ptmx");
    if !ptmx.is_symlink() {
        let _ = std::fs::remove_file(ptmx);
        if let Err(err) = std::os::unix::fs::symlink("pts/ptmx", ptmx) {
            tracing::warn!(%err, "cannot link /dev/ptmx");
        }
    }
    // What udev or systemd would add, and programs expect: bash's `<(...)` needs /dev/fd.
    for (link, target) in DEV_LINKS {
        if std::fs::symlink_metadata(link).is_err() {
            if let Err(err) = std::os::unix::fs::symlink(target, link) {
                tracing::warn!(%err, link, "cannot link");
            }
        }
    }
}

/// The standard links of /dev to /proc (as the OCI runtime spec lists them).
const DEV_LINKS: [(&str, &str); 4] = [
    ("/dev/fd", "/proc/self/fd"),
    ("/dev/stdin", "/proc/self/fd/0"),
    ("/dev/stdout", "/proc/self/fd/1"),
    ("/dev/stderr", "/proc/self/fd/2"),
];

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_come_from_the_fifth_field_unescaped() {
        let table = "22 1 0:21 / /proc rw,nosuid shared:5 - proc proc rw\n\
                     25 1 0:5 / /dev rw - devtmpfs udev rw,size=1k\n\
                     40 25 0:40 / /mnt/with\\040space rw - virtiofs work rw\n";
        let points: Vec<String> = mount_points(table).collect();
        assert_eq!(points, ["/proc", "/dev", "/mnt/with space"]);
    }

    #[test]
    fn unescape_leaves_other_backslashes_alone() {
        assert_eq!(unescape_mountinfo(r"a\\b\134c\12"), r"a\\b\c\12");
    }

    #[test]
    fn proc_is_a_mount_point_and_a_plain_directory_is_not() {
        assert!(is_mount_point("/proc"));
        assert!(!is_mount_point("/proc/self"));
    }
}
