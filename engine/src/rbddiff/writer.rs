//! Writers of `rbd diff v1`/`v2` diffs ([`DiffWriter`]) and of the header of
//! an `rbd image v2` stream ([`write_image_v2_header`]).
//!
//! The writer enforces the same rules the parser checks (metadata before
//! data, size before data, ranges within the size, write payloads exactly as
//! long as announced), so whatever it produces parses back to the same events.
//! Payloads are streamed: [`DiffWriter::write_header`] announces a write and
//! [`DiffWriter::write_data`] supplies its bytes in any number of pieces.

use std::io::{self, Write};

use super::parser::{Format, ImageProperty};
use super::wire::{
    tag, BANNER_DIFF_V1, BANNER_DIFF_V2, BANNER_IMAGE_DIFFS_V2, BANNER_IMAGE_V2, MAX_META_RECORD,
    MAX_SNAP_NAME,
};

/// Why a diff could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The output failed.
    #[error("writing the diff stream at offset {offset}")]
    Io {
        /// Stream offset reached.
        offset: u64,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The caller broke a rule of the format (a bug in the caller).
    #[error("invalid diff: {reason}")]
    Invalid {
        /// What was wrong.
        reason: String,
    },
}

fn invalid(reason: impl Into<String>) -> WriteError {
    WriteError::Invalid {
        reason: reason.into(),
    }
}

/// Properties written at the start of an `rbd image v2` stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageProperties {
    /// Object size as a power of two (22 = 4 MiB objects, rbd's default).
    pub order: u64,
    /// Feature bits (1 = layering).
    pub features: u64,
    /// Stripe unit in bytes.
    pub stripe_unit: u64,
    /// Stripe count.
    pub stripe_count: u64,
    /// Image metadata pairs.
    pub meta: Vec<(String, String)>,
}

impl Default for ImageProperties {
    /// 4 MiB objects, layering only, no striping, no metadata.
    fn default() -> Self {
        Self {
            order: 22,
            features: 1,
            stripe_unit: 1 << 22,
            stripe_count: 1,
            meta: Vec::new(),
        }
    }
}

/// Writes the `rbd image v2` banner, the properties, the `"rbd image diffs
/// v2\n"` banner and the diff count; follow with `diff_count` diffs written
/// by [`DiffWriter::new`] with [`Format::DiffV2`]. Returns the bytes written.
pub fn write_image_v2_header<W: Write>(
    out: &mut W,
    props: &ImageProperties,
    diff_count: u64,
) -> Result<u64, WriteError> {
    let mut list = vec![
        ImageProperty::Order(props.order),
        ImageProperty::Features(props.features),
        ImageProperty::StripeUnit(props.stripe_unit),
        ImageProperty::StripeCount(props.stripe_count),
    ];
    for (key, value) in &props.meta {
        list.push(ImageProperty::Meta {
            key: key.clone(),
            value: value.clone(),
        });
    }
    write_image_v2_header_raw(out, &list, diff_count)
}

