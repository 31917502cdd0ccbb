/// One `KEY=VALUE` environment entry.
///
/// ```
/// let v = krunbox_protocol::messages::EnvVar { key: "HOME".into(), value: "/root".into() };
/// assert_eq!(v.key, "HOME");
/// ```
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct EnvVar {
    /// Variable name; must not contain `=` or NUL.
    #[prost(string, tag = "1")]
    pub key: String,
    /// Value; must not contain NUL.
    #[prost(string, tag = "2")]
    pub value: String,
}

/// Size of a pseudo-terminal, in character cells.
///
/// ```
/// let size = krunbox_protocol::messages::PtySize { rows: 24, cols: 80 };
/// assert_eq!(size.cols, 80);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, ::prost::Message)]
pub struct PtySize {
    /// Rows.
    #[prost(uint32, tag = "1")]
    pub rows: u32,
    /// Columns.
    #[prost(uint32, tag = "2")]
    pub cols: u32,
}

/// Start a process. The envelope id names the exec in every later frame.
///
/// The process runs in a session and process group of its own; with `pty` set its stdin,
/// stdout and stderr are the PTY's slave and output arrives as [`OutputStream::Pty`].
///
/// ```
/// use krunbox_protocol::messages::ExecRequest;
/// let req = ExecRequest { argv: vec!["echo".into(), "hi".into()], ..Default::default() };
/// assert_eq!(req.argv[0], "echo");
/// ```
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct ExecRequest {
    /// Program and arguments; `argv[0]` is looked up in `PATH` when it has no `/`.
    #[prost(string, repeated, tag = "1")]
    pub argv: Vec<String>,
    /// The complete environment of the process. When it has no `PATH`, the agent's default
    /// `PATH` is added.
    #[prost(message, repeated, tag = "2")]
    pub env: Vec<EnvVar>,
    /// Working directory; empty means `/`.
    #[prost(string, tag = "3")]
    pub cwd: String,
    /// User id to run as; unset means the agent's own.
    #[prost(uint32, optional, tag = "4")]
    pub uid: Option<u32>,
    /// Group id to run as; unset means the agent's own (or `uid`'s primary group is not looked up).
    #[prost(uint32, optional, tag = "5")]
    pub gid: Option<u32>,
    /// Kill the process group with SIGKILL after this many milliseconds (0 = no limit).
    #[prost(uint64, tag = "6")]
    pub timeout_ms: u64,
    /// Whether the host will send stdin; otherwise stdin is `/dev/null`.
    #[prost(bool, tag = "7")]
    pub stdin: bool,
    /// Run on a new pseudo-terminal of this size.
    #[prost(message, optional, tag = "8")]
    pub pty: Option<PtySize>,
    /// `TERM` for a PTY session when `env` has none.
    #[prost(string, tag = "9")]
    pub term: String,
    /// After this process's exit status is sent, sync and power the guest off ("one-shot").
    #[prost(bool, tag = "10")]
    pub power_off_on_exit: bool,
    /// Resource limits set on the process before it runs, while the agent is still root (so
    /// a hard limit may be raised for a command run as another user).
    #[prost(message, repeated, tag = "11")]
    pub rlimits: Vec<Rlimit>,
    /// The process's capability sets (see [`crate::capability`]); unset leaves them as
    /// Linux makes them (all for root, none for another user).
    #[prost(message, optional, tag = "12")]
    pub capabilities: Option<CapabilitySets>,
    /// Set `no_new_privs` on the process: no `execve` of a setuid, setgid or file-capability
    /// program gives it more than it has.
    #[prost(bool, tag = "13")]
    pub no_new_privileges: bool,
    /// The command is its guest's last (a one-shot or pooled run): when it exits, whatever
    /// else runs in the guest is killed, as a container's processes die with its init, so the
    /// exit is not held up by a background process keeping stdout open. `power_off_on_exit`
    /// implies it. An agent without it waits for them, as before.
    #[prost(bool, tag = "14")]
    pub kill_leftovers_on_exit: bool,
    /// The process's supplementary groups (its primary group is `gid`); empty: none but the
    /// primary one when the user changes, the agent's own otherwise. Only an agent announcing
    /// [`GROUPS_FEATURE`] applies them.
    #[prost(uint32, repeated, tag = "15")]
    pub groups: Vec<u32>,
}

/// The handshake feature of an agent that applies [`ExecRequest::groups`].
pub const GROUPS_FEATURE: &str = "groups";

