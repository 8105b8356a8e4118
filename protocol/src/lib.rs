//! ferry's wire format, sans I/O.
//!
//! This crate turns [`Message`] values into bytes and back. It never touches a
//! socket, a file or a clock: callers hand it a `BytesMut` to append to or to
//! decode from (like `quinn-proto`). Decoding any byte string never panics,
//! never allocates more than the configured frame cap, and reports malformed
//! input as a typed [`DecodeError`]. The byte layout of every frame is in
//! `PROTOCOL.md` beside this crate.
//!
//! Call order on a connection:
//! 1. both sides send [`Hello::new`] and run [`negotiate`] on the pair
//!    (no common version: send [`ErrorCode::VersionMismatch`] and close);
//! 2. sending: [`Message::encode`] appends one frame to a `BytesMut`; for a
//!    large [`ExtentBatch`] use [`ExtentBatch::encode_header`] and write the
//!    payload `Bytes` after it without copying;
//! 3. receiving: append socket bytes to a `BytesMut` (sized with
//!    [`FrameDecoder::bytes_needed`]) and call [`FrameDecoder::decode`] until it
//!    returns `Ok(None)`; on `Err` send [`DecodeError::to_error_frame`] and
//!    close, since a byte stream cannot be resynchronised.
//!
//! Modules: [`frame`] (header, type codes, caps), [`codec`] (encode/decode),
//! [`error`] (error types), [`version`] (versions, negotiation), [`message`]
//! and [`types`] (the values).
#![forbid(unsafe_code)]

pub mod codec;
pub mod error;
pub mod frame;
pub mod message;
pub mod types;
mod validate;
pub mod version;

pub use codec::*;
pub use error::*;
pub use frame::*;
pub use message::*;
pub use types::*;
pub use version::*;
