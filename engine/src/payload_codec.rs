//! Encoding of extents into a batch payload (compress, checksum) and its verification on the standby.
//!
//! The primary's [`Encoder`] turns the changed extents of one scan chunk into
//! an [`EncodedChunk`]: each data extent is split into runs of zero, random
//! and compressible pieces ([`crate::compression::classify`]); a zero run
//! becomes a zero extent, a compressible run one zstd frame when that pays
//! (compressed size ≤ 97 % of plain, [`COMPRESS_KEEP_RATIO_PERCENT`]) and
//! every other run is stored raw; whether zstd is tried at all follows the
//! encoder's [`CompressionSwitch`]. The payload gets a CRC-32C and the concatenated plain data a
//! BLAKE3. The standby's [`Decoder`] checks the CRC first (transport damage →
//! [`NackReason::PayloadCrc`]), then decodes every extent under strict rules
//! (exact lengths, one frame per extent, never allocating more than an
//! extent's declared length → [`NackReason::Decode`]), then checks the BLAKE3
//! of the decoded data ([`NackReason::PlainBlake3`]). One encoder and one
//! decoder per thread: they own reusable zstd contexts.

use bytes::Bytes;
use ferry_protocol::{Codec, ExtentBatch, ExtentHeader, ExtentKind, NackReason};

use crate::compression::{classify, CompressionSwitch, PieceClass};
use crate::source::pool::BufferPool;

/// A data extent is stored compressed only if the frame is at most this
/// percentage of the plain length.
pub const COMPRESS_KEEP_RATIO_PERCENT: usize = 97;

/// Default cap on the plain bytes one batch may decode to (the pipeline's
/// chunks are 4 MiB; this leaves room for larger chunk sizes).
pub const DEFAULT_MAX_BATCH_PLAIN_BYTES: u64 = 64 << 20;

/// Size of the payload buffers an [`Encoder`] recycles by default.
pub const DEFAULT_PAYLOAD_BUF_SIZE: usize = 4 << 20;

/// One extent as a source produced it, before encoding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlainExtent {
    /// Byte offset in the image.
    pub offset: u64,
    /// Length in bytes (> 0).
    pub length: u32,
    /// What the extent does to the range.
    pub kind: ExtentKind,
    /// The range's bytes: `Some` exactly for [`ExtentKind::Data`], with `length` bytes.
    pub data: Option<Bytes>,
}

/// Byte counters of one encoded chunk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChunkStats {
    /// Bytes of the image the chunk's scan covered.
    pub bytes_scanned: u64,
    /// Bytes covered by the chunk's extents (data + zero + discard).
    pub bytes_changed: u64,
    /// Bytes of all-zero blocks found in the scanned range (changed or not).
    pub bytes_zero: u64,
    /// Plain bytes of the data extents.
    pub plain_data_bytes: u64,
    /// Bytes of the encoded payload.
    pub payload_bytes: u64,
}

impl ChunkStats {
    /// Adds another chunk's counters to these.
    pub fn add(&mut self, other: &ChunkStats) {
        self.bytes_scanned += other.bytes_scanned;
        self.bytes_changed += other.bytes_changed;
        self.bytes_zero += other.bytes_zero;
        self.plain_data_bytes += other.plain_data_bytes;
        self.payload_bytes += other.payload_bytes;
    }
}

/// One chunk's extents encoded and checksummed, ready to wrap into an
/// [`ExtentBatch`] (the sender adds image, epoch and sequence number).
#[derive(Clone, Debug)]
pub struct EncodedChunk {
    /// Start of the source range the chunk covers.
    pub scan_start: u64,
    /// End of the source range the chunk covers.
    pub scan_end: u64,
    /// The extents, ascending and non-overlapping.
    pub extents: Vec<ExtentHeader>,
    /// Encoded data of the data extents, in extent order.
    pub payload: Bytes,
    /// CRC-32C of `payload`.
    pub payload_crc32c: u32,
    /// BLAKE3 of the concatenated plain data of the data extents.
    pub plain_blake3: [u8; 32],
    /// Byte counters.
    pub stats: ChunkStats,
    /// The source made its bookkeeping of everything up to `scan_end`
    /// durable before the chunk was delivered ([`crate::pipeline`] sets
    /// it): a new process can resume at `scan_end`. Only such chunks may
    /// move the standby's resume offset (be sent as a batch).
    pub durable: bool,
}

