//! Errors of the standby store ([`StoreError`]) and the reasons a batch is
//! rejected ([`BatchRejection`]).

use std::io;
use std::path::{Path, PathBuf};

use ferry_protocol::types::{Epoch, ImageName, RecoveryPointId, SeqNo};

/// Everything that can go wrong in the standby store.
///
/// Grouped by cause: the disk ([`Io`](Self::Io), [`NoSpace`](Self::NoSpace),
/// [`Corrupt`](Self::Corrupt)), the peer or caller sent something that does not
/// fit the stored state (`EpochMismatch`, `OutOfOrder`, `InvalidBatch`, …), or
/// the resource is in use (`Busy`, `Locked`).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file-system call failed.
    #[error("{op} {}: I/O error", path.display())]
    Io {
        /// What the store was doing ("write journal", "fsync image", …).
        op: &'static str,
        /// File or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The file system is full (`ENOSPC`/`EDQUOT`); nothing was acknowledged.
    #[error("{op} {}: no space left on device", path.display())]
    NoSpace {
        /// What the store was doing.
        op: &'static str,
        /// File involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A Ceph (librados/librbd) call of an RBD standby failed.
    #[error("RBD standby: {context}")]
    Ceph {
        /// What the store was doing, and on which image.
        context: String,
        /// The failed call.
        #[source]
        source: crate::sys::librbd::CephError,
    },
    /// Another epoch writer or store operation holds the image.
    #[error("image {image} is busy: another writer holds it")]
    Busy {
        /// The image.
        image: ImageName,
    },
    /// The epoch's base is neither 0 (full copy) nor the committed epoch.
    #[error("image {image}: base epoch {base} does not match committed epoch {committed}")]
    EpochMismatch {
        /// The image.
        image: ImageName,
        /// Epoch committed on the standby.
        committed: Epoch,
        /// Base epoch the primary asked for.
        base: Epoch,
    },
    /// The epoch is not newer than the committed one.
    #[error("image {image}: epoch {epoch} is not newer than committed epoch {committed}")]
    StaleEpoch {
        /// The image.
        image: ImageName,
        /// Epoch committed on the standby.
        committed: Epoch,
        /// Epoch the primary asked for.
        epoch: Epoch,
    },
    /// A batch arrived with a gap in its sequence.
    #[error("image {image}: expected batch {expected}, got {got}")]
    OutOfOrder {
        /// The image.
        image: ImageName,
        /// The next sequence number the writer accepts.
        expected: SeqNo,
        /// The sequence number received.
        got: SeqNo,
    },
    /// The store holds no such image.
    #[error("unknown image {image}")]
    UnknownImage {
        /// The image.
        image: ImageName,
    },
    /// The image has no such (retained) recovery point.
    #[error("image {image} has no recovery point {recovery_point}")]
    UnknownRecoveryPoint {
        /// The image.
        image: ImageName,
        /// The recovery point asked for.
        recovery_point: RecoveryPointId,
    },
    /// A batch was rejected; nothing of it was staged.
    #[error("image {image} batch {seq} rejected: {reason}")]
    InvalidBatch {
        /// The image.
        image: ImageName,
        /// The batch.
        seq: SeqNo,
        /// What is wrong with it.
        reason: BatchRejection,
    },
    /// `seal` was called with a last batch that is not the durable one.
    #[error("image {image} epoch {epoch}: cannot seal at batch {last_seq}: durable {durable}, staged {staged}")]
    SealMismatch {
        /// The image.
        image: ImageName,
        /// The epoch.
        epoch: Epoch,
        /// Last batch named by the caller.
        last_seq: SeqNo,
        /// Last durable batch.
        durable: SeqNo,
        /// Last staged batch.
        staged: SeqNo,
    },
    /// A commit request does not fit the stored state; nothing was changed.
    #[error("commit of recovery point {recovery_point} rejected for image {image}: {reason}")]
    InvalidCommit {
        /// The recovery point.
        recovery_point: RecoveryPointId,
        /// The image concerned.
        image: ImageName,
        /// What is wrong.
        reason: String,
    },
    /// A request's arguments are unusable (e.g. hash granularity 0).
    #[error("invalid request: {reason}")]
    InvalidRequest {
        /// What is wrong.
        reason: String,
    },
    /// A store file fails its checksum or structure check in a way that is not
    /// a torn tail.
    #[error("{} is corrupt: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The store configuration is invalid.
    #[error("invalid store configuration: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: String,
    },
    /// Another process (or another `StandbyStore::open` in this one) has the
    /// store directory open.
    #[error("store directory {} is locked by another user", path.display())]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// An earlier I/O failure left this writer's files in an unknown state;
    /// drop it and call `open_epoch` again (which rescans the journal).
    #[error("epoch writer for image {image} epoch {epoch} failed earlier and must be reopened")]
    Poisoned {
        /// The image.
        image: ImageName,
        /// The epoch.
        epoch: Epoch,
    },
    /// The image was fenced for a failover: it takes no more replication
    /// (no epoch opens, no batch is staged, no recovery point commits), so a
    /// primary that is still alive cannot change what became, or what
    /// backs, the operator's volume.
    #[error("image {image} is fenced: its group failed over here and takes no more replication")]
    Fenced {
        /// The image.
        image: ImageName,
    },
    /// Another agent of the site changed an image's shared state since this
    /// one read it (a compare-and-set on its version failed): nothing was
    /// written; read the state again.
    #[error("image {image}: its state in {store} is at version {found}, not {expected}: another agent wrote it; nothing was written")]
    StateConflict {
        /// The image.
        image: ImageName,
        /// Where its state lives.
        store: String,
        /// The version this agent read.
        expected: u64,
        /// The version found (`u64::MAX`: could not be read).
        found: u64,
    },
    /// A test failpoint simulated a crash at this step.
    #[cfg(test)]
    #[error("injected crash at {point:?}")]
    InjectedCrash {
        /// The step.
        point: super::failpoint::CrashPoint,
    },
}

