//! What the IMAGE argument of `krunbox run`/`krunbox pull` names, and getting it ready.
//!
//! [`Source::parse`] decides, in this order:
//! 1. an explicit transport prefix, as skopeo spells them: `docker://REF`, `oci:DIR[:TAG]`,
//!    `oci-archive:FILE[:TAG]`, `docker-archive:FILE`, `dir:ROOTFS`;
//! 2. an existing path (or one that looks like a path: starting with `/`, `./`, `../`, `~/`):
//!    a directory with an `oci-layout` file is an OCI layout, any other directory a root
//!    filesystem; a file is an OCI archive when it contains `oci-layout`, a `docker save`
//!    tarball when it contains `manifest.json`;
//! 3. otherwise a registry reference (`alpine`, `127.0.0.1:5000/app:v1`, `app@sha256:…`).
//!
//! [`prepare_image`] turns any source into a root filesystem directory plus run defaults.

use std::io;
use std::path::{Path, PathBuf};

use crate::config::ImageConfig;
use crate::layout::{self, ImportOptions, LayoutError};
use crate::pull::{self, PullError, PullOptions};
use crate::reference::{Reference, ReferenceError};
use crate::store::{ImageRecord, RootfsLease, Store, StoreError};
use crate::unpack;

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A registry image.
    Registry(Reference),
    /// An OCI image layout directory.
    OciLayout {
        /// The directory.
        dir: PathBuf,
        /// The `org.opencontainers.image.ref.name` to pick.
        tag: Option<String>,
    },
    /// A tar (optionally compressed) of an OCI image layout.
    OciArchive {
        /// The archive.
        path: PathBuf,
        /// The tag to pick.
        tag: Option<String>,
    },
    /// A `docker save` tarball.
    DockerArchive {
        /// The archive.
        path: PathBuf,
    },
    /// A plain root filesystem directory, used as is.
    RootfsDir(PathBuf),
}

/// Why IMAGE names nothing usable.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Not a valid reference.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// A path that does not exist.
    #[error("{0}: no such file or directory")]
    NotFound(PathBuf),
    /// A file that is neither an OCI archive nor a docker save tarball.
    #[error("{0}: not an image archive (no oci-layout or manifest.json inside)")]
    UnknownArchive(PathBuf),
    /// Reading the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

impl Source {
    /// Decides what `input` names (see the module documentation).
    pub fn parse(input: &str) -> Result<Self, SourceError> {
        if let Some(reference) = input.strip_prefix("docker://") {
            return Ok(Self::Registry(Reference::parse(reference)?));
        }
        if let Some(rest) = input.strip_prefix("oci:") {
            let (dir, tag) = split_tag(rest);
            return Ok(Self::OciLayout { dir, tag });
        }
        if let Some(rest) = input.strip_prefix("oci-archive:") {
            let (path, tag) = split_tag(rest);
            return Ok(Self::OciArchive { path, tag });
        }
        if let Some(path) = input.strip_prefix("docker-archive:") {
            return Ok(Self::DockerArchive {
                path: expand_home(path),
            });
        }
        if let Some(path) = input.strip_prefix("dir:") {
            return Ok(Self::RootfsDir(expand_home(path)));
        }
        let path = expand_home(input);
        let looks_like_path = ["/", "./", "../", "~/"]
            .iter()
            .any(|p| input.starts_with(p))
            || input == "."
            || input == "..";
        if path.exists() {
            return Self::from_path(path);
        }
        if looks_like_path {
            return Err(SourceError::NotFound(path));
        }
        Ok(Self::Registry(Reference::parse(input)?))
    }

    fn from_path(path: PathBuf) -> Result<Self, SourceError> {
        if path.is_dir() {
            if path.join("oci-layout").is_file() {
                return Ok(Self::OciLayout {
                    dir: path,
                    tag: None,
                });
            }
            return Ok(Self::RootfsDir(path));
        }
        match sniff_archive(&path)? {
            ArchiveKind::Oci => Ok(Self::OciArchive { path, tag: None }),
            ArchiveKind::Docker => Ok(Self::DockerArchive { path }),
            ArchiveKind::Unknown => Err(SourceError::UnknownArchive(path)),
        }
    }
}

