//! The semantic rules of each message, shared by the encoder (which refuses
//! to write a message that breaks them) and the decoder (which refuses to
//! accept one). Layout rules (lengths, codes, UTF-8) live in the codec.

use crate::error::ValidationError;
use crate::frame::{
    FrameType, MAX_COMMIT_IMAGES, MAX_EXTENTS_PER_BATCH, MAX_HASHES_PER_ANSWER, MAX_STRING_LEN,
};
use crate::message::{
    Commit, ErrorCode, ErrorFrame, ExtentBatch, HashAnswer, HashRequest, Message,
};
use crate::types::{Codec, ExtentHeader, ExtentKind};

/// Checks a list length against its cap.
pub(crate) fn check_count(
    frame: FrameType,
    field: &'static str,
    count: usize,
    max: usize,
) -> Result<(), ValidationError> {
    if count > max {
        return Err(ValidationError::TooManyElements {
            frame,
            field,
            count,
            max,
        });
    }
    Ok(())
}

/// Checks a batch's scan range.
pub(crate) fn check_scan_range(scan_start: u64, scan_end: u64) -> Result<(), ValidationError> {
    if scan_start > scan_end {
        return Err(ValidationError::ScanRangeReversed {
            scan_start,
            scan_end,
        });
    }
    Ok(())
}

/// Checks a batch's extent table against itself and the payload length:
/// every extent non-empty and not wrapping past 2^64, strictly ascending and
/// non-overlapping, non-data extents Raw with no payload, raw data extents
/// carrying exactly their length, zstd extents carrying at least one byte,
/// and the data extents' encoded lengths adding up to `payload_len`.
pub(crate) fn check_extents(
    extents: &[ExtentHeader],
    payload_len: u64,
) -> Result<(), ValidationError> {
    let mut encoded_total: u64 = 0;
    let mut previous: Option<(u64, u64)> = None; // (offset, end) of the extent before
    for (index, extent) in extents.iter().enumerate() {
        if extent.length == 0 {
            return Err(ValidationError::ZeroLengthExtent {
                index,
                offset: extent.offset,
            });
        }
        let end = extent.offset.checked_add(u64::from(extent.length)).ok_or(
            ValidationError::ExtentEndOverflow {
                index,
                offset: extent.offset,
                length: extent.length,
            },
        )?;
        match (extent.kind, extent.codec) {
            (ExtentKind::Zero | ExtentKind::Discard, codec) => {
                if codec != Codec::Raw || extent.encoded_len != 0 {
                    return Err(ValidationError::NonDataExtentWithPayload {
                        index,
                        kind: extent.kind,
                        codec,
                        encoded_len: extent.encoded_len,
                    });
                }
            }
            (ExtentKind::Data, Codec::Raw) => {
                if extent.encoded_len != extent.length {
                    return Err(ValidationError::RawLengthMismatch {
                        index,
                        length: extent.length,
                        encoded_len: extent.encoded_len,
                    });
                }
            }
            (ExtentKind::Data, Codec::Zstd) => {
                if extent.encoded_len == 0 {
                    return Err(ValidationError::EmptyZstdExtent { index });
                }
            }
        }
        if let Some((previous_offset, previous_end)) = previous {
            if extent.offset < previous_offset {
                return Err(ValidationError::ExtentOutOfOrder {
                    index,
                    offset: extent.offset,
                    previous: index - 1,
                    previous_offset,
                });
            }
            if extent.offset < previous_end {
                return Err(ValidationError::ExtentOverlap {
                    index,
                    offset: extent.offset,
                    previous: index - 1,
                    previous_end,
                });
            }
        }
        previous = Some((extent.offset, end));
        // At most 65_536 extents of at most u32::MAX bytes each: no overflow,
        // but stay checked so a caller bypassing the count cap cannot wrap it.
        encoded_total = encoded_total.saturating_add(u64::from(extent.encoded_len));
    }
    if encoded_total != payload_len {
        return Err(ValidationError::PayloadLengthMismatch {
            expected: encoded_total,
            actual: payload_len,
        });
    }
    Ok(())
}

