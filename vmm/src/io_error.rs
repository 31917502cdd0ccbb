//! A file operation that failed — what was done, on what, and the OS's error — in the one
//! shape every module's errors carry it (`Io(#[from] IoError)`), made by [`io`]:
//! `std::fs::read(&path).map_err(io("read", &path))?`.

use std::path::{Path, PathBuf};

/// A failed file operation.
#[derive(Debug, thiserror::Error)]
#[error("{action} {path}: {source}")]
pub struct IoError {
    /// What was done (`read`, `create`, …).
    pub action: &'static str,
    /// On what.
    pub path: PathBuf,
    /// The OS error.
    #[source]
    pub source: std::io::Error,
}

/// The error of `action` on `path`, for `map_err`.
pub fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> IoError + 'a {
    move |source| IoError {
        action,
        path: path.to_owned(),
        source,
    }
}
