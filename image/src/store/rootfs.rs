//! Unpacked root filesystems: one directory per image ID, unpacked on first use into a
//! staging directory, made durable, renamed into place, and leased while a sandbox runs.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use crate::confined;
use crate::lock::{FileLock, LockKind};
use crate::unpack::{self, UnpackStats};

use super::{io_err, ImageRecord, Store, StoreError};

impl Store {
    /// Where the flattened rootfs of an image lives (keyed by image ID, so every tag of the
    /// same image shares one directory).
    pub fn rootfs_path(&self, image: &ImageRecord) -> PathBuf {
        self.root.join("rootfs/sha256").join(image.config.hex())
    }

    /// The image's unpacked root filesystem, unpacking it on first use. The same directory is
    /// returned to every caller: nothing is copied per sandbox. Prefer [`Store::lease_rootfs`]
    /// while a sandbox runs, so prune cannot remove it underneath.
    pub fn rootfs_dir(&self, image: &ImageRecord) -> Result<PathBuf, StoreError> {
        Ok(self.lease_rootfs(image)?.path)
    }

    /// Unpacks the image if needed and returns its rootfs with a shared lock held until the
    /// lease is dropped; rmi/prune skip root filesystems that are leased.
    pub fn lease_rootfs(&self, image: &ImageRecord) -> Result<RootfsLease, StoreError> {
        let _store = self.lock_shared()?;
        let path = self.rootfs_path(image);
        let lock_path = path.with_extension("lock");
        // Fast path: already unpacked. The shared lock waits only for an unpack in progress.
        let shared = FileLock::acquire(&lock_path, LockKind::Shared)?;
        if path.is_dir() {
            return Ok(RootfsLease {
                path,
                _lock: shared,
            });
        }
        // Leases are only handed out once the directory exists, so nobody holds this lock
        // for long while it is missing: the exclusive lock comes quickly.
        drop(shared);
        let lock = FileLock::acquire(&lock_path, LockKind::Exclusive)?;
        if !path.is_dir() {
            let stats = self.unpack_into(image, &path)?;
            tracing::info!(image = %image.name, entries = stats.entries, bytes = stats.bytes, path = %path.display(), "image unpacked");
        }
        lock.downgrade()?;
        Ok(RootfsLease { path, _lock: lock })
    }

    fn unpack_into(&self, image: &ImageRecord, dest: &Path) -> Result<UnpackStats, StoreError> {
        let partial = dest.with_extension("partial");
        confined::remove_dir_all(&partial).map_err(io_err("removing stale", &partial))?;
        fs::create_dir(&partial).map_err(io_err("creating", &partial))?;
        let result = self.unpack_partial(image, &partial, dest);
        if result.is_err() {
            // A refused layer leaves nothing half-written (prune would remove it too).
            if let Err(e) = confined::remove_dir_all(&partial) {
                tracing::warn!(path = %partial.display(), %e, "could not remove a failed unpack");
            }
        }
        result
    }

    fn unpack_partial(
        &self,
        image: &ImageRecord,
        partial: &Path,
        dest: &Path,
    ) -> Result<UnpackStats, StoreError> {
        let mut total = UnpackStats::default();
        for layer in &image.layers {
            let blob = self.blob_path(layer);
            if !blob.is_file() {
                return Err(StoreError::BlobMissing(layer.clone()));
            }
            tracing::debug!(%layer, "applying layer");
            total += unpack::unpack_layer_file(&blob, partial, &self.limits, &total).map_err(
                |source| StoreError::Unpack {
                    layer: layer.clone(),
                    source,
                },
            )?;
        }
        sync_tree(partial)?;
        fs::set_permissions(partial, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .map_err(io_err("setting mode of", partial))?;
        fs::rename(partial, dest).map_err(io_err("moving unpacked rootfs into place at", dest))?;
        if let Some(parent) = dest.parent() {
            File::open(parent)
                .and_then(|dir| dir.sync_all())
                .map_err(io_err("syncing", parent))?;
        }
        Ok(total)
    }
}

/// An unpacked image root filesystem held in use. rmi/prune keep it while this exists.
#[derive(Debug)]
pub struct RootfsLease {
    path: PathBuf,
    _lock: FileLock,
}

impl RootfsLease {
    /// The directory to share (read-only) into the guest.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Makes an unpacked tree durable before it is renamed into place, so a crash cannot leave a
/// complete-looking rootfs with empty files. One `syncfs` of the staging filesystem on Linux
/// (far cheaper than an fsync per file of a large image); `sync` elsewhere.
fn sync_tree(dir: &Path) -> Result<(), StoreError> {
    #[cfg(target_os = "linux")]
    {
        let fd = confined::open_root(dir).map_err(io_err("opening", dir))?;
        nix::unistd::syncfs(&fd).map_err(|e| io_err("syncing the filesystem of", dir)(e.into()))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = dir;
        nix::unistd::sync();
        Ok(())
    }
}
