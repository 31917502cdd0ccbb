/// A file operation. The envelope id names it in every later frame.
///
/// Every path is resolved inside `root`: the agent refuses (with
/// [`ErrorKind::OutsideRoot`](super::ErrorKind::OutsideRoot)) any path that would leave it,
/// through `..`, an absolute symlink or a symlink pointing outside. An empty `root` means `/`.
/// `path` may be absolute (taken relative to `root`) or relative to `root`.
///
/// ```
/// use krunbox_protocol::messages::{FileOp, FileRequest, StatOp};
/// let req = FileRequest { root: "/workspace".into(), path: "src/main.rs".into(), op: Some(FileOp::Stat(StatOp {})) };
/// assert_eq!(req.op_name(), "stat");
/// ```
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct FileRequest {
    /// The directory the request is confined to.
    #[prost(string, tag = "1")]
    pub root: String,
    /// The path the operation acts on.
    #[prost(string, tag = "2")]
    pub path: String,
    /// The operation.
    #[prost(oneof = "FileOp", tags = "3, 4, 5, 6, 7, 8, 9, 10")]
    pub op: Option<FileOp>,
}

impl FileRequest {
    /// Short name of the operation for logs and errors.
    pub fn op_name(&self) -> &'static str {
        match &self.op {
            Some(FileOp::Write(_)) => "write",
            Some(FileOp::Read(_)) => "read",
            Some(FileOp::Stat(_)) => "stat",
            Some(FileOp::List(_)) => "list",
            Some(FileOp::Mkdir(_)) => "mkdir",
            Some(FileOp::Remove(_)) => "remove",
            Some(FileOp::Rename(_)) => "rename",
            Some(FileOp::Chmod(_)) => "chmod",
            None => "unknown",
        }
    }
}

/// The file operations.
#[derive(Clone, PartialEq, ::prost::Oneof)]
pub enum FileOp {
    /// Write a file from the [`FileChunk`]s that follow.
    #[prost(message, tag = "3")]
    Write(WriteOp),
    /// Stream a file back as [`FileChunk`]s.
    #[prost(message, tag = "4")]
    Read(ReadOp),
    /// Describe the path.
    #[prost(message, tag = "5")]
    Stat(StatOp),
    /// List a directory.
    #[prost(message, tag = "6")]
    List(ListOp),
    /// Create a directory and its missing parents (`mkdir -p`).
    #[prost(message, tag = "7")]
    Mkdir(MkdirOp),
    /// Remove a file, a symlink or a directory.
    #[prost(message, tag = "8")]
    Remove(RemoveOp),
    /// Rename within the same root.
    #[prost(message, tag = "9")]
    Rename(RenameOp),
    /// Change permission bits.
    #[prost(message, tag = "10")]
    Chmod(ChmodOp),
}

/// Write a file. The host sends [`FileChunk`]s within its window and a final chunk with `eof`;
/// the agent writes to a temporary file beside the target and renames it into place only when
/// the whole stream arrived, so an interrupted transfer never leaves a truncated file.
///
/// ```
/// let w = krunbox_protocol::messages::WriteOp { mode: 0o644, create_parents: true };
/// assert_eq!(w.mode, 0o644);
/// ```
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct WriteOp {
    /// Permission bits of the new file (0 means 0o644).
    #[prost(uint32, tag = "1")]
    pub mode: u32,
    /// Create missing parent directories.
    #[prost(bool, tag = "2")]
    pub create_parents: bool,
}

/// Read a file: the agent answers with a [`FileResult`] holding its [`FileStat`], then chunks.
///
/// ```
/// let _r = krunbox_protocol::messages::ReadOp {};
/// ```
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct ReadOp {}

/// Describe a path without following a final symlink.
///
/// ```
/// let _s = krunbox_protocol::messages::StatOp {};
/// ```
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct StatOp {}

/// List a directory.
///
/// ```
/// let _l = krunbox_protocol::messages::ListOp {};
/// ```
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct ListOp {}

/// `mkdir -p`.
///
/// ```
/// let m = krunbox_protocol::messages::MkdirOp { mode: 0o755 };
/// assert_eq!(m.mode, 0o755);
/// ```
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct MkdirOp {
    /// Permission bits of created directories (0 means 0o755).
    #[prost(uint32, tag = "1")]
    pub mode: u32,
}

