//! What a guest boots: the IMAGE argument turned into a root filesystem plus run defaults.
//!
//! [`prepare`] is the one entry point (used by `krunbox run`, and meant for named sandboxes):
//!
//! - no IMAGE: the built-in default image `krunbox/default:latest`, imported into the store
//!   from the OCI layout `cargo xtask build-rootfs` writes (`target/rootfs/default`), or, when
//!   there is none, generated from the host's busybox-static into `$DATA/default-image` first;
//! - a registry reference, OCI layout (directory or archive) or `docker save` tarball: through
//!   the image store (`$DATA/store`, see `krunbox_image::store`), pulled or imported as the
//!   pull policy says, unpacked once and shared read-only by every sandbox of that image;
//! - a plain root filesystem directory: used as it is.
//!
//! Store images are booted with an overlay root (`overlay`: guest-init mounts the share
//! read-only under a tmpfs-backed overlayfs), so no sandbox ever writes into the store and a
//! second sandbox of the same image copies nothing. A rootfs directory is the user's own and
//! is shared writable, as before.

use std::path::{Path, PathBuf};

use krunbox_image::builtin::{self, BUILTIN_IMAGE_NAME, BUILTIN_TAG};
use krunbox_image::config::ImageConfig;
use krunbox_image::layout::{self, ImportOptions};
use krunbox_image::platform::Platform;
use krunbox_image::pull::PullOptions;
use krunbox_image::source::{self, PullPolicy, Source};
use krunbox_image::store::{RootfsLease, Store, StoreError};

use crate::io_error::io;
use crate::private_dir::PrivateDirError;

/// Environment variable naming the OCI layout of the default image.
pub const DEFAULT_IMAGE_ENV: &str = "KRUNBOX_DEFAULT_IMAGE";

/// How to get an image.
#[derive(Debug, Clone, Default)]
pub struct ImageOptions {
    /// When to contact the registry.
    pub pull: PullPolicy,
    /// The platform to pick from multi-platform images (default: linux/host architecture).
    pub platform: Option<Platform>,
    /// Show download progress on a terminal.
    pub progress: bool,
}

/// A root filesystem ready to boot.
#[derive(Debug)]
pub struct PreparedRoot {
    /// The directory to share as the guest's root.
    pub rootfs: PathBuf,
    /// Share it read-only and give the guest a writable overlay on top (store images).
    pub overlay: bool,
    /// Run defaults (Entrypoint, Cmd, Env, WorkingDir, User); empty for a rootfs directory.
    pub config: ImageConfig,
    /// What it is, for messages (`docker.io/library/alpine:latest`, a directory path).
    pub name: String,
    /// Keeps rmi/prune from removing the unpacked image while this value lives: hold it
    /// until the VM is gone.
    _lease: Option<RootfsLease>,
}

