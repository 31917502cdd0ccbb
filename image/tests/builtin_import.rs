//! The built-in image: deterministic layout, import into the store, unpack, shared rootfs.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use krunbox_image::builtin::{build_builtin_image, BUILTIN_IMAGE_NAME, BUILTIN_TAG};
use krunbox_image::layout::{import_layout, ImportOptions};
use krunbox_image::store::Store;

fn busybox_available() -> bool {
    let present = Path::new("/bin/busybox").is_file();
    if !present {
        assert!(
            std::env::var_os("KRUNBOX_REQUIRE_E2E").is_none_or(|v| v != "1"),
            "KRUNBOX_REQUIRE_E2E=1 but /bin/busybox (busybox-static) is missing"
        );
        eprintln!("SKIPPED: /bin/busybox (busybox-static) is not installed");
    }
    present
}

#[test]
fn builtin_image_is_deterministic_and_imports_into_a_shared_rootfs() {
    if !busybox_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let a = build_builtin_image(&tmp.path().join("a")).unwrap();
    let b = build_builtin_image(&tmp.path().join("b")).unwrap();
    assert_eq!(
        a.manifest.digest, b.manifest.digest,
        "same busybox → same digests"
    );
    assert_eq!(a.diff_id, b.diff_id);

    let store = Store::open(&tmp.path().join("store")).unwrap();
    let options = ImportOptions {
        tag: Some(BUILTIN_TAG.into()),
        name: Some(BUILTIN_IMAGE_NAME.into()),
        ..Default::default()
    };
    let record = import_layout(&store, &a.layout, &options).unwrap();
    assert_eq!(record.name, "docker.io/krunbox/default:latest");
    assert_eq!(record.display_name(), "krunbox/default:latest");
    assert_eq!(record.manifest, a.manifest.digest);
    assert_eq!(store.find_image("krunbox/default").unwrap(), record);
    assert_eq!(store.find_image(&record.config.hex()[..8]).unwrap(), record);

    let first = store.lease_rootfs(&record).unwrap();
    let root = first.path().to_owned();
    let os_release = std::fs::read_to_string(root.join("etc/os-release")).unwrap();
    assert!(
        os_release.contains("NAME=\"krunbox default image\""),
        "{os_release}"
    );
    assert!(os_release.contains("ID=krunbox"));
    assert_eq!(
        std::fs::read_link(root.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert_eq!(
        std::fs::read_link(root.join("usr/bin/awk")).unwrap(),
        Path::new("../../bin/busybox")
    );
    assert_eq!(
        std::fs::metadata(root.join("tmp")).unwrap().mode() & 0o7777,
        0o1777
    );
    let out = std::process::Command::new(root.join("bin/busybox"))
        .arg("true")
        .status()
        .unwrap();
    assert!(out.success());

    // A second sandbox gets the very same directory: nothing copied.
    let inode = std::fs::metadata(root.join("bin/busybox")).unwrap().ino();
    let second = store.lease_rootfs(&record).unwrap();
    assert_eq!(second.path(), root);
    assert_eq!(
        std::fs::metadata(second.path().join("bin/busybox"))
            .unwrap()
            .ino(),
        inode
    );

    let config = store.image_config(&record).unwrap();
    assert_eq!(config.cmd.unwrap(), ["/bin/sh"]);

    // While leased, rmi keeps the rootfs; once released, prune removes it and the blobs.
    let (_, report) = store.remove_image("krunbox/default:latest").unwrap();
    assert_eq!(report.rootfs_in_use, vec![record.config.clone()]);
    assert!(root.is_dir());
    assert!(!store.has_blob(&record.manifest));
    drop((first, second));
    let report = store.prune().unwrap();
    assert_eq!(report.removed_rootfs, vec![record.config.clone()]);
    assert!(!root.exists());
    assert!(store.list_images().unwrap().is_empty());
}
