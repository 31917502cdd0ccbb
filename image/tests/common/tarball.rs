//! Tarballs crafted byte by byte (no sanitising by the tar crate) and a root to apply them
//! to next to a host directory that must stay untouched.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use krunbox_image::unpack::{unpack_layer, UnpackError};

pub enum E<'a> {
    Dir(&'a str, u32),
    File(&'a str, &'a [u8]),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    Char(&'a str),
    Fifo(&'a str),
    /// A PAX header overriding the next entry's path.
    PaxPath(&'a str),
    /// A GNU long-name entry naming the next entry.
    LongName(&'a str),
}

/// Builds a tar with raw names (no sanitising by the tar crate).
pub fn tarball(entries: &[E<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let (kind, name, link, data, mode): (tar::EntryType, &str, &str, &[u8], u32) = match entry {
            E::Dir(n, mode) => (tar::EntryType::Directory, n, "", b"", *mode),
            E::File(n, d) => (tar::EntryType::Regular, n, "", d, 0o644),
            E::Symlink(n, t) => (tar::EntryType::Symlink, n, t, b"", 0o777),
            E::Hardlink(n, t) => (tar::EntryType::Link, n, t, b"", 0o644),
            E::Char(n) => (tar::EntryType::Char, n, "", b"", 0o666),
            E::Fifo(n) => (tar::EntryType::Fifo, n, "", b"", 0o644),
            E::PaxPath(p) => {
                let record = pax_record("path", p);
                (
                    tar::EntryType::XHeader,
                    "PaxHeader",
                    "",
                    Box::leak(record.into_boxed_slice()),
                    0o644,
                )
            }
            E::LongName(n) => {
                let mut bytes = n.as_bytes().to_vec();
                bytes.push(0);
                (
                    tar::EntryType::GNULongName,
                    "././@LongLink",
                    "",
                    Box::leak(bytes.into_boxed_slice()),
                    0o644,
                )
            }
        };
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_size(data.len() as u64);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1_600_000_000);
        let old = header.as_old_mut();
        old.name = [0; 100];
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        old.linkname = [0; 100];
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        header.set_cksum();
        builder.append(&header, data).unwrap();
    }
    builder.into_inner().unwrap()
}

pub fn pax_record(key: &str, value: &str) -> Vec<u8> {
    let body = format!(" {key}={value}\n");
    let mut len = body.len() + 1;
    while format!("{len}{body}").len() != len {
        len += 1;
    }
    format!("{len}{body}").into_bytes()
}

pub struct Sandbox {
    _tmp: tempfile::TempDir,
    pub root: std::path::PathBuf,
    pub outside: std::path::PathBuf,
}

pub fn sandbox() -> Sandbox {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret"), b"host secret").unwrap();
    Sandbox {
        _tmp: tmp,
        root,
        outside,
    }
}

pub fn apply(
    root: &Path,
    entries: &[E<'_>],
) -> Result<krunbox_image::unpack::UnpackStats, UnpackError> {
    unpack_layer(&tarball(entries)[..], root)
}

pub fn assert_outside_untouched(s: &Sandbox) {
    let names: Vec<_> = std::fs::read_dir(&s.outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        vec![std::ffi::OsString::from("secret")],
        "nothing written outside the root"
    );
    assert_eq!(
        std::fs::read(s.outside.join("secret")).unwrap(),
        b"host secret"
    );
    assert_eq!(
        std::fs::metadata(s.outside.join("secret")).unwrap().nlink(),
        1,
        "no hardlink to a host file"
    );
    assert!(!s.root.parent().unwrap().join("evil").exists());
}
