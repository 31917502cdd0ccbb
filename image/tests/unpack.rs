//! Layer unpacking: OCI semantics (whiteouts, opaque dirs, links, metadata) and every
//! path-traversal trick, with tarballs crafted byte by byte where the tar crate would refuse.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use krunbox_image::unpack::{unpack_layer, UnpackError};

mod common;
use common::tarball::{apply, assert_outside_untouched, sandbox, tarball, E};

#[test]
fn dotdot_components_are_refused() {
    for name in ["../evil", "a/../../evil", "./../evil", "a/b/../../../evil"] {
        let s = sandbox();
        let err = apply(&s.root, &[E::File(name, b"x")]).unwrap_err();
        assert!(
            matches!(&err, UnpackError::ParentComponent { entry } if entry == Path::new(name)),
            "{name}: {err}"
        );
        assert!(
            err.to_string().contains(name),
            "the error names the entry: {err}"
        );
        assert_outside_untouched(&s);
    }
}

#[test]
fn absolute_paths_are_confined_like_docker() {
    let s = sandbox();
    let outside = s.outside.join("abs-file");
    let name = outside.to_str().unwrap().to_owned();
    apply(&s.root, &[E::File(&name, b"inside")]).unwrap();
    assert!(
        !outside.exists(),
        "an absolute entry never reaches the host path"
    );
    let inside = s.root.join(name.trim_start_matches('/'));
    assert_eq!(std::fs::read(inside).unwrap(), b"inside");
}

#[test]
fn symlinks_escaping_by_relative_target_are_refused() {
    for (name, target) in [
        ("esc", "../outside"),
        ("sub/esc", "../../outside/secret"),
        ("a/b/c", "../../../.."),
    ] {
        let s = sandbox();
        let err = apply(&s.root, &[E::Symlink(name, target)]).unwrap_err();
        assert!(
            matches!(err, UnpackError::SymlinkEscape { .. }),
            "{name} -> {target}: {err}"
        );
        assert!(err.to_string().contains(name));
    }
    // Relative targets that stay inside, and absolute ones (resolved in the guest's root), are fine.
    let s = sandbox();
    apply(
        &s.root,
        &[
            E::Symlink("usr/bin/sh", "../../bin/busybox"),
            E::Symlink("etc/localtime", "/usr/share/zoneinfo/UTC"),
        ],
    )
    .unwrap();
    assert_eq!(
        std::fs::read_link(s.root.join("usr/bin/sh")).unwrap(),
        Path::new("../../bin/busybox")
    );
}

#[test]
fn writing_through_a_symlinked_parent_is_refused() {
    let s = sandbox();
    let target = s.outside.to_str().unwrap().to_owned();
    let err = apply(
        &s.root,
        &[E::Symlink("a", &target), E::File("a/passwd", b"pwned")],
    )
    .unwrap_err();
    match &err {
        UnpackError::SymlinkedParent { entry, symlink } => {
            assert_eq!(entry, Path::new("a/passwd"));
            assert_eq!(symlink, Path::new("a"));
        }
        other => panic!("unexpected {other}"),
    }
    assert_outside_untouched(&s);

    // Also for a symlink that points inside, and in a later layer, and for directories.
    let s = sandbox();
    apply(
        &s.root,
        &[E::Dir("real", 0o755), E::Symlink("alias", "real")],
    )
    .unwrap();
    assert!(matches!(
        apply(&s.root, &[E::File("alias/f", b"x")]),
        Err(UnpackError::SymlinkedParent { .. })
    ));
    assert!(matches!(
        apply(&s.root, &[E::Dir("alias/d", 0o755)]),
        Err(UnpackError::SymlinkedParent { .. })
    ));
    assert!(!s.root.join("real/f").exists());
}

#[test]
fn hardlinks_outside_or_through_symlinks_are_refused() {
    let s = sandbox();
    let err = apply(&s.root, &[E::Hardlink("h", "../outside/secret")]).unwrap_err();
    assert!(matches!(err, UnpackError::BadHardlink { .. }), "{err}");
    assert!(err.to_string().contains("\"h\""));

    let abs = s.outside.join("secret");
    let err = apply(&s.root, &[E::Hardlink("h", abs.to_str().unwrap())]).unwrap_err();
    assert!(
        matches!(err, UnpackError::BadHardlink { reason, .. } if reason.contains("does not exist")),
        "absolute targets resolve inside the root"
    );

    let target = s.outside.to_str().unwrap().to_owned();
    let err = apply(
        &s.root,
        &[E::Symlink("link", &target), E::Hardlink("h", "link/secret")],
    )
    .unwrap_err();
    assert!(
        matches!(err, UnpackError::BadHardlink { reason, .. } if reason.contains("symlink")),
        "through a symlinked dir"
    );
    assert_outside_untouched(&s);
}

