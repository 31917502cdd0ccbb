//! Switching from the initramfs to the virtio-fs root the host shares.
//!
//! The classic `switch_root` sequence: mount the new root at `/newroot`, carry over the
//! mounts made in the initramfs (only `/proc`, needed to read the command line), move the new
//! root onto `/`, `chroot(".")`, `chdir("/")`. The initramfs stays underneath, unreachable;
//! its few megabytes (this binary and the modules) are not reclaimed.

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};

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

/// Mounts virtio-fs `tag` and makes it `/` (the initramfs stays underneath, unreachable).
pub fn switch_to_virtiofs(tag: &str) -> Result<(), SwitchRootError> {
    let fail = |step, errno| SwitchRootError {
        tag: tag.into(),
        step,
        errno,
    };
    std::fs::create_dir_all(NEW_ROOT).map_err(|e| {
        fail(
            "mkdir /newroot",
            Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
        )
    })?;
    mount(
        Some(tag),
        NEW_ROOT,
        Some("virtiofs"),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| fail("mount", e))?;
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
