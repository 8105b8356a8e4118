//! [`Standby`]: the standby side's image store, whichever backend holds the
//! images — raw files ([`StandbyStore`]) or an RBD pool ([`RbdStandby`]) —
//! behind the one interface the receiver uses. It sits above both
//! implementations (`standby/` and `rbd/standby.rs`), so neither imports
//! the other.
//!
//! The agent drives the standby copies only through these methods (restore
//! into a new volume, failover — fence, volumes without copying, leftovers
//! of a failed attempt: `standby_backend/failover.rs` —, adopt, pin,
//! remove, roll back): where the backends differ — what an output is, where
//! a failover writes — the backend gives the answer, so no caller matches
//! on the backend.

mod failover;
mod reprotect;

pub use failover::{FailoverLeftover, Volume, VolumeMethod};
pub use reprotect::{ReprotectCopy, ReprotectSource};

use std::ffi::{OsStr, OsString};
use std::path::Path;

use ferry_protocol::message::OpenImage;
use ferry_protocol::types::{Epoch, ImageName, RecoveryPointId, SeqNo};

use crate::rbd::standby::{RbdEpochWriter, RbdStandby};
use crate::rbd::{ClusterSpec, RbdSpec};
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

/// Which backend a [`Standby`] is: the kind of volume its copies are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StandbyKind {
    /// Raw image files.
    Files,
    /// Images of an RBD pool.
    Rbd,
}

/// Where [`Standby::adopt`] copies an image from: a file (files backend)
/// or a snapshot of an RBD image of the standby's cluster (RBD backend).
#[derive(Clone, Copy, Debug)]
pub enum AdoptSource<'a> {
    /// A raw file.
    File(&'a Path),
    /// An RBD image snapshot (`spec.snap` names it) on `cluster`.
    Rbd {
        /// The cluster holding `spec`.
        cluster: &'a ClusterSpec,
        /// The image and snapshot to copy.
        spec: &'a RbdSpec,
    },
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

    /// Which backend this is.
    pub fn kind(&self) -> StandbyKind {
        match self {
            Self::Files(_) => StandbyKind::Files,
            Self::Rbd(_) => StandbyKind::Rbd,
        }
    }

    /// Writes `image` as it was at recovery point `rp` into the **new**
    /// volume `output`: a file path (files backend, see
    /// [`StandbyStore::restore`]) or an image name of the standby pool (RBD
    /// backend, see [`RbdStandby::restore`]).
    pub fn restore_into(
        &self,
        image: &ImageName,
        rp: RecoveryPointId,
        output: impl AsRef<OsStr>,
    ) -> Result<(), StoreError> {
        let output = output.as_ref();
        match self {
            Self::Files(s) => s.restore(image, rp, Path::new(output)),
            Self::Rbd(s) => s.restore(image, rp, &output.to_string_lossy()),
        }
    }

    /// Whether `output` can be a restore's new volume before anything is
    /// begun: `Err` says why not (the files backend wants an absolute path
    /// that does not exist; the RBD backend checks when it creates the image).
    pub fn check_restore_output(&self, output: impl AsRef<OsStr>) -> Result<(), String> {
        let path = Path::new(output.as_ref());
        match self {
            Self::Files(_) if path.exists() || !path.is_absolute() => {
                Err("must be an absolute path that does not exist".into())
            }
            _ => Ok(()),
        }
    }

    /// The output an operator named for a restore on the command line, as
    /// [`Self::restore_into`] takes it: the path itself (files backend), or
    /// an image name of the standby pool given as `NAME` or `rbd:POOL/NAME`
    /// (RBD backend; another pool or a snapshot is refused, `Err` says why).
    pub fn operator_output(&self, out: &Path) -> Result<OsString, String> {
        let Self::Rbd(rbd) = self else {
            return Ok(out.as_os_str().to_owned());
        };
        let name = out.to_string_lossy();
        let Some(spec) = name.strip_prefix("rbd:") else {
            return Ok(OsString::from(name.into_owned()));
        };
        let spec = RbdSpec::parse(spec).map_err(|e| e.to_string())?;
        if spec.pool != rbd.pool_name() || spec.snap.is_some() {
            return Err(format!(
                "restore writes into the standby pool {}: give --out NAME or rbd:{}/NAME",
                rbd.pool_name(),
                rbd.pool_name()
            ));
        }
        Ok(OsString::from(spec.image))
    }

    /// Installs a copy of `source` as `image` committed at `epoch` and
    /// recovery point `rp` (the old primary's side of a planned migration):
    /// see [`StandbyStore::adopt`] and [`RbdStandby::adopt`]. A source of
    /// the other backend's kind is refused.
    pub fn adopt(
        &self,
        image: &ImageName,
        source: AdoptSource<'_>,
        epoch: Epoch,
        rp: RecoveryPointId,
        created_unix_ms: u64,
    ) -> Result<(), StoreError> {
        match (self, source) {
            (Self::Files(s), AdoptSource::File(path)) => {
                s.adopt(image, path, epoch, rp, created_unix_ms)
            }
            // A re-protected group's volume failed back: it is this pool's
            // standby image of that name (failed over in place), and
            // becomes the copy again as it is.
            (Self::Rbd(s), AdoptSource::Rbd { spec, .. })
                if spec.pool == s.pool_name() && spec.image == image.as_str() =>
            {
                s.adopt_in_place(image, epoch, rp, created_unix_ms)
            }
            (Self::Rbd(s), AdoptSource::Rbd { cluster, spec }) => {
                s.adopt(image, cluster, spec, epoch, rp, created_unix_ms)
            }
            (Self::Rbd(_), AdoptSource::File(_)) => Err(not_backend("files")),
            (Self::Files(_), AdoptSource::Rbd { .. }) => Err(not_backend("rbd")),
        }
    }

    /// Rolls a torn image back to its last recovery point; whether it was
    /// torn. The file store applies an epoch only at commit, behind an undo
    /// log: its images are never torn.
    pub fn rollback(&self, image: &ImageName) -> Result<bool, StoreError> {
        match self {
            Self::Files(_) => Ok(false),
            Self::Rbd(s) => s.rollback(image),
        }
    }

    /// The RBD pool of the standby images (RBD backend only).
    pub fn rbd_pool(&self) -> Result<&str, StoreError> {
        match self {
            Self::Rbd(s) => Ok(s.pool_name()),
            Self::Files(_) => Err(not_backend("rbd")),
        }
    }

    /// Whether the pool holds an image `name`, standby image or not (RBD
    /// backend only: see [`RbdStandby::volume_exists`]).
    pub fn volume_exists(&self, name: &str) -> Result<bool, StoreError> {
        match self {
            Self::Rbd(s) => s.volume_exists(name),
            Self::Files(_) => Err(not_backend("rbd")),
        }
    }

    /// Deletes image `name` made next to the standby images (RBD backend
    /// only: see [`RbdStandby::remove_volume`]).
    pub fn remove_volume(&self, name: &str) -> Result<(), StoreError> {
        match self {
            Self::Rbd(s) => s.remove_volume(name),
            Self::Files(_) => Err(not_backend("rbd")),
        }
    }
}

