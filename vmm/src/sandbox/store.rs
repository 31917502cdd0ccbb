//! Sandboxes on disk: one directory per sandbox under `$DATA/sandboxes/`, no global lock.
//!
//! ```text
//! $DATA/sandboxes/NAME/
//!   sandbox.json    the spec (written once, by create)
//!   state.json      the last start's state (written by the monitor)
//!   lock            held briefly by start/stop/rm, so they do not interleave
//!   monitor.lock    held by the monitor for as long as the VM runs
//!   monitor.log     the monitor's log
//!   console.log     the guest console of the last run (saved when the VM ends)
//!   stop-requested  written by stop, so the exit reason says "stopped"
//! ```
//!
//! Creation is atomic: the directory is assembled as `.NAME.<random>` and renamed into place,
//! so a visible sandbox always has its spec, and two creates of one name cannot both win.

use crate::io_error::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::name;
use super::spec::SandboxSpec;
use super::state::{State, Status};
use super::SandboxError;
use crate::lock::{self, LockGuard};

const SPEC_FILE: &str = "sandbox.json";
const STATE_FILE: &str = "state.json";
const LOCK_FILE: &str = "lock";
const MONITOR_LOCK_FILE: &str = "monitor.lock";
/// The guest console of the last run.
pub const CONSOLE_FILE: &str = "console.log";
/// The monitor's log.
pub const MONITOR_LOG_FILE: &str = "monitor.log";
/// The sandbox's network log (`krunbox logs --network`).
pub const NETWORK_LOG_FILE: &str = "network.log";
const STOP_REQUESTED_FILE: &str = "stop-requested";

/// All sandboxes of this user.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// `$DATA/sandboxes`.
    pub fn new() -> Result<Self, SandboxError> {
        Ok(Self::at(crate::paths::data_dir()?.join("sandboxes")))
    }

    /// Sandboxes under `root`.
    pub fn at(root: PathBuf) -> Self {
        Self { root }
    }

    /// Creates a sandbox from `spec`; fails if the name is taken.
    pub fn create(&self, spec: &SandboxSpec) -> Result<Sandbox, SandboxError> {
        name::validate(&spec.name)?;
        crate::private_dir::create_all(&self.root).map_err(io("create", &self.root))?;
        let staging = tempfile::Builder::new()
            .prefix(&format!(".{}.", spec.name))
            .tempdir_in(&self.root)
            .map_err(io("create a directory in", &self.root))?;
        let text = serde_json::to_vec_pretty(spec).map_err(SandboxError::Json)?;
        let spec_path = staging.path().join(SPEC_FILE);
        std::fs::write(&spec_path, text).map_err(io("write", &spec_path))?;
        let dir = self.root.join(&spec.name);
        // rename(2) refuses a non-empty target: exactly one create of a name wins.
        if dir.exists() {
            return Err(SandboxError::Exists(spec.name.clone()));
        }
        match std::fs::rename(staging.path(), &dir) {
            Ok(()) => {
                let _ = staging.keep();
                Ok(Sandbox {
                    name: spec.name.clone(),
                    dir,
                })
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY) | Some(libc::EEXIST)) => {
                Err(SandboxError::Exists(spec.name.clone()))
            }
            Err(e) => Err(io("rename into", &dir)(e).into()),
        }
    }

    /// The sandbox called `name`.
    pub fn open(&self, name: &str) -> Result<Sandbox, SandboxError> {
        name::validate(name)?;
        let dir = self.root.join(name);
        if !dir.join(SPEC_FILE).is_file() {
            return Err(SandboxError::NotFound(name.to_owned()));
        }
        Ok(Sandbox {
            name: name.to_owned(),
            dir,
        })
    }

    /// Every sandbox, by name.
    pub fn list(&self) -> Result<Vec<Sandbox>, SandboxError> {
        let names = crate::names::entries(&self.root).map_err(io("list", &self.root))?;
        Ok(names.iter().filter_map(|n| self.open(n).ok()).collect())
    }
}

/// One sandbox's directory.
#[derive(Debug, Clone)]
pub struct Sandbox {
    name: String,
    dir: PathBuf,
}

impl Sandbox {
    /// Opens the sandbox whose directory is `dir` (the monitor gets it on its command line).
    pub fn at_dir(dir: &Path) -> Result<Self, SandboxError> {
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| SandboxError::NotFound(dir.display().to_string()))?;
        let store = Store::at(dir.parent().unwrap_or(Path::new("/")).to_owned());
        store.open(name)
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A file in its directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Its spec.
    pub fn spec(&self) -> Result<SandboxSpec, SandboxError> {
        let path = self.file(SPEC_FILE);
        let text = std::fs::read(&path).map_err(io("read", &path))?;
        serde_json::from_slice(&text).map_err(SandboxError::Json)
    }

