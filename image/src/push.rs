//! Pushing an OCI image layout to a registry — how tests, benchmarks and CI put images into
//! the local registry without Docker (the same job as `skopeo copy oci:DIR docker://REF`).
//!
//! Uploads go through oci-client. Authentication does not: a bearer token is had through
//! [`RegistrySession`] (whose token answer is bounded) and handed to oci-client as is, so
//! oci-client never reads a token server's answer itself. oci-client still reads the body of a
//! refused upload without a limit; pushes go to a registry the user named.

use std::path::{Path, PathBuf};

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::RegistryOperation;

use crate::auth::Credentials;
use crate::digest::Digest;
use crate::manifest::{Index, ManifestDocument, REF_NAME_ANNOTATION};
use crate::reference::Reference;
use crate::registry_http::{Access, RegistryError, RegistrySession};

/// Why a push failed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// Reading the layout.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The layout's JSON.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The registry refused.
    #[error("pushing to {reference}: {source}")]
    Registry {
        /// The target.
        reference: String,
        /// The client error.
        source: oci_client::errors::OciDistributionError,
    },
    /// Authenticating with the registry failed.
    #[error("pushing to {reference}: {source}")]
    Auth {
        /// The target.
        reference: String,
        /// Why.
        source: RegistryError,
    },
}

/// Pushes the image tagged `layout_tag` (or the only one) of the OCI layout `dir` to
/// `target`, with every manifest of an index and every blob. Returns the pushed top-level
/// manifest (or index) digest.
pub async fn push_layout(
    dir: &Path,
    layout_tag: Option<&str>,
    target: &Reference,
    credentials: &Credentials,
) -> Result<Digest, PushError> {
    let read = |relative: &str| {
        let path = dir.join(relative);
        std::fs::read(&path).map_err(|source| PushError::Io { path, source })
    };
    let invalid = |reason: String| PushError::Invalid {
        path: dir.join("index.json"),
        reason,
    };
    let index: Index =
        serde_json::from_slice(&read("index.json")?).map_err(|e| invalid(e.to_string()))?;
    let entry = match layout_tag {
        Some(tag) => index.manifests.iter().find(|m| {
            m.annotations
                .get(REF_NAME_ANNOTATION)
                .is_some_and(|t| t == tag)
        }),
        None => index.manifests.first(),
    }
    .ok_or_else(|| invalid(format!("no image tagged {layout_tag:?}")))?;

    let protocol = if target.is_loopback_registry() {
        ClientProtocol::HttpsExcept(vec![target.registry.clone()])
    } else {
        ClientProtocol::Https
    };
    let client = oci_client::Client::new(ClientConfig {
        protocol,
        use_monolithic_push: true,
        ..Default::default()
    });
    let session = RegistrySession::open(
        target,
        credentials,
        Access::Push,
        target.is_loopback_registry(),
    )
    .await
    .map_err(|source| PushError::Auth {
        reference: target.to_string(),
        source,
    })?;
    let auth = match session.bearer_token() {
        Some(token) => Credentials::Bearer(token).to_oci(),
        None => credentials.to_oci(),
    };
    let registry_err = |source| PushError::Registry {
        reference: target.to_string(),
        source,
    };
    client
        .auth(&target.to_oci(), &auth, RegistryOperation::Push)
        .await
        .map_err(registry_err)?;

    let blob = |digest: &Digest| read(&format!("blobs/sha256/{}", digest.hex()));
    let top = blob(&entry.digest)?;
    let manifests = match ManifestDocument::parse(&top, Some(&entry.media_type), &entry.digest)
        .map_err(|e| invalid(e.to_string()))?
    {
        ManifestDocument::Image(_) => vec![(entry.digest.clone(), entry.media_type.clone())],
        ManifestDocument::Index(index) => index
            .manifests
            .iter()
            .map(|m| (m.digest.clone(), m.media_type.clone()))
            .collect(),
    };
    for (digest, media_type) in &manifests {
        let bytes = blob(digest)?;
        let ManifestDocument::Image(manifest) =
            ManifestDocument::parse(&bytes, Some(media_type), digest)
                .map_err(|e| invalid(e.to_string()))?
        else {
            return Err(invalid(format!("{digest} is an index inside an index")));
        };
        for descriptor in std::iter::once(&manifest.config).chain(manifest.layers.iter()) {
            client
                .push_blob(
                    &target.to_oci(),
                    blob(&descriptor.digest)?,
                    &descriptor.digest.to_string(),
                )
                .await
                .map_err(registry_err)?;
        }
        if manifests.len() > 1 || *digest != entry.digest {
            let pinned = target.with_digest(digest.clone());
            push_manifest(&client, &pinned, bytes, media_type)
                .await
                .map_err(registry_err)?;
        }
    }
    push_manifest(&client, target, top, &entry.media_type)
        .await
        .map_err(registry_err)?;
    tracing::info!(%target, digest = %entry.digest, "pushed");
    Ok(entry.digest.clone())
}

async fn push_manifest(
    client: &oci_client::Client,
    target: &Reference,
    bytes: Vec<u8>,
    media_type: &str,
) -> Result<String, oci_client::errors::OciDistributionError> {
    let content_type = http::HeaderValue::from_str(media_type)
        .unwrap_or_else(|_| http::HeaderValue::from_static(crate::manifest::OCI_MANIFEST));
    client
        .push_manifest_raw(&target.to_oci(), bytes, content_type)
        .await
}