#[test]
fn a_symlink_at_the_leaf_is_replaced_not_followed() {
    let s = sandbox();
    let target = s.outside.join("secret");
    apply(
        &s.root,
        &[
            E::Symlink("f", target.to_str().unwrap()),
            E::File("f", b"new content"),
        ],
    )
    .unwrap();
    assert!(std::fs::symlink_metadata(s.root.join("f"))
        .unwrap()
        .is_file());
    assert_eq!(std::fs::read(s.root.join("f")).unwrap(), b"new content");
    assert_outside_untouched(&s);
}

#[test]
fn whiteouts_cannot_reach_outside() {
    let s = sandbox();
    assert!(matches!(
        apply(&s.root, &[E::File("../.wh.secret", b"")]),
        Err(UnpackError::ParentComponent { .. })
    ));
    let target = s.outside.to_str().unwrap().to_owned();
    let err = apply(
        &s.root,
        &[E::Symlink("link", &target), E::File("link/.wh.secret", b"")],
    )
    .unwrap_err();
    assert!(matches!(err, UnpackError::SymlinkedParent { .. }), "{err}");
    let err = apply(&s.root, &[E::File("link/.wh..wh..opq", b"")]).unwrap_err();
    assert!(matches!(err, UnpackError::SymlinkedParent { .. }), "{err}");
    assert_outside_untouched(&s);
}

#[test]
fn pax_and_gnu_long_names_are_checked_too() {
    let s = sandbox();
    let err = apply(
        &s.root,
        &[E::PaxPath("../../pax-evil"), E::File("harmless", b"x")],
    )
    .unwrap_err();
    assert!(
        matches!(&err, UnpackError::ParentComponent { entry } if entry == Path::new("../../pax-evil")),
        "{err}"
    );
    let long = format!("x/../../{}", "a".repeat(120));
    let err = apply(&s.root, &[E::LongName(&long), E::File("short", b"x")]).unwrap_err();
    assert!(matches!(err, UnpackError::ParentComponent { .. }), "{err}");
    assert!(!s.root.join("harmless").exists() && !s.root.join("short").exists());
    assert_outside_untouched(&s);
}

