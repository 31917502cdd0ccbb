//! The content-addressed image store, shared by every krunbox process of a user.
//!
//! Layout under the store root (`<data dir>/store`, see [`default_store_dir`]):
//!
//! ```text
//! lock                         flock: shared by pulls/imports/unpacks, exclusive for rmi/prune
//! images.json                  refs index: image name → manifest, config and layer digests
//! images.lock                  flock around read-modify-write of images.json
//! blobs/sha256/<hex>           verified blobs (manifests, indexes, configs, layers), read-only
//! tmp/                         downloads in progress; renamed into blobs/ only once verified
//! rootfs/sha256/<config hex>/  the image's layers applied in order (the flattened rootfs)
//! rootfs/sha256/<hex>.lock     flock: exclusive while unpacking, shared while a sandbox uses it
//! ```
//!
//! The store root is mode 0700 and must be owned by the user running krunbox (checked, and
//! the mode restored, on every open): unpacked root filesystems keep the image's setuid and
//! setgid bits, which the guest needs (`su`, `ping`) and which would be a privilege
//! escalation on the host if another local user could reach the files. Nobody but the owner
//! can traverse the root, so nobody else can read, execute or hard-link anything below it.
//!
//! A blob exists under `blobs/` only if its content matched its digest, so an interrupted
//! pull leaves at most a file in `tmp/` (removed by prune) and never a half layer that counts
//! as present. `images.json` is replaced by rename, so readers never see it half written.
//! A rootfs directory appears by rename once fully unpacked; a sandbox holds a shared lock on
//! it ([`RootfsLease`]) so rmi/prune keep it while it is in use.

use std::collections::HashSet;
use std::fs::{self};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::confined;
use crate::digest::Digest;
use crate::limits::{BadLimit, UnpackLimits};
use crate::lock::{FileLock, LockError, LockKind};
use crate::platform::Platform;
use crate::reference::Reference;
use crate::unpack::UnpackError;

mod blobs;
mod rootfs;

pub use rootfs::RootfsLease;

pub use crate::limits::MAX_JSON_BLOB;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// File system error on a store path.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// Where.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The store root belongs to another user (who could then swap or read what is in it).
    #[error("image store {path} is owned by uid {owner}, not by this user (uid {me}); refusing to use it")]
    NotOwned {
        /// The store root.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// Our effective uid.
        me: u32,
    },
    /// A `KRUNBOX_UNPACK_MAX_*` override is malformed.
    #[error(transparent)]
    BadLimit(#[from] BadLimit),
    /// A lock could not be taken.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// images.json is not readable.
    #[error("image index {path} is corrupt: {source}")]
    CorruptIndex {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
    /// No image by that name.
    #[error("no such image: {0}")]
    ImageNotFound(String),
    /// A short ID matches several images.
    #[error("image ID {0} is ambiguous; give more digits or a name")]
    Ambiguous(String),
    /// Content did not match its digest.
    #[error("blob {expected} failed verification: content hashes to {actual}")]
    DigestMismatch {
        /// The digest it was supposed to have.
        expected: Digest,
        /// What it hashes to.
        actual: Digest,
    },
    /// A blob an image needs is not in the store.
    #[error("blob {0} is missing from the store")]
    BlobMissing(Digest),
    /// A manifest/config blob is too big to be JSON we accept.
    #[error("blob {digest} is {size} bytes, more than the {MAX_JSON_BLOB}-byte limit for manifests and configs")]
    JsonBlobTooLarge {
        /// The blob.
        digest: Digest,
        /// Its size.
        size: u64,
    },
    /// A config blob is not valid JSON of the expected shape.
    #[error("image config {digest}: {source}")]
    BadConfig {
        /// The blob.
        digest: Digest,
        /// The parse error.
        source: serde_json::Error,
    },
    /// Applying a layer failed.
    #[error("unpacking layer {layer}: {source}")]
    Unpack {
        /// The layer blob.
        layer: Digest,
        /// The unpack error, naming the tar entry.
        source: UnpackError,
    },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.to_owned();
    move |source| StoreError::Io {
        action,
        path,
        source,
    }
}

/// One image in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Full name: `registry/repository:tag` (or `@digest` when pulled by digest only).
    pub name: String,
    /// The platform manifest.
    pub manifest: Digest,
    /// The index it was chosen from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<Digest>,
    /// The config blob; its digest is the image ID.
    pub config: Digest,
    /// Layer blobs, bottom first.
    pub layers: Vec<Digest>,
    /// The image's platform.
    pub platform: Platform,
    /// Sum of the layer blob sizes.
    pub size: u64,
    /// When it was stored (seconds since the epoch).
    pub stored_at: u64,
}

