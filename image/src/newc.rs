//! A newc (SVR4 "new ASCII") cpio archive, the format Linux unpacks as an initramfs: the QEMU
//! backend's guest initramfs, and xtask's KVM host and boot-bench floor.

use std::io::Write;

/// A directory, `rwxr-xr-x`.
pub const DIR: u32 = 0o040_755;
/// An executable file.
pub const FILE_EXEC: u32 = 0o100_755;
/// A plain file.
pub const FILE: u32 = 0o100_644;
/// A character device, `rw-------`.
pub const CHAR_DEV: u32 = 0o020_600;

/// Entries written one after another into `out`, each with an inode number of its own.
pub struct Newc<W: Write> {
    out: W,
    ino: u32,
}

impl<W: Write> Newc<W> {
    /// An archive written to `out`.
    pub fn new(out: W) -> Self {
        Self { out, ino: 1 }
    }

    /// Adds `name` (no leading `/`) with `mode` (type and permissions), its bytes and, for a
    /// device node, its `(major, minor)`.
    pub fn entry(
        &mut self,
        name: &str,
        mode: u32,
        data: &[u8],
        rdev: Option<(u32, u32)>,
    ) -> std::io::Result<()> {
        let size = u32::try_from(data.len())
            .map_err(|_| std::io::Error::other(format!("{name} is larger than 4 GiB")))?;
        let mut builder = cpio::NewcBuilder::new(name)
            .ino(self.ino)
            .mode(mode)
            .nlink(if mode & 0o040_000 != 0 { 2 } else { 1 });
        if let Some((major, minor)) = rdev {
            builder = builder.rdev_major(major).rdev_minor(minor);
        }
        self.ino += 1;
        let mut writer = builder.write(&mut self.out, size);
        writer.write_all(data)?;
        writer.finish().map(drop)
    }

    /// Adds each of `names` as a directory (parents first).
    pub fn dirs(&mut self, names: &[&str]) -> std::io::Result<()> {
        for name in names {
            self.entry(name, DIR, &[], None)?;
        }
        Ok(())
    }

    /// Adds `dev/console` (after a `dev` directory): the kernel opens it for init's stdio
    /// before devtmpfs is mounted, so an initramfs without it starts init with no output.
    pub fn console(&mut self) -> std::io::Result<()> {
        self.entry("dev/console", CHAR_DEV, &[], Some((5, 1)))
    }

    /// Writes the trailer and flushes; returns the writer.
    pub fn finish(mut self) -> std::io::Result<W> {
        cpio::newc::trailer(&mut self.out)?;
        self.out.flush()?;
        Ok(self.out)
    }
}
