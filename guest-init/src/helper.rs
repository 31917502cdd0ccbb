//! `guest-init exec-helper`: the single-threaded trampoline between the agent and a command.
//!
//! Why it exists: `fork()` in a multi-threaded musl program can deadlock in the child on a
//! lock (malloc's) held by another thread at the moment of the fork, and the agent runs a
//! multi-threaded tokio runtime. `posix_spawn` is safe (musl implements it with
//! `CLONE_VM|CLONE_VFORK` and execs immediately) but cannot set a session, a controlling
//! terminal, credentials or a working directory. So the agent `posix_spawn`s its own binary in
//! this mode, a fresh single-threaded process, which does those steps and then `execvp`s the
//! command. A failure is written as `<stage> <errno>` to the status descriptor (close-on-exec,
//! so a successful exec shows as end of file), and the helper exits 127.
//!
//! Arguments: `exec-helper --status-fd FD [--pty] [--uid N] [--gid N] [--cwd DIR] -- ARGV...`;
//! the environment is the command's.

use std::ffi::CString;
use std::os::fd::{BorrowedFd, RawFd};

use krunbox_protocol::messages::SpawnStage;
use nix::errno::Errno;
use nix::unistd::{Gid, Uid};

/// The helper's view of its arguments.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct HelperArgs {
    pub status_fd: RawFd,
    pub pty: bool,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub cwd: Option<String>,
    pub argv: Vec<String>,
}

impl HelperArgs {
    /// Renders the arguments after `exec-helper`.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec!["--status-fd".to_owned(), self.status_fd.to_string()];
        if self.pty {
            args.push("--pty".into());
        }
        if let Some(uid) = self.uid {
            args.extend(["--uid".into(), uid.to_string()]);
        }
        if let Some(gid) = self.gid {
            args.extend(["--gid".into(), gid.to_string()]);
        }
        if let Some(cwd) = &self.cwd {
            args.extend(["--cwd".into(), cwd.clone()]);
        }
        args.push("--".into());
        args.extend(self.argv.iter().cloned());
        args
    }

    /// Parses what [`to_args`](Self::to_args) rendered.
    pub fn parse(args: &[String]) -> Option<Self> {
        let mut parsed = Self {
            status_fd: -1,
            ..Self::default()
        };
        let mut iter = args.iter();
        while let Some(arg) = iter.next() {
            match arg.as_str() {
                "--status-fd" => parsed.status_fd = iter.next()?.parse().ok()?,
                "--pty" => parsed.pty = true,
                "--uid" => parsed.uid = Some(iter.next()?.parse().ok()?),
                "--gid" => parsed.gid = Some(iter.next()?.parse().ok()?),
                "--cwd" => parsed.cwd = Some(iter.next()?.clone()),
                "--" => {
                    parsed.argv = iter.cloned().collect();
                    break;
                }
                _ => return None,
            }
        }
        (parsed.status_fd >= 0 && !parsed.argv.is_empty()).then_some(parsed)
    }
}

/// Runs the helper; returns only on failure, with the process's exit code.
pub fn run(args: &[String]) -> i32 {
    let Some(args) = HelperArgs::parse(args) else {
        eprintln!("guest-init exec-helper: invalid arguments {args:?}");
        return 125;
    };
    // The status descriptor must close when the command is exec'd: end of file is the
    // agent's signal that the exec succeeded.
    // SAFETY: F_SETFD on the descriptor the agent passed; no memory is involved.
    if unsafe { libc::fcntl(args.status_fd, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
        return 125;
    }
    let (stage, errno) = match prepare_and_exec(&args) {
        Ok(never) => match never {},
        Err(failure) => failure,
    };
    report(args.status_fd, stage, errno);
    127
}

fn report(status_fd: RawFd, stage: SpawnStage, errno: Errno) {
    let line = format!("{} {}", stage as i32, errno as i32);
    // SAFETY: the agent passed this descriptor for exactly this report; it stays open until
    // this process exits.
    let fd = unsafe { BorrowedFd::borrow_raw(status_fd) };
    let _ = nix::unistd::write(fd, line.as_bytes());
}

enum Never {}

fn prepare_and_exec(args: &HelperArgs) -> Result<Never, (SpawnStage, Errno)> {
    nix::unistd::setsid().map_err(|e| (SpawnStage::ControllingTerminal, e))?;
    if args.pty {
        // SAFETY: TIOCSCTTY on fd 0 (the PTY slave the agent installed) with arg 0 only makes
        // it our controlling terminal; no memory is passed.
        let rc = unsafe { libc::ioctl(0, libc::TIOCSCTTY as _, 0) };
        if rc != 0 {
            return Err((SpawnStage::ControllingTerminal, Errno::last()));
        }
    }
    if let Some(gid) = args.gid {
        nix::unistd::setgid(Gid::from_raw(gid)).map_err(|e| (SpawnStage::SetGid, e))?;
    }
    // A command run as another user or group must not keep the agent's (root's)
    // supplementary groups: its only group is its primary one.
    if (args.uid.is_some() || args.gid.is_some()) && Uid::effective().is_root() {
        nix::unistd::setgroups(&[Gid::current()]).map_err(|e| (SpawnStage::SetGid, e))?;
    }
    if let Some(uid) = args.uid {
        nix::unistd::setuid(Uid::from_raw(uid)).map_err(|e| (SpawnStage::SetUid, e))?;
    }
    if let Some(cwd) = &args.cwd {
        nix::unistd::chdir(cwd.as_str()).map_err(|e| (SpawnStage::Chdir, e))?;
    }
    let argv: Vec<CString> = args
        .argv
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|_| (SpawnStage::Validate, Errno::EINVAL))?;
    let err = match nix::unistd::execvp(&argv[0], &argv) {
        Ok(never) => match never {},
        Err(err) => err,
    };
    Err((SpawnStage::Exec, err))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_round_trip() {
        let args = HelperArgs {
            status_fd: 3,
            pty: true,
            uid: Some(1000),
            gid: Some(100),
            cwd: Some("/tmp dir".into()),
            argv: vec!["sh".into(), "-c".into(), "--pty".into()],
        };
        assert_eq!(HelperArgs::parse(&args.to_args()), Some(args));
    }

    #[test]
    fn rejects_incomplete_arguments() {
        assert_eq!(HelperArgs::parse(&["--status-fd".into(), "3".into()]), None);
        assert_eq!(HelperArgs::parse(&["--bogus".into()]), None);
    }
}
