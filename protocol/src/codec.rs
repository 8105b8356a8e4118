//! The codec: [`Message::encode`], [`ExtentBatch::encode_header`],
//! [`FrameDecoder`] and [`decode_frame_body`].
//!
//! Encoding computes the exact frame size first, validates the message and
//! the frame cap, and only then writes, so a failed call leaves the output
//! untouched. Decoding parses the body from a borrowed slice, so a failed call
//! leaves the input untouched too (repeating it repeats the error); only a
//! frame that decoded successfully is split off the buffer. The batch payload
//! is a zero-copy slice of that frame.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError, ValidationError};
use crate::frame::{
    FrameType, COMMIT_IMAGE_MIN_WIRE_LEN, DEFAULT_MAX_FRAME_LEN, EXTENT_HEADER_WIRE_LEN,
    FRAME_HEADER_LEN, HASH_WIRE_LEN, LENGTH_FIELD_LEN, MAX_COMMIT_IMAGES, MAX_EXTENTS_PER_BATCH,
    MAX_HASHES_PER_ANSWER, MAX_STRING_LEN,
};
use crate::message::{
    Ack, Capabilities, Commit, CommitImage, Committed, ErrorCode, ErrorFrame, ExtentBatch,
    HashAnswer, HashRequest, Hello, Message, Nack, NackReason, OpenImage, ResumeAnswer,
    ResumeQuery,
};
use crate::types::{
    AgentId, Codec, Epoch, ExtentHeader, ExtentKind, ImageName, RecoveryPointId, SeqNo,
};
use crate::validate::{
    check_count, check_error_frame, check_extents, check_hash_request, check_scan_range,
};

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

// ---------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------

/// Cursor over a frame body that reports every short read as a typed error.
struct Reader<'a> {
    body: &'a [u8],
    pos: usize,
    frame: FrameType,
}

impl<'a> Reader<'a> {
    fn new(frame: FrameType, body: &'a [u8]) -> Self {
        Self {
            body,
            pos: 0,
            frame,
        }
    }

    fn remaining(&self) -> usize {
        self.body.len() - self.pos
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let available = self.remaining();
        if n > available {
            return Err(DecodeError::Truncated {
                frame: self.frame,
                field,
                offset: self.pos,
                needed: n,
                available,
            });
        }
        let bytes = &self.body[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let offset = self.pos;
        let bytes = self.take(N, field)?;
        // take() returned exactly N bytes; the error arm is unreachable.
        <[u8; N]>::try_from(bytes).map_err(|_| DecodeError::Truncated {
            frame: self.frame,
            field,
            offset,
            needed: N,
            available: bytes.len(),
        })
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        self.array(field).map(u16::from_le_bytes)
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        self.array(field).map(u32::from_le_bytes)
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        self.array(field).map(u64::from_le_bytes)
    }

    fn bool(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        let offset = self.pos;
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(DecodeError::BadBool {
                frame: self.frame,
                field,
                offset,
                value,
            }),
        }
    }

    fn image_name(&mut self, field: &'static str) -> Result<ImageName, DecodeError> {
        let offset = self.pos;
        let len = self.u8(field)?;
        let bytes = self.take(usize::from(len), field)?;
        ImageName::from_bytes(bytes).map_err(|source| DecodeError::BadImageName {
            frame: self.frame,
            field,
            offset,
            source,
        })
    }

    fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let offset = self.pos;
        let len = usize::from(self.u16(field)?);
        if len > MAX_STRING_LEN {
            return Err(ValidationError::StringTooLong {
                frame: self.frame,
                field,
                len,
                max: MAX_STRING_LEN,
            }
            .into());
        }
        let bytes = self.take(len, field)?;
        let text = std::str::from_utf8(bytes).map_err(|source| DecodeError::BadUtf8 {
            frame: self.frame,
            field,
            offset,
            source,
        })?;
        Ok(text.to_owned())
    }

    /// Reads a u32 element count and checks it against the cap and against
    /// the bytes left, so the caller may allocate `count` elements.
    fn count(
        &mut self,
        field: &'static str,
        max: usize,
        min_element_len: usize,
    ) -> Result<usize, DecodeError> {
        let offset = self.pos;
        let count = self.u32(field)?;
        let count_usize = count as usize;
        check_count(self.frame, field, count_usize, max)?;
        let needed = u64::from(count) * min_element_len as u64;
        let available = self.remaining();
        if needed > available as u64 {
            return Err(DecodeError::CountExceedsBody {
                frame: self.frame,
                field,
                offset,
                count,
                needed,
                available,
            });
        }
        Ok(count_usize)
    }

    /// Succeeds when every byte was consumed.
    fn finish(self) -> Result<(), DecodeError> {
        if self.pos != self.body.len() {
            return Err(DecodeError::TrailingBytes {
                frame: self.frame,
                offset: self.pos,
                len: self.remaining(),
            });
        }
        Ok(())
    }
}

