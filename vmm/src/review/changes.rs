//! What the guest changed in a reviewable workspace's copy: each entry added, deleted,
//! modified, or whose mode or type changed, against the manifest; and whether the host's
//! file changed meanwhile (a conflict: accepting would overwrite it).
//!
//! The copy is the guest's: it is walked without following symlinks, read through cap-std
//! (nothing beneath it can lead outside it), and at most [`MAX_ENTRIES`] entries are looked
//! at. An entry whose stamp (size, times, mode) is as recorded is unchanged — the guest can
//! set a file's mtime back but not its ctime; one whose stamp differs is compared by content.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use cap_std::fs::Dir;
use serde::Serialize;

use super::{io, Kind, Review, ReviewError, Stamp};

/// Entries of a copy looked at, at most (every entry counts, those skipped too).
pub const MAX_ENTRIES: usize = 1_000_000;
/// Directories deep, at most.
pub const MAX_DEPTH: usize = 128;
/// Files larger than this are compared but not shown as text.
pub const MAX_TEXT_DIFF: u64 = 1024 * 1024;

/// One change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// The path, relative to the workspace.
    pub path: String,
    /// What happened to it.
    pub change: ChangeKind,
    /// What it is in the copy now (`None`: deleted).
    pub kind: Option<Kind>,
    /// The host's file changed since the copy was made, or exists though it was not copied.
    pub conflict: bool,
}

impl Change {
    /// Whether accepting it changes what runs on the host, or what lies outside the
    /// workspace: git's hooks and configuration, a symlink leading out. Accepting every
    /// change leaves these out; they are accepted when named.
    pub fn needs_naming(&self, review: &Review) -> bool {
        let path = self.path.as_str();
        let git_runs_it = path == ".git/config"
            || path.starts_with(".git/hooks/")
            || path == ".git/hooks"
            || (path.starts_with(".git/modules/") && path.ends_with("/config"));
        git_runs_it || (self.kind == Some(Kind::Symlink) && leads_out(review, path))
    }
}

/// Whether the copy's symlink `path` points outside the workspace (absolute, or up past it).
fn leads_out(review: &Review, path: &str) -> bool {
    let Ok(tree) = open(&review.tree()) else {
        return true;
    };
    let Ok(target) = tree.read_link_contents(path) else {
        return true;
    };
    if target.is_absolute() {
        return true;
    }
    let mut depth = path.matches('/').count() as i64;
    for part in target.components() {
        match part {
            std::path::Component::ParentDir => depth -= 1,
            std::path::Component::Normal(_) => depth += 1,
            _ => {}
        }
        if depth < 0 {
            return true;
        }
    }
    false
}

/// The target of the copy's symlink `path`, for showing.
pub fn link_target(review: &Review, path: &str) -> Option<String> {
    let tree = open(&review.tree()).ok()?;
    tree.read_link_contents(path)
        .ok()
        .map(|t| t.display().to_string())
}

/// What happened to an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    /// New in the copy.
    Added,
    /// Gone from the copy.
    Deleted,
    /// Other contents (a symlink: another target).
    Modified,
    /// Only its permission bits.
    Mode,
    /// Replaced by another kind of entry (a file by a directory, say).
    Type,
}

impl ChangeKind {
    /// The letter `krunbox diff` shows.
    pub fn letter(self) -> char {
        match self {
            Self::Added => 'A',
            Self::Deleted => 'D',
            Self::Modified => 'M',
            Self::Mode => 'P',
            Self::Type => 'T',
        }
    }
}

pub(super) fn open(path: &Path) -> Result<Dir, ReviewError> {
    Ok(Dir::open_ambient_dir(path, cap_std::ambient_authority()).map_err(io("open", path))?)
}

