//! Resolving a Docker-style user spec (`-u`, the image's `User`) against the image's own
//! `/etc/passwd` and `/etc/group`, as `docker run` does:
//!
//! - `name` or `uid`, optionally `:group` or `:gid`;
//! - a name must exist in the image's passwd (a group name in its group file);
//! - a numeric uid need not exist: it then runs with gid 0 and home `/`;
//! - without `:group`, the passwd entry's primary group is used, and every group of the
//!   group file that lists the user's name as a member is a supplementary group of it;
//! - `--group-add` names (or numbers) more supplementary groups.
//!
//! The files are read from the host side of the image directory without following any
//! symlink (`/etc` or `/etc/passwd` being a link into the host is treated as absent), so an
//! image cannot make krunbox read host files.

use std::ffi::OsStr;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use crate::confined;

/// The largest passwd/group file read.
const MAX_FILE: u64 = 4 * 1024 * 1024;
/// The most supplementary groups a Linux process can have (`NGROUPS_MAX`).
pub const MAX_GROUPS: usize = 65536;

/// A resolved user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory (for `HOME` when the image and CLI set none).
    pub home: String,
    /// Supplementary groups: those of the group file that list the user as a member (not
    /// with an explicit `:group`, as with Docker), without the primary one.
    pub groups: Vec<u32>,
}

/// Why a user spec names no user of the image.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// Empty spec or empty part.
    #[error("invalid user {0:?}: expected USER, UID, USER:GROUP or UID:GID")]
    Invalid(String),
    /// A name not in the image's passwd.
    #[error("unable to find user {name}: no matching entry in the image's /etc/passwd")]
    NoSuchUser {
        /// The name.
        name: String,
    },
    /// A group name not in the image's group file.
    #[error("unable to find group {name}: no matching entry in the image's /etc/group")]
    NoSuchGroup {
        /// The name.
        name: String,
    },
    /// More supplementary groups than Linux gives a process.
    #[error("{user} would have more than {MAX_GROUPS} supplementary groups")]
    TooManyGroups {
        /// The user, or `--group-add`.
        user: String,
    },
    /// Reading the file failed (other than it being absent).
    #[error("reading {path} of the image: {source}")]
    Io {
        /// The file, relative to the image root.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Resolves `spec` against the image rooted at `rootfs`.
pub fn resolve_user(rootfs: &Path, spec: &str) -> Result<ResolvedUser, UserError> {
    let passwd = read_etc(rootfs, "passwd")?;
    // The group file is read only when a group name needs it.
    resolve_with(passwd.as_deref(), || read_etc(rootfs, "group"), spec)
}

/// Resolves `spec` against the texts of an image's `/etc/passwd` and `/etc/group` (`None`:
/// absent): the parsing of [`resolve_user`], apart from the files (its fuzz target's entry).
pub fn resolve_in_texts(
    passwd: Option<&str>,
    group: Option<&str>,
    spec: &str,
) -> Result<ResolvedUser, UserError> {
    resolve_with(passwd, || Ok(group.map(str::to_owned)), spec)
}

fn resolve_with(
    passwd: Option<&str>,
    read_group: impl FnOnce() -> Result<Option<String>, UserError>,
    spec: &str,
) -> Result<ResolvedUser, UserError> {
    let (user, group) = match spec.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (spec, None),
    };
    if user.is_empty() || group.is_some_and(str::is_empty) {
        return Err(UserError::Invalid(spec.to_owned()));
    }
    let entry = passwd.and_then(|text| {
        parse_passwd(text).find(|e| match user.parse::<u32>() {
            Ok(uid) => e.uid == uid,
            Err(_) => e.name == user,
        })
    });
    let name = entry.as_ref().map(|e| e.name.to_owned());
    let (uid, primary_gid, home) = match (entry, user.parse::<u32>()) {
        (Some(e), _) => (e.uid, e.gid, e.home.to_owned()),
        (None, Ok(uid)) => (uid, 0, "/".to_owned()),
        (None, Err(_)) if user == "root" => (0, 0, "/root".to_owned()),
        (None, Err(_)) => {
            return Err(UserError::NoSuchUser {
                name: user.to_owned(),
            })
        }
    };
    // The group file, read once and only when a group name or the user's memberships need it.
    let needs_groups =
        name.is_some() && group.is_none() || group.is_some_and(|g| g.parse::<u32>().is_err());
    let group_text = match (needs_groups, group) {
        (false, _) => None,
        // Read for the user's memberships alone: a group file that cannot be read means none
        // (as before memberships were read), not a user that cannot run.
        (true, None) => read_group().unwrap_or_else(|err| {
            tracing::warn!(%err, "the image's /etc/group is unreadable: no supplementary groups");
            None
        }),
        (true, Some(_)) => read_group()?,
    };
    let gid = match group {
        None => primary_gid,
        Some(group) => match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => {
                match group_text
                    .as_deref()
                    .and_then(|text| find_group(text, group))
                {
                    Some(gid) => gid,
                    None if group == "root" => 0,
                    None => {
                        return Err(UserError::NoSuchGroup {
                            name: group.to_owned(),
                        })
                    }
                }
            }
        },
    };
    let groups = match (&name, group, group_text.as_deref()) {
        (Some(name), None, Some(text)) => memberships(text, name, gid)?,
        _ => Vec::new(),
    };
    Ok(ResolvedUser {
        uid,
        gid,
        home: if home.is_empty() { "/".into() } else { home },
        groups,
    })
}

