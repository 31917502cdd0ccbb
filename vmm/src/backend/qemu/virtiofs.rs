//! How one host directory is served to the guest: the command line of its virtiofsd.
//!
//! virtiofsd is the Rust one (1.x), because it enforces what the guest must not do at the
//! host, where a guest root cannot undo it (QEMU's C virtiofsd has none of this):
//! - **Read-only** (`--readonly`): a store image shared as the root and every `:ro` share.
//!   The guest's own read-only mount is only a courtesy; a guest root that mounts the tag
//!   again read-write still gets EROFS, so it can never poison an image other sandboxes boot.
//! - **Whose files the guest writes.** Every write to a read-write share lands as the
//!   share's owner on the host (`--translate-uid/--translate-gid squash-guest`): guest root
//!   cannot create root-owned or setuid-root files, nor files of another host user, because
//!   virtiofsd's fs uid is then the owner's and the kernel drops its file capabilities for
//!   the call. The guest still sees the files' owners as they are on the host.
//! - **No device nodes** (`--modcaps=-mknod:-setfcap`, root only; in a user namespace the
//!   kernel refuses them anyway) and no file capabilities.
//! - **Sandbox**: as root, virtiofsd chroots into the share; as a normal user it puts itself
//!   in a user namespace whose root is that user (`--sandbox namespace`), so krunbox needs no
//!   privilege at all, and inside it squashes every guest id onto that one user.
//!
//! What is left (SECURITY.md): a read-write share owned by root, shared by root, lets guest
//! root act as host root inside that directory (except device nodes).

use std::path::Path;

/// Who krunbox (and so virtiofsd) runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Privilege {
    /// root: virtiofsd chroots into the share and maps ids itself.
    Root,
    /// A normal user: virtiofsd runs in a user namespace where this user is root.
    User {
        /// The user's uid.
        uid: u32,
        /// The user's gid.
        gid: u32,
    },
}

impl Privilege {
    /// The current process's.
    pub fn current() -> Self {
        let uid = nix::unistd::geteuid();
        if uid.is_root() {
            Self::Root
        } else {
            Self::User {
                uid: uid.as_raw(),
                gid: nix::unistd::getegid().as_raw(),
            }
        }
    }
}

/// One directory to serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Served<'a> {
    /// The host directory.
    pub source: &'a Path,
    /// The guest may not change it.
    pub read_only: bool,
    /// It is the guest's root filesystem (the guest's own ids are kept), not a share.
    pub is_root: bool,
    /// The directory's owner on the host (uid, gid).
    pub owner: (u32, u32),
}

/// virtiofsd's arguments for `served` on `socket`.
pub fn args(served: &Served<'_>, socket: &Path, privilege: Privilege) -> Vec<String> {
    let mut args = vec![
        format!("--socket-path={}", socket.display()),
        format!("--shared-dir={}", served.source.display()),
        "--cache=never".into(),
    ];
    match privilege {
        Privilege::Root => {
            args.push("--sandbox=chroot".into());
            args.push("--modcaps=-mknod:-setfcap".into());
        }
        Privilege::User { .. } => args.push("--sandbox=namespace".into()),
    }
    if served.read_only {
        args.push("--readonly".into());
        return args;
    }
    args.extend(id_rules(served, privilege));
    args
}

/// The `--translate-uid`/`--translate-gid` rules of a read-write directory.
fn id_rules(served: &Served<'_>, privilege: Privilege) -> Vec<String> {
    let (uid_rules, gid_rules) = match privilege {
        // The owner: every guest id writes as them. A root-owned directory keeps ids as they
        // are (its owner is root already); so does a writable root filesystem, whose files
        // belong to the guest's own users.
        Privilege::Root if served.owner.0 == 0 || served.is_root => (Vec::new(), Vec::new()),
        Privilege::Root => (
            vec![squash_all(served.owner.0)],
            vec![squash_all(served.owner.1)],
        ),
        // In the namespace only id 0 exists (it is the user). A share shows the user's files
        // as the user's own id and takes every guest id's writes as the user; the root
        // filesystem shows them as root (an image's files belong to root) and does the same.
        Privilege::User { .. } if served.is_root => (squash_but(0), squash_but(0)),
        Privilege::User { uid, gid } => (user_share(uid), user_share(gid)),
    };
    uid_rules
        .into_iter()
        .map(|r| format!("--translate-uid={r}"))
        .chain(
            gid_rules
                .into_iter()
                .map(|r| format!("--translate-gid={r}")),
        )
        .collect()
}