/// Parses a frame body. An [`ExtentBatch`] comes back with an empty payload
/// and the offset in `body` where its payload starts; the caller slices it.
fn parse_body(frame_type: u8, body: &[u8]) -> Result<(Message, Option<usize>), DecodeError> {
    let frame =
        FrameType::from_code(frame_type).ok_or(DecodeError::UnknownFrameType { frame_type })?;
    let mut r = Reader::new(frame, body);
    let message = match frame {
        FrameType::Hello => Message::Hello(Hello {
            min_version: r.u16("min_version")?,
            max_version: r.u16("max_version")?,
            agent_id: AgentId(r.array("agent_id")?),
            capabilities: Capabilities(r.u64("capabilities")?),
        }),
        FrameType::OpenImage => Message::OpenImage(OpenImage {
            image: r.image_name("image")?,
            size: r.u64("size")?,
            block_size: r.u32("block_size")?,
            epoch: Epoch(r.u64("epoch")?),
            base_epoch: Epoch(r.u64("base_epoch")?),
        }),
        FrameType::ResumeQuery => Message::ResumeQuery(ResumeQuery {
            image: r.image_name("image")?,
            epoch: Epoch(r.u64("epoch")?),
        }),
        FrameType::ResumeAnswer => Message::ResumeAnswer(ResumeAnswer {
            image: r.image_name("image")?,
            epoch: Epoch(r.u64("epoch")?),
            committed_epoch: Epoch(r.u64("committed_epoch")?),
            durable_seq: SeqNo(r.u64("durable_seq")?),
            resume_offset: r.u64("resume_offset")?,
        }),
        FrameType::ExtentBatch => {
            let (batch, payload_start) = parse_batch(&mut r)?;
            return Ok((Message::ExtentBatch(batch), Some(payload_start)));
        }
        FrameType::Commit => {
            let recovery_point = RecoveryPointId(r.u64("recovery_point")?);
            let created_unix_ms = r.u64("created_unix_ms")?;
            let fuzzy = r.bool("fuzzy")?;
            let count = r.count("images", MAX_COMMIT_IMAGES, COMMIT_IMAGE_MIN_WIRE_LEN)?;
            let mut images = Vec::with_capacity(count);
            for _ in 0..count {
                images.push(CommitImage {
                    image: r.image_name("images[].image")?,
                    epoch: Epoch(r.u64("images[].epoch")?),
                    last_seq: SeqNo(r.u64("images[].last_seq")?),
                    size: r.u64("images[].size")?,
                });
            }
            Message::Commit(Commit {
                recovery_point,
                created_unix_ms,
                fuzzy,
                images,
            })
        }
        FrameType::Committed => Message::Committed(Committed {
            recovery_point: RecoveryPointId(r.u64("recovery_point")?),
        }),
        FrameType::Ack => Message::Ack(Ack {
            image: r.image_name("image")?,
            epoch: Epoch(r.u64("epoch")?),
            durable_seq: SeqNo(r.u64("durable_seq")?),
        }),
        FrameType::Nack => {
            let image = r.image_name("image")?;
            let epoch = Epoch(r.u64("epoch")?);
            let seq = SeqNo(r.u64("seq")?);
            let code = r.u8("reason")?;
            let reason =
                NackReason::from_code(code).ok_or(DecodeError::UnknownNackReason { code })?;
            Message::Nack(Nack {
                image,
                epoch,
                seq,
                reason,
            })
        }
        FrameType::HashRequest => {
            let image = r.image_name("image")?;
            let offset = r.u64("offset")?;
            let length = r.u64("length")?;
            let granularity = r.u32("granularity")?;
            check_hash_request(offset, length, granularity)?;
            Message::HashRequest(HashRequest {
                image,
                offset,
                length,
                granularity,
            })
        }
        FrameType::HashAnswer => {
            let image = r.image_name("image")?;
            let recovery_point = RecoveryPointId(r.u64("recovery_point")?);
            let image_size = r.u64("image_size")?;
            let offset = r.u64("offset")?;
            let granularity = r.u32("granularity")?;
            if granularity == 0 {
                return Err(ValidationError::ZeroGranularity { frame }.into());
            }
            let count = r.count("hashes", MAX_HASHES_PER_ANSWER, HASH_WIRE_LEN)?;
            let mut hashes = Vec::with_capacity(count);
            for _ in 0..count {
                hashes.push(r.array("hashes[]")?);
            }
            Message::HashAnswer(HashAnswer {
                image,
                recovery_point,
                image_size,
                offset,
                granularity,
                hashes,
            })
        }
        FrameType::Error => {
            let code = ErrorCode::from_code(r.u16("code")?);
            let message = r.string("message")?;
            check_error_frame(code, message.len())?;
            Message::Error(ErrorFrame { code, message })
        }
    };
    r.finish()?;
    Ok((message, None))
}

/// Parses an ExtentBatch body up to its payload and checks every batch rule.
fn parse_batch(r: &mut Reader<'_>) -> Result<(ExtentBatch, usize), DecodeError> {
    let image = r.image_name("image")?;
    let epoch = Epoch(r.u64("epoch")?);
    let seq = SeqNo(r.u64("seq")?);
    let scan_start = r.u64("scan_start")?;
    let scan_end = r.u64("scan_end")?;
    check_scan_range(scan_start, scan_end)?;
    let payload_crc32c = r.u32("payload_crc32c")?;
    let plain_blake3 = r.array("plain_blake3")?;
    let count = r.count("extents", MAX_EXTENTS_PER_BATCH, EXTENT_HEADER_WIRE_LEN)?;
    // count() checked that the whole table is present: take it in one piece
    // and parse fixed-size records (one bounds check per extent, not five).
    let table = r.take(count * EXTENT_HEADER_WIRE_LEN, "extents")?;
    let mut extents = Vec::with_capacity(count);
    for (index, record) in table.chunks_exact(EXTENT_HEADER_WIRE_LEN).enumerate() {
        let record: &[u8; EXTENT_HEADER_WIRE_LEN] =
            record.try_into().map_err(|_| DecodeError::Truncated {
                // chunks_exact yields exactly EXTENT_HEADER_WIRE_LEN bytes; unreachable.
                frame: FrameType::ExtentBatch,
                field: "extents",
                offset: 0,
                needed: EXTENT_HEADER_WIRE_LEN,
                available: record.len(),
            })?;
        let [o0, o1, o2, o3, o4, o5, o6, o7, l0, l1, l2, l3, kind_code, codec_code, e0, e1, e2, e3] =
            *record;
        let kind = ExtentKind::from_code(kind_code).ok_or(DecodeError::UnknownExtentKind {
            index,
            code: kind_code,
        })?;
        let codec = Codec::from_code(codec_code).ok_or(DecodeError::UnknownCodec {
            index,
            code: codec_code,
        })?;
        extents.push(ExtentHeader {
            offset: u64::from_le_bytes([o0, o1, o2, o3, o4, o5, o6, o7]),
            length: u32::from_le_bytes([l0, l1, l2, l3]),
            kind,
            codec,
            encoded_len: u32::from_le_bytes([e0, e1, e2, e3]),
        });
    }
    let payload_start = r.pos;
    check_extents(&extents, r.remaining() as u64)?;
    let batch = ExtentBatch {
        image,
        epoch,
        seq,
        scan_start,
        scan_end,
        payload_crc32c,
        plain_blake3,
        extents,
        payload: Bytes::new(),
    };
    Ok((batch, payload_start))
}

/// Decodes one frame body (the bytes after the type byte) of type
/// `frame_type`. An [`ExtentBatch`]'s payload is a zero-copy slice of `body`.
pub fn decode_frame_body(frame_type: u8, body: Bytes) -> Result<Message, DecodeError> {
    let (mut message, payload_start) = parse_body(frame_type, &body)?;
    if let (Message::ExtentBatch(batch), Some(start)) = (&mut message, payload_start) {
        batch.payload = body.slice(start..);
    }
    Ok(message)
}

