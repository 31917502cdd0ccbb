//! Reviewable workspaces (`--workspace=review`): the guest gets a copy of the project, not the
//! project, and nothing it writes reaches the user's files until the user accepts it.
//!
//! ```text
//! $DATA/reviews/ID/review.json   the manifest: the workspace, and each copied entry's
//!                                 state on the host and in the copy when it was copied
//! $DATA/reviews/ID/tree/         the copy, shared read-write with the guest
//! ```
//!
//! ID is the sandbox's name (`create`), or `run-…` for a `krunbox run`, kept after the run
//! when the guest changed something. The copy is made with `std::fs::copy`, which clones on
//! APFS (`fclonefileat`) and reflinks on btrfs/XFS (`copy_file_range`), and copies otherwise.
//! Files that commonly hold secrets are left out ([`DEFAULT_EXCLUDES`]), and credentials in
//! `.git/config` URLs are removed from its copy.
//!
//! [`changes`] compares the copy with the manifest (the guest's writes change a file's ctime,
//! which it cannot set back); [`apply`] accepts changes into the workspace (refusing those
//! whose host file changed since the copy) or rejects them (the copy is put back). The copy
//! is the guest's: it is read without following symlinks beyond it (cap-std), and what is
//! accepted is written beneath the workspace the same way, with permission bits only.

pub mod apply;
pub mod changes;
mod copy;

use crate::io_error::io;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::names::{self, InvalidName};

const MANIFEST: &str = "review.json";
const TREE: &str = "tree";

/// Names left out of the copy unless `--workspace-include` names them (matched case aside, at
/// any depth): environment files, keys and certificates, SSH, cloud, registry and git
/// credentials.
pub const DEFAULT_EXCLUDES: &[&str] = &[
    ".env",
    ".env.*",
    "*.env",
    ".envrc",
    "*.pem",
    "*.key",
    "*.p12",
    "*.pfx",
    "id_rsa*",
    "id_ecdsa*",
    "id_ed25519*",
    ".ssh/",
    ".aws/",
    ".azure/",
    ".gcloud/",
    ".docker/",
    ".kube/",
    ".netrc",
    ".npmrc",
    ".pypirc",
    ".git-credentials",
];

/// Why a review operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// A bad name.
    #[error(transparent)]
    Name(#[from] InvalidName),
    /// No such review.
    #[error("no reviewable workspace named {0:?} (a sandbox or run with --workspace=review)")]
    NotFound(String),
    /// The workspace cannot be copied.
    #[error("the workspace {path}: {reason}")]
    Workspace {
        /// The workspace.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Host files changed since the copy: accepting would overwrite them.
    #[error("not accepted: changed on the host since the copy was made (accept the others by naming them, or reject these): {}", .0.join(", "))]
    Conflicts(Vec<String>),
    /// The guest can still write its copy: what is accepted must be what was reviewed.
    #[error("sandbox {0:?} is running, so its copy can change under the review: `krunbox pause {0}` (or stop it) first")]
    GuestRunning(String),
    /// A path named that has no change.
    #[error("no change at {0:?} (see `krunbox diff`)")]
    NoSuchChange(String),
    /// A file operation.
    #[error(transparent)]
    Io(#[from] crate::io_error::IoError),
    /// A malformed manifest.
    #[error("malformed review file {path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// The data directory.
    #[error(transparent)]
    DataDir(#[from] crate::private_dir::PrivateDirError),
}

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
}

/// What `stat` said of an entry, as far as a change shows in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    /// What it is.
    pub kind: Kind,
    /// Permission bits.
    pub mode: u32,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, seconds and nanoseconds.
    pub mtime: (i64, i64),
    /// Change time (a guest cannot set it back), seconds and nanoseconds.
    pub ctime: (i64, i64),
    /// The inode and device: an entry replaced by another is a change even if all else
    /// matches.
    pub identity: (u64, u64),
}

impl Stamp {
    /// The stamp of `meta`; `None` for what a review does not carry (FIFOs, devices).
    pub fn of(meta: &cap_std::fs::Metadata) -> Option<Self> {
        use cap_std::fs::MetadataExt;
        let file_type = meta.file_type();
        let kind = if file_type.is_symlink() {
            Kind::Symlink
        } else if file_type.is_dir() {
            Kind::Dir
        } else if file_type.is_file() {
            Kind::File
        } else {
            return None;
        };
        Some(Self {
            kind,
            mode: meta.mode() & 0o777,
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
            identity: (meta.ino(), meta.dev()),
        })
    }

    /// The permission a review carries: only whether it is executable (as git does), so a
    /// guest's 0777 or 0600 never reaches the workspace.
    pub fn mode_carried(&self) -> u32 {
        match self.kind {
            Kind::Dir => 0o755,
            _ if self.mode & 0o111 != 0 => 0o755,
            _ => 0o644,
        }
    }

    /// Whether nothing shows a change from `earlier`: a file's or symlink's contents, mode
    /// and times; a directory's mode (its times change with its entries, which are compared
    /// themselves).
    pub fn same_as(&self, earlier: &Stamp) -> bool {
        match (self.kind, earlier.kind) {
            (Kind::Dir, Kind::Dir) => self.identity == earlier.identity,
            _ => self == earlier,
        }
    }
}

/// One copied entry: its state on the host and in the copy when the copy was made (or when
/// a change to it was last accepted or rejected).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The workspace's entry.
    pub host: Stamp,
    /// The copy's.
    pub copy: Stamp,
    /// The copy's contents differ from the host's on purpose (credentials removed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rewritten: bool,
}

