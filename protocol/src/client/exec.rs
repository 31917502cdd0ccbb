//! Running processes in the guest.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{mpsc, oneshot};

use super::{unexpected, Client, ClientError, OperationGuard, Shared};
use crate::flow::{RecvWindow, SendWindow};
use crate::frame::MAX_CHUNK_LEN;
use crate::messages::{
    Body, CapabilitySets, EnvVar, ExecRequest, ExitStatus, OutputStream, PtyResize, PtySize,
    Rlimit, SignalRequest, StdinClose, StdinData, WindowUpdate,
};

/// What to run: a builder for an [`ExecRequest`].
///
/// ```
/// use std::time::Duration;
/// use krunbox_protocol::client::ExecSpec;
/// let spec = ExecSpec::new(["sh", "-c", "echo $GREETING"])
///     .env("GREETING", "hello")
///     .cwd("/tmp")
///     .timeout(Duration::from_secs(30))
///     .stdin(true);
/// assert_eq!(spec.request().argv.len(), 3);
/// ```
#[derive(Debug, Clone, Default)]
pub struct ExecSpec {
    request: ExecRequest,
}

impl ExecSpec {
    /// A program and its arguments.
    pub fn new<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            request: ExecRequest {
                argv: argv.into_iter().map(Into::into).collect(),
                ..Default::default()
            },
        }
    }

    /// Adds an environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.request.env.push(EnvVar {
            key: key.into(),
            value: value.into(),
        });
        self
    }

    /// Working directory.
    pub fn cwd(mut self, dir: impl Into<String>) -> Self {
        self.request.cwd = dir.into();
        self
    }

    /// Run as this uid and gid.
    pub fn user(mut self, uid: u32, gid: u32) -> Self {
        self.request.uid = Some(uid);
        self.request.gid = Some(gid);
        self
    }

    /// Kill the process group after `limit`.
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.request.timeout_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX).max(1);
        self
    }

    /// Whether the caller will send stdin (otherwise stdin is `/dev/null`).
    pub fn stdin(mut self, enabled: bool) -> Self {
        self.request.stdin = enabled;
        self
    }

    /// Run on a pseudo-terminal of `rows` × `cols`; implies stdin.
    pub fn pty(mut self, rows: u16, cols: u16) -> Self {
        self.request.pty = Some(PtySize {
            rows: rows.into(),
            cols: cols.into(),
        });
        self.request.stdin = true;
        self
    }

    /// `TERM` for a PTY session.
    pub fn term(mut self, term: impl Into<String>) -> Self {
        self.request.term = term.into();
        self
    }

    /// Power the guest off once this process's exit status is delivered.
    pub fn power_off_on_exit(mut self, enabled: bool) -> Self {
        self.request.power_off_on_exit = enabled;
        self
    }

    /// Set a resource limit on the process (see [`crate::rlimit`]).
    pub fn rlimit(mut self, limit: Rlimit) -> Self {
        self.request.rlimits.push(limit);
        self
    }

    /// Set the process's capability sets (see [`crate::capability`]).
    pub fn capabilities(mut self, sets: CapabilitySets) -> Self {
        self.request.capabilities = Some(sets);
        self
    }

    /// Give the process these supplementary groups (see [`ExecRequest::groups`]).
    pub fn groups(mut self, groups: impl IntoIterator<Item = u32>) -> Self {
        self.request.groups = groups.into_iter().collect();
        self
    }

    /// Kill whatever else runs in the guest when this process exits (see
    /// [`ExecRequest::kill_leftovers_on_exit`]).
    pub fn kill_leftovers_on_exit(mut self, enabled: bool) -> Self {
        self.request.kill_leftovers_on_exit = enabled;
        self
    }

    /// Set `no_new_privs` on the process.
    pub fn no_new_privileges(mut self, enabled: bool) -> Self {
        self.request.no_new_privileges = enabled;
        self
    }

    /// The request this spec sends.
    pub fn request(&self) -> &ExecRequest {
        &self.request
    }
}

impl From<ExecRequest> for ExecSpec {
    fn from(request: ExecRequest) -> Self {
        Self { request }
    }
}

/// One event of a running exec, in the order the agent sent them.
#[derive(Debug, Clone, PartialEq)]
pub enum ExecEvent {
    /// Bytes from stdout, stderr or the PTY.
    Output {
        /// Which stream.
        stream: OutputStream,
        /// The bytes.
        data: Bytes,
    },
    /// A stream reached end of file.
    Eof(OutputStream),
    /// The process ended; no event follows.
    Exit(ExitStatus),
}

