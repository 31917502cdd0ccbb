//! Applying layer tarballs to a root directory, safely.
//!
//! Layers are applied in order into one directory (the flattened image). Per entry:
//! - the path is normalised: a leading `/` is dropped (Docker does the same), `..` anywhere
//!   is refused;
//! - parents are walked with [`confined::walk`] (openat + `O_NOFOLLOW` per component), so an
//!   entry can never be written through a symlink — a symlinked parent is refused, a symlink
//!   at the leaf is replaced, never followed;
//! - symlinks whose relative target climbs above the root are refused; absolute targets are
//!   kept (they resolve inside the guest's root, and nothing on the host follows them);
//! - hardlinks must name an existing non-directory inside the root, reached the same way;
//! - `.wh.NAME` deletes NAME from lower layers, `.wh..wh..opq` empties its directory of
//!   lower-layer content;
//! - device nodes are skipped (the guest's devtmpfs provides /dev), FIFOs are created;
//! - ownership is applied when running as root, modes always, `SCHILY.xattr.*` on Linux
//!   where the filesystem and privileges allow, mtimes always (directories at the end).
//!
//! - every image is held to [`UnpackLimits`] (bytes, entries, path depth) and every entry's
//!   headers to [`MAX_ENTRY_HEADERS`] (see [`crate::limits`]);
//! - setuid/setgid/sticky bits are kept: they are the guest's (`su`, `ping`, `/tmp`), and on
//!   the host the store is reachable by its owner only (see [`crate::store`]).
//!
//! Compression is detected from the first bytes (gzip, zstd, or plain tar), not trusted from
//! a media type.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::confined::{self};
pub use crate::decompress::{decompress, Compression};
use crate::limits::{self, HeaderBudget, UnpackLimits, MAX_ENTRY_HEADERS};

mod applier;
mod at;

use applier::LayerApplier;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";

/// Why a layer could not be applied. Every variant names the offending entry.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The tar stream itself is broken.
    #[error("reading the layer archive: {0}")]
    Archive(#[source] io::Error),
    /// `..` in an entry name or hardlink target.
    #[error("refusing tar entry {entry:?}: path contains a '..' component")]
    ParentComponent {
        /// The entry.
        entry: PathBuf,
    },
    /// The entry would be written through a symlinked directory.
    #[error("refusing tar entry {entry:?}: parent {symlink:?} is a symlink (writing through symlinked directories is not allowed)")]
    SymlinkedParent {
        /// The entry.
        entry: PathBuf,
        /// The symlink on its path.
        symlink: PathBuf,
    },
    /// A symlink whose target climbs out of the root.
    #[error(
        "refusing tar entry {entry:?}: symlink target {target:?} points outside the image root"
    )]
    SymlinkEscape {
        /// The symlink entry.
        entry: PathBuf,
        /// Its target.
        target: PathBuf,
    },
    /// A hardlink whose target is unusable.
    #[error("refusing tar entry {entry:?}: hardlink target {target:?} {reason}")]
    BadHardlink {
        /// The hardlink entry.
        entry: PathBuf,
        /// Its target.
        target: PathBuf,
        /// Why.
        reason: &'static str,
    },
    /// A parent on the entry's path is a file.
    #[error("refusing tar entry {entry:?}: {parent:?} is not a directory")]
    ParentNotADirectory {
        /// The entry.
        entry: PathBuf,
        /// The non-directory.
        parent: PathBuf,
    },
    /// The headers of one entry (GNU long name/link, PAX extensions) are larger than
    /// [`MAX_ENTRY_HEADERS`]: the tar crate would hold them in memory.
    #[error("refusing the tar entry after {}: its headers (GNU long name/link, PAX extensions) exceed the {MAX_ENTRY_HEADERS}-byte limit", after.as_deref().map_or("the start of the layer".to_owned(), |p| format!("{p:?}")))]
    HeadersTooLarge {
        /// The last entry read before it, if any.
        after: Option<PathBuf>,
    },
    /// The image has more tar entries than [`UnpackLimits::max_entries`].
    #[error("refusing tar entry {entry:?}: the image has more than {limit} entries (KRUNBOX_UNPACK_MAX_ENTRIES)")]
    TooManyEntries {
        /// The first entry over the limit.
        entry: PathBuf,
        /// The limit.
        limit: u64,
    },
    /// The image's content is larger than [`UnpackLimits::max_bytes`].
    #[error("refusing tar entry {entry:?}: the image's content exceeds {limit} bytes (KRUNBOX_UNPACK_MAX_BYTES)")]
    TooManyBytes {
        /// The entry that went over.
        entry: PathBuf,
        /// The limit.
        limit: u64,
    },
    /// An entry's path has more components than [`UnpackLimits::max_depth`].
    #[error("refusing tar entry {entry:?}: {depth} path components, more than the limit of {limit} (KRUNBOX_UNPACK_MAX_DEPTH)")]
    TooDeep {
        /// The entry's first components (the whole name may be kilobytes long).
        entry: PathBuf,
        /// Its depth.
        depth: usize,
        /// The limit.
        limit: usize,
    },
    /// An OS error while writing the entry.
    #[error("tar entry {entry:?}: {action}: {source}")]
    Io {
        /// The entry.
        entry: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The OS error.
        source: io::Error,
    },
}

