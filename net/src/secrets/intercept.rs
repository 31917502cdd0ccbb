//! The gateway's TLS interception for secrets: one guest connection on a secret's port,
//! from its first byte to its last.
//!
//! 1. The guest's ClientHello is read (at most [`MAX_HELLO`] bytes, kept) and its server
//!    name looked at. Not a secret's host (or not TLS, or the server speaks first): the kept
//!    bytes go to the server and the connection is passed through untouched.
//! 2. A secret's host: the gateway opens TLS to the server the guest addressed, verifying
//!    its certificate for that name against the host's trust store (`SSL_CERT_FILE`, else
//!    the system's), then completes the guest's handshake with a certificate of the
//!    sandbox's CA. A server that does not verify gets nothing: the guest's connection ends.
//! 3. HTTP/1.1 (hyper on both sides), one request at a time. A request must be for the
//!    verified name: its `Host` (and an absolute URI's authority) must be the server name
//!    and port, or it is answered 421 and not sent (no fronting the value to another site
//!    behind the same address). `TRACE` (which echoes the request) and upgrades (WebSocket,
//!    `CONNECT`) are refused. The placeholders of the host's secrets are replaced by the
//!    values in the request's header values ([`CARRIERS`](super::http::CARRIERS) excepted; inside
//!    `Authorization: Basic`, in its decoded form), and the values put back as placeholders
//!    in the response's header values. Bodies and the request line pass as they are. ALPN
//!    offers only `http/1.1`: a client that accepts nothing else (HTTP/2 only) fails its
//!    handshake.
//!
//! Not covered: a server that reflects a request header in its response body (or in a
//! redirect it builds from it) hands the value to the guest.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::net::TcpStream;
use tracing::debug;

use super::ca::{CaError, SandboxCa};
use super::http::{forward_http, Authority};
use super::Secret;
use crate::audit::{record, Verdict};
use crate::conn::host_side;
use crate::inspect::Flow;

/// The most of a guest's first bytes kept while looking for its ClientHello's server name.
pub const MAX_HELLO: usize = 64 * 1024;

/// A failure to set interception up.
#[derive(Debug, thiserror::Error)]
pub enum InterceptError {
    /// The CA.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// The host's trust store has no certificate to verify servers with.
    #[error("the host's trust store has no CA certificates (set SSL_CERT_FILE to a bundle): {0}")]
    NoRoots(String),
}

/// The secrets of one gateway, with their values, and the sandbox's CA.
pub struct Interceptor {
    secrets: Vec<(Secret, String)>,
    ca: SandboxCa,
    upstream: Arc<rustls::ClientConfig>,
}

