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

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ferry_protocol::message::OpenImage;
use ferry_protocol::types::{Epoch, ExtentKind, ImageName, RecoveryPointId, SeqNo};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{open_pool, ClusterSpec};
use crate::standby::failpoint::{self, CrashPoint};
use crate::standby::{
    check_extents, check_open, read_checksummed, write_checksummed, ImageState, PendingEpoch,
    RecoveryPointInfo, RecoveryPointMeta, SealedEpoch, StagedBatch, StoreError,
};
use crate::sync_util::lock;
use crate::sys::fs::sync_dir;
use crate::sys::librbd::{
    Aio, CephError, CreateOptions, Image, Pool, FEATURE_EXCLUSIVE_LOCK, GROUP_SNAP_PREFIX,
};

const FORMAT: u32 = 1;
/// Bytes of writes in flight per image before `stage` waits for the oldest.
const MAX_IN_FLIGHT_BYTES: u64 = 64 << 20;
/// Requests in flight per image before `stage` waits for the oldest.
const MAX_IN_FLIGHT_OPS: usize = 512;
/// Most hashes one `hash_range` call computes.
const MAX_HASHES_PER_CALL: u64 = 1 << 20;
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

#[derive(Clone, Debug, Serialize, Deserialize)]
struct IntentImage {
    image: String,
    epoch: u64,
    last_seq: u64,
    size: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Intent {
    format: u32,
    rp: u64,
    created_unix_ms: u64,
    fuzzy: bool,
    images: Vec<IntentImage>,
}

#[derive(Default)]
struct Slot {
    op: Mutex<()>,
    writer_active: Mutex<bool>,
    /// A sweep of expired snapshots is started and has not yet taken `op`
    /// (see `standby_retire.rs`).
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

#[path = "standby_retire.rs"]
mod retire;

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

    /// Starts or resumes receiving `open.epoch` of an image.
    pub fn open_epoch(&self, open: &OpenImage) -> Result<RbdEpochWriter, StoreError> {
        let image = &open.image;
        self.finish_intents()?;
        let slot = self.slot(image);
        let _op = lock(&slot.op);
        if *lock(&slot.writer_active) {
            return Err(StoreError::Busy {
                image: image.clone(),
            });
        }
        let mut record = self
            .load(image)?
            .unwrap_or_else(|| ImageRecord::empty(image));
        let committed = record.committed();
        check_open(open, committed)?;
        let ctx = format!("{}/{image}", self.pool_name());
        // One open (with the lock) when the image exists; create it first if not.
        let (handle, exists) = match self.open_image(image) {
            Ok(handle) => (handle, true),
            Err(StoreError::Ceph { source, .. }) if source.is_not_found() => {
                if committed != Epoch(0) {
                    return Err(StoreError::Corrupt {
                        path: self.record_path(image),
                        reason: format!("records recovery points but RBD image {ctx} is gone"),
                    });
                }
                let existed = self.create_pool_image(image.as_str(), open.size)?;
                info!(image = %ctx, size = open.size, "created standby RBD image");
                (self.open_image(image)?, existed)
            }
            Err(e) => return Err(e),
        };
        let resumed = match record.pending {
            Some(p)
                if p.epoch == open.epoch.get()
                    && p.base_epoch == open.base_epoch.get()
                    && p.size == open.size =>
            {
                Some(p)
            }
            Some(p) => {
                info!(image = %ctx, old_epoch = p.epoch, epoch = %open.epoch, "abandoning a pending epoch: rolling the image back");
                self.rollback_head(&handle, &record)?;
                record.pending = None;
                self.save(&record)?;
                None
            }
            None => None,
        };
        let pending = match resumed {
            Some(p) => p,
            None => {
                if open.base_epoch == Epoch(0) {
                    // A full copy sends only allocated data: start from zeroes.
                    let size = handle.size().map_err(ceph(format!("size of {ctx}")))?;
                    if size > 0 && exists {
                        zero_all(&handle, size).map_err(ceph(format!("zeroing {ctx}")))?;
                    }
                }
                let p = PendingRecord {
                    epoch: open.epoch.get(),
                    base_epoch: open.base_epoch.get(),
                    durable_seq: 0,
                    resume_offset: 0,
                    size: open.size,
                };
                record.pending = Some(p);
                self.save(&record)?;
                p
            }
        };
        let current = handle.size().map_err(ceph(format!("size of {ctx}")))?;
        if open.size > current {
            handle
                .resize(open.size)
                .map_err(ceph(format!("growing {ctx}")))?;
        }
        *lock(&slot.writer_active) = true;
        drop(_op);
        Ok(RbdEpochWriter {
            store: self.clone(),
            slot,
            image: image.clone(),
            handle,
            pending,
            staged_seq: SeqNo(pending.durable_seq),
            staged_scan_end: pending.resume_offset,
            in_flight: VecDeque::new(),
            in_flight_bytes: 0,
            poisoned: false,
        })
    }

