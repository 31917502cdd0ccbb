//! OCI / Docker schema 2 manifests, indexes and descriptors (the JSON krunbox reads and
//! writes), and choosing a platform's manifest from an index.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::platform::Platform;

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI gzip layer.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Docker schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Every manifest type krunbox accepts from a registry.
pub const ACCEPTED_MANIFEST_TYPES: &[&str] = &[
    OCI_INDEX,
    DOCKER_MANIFEST_LIST,
    OCI_MANIFEST,
    DOCKER_MANIFEST,
];
/// `org.opencontainers.image.ref.name`, the tag annotation in OCI layouts.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type.
    pub media_type: String,
    /// Digest of the content.
    pub digest: Digest,
    /// Size in bytes.
    pub size: u64,
    /// Platform (index entries only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<DescriptorPlatform>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The platform of an index entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescriptorPlatform {
    /// GOARCH.
    pub architecture: String,
    /// GOOS.
    pub os: String,
    /// CPU variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl From<&Platform> for DescriptorPlatform {
    fn from(p: &Platform) -> Self {
        Self {
            architecture: p.architecture.clone(),
            os: p.os.clone(),
            variant: p.variant.clone(),
        }
    }
}

/// An image manifest (OCI or Docker schema 2: same fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// Media type (optional in OCI, then implied by the transport).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The config blob.
    pub config: Descriptor,
    /// Layer blobs, bottom first.
    pub layers: Vec<Descriptor>,
}

/// An image index / manifest list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Always 2.
    pub schema_version: u32,
    /// Media type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// Entries.
    pub manifests: Vec<Descriptor>,
}

/// A manifest-or-index document, told apart by media type (or, when absent, by shape).
#[derive(Debug, Clone)]
pub enum ManifestDocument {
    /// Single-platform image.
    Image(Manifest),
    /// Multi-platform index.
    Index(Index),
}

/// Why a document is not usable.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not JSON of the expected shape.
    #[error("manifest {digest}: {source}")]
    Json {
        /// The document.
        digest: Digest,
        /// The parse error.
        source: serde_json::Error,
    },
    /// A media type krunbox does not handle (schema 1, artifacts, ...).
    #[error("manifest {digest}: unsupported media type {media_type:?}")]
    UnsupportedMediaType {
        /// The document.
        digest: Digest,
        /// Its media type.
        media_type: String,
    },
    /// No entry for the requested platform.
    #[error("index {digest} has no image for platform {platform} (available: {available})")]
    NoMatchingPlatform {
        /// The index.
        digest: Digest,
        /// What was asked for.
        platform: Platform,
        /// What there is.
        available: String,
    },
}

impl ManifestDocument {
    /// Parses `bytes` whose media type the transport reported as `media_type` (if any).
    pub fn parse(
        bytes: &[u8],
        media_type: Option<&str>,
        digest: &Digest,
    ) -> Result<Self, ManifestError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Probe {
            media_type: Option<String>,
            manifests: Option<serde_json::Value>,
        }
        let json_err = |source| ManifestError::Json {
            digest: digest.clone(),
            source,
        };
        let probe: Probe = serde_json::from_slice(bytes).map_err(json_err)?;
        let media_type = probe
            .media_type
            .or_else(|| media_type.map(str::to_owned))
            .unwrap_or_else(|| {
                if probe.manifests.is_some() {
                    OCI_INDEX
                } else {
                    OCI_MANIFEST
                }
                .to_owned()
            });
        // Registries add parameters (`; charset=utf-8`).
        let base = media_type.split(';').next().unwrap_or_default().trim();
        match base {
            OCI_INDEX | DOCKER_MANIFEST_LIST => Ok(Self::Index(
                serde_json::from_slice(bytes).map_err(json_err)?,
            )),
            OCI_MANIFEST | DOCKER_MANIFEST => Ok(Self::Image(
                serde_json::from_slice(bytes).map_err(json_err)?,
            )),
            _ => Err(ManifestError::UnsupportedMediaType {
                digest: digest.clone(),
                media_type,
            }),
        }
    }
}

impl Index {
    /// The entry for `platform`: the first that matches, as Docker picks.
    pub fn select(
        &self,
        platform: &Platform,
        digest: &Digest,
    ) -> Result<&Descriptor, ManifestError> {
        self.manifests
            .iter()
            .filter(|m| matches!(m.media_type.as_str(), OCI_MANIFEST | DOCKER_MANIFEST))
            .find(|m| {
                m.platform
                    .as_ref()
                    .is_some_and(|p| platform.matches(&p.os, &p.architecture, p.variant.as_deref()))
            })
            .ok_or_else(|| ManifestError::NoMatchingPlatform {
                digest: digest.clone(),
                platform: platform.clone(),
                available: self
                    .manifests
                    .iter()
                    .filter_map(|m| m.platform.as_ref())
                    .map(|p| match &p.variant {
                        Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                        None => format!("{}/{}", p.os, p.architecture),
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn descriptor(arch: &str, byte: u8) -> Descriptor {
        Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: Digest::of(&[byte]),
            size: 1,
            platform: Some(DescriptorPlatform {
                architecture: arch.into(),
                os: "linux".into(),
                variant: None,
            }),
            annotations: BTreeMap::new(),
        }
    }

    #[test]
    fn selects_platform_and_names_alternatives() {
        let index = Index {
            schema_version: 2,
            media_type: Some(OCI_INDEX.into()),
            manifests: vec![descriptor("amd64", 1), descriptor("arm64", 2)],
        };
        let d = Digest::of(b"index");
        let arm = index
            .select(&Platform::parse("linux/arm64").unwrap(), &d)
            .unwrap();
        assert_eq!(arm.digest, Digest::of(&[2]));
        let err = index
            .select(&Platform::parse("linux/riscv64").unwrap(), &d)
            .unwrap_err();
        assert!(
            err.to_string().contains("linux/amd64, linux/arm64"),
            "{err}"
        );
    }

    #[test]
    fn tells_documents_apart() {
        let d = Digest::of(b"x");
        let index = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(matches!(
            ManifestDocument::parse(index, None, &d),
            Ok(ManifestDocument::Index(_))
        ));
        let v1 = br#"{"schemaVersion":1,"mediaType":"application/vnd.docker.distribution.manifest.v1+json"}"#;
        assert!(matches!(
            ManifestDocument::parse(v1, None, &d),
            Err(ManifestError::UnsupportedMediaType { .. })
        ));
        assert!(ManifestDocument::parse(b"not json", None, &d).is_err());
    }
}
