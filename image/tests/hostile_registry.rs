//! Hostile registries and token servers on 127.0.0.1 that answer with endless bodies (4 GiB,
//! announced by `Content-Length` or chunked without one): a manifest, a token answer, the body
//! of an error. Each pull is refused at its limit, quickly, with bounded memory, and nothing
//! reaches the store. Plus a registry that names a token realm krunbox must not send
//! credentials to.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::time::{Duration, Instant};

use common::{peak_memory, scripted_server, Answer};
use krunbox_image::auth::Credentials;
use krunbox_image::pull::{pull, PullError, PullOptions};
use krunbox_image::reference::Reference;
use krunbox_image::registry_http::RegistryError;
use krunbox_image::registry_token::TokenError;
use krunbox_image::store::Store;

/// Far below the 4 GiB a hostile body announces: reading one wholly would pass it.
const MEMORY_CEILING: u64 = 1 << 30;

const MANIFEST_TYPE: &str = "Content-Type: application/vnd.oci.image.manifest.v1+json\r\n";

/// Pulls `repo:v1` from `addr` with `credentials`; the error, with the store checked empty and
/// the time and memory bounded.
async fn refused_pull(addr: std::net::SocketAddr, credentials: Credentials) -> PullError {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&tmp.path().join("store")).unwrap();
    let reference = Reference::parse(&format!("{addr}/hostile/image:v1")).unwrap();
    let started = Instant::now();
    let options = PullOptions {
        progress: false,
        credentials: Some(credentials),
        ..PullOptions::default()
    };
    let err = tokio::time::timeout(Duration::from_secs(60), pull(&store, &reference, &options))
        .await
        .expect("the pull ends")
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        peak_memory() < MEMORY_CEILING,
        "peak memory {} bytes: a hostile body was read whole ({err})",
        peak_memory()
    );
    assert!(store.list_images().unwrap().is_empty());
    assert_eq!(
        std::fs::read_dir(store.root().join("blobs/sha256"))
            .unwrap()
            .count(),
        0
    );
    err
}

fn api_root_ok() -> Answer {
    Answer::Fixed("200 OK", String::new(), b"{}".to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_manifest_is_refused_at_the_size_limit() {
    for announce_length in [true, false] {
        let addr = scripted_server(move |request| {
            if request.target == "/v2/" {
                api_root_ok()
            } else {
                Answer::Endless("200 OK", MANIFEST_TYPE.to_owned(), announce_length)
            }
        })
        .await;
        let err = refused_pull(addr, Credentials::Anonymous).await;
        assert!(
            matches!(
                err,
                PullError::Registry {
                    source: RegistryError::TooLarge { .. },
                    ..
                }
            ),
            "announce_length={announce_length}: {err}"
        );
        assert!(err.to_string().contains("limit"), "{err}");
    }
}

/// The registry asks for a token; its token server answers with 4 GiB. Before krunbox spoke
/// the token protocol itself, oci-client read that answer wholly into memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_token_answer_is_refused_at_the_size_limit() {
    for announce_length in [true, false] {
        let addr = scripted_server(move |request| {
            if request.target.starts_with("/token") {
                return Answer::Endless("200 OK", String::new(), announce_length);
            }
            let host = request.header("host").unwrap_or_default().to_owned();
            Answer::Fixed(
                "401 Unauthorized",
                format!(
                    "WWW-Authenticate: Bearer realm=\"http://{host}/token\",service=\"hostile\"\r\n"
                ),
                Vec::new(),
            )
        })
        .await;
        let err = refused_pull(addr, Credentials::Anonymous).await;
        let PullError::Registry {
            source: RegistryError::Token(TokenError::Server(inner)),
            ..
        } = &err
        else {
            panic!("announce_length={announce_length}: expected a token error, got {err}");
        };
        assert!(
            matches!(**inner, RegistryError::TooLarge { .. }),
            "announce_length={announce_length}: {err}"
        );
        assert!(err.to_string().contains("token"), "{err}");
    }
}

/// A blob request is answered with an error status and a 4 GiB body: the pull fails with the
/// status, having read no more than the error-body limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_error_body_is_not_read_whole() {
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_digest = krunbox_image::digest::Digest::of(config);
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[]}}"#,
        config.len()
    );
    for announce_length in [true, false] {
        let manifest = manifest.clone();
        let addr = scripted_server(move |request| {
            if request.target == "/v2/" {
                api_root_ok()
            } else if request.target.contains("/manifests/") {
                Answer::Fixed(
                    "200 OK",
                    MANIFEST_TYPE.to_owned(),
                    manifest.clone().into_bytes(),
                )
            } else {
                Answer::Endless("500 Internal Server Error", String::new(), announce_length)
            }
        })
        .await;
        let err = refused_pull(addr, Credentials::Anonymous).await;
        assert!(
            matches!(
                err,
                PullError::Registry {
                    source: RegistryError::Status { status: 500, .. },
                    ..
                }
            ),
            "announce_length={announce_length}: {err}"
        );
    }
}

/// A registry reached over HTTPS names a plain-HTTP token realm: krunbox refuses before
/// sending the credentials there.
#[test]
fn a_plain_http_realm_of_a_registry_over_https_is_refused() {
    let err = krunbox_image::registry_token::checked_realm("http://198.51.100.7/token", false)
        .unwrap_err();
    assert!(
        matches!(err, TokenError::BadRealm { .. }),
        "expected a refused realm, got {err}"
    );
    assert!(err.to_string().contains("in clear"), "{err}");
    for realm in ["file:///etc/passwd", "not a url"] {
        assert!(
            krunbox_image::registry_token::checked_realm(realm, true).is_err(),
            "{realm} accepted"
        );
    }
    assert!(krunbox_image::registry_token::checked_realm("https://a.test/t", false).is_ok());
    assert!(krunbox_image::registry_token::checked_realm("http://127.0.0.1:5/t", true).is_ok());
}