    /// Returns the head of `handle` to the image's last recovery point (all
    /// zeroes when there is none).
    fn rollback_head(&self, handle: &Arc<Image>, record: &ImageRecord) -> Result<(), StoreError> {
        let ctx = format!("{}/{}", self.pool_name(), record.image);
        match record.history.last() {
            Some(point) => {
                let snap = snap_name(point.rp);
                handle
                    .snap_rollback(&snap)
                    .map_err(ceph(format!("rolling {ctx} back to {snap}")))?;
            }
            None => {
                let size = handle.size().map_err(ceph(format!("size of {ctx}")))?;
                zero_all(handle, size).map_err(ceph(format!("zeroing {ctx}")))?;
            }
        }
        handle.flush().map_err(ceph(format!("flushing {ctx}")))
    }

    /// Rolls a torn image (an epoch pending) back to its last recovery
    /// point and forgets the pending epoch. Returns whether it was torn.
    pub fn rollback(&self, image: &ImageName) -> Result<bool, StoreError> {
        let slot = self.slot(image);
        let _op = lock(&slot.op);
        if *lock(&slot.writer_active) {
            return Err(StoreError::Busy {
                image: image.clone(),
            });
        }
        let mut record = self.load(image)?.ok_or_else(|| StoreError::UnknownImage {
            image: image.clone(),
        })?;
        if record.pending.is_none() {
            return Ok(false);
        }
        let handle = self.open_image(image)?;
        self.rollback_head(&handle, &record)?;
        record.pending = None;
        self.save(&record)?;
        info!(image = %image, "rolled back to the last recovery point");
        Ok(true)
    }

    /// Commits recovery point `rp` made of `epochs` (one per image): all of
    /// them reach it, or (crash before the intent is durable) none.
    /// Committing an already committed point succeeds without doing anything.
    pub fn commit(
        &self,
        rp: RecoveryPointMeta,
        epochs: Vec<SealedEpoch>,
    ) -> Result<(), StoreError> {
        if epochs.is_empty() {
            return Err(StoreError::InvalidRequest {
                reason: "a commit needs at least one image".into(),
            });
        }
        let slots: Vec<_> = {
            let mut names: Vec<&ImageName> = epochs.iter().map(|e| &e.image).collect();
            names.sort();
            names.dedup();
            if names.len() != epochs.len() {
                return Err(StoreError::InvalidRequest {
                    reason: "an image appears twice in one commit".into(),
                });
            }
            names.into_iter().map(|n| self.slot(n)).collect()
        };
        let _guards: Vec<_> = slots.iter().map(|s| lock(&s.op)).collect();
        let mut todo = Vec::new();
        for sealed in &epochs {
            let record = self
                .load(&sealed.image)?
                .ok_or_else(|| StoreError::UnknownImage {
                    image: sealed.image.clone(),
                })?;
            if record
                .history
                .iter()
                .any(|p| p.rp == rp.id.get() && p.epoch == sealed.epoch.get())
            {
                continue; // already committed (a retried Commit)
            }
            if rp.id.get() <= record.history.last().map_or(0, |p| p.rp) {
                return Err(StoreError::InvalidCommit {
                    image: sealed.image.clone(),
                    recovery_point: rp.id,
                    reason: format!("recovery point {} is not newer than the current one", rp.id),
                });
            }
            match record.pending {
                Some(p)
                    if p.epoch == sealed.epoch.get() && p.durable_seq == sealed.last_seq.get() => {}
                other => {
                    return Err(StoreError::InvalidCommit {
                        image: sealed.image.clone(),
                        recovery_point: rp.id,
                        reason: format!(
                            "epoch {} with last batch {} is not what is durable here ({:?})",
                            sealed.epoch,
                            sealed.last_seq,
                            other.map(|p| (p.epoch, p.durable_seq))
                        ),
                    })
                }
            }
            todo.push(IntentImage {
                image: sealed.image.to_string(),
                epoch: sealed.epoch.get(),
                last_seq: sealed.last_seq.get(),
                size: sealed.size,
            });
        }
        if todo.is_empty() {
            return Ok(());
        }
        let intent = Intent {
            format: FORMAT,
            rp: rp.id.get(),
            created_unix_ms: rp.created_unix_ms,
            fuzzy: rp.fuzzy,
            images: todo,
        };
        let path = self.intent_path(intent.rp);
        write_checksummed(&path, &intent)?;
        failpoint::hit(CrashPoint::AfterIntent)?;
        self.apply_intent(&intent)?;
        remove_file(&path)
    }

