//! The Docker token protocol against a registry on 127.0.0.1 that serves an OCI layout only to
//! holders of a bearer token, and a token server that hands the token out for the right
//! credentials, scope and service.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::sync::{Arc, Mutex};

use common::{scripted_server, Answer, Request};
use krunbox_image::auth::Credentials;
use krunbox_image::layout::LayoutWriter;
use krunbox_image::platform::Platform;
use krunbox_image::pull::{pull, PullError, PullOptions};
use krunbox_image::reference::Reference;
use krunbox_image::store::Store;

const TOKEN: &str = "t0k-for-tok-image";
/// `alice:secret`, as a Basic header carries it.
const ALICE: &str = "Basic YWxpY2U6c2VjcmV0";

/// Serves the layout in `dir` as repository `tok/image` (tag `v1`) to bearers of [`TOKEN`];
/// the token server at `/token` gives it to alice. Every token request is kept in `asked`.
fn route(
    dir: std::path::PathBuf,
    tag_digest: String,
    asked: Arc<Mutex<Vec<Request>>>,
) -> impl Fn(&Request) -> Answer + Send + Sync + 'static {
    move |request| {
        if request.target.starts_with("/token") {
            asked.lock().unwrap().push(request.clone());
            return if request.header("authorization") == Some(ALICE) {
                Answer::Fixed(
                    "200 OK",
                    String::new(),
                    format!(r#"{{"token":"{TOKEN}","expires_in":300}}"#).into_bytes(),
                )
            } else {
                Answer::Fixed("401 Unauthorized", String::new(), b"{}".to_vec())
            };
        }
        if request.header("authorization") != Some(&format!("Bearer {TOKEN}")) {
            let host = request.header("host").unwrap_or_default().to_owned();
            return Answer::Fixed(
                "401 Unauthorized",
                format!(
                    "WWW-Authenticate: Bearer realm=\"http://{host}/token\",service=\"svc\"\r\n"
                ),
                Vec::new(),
            );
        }
        let Some(rest) = request.target.strip_prefix("/v2/tok/image/") else {
            return Answer::Fixed("200 OK", String::new(), b"{}".to_vec());
        };
        let (digest, content_type) = match rest.split_once('/') {
            Some(("manifests", "v1")) => (
                tag_digest.clone(),
                "Content-Type: application/vnd.oci.image.manifest.v1+json\r\n",
            ),
            Some(("manifests" | "blobs", digest)) => (digest.to_owned(), ""),
            _ => return Answer::Fixed("404 Not Found", String::new(), Vec::new()),
        };
        let hex = digest.trim_start_matches("sha256:");
        match std::fs::read(dir.join("blobs/sha256").join(hex)) {
            Ok(bytes) => Answer::Fixed("200 OK", content_type.to_owned(), bytes),
            Err(_) => Answer::Fixed("404 Not Found", String::new(), Vec::new()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_asked_for_with_scope_service_and_credentials_and_then_sent() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("layout");
    let mut writer = LayoutWriter::create(&dir).unwrap();
    let manifest = common::add_image(
        &mut writer,
        &[("hello.txt", b"behind a token\n")],
        &Platform::host_default(),
        &["/bin/true"],
    );
    writer.tag(&manifest, "v1");
    writer.finish().unwrap();
    let asked = Arc::new(Mutex::new(Vec::new()));
    let addr = scripted_server(route(dir, manifest.digest.to_string(), asked.clone())).await;
    let reference = Reference::parse(&format!("{addr}/tok/image:v1")).unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();

    let anonymous = pull(
        &store,
        &reference,
        &PullOptions {
            progress: false,
            credentials: Some(Credentials::Anonymous),
            ..PullOptions::default()
        },
    )
    .await
    .unwrap_err();
    assert!(
        matches!(anonymous, PullError::Registry { .. }) && anonymous.to_string().contains("token"),
        "{anonymous}"
    );

    let record = pull(
        &store,
        &reference,
        &PullOptions {
            progress: false,
            credentials: Some(Credentials::Basic {
                username: "alice".into(),
                password: "secret".into(),
            }),
            ..PullOptions::default()
        },
    )
    .await
    .expect("pull with a token");
    assert_eq!(record.manifest, manifest.digest);
    common::assert_store_blobs_verify(store.root());

    let asked = asked.lock().unwrap();
    assert_eq!(asked.len(), 2, "one token request per pull: {asked:?}");
    let target = &asked[1].target;
    assert!(
        target.contains("scope=repository%3Atok%2Fimage%3Apull") && target.contains("service=svc"),
        "token request: {target}"
    );
}

/// A registry whose first token stops working once the manifest is fetched (as a token that
/// expires in the middle of a pull of large layers): the blobs are fetched with a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_expires_mid_pull_is_asked_for_again() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("layout");
    let mut writer = LayoutWriter::create(&dir).unwrap();
    let manifest = common::add_image(
        &mut writer,
        &[("hello.txt", b"behind an expiring token\n")],
        &Platform::host_default(),
        &["/bin/true"],
    );
    writer.tag(&manifest, "v1");
    writer.finish().unwrap();
    let issued = Arc::new(AtomicUsize::new(0));
    let asked = Arc::new(Mutex::new(Vec::new()));
    let serve = route(dir, manifest.digest.to_string(), asked.clone());
    let counter = issued.clone();
    let addr = scripted_server(move |request| {
        let host = request.header("host").unwrap_or_default().to_owned();
        let challenge = || {
            Answer::Fixed(
                "401 Unauthorized",
                format!(
                    "WWW-Authenticate: Bearer realm=\"http://{host}/token\",service=\"svc\"\r\n"
                ),
                Vec::new(),
            )
        };
        if request.target.starts_with("/token") {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            return Answer::Fixed(
                "200 OK",
                String::new(),
                format!(r#"{{"token":"gen-{n}"}}"#).into_bytes(),
            );
        }
        // Only the newest token is good; the first goes bad once blobs are asked for.
        let newest = format!("Bearer gen-{}", counter.load(Ordering::SeqCst));
        let expired = request.target.contains("/blobs/") && newest == "Bearer gen-1";
        if request.header("authorization") != Some(newest.as_str()) || expired {
            return challenge();
        }
        // The layout's route, as a bearer of its token.
        let mut inner = request.clone();
        inner.headers.retain(|(n, _)| n != "authorization");
        inner
            .headers
            .push(("authorization".into(), format!("Bearer {TOKEN}")));
        serve(&inner)
    })
    .await;
    let reference = Reference::parse(&format!("{addr}/tok/image:v1")).unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let record = pull(
        &store,
        &reference,
        &PullOptions {
            progress: false,
            credentials: Some(Credentials::Anonymous),
            max_concurrent_downloads: 1,
            ..PullOptions::default()
        },
    )
    .await
    .expect("the pull goes on with a new token");
    assert_eq!(record.manifest, manifest.digest);
    common::assert_store_blobs_verify(store.root());
    assert!(
        issued.load(Ordering::SeqCst) >= 2,
        "a second token was asked for"
    );
}
