//! Feeds arbitrary bytes to the manifest/index/config parsers the way a registry or a local
//! layout delivers them: never a panic, and whatever parses as an index can be asked for a
//! platform, whatever parses as a config yields run defaults.
#![no_main]

use krunbox_image::config::ImageConfigFile;
use krunbox_image::digest::Digest;
use krunbox_image::limits::MAX_JSON_BLOB;
use krunbox_image::manifest::{ManifestDocument, OCI_INDEX, OCI_MANIFEST};
use krunbox_image::platform::Platform;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() as u64 > MAX_JSON_BLOB {
        return;
    }
    let digest = Digest::of(data);
    for media_type in [
        None,
        Some(OCI_INDEX),
        Some(OCI_MANIFEST),
        Some("text/plain"),
    ] {
        match ManifestDocument::parse(data, media_type, &digest) {
            Ok(ManifestDocument::Index(index)) => {
                for platform in ["linux/amd64", "linux/arm/v7"] {
                    let platform = Platform::parse(platform).expect("valid platform");
                    if let Ok(chosen) = index.select(&platform, &digest) {
                        assert!(index.manifests.iter().any(|m| m.digest == chosen.digest));
                    }
                }
            }
            Ok(ManifestDocument::Image(manifest)) => {
                let _total: u64 = manifest
                    .layers
                    .iter()
                    .map(|l| l.size)
                    .fold(0, u64::saturating_add);
            }
            Err(err) => {
                let _ = err.to_string();
            }
        }
    }
    if let Ok(config) = serde_json::from_slice::<ImageConfigFile>(data) {
        let _ = config.config.unwrap_or_default();
    }
    let _ = Platform::parse(&String::from_utf8_lossy(data));
});
