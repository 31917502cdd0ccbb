//! OCI image layouts (directory or tar archive) and `docker save` tarballs: writing a layout,
//! and importing any of them into the [`Store`].
//!
//! Archives are first extracted with the same safe unpacker as image layers (into the
//! store's `tmp/`), and every file inside a layout is opened beneath the layout's directory
//! without following symlinks, so a crafted archive cannot make krunbox read host files.
//! Every blob is verified against its digest while it is copied into the store.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::sys::stat::Mode;

use crate::config::ImageConfigFile;
use crate::confined;
use crate::digest::Digest;
use crate::limits::MAX_JSON_BLOB;
use crate::manifest::{
    Descriptor, Index, ManifestDocument, ManifestError, OCI_INDEX, REF_NAME_ANNOTATION,
};
use crate::platform::Platform;
use crate::reference::Reference;
use crate::store::{ImageRecord, Store, StoreError};
use crate::unpack::{self, UnpackError};

mod docker;
mod writer;

pub use docker::import_docker_archive;
pub use writer::LayoutWriter;

/// Why an import failed.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// Reading a file of the layout/archive.
    #[error("{path}: {action}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// Not a layout/archive krunbox understands.
    #[error("{path}: {reason}")]
    Invalid {
        /// The layout or archive.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// JSON of the wrong shape.
    #[error("{path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
    /// A manifest problem (unsupported type, no matching platform).
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// Extracting an archive failed (names the tar entry).
    #[error("extracting {path}: {source}")]
    Extract {
        /// The archive.
        path: PathBuf,
        /// The unpack error.
        source: UnpackError,
    },
    /// Storing failed (including digest mismatches).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A layout directory or archive opened for reading.
struct LayoutDir {
    path: PathBuf,
    root: OwnedFd,
}

impl LayoutDir {
    fn open(path: &Path) -> Result<Self, LayoutError> {
        let root = confined::open_root(path).map_err(|source| LayoutError::Io {
            path: path.to_owned(),
            action: "opening directory",
            source,
        })?;
        Ok(Self {
            path: path.to_owned(),
            root,
        })
    }

    /// Opens `relative` beneath the layout. Directories on the way must be real; a symlink
    /// at the leaf (legacy `docker save` links duplicate layers as `../<id>/layer.tar`) is
    /// resolved lexically inside the layout, never by the kernel.
    fn open_file(&self, relative: &str) -> Result<File, LayoutError> {
        let mut current = PathBuf::from(relative);
        for _ in 0..8 {
            match self.open_file_once(&current)? {
                Opened::File(file) => return Ok(file),
                Opened::Symlink(target) => {
                    let parent = current.parent().map(Path::to_owned).unwrap_or_default();
                    current =
                        resolve_inside(&parent, &target).ok_or_else(|| LayoutError::Invalid {
                            path: self.path.join(relative),
                            reason: format!("symlink to {} leaves the archive", target.display()),
                        })?;
                }
            }
        }
        Err(LayoutError::Invalid {
            path: self.path.join(relative),
            reason: "too many levels of symlinks".into(),
        })
    }

    fn open_file_once(&self, relative: &Path) -> Result<Opened, LayoutError> {
        let full = self.path.join(relative);
        let invalid = |reason: &str| LayoutError::Invalid {
            path: full.clone(),
            reason: reason.to_owned(),
        };
        let components =
            confined::normalize(relative).map_err(|_| invalid("path contains a '..' component"))?;
        let Some((leaf, parent)) = components.split_last() else {
            return Err(invalid("empty path"));
        };
        let dir = confined::walk(&self.root, parent, false, Mode::empty())
            .map_err(|_| invalid("missing, or reached through a symlink"))?;
        // A FIFO (say `index.json` in a crafted archive) is refused, never read: reading it
        // would block while the store's lock is held.
        match confined::open_regular_at(&dir, leaf) {
            Ok(file) => Ok(Opened::File(file)),
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                let target = nix::fcntl::readlinkat(&dir, leaf.as_os_str()).map_err(|errno| {
                    LayoutError::Io {
                        path: full.clone(),
                        action: "reading symlink",
                        source: errno.into(),
                    }
                })?;
                Ok(Opened::Symlink(PathBuf::from(target)))
            }
            Err(source) => Err(LayoutError::Io {
                path: full.clone(),
                action: "opening",
                source,
            }),
        }
    }

    fn read_small(&self, relative: &str) -> Result<Vec<u8>, LayoutError> {
        let mut data = Vec::new();
        let path = self.path.join(relative);
        self.open_file(relative)?
            .take(MAX_JSON_BLOB + 1)
            .read_to_end(&mut data)
            .map_err(|source| LayoutError::Io {
                path: path.clone(),
                action: "reading",
                source,
            })?;
        if data.len() as u64 > MAX_JSON_BLOB {
            return Err(LayoutError::Invalid {
                path,
                reason: format!("JSON file larger than the {MAX_JSON_BLOB}-byte limit"),
            });
        }
        Ok(data)
    }

    fn has(&self, relative: &str) -> bool {
        self.open_file(relative).is_ok()
    }

    fn blob_relative(digest: &Digest) -> String {
        format!("blobs/sha256/{}", digest.hex())
    }

    /// Copies a blob into the store, verifying its digest; returns its size.
    fn import_blob(&self, store: &Store, digest: &Digest) -> Result<u64, LayoutError> {
        if store.has_blob(digest) {
            return Ok(fs::metadata(store.blob_path(digest))
                .map(|m| m.len())
                .unwrap_or(0));
        }
        let mut file = self.open_file(&Self::blob_relative(digest))?;
        Ok(store.put_blob_reader(&mut file, digest)?)
    }

    fn json_blob(&self, store: &Store, digest: &Digest) -> Result<Vec<u8>, LayoutError> {
        self.import_blob(store, digest)?;
        Ok(store.read_json_blob(digest)?)
    }
}

