//! One exec: start the command, stream its output within the host's credit, feed its stdin,
//! apply resizes, signals and the timeout, and report its exit status last.
//!
//! The Exit frame is sent only after stdout and stderr reached end of file, so no output is
//! lost (as with `docker exec`, a background process that keeps the pipes open keeps the exec
//! open). If the host's connection drops, the exec's process group gets SIGHUP, as a terminal
//! hang-up would.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use krunbox_protocol::flow::{RecvWindow, SendWindow, INITIAL_WINDOW};
use krunbox_protocol::frame::{chunk_payload, MAX_CHUNK_LEN};
use krunbox_protocol::messages::{
    Body, ExecRequest, ExecStarted, ExitStatus, Outcome, OutputChunk, OutputStream, SpawnFailure,
    SpawnStage, WindowUpdate,
};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use tokio::sync::mpsc;

use crate::agent::Agent;
use crate::agent::DefaultEnv;
use crate::outgoing::Reply;
use crate::pty::{self, PtyMaster};
use crate::reaper::ChildExit;
use crate::spawn::{self, Command, SpawnError, Stdio};

/// `PATH` for commands whose environment has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Runs one exec to completion; the last frame it sends is Exit.
pub async fn run(
    agent: Arc<Agent>,
    reply: Reply,
    request: ExecRequest,
    mut inbox: mpsc::UnboundedReceiver<Body>,
) {
    let power_off = request.power_off_on_exit;
    let program = request.argv.first().cloned().unwrap_or_default();
    let cwd = working_directory(&request).to_owned();
    let status = match execute(&agent, &reply, request, &mut inbox).await {
        Ok(status) => status,
        Err(err) => {
            let message = spawn_failure_message(&err, &program, &cwd);
            tracing::debug!(%message, "exec could not start");
            ExitStatus {
                outcome: Some(Outcome::SpawnFailed(SpawnFailure {
                    stage: err.stage as i32,
                    errno: err.errno as i32,
                    message,
                })),
                timed_out: false,
            }
        }
    };
    let code = status.shell_code();
    if power_off {
        reply.send_then_shutdown(Body::Exit(status), code).await;
    } else {
        reply.send(Body::Exit(status)).await;
    }
    // Only now: while the inbox is open, a frame the host sent before it saw the exit (its
    // stdin's end, a signal racing the exit) is taken, not answered with an error for an
    // operation that no longer runs, which would reach the host before the Exit.
    drop(inbox);
}

/// The command's working directory: the request's, or `/` when it names none.
fn working_directory(request: &ExecRequest) -> &str {
    if request.cwd.is_empty() {
        "/"
    } else {
        &request.cwd
    }
}

/// What the user sees when a command could not start, naming what failed
/// (e.g. `/no/such/program: No such file or directory`).
fn spawn_failure_message(err: &SpawnError, program: &str, cwd: &str) -> String {
    let reason = err.errno.desc();
    match err.stage {
        SpawnStage::Exec => format!("{program}: {reason}"),
        SpawnStage::Chdir => format!("cannot change to working directory {cwd}: {reason}"),
        SpawnStage::Validate => {
            format!("invalid exec request (empty argv, NUL byte or '=' in a name): {reason}")
        }
        SpawnStage::SetUid => format!("cannot set the user id: {reason}"),
        SpawnStage::SetGid => format!("cannot set the group ids: {reason}"),
        SpawnStage::ControllingTerminal => {
            format!("cannot make the PTY the controlling terminal: {reason}")
        }
        SpawnStage::Setup => format!("cannot create the command's pipes or PTY: {reason}"),
        SpawnStage::Rlimit => {
            let resource = err.resource.unwrap_or(u32::MAX);
            let name = krunbox_protocol::rlimit::resource_name(resource)
                .map_or_else(|| format!("resource {resource}"), str::to_owned);
            format!("cannot set the command's {name} limit: {reason}")
        }
        SpawnStage::Capabilities => format!("cannot set the command's capabilities: {reason}"),
        SpawnStage::NoNewPrivileges => format!("cannot set no_new_privs: {reason}"),
        SpawnStage::Spawn | SpawnStage::Unspecified => {
            format!("cannot create a process for {program}: {reason}")
        }
    }
}

