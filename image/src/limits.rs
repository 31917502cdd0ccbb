//! What one image may make krunbox do, against hostile layers, manifests and archives.
//!
//! | limit | default | override |
//! |---|---|---|
//! | bytes of file content unpacked per image (all layers) | 64 GiB | `KRUNBOX_UNPACK_MAX_BYTES` |
//! | tar entries read per image (all layers, skipped ones too) | 1,000,000 | `KRUNBOX_UNPACK_MAX_ENTRIES` |
//! | path depth of an entry (components) | 256 | `KRUNBOX_UNPACK_MAX_DEPTH` |
//! | the headers of one tar entry (its header, GNU long name/link, PAX extensions, sparse map) | 256 KiB | none |
//! | a manifest, index or config (registry or local) | 4 MiB ([`MAX_JSON_BLOB`]) | none |
//! | a registry token server's answer | 256 KiB ([`MAX_TOKEN_RESPONSE`]) | none |
//! | the body of a registry's error answer (read for its message) | 64 KiB ([`MAX_ERROR_BODY`]) | none |
//!
//! The tar crate reads GNU long names and PAX extension records wholly into memory, so the
//! entry-header limit is what keeps a small gzip announcing a multi-GiB long name from
//! allocating it: [`HeaderBudget`] bounds the bytes the crate may read while it looks for the
//! next entry (the unpacker reads every entry's content itself before asking for the next, so
//! that is headers only).

use std::cell::Cell;
use std::io::{self, Read};
use std::rc::Rc;

/// The largest manifest, index or config krunbox reads into memory (registry or local).
pub const MAX_JSON_BLOB: u64 = 4 * 1024 * 1024;

/// The largest answer of a registry's token server krunbox reads (tokens are JWTs of a few
/// KiB).
pub const MAX_TOKEN_RESPONSE: u64 = 256 * 1024;

/// The most of a registry's error answer krunbox reads for its message.
pub const MAX_ERROR_BODY: u64 = 64 * 1024;

/// The most bytes the headers of one tar entry may take: its own 512-byte header, a GNU long
/// name and long link and a PAX extension header (up to 64 KiB each in practice) and a GNU
/// sparse map. Everything in it is held in memory by the tar crate.
pub const MAX_ENTRY_HEADERS: u64 = 256 * 1024;

/// Default for [`UnpackLimits::max_bytes`].
pub const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024 * 1024;
/// Default for [`UnpackLimits::max_entries`].
pub const DEFAULT_MAX_ENTRIES: u64 = 1_000_000;
/// Default for [`UnpackLimits::max_depth`] (Linux's PATH_MAX of 4096 allows ~2048 levels).
pub const DEFAULT_MAX_DEPTH: usize = 256;

/// Caps on unpacking one image (every layer together) or one archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Bytes of entry content read (written files, and content of skipped entries).
    pub max_bytes: u64,
    /// Tar entries read, whatever their type.
    pub max_entries: u64,
    /// Components in an entry's path.
    pub max_depth: usize,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_MAX_BYTES,
            max_entries: DEFAULT_MAX_ENTRIES,
            max_depth: DEFAULT_MAX_DEPTH,
        }
    }
}

/// An override in the environment that is not a number.
#[derive(Debug, thiserror::Error)]
#[error("{name}={value:?} is not a positive whole number")]
pub struct BadLimit {
    /// The variable.
    pub name: &'static str,
    /// Its value.
    pub value: String,
}

impl UnpackLimits {
    /// The defaults with the `KRUNBOX_UNPACK_MAX_*` overrides applied.
    pub fn from_env() -> Result<Self, BadLimit> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, BadLimit> {
        let read = |name: &'static str, default: u64| -> Result<u64, BadLimit> {
            match lookup(name) {
                Some(value) if !value.trim().is_empty() => match value.trim().parse::<u64>() {
                    Ok(n) if n > 0 => Ok(n),
                    _ => Err(BadLimit { name, value }),
                },
                _ => Ok(default),
            }
        };
        Ok(Self {
            max_bytes: read("KRUNBOX_UNPACK_MAX_BYTES", DEFAULT_MAX_BYTES)?,
            max_entries: read("KRUNBOX_UNPACK_MAX_ENTRIES", DEFAULT_MAX_ENTRIES)?,
            max_depth: usize::try_from(read("KRUNBOX_UNPACK_MAX_DEPTH", DEFAULT_MAX_DEPTH as u64)?)
                .unwrap_or(usize::MAX),
        })
    }
}

/// The marker inside the `io::Error` a [`HeaderBudget`] returns.
#[derive(Debug, thiserror::Error)]
#[error("the headers of one tar entry (GNU long name/link, PAX extensions) exceed {MAX_ENTRY_HEADERS} bytes")]
pub(crate) struct HeadersTooLarge;

/// Whether `err` is a [`HeaderBudget`] refusal.
pub(crate) fn is_headers_too_large(err: &io::Error) -> bool {
    err.get_ref()
        .is_some_and(|inner| inner.is::<HeadersTooLarge>())
}

/// A reader that refuses to give more than a set number of bytes while a budget is armed.
pub(crate) struct HeaderBudget<R> {
    inner: R,
    left: Rc<Cell<Option<u64>>>,
}

/// Arms and disarms a [`HeaderBudget`] from outside the tar archive that owns it.
#[derive(Clone)]
pub(crate) struct BudgetSwitch(Rc<Cell<Option<u64>>>);

impl BudgetSwitch {
    /// From now on at most `bytes` more may be read.
    pub(crate) fn arm(&self, bytes: u64) {
        self.0.set(Some(bytes));
    }

    /// No limit.
    pub(crate) fn disarm(&self) {
        self.0.set(None);
    }
}

impl<R> HeaderBudget<R> {
    /// Wraps `inner`, disarmed.
    pub(crate) fn new(inner: R) -> (Self, BudgetSwitch) {
        let left = Rc::new(Cell::new(None));
        (
            Self {
                inner,
                left: left.clone(),
            },
            BudgetSwitch(left),
        )
    }
}

impl<R: Read> Read for HeaderBudget<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(left) = self.left.get() else {
            return self.inner.read(buf);
        };
        if buf.is_empty() {
            return Ok(0);
        }
        if left == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, HeadersTooLarge));
        }
        let max = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        self.left.set(Some(left - n as u64));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_armed_budget_refuses_past_its_bytes() {
        let (mut reader, switch) = HeaderBudget::new(&[7u8; 100][..]);
        let mut buf = [0u8; 30];
        switch.arm(40);
        assert_eq!(reader.read(&mut buf).unwrap(), 30);
        assert_eq!(reader.read(&mut buf).unwrap(), 10);
        let err = reader.read(&mut buf).unwrap_err();
        assert!(is_headers_too_large(&err), "{err}");
        switch.disarm();
        assert_eq!(reader.read(&mut buf).unwrap(), 30);
    }

    #[test]
    fn env_overrides_are_checked() {
        let with = |value: &'static str| {
            UnpackLimits::from_lookup(move |name| {
                (name == "KRUNBOX_UNPACK_MAX_ENTRIES").then(|| value.to_owned())
            })
        };
        assert_eq!(with("12").unwrap().max_entries, 12);
        assert_eq!(with("12").unwrap().max_bytes, DEFAULT_MAX_BYTES);
        assert!(with("lots").is_err());
        assert!(with("0").is_err());
        assert_eq!(with("").unwrap(), UnpackLimits::default());
    }
}