enum Opened {
    File(File),
    Symlink(PathBuf),
}

/// `parent/target` resolved lexically; `None` when it climbs out or is absolute.
fn resolve_inside(parent: &Path, target: &Path) -> Option<PathBuf> {
    if target.is_absolute() {
        return None;
    }
    let mut parts: Vec<std::ffi::OsString> = confined::normalize(parent).ok()?;
    for component in target.components() {
        match component {
            std::path::Component::ParentDir => {
                parts.pop()?;
            }
            std::path::Component::Normal(name) => parts.push(name.to_owned()),
            _ => {}
        }
    }
    Some(parts.iter().collect())
}

/// Which image of a layout to import.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// The `org.opencontainers.image.ref.name` to pick (needed when the layout holds several).
    pub tag: Option<String>,
    /// Platform to pick from a multi-platform index (default: linux/host arch).
    pub platform: Option<Platform>,
    /// Name to record the image under (default: derived from the source).
    pub name: Option<String>,
}

/// Imports an image from an OCI image layout directory.
pub fn import_layout(
    store: &Store,
    dir: &Path,
    options: &ImportOptions,
) -> Result<ImageRecord, LayoutError> {
    let _lock = store.lock_shared()?;
    let layout = LayoutDir::open(dir)?;
    import_opened_layout(store, &layout, options, || {
        default_name("oci", dir, options)
    })
}

fn import_opened_layout(
    store: &Store,
    layout: &LayoutDir,
    options: &ImportOptions,
    default_name: impl FnOnce() -> String,
) -> Result<ImageRecord, LayoutError> {
    if !layout.has("oci-layout") {
        return Err(LayoutError::Invalid {
            path: layout.path.clone(),
            reason: "not an OCI image layout (no oci-layout file)".into(),
        });
    }
    let index_path = layout.path.join("index.json");
    let index: Index =
        serde_json::from_slice(&layout.read_small("index.json")?).map_err(|source| {
            LayoutError::Json {
                path: index_path.clone(),
                source,
            }
        })?;
    let entry = pick_entry(&index, options.tag.as_deref(), &index_path)?;
    let platform = options
        .platform
        .clone()
        .unwrap_or_else(Platform::host_default);

    let mut chosen_index = None;
    let mut manifest_descriptor = entry.clone();
    if entry.media_type == OCI_INDEX || entry.media_type == crate::manifest::DOCKER_MANIFEST_LIST {
        let bytes = layout.json_blob(store, &entry.digest)?;
        let ManifestDocument::Index(nested) =
            ManifestDocument::parse(&bytes, Some(&entry.media_type), &entry.digest)?
        else {
            return Err(LayoutError::Invalid {
                path: index_path,
                reason: format!("{} is not an index", entry.digest),
            });
        };
        manifest_descriptor = nested.select(&platform, &entry.digest)?.clone();
        chosen_index = Some(entry.digest.clone());
    }
    let bytes = layout.json_blob(store, &manifest_descriptor.digest)?;
    let ManifestDocument::Image(manifest) = ManifestDocument::parse(
        &bytes,
        Some(&manifest_descriptor.media_type),
        &manifest_descriptor.digest,
    )?
    else {
        return Err(LayoutError::Invalid {
            path: index_path,
            reason: format!("{} is an index inside an index", manifest_descriptor.digest),
        });
    };
    let config_bytes = layout.json_blob(store, &manifest.config.digest)?;
    let config: ImageConfigFile =
        serde_json::from_slice(&config_bytes).map_err(|source| LayoutError::Json {
            path: layout
                .path
                .join(LayoutDir::blob_relative(&manifest.config.digest)),
            source,
        })?;
    let mut size = 0;
    for layer in &manifest.layers {
        size += layout.import_blob(store, &layer.digest)?;
    }
    let name = options
        .name
        .clone()
        .map(normalize_name)
        .unwrap_or_else(default_name);
    let record = ImageRecord {
        name,
        manifest: manifest_descriptor.digest.clone(),
        index: chosen_index,
        config: manifest.config.digest.clone(),
        layers: manifest.layers.iter().map(|l| l.digest.clone()).collect(),
        platform: platform_of(&config),
        size,
        stored_at: now(),
    };
    store.add_image(record.clone())?;
    Ok(record)
}

