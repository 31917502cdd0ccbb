//! Pulling images from a registry with the OCI distribution API ([`RegistrySession`]).
//!
//! 1. Take the store's shared lock for the whole pull (prune waits; other pulls proceed).
//! 2. Fetch the manifest by tag or digest; a pinned digest must match the bytes received.
//! 3. An index / manifest list is resolved to the requested platform (default linux/host
//!    arch) and that manifest fetched by digest and verified.
//! 4. The config and layer blobs missing from the store are downloaded in parallel, each
//!    into its own temp file under `tmp/`, hashed while streaming, and renamed into
//!    `blobs/` only when the digest (and size) match. A corrupted blob is refused with an
//!    error naming it; an interrupted pull leaves only temp files, so a retry downloads the
//!    missing blobs again and reuses the complete ones.
//! 5. The image name is recorded in the refs index.
//!
//! Registries on the loopback interface are spoken to over plain HTTP (Docker's default for
//! insecure registries); everything else over HTTPS unless listed in
//! [`PullOptions::insecure_registries`].

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::{StreamExt, TryStreamExt};
use tokio::io::AsyncWriteExt;

use crate::auth::{self, AuthError, Credentials};
use crate::digest::{Digest, Hasher};
use crate::limits::MAX_JSON_BLOB;
use crate::manifest::{Descriptor, ManifestDocument, ManifestError};
use crate::platform::Platform;
use crate::reference::Reference;
use crate::registry_http::{Access, RegistryError, RegistrySession};
use crate::store::{ImageRecord, Store, StoreError};

/// How to pull.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// Platform to pick from an index (default linux/host arch).
    pub platform: Option<Platform>,
    /// Credentials to use instead of looking them up ([`auth::credentials_for`]).
    pub credentials: Option<Credentials>,
    /// Show progress bars (only drawn when stderr is a terminal).
    pub progress: bool,
    /// Blobs downloaded at once.
    pub max_concurrent_downloads: usize,
    /// Extra registries (`host:port`) to reach over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Where to send progress as events (for a program showing its own: `krunbox serve`).
    pub events: Option<tokio::sync::mpsc::UnboundedSender<PullEvent>>,
}

/// How far a pull is, for [`PullOptions::events`]. Byte counts are sent at most once per
/// [`PROGRESS_STEP`] bytes of a blob, and once at its end.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum PullEvent {
    /// A blob is downloaded: `size` bytes in all.
    Download {
        /// The blob.
        digest: String,
        /// Its size (from the manifest).
        size: u64,
    },
    /// `received` of a blob's bytes arrived.
    Progress {
        /// The blob.
        digest: String,
        /// Bytes so far.
        received: u64,
    },
    /// A blob arrived and its digest matched.
    Done {
        /// The blob.
        digest: String,
    },
    /// A blob was in the store already.
    Present {
        /// The blob.
        digest: String,
    },
}

/// Bytes of a blob between two [`PullEvent::Progress`] events.
pub const PROGRESS_STEP: u64 = 1 << 20;

impl Default for PullOptions {
    fn default() -> Self {
        Self {
            platform: None,
            credentials: None,
            progress: true,
            max_concurrent_downloads: 3,
            insecure_registries: Vec::new(),
            events: None,
        }
    }
}

/// Why a pull failed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// Talking to the registry failed: network, authentication, a manifest over the size
    /// limit, an error answer (not found, denied).
    #[error("pulling {reference}: {source}")]
    Registry {
        /// What was pulled.
        reference: String,
        /// Why.
        #[source]
        source: RegistryError,
    },
    /// The manifest bytes do not match the pinned or listed digest.
    #[error("manifest of {reference} failed verification: expected {expected}, got {actual}")]
    ManifestDigestMismatch {
        /// What was pulled.
        reference: String,
        /// Wanted.
        expected: Digest,
        /// Got.
        actual: Digest,
    },
    /// The connection failed or the content was refused while a blob was streaming.
    #[error("downloading blob {digest} of {reference}: transfer failed: {source}")]
    BlobTransfer {
        /// The image.
        reference: String,
        /// The blob.
        digest: Digest,
        /// The stream error.
        #[source]
        source: std::io::Error,
    },
    /// A blob is larger than its descriptor says.
    #[error(
        "blob {digest} of {reference} is larger than the {size} bytes its descriptor declares"
    )]
    BlobTooLarge {
        /// The image.
        reference: String,
        /// The blob.
        digest: Digest,
        /// Declared size.
        size: u64,
    },
    /// Writing a blob to its temp file.
    #[error("writing blob {digest}: {source}")]
    Write {
        /// The blob.
        digest: Digest,
        /// The OS error.
        source: std::io::Error,
    },
    /// Unsupported manifest, no image for the platform, bad JSON.
    #[error("pulling {reference}: {source}")]
    Manifest {
        /// What was pulled.
        reference: String,
        /// The manifest problem (boxed: it is large and rare).
        source: Box<ManifestError>,
    },
    /// Credentials file problem.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// Store problem (including a blob whose content does not match its digest).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A blocking task died.
    #[error("internal task failed: {0}")]
    Task(String),
}

