//! The adversarial suite: each test performs one attack for real — a guest root trying to
//! escape, a crafted image from a local registry, a second local user on the same host, a
//! hostile DNS answer — and asserts that it has no effect and that nothing is lost.
//! SECURITY.md lists each boundary with the test that attacks it.
//!
//! One module per boundary; one test per attack, named for the attack.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test
mod agent;
mod console;
mod cp;
mod dns;
mod image;
mod neighbour;
mod virtiofs;
