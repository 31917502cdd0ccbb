//! Hostile images from a real registry (Debian's docker-registry on 127.0.0.1), pulled by
//! the real `krunbox` binary: a layer that is a header bomb, and a setuid-root file that no
//! other local user may reach on the host.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use krunbox_image::auth::Credentials;
use krunbox_image::config::{ImageConfigFile, RootFs};
use krunbox_image::digest::Digest;
use krunbox_image::layout::LayoutWriter;
use krunbox_image::local_registry::{LocalRegistry, LocalRegistryOptions};
use krunbox_image::manifest::{OCI_CONFIG, OCI_LAYER_GZIP};
use krunbox_image::platform::Platform;
use krunbox_image::reference::Reference;

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

fn gzip(data: &[u8]) -> Vec<u8> {
    gzip_at(data, flate2::Compression::fast())
}

fn gzip_at(data: &[u8], level: flate2::Compression) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), level);
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

/// Pushes a one-layer image (`layer` already compressed, `diff_id` of its tar) to `registry`
/// as `e2e/NAME:v1`; returns the reference to pull.
fn push_image(registry: &LocalRegistry, name: &str, layer: &[u8], diff_id: Digest) -> String {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("layout");
    let mut writer = LayoutWriter::create(&dir).unwrap();
    let layer = writer.add_blob(OCI_LAYER_GZIP, layer).unwrap();
    let platform = Platform::host_default();
    let config = ImageConfigFile {
        architecture: platform.architecture.clone(),
        os: platform.os.clone(),
        variant: None,
        config: None,
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
    writer.tag(&manifest, "v1");
    writer.finish().unwrap();
    let image = format!("{}/e2e/{name}:v1", registry.address());
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(krunbox_image::push::push_layout(
            &dir,
            Some("v1"),
            &Reference::parse(&image).unwrap(),
            &Credentials::Anonymous,
        ))
        .expect("push the test image");
    image
}

/// `krunbox ARGS` with data directory `data`: (exit code, stderr, peak RSS in MiB).
fn krunbox(data: &Path, args: &[&str]) -> (Option<i32>, String, i64) {
    #[allow(clippy::zombie_processes, reason = "reaped by wait4 below")]
    let mut child = Command::new(krunbox_tests::krunbox_binary())
        .args(args)
        .env("KRUNBOX_DATA_DIR", data)
        .env_remove("KRUNBOX_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run krunbox");
    let stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    // wait4 on this child alone: its own peak RSS (and of what it waited for), not the
    // largest of every child this test binary ever had (other tests' QEMUs).
    let pid = i32::try_from(child.id()).expect("pid");
    let mut raw_status = 0;
    // SAFETY: wait4 writes the status and the zeroed rusage we own; the child is ours and not
    // yet reaped (Child::wait is never called on it).
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::wait4(pid, &mut raw_status, 0, &mut usage), pid);
        usage
    };
    let status =
        <std::process::ExitStatus as std::os::unix::process::ExitStatusExt>::from_raw(raw_status);
    (
        status.code(),
        reader.join().unwrap(),
        usage.ru_maxrss / 1024,
    )
}

/// Everything in the store's blob, rootfs and tmp directories (lock files aside).
fn store_contents(data: &Path) -> Vec<PathBuf> {
    ["blobs/sha256", "rootfs/sha256", "tmp"]
        .iter()
        .flat_map(|dir| {
            std::fs::read_dir(data.join("store").join(dir))
                .into_iter()
                .flatten()
        })
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_none_or(|e| e != "lock"))
        .collect()
}