/// Splits a byte stream into frames and decodes them. Stateless apart from
/// its frame cap, so one decoder may serve many streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameDecoder {
    max_frame_len: usize,
}

impl Default for FrameDecoder {
    /// A decoder with [`DEFAULT_MAX_FRAME_LEN`].
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME_LEN)
    }
}

impl FrameDecoder {
    /// A decoder that rejects frames whose length field (type byte + body)
    /// exceeds `max_frame_len`.
    pub fn new(max_frame_len: usize) -> Self {
        Self { max_frame_len }
    }

    /// The frame cap.
    pub fn max_frame_len(&self) -> usize {
        self.max_frame_len
    }

    /// The next frame's length field, once its 4 bytes are in `buf`; checked
    /// against the cap before any of the body is needed.
    fn frame_len(&self, buf: &[u8]) -> Result<Option<usize>, DecodeError> {
        let Some(field) = buf.get(..LENGTH_FIELD_LEN) else {
            return Ok(None);
        };
        let mut raw = [0u8; LENGTH_FIELD_LEN];
        raw.copy_from_slice(field);
        let len = u32::from_le_bytes(raw) as usize;
        if len > self.max_frame_len {
            return Err(DecodeError::FrameTooLarge {
                len,
                max: self.max_frame_len,
            });
        }
        if len == 0 {
            return Err(DecodeError::EmptyFrame);
        }
        Ok(Some(len))
    }

