//! `tls-probe HOST:PORT NAME [HEADER…]`: an HTTPS client that trusts what OpenSSL-based tools
//! in a guest trust — the bundle `$SSL_CERT_FILE` names, else
//! `/etc/ssl/certs/ca-certificates.crt` — and nothing else. It connects, verifies the server's
//! certificate for NAME (a DNS name or an IP address), sends `GET /` with the HEADERs
//! (`Name: value`) and prints the response's first line (exit 0), then, if HEADERs were
//! given, the response's `x-echo` header lines; or it prints `refused: STEP: why` (exit 1).
//! The `--host-ca` and `--secret` tests copy it into a guest's root filesystem (with the
//! libraries `ldd` names).

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
    let [address, name, headers @ ..] = args.as_slice() else {
        eprintln!("usage: tls-probe HOST:PORT NAME [HEADER...]");
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
    // The authority as HTTP spells it: the port unless it is HTTPS's.
    let host = match address.rsplit_once(':') {
        Some((_, "443")) | None => name.clone(),
        Some((_, port)) => format!("{name}:{port}"),
    };
    let mut request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    if let Err(err) = stream.write_all(request.as_bytes()) {
        return refused("tls", err);
    }
    let mut response = BufReader::new(stream);
    let mut line = String::new();
    if let Err(err) = response.read_line(&mut line) {
        return refused("tls", err);
    }
    println!("{}", line.trim_end());
    if !headers.is_empty() {
        loop {
            line.clear();
            match response.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) if line.trim_end().is_empty() => break,
                Ok(_) if line.to_ascii_lowercase().starts_with("x-echo:") => {
                    println!("{}", line.trim_end());
                }
                Ok(_) => {}
            }
        }
    }
    ExitCode::SUCCESS
}