/// Why a chunk could not be encoded: the caller handed inconsistent extents
/// (a bug in a source, never a property of the data).
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// An extent has length 0.
    #[error("extent at offset {offset} has length 0")]
    EmptyExtent {
        /// Offset of the extent.
        offset: u64,
    },
    /// A data extent carries no bytes.
    #[error("data extent at offset {offset} carries no bytes")]
    MissingData {
        /// Offset of the extent.
        offset: u64,
    },
    /// A zero or discard extent carries bytes.
    #[error("{kind:?} extent at offset {offset} carries bytes")]
    UnexpectedData {
        /// Offset of the extent.
        offset: u64,
        /// Its kind.
        kind: ExtentKind,
    },
    /// A data extent's bytes do not match its length.
    #[error("data extent at offset {offset} declares {length} bytes but carries {actual}")]
    LengthMismatch {
        /// Offset of the extent.
        offset: u64,
        /// Declared length.
        length: u32,
        /// Bytes carried.
        actual: usize,
    },
    /// Extents overlap, are out of order or leave the scanned range.
    #[error("extent at offset {offset} (length {length}) is out of order or outside the scan range {scan_start}..{scan_end}")]
    BadPlacement {
        /// Offset of the extent.
        offset: u64,
        /// Its length.
        length: u32,
        /// Start of the scan range.
        scan_start: u64,
        /// End of the scan range.
        scan_end: u64,
    },
}

/// Compresses and checksums extents; one per worker thread.
pub struct Encoder {
    compressor: zstd::bulk::Compressor<'static>,
    level: i32,
    payload_pool: BufferPool,
    compression: CompressionSwitch,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("level", &self.level)
            .finish()
    }
}

impl Encoder {
    /// An encoder using zstd `zstd_level` (clamped to zstd's range), with
    /// its own small pool of payload buffers.
    pub fn new(zstd_level: i32) -> Self {
        Self::with_payload_pool(
            zstd_level,
            BufferPool::recycling(DEFAULT_PAYLOAD_BUF_SIZE, 2),
        )
    }

    /// An encoder whose payloads come from `pool` (shared between workers).
    /// Payloads larger than the pool's buffers get their own allocation.
    pub fn with_payload_pool(zstd_level: i32, pool: BufferPool) -> Self {
        let range = zstd::compression_level_range();
        let level = zstd_level.clamp(*range.start(), *range.end());
        // Creating a context fails only when zstd cannot allocate it (the
        // level is within range), which is an out-of-memory condition the
        // process cannot survive anyway.
        let compressor =
            zstd::bulk::Compressor::new(level).expect("zstd compression context allocation");
        Self {
            compressor,
            level,
            payload_pool: pool,
            compression: CompressionSwitch::always(),
        }
    }

    /// Compress only while `switch` is on (`[transport] compression`).
    pub fn with_compression(mut self, switch: CompressionSwitch) -> Self {
        self.compression = switch;
        self
    }

    /// The zstd level in use.
    pub fn level(&self) -> i32 {
        self.level
    }

