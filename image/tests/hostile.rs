//! Hostile layers and archives that attack resources rather than paths: header bombs, entry
//! and byte floods, deep trees, setuid files, FIFOs where a file is expected, and the store's
//! permissions.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use krunbox_image::layout::{import_oci_archive, ImportOptions, LayoutError};
use krunbox_image::limits::{UnpackLimits, MAX_ENTRY_HEADERS};
use krunbox_image::store::{Store, StoreError};
use krunbox_image::unpack::{unpack_layer, unpack_layer_limited, UnpackError, UnpackStats};

mod common;
use common::tarball::{apply, assert_outside_untouched, pax_record, sandbox, tarball, E};

/// The peak resident size of this process so far, in KiB.
fn peak_rss_kib() -> i64 {
    // SAFETY: getrusage writes into the zeroed struct we own; RUSAGE_SELF is always valid.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, &mut usage), 0);
        usage.ru_maxrss
    }
}

fn gzip_fast(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

fn gzip_best(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

/// A raw header announcing `size` bytes of `kind`.
fn header(kind: tar::EntryType, name: &str, size: u64) -> [u8; 512] {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(0o644);
    header.set_size(size);
    header.set_mtime(1_600_000_000);
    let old = header.as_old_mut();
    old.name = [0; 100];
    old.name[..name.len()].copy_from_slice(name.as_bytes());
    header.set_cksum();
    let mut block = [0u8; 512];
    block.copy_from_slice(header.as_bytes());
    block
}

#[test]
fn a_gzip_bomb_of_a_long_name_is_refused_quickly_with_bounded_memory() {
    let s = sandbox();
    // A GNU long-name header announcing 8 GiB, then 1 GiB of zeros as concatenated gzip
    // members of 1 MiB each: about 1 MiB of gzip in all.
    let mut first = header(tar::EntryType::GNULongName, "././@LongLink", 8 << 30).to_vec();
    first.resize(1 << 20, 0);
    let mut bomb = gzip_fast(&first);
    let zeros = gzip_best(&vec![0u8; 1 << 20]);
    for _ in 0..1023 {
        bomb.extend_from_slice(&zeros);
    }
    assert!(bomb.len() < 4 << 20, "the bomb is small: {}", bomb.len());
    let before = peak_rss_kib();
    let started = Instant::now();
    let err = unpack_layer(&bomb[..], &s.root).unwrap_err();
    let elapsed = started.elapsed();
    let grown_mib = (peak_rss_kib() - before) / 1024;
    assert!(
        matches!(err, UnpackError::HeadersTooLarge { after: None }),
        "{err}"
    );
    assert!(err.to_string().contains("long name"), "{err}");
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    assert!(grown_mib < 64, "memory grew by {grown_mib} MiB");
    assert_eq!(std::fs::read_dir(&s.root).unwrap().count(), 0);
    assert_outside_untouched(&s);
}

#[test]
fn a_pax_header_over_the_limit_is_refused_and_one_under_it_applies() {
    let s = sandbox();
    let big = "v".repeat(MAX_ENTRY_HEADERS as usize + 1);
    let record = pax_record("SCHILY.xattr.user.big", &big);
    let mut layer = header(tar::EntryType::XHeader, "PaxHeader", record.len() as u64).to_vec();
    layer.extend_from_slice(&record);
    layer.resize(layer.len().div_ceil(512) * 512, 0);
    layer.extend_from_slice(&tarball(&[E::File("after", b"x")]));
    let err = unpack_layer(&layer[..], &s.root).unwrap_err();
    assert!(matches!(err, UnpackError::HeadersTooLarge { .. }), "{err}");
    assert!(!s.root.join("after").exists());

    // A PAX path of a few KiB (real images have long paths) is fine.
    let long = format!("{}f", "dir/".repeat(100));
    apply(&s.root, &[E::PaxPath(&long), E::File("ignored", b"x")]).unwrap();
    assert!(s.root.join(&long).is_file());
}

#[test]
fn entries_bytes_and_depth_are_capped_per_image() {
    let s = sandbox();
    let limits = UnpackLimits {
        max_bytes: 100,
        max_entries: 10,
        max_depth: 4,
    };
    let files: Vec<String> = (0..10).map(|i| format!("f{i}")).collect();
    let ten: Vec<E<'_>> = files.iter().map(|n| E::File(n, b"x")).collect();
    let stats = unpack_layer_limited(
        &tarball(&ten)[..],
        &s.root,
        &limits,
        &UnpackStats::default(),
    )
    .unwrap();
    assert_eq!(stats.tar_entries, 10);
    // The next layer of the same image brings the 11th entry.
    let err = unpack_layer_limited(
        &tarball(&[E::File("eleventh", b"x")])[..],
        &s.root,
        &limits,
        &stats,
    )
    .unwrap_err();
    assert!(
        matches!(&err, UnpackError::TooManyEntries { limit: 10, entry } if entry == Path::new("eleventh")),
        "{err}"
    );
    assert!(!s.root.join("eleventh").exists());

    let big = [b'b'; 101];
    let err = unpack_layer_limited(
        &tarball(&[E::File("big", &big)])[..],
        &s.root,
        &limits,
        &UnpackStats::default(),
    )
    .unwrap_err();
    assert!(
        matches!(err, UnpackError::TooManyBytes { limit: 100, .. }),
        "{err}"
    );
    assert!(!s.root.join("big").exists(), "refused before writing");
    let sixty = [b's'; 60];
    let err = unpack_layer_limited(
        &tarball(&[E::File("one", &sixty), E::File("two", &sixty)])[..],
        &s.root,
        &limits,
        &UnpackStats::default(),
    )
    .unwrap_err();
    assert!(
        matches!(&err, UnpackError::TooManyBytes { entry, .. } if entry == Path::new("two")),
        "{err}"
    );

    let err = unpack_layer_limited(
        &tarball(&[E::File("a/b/c/d/e", b"x")])[..],
        &s.root,
        &limits,
        &UnpackStats::default(),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            UnpackError::TooDeep {
                depth: 5,
                limit: 4,
                ..
            }
        ),
        "{err}"
    );
    assert!(!s.root.join("a").exists());
    unpack_layer_limited(
        &tarball(&[E::File("a/b/c/d", b"x")])[..],
        &s.root,
        &limits,
        &UnpackStats::default(),
    )
    .unwrap();
    assert_outside_untouched(&s);
}

#[test]
fn the_default_depth_cap_refuses_a_deep_tree() {
    let s = sandbox();
    let deep = format!("{}f", "d/".repeat(300));
    let err = apply(&s.root, &[E::LongName(&deep), E::File("x", b"x")]).unwrap_err();
    assert!(
        matches!(
            err,
            UnpackError::TooDeep {
                depth: 301,
                limit: 256,
                ..
            }
        ),
        "{err}"
    );
    assert!(!s.root.join("d").exists());
}

#[test]
fn setuid_bits_are_kept_for_the_guest_and_the_store_is_private() {
    // Design: the guest needs setuid binaries (su, ping), so the bits stay; on the host
    // no other user can reach them because the store root is 0700 and owned by us.
    let s = sandbox();
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_path("bin/su").unwrap();
    header.set_mode(0o4755);
    header.set_size(2);
    header.set_cksum();
    let mut builder = tar::Builder::new(Vec::new());
    builder.append(&header, &b"#!"[..]).unwrap();
    unpack_layer(&builder.into_inner().unwrap()[..], &s.root).unwrap();
    let mode = std::fs::metadata(s.root.join("bin/su")).unwrap().mode();
    assert_eq!(mode & 0o7777, 0o4755);

    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let store = Store::open(&root).unwrap();
    for dir in [
        "",
        "blobs",
        "blobs/sha256",
        "tmp",
        "rootfs",
        "rootfs/sha256",
    ] {
        let mode = std::fs::metadata(store.root().join(dir)).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700, "{dir:?} is {mode:o}");
    }
    // A store made loose (by an older krunbox, or by hand) is made private again.
    for dir in ["", "rootfs/sha256"] {
        std::fs::set_permissions(root.join(dir), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    Store::open(&root).unwrap();
    for dir in ["", "rootfs/sha256"] {
        assert_eq!(
            std::fs::metadata(root.join(dir)).unwrap().mode() & 0o777,
            0o700
        );
    }
    if nix::unistd::geteuid().is_root() {
        // A store another user owns (they could have planted it) is refused.
        let planted = tmp.path().join("planted");
        std::fs::create_dir(&planted).unwrap();
        std::os::unix::fs::chown(&planted, Some(65534), Some(65534)).unwrap();
        let err = Store::open(&planted).unwrap_err();
        assert!(
            matches!(err, StoreError::NotOwned { owner: 65534, .. }),
            "{err}"
        );
    }
}

/// Runs `f` on a thread and fails the test if it has not returned within 10 s (a blocked
/// open of a FIFO).
fn within_10s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("blocked on a FIFO")
}

#[test]
fn fifos_are_created_not_opened_and_never_read_as_files() {
    let s = sandbox();
    apply(&s.root, &[E::Fifo("index.json")]).unwrap();
    assert!(std::fs::symlink_metadata(s.root.join("index.json"))
        .unwrap()
        .file_type()
        .is_fifo());

    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    // An OCI archive whose index.json is a FIFO: refused, not read (it would block forever
    // with the store's lock held).
    let archive = tmp.path().join("fifo-index.tar");
    std::fs::write(
        &archive,
        tarball(&[
            E::File("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
            E::Fifo("index.json"),
        ]),
    )
    .unwrap();
    let (st, a) = (store.clone(), archive.clone());
    let err =
        within_10s(move || import_oci_archive(&st, &a, &ImportOptions::default())).unwrap_err();
    assert!(matches!(err, LayoutError::Io { .. }), "{err}");
    assert!(err.to_string().contains("not a regular file"), "{err}");

    // The archive path itself is a FIFO.
    let fifo = tmp.path().join("image.tar");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let (st, f) = (store.clone(), fifo.clone());
    let err =
        within_10s(move || import_oci_archive(&st, &f, &ImportOptions::default())).unwrap_err();
    assert!(err.to_string().contains("not a regular file"), "{err}");
    let f = fifo.clone();
    let err =
        within_10s(move || krunbox_image::source::Source::parse(f.to_str().unwrap())).unwrap_err();
    assert!(err.to_string().contains("not a regular file"), "{err}");
    // Nothing of the imports is left behind, and prune (the exclusive lock) is not blocked.
    within_10s(move || store.prune()).unwrap();
}