    /// Snapshots and records every image of `intent` (idempotent). The
    /// images of a group are done at once, one thread each: their records
    /// are separate files, and snapshots asked for together share the
    /// monitor rounds that allocate and retire snapshot ids (about a second
    /// each on a small cluster) instead of queueing one round per image.
    fn apply_intent(&self, intent: &Intent) -> Result<(), StoreError> {
        if intent.images.len() <= 1 {
            for entry in &intent.images {
                self.apply_intent_image(intent, entry)?;
            }
            return Ok(());
        }
        std::thread::scope(|scope| {
            let threads: Vec<_> = intent
                .images
                .iter()
                .map(|entry| scope.spawn(move || self.apply_intent_image(intent, entry)))
                .collect();
            let mut first_error = None;
            for thread in threads {
                let result = thread.join().unwrap_or_else(|_| {
                    Err(StoreError::InvalidRequest {
                        reason: "applying a recovery point to an image panicked".into(),
                    })
                });
                if let Err(e) = result {
                    first_error.get_or_insert(e);
                }
            }
            first_error.map_or(Ok(()), Err)
        })
    }

    /// [`Self::apply_intent`] for one image.
    fn apply_intent_image(&self, intent: &Intent, entry: &IntentImage) -> Result<(), StoreError> {
        {
            let image = ImageName::new(&entry.image).map_err(|e| StoreError::InvalidRequest {
                reason: e.to_string(),
            })?;
            let ctx = format!("{}/{image}", self.pool_name());
            let Some(mut record) = self.load(&image)? else {
                return Err(StoreError::UnknownImage { image });
            };
            if record.history.iter().any(|p| p.rp == intent.rp) {
                return Ok(());
            }
            let handle = self.open_image(&image)?;
            let size = handle.size().map_err(ceph(format!("size of {ctx}")))?;
            if size != entry.size {
                handle
                    .resize(entry.size)
                    .map_err(ceph(format!("resizing {ctx}")))?;
            }
            failpoint::hit(CrashPoint::AfterDataBeforeSync)?;
            handle.flush().map_err(ceph(format!("flushing {ctx}")))?;
            failpoint::hit(CrashPoint::AfterDataBeforeState)?;
            let snap = snap_name(intent.rp);
            if !handle
                .snap_exists(&snap)
                .map_err(ceph(format!("looking up {ctx}@{snap}")))?
            {
                handle
                    .snap_create(&snap)
                    .map_err(ceph(format!("snapshotting {ctx}@{snap}")))?;
            }
            record.history.push(PointRecord {
                rp: intent.rp,
                epoch: entry.epoch,
                created_unix_ms: intent.created_unix_ms,
                fuzzy: intent.fuzzy,
                size: entry.size,
            });
            record.pending = None;
            let excess = record.history.len().saturating_sub(self.inner.retention);
            let dropped = record
                .history
                .drain(..excess)
                .filter(|old| !record.pinned.iter().any(|p| p.rp == old.rp))
                .count();
            self.save(&record)?;
            info!(image = %ctx, rp = intent.rp, epoch = entry.epoch, "committed recovery point");
            if dropped > 0 {
                // After this commit answers: see standby_retire.rs.
                self.retire_later(&image);
            }
        }
        Ok(())
    }

    /// Rolls forward every commit whose intent is on disk. A commit running
    /// on another thread holds its images' slots until its intent is gone:
    /// the slots are taken here too (sorted, as `commit` takes them) and the
    /// intent read again under them, so a live commit is waited for, never
    /// applied twice at once (two writers of one image, the second breaking
    /// the first's exclusive lock).
    fn finish_intents(&self) -> Result<(), StoreError> {
        let dir = self.inner.dir.join("commits");
        let mut paths = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| StoreError::io("list", &dir, e))? {
            let path = entry.map_err(|e| StoreError::io("list", &dir, e))?.path();
            if path.extension().is_some_and(|e| e == "json") {
                paths.push(path);
            }
        }
        paths.sort();
        for path in paths {
            let Some(intent) = read_checksummed::<Intent>(&path)? else {
                continue;
            };
            let mut names = Vec::with_capacity(intent.images.len());
            for entry in &intent.images {
                names.push(ImageName::new(&entry.image).map_err(|e| {
                    StoreError::InvalidRequest {
                        reason: e.to_string(),
                    }
                })?);
            }
            names.sort();
            names.dedup();
            let slots: Vec<Arc<Slot>> = names.iter().map(|n| self.slot(n)).collect();
            let _guards: Vec<_> = slots.iter().map(|s| lock(&s.op)).collect();
            // The commit that wrote it may have finished while we waited.
            let Some(intent) = read_checksummed::<Intent>(&path)? else {
                continue;
            };
            info!(
                rp = intent.rp,
                images = intent.images.len(),
                "finishing an interrupted commit"
            );
            self.apply_intent(&intent)?;
            remove_file(&path)?;
        }
        Ok(())
    }

