//! Warm pools: booted VMs kept ready, so `krunbox run` skips the boot (`krunbox pool`).
//!
//! A pool is a directory `$DATA/pools/NAME/` holding `pool.json` ([`PoolSpec`]: its size and
//! the sandbox every member is made from) and `members/`, a sandbox store of its own (so
//! `krunbox ps` does not list them). A detached [`keeper`] process keeps `size` members
//! booted; each member is an ordinary sandbox run by its own monitor, on any backend.
//!
//! A VM that has booted cannot change its shares, network, resources or kernel, so a pool
//! serves only runs that ask for the very VM its members are: [`PoolKey`] is a digest of
//! those settings (the backend, root filesystem, CPUs, memory, kernel, hostname, shares,
//! network, SSH agent, CA bundle, acceleration). What differs per command (the command,
//! `-e`, `-w`, `-u`, `-t`, `-i`) is given to the agent at exec time, as for any run.
//!
//! A run that finds a pool with its key [`claim`]s one ready member (an exclusive lock and a
//! `claimed` mark), runs its command there, and asks the member's monitor to stop it. A member
//! is never reused: the keeper removes every claimed member once its run has let go, and
//! boots a new one in its place.

pub mod claim;
pub mod keeper;

use crate::io_error::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::backend::{BackendKind, VmSpec};
use crate::sandbox::spec::SandboxSpec;
use crate::sandbox::store::{Sandbox, Store as SandboxStore};
use crate::sandbox::SandboxError;

/// `pool.json`.
const SPEC_FILE: &str = "pool.json";
/// Held exclusively by the pool's keeper while it runs.
const KEEPER_LOCK_FILE: &str = "keeper.lock";
/// The keeper's log.
pub const KEEPER_LOG_FILE: &str = "keeper.log";
/// Present once `krunbox pool stop` asked the keeper to empty the pool and go.
const STOP_FILE: &str = "stop-requested";

