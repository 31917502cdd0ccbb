//! File operations confined to a root directory.
//!
//! Every request names a `root`; it is opened as a cap-std `Dir` and every path is resolved
//! beneath it by cap-std (openat-based, refusing `..`, absolute paths and symlinks that lead
//! outside), not by string checks that a symlink could defeat. Writes go to a temporary file
//! beside the target that is renamed into place only when the whole stream arrived.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cap_std::ambient_authority;
use cap_std::fs::{
    Dir, DirBuilder, DirBuilderExt, Metadata, MetadataExt, OpenOptions, OpenOptionsExt,
    Permissions, PermissionsExt,
};
use krunbox_protocol::flow::{RecvWindow, SendWindow, INITIAL_WINDOW};
use krunbox_protocol::frame::{read_chunk, MAX_CHUNK_LEN};
use krunbox_protocol::messages::{
    Body, DirListing, ErrorKind, ErrorReply, FileChunk, FileDone, FileOp, FileRequest, FileResult,
    FileResultKind, FileStat, FileType, WindowUpdate, WriteOp,
};
use tokio::sync::mpsc;

use crate::outgoing::Reply;

/// Serves one file operation; its last frame is a FileResult or an Error.
pub async fn run(reply: Reply, request: FileRequest, inbox: mpsc::UnboundedReceiver<Body>) {
    let op_name = request.op_name();
    let shown = display_path(&request);
    match serve(&reply, request, inbox).await {
        Ok(Some(result)) => {
            reply
                .send(Body::FileResult(FileResult {
                    result: Some(result),
                }))
                .await;
        }
        Ok(None) => {}
        Err(err) => {
            tracing::debug!(op = op_name, path = %shown, %err, "file operation failed");
            reply
                .send(Body::Error(error_reply(
                    &err,
                    &format!("{op_name} {shown}"),
                )))
                .await;
        }
    }
}

fn display_path(request: &FileRequest) -> String {
    if request.root.is_empty() || request.root == "/" {
        request.path.clone()
    } else {
        format!("{} (within {})", request.path, request.root)
    }
}

/// cap-std's error for a path that would leave the root.
fn is_escape(err: &io::Error) -> bool {
    err.to_string().contains("outside of the filesystem")
}

fn error_reply(err: &io::Error, context: &str) -> ErrorReply {
    if is_escape(err) {
        return ErrorReply {
            kind: ErrorKind::OutsideRoot as i32,
            errno: libc::EXDEV,
            message: format!("{context}: path leads outside its root"),
        };
    }
    ErrorReply::from_io(err, context)
}

fn bad_request(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message.to_owned())
}

/// The path relative to the root ("." for the root itself).
fn relative(path: &str) -> PathBuf {
    let trimmed = path.trim_start_matches('/');
    if trimmed.is_empty() {
        PathBuf::from(".")
    } else {
        PathBuf::from(trimmed)
    }
}

async fn serve(
    reply: &Reply,
    request: FileRequest,
    inbox: mpsc::UnboundedReceiver<Body>,
) -> io::Result<Option<FileResultKind>> {
    let root = if request.root.is_empty() {
        "/".to_owned()
    } else {
        request.root.clone()
    };
    let op = request
        .op
        .ok_or_else(|| bad_request("file request without an operation"))?;
    let path = relative(&request.path);
    let dir = {
        let root = root.clone();
        tokio::task::spawn_blocking(move || Dir::open_ambient_dir(&root, ambient_authority()))
            .await
            .map_err(io::Error::other)??
    };
    match op {
        FileOp::Write(write) => write_file(reply, dir, path, write, inbox).await.map(Some),
        FileOp::Read(_) => read_file(reply, dir, path, inbox).await.map(|()| None),
        other => tokio::task::spawn_blocking(move || simple_op(&dir, &path, other))
            .await
            .map_err(io::Error::other)?
            .map(Some),
    }
}

fn file_type(meta: &Metadata) -> FileType {
    let ft = meta.file_type();
    if ft.is_symlink() {
        FileType::Symlink
    } else if ft.is_dir() {
        FileType::Dir
    } else if ft.is_file() {
        FileType::File
    } else {
        FileType::Other
    }
}

