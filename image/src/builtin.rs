//! The built-in default image: busybox-static with its applet links and the few files a
//! shell session expects, written as a one-layer OCI image layout so it goes through exactly
//! the same import/unpack path as any other image.
//!
//! The output is deterministic — fixed mtimes, root ownership, sorted entries, gzip without
//! a timestamp — so the same busybox binary always yields the same digests.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::config::{ImageConfig, ImageConfigFile, RootFs};
use crate::digest::{Digest, DigestWriter};
use crate::layout::LayoutWriter;
use crate::manifest::{Descriptor, OCI_CONFIG, OCI_LAYER_GZIP};
use crate::platform::Platform;

/// Where Debian's busybox-static puts the binary.
pub const DEFAULT_BUSYBOX: &str = "/bin/busybox";
/// The tag written into the layout's index.json.
pub const BUILTIN_TAG: &str = "latest";
/// The name the lead imports it under.
pub const BUILTIN_IMAGE_NAME: &str = "krunbox/default:latest";
/// Every entry's mtime (2024-01-01T00:00:00Z).
const FIXED_MTIME: u64 = 1_704_067_200;

/// Why the default image could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuiltinError {
    /// busybox is missing.
    #[error("{0}: not found; install Debian's busybox-static (apt-get install busybox-static)")]
    NoBusybox(PathBuf),
    /// busybox is dynamically linked and would not run in the image.
    #[error("{0} is dynamically linked; the default image needs busybox-static")]
    NotStatic(PathBuf),
    /// `busybox --list-full` failed.
    #[error("listing applets with `{busybox} --list-full`: {detail}")]
    Applets {
        /// The binary.
        busybox: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// Writing the layout.
    #[error("{action} {path}: {source}")]
    Io {
        /// What.
        action: &'static str,
        /// Where.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// What [`build_builtin_image`] wrote.
#[derive(Debug, Clone)]
pub struct BuiltinImage {
    /// The layout directory.
    pub layout: PathBuf,
    /// The manifest (tagged [`BUILTIN_TAG`] in index.json).
    pub manifest: Descriptor,
    /// The config blob.
    pub config: Descriptor,
    /// The single layer (gzip).
    pub layer: Descriptor,
    /// Digest of the uncompressed layer tar.
    pub diff_id: Digest,
}

/// Builds the default image from the host's `/bin/busybox` into the OCI layout `out`.
pub fn build_builtin_image(out: &Path) -> Result<BuiltinImage, BuiltinError> {
    build_builtin_image_from(Path::new(DEFAULT_BUSYBOX), out)
}

/// Builds the default image from the given static busybox binary.
pub fn build_builtin_image_from(busybox: &Path, out: &Path) -> Result<BuiltinImage, BuiltinError> {
    let io_err = |action, path: &Path| {
        let path = path.to_owned();
        move |source| BuiltinError::Io {
            action,
            path,
            source,
        }
    };
    let binary = match fs::read(busybox) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(BuiltinError::NoBusybox(busybox.to_owned()))
        }
        Err(e) => return Err(io_err("reading", busybox)(e)),
    };
    if !is_static_elf(&binary) {
        return Err(BuiltinError::NotStatic(busybox.to_owned()));
    }
    let applets = applet_paths(busybox)?;

    let (layer_tar_gz, diff_id) =
        layer(&binary, &applets).map_err(io_err("building the layer for", out))?;
    let mut writer = LayoutWriter::create(out).map_err(io_err("creating layout", out))?;
    let layer = writer
        .add_blob(OCI_LAYER_GZIP, &layer_tar_gz)
        .map_err(io_err("writing layer into", out))?;
    let platform = Platform::host_default();
    let config = ImageConfigFile {
        architecture: platform.architecture.clone(),
        os: platform.os.clone(),
        variant: None,
        config: Some(ImageConfig {
            env: Some(vec![format!("PATH={}", crate::config::DEFAULT_PATH)]),
            cmd: Some(vec!["/bin/sh".into()]),
            working_dir: Some("/".into()),
            ..Default::default()
        }),
        rootfs: RootFs {
            kind: "layers".into(),
            diff_ids: vec![diff_id.clone()],
        },
    };
    let config_bytes =
        serde_json::to_vec(&config).map_err(|e| io_err("serialising config for", out)(e.into()))?;
    let config = writer
        .add_blob(OCI_CONFIG, &config_bytes)
        .map_err(io_err("writing config into", out))?;
    let manifest = writer
        .add_manifest(&config, std::slice::from_ref(&layer), Some(&platform))
        .map_err(io_err("writing manifest into", out))?;
    writer.tag(&manifest, BUILTIN_TAG);
    writer
        .finish()
        .map_err(io_err("writing index.json into", out))?;
    tracing::info!(layout = %out.display(), manifest = %manifest.digest, applets = applets.len(), "built-in image written");
    Ok(BuiltinImage {
        layout: out.to_owned(),
        manifest,
        config,
        layer,
        diff_id,
    })
}