/// `PATH:TAG` → (PATH, TAG) unless the whole string is an existing path.
fn split_tag(s: &str) -> (PathBuf, Option<String>) {
    if Path::new(s).exists() {
        return (expand_home(s), None);
    }
    match s.rsplit_once(':') {
        Some((path, tag)) if !tag.is_empty() && !tag.contains('/') => {
            (expand_home(path), Some(tag.to_owned()))
        }
        _ => (expand_home(s), None),
    }
}

fn expand_home(s: &str) -> PathBuf {
    match (s.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(s),
    }
}

enum ArchiveKind {
    Oci,
    Docker,
    Unknown,
}

fn sniff_archive(path: &Path) -> Result<ArchiveKind, SourceError> {
    let io_err = |source| SourceError::Io {
        path: path.to_owned(),
        source,
    };
    // Checked to be a regular file before reading: a FIFO would block the import.
    let file = crate::confined::open_regular(path).map_err(io_err)?;
    let mut archive = tar::Archive::new(unpack::decompress(file).map_err(io_err)?);
    let mut docker = false;
    let Ok(entries) = archive.entries() else {
        return Ok(ArchiveKind::Unknown);
    };
    for entry in entries {
        let Ok(entry) = entry else {
            return Ok(ArchiveKind::Unknown);
        };
        let Ok(name) = entry.path() else { continue };
        let name = name.strip_prefix("./").unwrap_or(&name).to_owned();
        if name == Path::new("oci-layout") {
            return Ok(ArchiveKind::Oci);
        }
        docker |= name == Path::new("manifest.json");
    }
    Ok(if docker {
        ArchiveKind::Docker
    } else {
        ArchiveKind::Unknown
    })
}

/// When to contact the registry for a registry source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PullPolicy {
    /// Pull only if the store has no image by that name (Docker's default).
    #[default]
    Missing,
    /// Always pull (cheap when nothing changed: blobs already present are not downloaded).
    Always,
    /// Never pull; fail if absent.
    Never,
}

/// An image ready to boot: its root filesystem and run defaults.
#[derive(Debug)]
pub struct PreparedImage {
    /// The store record (`None` for a plain rootfs directory).
    pub record: Option<ImageRecord>,
    /// Run defaults from the image config (empty for a plain rootfs directory).
    pub config: ImageConfig,
    /// The root filesystem directory, shared read-only by every sandbox of this image.
    pub rootfs: PathBuf,
    /// Keeps the rootfs from being pruned while the sandbox runs; hold it until the VM exits.
    pub lease: Option<RootfsLease>,
}