fn pick_entry<'a>(
    index: &'a Index,
    tag: Option<&str>,
    path: &Path,
) -> Result<&'a Descriptor, LayoutError> {
    let tags = || {
        index
            .manifests
            .iter()
            .filter_map(|m| m.annotations.get(REF_NAME_ANNOTATION).cloned())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match tag {
        Some(tag) => index
            .manifests
            .iter()
            .find(|m| {
                m.annotations
                    .get(REF_NAME_ANNOTATION)
                    .is_some_and(|t| t == tag)
            })
            .ok_or_else(|| LayoutError::Invalid {
                path: path.to_owned(),
                reason: format!("no image tagged {tag:?} (tags: {})", tags()),
            }),
        None => match index.manifests.as_slice() {
            [only] => Ok(only),
            [] => Err(LayoutError::Invalid {
                path: path.to_owned(),
                reason: "the layout holds no image".into(),
            }),
            _ => index
                .manifests
                .iter()
                .find(|m| {
                    m.annotations
                        .get(REF_NAME_ANNOTATION)
                        .is_some_and(|t| t == "latest")
                })
                .ok_or_else(|| LayoutError::Invalid {
                    path: path.to_owned(),
                    reason: format!(
                        "the layout holds several images; pick one by tag ({})",
                        tags()
                    ),
                }),
        },
    }
}

/// Names given by users are normalised like references when they parse as one.
fn normalize_name(name: String) -> String {
    Reference::parse(&name)
        .map(|r| r.to_string())
        .unwrap_or(name)
}

fn platform_of(config: &ImageConfigFile) -> Platform {
    if config.os.is_empty() || config.architecture.is_empty() {
        return Platform::host_default();
    }
    Platform {
        os: config.os.clone(),
        architecture: config.architecture.clone(),
        variant: config.variant.clone(),
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Extracts an archive (tar, optionally compressed) into a fresh directory in the store's
/// tmp/, with the safe unpacker.
fn extract_archive(store: &Store, archive: &Path) -> Result<tempfile::TempDir, LayoutError> {
    let dir = tempfile::Builder::new()
        .prefix("import-")
        .tempdir_in(store.tmp_dir())
        .map_err(|source| LayoutError::Io {
            path: store.tmp_dir(),
            action: "creating extraction directory",
            source,
        })?;
    let limits = store.limits();
    unpack::unpack_layer_file(archive, dir.path(), &limits, &Default::default()).map_err(
        |source| LayoutError::Extract {
            path: archive.to_owned(),
            source,
        },
    )?;
    Ok(dir)
}

/// The name an image imported from `path` is recorded under when the user gives none:
/// `SCHEME:ABSOLUTE-PATH:TAG` (the tag `latest` unless `--tag` says otherwise).
fn default_name(scheme: &str, path: &Path, options: &ImportOptions) -> String {
    let absolute = fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    format!(
        "{scheme}:{}:{}",
        absolute.display(),
        options.tag.as_deref().unwrap_or("latest")
    )
}

/// Imports from an OCI archive (a tar of an OCI image layout, as `skopeo copy oci-archive:`
/// or `docker save` ≥ 25 write).
pub fn import_oci_archive(
    store: &Store,
    archive: &Path,
    options: &ImportOptions,
) -> Result<ImageRecord, LayoutError> {
    let _lock = store.lock_shared()?;
    let extracted = extract_archive(store, archive)?;
    let layout = LayoutDir::open(extracted.path())?;
    import_opened_layout(store, &layout, options, || {
        default_name("oci-archive", archive, options)
    })
}
