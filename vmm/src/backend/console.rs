//! The guest console, capped on the host.
//!
//! The guest writes its console as fast and as much as it likes, so the VMM never writes a
//! file directly: it writes into a FIFO (`console.pipe`) and a thread of the VM's own krunbox
//! process (the QEMU supervisor, the libkrun VMM child) copies it into `console.log`. When that
//! file reaches [`CONSOLE_LOG_CAP`] it becomes `console.log.old` (replacing the previous one)
//! and a new `console.log` starts: at most twice the cap is ever on disk, and the newest
//! lines (what error reports show) are always in `console.log`.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Bytes of console one `console.log` holds before it is rotated (default).
pub const CONSOLE_LOG_CAP: u64 = 8 * 1024 * 1024;
/// Overrides [`CONSOLE_LOG_CAP`] (bytes, at least 4096).
pub const CAP_ENV: &str = "KRUNBOX_CONSOLE_LOG_CAP";

/// The cap in force: [`CAP_ENV`] if set to a number of bytes (at least 4096), else the default.
pub fn cap() -> u64 {
    std::env::var(CAP_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(CONSOLE_LOG_CAP, |bytes| bytes.max(4096))
}

/// Why the console relay could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot relay the guest console through {path}: {source}")]
pub struct ConsoleError {
    /// The FIFO or log.
    pub path: PathBuf,
    /// The OS error.
    pub source: std::io::Error,
}

/// Makes the FIFO `pipe` and starts copying what the VMM writes into it to `log`, capped.
///
/// The FIFO is opened read-write here, so the VMM's open (write-only) never blocks and reads
/// never see end-of-file while the process lives; the thread ends with the process.
pub fn relay(pipe: &Path, log: &Path) -> Result<(), ConsoleError> {
    let err = |path: &Path| {
        let path = path.to_owned();
        move |source| ConsoleError { path, source }
    };
    nix::unistd::mkfifo(pipe, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .map_err(|e| err(pipe)(std::io::Error::from(e)))?;
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(pipe)
        .map_err(err(pipe))?;
    let out = File::create(log).map_err(err(log))?;
    let log = log.to_owned();
    std::thread::Builder::new()
        .name("console".into())
        .spawn(move || {
            if let Err(e) = copy_capped(reader, out, &log, cap()) {
                tracing::warn!(error = %e, "the console relay stopped");
            }
        })
        .map_err(err(pipe))?;
    Ok(())
}

/// Copies `from` into `out` (the file at `log`), rotating to `log.old` at `cap` bytes.
fn copy_capped(mut from: impl Read, mut out: File, log: &Path, cap: u64) -> std::io::Result<()> {
    let mut old = log.as_os_str().to_owned();
    old.push(".old");
    let mut written = 0u64;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let mut chunk = &buf[..n];
        while !chunk.is_empty() {
            if written >= cap {
                std::fs::rename(log, &old)?;
                out = File::create(log)?;
                written = 0;
            }
            let room = usize::try_from(cap - written).unwrap_or(usize::MAX);
            let (now, later) = chunk.split_at(chunk.len().min(room));
            out.write_all(now)?;
            written += now.len() as u64;
            chunk = later;
        }
    }
}

/// Watches a console log for a line, reading only what was added since the last look.
#[derive(Debug)]
pub struct LineWatch {
    log: PathBuf,
    needle: Vec<u8>,
    offset: u64,
    /// The end of what was read, which may hold the start of the needle.
    carry: Vec<u8>,
    seen: bool,
}

impl LineWatch {
    /// Watches `log` for `needle`.
    pub fn new(log: PathBuf, needle: &str) -> Self {
        Self {
            log,
            needle: needle.as_bytes().to_vec(),
            offset: 0,
            carry: Vec::new(),
            seen: false,
        }
    }

    /// Whether the needle has appeared (once seen, always true).
    pub fn seen(&mut self) -> bool {
        if self.seen {
            return true;
        }
        let Ok(mut file) = File::open(&self.log) else {
            return false;
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len < self.offset {
            // Rotated: start over on the new file.
            self.offset = 0;
            self.carry.clear();
        }
        let mut added = Vec::new();
        use std::io::Seek;
        if file.seek(std::io::SeekFrom::Start(self.offset)).is_err()
            || file.read_to_end(&mut added).is_err()
        {
            return false;
        }
        self.offset += added.len() as u64;
        let mut window = std::mem::take(&mut self.carry);
        window.extend_from_slice(&added);
        self.seen = window
            .windows(self.needle.len())
            .any(|w| w == self.needle.as_slice());
        let keep = window.len().min(self.needle.len().saturating_sub(1));
        self.carry = window[window.len() - keep..].to_vec();
        self.seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_console_output_stays_within_twice_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        let flood = std::io::repeat(b'x').take(10 * 1000);
        let tail = &b"\nlast line\n"[..];
        copy_capped(flood.chain(tail), File::create(&log).unwrap(), &log, 1000).unwrap();
        let current = std::fs::read(&log).unwrap();
        let old = std::fs::read(dir.path().join("console.log.old")).unwrap();
        assert!(current.len() <= 1000 && old.len() <= 1000);
        assert!(
            current.ends_with(b"last line\n"),
            "the newest lines are kept"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn a_watched_line_is_found_across_reads_that_split_it() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        let mut watch = LineWatch::new(log.clone(), "agent: ready");
        assert!(!watch.seen(), "no file yet");
        let mut file = File::create(&log).unwrap();
        file.write_all(b"booting\nagent: re").unwrap();
        assert!(!watch.seen());
        file.write_all(b"ady\n").unwrap();
        assert!(watch.seen());
        assert!(watch.seen(), "stays seen");
    }

    #[test]
    fn the_vmm_writes_into_the_fifo_and_the_log_gets_it() {
        let dir = tempfile::tempdir().unwrap();
        let (pipe, log) = (
            dir.path().join("console.pipe"),
            dir.path().join("console.log"),
        );
        relay(&pipe, &log).unwrap();
        // What a VMM does: open the path for writing, as a file.
        let mut vmm = File::create(&pipe).unwrap();
        vmm.write_all(b"hello from the guest\n").unwrap();
        drop(vmm);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::fs::read(&log).unwrap() != b"hello from the guest\n" {
            assert!(
                std::time::Instant::now() < deadline,
                "the relay copied nothing"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}