/// The request's variables but those the agent forces, then the agent's defaults, `PATH`,
/// `HOME` and `TERM` where the request does not set them.
fn environment(request: &ExecRequest, defaults: &DefaultEnv) -> Vec<(String, String)> {
    let forced = |key: &str| defaults.force.iter().any(|(k, _)| k == key);
    let mut env: Vec<(String, String)> = request
        .env
        .iter()
        .filter(|v| !forced(&v.key))
        .map(|v| (v.key.clone(), v.value.clone()))
        .chain(defaults.force.iter().cloned())
        .collect();
    let has = |env: &[(String, String)], key: &str| env.iter().any(|(k, _)| k == key);
    for (key, value) in &defaults.fill {
        if !has(&env, key) {
            env.push((key.clone(), value.clone()));
        }
    }
    if !has(&env, "PATH") {
        env.push(("PATH".into(), DEFAULT_PATH.into()));
    }
    if !has(&env, "HOME") {
        let home = if request.uid.unwrap_or(0) == 0 {
            "/root"
        } else {
            "/"
        };
        env.push(("HOME".into(), home.into()));
    }
    if request.pty.is_some() && !has(&env, "TERM") {
        let term = if request.term.is_empty() {
            "xterm"
        } else {
            request.term.as_str()
        };
        env.push(("TERM".into(), term.into()));
    }
    env
}

/// Where output comes from and stdin goes to.
enum Streams {
    Pipes {
        stdin: Option<pipe::Sender>,
        stdout: pipe::Receiver,
        stderr: pipe::Receiver,
    },
    Pty(Arc<PtyMaster>),
}

fn setup_io(request: &ExecRequest) -> Result<(Stdio, Streams), Errno> {
    if let Some(size) = request.pty {
        let (master, slave) = pty::open(size)?;
        let stdio = Stdio {
            stdin: slave.try_clone().map_err(io_errno)?,
            stdout: slave.try_clone().map_err(io_errno)?,
            stderr: slave,
        };
        return Ok((stdio, Streams::Pty(Arc::new(master))));
    }
    let (stdin_child, stdin) = if request.stdin {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        (
            read,
            Some(pipe::Sender::from_owned_fd(write).map_err(io_errno)?),
        )
    } else {
        let null = std::fs::File::open("/dev/null").map_err(io_errno)?;
        (OwnedFd::from(null), None)
    };
    let (stdout_read, stdout_child) = output_pipe()?;
    let (stderr_read, stderr_child) = output_pipe()?;
    let streams = Streams::Pipes {
        stdin,
        stdout: pipe::Receiver::from_owned_fd(stdout_read).map_err(io_errno)?,
        stderr: pipe::Receiver::from_owned_fd(stderr_read).map_err(io_errno)?,
    };
    Ok((
        Stdio {
            stdin: stdin_child,
            stdout: stdout_child,
            stderr: stderr_child,
        },
        streams,
    ))
}

fn io_errno(err: std::io::Error) -> Errno {
    Errno::from_raw(err.raw_os_error().unwrap_or(libc::EIO))
}

/// How much an output pipe holds: a chunk's worth ([`MAX_CHUNK_LEN`]), so that one read takes a
/// whole chunk (Linux's default, 64 KiB, made four reads and frames of each chunk).
const OUTPUT_PIPE_SIZE: usize = MAX_CHUNK_LEN;

/// A pipe for a command's output (read end, write end). Its size is raised to
/// [`OUTPUT_PIPE_SIZE`] where the kernel allows (a user over `fs.pipe-user-pages-soft` keeps
/// the default: slower, not wrong).
fn output_pipe() -> Result<(OwnedFd, OwnedFd), Errno> {
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let size = libc::c_int::try_from(OUTPUT_PIPE_SIZE).unwrap_or(libc::c_int::MAX);
    if let Err(err) = nix::fcntl::fcntl(&read, nix::fcntl::FcntlArg::F_SETPIPE_SZ(size)) {
        tracing::debug!(%err, "output pipe keeps its default size");
    }
    Ok((read, write))
}

/// The most one read of a PTY asks for: more than a terminal gives at once, and small enough
/// to come from the heap (not a mapping of its own, made and unmade for each read).
const PTY_READ: usize = 16 * 1024;

/// A read of a pipe that returns less than this, in the middle of a burst of output, waits
/// [`GATHER_WAIT`] for more before it becomes a frame.
const GATHER_BELOW: usize = 64 * 1024;
/// How long a read in a burst gathers more output, at most.
const GATHER_WAIT: Duration = Duration::from_millis(1);
/// Reads this soon after the previous one are in a burst: output after a pause (a prompt, the
/// one line of `ls`) is sent at once.
const BURST_GAP: Duration = Duration::from_millis(5);