    /// The retained recovery points of `image`, oldest first.
    pub fn recovery_points(&self, image: &ImageName) -> Result<Vec<RecoveryPointInfo>, StoreError> {
        let record = self.load(image)?.ok_or_else(|| StoreError::UnknownImage {
            image: image.clone(),
        })?;
        let current = record.history.last().map(|p| p.rp);
        Ok(record
            .points()
            .into_iter()
            .map(|p| RecoveryPointInfo {
                id: RecoveryPointId(p.rp),
                epoch: Epoch(p.epoch),
                created_unix_ms: p.created_unix_ms,
                fuzzy: p.fuzzy,
                size: p.size,
                current: Some(p.rp) == current,
            })
            .collect())
    }

    /// Copies `image` as it was at recovery point `rp` into the new
    /// standalone image `dest` of the same pool (flattened: it does not
    /// depend on the snapshot).
    pub fn restore(
        &self,
        image: &ImageName,
        rp: RecoveryPointId,
        dest: &str,
    ) -> Result<(), StoreError> {
        let record = self.load(image)?.ok_or_else(|| StoreError::UnknownImage {
            image: image.clone(),
        })?;
        if !record.points().iter().any(|p| p.rp == rp.get()) {
            return Err(StoreError::UnknownRecoveryPoint {
                image: image.clone(),
                recovery_point: rp,
            });
        }
        let snap = snap_name(rp.get());
        let ctx = format!("{}/{image}@{snap}", self.pool_name());
        let source = self
            .inner
            .pool
            .open_read_only(image.as_str(), Some(&snap))
            .map_err(ceph(format!("opening {ctx}")))?;
        source
            .copy_to(&self.inner.pool, dest, CreateOptions::default())
            .map_err(ceph(format!(
                "copying {ctx} to {}/{dest}",
                self.pool_name()
            )))?;
        info!(from = %ctx, to = %format!("{}/{dest}", self.pool_name()), "restored recovery point");
        Ok(())
    }

    /// Installs a copy of `source` (an image at a snapshot, on `cluster`) as
    /// standby image `image` whose only recovery point is `rp` at `epoch`:
    /// the old primary of a planned migration keeps its volumes, as they
    /// were replicated at `epoch`, as the copies for the reversed direction,
    /// so that replication back starts from `epoch` instead of a full copy.
    /// The copy stays inside the cluster (nothing crosses the link).
    ///
    /// Restartable: the record is written (empty) before the copy, so an
    /// interrupted attempt is recognised and redone; an image already
    /// adopted at (`rp`, `epoch`) is left alone. Refused when the pool
    /// holds an image of that name that this store does not know, or the
    /// store holds other data for it.
    pub fn adopt(
        &self,
        image: &ImageName,
        cluster: &ClusterSpec,
        source: &super::RbdSpec,
        epoch: Epoch,
        rp: RecoveryPointId,
        created_unix_ms: u64,
    ) -> Result<(), StoreError> {
        if epoch == Epoch(0) || rp.get() == 0 {
            return Err(StoreError::InvalidRequest {
                reason: "adopt needs a non-zero epoch and recovery point".into(),
            });
        }
        let Some(snap) = source.snap.as_deref() else {
            return Err(StoreError::InvalidRequest {
                reason: format!("adopting {source}: name the snapshot to copy"),
            });
        };
        let slot = self.slot(image);
        let _op = lock(&slot.op);
        if *lock(&slot.writer_active) {
            return Err(StoreError::Busy {
                image: image.clone(),
            });
        }
        let ctx = format!("{}/{image}", self.pool_name());
        match self.load(image)? {
            Some(r)
                if r.pending.is_none()
                    && r.history.len() == 1
                    && r.history[0].rp == rp.get()
                    && r.history[0].epoch == epoch.get() =>
            {
                return Ok(());
            }
            Some(r) if r.history.is_empty() && r.pending.is_none() => {
                // An interrupted adoption (or a placeholder): start over.
                self.remove_pool_image(image.as_str())?;
            }
            Some(_) => {
                return Err(StoreError::InvalidRequest {
                    reason: format!("{image} already has data on this standby; remove it first"),
                })
            }
            None => {
                if self.volume_exists(image.as_str())? {
                    return Err(StoreError::InvalidRequest {
                        reason: format!(
                            "RBD image {ctx} exists but is not a standby image of this agent; \
                             rename or remove it"
                        ),
                    });
                }
            }
        }
        self.save(&ImageRecord::empty(image))?;
        let from = super::open_pool(cluster, &source.pool)
            .map_err(|e| StoreError::InvalidRequest {
                reason: format!("opening pool {} for {source}: {e}", source.pool),
            })?
            .open_read_only(&source.image, Some(snap))
            .map_err(ceph(format!("opening {source}")))?;
        from.copy_to(&self.inner.pool, image.as_str(), CreateOptions::default())
            .map_err(ceph(format!("copying {source} to {ctx}")))?;
        let handle = self.open_image(image)?;
        let size = handle.size().map_err(ceph(format!("size of {ctx}")))?;
        let rp_snap = snap_name(rp.get());
        handle
            .snap_create(&rp_snap)
            .map_err(ceph(format!("snapshotting {ctx}@{rp_snap}")))?;
        drop(handle);
        self.save(&ImageRecord {
            format: FORMAT,
            image: image.to_string(),
            history: vec![PointRecord {
                rp: rp.get(),
                epoch: epoch.get(),
                created_unix_ms,
                fuzzy: false,
                size,
            }],
            pending: None,
            pinned: Vec::new(),
        })?;
        info!(image = %ctx, from = %source, %epoch, rp = rp.get(), size, "image adopted");
        Ok(())
    }

