//! Extent sources: where changed extents of a protected image come from.
//!
//! An [`ExtentSource`] is split along the pipeline's stages so that I/O,
//! CPU work and bookkeeping run on different threads without the source
//! knowing about threads:
//!
//! 1. [`ExtentSource::begin_cycle`] fixes the epoch, its base and the resume
//!    point.
//! 2. [`ExtentSource::read_next`] (one reader thread, sequential) yields
//!    [`RawChunk`]s in scan order: the bytes of a range, a known hole, or a
//!    list of extents a diff-capable backend (RBD `diff_iterate2`, a
//!    journal) already knows changed — read with as many requests in flight
//!    as the backend likes, as long as chunks come out in order.
//! 3. [`ExtentSource::analyzer`] hands out a shareable [`ChunkAnalyzer`]
//!    (N worker threads) that turns a raw chunk into the changed
//!    [`PlainExtent`]s plus a [`ChunkRecord`] of bookkeeping.
//! 4. [`ExtentSource::record`] (in scan order, before the chunk is handed to
//!    the sender) persists the bookkeeping, e.g. the new manifest entries;
//!    [`ExtentSource::make_durable`] (batched, before a chunk the sender may
//!    report to the standby is handed over) makes it durable.
//! 5. [`ExtentSource::end_scan`] reports whether the image changed while it
//!    was read; [`ExtentSource::commit_cycle`] makes the cycle the base of
//!    the next one once the standby committed it.
//!
//! [`file::FileSource`] implements this for raw image files and block devices.

pub mod diffstream;
pub mod file;
pub mod manifest;
pub mod pool;

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use ferry_protocol::{Epoch, ExtentKind};

use crate::compression::LinkBound;
use crate::payload_codec::PlainExtent;
pub use file::{block_hashes, FileSource};
pub use manifest::{BlockHash, ManifestError, BLOCK_SIZE};
pub use pool::{BufferPool, PoolBuf, PoolStats};

/// Size and change-detection granularity of an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    /// Size in bytes.
    pub size: u64,
    /// Change-detection block size in bytes.
    pub block_size: u32,
}

/// What one replication cycle of an image should do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CyclePlan {
    /// The epoch being produced (greater than the committed one).
    pub epoch: Epoch,
    /// The committed epoch the cycle is relative to; `Epoch(0)` = full copy.
    pub base_epoch: Epoch,
    /// Where the scan starts: 0 for a new cycle, or at most
    /// [`ExtentSource::resumable_offset`] to resume an interrupted one.
    pub resume_offset: u64,
}

/// Result of a completed scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ScanOutcome {
    /// The image changed (or may have changed) while it was read: the
    /// recovery point is not crash-consistent.
    pub fuzzy: bool,
}

/// What a [`RawChunk`] carries.
#[derive(Clone, Debug)]
pub enum ChunkBody {
    /// The image bytes of `scan_start..scan_end`, exactly that many.
    Bytes(Bytes),
    /// The range reads as zeroes (a hole); nothing was read.
    Hole,
    /// The changed extents of the range as the backend listed them (data
    /// extents carry their bytes); ranges not listed are unchanged.
    Extents(Vec<PlainExtent>),
}

/// One chunk of the scan as the reader produced it.
#[derive(Clone, Debug)]
pub struct RawChunk {
    /// Start of the covered source range.
    pub scan_start: u64,
    /// End of the covered source range.
    pub scan_end: u64,
    /// The chunk's content.
    pub body: ChunkBody,
    /// Manifest-based sources: the base manifest's hashes of the chunk's
    /// blocks, starting at `scan_start`; blocks past the end of this vector
    /// did not exist in the base (or there is no base: full copy).
    pub base_hashes: Vec<BlockHash>,
}

/// Bookkeeping of one analysed chunk, persisted in order by [`ExtentSource::record`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChunkRecord {
    /// Start of the covered source range.
    pub scan_start: u64,
    /// End of the covered source range.
    pub scan_end: u64,
    /// Manifest-based sources: the new hash of every block of the range.
    pub hashes: Vec<BlockHash>,
    /// Manifest-based sources: bytes of the blocks whose hash differs from
    /// their base entry (blocks past the base's end are not counted).
    pub base_changed_bytes: u64,
    /// The first such block's offset.
    pub first_base_change: Option<u64>,
}

/// A chunk after change detection.
#[derive(Clone, Debug)]
pub struct AnalyzedChunk {
    /// The changed extents, ascending, within the chunk's range, coalesced.
    pub extents: Vec<PlainExtent>,
    /// Bytes of all-zero blocks found in the range (changed or not).
    pub bytes_zero: u64,
    /// What [`ExtentSource::record`] must persist for this chunk.
    pub record: ChunkRecord,
}

/// The CPU stage of a source: pure, thread-safe, runs on many workers.
pub trait ChunkAnalyzer: Send + Sync {
    /// Finds the changed extents of `chunk`. Must not depend on other chunks.
    fn analyze(&self, chunk: RawChunk) -> Result<AnalyzedChunk, SourceError>;
}

