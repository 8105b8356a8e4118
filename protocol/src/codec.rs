//! The codec: [`Message::encode`], [`ExtentBatch::encode_header`],
//! [`FrameDecoder`] and [`decode_frame_body`].
//!
//! Encoding computes the exact frame size first, validates the message and
//! the frame cap, and only then writes, so a failed call leaves the output
//! untouched. Decoding parses the body from a borrowed slice, so a failed call
//! leaves the input untouched too (repeating it repeats the error); only a
//! frame that decoded successfully is split off the buffer. The batch payload
//! is a zero-copy slice of that frame.
//!
//! Encoding is here; decoding in `codec/decode.rs`; tests in `codec/tests.rs`.

mod decode;
#[cfg(test)]
mod tests;

pub use decode::{decode_frame_body, FrameDecoder};

use bytes::{BufMut, BytesMut};

use crate::error::EncodeError;
use crate::frame::{
    FrameType, EXTENT_HEADER_WIRE_LEN, FRAME_HEADER_LEN, HASH_WIRE_LEN, LENGTH_FIELD_LEN,
    MAX_STRING_LEN,
};
use crate::message::{
    Ack, Commit, Committed, ErrorCode, ErrorFrame, ExtentBatch, HashAnswer, HashRequest, Hello,
    Message, Nack, OpenImage, ResumeAnswer, ResumeQuery,
};
use crate::types::ImageName;

// ---------------------------------------------------------------------------
// Sizes
// ---------------------------------------------------------------------------

/// Wire size of an image name: length byte + bytes.
fn name_len(name: &ImageName) -> usize {
    1 + name.as_str().len()
}

/// Fixed part of an ExtentBatch body after the image name: epoch, seq,
/// scan_start, scan_end (4 × u64), crc (u32), blake3 (32), count (u32).
const BATCH_FIXED_LEN: usize = 4 * 8 + 4 + 32 + 4;

impl ExtentBatch {
    /// Body bytes before the payload.
    fn header_body_len(&self) -> usize {
        name_len(&self.image) + BATCH_FIXED_LEN + self.extents.len() * EXTENT_HEADER_WIRE_LEN
    }
}

impl Message {
    /// The frame type of this message.
    pub const fn frame_type(&self) -> FrameType {
        match self {
            Message::Hello(_) => FrameType::Hello,
            Message::OpenImage(_) => FrameType::OpenImage,
            Message::ResumeQuery(_) => FrameType::ResumeQuery,
            Message::ResumeAnswer(_) => FrameType::ResumeAnswer,
            Message::ExtentBatch(_) => FrameType::ExtentBatch,
            Message::Commit(_) => FrameType::Commit,
            Message::Committed(_) => FrameType::Committed,
            Message::Ack(_) => FrameType::Ack,
            Message::Nack(_) => FrameType::Nack,
            Message::HashRequest(_) => FrameType::HashRequest,
            Message::HashAnswer(_) => FrameType::HashAnswer,
            Message::Error(_) => FrameType::Error,
        }
    }

    /// The type byte of this message's frame.
    pub const fn type_code(&self) -> u8 {
        self.frame_type().code()
    }

    /// Body length in bytes (payload included), without the 5-byte header.
    fn body_len(&self) -> usize {
        match self {
            Message::Hello(_) => 2 + 2 + 32 + 8,
            Message::OpenImage(m) => name_len(&m.image) + 8 + 4 + 8 + 8,
            Message::ResumeQuery(m) => name_len(&m.image) + 8,
            Message::ResumeAnswer(m) => name_len(&m.image) + 4 * 8,
            Message::ExtentBatch(m) => m.header_body_len() + m.payload.len(),
            Message::Commit(m) => {
                8 + 8
                    + 1
                    + 4
                    + m.images
                        .iter()
                        .map(|i| name_len(&i.image) + 3 * 8)
                        .sum::<usize>()
            }
            Message::Committed(_) => 8,
            Message::Ack(m) => name_len(&m.image) + 2 * 8,
            Message::Nack(m) => name_len(&m.image) + 2 * 8 + 1,
            Message::HashRequest(m) => name_len(&m.image) + 8 + 8 + 4,
            Message::HashAnswer(m) => {
                name_len(&m.image) + 3 * 8 + 4 + 4 + m.hashes.len() * HASH_WIRE_LEN
            }
            Message::Error(m) => 2 + 2 + m.message.len(),
        }
    }

