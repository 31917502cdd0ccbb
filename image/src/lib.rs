//! Container images for krunbox.
pub mod auth;
pub mod builtin;
pub mod config;
mod confined;
pub mod digest;
pub mod layout;
pub mod limits;
pub mod local_registry;
pub mod lock;
pub mod manifest;
pub mod platform;
pub mod pull;
pub mod push;
pub mod reference;
pub mod source;
pub mod store;
pub mod unpack;
pub mod user;
