//! Pulls from a real registry (Debian's docker-registry on 127.0.0.1), with images the tests
//! build and push themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::time::Duration;

use krunbox_image::auth::{credentials_from_file, Credentials};
use krunbox_image::builtin::{build_builtin_image, BUILTIN_TAG};
use krunbox_image::layout::LayoutWriter;
use krunbox_image::local_registry::LocalRegistryOptions;
use krunbox_image::platform::Platform;
use krunbox_image::pull::{pull, PullError, PullOptions};
use krunbox_image::push::push_layout;
use krunbox_image::reference::Reference;
use krunbox_image::source::{prepare_image, PullPolicy, Source};
use krunbox_image::store::Store;

fn quiet() -> PullOptions {
    PullOptions {
        progress: false,
        ..Default::default()
    }
}

fn reference(registry: &str, name: &str) -> Reference {
    Reference::parse(&format!("{registry}/{name}")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_by_tag_and_by_digest_then_run_config() {
    common::init_tracing();
    let Some(registry) = common::registry(&LocalRegistryOptions::default()) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let layout = build_builtin_image(&tmp.path().join("layout")).unwrap();
    let target = reference(&registry.address(), "krunbox/default:v1");
    let pushed = push_layout(
        &layout.layout,
        Some(BUILTIN_TAG),
        &target,
        &Credentials::Anonymous,
    )
    .await
    .unwrap();
    assert_eq!(pushed, layout.manifest.digest);

    let store = Store::open(&tmp.path().join("store")).unwrap();
    let by_tag = pull(&store, &target, &quiet()).await.unwrap();
    assert_eq!(by_tag.manifest, layout.manifest.digest);
    assert_eq!(by_tag.layers, vec![layout.layer.digest.clone()]);
    assert_eq!(
        by_tag.name,
        format!("{}/krunbox/default:v1", registry.address())
    );

    let pinned = target.with_digest(layout.manifest.digest.clone());
    let by_digest = pull(&store, &pinned, &quiet()).await.unwrap();
    assert_eq!(by_digest.config, by_tag.config);
    assert_eq!(store.list_images().unwrap().len(), 2);
    common::assert_store_blobs_verify(store.root());

    // A digest that is not the manifest's is refused.
    let wrong = target.with_digest(layout.config.digest.clone());
    assert!(pull(&store, &wrong, &quiet()).await.is_err());

    // `krunbox run REF`: prepared from the store without pulling again, same rootfs for two sandboxes.
    let source = Source::parse(&target.to_string()).unwrap();
    let first = prepare_image(&store, &source, PullPolicy::Never, &quiet())
        .await
        .unwrap();
    let second = prepare_image(&store, &source, PullPolicy::Never, &quiet())
        .await
        .unwrap();
    assert_eq!(first.rootfs, second.rootfs);
    assert!(std::fs::read_to_string(first.rootfs.join("etc/os-release"))
        .unwrap()
        .contains("ID=krunbox"));
    assert_eq!(
        first.config.cmd.as_deref(),
        Some(&["/bin/sh".to_owned()][..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_arch_index_resolves_the_requested_platform() {
    common::init_tracing();
    let Some(registry) = common::registry(&LocalRegistryOptions::default()) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("multi");
    let mut writer = LayoutWriter::create(&dir).unwrap();
    let amd64 = Platform::parse("linux/amd64").unwrap();
    let arm64 = Platform::parse("linux/arm64/v8").unwrap();
    let m1 = common::add_image(
        &mut writer,
        &[("etc/arch", b"amd64\n")],
        &amd64,
        &["/bin/a"],
    );
    let m2 = common::add_image(
        &mut writer,
        &[("etc/arch", b"arm64\n")],
        &arm64,
        &["/bin/b"],
    );
    let index = writer.add_index(&[m1.clone(), m2.clone()]).unwrap();
    writer.tag(&index, "multi");
    writer.finish().unwrap();
    let target = reference(&registry.address(), "team/multi:1");
    push_layout(&dir, Some("multi"), &target, &Credentials::Anonymous)
        .await
        .unwrap();

    let store = Store::open(&tmp.path().join("store")).unwrap();
    let arm = pull(
        &store,
        &target,
        &PullOptions {
            platform: Some(Platform::parse("linux/arm64").unwrap()),
            ..quiet()
        },
    )
    .await
    .unwrap();
    assert_eq!(arm.manifest, m2.digest);
    assert_eq!(arm.index.as_ref(), Some(&index.digest));
    assert_eq!(arm.platform.architecture, "arm64");
    let rootfs = store.rootfs_dir(&arm).unwrap();
    assert_eq!(
        std::fs::read_to_string(rootfs.join("etc/arch")).unwrap(),
        "arm64\n"
    );

    let amd = pull(
        &store,
        &target,
        &PullOptions {
            platform: Some(amd64),
            ..quiet()
        },
    )
    .await
    .unwrap();
    assert_eq!(amd.manifest, m1.digest);
    assert_eq!(store.image_config(&amd).unwrap().cmd.unwrap(), ["/bin/a"]);

    let err = pull(
        &store,
        &target,
        &PullOptions {
            platform: Some(Platform::parse("linux/s390x").unwrap()),
            ..quiet()
        },
    )
    .await
    .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("linux/s390x") && message.contains("linux/arm64/v8"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_with_auth_challenge_needs_credentials() {
    common::init_tracing();
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    let options = LocalRegistryOptions {
        htpasswd: Some(format!("alice:{hash}\n")),
    };
    let Some(registry) = common::registry(&options) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("img");
    let mut writer = LayoutWriter::create(&dir).unwrap();
    let m = common::add_image(
        &mut writer,
        &[("hello", b"world")],
        &Platform::host_default(),
        &["/hello"],
    );
    writer.tag(&m, "latest");
    writer.finish().unwrap();
    let alice = Credentials::Basic {
        username: "alice".into(),
        password: "s3cret".into(),
    };
    let target = reference(&registry.address(), "private/app:latest");
    push_layout(&dir, None, &target, &alice).await.unwrap();

    let store = Store::open(&tmp.path().join("store")).unwrap();
    let anonymous = pull(
        &store,
        &target,
        &PullOptions {
            credentials: Some(Credentials::Anonymous),
            ..quiet()
        },
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            anonymous,
            PullError::Registry {
                source: krunbox_image::registry_http::RegistryError::Status { status: 401, .. },
                ..
            }
        ),
        "{anonymous}"
    );
    let wrong = Credentials::Basic {
        username: "alice".into(),
        password: "nope".into(),
    };
    assert!(pull(
        &store,
        &target,
        &PullOptions {
            credentials: Some(wrong),
            ..quiet()
        }
    )
    .await
    .is_err());
    assert!(store.list_images().unwrap().is_empty());

    // Credentials from a Docker-style config file.
    let config = tmp.path().join("auth.json");
    let auth = base64_encode("alice:s3cret");
    std::fs::write(
        &config,
        format!(
            r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#,
            registry.address()
        ),
    )
    .unwrap();
    let from_file = credentials_from_file(&config, &registry.address()).unwrap();
    assert_eq!(from_file, alice);
    let record = pull(
        &store,
        &target,
        &PullOptions {
            credentials: Some(from_file),
            ..quiet()
        },
    )
    .await
    .unwrap();
    assert_eq!(record.manifest, m.digest);
}

fn base64_encode(s: &str) -> String {
    const TABLE: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = s.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_blob_is_refused_and_never_stored() {
    common::init_tracing();
    let Some(registry) = common::registry(&LocalRegistryOptions::default()) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("img");
    let mut writer = LayoutWriter::create(&dir).unwrap();
    let content = common::incompressible(256 * 1024);
    let m = common::add_image(
        &mut writer,
        &[("data.bin", &content)],
        &Platform::host_default(),
        &["/x"],
    );
    writer.tag(&m, "latest");
    writer.finish().unwrap();
    let target = reference(&registry.address(), "corrupt/app:latest");
    push_layout(&dir, None, &target, &Credentials::Anonymous)
        .await
        .unwrap();

    let manifest: krunbox_image::manifest::Manifest = serde_json::from_slice(
        &std::fs::read(dir.join("blobs/sha256").join(m.digest.hex())).unwrap(),
    )
    .unwrap();
    let layer = manifest.layers[0].digest.clone();
    let data_path = registry.blob_data_path(&layer);
    let mut data = std::fs::read(&data_path).unwrap();
    let middle = data.len() / 2;
    data[middle] ^= 0xff; // same length, different content
    std::fs::write(&data_path, data).unwrap();

    let store = Store::open(&tmp.path().join("store")).unwrap();
    let err = pull(&store, &target, &quiet()).await.unwrap_err();
    assert!(
        err.to_string().contains(&layer.to_string()),
        "the error names the blob: {err}"
    );
    assert!(!store.has_blob(&layer));
    assert!(store.list_images().unwrap().is_empty());
    // Another blob's download may still be committing its (valid) temp file on a blocking
    // thread when the pull returns the error: it ends on its own, leaving nothing.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::fs::read_dir(store.tmp_dir()).unwrap().count() > 0 {
        assert!(std::time::Instant::now() < deadline, "a temp file was left");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_pull_leaves_no_complete_blob_and_retry_succeeds() {
    common::init_tracing();
    let Some(registry) = common::registry(&LocalRegistryOptions::default()) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("img");
    let mut writer = LayoutWriter::create(&dir).unwrap();
    let content = common::incompressible(4 * 1024 * 1024);
    let m = common::add_image(
        &mut writer,
        &[("big.bin", &content)],
        &Platform::host_default(),
        &["/x"],
    );
    writer.tag(&m, "latest");
    writer.finish().unwrap();
    let direct = reference(&registry.address(), "big/app:latest");
    push_layout(&dir, None, &direct, &Credentials::Anonymous)
        .await
        .unwrap();
    let manifest: krunbox_image::manifest::Manifest = serde_json::from_slice(
        &std::fs::read(dir.join("blobs/sha256").join(m.digest.hex())).unwrap(),
    )
    .unwrap();
    let layer = manifest.layers[0].digest.clone();

    // 1. The connection is cut 1 MiB into the layer.
    let proxy = common::Proxy::start(registry.socket_addr(), 1024 * 1024, false).await;
    let via_proxy = reference(&proxy.address, "big/app:latest");
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let err = pull(&store, &via_proxy, &quiet()).await.unwrap_err();
    assert!(err.to_string().contains(&layer.to_string()), "{err}");
    assert!(
        !store.has_blob(&layer),
        "a cut download never counts as a complete blob"
    );
    assert!(store.list_images().unwrap().is_empty());

    // 2. The pull task is aborted while the layer is half downloaded.
    proxy.set_limit(u64::MAX);
    let stalling = common::Proxy::start(registry.socket_addr(), 2 * 1024 * 1024, true).await;
    let via_stall = reference(&stalling.address, "big/app:latest");
    let task_store = store.clone();
    let task = tokio::spawn(async move { pull(&task_store, &via_stall, &quiet()).await });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while stalling.forwarded() < 2 * 1024 * 1024 - 64 * 1024 && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The partial download exists only in tmp/.
    assert!(std::fs::read_dir(store.tmp_dir()).unwrap().count() >= 1);
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    assert!(!store.has_blob(&layer));
    // A killed process would leave its temp file behind: simulate one; prune removes it.
    std::fs::write(store.tmp_dir().join("blob-99999-stale.partial"), b"half").unwrap();

    // 3. Retry succeeds and the blob verifies.
    let record = pull(&store, &via_proxy, &quiet()).await.unwrap();
    assert_eq!(record.layers, vec![layer.clone()]);
    common::assert_store_blobs_verify(store.root());
    let rootfs = store.rootfs_dir(&record).unwrap();
    assert_eq!(std::fs::read(rootfs.join("big.bin")).unwrap(), content);
    let report = store.prune().unwrap();
    assert!(report.removed_blobs.is_empty());
    assert_eq!(std::fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_of_the_same_image_both_succeed() {
    common::init_tracing();
    let Some(registry) = common::registry(&LocalRegistryOptions::default()) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("img");
    let mut writer = LayoutWriter::create(&dir).unwrap();
    let content = common::incompressible(2 * 1024 * 1024);
    let m = common::add_image(
        &mut writer,
        &[("a.bin", &content), ("etc/os-release", b"ID=test\n")],
        &Platform::host_default(),
        &["/x"],
    );
    writer.tag(&m, "latest");
    writer.finish().unwrap();
    let target = reference(&registry.address(), "shared/app:latest");
    push_layout(&dir, None, &target, &Credentials::Anonymous)
        .await
        .unwrap();

    // Two handles: separate lock file descriptions, exactly like two krunbox processes.
    let root = tmp.path().join("store");
    let (a, b) = (Store::open(&root).unwrap(), Store::open(&root).unwrap());
    let (ra, rb) = tokio::join!(
        async {
            let r = pull(&a, &target, &quiet()).await?;
            let path = tokio::task::spawn_blocking({
                let (a, r) = (a.clone(), r.clone());
                move || a.rootfs_dir(&r)
            })
            .await
            .unwrap()?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((r, path))
        },
        async {
            let r = pull(&b, &target, &quiet()).await?;
            let path = tokio::task::spawn_blocking({
                let (b, r) = (b.clone(), r.clone());
                move || b.rootfs_dir(&r)
            })
            .await
            .unwrap()?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((r, path))
        }
    );
    let ((ra, pa), (rb, pb)) = (ra.unwrap(), rb.unwrap());
    assert_eq!(ra.manifest, rb.manifest);
    assert_eq!(pa, pb);
    assert_eq!(std::fs::read(pa.join("a.bin")).unwrap(), content);
    assert_eq!(a.list_images().unwrap().len(), 1);
    common::assert_store_blobs_verify(&root);
    assert_eq!(std::fs::read_dir(a.tmp_dir()).unwrap().count(), 0);
    let leftovers: Vec<_> = std::fs::read_dir(root.join("rootfs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