/// Everything an exec produced, from [`Execution::collect`].
#[derive(Debug, Clone, PartialEq)]
pub struct ExecOutput {
    /// Standard output (or the PTY's output).
    pub stdout: Vec<u8>,
    /// Standard error (empty for a PTY session).
    pub stderr: Vec<u8>,
    /// How it ended.
    pub status: ExitStatus,
}

/// Returns output credit to the agent as the consumer takes bytes.
struct OutputCredit {
    shared: Arc<Shared>,
    id: u64,
    /// Shared with the router, which counts arrivals against it.
    window: Arc<Mutex<RecvWindow>>,
}

impl OutputCredit {
    /// One output frame of `payload` bytes was taken by the consumer.
    async fn consumed(&self, payload: usize) {
        let grant = {
            let mut window = self.window.lock().unwrap_or_else(|p| p.into_inner());
            window.consumed(payload)
        };
        if let Some(bytes) = grant {
            // A failure here means the connection is gone; the next recv reports it.
            let _ = self
                .shared
                .send(self.id, Body::Window(WindowUpdate { bytes }), "exec")
                .await;
        }
    }
}

/// A started process.
///
/// Read its output with [`next_event`](Self::next_event), or take it apart with
/// [`split`](Self::split) into stdin, stdout, stderr and an exit future, or wait for everything
/// with [`collect`](Self::collect).
pub struct Execution {
    guard: OperationGuard,
    frames: mpsc::UnboundedReceiver<Body>,
    pid: Option<u32>,
    stdin: Option<ExecStdin>,
    control: ExecControl,
    credit: Arc<OutputCredit>,
    early_exit: Option<ExitStatus>,
    finished: bool,
}

impl Client {
    /// Starts a process. Returns once the agent started it, or with an [`Execution`] whose
    /// only event is an [`ExitStatus`] holding a spawn failure if it could not be started.
    ///
    /// ```no_run
    /// # async fn demo(client: krunbox_protocol::client::Client) -> Result<(), krunbox_protocol::client::ClientError> {
    /// use krunbox_protocol::client::ExecSpec;
    /// let mut exec = client.exec(ExecSpec::new(["cat"]).stdin(true)).await?;
    /// let mut stdin = exec.take_stdin().expect("stdin was requested");
    /// stdin.write(b"hello").await?;
    /// stdin.close().await?;
    /// let output = exec.collect().await?;
    /// assert_eq!(output.stdout, b"hello");
    /// # Ok(()) }
    /// ```
    pub async fn exec(&self, spec: impl Into<ExecSpec>) -> Result<Execution, ClientError> {
        let spec = spec.into();
        if spec.request.argv.is_empty() {
            return Err(ClientError::InvalidRequest("exec needs a program".into()));
        }
        if !spec.request.rlimits.is_empty() {
            self.require(crate::rlimit::AGENT_FEATURE, "set resource limits")?;
        }
        if !spec.request.groups.is_empty() {
            self.require(crate::messages::GROUPS_FEATURE, "set supplementary groups")?;
        }
        if spec.request.capabilities.is_some() || spec.request.no_new_privileges {
            self.require(
                crate::capability::AGENT_FEATURE,
                "set capabilities or no_new_privs",
            )?;
        }
        let wants_stdin = spec.request.stdin || spec.request.pty.is_some();
        let recv_window = Arc::new(Mutex::new(RecvWindow::new()));
        let (guard, mut frames, window) = self.open(wants_stdin, Some(recv_window.clone()));
        let id = guard.id;
        self.shared
            .send(id, Body::Exec(spec.request), "exec")
            .await?;
        let (pid, early_exit) = match frames.recv().await {
            Some(Body::ExecStarted(started)) => (Some(started.pid), None),
            Some(Body::Exit(status)) => (None, Some(status)),
            Some(other) => return Err(unexpected("exec", &other)),
            None => return Err(ClientError::ConnectionClosed { operation: "exec" }),
        };
        let stdin = match (window, pid) {
            (Some(window), Some(_)) => Some(ExecStdin {
                shared: self.shared.clone(),
                id,
                window,
                closed: false,
            }),
            _ => None,
        };
        Ok(Execution {
            control: ExecControl {
                shared: self.shared.clone(),
                id,
            },
            credit: Arc::new(OutputCredit {
                shared: self.shared.clone(),
                id,
                window: recv_window,
            }),
            guard,
            frames,
            pid,
            stdin,
            early_exit,
            finished: false,
        })
    }
}

impl Execution {
    /// The process id inside the guest; `None` when the process could not be started.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// The exec's operation id on the connection.
    pub fn id(&self) -> u64 {
        self.guard.id
    }