/// What an unpack did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UnpackStats {
    /// Entries applied (files, dirs, links, whiteouts).
    pub entries: u64,
    /// Bytes of regular file content written.
    pub bytes: u64,
    /// Device nodes skipped.
    pub skipped_devices: u64,
    /// Tar entries read, whatever was done with them (what [`UnpackLimits::max_entries`] caps).
    pub tar_entries: u64,
    /// Bytes of entry content read, written or skipped (what [`UnpackLimits::max_bytes`] caps).
    pub content_bytes: u64,
}

impl std::ops::AddAssign for UnpackStats {
    fn add_assign(&mut self, other: Self) {
        self.entries += other.entries;
        self.bytes += other.bytes;
        self.skipped_devices += other.skipped_devices;
        self.tar_entries += other.tar_entries;
        self.content_bytes += other.content_bytes;
    }
}

/// Applies the layer blob at `blob` (any supported compression) onto `root`, within `limits`
/// counting what earlier layers of the same image used (`used`).
pub fn unpack_layer_file(
    blob: &Path,
    root: &Path,
    limits: &UnpackLimits,
    used: &UnpackStats,
) -> Result<UnpackStats, UnpackError> {
    let file = confined::open_regular(blob).map_err(UnpackError::Archive)?;
    unpack_layer_limited(file, root, limits, used)
}

/// Applies one layer (any supported compression) onto the existing directory `root`, with
/// the default [`UnpackLimits`].
pub fn unpack_layer<R: Read>(layer: R, root: &Path) -> Result<UnpackStats, UnpackError> {
    unpack_layer_limited(
        layer,
        root,
        &UnpackLimits::default(),
        &UnpackStats::default(),
    )
}

/// Applies one layer onto `root` within `limits`, counting `used` (earlier layers) against them.
pub fn unpack_layer_limited<R: Read>(
    layer: R,
    root: &Path,
    limits: &UnpackLimits,
    used: &UnpackStats,
) -> Result<UnpackStats, UnpackError> {
    let root_fd = confined::open_root(root).map_err(|source| UnpackError::Io {
        entry: PathBuf::from("/"),
        action: "opening the unpack root",
        source,
    })?;
    let reader = decompress(layer).map_err(UnpackError::Archive)?;
    let (reader, budget) = HeaderBudget::new(reader);
    let mut applier = LayerApplier::new(root_fd, *limits, *used);
    let mut archive = tar::Archive::new(reader);
    let mut entries = archive.entries().map_err(UnpackError::Archive)?;
    let mut last: Option<PathBuf> = None;
    loop {
        // Everything the tar crate reads from here to the next entry is headers, which it
        // holds in memory: the previous entry's content has been read to its end.
        budget.arm(MAX_ENTRY_HEADERS);
        let next = entries.next();
        budget.disarm();
        let Some(entry) = next else { break };
        let mut entry = entry.map_err(|e| {
            if limits::is_headers_too_large(&e) {
                UnpackError::HeadersTooLarge {
                    after: last.clone(),
                }
            } else {
                UnpackError::Archive(e)
            }
        })?;
        let raw = entry.path().map(|p| p.into_owned()).unwrap_or_default();
        applier.count_entry(&raw)?;
        applier.apply(&mut entry)?;
        applier.drain(&mut entry, &raw)?;
        last = Some(raw);
    }
    applier.finish()?;
    tracing::debug!(root = %root.display(), entries = applier.stats.entries, bytes = applier.stats.bytes, "layer applied");
    Ok(applier.stats)
}
