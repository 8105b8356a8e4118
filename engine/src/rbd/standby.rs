//! [`RbdStandby`]: standby images kept in an RBD pool, recovery points kept
//! as RBD snapshots (`ferry-rp-<ID>`).
//!
//! Epochs are applied in place (asynchronous writes, `write_zeroes` for zero
//! extents, discards), and [`RbdEpochWriter::sync`] flushes them to the
//! cluster before it records the durable batch — only then is a batch
//! acknowledged. The image head is torn while an epoch is pending; the last
//! recovery point stays intact in its snapshot, and [`RbdStandby::rollback`]
//! (used before the head is exposed: failover, or an epoch abandoned by the
//! primary) returns the head to it. Commit of a recovery point over several
//! images: an intent file names every image's epoch, then each image gets its
//! snapshot and its state is updated, then the intent goes; an interrupted
//! commit is rolled forward when the store opens (all data was durable before
//! the intent was written), so every image reaches the point or none does.
//!
//! Local bookkeeping, under the store directory: `images/NAME.json`
//! (checksummed: retained recovery points, pending epoch and its durable
//! progress), `commits/rp-ID-NONCE.json` (intents), `store.lock`.
//!
//! Here: opening the store and what it holds. By concern: `standby/handle.rs`
//! (the store's data, records and look-ups, below all the others),
//! `standby/epoch.rs`
//! (receiving an epoch, rollback), `standby/commit.rs` (commit and intents),
//! `standby/points.rs` (recovery points, restore, pins, hashing),
//! `standby/volumes.rs` (adopt, placeholders, removal), `standby/retire.rs`
//! (expired snapshots removed off the commit path), `standby/failover.rs`
//! (fencing, the image as the volume in place, clones of a point).

mod commit;
mod epoch;
mod failover;
mod handle;
mod points;
mod reprotect;
mod retire;
mod volumes;

pub use epoch::RbdEpochWriter;
use handle::Inner;
pub use handle::{snap_name, RbdStandby};

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use ferry_protocol::types::{Epoch, ImageName, RecoveryPointId, SeqNo};

use super::{open_pool, ClusterSpec};
use crate::standby::{ImageState, PendingEpoch, StoreError};

/// Where an [`RbdStandby`] keeps images and bookkeeping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RbdStandbyConfig {
    /// The cluster.
    pub cluster: ClusterSpec,
    /// Pool holding the standby images (named as the primary names them).
    pub pool: String,
    /// Local directory for bookkeeping.
    pub dir: PathBuf,
    /// Recovery points (snapshots) kept per image, 1..=64.
    pub retention: usize,
}

impl RbdStandby {
    /// Opens (creating) the bookkeeping directory, connects to the pool, and
    /// rolls forward any interrupted commit.
    pub fn open(config: &RbdStandbyConfig) -> Result<Self, StoreError> {
        if !(1..=64).contains(&config.retention) {
            return Err(StoreError::InvalidConfig {
                reason: format!("retention {} is outside 1..=64", config.retention),
            });
        }
        for sub in ["images", "commits"] {
            let d = config.dir.join(sub);
            fs::create_dir_all(&d).map_err(|e| StoreError::io("create directory", &d, e))?;
        }
        let lock_path = config.dir.join("store.lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| StoreError::io("open lock", &lock_path, e))?;
        if file.try_lock().is_err() {
            return Err(StoreError::Locked { path: lock_path });
        }
        let pool = open_pool(&config.cluster, &config.pool).map_err(|e| match e {
            super::RbdError::Ceph(source) => StoreError::Ceph {
                context: format!("opening pool {}", config.pool),
                source,
            },
            other => StoreError::InvalidConfig {
                reason: other.to_string(),
            },
        })?;
        let store = Self {
            inner: Arc::new(Inner {
                pool,
                dir: config.dir.clone(),
                retention: config.retention,
                slots: Mutex::new(HashMap::new()),
                _lock: file,
            }),
        };
        store.finish_intents()?;
        Ok(store)
    }

    /// The pool the images live in.
    pub fn pool_name(&self) -> &str {
        self.inner.pool.name()
    }
    /// The images the store holds.
    pub fn images(&self) -> Result<Vec<ImageName>, StoreError> {
        let dir = self.inner.dir.join("images");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| StoreError::io("list", &dir, e))? {
            let entry = entry.map_err(|e| StoreError::io("list", &dir, e))?;
            let name = entry.file_name();
            if let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".json")) {
                if let Ok(image) = ImageName::new(stem) {
                    out.push(image);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// What the store holds for `image`.
    pub fn image_state(&self, image: &ImageName) -> Result<Option<ImageState>, StoreError> {
        Ok(self.load(image)?.map(|r| ImageState {
            committed_epoch: r.committed(),
            recovery_point: RecoveryPointId(r.history.last().map_or(0, |p| p.rp)),
            size: r.history.last().map_or(0, |p| p.size),
            pending: r.pending.map(|p| PendingEpoch {
                epoch: Epoch(p.epoch),
                base_epoch: Epoch(p.base_epoch),
                durable_seq: SeqNo(p.durable_seq),
                resume_offset: p.resume_offset,
            }),
        }))
    }
}