    /// The stdin writer, if stdin (or a PTY) was requested. Dropping it closes stdin.
    pub fn take_stdin(&mut self) -> Option<ExecStdin> {
        self.stdin.take()
    }

    /// A handle for signals and PTY resizes, usable while output is being read.
    pub fn control(&self) -> ExecControl {
        self.control.clone()
    }

    /// The next event; `Ok(None)` after the exit status was returned.
    pub async fn next_event(&mut self) -> Result<Option<ExecEvent>, ClientError> {
        if self.finished {
            return Ok(None);
        }
        if let Some(status) = self.early_exit.take() {
            self.finished = true;
            return Ok(Some(ExecEvent::Exit(status)));
        }
        let event = self.next_raw().await?;
        if let ExecEvent::Output { data, .. } = &event {
            self.credit.consumed(data.len()).await;
        }
        Ok(Some(event))
    }

    async fn next_raw(&mut self) -> Result<ExecEvent, ClientError> {
        match self.frames.recv().await {
            Some(Body::Output(chunk)) => {
                let stream = chunk.stream();
                if chunk.eof && chunk.data.is_empty() {
                    Ok(ExecEvent::Eof(stream))
                } else {
                    Ok(ExecEvent::Output {
                        stream,
                        data: chunk.data,
                    })
                }
            }
            Some(Body::Exit(status)) => {
                self.finished = true;
                Ok(ExecEvent::Exit(status))
            }
            Some(other) => Err(unexpected("exec", &other)),
            None => Err(ClientError::ConnectionClosed { operation: "exec" }),
        }
    }

    /// Closes stdin (if still open), reads all output into memory and waits for the exit.
    pub async fn collect(mut self) -> Result<ExecOutput, ClientError> {
        if let Some(stdin) = self.stdin.take() {
            stdin.close().await?;
        }
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        while let Some(event) = self.next_event().await? {
            match event {
                ExecEvent::Output {
                    stream: OutputStream::Stderr,
                    data,
                } => stderr.extend_from_slice(&data),
                ExecEvent::Output { data, .. } => stdout.extend_from_slice(&data),
                ExecEvent::Eof(_) => {}
                ExecEvent::Exit(status) => {
                    return Ok(ExecOutput {
                        stdout,
                        stderr,
                        status,
                    })
                }
            }
        }
        Err(ClientError::ConnectionClosed { operation: "exec" })
    }

    /// Takes the exec apart: stdin (if requested), stdout (PTY output arrives here too),
    /// stderr, and a future for the exit status. A background task routes the frames; output
    /// credit is returned as each reader consumes, so an unread stream throttles the process.
    pub fn split(
        mut self,
    ) -> (
        Option<ExecStdin>,
        OutputReader,
        OutputReader,
        impl std::future::Future<Output = Result<ExitStatus, ClientError>>,
    ) {
        let stdin = self.stdin.take();
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let (err_tx, err_rx) = mpsc::unbounded_channel();
        let (exit_tx, exit_rx) = oneshot::channel();
        let credit = self.credit.clone();
        tokio::spawn(async move {
            let result = loop {
                if let Some(status) = self.early_exit.take() {
                    break Ok(status);
                }
                match self.next_raw().await {
                    Ok(ExecEvent::Output { stream, data }) => {
                        let target = if stream == OutputStream::Stderr {
                            &err_tx
                        } else {
                            &out_tx
                        };
                        if let Err(mpsc::error::SendError(data)) = target.send(data) {
                            // Reader dropped: consume on its behalf so the process is not stalled.
                            self.credit.consumed(data.len()).await;
                        }
                    }
                    Ok(ExecEvent::Eof(_)) => {}
                    Ok(ExecEvent::Exit(status)) => break Ok(status),
                    Err(err) => break Err(err),
                }
            };
            drop(out_tx);
            drop(err_tx);
            let _ = exit_tx.send(result);
        });
        let exit = async move {
            exit_rx
                .await
                .unwrap_or(Err(ClientError::ConnectionClosed { operation: "exec" }))
        };
        (
            stdin,
            OutputReader {
                chunks: out_rx,
                credit: credit.clone(),
            },
            OutputReader {
                chunks: err_rx,
                credit,
            },
            exit,
        )
    }
}

/// One output stream of a split [`Execution`].
pub struct OutputReader {
    chunks: mpsc::UnboundedReceiver<Bytes>,
    credit: Arc<OutputCredit>,
}

impl OutputReader {
    /// The next chunk; `None` at end of stream.
    pub async fn recv(&mut self) -> Option<Bytes> {
        let chunk = self.chunks.recv().await?;
        self.credit.consumed(chunk.len()).await;
        Some(chunk)
    }

