//! [`Standby`]: the standby side's image store, whichever backend holds the
//! images — raw files ([`StandbyStore`]) or an RBD pool ([`RbdStandby`]) —
//! behind the one interface the receiver uses. It sits above both
//! implementations (`standby/` and `rbd/standby.rs`), so neither imports
//! the other.

use ferry_protocol::message::OpenImage;
use ferry_protocol::types::{Epoch, ImageName, RecoveryPointId, SeqNo};

use crate::rbd::standby::{RbdEpochWriter, RbdStandby};
use crate::standby::{
    EpochWriter, ImageState, RecoveryPointInfo, RecoveryPointMeta, SealedEpoch, StagedBatch,
    StandbyStore, StoreError,
};

/// A standby store of either backend. Cheap to clone.
#[derive(Clone, Debug)]
pub enum Standby {
    /// Raw image files with journals and undo logs.
    Files(StandbyStore),
    /// Images in an RBD pool with snapshot recovery points.
    Rbd(RbdStandby),
}

/// An epoch being received, of either backend.
pub enum EpochSink {
    /// Into a file store.
    Files(EpochWriter),
    /// Into an RBD pool.
    Rbd(RbdEpochWriter),
}

impl From<StandbyStore> for Standby {
    fn from(store: StandbyStore) -> Self {
        Self::Files(store)
    }
}

impl From<RbdStandby> for Standby {
    fn from(store: RbdStandby) -> Self {
        Self::Rbd(store)
    }
}

macro_rules! both {
    ($self:expr, $s:ident => $e:expr) => {
        match $self {
            Self::Files($s) => $e,
            Self::Rbd($s) => $e,
        }
    };
}

impl Standby {
    /// Starts or resumes receiving an epoch.
    pub fn open_epoch(&self, open: &OpenImage) -> Result<EpochSink, StoreError> {
        match self {
            Self::Files(s) => s.open_epoch(open).map(EpochSink::Files),
            Self::Rbd(s) => s.open_epoch(open).map(EpochSink::Rbd),
        }
    }

    /// Commits a recovery point over every sealed epoch.
    pub fn commit(
        &self,
        rp: RecoveryPointMeta,
        epochs: Vec<SealedEpoch>,
    ) -> Result<(), StoreError> {
        both!(self, s => s.commit(rp, epochs))
    }

    /// What the store holds for `image`.
    pub fn image_state(&self, image: &ImageName) -> Result<Option<ImageState>, StoreError> {
        both!(self, s => s.image_state(image))
    }

    /// The images the store holds.
    pub fn images(&self) -> Result<Vec<ImageName>, StoreError> {
        both!(self, s => s.images())
    }

    /// Retained recovery points of `image`, oldest first.
    pub fn recovery_points(&self, image: &ImageName) -> Result<Vec<RecoveryPointInfo>, StoreError> {
        both!(self, s => s.recovery_points(image))
    }

    /// Hashes of the committed image (see [`StandbyStore::hash_range`]).
    pub fn hash_range(
        &self,
        image: &ImageName,
        offset: u64,
        length: u64,
        granularity: u32,
    ) -> Result<(RecoveryPointId, u64, Vec<[u8; 32]>), StoreError> {
        both!(self, s => s.hash_range(image, offset, length, granularity))
    }

    /// Keeps a recovery point restorable beyond the retention.
    pub fn pin(&self, image: &ImageName, rp: RecoveryPointId) -> Result<(), StoreError> {
        both!(self, s => s.pin(image, rp))
    }

    /// Lets a pinned recovery point go.
    pub fn unpin(&self, image: &ImageName, rp: RecoveryPointId) -> Result<(), StoreError> {
        both!(self, s => s.unpin(image, rp))
    }

    /// Creates an empty placeholder image (nothing committed).
    pub fn create_placeholder(&self, image: &ImageName, size: u64) -> Result<(), StoreError> {
        both!(self, s => s.create_placeholder(image, size))
    }

    /// Deletes an image and everything kept of it.
    pub fn remove_image(&self, image: &ImageName) -> Result<(), StoreError> {
        both!(self, s => s.remove_image(image))
    }
}

impl EpochSink {
    /// The epoch.
    pub fn epoch(&self) -> Epoch {
        both!(self, w => w.epoch())
    }

    /// Highest durable batch.
    pub fn durable_seq(&self) -> SeqNo {
        both!(self, w => w.durable_seq())
    }

    /// Where the primary resumes its scan.
    pub fn resume_offset(&self) -> u64 {
        both!(self, w => w.resume_offset())
    }

    /// The image.
    pub fn image(&self) -> &ImageName {
        both!(self, w => w.image())
    }

    /// Stages a batch (`Ok(false)`: duplicate, ignored).
    pub fn stage(&mut self, batch: StagedBatch) -> Result<bool, StoreError> {
        both!(self, w => w.stage(batch))
    }

    /// Makes staged batches durable; returns the highest durable one.
    pub fn sync(&mut self) -> Result<SeqNo, StoreError> {
        both!(self, w => w.sync())
    }

    /// Ends the epoch.
    pub fn seal(self, last_seq: SeqNo, size: u64) -> Result<SealedEpoch, StoreError> {
        both!(self, w => w.seal(last_seq, size))
    }
}
