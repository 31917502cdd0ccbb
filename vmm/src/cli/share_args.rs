//! `-v` and `--workspace`, shared by `krunbox run` and `krunbox create`.

use crate::guest::shares::{self, ShareError, Shares};
use crate::review::ReviewStore;
use crate::volumes::{VolumeError, VolumeLease, VolumeStore};

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
    /// the guest writes belongs to you on the host. `--workspace=review` gives the guest a
    /// copy instead (a clone where the filesystem can), without files that commonly hold
    /// secrets (.env, .env.*, *.pem, *.key, .ssh/, .netrc; credentials in .git/config URLs
    /// removed): nothing it writes reaches your files until `krunbox accept`
    /// (see `krunbox diff`, `krunbox reject`).
    #[arg(
        long,
        value_enum,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "share",
        value_name = "MODE"
    )]
    pub workspace: Option<WorkspaceMode>,
    /// With --workspace=review: also leave out names matching PATTERN (`*` and `?`; a
    /// trailing `/` for directories only, e.g. node_modules/). Repeatable.
    #[arg(long = "workspace-exclude", value_name = "PATTERN")]
    pub workspace_exclude: Vec<String>,
    /// With --workspace=review: copy what this default pattern leaves out after all (e.g.
    /// '*.pem'). Repeatable.
    #[arg(long = "workspace-include", value_name = "PATTERN")]
    pub workspace_include: Vec<String>,
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
    /// The name a `--workspace=review` copy is kept under (a sandbox's name; `None`: a new
    /// `run-…` one).
    #[arg(skip)]
    pub review_id: Option<String>,
}

/// What `--workspace` shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WorkspaceMode {
    /// The directory itself, read-write.
    Share,
    /// A copy, reviewed before anything reaches the directory.
    Review,
}

impl ShareArgs {
    /// The shares, relative host paths resolved against [`base`](Self::base).
    pub fn resolve(&self) -> Result<Shares, ShareError> {
        Ok(self.resolve_leased()?.0)
    }

    /// The shares, and a lease on each named volume among them, taken as it is found or
    /// created (so a `volume rm` in between cannot take it away before the VM holds it).
    pub fn resolve_leased(&self) -> Result<(Shares, Vec<VolumeLease>), ShareError> {
        let cwd = match &self.base {
            Some(base) => base.clone(),
            None => std::env::current_dir()
                .map_err(|e| ShareError::Workspace(format!("the current directory: {e}")))?,
        };
        let mut store = None;
        let mut leases = Vec::new();
        let mut shares = shares::resolve(
            &self.volumes,
            self.workspace.is_some(),
            &cwd,
            &mut |name, owner| {
                let store = match &store {
                    Some(store) => store,
                    None => store.insert(VolumeStore::new()?),
                };
                // Found, then removed by a `volume rm` before the lease: made again, once.
                let mut attempts = 0;
                let (volume, lease) = loop {
                    let (volume, created) = store.create(name, owner)?;
                    if created {
                        eprintln!("krunbox: created volume {name}");
                    }
                    attempts += 1;
                    match volume.lease() {
                        Ok(lease) => break (volume, lease),
                        Err(VolumeError::NotFound(_)) if attempts < 2 => continue,
                        Err(err) => return Err(err),
                    }
                };
                leases.push(lease);
                Ok(volume.data())
            },
        )?;
        if self.workspace == Some(WorkspaceMode::Review) {
            self.review_copy(&mut shares)?;
        } else if !self.workspace_exclude.is_empty() || !self.workspace_include.is_empty() {
            return Err(ShareError::Workspace(
                "--workspace-exclude and --workspace-include need --workspace=review".into(),
            ));
        }
        if self.host_ca {
            let ca = crate::guest::host_ca::prepare()?;
            tracing::debug!(
                certificates = ca.certificates,
                "the host's CAs go to the guest"
            );
            shares.dirs.push(ca.share);
            shares.ca_bundle = Some(ca.guest_bundle);
        }
        Ok((shares, leases))
    }

    /// Replaces the workspace's share by a review copy of it.
    fn review_copy(&self, shares: &mut Shares) -> Result<(), ShareError> {
        let Some(workdir) = shares.workdir.clone() else {
            return Ok(());
        };
        let Some(share) = shares.dirs.iter_mut().find(|d| d.guest_path == workdir) else {
            return Ok(());
        };
        let id = self
            .review_id
            .clone()
            .unwrap_or_else(|| format!("run-{}", crate::rundir::new_id()));
        let store = ReviewStore::new()?;
        let refuse = |reason: String| {
            ShareError::Review(crate::review::ReviewError::Workspace {
                path: share.host_path.clone(),
                reason,
            })
        };
        // Another sandbox's copy is never replaced (create would refuse the name anyway).
        let taken = crate::sandbox::store::Store::new()
            .ok()
            .is_some_and(|sandboxes| sandboxes.open(&id).is_ok());
        if taken {
            return Err(refuse(format!("a sandbox named {id:?} exists")));
        }
        // Nor a review with changes nobody decided on (or one that cannot be read).
        match store.open(&id) {
            Ok(earlier) => {
                if !crate::review::changes::changes(&earlier)?.is_empty() {
                    return Err(refuse(format!(
                        "the review {id:?} has changes not yet accepted or rejected \
                         (krunbox diff {id})"
                    )));
                }
            }
            Err(crate::review::ReviewError::NotFound(_)) => {}
            Err(err) => return Err(err.into()),
        }
        for pattern in self.workspace_exclude.iter().chain(&self.workspace_include) {
            crate::review::check_pattern(pattern)?;
        }
        let excludes = crate::review::excludes(&self.workspace_exclude, &self.workspace_include);
        let review = store.create(&id, &share.host_path, &excludes, shares.user)?;
        tracing::debug!(review = id, tree = %review.tree().display(), "the workspace is a review copy");
        share.host_path = review.tree();
        shares.review = Some(id);
        Ok(())
    }
}