/// Why a pool operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// A bad name.
    #[error(transparent)]
    Name(#[from] crate::names::InvalidName),
    /// No such pool.
    #[error("no pool named {0:?} (see `krunbox pool ls`)")]
    NotFound(String),
    /// The name is taken.
    #[error("a pool named {0:?} already exists (stop it with `krunbox pool stop {0}`)")]
    Exists(String),
    /// A size of zero, or more than krunbox keeps.
    #[error("a pool's size is 1 to {MAX_SIZE}, not {0}")]
    Size(usize),
    /// A member sandbox.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// The keeper.
    #[error("the keeper of pool {name:?} {problem} (see {log})")]
    Keeper {
        /// The pool.
        name: String,
        /// What went wrong.
        problem: String,
        /// Its log.
        log: PathBuf,
    },
    /// A file operation.
    #[error(transparent)]
    Io(#[from] crate::io_error::IoError),
    /// `pool.json`.
    #[error("{path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// The data directory.
    #[error(transparent)]
    DataDir(#[from] crate::private_dir::PrivateDirError),
    /// A lock.
    #[error(transparent)]
    Lock(#[from] crate::lock::LockError),
}

/// The most members one pool keeps (each is a running VM).
pub const MAX_SIZE: usize = 64;

/// Which VM a run asks for, as a digest of everything a booted VM cannot change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolKey(pub String);

impl PoolKey {
    /// The key of `spec` on `backend`.
    pub fn of(spec: &VmSpec, backend: BackendKind) -> Self {
        #[derive(Serialize)]
        struct Fixed<'a> {
            backend: BackendKind,
            rootfs: &'a Path,
            root_overlay: bool,
            cpus: u8,
            memory_mib: u32,
            kernel: &'a Option<PathBuf>,
            guest_init: &'a Path,
            hostname: &'a str,
            shares: &'a [crate::backend::SharedDir],
            network: &'a crate::backend::Network,
            ssh_agent: &'a Option<PathBuf>,
            ca_bundle: &'a Option<String>,
            accel: crate::backend::Accel,
        }
        let fixed = Fixed {
            backend,
            rootfs: &spec.rootfs,
            root_overlay: spec.root_overlay,
            cpus: spec.cpus,
            memory_mib: spec.memory_mib,
            kernel: &spec.kernel,
            guest_init: &spec.guest_init,
            hostname: &spec.hostname,
            shares: &spec.shares,
            network: &spec.network,
            ssh_agent: &spec.ssh_agent,
            ca_bundle: &spec.ca_bundle,
            accel: spec.accel,
        };
        // Serializing plain data to a Vec cannot fail; an empty key would match nothing real.
        let bytes = serde_json::to_vec(&fixed).unwrap_or_default();
        Self(hex::encode(Sha256::digest(&bytes)))
    }
}

/// A pool's configuration (`pool.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolSpec {
    /// Its name.
    pub name: String,
    /// Members kept booted.
    pub size: usize,
    /// The sandbox each member is made from (its name is the member's).
    pub member: SandboxSpec,
    /// The backend its members run on.
    pub backend: BackendKind,
    /// Which runs it serves.
    pub key: PoolKey,
}

/// Every pool of this user: `$DATA/pools`.
#[derive(Debug, Clone)]
pub struct Pools {
    root: PathBuf,
}

impl Pools {
    /// `$DATA/pools`.
    pub fn new() -> Result<Self, PoolError> {
        Ok(Self {
            root: crate::paths::data_dir()?.join("pools"),
        })
    }

    /// Creates a pool from `spec`; fails if the name is taken.
    pub fn create(&self, spec: &PoolSpec) -> Result<Pool, PoolError> {
        crate::names::validate("pool", &spec.name)?;
        if spec.size == 0 || spec.size > MAX_SIZE {
            return Err(PoolError::Size(spec.size));
        }
        crate::private_dir::create_all(&self.root).map_err(io("create", &self.root))?;
        let dir = self.root.join(&spec.name);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(PoolError::Exists(spec.name.clone()))
            }
            Err(e) => return Err(io("create", &dir)(e).into()),
        }
        let pool = Pool { dir };
        let path = pool.dir.join(SPEC_FILE);
        let json = serde_json::to_vec_pretty(spec).map_err(|source| PoolError::Json {
            path: path.clone(),
            source,
        })?;
        let staged = pool.dir.join(".pool.json.new");
        std::fs::write(&staged, json).map_err(io("write", &staged))?;
        std::fs::rename(&staged, &path).map_err(io("write", &path))?;
        Ok(pool)
    }

    /// The pool called `name`.
    pub fn open(&self, name: &str) -> Result<Pool, PoolError> {
        crate::names::validate("pool", name)?;
        let dir = self.root.join(name);
        if !dir.join(SPEC_FILE).is_file() {
            return Err(PoolError::NotFound(name.to_owned()));
        }
        Ok(Pool { dir })
    }

    /// Every pool, by name.
    pub fn list(&self) -> Result<Vec<Pool>, PoolError> {
        let names = crate::names::entries(&self.root).map_err(io("list", &self.root))?;
        Ok(names
            .into_iter()
            .map(|name| Pool {
                dir: self.root.join(name),
            })
            .filter(|pool| pool.dir.join(SPEC_FILE).is_file())
            .collect())
    }
}

/// One pool.
#[derive(Debug, Clone)]
pub struct Pool {
    dir: PathBuf,
}

