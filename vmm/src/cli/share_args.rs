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
}

impl ShareArgs {
    /// The shares, relative host paths resolved against the current directory.
    pub fn resolve(&self) -> Result<Shares, ShareError> {
        let cwd = std::env::current_dir()
            .map_err(|e| ShareError::Workspace(format!("the current directory: {e}")))?;
        let mut store = None;
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
        })
    }
}
