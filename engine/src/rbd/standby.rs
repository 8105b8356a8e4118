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
//! Bookkeeping ([`RbdStandbyConfig::state`], `standby/state.rs`): per
//! image its record (retained recovery points, pending epoch and its
//! durable progress), and the commit intents — by default checksummed
//! files under the store directory (`images/NAME.json`,
//! `commits/rp-ID-NONCE.json`), or, for a site of several agents, the
//! omap of a RADOS object in the site's control pool, so another standby
//! agent resumes an epoch where a dead one left it. The store directory
//! always holds `store.lock`.
//!
//! Here: opening the store and what it holds. By concern: `standby/handle.rs`
//! (the store's data, records and look-ups, below all the others),
//! `standby/epoch.rs`
//! (receiving an epoch, rollback), `standby/commit.rs` (commit and intents),
//! `standby/points.rs` (recovery points, restore, pins, hashing),
//! `standby/volumes.rs` (adopt, placeholders, removal), `standby/retire.rs`
//! (expired snapshots removed off the commit path), `standby/failover.rs`
//! (fencing, the image as the volume in place, clones of a point),
//! `standby/state.rs` (where records and intents are kept).

mod commit;
mod epoch;
mod failover;
mod handle;
mod points;
mod reprotect;
mod retire;
mod state;
#[cfg(test)]
mod takeover_tests;
mod volumes;

pub use epoch::RbdEpochWriter;
use handle::Inner;
pub use handle::{snap_name, RbdStandby};
pub use state::StateLocation;

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use ferry_protocol::types::{Epoch, ImageName, RecoveryPointId, SeqNo};

use super::{open_pool, ClusterSpec};
use crate::standby::{ImageState, PendingEpoch, StoreError};
use state::files::FileState;
use state::rados::RadosState;
use state::StateStore;

/// Where an [`RbdStandby`] keeps images and bookkeeping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RbdStandbyConfig {
    /// The cluster.
    pub cluster: ClusterSpec,
    /// Pool holding the standby images (named as the primary names them).
    pub pool: String,
    /// RBD namespace of the pool the images live in (`None`: the default).
    pub namespace: Option<String>,
    /// Local directory: its lock, and the bookkeeping when `state` is
    /// [`StateLocation::Files`].
    pub dir: PathBuf,
    /// Where the per-image records and commit intents live.
    pub state: StateLocation,
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
        fs::create_dir_all(&config.dir)
            .map_err(|e| StoreError::io("create directory", &config.dir, e))?;
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
        let namespace = config.namespace.as_deref();
        let pool = open_pool(&config.cluster, &config.pool, namespace).map_err(|e| match e {
            super::RbdError::Ceph(source) => StoreError::Ceph {
                context: match namespace {
                    Some(ns) => format!("opening pool {} namespace {ns}", config.pool),
                    None => format!("opening pool {}", config.pool),
                },
                source,
            },
            other => StoreError::InvalidConfig {
                reason: other.to_string(),
            },
        })?;
        let state: Box<dyn StateStore> = match &config.state {
            StateLocation::Files => Box::new(FileState::open(&config.dir)?),
            StateLocation::Rados {
                pool: at,
                namespace,
            } => Box::new(RadosState::open(&pool, at, namespace.as_deref())?),
        };
        let store = Self {
            inner: Arc::new(Inner {
                pool,
                dir: config.dir.clone(),
                state,
                retention: config.retention,
                slots: Mutex::new(HashMap::new()),
                _lock: file,
            }),
        };
        store.finish_intents(None)?;
        Ok(store)
    }

    /// The pool the images live in: `POOL`, or `POOL/NAMESPACE` in an RBD
    /// namespace (so `{pool_name}/{image}` is an image's `rbd` address).
    pub fn pool_name(&self) -> &str {
        self.inner.pool.name()
    }

    /// The `rbd` address of image `image` of the standby pool.
    pub fn image_spec(&self, image: &str) -> super::RbdSpec {
        super::RbdSpec {
            pool: self.inner.pool.pool_name().to_owned(),
            namespace: self.inner.pool.namespace().map(str::to_owned),
            image: image.to_owned(),
            snap: None,
        }
    }
    /// The images the store holds.
    pub fn images(&self) -> Result<Vec<ImageName>, StoreError> {
        self.inner.state.images()
    }

    /// What the store holds for `image`.
    /// With a state shared by the site's agents, a commit of the image
    /// another agent left half-done is finished first (as opening the store
    /// does with files), so the primary sees the point committed.
    pub fn image_state(&self, image: &ImageName) -> Result<Option<ImageState>, StoreError> {
        if self.inner.state.shared() {
            self.finish_intents(Some(image))?;
        }
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
