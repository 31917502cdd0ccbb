//! Applying one tar entry after another onto the root: paths walked without following
//! symlinks, whiteouts, links checked, metadata applied, directories' last (see the module
//! docs of [`super`]).

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag};
use nix::sys::time::TimeSpec;
use tar::EntryType;

use crate::confined::{self, Components, PathProblem, WalkError};
use crate::limits::UnpackLimits;

use super::at::{mkdir, mkfifo_at, same_file, set_mtime_at, set_xattrs, xattrs_of};
use super::{UnpackError, UnpackStats, OPAQUE_WHITEOUT, WHITEOUT_PREFIX};

/// Metadata applied to a directory after the whole layer, since writing its children
/// changes its mtime (and a read-only mode would block them).
struct DeferredDir {
    path: Components,
    mode: u32,
    mtime: i64,
}

pub(super) struct LayerApplier {
    root: OwnedFd,
    is_root_user: bool,
    limits: UnpackLimits,
    /// What earlier layers of the image used of `limits`.
    used: UnpackStats,
    /// Paths this layer created, which an opaque whiteout must keep.
    written: HashSet<PathBuf>,
    dirs: Vec<DeferredDir>,
    pub(super) stats: UnpackStats,
}

impl LayerApplier {
    pub(super) fn new(root: OwnedFd, limits: UnpackLimits, used: UnpackStats) -> Self {
        Self {
            root,
            is_root_user: nix::unistd::geteuid().is_root(),
            limits,
            used,
            written: HashSet::new(),
            dirs: Vec::new(),
            stats: UnpackStats::default(),
        }
    }

    /// Counts one more tar entry against the image's limit.
    pub(super) fn count_entry(&mut self, raw: &Path) -> Result<(), UnpackError> {
        self.stats.tar_entries += 1;
        if self.used.tar_entries + self.stats.tar_entries > self.limits.max_entries {
            return Err(UnpackError::TooManyEntries {
                entry: raw.to_owned(),
                limit: self.limits.max_entries,
            });
        }
        Ok(())
    }

    /// Content bytes the image may still read.
    fn bytes_left(&self) -> u64 {
        self.limits
            .max_bytes
            .saturating_sub(self.used.content_bytes + self.stats.content_bytes)
    }

