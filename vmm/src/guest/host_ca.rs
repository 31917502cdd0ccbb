//! `--host-ca`: the guest trusts the CA certificates the host trusts, so that TLS through a
//! host that intercepts it (a corporate proxy) works in the guest as on the host.
//!
//! The host's bundle (`$SSL_CERT_FILE`, else the system's, see [`BUNDLE_PATHS`]; on macOS the
//! system keychains' roots, exported with `security`) is copied into
//! `$DATA/host-ca/<sha256 prefix>/ca-certificates.crt` — content-addressed, so a sandbox keeps
//! the bundle it was created with and a changed host bundle makes a new copy — and that
//! directory is shared read-only at [`GUEST_DIR`]. guest-init then gives every exec
//! [`krunbox_protocol::boot::CA_BUNDLE_ENV`] pointing at the file (`krunbox.ca=`).

use crate::io_error::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::backend::SharedDir;

/// Where the guest sees the bundle's directory.
pub const GUEST_DIR: &str = "/run/krunbox/host-ca";
/// The bundle's file name, on the host and in the guest.
const BUNDLE_FILE: &str = "ca-certificates.crt";
/// Where Linux distributions keep their bundle (Debian/Ubuntu/Alpine, Fedora/RHEL, openSUSE,
/// and the macOS/BSD path).
pub const BUNDLE_PATHS: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];
/// A bundle larger than this is refused (the system's is about 200 KiB).
const MAX_BUNDLE: u64 = 16 * 1024 * 1024;
const PEM_CERTIFICATE: &str = "-----BEGIN CERTIFICATE-----";