/// Like [`write_image_v2_header`], but writes exactly the property records
/// given, in that order (for re-encoding a parsed stream).
pub fn write_image_v2_header_raw<W: Write>(
    out: &mut W,
    props: &[ImageProperty],
    diff_count: u64,
) -> Result<u64, WriteError> {
    let mut bytes = Vec::with_capacity(128);
    bytes.extend_from_slice(BANNER_IMAGE_V2);
    for prop in props {
        let (t, value) = match prop {
            ImageProperty::Order(v) => (tag::IMAGE_ORDER, *v),
            ImageProperty::Features(v) => (tag::IMAGE_FEATURES, *v),
            ImageProperty::StripeUnit(v) => (tag::IMAGE_STRIPE_UNIT, *v),
            ImageProperty::StripeCount(v) => (tag::IMAGE_STRIPE_COUNT, *v),
            ImageProperty::Meta { key, value } => {
                let len = 8 + key.len() as u64 + value.len() as u64;
                let (Ok(klen), Ok(vlen)) = (u32::try_from(key.len()), u32::try_from(value.len()))
                else {
                    return Err(invalid("image metadata key or value longer than 4 GiB"));
                };
                if len > MAX_META_RECORD {
                    return Err(invalid(format!(
                        "image metadata {key:?} is longer than 1 MiB"
                    )));
                }
                bytes.push(tag::IMAGE_META);
                bytes.extend_from_slice(&len.to_le_bytes());
                bytes.extend_from_slice(&klen.to_le_bytes());
                bytes.extend_from_slice(key.as_bytes());
                bytes.extend_from_slice(&vlen.to_le_bytes());
                bytes.extend_from_slice(value.as_bytes());
                continue;
            }
        };
        bytes.push(t);
        bytes.extend_from_slice(&8u64.to_le_bytes());
        bytes.extend_from_slice(&value.to_le_bytes());
    }
    bytes.push(tag::IMAGE_END);
    bytes.extend_from_slice(BANNER_IMAGE_DIFFS_V2);
    bytes.extend_from_slice(&diff_count.to_le_bytes());
    out.write_all(&bytes)
        .map_err(|source| WriteError::Io { offset: 0, source })?;
    Ok(bytes.len() as u64)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Meta,
    Data,
    InWrite { remaining: u64 },
    Ended,
}

/// Writes one diff; see the module docs.
pub struct DiffWriter<W> {
    out: W,
    v2: bool,
    phase: Phase,
    size: Option<u64>,
    from: bool,
    to: bool,
    protected: bool,
    written: u64,
}