/// Pulls `reference` into `store` and records it under its full name.
pub async fn pull(
    store: &Store,
    reference: &Reference,
    options: &PullOptions,
) -> Result<ImageRecord, PullError> {
    let lock_store = store.clone();
    let _lock = tokio::task::spawn_blocking(move || lock_store.lock_shared())
        .await
        .map_err(|e| PullError::Task(e.to_string()))??;
    let puller = Puller::new(store, reference, options)?;
    puller.run().await
}

struct Puller<'a> {
    store: &'a Store,
    reference: &'a Reference,
    name: String,
    credentials: Credentials,
    platform: Platform,
    options: &'a PullOptions,
    insecure: bool,
}

impl<'a> Puller<'a> {
    fn new(
        store: &'a Store,
        reference: &'a Reference,
        options: &'a PullOptions,
    ) -> Result<Self, PullError> {
        let insecure = reference.is_loopback_registry()
            || options.insecure_registries.contains(&reference.registry);
        let credentials = match &options.credentials {
            Some(c) => c.clone(),
            None => auth::credentials_for(&reference.registry)?,
        };
        tracing::debug!(%reference, ?credentials, insecure, "pulling");
        Ok(Self {
            store,
            reference,
            name: reference.to_string(),
            credentials,
            platform: options
                .platform
                .clone()
                .unwrap_or_else(Platform::host_default),
            options,
            insecure,
        })
    }