/// Why there is no root filesystem.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// IMAGE names nothing usable.
    #[error(transparent)]
    Source(#[from] krunbox_image::source::SourceError),
    /// Pulling, importing or unpacking failed.
    #[error(transparent)]
    Prepare(#[from] krunbox_image::source::PrepareError),
    /// The store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Importing the default image's layout.
    #[error("importing the default image: {0}")]
    DefaultLayout(#[from] krunbox_image::layout::LayoutError),
    /// Building the default image.
    #[error("building the default image: {0}")]
    Builtin(#[from] krunbox_image::builtin::BuiltinError),
    /// A lock.
    #[error(transparent)]
    Lock(#[from] crate::lock::LockError),
    /// The data directory is not ours.
    #[error(transparent)]
    DataDir(#[from] PrivateDirError),
    /// Local I/O.
    #[error(transparent)]
    Io(#[from] crate::io_error::IoError),
}

/// The image store of this user: `$DATA/store`.
pub fn store_dir() -> Result<PathBuf, PrivateDirError> {
    Ok(crate::paths::data_dir()?.join("store"))
}

/// Opens (creating) the image store; the error is the caller's, which must say both why the
/// data directory is unusable and why the store is.
pub fn open_store<E: From<StoreError> + From<PrivateDirError>>() -> Result<Store, E> {
    Ok(Store::open(&store_dir()?)?)
}

/// Pull options from image options.
pub fn pull_options(options: &ImageOptions) -> PullOptions {
    PullOptions {
        platform: options.platform.clone(),
        progress: options.progress,
        ..PullOptions::default()
    }
}

/// Turns IMAGE (`None`: the default image) into a bootable root filesystem.
pub fn prepare(image: Option<&str>, options: &ImageOptions) -> Result<PreparedRoot, ImageError> {
    let source = image.map(Source::parse).transpose()?;
    if let Some(Source::RootfsDir(dir)) = &source {
        let rootfs = std::fs::canonicalize(dir).map_err(io("resolving", dir))?;
        if !rootfs.is_dir() {
            return Err(krunbox_image::source::PrepareError::NotADirectory(rootfs).into());
        }
        return Ok(PreparedRoot {
            name: rootfs.display().to_string(),
            rootfs,
            overlay: false,
            config: ImageConfig::default(),
            _lease: None,
        });
    }
    let store = open_store::<ImageError>()?;
    let Some(source) = source else {
        let record = default_image(&store)?;
        let lease = store.lease_rootfs(&record)?;
        return Ok(PreparedRoot {
            rootfs: lease.path().to_owned(),
            overlay: true,
            config: store.image_config(&record)?,
            name: record.name,
            _lease: Some(lease),
        });
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io("starting the async runtime for", store.root()))?;
    let prepared = runtime.block_on(source::prepare_image(
        &store,
        &source,
        options.pull,
        &pull_options(options),
    ))?;
    Ok(PreparedRoot {
        name: prepared
            .record
            .as_ref()
            .map(|r| r.name.clone())
            .unwrap_or_else(|| prepared.rootfs.display().to_string()),
        rootfs: prepared.rootfs,
        overlay: prepared.record.is_some(),
        config: prepared.config,
        _lease: prepared.lease,
    })
}

/// The root filesystem `create` resolved, again, for `start`: a store image by the unpacked
/// tree `create` recorded (never the image name again: a tag may have moved, and a relative
/// path would be resolved against wherever `start` runs), or the directory itself.
pub fn reopen(rootfs: &Path, overlay: bool) -> Result<PreparedRoot, ImageError> {
    if !overlay {
        return Ok(PreparedRoot {
            name: rootfs.display().to_string(),
            rootfs: rootfs.to_owned(),
            overlay: false,
            config: ImageConfig::default(),
            _lease: None,
        });
    }
    let store = open_store::<ImageError>()?;
    let record = store
        .list_images()?
        .into_iter()
        .find(|record| store.rootfs_path(record) == rootfs)
        .ok_or_else(|| {
            StoreError::ImageNotFound(format!("the image unpacked at {}", rootfs.display()))
        })?;
    let lease = store.lease_rootfs(&record)?;
    Ok(PreparedRoot {
        rootfs: lease.path().to_owned(),
        overlay: true,
        config: store.image_config(&record)?,
        name: record.name,
        _lease: Some(lease),
    })
}

/// Where the default image's OCI layout may be, in order: `$KRUNBOX_DEFAULT_IMAGE`,
/// `default-image/` next to the krunbox executable, `target/rootfs/default` of the workspace
/// krunbox was built in (`cargo xtask build-rootfs`).
pub fn default_layout_candidates() -> Vec<PathBuf> {
    if let Some(path) = std::env::var_os(DEFAULT_IMAGE_ENV).filter(|v| !v.is_empty()) {
        return vec![PathBuf::from(path)];
    }
    let mut out = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .as_deref()
        .and_then(Path::parent)
    {
        out.push(dir.join("default-image"));
        if let Some(target) = dir.parent() {
            out.push(target.join("rootfs/default"));
        }
    }
    out
}

/// The default image in the store, imported (again, when the layout changed) or built first.
fn default_image(store: &Store) -> Result<krunbox_image::store::ImageRecord, ImageError> {
    let present = match store.find_image(BUILTIN_IMAGE_NAME) {
        Ok(record) => Some(record),
        Err(StoreError::ImageNotFound(_)) => None,
        Err(e) => return Err(e.into()),
    };
    let import = |layout: &Path| {
        tracing::debug!(layout = %layout.display(), "importing the default image");
        layout::import_layout(
            store,
            layout,
            &ImportOptions {
                tag: Some(BUILTIN_TAG.into()),
                name: Some(BUILTIN_IMAGE_NAME.into()),
                platform: None,
            },
        )
    };
    if let Some(layout) = default_layout_candidates()
        .into_iter()
        .find(|p| p.join("oci-layout").is_file())
    {
        let tagged = tagged_manifest(&layout);
        return match present {
            Some(record) if tagged.as_deref() == Some(record.manifest.to_string().as_str()) => {
                Ok(record)
            }
            _ => Ok(import(&layout)?),
        };
    }
    if let Some(record) = present {
        return Ok(record);
    }
    // No layout anywhere: build one from the host's busybox, as build-rootfs would.
    let data = crate::paths::data_dir()?;
    crate::private_dir::create_all(&data).map_err(io("creating", &data))?;
    let _lock = crate::lock::exclusive(&data.join("default-image.lock"))?;
    let layout = data.join("default-image");
    if !layout.join("oci-layout").is_file() {
        eprintln!("krunbox: building the default image from busybox-static; this happens once");
        let staged = tempfile::Builder::new()
            .prefix(".default-image-")
            .tempdir_in(&data)
            .map_err(io("creating a directory in", &data))?;
        builtin::build_builtin_image(staged.path())?;
        std::fs::rename(staged.path(), &layout).map_err(io("moving into place", &layout))?;
        let _ = staged.keep();
    }
    Ok(import(&layout)?)
}

/// The manifest digest tagged [`BUILTIN_TAG`] in a layout's index.json, if readable.
fn tagged_manifest(layout: &Path) -> Option<String> {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).ok()?).ok()?;
    index["manifests"].as_array()?.iter().find_map(|m| {
        (m["annotations"]["org.opencontainers.image.ref.name"].as_str() == Some(BUILTIN_TAG))
            .then(|| m["digest"].as_str().map(str::to_owned))
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_path_is_a_clear_error() {
        let err = prepare(Some("/nonexistent/rootfs"), &ImageOptions::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/nonexistent/rootfs: no such file or directory"
        );
    }

    #[test]
    fn the_tagged_manifest_is_read_from_a_layout() {
        let dir = tempfile::tempdir().unwrap();
        let Ok(image) = builtin::build_builtin_image(&dir.path().join("layout")) else {
            eprintln!("SKIPPED: busybox-static is not installed");
            return;
        };
        assert_eq!(
            tagged_manifest(&image.layout).as_deref(),
            Some(image.manifest.digest.to_string().as_str())
        );
        assert_eq!(tagged_manifest(dir.path()), None);
    }
}