    /// Splits each data extent into runs (zero runs become zero extents),
    /// compresses the compressible runs with zstd while the switch is on
    /// unless it does not pay (kept raw when the frame would exceed 97 % of
    /// the plain length), computes the CRC-32C of the payload and the BLAKE3
    /// of the concatenated plain data of the data extents it emits.
    /// `stats.bytes_zero` is left 0 (the analyser knows it).
    pub fn encode(
        &mut self,
        scan_start: u64,
        scan_end: u64,
        extents: &[PlainExtent],
    ) -> Result<EncodedChunk, CodecError> {
        let mut plain_total = 0usize;
        let mut changed = 0u64;
        let mut previous_end = scan_start;
        for extent in extents {
            check_extent(extent, scan_start, scan_end, previous_end)?;
            previous_end = extent.offset + u64::from(extent.length);
            changed += u64::from(extent.length);
            if extent.kind == ExtentKind::Data {
                plain_total += extent.length as usize;
            }
        }

        let mut hasher = blake3::Hasher::new();
        let mut headers = Vec::with_capacity(extents.len());
        // The payload never exceeds the plain total: an extent is compressed
        // only into at most 97 % of its length, otherwise copied.
        let mut pooled = if plain_total > 0 && plain_total <= self.payload_pool.buf_size() {
            self.payload_pool.acquire()
        } else {
            None
        };
        let mut own: Vec<u8> = Vec::new();
        if pooled.is_none() && plain_total > 0 {
            own = vec![0u8; plain_total];
        }
        let out: &mut [u8] = match pooled.as_mut() {
            Some(buf) => &mut buf[..],
            None => &mut own[..],
        };
        let mut used = 0usize;
        let mut plain_emitted = 0u64;
        let compress = self.compression.is_on();
        // While zstd is on, interior zero blocks cost a few bytes inside one
        // compressed run (one standby write): cut them only when it is off.
        let cut_interior_zeros = !compress && self.compression.is_link_bound();
        for extent in extents {
            let (ExtentKind::Data, Some(data)) = (&extent.kind, &extent.data) else {
                headers.push(ExtentHeader {
                    offset: extent.offset,
                    length: extent.length,
                    kind: extent.kind,
                    codec: Codec::Raw,
                    encoded_len: 0,
                });
                continue;
            };
            for run in classify(data, compress, cut_interior_zeros) {
                let piece = &data[run.start..run.end];
                let len = piece.len();
                // A run is a part of an extent: its length fits in a u32.
                let length = u32::try_from(len).unwrap_or(u32::MAX);
                let offset = extent.offset + run.start as u64;
                if run.class == PieceClass::Zero {
                    headers.push(ExtentHeader {
                        offset,
                        length,
                        kind: ExtentKind::Zero,
                        codec: Codec::Raw,
                        encoded_len: 0,
                    });
                    continue;
                }
                hasher.update(piece);
                plain_emitted += len as u64;
                let limit = len * COMPRESS_KEEP_RATIO_PERCENT / 100;
                let compressed = if run.class == PieceClass::Compressible && limit > 0 {
                    self.compressor
                        .compress_to_buffer(piece, &mut out[used..used + limit])
                        .ok()
                } else {
                    None
                };
                let (codec, encoded_len) = match compressed {
                    Some(n) if n <= limit => (Codec::Zstd, n),
                    _ => {
                        out[used..used + len].copy_from_slice(piece);
                        (Codec::Raw, len)
                    }
                };
                used += encoded_len;
                headers.push(ExtentHeader {
                    offset,
                    length,
                    kind: ExtentKind::Data,
                    codec,
                    // encoded_len ≤ length, which is a u32.
                    encoded_len: u32::try_from(encoded_len).unwrap_or(u32::MAX),
                });
            }
        }

        let payload = if used == 0 {
            Bytes::new()
        } else if let Some(buf) = pooled {
            if used < buf.len() / 4 {
                // A small payload would pin a whole pooled buffer while the
                // sender holds it for retransmission: copy it out instead.
                Bytes::copy_from_slice(&buf[..used])
            } else {
                buf.freeze(used)
            }
        } else {
            own.truncate(used);
            Bytes::from(own)
        };
        let payload_crc32c = crc32c::crc32c(&payload);
        Ok(EncodedChunk {
            scan_start,
            scan_end,
            extents: headers,
            stats: ChunkStats {
                bytes_scanned: scan_end.saturating_sub(scan_start),
                bytes_changed: changed,
                bytes_zero: 0,
                plain_data_bytes: plain_emitted,
                payload_bytes: payload.len() as u64,
            },
            payload,
            payload_crc32c,
            durable: false,
            plain_blake3: *hasher.finalize().as_bytes(),
        })
    }
}

fn check_extent(
    extent: &PlainExtent,
    scan_start: u64,
    scan_end: u64,
    previous_end: u64,
) -> Result<(), CodecError> {
    let offset = extent.offset;
    if extent.length == 0 {
        return Err(CodecError::EmptyExtent { offset });
    }
    let end = offset.checked_add(u64::from(extent.length));
    if offset < previous_end || end.is_none_or(|end| end > scan_end) {
        return Err(CodecError::BadPlacement {
            offset,
            length: extent.length,
            scan_start,
            scan_end,
        });
    }
    match (&extent.kind, &extent.data) {
        (ExtentKind::Data, None) => Err(CodecError::MissingData { offset }),
        (ExtentKind::Data, Some(data)) if data.len() != extent.length as usize => {
            Err(CodecError::LengthMismatch {
                offset,
                length: extent.length,
                actual: data.len(),
            })
        }
        (ExtentKind::Zero | ExtentKind::Discard, Some(_)) => Err(CodecError::UnexpectedData {
            offset,
            kind: extent.kind,
        }),
        _ => Ok(()),
    }
}

/// One extent after decoding and verification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedExtent {
    /// Byte offset in the image.
    pub offset: u64,
    /// Length in bytes.
    pub length: u32,
    /// What the extent does to the range.
    pub kind: ExtentKind,
    /// The plain bytes (`length` of them), for data extents only.
    pub data: Option<Bytes>,
}