/// A static ELF has no PT_INTERP program header.
fn is_static_elf(binary: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    if binary.len() < 64 || &binary[..4] != b"\x7fELF" || binary[4] != 2 || binary[5] != 1 {
        return false; // not 64-bit little-endian ELF
    }
    let u16_at = |o: usize| {
        binary
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u64_at = |o: usize| {
        binary
            .get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    (0..phnum as usize).all(|i| {
        let offset = phoff as usize + i * phentsize as usize;
        binary
            .get(offset..offset + 4)
            .is_some_and(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) != PT_INTERP)
    })
}

/// `bin/sh`, `usr/bin/awk`, ... as the binary lists them, sorted.
fn applet_paths(busybox: &Path) -> Result<Vec<String>, BuiltinError> {
    let output = Command::new(busybox)
        .arg("--list-full")
        .output()
        .map_err(|e| BuiltinError::Applets {
            busybox: busybox.to_owned(),
            detail: e.to_string(),
        })?;
    if !output.status.success() {
        return Err(BuiltinError::Applets {
            busybox: busybox.to_owned(),
            detail: format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    let mut applets: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| l.trim().trim_start_matches('/').to_owned())
        .filter(|l| {
            !l.is_empty() && l != "bin/busybox" && !l.split('/').any(|c| c == ".." || c.is_empty())
        })
        .collect();
    applets.sort();
    applets.dedup();
    Ok(applets)
}

const DIRS: &[(&str, u32)] = &[
    ("bin", 0o755),
    ("dev", 0o755),
    ("etc", 0o755),
    ("home", 0o755),
    ("mnt", 0o755),
    ("opt", 0o755),
    ("proc", 0o555),
    ("root", 0o700),
    ("run", 0o755),
    ("sbin", 0o755),
    ("sys", 0o555),
    ("tmp", 0o1777),
    ("usr", 0o755),
    ("usr/bin", 0o755),
    ("usr/sbin", 0o755),
    ("var", 0o755),
    ("var/log", 0o755),
    ("var/tmp", 0o1777),
];

fn text_files() -> Vec<(&'static str, String)> {
    vec![
        ("etc/group", "root:x:0:\nnogroup:x:65534:\n".into()),
        ("etc/hostname", "krunbox\n".into()),
        ("etc/hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n".into()),
        (
            "etc/os-release",
            "NAME=\"krunbox default image\"\nID=krunbox\nPRETTY_NAME=\"krunbox default image (busybox)\"\nHOME_URL=\"https://github.com/krunbox\"\n".into(),
        ),
        (
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n".into(),
        ),
    ]
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_mtime(FIXED_MTIME);
    header.set_uid(0);
    header.set_gid(0);
    // Set only for fields that exist in ustar; errors are impossible for these short names.
    let _ = header.set_username("root");
    let _ = header.set_groupname("root");
    header
}

/// The layer as gzip bytes, and the digest of the uncompressed tar (its diff ID).
fn layer(busybox: &[u8], applets: &[String]) -> io::Result<(Vec<u8>, Digest)> {
    let gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    let mut builder = tar::Builder::new(DigestWriter::new(gz));
    for (dir, mode) in DIRS {
        let mut h = header(tar::EntryType::Directory, *mode, 0);
        builder.append_data(&mut h, format!("{dir}/"), io::empty())?;
    }
    let mut h = header(tar::EntryType::Regular, 0o755, busybox.len() as u64);
    builder.append_data(&mut h, "bin/busybox", busybox)?;
    for (path, content) in text_files() {
        let mut h = header(tar::EntryType::Regular, 0o644, content.len() as u64);
        builder.append_data(&mut h, path, content.as_bytes())?;
    }
    for applet in applets {
        let depth = applet.matches('/').count();
        let target = if applet.starts_with("bin/") && depth == 1 {
            "busybox".to_owned()
        } else {
            format!("{}bin/busybox", "../".repeat(depth))
        };
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        builder.append_link(&mut h, applet, target)?;
    }
    let digest_writer = builder.into_inner()?;
    let (diff_id, _, mut gz) = digest_writer.finish();
    gz.flush()?;
    Ok((gz.finish()?, diff_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_elf_detection() {
        if let Ok(busybox) = fs::read(DEFAULT_BUSYBOX) {
            assert!(is_static_elf(&busybox));
        }
        let sh = fs::read("/bin/ls").unwrap();
        assert!(
            !is_static_elf(&sh),
            "/bin/ls is dynamically linked on Debian"
        );
        assert!(!is_static_elf(b"#!/bin/sh\n"));
    }
}