    /// Copies at most what is left of the byte limit from `entry` to `out`.
    fn copy_content<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        out: &mut dyn io::Write,
        raw: &Path,
    ) -> Result<u64, UnpackError> {
        let left = self.bytes_left();
        let copied = io::copy(&mut entry.take(left.saturating_add(1)), out).map_err(|source| {
            UnpackError::Io {
                entry: raw.to_owned(),
                action: "writing file content",
                source,
            }
        })?;
        self.stats.content_bytes += copied;
        if copied > left {
            return Err(self.too_many_bytes(raw));
        }
        Ok(copied)
    }

    fn too_many_bytes(&self, raw: &Path) -> UnpackError {
        UnpackError::TooManyBytes {
            entry: raw.to_owned(),
            limit: self.limits.max_bytes,
        }
    }

    /// Reads what is left of an entry's content (skipped entries, links with data), so the
    /// tar crate's next read is headers only.
    pub(super) fn drain<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        raw: &Path,
    ) -> Result<(), UnpackError> {
        self.copy_content(entry, &mut io::sink(), raw).map(|_| ())
    }

    pub(super) fn apply<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
    ) -> Result<(), UnpackError> {
        let raw = entry.path().map_err(UnpackError::Archive)?.into_owned();
        let components = normalize(&raw, &raw)?;
        if components.len() > self.limits.max_depth {
            return Err(UnpackError::TooDeep {
                entry: confined::display(&components[..8.min(components.len())]).join("..."),
                depth: components.len(),
                limit: self.limits.max_depth,
            });
        }
        let entry_type = entry.header().entry_type();
        let Some((leaf, parent)) = components.split_last() else {
            // The root itself ("./"): its metadata belongs to the sandbox, not the image.
            return Ok(());
        };
        let leaf_bytes = leaf.as_bytes();
        if leaf_bytes == OPAQUE_WHITEOUT.as_bytes() {
            return self.opaque_whiteout(&raw, parent);
        }
        if let Some(hidden) = leaf_bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            return self.whiteout(&raw, parent, OsStr::from_bytes(hidden));
        }
        let io_err = |action| {
            let raw = raw.clone();
            move |source: io::Error| UnpackError::Io {
                entry: raw,
                action,
                source,
            }
        };
        if matches!(entry_type, EntryType::Char | EntryType::Block) {
            tracing::debug!(entry = %raw.display(), "skipping device node (the guest's devtmpfs provides /dev)");
            self.stats.skipped_devices += 1;
            return Ok(());
        }
        if !matches!(
            entry_type,
            EntryType::Regular
                | EntryType::Continuous
                | EntryType::GNUSparse
                | EntryType::Directory
                | EntryType::Symlink
                | EntryType::Link
                | EntryType::Fifo
        ) {
            tracing::debug!(entry = %raw.display(), ?entry_type, "skipping tar entry of unsupported type");
            return Ok(());
        }
        let parent_fd = self.walk(&raw, parent, true)?;
        let header = entry.header();
        let mode = header.mode().map_err(UnpackError::Archive)? & 0o7777;
        // Blank numeric fields occur in hand-made archives; GNU tar reads them as 0.
        let mtime = header.mtime().unwrap_or(0).min(i64::MAX as u64) as i64;
        let uid = header.uid().unwrap_or(0);
        let gid = header.gid().unwrap_or(0);
        let xattrs = xattrs_of(entry)?;

        match entry_type {
            EntryType::Directory => {
                match confined::file_type_at(&parent_fd, leaf).map_err(io_err("inspecting"))? {
                    Some(SFlag::S_IFDIR) => {}
                    Some(_) => {
                        confined::remove_at(&parent_fd, leaf).map_err(io_err("replacing"))?;
                        mkdir(&parent_fd, leaf).map_err(io_err("creating directory"))?;
                    }
                    None => mkdir(&parent_fd, leaf).map_err(io_err("creating directory"))?,
                }
                let dir = confined::open_dir(&parent_fd, leaf)
                    .map_err(|e| io_err("opening directory")(e.into()))?;
                self.chown(&parent_fd, leaf, uid, gid)
                    .map_err(io_err("changing owner"))?;
                set_xattrs(&dir, &xattrs, &raw);
                self.dirs.push(DeferredDir {
                    path: components.clone(),
                    mode,
                    mtime,
                });
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                // Refused before anything is written when the header already says so.
                if entry.size() > self.bytes_left() {
                    return Err(self.too_many_bytes(&raw));
                }
                confined::remove_at(&parent_fd, leaf).map_err(io_err("replacing"))?;
                let fd = nix::fcntl::openat(
                    &parent_fd,
                    leaf.as_os_str(),
                    OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_WRONLY
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(|e| io_err("creating file")(e.into()))?;
                let mut file = File::from(fd);
                self.stats.bytes += self.copy_content(entry, &mut file, &raw)?;
                self.chown(&parent_fd, leaf, uid, gid)
                    .map_err(io_err("changing owner"))?;
                nix::sys::stat::fchmod(&file, Mode::from_bits_truncate(mode as _))
                    .map_err(|e| io_err("changing mode")(e.into()))?;
                let fd = OwnedFd::from(file);
                set_xattrs(&fd, &xattrs, &raw);
                nix::sys::stat::futimens(&fd, &TimeSpec::new(mtime, 0), &TimeSpec::new(mtime, 0))
                    .map_err(|e| io_err("setting mtime")(e.into()))?;
            }
            EntryType::Symlink => {
                let target = link_target(entry, &raw)?;
                check_symlink_target(&raw, parent, &target)?;
                confined::remove_at(&parent_fd, leaf).map_err(io_err("replacing"))?;
                nix::unistd::symlinkat(target.as_os_str(), &parent_fd, leaf.as_os_str())
                    .map_err(|e| io_err("creating symlink")(e.into()))?;
                self.chown(&parent_fd, leaf, uid, gid)
                    .map_err(io_err("changing owner"))?;
                set_mtime_at(&parent_fd, leaf, mtime).map_err(io_err("setting mtime"))?;
            }
            EntryType::Link => {
                let target = link_target(entry, &raw)?;
                self.hardlink(&raw, &parent_fd, leaf, &target)?;
            }
            EntryType::Fifo => {
                confined::remove_at(&parent_fd, leaf).map_err(io_err("replacing"))?;
                mkfifo_at(&parent_fd, leaf, mode).map_err(io_err("creating fifo"))?;
                self.chown(&parent_fd, leaf, uid, gid)
                    .map_err(io_err("changing owner"))?;
            }
            _ => unreachable!("filtered above"),
        }
        self.written.insert(confined::display(&components));
        self.stats.entries += 1;
        Ok(())
    }

    fn walk(
        &self,
        entry: &Path,
        components: &[OsString],
        create: bool,
    ) -> Result<OwnedFd, UnpackError> {
        confined::walk(
            &self.root,
            components,
            create,
            Mode::from_bits_truncate(0o755),
        )
        .map_err(|e| match e {
            WalkError::Symlink(symlink) => UnpackError::SymlinkedParent {
                entry: entry.to_owned(),
                symlink,
            },
            WalkError::NotADirectory(parent) => UnpackError::ParentNotADirectory {
                entry: entry.to_owned(),
                parent,
            },
            WalkError::Missing(parent) => UnpackError::Io {
                entry: entry.to_owned(),
                action: "walking to the parent directory",
                source: io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{} does not exist", parent.display()),
                ),
            },
            WalkError::Io(parent, source) => UnpackError::Io {
                entry: entry.to_owned(),
                action: "walking to the parent directory",
                source: io::Error::new(source.kind(), format!("{}: {source}", parent.display())),
            },
        })
    }

    fn whiteout(
        &mut self,
        entry: &Path,
        parent: &[OsString],
        hidden: &OsStr,
    ) -> Result<(), UnpackError> {
        if hidden.is_empty() || hidden == "." || hidden == ".." {
            return Err(UnpackError::ParentComponent {
                entry: entry.to_owned(),
            });
        }
        let parent_fd = match self.walk(entry, parent, false) {
            Ok(fd) => fd,
            // Nothing to hide below a directory that does not exist.
            Err(UnpackError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Ok(())
            }
            Err(e) => return Err(e),
        };
        confined::remove_at(&parent_fd, hidden).map_err(|source| UnpackError::Io {
            entry: entry.to_owned(),
            action: "applying whiteout",
            source,
        })?;
        self.stats.entries += 1;
        Ok(())
    }

    fn opaque_whiteout(&mut self, entry: &Path, dir: &[OsString]) -> Result<(), UnpackError> {
        let dir_fd = self.walk(entry, dir, true)?;
        let dir_path = confined::display(dir);
        let written = &self.written;
        confined::clear_dir(&dir_fd, |name| !written.contains(&dir_path.join(name))).map_err(
            |source| UnpackError::Io {
                entry: entry.to_owned(),
                action: "applying opaque whiteout",
                source,
            },
        )?;
        // clear_dir made the directory 0700; a directory entry of this layer, or the
        // default below, sets the final mode.
        if !self.dirs.iter().any(|d| d.path == dir) {
            let _ = nix::sys::stat::fchmod(&dir_fd, Mode::from_bits_truncate(0o755));
        }
        self.stats.entries += 1;
        Ok(())
    }

    fn hardlink(
        &mut self,
        entry: &Path,
        parent_fd: &OwnedFd,
        leaf: &OsStr,
        target: &Path,
    ) -> Result<(), UnpackError> {
        let bad = |reason| UnpackError::BadHardlink {
            entry: entry.to_owned(),
            target: target.to_owned(),
            reason,
        };
        let target_components =
            confined::normalize(target).map_err(|_| bad("contains a '..' component"))?;
        let Some((target_leaf, target_parent)) = target_components.split_last() else {
            return Err(bad("is the image root"));
        };
        let target_parent_fd = match self.walk(entry, target_parent, false) {
            Ok(fd) => fd,
            Err(UnpackError::SymlinkedParent { .. }) => {
                return Err(bad("is reached through a symlinked directory"))
            }
            Err(_) => return Err(bad("does not exist in the image")),
        };
        match confined::file_type_at(&target_parent_fd, target_leaf) {
            Ok(None) => return Err(bad("does not exist in the image")),
            Ok(Some(SFlag::S_IFDIR)) => return Err(bad("is a directory")),
            Ok(Some(_)) => {}
            Err(source) => {
                return Err(UnpackError::Io {
                    entry: entry.to_owned(),
                    action: "inspecting hardlink target",
                    source,
                })
            }
        }
        let io_err = |action| {
            move |source: io::Error| UnpackError::Io {
                entry: entry.to_owned(),
                action,
                source,
            }
        };
        if same_file(&target_parent_fd, target_leaf, parent_fd, leaf) {
            return Ok(());
        }
        confined::remove_at(parent_fd, leaf).map_err(io_err("replacing"))?;
        // Flags empty: if the target is a symlink, link the symlink itself, never what it points to.
        nix::unistd::linkat(
            &target_parent_fd,
            target_leaf.as_os_str(),
            parent_fd,
            leaf,
            AtFlags::empty(),
        )
        .map_err(|e| io_err("creating hardlink")(e.into()))?;
        self.written.insert(entry_path_of(entry));
        self.stats.entries += 1;
        Ok(())
    }

    fn chown(&self, dir: &OwnedFd, name: &OsStr, uid: u64, gid: u64) -> io::Result<()> {
        if !self.is_root_user {
            return Ok(());
        }
        let (Ok(uid), Ok(gid)) = (u32::try_from(uid), u32::try_from(gid)) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("uid/gid {uid}/{gid} out of range"),
            ));
        };
        nix::unistd::fchownat(
            dir,
            name,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(io::Error::from)
    }

    pub(super) fn finish(&mut self) -> Result<(), UnpackError> {
        // Deepest first, so setting a parent's mtime comes after its children are done.
        let mut dirs = std::mem::take(&mut self.dirs);
        dirs.sort_by_key(|d| std::cmp::Reverse(d.path.len()));
        for dir in dirs {
            let entry = confined::display(&dir.path);
            let Some((leaf, parent)) = dir.path.split_last() else {
                continue;
            };
            // A later entry of this layer may have replaced or whited out the directory.
            let Ok(parent_fd) = confined::walk(&self.root, parent, false, Mode::empty()) else {
                continue;
            };
            let Ok(fd) = confined::open_dir(&parent_fd, leaf) else {
                continue;
            };
            let mut mode = dir.mode;
            if !self.is_root_user {
                // Without CAP_DAC_OVERRIDE later layers must still be able to write here.
                mode |= 0o700;
            }
            let io_err = |action| {
                let entry = entry.clone();
                move |e: Errno| UnpackError::Io {
                    entry,
                    action,
                    source: e.into(),
                }
            };
            nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(mode as _))
                .map_err(io_err("changing mode"))?;
            nix::sys::stat::futimens(
                &fd,
                &TimeSpec::new(dir.mtime, 0),
                &TimeSpec::new(dir.mtime, 0),
            )
            .map_err(io_err("setting mtime"))?;
        }
        Ok(())
    }
}