/// A stream of output bytes.
enum Source {
    Pipe {
        pipe: pipe::Receiver,
        /// When the previous read returned, to tell a burst from output after a pause.
        last_read: Option<tokio::time::Instant>,
    },
    Pty(Arc<PtyMaster>),
}

impl Source {
    fn pipe(pipe: pipe::Receiver) -> Self {
        Self::Pipe {
            pipe,
            last_read: None,
        }
    }

    /// At most `len` bytes, as a chunk's payload (see [`read_chunk`]); empty at the end.
    ///
    /// A program that writes its output in small pieces (busybox's 4 KiB, a line at a time)
    /// would otherwise make a frame of each, and each frame costs a trip through the vsock
    /// device that dwarfs its bytes (stdout of `head -c` under TCG: 7 MB/s against 70 for
    /// file reads in whole chunks). In a burst, a short read keeps gathering for up to
    /// [`GATHER_WAIT`], or until it holds [`GATHER_BELOW`].
    async fn read_chunk(&mut self, len: usize) -> std::io::Result<Bytes> {
        match self {
            Self::Pipe { pipe, last_read } => {
                use tokio::io::AsyncReadExt;
                let in_burst = last_read.is_some_and(|at| at.elapsed() < BURST_GAP);
                let mut buf = krunbox_protocol::frame::chunk_buffer();
                (&mut *pipe).take(len as u64).read_buf(&mut buf).await?;
                if in_burst && !buf.is_empty() {
                    let deadline = tokio::time::Instant::now() + GATHER_WAIT;
                    while buf.len() < len.min(GATHER_BELOW) {
                        let mut more = (&mut *pipe).take((len - buf.len()) as u64);
                        match tokio::time::timeout_at(deadline, more.read_buf(&mut buf)).await {
                            Ok(Ok(0)) | Err(_) => break,
                            Ok(Ok(_)) => {}
                            Ok(Err(err)) => return Err(err),
                        }
                    }
                }
                *last_read = Some(tokio::time::Instant::now());
                Ok(chunk_payload(buf))
            }
            Self::Pty(master) => {
                // A terminal hands out at most its line discipline's buffer (4 KiB) per read.
                let len = len.min(PTY_READ);
                let mut buf = BytesMut::zeroed(len);
                let n = master.read(&mut buf).await?;
                buf.truncate(n);
                Ok(chunk_payload(buf))
            }
        }
    }
}

/// Copies one output stream to the host within the exec's credit window.
async fn pump(mut source: Source, stream: OutputStream, window: Arc<SendWindow>, reply: Reply) {
    loop {
        let Some(credit) = window.acquire(MAX_CHUNK_LEN).await else {
            return;
        };
        let data = match source.read_chunk(credit).await {
            Ok(data) => data,
            Err(err) => {
                tracing::warn!(?stream, %err, "reading command output failed");
                Bytes::new()
            }
        };
        let n = data.len();
        tracing::trace!(?stream, n, "output read");
        if n < credit {
            window.grant((credit - n) as u32);
        }
        let chunk = OutputChunk {
            stream: stream as i32,
            data,
            eof: n == 0,
        };
        if !reply.send(Body::Output(chunk)).await || n == 0 {
            return;
        }
    }
}

enum StdinMessage {
    Data(Bytes),
    Close,
}

enum StdinSink {
    Pipe(Option<pipe::Sender>),
    Pty(Arc<PtyMaster>),
    None,
}

/// End-of-file character of a terminal in canonical mode (^D).
const PTY_EOF: u8 = 0x04;