/// The refusal of an operation only the `wanted` backend has.
fn not_backend(wanted: &str) -> StoreError {
    StoreError::InvalidRequest {
        reason: format!("the standby backend is not {wanted}"),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::standby::StoreConfig;

    fn files(dir: &Path) -> Standby {
        StandbyStore::open(dir, StoreConfig::default())
            .expect("open store")
            .into()
    }

    #[test]
    fn files_outputs_are_paths() {
        let dir = tempfile::tempdir().unwrap();
        let store = files(&dir.path().join("store"));
        assert_eq!(store.kind(), StandbyKind::Files);
        assert_eq!(
            store.operator_output(Path::new("rbd:x/y")).unwrap(),
            OsString::from("rbd:x/y")
        );
        assert!(store.check_restore_output("relative.raw").is_err());
        assert!(store.check_restore_output(dir.path()).is_err());
        assert!(store
            .check_restore_output(dir.path().join("new.raw"))
            .is_ok());
    }

    #[test]
    fn files_refuse_the_rbd_only_operations_and_are_never_torn() {
        let dir = tempfile::tempdir().unwrap();
        let store = files(dir.path());
        let image = ImageName::new("g1-a").unwrap();
        assert!(!store.rollback(&image).unwrap());
        let not_rbd = |e: StoreError| e.to_string().contains("the standby backend is not rbd");
        assert!(not_rbd(store.rbd_pool().unwrap_err()));
        assert!(not_rbd(store.volume_exists("v").unwrap_err()));
        assert!(not_rbd(store.remove_volume("v").unwrap_err()));
        let spec = RbdSpec::parse("p/i@s").unwrap();
        let cluster = ClusterSpec::default();
        let source = AdoptSource::Rbd {
            cluster: &cluster,
            spec: &spec,
        };
        let err = store
            .adopt(&image, source, Epoch(1), RecoveryPointId(1), 0)
            .unwrap_err();
        assert!(not_rbd(err));
    }
}
