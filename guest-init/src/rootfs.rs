//! Switching from the initramfs to the virtio-fs root the host shares.
//!
//! The classic `switch_root` sequence: mount the new root at `/newroot`, carry over the
//! mounts made in the initramfs (only `/proc`, needed to read the command line), move the new
//! root onto `/`, `chroot(".")`, `chdir("/")`. The initramfs stays underneath, unreachable;
//! its few megabytes (this binary and the modules) are not reclaimed.
//!
//! With an overlay root (`krunbox.overlay=tmpfs`, used for images from the store, which many
//! sandboxes share and none may change) the share is mounted read-only at
//! `/krunbox/overlay/lower`, a tmpfs at `/krunbox/overlay/rw` holds the writable `upper` and
//! overlayfs's `work` directory, and the overlay of the two becomes the new root. Writes land
//! in guest memory and vanish with the VM; the host's image directory is never written.

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};

use krunbox_protocol::boot::OverlayUpper;

/// Where the new root is mounted before the switch.
const NEW_ROOT: &str = "/newroot";

/// A failed switch.
#[derive(Debug, thiserror::Error)]
#[error("switching to the virtio-fs root {tag:?} failed at {step}: {errno}")]
pub struct SwitchRootError {
    pub tag: String,
    pub step: &'static str,
    pub errno: Errno,
}

/// Mounts made in the initramfs that move into the new root with it.
const CARRIED_MOUNTS: [&str; 1] = ["/proc"];

