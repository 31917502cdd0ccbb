//! Accepting changes into the workspace, and rejecting them (the copy put back).
//!
//! Accept refuses, before writing anything:
//! - while the sandbox's guest can write (running, not paused): what is accepted must be
//!   what the user reviewed, so `krunbox pause` (or stop) it first;
//! - a change whose host file changed since the copy (or exists though it was not copied: a
//!   secret left out), and a deleted directory that still holds anything the copy did not
//!   (excluded files, files made on the host since);
//! - `.git/config`, whose copy had its credentials removed.
//!
//! Accepting everything leaves out what needs naming ([`Change::needs_naming`]: git's hooks
//! and configuration, symlinks leading out of the workspace), and says so. Writes go beneath
//! the workspace through cap-std (no symlink, the guest's or the host's, leads a write
//! outside it), files under a fresh temporary name renamed into place, with the permission
//! git would keep (0644, or 0755 if executable), owned by the workspace's owner. Deletions go
//! deepest first and remove only entries the review knows; additions go shallowest first. The
//! manifest records what was done even when a step fails.

use std::io::Write;

use cap_std::fs::{Dir, MetadataExt, OpenOptionsExt, Permissions, PermissionsExt};

use super::changes::{self, open, open_file, stamp_at, Change, ChangeKind};
use super::{io, Entry, Kind, Review, ReviewError};

/// What an accept did, and what it left for the user to name.
#[derive(Debug, Default)]
pub struct Accepted {
    /// Written into the workspace.
    pub accepted: Vec<Change>,
    /// Not accepted because accepting everything does not take them (see the module docs).
    pub left_out: Vec<Change>,
}

fn names(change: &Change, path: &str) -> bool {
    let path = path.trim_end_matches('/');
    change.path == path || change.path.starts_with(&format!("{path}/"))
}

/// The changes `paths` name (a path names itself and everything beneath it); all of them
/// when `paths` is empty.
fn chosen(all: Vec<Change>, paths: &[String]) -> Result<Vec<Change>, ReviewError> {
    if paths.is_empty() {
        return Ok(all);
    }
    if let Some(missing) = paths.iter().find(|p| !all.iter().any(|c| names(c, p))) {
        return Err(ReviewError::NoSuchChange(missing.clone()));
    }
    Ok(all
        .into_iter()
        .filter(|c| paths.iter().any(|p| names(c, p)))
        .collect())
}

fn depth(path: &str) -> usize {
    path.matches('/').count()
}

/// `changes` in the order to apply them: those that remove (of kind `removing`) first,
/// deepest first, then the others, shallowest first (a directory before what goes in it).
fn in_order(changes: &[Change], removing: ChangeKind) -> Vec<Change> {
    let mut ordered = changes.to_vec();
    ordered.sort_by_key(|c| {
        if c.change == removing {
            (0, usize::MAX - depth(&c.path))
        } else {
            (1, depth(&c.path))
        }
    });
    ordered
}

/// Refuses while the review's sandbox has a guest that can write (booting or running).
fn check_guest_frozen(review: &Review) -> Result<(), ReviewError> {
    let Ok(sandboxes) = crate::sandbox::store::Store::new() else {
        return Ok(());
    };
    let Ok(sandbox) = sandboxes.open(review.id()) else {
        return Ok(());
    };
    use crate::sandbox::state::Status;
    match sandbox.status() {
        Ok(Status::Running | Status::Starting) => {
            Err(ReviewError::GuestRunning(review.id().into()))
        }
        _ => Ok(()),
    }
}

