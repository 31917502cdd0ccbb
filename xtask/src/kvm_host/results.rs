//! The results share: a directory of the run that the KVM host writes through virtio-fs
//! (`cache=none`, so each write is on the machine before the guest's write(2) returns) and the
//! harness reads while it runs. See init.sh for the files.

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// How the command inside ended, from `results/status`.
#[derive(Debug, PartialEq, Eq)]
pub enum Status {
    /// `exit N`: the command ran and exited with N (a signal's death is 128+N, by sh).
    Exited(i32),
    /// `error WHY`: the KVM host could not run it.
    Failed(String),
}

/// Parses `results/status`.
pub fn parse_status(text: &str) -> Option<Status> {
    let text = text.trim();
    if let Some(code) = text.strip_prefix("exit ") {
        return code.parse().ok().map(Status::Exited);
    }
    text.strip_prefix("error ")
        .map(|why| Status::Failed(why.to_owned()))
}

/// Copies what is appended to a file to a sink, as it appears.
pub struct Follower {
    path: PathBuf,
    offset: u64,
}

impl Follower {
    /// Follows `path` (which need not exist yet) from its start.
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            offset: 0,
        }
    }

    /// Copies everything new to `sink`; returns how many bytes.
    pub fn pump(&mut self, sink: &mut impl Write) -> std::io::Result<u64> {
        let mut file = match std::fs::File::open(&self.path) {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(err) => return Err(err),
        };
        file.seek(SeekFrom::Start(self.offset))?;
        let copied = std::io::copy(&mut file, sink)?;
        sink.flush()?;
        self.offset += copied;
        Ok(copied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_parse_and_garbage_does_not() {
        assert_eq!(parse_status("exit 7\n"), Some(Status::Exited(7)));
        assert_eq!(
            parse_status("error no svm"),
            Some(Status::Failed("no svm".into()))
        );
        assert_eq!(parse_status("exit seven"), None);
        assert_eq!(parse_status(""), None);
    }

    #[test]
    fn a_follower_copies_each_byte_once_as_the_file_grows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout");
        let mut follower = Follower::new(&path);
        let mut sink = Vec::new();
        assert_eq!(follower.pump(&mut sink).unwrap(), 0, "not created yet");
        std::fs::write(&path, b"hello ").unwrap();
        follower.pump(&mut sink).unwrap();
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        file.write_all(b"world").unwrap();
        follower.pump(&mut sink).unwrap();
        follower.pump(&mut sink).unwrap();
        assert_eq!(sink, b"hello world");
    }
}
