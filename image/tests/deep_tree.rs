//! rmi/prune remove a tree deeper than the process may hold descriptors open, in its own test
//! binary because it lowers this process's descriptor limit.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use krunbox_image::store::Store;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

/// Builds `depth` nested directories (a file in each) below `top` with openat, the way a
/// path longer than PATH_MAX can be made, holding one descriptor at a time.
fn deep_tree(top: &std::path::Path, depth: usize) {
    std::fs::create_dir(top).unwrap();
    let mut dir =
        nix::fcntl::open(top, OFlag::O_DIRECTORY | OFlag::O_RDONLY, Mode::empty()).unwrap();
    for _ in 0..depth {
        let file = nix::fcntl::openat(
            &dir,
            "file",
            OFlag::O_CREAT | OFlag::O_WRONLY,
            Mode::from_bits_truncate(0o4755),
        )
        .unwrap();
        drop(file);
        nix::sys::stat::mkdirat(&dir, "d", Mode::from_bits_truncate(0o500)).unwrap();
        let next = nix::fcntl::openat(
            &dir,
            "d",
            OFlag::O_DIRECTORY | OFlag::O_RDONLY,
            Mode::empty(),
        )
        .unwrap();
        // Read-only directories, as images have: removal must make them writable.
        nix::sys::stat::fchmod(&dir, Mode::from_bits_truncate(0o555)).unwrap();
        dir = next;
    }
}

#[test]
fn prune_removes_trees_deeper_than_the_descriptor_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let rootfs = store.root().join("rootfs/sha256");
    // An unreferenced unpacked image, a crashed unpack and an import's leftover, each 400
    // levels deep: removing one with a descriptor per level needs 800 under a limit of 64.
    let unreferenced = rootfs.join("ab".repeat(32));
    let partial = rootfs.join(format!("{}.partial", "cd".repeat(32)));
    deep_tree(&unreferenced, 400);
    deep_tree(&partial, 400);
    let import_leftover = store.root().join("tmp/import-1");
    deep_tree(&import_leftover, 400);

    // SAFETY: getrlimit/setrlimit read and write the struct we own.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = 64;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    let report = store.prune().unwrap();
    assert_eq!(report.removed_rootfs.len(), 1, "{report:?}");
    for path in [&unreferenced, &partial, &import_leftover] {
        assert!(!path.exists(), "{} is left", path.display());
    }
    let left: Vec<_> = std::fs::read_dir(&rootfs)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| !n.to_string_lossy().ends_with(".lock"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