/// Why the host's CAs cannot be given to the guest.
#[derive(Debug, thiserror::Error)]
pub enum HostCaError {
    /// No bundle was found.
    #[error("--host-ca: no CA bundle on this host (looked at $SSL_CERT_FILE and {})", BUNDLE_PATHS.join(", "))]
    NoBundle,
    /// The bundle holds no certificate, or is too large.
    #[error("--host-ca: {path} is not a CA bundle: {why}")]
    NotABundle {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// macOS's `security` failed.
    #[error("--host-ca: `security find-certificate` failed: {0}")]
    Keychain(String),
    /// A file operation.
    #[error("--host-ca: {0}")]
    Io(#[from] crate::io_error::IoError),
    /// The data directory is not ours.
    #[error(transparent)]
    DataDir(#[from] crate::private_dir::PrivateDirError),
}

/// The host's CAs, ready to share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCa {
    /// The read-only share of the copy's directory at [`GUEST_DIR`].
    pub share: SharedDir,
    /// The bundle's path in the guest (what `krunbox.ca=` names).
    pub guest_bundle: String,
    /// How many certificates it holds.
    pub certificates: usize,
}

/// Copies the host's bundle into `$DATA/host-ca/` and returns its share.
pub fn prepare() -> Result<HostCa, HostCaError> {
    let bundle = host_bundle()?;
    prepare_in(&crate::paths::data_dir()?.join("host-ca"), &bundle)
}

/// The host's bundle, as PEM.
fn host_bundle() -> Result<Vec<u8>, HostCaError> {
    if let Some(path) = std::env::var_os("SSL_CERT_FILE").filter(|p| !p.is_empty()) {
        return read_bundle(Path::new(&path));
    }
    if cfg!(target_os = "macos") {
        return keychain_roots();
    }
    let path = BUNDLE_PATHS
        .iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .ok_or(HostCaError::NoBundle)?;
    read_bundle(path)
}

/// The roots of macOS's system keychains (where a corporate CA is installed too), as PEM.
fn keychain_roots() -> Result<Vec<u8>, HostCaError> {
    let mut pem = Vec::new();
    for keychain in [
        "/System/Library/Keychains/SystemRootCertificates.keychain",
        "/Library/Keychains/System.keychain",
    ] {
        let out = std::process::Command::new("security")
            .args(["find-certificate", "-a", "-p", keychain])
            .output()
            .map_err(|e| HostCaError::Keychain(e.to_string()))?;
        if !out.status.success() {
            return Err(HostCaError::Keychain(
                String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            ));
        }
        pem.extend_from_slice(&out.stdout);
    }
    Ok(pem)
}

fn read_bundle(path: &Path) -> Result<Vec<u8>, HostCaError> {
    let size = std::fs::metadata(path).map_err(io("read", path))?.len();
    if size > MAX_BUNDLE {
        return Err(HostCaError::NotABundle {
            path: path.to_owned(),
            why: format!("{size} bytes, more than {MAX_BUNDLE}"),
        });
    }
    Ok(std::fs::read(path).map_err(io("read", path))?)
}

/// The host's CAs that the root filesystem `rootfs` (an image's, read as hostile: beneath it
/// only) does not trust: (how many the host has, how many the image has, how many of the
/// host's the image lacks).
pub fn missing_in(rootfs: &Path) -> Result<(usize, usize, usize), HostCaError> {
    let host = certificates(&host_bundle()?);
    let root = cap_std::fs::Dir::open_ambient_dir(rootfs, cap_std::ambient_authority())
        .map_err(io("open", rootfs))?;
    let image: std::collections::HashSet<String> = BUNDLE_PATHS
        .iter()
        .filter_map(|path| {
            use cap_std::fs::OpenOptionsExt;
            let relative = path.trim_start_matches('/');
            let mut options = cap_std::fs::OpenOptions::new();
            // Not blocked by a FIFO an image put there.
            options.read(true).custom_flags(libc::O_NONBLOCK);
            let file = root.open_with(relative, &options).ok()?;
            if !file.metadata().ok()?.is_file() {
                return None;
            }
            let mut text = Vec::new();
            std::io::Read::read_to_end(&mut std::io::Read::take(file, MAX_BUNDLE), &mut text)
                .ok()?;
            Some(certificates(&text))
        })
        .next()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let missing = host.iter().filter(|c| !image.contains(*c)).count();
    Ok((host.len(), image.len(), missing))
}

/// The PEM certificates in `pem`, each as its base64 body without whitespace.
fn certificates(pem: &[u8]) -> Vec<String> {
    const END: &str = "-----END CERTIFICATE-----";
    String::from_utf8_lossy(pem)
        .split(PEM_CERTIFICATE)
        .skip(1)
        .filter_map(|block| block.split(END).next())
        .map(|body| body.chars().filter(|c| !c.is_whitespace()).collect())
        .collect()
}

#[cfg(test)]
mod missing_tests {
    use super::*;

    #[test]
    fn the_host_cas_an_image_lacks_are_counted() {
        let one = "-----BEGIN CERTIFICATE-----\nAAAA\nBBBB\n-----END CERTIFICATE-----\n";
        let two = "-----BEGIN CERTIFICATE-----\nCCCC\n-----END CERTIFICATE-----\n";
        let host = tempfile::tempdir().unwrap();
        let bundle = host.path().join("host.pem");
        std::fs::write(&bundle, format!("{one}{two}")).unwrap();
        let rootfs = tempfile::tempdir().unwrap();
        let certs = rootfs.path().join("etc/ssl/certs");
        std::fs::create_dir_all(&certs).unwrap();
        // The same certificate, wrapped differently.
        std::fs::write(
            certs.join("ca-certificates.crt"),
            "-----BEGIN CERTIFICATE-----\nAAAABBBB\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        std::env::set_var("SSL_CERT_FILE", &bundle);
        assert_eq!(missing_in(rootfs.path()).unwrap(), (2, 1, 1));
        std::env::remove_var("SSL_CERT_FILE");
    }
}

/// How many PEM certificates `pem` holds.
fn count_certificates(pem: &[u8]) -> usize {
    String::from_utf8_lossy(pem)
        .matches(PEM_CERTIFICATE)
        .count()
}

/// Writes `pem` as `root/<sha256 prefix>/ca-certificates.crt` (once) and returns its share.
fn prepare_in(root: &Path, pem: &[u8]) -> Result<HostCa, HostCaError> {
    let certificates = count_certificates(pem);
    if certificates == 0 {
        return Err(HostCaError::NotABundle {
            path: root.to_owned(),
            why: "no PEM certificate in it".into(),
        });
    }
    let key = hex::encode(&Sha256::digest(pem)[..8]);
    let dir = root.join(&key);
    if !dir.join(BUNDLE_FILE).is_file() {
        crate::private_dir::create_all(root).map_err(io("create", root))?;
        let staging = tempfile::Builder::new()
            .prefix(".host-ca-")
            .tempdir_in(root)
            .map_err(io("create a directory in", root))?;
        let file = staging.path().join(BUNDLE_FILE);
        std::fs::write(&file, pem).map_err(io("write", &file))?;
        // The guest reads it as any user.
        use std::os::unix::fs::PermissionsExt;
        for (path, mode) in [(file.as_path(), 0o644), (staging.path(), 0o755)] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                .map_err(io("chmod", path))?;
        }
        match std::fs::rename(staging.path(), &dir) {
            Ok(()) => {}
            // Another krunbox made the same copy first.
            Err(_) if dir.join(BUNDLE_FILE).is_file() => {}
            Err(e) => return Err(io("rename into", &dir)(e).into()),
        }
    }
    Ok(HostCa {
        share: SharedDir {
            host_path: dir,
            guest_path: GUEST_DIR.into(),
            read_only: true,
        },
        guest_bundle: format!("{GUEST_DIR}/{BUNDLE_FILE}"),
        certificates,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n\
                       -----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n";

    #[test]
    fn a_bundle_is_copied_once_by_content_and_shared_read_only() {
        let root = tempfile::tempdir().unwrap();
        let ca = prepare_in(root.path(), TWO.as_bytes()).unwrap();
        assert_eq!(ca.certificates, 2);
        assert!(ca.share.read_only);
        assert_eq!(ca.share.guest_path, GUEST_DIR);
        assert_eq!(ca.guest_bundle, "/run/krunbox/host-ca/ca-certificates.crt");
        assert_eq!(
            std::fs::read_to_string(ca.share.host_path.join(BUNDLE_FILE)).unwrap(),
            TWO
        );
        let again = prepare_in(root.path(), TWO.as_bytes()).unwrap();
        assert_eq!(again, ca);
        let changed = format!("{TWO}{TWO}");
        let third = prepare_in(root.path(), changed.as_bytes()).unwrap();
        assert_ne!(third.share.host_path, ca.share.host_path);
    }

    #[test]
    fn what_holds_no_certificate_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let err = prepare_in(root.path(), b"not a bundle\n").unwrap_err();
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
    }
}