impl StoreError {
    /// Wraps an I/O error with its operation and path, mapping `ENOSPC` and
    /// `EDQUOT` to [`StoreError::NoSpace`].
    pub(crate) fn io(op: &'static str, path: &Path, source: io::Error) -> Self {
        let path = path.to_path_buf();
        match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => Self::NoSpace { op, path, source },
            _ => Self::Io { op, path, source },
        }
    }

    /// A [`StoreError::Corrupt`] for `path`.
    pub(crate) fn corrupt(path: &Path, reason: impl Into<String>) -> Self {
        Self::Corrupt {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}

/// Why a batch was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchRejection {
    /// An extent has length 0.
    #[error("extent at {offset} has length 0")]
    EmptyExtent {
        /// Offset of the extent.
        offset: u64,
    },
    /// An extent reaches past the image size announced by `OpenImage`.
    #[error("extent [{offset}, +{length}) reaches past the image size {size}")]
    PastEnd {
        /// Offset of the extent.
        offset: u64,
        /// Its length.
        length: u32,
        /// The image size.
        size: u64,
    },
    /// Extents are not in ascending, non-overlapping order.
    #[error("extent at {offset} starts before the previous extent ends at {previous_end}")]
    Unsorted {
        /// Offset of the extent.
        offset: u64,
        /// End of the previous extent.
        previous_end: u64,
    },
    /// A data extent carries no data or data of the wrong length.
    #[error("data extent at {offset} has {got} bytes of data, expected {expected}")]
    DataLength {
        /// Offset of the extent.
        offset: u64,
        /// Its length.
        expected: u32,
        /// Bytes attached.
        got: usize,
    },
    /// A zero or discard extent carries data.
    #[error("zero/discard extent at {offset} carries data")]
    UnexpectedData {
        /// Offset of the extent.
        offset: u64,
    },
    /// The batch's `scan_end` is below the previous batch's.
    #[error("scan_end {scan_end} is below the previous batch's {previous}")]
    ScanEndBackwards {
        /// This batch's scan end.
        scan_end: u64,
        /// The previous batch's scan end.
        previous: u64,
    },
    /// In a full copy, an extent rewrites a range an earlier batch wrote.
    #[error(
        "full-copy extent at {offset} is below the high-water mark {high_water} of earlier batches"
    )]
    BelowHighWater {
        /// Offset of the extent.
        offset: u64,
        /// End of the highest extent staged so far.
        high_water: u64,
    },
    /// The batch is larger than one journal record may be.
    #[error("batch of {bytes} bytes exceeds the journal record limit {limit}")]
    TooLarge {
        /// Size of the encoded batch.
        bytes: u64,
        /// The limit.
        limit: u64,
    },
}