/// A protected image as the pipeline sees it. See the module docs for the
/// call order.
///
/// Failure contract: an `Err` from any method leaves the on-disk state as it
/// was before the call or in a state that a later [`ExtentSource::begin_cycle`]
/// resumes from correctly; [`ExtentSource::resumable_offset`] never claims
/// progress that is not durable (across processes) or recorded (in process).
pub trait ExtentSource: Send {
    /// Size and block size the next cycle will use: the in-progress cycle's
    /// size if one exists, else the image's current size. A following
    /// [`ExtentSource::begin_cycle`] that starts a new cycle scans exactly the
    /// size returned by the last call (so `OpenImage`, the scan and
    /// `CommitImage` agree); if the image changed size in between, that
    /// cycle is fuzzy.
    fn info(&self) -> Result<ImageInfo, SourceError>;

    /// Newest epoch whose state is the base for incremental cycles (0 = none).
    fn committed_epoch(&self) -> Epoch;

    /// Highest offset a resumed scan of `epoch` may start at: every change
    /// below it was recorded (durably, if recorded by an earlier process).
    /// 0 when `epoch` is not in progress.
    fn resumable_offset(&self, epoch: Epoch) -> u64;

    /// How many bytes of data the cycle of `plan` will read, when the
    /// source can tell before the cycle starts at the cost of work the
    /// cycle does anyway (the RBD source lists the first window of a
    /// capture taken ahead, and its cycle starts from that listing); `None`
    /// when it cannot. The sender lets images with few bytes to send run
    /// beside the large ones. The default cannot tell.
    fn data_bytes_ahead(&mut self, _plan: &CyclePlan) -> Result<Option<u64>, SourceError> {
        Ok(None)
    }

    /// Starts or resumes a cycle; `chunk_size` (a multiple of the block
    /// size) bounds each [`RawChunk`]. Returns the image geometry of the
    /// cycle, which a resumed cycle keeps from its first start: the sender
    /// uses this size in `OpenImage` and `CommitImage`.
    fn begin_cycle(&mut self, plan: &CyclePlan, chunk_size: u32) -> Result<ImageInfo, SourceError>;

    /// Hands the source the sender's [`LinkBound`] signal; the pipeline
    /// calls it before [`ExtentSource::begin_cycle`]. A source that sends
    /// bytes only to save storage operations (the RBD source's bridged
    /// gaps between listed extents) stops sending them while the signal is
    /// set. The default ignores it.
    fn follow_link(&mut self, _link: LinkBound) {}

    /// The next chunk in scan order, `None` at the end of the scan. Buffers
    /// come from `pool` (whose buffers hold at least `chunk_size` bytes).
    fn read_next(&mut self, pool: &BufferPool) -> Result<Option<RawChunk>, SourceError>;

    /// The analyser for the current cycle.
    fn analyzer(&self) -> Arc<dyn ChunkAnalyzer>;

    /// Persists one chunk's bookkeeping; called in scan order.
    fn record(&mut self, record: &ChunkRecord) -> Result<(), SourceError>;

    /// Makes everything [`ExtentSource::record`]ed so far durable, so that
    /// [`ExtentSource::resumable_offset`] in a new process covers it. The
    /// pipeline calls it before it delivers a chunk the sender may report to
    /// the standby: the standby then never holds durably a batch beyond what
    /// a new primary process can resume from. Sources whose every offset is
    /// resumable (immutable snapshots, diff files) keep the default.
    fn make_durable(&mut self) -> Result<(), SourceError> {
        Ok(())
    }

    /// Called after the last chunk was recorded: makes the cycle's
    /// bookkeeping durable and reports whether the image changed meanwhile.
    fn end_scan(&mut self) -> Result<ScanOutcome, SourceError>;

    /// The scan stopped early (connection lost, shutdown): keep what was
    /// recorded for a later resume, best effort (errors are logged).
    fn abort_scan(&mut self);

    /// The standby committed `epoch`: it becomes the base of the next cycle.
    fn commit_cycle(&mut self, epoch: Epoch) -> Result<(), SourceError>;

    /// Forgets the in-progress cycle (the next one starts from scratch).
    fn discard_cycle(&mut self) -> Result<(), SourceError>;
}

/// The analyser of sources that list their changed extents (RBD snapshot
/// diffs, diff streams): all-zero data extents become zero extents (they
/// need no bytes on the wire); everything else passes through.
pub struct ListedExtentsAnalyzer;

