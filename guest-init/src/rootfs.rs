//! Switching from the initramfs to the virtio-fs root the host shares.

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
    nix::unistd::chdir(NEW_ROOT).map_err(|e| fail("chdir", e))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|e| fail("move mount", e))?;
    nix::unistd::chroot(".").map_err(|e| fail("chroot", e))?;
    nix::unistd::chdir("/").map_err(|e| fail("chdir /", e))?;
    Ok(())
}
