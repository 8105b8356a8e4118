//! The messages of protocol version 1, as plain Rust values.
//!
//! Layouts are documented byte by byte in `protocol/PROTOCOL.md`; the codec
//! lives in `codec.rs`. Every message is one frame.

use bytes::Bytes;

use crate::types::{AgentId, Epoch, ExtentHeader, ImageName, RecoveryPointId, SeqNo};

/// Capability bits announced in [`Hello`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Capabilities(pub u64);

impl Capabilities {
    /// The peer can decode zstd-encoded data extents.
    pub const ZSTD: u64 = 1 << 0;
    /// The peer understands discard extents.
    pub const DISCARD: u64 = 1 << 1;
    /// The peer answers [`HashRequest`]s (used by `ferry verify`).
    pub const VERIFY: u64 = 1 << 2;
    /// Whether every bit of `bits` is set.
    pub const fn has(self, bits: u64) -> bool {
        self.0 & bits == bits
    }
}

/// First frame on a connection, sent by both sides: version range and identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Lowest protocol version the sender speaks.
    pub min_version: u16,
    /// Highest protocol version the sender speaks.
    pub max_version: u16,
    /// The sender's identity (must match its TLS certificate).
    pub agent_id: AgentId,
    /// What the sender can do.
    pub capabilities: Capabilities,
}

/// Primary → standby: start (or resume) replicating epoch `epoch` of an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenImage {
    /// Image being replicated.
    pub image: ImageName,
    /// Size of the source image at the start of this epoch, in bytes.
    pub size: u64,
    /// Change-detection block size of the source, in bytes.
    pub block_size: u32,
    /// The epoch being sent.
    pub epoch: Epoch,
    /// The committed epoch this epoch's extents are relative to;
    /// `Epoch(0)` means a full copy (the standby starts from an empty image).
    pub base_epoch: Epoch,
}

/// Primary → standby: what do you hold durably for (image, epoch)?
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResumeQuery {
    /// Image asked about.
    pub image: ImageName,
    /// Epoch asked about.
    pub epoch: Epoch,
}

/// Standby → primary: answer to [`ResumeQuery`] (also sent after [`OpenImage`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResumeAnswer {
    /// Image answered about.
    pub image: ImageName,
    /// Epoch answered about.
    pub epoch: Epoch,
    /// Newest epoch of this image committed on the standby (0 = none).
    pub committed_epoch: Epoch,
    /// Highest batch of `epoch` that is durable (0 = none).
    pub durable_seq: SeqNo,
    /// Source offset below which every change of `epoch` is durable: the
    /// primary resumes its scan here.
    pub resume_offset: u64,
}

/// Primary → standby: a batch of extents of one (image, epoch).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtentBatch {
    /// Image the extents belong to.
    pub image: ImageName,
    /// Epoch the extents belong to.
    pub epoch: Epoch,
    /// Position of this batch in the epoch (1, 2, ...).
    pub seq: SeqNo,
    /// Start of the source range this batch covers.
    pub scan_start: u64,
    /// End of the source range this batch covers: once this batch is durable,
    /// every change below `scan_end` is durable.
    pub scan_end: u64,
    /// CRC-32C (Castagnoli) of `payload` exactly as sent.
    pub payload_crc32c: u32,
    /// BLAKE3 of the concatenated plain (decoded) data of all data extents.
    pub plain_blake3: [u8; 32],
    /// The extents, in ascending, non-overlapping offset order.
    pub extents: Vec<ExtentHeader>,
    /// Encoded data of the data extents, concatenated in extent order.
    pub payload: Bytes,
}

/// One image's part in a [`Commit`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitImage {
    /// Image.
    pub image: ImageName,
    /// Epoch of that image that belongs to the recovery point.
    pub epoch: Epoch,
    /// Last batch of that epoch (0 = the epoch has no batches).
    pub last_seq: SeqNo,
    /// Size of the image at this recovery point.
    pub size: u64,
}

/// Primary → standby: the listed epochs together form a recovery point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    /// Recovery point identifier.
    pub recovery_point: RecoveryPointId,
    /// When the recovery point was taken, milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// The source changed while it was read: the point is not crash-consistent.
    pub fuzzy: bool,
    /// Every image of the recovery point, with its epoch.
    pub images: Vec<CommitImage>,
}

/// Standby → primary: the recovery point is committed and durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    /// Recovery point now committed.
    pub recovery_point: RecoveryPointId,
}

/// Standby → primary: every batch of (image, epoch) up to `durable_seq` is durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ack {
    /// Image.
    pub image: ImageName,
    /// Epoch.
    pub epoch: Epoch,
    /// Highest durable batch.
    pub durable_seq: SeqNo,
}

