//! The libkrun backend — placeholder until engineer C's implementation lands (issue 3).
//!
//! It reports itself unavailable so `--backend auto` picks QEMU, and `--backend krun` says why.

use super::{Availability, Backend, BackendError, BackendKind, VmHandle, VmSpec};

/// The libkrun backend.
#[derive(Debug, Default)]
pub struct KrunBackend;

impl KrunBackend {
    /// The backend.
    pub fn new() -> Self {
        Self
    }
}

const NOT_BUILT: &str = "the libkrun backend is not built into this krunbox yet";

impl Backend for KrunBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Krun
    }

    fn availability(&self) -> Availability {
        Availability::Unavailable(NOT_BUILT.into())
    }

    fn start(&self, _spec: &VmSpec) -> Result<Box<dyn VmHandle>, BackendError> {
        Err(BackendError::Unavailable {
            backend: BackendKind::Krun,
            reason: NOT_BUILT.into(),
        })
    }
}