/// Writes the chosen changes into the workspace.
pub fn accept(review: &mut Review, paths: &[String]) -> Result<Accepted, ReviewError> {
    check_guest_frozen(review)?;
    let mut chosen = chosen(changes::changes(review)?, paths)?;
    let mut left_out = Vec::new();
    if paths.is_empty() {
        let (named_only, rest): (Vec<_>, Vec<_>) =
            chosen.into_iter().partition(|c| c.needs_naming(review));
        chosen = rest;
        left_out = named_only;
    }
    let workspace = review.manifest.workspace.clone();
    let tree_path = review.tree();
    let (host, tree) = (open(&workspace)?, open(&tree_path)?);
    let mut refused: Vec<String> = chosen
        .iter()
        .filter(|c| c.conflict)
        .map(|c| c.path.clone())
        .collect();
    // A directory to delete (or replace) may hold only what is deleted with it.
    for change in &chosen {
        let replaces_a_dir = matches!(change.change, ChangeKind::Deleted | ChangeKind::Type)
            && stamp_at(&host, &change.path).is_some_and(|s| s.kind == Kind::Dir);
        if replaces_a_dir && !only_chosen_within(&host, &change.path, &chosen) {
            refused.push(change.path.clone());
        }
    }
    if !refused.is_empty() {
        refused.sort();
        refused.dedup();
        return Err(ReviewError::Conflicts(refused));
    }
    if let Some(rewritten) = chosen.iter().find(|c| {
        review
            .manifest
            .entries
            .get(&c.path)
            .is_some_and(|e| e.rewritten)
    }) {
        return Err(ReviewError::Workspace {
            path: workspace.join(&rewritten.path),
            reason: "its copy had its credentials removed: make that change on the host".into(),
        });
    }
    let owner = host.dir_metadata().ok().map(|m| (m.uid(), m.gid()));
    let mut result = Ok(());
    for change in &in_order(&chosen, ChangeKind::Deleted) {
        let path = change.path.as_str();
        let at = workspace.join(path);
        let step = match change.change {
            ChangeKind::Deleted => remove_known(&host, path).map_err(io("remove", &at)),
            ChangeKind::Type => remove_known(&host, path)
                .and_then(|()| put(&tree, &host, path, owner))
                .map_err(io("replace", &at)),
            _ => put(&tree, &host, path, owner).map_err(io("write", &at)),
        };
        if let Err(err) = step {
            result = Err(err);
            break;
        }
        restamp(review, &host, &tree, path);
    }
    // What was done is recorded even if a step failed.
    review.save()?;
    result?;
    Ok(Accepted {
        accepted: chosen,
        left_out,
    })
}

/// Whether everything beneath the host's directory `dir` is deleted by a chosen change.
fn only_chosen_within(host: &Dir, dir: &str, chosen: &[Change]) -> bool {
    let Ok(entries) = host.read_dir(dir) else {
        return false;
    };
    entries.flatten().all(|entry| {
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            return false;
        };
        let path = format!("{dir}/{name}");
        let deleted = chosen
            .iter()
            .any(|c| c.path == path && matches!(c.change, ChangeKind::Deleted | ChangeKind::Type));
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        deleted && (!is_dir || only_chosen_within(host, &path, chosen))
    })
}

/// Puts the chosen entries of the copy back as the workspace has them; returns them.
pub fn reject(review: &mut Review, paths: &[String]) -> Result<Vec<Change>, ReviewError> {
    let chosen = chosen(changes::changes(review)?, paths)?;
    let workspace = review.manifest.workspace.clone();
    let tree_path = review.tree();
    let (host, tree) = (open(&workspace)?, open(&tree_path)?);
    let owner = tree.dir_metadata().ok().map(|m| (m.uid(), m.gid()));
    let mut result = Ok(());
    // The guest's additions out first, then what it changed, put back.
    for change in &in_order(&chosen, ChangeKind::Added) {
        let path = change.path.as_str();
        let at = tree_path.join(path);
        let step = if change.change == ChangeKind::Deleted {
            Ok(())
        } else {
            // The copy is the guest's own: whatever is there goes.
            remove_all(&tree, path).map_err(io("remove", &at))
        };
        let step = step.and_then(|()| {
            if change.change == ChangeKind::Added || stamp_at(&host, path).is_none() {
                review.manifest.entries.remove(path);
                return Ok(());
            }
            put(&host, &tree, path, owner).map_err(io("restore", &at))?;
            restamp(review, &host, &tree, path);
            Ok(())
        });
        if let Err(err) = step {
            result = Err(err);
            break;
        }
    }
    review.save()?;
    result?;
    Ok(chosen)
}