#[test]
fn devices_are_skipped_and_fifos_created() {
    let s = sandbox();
    let stats = apply(
        &s.root,
        &[
            E::Dir("dev", 0o755),
            E::Char("dev/null"),
            E::Fifo("run/fifo"),
        ],
    )
    .unwrap();
    assert_eq!(stats.skipped_devices, 1);
    assert!(!s.root.join("dev/null").exists());
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::symlink_metadata(s.root.join("run/fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
}

#[test]
fn whiteouts_and_opaque_directories_follow_oci_semantics() {
    let s = sandbox();
    apply(
        &s.root,
        &[
            E::File("etc/keep", b"1"),
            E::File("etc/drop", b"1"),
            E::File("opt/old/a", b"1"),
            E::File("opt/old2", b"1"),
            E::File("var/x", b"1"),
        ],
    )
    .unwrap();
    apply(
        &s.root,
        &[
            E::File("etc/.wh.drop", b""),
            // An entry of this layer that precedes the opaque marker survives it.
            E::File("opt/new-before", b"2"),
            E::File("opt/.wh..wh..opq", b""),
            E::File("opt/new-after", b"2"),
            E::File("var/.wh.x", b""),
            E::File("nonexistent/.wh.y", b""),
        ],
    )
    .unwrap();
    assert!(s.root.join("etc/keep").exists());
    assert!(!s.root.join("etc/drop").exists());
    let mut opt: Vec<_> = std::fs::read_dir(s.root.join("opt"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    opt.sort();
    assert_eq!(opt, ["new-after", "new-before"]);
    assert!(!s.root.join("var/x").exists());
    assert!(
        !s.root.join("etc/.wh.drop").exists(),
        "whiteout markers are not materialised"
    );
}

#[test]
fn hardlinks_modes_mtimes_and_ownership_are_kept() {
    let s = sandbox();
    let mut tar = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o555);
    dir.set_mtime(1_500_000_000);
    dir.set_uid(1234);
    dir.set_gid(5678);
    dir.set_size(0);
    tar.append_data(&mut dir, "ro/", std::io::empty()).unwrap();
    let mut file = tar::Header::new_gnu();
    file.set_mode(0o4755);
    file.set_mtime(1_400_000_000);
    file.set_uid(1234);
    file.set_gid(5678);
    file.set_size(5);
    tar.append_data(&mut file, "ro/tool", &b"hello"[..])
        .unwrap();
    let mut link = tar::Header::new_gnu();
    link.set_entry_type(tar::EntryType::Link);
    link.set_size(0);
    link.set_mode(0o644);
    link.set_uid(0);
    link.set_gid(0);
    link.set_mtime(0);
    tar.append_link(&mut link, "ro/tool-link", "ro/tool")
        .unwrap();
    // xattrs travel as PAX SCHILY.xattr records.
    tar.append_pax_extensions([("SCHILY.xattr.user.krunbox", &b"yes"[..])])
        .unwrap();
    let mut x = tar::Header::new_gnu();
    x.set_mode(0o644);
    x.set_size(1);
    x.set_uid(0);
    x.set_gid(0);
    x.set_mtime(0);
    tar.append_data(&mut x, "xattr-file", &b"x"[..]).unwrap();
    let layer = tar.into_inner().unwrap();
    unpack_layer(&layer[..], &s.root).unwrap();

    let tool = std::fs::metadata(s.root.join("ro/tool")).unwrap();
    let link = std::fs::metadata(s.root.join("ro/tool-link")).unwrap();
    assert_eq!(tool.ino(), link.ino(), "hardlink shares the inode");
    assert_eq!(tool.mtime(), 1_400_000_000);
    let ro = std::fs::metadata(s.root.join("ro")).unwrap();
    assert_eq!(
        ro.mtime(),
        1_500_000_000,
        "directory mtime set after its children"
    );
    if nix::unistd::geteuid().is_root() {
        assert_eq!((tool.uid(), tool.gid()), (1234, 5678));
        assert_eq!(
            tool.permissions().mode() & 0o7777,
            0o4755,
            "setuid survives chown (mode after chown)"
        );
        assert_eq!(ro.permissions().mode() & 0o777, 0o555);
    } else {
        assert_eq!(
            ro.permissions().mode() & 0o700,
            0o700,
            "without root, dirs stay writable for later layers"
        );
    }
    let mut value = [0u8; 8];
    let path = std::ffi::CString::new(s.root.join("xattr-file").to_str().unwrap()).unwrap();
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            c"user.krunbox".as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    if n >= 0 {
        assert_eq!(&value[..n as usize], b"yes");
    } else {
        eprintln!("note: this filesystem does not keep user xattrs; xattr check skipped");
    }

    // A second layer can still write into the read-only directory and replace files.
    apply(
        &s.root,
        &[E::File("ro/added", b"2"), E::File("ro/tool", b"replaced")],
    )
    .unwrap();
    assert_eq!(
        std::fs::read(s.root.join("ro/tool-link")).unwrap(),
        b"hello",
        "replacing breaks the link, not the other name"
    );
}

#[test]
fn a_large_zstd_layer_streams_through() {
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let plain = tarball(&[E::File("big", &big)]);
    let zst = zstd::encode_all(&plain[..], 3).unwrap();
    let s = sandbox();
    unpack_layer(&zst[..], &s.root).unwrap();
    assert_eq!(std::fs::read(s.root.join("big")).unwrap(), big);
}

#[test]
fn gzip_zstd_and_plain_layers_are_detected() {
    let plain = tarball(&[E::File("f", b"content")]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&plain).unwrap();
    let gz = gz.finish().unwrap();
    let zst = zstd::encode_all(&plain[..], 3).unwrap();
    // Several frames with a skippable frame between them (as zstd:chunked layers have).
    let (first, second) = plain.split_at(plain.len() / 3);
    let mut frames = zstd::encode_all(first, 1).unwrap();
    frames.extend_from_slice(&0x184D_2A50u32.to_le_bytes());
    frames.extend_from_slice(&4u32.to_le_bytes());
    frames.extend_from_slice(b"skip");
    frames.extend_from_slice(&zstd::encode_all(second, 19).unwrap());
    for layer in [plain, gz, zst, frames] {
        let s = sandbox();
        unpack_layer(&layer[..], &s.root).unwrap();
        assert_eq!(std::fs::read(s.root.join("f")).unwrap(), b"content");
    }
    let s = sandbox();
    assert!(matches!(
        unpack_layer(&[0x1f, 0x8b, 0, 1, 2][..], &s.root),
        Err(UnpackError::Archive(_))
    ));
}
