//! `krunbox cp`: files and directory trees between the host and a running sandbox, through the
//! agent's file operations (stat, list, mkdir, put, get), so it works with any image (no `tar`
//! needed in the guest) and on any backend.
//!
//! Like `docker cp`: copying onto an existing directory puts the source inside it under its
//! own name; otherwise the destination is the new name. Permission bits are kept (on the
//! host: without setuid, setgid or sticky bits, under the user's umask); symlinks and special
//! files inside a tree are skipped with a warning, in both directions — a symlink is never
//! created, and so never followed later. Files written into the guest belong to the agent's
//! user (root).
//!
//! The host paths the user typed are resolved as typed; everything beneath them may belong
//! to the guest (a `--workspace` share) and is handled by [`host`] without following
//! symlinks. Names the guest sends must be single path components.

mod host;

use std::ffi::{OsStr, OsString};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use krunbox_protocol::client::{Client, ClientError};
use krunbox_protocol::messages::{ErrorKind, FileType};

use host::{mode_of, HostDir, Kind};

use crate::io_error::io;

/// Why a copy failed.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// The guest side.
    #[error("{path} in the sandbox: {error}")]
    Guest {
        /// The guest path.
        path: String,
        /// What the agent said (not a `source`: the message already has it).
        error: ClientError,
    },
    /// The host side.
    #[error(transparent)]
    Host(#[from] crate::io_error::IoError),
    /// A source that is neither a file nor a directory.
    #[error("{0}: only files and directories can be copied")]
    Unsupported(String),
    /// A path that names no file to create (`..`, `/`).
    #[error("{0}: does not name a file to copy to")]
    NoName(String),
    /// An entry name from the guest that is not a single path component.
    #[error("the sandbox listed {name:?} in {dir}: not a single file name, refused")]
    BadName {
        /// The guest directory listed.
        dir: String,
        /// The name it sent.
        name: String,
    },
    /// Something that is not followed or overwritten at a host destination name.
    #[error("{path}: {found} is in the way (not followed or overwritten)")]
    InTheWay {
        /// The host path.
        path: PathBuf,
        /// What is there ("a symlink", "a directory", ...).
        found: &'static str,
    },
}

/// What was copied.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Copied {
    /// Regular files.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Skipped entries (symlinks, special files).
    pub skipped: u64,
}

fn guest(path: &str) -> impl FnOnce(ClientError) -> CopyError + '_ {
    move |error| CopyError::Guest {
        path: path.to_owned(),
        error,
    }
}

/// Joins a guest directory and a name.
fn guest_join(dir: &str, name: &str) -> String {
    format!("{}/{name}", dir.trim_end_matches('/'))
}

/// Whether `name` is one path component: not empty, no `/`, not `.` or `..`, no NUL.
fn is_single_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0'])
}

fn base_name(path: &str) -> &str {
    path.trim_end_matches('/')
        .rsplit('/')
        .next()
        .filter(|n| !n.is_empty())
        .unwrap_or("root")
}

/// Whether `path` is a directory in the guest (`None`: it does not exist).
async fn guest_is_dir(client: &Client, path: &str) -> Result<Option<bool>, CopyError> {
    match client.stat(path).await {
        Ok(stat) => Ok(Some(stat.file_type() == FileType::Dir)),
        Err(err) if err.remote_kind() == Some(ErrorKind::NotFound) => Ok(None),
        Err(err) => Err(guest(path)(err)),
    }
}

/// Copies the host path `src` to the guest path `dst`.
pub async fn to_guest(client: &Client, src: &Path, dst: &str) -> Result<Copied, CopyError> {
    // `src` as typed (a symlink the user names is followed); nothing beneath it is.
    let meta = std::fs::metadata(src).map_err(io("read", src))?;
    if !meta.is_dir() && !meta.is_file() {
        return Err(CopyError::Unsupported(src.display().to_string()));
    }
    let name = src
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "root".into());
    let target = match guest_is_dir(client, dst).await? {
        Some(true) => guest_join(dst, &name),
        _ => dst.trim_end_matches('/').to_owned(),
    };
    let mut copied = Copied::default();
    if meta.is_dir() {
        put_tree(client, HostDir::open(src)?, &target, &mut copied).await?;
    } else {
        // Opened once and checked on the descriptor: swapped for a FIFO meanwhile, it is
        // refused rather than blocked on.
        let file = std::fs::File::options()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(src)
            .map_err(io("open", src))?;
        let meta = file.metadata().map_err(io("read", src))?;
        if !meta.is_file() {
            return Err(CopyError::Unsupported(src.display().to_string()));
        }
        use std::os::unix::fs::PermissionsExt;
        put_file(
            client,
            file,
            meta.permissions().mode(),
            &target,
            &mut copied,
        )
        .await?;
    }
    Ok(copied)
}

async fn put_file(
    client: &Client,
    file: std::fs::File,
    mode: u32,
    dst: &str,
    copied: &mut Copied,
) -> Result<(), CopyError> {
    let bytes = client
        .put(tokio::fs::File::from_std(file), dst, mode & 0o7777)
        .await
        .map_err(guest(dst))?;
    copied.files += 1;
    copied.bytes += bytes;
    Ok(())
}

/// A host directory still to be copied: `name` in `parent`, to the guest path `target`.
type PendingPut = (Arc<HostDir>, OsString, String);