/// The groups of the group file that list `name` as a member, `primary` left out, each once,
/// in the file's order.
fn memberships(text: &str, name: &str, primary: u32) -> Result<Vec<u32>, UserError> {
    let mut groups = Unique::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let fields: Vec<&str> = line.split(':').collect();
        let (Some(gid), Some(members)) =
            (fields.get(2).and_then(|g| g.parse().ok()), fields.get(3))
        else {
            continue;
        };
        if gid != primary && members.split(',').any(|m| m.trim() == name) {
            groups.push(gid, name)?;
        }
    }
    Ok(groups.list)
}

/// Group ids in the order first seen, each once, at most [`MAX_GROUPS`] (a hostile group file
/// may list a user in millions of groups).
#[derive(Default)]
struct Unique {
    list: Vec<u32>,
    seen: std::collections::HashSet<u32>,
}

impl Unique {
    fn push(&mut self, gid: u32, user: &str) -> Result<(), UserError> {
        if self.seen.insert(gid) {
            if self.list.len() == MAX_GROUPS {
                return Err(UserError::TooManyGroups {
                    user: user.to_owned(),
                });
            }
            self.list.push(gid);
        }
        Ok(())
    }
}

/// `--group-add` groups (names of the image's group file, or numbers), each once.
pub fn resolve_groups(rootfs: &Path, names: &[String]) -> Result<Vec<u32>, UserError> {
    let text = if names.iter().any(|n| n.parse::<u32>().is_err()) {
        read_etc(rootfs, "group")?
    } else {
        None
    };
    groups_in_text(text.as_deref(), names)
}

/// [`resolve_groups`] against the group file's text (`None`: absent).
pub fn groups_in_text(text: Option<&str>, names: &[String]) -> Result<Vec<u32>, UserError> {
    let mut groups = Unique::default();
    for name in names {
        let gid = match name.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => match text.and_then(|t| find_group(t, name)) {
                Some(gid) => gid,
                None if name == "root" => 0,
                None => return Err(UserError::NoSuchGroup { name: name.clone() }),
            },
        };
        groups.push(gid, "--group-add")?;
    }
    Ok(groups.list)
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn parse_passwd(text: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    text.lines().filter_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 7 || line.starts_with('#') {
            return None;
        }
        Some(PasswdEntry {
            name: fields[0],
            uid: fields[2].parse().ok()?,
            gid: fields[3].parse().ok()?,
            home: fields[5],
        })
    })
}

fn find_group(text: &str, name: &str) -> Option<u32> {
    text.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() >= 3 && fields[0] == name)
            .then(|| fields[2].parse().ok())
            .flatten()
    })
}