    fn registry_err(&self) -> impl FnOnce(RegistryError) -> PullError + '_ {
        move |source| PullError::Registry {
            reference: self.name.clone(),
            source,
        }
    }

    fn manifest_err(&self) -> impl FnOnce(ManifestError) -> PullError + '_ {
        move |source| PullError::Manifest {
            reference: self.name.clone(),
            source: Box::new(source),
        }
    }

    /// Fetches a manifest or index; verifies it against `expected` when given.
    async fn fetch_manifest(
        &self,
        session: &RegistrySession,
        reference: &Reference,
        expected: Option<&Digest>,
    ) -> Result<(Vec<u8>, Digest, ManifestDocument), PullError> {
        let bytes = session
            .manifest(reference)
            .await
            .map_err(self.registry_err())?;
        let actual = Digest::of(&bytes);
        if let Some(expected) = expected {
            if *expected != actual {
                return Err(PullError::ManifestDigestMismatch {
                    reference: self.name.clone(),
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        let document =
            ManifestDocument::parse(&bytes, None, &actual).map_err(self.manifest_err())?;
        Ok((bytes, actual, document))
    }

    async fn run(self) -> Result<ImageRecord, PullError> {
        let session = RegistrySession::open(
            self.reference,
            &self.credentials,
            Access::Pull,
            self.insecure,
        )
        .await
        .map_err(self.registry_err())?;
        let (bytes, digest, document) = self
            .fetch_manifest(&session, self.reference, self.reference.digest.as_ref())
            .await?;
        let (index, manifest_bytes, manifest_digest, manifest) = match document {
            ManifestDocument::Image(manifest) => (None, bytes, digest, manifest),
            ManifestDocument::Index(index) => {
                let chosen = index
                    .select(&self.platform, &digest)
                    .map_err(self.manifest_err())?
                    .clone();
                tracing::debug!(platform = %self.platform, manifest = %chosen.digest, "resolved index");
                let pinned = self.reference.with_digest(chosen.digest.clone());
                let (m_bytes, m_digest, m_doc) = self
                    .fetch_manifest(&session, &pinned, Some(&chosen.digest))
                    .await?;
                let ManifestDocument::Image(manifest) = m_doc else {
                    return Err(PullError::Manifest {
                        reference: self.name.clone(),
                        source: Box::new(ManifestError::UnsupportedMediaType {
                            digest: m_digest,
                            media_type: "nested index".into(),
                        }),
                    });
                };
                self.store.put_blob_bytes(&bytes, &digest)?;
                (Some(digest), m_bytes, m_digest, manifest)
            }
        };
        if manifest.config.size > MAX_JSON_BLOB {
            return Err(StoreError::JsonBlobTooLarge {
                digest: manifest.config.digest.clone(),
                size: manifest.config.size,
            }
            .into());
        }

        let progress = Progress::new(self.options.progress, self.options.events.clone());
        // Owned descriptors keep the future `Send` (a closure over `&Descriptor` is not
        // general enough for tokio::spawn).
        let blobs: Vec<Descriptor> = std::iter::once(&manifest.config)
            .chain(manifest.layers.iter())
            .cloned()
            .collect();
        let this = &self;
        let progress = &progress;
        futures_util::stream::iter(blobs)
            .map(|descriptor| {
                let session = &session;
                async move { this.download(session, &descriptor, progress).await }
            })
            .buffer_unordered(self.options.max_concurrent_downloads.max(1))
            .try_collect::<Vec<()>>()
            .await?;
        // The manifest goes in last: a manifest blob in the store means its blobs are too.
        self.store
            .put_blob_bytes(&manifest_bytes, &manifest_digest)?;

        let config = self.store.read_json_blob(&manifest.config.digest)?;
        let config: crate::config::ImageConfigFile =
            serde_json::from_slice(&config).map_err(|source| StoreError::BadConfig {
                digest: manifest.config.digest.clone(),
                source,
            })?;
        let record = ImageRecord {
            name: self.name.clone(),
            manifest: manifest_digest,
            index,
            config: manifest.config.digest.clone(),
            layers: manifest.layers.iter().map(|l| l.digest.clone()).collect(),
            platform: Platform {
                os: if config.os.is_empty() {
                    self.platform.os.clone()
                } else {
                    config.os
                },
                architecture: if config.architecture.is_empty() {
                    self.platform.architecture.clone()
                } else {
                    config.architecture
                },
                variant: config.variant,
            },
            size: manifest.layers.iter().map(|l| l.size).sum(),
            stored_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        };
        let store = self.store.clone();
        let stored = record.clone();
        tokio::task::spawn_blocking(move || store.add_image(stored))
            .await
            .map_err(|e| PullError::Task(e.to_string()))??;
        Ok(record)
    }

    /// Downloads one blob into a temp file and moves it into the store once verified.
    async fn download(
        &self,
        session: &RegistrySession,
        descriptor: &Descriptor,
        progress: &Progress,
    ) -> Result<(), PullError> {
        let digest = &descriptor.digest;
        if self.store.has_blob(digest) {
            tracing::debug!(%digest, "blob already present");
            progress.send(PullEvent::Present {
                digest: digest.to_string(),
            });
            return Ok(());
        }
        let bar = progress.bar(digest, descriptor.size);
        progress.send(PullEvent::Download {
            digest: digest.to_string(),
            size: descriptor.size,
        });
        let mut reported = 0u64;
        let write_err = |source: std::io::Error| PullError::Write {
            digest: digest.clone(),
            source,
        };
        let stream = session.blob(digest).await.map_err(self.registry_err())?;
        let mut stream = std::pin::pin!(stream);
        let temp = self.store.temp_blob()?;
        let mut out = tokio::fs::File::from_std(temp.as_file().try_clone().map_err(write_err)?);
        let mut hasher = Hasher::default();
        let mut received = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|source| PullError::BlobTransfer {
                reference: self.name.clone(),
                digest: digest.clone(),
                source: std::io::Error::other(source),
            })?;
            received += chunk.len() as u64;
            if received > descriptor.size {
                return Err(PullError::BlobTooLarge {
                    reference: self.name.clone(),
                    digest: digest.clone(),
                    size: descriptor.size,
                });
            }
            hasher.update(&chunk);
            out.write_all(&chunk).await.map_err(write_err)?;
            if let Some(bar) = &bar {
                bar.inc(chunk.len() as u64);
            }
            if received - reported >= PROGRESS_STEP {
                reported = received;
                progress.send(PullEvent::Progress {
                    digest: digest.to_string(),
                    received,
                });
            }
        }
        out.flush().await.map_err(write_err)?;
        drop(out);
        let (actual, _) = hasher.finish();
        let store = self.store.clone();
        let expected = digest.clone();
        tokio::task::spawn_blocking(move || store.commit_blob(temp, &expected, &actual))
            .await
            .map_err(|e| PullError::Task(e.to_string()))??;
        if let Some(bar) = bar {
            bar.finish_with_message("done");
        }
        progress.send(PullEvent::Progress {
            digest: digest.to_string(),
            received,
        });
        progress.send(PullEvent::Done {
            digest: digest.to_string(),
        });
        tracing::info!(%digest, bytes = received, "blob downloaded");
        Ok(())
    }
}

/// Progress bars on stderr, only when it is a terminal; events for whoever asked.
struct Progress {
    bars: Option<Arc<indicatif::MultiProgress>>,
    events: Option<tokio::sync::mpsc::UnboundedSender<PullEvent>>,
}

impl Progress {
    fn new(wanted: bool, events: Option<tokio::sync::mpsc::UnboundedSender<PullEvent>>) -> Self {
        let bars = (wanted && std::io::stderr().is_terminal())
            .then(|| Arc::new(indicatif::MultiProgress::new()));
        Self { bars, events }
    }

    /// A receiver that went away only stops the events, not the pull.
    fn send(&self, event: PullEvent) {
        if let Some(events) = &self.events {
            let _ = events.send(event);
        }
    }

    fn bar(&self, digest: &Digest, size: u64) -> Option<indicatif::ProgressBar> {
        let bars = self.bars.as_ref()?;
        let bar = bars.add(indicatif::ProgressBar::new(size));
        let style = indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(digest.short().to_owned());
        Some(bar)
    }
}
