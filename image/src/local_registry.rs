//! A throwaway `docker-registry` (Debian's package, the CNCF distribution registry) on
//! 127.0.0.1, for tests, benchmarks and CI: its own config, storage directory and free port,
//! killed on drop.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::digest::Digest;

/// Where Debian installs the registry.
pub const DEFAULT_REGISTRY_BINARY: &str = "/usr/bin/docker-registry";

/// Why the registry did not come up.
#[derive(Debug, thiserror::Error)]
pub enum LocalRegistryError {
    /// The binary is missing.
    #[error(
        "{0} not found: install Debian's docker-registry package (apt-get install docker-registry)"
    )]
    NotInstalled(PathBuf),
    /// Setting up its files or starting it.
    #[error("{action}: {source}")]
    Io {
        /// What.
        action: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// It did not answer in time.
    #[error("docker-registry did not answer on {address} within 20 s; its log:\n{log}")]
    NotReady {
        /// Where it should listen.
        address: String,
        /// Its stderr.
        log: String,
    },
}

/// Options for [`LocalRegistry::start`].
#[derive(Debug, Clone, Default)]
pub struct LocalRegistryOptions {
    /// Contents of an htpasswd file (bcrypt lines); enables Basic auth.
    pub htpasswd: Option<String>,
}

/// A running registry.
pub struct LocalRegistry {
    child: Child,
    address: SocketAddr,
    dir: tempfile::TempDir,
}

impl LocalRegistry {
    /// The registry binary: `$KRUNBOX_DOCKER_REGISTRY` or /usr/bin/docker-registry, if present.
    pub fn binary() -> Option<PathBuf> {
        let path = std::env::var_os("KRUNBOX_DOCKER_REGISTRY")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_REGISTRY_BINARY));
        path.is_file().then_some(path)
    }

    /// Starts a registry on a free 127.0.0.1 port and waits until it answers.
    pub fn start(options: &LocalRegistryOptions) -> Result<Self, LocalRegistryError> {
        let binary = Self::binary()
            .ok_or_else(|| LocalRegistryError::NotInstalled(DEFAULT_REGISTRY_BINARY.into()))?;
        let io = |action| move |source| LocalRegistryError::Io { action, source };
        let dir = tempfile::Builder::new()
            .prefix("krunbox-registry-")
            .tempdir()
            .map_err(io("creating registry directory"))?;
        let storage = dir.path().join("storage");
        std::fs::create_dir(&storage).map_err(io("creating registry storage"))?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(io("finding a free port"))?
            .port();
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {address}\n",
            storage.display()
        );
        if let Some(htpasswd) = &options.htpasswd {
            let path = dir.path().join("htpasswd");
            std::fs::write(&path, htpasswd).map_err(io("writing htpasswd"))?;
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: krunbox-test\n    path: {}\n",
                path.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).map_err(io("writing registry config"))?;
        let log = std::fs::File::create(dir.path().join("registry.log"))
            .map_err(io("creating registry log"))?;
        let child = Command::new(&binary)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(io("duplicating log handle"))?)
            .stderr(log)
            .spawn()
            .map_err(io("starting docker-registry"))?;
        let registry = Self {
            child,
            address,
            dir,
        };
        registry.wait_ready()?;
        tracing::debug!(%address, "local registry up");
        Ok(registry)
    }

    fn wait_ready(&self) -> Result<(), LocalRegistryError> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(mut stream) =
                TcpStream::connect_timeout(&self.address, Duration::from_millis(200))
            {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let request = format!("GET /v2/ HTTP/1.0\r\nHost: {}\r\n\r\n", self.address);
                let mut reply = [0u8; 12];
                if stream.write_all(request.as_bytes()).is_ok()
                    && stream.read_exact(&mut reply).is_ok()
                    && reply.starts_with(b"HTTP/1.")
                {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(LocalRegistryError::NotReady {
            address: self.address.to_string(),
            log: std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default(),
        })
    }

    /// `127.0.0.1:PORT`, the registry part of references.
    pub fn address(&self) -> String {
        self.address.to_string()
    }

    /// The socket address.
    pub fn socket_addr(&self) -> SocketAddr {
        self.address
    }

    /// The registry's storage root.
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Where the registry keeps a blob's bytes (tests corrupt it there).
    pub fn blob_data_path(&self, digest: &Digest) -> PathBuf {
        self.storage_dir()
            .join("docker/registry/v2/blobs/sha256")
            .join(&digest.hex()[..2])
            .join(digest.hex())
            .join("data")
    }

    /// The registry's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// The directory holding config, log and storage.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for LocalRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