/// Writes the host's stdin bytes and returns their credit as they are written.
async fn feed_stdin(
    mut sink: StdinSink,
    mut rx: mpsc::UnboundedReceiver<StdinMessage>,
    reply: Reply,
) {
    let mut window = RecvWindow::new();
    while let Some(message) = rx.recv().await {
        match message {
            StdinMessage::Data(data) => {
                let len = data.len();
                if let Err(overrun) = window.received(len) {
                    tracing::warn!(%overrun, "host ignored the stdin window; closing stdin");
                    return;
                }
                tracing::trace!(len, "stdin data");
                let written = match &mut sink {
                    StdinSink::Pipe(Some(pipe)) => pipe.write_all(&data).await,
                    StdinSink::Pty(master) => master.write_all(&data).await,
                    // Stdin closed or never requested: the bytes are dropped, credit still returns.
                    StdinSink::Pipe(None) | StdinSink::None => Ok(()),
                };
                krunbox_protocol::frame::recycle(data);
                if let Err(err) = written {
                    tracing::debug!(%err, "command stopped reading stdin");
                    sink = StdinSink::Pipe(None);
                }
                if let Some(bytes) = window.consumed(len) {
                    reply.send(Body::Window(WindowUpdate { bytes })).await;
                }
            }
            StdinMessage::Close => match &mut sink {
                StdinSink::Pipe(pipe) => drop(pipe.take()),
                StdinSink::Pty(master) => {
                    let _ = master.write_all(&[PTY_EOF]).await;
                }
                StdinSink::None => {}
            },
        }
    }
}

fn signal_group(pid: Pid, signal: Signal) {
    if let Err(err) = killpg(pid, signal) {
        tracing::debug!(%pid, %err, "signal {signal} not delivered");
    }
}

/// The end of a one-shot or pooled VM's command is its guest's, as a container's init's end
/// is its container's: what the command left running (`sleep &`, a daemon) is killed now, so its
/// output's end comes at once rather than when the last of them closes stdout. As the guest's
/// PID 1 that is every other process (the guest powers off next anyway); in host mode, only the
/// command's process group.
fn end_what_it_left(pid: Pid) {
    signal_group(pid, Signal::SIGKILL);
    if std::process::id() == 1 {
        if let Err(err) = nix::sys::signal::kill(Pid::from_raw(-1), Signal::SIGKILL) {
            tracing::debug!(%err, "nothing else to end");
        }
    }
}

async fn execute(
    agent: &Agent,
    reply: &Reply,
    request: ExecRequest,
    inbox: &mut mpsc::UnboundedReceiver<Body>,
) -> Result<ExitStatus, SpawnError> {
    if request.argv.is_empty() || request.argv[0].is_empty() {
        return Err(SpawnError::new(SpawnStage::Validate, Errno::EINVAL));
    }
    let (stdio, streams) = setup_io(&request).map_err(|e| SpawnError::new(SpawnStage::Setup, e))?;
    let command = Command {
        argv: request.argv.clone(),
        env: environment(&request, &agent.default_env),
        cwd: Some(working_directory(&request).to_owned()),
        uid: request.uid,
        gid: request.gid,
        pty: request.pty.is_some(),
        rlimits: request
            .rlimits
            .iter()
            .map(|l| (l.resource, l.soft, l.hard))
            .collect(),
        groups: request.groups.clone(),
        capabilities: request.capabilities,
        no_new_privileges: request.no_new_privileges,
    };
    let spawned = spawn::spawn(&agent.table, &command, stdio).await?;
    let pid = spawned.pid;
    tracing::debug!(%pid, argv = ?request.argv, "exec started");
    reply
        .send(Body::ExecStarted(ExecStarted {
            pid: pid.as_raw() as u32,
        }))
        .await;

    let window = Arc::new(SendWindow::new(INITIAL_WINDOW));
    let (stdin_tx, stdin_rx) = mpsc::unbounded_channel();
    let (pumps, sink, pty) = match streams {
        Streams::Pipes {
            stdin,
            stdout,
            stderr,
        } => {
            let sink = if request.stdin {
                StdinSink::Pipe(stdin)
            } else {
                StdinSink::None
            };
            let pumps = vec![
                tokio::spawn(pump(
                    Source::pipe(stdout),
                    OutputStream::Stdout,
                    window.clone(),
                    reply.clone(),
                )),
                tokio::spawn(pump(
                    Source::pipe(stderr),
                    OutputStream::Stderr,
                    window.clone(),
                    reply.clone(),
                )),
            ];
            (pumps, sink, None)
        }
        Streams::Pty(master) => {
            let pumps = vec![tokio::spawn(pump(
                Source::Pty(master.clone()),
                OutputStream::Pty,
                window.clone(),
                reply.clone(),
            ))];
            (pumps, StdinSink::Pty(master.clone()), Some(master))
        }
    };
    let feeder = tokio::spawn(feed_stdin(sink, stdin_rx, reply.clone()));
    tracing::trace!(pumps = pumps.len(), "exec streams running");

    let mut exit_rx = spawned.exit;
    let mut exit: Option<ChildExit> = None;
    let mut timed_out = false;
    let mut connected = true;
    let timeout = tokio::time::sleep(if request.timeout_ms > 0 {
        Duration::from_millis(request.timeout_ms)
    } else {
        Duration::MAX / 4
    });
    tokio::pin!(timeout);
    let pumps_done = futures_util::future::join_all(pumps);
    tokio::pin!(pumps_done);

    // Until the command exited AND its output reached end of file, keep serving the host's
    // control frames (credit for the output, stdin, signals, resizes).
    let mut output_done = false;
    while exit.is_none() || !output_done {
        tokio::select! {
            frame = inbox.recv(), if connected => match frame {
                Some(Body::StdinData(data)) => drop(stdin_tx.send(StdinMessage::Data(data.data))),
                Some(Body::StdinClose(_)) => drop(stdin_tx.send(StdinMessage::Close)),
                Some(Body::Window(update)) => window.grant(update.bytes),
                Some(Body::Signal(request)) => match Signal::try_from(request.signal) {
                    Ok(signal) if exit.is_none() => signal_group(pid, signal),
                    Ok(_) => {}
                    Err(_) => tracing::warn!(signal = request.signal, "host sent an unknown signal number"),
                },
                Some(Body::Resize(resize)) => {
                    if let (Some(master), Some(size)) = (&pty, resize.size) {
                        if let Err(err) = master.resize(size) {
                            tracing::warn!(%err, "pty resize failed");
                        }
                    }
                }
                Some(other) => tracing::warn!(kind = other.kind(), "unexpected frame for an exec; ignored"),
                None => {
                    connected = false;
                    window.close();
                    if exit.is_none() {
                        signal_group(pid, Signal::SIGHUP);
                    }
                }
            },
            status = &mut exit_rx, if exit.is_none() => {
                exit = Some(status.unwrap_or(ChildExit::Signal(Signal::SIGKILL as i32)));
                if request.power_off_on_exit || request.kill_leftovers_on_exit {
                    end_what_it_left(pid);
                }
            },
            _ = &mut pumps_done, if !output_done => output_done = true,
            _ = &mut timeout, if !timed_out && exit.is_none() => {
                tracing::info!(%pid, "exec timed out; killing its process group");
                timed_out = true;
                signal_group(pid, Signal::SIGKILL);
            },
        }
    }
    drop(stdin_tx);
    feeder.abort();
    let outcome = match exit {
        Some(ChildExit::Code(code)) => Outcome::Code(code),
        Some(ChildExit::Signal(signal)) => Outcome::Signal(signal),
        None => Outcome::Signal(Signal::SIGKILL as i32),
    };
    Ok(ExitStatus {
        outcome: Some(outcome),
        timed_out,
    })
}