impl ImageRecord {
    /// The image ID (config digest), as Docker defines it.
    pub fn id(&self) -> &Digest {
        &self.config
    }

    /// The name as `docker images` shows it (`alpine:latest`, not `docker.io/library/...`).
    pub fn display_name(&self) -> &str {
        self.name
            .strip_prefix("docker.io/library/")
            .or_else(|| self.name.strip_prefix("docker.io/"))
            .unwrap_or(&self.name)
    }

    fn blobs(&self) -> impl Iterator<Item = &Digest> {
        [&self.manifest, &self.config]
            .into_iter()
            .chain(self.index.iter())
            .chain(self.layers.iter())
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct ImagesFile {
    version: u32,
    images: Vec<ImageRecord>,
}

/// What garbage collection removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PruneReport {
    /// Blobs no image references.
    pub removed_blobs: Vec<Digest>,
    /// Unpacked root filesystems no image references.
    pub removed_rootfs: Vec<Digest>,
    /// Unreferenced root filesystems kept because a sandbox is using them.
    pub rootfs_in_use: Vec<Digest>,
    /// Bytes of blobs and temp files freed (unpacked trees not counted).
    pub freed_bytes: u64,
}

/// The data directory: `$KRUNBOX_DATA_DIR`, else `$XDG_DATA_HOME/krunbox`, else
/// `~/.local/share/krunbox` (the same rule as the `krunbox` binary).
pub fn default_data_dir() -> PathBuf {
    let env = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = env("KRUNBOX_DATA_DIR") {
        return dir;
    }
    if let Some(dir) = env("XDG_DATA_HOME") {
        return dir.join("krunbox");
    }
    match env("HOME") {
        Some(home) => home.join(".local/share/krunbox"),
        None => PathBuf::from(format!("/tmp/krunbox-{}/data", nix::unistd::geteuid())),
    }
}

/// The image store directory: `<data dir>/store`.
pub fn default_store_dir() -> PathBuf {
    default_data_dir().join("store")
}

/// A handle on a store directory. Cheap; every operation takes the locks it needs.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    limits: UnpackLimits,
}

impl Store {
    /// Opens (creating) the store at [`default_store_dir`].
    pub fn open_default() -> Result<Self, StoreError> {
        Self::open(&default_store_dir())
    }

