//! The sandbox's own CA (`krunbox.trust`), the guest half of `--secret`: fetched from the
//! gateway at boot and joined to what the guest trusts already, so the TLS the gateway
//! terminates for a secret's hosts verifies in every client that honours the standard
//! variables ([`CA_BUNDLE_ENV`](krunbox_protocol::boot::CA_BUNDLE_ENV)) or reads the image's
//! system bundle.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The joined bundle every exec is pointed at.
pub const BUNDLE: &str = "/run/krunbox/trust/ca-certificates.crt";
/// Where images keep their system bundle (Debian/Ubuntu/Alpine, Fedora/RHEL, others).
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];
/// A CA certificate is well under this; the gateway sends one.
const MAX_CERTIFICATE: u64 = 64 * 1024;
const ATTEMPTS: u32 = 5;

/// Why the sandbox's CA is not trusted.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The gateway did not answer.
    #[error("fetching the sandbox's CA from {address}: {source}")]
    Fetch {
        /// The gateway's service.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// It answered with something else than one PEM certificate.
    #[error("the gateway's answer is not a PEM certificate")]
    NotACertificate,
    /// The joined bundle could not be written.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Fetches the CA from the gateway's `port` and writes [`BUNDLE`]: `base` (the `--host-ca`
/// bundle) or else the image's system bundle, then the CA. On an `overlay_root` (whose writes
/// stay in the guest) the CA is also appended to the image's system bundle, for clients that
/// read it and no variable; a root that is a host directory is left as it is. Returns the
/// bundle's path.
pub fn install(
    gateway: Ipv4Addr,
    port: u16,
    base: Option<&Path>,
    overlay_root: bool,
) -> Result<PathBuf, TrustError> {
    let certificate = fetch(SocketAddr::from((gateway, port)))?;
    let system = SYSTEM_BUNDLES.iter().map(Path::new).find(|p| p.is_file());
    let mut bundle = base
        .or(system)
        .and_then(|path| std::fs::read(path).ok())
        .unwrap_or_default();
    if !bundle.is_empty() && !bundle.ends_with(b"\n") {
        bundle.push(b'\n');
    }
    bundle.extend_from_slice(&certificate);
    let path = PathBuf::from(BUNDLE);
    let write = |source| TrustError::Write {
        path: path.clone(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(write)?;
    }
    std::fs::write(&path, &bundle).map_err(write)?;
    if let Some(system) = system.filter(|_| overlay_root) {
        if let Err(err) = append(system, &certificate) {
            tracing::debug!(%err, bundle = %system.display(), "the image's bundle is left as it is");
        }
    }
    Ok(path)
}

fn fetch(address: SocketAddr) -> Result<Vec<u8>, TrustError> {
    let fetch_error = |source| TrustError::Fetch { address, source };
    let mut attempt = 1;
    let mut stream = loop {
        match TcpStream::connect_timeout(&address, Duration::from_secs(2)) {
            Ok(stream) => break stream,
            Err(err) if attempt < ATTEMPTS => {
                tracing::debug!(%err, attempt, "the gateway's CA service is not there yet");
                std::thread::sleep(Duration::from_millis(200));
                attempt += 1;
            }
            Err(err) => return Err(fetch_error(err)),
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(fetch_error)?;
    let mut certificate = Vec::new();
    (&mut stream)
        .take(MAX_CERTIFICATE + 1)
        .read_to_end(&mut certificate)
        .map_err(fetch_error)?;
    if !is_one_pem_certificate(&certificate) {
        return Err(TrustError::NotACertificate);
    }
    Ok(certificate)
}

fn is_one_pem_certificate(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    data.len() as u64 <= MAX_CERTIFICATE
        && text.starts_with("-----BEGIN CERTIFICATE-----\n")
        && text.trim_end().ends_with("-----END CERTIFICATE-----")
        && text.matches("-----BEGIN").count() == 1
}

/// Appends to `path` if it is a regular file (not through a symlink the image planted).
fn append(path: &Path, certificate: &[u8]) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Ok(());
    }
    file.write_all(b"\n")?;
    file.write_all(certificate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_one_pem_certificate_is_taken() {
        let one = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        assert!(is_one_pem_certificate(one));
        let two = [&one[..], &one[..]].concat();
        assert!(!is_one_pem_certificate(&two));
        assert!(!is_one_pem_certificate(b"HTTP/1.1 200 OK\r\n"));
        assert!(!is_one_pem_certificate(
            b"-----BEGIN PRIVATE KEY-----\nx\n-----END CERTIFICATE-----"
        ));
    }

    #[test]
    fn fetches_from_a_server_and_refuses_junk() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        let server = std::thread::spawn(move || {
            for answer in [
                &b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"[..],
                b"junk",
            ] {
                let (mut stream, _) = listener.accept().expect("accept");
                stream.write_all(answer).expect("write");
            }
        });
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        assert!(fetch(address).expect("fetched").starts_with(b"-----BEGIN"));
        assert!(matches!(fetch(address), Err(TrustError::NotACertificate)));
        server.join().expect("server");
    }
}