    /// Whether the pool holds an RBD image `name` (standby image or not).
    /// An image whose creation was interrupted (listed, but without a
    /// header to open) counts: it is in the way of creating one.
    pub fn volume_exists(&self, name: &str) -> Result<bool, StoreError> {
        let names = self.inner.pool.list_images().map_err(ceph(format!(
            "listing the images of pool {}",
            self.pool_name()
        )))?;
        Ok(names.iter().any(|n| n == name))
    }

    /// Deletes RBD image `name` of the pool with all its snapshots; for
    /// images made next to the standby images (a planned migration's new
    /// volumes), refused for the store's own images (see
    /// [`Self::remove_image`]). An absent image is not an error.
    pub fn remove_volume(&self, name: &str) -> Result<(), StoreError> {
        if let Ok(image) = ImageName::new(name) {
            if self.load(&image)?.is_some() {
                return Err(StoreError::InvalidRequest {
                    reason: format!("{name} is a standby image of this agent"),
                });
            }
        }
        self.remove_pool_image(name)
    }

    /// Creates RBD image `name` of `size` bytes; `Ok(true)` when an image
    /// that opens was already there. An image whose creation was
    /// interrupted before its header was written (a killed process: listed,
    /// cannot be opened, holds nothing) is removed and made again.
    fn create_pool_image(&self, name: &str, size: u64) -> Result<bool, StoreError> {
        let ctx = format!("{}/{name}", self.pool_name());
        let create = || {
            self.inner
                .pool
                .create_image(name, size, CreateOptions::default())
        };
        match create() {
            Ok(()) => return Ok(false),
            Err(e) if e.is_exists() => {}
            Err(e) => return Err(ceph(format!("creating {ctx}"))(e)),
        }
        match self.inner.pool.open_read_only(name, None) {
            Ok(_) => return Ok(true),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(ceph(format!("opening {ctx}"))(e)),
        }
        warn!(image = %ctx, "removing an image whose creation was interrupted (no header) to make it again");
        self.remove_pool_image(name)?;
        create().map_err(ceph(format!("creating {ctx}")))?;
        Ok(false)
    }