/// Every guest id (but the "no change" value u32::MAX) onto host id `to`.
fn squash_all(to: u32) -> String {
    format!("squash-guest:0:{to}:{}", u32::MAX)
}

/// Every guest id but `keep` onto the namespace's root (id 0); `keep` maps to itself.
fn squash_but(keep: u32) -> Vec<String> {
    let mut rules = Vec::new();
    if keep > 0 {
        rules.push(format!("squash-guest:0:0:{keep}"));
    }
    let after = keep.saturating_add(1);
    if after < u32::MAX {
        rules.push(format!("squash-guest:{after}:0:{}", u32::MAX - after));
    }
    rules
}

/// A normal user's share: the user (id 0 in the namespace) is `id` in the guest, both ways,
/// and every other guest id writes as the user too.
fn user_share(id: u32) -> Vec<String> {
    let mut rules = vec![format!("map:{id}:0:1")];
    rules.extend(squash_but(id));
    rules
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(read_only: bool, is_root: bool, owner: (u32, u32)) -> Served<'static> {
        Served {
            source: Path::new("/s"),
            read_only,
            is_root,
            owner,
        }
    }

    fn rules(args: &[String]) -> Vec<&str> {
        args.iter()
            .filter(|a| a.starts_with("--translate"))
            .map(String::as_str)
            .collect()
    }

    #[test]
    fn read_only_is_enforced_by_virtiofsd_and_maps_nothing() {
        for privilege in [
            Privilege::Root,
            Privilege::User {
                uid: 1000,
                gid: 1000,
            },
        ] {
            for is_root in [true, false] {
                let args = args(
                    &served(true, is_root, (1000, 1000)),
                    Path::new("/r/fs0.sock"),
                    privilege,
                );
                assert!(args.contains(&"--readonly".to_owned()), "{args:?}");
                assert!(rules(&args).is_empty(), "{args:?}");
            }
        }
    }

    #[test]
    fn root_squashes_guest_writes_onto_the_share_owner() {
        let args = args(
            &served(false, false, (1000, 100)),
            Path::new("/r/fs1.sock"),
            Privilege::Root,
        );
        assert!(args.contains(&"--sandbox=chroot".to_owned()));
        assert!(args.contains(&"--modcaps=-mknod:-setfcap".to_owned()));
        assert!(!args.contains(&"--readonly".to_owned()));
        assert_eq!(
            rules(&args),
            [
                "--translate-uid=squash-guest:0:1000:4294967295",
                "--translate-gid=squash-guest:0:100:4294967295"
            ]
        );
    }

    #[test]
    fn root_keeps_ids_of_root_owned_dirs_and_of_a_writable_root() {
        let owned_by_root = args(
            &served(false, false, (0, 0)),
            Path::new("/s"),
            Privilege::Root,
        );
        assert!(rules(&owned_by_root).is_empty());
        let root = args(
            &served(false, true, (1000, 1000)),
            Path::new("/s"),
            Privilege::Root,
        );
        assert!(rules(&root).is_empty());
    }

    #[test]
    fn a_user_runs_virtiofsd_in_a_namespace_and_owns_every_write() {
        let user = Privilege::User {
            uid: 1000,
            gid: 1001,
        };
        let share = args(&served(false, false, (1000, 1001)), Path::new("/s"), user);
        assert!(share.contains(&"--sandbox=namespace".to_owned()));
        assert!(!share.iter().any(|a| a.starts_with("--modcaps")));
        assert_eq!(
            rules(&share),
            [
                "--translate-uid=map:1000:0:1",
                "--translate-uid=squash-guest:0:0:1000",
                "--translate-uid=squash-guest:1001:0:4294966294",
                "--translate-gid=map:1001:0:1",
                "--translate-gid=squash-guest:0:0:1001",
                "--translate-gid=squash-guest:1002:0:4294966293",
            ]
        );
        let root = args(&served(false, true, (1000, 1001)), Path::new("/s"), user);
        assert_eq!(
            rules(&root),
            [
                "--translate-uid=squash-guest:1:0:4294967294",
                "--translate-gid=squash-guest:1:0:4294967294",
            ]
        );
    }

    #[test]
    fn squash_ranges_never_overflow() {
        assert_eq!(
            squash_but(u32::MAX - 1),
            [format!("squash-guest:0:0:{}", u32::MAX - 1)]
        );
        assert_eq!(squash_but(0), ["squash-guest:1:0:4294967294"]);
    }
}