impl ChunkAnalyzer for ListedExtentsAnalyzer {
    fn analyze(&self, chunk: RawChunk) -> Result<AnalyzedChunk, SourceError> {
        let ChunkBody::Extents(listed) = chunk.body else {
            return Err(SourceError::UnexpectedChunk {
                scan_start: chunk.scan_start,
                scan_end: chunk.scan_end,
            });
        };
        let mut extents: Vec<PlainExtent> = Vec::with_capacity(listed.len());
        let mut bytes_zero = 0u64;
        for mut extent in listed {
            if extent.kind == ExtentKind::Data
                && extent.data.as_deref().is_some_and(crate::rbddiff::is_zero)
            {
                extent.kind = ExtentKind::Zero;
                extent.data = None;
            }
            if extent.kind != ExtentKind::Data {
                bytes_zero += u64::from(extent.length);
            }
            match extents.last_mut() {
                Some(last)
                    if last.kind == ExtentKind::Zero
                        && extent.kind == ExtentKind::Zero
                        && last.offset + u64::from(last.length) == extent.offset =>
                {
                    last.length += extent.length;
                }
                _ => extents.push(extent),
            }
        }
        Ok(AnalyzedChunk {
            extents,
            bytes_zero,
            record: ChunkRecord {
                scan_start: chunk.scan_start,
                scan_end: chunk.scan_end,
                hashes: Vec::new(),
                base_changed_bytes: 0,
                first_base_change: None,
            },
        })
    }
}

/// Errors of extent sources.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// An I/O operation on the image or the state directory failed.
    #[error("{op} {path}: I/O error")]
    Io {
        /// What was being done.
        op: &'static str,
        /// File involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Reading the image failed.
    #[error("reading image {path} at offset {offset}")]
    Read {
        /// The image.
        path: PathBuf,
        /// Offset of the failed read.
        offset: u64,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A manifest is unusable.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The state file cannot be parsed or written.
    #[error("state file {path} is unusable")]
    State {
        /// The state file.
        path: PathBuf,
        /// Parser error.
        #[source]
        source: serde_json::Error,
    },
    /// The image is neither a regular file nor a block device.
    #[error("{path} is neither a regular file nor a block device")]
    NotAnImage {
        /// The path.
        path: PathBuf,
    },
    /// The cycle plan does not fit the source's state.
    #[error(
        "cannot start epoch {epoch} on base {base_epoch} (committed epoch {committed}): {reason}"
    )]
    BadPlan {
        /// Requested epoch.
        epoch: Epoch,
        /// Requested base.
        base_epoch: Epoch,
        /// The source's committed epoch.
        committed: Epoch,
        /// What is wrong.
        reason: &'static str,
    },
    /// A resume was requested beyond the recorded progress.
    #[error("cannot resume epoch {epoch} at {requested}: only {resumable} is recorded")]
    ResumeBeyondProgress {
        /// Epoch.
        epoch: Epoch,
        /// Requested offset.
        requested: u64,
        /// Recorded progress.
        resumable: u64,
    },
    /// A method was called out of order (no cycle, records out of order…).
    #[error("source misuse: {reason}")]
    Misuse {
        /// What was wrong.
        reason: &'static str,
    },
    /// Blocks differ from the committed base although nothing wrote the
    /// image since that point (see `file` module docs): refused so the
    /// standby keeps its copy.
    #[error(
        "{path}: {bytes} bytes changed at rest, first at offset {first_offset}: the image \
         differs from the last recovery point although nothing wrote it since (its \
         timestamps or write counters are unchanged). Check the storage for corruption \
         before replicating; the standby still holds the last good copy. If the change is \
         intended (a write that bypassed the kernel), accept it once with \
         `ferry sync --accept-changes-at-rest` or `[source] accept_changes_at_rest = true`"
    )]
    ChangedAtRest {
        /// The image.
        path: PathBuf,
        /// Bytes of the blocks that changed.
        bytes: u64,
        /// The first of them.
        first_offset: u64,
    },
    /// `commit_cycle` for an epoch whose scan is not complete.
    #[error("epoch {epoch} cannot be committed: {reason}")]
    NotCommittable {
        /// Epoch.
        epoch: Epoch,
        /// Why.
        reason: &'static str,
    },
    /// A chunk's body does not fit the analyser (a backend bug).
    #[error("chunk {scan_start}..{scan_end} has a body this analyser does not handle")]
    UnexpectedChunk {
        /// Start of the chunk.
        scan_start: u64,
        /// End of the chunk.
        scan_end: u64,
    },
    /// Configuration values that cannot work.
    #[error("invalid configuration: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: &'static str,
    },
    /// The read was cancelled because the pipeline is stopping.
    #[error("scan cancelled")]
    Cancelled,
    /// A diff file of a `diff:` source cannot be sent.
    #[error("diff {path}: {reason}")]
    BadDiff {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Bookkeeping shared with the standby store (checksummed state files) failed.
    #[error(transparent)]
    Store(Box<crate::standby::StoreError>),
    /// A source backend above this module failed (the RBD backend: its
    /// `RbdError`, converted by `From`), so the source interface does not
    /// depend on any backend.
    #[error(transparent)]
    Backend(Box<dyn std::error::Error + Send + Sync>),
}

impl SourceError {
    /// `plan` does not fit a source whose committed epoch is `committed`.
    pub fn bad_plan(plan: &CyclePlan, committed: Epoch, reason: &'static str) -> Self {
        Self::BadPlan {
            epoch: plan.epoch,
            base_epoch: plan.base_epoch,
            committed,
            reason,
        }
    }
}
