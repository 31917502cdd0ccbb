//! `docker save` tarballs: `manifest.json` naming a config and layer tars, imported into the
//! store as an image.

use std::collections::BTreeMap;
use std::fs::{self};
use std::io::{self};
use std::path::Path;

use serde::Deserialize;

use crate::config::ImageConfigFile;
use crate::digest::{Digest, DigestWriter};
use crate::manifest::{Descriptor, Manifest, DOCKER_MANIFEST};
use crate::store::{ImageRecord, Store};

use super::{
    extract_archive, normalize_name, now, platform_of, ImportOptions, LayoutDir, LayoutError,
};

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerSaveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// Imports from a `docker save` tarball (`manifest.json` + config + layer tars). The image is
/// recorded under its first RepoTag unless `options.name` says otherwise.
pub fn import_docker_archive(
    store: &Store,
    archive: &Path,
    options: &ImportOptions,
) -> Result<ImageRecord, LayoutError> {
    let _lock = store.lock_shared()?;
    let extracted = extract_archive(store, archive)?;
    let dir = LayoutDir::open(extracted.path())?;
    let manifest_path = archive.join("manifest.json");
    let entries: Vec<DockerSaveEntry> = serde_json::from_slice(&dir.read_small("manifest.json")?)
        .map_err(|source| LayoutError::Json {
        path: manifest_path.clone(),
        source,
    })?;
    let entry = match (&options.tag, entries.as_slice()) {
        (_, []) => {
            return Err(LayoutError::Invalid {
                path: manifest_path,
                reason: "no image in manifest.json".into(),
            })
        }
        (None, [only]) => only,
        (wanted, many) => {
            let wanted = wanted.clone().unwrap_or_default();
            many.iter()
                .find(|e| {
                    e.repo_tags.iter().flatten().any(|t| {
                        *t == wanted || normalize_name(t.clone()) == normalize_name(wanted.clone())
                    })
                })
                .ok_or_else(|| LayoutError::Invalid {
                    path: manifest_path.clone(),
                    reason: format!("several images in the archive; none tagged {wanted:?}"),
                })?
        }
    };

    let config_bytes = dir.read_small(&entry.config)?;
    let config_digest = Digest::of(&config_bytes);
    store.put_blob_bytes(&config_bytes, &config_digest)?;
    let config: ImageConfigFile =
        serde_json::from_slice(&config_bytes).map_err(|source| LayoutError::Json {
            path: archive.join(&entry.config),
            source,
        })?;

    let mut layers = Vec::new();
    let mut size = 0;
    for layer_path in &entry.layers {
        let mut file = dir.open_file(layer_path)?;
        // The layer's name is not its digest in the legacy format: hash while copying.
        let temp = store.temp_blob()?;
        let temp_path = temp.path().to_owned();
        let mut writer = DigestWriter::new(temp);
        let copied = io::copy(&mut file, &mut writer).map_err(|source| LayoutError::Io {
            path: archive.join(layer_path),
            action: "copying layer into the store",
            source,
        })?;
        let (digest, _, temp) = writer.finish();
        debug_assert_eq!(temp.path(), temp_path);
        store.commit_blob(temp, &digest, &digest)?;
        size += copied;
        layers.push(Descriptor {
            media_type: "application/vnd.docker.image.rootfs.diff.tar".into(),
            digest,
            size: copied,
            platform: None,
            annotations: BTreeMap::new(),
        });
    }
    if !config.rootfs.diff_ids.is_empty() && config.rootfs.diff_ids.len() != layers.len() {
        return Err(LayoutError::Invalid {
            path: manifest_path,
            reason: format!(
                "config lists {} layers but the archive has {}",
                config.rootfs.diff_ids.len(),
                layers.len()
            ),
        });
    }
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(DOCKER_MANIFEST.into()),
        config: Descriptor {
            media_type: "application/vnd.docker.container.image.v1+json".into(),
            digest: config_digest.clone(),
            size: config_bytes.len() as u64,
            platform: None,
            annotations: BTreeMap::new(),
        },
        layers,
    };
    let manifest_bytes = serde_json::to_vec(&manifest).map_err(|source| LayoutError::Json {
        path: manifest_path,
        source,
    })?;
    let manifest_digest = Digest::of(&manifest_bytes);
    store.put_blob_bytes(&manifest_bytes, &manifest_digest)?;
    let name = match (
        &options.name,
        entry.repo_tags.as_ref().and_then(|t| t.first()),
    ) {
        (Some(name), _) => normalize_name(name.clone()),
        (None, Some(tag)) => normalize_name(tag.clone()),
        (None, None) => {
            let abs = fs::canonicalize(archive).unwrap_or_else(|_| archive.to_owned());
            format!("docker-archive:{}", abs.display())
        }
    };
    let record = ImageRecord {
        name,
        manifest: manifest_digest,
        index: None,
        config: config_digest,
        layers: manifest.layers.iter().map(|l| l.digest.clone()).collect(),
        platform: platform_of(&config),
        size,
        stored_at: now(),
    };
    store.add_image(record.clone())?;
    Ok(record)
}