#[test]
fn a_long_name_bomb_layer_fails_the_pull_with_bounded_memory_and_leaves_nothing() {
    let Some(registry) = registry() else { return };
    // A GNU long-name header announcing 8 GiB, then 1 GiB of zeros: ~1 MiB of gzip members.
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::GNULongName);
    header.set_path("././@LongLink").unwrap();
    header.set_size(8 << 30);
    header.set_cksum();
    let mut first = header.as_bytes().to_vec();
    first.resize(1 << 20, 0);
    let mut layer = gzip(&first);
    let zeros = gzip_at(&vec![0u8; 1 << 20], flate2::Compression::best());
    let mut tar_hasher = krunbox_image::digest::Hasher::default();
    tar_hasher.update(&first);
    for _ in 0..1023 {
        layer.extend_from_slice(&zeros);
        tar_hasher.update(&[0u8; 1 << 20]);
    }
    let (diff_id, _) = tar_hasher.finish();
    let image = push_image(&registry, "bomb", &layer, diff_id);

    let data = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let (code, stderr, rss_mib) = krunbox(data.path(), &["pull", "-q", &image]);
    let elapsed = started.elapsed();
    assert_ne!(code, Some(0), "the pull must fail: {stderr}");
    assert!(
        stderr.contains("cannot be unpacked, so it was not kept")
            && stderr.contains("long name")
            && stderr.contains("exceed"),
        "a clear message: {stderr}"
    );
    assert!(rss_mib < 200, "krunbox peaked at {rss_mib} MiB");
    assert!(elapsed < Duration::from_secs(60), "took {elapsed:?}");
    assert_eq!(
        store_contents(data.path()),
        Vec::<PathBuf>::new(),
        "nothing of the image is left in the store"
    );
    let listed = Command::new(krunbox_tests::krunbox_binary())
        .args(["images", "-q"])
        .env("KRUNBOX_DATA_DIR", data.path())
        .output()
        .unwrap();
    assert!(listed.status.success());
    assert!(
        listed.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&listed.stdout)
    );
}

/// Runs `program ARGS` as `nobody`. runuser, not `setpriv --reuid`: setpriv keeps root's
/// capabilities (CAP_DAC_OVERRIDE) until its execve, so the kernel resolves the program's
/// path as root and a private directory would not stop it.
fn as_nobody(program: &Path, args: &[&str]) -> std::process::Output {
    Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .arg(program)
        .args(args)
        .output()
        .expect("run runuser")
}

#[test]
fn a_setuid_root_file_in_an_image_is_out_of_reach_of_other_users() {
    if !nix::unistd::geteuid().is_root() || !Path::new("/usr/sbin/runuser").exists() {
        eprintln!("SKIPPED: needs root and runuser to act as a second user");
        return;
    }
    let Some(registry) = registry() else { return };
    // A setuid-root copy of `id`: run by another user it would print euid=0.
    let id = std::fs::read("/usr/bin/id").unwrap();
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Directory);
    header.set_mode(0o755);
    header.set_size(0);
    tar.append_data(&mut header, "bin/", std::io::empty())
        .unwrap();
    let mut header = tar::Header::new_gnu();
    header.set_mode(0o4755);
    header.set_uid(0);
    header.set_gid(0);
    header.set_size(id.len() as u64);
    tar.append_data(&mut header, "bin/suid-id", &id[..])
        .unwrap();
    let tar = tar.into_inner().unwrap();
    let image = push_image(&registry, "suid", &gzip(&tar), Digest::of(&tar));

    let data = tempfile::tempdir().unwrap();
    // The data directory itself open to everyone: only the store's own mode protects.
    std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (code, stderr, _) = krunbox(data.path(), &["pull", "-q", &image]);
    assert_eq!(code, Some(0), "{stderr}");
    let store = data.path().join("store");
    let rootfs: Vec<PathBuf> = std::fs::read_dir(store.join("rootfs/sha256"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(rootfs.len(), 1, "pull unpacks: {rootfs:?}");
    let suid = rootfs[0].join("bin/suid-id");
    let meta = std::fs::metadata(&suid).unwrap();
    // The design: the guest keeps its setuid binaries; the host store is private.
    assert_eq!(meta.mode() & 0o7777, 0o4755);
    assert_eq!(meta.uid(), 0);
    assert_eq!(std::fs::metadata(&store).unwrap().mode() & 0o777, 0o700);

    let out = as_nobody(&suid, &[]);
    assert!(
        !out.status.success(),
        "nobody ran it: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = as_nobody(Path::new("/bin/cat"), &[suid.to_str().unwrap()]);
    assert!(!out.status.success(), "nobody read it");
    let out = as_nobody(Path::new("/bin/ls"), &[store.to_str().unwrap()]);
    assert!(!out.status.success(), "nobody listed the store");

    // Control: the store's modes are what stop them. Loosened by hand, nobody can run the
    // file; the next krunbox command makes the store private again.
    let levels = [
        store.clone(),
        store.join("rootfs"),
        store.join("rootfs/sha256"),
    ];
    for dir in &levels {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let out = as_nobody(&suid, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, stderr, _) = krunbox(data.path(), &["images"]);
    assert_eq!(code, Some(0), "{stderr}");
    for dir in &levels {
        assert_eq!(
            std::fs::metadata(dir).unwrap().mode() & 0o777,
            0o700,
            "{}",
            dir.display()
        );
    }
    assert!(!as_nobody(&suid, &[]).status.success());
}
