//! `-v` and `--workspace`, shared by `krunbox run` and `krunbox create`.

use crate::shares::{self, ShareError, Shares};

/// Directories shared into the guest.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ShareArgs {
    /// Share a host directory with the guest over virtio-fs: HOST:GUEST, or HOST:GUEST:ro
    /// for read-only (writes fail with EROFS; enforced in the guest, and by the host too when
    /// krunbox runs as root). HOST may be relative to the current directory. Repeatable.
    #[arg(short = 'v', long = "volume", value_name = "HOST:GUEST[:ro]")]
    pub volumes: Vec<String>,
    /// Share the current directory read-write at the same absolute path in the guest, start
    /// commands there, and run them as the directory's owner (host uid:gid), so that what
    /// the guest writes belongs to you on the host.
    #[arg(long)]
    pub workspace: bool,
}

impl ShareArgs {
    /// The shares, relative host paths resolved against the current directory.
    pub fn resolve(&self) -> Result<Shares, ShareError> {
        let cwd = std::env::current_dir()
            .map_err(|e| ShareError::Workspace(format!("the current directory: {e}")))?;
        shares::resolve(&self.volumes, self.workspace, &cwd)
    }
}