/// Moves `mount_point` of the initramfs to the same place under the new root, or detaches it
/// when the new root has no such directory (it would otherwise stay pinned and invisible).
fn carry_over(mount_point: &str) {
    if !crate::mounts::is_mount_point(mount_point) {
        return;
    }
    let target = format!("{NEW_ROOT}{mount_point}");
    let moved = std::path::Path::new(&target).is_dir()
        && mount(
            Some(mount_point),
            target.as_str(),
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .map_err(|err| tracing::debug!(mount_point, %err, "cannot move into the new root"))
        .is_ok();
    if !moved {
        let _ = nix::mount::umount2(mount_point, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Where the layers of an overlay root are mounted (in the initramfs, unreachable later).
const OVERLAY_LOWER: &str = "/krunbox/overlay/lower";
const OVERLAY_RW: &str = "/krunbox/overlay/rw";

fn io_errno(err: &std::io::Error) -> Errno {
    Errno::from_raw(err.raw_os_error().unwrap_or(libc::EIO))
}

/// Mounts the read-only share `tag` under a writable overlay at [`NEW_ROOT`].
fn mount_overlay_root(
    tag: &str,
    upper: OverlayUpper,
    fail: impl Fn(&'static str, Errno) -> SwitchRootError,
) -> Result<(), SwitchRootError> {
    for dir in [OVERLAY_LOWER, OVERLAY_RW] {
        std::fs::create_dir_all(dir).map_err(|e| fail("mkdir overlay layers", io_errno(&e)))?;
    }
    mount(
        Some(tag),
        OVERLAY_LOWER,
        Some("virtiofs"),
        MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .map_err(|e| fail("mount the read-only image", e))?;
    match upper {
        OverlayUpper::Tmpfs => mount(
            Some("krunbox-rw"),
            OVERLAY_RW,
            Some("tmpfs"),
            MsFlags::empty(),
            Some("mode=0755"),
        )
        .map_err(|e| fail("mount the tmpfs for the writable layer", e))?,
    }
    let upper_dir = format!("{OVERLAY_RW}/upper");
    let work_dir = format!("{OVERLAY_RW}/work");
    for dir in [&upper_dir, &work_dir] {
        std::fs::create_dir_all(dir).map_err(|e| fail("mkdir upper/work", io_errno(&e)))?;
    }
    copy_root_attributes(OVERLAY_LOWER, &upper_dir);
    let options = format!("lowerdir={OVERLAY_LOWER},upperdir={upper_dir},workdir={work_dir}");
    mount(
        Some("overlay"),
        NEW_ROOT,
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .map_err(|e| fail("mount the overlay", e))?;
    tracing::debug!(tag, ?upper, "overlay root mounted");
    Ok(())
}

/// Directories of an image the tmpfs for the writable layer may cover (the overlay's lower
/// layer still shows their content: overlayfs does not look through mounts of the lower).
const SCRATCH_CANDIDATES: [&str; 6] = ["/tmp", "/run", "/mnt", "/var/tmp", "/srv", "/opt"];

/// Stacks a writable overlay (upper layer on `upper`) on the current root and pivots into
/// it. Returns the old root (virtio-fs), opened before the switch, for libkrun's exit-status
/// ioctl.
pub fn overlay_current_root(upper: OverlayUpper) -> Result<std::fs::File, SwitchRootError> {
    let fail = |step, errno| SwitchRootError {
        tag: "/".into(),
        step,
        errno,
    };
    let lower = std::fs::File::open("/").map_err(|e| fail("open /", io_errno(&e)))?;
    // The guest's own writes must not reach the shared image either.
    if let Err(errno) = mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    ) {
        tracing::warn!(%errno, "cannot remount the image read-only");
    }
    let scratch = SCRATCH_CANDIDATES
        .iter()
        .copied()
        .find(|dir| {
            std::fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir())
                && !crate::mounts::is_mount_point(dir)
        })
        .ok_or_else(|| fail("find a directory for the writable layer", Errno::ENOENT))?;
    match upper {
        OverlayUpper::Tmpfs => mount(
            Some("krunbox-rw"),
            scratch,
            Some("tmpfs"),
            MsFlags::empty(),
            Some("mode=0755"),
        )
        .map_err(|e| fail("mount the tmpfs for the writable layer", e))?,
    }
    let upper_dir = format!("{scratch}/upper");
    let work_dir = format!("{scratch}/work");
    let new_root = format!("{scratch}/root");
    for dir in [&upper_dir, &work_dir, &new_root] {
        std::fs::create_dir_all(dir).map_err(|e| fail("mkdir upper/work", io_errno(&e)))?;
    }
    copy_root_attributes("/", &upper_dir);
    let options = format!("lowerdir=/,upperdir={upper_dir},workdir={work_dir}");
    mount(
        Some("overlay"),
        new_root.as_str(),
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .map_err(|e| fail("mount the overlay", e))?;
    nix::unistd::chdir(new_root.as_str()).map_err(|e| fail("chdir", e))?;
    // pivot_root(".", "."): the old root ends up on top of the new one and is detached.
    nix::unistd::pivot_root(".", ".").map_err(|e| fail("pivot_root", e))?;
    nix::mount::umount2(".", nix::mount::MntFlags::MNT_DETACH)
        .map_err(|e| fail("detach the old root", e))?;
    nix::unistd::chdir("/").map_err(|e| fail("chdir /", e))?;
    tracing::debug!(scratch, ?upper, "overlay stacked on the root");
    Ok(lower)
}

/// The overlay root's own mode and owner come from the upper directory: copy the image's.
fn copy_root_attributes(from: &str, upper_dir: &str) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if let Ok(meta) = std::fs::metadata(from) {
        let _ = std::fs::set_permissions(
            upper_dir,
            std::fs::Permissions::from_mode(meta.mode() & 0o7777),
        );
        let _ = std::os::unix::fs::chown(upper_dir, Some(meta.uid()), Some(meta.gid()));
    }
}

/// Mounts virtio-fs `tag` (under a writable overlay when `overlay` is set) and makes it `/`
/// (the initramfs stays underneath, unreachable).
pub fn switch_to_virtiofs(tag: &str, overlay: Option<OverlayUpper>) -> Result<(), SwitchRootError> {
    let fail = |step, errno| SwitchRootError {
        tag: tag.into(),
        step,
        errno,
    };
    std::fs::create_dir_all(NEW_ROOT).map_err(|e| fail("mkdir /newroot", io_errno(&e)))?;
    match overlay {
        Some(upper) => mount_overlay_root(tag, upper, fail)?,
        None => mount(
            Some(tag),
            NEW_ROOT,
            Some("virtiofs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| fail("mount", e))?,
    }
    for mount_point in CARRIED_MOUNTS {
        carry_over(mount_point);
    }
    nix::unistd::chdir(NEW_ROOT).map_err(|e| fail("chdir", e))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|e| fail("move mount", e))?;
    nix::unistd::chroot(".").map_err(|e| fail("chroot", e))?;
    nix::unistd::chdir("/").map_err(|e| fail("chdir /", e))?;
    Ok(())
}
