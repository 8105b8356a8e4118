//! The RBD standby's data, below `standby.rs` and every file of
//! `standby/`: [`RbdStandby`] and its shared state, the per-image records
//! (retained points, pending epoch) and slots, snapshot names, and the
//! look-ups and helpers every concern uses.

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_protocol::types::{Epoch, ImageName};
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::state::StateStore;
use crate::standby::StoreError;
use crate::sync_util::lock;
use crate::sys::librbd::{CephError, Image, Pool, FEATURE_EXCLUSIVE_LOCK};

pub(super) const FORMAT: u32 = 1;
/// Bytes of writes in flight per image before `stage` waits for the oldest.
pub(super) const MAX_IN_FLIGHT_BYTES: u64 = 64 << 20;
/// Requests in flight per image before `stage` waits for the oldest.
pub(super) const MAX_IN_FLIGHT_OPS: usize = 512;
/// How long removing an image waits for watchers to go away: a killed
/// client's watch lasts `osd_client_watch_timeout` (30 s by default).
pub(super) const STALE_WATCH_WAIT: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(super) struct PointRecord {
    pub(super) rp: u64,
    pub(super) epoch: u64,
    pub(super) created_unix_ms: u64,
    pub(super) fuzzy: bool,
    pub(super) size: u64,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(super) struct PendingRecord {
    pub(super) epoch: u64,
    pub(super) base_epoch: u64,
    pub(super) durable_seq: u64,
    pub(super) resume_offset: u64,
    pub(super) size: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(super) struct ImageRecord {
    pub(super) format: u32,
    pub(super) image: String,
    /// Oldest first; the last is the point the image is at.
    pub(super) history: Vec<PointRecord>,
    pub(super) pending: Option<PendingRecord>,
    /// Points whose snapshot is kept beyond the retention (see `pin`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) pinned: Vec<PointRecord>,
    /// Fenced for a failover: no epoch opens or commits any more.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(super) fenced: bool,
    /// The recovery point at which the image itself became a failover's
    /// volume (in place: ferry never writes, rolls back or removes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) volume_at: Option<u64>,
    /// Clones made of its snapshots (failover, restore): their points
    /// stay pinned, and the image is never removed under them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) clones: Vec<CloneRecord>,
    /// The version of the stored record this was read at (0: none stored),
    /// for the compare-and-set of [`StateStore::save`]; never stored in
    /// the record itself.
    #[serde(skip)]
    pub(super) version: u64,
}

/// A clone of one of an image's recovery point snapshots.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(super) struct CloneRecord {
    /// The clone's image name (same pool).
    pub(super) name: String,
    /// The recovery point whose snapshot is its parent.
    pub(super) rp: u64,
}

impl ImageRecord {
    /// The record of an image with nothing committed, pending or pinned.
    pub(super) fn empty(image: &ImageName) -> ImageRecord {
        ImageRecord {
            format: FORMAT,
            image: image.to_string(),
            history: Vec::new(),
            pending: None,
            pinned: Vec::new(),
            fenced: false,
            volume_at: None,
            clones: Vec::new(),
            version: 0,
        }
    }

    /// Whether ferry must leave the RBD image in the pool when it forgets
    /// the standby copy: it is a failover's volume, or clones depend on
    /// its snapshots.
    pub(super) fn in_use(&self) -> bool {
        self.volume_at.is_some() || !self.clones.is_empty()
    }

    pub(super) fn committed(&self) -> Epoch {
        Epoch(self.history.last().map_or(0, |p| p.epoch))
    }

    /// Every restorable point: retained and pinned, oldest first.
    pub(super) fn points(&self) -> Vec<&PointRecord> {
        let mut all: Vec<&PointRecord> = self
            .pinned
            .iter()
            .filter(|p| !self.history.iter().any(|h| h.rp == p.rp))
            .chain(&self.history)
            .collect();
        all.sort_by_key(|p| p.rp);
        all
    }
}

#[derive(Default)]
pub(super) struct Slot {
    pub(super) op: Mutex<()>,
    pub(super) writer_active: Mutex<bool>,
    /// A sweep of expired snapshots is started and has not yet taken `op`
    /// (see `standby/retire.rs`).
    pub(super) retire_scheduled: std::sync::atomic::AtomicBool,
    /// Fenced for a failover (also in the record): an open writer stages
    /// and flushes nothing more.
    pub(super) fenced: std::sync::atomic::AtomicBool,
}

impl Slot {
    /// `Busy` while an epoch writer holds the image. Called with `op` held,
    /// by every operation that must not run under an open writer.
    pub(super) fn check_no_writer(&self, image: &ImageName) -> Result<(), StoreError> {
        if *lock(&self.writer_active) {
            return Err(StoreError::Busy {
                image: image.clone(),
            });
        }
        Ok(())
    }
}

pub(super) struct Inner {
    pub(super) pool: Arc<Pool>,
    pub(super) dir: PathBuf,
    /// The per-image records and commit intents (files or RADOS).
    pub(super) state: Box<dyn StateStore>,
    pub(super) retention: usize,
    pub(super) slots: Mutex<HashMap<ImageName, Arc<Slot>>>,
    pub(super) _lock: File,
}

/// Standby images in an RBD pool. Cheap to clone; all calls block.
#[derive(Clone)]
pub struct RbdStandby {
    pub(super) inner: Arc<Inner>,
}

impl std::fmt::Debug for RbdStandby {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RbdStandby")
            .field("pool", &self.inner.pool.name())
            .field("dir", &self.inner.dir)
            .field("state", &self.inner.state.describe())
            .finish()
    }
}