/// Records `path` as it is now on both sides (a change accepted or rejected is no longer one).
fn restamp(review: &mut Review, host: &Dir, tree: &Dir, path: &str) {
    match (stamp_at(host, path), stamp_at(tree, path)) {
        (Some(host), Some(copy)) => {
            review.manifest.entries.insert(
                path.to_owned(),
                Entry {
                    host,
                    copy,
                    rewritten: false,
                },
            );
        }
        _ => {
            review.manifest.entries.remove(path);
        }
    }
}

/// Removes the host's entry `path`: a directory only if empty (what it held was removed by
/// changes of its own before).
fn remove_known(dir: &Dir, path: &str) -> std::io::Result<()> {
    match dir.symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => dir.remove_dir(path),
        Ok(_) => dir.remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes whatever is at `path` beneath `dir` (a directory with what is in it).
fn remove_all(dir: &Dir, path: &str) -> std::io::Result<()> {
    match dir.symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => dir.remove_dir_all(path),
        Ok(_) => dir.remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Copies the entry `path` from beneath `from` to beneath `to` (a directory: itself, not what
/// is in it, which are entries of their own), replacing a file or symlink there; `owner`
/// gets it when krunbox runs as root.
fn put(from: &Dir, to: &Dir, path: &str, owner: Option<(u32, u32)>) -> std::io::Result<()> {
    let Some(stamp) = stamp_at(from, path) else {
        return Err(std::io::ErrorKind::NotFound.into());
    };
    let permissions = Permissions::from_mode(stamp.mode_carried());
    match stamp.kind {
        Kind::Dir => {
            match to.symlink_metadata(path) {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => {
                    to.remove_file(path)?;
                    to.create_dir(path)?;
                }
                Err(_) => to.create_dir(path)?,
            }
            to.set_permissions(path, permissions)?;
        }
        Kind::Symlink => {
            let target = from.read_link_contents(path)?;
            remove_all(to, path)?;
            to.symlink_contents(target, path)?;
        }
        Kind::File => {
            let mut source = open_file(from, path)?;
            let (temp, mut file) = new_file(to, path)?;
            let written = std::io::copy(&mut source, &mut file)
                .and_then(|_| file.flush())
                .and_then(|()| file.sync_all())
                .and_then(|()| file.set_permissions(permissions))
                .and_then(|()| {
                    if to.symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
                        to.remove_dir_all(path)?;
                    }
                    to.rename(&temp, to, path)
                });
            if written.is_err() {
                let _ = to.remove_file(&temp);
            }
            written?;
        }
    }
    chown(to, path, owner)
}

/// A fresh file beside `path` (never one already there, never through a symlink), and its
/// name.
fn new_file(dir: &Dir, path: &str) -> std::io::Result<(String, cap_std::fs::File)> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SERIAL: AtomicU64 = AtomicU64::new(0);
    let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
    let mut options = cap_std::fs::OpenOptions::new();
    options
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW);
    for _ in 0..64 {
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let temp = format!(
            ".{name}.krunbox-{}-{}-{nonce:x}",
            std::process::id(),
            SERIAL.fetch_add(1, Ordering::Relaxed)
        );
        let temp = if parent.is_empty() {
            temp
        } else {
            format!("{parent}/{temp}")
        };
        match dir.open_with(&temp, &options) {
            Ok(file) => return Ok((temp, file)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::ErrorKind::AlreadyExists.into())
}

/// Gives `path` beneath `dir` to `owner` when krunbox runs as root (as the workspace's
/// owner's own tools would have made it).
fn chown(dir: &Dir, path: &str, owner: Option<(u32, u32)>) -> std::io::Result<()> {
    let Some((uid, gid)) = owner.filter(|_| nix::unistd::geteuid().is_root()) else {
        return Ok(());
    };
    use std::os::fd::AsFd;
    nix::unistd::fchownat(
        dir.as_fd(),
        std::path::Path::new(path),
        Some(uid.into()),
        Some(gid.into()),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(std::io::Error::from)
}