    /// Opens (creating) a store at `root`, private to this user (see the module docs), with
    /// [`UnpackLimits::from_env`].
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
        if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(io_err("creating", parent))?;
        }
        match fs::DirBuilder::new().mode(0o700).create(root) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err("creating", root)(e)),
        }
        let meta = fs::metadata(root).map_err(io_err("inspecting", root))?;
        let me = nix::unistd::geteuid().as_raw();
        if meta.uid() != me {
            return Err(StoreError::NotOwned {
                path: root.to_owned(),
                owner: meta.uid(),
                me,
            });
        }
        for dir in ["blobs/sha256", "tmp", "rootfs/sha256"] {
            let path = root.join(dir);
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&path)
                .map_err(io_err("creating", &path))?;
        }
        for dir in [
            "",
            "blobs",
            "blobs/sha256",
            "tmp",
            "rootfs",
            "rootfs/sha256",
        ] {
            let path = root.join(dir);
            let mode = fs::metadata(&path)
                .map_err(io_err("inspecting", &path))?
                .mode()
                & 0o7777;
            if mode != 0o700 {
                tracing::info!(path = %path.display(), mode = format!("{mode:o}"), "making the image store private (0700)");
                fs::set_permissions(&path, fs::Permissions::from_mode(0o700))
                    .map_err(io_err("making private", &path))?;
            }
        }
        Ok(Self {
            root: root.to_owned(),
            limits: UnpackLimits::from_env()?,
        })
    }

    /// The same store with other unpack limits (tests, embedders).
    pub fn with_limits(mut self, limits: UnpackLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The limits unpacking images and archives into this store is held to.
    pub fn limits(&self) -> UnpackLimits {
        self.limits
    }

    /// The store directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path of a blob (which may not exist).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    /// Whether a verified blob is present.
    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Where downloads in progress live.
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// The lock pulls and imports hold shared for their whole run (prune takes it exclusive).
    pub fn lock_shared(&self) -> Result<FileLock, StoreError> {
        Ok(FileLock::acquire(
            &self.root.join("lock"),
            LockKind::Shared,
        )?)
    }

    fn lock_exclusive(&self) -> Result<FileLock, StoreError> {
        Ok(FileLock::acquire(
            &self.root.join("lock"),
            LockKind::Exclusive,
        )?)
    }

    // ---- the refs index -------------------------------------------------------------

    fn images_path(&self) -> PathBuf {
        self.root.join("images.json")
    }

    fn read_images(&self) -> Result<ImagesFile, StoreError> {
        let path = self.images_path();
        match fs::read(&path) {
            Ok(data) => serde_json::from_slice(&data)
                .map_err(|source| StoreError::CorruptIndex { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(ImagesFile {
                version: 1,
                images: Vec::new(),
            }),
            Err(e) => Err(io_err("reading", &path)(e)),
        }
    }

    fn write_images(&self, images: &ImagesFile) -> Result<(), StoreError> {
        let path = self.images_path();
        let mut file = tempfile::NamedTempFile::new_in(&self.root)
            .map_err(io_err("creating temp file in", &self.root))?;
        let json = serde_json::to_vec_pretty(images)
            .map_err(|e| io_err("serialising", &path)(e.into()))?;
        file.write_all(&json).map_err(io_err("writing", &path))?;
        file.as_file()
            .sync_all()
            .map_err(io_err("syncing", &path))?;
        file.persist(&path)
            .map_err(|e| io_err("replacing", &path)(e.error))?;
        Ok(())
    }

    fn update_images<T>(
        &self,
        change: impl FnOnce(&mut Vec<ImageRecord>) -> T,
    ) -> Result<T, StoreError> {
        let _guard = FileLock::acquire(&self.root.join("images.lock"), LockKind::Exclusive)?;
        let mut images = self.read_images()?;
        let result = change(&mut images.images);
        images.version = 1;
        self.write_images(&images)?;
        Ok(result)
    }

    /// Records an image under `record.name`, replacing what that name pointed to. Every blob
    /// it names must already be in the store.
    pub fn add_image(&self, record: ImageRecord) -> Result<(), StoreError> {
        if let Some(missing) = record.blobs().find(|d| !self.has_blob(d)) {
            return Err(StoreError::BlobMissing(missing.clone()));
        }
        tracing::info!(name = %record.name, id = %record.config.short(), "image stored");
        self.update_images(|images| {
            images.retain(|i| i.name != record.name);
            images.push(record);
        })
    }

    /// All images, sorted by name.
    pub fn list_images(&self) -> Result<Vec<ImageRecord>, StoreError> {
        let mut images = self.read_images()?.images;
        images.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(images)
    }

    /// Finds an image by name (as given or normalised like `docker pull` does) or by an ID
    /// prefix (`sha256:` optional, at least 4 hex digits).
    pub fn find_image(&self, query: &str) -> Result<ImageRecord, StoreError> {
        let images = self.read_images()?.images;
        if let Some(found) = images.iter().find(|i| i.name == query) {
            return Ok(found.clone());
        }
        if let Ok(reference) = Reference::parse(query) {
            let normalized = reference.to_string();
            if let Some(found) = images.iter().find(|i| i.name == normalized) {
                return Ok(found.clone());
            }
        }
        let hex = query.strip_prefix("sha256:").unwrap_or(query);
        if hex.len() >= 4 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let matches: Vec<&ImageRecord> = images
                .iter()
                .filter(|i| i.config.hex().starts_with(hex))
                .collect();
            let distinct: HashSet<&Digest> = matches.iter().map(|i| &i.config).collect();
            match distinct.len() {
                0 => {}
                1 => return Ok(matches[0].clone()),
                _ => return Err(StoreError::Ambiguous(query.to_owned())),
            }
        }
        Err(StoreError::ImageNotFound(query.to_owned()))
    }

    /// `rmi`: removes the name, then everything no remaining image references (blobs and
    /// unpacked root filesystems not in use).
    pub fn remove_image(&self, query: &str) -> Result<(ImageRecord, PruneReport), StoreError> {
        let _store = self.lock_exclusive()?;
        let record = self.find_image(query)?;
        self.update_images(|images| images.retain(|i| i.name != record.name))?;
        tracing::info!(name = %record.name, "image removed");
        let report = self.collect_garbage()?;
        Ok((record, report))
    }

    /// `prune`: removes blobs and unpacked root filesystems that no image references, and
    /// leftovers of interrupted pulls and unpacks.
    pub fn prune(&self) -> Result<PruneReport, StoreError> {
        let _store = self.lock_exclusive()?;
        self.collect_garbage()
    }

    /// Needs the exclusive store lock: no pull or import is between writing a blob and
    /// recording the image that references it.
    fn collect_garbage(&self) -> Result<PruneReport, StoreError> {
        let images = self.read_images()?.images;
        let live_blobs: HashSet<String> = images
            .iter()
            .flat_map(|i| i.blobs())
            .map(|d| d.hex().to_owned())
            .collect();
        let live_rootfs: HashSet<String> =
            images.iter().map(|i| i.config.hex().to_owned()).collect();
        let mut report = PruneReport::default();

        let blobs = self.root.join("blobs/sha256");
        for entry in fs::read_dir(&blobs).map_err(io_err("listing", &blobs))? {
            let entry = entry.map_err(io_err("listing", &blobs))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if live_blobs.contains(&name) {
                continue;
            }
            let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
            let path = entry.path();
            fs::remove_file(&path).map_err(io_err("removing", &path))?;
            report.freed_bytes += size;
            if let Ok(digest) = Digest::parse(&format!("sha256:{name}")) {
                report.removed_blobs.push(digest);
            }
        }

        let tmp = self.tmp_dir();
        for entry in fs::read_dir(&tmp).map_err(io_err("listing", &tmp))? {
            let entry = entry.map_err(io_err("listing", &tmp))?;
            report.freed_bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
            let path = entry.path();
            confined::remove_dir_all(&path).map_err(io_err("removing", &path))?;
        }

        let rootfs = self.root.join("rootfs/sha256");
        for entry in fs::read_dir(&rootfs).map_err(io_err("listing", &rootfs))? {
            let entry = entry.map_err(io_err("listing", &rootfs))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let (hex, is_dir) = match name.split_once('.') {
                // `<hex>.lock` files go with their directory; `<hex>.partial` is a crashed unpack.
                Some((hex, "lock")) => {
                    if !rootfs.join(hex).exists() && !live_rootfs.contains(hex) {
                        if let Some(_lock) = FileLock::try_acquire(&path, LockKind::Exclusive)? {
                            fs::remove_file(&path).map_err(io_err("removing", &path))?;
                        }
                    }
                    continue;
                }
                Some((hex, _)) => (hex.to_owned(), false),
                None => (name.clone(), true),
            };
            if is_dir && live_rootfs.contains(&hex) {
                continue;
            }
            let lock_path = rootfs.join(format!("{hex}.lock"));
            match FileLock::try_acquire(&lock_path, LockKind::Exclusive)? {
                Some(_lock) => {
                    confined::remove_dir_all(&path).map_err(io_err("removing", &path))?;
                    if is_dir {
                        if let Ok(digest) = Digest::parse(&format!("sha256:{hex}")) {
                            report.removed_rootfs.push(digest);
                        }
                    }
                }
                None => {
                    if let Ok(digest) = Digest::parse(&format!("sha256:{hex}")) {
                        report.rootfs_in_use.push(digest);
                    }
                }
            }
        }
        tracing::info!(
            blobs = report.removed_blobs.len(),
            rootfs = report.removed_rootfs.len(),
            freed = report.freed_bytes,
            "garbage collected"
        );
        Ok(report)
    }
}