fn stat_of(dir: &Dir, path: &Path, meta: &Metadata) -> FileStat {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "/".into());
    let symlink_target = if meta.file_type().is_symlink() {
        dir.read_link_contents(path)
            .map(|t| t.to_string_lossy().into_owned())
            .unwrap_or_default()
    } else {
        String::new()
    };
    FileStat {
        name,
        file_type: file_type(meta) as i32,
        size: meta.len(),
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        mtime_secs: meta.mtime(),
        symlink_target,
    }
}

fn simple_op(dir: &Dir, path: &Path, op: FileOp) -> io::Result<FileResultKind> {
    let done = || FileResultKind::Done(FileDone { bytes: 0 });
    match op {
        FileOp::Stat(_) => {
            let meta = dir.symlink_metadata(path)?;
            Ok(FileResultKind::Stat(stat_of(dir, path, &meta)))
        }
        FileOp::List(_) => {
            let mut entries = Vec::new();
            for entry in dir.read_dir(path)? {
                let entry = entry?;
                let child = path.join(entry.file_name());
                let meta = dir.symlink_metadata(&child)?;
                entries.push(stat_of(dir, &child, &meta));
            }
            entries.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(FileResultKind::Listing(DirListing { entries }))
        }
        FileOp::Mkdir(mkdir) => {
            let mode = if mkdir.mode == 0 {
                0o755
            } else {
                mkdir.mode & 0o7777
            };
            let mut builder = DirBuilder::new();
            builder.recursive(true).mode(mode);
            dir.create_dir_with(path, &builder)?;
            Ok(done())
        }
        FileOp::Remove(remove) => {
            let meta = dir.symlink_metadata(path)?;
            if meta.is_dir() {
                if remove.recursive {
                    dir.remove_dir_all(path)?;
                } else {
                    dir.remove_dir(path)?;
                }
            } else {
                dir.remove_file(path)?;
            }
            Ok(done())
        }
        FileOp::Rename(rename) => {
            dir.rename(path, dir, relative(&rename.to))?;
            Ok(done())
        }
        FileOp::Chmod(chmod) => {
            dir.set_permissions(path, Permissions::from_mode(chmod.mode & 0o7777))?;
            Ok(done())
        }
        FileOp::Write(_) | FileOp::Read(_) => {
            Err(bad_request("streamed operation in the wrong path"))
        }
    }
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Removes the temporary file unless the write completed.
struct TempFile {
    dir: Arc<Dir>,
    path: PathBuf,
    keep: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = self.dir.remove_file(&self.path);
        }
    }
}