/// What a review keeps about its copy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// The workspace, on the host.
    pub workspace: PathBuf,
    /// When the copy was made (seconds since the epoch).
    pub created_at: u64,
    /// Every copied entry, by its path relative to the workspace (`/`-separated).
    pub entries: BTreeMap<String, Entry>,
    /// The patterns that were left out.
    pub excludes: Vec<String>,
}

/// One reviewable workspace.
#[derive(Debug)]
pub struct Review {
    id: String,
    dir: PathBuf,
    manifest: Manifest,
}

/// Where reviews live (`$DATA/reviews`).
#[derive(Debug)]
pub struct ReviewStore {
    root: PathBuf,
}

impl ReviewStore {
    /// The user's store.
    pub fn new() -> Result<Self, ReviewError> {
        Ok(Self::at(crate::paths::data_dir()?.join("reviews")))
    }

    /// The store under `root` (tests).
    pub fn at(root: PathBuf) -> Self {
        Self { root }
    }

    /// Copies `workspace` into a new review `id` (replacing one left by an earlier sandbox of
    /// that name), leaving out what `excludes` match; `owner` (uid, gid) gets the copy when
    /// krunbox runs as root. Returns it with the directory to share.
    pub fn create(
        &self,
        id: &str,
        workspace: &Path,
        excludes: &[String],
        owner: Option<(u32, u32)>,
    ) -> Result<Review, ReviewError> {
        names::validate("review", id)?;
        crate::private_dir::create_all(&self.root).map_err(io("create", &self.root))?;
        let dir = self.root.join(id);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io("remove", &dir))?;
        }
        let tree = dir.join(TREE);
        std::fs::create_dir_all(&tree).map_err(io("create", &tree))?;
        let made = copy::copy_tree(workspace, &tree, excludes, owner);
        let entries = match made {
            Ok(entries) => entries,
            Err(err) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(err);
            }
        };
        let manifest = Manifest {
            workspace: workspace.to_owned(),
            created_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            entries,
            excludes: excludes.to_vec(),
        };
        let review = Review {
            id: id.to_owned(),
            dir,
            manifest,
        };
        review.save()?;
        Ok(review)
    }

    /// The review `id`.
    pub fn open(&self, id: &str) -> Result<Review, ReviewError> {
        names::validate("review", id)?;
        let dir = self.root.join(id);
        let path = dir.join(MANIFEST);
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ReviewError::NotFound(id.to_owned()))
            }
            Err(e) => return Err(io("read", &path)(e).into()),
        };
        let manifest =
            serde_json::from_slice(&text).map_err(|source| ReviewError::Json { path, source })?;
        Ok(Review {
            id: id.to_owned(),
            dir,
            manifest,
        })
    }

    /// Removes the review `id`, if there is one.
    pub fn remove(&self, id: &str) -> Result<(), ReviewError> {
        names::validate("review", id)?;
        let dir = self.root.join(id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("remove", &dir)(e).into()),
        }
    }
}