/// The entries beneath `dir` (not following symlinks), by relative path.
pub(super) fn walk(dir: &Dir, root: &Path) -> Result<BTreeMap<String, Stamp>, ReviewError> {
    let mut found = BTreeMap::new();
    let mut pending = vec![String::new()];
    let mut seen = 0usize;
    while let Some(relative) = pending.pop() {
        let listing = if relative.is_empty() {
            dir.entries()
        } else {
            dir.read_dir(&relative)
        };
        let listing = listing.map_err(io("list", &root.join(&relative)))?;
        let depth = if relative.is_empty() {
            0
        } else {
            relative.matches('/').count() + 1
        };
        let too_much = |reason: String| ReviewError::Workspace {
            path: root.to_owned(),
            reason,
        };
        if depth > MAX_DEPTH {
            return Err(too_much(format!(
                "the copy is over {MAX_DEPTH} directories deep"
            )));
        }
        for entry in listing {
            let entry = entry.map_err(io("list", &root.join(&relative)))?;
            seen += 1;
            if seen > MAX_ENTRIES {
                return Err(too_much(format!("the copy has over {MAX_ENTRIES} entries")));
            }
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let path = if relative.is_empty() {
                name.to_owned()
            } else {
                format!("{relative}/{name}")
            };
            let Ok(meta) = dir.symlink_metadata(&path) else {
                continue;
            };
            let Some(stamp) = Stamp::of(&meta) else {
                continue;
            };
            if stamp.kind == Kind::Dir {
                pending.push(path.clone());
            }
            found.insert(path, stamp);
        }
    }
    Ok(found)
}

/// The stamp of `path` beneath `dir`, if there is something there.
pub(super) fn stamp_at(dir: &Dir, path: &str) -> Option<Stamp> {
    dir.symlink_metadata(path)
        .ok()
        .and_then(|meta| Stamp::of(&meta))
}

/// Opens the regular file `path` beneath `dir` for reading: only if it is one when looked at
/// (so a device node or FIFO is never opened), without following a symlink or blocking, and
/// only if what was opened is what was looked at.
pub(super) fn open_file(dir: &Dir, path: &str) -> std::io::Result<cap_std::fs::File> {
    use cap_std::fs::{MetadataExt, OpenOptionsExt};
    let looked = dir.symlink_metadata(path)?;
    if !looked.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut options = cap_std::fs::OpenOptions::new();
    options
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY);
    let file = dir.open_with(path, &options)?;
    let opened = file.metadata()?;
    if !opened.is_file() || (opened.ino(), opened.dev()) != (looked.ino(), looked.dev()) {
        return Err(std::io::Error::other("replaced while it was opened"));
    }
    Ok(file)
}

/// Reads at most `limit` bytes of the regular file `path` beneath `dir` ([`open_file`]).
pub(super) fn read_file(dir: &Dir, path: &str, limit: u64) -> std::io::Result<Vec<u8>> {
    let mut contents = Vec::new();
    open_file(dir, path)?
        .take(limit)
        .read_to_end(&mut contents)?;
    Ok(contents)
}

/// Whether two files have the same contents, compared a block at a time.
fn same_contents(a: &Dir, b: &Dir, path: &str) -> bool {
    let (Ok(mut a), Ok(mut b)) = (open_file(a, path), open_file(b, path)) else {
        return false;
    };
    let (mut block_a, mut block_b) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        let Ok(n) = read_full(&mut a, &mut block_a) else {
            return false;
        };
        let Ok(m) = read_full(&mut b, &mut block_b) else {
            return false;
        };
        if n != m || block_a[..n] != block_b[..m] {
            return false;
        }
        if n == 0 {
            return true;
        }
    }
}

