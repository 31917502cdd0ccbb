//! The copy a reviewable workspace starts from, and its manifest.
//!
//! The workspace is the user's (trusted, not yet seen by the guest): it is walked without
//! following symlinks (a symlink is copied as one), files are copied with `std::fs::copy`
//! (a clone or reflink where the filesystem can), and each entry's state is stamped on both
//! sides once the copy is done.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::{excluded, io, Entry, ReviewError, Stamp};

/// Whether `path` is a git configuration file (the repository's, a submodule's), whose
/// credentials are removed from its copy.
pub fn is_git_config(path: &str) -> bool {
    path == ".git/config" || (path.starts_with(".git/modules/") && path.ends_with("/config"))
}

/// Copies `workspace` into `tree` (empty), leaving out what `excludes` match; returns the
/// manifest's entries. `owner` gets the copy when krunbox runs as root.
pub fn copy_tree(
    workspace: &Path,
    tree: &Path,
    excludes: &[String],
    owner: Option<(u32, u32)>,
) -> Result<BTreeMap<String, Entry>, ReviewError> {
    let mut copied = Vec::new();
    copy_dir(workspace, tree, "", excludes, &mut copied)?;
    let chown = owner.filter(|_| nix::unistd::geteuid().is_root());
    if let Some((uid, gid)) = chown {
        std::os::unix::fs::lchown(tree, Some(uid), Some(gid)).map_err(io("chown", tree))?;
    }
    let open = |path: &Path| {
        cap_std::fs::Dir::open_ambient_dir(path, cap_std::ambient_authority())
            .map_err(io("open", path))
    };
    let (host_dir, copy_dir) = (open(workspace)?, open(tree)?);
    let mut entries = BTreeMap::new();
    for (relative, rewritten) in copied {
        let target = tree.join(&relative);
        if let Some((uid, gid)) = chown {
            std::os::unix::fs::lchown(&target, Some(uid), Some(gid))
                .map_err(io("chown", &target))?;
        }
        let stamp = |dir: &cap_std::fs::Dir, root: &Path| {
            dir.symlink_metadata(&relative)
                .map_err(io("inspect", &root.join(&relative)))
                .map(|meta| Stamp::of(&meta))
        };
        if let (Some(host), Some(copy)) = (stamp(&host_dir, workspace)?, stamp(&copy_dir, tree)?) {
            entries.insert(
                relative,
                Entry {
                    host,
                    copy,
                    rewritten,
                },
            );
        }
    }
    Ok(entries)
}

/// Copies the directory `from` (at `relative` in the workspace) into the existing `to`;
/// records each entry copied, with whether its contents were rewritten.
fn copy_dir(
    from: &Path,
    to: &Path,
    relative: &str,
    excludes: &[String],
    copied: &mut Vec<(String, bool)>,
) -> Result<(), ReviewError> {
    let mut names: Vec<_> = std::fs::read_dir(from)
        .map_err(io("list", from))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(io("list", from))?;
    names.sort_by_key(|entry| entry.file_name());
    for entry in names {
        let name = entry.file_name();
        let source = entry.path();
        let Some(name) = name.to_str() else {
            tracing::warn!(path = %source.display(), "not copied: the name is not UTF-8");
            continue;
        };
        let meta = std::fs::symlink_metadata(&source).map_err(io("inspect", &source))?;
        let file_type = meta.file_type();
        if excluded(excludes, name, file_type.is_dir()) {
            tracing::debug!(path = %source.display(), "left out of the copy");
            continue;
        }
        let path = if relative.is_empty() {
            name.to_owned()
        } else {
            format!("{relative}/{name}")
        };
        let target = to.join(name);
        let mode = meta.permissions().mode() & 0o777;
        let mut rewritten = false;
        if file_type.is_symlink() {
            let link = std::fs::read_link(&source).map_err(io("read", &source))?;
            std::os::unix::fs::symlink(&link, &target).map_err(io("create", &target))?;
        } else if file_type.is_dir() {
            std::fs::create_dir(&target).map_err(io("create", &target))?;
            copy_dir(&source, &target, &path, excludes, copied)?;
            set_mode(&target, mode)?;
        } else if file_type.is_file() {
            if is_git_config(&path) {
                let text = std::fs::read(&source).map_err(io("read", &source))?;
                let stripped = strip_credentials(&String::from_utf8_lossy(&text));
                rewritten = stripped.as_bytes() != text.as_slice();
                std::fs::write(&target, stripped).map_err(io("write", &target))?;
            } else {
                std::fs::copy(&source, &target).map_err(io("copy", &source))?;
            }
            set_mode(&target, mode)?;
        } else {
            tracing::warn!(path = %source.display(), "not copied: a special file");
            continue;
        }
        copied.push((path, rewritten));
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<(), ReviewError> {
    Ok(
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(io("chmod", path))?,
    )
}

/// `text` (a git config) with the user and password taken out of every URL
/// (`https://user:token@host/…` becomes `https://host/…`) and without `extraheader` lines
/// (where CI checkouts keep an `Authorization` header).
pub fn strip_credentials(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        if line
            .trim_start()
            .to_ascii_lowercase()
            .starts_with("extraheader")
        {
            continue;
        }
        let Some(scheme_end) = line.find("://") else {
            out.push_str(line);
            continue;
        };
        let rest_start = scheme_end + 3;
        let rest = &line[rest_start..];
        let authority_end = rest.find(['/', ' ', '\t', '\n', '"']).unwrap_or(rest.len());
        match rest[..authority_end].rfind('@') {
            Some(at) => {
                out.push_str(&line[..rest_start]);
                out.push_str(&rest[at + 1..]);
            }
            None => out.push_str(line),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_taken_out_of_git_urls() {
        let config = "[remote \"origin\"]\n\turl = https://me:ghp_token@github.example/me/x.git\n\
                      \tfetch = +refs/heads/*:refs/remotes/origin/*\n[x]\n\turl = git@host:me/x\n";
        let stripped = strip_credentials(config);
        assert!(
            stripped.contains("url = https://github.example/me/x.git\n"),
            "{stripped}"
        );
        assert!(!stripped.contains("ghp_token"));
        assert!(
            stripped.contains("url = git@host:me/x\n"),
            "scp-like addresses stay"
        );
        assert_eq!(
            strip_credentials("a = https://host/p@q\n"),
            "a = https://host/p@q\n"
        );
    }
}
