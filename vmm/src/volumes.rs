//! Named volumes: directories krunbox keeps for the user, which `-v NAME:/guest/path` shares
//! into a guest like a host directory, so what a guest writes there (a coding agent's login
//! and settings in its home) outlives the sandbox and the `krunbox run`.
//!
//! ```text
//! $DATA/volumes/NAME/volume.json   {created_at}
//! $DATA/volumes/NAME/data/         what the guest sees
//! $DATA/volumes/NAME/lock          shared by every VM that uses the volume (a lease)
//! ```
//!
//! A VM holds a lease (a shared flock) on each volume it shares for as long as it runs, so
//! `krunbox volume rm` refuses a volume in use; it also refuses one a sandbox's spec names
//! (unless `-f`). Creation is atomic (assembled under a temporary name and renamed), like a
//! sandbox's. The volume directories are private (0700) under the private data directory;
//! `data/` belongs to the user commands in it run as (see [`Volume::create`]).

use crate::io_error::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::lock::{self, LockGuard};
use crate::names::{self, InvalidName};

const META_FILE: &str = "volume.json";
const DATA_DIR: &str = "data";
const LOCK_FILE: &str = "lock";

/// Why a volume operation failed.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// A bad name.
    #[error(transparent)]
    Name(#[from] InvalidName),
    /// No such volume.
    #[error("no volume named {0:?} (see `krunbox volume ls`)")]
    NotFound(String),
    /// A VM uses it.
    #[error("volume {0:?} is in use by a running VM (stop it first)")]
    InUse(String),
    /// Sandboxes name it.
    #[error("volume {name:?} is used by sandbox {sandboxes} (remove them first, or `krunbox volume rm -f`)")]
    UsedBy {
        /// The volume.
        name: String,
        /// The sandboxes, comma-separated.
        sandboxes: String,
    },
    /// A file operation.
    #[error(transparent)]
    Io(#[from] crate::io_error::IoError),
    /// A malformed `volume.json`.
    #[error("malformed volume file {path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
    /// A lock.
    #[error(transparent)]
    Lock(#[from] crate::lock::LockError),
    /// The data directory is not ours.
    #[error(transparent)]
    DataDir(#[from] crate::private_dir::PrivateDirError),
}

/// What `volume.json` records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Meta {
    /// Seconds since the epoch.
    created_at: u64,
}

/// What `krunbox volume ls` and `inspect` show of a volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VolumeInfo {
    /// Its name.
    pub name: String,
    /// The directory the guest sees.
    pub path: PathBuf,
    /// Seconds since the epoch.
    pub created_at: u64,
    /// Disk space its files take (allocated blocks), in bytes.
    pub size_bytes: u64,
}

/// All volumes of this user.
#[derive(Debug, Clone)]
pub struct VolumeStore {
    root: PathBuf,
}

/// One volume.
#[derive(Debug, Clone)]
pub struct Volume {
    name: String,
    dir: PathBuf,
}

/// A running VM's hold on a volume; released when dropped.
#[derive(Debug)]
pub struct VolumeLease {
    _lock: LockGuard,
}

/// Whether `-v HOST:GUEST` names a volume rather than a host path: Docker's rule, a bare name
/// (no `/`, not starting with `.`).
pub fn is_volume_name(host: &str) -> bool {
    names::is_valid(host)
}

impl VolumeStore {
    /// `$DATA/volumes`.
    pub fn new() -> Result<Self, VolumeError> {
        Ok(Self::at(crate::paths::data_dir()?.join("volumes")))
    }

    /// Volumes under `root`.
    pub fn at(root: PathBuf) -> Self {
        Self { root }
    }

    /// The volume `name`, created (empty, its `data/` owned by `owner` when given and we may
    /// chown) when there is none; returns it and whether it was created.
    pub fn create(
        &self,
        name: &str,
        owner: Option<(u32, u32)>,
    ) -> Result<(Volume, bool), VolumeError> {
        names::validate("volume", name)?;
        if let Ok(volume) = self.open(name) {
            return Ok((volume, false));
        }
        crate::private_dir::create_all(&self.root).map_err(io("create", &self.root))?;
        let staging = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .tempdir_in(&self.root)
            .map_err(io("create a directory in", &self.root))?;
        let data = staging.path().join(DATA_DIR);
        std::fs::create_dir(&data).map_err(io("create", &data))?;
        if let Some((uid, gid)) = owner {
            if nix::unistd::geteuid().is_root() {
                nix::unistd::chown(
                    &data,
                    Some(nix::unistd::Uid::from_raw(uid)),
                    Some(nix::unistd::Gid::from_raw(gid)),
                )
                .map_err(|e| io("chown", &data)(e.into()))?;
            }
        }
        let meta = Meta {
            created_at: crate::sandbox::spec::now(),
        };
        let meta_path = staging.path().join(META_FILE);
        let text = serde_json::to_vec_pretty(&meta).map_err(|source| VolumeError::Json {
            path: meta_path.clone(),
            source,
        })?;
        std::fs::write(&meta_path, text).map_err(io("write", &meta_path))?;
        let dir = self.root.join(name);
        // rename(2) refuses a non-empty target: of two creates of one name, one wins and the
        // other finds the winner's volume.
        match std::fs::rename(staging.path(), &dir) {
            Ok(()) => Ok((
                Volume {
                    name: name.to_owned(),
                    dir,
                },
                true,
            )),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY) | Some(libc::EEXIST)) => {
                Ok((self.open(name)?, false))
            }
            Err(e) => Err(io("rename into", &dir)(e).into()),
        }
    }

    /// The volume called `name`.
    pub fn open(&self, name: &str) -> Result<Volume, VolumeError> {
        names::validate("volume", name)?;
        let dir = self.root.join(name);
        if !dir.join(META_FILE).is_file() || !dir.join(DATA_DIR).is_dir() {
            return Err(VolumeError::NotFound(name.to_owned()));
        }
        Ok(Volume {
            name: name.to_owned(),
            dir,
        })
    }

    /// Every volume, by name.
    pub fn list(&self) -> Result<Vec<Volume>, VolumeError> {
        let names = names::entries(&self.root).map_err(io("list", &self.root))?;
        Ok(names.iter().filter_map(|n| self.open(n).ok()).collect())
    }

    /// Leases every volume among `paths` (shared directories' host paths) for a VM; a path
    /// into a volume that is gone (`volume rm -f`) is an error, not a vanished share.
    pub fn lease_all<'a>(
        &self,
        paths: impl IntoIterator<Item = &'a Path>,
    ) -> Result<Vec<VolumeLease>, VolumeError> {
        paths
            .into_iter()
            .filter_map(|path| self.name_at(path))
            .map(|name| self.open(name)?.lease())
            .collect()
    }

    /// The name of the volume `path` lies in, if it lies in this store.
    fn name_at<'a>(&self, path: &'a Path) -> Option<&'a str> {
        path.strip_prefix(&self.root)
            .ok()?
            .components()
            .next()?
            .as_os_str()
            .to_str()
    }

    /// Removes a volume that no VM uses. `used_by`: the sandboxes whose spec names it;
    /// they make it refused unless `force`.
    pub fn remove(&self, name: &str, used_by: &[String], force: bool) -> Result<(), VolumeError> {
        let volume = self.open(name)?;
        if !used_by.is_empty() && !force {
            return Err(VolumeError::UsedBy {
                name: name.to_owned(),
                sandboxes: used_by.join(", "),
            });
        }
        let Some(_exclusive) = lock::try_exclusive(&volume.dir.join(LOCK_FILE))? else {
            return Err(VolumeError::InUse(name.to_owned()));
        };
        // Renamed first, so a half-removed volume is never listed nor opened.
        let doomed = self
            .root
            .join(format!(".removing-{name}-{}", std::process::id()));
        std::fs::rename(&volume.dir, &doomed).map_err(io("rename", &volume.dir))?;
        Ok(std::fs::remove_dir_all(&doomed).map_err(io("remove", &doomed))?)
    }
}

