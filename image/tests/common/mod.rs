//! Shared test support: a real local registry (or a loud skip), tiny images built in the
//! test, and a TCP proxy that cuts or stalls a download midway.
#![allow(dead_code)]

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use krunbox_image::config::{ImageConfig, ImageConfigFile, RootFs};
use krunbox_image::digest::Digest;
use krunbox_image::layout::LayoutWriter;
use krunbox_image::local_registry::{LocalRegistry, LocalRegistryOptions};
use krunbox_image::manifest::{Descriptor, OCI_CONFIG, OCI_LAYER_GZIP};
use krunbox_image::platform::Platform;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub mod tarball;

/// Starts a registry, or skips loudly — unless KRUNBOX_REQUIRE_E2E=1, where a missing
/// registry fails the test.
pub fn registry(options: &LocalRegistryOptions) -> Option<LocalRegistry> {
    if LocalRegistry::binary().is_none() {
        let required = std::env::var("KRUNBOX_REQUIRE_E2E").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "KRUNBOX_REQUIRE_E2E=1 but docker-registry is not installed"
        );
        eprintln!(
            "SKIPPED: /usr/bin/docker-registry is not installed (apt-get install docker-registry)"
        );
        return None;
    }
    Some(LocalRegistry::start(options).expect("start docker-registry"))
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A gzip layer tar of regular files (path, content, mode 0644).
pub fn layer(files: &[(&str, &[u8])]) -> (Vec<u8>, Digest) {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, content) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(1_700_000_000);
        header.set_uid(0);
        header.set_gid(0);
        tar.append_data(&mut header, path, *content).unwrap();
    }
    let tar = tar.into_inner().unwrap();
    let diff_id = Digest::of(&tar);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    (gz.finish().unwrap(), diff_id)
}

/// Adds a one-layer image to a layout; returns its manifest descriptor (with platform).
pub fn add_image(
    writer: &mut LayoutWriter,
    files: &[(&str, &[u8])],
    platform: &Platform,
    cmd: &[&str],
) -> Descriptor {
    let (layer_bytes, diff_id) = layer(files);
    let layer = writer.add_blob(OCI_LAYER_GZIP, &layer_bytes).unwrap();
    let config = ImageConfigFile {
        architecture: platform.architecture.clone(),
        os: platform.os.clone(),
        variant: platform.variant.clone(),
        config: Some(ImageConfig {
            cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
            env: Some(vec!["FROM_IMAGE=1".into()]),
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
    writer
        .add_manifest(&config, &[layer], Some(platform))
        .unwrap()
}

/// Content that gzip cannot shrink, so a layer has a predictable size on the wire.
pub fn incompressible(len: usize) -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Every blob in the store hashes to its name.
pub fn assert_store_blobs_verify(store_root: &Path) {
    for entry in std::fs::read_dir(store_root.join("blobs/sha256")).unwrap() {
        let entry = entry.unwrap();
        let data = std::fs::read(entry.path()).unwrap();
        assert_eq!(
            Digest::of(&data).hex(),
            entry.file_name().to_str().unwrap(),
            "blob content matches its name"
        );
    }
}

/// Forwarding proxy. Bytes from the registry to the client are counted per connection;
/// past `limit`, the connection is cut (`stall == false`) or stops forwarding (`stall`).
pub struct Proxy {
    pub address: String,
    limit: Arc<AtomicU64>,
    forwarded: Arc<AtomicU64>,
}

impl Proxy {
    pub async fn start(upstream: std::net::SocketAddr, limit: u64, stall: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let limit = Arc::new(AtomicU64::new(limit));
        let forwarded = Arc::new(AtomicU64::new(0));
        let (l, f) = (limit.clone(), forwarded.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (l, f) = (l.clone(), f.clone());
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    let upload = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                    });
                    let mut sent = 0u64;
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match server_read.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        let allowed = l.load(Ordering::SeqCst).saturating_sub(sent) as usize;
                        let now = n.min(allowed);
                        if client_write.write_all(&buf[..now]).await.is_err() {
                            break;
                        }
                        sent += now as u64;
                        f.fetch_add(now as u64, Ordering::SeqCst);
                        if now < n {
                            if !stall {
                                break; // cut: drop both halves
                            }
                            // stall: hold the connection open, forwarding nothing, until released
                            while l.load(Ordering::SeqCst).saturating_sub(sent) == 0 {
                                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                            }
                            let rest = &buf[now..n];
                            if client_write.write_all(rest).await.is_err() {
                                break;
                            }
                            sent += rest.len() as u64;
                        }
                    }
                    upload.abort();
                });
            }
        });
        Self {
            address,
            limit,
            forwarded,
        }
    }

    pub fn set_limit(&self, limit: u64) {
        self.limit.store(limit, Ordering::SeqCst);
    }

    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::SeqCst)
    }
}

/// One HTTP request as [`scripted_server`] saw it.
#[derive(Debug, Clone)]
pub struct Request {
    /// The request line's target, with its query.
    pub target: String,
    /// Header names in lower case, values as sent.
    pub headers: Vec<(String, String)>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What [`scripted_server`] answers.
pub enum Answer {
    /// A whole answer: status line text ("200 OK"), extra header lines, body.
    Fixed(&'static str, String, Vec<u8>),
    /// An endless body of spaces (about 4 GiB), announced by `Content-Length` or chunked.
    Endless(&'static str, String, bool),
}

/// An HTTP/1.1 server on 127.0.0.1 answering each request (one per connection) with what
/// `route` says: a registry, a token server, or a hostile one of either.
pub async fn scripted_server(
    route: impl Fn(&Request) -> Answer + Send + Sync + 'static,
) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let route = Arc::new(route);
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let route = route.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head).into_owned();
                let mut lines = text.split("\r\n");
                let target = lines
                    .next()
                    .and_then(|l| l.split(' ').nth(1))
                    .unwrap_or("")
                    .to_owned();
                let headers = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
                    .collect();
                let request = Request { target, headers };
                match route(&request) {
                    Answer::Fixed(status, extra, body) => {
                        let head = format!(
                            "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        );
                        let _ = conn.write_all(head.as_bytes()).await;
                        let _ = conn.write_all(&body).await;
                    }
                    Answer::Endless(status, extra, announce_length) => {
                        let framing = if announce_length {
                            format!("Content-Length: {}\r\n", 4u64 << 30)
                        } else {
                            "Transfer-Encoding: chunked\r\n".to_owned()
                        };
                        let head = format!(
                            "HTTP/1.1 {status}\r\n{extra}{framing}Connection: close\r\n\r\n"
                        );
                        if conn.write_all(head.as_bytes()).await.is_err() {
                            return;
                        }
                        let piece = vec![b' '; 64 * 1024];
                        for _ in 0..(1 << 16) {
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
                    }
                }
            });
        }
    });
    addr
}

/// The most memory this process has held (VmHWM), in bytes.
pub fn peak_memory() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM in /proc/self/status");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("a number of kB");
    kib * 1024
}
