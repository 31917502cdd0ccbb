//! Container images for krunbox.
pub mod digest;
pub mod reference;
pub mod platform;
mod confined;
pub mod unpack;
pub mod lock;
pub mod config;
pub mod manifest;
pub mod store;
pub mod layout;
pub mod builtin;
pub mod auth;
pub mod pull;
pub mod source;
pub mod push;
pub mod local_registry;
