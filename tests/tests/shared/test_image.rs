//! The image the registry tests push: busybox, an os-release, users `root` and `app`
//! (uid 1000), and a config with Cmd, Env, WorkingDir and User. Shared by `images.rs` and
//! `sdk.rs` (`#[path]`).

use std::path::Path;

use krunbox_image::config::{ImageConfig, ImageConfigFile, RootFs};
use krunbox_image::digest::Digest;
use krunbox_image::layout::LayoutWriter;
use krunbox_image::manifest::{OCI_CONFIG, OCI_LAYER_GZIP};
use krunbox_image::platform::Platform;

/// The image's /etc/os-release.
pub const OS_RELEASE: &str = "NAME=\"krunbox e2e image\"\nID=krunbox-e2e\nVERSION_ID=1\n";
/// The tag it is written with.
pub const TAG: &str = "v1";

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
/// Writes the image as an OCI layout at `dir`, tagged [`TAG`].
pub fn write_image(dir: &Path) {
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
