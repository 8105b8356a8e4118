//! Decoding: a frame body is parsed from a borrowed slice by a cursor that
//! turns every short read into a typed error, so a failed call leaves the
//! input untouched; [`FrameDecoder`] splits a byte stream into frames and
//! hands out an [`ExtentBatch`]'s payload as a zero-copy slice of its frame.

use bytes::{Buf, Bytes, BytesMut};

use crate::error::{DecodeError, ValidationError};
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
