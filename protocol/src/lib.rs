//! ferry's wire format, sans I/O.
//!
//! This crate turns [`Message`] values into bytes and back. It never touches a
//! socket, a file or a clock: callers hand it a `BytesMut` to append to or to
//! decode from (like `quinn-proto`). Decoding any byte string never panics,
//! never allocates more than the configured frame cap, and reports malformed
//! input as a typed [`DecodeError`]. The byte layout of every frame is in
//! `PROTOCOL.md` beside this crate.
#![forbid(unsafe_code)]

pub mod message;
pub mod types;

pub use message::*;
pub use types::*;