pub(super) fn ceph(context: impl Into<String>) -> impl FnOnce(CephError) -> StoreError {
    let context = context.into();
    move |source| StoreError::Ceph { context, source }
}

/// Name prefix of the recovery point snapshots; the point id follows.
pub(super) const SNAP_PREFIX: &str = "ferry-rp-";

/// Snapshot name of recovery point `rp`.
pub fn snap_name(rp: u64) -> String {
    format!("{SNAP_PREFIX}{rp}")
}

impl RbdStandby {
    pub(super) fn slot(&self, image: &ImageName) -> Arc<Slot> {
        lock(&self.inner.slots)
            .entry(image.clone())
            .or_default()
            .clone()
    }

    /// The record of `image` (with the version it was read at).
    pub(super) fn load(&self, image: &ImageName) -> Result<Option<ImageRecord>, StoreError> {
        self.inner.state.load(image)
    }

    /// Stores `record` if nobody changed it since it was read (see
    /// [`StateStore::save`]); durable when it returns.
    pub(super) fn save(&self, record: &mut ImageRecord) -> Result<(), StoreError> {
        self.inner.state.save(record)
    }

    /// Opens a standby image for writing and takes its exclusive lock. The
    /// standby images belong to this store (its `store.lock` is held, and no
    /// other handle of this process writes the image now: writers are
    /// exclusive per image), so a lock held by another client is a killed
    /// predecessor's: it is broken (that client blocklisted) rather than
    /// waited for until its watch times out.
    pub(super) fn open_image(&self, image: &ImageName) -> Result<Arc<Image>, StoreError> {
        let ctx = format!("{}/{image}", self.pool_name());
        let handle = Arc::new(
            self.inner
                .pool
                .open(image.as_str())
                .map_err(ceph(format!("opening {ctx}")))?,
        );
        let features = handle
            .features()
            .map_err(ceph(format!("features of {ctx}")))?;
        if features & FEATURE_EXCLUSIVE_LOCK != 0 {
            let broken = handle
                .break_foreign_locks()
                .map_err(ceph(format!("breaking stale locks of {ctx}")))?;
            if broken > 0 {
                warn!(image = %ctx, broken, "broke the exclusive lock of a previous (killed) client");
            }
            handle
                .lock_exclusive()
                .map_err(ceph(format!("locking {ctx}")))?;
        }
        Ok(handle)
    }
}

/// Makes the whole image read as zeroes (deallocating its objects).
pub(super) fn zero_all(handle: &Arc<Image>, size: u64) -> Result<(), CephError> {
    const STEP: u64 = 1 << 30;
    let mut ops = Vec::new();
    let mut pos = 0;
    while pos < size {
        let len = STEP.min(size - pos);
        ops.push(handle.aio_write_zeroes(pos, len as usize)?);
        pos += len;
    }
    for op in ops {
        op.wait()?;
    }
    handle.flush()
}