    /// Removes RBD image `name` and its snapshots; absent is fine.
    fn remove_pool_image(&self, name: &str) -> Result<(), StoreError> {
        let ctx = format!("{}/{name}", self.pool_name());
        match self.inner.pool.open(name) {
            Ok(handle) => {
                for snap in handle
                    .snapshots()
                    .map_err(ceph(format!("listing snapshots of {ctx}")))?
                {
                    // A group snapshot's image snapshot is not reachable by
                    // name; `rbd_remove` refuses a group member anyway.
                    if snap.name.starts_with(GROUP_SNAP_PREFIX) {
                        continue;
                    }
                    match handle.snap_remove(&snap.name) {
                        Ok(()) => {}
                        Err(e) if e.is_not_found() => {}
                        Err(e) => return Err(ceph(format!("removing {ctx}@{}", snap.name))(e)),
                    }
                }
            }
            // Absent, or its creation was interrupted before the header was
            // written (listed but unopenable): `rbd_remove` below tells the
            // two apart and cleans up the second.
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(ceph(format!("opening {ctx}"))(e)),
        }
        // `rbd_remove` refuses an image that still has watchers. A process
        // killed while it had the image open (an interrupted failover or
        // migration copy) keeps its watch until the OSDs time it out
        // (`osd_client_watch_timeout`, 30 s by default): wait that out
        // rather than failing the retry that came to clean up after it.
        let deadline = Instant::now() + STALE_WATCH_WAIT;
        let mut warned = false;
        loop {
            match self.inner.pool.remove_image(name) {
                Ok(()) => return Ok(()),
                Err(e) if e.is_not_found() => return Ok(()),
                Err(e) if e.is_busy() && Instant::now() < deadline => {
                    if !warned {
                        warn!(image = %ctx, wait_s = STALE_WATCH_WAIT.as_secs(), "image still has watchers; waiting for a killed client's watch to expire");
                        warned = true;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) if e.is_busy() => {
                    return Err(ceph(format!(
                        "removing {ctx} (it still has watchers after {} s: a client has it \
                         open, see `rbd status {ctx}`)",
                        STALE_WATCH_WAIT.as_secs()
                    ))(e))
                }
                Err(e) => return Err(ceph(format!("removing {ctx}"))(e)),
            }
        }
    }

    /// Creates `image` in the pool as an empty placeholder of `size` bytes
    /// (a resource was added to a protected group; its first sync fills
    /// it). An image the store already knows is left alone.
    pub fn create_placeholder(&self, image: &ImageName, size: u64) -> Result<(), StoreError> {
        let slot = self.slot(image);
        let _op = lock(&slot.op);
        if self.load(image)?.is_some() {
            return Ok(());
        }
        let ctx = format!("{}/{image}", self.pool_name());
        // Already there: made by an attempt killed before its record below.
        self.create_pool_image(image.as_str(), size)?;
        self.save(&ImageRecord::empty(image))?;
        info!(image = %ctx, size, "created placeholder standby image");
        Ok(())
    }

    /// Keeps recovery point `rp` of `image` (its snapshot) until
    /// [`Self::unpin`], whatever the retention. Idempotent; `rp` must still
    /// be retained.
    pub fn pin(&self, image: &ImageName, rp: RecoveryPointId) -> Result<(), StoreError> {
        let slot = self.slot(image);
        let _op = lock(&slot.op);
        let mut record = self.load(image)?.ok_or_else(|| StoreError::UnknownImage {
            image: image.clone(),
        })?;
        if record.pinned.iter().any(|p| p.rp == rp.get()) {
            return Ok(());
        }
        let point = record
            .history
            .iter()
            .find(|p| p.rp == rp.get())
            .cloned()
            .ok_or_else(|| StoreError::UnknownRecoveryPoint {
                image: image.clone(),
                recovery_point: rp,
            })?;
        record.pinned.push(point);
        self.save(&record)?;
        info!(image = %image, rp = rp.get(), "recovery point pinned");
        Ok(())
    }

    /// Lets recovery point `rp` of `image` go: its snapshot is removed unless
    /// the retention still holds it. Unknown images and points that are not
    /// pinned are not an error.
    pub fn unpin(&self, image: &ImageName, rp: RecoveryPointId) -> Result<(), StoreError> {
        let slot = self.slot(image);
        let _op = lock(&slot.op);
        let Some(mut record) = self.load(image)? else {
            return Ok(());
        };
        let before = record.pinned.len();
        record.pinned.retain(|p| p.rp != rp.get());
        if record.pinned.len() == before {
            return Ok(());
        }
        self.save(&record)?;
        if !record.history.iter().any(|p| p.rp == rp.get()) {
            let snap = snap_name(rp.get());
            let handle = self.open_image(image)?;
            match handle.snap_remove(&snap) {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => {
                    return Err(ceph(format!(
                        "removing {}/{image}@{snap}",
                        self.pool_name()
                    ))(e))
                }
            }
        }
        Ok(())
    }

    /// Deletes `image` from the pool with every recovery point snapshot, and
    /// its bookkeeping. Refused while a writer is open on it; an unknown
    /// image is not an error. The record goes first, so a crash part-way
    /// leaves an image the store no longer lists.
    pub fn remove_image(&self, image: &ImageName) -> Result<(), StoreError> {
        let slot = self.slot(image);
        let _op = lock(&slot.op);
        if *lock(&slot.writer_active) {
            return Err(StoreError::Busy {
                image: image.clone(),
            });
        }
        remove_file(&self.record_path(image))?;
        self.remove_pool_image(image.as_str())?;
        info!(image = %format!("{}/{image}", self.pool_name()), "standby image removed");
        Ok(())
    }

    /// BLAKE3 of each `granularity` piece of `[offset, offset + length)` of
    /// the image at its current recovery point (clipped to its size).
    pub fn hash_range(
        &self,
        image: &ImageName,
        offset: u64,
        length: u64,
        granularity: u32,
    ) -> Result<(RecoveryPointId, u64, Vec<[u8; 32]>), StoreError> {
        if granularity == 0 {
            return Err(StoreError::InvalidRequest {
                reason: "hash granularity must be > 0".into(),
            });
        }
        let record = self.load(image)?.ok_or_else(|| StoreError::UnknownImage {
            image: image.clone(),
        })?;
        let Some(point) = record.history.last() else {
            return Ok((RecoveryPointId(0), 0, Vec::new()));
        };
        let end = offset.saturating_add(length).min(point.size);
        let count = end.saturating_sub(offset).div_ceil(u64::from(granularity));
        if count > MAX_HASHES_PER_CALL {
            return Err(StoreError::InvalidRequest {
                reason: format!("{count} granules requested, the limit is {MAX_HASHES_PER_CALL}"),
            });
        }
        let snap = snap_name(point.rp);
        let ctx = format!("{}/{image}@{snap}", self.pool_name());
        let handle = Arc::new(
            self.inner
                .pool
                .open_read_only(image.as_str(), Some(&snap))
                .map_err(ceph(format!("opening {ctx}")))?,
        );
        let mut hashes = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
        let mut reads: VecDeque<Aio> = VecDeque::new();
        let mut pos = offset;
        let step = u64::from(granularity);
        while pos < end || !reads.is_empty() {
            while pos < end && reads.len() < 16 {
                let len = step.min(end - pos);
                reads.push_back(
                    handle
                        .aio_read(pos, len as usize)
                        .map_err(ceph(format!("reading {ctx}")))?,
                );
                pos += len;
            }
            if let Some(read) = reads.pop_front() {
                let data = read
                    .wait()
                    .map_err(ceph(format!("reading {ctx}")))?
                    .unwrap_or_default();
                hashes.push(*blake3::hash(&data).as_bytes());
            }
        }
        Ok((RecoveryPointId(point.rp), point.size, hashes))
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

/// Receives one epoch of one image into an [`RbdStandby`].
pub struct RbdEpochWriter {
    store: RbdStandby,
    slot: Arc<Slot>,
    image: ImageName,
    handle: Arc<Image>,
    pending: PendingRecord,
    staged_seq: SeqNo,
    staged_scan_end: u64,
    in_flight: VecDeque<(Aio, u64)>,
    in_flight_bytes: u64,
    poisoned: bool,
}

impl RbdEpochWriter {
    /// The epoch.
    pub fn epoch(&self) -> Epoch {
        Epoch(self.pending.epoch)
    }

    /// Highest durable batch.
    pub fn durable_seq(&self) -> SeqNo {
        SeqNo(self.pending.durable_seq)
    }

    /// Scan offset the primary resumes at.
    pub fn resume_offset(&self) -> u64 {
        self.pending.resume_offset
    }

    /// The image.
    pub fn image(&self) -> &ImageName {
        &self.image
    }

    fn ctx(&self) -> String {
        format!("{}/{}", self.store.pool_name(), self.image)
    }

    fn poison(&mut self, context: &str) -> impl FnOnce(CephError) -> StoreError {
        self.poisoned = true;
        let context = format!("{context} {}", self.ctx());
        move |source| StoreError::Ceph { context, source }
    }

    fn wait_oldest(&mut self) -> Result<(), StoreError> {
        if let Some((op, bytes)) = self.in_flight.pop_front() {
            self.in_flight_bytes -= bytes;
            if let Err(e) = op.wait() {
                return Err(self.poison("writing")(e));
            }
        }
        Ok(())
    }

    /// Writes a batch (asynchronously). `Ok(false)`: a duplicate, ignored.
    /// Nothing is durable until [`RbdEpochWriter::sync`].
    pub fn stage(&mut self, batch: StagedBatch) -> Result<bool, StoreError> {
        if self.poisoned {
            return Err(StoreError::Poisoned {
                image: self.image.clone(),
                epoch: self.epoch(),
            });
        }
        if batch.seq <= self.staged_seq {
            return Ok(false);
        }
        if batch.seq != self.staged_seq.next() {
            return Err(StoreError::OutOfOrder {
                image: self.image.clone(),
                expected: self.staged_seq.next(),
                got: batch.seq,
            });
        }
        check_extents(&batch.extents, self.pending.size, None).map_err(|reason| {
            StoreError::InvalidBatch {
                image: self.image.clone(),
                seq: batch.seq,
                reason,
            }
        })?;
        if batch.scan_end < self.staged_scan_end {
            return Err(StoreError::InvalidBatch {
                image: self.image.clone(),
                seq: batch.seq,
                reason: crate::standby::BatchRejection::ScanEndBackwards {
                    scan_end: batch.scan_end,
                    previous: self.staged_scan_end,
                },
            });
        }
        for extent in batch.extents {
            let len = u64::from(extent.length);
            let started = match (extent.kind, extent.data) {
                (ExtentKind::Data, Some(data)) => self.handle.aio_write(extent.offset, data),
                (ExtentKind::Zero, _) => self
                    .handle
                    .aio_write_zeroes(extent.offset, extent.length as usize),
                // librbd may skip parts of a discard (rbd_skip_partial_discard);
                // write_zeroes guarantees the range reads as zeroes.
                (ExtentKind::Discard, _) => self
                    .handle
                    .aio_write_zeroes(extent.offset, extent.length as usize),
                (ExtentKind::Data, None) => continue, // rejected by check_extents
            };
            let op = match started {
                Ok(op) => op,
                Err(e) => return Err(self.poison("starting a write to")(e)),
            };
            let weight = if extent.kind == ExtentKind::Data {
                len
            } else {
                0
            };
            self.in_flight.push_back((op, weight));
            self.in_flight_bytes += weight;
            while self.in_flight_bytes > MAX_IN_FLIGHT_BYTES
                || self.in_flight.len() > MAX_IN_FLIGHT_OPS
            {
                self.wait_oldest()?;
            }
        }
        self.staged_seq = batch.seq;
        self.staged_scan_end = batch.scan_end;
        Ok(true)
    }

    /// Waits for every staged write, flushes the image, records the durable
    /// batch; returns it. Only what this returns may be acknowledged.
    pub fn sync(&mut self) -> Result<SeqNo, StoreError> {
        if self.poisoned {
            return Err(StoreError::Poisoned {
                image: self.image.clone(),
                epoch: self.epoch(),
            });
        }
        if self.staged_seq.get() == self.pending.durable_seq {
            return Ok(self.durable_seq());
        }
        while !self.in_flight.is_empty() {
            self.wait_oldest()?;
        }
        if let Err(e) = self.handle.flush() {
            return Err(self.poison("flushing")(e));
        }
        let mut record = match self.store.load(&self.image) {
            Ok(Some(r)) => r,
            Ok(None) => {
                return Err(StoreError::UnknownImage {
                    image: self.image.clone(),
                })
            }
            Err(e) => {
                self.poisoned = true;
                return Err(e);
            }
        };
        let mut pending = self.pending;
        pending.durable_seq = self.staged_seq.get();
        pending.resume_offset = self.staged_scan_end;
        record.pending = Some(pending);
        if let Err(e) = self.store.save(&record) {
            self.poisoned = true;
            return Err(e);
        }
        self.pending = pending;
        Ok(self.durable_seq())
    }

    /// Ends the epoch: `last_seq` must be the durable (and last staged) batch.
    pub fn seal(self, last_seq: SeqNo, size: u64) -> Result<SealedEpoch, StoreError> {
        if self.poisoned {
            return Err(StoreError::Poisoned {
                image: self.image.clone(),
                epoch: self.epoch(),
            });
        }
        crate::standby::check_size(&format!("seal {} epoch {}", self.image, self.epoch()), size)?;
        if last_seq != self.durable_seq() || self.staged_seq != self.durable_seq() {
            return Err(StoreError::SealMismatch {
                image: self.image.clone(),
                epoch: self.epoch(),
                last_seq,
                durable: self.durable_seq(),
                staged: self.staged_seq,
            });
        }
        Ok(SealedEpoch {
            image: self.image.clone(),
            epoch: self.epoch(),
            last_seq,
            size,
        })
    }
}

impl Drop for RbdEpochWriter {
    fn drop(&mut self) {
        // In-flight writes complete (dropping an Aio waits); they are simply
        // not acknowledged and will be resent.
        self.in_flight.clear();
        *lock(&self.slot.writer_active) = false;
    }
}