/// Why an image could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// Pull failed.
    #[error(transparent)]
    Pull(#[from] PullError),
    /// Import failed.
    #[error(transparent)]
    Import(#[from] LayoutError),
    /// Store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// `PullPolicy::Never` and not present.
    #[error("image {0} is not in the store and pulling is disabled")]
    NotPresent(String),
    /// A rootfs directory that is not a directory.
    #[error("{0}: not a directory")]
    NotADirectory(PathBuf),
    /// A blocking task died.
    #[error("internal task failed: {0}")]
    Task(String),
}

/// Gets `source` into the store if needed (pull or import), unpacks it once, and returns
/// its rootfs under a lease. This is what `krunbox run IMAGE` calls.
pub async fn prepare_image(
    store: &Store,
    source: &Source,
    policy: PullPolicy,
    options: &PullOptions,
) -> Result<PreparedImage, PrepareError> {
    let record = match source {
        Source::RootfsDir(dir) => {
            if !dir.is_dir() {
                return Err(PrepareError::NotADirectory(dir.clone()));
            }
            return Ok(PreparedImage {
                record: None,
                config: ImageConfig::default(),
                rootfs: dir.clone(),
                lease: None,
            });
        }
        Source::Registry(reference) => {
            let present = match store.find_image(&reference.to_string()) {
                Ok(record) => Some(record),
                Err(StoreError::ImageNotFound(_)) => None,
                Err(e) => return Err(e.into()),
            };
            match (policy, present) {
                (PullPolicy::Missing | PullPolicy::Never, Some(record)) => record,
                (PullPolicy::Never, None) => {
                    return Err(PrepareError::NotPresent(reference.to_string()))
                }
                _ => pull::pull(store, reference, options).await?,
            }
        }
        local => {
            let store = store.clone();
            let local = local.clone();
            let platform = options.platform.clone();
            tokio::task::spawn_blocking(move || import_local(&store, &local, platform))
                .await
                .map_err(|e| PrepareError::Task(e.to_string()))??
        }
    };
    let store = store.clone();
    tokio::task::spawn_blocking(move || -> Result<PreparedImage, PrepareError> {
        let lease = store.lease_rootfs(&record)?;
        let config = store.image_config(&record)?;
        Ok(PreparedImage {
            rootfs: lease.path().to_owned(),
            record: Some(record),
            config,
            lease: Some(lease),
        })
    })
    .await
    .map_err(|e| PrepareError::Task(e.to_string()))?
}

/// Imports a local layout or archive source into the store.
pub fn import_local(
    store: &Store,
    source: &Source,
    platform: Option<crate::platform::Platform>,
) -> Result<ImageRecord, LayoutError> {
    let options = |tag: &Option<String>| ImportOptions {
        tag: tag.clone(),
        platform: platform.clone(),
        name: None,
    };
    match source {
        Source::OciLayout { dir, tag } => layout::import_layout(store, dir, &options(tag)),
        Source::OciArchive { path, tag } => layout::import_oci_archive(store, path, &options(tag)),
        Source::DockerArchive { path } => {
            layout::import_docker_archive(store, path, &options(&None))
        }
        Source::Registry(_) | Source::RootfsDir(_) => Err(LayoutError::Invalid {
            path: PathBuf::new(),
            reason: format!("{source:?} is not a local image archive or layout"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decides_what_a_string_names() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = tmp.path().join("layout");
        std::fs::create_dir_all(&layout).unwrap();
        std::fs::write(layout.join("oci-layout"), "{}").unwrap();
        let rootfs = tmp.path().join("rootfs");
        std::fs::create_dir_all(&rootfs).unwrap();
        let s = |p: &Path| p.to_str().unwrap().to_owned();

        assert!(
            matches!(Source::parse("alpine").unwrap(), Source::Registry(r) if r.to_string() == "docker.io/library/alpine:latest")
        );
        assert!(matches!(
            Source::parse("docker://127.0.0.1:5000/x:1").unwrap(),
            Source::Registry(_)
        ));
        assert_eq!(
            Source::parse(&s(&layout)).unwrap(),
            Source::OciLayout {
                dir: layout.clone(),
                tag: None
            }
        );
        assert_eq!(
            Source::parse(&format!("oci:{}:v2", s(&layout))).unwrap(),
            Source::OciLayout {
                dir: layout.clone(),
                tag: Some("v2".into())
            }
        );
        assert_eq!(
            Source::parse(&s(&rootfs)).unwrap(),
            Source::RootfsDir(rootfs.clone())
        );
        assert!(matches!(
            Source::parse("./does-not-exist"),
            Err(SourceError::NotFound(_))
        ));

        let docker = tmp.path().join("saved.tar");
        let mut builder = tar::Builder::new(std::fs::File::create(&docker).unwrap());
        let mut header = tar::Header::new_gnu();
        header.set_size(2);
        header.set_mode(0o644);
        builder
            .append_data(&mut header, "manifest.json", &b"[]"[..])
            .unwrap();
        builder.finish().unwrap();
        assert_eq!(
            Source::parse(&s(&docker)).unwrap(),
            Source::DockerArchive {
                path: docker.clone()
            }
        );

        let junk = tmp.path().join("junk.bin");
        std::fs::write(&junk, b"definitely not a tar").unwrap();
        assert!(matches!(
            Source::parse(&s(&junk)),
            Err(SourceError::UnknownArchive(_))
        ));
    }
}
