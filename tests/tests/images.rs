//! Images end to end: an image built here, pushed to a real registry (Debian's
//! docker-registry on 127.0.0.1) and run with `krunbox run` under the QEMU backend; image
//! config and its CLI overrides; writes that stay in their sandbox. Each test has its own
//! image store (a private data directory).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use krunbox_image::auth::Credentials;
use krunbox_image::config::{ImageConfig, ImageConfigFile, RootFs};
use krunbox_image::digest::Digest;
use krunbox_image::layout::LayoutWriter;
use krunbox_image::local_registry::{LocalRegistry, LocalRegistryOptions};
use krunbox_image::manifest::{OCI_CONFIG, OCI_LAYER_GZIP};
use krunbox_image::platform::Platform;
use krunbox_image::reference::Reference;
use krunbox_tests::{e2e, text, Harness};

const OS_RELEASE: &str = "NAME=\"krunbox e2e image\"\nID=krunbox-e2e\nVERSION_ID=1\n";
const TAG: &str = "v1";

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(1_700_000_000);
    h.set_uid(0);
    h.set_gid(0);
    h
}

/// An OCI layout with one image: busybox, a user `app` (1000:1000), our os-release, and
/// run defaults that the tests check in the guest.
fn write_image(dir: &Path) {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, mode) in [
        ("bin/", 0o755),
        ("etc/", 0o755),
        ("proc/", 0o555),
        ("sys/", 0o555),
        ("dev/", 0o755),
        ("run/", 0o755),
        ("tmp/", 0o1777),
        ("root/", 0o700),
        ("srv/", 0o755),
        ("home/", 0o755),
    ] {
        tar.append_data(
            &mut header(tar::EntryType::Directory, mode, 0),
            path,
            std::io::empty(),
        )
        .unwrap();
    }
    let mut home = header(tar::EntryType::Directory, 0o755, 0);
    home.set_uid(1000);
    home.set_gid(1000);
    tar.append_data(&mut home, "home/app/", std::io::empty())
        .unwrap();
    let binary = std::fs::read(krunbox_tests::busybox()).unwrap();
    tar.append_data(
        &mut header(tar::EntryType::Regular, 0o755, binary.len() as u64),
        "bin/busybox",
        &binary[..],
    )
    .unwrap();
    for (path, content) in [
        ("etc/os-release", OS_RELEASE),
        (
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
        ),
        ("etc/group", "root:x:0:\napp:x:1000:\n"),
    ] {
        tar.append_data(
            &mut header(tar::EntryType::Regular, 0o644, content.len() as u64),
            path,
            content.as_bytes(),
        )
        .unwrap();
    }
    for applet in ["sh", "cat", "echo", "id", "pwd", "ls", "rm", "test"] {
        tar.append_link(
            &mut header(tar::EntryType::Symlink, 0o777, 0),
            format!("bin/{applet}"),
            "busybox",
        )
        .unwrap();
    }
    let tar = tar.into_inner().unwrap();
    let diff_id = Digest::of(&tar);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    let layer_bytes = gz.finish().unwrap();

    let mut writer = LayoutWriter::create(dir).unwrap();
    let layer = writer.add_blob(OCI_LAYER_GZIP, &layer_bytes).unwrap();
    let platform = Platform::host_default();
    let config = ImageConfigFile {
        architecture: platform.architecture.clone(),
        os: platform.os.clone(),
        variant: None,
        config: Some(ImageConfig {
            cmd: Some(vec![
                "sh".into(),
                "-c".into(),
                "echo $GREETING; pwd; id -u; id -g; echo $HOME".into(),
            ]),
            env: Some(vec!["PATH=/bin".into(), "GREETING=from-image".into()]),
            working_dir: Some("/srv".into()),
            user: Some("app".into()),
            ..Default::default()
        }),
        rootfs: RootFs {
            kind: "layers".into(),
            diff_ids: vec![diff_id],
        },
    };
    let config = writer
        .add_blob(OCI_CONFIG, &serde_json::to_vec(&config).unwrap())
        .unwrap();
    let manifest = writer
        .add_manifest(&config, &[layer], Some(&platform))
        .unwrap();
    writer.tag(&manifest, TAG);
    writer.finish().unwrap();
}

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