impl Review {
    /// Its name.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The copy (what the guest is given).
    pub fn tree(&self) -> PathBuf {
        self.dir.join(TREE)
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    fn save(&self) -> Result<(), ReviewError> {
        let path = self.dir.join(MANIFEST);
        let temp = self.dir.join(format!("{MANIFEST}.tmp"));
        let text =
            serde_json::to_vec_pretty(&self.manifest).map_err(|source| ReviewError::Json {
                path: path.clone(),
                source,
            })?;
        std::fs::write(&temp, text).map_err(io("write", &temp))?;
        Ok(std::fs::rename(&temp, &path).map_err(io("rename", &path))?)
    }
}

/// Removes the review `id` unless it has changes nobody accepted or rejected (its sandbox is
/// gone, its run is over); nothing to do if there is none.
pub fn release(id: &str) -> Result<(), ReviewError> {
    let store = ReviewStore::new()?;
    let review = match store.open(id) {
        Ok(review) => review,
        Err(ReviewError::NotFound(_)) => return Ok(()),
        Err(err) => return Err(err),
    };
    if changes::changes(&review)?.is_empty() {
        store.remove(id)?;
    }
    Ok(())
}

/// After an accept or reject: a review with nothing left to decide and no sandbox that
/// uses it (a run's, a removed sandbox's) is removed.
pub fn settle(review: &Review) -> Result<(), ReviewError> {
    let has_sandbox = crate::sandbox::store::Store::new()
        .ok()
        .is_some_and(|sandboxes| sandboxes.open(review.id()).is_ok());
    if !has_sandbox {
        release(review.id())?;
    }
    Ok(())
}

/// Whether `name` (one path component) is left out by `patterns`: `*` and `?` match within
/// a name, case aside; a pattern ending in `/` matches directories only.
pub fn excluded(patterns: &[String], name: &str, is_dir: bool) -> bool {
    let name = name.to_ascii_lowercase();
    patterns.iter().any(|pattern| {
        let pattern = pattern.to_ascii_lowercase();
        match pattern.strip_suffix('/') {
            Some(dir_pattern) => is_dir && glob(dir_pattern.as_bytes(), name.as_bytes()),
            None => glob(pattern.as_bytes(), name.as_bytes()),
        }
    })
}

/// Refuses a pattern that could never match a name (a `/` inside it).
pub fn check_pattern(pattern: &str) -> Result<(), ReviewError> {
    if pattern.is_empty() || pattern.trim_end_matches('/').contains('/') {
        return Err(ReviewError::Workspace {
            path: PathBuf::from(pattern),
            reason: "a pattern matches one name at any depth (like node_modules/ or *.log), \
                     not a path"
                .into(),
        });
    }
    Ok(())
}

fn glob(pattern: &[u8], name: &[u8]) -> bool {
    match (pattern.first(), name.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            glob(&pattern[1..], name) || (!name.is_empty() && glob(pattern, &name[1..]))
        }
        (Some(b'?'), Some(_)) => glob(&pattern[1..], &name[1..]),
        (Some(p), Some(n)) if p == n => glob(&pattern[1..], &name[1..]),
        _ => false,
    }
}

