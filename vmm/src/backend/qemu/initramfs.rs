//! The initramfs every QEMU guest boots from: guest-init as `/init`, the kernel modules it
//! loads (`/krunbox/modules/NN-name.ko`, in load order), and the directories it needs before
//! it switches to the virtio-fs root. Written as a newc cpio archive and cached by content:
//! the name carries a hash of guest-init and the modules, so a rebuilt agent gets a new image.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use krunbox_image::newc::{Newc, FILE, FILE_EXEC};
use sha2::{Digest, Sha256};

use crate::io_error::io;

/// Why the initramfs could not be built.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    /// A file operation.
    #[error(transparent)]
    Io(#[from] crate::io_error::IoError),
}

/// Returns the cached initramfs in `cache_dir` for this guest-init and these modules
/// (ordered; loaded in this order), building it first if needed.
pub fn cached(
    cache_dir: &Path,
    guest_init: &Path,
    modules: &[PathBuf],
) -> Result<PathBuf, InitramfsError> {
    let init = std::fs::read(guest_init).map_err(io("read guest-init", guest_init))?;
    let mut hasher = Sha256::new();
    hasher.update(&init);
    let mut module_images = Vec::with_capacity(modules.len());
    for (index, path) in modules.iter().enumerate() {
        let bytes = std::fs::read(path).map_err(io("read module", path))?;
        hasher.update(index.to_le_bytes());
        hasher.update(&bytes);
        module_images.push((module_entry_name(index, path), bytes));
    }
    let key = hex::encode(&hasher.finalize()[..8]);
    let image = cache_dir.join(format!("initramfs-{key}.cpio"));
    if image.is_file() {
        return Ok(image);
    }
    crate::private_dir::create_all(cache_dir).map_err(io("create", cache_dir))?;
    let tmp =
        tempfile::NamedTempFile::new_in(cache_dir).map_err(io("create a file in", cache_dir))?;
    let mut out = BufWriter::new(tmp.as_file());
    write_archive(&mut out, &init, &module_images).map_err(io("write", tmp.path()))?;
    out.flush().map_err(io("write", tmp.path()))?;
    drop(out);
    tmp.persist(&image)
        .map_err(|e| io("store", &image)(e.error))?;
    tracing::debug!(image = %image.display(), "built the initramfs");
    Ok(image)
}

/// `NN-name.ko`, whatever prefix the source file had.
fn module_entry_name(index: usize, path: &Path) -> String {
    let file = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let base = match file.split_once('-') {
        Some((prefix, rest)) if prefix.chars().all(|c| c.is_ascii_digit()) => rest.to_owned(),
        _ => file,
    };
    format!("krunbox/modules/{index:02}-{base}")
}

fn write_archive(
    out: &mut impl Write,
    init: &[u8],
    modules: &[(String, Vec<u8>)],
) -> std::io::Result<()> {
    let mut archive = Newc::new(out);
    archive.dirs(&[
        "dev",
        "proc",
        "sys",
        "newroot",
        "krunbox",
        "krunbox/modules",
    ])?;
    archive.console()?;
    archive.entry("init", FILE_EXEC, init, None)?;
    for (name, bytes) in modules {
        archive.entry(name, FILE, bytes, None)?;
    }
    archive.finish().map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use krunbox_image::newc::{CHAR_DEV, DIR};

    use std::fs::File;

    fn names(image: &Path) -> Vec<(String, u32, u32)> {
        let mut file = File::open(image).unwrap();
        let mut names = Vec::new();
        loop {
            let reader = cpio::NewcReader::new(&mut file).unwrap();
            if reader.entry().is_trailer() {
                break;
            }
            let e = reader.entry();
            names.push((e.name().to_owned(), e.mode(), e.file_size()));
            reader.finish().unwrap();
        }
        names
    }

    #[test]
    fn the_archive_holds_init_and_ordered_modules_and_is_cached_by_content() {
        let dir = tempfile::tempdir().unwrap();
        let init = dir.path().join("guest-init");
        std::fs::write(&init, b"#!init").unwrap();
        let m0 = dir.path().join("00-virtio_ring.ko");
        let m1 = dir.path().join("01-virtio.ko");
        std::fs::write(&m0, b"ring").unwrap();
        std::fs::write(&m1, b"virtio!").unwrap();
        let cache = dir.path().join("cache");
        let image = cached(&cache, &init, &[m0.clone(), m1.clone()]).unwrap();
        let entries = names(&image);
        assert!(
            entries.contains(&("init".into(), FILE_EXEC, 6)),
            "{entries:?}"
        );
        assert!(entries.contains(&("krunbox/modules/00-virtio_ring.ko".into(), FILE, 4)));
        assert!(entries.contains(&("krunbox/modules/01-virtio.ko".into(), FILE, 7)));
        assert!(entries.contains(&("newroot".into(), DIR, 0)));
        assert!(entries.contains(&("dev/console".into(), CHAR_DEV, 0)));

        assert_eq!(
            cached(&cache, &init, &[m0.clone(), m1.clone()]).unwrap(),
            image
        );
        std::fs::write(&init, b"#!init v2").unwrap();
        let rebuilt = cached(&cache, &init, &[m0, m1]).unwrap();
        assert_ne!(rebuilt, image, "a new guest-init gets a new image");
        assert!(names(&rebuilt).contains(&("init".into(), FILE_EXEC, 9)));
    }

    #[test]
    fn a_missing_guest_init_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let err = cached(dir.path(), &dir.path().join("nope"), &[]).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }
}