    /// Decodes the frame at the front of `buf`.
    ///
    /// `Ok(None)`: `buf` does not hold a whole frame yet and is untouched
    /// (see [`FrameDecoder::bytes_needed`]). `Ok(Some(msg))`: exactly one
    /// frame was consumed from `buf`. `Err(_)`: the stream is malformed and
    /// `buf` is untouched (decoding again gives the same error); send
    /// [`DecodeError::to_error_frame`] and close.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Message>, DecodeError> {
        let Some(len) = self.frame_len(buf)? else {
            return Ok(None);
        };
        let total = LENGTH_FIELD_LEN + len;
        if buf.len() < total {
            return Ok(None);
        }
        let (message, payload_start) =
            parse_body(buf[LENGTH_FIELD_LEN], &buf[FRAME_HEADER_LEN..total])?;
        let mut frame = buf.split_to(total);
        match (message, payload_start) {
            (Message::ExtentBatch(mut batch), Some(start)) => {
                frame.advance(FRAME_HEADER_LEN + start);
                batch.payload = frame.freeze();
                Ok(Some(Message::ExtentBatch(batch)))
            }
            (message, _) => Ok(Some(message)),
        }
    }

    /// How many more bytes `buf` needs before [`FrameDecoder::decode`] can
    /// return a frame: the rest of the length field while it is incomplete,
    /// then the rest of the frame; 0 when a whole frame is buffered. Fails
    /// as soon as the length field is over the cap.
    pub fn bytes_needed(&self, buf: &BytesMut) -> Result<usize, DecodeError> {
        match self.frame_len(buf)? {
            None => Ok(LENGTH_FIELD_LEN - buf.len()),
            Some(len) => Ok((LENGTH_FIELD_LEN + len).saturating_sub(buf.len())),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::EXTENT_HEADER_WIRE_LEN;
    use crate::types::ImageNameError;

    const MAX: usize = DEFAULT_MAX_FRAME_LEN;

    fn name(s: &str) -> ImageName {
        ImageName::new(s).unwrap()
    }

    /// A whole frame around `body`, built by hand (not by the encoder).
    fn frame(frame_type: u8, body: &[u8]) -> BytesMut {
        let mut out = BytesMut::new();
        out.put_u32_le(u32::try_from(body.len() + 1).unwrap());
        out.put_u8(frame_type);
        out.put_slice(body);
        out
    }

    fn decode_one(mut buf: BytesMut) -> Result<Message, DecodeError> {
        let decoder = FrameDecoder::new(MAX);
        let before = buf.clone();
        match decoder.decode(&mut buf) {
            Ok(Some(message)) => {
                assert!(buf.is_empty(), "one frame must be consumed exactly");
                Ok(message)
            }
            Ok(None) => panic!("a whole frame was buffered but decode wants more"),
            Err(err) => {
                assert_eq!(
                    buf, before,
                    "a failed decode must leave the buffer untouched"
                );
                // decode_frame_body must agree with the streaming decoder.
                let body = before.clone().freeze().slice(FRAME_HEADER_LEN..);
                assert_eq!(decode_frame_body(before[4], body), Err(err.clone()));
                Err(err)
            }
        }
    }

    /// Raw extent on the wire: offset, length, kind, codec, encoded_len.
    type RawExtent = (u64, u32, u8, u8, u32);

    /// An ExtentBatch frame built field by field, so invalid batches can be made.
    fn raw_batch(
        scan: (u64, u64),
        extents: &[RawExtent],
        count: Option<u32>,
        payload: &[u8],
    ) -> BytesMut {
        let mut body = BytesMut::new();
        body.put_u8(3);
        body.put_slice(b"vm1");
        body.put_u64_le(7); // epoch
        body.put_u64_le(2); // seq
        body.put_u64_le(scan.0);
        body.put_u64_le(scan.1);
        body.put_u32_le(0xdead_beef);
        body.put_slice(&[0xab; 32]);
        body.put_u32_le(count.unwrap_or(u32::try_from(extents.len()).unwrap()));
        for &(offset, length, kind, codec, encoded_len) in extents {
            body.put_u64_le(offset);
            body.put_u32_le(length);
            body.put_u8(kind);
            body.put_u8(codec);
            body.put_u32_le(encoded_len);
        }
        body.put_slice(payload);
        frame(0x05, &body)
    }

    const DATA: u8 = 0x01;
    const ZERO: u8 = 0x02;
    const DISCARD: u8 = 0x03;
    const RAW: u8 = 0x00;
    const ZSTD: u8 = 0x01;

    fn valid_batch() -> ExtentBatch {
        ExtentBatch {
            image: name("vm1"),
            epoch: Epoch(7),
            seq: SeqNo(2),
            scan_start: 0,
            scan_end: 1 << 20,
            payload_crc32c: 0xdead_beef,
            plain_blake3: [0xab; 32],
            extents: vec![
                ExtentHeader {
                    offset: 0,
                    length: 4,
                    kind: ExtentKind::Data,
                    codec: Codec::Raw,
                    encoded_len: 4,
                },
                ExtentHeader {
                    offset: 4096,
                    length: 4096,
                    kind: ExtentKind::Zero,
                    codec: Codec::Raw,
                    encoded_len: 0,
                },
                ExtentHeader {
                    offset: 8192,
                    length: 4096,
                    kind: ExtentKind::Data,
                    codec: Codec::Zstd,
                    encoded_len: 3,
                },
                ExtentHeader {
                    offset: 12288,
                    length: 512,
                    kind: ExtentKind::Discard,
                    codec: Codec::Raw,
                    encoded_len: 0,
                },
            ],
            payload: Bytes::from_static(b"abcdXYZ"),
        }
    }

    fn invalid(err: Result<Message, DecodeError>) -> ValidationError {
        match err {
            Err(DecodeError::Invalid(v)) => v,
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    fn encode_err(message: impl Into<Message>) -> EncodeError {
        let message = message.into();
        let mut out = BytesMut::from(&b"keep"[..]);
        let err = message.encode(&mut out, MAX).unwrap_err();
        assert_eq!(
            &out[..],
            b"keep",
            "a failed encode must leave the output untouched"
        );
        err
    }

    #[test]
    fn hand_built_valid_batch_decodes_to_the_expected_value() {
        let buf = raw_batch(
            (0, 1 << 20),
            &[
                (0, 4, DATA, RAW, 4),
                (4096, 4096, ZERO, RAW, 0),
                (8192, 4096, DATA, ZSTD, 3),
                (12288, 512, DISCARD, RAW, 0),
            ],
            None,
            b"abcdXYZ",
        );
        assert_eq!(decode_one(buf), Ok(Message::ExtentBatch(valid_batch())));
    }

    #[test]
    fn batch_payload_is_a_zero_copy_slice_of_the_input() {
        let mut buf = BytesMut::new();
        Message::ExtentBatch(valid_batch())
            .encode(&mut buf, MAX)
            .unwrap();
        let payload_at = buf.len() - 7;
        let expected_ptr = buf[payload_at..].as_ptr();
        let Some(Message::ExtentBatch(batch)) = FrameDecoder::new(MAX).decode(&mut buf).unwrap()
        else {
            panic!("expected a batch");
        };
        assert_eq!(
            batch.payload.as_ptr(),
            expected_ptr,
            "FrameDecoder copied the payload"
        );

        let mut buf = BytesMut::new();
        Message::ExtentBatch(valid_batch())
            .encode(&mut buf, MAX)
            .unwrap();
        let body = buf.freeze().slice(FRAME_HEADER_LEN..);
        let expected_ptr = body[body.len() - 7..].as_ptr();
        let Message::ExtentBatch(batch) = decode_frame_body(0x05, body).unwrap() else {
            panic!("expected a batch");
        };
        assert_eq!(
            batch.payload.as_ptr(),
            expected_ptr,
            "decode_frame_body copied the payload"
        );
    }

    #[test]
    fn encode_header_omits_only_the_payload() {
        let batch = valid_batch();
        let mut whole = BytesMut::new();
        Message::ExtentBatch(batch.clone())
            .encode(&mut whole, MAX)
            .unwrap();
        let mut header = BytesMut::new();
        batch.encode_header(&mut header, MAX).unwrap();
        assert_eq!(header.len(), batch.encoded_header_len());
        assert_eq!(header.len() + batch.payload.len(), whole.len());
        assert_eq!(&whole[..header.len()], &header[..]);
        header.extend_from_slice(&batch.payload);
        assert_eq!(decode_one(header), Ok(Message::ExtentBatch(batch)));
    }

    #[test]
    fn unknown_frame_type_is_rejected() {
        for code in [0x00u8, 0x0C, 0x7E, 0x80, 0xFF] {
            assert_eq!(
                decode_one(frame(code, &[])),
                Err(DecodeError::UnknownFrameType { frame_type: code })
            );
        }
    }

    #[test]
    fn empty_frame_is_rejected() {
        let buf = BytesMut::from(&[0u8, 0, 0, 0][..]);
        let decoder = FrameDecoder::new(MAX);
        let mut copy = buf.clone();
        assert_eq!(decoder.decode(&mut copy), Err(DecodeError::EmptyFrame));
        assert_eq!(copy, buf);
        assert_eq!(decoder.bytes_needed(&buf), Err(DecodeError::EmptyFrame));
    }

    #[test]
    fn oversized_length_is_rejected_from_the_length_field_alone() {
        let decoder = FrameDecoder::new(1000);
        // Only the 4 length bytes are buffered: the decoder must not wait for the body.
        let mut buf = BytesMut::from(&1001u32.to_le_bytes()[..]);
        assert_eq!(
            decoder.decode(&mut buf),
            Err(DecodeError::FrameTooLarge {
                len: 1001,
                max: 1000
            })
        );
        assert_eq!(
            decoder.bytes_needed(&buf),
            Err(DecodeError::FrameTooLarge {
                len: 1001,
                max: 1000
            })
        );
        assert_eq!(buf.len(), 4);
        // Exactly at the cap is fine (and needs the rest of the frame).
        let buf = BytesMut::from(&1000u32.to_le_bytes()[..]);
        assert_eq!(decoder.bytes_needed(&buf), Ok(1000));
        let mut buf = BytesMut::from(&u32::MAX.to_le_bytes()[..]);
        assert!(matches!(
            FrameDecoder::default().decode(&mut buf),
            Err(DecodeError::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn bytes_needed_and_partial_frames() {
        let mut full = BytesMut::new();
        Message::Committed(Committed {
            recovery_point: RecoveryPointId(9),
        })
        .encode(&mut full, MAX)
        .unwrap();
        assert_eq!(full.len(), FRAME_HEADER_LEN + 8);
        let decoder = FrameDecoder::new(MAX);
        for cut in 0..full.len() {
            let mut partial = BytesMut::from(&full[..cut]);
            let expected = if cut < 4 { 4 - cut } else { full.len() - cut };
            assert_eq!(decoder.bytes_needed(&partial), Ok(expected), "cut at {cut}");
            assert_eq!(decoder.decode(&mut partial), Ok(None));
            assert_eq!(
                &partial[..],
                &full[..cut],
                "Ok(None) must leave the buffer untouched"
            );
        }
        assert_eq!(decoder.bytes_needed(&full), Ok(0));
    }

    #[test]
    fn decodes_back_to_back_frames_one_at_a_time() {
        let messages = [
            Message::Committed(Committed {
                recovery_point: RecoveryPointId(1),
            }),
            Message::ExtentBatch(valid_batch()),
            Message::Ack(Ack {
                image: name("a"),
                epoch: Epoch(1),
                durable_seq: SeqNo(2),
            }),
        ];
        let mut buf = BytesMut::new();
        for m in &messages {
            m.encode(&mut buf, MAX).unwrap();
        }
        let decoder = FrameDecoder::new(MAX);
        for m in &messages {
            assert_eq!(decoder.decode(&mut buf).unwrap().as_ref(), Some(m));
        }
        assert!(buf.is_empty());
        assert_eq!(decoder.decode(&mut buf), Ok(None));
    }

    #[test]
    fn truncated_bodies_are_rejected() {
        // Ack: name "a", epoch, durable_seq; cut off inside durable_seq.
        let mut body = vec![1, b'a'];
        body.extend_from_slice(&5u64.to_le_bytes());
        body.extend_from_slice(&[1, 2, 3]);
        assert_eq!(
            decode_one(frame(0x08, &body)),
            Err(DecodeError::Truncated {
                frame: FrameType::Ack,
                field: "durable_seq",
                offset: 10,
                needed: 8,
                available: 3
            })
        );
        // Image name length byte says 9 but 2 bytes follow.
        assert_eq!(
            decode_one(frame(0x03, &[9, b'a', b'b'])),
            Err(DecodeError::Truncated {
                frame: FrameType::ResumeQuery,
                field: "image",
                offset: 1,
                needed: 9,
                available: 2
            })
        );
        // Committed with an empty body.
        assert!(matches!(
            decode_one(frame(0x07, &[])),
            Err(DecodeError::Truncated {
                field: "recovery_point",
                ..
            })
        ));
        // A batch cut inside its extent table.
        let mut buf = raw_batch((0, 10), &[(0, 4, DATA, RAW, 4)], None, b"");
        buf.truncate(buf.len() - 1);
        let len = u32::try_from(buf.len() - 4).unwrap();
        buf[..4].copy_from_slice(&len.to_le_bytes());
        // 17 of the 18 extent bytes are left, so the count check fails first.
        assert!(matches!(
            decode_one(buf),
            Err(DecodeError::CountExceedsBody {
                field: "extents",
                count: 1,
                ..
            })
        ));
    }

    #[test]
    fn trailing_bytes_are_rejected_for_every_fixed_frame() {
        for message in sample_messages() {
            if matches!(message, Message::ExtentBatch(_)) {
                continue; // its tail is the payload
            }
            let mut buf = BytesMut::new();
            message.encode(&mut buf, MAX).unwrap();
            let body_end = buf.len() - FRAME_HEADER_LEN;
            buf.put_u8(0);
            let len = u32::try_from(buf.len() - 4).unwrap();
            buf[..4].copy_from_slice(&len.to_le_bytes());
            assert_eq!(
                decode_one(buf),
                Err(DecodeError::TrailingBytes {
                    frame: message.frame_type(),
                    offset: body_end,
                    len: 1
                }),
                "{message:?}"
            );
        }
    }

    #[test]
    fn bad_image_names_are_rejected() {
        let cases: [(&[u8], ImageNameError); 4] = [
            (b"", ImageNameError::Empty),
            (b"../etc", ImageNameError::BadFirstCharacter),
            (
                b"a/b",
                ImageNameError::BadCharacter {
                    byte: b'/',
                    position: 1,
                },
            ),
            (
                b"a\0",
                ImageNameError::BadCharacter {
                    byte: 0,
                    position: 1,
                },
            ),
        ];
        for (raw, why) in cases {
            let mut body = vec![u8::try_from(raw.len()).unwrap()];
            body.extend_from_slice(raw);
            body.extend_from_slice(&1u64.to_le_bytes());
            assert_eq!(
                decode_one(frame(0x03, &body)),
                Err(DecodeError::BadImageName {
                    frame: FrameType::ResumeQuery,
                    field: "image",
                    offset: 0,
                    source: why
                })
            );
        }
        let mut body = vec![200u8];
        body.extend_from_slice(&[b'a'; 200]);
        body.extend_from_slice(&1u64.to_le_bytes());
        assert!(matches!(
            decode_one(frame(0x03, &body)),
            Err(DecodeError::BadImageName {
                source: ImageNameError::TooLong { len: 200 },
                ..
            })
        ));
    }

    #[test]
    fn unknown_kind_codec_and_nack_reason_are_rejected() {
        let buf = raw_batch(
            (0, 10),
            &[(0, 4, DATA, RAW, 4), (8, 1, 0x04, RAW, 0)],
            None,
            b"abcd",
        );
        assert_eq!(
            decode_one(buf),
            Err(DecodeError::UnknownExtentKind {
                index: 1,
                code: 0x04
            })
        );
        let buf = raw_batch((0, 10), &[(0, 4, DATA, 0x02, 4)], None, b"abcd");
        assert_eq!(
            decode_one(buf),
            Err(DecodeError::UnknownCodec {
                index: 0,
                code: 0x02
            })
        );
        let mut body = vec![1, b'a'];
        body.extend_from_slice(&1u64.to_le_bytes());
        body.extend_from_slice(&1u64.to_le_bytes());
        body.push(0x00);
        assert_eq!(
            decode_one(frame(0x09, &body)),
            Err(DecodeError::UnknownNackReason { code: 0 })
        );
        *body.last_mut().unwrap() = 0x04;
        assert_eq!(
            decode_one(frame(0x09, &body)),
            Err(DecodeError::UnknownNackReason { code: 4 })
        );
        *body.last_mut().unwrap() = 0x03;
        assert!(decode_one(frame(0x09, &body)).is_ok());
    }

    #[test]
    fn overlapping_and_unordered_extents_are_rejected() {
        let buf = raw_batch(
            (0, 1 << 20),
            &[
                (0, 4096, ZERO, RAW, 0),
                (4096, 4096, ZERO, RAW, 0),
                (6144, 2048, ZERO, RAW, 0),
                (4096, 1, ZERO, RAW, 0),
            ],
            None,
            b"",
        );
        let err = invalid(decode_one(buf));
        assert_eq!(
            err,
            ValidationError::ExtentOverlap {
                index: 2,
                offset: 6144,
                previous: 1,
                previous_end: 8192
            }
        );
        assert_eq!(
            err.to_string(),
            "ExtentBatch: extent 2 overlaps extent 1 (offset 6144 < 8192)"
        );

        let buf = raw_batch(
            (0, 1 << 20),
            &[(8192, 1, ZERO, RAW, 0), (4096, 1, ZERO, RAW, 0)],
            None,
            b"",
        );
        assert_eq!(
            invalid(decode_one(buf)),
            ValidationError::ExtentOutOfOrder {
                index: 1,
                offset: 4096,
                previous: 0,
                previous_offset: 8192
            }
        );
        // Same offset twice is neither ascending nor disjoint.
        let buf = raw_batch(
            (0, 1 << 20),
            &[(0, 1, ZERO, RAW, 0), (0, 1, ZERO, RAW, 0)],
            None,
            b"",
        );
        assert!(matches!(
            invalid(decode_one(buf)),
            ValidationError::ExtentOverlap { index: 1, .. }
        ));
        // Adjacent extents are fine.
        let buf = raw_batch(
            (0, 1 << 20),
            &[(0, 1, ZERO, RAW, 0), (1, 1, ZERO, RAW, 0)],
            None,
            b"",
        );
        assert!(decode_one(buf).is_ok());

        let mut batch = valid_batch();
        batch.extents.swap(1, 3);
        assert!(matches!(
            encode_err(batch),
            EncodeError::Invalid(ValidationError::ExtentOutOfOrder { index: 2, .. })
        ));
    }

    #[test]
    fn zero_length_and_overflowing_extents_are_rejected() {
        let buf = raw_batch((0, 10), &[(5, 0, ZERO, RAW, 0)], None, b"");
        assert_eq!(
            invalid(decode_one(buf)),
            ValidationError::ZeroLengthExtent {
                index: 0,
                offset: 5
            }
        );
        let buf = raw_batch((0, 10), &[(u64::MAX - 1, 2, ZERO, RAW, 0)], None, b"");
        assert_eq!(
            invalid(decode_one(buf)),
            ValidationError::ExtentEndOverflow {
                index: 0,
                offset: u64::MAX - 1,
                length: 2
            }
        );
        // Ending exactly at 2^64 - 1 is representable.
        let buf = raw_batch((0, 10), &[(u64::MAX - 2, 2, ZERO, RAW, 0)], None, b"");
        assert!(decode_one(buf).is_ok());

        let mut batch = valid_batch();
        batch.extents[1].length = 0;
        assert!(matches!(
            encode_err(batch),
            EncodeError::Invalid(ValidationError::ZeroLengthExtent { index: 1, .. })
        ));
        let mut batch = valid_batch();
        batch.extents.truncate(3);
        batch.extents[2].offset = u64::MAX - 100;
        assert!(matches!(
            encode_err(batch),
            EncodeError::Invalid(ValidationError::ExtentEndOverflow { index: 2, .. })
        ));
    }

    #[test]
    fn non_data_extents_must_be_raw_and_empty() {
        for (kind, codec, encoded_len) in [
            (ZERO, ZSTD, 0),
            (ZERO, RAW, 1),
            (DISCARD, ZSTD, 0),
            (DISCARD, RAW, 4),
        ] {
            let payload = vec![0u8; encoded_len as usize];
            let buf = raw_batch((0, 10), &[(0, 4, kind, codec, encoded_len)], None, &payload);
            assert!(
                matches!(
                    invalid(decode_one(buf)),
                    ValidationError::NonDataExtentWithPayload { index: 0, .. }
                ),
                "kind {kind} codec {codec} encoded_len {encoded_len}"
            );
        }
        let mut batch = valid_batch();
        batch.extents[1].codec = Codec::Zstd;
        assert!(matches!(
            encode_err(batch),
            EncodeError::Invalid(ValidationError::NonDataExtentWithPayload { index: 1, .. })
        ));
    }

    #[test]
    fn data_extent_sizes_must_match() {
        let buf = raw_batch((0, 10), &[(0, 4, DATA, RAW, 3)], None, b"abc");
        assert_eq!(
            invalid(decode_one(buf)),
            ValidationError::RawLengthMismatch {
                index: 0,
                length: 4,
                encoded_len: 3
            }
        );
        let buf = raw_batch((0, 10), &[(0, 4, DATA, ZSTD, 0)], None, b"");
        assert_eq!(
            invalid(decode_one(buf)),
            ValidationError::EmptyZstdExtent { index: 0 }
        );
        // A zstd extent may be larger than its plain length (incompressible data).
        let buf = raw_batch((0, 10), &[(0, 4, DATA, ZSTD, 9)], None, b"123456789");
        assert!(decode_one(buf).is_ok());
    }

    #[test]
    fn payload_length_must_equal_the_sum_of_encoded_lengths() {
        let buf = raw_batch((0, 10), &[(0, 4, DATA, RAW, 4)], None, b"abcde");
        assert_eq!(
            invalid(decode_one(buf)),
            ValidationError::PayloadLengthMismatch {
                expected: 4,
                actual: 5
            }
        );
        let buf = raw_batch(
            (0, 10),
            &[(0, 4, DATA, RAW, 4), (4, 4, DATA, ZSTD, 2)],
            None,
            b"abcd",
        );
        assert_eq!(
            invalid(decode_one(buf)),
            ValidationError::PayloadLengthMismatch {
                expected: 6,
                actual: 4
            }
        );
        let buf = raw_batch((0, 10), &[], None, b"x");
        assert_eq!(
            invalid(decode_one(buf)),
            ValidationError::PayloadLengthMismatch {
                expected: 0,
                actual: 1
            }
        );
        // An empty batch (no extents, no payload) only moves scan_end forward.
        assert!(decode_one(raw_batch((0, 10), &[], None, b"")).is_ok());

        let mut batch = valid_batch();
        batch.payload = Bytes::from_static(b"abcdXY");
        assert_eq!(
            encode_err(batch.clone()),
            EncodeError::Invalid(ValidationError::PayloadLengthMismatch {
                expected: 7,
                actual: 6
            })
        );
        let mut out = BytesMut::new();
        assert!(batch.encode_header(&mut out, MAX).is_err());
        assert!(out.is_empty());
    }

    #[test]
    fn reversed_scan_range_is_rejected() {
        let buf = raw_batch((11, 10), &[], None, b"");
        assert_eq!(
            invalid(decode_one(buf)),
            ValidationError::ScanRangeReversed {
                scan_start: 11,
                scan_end: 10
            }
        );
        assert!(decode_one(raw_batch((10, 10), &[], None, b"")).is_ok());
        let mut batch = valid_batch();
        batch.scan_start = batch.scan_end + 1;
        assert!(matches!(
            encode_err(batch),
            EncodeError::Invalid(ValidationError::ScanRangeReversed { .. })
        ));
    }

    #[test]
    fn counts_are_capped_and_checked_against_the_body_before_allocating() {
        let buf = raw_batch((0, 10), &[], Some(65_537), b"");
        assert_eq!(
            invalid(decode_one(buf)),
            ValidationError::TooManyElements {
                frame: FrameType::ExtentBatch,
                field: "extents",
                count: 65_537,
                max: 65_536
            }
        );
        // A count within the cap but larger than the body: refused before allocating.
        let buf = raw_batch((0, 10), &[], Some(65_536), &[0u8; 100]);
        assert!(matches!(
            decode_one(buf),
            Err(DecodeError::CountExceedsBody { count: 65_536, needed, available: 100, .. })
                if needed == 65_536 * EXTENT_HEADER_WIRE_LEN as u64
        ));

        let mut body = Vec::new();
        body.extend_from_slice(&1u64.to_le_bytes());
        body.extend_from_slice(&2u64.to_le_bytes());
        body.push(0);
        body.extend_from_slice(&1025u32.to_le_bytes());
        assert!(matches!(
            invalid(decode_one(frame(0x06, &body))),
            ValidationError::TooManyElements {
                field: "images",
                count: 1025,
                max: 1024,
                ..
            }
        ));
        body.truncate(17);
        body.extend_from_slice(&1u32.to_le_bytes());
        body.extend_from_slice(&[0u8; 25]); // one short of the 26-byte minimum image
        assert!(matches!(
            decode_one(frame(0x06, &body)),
            Err(DecodeError::CountExceedsBody {
                field: "images",
                ..
            })
        ));

        let mut answer = sample_hash_answer();
        answer.hashes = vec![[0; 32]; 65_537];
        assert!(matches!(
            encode_err(answer.clone()),
            EncodeError::Invalid(ValidationError::TooManyElements {
                field: "hashes",
                ..
            })
        ));
        let mut buf = BytesMut::new();
        answer.hashes.truncate(2);
        Message::HashAnswer(answer).encode(&mut buf, MAX).unwrap();
        let count_at = buf.len() - 2 * 32 - 4;
        buf[count_at..count_at + 4].copy_from_slice(&3u32.to_le_bytes());
        assert!(matches!(
            decode_one(buf),
            Err(DecodeError::CountExceedsBody {
                field: "hashes",
                count: 3,
                needed: 96,
                available: 64,
                ..
            })
        ));

        let mut commit = sample_commit();
        commit.images = vec![commit.images[0].clone(); 1025];
        assert!(matches!(
            encode_err(commit),
            EncodeError::Invalid(ValidationError::TooManyElements { .. })
        ));
    }

    #[test]
    fn strings_must_be_utf8_and_short() {
        let mut body = vec![0x01, 0x00, 0x02, 0x00, 0xff, 0xfe];
        assert!(matches!(
            decode_one(frame(0x7F, &body)),
            Err(DecodeError::BadUtf8 {
                frame: FrameType::Error,
                field: "message",
                offset: 2,
                ..
            })
        ));
        body.truncate(2);
        body.extend_from_slice(&4097u16.to_le_bytes());
        body.extend_from_slice(&[b'x'; 4097]);
        assert_eq!(
            invalid(decode_one(frame(0x7F, &body))),
            ValidationError::StringTooLong {
                frame: FrameType::Error,
                field: "message",
                len: 4097,
                max: 4096
            }
        );
        let err = encode_err(ErrorFrame {
            code: ErrorCode::Internal,
            message: "x".repeat(4097),
        });
        assert!(matches!(
            err,
            EncodeError::Invalid(ValidationError::StringTooLong { len: 4097, .. })
        ));
        // ErrorFrame::new cuts at a character boundary so the frame always encodes.
        let frame_ = ErrorFrame::new(ErrorCode::Internal, "é".repeat(3000));
        assert_eq!(frame_.message.len(), 4096);
        let mut out = BytesMut::new();
        Message::Error(frame_).encode(&mut out, MAX).unwrap();
        let frame_ = ErrorFrame::new(ErrorCode::Internal, format!("x{}", "é".repeat(3000)));
        assert_eq!(frame_.message.len(), 4095);
    }

    #[test]
    fn booleans_must_be_zero_or_one() {
        let mut body = Vec::new();
        body.extend_from_slice(&1u64.to_le_bytes());
        body.extend_from_slice(&2u64.to_le_bytes());
        body.push(2);
        body.extend_from_slice(&0u32.to_le_bytes());
        assert_eq!(
            decode_one(frame(0x06, &body)),
            Err(DecodeError::BadBool {
                frame: FrameType::Commit,
                field: "fuzzy",
                offset: 16,
                value: 2
            })
        );
        body[16] = 1;
        assert!(matches!(
            decode_one(frame(0x06, &body)),
            Ok(Message::Commit(Commit { fuzzy: true, .. }))
        ));
    }

    #[test]
    fn hash_request_rules() {
        let request = |offset: u64, length: u64, granularity: u32| {
            let mut body = vec![1, b'a'];
            body.extend_from_slice(&offset.to_le_bytes());
            body.extend_from_slice(&length.to_le_bytes());
            body.extend_from_slice(&granularity.to_le_bytes());
            decode_one(frame(0x0A, &body))
        };
        assert_eq!(
            invalid(request(0, 10, 0)),
            ValidationError::ZeroGranularity {
                frame: FrameType::HashRequest
            }
        );
        assert_eq!(
            invalid(request(u64::MAX, 1, 1)),
            ValidationError::HashRangeOverflow {
                offset: u64::MAX,
                length: 1
            }
        );
        assert!(matches!(
            invalid(request(0, 65_537, 1)),
            ValidationError::TooManyGranules {
                granules: 65_537,
                ..
            }
        ));
        assert!(request(0, 65_536, 1).is_ok());
        assert!(request(0, 65_536 * 4096, 4096).is_ok());
        assert!(invalid(request(0, 65_536 * 4096 + 1, 4096))
            .to_string()
            .contains("65537 hashes"));
        assert!(request(0, 0, 1).is_ok());

        let mut answer = sample_hash_answer();
        answer.granularity = 0;
        assert!(matches!(
            encode_err(answer),
            EncodeError::Invalid(ValidationError::ZeroGranularity { .. })
        ));
    }

    #[test]
    fn error_codes_must_be_canonical_to_encode() {
        let err = encode_err(ErrorFrame {
            code: ErrorCode::Unknown(0x0002),
            message: String::new(),
        });
        assert_eq!(
            err,
            EncodeError::Invalid(ValidationError::NonCanonicalErrorCode { code: 2 })
        );
        let mut out = BytesMut::new();
        let unknown = Message::Error(ErrorFrame {
            code: ErrorCode::Unknown(0x1234),
            message: "later".into(),
        });
        unknown.encode(&mut out, MAX).unwrap();
        assert_eq!(decode_one(out), Ok(unknown));
    }

    #[test]
    fn encoding_respects_the_frame_cap() {
        let message = Message::ExtentBatch(valid_batch());
        let len = message.encoded_len() - 4;
        let mut out = BytesMut::from(&b"keep"[..]);
        assert_eq!(
            message.encode(&mut out, len - 1),
            Err(EncodeError::FrameTooLarge {
                frame: FrameType::ExtentBatch,
                len,
                max: len - 1
            })
        );
        let Message::ExtentBatch(batch) = &message else {
            unreachable!()
        };
        assert!(batch.encode_header(&mut out, len - 1).is_err());
        assert_eq!(&out[..], b"keep");
        message.encode(&mut out, len).unwrap();
        assert_eq!(out.len(), 4 + message.encoded_len());

        let ack = Message::Ack(Ack {
            image: name("a"),
            epoch: Epoch(1),
            durable_seq: SeqNo(1),
        });
        assert!(matches!(
            ack.encode(&mut out, 10),
            Err(EncodeError::FrameTooLarge {
                frame: FrameType::Ack,
                ..
            })
        ));
        // The decoder applies the same cap.
        let mut buf = BytesMut::new();
        message.encode(&mut buf, len).unwrap();
        assert!(matches!(
            FrameDecoder::new(len - 1).decode(&mut buf),
            Err(DecodeError::FrameTooLarge { .. })
        ));
        assert!(FrameDecoder::new(len).decode(&mut buf).unwrap().is_some());
    }

    #[test]
    fn decode_errors_map_to_malformed_error_frames() {
        let err = DecodeError::UnknownFrameType { frame_type: 0x42 };
        let frame_ = err.to_error_frame();
        assert_eq!(frame_.code, ErrorCode::Malformed);
        assert_eq!(frame_.message, "unknown frame type 0x42");
        let mut out = BytesMut::new();
        Message::Error(frame_).encode(&mut out, MAX).unwrap();
    }

    fn sample_commit() -> Commit {
        Commit {
            recovery_point: RecoveryPointId(3),
            created_unix_ms: 1_700_000_000_000,
            fuzzy: false,
            images: vec![CommitImage {
                image: name("vm1"),
                epoch: Epoch(7),
                last_seq: SeqNo(9),
                size: 1 << 30,
            }],
        }
    }

    fn sample_hash_answer() -> HashAnswer {
        HashAnswer {
            image: name("vm1"),
            recovery_point: RecoveryPointId(3),
            image_size: 1 << 30,
            offset: 0,
            granularity: 1 << 20,
            hashes: vec![[1; 32], [2; 32]],
        }
    }

    fn sample_messages() -> Vec<Message> {
        vec![
            Message::Hello(Hello::new(
                AgentId([5; 32]),
                Capabilities(Capabilities::ZSTD),
            )),
            Message::OpenImage(OpenImage {
                image: name("vm1"),
                size: 1 << 30,
                block_size: 4096,
                epoch: Epoch(7),
                base_epoch: Epoch(6),
            }),
            Message::ResumeQuery(ResumeQuery {
                image: name("vm1"),
                epoch: Epoch(7),
            }),
            Message::ResumeAnswer(ResumeAnswer {
                image: name("vm1"),
                epoch: Epoch(7),
                committed_epoch: Epoch(6),
                durable_seq: SeqNo(4),
                resume_offset: 1 << 24,
            }),
            Message::ExtentBatch(valid_batch()),
            Message::Commit(sample_commit()),
            Message::Committed(Committed {
                recovery_point: RecoveryPointId(3),
            }),
            Message::Ack(Ack {
                image: name("vm1"),
                epoch: Epoch(7),
                durable_seq: SeqNo(4),
            }),
            Message::Nack(Nack {
                image: name("vm1"),
                epoch: Epoch(7),
                seq: SeqNo(5),
                reason: NackReason::PlainBlake3,
            }),
            Message::HashRequest(HashRequest {
                image: name("vm1"),
                offset: 0,
                length: 1 << 30,
                granularity: 1 << 20,
            }),
            Message::HashAnswer(sample_hash_answer()),
            Message::Error(ErrorFrame::new(
                ErrorCode::Busy,
                "image vm1 is held by another session",
            )),
        ]
    }

    #[test]
    fn every_sample_round_trips_and_reports_its_type_code() {
        let samples = sample_messages();
        let codes: Vec<u8> = samples.iter().map(Message::type_code).collect();
        assert_eq!(
            codes,
            FrameType::ALL.iter().map(|t| t.code()).collect::<Vec<_>>()
        );
        for message in samples {
            let mut buf = BytesMut::new();
            message.encode(&mut buf, MAX).unwrap();
            assert_eq!(buf.len(), message.encoded_len());
            assert_eq!(buf[4], message.type_code());
            assert_eq!(decode_one(buf), Ok(message));
        }
    }
}
