//! A log writer with a size cap: the gateway's decision log is written on the guest's behalf
//! (every connection and DNS query makes a line), so a guest could otherwise fill the host's
//! disk. Past the cap one last line says so and everything after it is dropped.

use std::io::{self, Write};

/// Bytes the gateway writes to each of its logs (the `--network-log` file, the run
/// directory's `net.log`) at most.
pub const MAX_LOG_BYTES: u64 = 16 * 1024 * 1024;

/// Writes to `inner` until `cap` bytes, then one truncation line, then nothing.
#[derive(Debug)]
pub struct CappedWriter<W> {
    inner: W,
    written: u64,
    cap: u64,
    truncated: bool,
}

impl<W: Write> CappedWriter<W> {
    /// A writer that passes at most `cap` bytes (plus the truncation line) to `inner`.
    pub fn new(inner: W, cap: u64) -> Self {
        Self {
            inner,
            written: 0,
            cap,
            truncated: false,
        }
    }

    /// The same, for a file that already holds `existing` bytes (a sandbox's network log is
    /// appended to by each start): they count against the cap.
    pub fn after(mut self, existing: u64) -> Self {
        self.written = existing;
        self
    }
}

impl<W: Write> Write for CappedWriter<W> {
    /// Whole writes only (a log line is one write): a write that does not fit is replaced by
    /// the truncation line. Dropped bytes are reported as written, so logging never fails.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.truncated {
            return Ok(buf.len());
        }
        if self.written + buf.len() as u64 > self.cap {
            self.truncated = true;
            let line = format!(
                "krunbox: network log truncated: it reached its cap of {} bytes; later \
                 decisions are not recorded\n",
                self.cap
            );
            self.inner.write_all(line.as_bytes())?;
            self.inner.flush()?;
            return Ok(buf.len());
        }
        self.inner.write_all(buf)?;
        self.written += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_at_the_cap_with_one_truncation_line() {
        // Room for two 11-byte lines exactly.
        let mut log = CappedWriter::new(Vec::new(), 22);
        for _ in 0..100 {
            log.write_all(b"0123456789\n").expect("write");
        }
        let text = String::from_utf8(log.inner).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2 + 1, "{text}");
        assert_eq!(lines[0], "0123456789");
        assert!(lines[2].contains("truncated"), "{text}");
        assert!(lines[2].contains("22 bytes"), "{text}");
        assert_eq!(text.matches("truncated").count(), 1);
        // A file that is already full gets only the truncation line.
        let mut full = CappedWriter::new(Vec::new(), 20).after(20);
        full.write_all(b"x\n").expect("write");
        full.write_all(b"y\n").expect("write");
        let text = String::from_utf8(full.inner).expect("utf-8");
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("truncated"), "{text}");
    }
}