/// A command's five capability sets, as masks in Linux's numbering (bit 13 is
/// `CAP_NET_RAW`), applied as runc applies an OCI config's: capabilities outside `bounding`
/// leave the bounding set before the process becomes its user; the others are set after.
///
/// ```
/// let raw_only = krunbox_protocol::messages::CapabilitySets {
///     bounding: 1 << 13, effective: 1 << 13, permitted: 1 << 13, ..Default::default()
/// };
/// assert_eq!(raw_only.ambient, 0);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, ::prost::Message)]
pub struct CapabilitySets {
    /// The bounding set: no capability outside it can ever be gained.
    #[prost(uint64, tag = "1")]
    pub bounding: u64,
    /// The effective set.
    #[prost(uint64, tag = "2")]
    pub effective: u64,
    /// The permitted set.
    #[prost(uint64, tag = "3")]
    pub permitted: u64,
    /// The inheritable set.
    #[prost(uint64, tag = "4")]
    pub inheritable: u64,
    /// The ambient set (kept across `execve` by a process that is not root).
    #[prost(uint64, tag = "5")]
    pub ambient: u64,
}

/// One resource limit of a command, as `setrlimit(2)` takes it (see [`crate::rlimit`]).
///
/// ```
/// let nofile = krunbox_protocol::messages::Rlimit { resource: 7, soft: 1024, hard: 4096 };
/// assert!(nofile.soft <= nofile.hard);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, ::prost::Message)]
pub struct Rlimit {
    /// The resource, in Linux's numbering (`RLIMIT_NOFILE` is 7), whatever the host is.
    #[prost(uint32, tag = "1")]
    pub resource: u32,
    /// The soft limit; `u64::MAX` is unlimited.
    #[prost(uint64, tag = "2")]
    pub soft: u64,
    /// The hard limit; `u64::MAX` is unlimited.
    #[prost(uint64, tag = "3")]
    pub hard: u64,
}

/// The process is running.
///
/// ```
/// let s = krunbox_protocol::messages::ExecStarted { pid: 42 };
/// assert_eq!(s.pid, 42);
/// ```
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct ExecStarted {
    /// Process id inside the guest (also its process-group and session id).
    #[prost(uint32, tag = "1")]
    pub pid: u32,
}

/// Bytes for the process's stdin (or the PTY).
///
/// ```
/// let d = krunbox_protocol::messages::StdinData { data: b"hi\n".to_vec().into() };
/// assert_eq!(&d.data[..], b"hi\n");
/// ```
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct StdinData {
    /// Payload; counts against the agent's stdin window.
    #[prost(bytes = "bytes", tag = "1")]
    pub data: ::bytes::Bytes,
}

/// No more stdin: the agent closes the pipe (or sends EOF, `^D`, on a PTY).
///
/// ```
/// let _close = krunbox_protocol::messages::StdinClose {};
/// ```
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct StdinClose {}

/// Which output of the process a chunk comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, ::prost::Enumeration)]
#[repr(i32)]
pub enum OutputStream {
    /// Standard output.
    Stdout = 0,
    /// Standard error.
    Stderr = 1,
    /// The PTY master (stdout and stderr merged, as a terminal shows them).
    Pty = 2,
}

/// Bytes the process wrote. An empty chunk with `eof` set closes that stream.
///
/// ```
/// use krunbox_protocol::messages::{OutputChunk, OutputStream};
/// let c = OutputChunk { stream: OutputStream::Stderr as i32, data: b"oops".to_vec().into(), eof: false };
/// assert_eq!(c.stream(), OutputStream::Stderr);
/// ```
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct OutputChunk {
    /// Which stream.
    #[prost(enumeration = "OutputStream", tag = "1")]
    pub stream: i32,
    /// Payload; counts against the host's output window for this exec.
    #[prost(bytes = "bytes", tag = "2")]
    pub data: ::bytes::Bytes,
    /// The stream reached end of file.
    #[prost(bool, tag = "3")]
    pub eof: bool,
}

/// New window size for a PTY exec; the foreground process group gets SIGWINCH.
///
/// ```
/// use krunbox_protocol::messages::{PtyResize, PtySize};
/// let r = PtyResize { size: Some(PtySize { rows: 50, cols: 132 }) };
/// assert_eq!(r.size.unwrap().rows, 50);
/// ```
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct PtyResize {
    /// The new size.
    #[prost(message, optional, tag = "1")]
    pub size: Option<PtySize>,
}