/// Why the standby asks for a batch again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NackReason {
    /// The payload's CRC-32C did not match.
    PayloadCrc,
    /// The decoded data's BLAKE3 did not match.
    PlainBlake3,
    /// A data extent failed to decode.
    Decode,
}

impl NackReason {
    /// Wire code.
    pub const fn code(self) -> u8 {
        match self {
            Self::PayloadCrc => 0x01,
            Self::PlainBlake3 => 0x02,
            Self::Decode => 0x03,
        }
    }
    /// Reason for a wire code, if known.
    pub const fn from_code(code: u8) -> Option<Self> {
        match code {
            0x01 => Some(Self::PayloadCrc),
            0x02 => Some(Self::PlainBlake3),
            0x03 => Some(Self::Decode),
            _ => None,
        }
    }
}

/// Standby → primary: batch `seq` was rejected and not written; send it again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nack {
    /// Image.
    pub image: ImageName,
    /// Epoch.
    pub epoch: Epoch,
    /// The rejected batch.
    pub seq: SeqNo,
    /// Why it was rejected.
    pub reason: NackReason,
}

/// Either side: hash the committed image in granules (used by `ferry verify`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HashRequest {
    /// Image.
    pub image: ImageName,
    /// Start of the range.
    pub offset: u64,
    /// Length of the range.
    pub length: u64,
    /// Granule size; the answer holds one hash per granule (the last may be short).
    pub granularity: u32,
}

/// Answer to [`HashRequest`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HashAnswer {
    /// Image.
    pub image: ImageName,
    /// Recovery point the hashed image is at.
    pub recovery_point: RecoveryPointId,
    /// Image size at that recovery point.
    pub image_size: u64,
    /// Start of the hashed range.
    pub offset: u64,
    /// Granule size.
    pub granularity: u32,
    /// BLAKE3 of each granule (bytes past the image end are not hashed).
    pub hashes: Vec<[u8; 32]>,
}

/// Error codes carried by [`ErrorFrame`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// A frame could not be decoded.
    Malformed,
    /// No common protocol version.
    VersionMismatch,
    /// The peer is not allowed to do this.
    NotPermitted,
    /// The image is unknown.
    UnknownImage,
    /// The base epoch does not match what the standby holds: full resync needed.
    EpochMismatch,
    /// A frame arrived out of order (e.g. a batch with a gap in sequence).
    OutOfOrder,
    /// The standby cannot store the data (disk full, I/O error).
    Storage,
    /// The standby is busy with this image (another session holds it).
    Busy,
    /// Anything else.
    Internal,
    /// A code this version does not know (kept for forward compatibility).
    Unknown(u16),
}

impl ErrorCode {
    /// Wire code.
    pub const fn code(self) -> u16 {
        match self {
            Self::Malformed => 0x0001,
            Self::VersionMismatch => 0x0002,
            Self::NotPermitted => 0x0003,
            Self::UnknownImage => 0x0004,
            Self::EpochMismatch => 0x0005,
            Self::OutOfOrder => 0x0006,
            Self::Storage => 0x0007,
            Self::Busy => 0x0008,
            Self::Internal => 0x00ff,
            Self::Unknown(code) => code,
        }
    }
    /// Code for a wire value (unknown values are preserved).
    pub const fn from_code(code: u16) -> Self {
        match code {
            0x0001 => Self::Malformed,
            0x0002 => Self::VersionMismatch,
            0x0003 => Self::NotPermitted,
            0x0004 => Self::UnknownImage,
            0x0005 => Self::EpochMismatch,
            0x0006 => Self::OutOfOrder,
            0x0007 => Self::Storage,
            0x0008 => Self::Busy,
            0x00ff => Self::Internal,
            other => Self::Unknown(other),
        }
    }
}

/// Either side: something went wrong; `message` is for humans.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorFrame {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Human-readable explanation (UTF-8, at most 4096 bytes).
    pub message: String,
}

/// Every frame of protocol version 1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// See [`Hello`].
    Hello(Hello),
    /// See [`OpenImage`].
    OpenImage(OpenImage),
    /// See [`ResumeQuery`].
    ResumeQuery(ResumeQuery),
    /// See [`ResumeAnswer`].
    ResumeAnswer(ResumeAnswer),
    /// See [`ExtentBatch`].
    ExtentBatch(ExtentBatch),
    /// See [`Commit`].
    Commit(Commit),
    /// See [`Committed`].
    Committed(Committed),
    /// See [`Ack`].
    Ack(Ack),
    /// See [`Nack`].
    Nack(Nack),
    /// See [`HashRequest`].
    HashRequest(HashRequest),
    /// See [`HashAnswer`].
    HashAnswer(HashAnswer),
    /// See [`ErrorFrame`].
    Error(ErrorFrame),
}