async fn write_file(
    reply: &Reply,
    dir: Dir,
    path: PathBuf,
    op: WriteOp,
    mut inbox: mpsc::UnboundedReceiver<Body>,
) -> io::Result<FileResultKind> {
    let name = path
        .file_name()
        .ok_or_else(|| bad_request("write needs a file name"))?
        .to_owned();
    let parent = path
        .parent()
        .map(Path::to_path_buf)
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."));
    let mode = if op.mode == 0 {
        0o644
    } else {
        op.mode & 0o7777
    };
    let dir = Arc::new(dir);
    let temp_name = format!(
        ".{}.krunbox-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let temp_path = parent.join(temp_name);
    let std_file = {
        let (dir, parent, temp_path) = (dir.clone(), parent.clone(), temp_path.clone());
        tokio::task::spawn_blocking(move || -> io::Result<std::fs::File> {
            // An existing parent is left alone, so that a symlink there is resolved (and refused
            // when it leads outside) by the open below rather than reported as "exists".
            if op.create_parents && dir.symlink_metadata(&parent).is_err() {
                dir.create_dir_all(&parent)?;
            }
            let mut options = OpenOptions::new();
            options.write(true).create_new(true).mode(mode);
            Ok(dir.open_with(&temp_path, &options)?.into_std())
        })
        .await
        .map_err(io::Error::other)??
    };
    let mut temp = TempFile {
        dir: dir.clone(),
        path: temp_path.clone(),
        keep: false,
    };
    // Each chunk is written from its own buffer on a blocking thread (tokio's `File` would
    // copy it into a buffer of its own first), one write in flight while the next arrives.
    let file = Arc::new(std_file);
    let mut writing: Option<tokio::task::JoinHandle<io::Result<()>>> = None;
    let mut window = RecvWindow::new();
    let mut total = 0u64;
    loop {
        match inbox.recv().await {
            Some(Body::FileChunk(chunk)) => {
                let len = chunk.data.len();
                window
                    .received(len)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                finish_write(writing.take()).await?;
                let (file, data) = (file.clone(), chunk.data);
                writing = Some(tokio::task::spawn_blocking(move || {
                    std::io::Write::write_all(&mut &*file, &data)?;
                    krunbox_protocol::frame::recycle(data);
                    Ok(())
                }));
                total += len as u64;
                if chunk.eof {
                    break;
                }
                if let Some(bytes) = window.consumed(len) {
                    reply.send(Body::Window(WindowUpdate { bytes })).await;
                }
            }
            Some(other) => {
                return Err(bad_request(&format!(
                    "unexpected {} frame during a write",
                    other.kind()
                )))
            }
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "host went away during the write",
                ))
            }
        }
    }
    finish_write(writing.take()).await?;
    drop(file);
    let target = path.clone();
    let renamed = tokio::task::spawn_blocking(move || {
        // chmod explicitly: the umask applied at creation.
        dir.set_permissions(&temp_path, Permissions::from_mode(mode))?;
        dir.rename(&temp_path, &dir, &target)
    })
    .await
    .map_err(io::Error::other)?;
    renamed?;
    temp.keep = true;
    Ok(FileResultKind::Done(FileDone { bytes: total }))
}

/// Waits for a chunk's write, if one is under way.
async fn finish_write(writing: Option<tokio::task::JoinHandle<io::Result<()>>>) -> io::Result<()> {
    match writing {
        Some(write) => write.await.map_err(io::Error::other)?,
        None => Ok(()),
    }
}

async fn read_file(
    reply: &Reply,
    dir: Dir,
    path: PathBuf,
    mut inbox: mpsc::UnboundedReceiver<Body>,
) -> io::Result<()> {
    let (std_file, stat) = tokio::task::spawn_blocking(move || -> io::Result<_> {
        // O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused below anyway.
        let mut options = OpenOptions::new();
        options.read(true).custom_flags(libc::O_NONBLOCK);
        let file = dir.open_with(&path, &options)?;
        let meta = file.metadata()?;
        if meta.is_dir() {
            return Err(io::Error::from_raw_os_error(libc::EISDIR));
        }
        // A device or FIFO has no end (or blocks): only regular files are streamed.
        if !meta.is_file() {
            return Err(bad_request("not a regular file"));
        }
        let stat = stat_of(&dir, &path, &meta);
        Ok((file.into_std(), stat))
    })
    .await
    .map_err(io::Error::other)??;
    if !reply
        .send(Body::FileResult(FileResult {
            result: Some(FileResultKind::Stat(stat)),
        }))
        .await
    {
        return Ok(());
    }
    let window = Arc::new(SendWindow::new(INITIAL_WINDOW));
    let credit = window.clone();
    let grants = tokio::spawn(async move {
        while let Some(body) = inbox.recv().await {
            if let Body::Window(update) = body {
                credit.grant(update.bytes);
            }
        }
        credit.close();
    });
    let mut file = tokio::fs::File::from_std(std_file);
    let result = loop {
        let Some(allowed) = window.acquire(MAX_CHUNK_LEN).await else {
            break Ok(());
        };
        let data = match read_chunk(&mut file, allowed).await {
            Ok(data) => data,
            Err(err) => break Err(err),
        };
        let n = data.len();
        if n < allowed {
            window.grant((allowed - n) as u32);
        }
        let chunk = FileChunk { data, eof: n == 0 };
        if !reply.send(Body::FileChunk(chunk)).await || n == 0 {
            break Ok(());
        }
    };
    grants.abort();
    result
}