    /// Total bytes [`Message::encode`] writes: header, body and payload.
    pub fn encoded_len(&self) -> usize {
        FRAME_HEADER_LEN + self.body_len()
    }
}

/// Checks a frame's length field against the cap and the u32 field.
fn check_frame_len(
    frame: FrameType,
    body_len: usize,
    max_frame_len: usize,
) -> Result<u32, EncodeError> {
    let max = max_frame_len.min(u32::MAX as usize);
    let len = body_len.saturating_add(1);
    if len > max {
        return Err(EncodeError::FrameTooLarge { frame, len, max });
    }
    // len <= max <= u32::MAX, so the conversion cannot fail; map rather than panic anyway.
    u32::try_from(len).map_err(|_| EncodeError::FrameTooLarge { frame, len, max })
}

// ---------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------

fn put_name(out: &mut BytesMut, name: &ImageName) {
    let bytes = name.as_str().as_bytes();
    // ImageName guarantees 1..=MAX_IMAGE_NAME_LEN (128) bytes, which fits a u8.
    out.put_u8(bytes.len() as u8);
    out.put_slice(bytes);
}

fn put_bool(out: &mut BytesMut, value: bool) {
    out.put_u8(u8::from(value));
}

/// Converts a list length that validation already capped to its u32 count field.
fn count_u32(len: usize) -> u32 {
    // Every list is capped at <= 65_536 elements by validation before encoding.
    u32::try_from(len).unwrap_or(u32::MAX)
}

impl Message {
    /// Appends this message as one frame to `out`.
    ///
    /// Fails, leaving `out` untouched, when the message breaks a protocol
    /// rule ([`Message::validate`]) or the frame's length field would exceed
    /// `max_frame_len`. An [`ExtentBatch`]'s payload is copied into `out`;
    /// use [`ExtentBatch::encode_header`] to send it without copying.
    pub fn encode(&self, out: &mut BytesMut, max_frame_len: usize) -> Result<(), EncodeError> {
        if let Message::ExtentBatch(batch) = self {
            return batch.encode_frame(out, max_frame_len, true);
        }
        self.validate()?;
        let frame_len = check_frame_len(self.frame_type(), self.body_len(), max_frame_len)?;
        out.reserve(LENGTH_FIELD_LEN + frame_len as usize);
        let start = out.len();
        out.put_u32_le(frame_len);
        out.put_u8(self.type_code());
        match self {
            Message::Hello(m) => {
                out.put_u16_le(m.min_version);
                out.put_u16_le(m.max_version);
                out.put_slice(&m.agent_id.0);
                out.put_u64_le(m.capabilities.0);
            }
            Message::OpenImage(m) => {
                put_name(out, &m.image);
                out.put_u64_le(m.size);
                out.put_u32_le(m.block_size);
                out.put_u64_le(m.epoch.0);
                out.put_u64_le(m.base_epoch.0);
            }
            Message::ResumeQuery(m) => {
                put_name(out, &m.image);
                out.put_u64_le(m.epoch.0);
            }
            Message::ResumeAnswer(m) => {
                put_name(out, &m.image);
                out.put_u64_le(m.epoch.0);
                out.put_u64_le(m.committed_epoch.0);
                out.put_u64_le(m.durable_seq.0);
                out.put_u64_le(m.resume_offset);
            }
            Message::Commit(m) => {
                out.put_u64_le(m.recovery_point.0);
                out.put_u64_le(m.created_unix_ms);
                put_bool(out, m.fuzzy);
                out.put_u32_le(count_u32(m.images.len()));
                for image in &m.images {
                    put_name(out, &image.image);
                    out.put_u64_le(image.epoch.0);
                    out.put_u64_le(image.last_seq.0);
                    out.put_u64_le(image.size);
                }
            }
            Message::Committed(m) => out.put_u64_le(m.recovery_point.0),
            Message::Ack(m) => {
                put_name(out, &m.image);
                out.put_u64_le(m.epoch.0);
                out.put_u64_le(m.durable_seq.0);
            }
            Message::Nack(m) => {
                put_name(out, &m.image);
                out.put_u64_le(m.epoch.0);
                out.put_u64_le(m.seq.0);
                out.put_u8(m.reason.code());
            }
            Message::HashRequest(m) => {
                put_name(out, &m.image);
                out.put_u64_le(m.offset);
                out.put_u64_le(m.length);
                out.put_u32_le(m.granularity);
            }
            Message::HashAnswer(m) => {
                put_name(out, &m.image);
                out.put_u64_le(m.recovery_point.0);
                out.put_u64_le(m.image_size);
                out.put_u64_le(m.offset);
                out.put_u32_le(m.granularity);
                out.put_u32_le(count_u32(m.hashes.len()));
                for hash in &m.hashes {
                    out.put_slice(hash);
                }
            }
            Message::Error(m) => {
                out.put_u16_le(m.code.code());
                // validate() capped the message at MAX_STRING_LEN (4096), which fits a u16.
                out.put_u16_le(m.message.len() as u16);
                out.put_slice(m.message.as_bytes());
            }
            Message::ExtentBatch(_) => {} // handled above
        }
        debug_assert_eq!(out.len() - start, self.encoded_len());
        Ok(())
    }
}

