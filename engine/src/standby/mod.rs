//! The standby store: crash-consistent standby images, recovery points,
//! restore.
//!
//! Layout under the store directory `DIR` (details in `engine/DESIGN-standby.md`):
//! - `images/NAME.raw` — the standby image, byte-identical to the committed
//!   recovery point whenever no commit is running.
//! - `images/NAME.ferry/` — `state.json` (committed point + retained
//!   history), the pending epoch's `epoch-<E>.journal` (and, for full copies,
//!   `epoch-<E>.staging`), and the history files `undo-<E>.log` / `prev-<E>.raw`.
//! - `commits/rp-<ID>.intent` — a group commit in progress.
//! - `store.lock` — held (flock) by the one process using the store.
//!
//! Call order: [`StandbyStore::open`] (runs crash recovery) →
//! [`StandbyStore::open_epoch`] → [`EpochWriter::stage`]… →
//! [`EpochWriter::sync`] (acknowledge what it returns) → [`EpochWriter::seal`]
//! → [`StandbyStore::commit`] with every sealed epoch of the recovery point.
//! All calls block on disk I/O: call them from `spawn_blocking`.

mod error;
pub(crate) mod failpoint;
mod io;
mod journal;
#[cfg(any(test, feature = "failpoints"))]
pub mod power_loss;
mod record;
mod slot;
mod state;
mod store;
mod undo;
mod writer;

#[cfg(test)]
mod tests;

use ferry_protocol::types::{Epoch, ImageName, RecoveryPointId, SeqNo};

/// A decoded extent as staged (`data` is `Some`, `len == length`, for data
/// extents only). The codec's type, re-exported so callers need one name.
pub use crate::payload_codec::DecodedExtent;
pub use error::{BatchRejection, StoreError};
pub use failpoint::CrashPoint;
pub(crate) use state::{read_checksummed, write_checksummed};
pub use store::{HandedOverTo, StandbyStore, MAX_HASHES_PER_CALL};
pub(crate) use writer::check_extents;
pub use writer::EpochWriter;

/// Checks that `open` may start on an image whose committed epoch is
/// `committed`: the epoch is newer, and the base is 0 (full copy) or the
/// committed epoch. Shared by both standby backends.
/// Largest image a standby accepts (1 PiB). A size above it is refused at
/// `OpenImage` and at seal time, before anything is written: such a size
/// cannot be given to `set_len` (a file offset is an `i64`) and, recorded in
/// a commit, would make every replay of that commit fail.
pub const MAX_IMAGE_SIZE: u64 = 1 << 50;

/// Refuses an image size above [`MAX_IMAGE_SIZE`].
pub(crate) fn check_size(what: &str, size: u64) -> Result<(), StoreError> {
    if size > MAX_IMAGE_SIZE {
        return Err(StoreError::InvalidRequest {
            reason: format!(
                "{what}: image size {size} is larger than the {MAX_IMAGE_SIZE}-byte limit"
            ),
        });
    }
    Ok(())
}

pub(crate) fn check_open(
    open: &ferry_protocol::message::OpenImage,
    committed: Epoch,
) -> Result<(), StoreError> {
    check_size(
        &format!("open {} epoch {}", open.image, open.epoch),
        open.size,
    )?;
    if open.epoch <= committed {
        return Err(StoreError::StaleEpoch {
            image: open.image.clone(),
            committed,
            epoch: open.epoch,
        });
    }
    if open.base_epoch != Epoch(0) && open.base_epoch != committed {
        return Err(StoreError::EpochMismatch {
            image: open.image.clone(),
            committed,
            base: open.base_epoch,
        });
    }
    Ok(())
}

/// Settings of a [`StandbyStore`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    /// Recovery points kept restorable per image (1..=64; default 5).
    pub retention: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self { retention: 5 }
    }
}

/// What the store holds for one image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageState {
    /// Newest committed epoch (0 = nothing committed yet).
    pub committed_epoch: Epoch,
    /// Recovery point the image is at (0 = none).
    pub recovery_point: RecoveryPointId,
    /// Size of the committed image in bytes.
    pub size: u64,
    /// The epoch being received, if any.
    pub pending: Option<PendingEpoch>,
}

/// An epoch that has been opened but not committed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingEpoch {
    /// The epoch.
    pub epoch: Epoch,
    /// Its base (0 = full copy).
    pub base_epoch: Epoch,
    /// Highest durable batch (0 = none).
    pub durable_seq: SeqNo,
    /// Scan end of that batch: the primary resumes its scan here.
    pub resume_offset: u64,
}

/// A verified, decoded batch handed to [`EpochWriter::stage`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StagedBatch {
    /// Position of the batch in the epoch (1, 2, …).
    pub seq: SeqNo,
    /// Once this batch is durable, every change below `scan_end` is durable.
    pub scan_end: u64,
    /// The extents, ascending and non-overlapping.
    pub extents: Vec<DecodedExtent>,
}

/// Metadata of a recovery point being committed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecoveryPointMeta {
    /// Recovery point id (must be newer than each image's current one).
    pub id: RecoveryPointId,
    /// When the primary took it, ms since the Unix epoch.
    pub created_unix_ms: u64,
    /// The source changed while it was read (not crash-consistent).
    pub fuzzy: bool,
}

/// A retained recovery point of one image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecoveryPointInfo {
    /// Recovery point id.
    pub id: RecoveryPointId,
    /// Epoch of the image at that point.
    pub epoch: Epoch,
    /// When the primary took it, ms since the Unix epoch.
    pub created_unix_ms: u64,
    /// Whether the point is fuzzy.
    pub fuzzy: bool,
    /// Image size at that point.
    pub size: u64,
    /// Whether this is the point the image is at now.
    pub current: bool,
}

/// An epoch whose batches are all durable, ready to be committed.
///
/// Returned by [`EpochWriter::seal`]; may also be built from a `CommitImage`
/// message (e.g. after a standby restart), since [`StandbyStore::commit`]
/// checks every field against the journal on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedEpoch {
    /// The image.
    pub image: ImageName,
    /// The epoch.
    pub epoch: Epoch,
    /// Its last batch (0 = no batches).
    pub last_seq: SeqNo,
    /// Image size at the recovery point.
    pub size: u64,
}
