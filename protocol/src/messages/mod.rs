//! The protobuf messages of the krunbox agent protocol, one file per message family.
//!
//! Every frame on the wire is one [`Envelope`]: a stream `id` chosen by the host and one
//! [`Body`]. All frames that belong to one operation (an exec, a file transfer) carry the id of
//! the request that opened it, so many operations share one connection.
//!
//! Messages are written as `prost` derives rather than generated from `.proto` files: the Rust
//! definitions are the single source of truth, carry their documentation, and need no `protoc`
//! at build time. Field tags are frozen per generation by `tests/generations.rs`.

mod control;
mod envelope;
mod exec;
mod files;

pub use control::*;
pub use envelope::*;
pub use exec::*;
pub use files::*;
