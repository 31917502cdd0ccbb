//! A hostile registry on 127.0.0.1 that answers a manifest request with an endless body, with
//! and without a Content-Length: the pull is refused at the manifest size limit, quickly, with
//! bounded memory, and nothing reaches the store.

use std::time::{Duration, Instant};

use krunbox_image::manifest_fetch::ManifestFetchError;
use krunbox_image::pull::{pull, PullError, PullOptions};
use krunbox_image::reference::Reference;
use krunbox_image::store::Store;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Serves `/v2/` with 200 and every other request with a manifest of 1 GiB (announced, or
/// chunked without a length), sent in 64 KiB pieces until the client hangs up.
async fn endless_registry(announce_length: bool) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                if request.starts_with(b"GET /v2/ ") {
                    let _ = conn
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
                        )
                        .await;
                    return;
                }
                let head = if announce_length {
                    format!("HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", 1u64 << 30)
                } else {
                    "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_owned()
                };
                if conn.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let piece = vec![b' '; 64 * 1024];
                for _ in 0..(1 << 14) {
                    let sent = if announce_length {
                        conn.write_all(&piece).await
                    } else {
                        let mut chunk = format!("{:x}\r\n", piece.len()).into_bytes();
                        chunk.extend_from_slice(&piece);
                        chunk.extend_from_slice(b"\r\n");
                        conn.write_all(&chunk).await
                    };
                    if sent.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_manifest_is_refused_at_the_size_limit() {
    for announce_length in [true, false] {
        let addr = endless_registry(announce_length).await;
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(&tmp.path().join("store")).unwrap();
        let reference = Reference::parse(&format!("{addr}/hostile/image:v1")).unwrap();
        let started = Instant::now();
        let options = PullOptions {
            progress: false,
            ..PullOptions::default()
        };
        let err = tokio::time::timeout(Duration::from_secs(60), pull(&store, &reference, &options))
            .await
            .expect("the pull ends")
            .unwrap_err();
        assert!(
            matches!(
                err,
                PullError::ManifestFetch {
                    source: ManifestFetchError::TooLarge { .. },
                    ..
                }
            ),
            "announce_length={announce_length}: {err}"
        );
        assert!(err.to_string().contains("limit"), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "took {:?}",
            started.elapsed()
        );
        assert!(store.list_images().unwrap().is_empty());
        assert_eq!(
            std::fs::read_dir(store.root().join("blobs/sha256"))
                .unwrap()
                .count(),
            0
        );
    }
}
