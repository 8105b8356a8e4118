//! Error types of the codec: [`DecodeError`] (the peer sent bytes that are not
//! a valid frame), [`EncodeError`] (the caller asked to send a frame that
//! breaks the protocol's rules), and [`ValidationError`], the semantic rules
//! both directions share.
//!
//! Offsets in error messages count from the start of the frame body (the byte
//! after the type byte), as in the tables of `PROTOCOL.md`.

use crate::frame::FrameType;
use crate::message::{ErrorCode, ErrorFrame};
use crate::types::{Codec, ExtentKind, ImageNameError};

/// A rule a message must follow whichever way it travels. Encoding refuses to
/// write such a message and decoding refuses to accept one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// A list field holds more elements than the protocol allows.
    #[error("{frame}: {field} has {count} elements, the limit is {max}")]
    TooManyElements {
        /// Frame holding the list.
        frame: FrameType,
        /// Name of the list field.
        field: &'static str,
        /// Number of elements found (or announced on the wire).
        count: usize,
        /// The cap for this field.
        max: usize,
    },
    /// A string field is longer than the protocol allows.
    #[error("{frame}: {field} is {len} bytes long, the limit is {max}")]
    StringTooLong {
        /// Frame holding the string.
        frame: FrameType,
        /// Name of the string field.
        field: &'static str,
        /// Length found, in bytes.
        len: usize,
        /// The cap, in bytes.
        max: usize,
    },
    /// A batch's scan range runs backwards.
    #[error("ExtentBatch: scan_start {scan_start} is past scan_end {scan_end}")]
    ScanRangeReversed {
        /// Start of the scan range.
        scan_start: u64,
        /// End of the scan range.
        scan_end: u64,
    },
    /// An extent covers no bytes.
    #[error("ExtentBatch: extent {index} (offset {offset}) has length 0")]
    ZeroLengthExtent {
        /// Position of the extent in the batch.
        index: usize,
        /// Its offset.
        offset: u64,
    },
    /// An extent's end does not fit in a u64.
    #[error("ExtentBatch: extent {index} at offset {offset} with length {length} ends past 2^64")]
    ExtentEndOverflow {
        /// Position of the extent in the batch.
        index: usize,
        /// Its offset.
        offset: u64,
        /// Its length.
        length: u32,
    },
    /// An extent starts before the previous extent's start.
    #[error(
        "ExtentBatch: extent {index} is out of order: offset {offset} < extent {previous}'s offset {previous_offset}"
    )]
    ExtentOutOfOrder {
        /// Position of the offending extent.
        index: usize,
        /// Its offset.
        offset: u64,
        /// Position of the extent before it (`index - 1`).
        previous: usize,
        /// That extent's offset.
        previous_offset: u64,
    },
    /// An extent starts before the previous extent ends.
    #[error(
        "ExtentBatch: extent {index} overlaps extent {previous} (offset {offset} < {previous_end})"
    )]
    ExtentOverlap {
        /// Position of the offending extent.
        index: usize,
        /// Its offset.
        offset: u64,
        /// Position of the extent before it (`index - 1`).
        previous: usize,
        /// Where that extent ends (exclusive).
        previous_end: u64,
    },
    /// A zero or discard extent claims payload bytes or a codec.
    #[error(
        "ExtentBatch: extent {index} is {kind:?} but has codec {codec:?} and encoded_len {encoded_len} (must be Raw and 0)"
    )]
    NonDataExtentWithPayload {
        /// Position of the extent.
        index: usize,
        /// Its kind (not [`ExtentKind::Data`]).
        kind: ExtentKind,
        /// Its codec.
        codec: Codec,
        /// Its encoded length.
        encoded_len: u32,
    },
    /// A raw data extent's payload size differs from its length.
    #[error("ExtentBatch: raw data extent {index} has encoded_len {encoded_len}, it must equal its length {length}")]
    RawLengthMismatch {
        /// Position of the extent.
        index: usize,
        /// Its length.
        length: u32,
        /// Its encoded length.
        encoded_len: u32,
    },
    /// A zstd data extent has no payload bytes (a zstd frame is never empty).
    #[error("ExtentBatch: zstd data extent {index} has encoded_len 0")]
    EmptyZstdExtent {
        /// Position of the extent.
        index: usize,
    },
    /// The data extents' encoded lengths do not add up to the payload size.
    #[error("ExtentBatch: data extents' encoded_len add up to {expected} bytes but the payload is {actual} bytes")]
    PayloadLengthMismatch {
        /// Sum of the data extents' `encoded_len`.
        expected: u64,
        /// Actual payload length.
        actual: u64,
    },
    /// A hash granule size of zero.
    #[error("{frame}: granularity is 0")]
    ZeroGranularity {
        /// [`FrameType::HashRequest`] or [`FrameType::HashAnswer`].
        frame: FrameType,
    },
    /// A hash request's range ends past 2^64.
    #[error("HashRequest: range at offset {offset} with length {length} ends past 2^64")]
    HashRangeOverflow {
        /// Start of the range.
        offset: u64,
        /// Length of the range.
        length: u64,
    },
    /// A hash request asks for more granules than one answer may carry.
    #[error(
        "HashRequest: {length} bytes in granules of {granularity} need {granules} hashes, the limit is {max}"
    )]
    TooManyGranules {
        /// Length of the range.
        length: u64,
        /// Granule size.
        granularity: u32,
        /// Granules the range needs.
        granules: u64,
        /// The cap ([`MAX_HASHES_PER_ANSWER`](crate::MAX_HASHES_PER_ANSWER)).
        max: usize,
    },
    /// [`ErrorCode::Unknown`] holding a code that has a named variant: it
    /// would decode as that variant, so it is refused to keep encoding exact.
    #[error(
        "Error: code {code:#06x} has a named ErrorCode variant and must not be sent as Unknown"
    )]
    NonCanonicalErrorCode {
        /// The code.
        code: u16,
    },
}

