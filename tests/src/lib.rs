//! End-to-end tests of krunbox that boot real guests; see `tests/`.