/// Why a received batch was rejected. The standby answers with a `Nack`
/// carrying [`VerifyError::nack_reason`] and writes nothing of the batch.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The payload does not match its CRC-32C (damaged in transit).
    #[error("payload CRC-32C mismatch: batch says {expected:#010x}, payload has {actual:#010x}")]
    PayloadCrc {
        /// CRC in the batch header.
        expected: u32,
        /// CRC of the received payload.
        actual: u32,
    },
    /// The extent list is inconsistent with itself or with the payload.
    #[error("extent {index} (offset {offset}) is malformed: {reason}")]
    Malformed {
        /// Position of the extent in the batch.
        index: usize,
        /// Its offset.
        offset: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// The batch would decode to more plain bytes than the decoder accepts.
    #[error("batch decodes to more than {limit} plain bytes (extent {index} at offset {offset})")]
    TooLarge {
        /// Position of the first extent over the limit.
        index: usize,
        /// Its offset.
        offset: u64,
        /// The limit in bytes.
        limit: u64,
    },
    /// A zstd frame is corrupt or decodes to more than its extent's length.
    #[error("extent {index} (offset {offset}, length {length}) does not decode")]
    Zstd {
        /// Position of the extent.
        index: usize,
        /// Its offset.
        offset: u64,
        /// Its declared plain length.
        length: u32,
        /// zstd's error.
        #[source]
        source: std::io::Error,
    },
    /// A zstd frame decodes to fewer bytes than its extent's length.
    #[error("extent {index} (offset {offset}) decodes to {actual} bytes, {length} expected")]
    ShortFrame {
        /// Position of the extent.
        index: usize,
        /// Its offset.
        offset: u64,
        /// Declared plain length.
        length: u32,
        /// Decoded length.
        actual: usize,
    },
    /// The decoded data does not match the batch's BLAKE3.
    #[error("plain-data BLAKE3 mismatch (batch covers {scan_start}..{scan_end})")]
    PlainBlake3 {
        /// Start of the batch's scan range.
        scan_start: u64,
        /// End of the batch's scan range.
        scan_end: u64,
    },
}

impl VerifyError {
    /// The `Nack` reason that reports this error to the primary.
    pub fn nack_reason(&self) -> NackReason {
        match self {
            Self::PayloadCrc { .. } => NackReason::PayloadCrc,
            Self::PlainBlake3 { .. } => NackReason::PlainBlake3,
            Self::Malformed { .. }
            | Self::TooLarge { .. }
            | Self::Zstd { .. }
            | Self::ShortFrame { .. } => NackReason::Decode,
        }
    }
}