    /// The last start's state, if it was ever started.
    pub fn state(&self) -> Result<Option<State>, SandboxError> {
        let path = self.file(STATE_FILE);
        match std::fs::read(&path) {
            Ok(text) => serde_json::from_slice(&text)
                .map(Some)
                .map_err(SandboxError::Json),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("read", &path)(e).into()),
        }
    }

    /// Replaces the state atomically.
    pub fn write_state(&self, state: &State) -> Result<(), SandboxError> {
        let path = self.file(STATE_FILE);
        let tmp = self.file(".state.json.tmp");
        let text = serde_json::to_vec_pretty(state).map_err(SandboxError::Json)?;
        std::fs::write(&tmp, text).map_err(io("write", &tmp))?;
        Ok(std::fs::rename(&tmp, &path).map_err(io("write", &path))?)
    }

    /// Whether a monitor holds the sandbox (its VM runs or boots).
    pub fn monitor_alive(&self) -> Result<bool, SandboxError> {
        match lock::try_exclusive(&self.file(MONITOR_LOCK_FILE)) {
            Ok(free) => Ok(free.is_none()),
            // Removed meanwhile (a pool's keeper removes spent members while others list
            // them): no monitor runs for a sandbox that is gone.
            Err(err) if err.source.kind() == std::io::ErrorKind::NotFound && !self.dir.exists() => {
                Ok(false)
            }
            Err(err) => Err(err.into()),
        }
    }

    /// The status `ps` shows.
    pub fn status(&self) -> Result<Status, SandboxError> {
        // The lock first: a monitor that ends between the two reads has written its state.
        let alive = self.monitor_alive()?;
        Ok(Status::of(self.state()?.as_ref(), alive))
    }

    /// Serialises start, stop and rm of this sandbox (held briefly).
    pub fn lock(&self) -> Result<LockGuard, SandboxError> {
        Ok(lock::exclusive(&self.file(LOCK_FILE))?)
    }

    /// The monitor's lock, held for its whole life. Retried for a while: `ps` probing the
    /// lock holds it for an instant.
    pub fn lock_for_monitor(&self, patience: Duration) -> Result<LockGuard, SandboxError> {
        let deadline = Instant::now() + patience;
        loop {
            if let Some(guard) = lock::try_exclusive(&self.file(MONITOR_LOCK_FILE))? {
                return Ok(guard);
            }
            if Instant::now() >= deadline {
                return Err(SandboxError::AlreadyRunning(self.name.clone()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until no monitor holds the sandbox; false if it still does after `limit`.
    pub fn wait_for_monitor_exit(&self, limit: Duration) -> Result<bool, SandboxError> {
        let deadline = Instant::now() + limit;
        loop {
            if !self.monitor_alive()? {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Marks the next VM end as asked for (`krunbox stop`).
    pub fn request_stop(&self) -> Result<(), SandboxError> {
        let path = self.file(STOP_REQUESTED_FILE);
        Ok(std::fs::write(&path, b"").map_err(io("write", &path))?)
    }

    /// Whether a stop was asked for; `clear` forgets it.
    pub fn stop_requested(&self, clear: bool) -> bool {
        let path = self.file(STOP_REQUESTED_FILE);
        let requested = path.exists();
        if clear {
            let _ = std::fs::remove_file(&path);
        }
        requested
    }

    /// Removes the sandbox's directory (the caller made sure nothing runs).
    pub fn remove(self) -> Result<(), SandboxError> {
        // Renamed first, so a half-removed sandbox is never listed.
        let parent = self.dir.parent().unwrap_or(Path::new("/")).to_owned();
        let doomed = parent.join(format!(".{}.removing-{}", self.name, std::process::id()));
        std::fs::rename(&self.dir, &doomed).map_err(io("remove", &self.dir))?;
        Ok(std::fs::remove_dir_all(&doomed).map_err(io("remove", &doomed))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> SandboxSpec {
        SandboxSpec {
            name: name.into(),
            image: None,
            rootfs: "/r".into(),
            overlay: false,
            shares: Vec::new(),
            network: Default::default(),
            cpus: 1,
            memory_mib: 256,
            env: Vec::new(),
            workdir: None,
            user: None,
            groups: Vec::new(),
            hostname: "krunbox".into(),
            kernel: None,
            backend: None,
            accel: Default::default(),
            boot_timeout_secs: 60,
            created_at: 1,
            ssh_agent: None,
            ca_bundle: None,
        }
    }

    #[test]
    fn a_sandbox_removed_meanwhile_has_no_live_monitor() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::at(root.path().join("sandboxes"));
        let sandbox = store.create(&spec("gone")).unwrap();
        assert!(!sandbox.monitor_alive().unwrap());
        std::fs::remove_dir_all(sandbox.dir()).unwrap();
        assert!(!sandbox.monitor_alive().unwrap());
    }

    #[test]
    fn a_spec_keeps_its_json_form_for_backend_accel_and_shares() {
        let mut typed = spec("typed");
        typed.backend = Some(crate::backend::BackendKind::Qemu);
        typed.accel = crate::backend::Accel::Tcg;
        typed.shares = vec![crate::backend::SharedDir {
            host_path: "/home/u/p".into(),
            guest_path: "/work".into(),
            read_only: true,
        }];
        let json = serde_json::to_value(&typed).unwrap();
        // What sandbox.json has always held, so sandboxes created earlier still load.
        assert_eq!(json["backend"], "qemu");
        assert_eq!(json["accel"], "tcg");
        assert_eq!(
            json["shares"],
            serde_json::json!([{"host": "/home/u/p", "guest": "/work", "read_only": true}])
        );
        assert_eq!(serde_json::from_value::<SandboxSpec>(json).unwrap(), typed);
    }

    #[test]
    fn a_spec_saved_before_ssh_agent_forwarding_still_loads() {
        let mut json = serde_json::to_value(spec("old")).unwrap();
        json.as_object_mut().unwrap().remove("ssh_agent").unwrap();
        let old: SandboxSpec = serde_json::from_value(json).unwrap();
        assert_eq!(old, spec("old"));
        let mut with_agent = spec("new");
        with_agent.ssh_agent = Some("/tmp/agent.sock".into());
        let json = serde_json::to_string(&with_agent).unwrap();
        let read: SandboxSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(read.vm_spec("/gi".into()).ssh_agent, with_agent.ssh_agent);
    }

    #[test]
    fn create_open_list_remove() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::at(root.path().join("sandboxes"));
        assert!(store.list().unwrap().is_empty());
        let a = store.create(&spec("a")).unwrap();
        store.create(&spec("b")).unwrap();
        assert!(matches!(
            store.create(&spec("a")),
            Err(SandboxError::Exists(n)) if n == "a"
        ));
        assert!(matches!(store.open("zz"), Err(SandboxError::NotFound(_))));
        assert!(matches!(store.open("../x"), Err(SandboxError::Name(_))));
        let names: Vec<_> = store
            .list()
            .unwrap()
            .iter()
            .map(|s| s.name().to_owned())
            .collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(a.spec().unwrap(), spec("a"));
        assert_eq!(a.status().unwrap(), Status::Created);
        a.remove().unwrap();
        let names: Vec<_> = store
            .list()
            .unwrap()
            .iter()
            .map(|s| s.name().to_owned())
            .collect();
        assert_eq!(names, ["b"]);
        // Nothing but the remaining sandbox is left.
        assert_eq!(
            std::fs::read_dir(root.path().join("sandboxes"))
                .unwrap()
                .count(),
            1
        );
    }

    #[test]
    fn removing_a_symlinked_sandbox_removes_the_link_not_its_target() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::at(root.path().join("sandboxes"));
        store.create(&spec("real")).unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let target = elsewhere.path().join("victim");
        std::fs::create_dir_all(target.join("sub")).unwrap();
        std::fs::write(target.join(SPEC_FILE), b"{}").unwrap();
        std::os::unix::fs::symlink(&target, root.path().join("sandboxes/linked")).unwrap();
        store.open("linked").unwrap().remove().unwrap();
        assert!(target.join("sub").is_dir(), "rm followed the link");
        assert!(target.join(SPEC_FILE).is_file());
        let left: Vec<_> = std::fs::read_dir(root.path().join("sandboxes"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["real"]);
    }

    #[test]
    fn a_held_monitor_lock_means_running() {
        let root = tempfile::tempdir().unwrap();
        let store = Store::at(root.path().to_owned());
        let sandbox = store.create(&spec("m")).unwrap();
        let guard = sandbox.lock_for_monitor(Duration::from_secs(1)).unwrap();
        let mut state = State::starting(std::process::id(), 1);
        state.phase = super::super::state::Phase::Running;
        sandbox.write_state(&state).unwrap();
        assert_eq!(sandbox.status().unwrap(), Status::Running);
        assert!(sandbox.lock_for_monitor(Duration::from_millis(50)).is_err());
        drop(guard);
        assert!(matches!(sandbox.status().unwrap(), Status::Exited(_)));
        assert!(sandbox
            .wait_for_monitor_exit(Duration::from_millis(10))
            .unwrap());
    }
}
