//! `tls-probe HOST:PORT NAME`: an HTTPS client that trusts what OpenSSL-based tools in a guest
//! trust — the bundle `$SSL_CERT_FILE` names, else `/etc/ssl/certs/ca-certificates.crt` — and
//! nothing else. It connects, verifies the server's certificate for NAME (a DNS name or an IP
//! address), sends `GET /` and prints the response's first line (exit 0), or prints
//! `refused: STEP: why` (exit 1). The `--host-ca` tests copy it into a guest's root filesystem
//! (with the libraries `ldd` names).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

fn refused(step: &str, why: impl std::fmt::Display) -> ExitCode {
    println!("refused: {step}: {why}");
    ExitCode::from(1)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [address, name] = args.as_slice() else {
        eprintln!("usage: tls-probe HOST:PORT NAME");
        return ExitCode::from(2);
    };
    let bundle = std::env::var("SSL_CERT_FILE").unwrap_or_else(|_| SYSTEM_BUNDLE.into());
    let mut roots = rustls::RootCertStore::empty();
    let certificates = match CertificateDer::pem_file_iter(&bundle) {
        Ok(certificates) => certificates,
        Err(err) => return refused("bundle", format!("{bundle}: {err}")),
    };
    for certificate in certificates.flatten() {
        let _ = roots.add(certificate);
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let server = match ServerName::try_from(name.clone()) {
        Ok(server) => server,
        Err(err) => return refused("name", err),
    };
    let connection = match rustls::ClientConnection::new(Arc::new(config), server) {
        Ok(connection) => connection,
        Err(err) => return refused("tls", err),
    };
    let socket = match TcpStream::connect(address) {
        Ok(socket) => socket,
        Err(err) => return refused("connect", err),
    };
    let _ = socket.set_read_timeout(Some(Duration::from_secs(20)));
    let mut stream = rustls::StreamOwned::new(connection, socket);
    if let Err(err) = stream.write_all(b"GET / HTTP/1.0\r\n\r\n") {
        return refused("tls", err);
    }
    let mut line = String::new();
    match BufReader::new(stream).read_line(&mut line) {
        Ok(_) => {
            println!("{}", line.trim_end());
            ExitCode::SUCCESS
        }
        Err(err) => refused("tls", err),
    }
}
