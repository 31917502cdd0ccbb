//! File operations in the guest.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::{unexpected, Client, ClientError};
use crate::flow::RecvWindow;
use crate::frame::{read_chunk, MAX_CHUNK_LEN};
use crate::messages::{
    Body, ChmodOp, DirListing, FileChunk, FileOp, FileRequest, FileResult, FileResultKind,
    FileStat, ListOp, MkdirOp, ReadOp, RemoveOp, RenameOp, StatOp, WindowUpdate, WriteOp,
};

/// A path in the guest, optionally confined to a root directory.
///
/// ```
/// use krunbox_protocol::client::RemotePath;
/// let p = RemotePath::from("/etc/hostname");
/// assert_eq!(p.path(), "/etc/hostname");
/// let confined = RemotePath::new("notes.txt").within("/workspace");
/// assert_eq!(confined.root(), "/workspace");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemotePath {
    root: String,
    path: String,
}

impl RemotePath {
    /// A path resolved from `/`.
    pub fn new(path: impl Into<String>) -> Self {
        Self {
            root: String::new(),
            path: path.into(),
        }
    }

    /// Confines the path to `root`: the agent refuses anything that would leave it.
    pub fn within(mut self, root: impl Into<String>) -> Self {
        self.root = root.into();
        self
    }

    /// The path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The confining root (empty means `/`).
    pub fn root(&self) -> &str {
        &self.root
    }

    fn request(&self, op: FileOp) -> FileRequest {
        FileRequest {
            root: self.root.clone(),
            path: self.path.clone(),
            op: Some(op),
        }
    }
}

impl From<&str> for RemotePath {
    fn from(path: &str) -> Self {
        Self::new(path)
    }
}

impl From<String> for RemotePath {
    fn from(path: String) -> Self {
        Self::new(path)
    }
}

impl Client {
    /// Sends a file operation that answers with one [`FileResult`].
    async fn file_call(
        &self,
        path: &RemotePath,
        op: FileOp,
    ) -> Result<FileResultKind, ClientError> {
        let request = path.request(op);
        let operation = "file operation";
        let (guard, mut rx, _) = self.open(false, None);
        self.shared
            .send(guard.id, Body::File(request), operation)
            .await?;
        match rx.recv().await {
            Some(Body::FileResult(FileResult {
                result: Some(result),
            })) => Ok(result),
            Some(other) => Err(unexpected(operation, &other)),
            None => Err(ClientError::ConnectionClosed { operation }),
        }
    }

    /// Describes a path (without following a final symlink).
    pub async fn stat(&self, path: impl Into<RemotePath>) -> Result<FileStat, ClientError> {
        match self
            .file_call(&path.into(), FileOp::Stat(StatOp {}))
            .await?
        {
            FileResultKind::Stat(stat) => Ok(stat),
            _ => Err(ClientError::UnexpectedFrame {
                operation: "stat",
                got: "file-result",
            }),
        }
    }

    /// Lists a directory, sorted by name.
    pub async fn list(&self, path: impl Into<RemotePath>) -> Result<Vec<FileStat>, ClientError> {
        match self
            .file_call(&path.into(), FileOp::List(ListOp {}))
            .await?
        {
            FileResultKind::Listing(DirListing { entries }) => Ok(entries),
            _ => Err(ClientError::UnexpectedFrame {
                operation: "list",
                got: "file-result",
            }),
        }
    }

    /// `mkdir -p` with `mode` for created directories.
    pub async fn mkdir(&self, path: impl Into<RemotePath>, mode: u32) -> Result<(), ClientError> {
        self.file_call(&path.into(), FileOp::Mkdir(MkdirOp { mode }))
            .await
            .map(drop)
    }

    /// Removes a file, symlink or (with `recursive`, non-empty) directory.
    pub async fn remove(
        &self,
        path: impl Into<RemotePath>,
        recursive: bool,
    ) -> Result<(), ClientError> {
        self.file_call(&path.into(), FileOp::Remove(RemoveOp { recursive }))
            .await
            .map(drop)
    }

    /// Renames `from` to `to`, both inside `from`'s root.
    pub async fn rename(
        &self,
        from: impl Into<RemotePath>,
        to: impl Into<String>,
    ) -> Result<(), ClientError> {
        self.file_call(&from.into(), FileOp::Rename(RenameOp { to: to.into() }))
            .await
            .map(drop)
    }

