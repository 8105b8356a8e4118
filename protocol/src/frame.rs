//! Frame-level constants: the frame header size, the default frame cap, the
//! per-field element caps, and the type code of every frame.
//!
//! A frame is `length: u32 LE` (bytes after the length field), `type: u8`,
//! then the body. See `PROTOCOL.md` for every body layout.

use std::fmt;

/// Bytes in front of every frame body: `length: u32` + `type: u8`.
pub const FRAME_HEADER_LEN: usize = 5;

/// Size of the length field that opens every frame.
pub const LENGTH_FIELD_LEN: usize = 4;

/// Default cap on a frame's length field (type byte + body): room for an
/// 8 MiB batch payload plus its extent table and fixed fields.
pub const DEFAULT_MAX_FRAME_LEN: usize = 8 * 1024 * 1024 + 64 * 1024;

/// Most extents one [`ExtentBatch`](crate::ExtentBatch) may carry.
pub const MAX_EXTENTS_PER_BATCH: usize = 65_536;

/// Most images one [`Commit`](crate::Commit) may list.
pub const MAX_COMMIT_IMAGES: usize = 1_024;

/// Most hashes one [`HashAnswer`](crate::HashAnswer) may carry (and so the most
/// granules one [`HashRequest`](crate::HashRequest) may ask for).
pub const MAX_HASHES_PER_ANSWER: usize = 65_536;

/// Longest string field (the [`ErrorFrame`](crate::ErrorFrame) message), in bytes.
pub const MAX_STRING_LEN: usize = 4_096;

/// Wire size of one [`ExtentHeader`](crate::ExtentHeader): offset u64, length
/// u32, kind u8, codec u8, encoded_len u32, no padding.
pub const EXTENT_HEADER_WIRE_LEN: usize = 18;

/// Smallest wire size of one [`CommitImage`](crate::CommitImage): a one-byte
/// name (with its length byte) and three u64s.
pub const COMMIT_IMAGE_MIN_WIRE_LEN: usize = 2 + 3 * 8;

/// Wire size of one hash in a [`HashAnswer`](crate::HashAnswer).
pub const HASH_WIRE_LEN: usize = 32;

/// The type byte of each frame, one per [`Message`](crate::Message) variant.
///
/// The discriminants are the wire codes; they never change meaning. A new
/// frame gets a new code and a new protocol version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameType {
    /// [`Hello`](crate::Hello).
    Hello = 0x01,
    /// [`OpenImage`](crate::OpenImage).
    OpenImage = 0x02,
    /// [`ResumeQuery`](crate::ResumeQuery).
    ResumeQuery = 0x03,
    /// [`ResumeAnswer`](crate::ResumeAnswer).
    ResumeAnswer = 0x04,
    /// [`ExtentBatch`](crate::ExtentBatch).
    ExtentBatch = 0x05,
    /// [`Commit`](crate::Commit).
    Commit = 0x06,
    /// [`Committed`](crate::Committed).
    Committed = 0x07,
    /// [`Ack`](crate::Ack).
    Ack = 0x08,
    /// [`Nack`](crate::Nack).
    Nack = 0x09,
    /// [`HashRequest`](crate::HashRequest).
    HashRequest = 0x0A,
    /// [`HashAnswer`](crate::HashAnswer).
    HashAnswer = 0x0B,
    /// [`ErrorFrame`](crate::ErrorFrame).
    Error = 0x7F,
}

impl FrameType {
    /// Every frame type, in code order.
    pub const ALL: [FrameType; 12] = [
        Self::Hello,
        Self::OpenImage,
        Self::ResumeQuery,
        Self::ResumeAnswer,
        Self::ExtentBatch,
        Self::Commit,
        Self::Committed,
        Self::Ack,
        Self::Nack,
        Self::HashRequest,
        Self::HashAnswer,
        Self::Error,
    ];

    /// The wire code.
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// The frame type for a wire code, if known.
    pub const fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0x01 => Self::Hello,
            0x02 => Self::OpenImage,
            0x03 => Self::ResumeQuery,
            0x04 => Self::ResumeAnswer,
            0x05 => Self::ExtentBatch,
            0x06 => Self::Commit,
            0x07 => Self::Committed,
            0x08 => Self::Ack,
            0x09 => Self::Nack,
            0x0A => Self::HashRequest,
            0x0B => Self::HashAnswer,
            0x7F => Self::Error,
            _ => return None,
        })
    }

    /// The frame's name as used in documentation and error messages.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Hello => "Hello",
            Self::OpenImage => "OpenImage",
            Self::ResumeQuery => "ResumeQuery",
            Self::ResumeAnswer => "ResumeAnswer",
            Self::ExtentBatch => "ExtentBatch",
            Self::Commit => "Commit",
            Self::Committed => "Committed",
            Self::Ack => "Ack",
            Self::Nack => "Nack",
            Self::HashRequest => "HashRequest",
            Self::HashAnswer => "HashAnswer",
            Self::Error => "Error",
        }
    }
}

impl fmt::Display for FrameType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_the_documented_ones() {
        let expected: [u8; 12] = [
            0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0A, 0x0B, 0x7F,
        ];
        for (ty, code) in FrameType::ALL.iter().zip(expected) {
            assert_eq!(ty.code(), code, "{ty}");
            assert_eq!(FrameType::from_code(code), Some(*ty));
        }
        let known = (0..=u8::MAX)
            .filter(|c| FrameType::from_code(*c).is_some())
            .count();
        assert_eq!(known, FrameType::ALL.len());
    }
}
