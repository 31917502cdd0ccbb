//! Images end to end: an image built here, pushed to a real registry (Debian's
//! docker-registry on 127.0.0.1) and run with `krunbox run` under the QEMU backend; image
//! config and its CLI overrides; writes that stay in their sandbox. Each test has its own
//! image store (a private data directory).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use krunbox_image::auth::Credentials;
use krunbox_image::local_registry::{LocalRegistry, LocalRegistryOptions};
use krunbox_image::reference::Reference;
use krunbox_tests::{e2e, text, Harness};

#[path = "shared/test_image.rs"]
mod test_image;
use test_image::{write_image, OS_RELEASE, TAG};

/// A registry, or `None` after a loud skip (a failure under KRUNBOX_REQUIRE_E2E=1).
fn registry() -> Option<LocalRegistry> {
    if LocalRegistry::binary().is_none() {
        assert!(
            std::env::var("KRUNBOX_REQUIRE_E2E").is_err(),
            "KRUNBOX_REQUIRE_E2E is set but docker-registry is not installed"
        );
        eprintln!("SKIPPED: docker-registry is not installed");
        return None;
    }
    Some(LocalRegistry::start(&LocalRegistryOptions::default()).expect("start docker-registry"))
}

/// `krunbox ARGS` with the private data directory `data`.
fn krunbox(k: &Harness, data: &Path, args: &[&str]) -> Output {
    k.krunbox(args)
        .env("KRUNBOX_DATA_DIR", data)
        .stdin(Stdio::null())
        .output()
        .expect("run krunbox")
}

fn assert_ok(out: &Output) {
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
}

/// The unpacked image directories in a store.
fn unpacked(data: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(data.join("store/rootfs/sha256"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_pushed_image_is_pulled_and_run_with_its_config_and_cli_overrides() {
    let Some(k) = e2e("a_pushed_image_is_pulled_and_run_with_its_config_and_cli_overrides") else {
        return;
    };
    let Some(registry) = registry() else { return };
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    write_image(&layout);
    let image = format!("{}/e2e/img:{TAG}", registry.address());
    let target = Reference::parse(&image).unwrap();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(krunbox_image::push::push_layout(
            &layout,
            Some(TAG),
            &target,
            &Credentials::Anonymous,
        ))
        .expect("push the test image");
    let data = k.private_data_dir();

    // Pulled on first use; CMD after `--` replaces the image's Cmd.
    let out = krunbox(
        &k,
        data.path(),
        &["run", &image, "--", "cat", "/etc/os-release"],
    );
    assert_ok(&out);
    assert_eq!(text(&out.stdout), OS_RELEASE);

    // Now in the store: no registry needed, and the image's Cmd, Env, WorkingDir and User.
    drop(registry);
    let out = krunbox(&k, data.path(), &["run", "--pull", "never", &image]);
    assert_ok(&out);
    assert_eq!(
        text(&out.stdout),
        "from-image\n/srv\n1000\n1000\n/home/app\n"
    );

    // Docker's overrides: --entrypoint drops the image's Cmd, -u, -w, -e.
    let out = krunbox(
        &k,
        data.path(),
        &[
            "run",
            "--pull",
            "never",
            "--entrypoint",
            "/bin/sh",
            "-u",
            "root",
            "-w",
            "/tmp",
            "-e",
            "GREETING=from-cli",
            &image,
            "--",
            "-c",
            "echo $GREETING; pwd; id -u; echo $HOME; echo $PATH",
        ],
    );
    assert_ok(&out);
    assert_eq!(text(&out.stdout), "from-cli\n/tmp\n0\n/root\n/bin\n");

    let out = krunbox(&k, data.path(), &["images"]);
    assert_ok(&out);
    assert!(
        text(&out.stdout).contains(&format!("{}/e2e/img:{TAG}", target.registry)),
        "{}",
        text(&out.stdout)
    );
    let out = krunbox(&k, data.path(), &["rmi", &image]);
    assert_ok(&out);
    assert!(
        unpacked(data.path()).is_empty(),
        "rmi removes the unpacked tree"
    );
    k.assert_nothing_left(std::time::Duration::from_secs(15));
}

#[test]
fn writes_in_a_sandbox_reach_neither_the_image_nor_the_next_sandbox() {
    let Some(k) = e2e("writes_in_a_sandbox_reach_neither_the_image_nor_the_next_sandbox") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    write_image(&layout);
    let layout = layout.to_str().unwrap().to_owned();
    let data = k.private_data_dir();

    let out = krunbox(
        &k,
        data.path(),
        &[
            "run",
            "-u",
            "root",
            &layout,
            "--",
            "sh",
            "-c",
            "echo changed > /etc/os-release && echo new > /added && rm /bin/ls && \
             cat /etc/os-release /added && test ! -e /bin/ls && echo gone",
        ],
    );
    assert_ok(&out);
    assert_eq!(text(&out.stdout), "changed\nnew\ngone\n");

    let trees = unpacked(data.path());
    assert_eq!(trees.len(), 1, "one unpacked image: {trees:?}");
    let tree = &trees[0];
    assert_eq!(
        std::fs::read_to_string(tree.join("etc/os-release")).unwrap(),
        OS_RELEASE,
        "the store's copy is untouched"
    );
    assert!(!tree.join("added").exists());
    assert!(tree.join("bin/ls").symlink_metadata().is_ok());
    let inode = std::fs::metadata(tree.join("bin/busybox")).unwrap().ino();

    let out = krunbox(
        &k,
        data.path(),
        &[
            "run",
            &layout,
            "--",
            "sh",
            "-c",
            "cat /etc/os-release; test -e /added || echo no-added; test -L /bin/ls && echo has-ls",
        ],
    );
    assert_ok(&out);
    assert_eq!(text(&out.stdout), format!("{OS_RELEASE}no-added\nhas-ls\n"));
    assert_eq!(
        unpacked(data.path()),
        trees,
        "the second sandbox copied nothing"
    );
    assert_eq!(
        std::fs::metadata(tree.join("bin/busybox")).unwrap().ino(),
        inode,
        "and unpacked nothing again"
    );
    k.assert_nothing_left(std::time::Duration::from_secs(15));
}