/// Verifies and decodes batches; holds a zstd decompression context.
pub struct Decoder {
    decompressor: zstd::bulk::Decompressor<'static>,
    max_batch_plain_bytes: u64,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("max_batch_plain_bytes", &self.max_batch_plain_bytes)
            .finish()
    }
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// A decoder accepting batches of up to [`DEFAULT_MAX_BATCH_PLAIN_BYTES`] plain bytes.
    pub fn new() -> Self {
        Self::with_limit(DEFAULT_MAX_BATCH_PLAIN_BYTES)
    }

    /// A decoder accepting batches of up to `max_batch_plain_bytes` plain
    /// bytes (data extents only; zero/discard ranges cost no memory).
    pub fn with_limit(max_batch_plain_bytes: u64) -> Self {
        // Fails only when zstd cannot allocate a context: out of memory,
        // which the process cannot survive anyway.
        let decompressor =
            zstd::bulk::Decompressor::new().expect("zstd decompression context allocation");
        Self {
            decompressor,
            max_batch_plain_bytes,
        }
    }

    /// Verify crc32c of the payload, decode every data extent (a zstd extent
    /// must be exactly one frame decoding to exactly `length` bytes; no more
    /// than `length` bytes are ever allocated for it), verify blake3 of the
    /// plain data. Raw extents are slices of the payload (no copy).
    pub fn decode(&mut self, batch: &ExtentBatch) -> Result<Vec<DecodedExtent>, VerifyError> {
        let actual = crc32c::crc32c(&batch.payload);
        if actual != batch.payload_crc32c {
            return Err(VerifyError::PayloadCrc {
                expected: batch.payload_crc32c,
                actual,
            });
        }
        self.check_layout(batch)?;

        let mut hasher = blake3::Hasher::new();
        let mut out = Vec::with_capacity(batch.extents.len());
        let mut position = 0usize;
        for (index, header) in batch.extents.iter().enumerate() {
            let data = match header.kind {
                ExtentKind::Data => {
                    let encoded_len = header.encoded_len as usize;
                    let encoded = batch.payload.slice(position..position + encoded_len);
                    position += encoded_len;
                    let plain = match header.codec {
                        Codec::Raw => encoded,
                        Codec::Zstd => self.decompress(index, header, &encoded)?,
                    };
                    hasher.update(&plain);
                    Some(plain)
                }
                ExtentKind::Zero | ExtentKind::Discard => None,
            };
            out.push(DecodedExtent {
                offset: header.offset,
                length: header.length,
                kind: header.kind,
                data,
            });
        }
        if *hasher.finalize().as_bytes() != batch.plain_blake3 {
            return Err(VerifyError::PlainBlake3 {
                scan_start: batch.scan_start,
                scan_end: batch.scan_end,
            });
        }
        Ok(out)
    }

    /// Checks everything about the extent list that does not need decoding:
    /// order, placement, per-kind rules, payload accounting and the size cap.
    fn check_layout(&self, batch: &ExtentBatch) -> Result<(), VerifyError> {
        let mut previous_end = batch.scan_start;
        let mut encoded_total = 0u64;
        let mut plain_total = 0u64;
        for (index, header) in batch.extents.iter().enumerate() {
            let malformed = |reason| VerifyError::Malformed {
                index,
                offset: header.offset,
                reason,
            };
            if header.length == 0 {
                return Err(malformed("length is 0"));
            }
            let end = header
                .offset
                .checked_add(u64::from(header.length))
                .ok_or_else(|| malformed("offset + length overflows"))?;
            if header.offset < previous_end {
                return Err(malformed(
                    "overlaps or precedes the previous extent or the scan start",
                ));
            }
            if end > batch.scan_end {
                return Err(malformed("ends past the batch's scan end"));
            }
            previous_end = end;
            match header.kind {
                ExtentKind::Data => {
                    match header.codec {
                        Codec::Raw if header.encoded_len != header.length => {
                            return Err(malformed(
                                "raw extent's encoded length differs from its length",
                            ))
                        }
                        Codec::Zstd if header.encoded_len == 0 => {
                            return Err(malformed("zstd extent has no encoded bytes"))
                        }
                        _ => {}
                    }
                    plain_total += u64::from(header.length);
                    if plain_total > self.max_batch_plain_bytes {
                        return Err(VerifyError::TooLarge {
                            index,
                            offset: header.offset,
                            limit: self.max_batch_plain_bytes,
                        });
                    }
                }
                ExtentKind::Zero | ExtentKind::Discard => {
                    if header.encoded_len != 0 || header.codec != Codec::Raw {
                        return Err(malformed("zero/discard extent carries payload"));
                    }
                }
            }
            encoded_total += u64::from(header.encoded_len);
        }
        if encoded_total != batch.payload.len() as u64 {
            return Err(VerifyError::Malformed {
                index: batch.extents.len(),
                offset: batch.scan_end,
                reason: "extents' encoded lengths do not add up to the payload length",
            });
        }
        Ok(())
    }

    fn decompress(
        &mut self,
        index: usize,
        header: &ExtentHeader,
        encoded: &[u8],
    ) -> Result<Bytes, VerifyError> {
        let length = header.length as usize;
        // Exactly one frame, nothing after it.
        match zstd::zstd_safe::find_frame_compressed_size(encoded) {
            Ok(size) if size == encoded.len() => {}
            _ => {
                return Err(VerifyError::Malformed {
                    index,
                    offset: header.offset,
                    reason: "zstd extent is not exactly one frame",
                })
            }
        }
        // The context writes at most `capacity` bytes and fails with
        // "destination too small" if the frame holds more: a frame that
        // inflates beyond `length` never costs more than `length` bytes.
        let mut plain = Vec::with_capacity(length);
        let written = self
            .decompressor
            .decompress_to_buffer(encoded, &mut plain)
            .map_err(|source| VerifyError::Zstd {
                index,
                offset: header.offset,
                length: header.length,
                source,
            })?;
        if written != length || plain.len() != length {
            return Err(VerifyError::ShortFrame {
                index,
                offset: header.offset,
                length: header.length,
                actual: written,
            });
        }
        Ok(Bytes::from(plain))
    }
}

#[cfg(test)]
mod tests;
