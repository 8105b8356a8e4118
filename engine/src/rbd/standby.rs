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
//! Here: the store, its records and look-ups. By concern: `standby/epoch.rs`
//! (receiving an epoch, rollback), `standby/commit.rs` (commit and intents),
//! `standby/points.rs` (recovery points, restore, pins, hashing),
//! `standby/volumes.rs` (adopt, placeholders, removal), `standby/retire.rs`
//! (expired snapshots removed off the commit path).

mod commit;
mod epoch;
mod points;
mod retire;
mod volumes;

pub use epoch::RbdEpochWriter;

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_protocol::types::{Epoch, ImageName, RecoveryPointId, SeqNo};
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::{open_pool, ClusterSpec};
use crate::standby::{read_checksummed, write_checksummed, ImageState, PendingEpoch, StoreError};
use crate::sync_util::lock;
use crate::sys::fs::sync_dir;
use crate::sys::librbd::{CephError, Image, Pool, FEATURE_EXCLUSIVE_LOCK};

const FORMAT: u32 = 1;
/// Bytes of writes in flight per image before `stage` waits for the oldest.
const MAX_IN_FLIGHT_BYTES: u64 = 64 << 20;
/// Requests in flight per image before `stage` waits for the oldest.
const MAX_IN_FLIGHT_OPS: usize = 512;
/// How long removing an image waits for watchers to go away: a killed
/// client's watch lasts `osd_client_watch_timeout` (30 s by default).
const STALE_WATCH_WAIT: Duration = Duration::from_secs(60);

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

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct PointRecord {
    rp: u64,
    epoch: u64,
    created_unix_ms: u64,
    fuzzy: bool,
    size: u64,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct PendingRecord {
    epoch: u64,
    base_epoch: u64,
    durable_seq: u64,
    resume_offset: u64,
    size: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct ImageRecord {
    format: u32,
    image: String,
    /// Oldest first; the last is the point the image is at.
    history: Vec<PointRecord>,
    pending: Option<PendingRecord>,
    /// Points whose snapshot is kept beyond the retention (see `pin`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pinned: Vec<PointRecord>,
}

impl ImageRecord {
    /// The record of an image with nothing committed, pending or pinned.
    fn empty(image: &ImageName) -> ImageRecord {
        ImageRecord {
            format: FORMAT,
            image: image.to_string(),
            history: Vec::new(),
            pending: None,
            pinned: Vec::new(),
        }
    }

    fn committed(&self) -> Epoch {
        Epoch(self.history.last().map_or(0, |p| p.epoch))
    }

    /// Every restorable point: retained and pinned, oldest first.
    fn points(&self) -> Vec<&PointRecord> {
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
struct Slot {
    op: Mutex<()>,
    writer_active: Mutex<bool>,
    /// A sweep of expired snapshots is started and has not yet taken `op`
    /// (see `standby/retire.rs`).
    retire_scheduled: std::sync::atomic::AtomicBool,
}

struct Inner {
    pool: Arc<Pool>,
    dir: PathBuf,
    retention: usize,
    slots: Mutex<HashMap<ImageName, Arc<Slot>>>,
    _lock: File,
}

/// Standby images in an RBD pool. Cheap to clone; all calls block.
#[derive(Clone)]
pub struct RbdStandby {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RbdStandby {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RbdStandby")
            .field("pool", &self.inner.pool.name())
            .field("dir", &self.inner.dir)
            .finish()
    }
}

fn ceph(context: impl Into<String>) -> impl FnOnce(CephError) -> StoreError {
    let context = context.into();
    move |source| StoreError::Ceph { context, source }
}

/// Name prefix of the recovery point snapshots; the point id follows.
const SNAP_PREFIX: &str = "ferry-rp-";

/// Snapshot name of recovery point `rp`.
pub fn snap_name(rp: u64) -> String {
    format!("{SNAP_PREFIX}{rp}")
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

    fn record_path(&self, image: &ImageName) -> PathBuf {
        self.inner.dir.join("images").join(format!("{image}.json"))
    }

    /// Unique per commit: two groups may commit the same recovery point id
    /// (ids are the primary's milliseconds) at once, and one intent must not
    /// replace the other's.
    fn intent_path(&self, rp: u64) -> PathBuf {
        let nonce: u64 = rand::random();
        self.inner
            .dir
            .join("commits")
            .join(format!("rp-{rp}-{nonce:016x}.json"))
    }

    fn slot(&self, image: &ImageName) -> Arc<Slot> {
        lock(&self.inner.slots)
            .entry(image.clone())
            .or_default()
            .clone()
    }

    fn load(&self, image: &ImageName) -> Result<Option<ImageRecord>, StoreError> {
        let path = self.record_path(image);
        let Some(record) = read_checksummed::<ImageRecord>(&path)? else {
            return Ok(None);
        };
        if record.format != FORMAT || record.image != image.as_str() {
            return Err(StoreError::corrupt(
                &path,
                format!("names image {:?} (format {})", record.image, record.format),
            ));
        }
        Ok(Some(record))
    }

    fn save(&self, record: &ImageRecord) -> Result<(), StoreError> {
        let image = ImageName::new(&record.image).map_err(|e| StoreError::InvalidRequest {
            reason: e.to_string(),
        })?;
        write_checksummed(&self.record_path(&image), record)
    }

    /// Opens a standby image for writing and takes its exclusive lock. The
    /// standby images belong to this store (its `store.lock` is held, and no
    /// other handle of this process writes the image now: writers are
    /// exclusive per image), so a lock held by another client is a killed
    /// predecessor's: it is broken (that client blocklisted) rather than
    /// waited for until its watch times out.
    fn open_image(&self, image: &ImageName) -> Result<Arc<Image>, StoreError> {
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

fn remove_file(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(StoreError::io("remove", path, e)),
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    sync_dir(dir).map_err(|e| StoreError::io("fsync directory", dir, e))
}

/// Makes the whole image read as zeroes (deallocating its objects).
fn zero_all(handle: &Arc<Image>, size: u64) -> Result<(), CephError> {
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
