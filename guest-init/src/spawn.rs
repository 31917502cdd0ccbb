//! Starting a command through the exec helper with `posix_spawn` (see `helper.rs` for why).

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use krunbox_protocol::messages::SpawnStage;
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::spawn::{posix_spawn, PosixSpawnAttr, PosixSpawnFileActions, PosixSpawnFlags};
use nix::sys::signal::SigSet;
use nix::unistd::Pid;

use crate::helper::HelperArgs;
use crate::reaper::{ChildExit, ProcessTable};

/// The fd the status pipe gets in the helper.
const HELPER_STATUS_FD: RawFd = 3;

/// Why a command could not be started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{stage:?} failed: {errno}")]
pub struct SpawnError {
    pub stage: SpawnStage,
    pub errno: Errno,
}

impl SpawnError {
    pub fn new(stage: SpawnStage, errno: Errno) -> Self {
        Self { stage, errno }
    }
}

/// The three descriptors the command gets as 0, 1 and 2.
pub struct Stdio {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// What a command runs as.
pub struct Command {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub pty: bool,
}

/// A started command.
pub struct Spawned {
    pub pid: Pid,
    pub exit: tokio::sync::oneshot::Receiver<ChildExit>,
}

/// Returns a close-on-exec duplicate at fd ≥ 10 when `fd` is low, so that the helper's
/// `dup2`s onto 0–3 never collide with a source descriptor.
fn above_stdio(fd: OwnedFd) -> Result<OwnedFd, Errno> {
    if fd.as_raw_fd() >= 10 {
        return Ok(fd);
    }
    let high = fcntl(&fd, FcntlArg::F_DUPFD_CLOEXEC(10))?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(high) })
}

fn c_string(s: &str) -> Result<CString, SpawnError> {
    CString::new(s).map_err(|_| SpawnError::new(SpawnStage::Validate, Errno::EINVAL))
}

/// Starts `command` with `stdio`, registered in `table`; waits until the command was exec'd
/// (or failed before that).
pub async fn spawn(
    table: &ProcessTable,
    command: &Command,
    stdio: Stdio,
) -> Result<Spawned, SpawnError> {
    let (pid, exit, status_read) = start_helper(table, command, stdio)?;
    // The helper writes `<stage> <errno>` on failure; end of file means the command runs.
    let report = tokio::task::spawn_blocking(move || read_report(&status_read))
        .await
        .unwrap_or_default();
    if let Some((stage, errno)) = report.trim().split_once(' ') {
        let stage = stage
            .parse::<i32>()
            .ok()
            .and_then(|s| SpawnStage::try_from(s).ok())
            .unwrap_or(SpawnStage::Unspecified);
        let errno = Errno::from_raw(errno.parse().unwrap_or(0));
        // The helper exits right after reporting; the reaper collects it.
        drop(exit);
        return Err(SpawnError::new(stage, errno));
    }
    Ok(Spawned { pid, exit })
}

fn read_report(status_read: &OwnedFd) -> String {
    let mut buf = [0u8; 32];
    let mut len = 0;
    while len < buf.len() {
        match nix::unistd::read(status_read, &mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(Errno::EINTR) => continue,
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&buf[..len]).into_owned()
}

/// `posix_spawn`s the helper; returns its pid, exit receiver and the status pipe's read end.
fn start_helper(
    table: &ProcessTable,
    command: &Command,
    stdio: Stdio,
) -> Result<(Pid, tokio::sync::oneshot::Receiver<ChildExit>, OwnedFd), SpawnError> {
    let setup = |e| SpawnError::new(SpawnStage::Setup, e);
    let (status_read, status_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(setup)?;
    let stdin = above_stdio(stdio.stdin).map_err(setup)?;
    let stdout = above_stdio(stdio.stdout).map_err(setup)?;
    let stderr = above_stdio(stdio.stderr).map_err(setup)?;
    let status_write = above_stdio(status_write).map_err(setup)?;

    let helper = HelperArgs {
        status_fd: HELPER_STATUS_FD,
        pty: command.pty,
        uid: command.uid,
        gid: command.gid,
        cwd: command.cwd.clone(),
        argv: command.argv.clone(),
    };
    let mut args = vec![c_string("guest-init")?, c_string("exec-helper")?];
    for arg in helper.to_args() {
        args.push(c_string(&arg)?);
    }
    let env: Vec<CString> = command
        .env
        .iter()
        .map(|(k, v)| {
            if k.is_empty() || k.contains('=') {
                return Err(SpawnError::new(SpawnStage::Validate, Errno::EINVAL));
            }
            c_string(&format!("{k}={v}"))
        })
        .collect::<Result<_, _>>()?;

    let mut actions = PosixSpawnFileActions::init().map_err(setup)?;
    for (fd, target) in [
        (stdin.as_raw_fd(), 0),
        (stdout.as_raw_fd(), 1),
        (stderr.as_raw_fd(), 2),
        (status_write.as_raw_fd(), HELPER_STATUS_FD),
    ] {
        actions.add_dup2(fd, target).map_err(setup)?;
    }
    let mut attr = PosixSpawnAttr::init().map_err(setup)?;
    attr.set_flags(
        PosixSpawnFlags::POSIX_SPAWN_SETSIGMASK | PosixSpawnFlags::POSIX_SPAWN_SETSIGDEF,
    )
    .map_err(setup)?;
    attr.set_sigmask(&SigSet::empty()).map_err(setup)?;
    // Rust ignores SIGPIPE and tokio installs handlers: the command starts with defaults.
    attr.set_sigdefault(&SigSet::all()).map_err(setup)?;
    let self_exe = c_string("/proc/self/exe")?;

    let (pid, exit) = table
        .spawn_tracked(|| posix_spawn(self_exe.as_c_str(), &actions, &attr, &args, &env))
        .map_err(|e| SpawnError::new(SpawnStage::Spawn, e))?;
    drop((stdin, stdout, stderr, status_write));
    Ok((pid, exit, status_read))
}