impl Volume {
    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The directory the guest sees.
    pub fn data(&self) -> PathBuf {
        self.dir.join(DATA_DIR)
    }

    /// Holds the volume for a VM (a shared lock: many VMs may use one volume).
    /// Checked again once held: a `volume rm` that held the lock first has moved the
    /// directory away (and a new volume of the same name may stand there now), and a lease on
    /// what it removed would hold nothing.
    pub fn lease(&self) -> Result<VolumeLease, VolumeError> {
        let lock_path = self.dir.join(LOCK_FILE);
        let lease = lock::shared(&lock_path).map_err(|err| {
            if self.dir.exists() {
                VolumeError::from(err)
            } else {
                VolumeError::NotFound(self.name.clone())
            }
        })?;
        if !lease.is_at(&lock_path) || !self.dir.join(META_FILE).is_file() || !self.data().is_dir()
        {
            return Err(VolumeError::NotFound(self.name.clone()));
        }
        Ok(VolumeLease { _lock: lease })
    }

    /// Its name, path, creation time and size.
    pub fn info(&self) -> Result<VolumeInfo, VolumeError> {
        let meta_path = self.dir.join(META_FILE);
        let text = std::fs::read(&meta_path).map_err(io("read", &meta_path))?;
        let meta: Meta = serde_json::from_slice(&text).map_err(|source| VolumeError::Json {
            path: meta_path.clone(),
            source,
        })?;
        Ok(VolumeInfo {
            name: self.name.clone(),
            path: self.data(),
            created_at: meta.created_at,
            size_bytes: disk_usage(&self.data()),
        })
    }
}