async fn put_tree(
    client: &Client,
    top: HostDir,
    dst: &str,
    copied: &mut Copied,
) -> Result<(), CopyError> {
    // Depth first with an explicit stack (no recursion in async code); directories are
    // opened when their turn comes, so only the current path's are open at once.
    let mut stack = Vec::new();
    put_dir(client, Arc::new(top), dst, &mut stack, copied).await?;
    while let Some((parent, name, target)) = stack.pop() {
        match parent.open_dir(&name) {
            Ok(dir) => put_dir(client, Arc::new(dir), &target, &mut stack, copied).await?,
            // Replaced by a symlink or a file since it was listed.
            Err(CopyError::InTheWay { path, .. }) => skip_host(&path, copied),
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// Creates `dir` in the guest at `target`, copies its files and queues its directories.
async fn put_dir(
    client: &Client,
    dir: Arc<HostDir>,
    target: &str,
    stack: &mut Vec<PendingPut>,
    copied: &mut Copied,
) -> Result<(), CopyError> {
    client
        .mkdir(target, dir.mode()?)
        .await
        .map_err(guest(target))?;
    let mut subdirs = Vec::new();
    for name in dir.names()? {
        let child = guest_join(target, &name.to_string_lossy());
        match dir.kind_of(&name)? {
            Some(Kind::Dir) => subdirs.push((dir.clone(), name, child)),
            Some(Kind::File) => match dir.open_file(&name)? {
                Some((file, stat)) => {
                    put_file(client, file, mode_of(&stat), &child, copied).await?
                }
                None => skip_host(&dir.path_of(&name), copied),
            },
            Some(Kind::Symlink | Kind::Other) => skip_host(&dir.path_of(&name), copied),
            None => {}
        }
    }
    // Popped in name order.
    stack.extend(subdirs.into_iter().rev());
    Ok(())
}

fn skip_host(path: &Path, copied: &mut Copied) {
    tracing::warn!(path = %path.display(), "skipped: not a file or directory");
    copied.skipped += 1;
}

/// Copies the guest path `src` to the host path `dst`.
pub async fn from_guest(client: &Client, src: &str, dst: &Path) -> Result<Copied, CopyError> {
    let stat = client.stat(src).await.map_err(guest(src))?;
    let is_dir = match stat.file_type() {
        FileType::File => false,
        FileType::Dir => true,
        _ => return Err(CopyError::Unsupported(src.to_owned())),
    };
    let (parent, name) = destination(src, dst, is_dir)?;
    let mut copied = Copied::default();
    if is_dir {
        let top = (src.to_owned(), Arc::new(parent), name, stat.mode);
        get_tree(client, top, &mut copied).await?;
    } else {
        get_file(client, src, &parent, &name, stat.mode, &mut copied).await?;
    }
    Ok(copied)
}

/// Where a copy from the guest goes: into `dst` under the source's name when `dst` is a
/// directory, else `dst`'s own name in its parent (made first for a tree, as `mkdir -p`).
fn destination(src: &str, dst: &Path, is_dir: bool) -> Result<(HostDir, OsString), CopyError> {
    if dst.is_dir() {
        let name = base_name(src);
        if !is_single_name(name) {
            return Err(CopyError::NoName(src.to_owned()));
        }
        return Ok((HostDir::open(dst)?, name.into()));
    }
    let name = dst
        .file_name()
        .ok_or_else(|| CopyError::NoName(dst.display().to_string()))?;
    let parent = match dst.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    if is_dir {
        std::fs::create_dir_all(parent).map_err(io("create", parent))?;
    }
    Ok((HostDir::open(parent)?, name.to_owned()))
}

async fn get_file(
    client: &Client,
    src: &str,
    dir: &HostDir,
    name: &OsStr,
    mode: u32,
    copied: &mut Copied,
) -> Result<(), CopyError> {
    let (file, new) = dir.new_file(name, mode)?;
    let (_, bytes) = client
        .get(src, tokio::fs::File::from_std(file))
        .await
        .map_err(guest(src))?;
    new.commit()?;
    copied.files += 1;
    copied.bytes += bytes;
    Ok(())
}

/// A guest directory still to be copied: guest path, host parent, name there, guest mode.
type PendingGet = (String, Arc<HostDir>, OsString, u32);

async fn get_tree(client: &Client, top: PendingGet, copied: &mut Copied) -> Result<(), CopyError> {
    let mut stack = vec![top];
    // Owner bits a new directory's mode lacks are taken last: it must be filled first.
    let mut restrict = Vec::new();
    while let Some((dir, parent, name, mode)) = stack.pop() {
        let (target, created) = parent.make_dir(&name, mode)?;
        let target = Arc::new(target);
        if created && mode & 0o700 != 0o700 {
            restrict.push((target.clone(), mode));
        }
        let entries = client.list(dir.as_str()).await.map_err(guest(&dir))?;
        let mut subdirs = Vec::new();
        for entry in entries {
            if !is_single_name(&entry.name) {
                return Err(CopyError::BadName {
                    dir,
                    name: entry.name,
                });
            }
            let child = guest_join(&dir, &entry.name);
            let local = OsString::from(&entry.name);
            match entry.file_type() {
                FileType::Dir => subdirs.push((child, target.clone(), local, entry.mode)),
                FileType::File => {
                    get_file(client, &child, &target, &local, entry.mode, copied).await?
                }
                _ => {
                    tracing::warn!(path = %child, "skipped: not a file or directory");
                    copied.skipped += 1;
                }
            }
        }
        stack.extend(subdirs.into_iter().rev());
    }
    for (dir, mode) in restrict.iter().rev() {
        dir.restrict_owner(*mode)?;
    }
    Ok(())
}

#[cfg(test)]
mod hostile_agent_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_paths_join_and_name() {
        assert_eq!(guest_join("/tmp/", "a"), "/tmp/a");
        assert_eq!(guest_join("/", "a"), "/a");
        assert_eq!(base_name("/tmp/dir/"), "dir");
        assert_eq!(base_name("/file"), "file");
        assert_eq!(base_name("/"), "root");
    }
}
