//! `krunbox cp`: files and directory trees between the host and a running sandbox, through the
//! agent's file operations (stat, list, mkdir, put, get), so it works with any image (no `tar`
//! needed in the guest) and on any backend.
//!
//! Like `docker cp`: copying onto an existing directory puts the source inside it under its
//! own name; otherwise the destination is the new name. Permission bits are kept; symlinks
//! and special files are skipped with a warning (the agent has no operation to create them).
//! Files written into the guest belong to the agent's user (root).

use std::path::{Path, PathBuf};

use krunbox_protocol::client::{Client, ClientError};
use krunbox_protocol::messages::{ErrorKind, FileType};

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
    #[error("{action} {path}: {source}")]
    Host {
        /// What was done.
        action: &'static str,
        /// The host path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A source that is neither a file nor a directory.
    #[error("{0}: only files and directories can be copied")]
    Unsupported(String),
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

fn host<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CopyError + 'a {
    move |source| CopyError::Host {
        action,
        path: path.to_owned(),
        source,
    }
}

/// Joins a guest directory and a name.
fn guest_join(dir: &str, name: &str) -> String {
    format!("{}/{name}", dir.trim_end_matches('/'))
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
    let meta = std::fs::metadata(src).map_err(host("read", src))?;
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
        put_tree(client, src, &target, &mut copied).await?;
    } else if meta.is_file() {
        put_file(client, src, &target, &meta, &mut copied).await?;
    } else {
        return Err(CopyError::Unsupported(src.display().to_string()));
    }
    Ok(copied)
}

async fn put_file(
    client: &Client,
    src: &Path,
    dst: &str,
    meta: &std::fs::Metadata,
    copied: &mut Copied,
) -> Result<(), CopyError> {
    use std::os::unix::fs::PermissionsExt;
    let file = tokio::fs::File::open(src)
        .await
        .map_err(host("open", src))?;
    let bytes = client
        .put(file, dst, meta.permissions().mode() & 0o7777)
        .await
        .map_err(guest(dst))?;
    copied.files += 1;
    copied.bytes += bytes;
    Ok(())
}

async fn put_tree(
    client: &Client,
    src: &Path,
    dst: &str,
    copied: &mut Copied,
) -> Result<(), CopyError> {
    use std::os::unix::fs::PermissionsExt;
    // Depth first with an explicit stack: no recursion in async code.
    let mut stack = vec![(src.to_owned(), dst.to_owned())];
    while let Some((dir, target)) = stack.pop() {
        let mode = std::fs::metadata(&dir)
            .map_err(host("read", &dir))?
            .permissions()
            .mode();
        client
            .mkdir(target.as_str(), mode & 0o7777)
            .await
            .map_err(guest(&target))?;
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .map_err(host("list", &dir))?
            .filter_map(Result::ok)
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let child = guest_join(&target, &entry.file_name().to_string_lossy());
            let meta = std::fs::symlink_metadata(&path).map_err(host("read", &path))?;
            if meta.is_dir() {
                stack.push((path, child));
            } else if meta.is_file() {
                put_file(client, &path, &child, &meta, copied).await?;
            } else {
                tracing::warn!(path = %path.display(), "skipped: not a file or directory");
                copied.skipped += 1;
            }
        }
    }
    Ok(())
}

/// Copies the guest path `src` to the host path `dst`.
pub async fn from_guest(client: &Client, src: &str, dst: &Path) -> Result<Copied, CopyError> {
    let stat = client.stat(src).await.map_err(guest(src))?;
    let target = if dst.is_dir() {
        dst.join(base_name(src))
    } else {
        dst.to_owned()
    };
    let mut copied = Copied::default();
    match stat.file_type() {
        FileType::File => get_file(client, src, &target, stat.mode, &mut copied).await?,
        FileType::Dir => get_tree(client, src, &target, stat.mode, &mut copied).await?,
        _ => return Err(CopyError::Unsupported(src.to_owned())),
    }
    Ok(copied)
}

async fn get_file(
    client: &Client,
    src: &str,
    dst: &Path,
    mode: u32,
    copied: &mut Copied,
) -> Result<(), CopyError> {
    use std::os::unix::fs::PermissionsExt;
    let file = tokio::fs::File::create(dst)
        .await
        .map_err(host("create", dst))?;
    let (_, bytes) = client.get(src, file).await.map_err(guest(src))?;
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(mode & 0o7777))
        .map_err(host("chmod", dst))?;
    copied.files += 1;
    copied.bytes += bytes;
    Ok(())
}

async fn get_tree(
    client: &Client,
    src: &str,
    dst: &Path,
    mode: u32,
    copied: &mut Copied,
) -> Result<(), CopyError> {
    use std::os::unix::fs::PermissionsExt;
    let mut stack = vec![(src.to_owned(), dst.to_owned(), mode)];
    // Directory modes are applied last: a read-only directory must be filled first.
    let mut modes = Vec::new();
    while let Some((dir, target, mode)) = stack.pop() {
        std::fs::create_dir_all(&target).map_err(host("create", &target))?;
        modes.push((target.clone(), mode));
        let entries = client.list(dir.as_str()).await.map_err(guest(&dir))?;
        for entry in entries {
            if entry.name == "." || entry.name == ".." || entry.name.contains('/') {
                continue;
            }
            let child = guest_join(&dir, &entry.name);
            let local = target.join(&entry.name);
            match entry.file_type() {
                FileType::Dir => stack.push((child, local, entry.mode)),
                FileType::File => get_file(client, &child, &local, entry.mode, copied).await?,
                _ => {
                    tracing::warn!(path = %child, "skipped: not a file or directory");
                    copied.skipped += 1;
                }
            }
        }
    }
    for (dir, mode) in modes.iter().rev() {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & 0o7777))
            .map_err(host("chmod", dir))?;
    }
    Ok(())
}

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
