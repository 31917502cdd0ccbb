//! `-v` and `--workspace`, shared by `krunbox run` and `krunbox create`.

use crate::shares::{self, ShareError, Shares};
use crate::volumes::VolumeStore;

/// Directories shared into the guest.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ShareArgs {
    /// Share a host directory with the guest over virtio-fs: HOST:GUEST, or HOST:GUEST:ro
    /// for read-only (writes fail with EROFS, enforced by the host). HOST is a directory
    /// (absolute, or relative as `./dir`), or the name of a volume (`krunbox volume`), which
    /// is created empty on first use and keeps its files across sandboxes. Repeatable.
    #[arg(short = 'v', long = "volume", value_name = "HOST:GUEST[:ro]")]
    pub volumes: Vec<String>,
    /// Share the current directory read-write at the same absolute path in the guest, start
    /// commands there, and run them as the directory's owner (host uid:gid), so that what
    /// the guest writes belongs to you on the host.
    #[arg(long)]
    pub workspace: bool,
    /// Trust the host's CA certificates in the guest ($SSL_CERT_FILE, else the system's
    /// bundle; macOS: the system keychains), so TLS through a proxy that intercepts it works:
    /// the bundle is shared read-only at /run/krunbox/host-ca/ca-certificates.crt and every
    /// command gets SSL_CERT_FILE, NODE_EXTRA_CA_CERTS, REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE and
    /// GIT_SSL_CAINFO pointing at it (unless it sets them).
    #[arg(long)]
    pub host_ca: bool,
    /// The directory relative host paths and `--workspace` stand for (`None`: the current
    /// directory); `krunbox serve` sets it to the workspace a client names.
    #[arg(skip)]
    pub base: Option<std::path::PathBuf>,
}

impl ShareArgs {
    /// The shares, relative host paths resolved against [`base`](Self::base).
    pub fn resolve(&self) -> Result<Shares, ShareError> {
        let cwd = match &self.base {
            Some(base) => base.clone(),
            None => std::env::current_dir()
                .map_err(|e| ShareError::Workspace(format!("the current directory: {e}")))?,
        };
        let mut store = None;
        let mut shares =
            shares::resolve(&self.volumes, self.workspace, &cwd, &mut |name, owner| {
                let store = match &store {
                    Some(store) => store,
                    None => store.insert(VolumeStore::new()?),
                };
                let (volume, created) = store.create(name, owner)?;
                if created {
                    eprintln!("krunbox: created volume {name}");
                }
                Ok(volume.data())
            })?;
        if self.host_ca {
            let ca = crate::host_ca::prepare()?;
            tracing::debug!(
                certificates = ca.certificates,
                "the host's CAs go to the guest"
            );
            shares.dirs.push(ca.share);
            shares.ca_bundle = Some(ca.guest_bundle);
        }
        Ok(shares)
    }
}