fn entry_path_of(entry: &Path) -> PathBuf {
    confined::normalize(entry)
        .map(|c| confined::display(&c))
        .unwrap_or_default()
}

fn normalize(path: &Path, entry: &Path) -> Result<Components, UnpackError> {
    confined::normalize(path).map_err(
        |PathProblem::ParentComponent| UnpackError::ParentComponent {
            entry: entry.to_owned(),
        },
    )
}

fn link_target<R: Read>(entry: &tar::Entry<'_, R>, raw: &Path) -> Result<PathBuf, UnpackError> {
    match entry.link_name() {
        Ok(Some(target)) if !target.as_os_str().is_empty() => Ok(target.into_owned()),
        Ok(_) => Err(UnpackError::Io {
            entry: raw.to_owned(),
            action: "reading link target",
            source: io::Error::new(io::ErrorKind::InvalidData, "link entry without a target"),
        }),
        Err(e) => Err(UnpackError::Archive(e)),
    }
}

/// A relative target is resolved lexically from the link's directory; climbing above the root
/// is an escape. Absolute targets resolve inside the guest's root.
fn check_symlink_target(
    entry: &Path,
    parent: &[OsString],
    target: &Path,
) -> Result<(), UnpackError> {
    if target.is_absolute() {
        return Ok(());
    }
    let mut depth = parent.len();
    for component in target.components() {
        match component {
            std::path::Component::ParentDir => {
                if depth == 0 {
                    return Err(UnpackError::SymlinkEscape {
                        entry: entry.to_owned(),
                        target: target.to_owned(),
                    });
                }
                depth -= 1;
            }
            std::path::Component::Normal(_) => depth += 1,
            _ => {}
        }
    }
    Ok(())
}