    /// Reads the rest of the stream into memory.
    pub async fn read_to_end(mut self) -> Vec<u8> {
        let mut all = Vec::new();
        while let Some(chunk) = self.recv().await {
            all.extend_from_slice(&chunk);
        }
        all
    }
}

impl Drop for OutputReader {
    fn drop(&mut self) {
        // Release the credit of what was never read, so the process can finish.
        let mut unread = Vec::new();
        while let Ok(chunk) = self.chunks.try_recv() {
            unread.push(chunk.len());
        }
        self.chunks.close();
        if !unread.is_empty() {
            let credit = self.credit.clone();
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    for payload in unread {
                        credit.consumed(payload).await;
                    }
                });
            }
        }
    }
}

/// Writes to a running process's stdin (or PTY). Dropping it closes stdin.
pub struct ExecStdin {
    shared: Arc<Shared>,
    id: u64,
    window: Arc<SendWindow>,
    closed: bool,
}

impl ExecStdin {
    /// Sends `data`, waiting for flow-control credit as needed.
    pub async fn write(&mut self, mut data: &[u8]) -> Result<(), ClientError> {
        while !data.is_empty() {
            let granted = self
                .window
                .acquire(data.len().min(MAX_CHUNK_LEN))
                .await
                .ok_or(ClientError::ConnectionClosed { operation: "stdin" })?;
            let (now, rest) = data.split_at(granted);
            self.shared
                .send(
                    self.id,
                    Body::StdinData(StdinData {
                        data: Bytes::copy_from_slice(now),
                    }),
                    "stdin",
                )
                .await?;
            data = rest;
        }
        Ok(())
    }

    /// Copies everything from `reader` to stdin (does not close it); returns the byte count.
    pub async fn send_from(
        &mut self,
        mut reader: impl AsyncRead + Unpin,
    ) -> Result<u64, ClientError> {
        let mut buf = vec![0u8; MAX_CHUNK_LEN];
        let mut total = 0u64;
        loop {
            let n = reader
                .read(&mut buf)
                .await
                .map_err(|source| ClientError::LocalIo {
                    operation: "stdin",
                    source,
                })?;
            if n == 0 {
                return Ok(total);
            }
            self.write(&buf[..n]).await?;
            total += n as u64;
        }
    }

    /// Closes stdin: the process reads end of file.
    pub async fn close(mut self) -> Result<(), ClientError> {
        self.closed = true;
        self.shared
            .send(self.id, Body::StdinClose(StdinClose {}), "stdin")
            .await
    }
}

impl Drop for ExecStdin {
    fn drop(&mut self) {
        if !self.closed {
            let frame = crate::messages::Envelope::new(self.id, Body::StdinClose(StdinClose {}));
            if let Err(mpsc::error::TrySendError::Full(frame)) =
                self.shared.outgoing.try_send(frame)
            {
                let outgoing = self.shared.outgoing.clone();
                if let Ok(handle) = tokio::runtime::Handle::try_current() {
                    handle.spawn(async move { outgoing.send(frame).await });
                }
            }
        }
    }
}

/// Sends signals and PTY resizes to a running exec. Cheap to clone.
#[derive(Clone)]
pub struct ExecControl {
    shared: Arc<Shared>,
    id: u64,
}

impl ExecControl {
    /// Sends `signal` (Linux numbering) to the exec's process group; returns once it is queued
    /// for the connection, without waiting for the agent. A caller that ends its runtime (or
    /// closes the connection) right after uses [`signal_delivered`](Self::signal_delivered).
    pub async fn signal(&self, signal: i32) -> Result<(), ClientError> {
        self.shared
            .send(self.id, Body::Signal(SignalRequest { signal }), "signal")
            .await
    }

    /// [`signal`](Self::signal), and returns once the agent has it: the agent handles a
    /// connection's frames in order and hands a signal to its exec before reading the next
    /// frame, so its answer to a ping sent after the signal proves the exec will act on it,
    /// even if the connection closes at once. It waits for the agent: callers bound it.
    pub async fn signal_delivered(&self, signal: i32) -> Result<(), ClientError> {
        self.signal(signal).await?;
        super::ping(&self.shared).await.map(drop)
    }

    /// Resizes the exec's PTY.
    pub async fn resize(&self, rows: u16, cols: u16) -> Result<(), ClientError> {
        let size = PtySize {
            rows: rows.into(),
            cols: cols.into(),
        };
        self.shared
            .send(
                self.id,
                Body::Resize(PtyResize { size: Some(size) }),
                "resize",
            )
            .await
    }
}