/// Reads until `buffer` is full or the file ends; returns how much was read.
fn read_full(file: &mut cap_std::fs::File, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

fn same_link(a: &Dir, b: &Dir, path: &str) -> bool {
    match (a.read_link_contents(path), b.read_link_contents(path)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// The review's changes, by path.
pub fn changes(review: &Review) -> Result<Vec<Change>, ReviewError> {
    let manifest = review.manifest();
    let tree_path = review.tree();
    let tree = open(&tree_path)?;
    let host = open(&manifest.workspace)?;
    let copy = walk(&tree, &tree_path)?;
    let mut changes = Vec::new();
    for (path, now) in &copy {
        let conflict = |change: ChangeKind| {
            let host_now = stamp_at(&host, path);
            match manifest.entries.get(path) {
                Some(entry) => host_now.is_none_or(|h| !h.same_as(&entry.host)),
                None => change == ChangeKind::Added && host_now.is_some(),
            }
        };
        let change = match manifest.entries.get(path) {
            None => Some(ChangeKind::Added),
            Some(entry) if entry.copy.kind != now.kind => Some(ChangeKind::Type),
            Some(entry) if now.same_as(&entry.copy) => None,
            Some(entry) => {
                let contents_same = match now.kind {
                    Kind::Dir => true,
                    Kind::Symlink => same_link(&tree, &host, path),
                    Kind::File if entry.rewritten => false,
                    Kind::File => now.size == entry.host.size && same_contents(&tree, &host, path),
                };
                if !contents_same {
                    Some(ChangeKind::Modified)
                } else if now.mode_carried() != entry.copy.mode_carried() {
                    Some(ChangeKind::Mode)
                } else {
                    None
                }
            }
        };
        if let Some(change) = change {
            changes.push(Change {
                path: path.clone(),
                change,
                kind: Some(now.kind),
                conflict: conflict(change),
            });
        }
    }
    for (path, entry) in &manifest.entries {
        if !copy.contains_key(path) {
            let host_now = stamp_at(&host, path);
            changes.push(Change {
                path: path.clone(),
                change: ChangeKind::Deleted,
                kind: None,
                conflict: host_now.is_none_or(|h| !h.same_as(&entry.host)),
            });
        }
    }
    changes.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(changes)
}

/// A unified diff of `change` (text files), or a line saying what changed.
pub fn patch(review: &Review, change: &Change) -> Result<String, ReviewError> {
    let tree = open(&review.tree())?;
    let host = open(&review.manifest().workspace)?;
    let path = &change.path;
    let text_of = |dir: &Dir| -> Option<String> {
        let meta = dir.symlink_metadata(path).ok()?;
        if meta.file_type().is_symlink() {
            return dir
                .read_link_contents(path)
                .ok()
                .map(|target| format!("-> {}\n", target.display()));
        }
        if !meta.is_file() || meta.len() > MAX_TEXT_DIFF {
            return None;
        }
        let bytes = read_file(dir, path, MAX_TEXT_DIFF).ok()?;
        if bytes.contains(&0) {
            return None;
        }
        String::from_utf8(bytes).ok()
    };
    let header = format!("--- a/{path}\n+++ b/{path}\n");
    let (old, new) = match change.change {
        ChangeKind::Added => (Some(String::new()), text_of(&tree)),
        ChangeKind::Deleted => return Ok(format!("deleted: {path}\n")),
        ChangeKind::Mode => {
            let mode = |dir: &Dir| stamp_at(dir, path).map_or(0, |s| s.mode_carried());
            return Ok(format!(
                "mode {path}: {:o} -> {:o}\n",
                mode(&host),
                mode(&tree)
            ));
        }
        ChangeKind::Type => {
            let kind = |dir: &Dir| stamp_at(dir, path).map(|s| format!("{:?}", s.kind));
            return Ok(format!(
                "type {path}: {} -> {}\n",
                kind(&host).unwrap_or_else(|| "none".into()),
                kind(&tree).unwrap_or_else(|| "none".into())
            ));
        }
        ChangeKind::Modified => (text_of(&host), text_of(&tree)),
    };
    match (old, new) {
        (Some(old), Some(new)) => {
            let diff = similar::TextDiff::from_lines(&old, &new);
            let body = diff.unified_diff().context_radius(3).to_string();
            Ok(format!("{header}{body}"))
        }
        _ => Ok(format!("binary or large file changed: {path}\n")),
    }
}

/// `changes` as JSON objects (`path`, `change`, `kind`, `conflict`), each with its `patch`
/// if asked: what `krunbox diff --format json` prints and the API answers.
pub fn to_json(
    review: &Review,
    changes: &[&Change],
    with_patch: bool,
) -> Result<serde_json::Value, ReviewError> {
    let mut items = Vec::with_capacity(changes.len());
    for change in changes {
        let mut item = serde_json::to_value(change).unwrap_or_default();
        if with_patch {
            item["patch"] = patch(review, change)?.into();
        }
        items.push(item);
    }
    Ok(serde_json::Value::Array(items))
}