/// The patterns a workspace copy leaves out: the defaults but those `include` names, plus
/// `exclude`.
pub fn excludes(exclude: &[String], include: &[String]) -> Vec<String> {
    DEFAULT_EXCLUDES
        .iter()
        .map(|p| (*p).to_owned())
        .filter(|p| !include.contains(p))
        .chain(exclude.iter().cloned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excludes_match_names_and_directories() {
        let patterns = excludes(&["node_modules/".into()], &["*.pem".into()]);
        assert!(excluded(&patterns, ".env", false));
        assert!(excluded(&patterns, ".env.local", false));
        assert!(!excluded(&patterns, "env", false));
        assert!(excluded(&patterns, "server.key", false));
        assert!(!excluded(&patterns, "cert.pem", false), "included again");
        assert!(excluded(&patterns, ".ssh", true));
        assert!(
            !excluded(&patterns, ".ssh", false),
            "a file named .ssh is kept"
        );
        assert!(excluded(&patterns, "node_modules", true));
        assert!(excluded(&patterns, "SERVER.KEY", false), "case aside");
        assert!(excluded(&patterns, "prod.env", false) && excluded(&patterns, ".npmrc", false));
        assert!(check_pattern("a/b").is_err() && check_pattern("node_modules/").is_ok());
        assert!(glob(b"a*b?c", b"axxbyc") && !glob(b"a*b?c", b"abc"));
    }
}

#[cfg(test)]
mod flow_tests {
    use std::os::unix::fs::PermissionsExt;

    use super::changes::{changes, patch, ChangeKind};
    use super::*;

    fn write(path: &Path, text: &str) {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, text).unwrap();
    }

    fn summary(review: &Review) -> Vec<(String, ChangeKind, bool)> {
        changes(review)
            .unwrap()
            .into_iter()
            .map(|c| (c.path, c.change, c.conflict))
            .collect()
    }

    #[test]
    fn a_copy_is_reviewed_accepted_and_rejected_change_by_change() {
        let root = tempfile::tempdir().unwrap();
        let ws = root.path().join("project");
        write(&ws.join("src/main.rs"), "fn main() {}\n");
        write(&ws.join("README"), "hello\n");
        write(&ws.join("old.txt"), "to delete\n");
        write(&ws.join("run.sh"), "echo\n");
        write(&ws.join(".env"), "TOKEN=secret\n");
        write(&ws.join("keys/id.pem"), "key\n");
        write(
            &ws.join(".git/config"),
            "[remote \"o\"]\n\turl = https://me:tok@host/x.git\n",
        );
        let store = ReviewStore::at(root.path().join("reviews"));
        let mut review = store.create("box", &ws, &excludes(&[], &[]), None).unwrap();
        let tree = review.tree();
        // Left out and stripped; unchanged so far.
        assert!(!tree.join(".env").exists() && !tree.join("keys/id.pem").exists());
        assert!(tree.join("keys").is_dir());
        let git = std::fs::read_to_string(tree.join(".git/config")).unwrap();
        assert!(git.contains("https://host/x.git") && !git.contains("tok"));
        assert!(summary(&review).is_empty(), "{:?}", summary(&review));

        // What an agent does in its copy.
        write(
            &tree.join("src/main.rs"),
            "fn main() { println!(\"hi\"); }\n",
        );
        write(&tree.join("src/new.rs"), "pub fn x() {}\n");
        std::fs::remove_file(tree.join("old.txt")).unwrap();
        std::fs::set_permissions(tree.join("run.sh"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        let outside = root.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("escape")).unwrap();
        write(&tree.join(".env"), "TOKEN=from-the-agent\n");
        // A change hidden behind an old mtime still shows (its ctime moved).
        std::fs::write(tree.join("README"), "HELLO\n").unwrap();
        let old = std::fs::metadata(ws.join("README"))
            .unwrap()
            .modified()
            .unwrap();
        std::fs::File::options()
            .write(true)
            .open(tree.join("README"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert_eq!(
            summary(&review),
            [
                (".env".into(), ChangeKind::Added, true),
                ("README".into(), ChangeKind::Modified, false),
                ("escape".into(), ChangeKind::Added, false),
                ("old.txt".into(), ChangeKind::Deleted, false),
                ("run.sh".into(), ChangeKind::Mode, false),
                ("src/main.rs".into(), ChangeKind::Modified, false),
                ("src/new.rs".into(), ChangeKind::Added, false),
            ]
        );
        let all = changes(&review).unwrap();
        let main = all.iter().find(|c| c.path == "src/main.rs").unwrap();
        let text = patch(&review, main).unwrap();
        assert!(
            text.contains("-fn main() {}") && text.contains("+fn main() { println!"),
            "{text}"
        );

        // Everything at once is refused: .env exists on the host and was never copied.
        let err = apply::accept(&mut review, &[]).unwrap_err().to_string();
        assert!(
            err.contains(".env") && err.contains("changed on the host"),
            "{err}"
        );
        assert_eq!(
            std::fs::read_to_string(ws.join(".env")).unwrap(),
            "TOKEN=secret\n"
        );
        // A change the user names; a path without a change is an error.
        assert!(apply::accept(&mut review, &["nope".into()]).is_err());
        apply::accept(
            &mut review,
            &["src".into(), "old.txt".into(), "run.sh".into()],
        )
        .unwrap();
        assert!(std::fs::read_to_string(ws.join("src/main.rs"))
            .unwrap()
            .contains("println"));
        assert_eq!(
            std::fs::read_to_string(ws.join("src/new.rs")).unwrap(),
            "pub fn x() {}\n"
        );
        assert!(!ws.join("old.txt").exists());
        let mode = std::fs::metadata(ws.join("run.sh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        // An accepted symlink leads nowhere outside: the guest makes it a directory with a
        // file in its copy, and accepting the file alone (through the host's symlink) fails.
        apply::accept(&mut review, &["escape".into()]).unwrap();
        assert_eq!(std::fs::read_link(ws.join("escape")).unwrap(), outside);
        std::fs::remove_file(tree.join("escape")).unwrap();
        write(&tree.join("escape/passwd"), "x\n");
        assert!(apply::accept(&mut review, &["escape/passwd".into()]).is_err());
        assert!(!outside.join("passwd").exists());
        std::fs::remove_dir_all(tree.join("escape")).unwrap();

        // The host changed README meanwhile: accepting it is refused.
        std::thread::sleep(std::time::Duration::from_millis(20));
        write(&ws.join("README"), "edited on the host\n");
        let err = apply::accept(&mut review, &["README".into()]).unwrap_err();
        assert!(matches!(err, ReviewError::Conflicts(ref p) if p == &["README".to_owned()]));
        // Rejected: the copy gets the host's version; the agent's .env goes.
        apply::reject(&mut review, &["README".into(), ".env".into()]).unwrap();
        assert_eq!(
            std::fs::read_to_string(tree.join("README")).unwrap(),
            "edited on the host\n"
        );
        assert!(!tree.join(".env").exists());
        assert_eq!(
            summary(&review),
            [("escape".into(), ChangeKind::Deleted, false)]
        );
        // Reopened from its manifest, the same.
        let reopened = store.open("box").unwrap();
        assert_eq!(summary(&reopened).len(), 1);
        store.remove("box").unwrap();
        assert!(matches!(store.open("box"), Err(ReviewError::NotFound(_))));
    }

    #[test]
    fn accepting_everything_keeps_what_runs_on_the_host_and_what_was_never_copied() {
        let root = tempfile::tempdir().unwrap();
        let ws = root.path().join("project");
        write(&ws.join("config/app.toml"), "a = 1\n");
        write(&ws.join("config/prod.key"), "never copied\n");
        write(&ws.join("tool"), "#!/bin/sh\n");
        std::fs::create_dir_all(ws.join(".git/hooks")).unwrap();
        let store = ReviewStore::at(root.path().join("reviews"));
        let mut review = store.create("b", &ws, &excludes(&[], &[]), None).unwrap();
        let tree = review.tree();
        // The agent removes config/ (it never saw prod.key), plants a hook and a link out, and
        // makes its tool world-writable.
        std::fs::remove_dir_all(tree.join("config")).unwrap();
        write(
            &tree.join(".git/hooks/post-checkout"),
            "#!/bin/sh\ncurl evil\n",
        );
        std::os::unix::fs::symlink("/home", tree.join("home")).unwrap();
        std::fs::set_permissions(tree.join("tool"), std::fs::Permissions::from_mode(0o777))
            .unwrap();
        // config/ holds a file the copy never had: deleting it is refused.
        let err = apply::accept(&mut review, &["config".into()]).unwrap_err();
        assert!(
            matches!(err, ReviewError::Conflicts(ref p) if p == &["config".to_owned()]),
            "{err}"
        );
        assert!(ws.join("config/prod.key").exists() && ws.join("config/app.toml").exists());
        // Everything else: the hook and the link are left for naming; the mode is git's.
        let done = apply::accept(&mut review, &["tool".into(), ".git".into(), "home".into()])
            .map(|d| d.accepted.len());
        assert_eq!(done.unwrap(), 3, "named, they are accepted");
        let mode = std::fs::metadata(ws.join("tool"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o755, "never world-writable");
        let root2 = tempfile::tempdir().unwrap();
        let ws2 = root2.path().join("p");
        std::fs::create_dir_all(ws2.join(".git/hooks")).unwrap();
        let mut second = store.create("c", &ws2, &excludes(&[], &[]), None).unwrap();
        write(&second.tree().join(".git/hooks/pre-commit"), "evil\n");
        std::os::unix::fs::symlink("../../etc", second.tree().join("up")).unwrap();
        write(&second.tree().join("ok.txt"), "fine\n");
        let all = apply::accept(&mut second, &[]).unwrap();
        let left: Vec<&str> = all.left_out.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(left, [".git/hooks/pre-commit", "up"]);
        assert!(ws2.join("ok.txt").exists() && !ws2.join(".git/hooks/pre-commit").exists());
        assert!(std::fs::symlink_metadata(ws2.join("up")).is_err());
    }
}