impl Interceptor {
    /// Interception of `secrets` with their `values` (the same order): a new CA, and the
    /// host's trust store for the real servers.
    pub fn new(secrets: Vec<Secret>, values: Vec<String>) -> Result<Self, InterceptError> {
        let mut hosts: Vec<String> = secrets
            .iter()
            .flat_map(|s| s.hosts.iter().map(|h| h.name.clone()))
            .collect();
        hosts.sort();
        hosts.dedup();
        let ca = SandboxCa::new(&hosts)?;
        let native = rustls_native_certs::load_native_certs();
        let mut roots = rustls::RootCertStore::empty();
        let (added, _) = roots.add_parsable_certificates(native.certs);
        if added == 0 {
            let why = native
                .errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>();
            return Err(InterceptError::NoRoots(why.join("; ")));
        }
        let mut upstream = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        upstream.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            secrets: secrets.into_iter().zip(values).collect(),
            ca,
            upstream: Arc::new(upstream),
        })
    }

    /// The sandbox CA's certificate (PEM), which the guest fetches at boot.
    pub fn ca_pem(&self) -> String {
        self.ca.certificate_pem()
    }

    /// Whether connections to `port` are looked at (some secret's host is on it).
    pub fn watches(&self, port: u16) -> bool {
        self.secrets
            .iter()
            .any(|(s, _)| s.hosts.iter().any(|h| h.port == port))
    }

    /// Carries one guest connection (`guest`, the gateway's end of its socket) to `server`
    /// (connected to where the guest asked), intercepting it if it is TLS to a secret's host.
    pub async fn serve(self: Arc<Self>, mut guest: DuplexStream, server: TcpStream, flow: Flow) {
        let mut hello = match read_hello(&mut guest, &server).await {
            Ok(hello) => hello,
            Err(()) => return,
        };
        hello.server_name = hello
            .server_name
            .map(|name| name.trim_end_matches('.').to_ascii_lowercase());
        // The secrets this connection carries: those of its server name and port.
        let carried: Vec<&(Secret, String)> = match hello.server_name.as_deref() {
            Some(name) => self
                .secrets
                .iter()
                .filter(|(s, _)| s.is_for(name, flow.dest.port()))
                .collect(),
            None => Vec::new(),
        };
        let Some(server_name) = hello.server_name.filter(|_| !carried.is_empty()) else {
            pass_through(guest, server, &hello.bytes).await;
            return;
        };
        let destination = host_side(flow.dest);
        let names = carried
            .iter()
            .map(|(s, _)| s.name.as_str())
            .collect::<Vec<_>>()
            .join(",");
        let mut secrets: Vec<(String, String)> = carried
            .iter()
            .map(|(s, value)| (s.placeholder(), value.clone()))
            .collect();
        // Longest value first: one that contains another is put back whole.
        secrets.sort_by_key(|(_, value)| std::cmp::Reverse(value.len()));
        let reset = |why: String| {
            record(
                "tls",
                flow.guest,
                destination,
                &[&server_name],
                Verdict::Reset,
                &why,
            )
        };
        let Ok(name) = ServerName::try_from(server_name.clone()) else {
            return reset(format!("{server_name} is not a server name"));
        };
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(&self.upstream));
        let server = match connector.connect(name, server).await {
            Ok(server) => server,
            Err(err) => {
                return reset(format!(
                "the server's TLS for {server_name} failed, so secret {names} is not sent: {err}"
            ))
            }
        };
        let config = match self.ca.server_config(&server_name) {
            Ok(config) => config,
            Err(err) => return reset(err.to_string()),
        };
        let guest = Prefixed {
            prefix: hello.bytes,
            inner: guest,
        };
        let guest = match tokio_rustls::TlsAcceptor::from(config).accept(guest).await {
            Ok(guest) => guest,
            Err(err) => return reset(format!("the guest's TLS handshake failed: {err}")),
        };
        record(
            "tls",
            flow.guest,
            destination,
            &[&server_name],
            Verdict::Allow,
            &format!("secret {names}: TLS terminated by the gateway, server verified"),
        );
        let authority = Authority {
            name: server_name.clone(),
            port: flow.dest.port(),
        };
        if let Err(err) = forward_http(guest, server, authority, Arc::new(secrets)).await {
            debug!(%err, "an intercepted connection ended");
        }
    }
}

/// A guest's first bytes, and the server name its ClientHello asks for.
struct Hello {
    bytes: Vec<u8>,
    server_name: Option<String>,
}

/// Reads the guest's ClientHello. `Err` if the guest left before anything was decided (the
/// connection is over); a server that speaks first, bytes that are not TLS or a hello over
/// [`MAX_HELLO`] give a `Hello` without a server name.
async fn read_hello(guest: &mut DuplexStream, server: &TcpStream) -> Result<Hello, ()> {
    let mut bytes = Vec::new();
    let mut chunk = vec![0; 8 * 1024];
    let mut first_of_server = [0u8; 1];
    loop {
        let read = tokio::select! {
            read = guest.read(&mut chunk) => match read {
                Ok(0) | Err(_) => return Err(()),
                Ok(n) => Some(n),
            },
            // The server spoke first (or closed): not TLS from the guest.
            _ = server.peek(&mut first_of_server) => None,
        };
        let peeked = match read {
            Some(n) => {
                bytes.extend_from_slice(&chunk[..n]);
                peek_server_name(&bytes)
            }
            None => Peeked::NotTls,
        };
        match peeked {
            Peeked::More => {}
            Peeked::Hello(server_name) => return Ok(Hello { bytes, server_name }),
            Peeked::NotTls => {
                return Ok(Hello {
                    bytes,
                    server_name: None,
                })
            }
        }
    }
}