#[cfg(test)]
mod tests {
    use krunbox_protocol::messages::EnvVar;

    use super::*;

    fn value<'a>(env: &'a [(String, String)], key: &str) -> Option<&'a str> {
        env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    #[test]
    fn the_agents_defaults_fill_in_what_the_request_does_not_set() {
        let defaults = DefaultEnv {
            fill: vec![("SSH_AUTH_SOCK".to_owned(), "/run/agent.sock".to_owned())],
            force: vec![("KEY".to_owned(), "placeholder".to_owned())],
        };
        let request = ExecRequest::default();
        let env = environment(&request, &defaults);
        assert_eq!(value(&env, "SSH_AUTH_SOCK"), Some("/run/agent.sock"));
        assert_eq!(value(&env, "PATH"), Some(DEFAULT_PATH));

        let request = ExecRequest {
            env: vec![
                EnvVar {
                    key: "SSH_AUTH_SOCK".into(),
                    value: "/mine".into(),
                },
                // A request (an image's ENV, a -e) cannot replace a secret's placeholder.
                EnvVar {
                    key: "KEY".into(),
                    value: "the real value".into(),
                },
            ],
            ..Default::default()
        };
        let env = environment(&request, &defaults);
        assert_eq!(value(&env, "SSH_AUTH_SOCK"), Some("/mine"));
        assert_eq!(env.iter().filter(|(k, _)| k == "SSH_AUTH_SOCK").count(), 1);
        assert_eq!(value(&env, "KEY"), Some("placeholder"));
        assert_eq!(env.iter().filter(|(k, _)| k == "KEY").count(), 1);
        assert_eq!(
            value(
                &environment(&request, &DefaultEnv::default()),
                "SSH_AUTH_SOCK"
            ),
            Some("/mine")
        );
    }
}
