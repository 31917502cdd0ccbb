//! `krunbox exec`: a command in a running sandbox, attached as `krunbox run` attaches.

use std::time::Duration;

use krunbox_image::user::resolve_user;

use crate::cli::session::{self, CommandOptions, SecondInterrupt, Session};

use super::SandboxCliError;
use crate::sandbox::attach::AttachedVm;
use crate::sandbox::spec::SandboxSpec;
use crate::sandbox::store::Store;

/// Run a command in a running sandbox, with its stdout, stderr and exit status as if it ran
/// here (like `krunbox run`, without booting a VM).
///
/// Signals: without -t, Ctrl-C, SIGTERM, SIGHUP and SIGQUIT are forwarded to COMMAND; a
/// second Ctrl-C leaves it (the sandbox keeps running).
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  krunbox exec agent -- ls -l\n  krunbox exec -it agent -- sh\n  echo hi | krunbox exec agent -- cat"
)]
pub struct ExecArgs {
    /// Keep stdin open even when it is a terminal.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Run COMMAND on a pseudo-terminal.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Set an environment variable (added to the sandbox's).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory (default: the sandbox's).
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub workdir: Option<String>,
    /// Run as UID, UID:GID, NAME or NAME:GROUP (default: the sandbox's user).
    #[arg(short = 'u', long = "user", value_name = "USER")]
    pub user: Option<String>,
    /// Add a supplementary group of the image (name or GID), as docker exec's user gets its
    /// memberships and run's --group-add. Repeatable.
    #[arg(long = "group-add", value_name = "GROUP")]
    pub group_add: Vec<String>,
    /// Resource limits (`--ulimit`).
    #[command(flatten)]
    pub limits: crate::cli::session::LimitArgs,
    /// Capabilities and `no_new_privs`.
    #[command(flatten)]
    pub privileges: crate::cli::privileges::PrivilegeArgs,
    /// The sandbox.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// `-e` arguments as pairs; a bare KEY takes the host's value (skipped when unset).
fn exec_env(args: &[String]) -> Result<Vec<(String, String)>, SandboxCliError> {
    let mut env = Vec::new();
    for arg in args {
        match arg.split_once('=') {
            Some(("", _)) => return Err(SandboxCliError::Usage(format!("-e {arg:?}: empty name"))),
            Some((key, value)) => env.push((key.to_owned(), value.to_owned())),
            None if arg.is_empty() => {
                return Err(SandboxCliError::Usage("-e needs KEY=VALUE".into()))
            }
            None => {
                if let Ok(value) = std::env::var(arg) {
                    env.push((arg.clone(), value));
                }
            }
        }
    }
    Ok(env)
}

/// What one exec in a sandbox gets: the sandbox's defaults with the exec's `-e`, `-w` and `-u`
/// on top.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecContext {
    /// The environment.
    pub env: Vec<(String, String)>,
    /// The working directory.
    pub workdir: Option<String>,
    /// uid and gid (`None`: root).
    pub user: Option<(u32, u32)>,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

impl ExecContext {
    /// The context of an exec in the sandbox of `spec` with these overrides: `user` as
    /// `exec -u` takes it (its HOME replaces the sandbox's), `env` pairs replacing the
    /// sandbox's of the same name.
    pub fn new(
        spec: &SandboxSpec,
        user: Option<&str>,
        group_add: &[String],
        env: Vec<(String, String)>,
        workdir: Option<String>,
    ) -> Result<Self, SandboxCliError> {
        let mut all = spec.env.clone();
        let (user, groups) = match user {
            Some(user) => {
                let user = resolve_user(&spec.rootfs, user)?;
                all.retain(|(key, _)| key != "HOME");
                all.push(("HOME".into(), user.home));
                (Some((user.uid, user.gid)), user.groups)
            }
            None => (spec.user, spec.groups.clone()),
        };
        let groups = crate::guest::command::with_added(
            groups,
            krunbox_image::user::resolve_groups(&spec.rootfs, group_add)?,
        );
        for (key, value) in env {
            all.retain(|(k, _)| *k != key);
            all.push((key, value));
        }
        Ok(Self {
            env: all,
            workdir: workdir.or(spec.workdir.clone()),
            user,
            groups,
        })
    }
}

/// `krunbox exec`.
pub fn exec(args: ExecArgs) -> Result<i32, SandboxCliError> {
    let sandbox = Store::new()?.open(&args.name)?;
    let spec = sandbox.spec()?;
    let context = ExecContext::new(
        &spec,
        args.user.as_deref(),
        &args.group_add,
        exec_env(&args.env)?,
        args.workdir.clone(),
    )?;
    let mut vm = AttachedVm::new(sandbox)?;
    let options = CommandOptions {
        command: args.command.clone(),
        env: context.env,
        workdir: context.workdir,
        user: context.user,
        groups: context.groups,
        groups_asked: !args.group_add.is_empty(),
        early_signal: None,
        tty: args.tty,
        interactive: args.interactive,
        power_off_on_exit: false,
        last_command: false,
        second_interrupt: SecondInterrupt::Detach,
        agent_timeout: Duration::from_secs(30),
        started_mark: None,
        start_gate: None,
        rlimits: args.limits.ulimits.clone(),
        privileges: args.privileges.privileges(),
    };
    Ok(session::block_on(Session::new(options, &mut vm).run())??)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_env_follows_docker() {
        std::env::set_var("KRUNBOX_EXEC_TEST_VAR", "host");
        let env = exec_env(&[
            "A=1".into(),
            "B=x=y".into(),
            "KRUNBOX_EXEC_TEST_VAR".into(),
            "KRUNBOX_EXEC_UNSET".into(),
        ])
        .unwrap();
        assert_eq!(
            env,
            [
                ("A".to_owned(), "1".to_owned()),
                ("B".into(), "x=y".into()),
                ("KRUNBOX_EXEC_TEST_VAR".into(), "host".into())
            ]
        );
        assert!(exec_env(&["=1".into()]).is_err());
    }
}
