//! What runs in the guest: the image's run defaults (Entrypoint, Cmd, Env, WorkingDir, User)
//! merged with the command line's by Docker's rules, the workspace's path and owner in between.
//! `krunbox run` makes its command this way, and `krunbox create` the defaults every `exec`
//! of the sandbox gets.

use krunbox_image::config::{merge_run_config, RunConfigError, RunOverrides};
use krunbox_image::user::{resolve_groups, resolve_user, UserError};

use super::rootfs::PreparedRoot;
use super::shares::Shares;

/// The command, resolved against the image's root filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestCommand {
    /// argv.
    pub argv: Vec<String>,
    /// The environment, `HOME` included.
    pub env: Vec<(String, String)>,
    /// The working directory.
    pub workdir: String,
    /// uid and gid, when not root.
    pub user: Option<(u32, u32)>,
    /// Supplementary groups: the user's memberships in the image's group file, then
    /// `--group-add`'s.
    pub groups: Vec<u32>,
}

/// Why the image and the command line make no command.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// Their run settings do not merge (no command at all, a bad `-e`).
    #[error(transparent)]
    Config(#[from] RunConfigError),
    /// The user to run as is not in the image.
    #[error(transparent)]
    User(#[from] UserError),
}

impl GuestCommand {
    /// `-w` and `-u` win over the workspace (its path, its owner), which wins over the image;
    /// `group_add` names groups of the image (or numbers) to add.
    pub fn resolve(
        root: &PreparedRoot,
        shares: &Shares,
        command_line: RunOverrides,
        group_add: &[String],
    ) -> Result<Self, CommandError> {
        let overrides = RunOverrides {
            workdir: command_line.workdir.or_else(|| shares.workdir.clone()),
            user: command_line
                .user
                .or_else(|| shares.user.map(|(uid, gid)| format!("{uid}:{gid}"))),
            ..command_line
        };
        let mut config = merge_run_config(&root.config, &overrides, |key| std::env::var(key).ok())?;
        let user = resolve_user(&root.rootfs, &config.user)?;
        if !config.env.iter().any(|e| e.starts_with("HOME=")) {
            config.env.push(format!("HOME={}", user.home));
        }
        let groups = with_added(user.groups, resolve_groups(&root.rootfs, group_add)?);
        Ok(Self {
            argv: config.argv,
            env: split_env(&config.env),
            workdir: config.workdir,
            user: (user.uid != 0 || user.gid != 0).then_some((user.uid, user.gid)),
            groups,
        })
    }
}

/// `groups`, then those of `added` it lacks.
pub fn with_added(mut groups: Vec<u32>, added: Vec<u32>) -> Vec<u32> {
    for gid in added {
        if !groups.contains(&gid) {
            groups.push(gid);
        }
    }
    groups
}

/// `KEY=VALUE` entries as pairs (a bare `KEY` has an empty value).
pub fn split_env(env: &[String]) -> Vec<(String, String)> {
    env.iter()
        .map(|entry| {
            let (key, value) = entry.split_once('=').unwrap_or((entry, ""));
            (key.to_owned(), value.to_owned())
        })
        .collect()
}