/// `etc/NAME` of the image, `None` when absent or reached only through a symlink.
fn read_etc(rootfs: &Path, name: &str) -> Result<Option<String>, UserError> {
    let path = Path::new("etc").join(name);
    let io_err = |source| UserError::Io {
        path: Path::new("/").join(&path),
        source,
    };
    let root = confined::open_root(rootfs).map_err(io_err)?;
    let etc = match confined::walk(&root, &[OsStr::new("etc").to_owned()], false, Mode::empty()) {
        Ok(fd) => fd,
        Err(confined::WalkError::Io(_, source)) => return Err(io_err(source)),
        Err(_) => return Ok(None),
    };
    let file: OwnedFd = match nix::fcntl::openat(
        &etc,
        name,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT | nix::errno::Errno::ELOOP) => return Ok(None),
        Err(errno) => return Err(io_err(errno.into())),
    };
    let mut file = std::fs::File::from(file);
    if !file.metadata().map_err(io_err)?.is_file() {
        return Ok(None);
    }
    let mut text = String::new();
    (&mut file)
        .take(MAX_FILE)
        .read_to_string(&mut text)
        .map_err(io_err)?;
    Ok(Some(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001:app:/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\nstaff:x:50:\napp:x:1001:\nwheel:x:10:root,app\ndev:x:20:bob, app\n",
        )
        .unwrap();
        dir
    }

    fn user(uid: u32, gid: u32, home: &str) -> ResolvedUser {
        ResolvedUser {
            uid,
            gid,
            home: home.into(),
            groups: Vec::new(),
        }
    }

    fn member(uid: u32, gid: u32, home: &str, groups: &[u32]) -> ResolvedUser {
        ResolvedUser {
            groups: groups.to_vec(),
            ..user(uid, gid, home)
        }
    }

    #[test]
    fn names_and_ids_resolve_like_docker() {
        let dir = image();
        let r = |spec| resolve_user(dir.path(), spec);
        assert_eq!(r("root").unwrap(), member(0, 0, "/root", &[10]));
        assert_eq!(
            r("app").unwrap(),
            member(1000, 1001, "/home/app", &[10, 20])
        );
        assert_eq!(
            r("1000").unwrap(),
            member(1000, 1001, "/home/app", &[10, 20])
        );
        assert_eq!(r("app:staff").unwrap(), user(1000, 50, "/home/app"));
        assert_eq!(r("app:7").unwrap(), user(1000, 7, "/home/app"));
        assert_eq!(r("4242").unwrap(), user(4242, 0, "/"));
        assert_eq!(r("4242:4242").unwrap(), user(4242, 4242, "/"));
        assert!(matches!(r("nobody"), Err(UserError::NoSuchUser { .. })));
        assert!(matches!(
            r("app:nogroup"),
            Err(UserError::NoSuchGroup { .. })
        ));
        assert!(matches!(r(""), Err(UserError::Invalid(_))));
        assert!(matches!(r("app:"), Err(UserError::Invalid(_))));
        let added = |names: &[&str]| {
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            resolve_groups(dir.path(), &names)
        };
        assert_eq!(added(&["staff", "7", "staff", "root"]).unwrap(), [50, 7, 0]);
        assert!(matches!(
            added(&["nogroup"]),
            Err(UserError::NoSuchGroup { .. })
        ));
    }

    #[test]
    fn a_hostile_group_file_costs_no_run_of_a_plain_user_and_cannot_flood_it() {
        let dir = image();
        std::fs::write(dir.path().join("etc/group"), b"staff:x:50:app\xff\n").unwrap();
        // Not UTF-8: no memberships for a plain user, an error where a group name needs it.
        assert_eq!(
            resolve_user(dir.path(), "app").unwrap(),
            user(1000, 1001, "/home/app")
        );
        assert!(resolve_user(dir.path(), "app:staff").is_err());
        let flood: String = (0..=MAX_GROUPS as u32)
            .map(|gid| format!("g{gid}:x:{}:app\n", gid + 2000))
            .collect();
        assert!(matches!(
            resolve_in_texts(Some("app:x:1000:1001::/:/bin/sh\n"), Some(&flood), "app"),
            Err(UserError::TooManyGroups { .. })
        ));
    }

    #[test]
    fn an_image_without_passwd_still_knows_root_and_numeric_ids() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            resolve_user(dir.path(), "root").unwrap(),
            user(0, 0, "/root")
        );
        assert_eq!(resolve_user(dir.path(), "5:6").unwrap(), user(5, 6, "/"));
        assert!(resolve_user(dir.path(), "app").is_err());
    }

    #[test]
    fn a_symlinked_passwd_is_never_followed_to_the_host() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        let host = tempfile::tempdir().unwrap();
        std::fs::write(host.path().join("passwd"), "secret:x:77:77::/s:/bin/sh\n").unwrap();
        std::os::unix::fs::symlink(host.path().join("passwd"), dir.path().join("etc/passwd"))
            .unwrap();
        assert!(matches!(
            resolve_user(dir.path(), "secret"),
            Err(UserError::NoSuchUser { .. })
        ));
        let linked = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(host.path(), linked.path().join("etc")).unwrap();
        assert!(resolve_user(linked.path(), "secret").is_err());
    }
}