/// What a guest's first bytes say about its TLS.
#[derive(Debug, PartialEq, Eq)]
pub enum Peeked {
    /// A ClientHello has begun: more bytes are needed.
    More,
    /// A complete ClientHello, with the server name it asks for.
    Hello(Option<String>),
    /// Not TLS, a broken hello, or one over [`MAX_HELLO`] bytes.
    NotTls,
}

/// Reads a ClientHello from a guest's first `bytes` (rustls's parser; public for the fuzzer).
pub fn peek_server_name(bytes: &[u8]) -> Peeked {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut fed = bytes;
    while !fed.is_empty() {
        match acceptor.read_tls(&mut fed) {
            Ok(0) | Err(_) => return Peeked::NotTls,
            Ok(_) => {}
        }
    }
    match acceptor.accept() {
        Ok(Some(accepted)) => {
            Peeked::Hello(accepted.client_hello().server_name().map(str::to_owned))
        }
        Ok(None) if bytes.len() < MAX_HELLO => Peeked::More,
        Ok(None) | Err(_) => Peeked::NotTls,
    }
}

async fn pass_through(mut guest: DuplexStream, mut server: TcpStream, first: &[u8]) {
    if server.write_all(first).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut guest, &mut server).await;
}

/// A stream that first yields bytes already read from it.
struct Prefixed<S> {
    prefix: Vec<u8>,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.drain(..n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::http::rewrite_for_fuzzing;
    use rustls::pki_types::pem::PemObject;

    #[test]
    fn the_server_name_is_read_from_a_real_client_hello() {
        // OpenSSL's s_client -servername api.test (the fuzzer's seed).
        let hello = include_bytes!("../../../fuzz/seeds/secret_requests/client-hello-api.test");
        assert_eq!(
            peek_server_name(hello),
            Peeked::Hello(Some("api.test".into()))
        );
        assert_eq!(peek_server_name(&hello[..40]), Peeked::More);
        assert_eq!(peek_server_name(b"GET / HTTP/1.1\r\n"), Peeked::NotTls);
        let (sent, rewritten) =
            rewrite_for_fuzzing(b"api.test", b"Bearer krunbox-secret-KEY-placeholder");
        assert!(sent);
        assert_eq!(rewritten.as_deref(), Some(&b"Bearer fuzz-secret-value"[..]));
    }

    /// A TLS server on the loopback with a certificate for `names` from its own CA; it
    /// answers each request with the `authorization` it got, in a header and in the body.
    async fn echo_server(names: &[&str]) -> (std::net::SocketAddr, String) {
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca_params = rcgen::CertificateParams::default();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).expect("ca");
        let key = rcgen::KeyPair::generate().expect("key");
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let leaf = rcgen::CertificateParams::new(names)
            .expect("params")
            .signed_by(&key, &ca, &ca_key)
            .expect("leaf");
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .expect("config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if tls.read(&mut byte).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let head = String::from_utf8_lossy(&head).to_lowercase();
                    let got = head
                        .lines()
                        .find_map(|l| l.strip_prefix("authorization: "))
                        .unwrap_or("none")
                        .to_owned();
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nx-echo: {got}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{got}",
                        got.len()
                    );
                    let _ = tls.write_all(answer.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        (address, ca.pem())
    }

    /// What a guest client gets asking `name` through `interceptor`, trusting `roots`.
    async fn ask(
        interceptor: &Arc<Interceptor>,
        server: std::net::SocketAddr,
        (name, host): (&str, &str),
        roots: Vec<rustls::pki_types::CertificateDer<'static>>,
        authorization: &str,
    ) -> String {
        let (near, far) = tokio::io::duplex(64 * 1024);
        let stream = TcpStream::connect(server).await.expect("connect");
        let flow = Flow {
            guest: "10.0.2.15:40000".parse().expect("address"),
            dest: SocketAddrV4::new(crate::config::GATEWAY_IP, server.port()),
        };
        tokio::spawn(Arc::clone(interceptor).serve(far, stream, flow));
        let mut store = rustls::RootCertStore::empty();
        for root in roots {
            store.add(root).expect("root");
        }
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(store)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let name = ServerName::try_from(name.to_owned()).expect("name");
        let mut tls = match connector.connect(name, near).await {
            Ok(tls) => tls,
            Err(err) => return format!("refused: {err}"),
        };
        let request =
            format!("GET / HTTP/1.1\r\nhost: {host}\r\nauthorization: {authorization}\r\n\r\n");
        tls.write_all(request.as_bytes()).await.expect("write");
        let mut answer = String::new();
        let _ = tls.read_to_string(&mut answer).await;
        answer.to_lowercase()
    }

    use std::net::SocketAddrV4;

    #[tokio::test]
    async fn the_value_goes_to_the_secrets_host_only_and_never_back() {
        let (server, server_ca) = echo_server(&["api.test", "other.test"]).await;
        let bundle = tempfile::NamedTempFile::new().expect("bundle");
        std::fs::write(bundle.path(), &server_ca).expect("write");
        // The host's trust store: the server's CA (rustls-native-certs reads SSL_CERT_FILE).
        std::env::set_var("SSL_CERT_FILE", bundle.path());
        let secret: Secret = format!("KEY@api.test:{}", server.port())
            .parse()
            .expect("secret");
        let placeholder = secret.placeholder();
        let lower = placeholder.to_lowercase();
        let interceptor = Arc::new(
            Interceptor::new(vec![secret], vec!["the-real-value".into()]).expect("interceptor"),
        );
        let sandbox_ca = interceptor.ca.certificate_der();
        let server_ca_der =
            rustls::pki_types::CertificateDer::from_pem_slice(server_ca.as_bytes()).expect("der");

        // The secret's host: the gateway's certificate, the value in, the placeholder back.
        let api_host = format!("api.test:{}", server.port());
        let answer = ask(
            &interceptor,
            server,
            ("api.test", &api_host),
            vec![sandbox_ca.clone()],
            &format!("Bearer {placeholder}"),
        )
        .await;
        assert!(answer.starts_with("http/1.1 200 ok"), "{answer}");
        assert!(
            answer.contains(&format!("x-echo: bearer {lower}")),
            "the echoed header carries the placeholder: {answer}"
        );
        assert!(
            answer.ends_with("bearer the-real-value"),
            "the server got the value (a body is not rewritten): {answer}"
        );
        // A request for another site behind the same address is not sent with the value.
        let answer = ask(
            &interceptor,
            server,
            ("api.test", "evil.test"),
            vec![sandbox_ca.clone()],
            &format!("Bearer {placeholder}"),
        )
        .await;
        assert!(answer.starts_with("http/1.1 421"), "{answer}");
        assert!(!answer.contains("the-real-value"), "{answer}");

        // Another host on the same port: passed through, the server's own certificate, the
        // placeholder as it was.
        let answer = ask(
            &interceptor,
            server,
            ("other.test", "other.test"),
            vec![server_ca_der],
            &placeholder,
        )
        .await;
        assert!(answer.ends_with(&lower), "{answer}");

        // The sandbox CA vouches for the secrets' hosts only: a client that trusts only it
        // gets the real server's certificate for another host, and refuses it.
        assert!(interceptor.ca.server_config("other.test").is_err());
        let answer = ask(
            &interceptor,
            server,
            ("other.test", "other.test"),
            vec![sandbox_ca],
            &placeholder,
        )
        .await;
        assert!(answer.starts_with("refused"), "{answer}");
    }
}
