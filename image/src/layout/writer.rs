//! Writing an OCI image layout directory (the built-in image, tests).

use std::collections::BTreeMap;
use std::fs::{self};
use std::io::{self};
use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::manifest::{
    Descriptor, DescriptorPlatform, Index, Manifest, OCI_INDEX, OCI_MANIFEST, REF_NAME_ANNOTATION,
};
use crate::platform::Platform;

/// Writes an OCI image layout directory blob by blob.
pub struct LayoutWriter {
    dir: PathBuf,
    entries: Vec<Descriptor>,
}

impl LayoutWriter {
    /// Creates `dir` (and `blobs/sha256`, `oci-layout`) if needed.
    pub fn create(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir.join("blobs/sha256"))?;
        fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        Ok(Self {
            dir: dir.to_owned(),
            entries: Vec::new(),
        })
    }

    /// Adds a blob; returns its descriptor.
    pub fn add_blob(&mut self, media_type: &str, data: &[u8]) -> io::Result<Descriptor> {
        let digest = Digest::of(data);
        let path = self.dir.join("blobs/sha256").join(digest.hex());
        if !path.exists() {
            fs::write(&path, data)?;
        }
        Ok(Descriptor {
            media_type: media_type.to_owned(),
            digest,
            size: data.len() as u64,
            platform: None,
            annotations: BTreeMap::new(),
        })
    }

    /// Adds an image manifest for `config` + `layers`; returns the manifest's descriptor
    /// (not yet listed in index.json).
    pub fn add_manifest(
        &mut self,
        config: &Descriptor,
        layers: &[Descriptor],
        platform: Option<&Platform>,
    ) -> io::Result<Descriptor> {
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(OCI_MANIFEST.into()),
            config: config.clone(),
            layers: layers.to_vec(),
        };
        let bytes = serde_json::to_vec(&manifest).map_err(io::Error::other)?;
        let mut descriptor = self.add_blob(OCI_MANIFEST, &bytes)?;
        descriptor.platform = platform.map(DescriptorPlatform::from);
        Ok(descriptor)
    }

    /// Adds an image index over `manifests`; returns its descriptor.
    pub fn add_index(&mut self, manifests: &[Descriptor]) -> io::Result<Descriptor> {
        let index = Index {
            schema_version: 2,
            media_type: Some(OCI_INDEX.into()),
            manifests: manifests.to_vec(),
        };
        let bytes = serde_json::to_vec(&index).map_err(io::Error::other)?;
        self.add_blob(OCI_INDEX, &bytes)
    }

    /// Lists `descriptor` in index.json under `tag`.
    pub fn tag(&mut self, descriptor: &Descriptor, tag: &str) {
        let mut entry = descriptor.clone();
        entry
            .annotations
            .insert(REF_NAME_ANNOTATION.into(), tag.into());
        self.entries.retain(|e| {
            e.annotations
                .get(REF_NAME_ANNOTATION)
                .is_none_or(|t| t != tag)
        });
        self.entries.push(entry);
    }

    /// Writes index.json.
    pub fn finish(self) -> io::Result<PathBuf> {
        let index = Index {
            schema_version: 2,
            media_type: Some(OCI_INDEX.into()),
            manifests: self.entries,
        };
        let bytes = serde_json::to_vec_pretty(&index).map_err(io::Error::other)?;
        fs::write(self.dir.join("index.json"), bytes)?;
        Ok(self.dir)
    }
}