impl Pool {
    /// Opens the pool in `dir` (the keeper's argument).
    pub fn at_dir(dir: &Path) -> Result<Self, PoolError> {
        if !dir.join(SPEC_FILE).is_file() {
            return Err(PoolError::NotFound(dir.display().to_string()));
        }
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    /// Its name.
    pub fn name(&self) -> String {
        self.dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `pool.json`.
    pub fn spec(&self) -> Result<PoolSpec, PoolError> {
        let path = self.dir.join(SPEC_FILE);
        let bytes = std::fs::read(&path).map_err(io("read", &path))?;
        serde_json::from_slice(&bytes).map_err(|source| PoolError::Json { path, source })
    }

    /// Its members' sandbox store.
    pub fn members(&self) -> SandboxStore {
        SandboxStore::at(self.dir.join("members"))
    }

    /// Its members, by name.
    pub fn member_list(&self) -> Result<Vec<Sandbox>, PoolError> {
        Ok(self.members().list()?)
    }

    /// Whether its keeper runs (it holds the keeper lock).
    pub fn keeper_alive(&self) -> Result<bool, PoolError> {
        let path = self.dir.join(KEEPER_LOCK_FILE);
        if !path.exists() {
            return Ok(false);
        }
        Ok(crate::lock::try_exclusive_existing(&path)?.is_none())
    }

    /// The keeper's lock, taken by the keeper for its life; `None` if another keeper has it.
    fn lock_as_keeper(&self) -> Result<Option<crate::lock::LockGuard>, PoolError> {
        Ok(crate::lock::try_exclusive(
            &self.dir.join(KEEPER_LOCK_FILE),
        )?)
    }

    /// Asks the keeper to empty the pool and exit.
    pub fn request_stop(&self) -> Result<(), PoolError> {
        let path = self.dir.join(STOP_FILE);
        Ok(std::fs::write(&path, b"").map_err(io("write", &path))?)
    }

    fn stop_requested(&self) -> bool {
        self.dir.join(STOP_FILE).exists()
    }

    /// Removes the pool's directory (its members are gone).
    pub fn remove(self) -> Result<(), PoolError> {
        let parent = self.dir.parent().unwrap_or(Path::new("/")).to_owned();
        let doomed = parent.join(format!(".{}.removing-{}", self.name(), std::process::id()));
        std::fs::rename(&self.dir, &doomed).map_err(io("remove", &self.dir))?;
        Ok(std::fs::remove_dir_all(&doomed).map_err(io("remove", &doomed))?)
    }

    /// Counts its members: ready, in use, booting.
    pub fn census(&self) -> Result<Census, PoolError> {
        let mut census = Census::default();
        for member in self.member_list()? {
            match claim::member_state(&member)? {
                claim::MemberState::Ready => census.ready += 1,
                claim::MemberState::InUse => census.in_use += 1,
                claim::MemberState::Used => census.spent += 1,
                claim::MemberState::Booting => census.booting += 1,
                claim::MemberState::Dead => {}
            }
        }
        Ok(census)
    }
}

/// A pool's members by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Census {
    /// Booted and unclaimed.
    pub ready: usize,
    /// Claimed by a run that still runs.
    pub in_use: usize,
    /// Done with, being removed.
    pub spent: usize,
    /// Starting.
    pub booting: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_follows_what_a_booted_vm_cannot_change_and_nothing_else() {
        let spec = VmSpec::new(
            "/store/rootfs/a".into(),
            "/usr/lib/krunbox/guest-init".into(),
        );
        let key = PoolKey::of(&spec, BackendKind::Qemu);
        assert_eq!(key, PoolKey::of(&spec.clone(), BackendKind::Qemu));
        assert_ne!(key, PoolKey::of(&spec, BackendKind::Krun));
        let mut other = spec.clone();
        other.memory_mib += 1;
        assert_ne!(key, PoolKey::of(&other, BackendKind::Qemu));
        let mut other = spec.clone();
        other.rootfs = "/store/rootfs/b".into();
        assert_ne!(key, PoolKey::of(&other, BackendKind::Qemu));
        // The guest's log level is the environment of whoever started the VM, not the VM.
        let mut same = spec.clone();
        same.guest_log_level = Some("debug".into());
        assert_eq!(key, PoolKey::of(&same, BackendKind::Qemu));
    }
}