/// Remove a path.
///
/// ```
/// let r = krunbox_protocol::messages::RemoveOp { recursive: true };
/// assert!(r.recursive);
/// ```
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct RemoveOp {
    /// Remove a non-empty directory and everything in it.
    #[prost(bool, tag = "1")]
    pub recursive: bool,
}

/// Rename `path` to `to` (both inside the root).
///
/// ```
/// let r = krunbox_protocol::messages::RenameOp { to: "b.txt".into() };
/// assert_eq!(r.to, "b.txt");
/// ```
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct RenameOp {
    /// The new path.
    #[prost(string, tag = "1")]
    pub to: String,
}

/// Change permission bits.
///
/// ```
/// let c = krunbox_protocol::messages::ChmodOp { mode: 0o600 };
/// assert_eq!(c.mode, 0o600);
/// ```
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct ChmodOp {
    /// New permission bits (only the low 12 bits are used).
    #[prost(uint32, tag = "1")]
    pub mode: u32,
}

/// Content of a file stream. The last chunk has `eof` set (and may be empty).
///
/// ```
/// let c = krunbox_protocol::messages::FileChunk { data: b"abc".to_vec().into(), eof: true };
/// assert!(c.eof);
/// ```
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct FileChunk {
    /// Payload; counts against the receiver's window for the operation.
    #[prost(bytes = "bytes", tag = "1")]
    pub data: ::bytes::Bytes,
    /// The stream is complete.
    #[prost(bool, tag = "2")]
    pub eof: bool,
}

/// The kind of a directory entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, ::prost::Enumeration)]
#[repr(i32)]
pub enum FileType {
    /// Something else (socket, device, fifo).
    Other = 0,
    /// Regular file.
    File = 1,
    /// Directory.
    Dir = 2,
    /// Symbolic link.
    Symlink = 3,
}

/// What `stat` tells of a path.
///
/// ```
/// use krunbox_protocol::messages::{FileStat, FileType};
/// let s = FileStat { name: "a".into(), file_type: FileType::File as i32, size: 3, mode: 0o644, ..Default::default() };
/// assert_eq!(s.file_type(), FileType::File);
/// ```
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct FileStat {
    /// The last path component.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Kind of entry.
    #[prost(enumeration = "FileType", tag = "2")]
    pub file_type: i32,
    /// Size in bytes.
    #[prost(uint64, tag = "3")]
    pub size: u64,
    /// Permission bits (low 12 bits of `st_mode`).
    #[prost(uint32, tag = "4")]
    pub mode: u32,
    /// Owner.
    #[prost(uint32, tag = "5")]
    pub uid: u32,
    /// Group.
    #[prost(uint32, tag = "6")]
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    #[prost(int64, tag = "7")]
    pub mtime_secs: i64,
    /// Target of a symlink.
    #[prost(string, tag = "8")]
    pub symlink_target: String,
}

/// A directory listing.
///
/// ```
/// let l = krunbox_protocol::messages::DirListing { entries: vec![] };
/// assert!(l.entries.is_empty());
/// ```
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct DirListing {
    /// Entries, without `.` and `..`, sorted by name.
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<FileStat>,
}

/// Result of a file operation.
///
/// For `Read` it comes first (with the stat) and the chunks follow; for every other operation
/// it is the last frame.
///
/// ```
/// use krunbox_protocol::messages::{FileResult, FileResultKind};
/// let r = FileResult { result: Some(FileResultKind::Done(Default::default())) };
/// assert!(matches!(r.result, Some(FileResultKind::Done(_))));
/// ```
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct FileResult {
    /// What came out.
    #[prost(oneof = "FileResultKind", tags = "1, 2, 3")]
    pub result: Option<FileResultKind>,
}

/// The possible results of a file operation.
#[derive(Clone, PartialEq, ::prost::Oneof)]
pub enum FileResultKind {
    /// The operation completed.
    #[prost(message, tag = "1")]
    Done(FileDone),
    /// A stat (answer to `Stat`, or the header of a `Read`).
    #[prost(message, tag = "2")]
    Stat(FileStat),
    /// A listing (answer to `List`).
    #[prost(message, tag = "3")]
    Listing(DirListing),
}

/// The operation completed.
///
/// ```
/// let d = krunbox_protocol::messages::FileDone { bytes: 10 };
/// assert_eq!(d.bytes, 10);
/// ```
#[derive(Clone, PartialEq, ::prost::Message)]
pub struct FileDone {
    /// Bytes written, for a write.
    #[prost(uint64, tag = "1")]
    pub bytes: u64,
}