    /// Changes permission bits.
    pub async fn chmod(&self, path: impl Into<RemotePath>, mode: u32) -> Result<(), ClientError> {
        self.file_call(&path.into(), FileOp::Chmod(ChmodOp { mode }))
            .await
            .map(drop)
    }

    /// Writes everything from `source` to a file in the guest, atomically: the file appears
    /// only when the whole stream arrived. Returns the byte count the agent wrote.
    ///
    /// ```no_run
    /// # async fn demo(client: krunbox_protocol::client::Client) -> Result<(), krunbox_protocol::client::ClientError> {
    /// let written = client.put(&b"hello"[..], "/tmp/greeting", 0o644).await?;
    /// assert_eq!(written, 5);
    /// # Ok(()) }
    /// ```
    pub async fn put(
        &self,
        mut source: impl AsyncRead + Unpin,
        path: impl Into<RemotePath>,
        mode: u32,
    ) -> Result<u64, ClientError> {
        let operation = "put";
        let request = path.into().request(FileOp::Write(WriteOp {
            mode,
            create_parents: true,
        }));
        let (guard, mut rx, window) = self.open(true, None);
        let window = window.ok_or(ClientError::ConnectionClosed { operation })?;
        self.shared
            .send(guard.id, Body::File(request), operation)
            .await?;
        loop {
            // An early answer means the agent refused the write (bad path, no permission).
            if let Ok(body) = rx.try_recv() {
                return Err(unexpected(operation, &body));
            }
            let want = window
                .acquire(MAX_CHUNK_LEN)
                .await
                .ok_or(ClientError::ConnectionClosed { operation })?;
            let data = read_chunk(&mut source, want)
                .await
                .map_err(|source| ClientError::LocalIo { operation, source })?;
            let n = data.len();
            let chunk = FileChunk { data, eof: n == 0 };
            self.shared
                .send(guard.id, Body::FileChunk(chunk), operation)
                .await?;
            if n == 0 {
                break;
            }
            // Credit not used by a short read goes back to the window.
            if n < want {
                window.grant((want - n) as u32);
            }
        }
        match rx.recv().await {
            Some(Body::FileResult(FileResult {
                result: Some(FileResultKind::Done(done)),
            })) => Ok(done.bytes),
            Some(other) => Err(unexpected(operation, &other)),
            None => Err(ClientError::ConnectionClosed { operation }),
        }
    }

    /// Streams a file from the guest into `sink`; returns its stat (taken when the read began)
    /// and the byte count.
    ///
    /// ```no_run
    /// # async fn demo(client: krunbox_protocol::client::Client) -> Result<(), krunbox_protocol::client::ClientError> {
    /// let mut content = Vec::new();
    /// let (_stat, bytes) = client.get("/etc/hostname", &mut content).await?;
    /// assert_eq!(bytes as usize, content.len());
    /// # Ok(()) }
    /// ```
    pub async fn get(
        &self,
        path: impl Into<RemotePath>,
        mut sink: impl AsyncWrite + Unpin,
    ) -> Result<(FileStat, u64), ClientError> {
        let operation = "get";
        let request = path.into().request(FileOp::Read(ReadOp {}));
        let window = Arc::new(Mutex::new(RecvWindow::new()));
        let (guard, mut rx, _) = self.open(false, Some(window.clone()));
        self.shared
            .send(guard.id, Body::File(request), operation)
            .await?;
        let stat = match rx.recv().await {
            Some(Body::FileResult(FileResult {
                result: Some(FileResultKind::Stat(stat)),
            })) => stat,
            Some(other) => return Err(unexpected(operation, &other)),
            None => return Err(ClientError::ConnectionClosed { operation }),
        };
        let mut total = 0u64;
        loop {
            match rx.recv().await {
                Some(Body::FileChunk(chunk)) => {
                    let len = chunk.data.len();
                    sink.write_all(&chunk.data)
                        .await
                        .map_err(|source| ClientError::LocalIo { operation, source })?;
                    total += len as u64;
                    crate::frame::recycle(chunk.data);
                    if chunk.eof {
                        break;
                    }
                    let grant = window
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .consumed(len);
                    if let Some(bytes) = grant {
                        self.shared
                            .send(guard.id, Body::Window(WindowUpdate { bytes }), operation)
                            .await?;
                    }
                }
                Some(other) => return Err(unexpected(operation, &other)),
                None => return Err(ClientError::ConnectionClosed { operation }),
            }
        }
        sink.flush()
            .await
            .map_err(|source| ClientError::LocalIo { operation, source })?;
        Ok((stat, total))
    }
}