/// Checks a hash request's range and granule count.
pub(crate) fn check_hash_request(
    offset: u64,
    length: u64,
    granularity: u32,
) -> Result<(), ValidationError> {
    if granularity == 0 {
        return Err(ValidationError::ZeroGranularity {
            frame: FrameType::HashRequest,
        });
    }
    if offset.checked_add(length).is_none() {
        return Err(ValidationError::HashRangeOverflow { offset, length });
    }
    let granules = length.div_ceil(u64::from(granularity));
    if granules > MAX_HASHES_PER_ANSWER as u64 {
        return Err(ValidationError::TooManyGranules {
            length,
            granularity,
            granules,
            max: MAX_HASHES_PER_ANSWER,
        });
    }
    Ok(())
}

/// Checks an error frame's code and message length.
pub(crate) fn check_error_frame(
    code: ErrorCode,
    message_len: usize,
) -> Result<(), ValidationError> {
    if let ErrorCode::Unknown(raw) = code {
        if ErrorCode::from_code(raw) != code {
            return Err(ValidationError::NonCanonicalErrorCode { code: raw });
        }
    }
    if message_len > MAX_STRING_LEN {
        return Err(ValidationError::StringTooLong {
            frame: FrameType::Error,
            field: "message",
            len: message_len,
            max: MAX_STRING_LEN,
        });
    }
    Ok(())
}

impl ExtentBatch {
    /// Checks every rule of `PROTOCOL.md` for this batch: extent cap, scan
    /// range, extent order and shape, payload length.
    pub fn validate(&self) -> Result<(), ValidationError> {
        check_count(
            FrameType::ExtentBatch,
            "extents",
            self.extents.len(),
            MAX_EXTENTS_PER_BATCH,
        )?;
        check_scan_range(self.scan_start, self.scan_end)?;
        check_extents(&self.extents, self.payload.len() as u64)
    }
}

impl Commit {
    /// Checks the image cap.
    pub fn validate(&self) -> Result<(), ValidationError> {
        check_count(
            FrameType::Commit,
            "images",
            self.images.len(),
            MAX_COMMIT_IMAGES,
        )
    }
}

impl HashRequest {
    /// Checks the granularity, the range and the granule cap.
    pub fn validate(&self) -> Result<(), ValidationError> {
        check_hash_request(self.offset, self.length, self.granularity)
    }
}

impl HashAnswer {
    /// Checks the granularity and the hash cap.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.granularity == 0 {
            return Err(ValidationError::ZeroGranularity {
                frame: FrameType::HashAnswer,
            });
        }
        check_count(
            FrameType::HashAnswer,
            "hashes",
            self.hashes.len(),
            MAX_HASHES_PER_ANSWER,
        )
    }
}

impl ErrorFrame {
    /// Checks that the code is canonical and the message fits the string cap.
    pub fn validate(&self) -> Result<(), ValidationError> {
        check_error_frame(self.code, self.message.len())
    }
}

impl Message {
    /// Checks the message's semantic rules (the ones [`Message::encode`]
    /// enforces besides the frame cap).
    pub fn validate(&self) -> Result<(), ValidationError> {
        match self {
            Message::ExtentBatch(batch) => batch.validate(),
            Message::Commit(commit) => commit.validate(),
            Message::HashRequest(request) => request.validate(),
            Message::HashAnswer(answer) => answer.validate(),
            Message::Error(error) => error.validate(),
            Message::Hello(_)
            | Message::OpenImage(_)
            | Message::ResumeQuery(_)
            | Message::ResumeAnswer(_)
            | Message::Committed(_)
            | Message::Ack(_)
            | Message::Nack(_) => Ok(()),
        }
    }
}
