//! The files every backend keeps in a VM's run directory (`rundir`): the network helper's
//! socket, the console and its pipe, and logs. Each backend's own `Layout` adds its files
//! and derefs to this one.

use std::path::{Path, PathBuf};

/// A run directory's common files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunLayout {
    dir: PathBuf,
}

impl RunLayout {
    /// The layout of `dir`.
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The VMM's end of the guest's network card (the `krunbox __net` helper listens).
    pub fn net_socket(&self) -> PathBuf {
        self.dir.join("net.sock")
    }

    /// The guest's console, a capped copy of [`RunLayout::console_pipe`].
    pub fn console(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    /// The FIFO the VMM writes the console into (see `backend::console`).
    pub fn console_pipe(&self) -> PathBuf {
        self.dir.join("console.pipe")
    }

    /// The log of a helper process (`vmm`, `net`, `virtiofsd-0`, ...).
    pub fn log(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }
}