/// The allocated size of everything under `dir`, symbolic links not followed; what cannot be
/// read counts as nothing.
fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0u64;
    let mut pending = vec![dir.to_owned()];
    while let Some(path) = pending.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        total = total.saturating_add(meta.blocks().saturating_mul(512));
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&path) {
                pending.extend(entries.filter_map(Result::ok).map(|e| e.path()));
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_volume_is_created_once_listed_sized_and_removed() {
        let root = tempfile::tempdir().unwrap();
        let store = VolumeStore::at(root.path().join("volumes"));
        let (volume, created) = store.create("home", None).unwrap();
        assert!(created);
        let (again, created) = store.create("home", None).unwrap();
        assert!(!created, "a second create finds the first");
        assert_eq!(again.data(), volume.data());
        std::fs::write(volume.data().join("f"), vec![7u8; 100_000]).unwrap();
        let info = volume.info().unwrap();
        assert!(info.size_bytes >= 100_000, "{info:?}");
        assert_eq!(
            store
                .list()
                .unwrap()
                .iter()
                .map(Volume::name)
                .collect::<Vec<_>>(),
            ["home"]
        );
        assert_eq!(store.name_at(&volume.data()), Some("home"));
        assert_eq!(store.name_at(Path::new("/elsewhere/home")), None);
        store.remove("home", &[], false).unwrap();
        assert!(matches!(store.open("home"), Err(VolumeError::NotFound(_))));
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn a_volume_in_use_or_named_by_a_sandbox_is_not_removed() {
        let root = tempfile::tempdir().unwrap();
        let store = VolumeStore::at(root.path().join("volumes"));
        let (volume, _) = store.create("cache", None).unwrap();
        let lease = store.lease_all([volume.data().as_path()]).unwrap();
        assert_eq!(lease.len(), 1);
        assert!(matches!(
            store.remove("cache", &[], true),
            Err(VolumeError::InUse(_))
        ));
        drop(lease);
        let err = store
            .remove("cache", &["agent".into()], false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("used by sandbox agent"), "{err}");
        store.remove("cache", &["agent".into()], true).unwrap();
    }

    #[test]
    fn a_removed_volume_cannot_be_leased_even_by_one_who_found_it_first() {
        let root = tempfile::tempdir().unwrap();
        let store = VolumeStore::at(root.path().join("volumes"));
        let (found, _) = store.create("home", None).unwrap();
        // `run` found it; a `volume rm` removes it before the lease.
        store.remove("home", &[], false).unwrap();
        assert!(matches!(found.lease(), Err(VolumeError::NotFound(_))));
        assert!(matches!(
            store.lease_all([found.data().as_path()]),
            Err(VolumeError::NotFound(_))
        ));
        // While a lease is held, the removal is what fails.
        let (found, _) = store.create("home", None).unwrap();
        let lease = found.lease().unwrap();
        assert!(matches!(
            store.remove("home", &[], true),
            Err(VolumeError::InUse(_))
        ));
        drop(lease);
    }

    #[test]
    fn a_lease_waited_for_through_a_removal_does_not_hold_the_volume_made_after_it() {
        let root = tempfile::tempdir().unwrap();
        let store = VolumeStore::at(root.path().join("volumes"));
        let (found, _) = store.create("home", None).unwrap();
        // A `volume rm` holds the lock; a `run` that found the volume waits for it.
        let removal = lock::exclusive(&found.dir.join(LOCK_FILE)).unwrap();
        let waiting = std::thread::spawn({
            let found = found.clone();
            move || found.lease().map(drop)
        });
        std::thread::sleep(std::time::Duration::from_millis(200));
        // The removal goes through, and another `run` makes a new volume of that name.
        let doomed = root.path().join("volumes/.removing-home");
        std::fs::rename(&found.dir, &doomed).unwrap();
        std::fs::remove_dir_all(&doomed).unwrap();
        store.create("home", None).unwrap();
        drop(removal);
        assert!(matches!(
            waiting.join().unwrap(),
            Err(VolumeError::NotFound(_))
        ));
        // The new volume is leased by whoever looks it up afresh.
        assert!(store.open("home").unwrap().lease().is_ok());
    }

    #[test]
    fn names_that_are_paths_are_not_volumes() {
        for path in ["./data", "../x", "/abs", "a/b", ".hidden", ""] {
            assert!(!is_volume_name(path), "{path}");
        }
        assert!(is_volume_name("agent-home"));
        let store = VolumeStore::at(tempfile::tempdir().unwrap().path().join("v"));
        assert!(matches!(
            store.create("../etc", None),
            Err(VolumeError::Name(_))
        ));
    }
}