/// Bytes that are not a valid frame. The peer is broken or hostile: answer
/// with [`DecodeError::to_error_frame`] (code [`ErrorCode::Malformed`]) and
/// close the connection; the stream cannot be resynchronised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The length field announces more than the frame cap (seen before the
    /// body is buffered).
    #[error("frame length {len} exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// Value of the length field.
        len: usize,
        /// The decoder's cap.
        max: usize,
    },
    /// The length field is 0: there is not even a type byte.
    #[error("frame length is 0; a frame holds at least its type byte")]
    EmptyFrame,
    /// The type byte is not a known frame type.
    #[error("unknown frame type {frame_type:#04x}")]
    UnknownFrameType {
        /// The type byte.
        frame_type: u8,
    },
    /// The body ends inside a field.
    #[error("{frame}: body ends inside {field} at offset {offset} (needs {needed} bytes, {available} left)")]
    Truncated {
        /// Frame being decoded.
        frame: FrameType,
        /// Field being read.
        field: &'static str,
        /// Offset of the field in the body.
        offset: usize,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes left in the body.
        available: usize,
    },
    /// Bytes follow the last field of a frame that has no payload.
    #[error("{frame}: {len} trailing bytes after the last field at offset {offset}")]
    TrailingBytes {
        /// Frame being decoded.
        frame: FrameType,
        /// Offset of the first extra byte.
        offset: usize,
        /// Number of extra bytes.
        len: usize,
    },
    /// An image name field does not hold a valid [`ImageName`](crate::ImageName).
    #[error("{frame}: {field} at offset {offset} is not a valid image name")]
    BadImageName {
        /// Frame being decoded.
        frame: FrameType,
        /// Field being read.
        field: &'static str,
        /// Offset of the name's length byte.
        offset: usize,
        /// Why the name is invalid.
        #[source]
        source: ImageNameError,
    },
    /// A string field is not UTF-8.
    #[error("{frame}: {field} at offset {offset} is not valid UTF-8")]
    BadUtf8 {
        /// Frame being decoded.
        frame: FrameType,
        /// Field being read.
        field: &'static str,
        /// Offset of the string's length field.
        offset: usize,
        /// Where the UTF-8 breaks.
        #[source]
        source: std::str::Utf8Error,
    },
    /// A boolean byte other than 0 or 1.
    #[error("{frame}: {field} at offset {offset} is {value:#04x}; a boolean must be 0 or 1")]
    BadBool {
        /// Frame being decoded.
        frame: FrameType,
        /// Field being read.
        field: &'static str,
        /// Offset of the byte.
        offset: usize,
        /// The byte.
        value: u8,
    },
    /// An extent kind code this version does not know.
    #[error("ExtentBatch: extent {index} has unknown kind code {code:#04x}")]
    UnknownExtentKind {
        /// Position of the extent.
        index: usize,
        /// The code.
        code: u8,
    },
    /// A codec code this version does not know.
    #[error("ExtentBatch: extent {index} has unknown codec code {code:#04x}")]
    UnknownCodec {
        /// Position of the extent.
        index: usize,
        /// The code.
        code: u8,
    },
    /// A Nack reason code this version does not know.
    #[error("Nack: unknown reason code {code:#04x}")]
    UnknownNackReason {
        /// The code.
        code: u8,
    },
    /// A list's element count needs more bytes than the body has left
    /// (checked before anything is allocated for the list).
    #[error(
        "{frame}: {field} count {count} at offset {offset} needs at least {needed} bytes, only {available} left"
    )]
    CountExceedsBody {
        /// Frame being decoded.
        frame: FrameType,
        /// The list field.
        field: &'static str,
        /// Offset of the count.
        offset: usize,
        /// The announced count.
        count: u32,
        /// Minimum bytes that many elements occupy.
        needed: u64,
        /// Bytes left in the body after the count.
        available: usize,
    },
    /// The frame parses but breaks a protocol rule.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
}

impl DecodeError {
    /// The code to report to the peer: always [`ErrorCode::Malformed`].
    pub const fn error_code(&self) -> ErrorCode {
        ErrorCode::Malformed
    }

    /// The [`ErrorFrame`] to send before closing: [`ErrorCode::Malformed`]
    /// and this error's message (cut at a character boundary to fit the
    /// string cap).
    pub fn to_error_frame(&self) -> ErrorFrame {
        ErrorFrame::new(self.error_code(), self.to_string())
    }
}

/// The caller asked to encode a message that may not be sent. Nothing was
/// written to the output buffer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The frame would exceed the frame cap (or the u32 length field).
    #[error("{frame}: frame length {len} exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// Frame being encoded.
        frame: FrameType,
        /// Its length field (type byte + body, payload included).
        len: usize,
        /// The effective cap.
        max: usize,
    },
    /// The message breaks a protocol rule.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
}
