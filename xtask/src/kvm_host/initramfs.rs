//! The KVM host's initramfs, written once per run: the machine's static busybox, `init.sh` as
//! `/init`, the kernel modules in load order, and the run's own files (`/krunbox/command.sh`,
//! `/krunbox/shares`). A few megabytes, so it is not cached.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use krunbox_image::newc::{Newc, FILE, FILE_EXEC};

/// Why the initramfs could not be written.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    /// Reading an input or writing the archive.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was done.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

fn io<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> InitramfsError + 'a {
    move |source| InitramfsError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// What goes into the archive besides the fixed skeleton.
pub struct Contents<'a> {
    /// A statically linked busybox (it runs before any root is mounted).
    pub busybox: &'a Path,
    /// Kernel modules, in load order.
    pub modules: &'a [PathBuf],
    /// The shell script the command runs as (see `command::script`).
    pub command_script: &'a [u8],
    /// `TAG PATH` lines: the read-write shares and where they are mounted.
    pub shares: &'a str,
}

/// The PID 1 script.
const INIT: &str = include_str!("init.sh");

/// Writes the archive to `path`.
pub fn write(path: &Path, contents: &Contents<'_>) -> Result<(), InitramfsError> {
    let busybox = std::fs::read(contents.busybox).map_err(io("read", contents.busybox))?;
    let mut modules = Vec::with_capacity(contents.modules.len());
    for (index, module) in contents.modules.iter().enumerate() {
        let name = module
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // `NN-name.ko` of two directories (the guest's, the KVM host's): renumbered in one.
        let base = name.split_once('-').map_or(name.as_str(), |(_, rest)| rest);
        let bytes = std::fs::read(module).map_err(io("read", module))?;
        modules.push((format!("krunbox/modules/{index:03}-{base}"), bytes));
    }
    let file = std::fs::File::create(path).map_err(io("create", path))?;
    let mut archive = Newc::new(BufWriter::new(file));
    skeleton(&mut archive, &busybox, contents, &modules).map_err(io("write", path))?;
    archive.finish().map(drop).map_err(io("write", path))
}

fn skeleton(
    archive: &mut Newc<impl Write>,
    busybox: &[u8],
    contents: &Contents<'_>,
    modules: &[(String, Vec<u8>)],
) -> std::io::Result<()> {
    archive.dirs(&[
        "bin",
        "dev",
        "proc",
        "sys",
        "newroot",
        "krunbox",
        "krunbox/modules",
    ])?;
    archive.console()?;
    archive.entry("bin/busybox", FILE_EXEC, busybox, None)?;
    archive.entry("init", FILE_EXEC, INIT.as_bytes(), None)?;
    archive.entry("krunbox/command.sh", FILE, contents.command_script, None)?;
    archive.entry("krunbox/shares", FILE, contents.shares.as_bytes(), None)?;
    for (name, bytes) in modules {
        archive.entry(name, FILE, bytes, None)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use krunbox_image::newc::CHAR_DEV;

    fn entries(image: &Path) -> Vec<(String, u32, Vec<u8>)> {
        let mut file = std::fs::File::open(image).unwrap();
        let mut entries = Vec::new();
        loop {
            let mut reader = cpio::NewcReader::new(&mut file).unwrap();
            if reader.entry().is_trailer() {
                break;
            }
            let (name, mode) = (reader.entry().name().to_owned(), reader.entry().mode());
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut reader, &mut data).unwrap();
            entries.push((name, mode, data));
            reader.finish().unwrap();
        }
        entries
    }

    #[test]
    fn the_archive_holds_init_busybox_the_run_files_and_renumbered_modules() {
        let dir = tempfile::tempdir().unwrap();
        let busybox = dir.path().join("busybox");
        std::fs::write(&busybox, b"bb").unwrap();
        let guest = dir.path().join("modules");
        let kvm = dir.path().join("kvm-host-modules");
        std::fs::create_dir_all(&guest).unwrap();
        std::fs::create_dir_all(&kvm).unwrap();
        let modules = [guest.join("00-virtio.ko"), kvm.join("00-kvm.ko")];
        std::fs::write(&modules[0], b"v").unwrap();
        std::fs::write(&modules[1], b"k").unwrap();
        let image = dir.path().join("initramfs.cpio");
        write(
            &image,
            &Contents {
                busybox: &busybox,
                modules: &modules,
                command_script: b"exec 'true'\n",
                shares: "share0 /work\n",
            },
        )
        .unwrap();
        let entries = entries(&image);
        let find = |name: &str| {
            entries
                .iter()
                .find(|(n, _, _)| n == name)
                .map(|(_, mode, data)| (*mode, data.clone()))
        };
        assert_eq!(find("init"), Some((FILE_EXEC, INIT.as_bytes().to_vec())));
        assert_eq!(find("bin/busybox"), Some((FILE_EXEC, b"bb".to_vec())));
        assert_eq!(
            find("krunbox/command.sh"),
            Some((FILE, b"exec 'true'\n".to_vec()))
        );
        assert_eq!(
            find("krunbox/shares"),
            Some((FILE, b"share0 /work\n".to_vec()))
        );
        assert_eq!(
            find("krunbox/modules/000-virtio.ko"),
            Some((FILE, b"v".to_vec()))
        );
        assert_eq!(
            find("krunbox/modules/001-kvm.ko"),
            Some((FILE, b"k".to_vec()))
        );
        assert_eq!(find("dev/console").map(|(mode, _)| mode), Some(CHAR_DEV));
    }

    #[test]
    fn a_missing_input_names_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let err = write(
            &dir.path().join("out.cpio"),
            &Contents {
                busybox: &dir.path().join("no-busybox"),
                modules: &[],
                command_script: b"",
                shares: "",
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("no-busybox"), "{err}");
    }
}