impl<W: Write> DiffWriter<W> {
    /// Starts a diff in `format` (`DiffV1` or `DiffV2`) by writing its banner.
    pub fn new(out: W, format: Format) -> Result<Self, WriteError> {
        let v2 = match format {
            Format::DiffV1 => false,
            Format::DiffV2 => true,
            Format::ImageV2 => {
                return Err(invalid(
                    "a DiffWriter writes one diff; use write_image_v2_header then v2 diffs",
                ))
            }
        };
        let mut w = Self {
            out,
            v2,
            phase: Phase::Meta,
            size: None,
            from: false,
            to: false,
            protected: false,
            written: 0,
        };
        w.emit(if v2 { BANNER_DIFF_V2 } else { BANNER_DIFF_V1 })?;
        Ok(w)
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    fn emit(&mut self, bytes: &[u8]) -> Result<(), WriteError> {
        self.out.write_all(bytes).map_err(|source| WriteError::Io {
            offset: self.written,
            source,
        })?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn record(&mut self, t: u8, body: &[u8], declared: u64) -> Result<(), WriteError> {
        let mut head = [0u8; 9];
        head[0] = t;
        let n = if self.v2 {
            head[1..9].copy_from_slice(&declared.to_le_bytes());
            9
        } else {
            1
        };
        self.emit(&head[..n])?;
        self.emit(body)
    }

    fn meta(&mut self, what: &str, seen: bool) -> Result<(), WriteError> {
        if self.phase != Phase::Meta {
            return Err(invalid(format!("{what} record after data records")));
        }
        if seen {
            return Err(invalid(format!("second {what} record")));
        }
        Ok(())
    }

    fn snap(&mut self, t: u8, name: &str) -> Result<(), WriteError> {
        if name.len() > MAX_SNAP_NAME {
            return Err(invalid(format!(
                "snapshot name of {} bytes (limit {MAX_SNAP_NAME})",
                name.len()
            )));
        }
        let mut body = Vec::with_capacity(4 + name.len());
        // name.len() <= 4096 was checked above.
        body.extend_from_slice(&(name.len() as u32).to_le_bytes());
        body.extend_from_slice(name.as_bytes());
        self.record(t, &body, body.len() as u64)
    }

    /// `f`: the snapshot this diff starts from.
    pub fn from_snap(&mut self, name: &str) -> Result<(), WriteError> {
        self.meta("from-snap", self.from)?;
        self.from = true;
        self.snap(tag::FROM_SNAP, name)
    }

    /// `t`: the snapshot this diff ends at.
    pub fn to_snap(&mut self, name: &str) -> Result<(), WriteError> {
        self.meta("to-snap", self.to)?;
        self.to = true;
        self.snap(tag::TO_SNAP, name)
    }

    /// `p` (v2 only): whether the to-snapshot is protected. Written with the
    /// declared length 1 (what it carries); `rbd` reads it either way.
    pub fn protected(&mut self, protected: bool) -> Result<(), WriteError> {
        if !self.v2 {
            return Err(invalid("the protected record exists only in v2 diffs"));
        }
        self.meta("protected", self.protected)?;
        self.protected = true;
        self.record(tag::PROTECTED, &[u8::from(protected)], 1)
    }

    /// `s`: the image size at the end of the diff (required before data).
    pub fn size(&mut self, size: u64) -> Result<(), WriteError> {
        self.meta("size", self.size.is_some())?;
        self.size = Some(size);
        self.record(tag::SIZE, &size.to_le_bytes(), 8)
    }

    fn range(&mut self, what: &str, offset: u64, length: u64) -> Result<[u8; 16], WriteError> {
        match self.phase {
            Phase::Meta | Phase::Data => {}
            Phase::InWrite { remaining } => {
                return Err(invalid(format!(
                    "{what} record while {remaining} bytes of the previous write are missing"
                )))
            }
            Phase::Ended => return Err(invalid(format!("{what} record after the end"))),
        }
        let size = self
            .size
            .ok_or_else(|| invalid(format!("{what} record before the size record")))?;
        if offset.checked_add(length).is_none_or(|end| end > size) {
            return Err(invalid(format!(
                "{what} {offset}+{length} past the image size {size}"
            )));
        }
        self.phase = Phase::Data;
        let mut body = [0u8; 16];
        body[..8].copy_from_slice(&offset.to_le_bytes());
        body[8..].copy_from_slice(&length.to_le_bytes());
        Ok(body)
    }

    /// `w` header: `length` bytes for `offset`; supply them with
    /// [`Self::write_data`] before the next record.
    pub fn write_header(&mut self, offset: u64, length: u64) -> Result<(), WriteError> {
        let body = self.range("write", offset, length)?;
        // range() checked offset + length <= size, so length + 16 cannot
        // overflow unless length > u64::MAX - 16, which no size allows here.
        let declared = length.saturating_add(16);
        self.record(tag::WRITE, &body, declared)?;
        self.phase = if length == 0 {
            Phase::Data
        } else {
            Phase::InWrite { remaining: length }
        };
        Ok(())
    }

    /// Payload bytes of the current write.
    pub fn write_data(&mut self, data: &[u8]) -> Result<(), WriteError> {
        let Phase::InWrite { remaining } = self.phase else {
            return Err(invalid("write data without a write header"));
        };
        if data.len() as u64 > remaining {
            return Err(invalid(format!(
                "{} payload bytes, but only {remaining} remain in this write",
                data.len()
            )));
        }
        self.emit(data)?;
        let left = remaining - data.len() as u64;
        self.phase = if left == 0 {
            Phase::Data
        } else {
            Phase::InWrite { remaining: left }
        };
        Ok(())
    }

    /// A whole `w` record.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), WriteError> {
        self.write_header(offset, data.len() as u64)?;
        if !data.is_empty() {
            self.write_data(data)?;
        }
        Ok(())
    }

    /// `z`: `[offset, offset + length)` reads as zeroes.
    pub fn zero(&mut self, offset: u64, length: u64) -> Result<(), WriteError> {
        let body = self.range("zero", offset, length)?;
        self.record(tag::ZERO, &body, 16)
    }

    /// `e`: ends the diff, flushes and returns the output.
    pub fn end(mut self) -> Result<W, WriteError> {
        if let Phase::InWrite { remaining } = self.phase {
            return Err(invalid(format!(
                "end while {remaining} bytes of a write are missing"
            )));
        }
        self.emit(&[tag::END])?;
        self.phase = Phase::Ended;
        self.out.flush().map_err(|source| WriteError::Io {
            offset: self.written,
            source,
        })?;
        Ok(self.out)
    }
}