impl ExtentBatch {
    /// Writes the frame (length + type + body) WITHOUT the payload bytes, so
    /// the caller can send `self.payload` right after it without copying. The
    /// length field already counts the payload.
    ///
    /// Fails, leaving `out` untouched, when the batch breaks a protocol rule
    /// ([`ExtentBatch::validate`]) or the frame would exceed `max_frame_len`.
    pub fn encode_header(
        &self,
        out: &mut BytesMut,
        max_frame_len: usize,
    ) -> Result<(), EncodeError> {
        self.encode_frame(out, max_frame_len, false)
    }

    /// Bytes [`ExtentBatch::encode_header`] writes (header and extent table,
    /// no payload).
    pub fn encoded_header_len(&self) -> usize {
        FRAME_HEADER_LEN + self.header_body_len()
    }

    fn encode_frame(
        &self,
        out: &mut BytesMut,
        max_frame_len: usize,
        with_payload: bool,
    ) -> Result<(), EncodeError> {
        self.validate()?;
        let header_body_len = self.header_body_len();
        let frame_len = check_frame_len(
            FrameType::ExtentBatch,
            header_body_len + self.payload.len(),
            max_frame_len,
        )?;
        let written = if with_payload {
            LENGTH_FIELD_LEN + frame_len as usize
        } else {
            FRAME_HEADER_LEN + header_body_len
        };
        out.reserve(written);
        let start = out.len();
        out.put_u32_le(frame_len);
        out.put_u8(FrameType::ExtentBatch.code());
        put_name(out, &self.image);
        out.put_u64_le(self.epoch.0);
        out.put_u64_le(self.seq.0);
        out.put_u64_le(self.scan_start);
        out.put_u64_le(self.scan_end);
        out.put_u32_le(self.payload_crc32c);
        out.put_slice(&self.plain_blake3);
        out.put_u32_le(count_u32(self.extents.len()));
        // Grow once and fill the table in place: one bounds check per extent
        // instead of five capacity checks.
        let table_start = out.len();
        out.resize(table_start + self.extents.len() * EXTENT_HEADER_WIRE_LEN, 0);
        for (slot, extent) in out[table_start..]
            .chunks_exact_mut(EXTENT_HEADER_WIRE_LEN)
            .zip(&self.extents)
        {
            slot[0..8].copy_from_slice(&extent.offset.to_le_bytes());
            slot[8..12].copy_from_slice(&extent.length.to_le_bytes());
            slot[12] = extent.kind.code();
            slot[13] = extent.codec.code();
            slot[14..18].copy_from_slice(&extent.encoded_len.to_le_bytes());
        }
        if with_payload {
            out.put_slice(&self.payload);
        }
        debug_assert_eq!(out.len() - start, written);
        Ok(())
    }
}

impl ErrorFrame {
    /// An error frame whose message is cut (at a character boundary) to the
    /// 4096-byte string cap, so it always encodes.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.len() > MAX_STRING_LEN {
            let mut end = MAX_STRING_LEN;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        Self { code, message }
    }
}

macro_rules! message_from {
    ($($variant:ident($ty:ty)),* $(,)?) => {$(
        impl From<$ty> for Message {
            fn from(value: $ty) -> Self {
                Message::$variant(value)
            }
        }
    )*};
}

message_from!(
    Hello(Hello),
    OpenImage(OpenImage),
    ResumeQuery(ResumeQuery),
    ResumeAnswer(ResumeAnswer),
    ExtentBatch(ExtentBatch),
    Commit(Commit),
    Committed(Committed),
    Ack(Ack),
    Nack(Nack),
    HashRequest(HashRequest),
    HashAnswer(HashAnswer),
    Error(ErrorFrame),
);