/// Deliver a signal (Linux numbering, e.g. 15 = SIGTERM) to the exec's process group.
///
/// ```
/// let s = krunbox_protocol::messages::SignalRequest { signal: 15 };
/// assert_eq!(s.signal, 15);
/// ```
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct SignalRequest {
    /// Signal number.
    #[prost(int32, tag = "1")]
    pub signal: i32,
}

/// The step at which starting a process failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, ::prost::Enumeration)]
#[repr(i32)]
pub enum SpawnStage {
    /// Not set (a newer generation's stage).
    Unspecified = 0,
    /// The request itself was unusable (empty argv, NUL in a string).
    Validate = 1,
    /// Creating pipes or the PTY.
    Setup = 2,
    /// Creating the process.
    Spawn = 3,
    /// Changing to `cwd`.
    Chdir = 4,
    /// Setting gid / supplementary groups.
    SetGid = 5,
    /// Setting uid.
    SetUid = 6,
    /// Making the PTY the controlling terminal.
    ControllingTerminal = 7,
    /// `execve` itself (e.g. ENOENT: no such program, EACCES: not executable).
    Exec = 8,
    /// Setting a resource limit (EPERM: above what the agent may raise to).
    Rlimit = 9,
    /// Setting the capability sets (EPERM: a capability the agent itself lacks).
    Capabilities = 10,
    /// Setting `no_new_privs`.
    NoNewPrivileges = 11,
}

/// The process could not be started.
///
/// ```
/// use krunbox_protocol::messages::{SpawnFailure, SpawnStage};
/// let f = SpawnFailure { stage: SpawnStage::Exec as i32, errno: 2, message: "no-such-cmd: not found".into() };
/// assert_eq!(f.stage(), SpawnStage::Exec);
/// ```
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct SpawnFailure {
    /// Where it failed.
    #[prost(enumeration = "SpawnStage", tag = "1")]
    pub stage: i32,
    /// The OS error number.
    #[prost(int32, tag = "2")]
    pub errno: i32,
    /// Human-readable description.
    #[prost(string, tag = "3")]
    pub message: String,
}

/// How an exec ended; the last frame of the exec, sent after all of its output.
///
/// ```
/// use krunbox_protocol::messages::{ExitStatus, Outcome};
/// let s = ExitStatus { outcome: Some(Outcome::Code(3)), timed_out: false };
/// assert_eq!(s.shell_code(), 3);
/// let k = ExitStatus { outcome: Some(Outcome::Signal(9)), timed_out: true };
/// assert_eq!(k.shell_code(), 137);
/// let hostile = ExitStatus { outcome: Some(Outcome::Signal(i32::MAX)), timed_out: false };
/// assert_eq!(hostile.shell_code(), 255);
/// ```
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct ExitStatus {
    /// What happened.
    #[prost(oneof = "Outcome", tags = "1, 2, 3")]
    pub outcome: Option<Outcome>,
    /// The agent killed the process group because `timeout_ms` passed.
    #[prost(bool, tag = "4")]
    pub timed_out: bool,
}

/// The three ways an exec ends.
#[derive(Clone, PartialEq, ::prost::Oneof)]
pub enum Outcome {
    /// Exited normally with this code.
    #[prost(int32, tag = "1")]
    Code(i32),
    /// Killed by this signal.
    #[prost(int32, tag = "2")]
    Signal(i32),
    /// Never started.
    #[prost(message, tag = "3")]
    SpawnFailed(SpawnFailure),
}

impl ExitStatus {
    /// The status a shell would report: the code, 128 + signal, 127 when the program was not
    /// found, 126 when it could not be executed, 125 for other start failures. The values
    /// come from the guest: a signal number no kernel has (outside 1..=127) reads as 255.
    pub fn shell_code(&self) -> i32 {
        match &self.outcome {
            Some(Outcome::Code(code)) => *code,
            Some(Outcome::Signal(sig @ 1..=127)) => 128 + *sig,
            Some(Outcome::Signal(_)) => 255,
            Some(Outcome::SpawnFailed(f)) if f.stage() == SpawnStage::Exec => {
                if f.errno == libc_enoent() {
                    127
                } else {
                    126
                }
            }
            Some(Outcome::SpawnFailed(_)) | None => 125,
        }
    }
}

const fn libc_enoent() -> i32 {
    2
}
