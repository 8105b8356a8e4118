//! [`StandbyStore`]: opening and crash recovery, epochs, the commit protocol,
//! retention, restore and hashing of committed images.
//!
//! Concurrency: every image has a [`Slot`] with an operation mutex (held by
//! `open_epoch`, `commit`, `restore`, `hash_range` and recovery; several
//! images are locked in name order) and a small metadata mutex (writer
//! claimed, pending-epoch summary) that writers update on `sync`.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use ferry_protocol::message::OpenImage;
use ferry_protocol::types::{Epoch, ImageName, RecoveryPointId};

use super::failpoint::{self, CrashPoint};
use super::io::{self as store_io, sync_dir, Create};
use super::journal::{self, JournalIndex};
use super::state::{
    self, exists, open_rw, read_checksummed, remove_if_exists, write_checksummed, HistoryEntry,
    ImageStateFile, IntentFile, IntentImage, Transition,
};
use super::undo::{self, is_zero, UndoStatus};
use super::writer::{EpochWriter, WriterFiles};
use super::{
    ImageState, PendingEpoch, RecoveryPointInfo, RecoveryPointMeta, SealedEpoch, StoreConfig,
    StoreError,
};
use crate::hashing::hash_granules;
use crate::sys::fs::{seek_data, seek_hole, try_lock_exclusive};

/// Most hashes one `hash_range` call returns.
pub const MAX_HASHES_PER_CALL: u64 = 1 << 20;

/// Bytes copied at a time by restore.
const COPY_CHUNK: usize = 1 << 20;
/// Zero-detection block of the sparse copy.
const COPY_BLOCK: usize = 4096;

/// Locks a mutex, ignoring poisoning (the data behind it stays consistent:
/// every critical section only assigns whole values).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Per-image coordination.
#[derive(Debug)]
pub(crate) struct Slot {
    image: ImageName,
    /// Serialises operations that read or change the image's files.
    op: Mutex<()>,
    /// Quick state shared with the writer.
    pub(crate) meta: Mutex<SlotMeta>,
}

/// What a slot knows without touching the disk.
#[derive(Debug, Default)]
pub(crate) struct SlotMeta {
    /// An [`EpochWriter`] exists for the image.
    pub writer_active: bool,
    /// Durable summary of the pending epoch.
    pub pending: Option<PendingEpoch>,
}

/// Kinds of files in an image directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum ImageFile {
    Journal(u64),
    Staging(u64),
    Undo(u64),
    Prev(u64),
    /// `pinned-<RP>.raw`: a kept copy of the image at recovery point RP.
    Pinned(u64),
    Tmp,
}

fn classify(name: &str) -> Option<ImageFile> {
    let number = |s: &str| s.parse::<u64>().ok();
    if name.ends_with(".tmp") {
        return Some(ImageFile::Tmp);
    }
    if let Some(rest) = name.strip_prefix("epoch-") {
        if let Some(n) = rest.strip_suffix(".journal") {
            return number(n).map(ImageFile::Journal);
        }
        if let Some(n) = rest.strip_suffix(".staging") {
            return number(n).map(ImageFile::Staging);
        }
    }
    if let Some(n) = name
        .strip_prefix("undo-")
        .and_then(|r| r.strip_suffix(".log"))
    {
        return number(n).map(ImageFile::Undo);
    }
    if let Some(n) = name
        .strip_prefix("pinned-")
        .and_then(|r| r.strip_suffix(".raw"))
    {
        return number(n).map(ImageFile::Pinned);
    }
    if let Some(n) = name
        .strip_prefix("prev-")
        .and_then(|r| r.strip_suffix(".raw"))
    {
        return number(n).map(ImageFile::Prev);
    }
    None
}

#[derive(Debug)]
struct Inner {
    images: PathBuf,
    commits: PathBuf,
    retention: usize,
    slots: Mutex<BTreeMap<ImageName, Arc<Slot>>>,
    /// Intent files of commits running in this process (recovery skips them).
    in_flight: Mutex<HashSet<PathBuf>>,
    /// Holds the store's flock for the life of the store.
    _lock: File,
}

/// The durable, crash-consistent store of standby images. Cheap to clone;
/// clones share one store. All methods block on disk I/O.
#[derive(Clone, Debug)]
pub struct StandbyStore {
    inner: Arc<Inner>,
}

/// One image's step of a commit, checked before the intent is written.
struct PlannedImage {
    image: ImageName,
    target: IntentImage,
    index: JournalIndex,
}

impl StandbyStore {
    /// Opens (creating if needed) the store in `dir`, locks it against other
    /// users, and runs crash recovery: rolls every commit intent forward,
    /// rolls back any half-applied commit without an intent, cuts torn journal
    /// tails and deletes leftovers.
    pub fn open(dir: &Path, config: StoreConfig) -> Result<Self, StoreError> {
        if !(1..=64).contains(&config.retention) {
            return Err(StoreError::InvalidConfig {
                reason: format!("retention {} is outside 1..=64", config.retention),
            });
        }
        let images = dir.join("images");
        let commits = dir.join("commits");
        for sub in [&images, &commits] {
            if !exists(sub)? {
                store_io::create_dir_all(sub)
                    .map_err(|e| StoreError::io("create directory", sub, e))?;
                sync_dir(dir).map_err(|e| StoreError::io("fsync directory", dir, e))?;
            }
        }
        let lock_path = dir.join("store.lock");
        let lock_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| StoreError::io("open lock file", &lock_path, e))?;
        if !try_lock_exclusive(&lock_file)
            .map_err(|e| StoreError::io("lock store", &lock_path, e))?
        {
            return Err(StoreError::Locked { path: lock_path });
        }
        let store = Self {
            inner: Arc::new(Inner {
                images,
                commits,
                retention: config.retention,
                slots: Mutex::new(BTreeMap::new()),
                in_flight: Mutex::new(HashSet::new()),
                _lock: lock_file,
            }),
        };
        let _span = tracing::info_span!("standby_recovery", dir = %dir.display()).entered();
        for entry in read_dir(&store.inner.images)? {
            let name = entry.file_name();
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".ferry")) else {
                continue;
            };
            match ImageName::new(stem) {
                Ok(image) => {
                    store.slot(&image);
                }
                Err(e) => {
                    tracing::warn!(entry = %stem, error = %e, "ignoring directory with an invalid image name")
                }
            }
        }
        store.finish_intents(None)?;
        let slots: Vec<Arc<Slot>> = lock(&store.inner.slots).values().cloned().collect();
        for slot in slots {
            store.recover_image(&slot)?;
        }
        Ok(store)
    }

    /// What the store holds for `image`, or `None` if it does not know it.
    pub fn image_state(&self, image: &ImageName) -> Result<Option<ImageState>, StoreError> {
        let Some(slot) = self.known_slot(image)? else {
            return Ok(None);
        };
        let state = self.load_state(image)?;
        let current = state.as_ref().and_then(ImageStateFile::current);
        let pending = lock(&slot.meta).pending;
        Ok(Some(ImageState {
            committed_epoch: current.map_or(Epoch(0), HistoryEntry::epoch),
            recovery_point: current.map_or(RecoveryPointId(0), HistoryEntry::recovery_point),
            size: current.map_or(0, |c| c.size),
            pending,
        }))
    }

    /// Every image the store knows, sorted.
    pub fn images(&self) -> Result<Vec<ImageName>, StoreError> {
        let names: Vec<ImageName> = lock(&self.inner.slots).keys().cloned().collect();
        let mut known = Vec::with_capacity(names.len());
        for name in names {
            if exists(&self.inner.image_dir(&name))? {
                known.push(name);
            }
        }
        Ok(known)
    }

    /// `DIR/images/NAME.raw`.
    pub fn image_path(&self, image: &ImageName) -> PathBuf {
        self.inner.raw(image)
    }

    /// Begins epoch `open.epoch`, or resumes it if it is pending with the same
    /// base. A pending epoch with another number or base is discarded (the
    /// primary moved on). Errors: `EpochMismatch` when the base is neither 0
    /// nor the committed epoch; `StaleEpoch` when the epoch is not newer than
    /// the committed one; `Busy` when another writer holds the image.
    pub fn open_epoch(&self, open: &OpenImage) -> Result<EpochWriter, StoreError> {
        let image = &open.image;
        self.finish_intents(Some(std::slice::from_ref(image)))?;
        let slot = self.slot(image);
        let _op = lock(&slot.op);
        if lock(&slot.meta).writer_active {
            return Err(StoreError::Busy {
                image: image.clone(),
            });
        }
        let state = self.load_state(image)?;
        let committed = state
            .as_ref()
            .and_then(ImageStateFile::current)
            .map_or(Epoch(0), HistoryEntry::epoch);
        super::check_open(open, committed)?;
        let dir = self.inner.image_dir(image);
        if !exists(&dir)? {
            store_io::create_dir(&dir)
                .map_err(|e| StoreError::io("create image directory", &dir, e))?;
            sync_dir(&self.inner.images)
                .map_err(|e| StoreError::io("fsync directory", &self.inner.images, e))?;
        }
        let mut resumed = None;
        let mut discarded = false;
        for (kind, path) in list_image_dir(&dir)? {
            let ImageFile::Journal(e) = kind else {
                continue;
            };
            if e <= committed.get() {
                // Leftover of a finished commit (its history files stay).
                remove_if_exists(&path)?;
                remove_if_exists(&self.inner.staging(image, Epoch(e)))?;
            } else if e == open.epoch.get() {
                match self.try_resume(image, open)? {
                    Some(found) => resumed = Some(found),
                    None => discarded = true,
                }
            } else {
                tracing::info!(image = %image, epoch = e, new_epoch = %open.epoch, "discarding pending epoch");
                self.discard_epoch(image, Epoch(e))?;
                discarded = true;
            }
        }
        if discarded {
            lock(&slot.meta).pending = None;
            sync_dir(&dir).map_err(|e| StoreError::io("fsync directory", &dir, e))?;
        }
        let writer = match resumed {
            Some((files, index)) => EpochWriter::new(slot.clone(), open, files, Some(&index)),
            None => {
                let files = self.create_epoch_files(open)?;
                EpochWriter::new(slot.clone(), open, files, None)
            }
        };
        let mut meta = lock(&slot.meta);
        meta.writer_active = true;
        meta.pending = Some(writer.pending());
        Ok(writer)
    }

    /// Reopens the pending journal of `open.epoch` for resuming; `None` (after
    /// discarding it) when it cannot be resumed (other base, unusable).
    fn try_resume(
        &self,
        image: &ImageName,
        open: &OpenImage,
    ) -> Result<Option<(WriterFiles, JournalIndex)>, StoreError> {
        let path = self.inner.journal(image, open.epoch);
        let journal = open_rw(&path, "open journal")?;
        let index = match journal::scan(&journal, &path) {
            Ok(index) if index.epoch == open.epoch && index.base == open.base_epoch => index,
            Ok(_) | Err(StoreError::Corrupt { .. }) => {
                tracing::info!(image = %image, epoch = %open.epoch, "pending epoch cannot be resumed; starting it again");
                self.discard_epoch(image, open.epoch)?;
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        cut_torn_tail(&journal, &path, &index)?;
        let staging = if index.is_full() {
            let staging_path = self.inner.staging(image, open.epoch);
            if !exists(&staging_path)? {
                tracing::warn!(image = %image, epoch = %open.epoch, "staging file missing; starting the epoch again");
                self.discard_epoch(image, open.epoch)?;
                return Ok(None);
            }
            let staging = open_rw(&staging_path, "open staging")?;
            // Anything above the durable high-water mark may be data of batches
            // that never became durable: cut it off, then restore the size.
            let keep = index.high_water().min(open.size);
            store_io::set_len(&staging, &staging_path, keep)
                .and_then(|()| store_io::set_len(&staging, &staging_path, open.size))
                .and_then(|()| store_io::sync_all(&staging, &staging_path))
                .map_err(|e| StoreError::io("reset staging tail", &staging_path, e))?;
            Some((staging, staging_path))
        } else {
            None
        };
        let files = WriterFiles {
            journal,
            journal_path: path,
            staging,
            nonce: index.nonce,
            journal_len: index.valid_len,
        };
        tracing::info!(image = %image, epoch = %open.epoch, durable_seq = %index.durable_seq(), "resuming pending epoch");
        Ok(Some((files, index)))
    }

    fn create_epoch_files(&self, open: &OpenImage) -> Result<WriterFiles, StoreError> {
        let image = &open.image;
        let path = self.inner.journal(image, open.epoch);
        let journal = store_io::open(&path, Create::Truncate)
            .map_err(|e| StoreError::io("create journal", &path, e))?;
        let (nonce, journal_len) = journal::write_open_record(
            &journal,
            &path,
            open.epoch,
            open.base_epoch,
            open.size,
            open.block_size,
        )?;
        let staging = if open.base_epoch == Epoch(0) {
            let staging_path = self.inner.staging(image, open.epoch);
            let staging = store_io::open(&staging_path, Create::Truncate)
                .map_err(|e| StoreError::io("create staging", &staging_path, e))?;
            store_io::set_len(&staging, &staging_path, open.size)
                .map_err(|e| StoreError::io("size staging", &staging_path, e))?;
            Some((staging, staging_path))
        } else {
            None
        };
        let dir = self.inner.image_dir(image);
        sync_dir(&dir).map_err(|e| StoreError::io("fsync directory", &dir, e))?;
        Ok(WriterFiles {
            journal,
            journal_path: path,
            staging,
            nonce,
            journal_len,
        })
    }

    /// Deletes every file of pending epoch `epoch` (the caller fsyncs the dir).
    fn discard_epoch(&self, image: &ImageName, epoch: Epoch) -> Result<(), StoreError> {
        remove_if_exists(&self.inner.journal(image, epoch))?;
        remove_if_exists(&self.inner.staging(image, epoch))?;
        remove_if_exists(&self.inner.undo(image, epoch))?;
        remove_if_exists(&self.inner.prev(image, epoch))
    }

    /// Commits recovery point `rp` made of `epochs` (one per image): after it
    /// returns `Ok`, every image is durably at `rp`; after a crash at any
    /// point, `open` brings either all of them there or (if the crash came
    /// before the intent was durable) none. Committing a point that is
    /// already committed succeeds without doing anything.
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
        let mut names: Vec<ImageName> = epochs.iter().map(|e| e.image.clone()).collect();
        names.sort();
        if let Some(pair) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(StoreError::InvalidCommit {
                recovery_point: rp.id,
                image: pair[0].clone(),
                reason: "image listed twice".into(),
            });
        }
        for image in &names {
            if self.known_slot(image)?.is_none() {
                return Err(StoreError::UnknownImage {
                    image: image.clone(),
                });
            }
        }
        self.finish_intents(Some(&names))?;
        let _span =
            tracing::info_span!("standby_commit", recovery_point = %rp.id, images = epochs.len())
                .entered();
        let mut sorted = epochs;
        sorted.sort_by(|a, b| a.image.cmp(&b.image));
        let slots: Vec<Arc<Slot>> = sorted.iter().map(|e| self.slot(&e.image)).collect();
        let _guards: Vec<MutexGuard<'_, ()>> = slots.iter().map(|s| lock(&s.op)).collect();
        for slot in &slots {
            if lock(&slot.meta).writer_active {
                return Err(StoreError::Busy {
                    image: slot.image.clone(),
                });
            }
        }
        let mut plan = Vec::new();
        for sealed in &sorted {
            if let Some(planned) = self.plan_image(&rp, sealed)? {
                plan.push(planned);
            }
        }
        if plan.is_empty() {
            return Ok(());
        }
        let intent = IntentFile {
            format: state::FORMAT,
            recovery_point: rp.id.get(),
            created_unix_ms: rp.created_unix_ms,
            fuzzy: rp.fuzzy,
            images: plan.iter().map(|p| p.target.clone()).collect(),
        };
        // Unique per commit: two groups may use the same recovery point id.
        let intent_path = self.inner.intent(rp.id, rand::random());
        lock(&self.inner.in_flight).insert(intent_path.clone());
        let result = (|| {
            write_checksummed(&intent_path, &intent)?;
            failpoint::hit(CrashPoint::AfterIntent)?;
            for (i, planned) in plan.into_iter().enumerate() {
                if i > 0 {
                    failpoint::hit(CrashPoint::BetweenImages)?;
                }
                self.commit_image(&planned.image, &planned.target, &rp, Some(planned.index))?;
                if let Some(slot) = self.existing_slot(&planned.image) {
                    lock(&slot.meta).pending = None;
                }
            }
            remove_if_exists(&intent_path)?;
            sync_dir(&self.inner.commits)
                .map_err(|e| StoreError::io("fsync directory", &self.inner.commits, e))
        })();
        // On failure the intent stays on disk and is rolled forward by the
        // next operation on these images (or the next open).
        lock(&self.inner.in_flight).remove(&intent_path);
        result
    }

    /// Creates a sparse probe file of `size` bytes next to the image and
    /// removes it again: fails with the filesystem's own error (EFBIG, "File
    /// too large") when the image could not be grown to `size`.
    fn check_size_fits(&self, image: &ImageName, size: u64) -> Result<(), StoreError> {
        let probe = self.inner.image_dir(image).join("size-probe.tmp");
        let result = store_io::open(&probe, Create::Truncate)
            .and_then(|file| store_io::set_len(&file, &probe, size));
        let removed = remove_if_exists(&probe);
        result.map_err(|e| {
            StoreError::io(
                "check the filesystem can hold the new image size",
                &probe,
                e,
            )
        })?;
        removed
    }

    /// Checks one image of a commit against the disk; `None` when that image
    /// is already at the recovery point.
    fn plan_image(
        &self,
        rp: &RecoveryPointMeta,
        sealed: &SealedEpoch,
    ) -> Result<Option<PlannedImage>, StoreError> {
        let image = &sealed.image;
        let invalid = |reason: String| StoreError::InvalidCommit {
            recovery_point: rp.id,
            image: image.clone(),
            reason,
        };
        let state = self.load_state(image)?;
        let current = state.as_ref().and_then(ImageStateFile::current);
        let committed = current.map_or(Epoch(0), HistoryEntry::epoch);
        if let Some(current) = current {
            if current.epoch() == sealed.epoch {
                if current.recovery_point() == rp.id {
                    return Ok(None);
                }
                return Err(invalid(format!(
                    "epoch {} is already committed as recovery point {}",
                    sealed.epoch, current.recovery_point
                )));
            }
            if rp.id <= current.recovery_point() {
                return Err(invalid(format!(
                    "recovery point is not newer than the committed {}",
                    current.recovery_point
                )));
            }
        }
        if sealed.epoch <= committed {
            return Err(StoreError::StaleEpoch {
                image: image.clone(),
                committed,
                epoch: sealed.epoch,
            });
        }
        let path = self.inner.journal(image, sealed.epoch);
        let journal = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(invalid(format!("epoch {} is not pending", sealed.epoch)))
            }
            Err(e) => return Err(StoreError::io("open journal", &path, e)),
        };
        let index = journal::scan(&journal, &path)?;
        if index.epoch != sealed.epoch {
            return Err(StoreError::corrupt(
                &path,
                format!("journal holds epoch {}", index.epoch),
            ));
        }
        if !index.is_full() && index.base != committed {
            return Err(StoreError::EpochMismatch {
                image: image.clone(),
                committed,
                base: index.base,
            });
        }
        if index.durable_seq() != sealed.last_seq {
            return Err(invalid(format!(
                "last batch is {} but {} is durable",
                sealed.last_seq,
                index.durable_seq()
            )));
        }
        if index.is_full() && !exists(&self.inner.staging(image, sealed.epoch))? {
            return Err(StoreError::corrupt(
                &self.inner.staging(image, sealed.epoch),
                "staging file of a full-copy epoch is missing",
            ));
        }
        if !index.is_full() && sealed.size > current.map_or(0, |c| c.size) {
            // A full copy sized its staging file when it opened; an
            // incremental epoch grows the image only while the commit is
            // applied, after the intent is durable. A size the filesystem
            // cannot hold (ext4 stops at 16 TiB) would then fail every
            // roll-forward and brick the store: prove it fits first.
            self.check_size_fits(image, sealed.size)?;
        }
        Ok(Some(PlannedImage {
            image: image.clone(),
            target: IntentImage {
                image: image.as_str().to_owned(),
                epoch: sealed.epoch.get(),
                last_seq: sealed.last_seq.get(),
                size: sealed.size,
            },
            index,
        }))
    }

    /// Brings one image to the intent's epoch; redoable from any crash point.
    /// The caller holds the image's operation lock.
    fn commit_image(
        &self,
        image: &ImageName,
        target: &IntentImage,
        rp: &RecoveryPointMeta,
        index: Option<JournalIndex>,
    ) -> Result<(), StoreError> {
        let state = self.load_state(image)?;
        let current = state.as_ref().and_then(ImageStateFile::current);
        if let Some(current) = current {
            if current.epoch() == target.epoch() && current.recovery_point() == rp.id {
                // Only the cleanup after the state update can be missing.
                if let Some(state) = &state {
                    self.cleanup_after_commit(image, state)?;
                }
                return Ok(());
            }
        }
        let path = self.inner.journal(image, target.epoch());
        let index = match index {
            Some(index) => index,
            None => {
                let journal =
                    File::open(&path).map_err(|e| StoreError::io("open journal", &path, e))?;
                journal::scan(&journal, &path)?
            }
        };
        if index.durable_seq() != target.last_seq() {
            return Err(StoreError::corrupt(
                &path,
                format!(
                    "commit needs batch {} but only {} is durable",
                    target.last_seq,
                    index.durable_seq()
                ),
            ));
        }
        let committed = current.map_or(Epoch(0), HistoryEntry::epoch);
        let transition = if index.is_full() {
            self.apply_full(image, target, &index, committed)?
        } else {
            if index.base != committed {
                return Err(StoreError::corrupt(
                    &path,
                    format!(
                        "journal base {} is not the committed epoch {committed}",
                        index.base
                    ),
                ));
            }
            let old_size = current.map_or(0, |c| c.size);
            self.apply_incremental(image, target, &index, old_size)?;
            Transition::Undo
        };
        let (mut history, pinned) = state.map(|s| (s.history, s.pinned)).unwrap_or_default();
        history.push(HistoryEntry {
            recovery_point: rp.id.get(),
            epoch: target.epoch,
            created_unix_ms: rp.created_unix_ms,
            fuzzy: rp.fuzzy,
            size: target.size,
            transition,
        });
        if history.len() > self.inner.retention {
            let excess = history.len() - self.inner.retention;
            history.drain(..excess);
        }
        let new_state = ImageStateFile {
            format: state::FORMAT,
            image: image.as_str().to_owned(),
            history,
            pinned,
        };
        write_checksummed(&self.inner.state(image), &new_state)?;
        failpoint::hit(CrashPoint::AfterStateBeforeCleanup)?;
        tracing::info!(image = %image, epoch = target.epoch, recovery_point = %rp.id, size = target.size, "image committed");
        self.cleanup_after_commit(image, &new_state)
    }

    /// Full copy: the staging file becomes the image; the old image (if any
    /// committed) moves into history as `prev-<E>.raw`.
    fn apply_full(
        &self,
        image: &ImageName,
        target: &IntentImage,
        index: &JournalIndex,
        committed: Epoch,
    ) -> Result<Transition, StoreError> {
        let epoch = target.epoch();
        let raw = self.inner.raw(image);
        let staging_path = self.inner.staging(image, epoch);
        let prev = self.inner.prev(image, epoch);
        let dir = self.inner.image_dir(image);
        let sync_both = || -> Result<(), StoreError> {
            sync_dir(&self.inner.images)
                .map_err(|e| StoreError::io("fsync directory", &self.inner.images, e))?;
            sync_dir(&dir).map_err(|e| StoreError::io("fsync directory", &dir, e))
        };
        if exists(&staging_path)? {
            let staging = open_rw(&staging_path, "open staging")?;
            // Everything above the durable high-water mark reads as zero (it
            // can only hold data of batches that never became durable).
            let keep = index.high_water().min(target.size);
            store_io::set_len(&staging, &staging_path, keep)
                .and_then(|()| store_io::set_len(&staging, &staging_path, target.size))
                .and_then(|()| store_io::sync_all(&staging, &staging_path))
                .map_err(|e| StoreError::io("size staging", &staging_path, e))?;
            drop(staging);
            if committed > Epoch(0) && exists(&raw)? {
                store_io::rename(&raw, &prev)
                    .map_err(|e| StoreError::io("move old image into history", &raw, e))?;
                sync_both()?;
            }
            failpoint::hit(CrashPoint::AfterFullRenameOld)?;
            store_io::rename(&staging_path, &raw)
                .map_err(|e| StoreError::io("install staged image", &staging_path, e))?;
            sync_both()?;
            failpoint::hit(CrashPoint::AfterFullRenameNew)?;
        } else if !exists(&raw)? || (committed > Epoch(0) && !exists(&prev)?) {
            return Err(StoreError::corrupt(
                &staging_path,
                "staging file is gone but the image was not installed",
            ));
        }
        Ok(if committed > Epoch(0) {
            Transition::Full
        } else {
            Transition::Initial
        })
    }

    /// Incremental: undo log, replay of the journal, fdatasync.
    fn apply_incremental(
        &self,
        image: &ImageName,
        target: &IntentImage,
        index: &JournalIndex,
        old_size: u64,
    ) -> Result<(), StoreError> {
        let epoch = target.epoch();
        let raw_path = self.inner.raw(image);
        let undo_path = self.inner.undo(image, epoch);
        let raw = open_rw(&raw_path, "open image")?;
        match undo::read(&undo_path)? {
            UndoStatus::Complete(log) if log.epoch == epoch => {
                tracing::info!(image = %image, epoch = %epoch, "undo log complete: rolling the apply forward");
            }
            status => {
                if matches!(status, UndoStatus::Complete(_)) {
                    return Err(StoreError::corrupt(
                        &undo_path,
                        "undo log belongs to another epoch",
                    ));
                }
                // No complete undo log: the image has not been touched yet.
                let len = raw
                    .metadata()
                    .map_err(|e| StoreError::io("stat image", &raw_path, e))?
                    .len();
                if len != old_size {
                    return Err(StoreError::corrupt(
                        &raw_path,
                        format!("image is {len} bytes, the committed size is {old_size}"),
                    ));
                }
                let ranges = undo::touched_ranges(index, old_size, target.size);
                undo::write(
                    &undo_path, &raw, &raw_path, epoch, index.base, old_size, &ranges,
                )?;
                let dir = self.inner.image_dir(image);
                sync_dir(&dir).map_err(|e| StoreError::io("fsync directory", &dir, e))?;
            }
        }
        failpoint::hit(CrashPoint::AfterUndoWritten)?;
        let journal_path = self.inner.journal(image, epoch);
        let journal = File::open(&journal_path)
            .map_err(|e| StoreError::io("open journal", &journal_path, e))?;
        journal::replay(index, &journal, &journal_path, &raw, &raw_path)?;
        store_io::set_len(&raw, &raw_path, target.size)
            .map_err(|e| StoreError::io("set image size", &raw_path, e))?;
        failpoint::hit(CrashPoint::AfterDataBeforeSync)?;
        store_io::sync_all(&raw, &raw_path)
            .map_err(|e| StoreError::io("fsync image", &raw_path, e))?;
        failpoint::hit(CrashPoint::AfterDataBeforeState)
    }

    /// Deletes the committed journal, stale epochs and history files no
    /// retained recovery point needs. Best effort is not enough here: errors
    /// are reported (the files are found again by the next recovery anyway).
    fn cleanup_after_commit(
        &self,
        image: &ImageName,
        state: &ImageStateFile,
    ) -> Result<(), StoreError> {
        let Some(current) = state.current() else {
            return Ok(());
        };
        let committed = current.epoch;
        let needed: Vec<ImageFile> = state
            .history
            .iter()
            .skip(1)
            .filter_map(|h| match h.transition {
                Transition::Undo => Some(ImageFile::Undo(h.epoch)),
                Transition::Full => Some(ImageFile::Prev(h.epoch)),
                Transition::Initial => None,
            })
            .collect();
        let dir = self.inner.image_dir(image);
        for (kind, path) in list_image_dir(&dir)? {
            let remove = match kind {
                ImageFile::Journal(e) | ImageFile::Staging(e) => e <= committed,
                ImageFile::Undo(e) | ImageFile::Prev(e) => {
                    e <= committed && !needed.contains(&kind)
                }
                // A copy the state does not list is left over from a pin
                // interrupted before its state update.
                ImageFile::Pinned(rp) => !state.pinned.iter().any(|p| p.recovery_point == rp),
                ImageFile::Tmp => false,
            };
            if remove {
                remove_if_exists(&path)?;
            }
        }
        Ok(())
    }

    /// Rolls forward every commit intent left by a crash or a failed commit
    /// (only those naming one of `only`, if given; never one of a commit
    /// running right now).
    fn finish_intents(&self, only: Option<&[ImageName]>) -> Result<(), StoreError> {
        let mut intents = Vec::new();
        for entry in read_dir(&self.inner.commits)? {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(".tmp") {
                if only.is_none() {
                    remove_if_exists(&entry.path())?;
                }
                continue;
            }
            if let Some(id) = name
                .strip_prefix("rp-")
                .and_then(|r| r.split_once('-'))
                .and_then(|(id, rest)| rest.strip_suffix(".intent").map(|_| id))
                .and_then(|n| n.parse::<u64>().ok())
            {
                intents.push((id, entry.path()));
            }
        }
        intents.sort();
        for (_, path) in intents {
            if lock(&self.inner.in_flight).contains(&path) {
                continue;
            }
            let Some(intent) = read_checksummed::<IntentFile>(&path)? else {
                continue;
            };
            let mut images = Vec::with_capacity(intent.images.len());
            for part in &intent.images {
                images.push((state::parse_image(&part.image, &path)?, part));
            }
            if only.is_some_and(|o| !images.iter().any(|(i, _)| o.contains(i))) {
                continue;
            }
            images.sort_by(|a, b| a.0.cmp(&b.0));
            let rp = RecoveryPointMeta {
                id: RecoveryPointId(intent.recovery_point),
                created_unix_ms: intent.created_unix_ms,
                fuzzy: intent.fuzzy,
            };
            tracing::info!(recovery_point = %rp.id, images = images.len(), "rolling commit intent forward");
            let slots: Vec<Arc<Slot>> = images.iter().map(|(i, _)| self.slot(i)).collect();
            let _guards: Vec<MutexGuard<'_, ()>> = slots.iter().map(|s| lock(&s.op)).collect();
            for slot in &slots {
                if lock(&slot.meta).writer_active {
                    return Err(StoreError::Busy {
                        image: slot.image.clone(),
                    });
                }
            }
            for ((image, part), slot) in images.iter().zip(&slots) {
                self.commit_image(image, part, &rp, None)?;
                lock(&slot.meta).pending = None;
            }
            remove_if_exists(&path)?;
            sync_dir(&self.inner.commits)
                .map_err(|e| StoreError::io("fsync directory", &self.inner.commits, e))?;
        }
        Ok(())
    }

    /// Open-time recovery of one image (after intents were rolled forward):
    /// roll back a half-done commit that has no intent, keep the newest
    /// pending epoch (torn tail cut), delete leftovers.
    fn recover_image(&self, slot: &Arc<Slot>) -> Result<(), StoreError> {
        let image = &slot.image;
        let _op = lock(&slot.op);
        let state = self.load_state(image)?;
        let committed = state
            .as_ref()
            .and_then(ImageStateFile::current)
            .map_or(0, |c| c.epoch);
        let dir = self.inner.image_dir(image);
        let files = list_image_dir(&dir)?;
        let pending = files
            .iter()
            .filter_map(|(kind, _)| match kind {
                ImageFile::Journal(e) if *e > committed => Some(*e),
                _ => None,
            })
            .max();
        if let Some(epoch) = pending {
            self.roll_back_uncommitted(image, Epoch(epoch))?;
        }
        for (kind, path) in &files {
            let remove = match *kind {
                ImageFile::Tmp => true,
                ImageFile::Journal(e) | ImageFile::Staging(e) => Some(e) != pending,
                ImageFile::Undo(e) | ImageFile::Prev(e) => e > committed,
                // Unlisted copies go in cleanup_after_commit below.
                ImageFile::Pinned(_) => false,
            };
            if remove {
                remove_if_exists(path)?;
            }
        }
        if let Some(state) = &state {
            self.cleanup_after_commit(image, state)?;
        }
        let mut found = None;
        if let Some(epoch) = pending.map(Epoch) {
            let path = self.inner.journal(image, epoch);
            let journal = open_rw(&path, "open journal")?;
            match journal::scan(&journal, &path) {
                Ok(index) if index.epoch == epoch => {
                    let staging_ok = !index.is_full() || exists(&self.inner.staging(image, epoch))?;
                    if staging_ok {
                        cut_torn_tail(&journal, &path, &index)?;
                        found = Some(PendingEpoch {
                            epoch,
                            base_epoch: index.base,
                            durable_seq: index.durable_seq(),
                            resume_offset: index.resume_offset(),
                        });
                    }
                }
                Ok(_) | Err(StoreError::Corrupt { .. }) => {}
                Err(e) => return Err(e),
            }
            if found.is_none() {
                tracing::warn!(image = %image, epoch = %epoch, "discarding unusable pending epoch");
                self.discard_epoch(image, epoch)?;
            }
        }
        sync_dir(&dir).map_err(|e| StoreError::io("fsync directory", &dir, e))?;
        lock(&slot.meta).pending = found;
        Ok(())
    }

    /// Undoes a commit of pending `epoch` that started without an intent
    /// (only possible if an intent file was lost): the image returns to the
    /// committed state and the epoch stays pending.
    fn roll_back_uncommitted(&self, image: &ImageName, epoch: Epoch) -> Result<(), StoreError> {
        let raw = self.inner.raw(image);
        let undo_path = self.inner.undo(image, epoch);
        match undo::read(&undo_path)? {
            UndoStatus::Missing => {}
            UndoStatus::Incomplete => remove_if_exists(&undo_path)?,
            UndoStatus::Complete(log) => {
                tracing::warn!(image = %image, epoch = %epoch, "commit without intent: rolling the image back");
                let file = open_rw(&raw, "open image")?;
                undo::apply(&log, &undo_path, &file, &raw)?;
                store_io::sync_all(&file, &raw)
                    .map_err(|e| StoreError::io("fsync image", &raw, e))?;
                remove_if_exists(&undo_path)?;
            }
        }
        let prev = self.inner.prev(image, epoch);
        let staging = self.inner.staging(image, epoch);
        let journal = self.inner.journal(image, epoch);
        // Only consulted when nothing is committed and the staging file is
        // gone (so the scan of a large incremental journal is never needed).
        let full = || {
            File::open(&journal)
                .ok()
                .and_then(|f| journal::scan(&f, &journal).ok())
                .is_some_and(|i| i.is_full())
        };
        let mut moved = false;
        if exists(&prev)? {
            tracing::warn!(image = %image, epoch = %epoch, "full-copy commit without intent: restoring the old image");
            if exists(&raw)? && !exists(&staging)? {
                store_io::rename(&raw, &staging)
                    .map_err(|e| StoreError::io("move image back to staging", &raw, e))?;
            }
            if !exists(&raw)? {
                store_io::rename(&prev, &raw)
                    .map_err(|e| StoreError::io("restore old image", &prev, e))?;
            }
            moved = true;
        } else if !exists(&staging)? && exists(&raw)? && self.load_state(image)?.is_none() && full()
        {
            // First full copy installed without intent: nothing was committed before.
            store_io::rename(&raw, &staging)
                .map_err(|e| StoreError::io("move image back to staging", &raw, e))?;
            moved = true;
        }
        if moved {
            sync_dir(&self.inner.images)
                .map_err(|e| StoreError::io("fsync directory", &self.inner.images, e))?;
            let dir = self.inner.image_dir(image);
            sync_dir(&dir).map_err(|e| StoreError::io("fsync directory", &dir, e))?;
        }
        Ok(())
    }

    /// The retained recovery points of `image`, oldest first.
    pub fn recovery_points(&self, image: &ImageName) -> Result<Vec<RecoveryPointInfo>, StoreError> {
        if self.known_slot(image)?.is_none() {
            return Err(StoreError::UnknownImage {
                image: image.clone(),
            });
        }
        let Some(state) = self.load_state(image)? else {
            return Ok(Vec::new());
        };
        let current = state.current().map(HistoryEntry::recovery_point);
        let mut points: Vec<RecoveryPointInfo> = state
            .pinned
            .iter()
            .filter(|p| {
                !state
                    .history
                    .iter()
                    .any(|h| h.recovery_point == p.recovery_point)
            })
            .chain(&state.history)
            .map(|h| RecoveryPointInfo {
                id: h.recovery_point(),
                epoch: h.epoch(),
                created_unix_ms: h.created_unix_ms,
                fuzzy: h.fuzzy,
                size: h.size,
                current: Some(h.recovery_point()) == current,
            })
            .collect();
        points.sort_by_key(|p| p.id);
        Ok(points)
    }

    /// Writes the image as it was at recovery point `rp` to the new file
    /// `out` (which must not exist), sparsely. On error `out` is removed.
    pub fn restore(
        &self,
        image: &ImageName,
        rp: RecoveryPointId,
        out: &Path,
    ) -> Result<(), StoreError> {
        self.with_committed_state(image, rp, |state| {
            self.restore_locked(image, state, rp, out)
        })
    }

    /// Runs `f` on the state of a known image that has committed something,
    /// with the image's operation lock held (about recovery point `rp`: its
    /// absence is `UnknownRecoveryPoint`).
    fn with_committed_state<T>(
        &self,
        image: &ImageName,
        rp: RecoveryPointId,
        f: impl FnOnce(&mut ImageStateFile) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let slot = self
            .known_slot(image)?
            .ok_or_else(|| StoreError::UnknownImage {
                image: image.clone(),
            })?;
        let _op = lock(&slot.op);
        let mut state =
            self.load_state(image)?
                .ok_or_else(|| StoreError::UnknownRecoveryPoint {
                    image: image.clone(),
                    recovery_point: rp,
                })?;
        f(&mut state)
    }

    /// [`Self::restore`] with the slot's operation lock held.
    fn restore_locked(
        &self,
        image: &ImageName,
        state: &ImageStateFile,
        rp: RecoveryPointId,
        out: &Path,
    ) -> Result<(), StoreError> {
        let unknown = || StoreError::UnknownRecoveryPoint {
            image: image.clone(),
            recovery_point: rp,
        };
        let history = &state.history;
        let Some(k) = history.iter().position(|h| h.recovery_point() == rp) else {
            // Not in the history: a pinned copy, or unknown.
            let pinned = state
                .pinned
                .iter()
                .find(|p| p.recovery_point() == rp)
                .ok_or_else(unknown)?;
            return self.write_out(&self.inner.pinned(image, rp), &[], pinned.size, out);
        };
        // Start from the closest full-copy predecessor above k, or the image.
        let full_at = (k + 1..history.len()).find(|&j| history[j].transition == Transition::Full);
        let source = match full_at {
            Some(j) => self.inner.prev(image, history[j].epoch()),
            None => self.inner.raw(image),
        };
        let chain_end = full_at.unwrap_or(history.len());
        let mut logs = Vec::new();
        for entry in history[k + 1..chain_end].iter().rev() {
            let path = self.inner.undo(image, entry.epoch());
            match (entry.transition, undo::read(&path)?) {
                (Transition::Undo, UndoStatus::Complete(log)) => logs.push((path, log)),
                _ => {
                    return Err(StoreError::corrupt(
                        &path,
                        "history needs this complete undo log",
                    ))
                }
            }
        }
        let _span =
            tracing::info_span!("standby_restore", image = %image, recovery_point = %rp).entered();
        self.write_out(&source, &logs, history[k].size, out)
    }

    /// Copies the committed-image file `source` sparsely into the new file
    /// `out`, applies `logs` in order, checks the result is `size` bytes and
    /// makes it durable. On error `out` is removed.
    fn write_out(
        &self,
        source: &Path,
        logs: &[(PathBuf, undo::UndoLog)],
        size: u64,
        out: &Path,
    ) -> Result<(), StoreError> {
        let out_file = store_io::open(out, Create::New)
            .map_err(|e| StoreError::io("create restore target", out, e))?;
        let result = (|| {
            let src =
                File::open(source).map_err(|e| StoreError::io("open restore source", source, e))?;
            copy_sparse(&src, source, &out_file, out)?;
            for (path, log) in logs {
                undo::apply(log, path, &out_file, out)?;
            }
            let len = out_file
                .metadata()
                .map_err(|e| StoreError::io("stat restore target", out, e))?
                .len();
            if len != size {
                return Err(StoreError::corrupt(
                    source,
                    format!("restored image is {len} bytes, recovery point says {size}"),
                ));
            }
            store_io::sync_all(&out_file, out)
                .map_err(|e| StoreError::io("fsync restore target", out, e))?;
            let parent = out
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            sync_dir(parent).map_err(|e| StoreError::io("fsync directory", parent, e))
        })();
        if result.is_err() {
            let _ = store_io::remove_file(out);
        }
        result
    }

    /// BLAKE3 of each `granularity` piece of `[offset, offset + length)` of
    /// the committed image (clipped to its size), with the recovery point and
    /// size it was taken at. An image with nothing committed hashes as empty.
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
        let slot = self
            .known_slot(image)?
            .ok_or_else(|| StoreError::UnknownImage {
                image: image.clone(),
            })?;
        let _op = lock(&slot.op);
        let Some(current) = self.load_state(image)?.and_then(|s| s.current().cloned()) else {
            return Ok((RecoveryPointId(0), 0, Vec::new()));
        };
        let end = offset.saturating_add(length).min(current.size);
        let count = end.saturating_sub(offset).div_ceil(u64::from(granularity));
        if count > MAX_HASHES_PER_CALL {
            return Err(StoreError::InvalidRequest {
                reason: format!("{count} granules requested, the limit is {MAX_HASHES_PER_CALL}"),
            });
        }
        let raw = self.inner.raw(image);
        let file = File::open(&raw).map_err(|e| StoreError::io("open image", &raw, e))?;
        let _span = tracing::debug_span!("standby_hash", image = %image, offset, length).entered();
        let hashes = hash_granules(&file, current.size, offset, length, granularity)
            .map_err(|e| StoreError::io("hash image", &raw, e))?;
        Ok((current.recovery_point(), current.size, hashes))
    }

    /// Creates `image` as an empty (sparse) placeholder of `size` bytes with
    /// nothing committed: a resource was added to a protected group, and its
    /// first sync (a full copy) replaces it. An image the store already
    /// knows is left alone.
    pub fn create_placeholder(&self, image: &ImageName, size: u64) -> Result<(), StoreError> {
        let slot = self.slot(image);
        let _op = lock(&slot.op);
        let dir = self.inner.image_dir(image);
        if exists(&dir)? {
            return Ok(());
        }
        let raw = self.inner.raw(image);
        let file = store_io::open(&raw, Create::Keep)
            .map_err(|e| StoreError::io("create placeholder", &raw, e))?;
        store_io::set_len(&file, &raw, size)
            .and_then(|()| store_io::sync_all(&file, &raw))
            .map_err(|e| StoreError::io("size placeholder", &raw, e))?;
        store_io::create_dir(&dir)
            .map_err(|e| StoreError::io("create image directory", &dir, e))?;
        sync_dir(&self.inner.images)
            .map_err(|e| StoreError::io("fsync directory", &self.inner.images, e))?;
        tracing::info!(image = %image, size, "placeholder image created");
        Ok(())
    }

    /// Keeps recovery point `rp` of `image` restorable until [`Self::unpin`],
    /// whatever the retention: the image as it was at `rp` is copied
    /// (sparsely) to `pinned-<RP>.raw` and listed in the state file. Costs a
    /// copy of the image's allocated bytes per pinned point (the RBD backend
    /// keeps a snapshot instead). Idempotent; `rp` must still be retained.
    pub fn pin(&self, image: &ImageName, rp: RecoveryPointId) -> Result<(), StoreError> {
        self.with_committed_state(image, rp, |state| self.pin_locked(image, state, rp))
    }

    fn pin_locked(
        &self,
        image: &ImageName,
        state: &mut ImageStateFile,
        rp: RecoveryPointId,
    ) -> Result<(), StoreError> {
        if state.pinned.iter().any(|p| p.recovery_point() == rp) {
            return Ok(());
        }
        let entry = state
            .history
            .iter()
            .find(|h| h.recovery_point() == rp)
            .cloned()
            .ok_or_else(|| StoreError::UnknownRecoveryPoint {
                image: image.clone(),
                recovery_point: rp,
            })?;
        let path = self.inner.pinned(image, rp);
        let tmp = path.with_extension("raw.tmp");
        remove_if_exists(&tmp)?;
        self.restore_locked(image, state, rp, &tmp)?;
        store_io::rename(&tmp, &path)
            .map_err(|e| StoreError::io("install pinned copy", &tmp, e))?;
        let dir = self.inner.image_dir(image);
        sync_dir(&dir).map_err(|e| StoreError::io("fsync directory", &dir, e))?;
        state.pinned.push(entry);
        write_checksummed(&self.inner.state(image), &*state)?;
        tracing::info!(image = %image, recovery_point = %rp, "recovery point pinned");
        Ok(())
    }

    /// Lets recovery point `rp` of `image` go: its pinned copy is deleted
    /// (the point stays restorable while the retention still holds it).
    /// Unknown images and points that are not pinned are not an error.
    pub fn unpin(&self, image: &ImageName, rp: RecoveryPointId) -> Result<(), StoreError> {
        let Some(slot) = self.known_slot(image)? else {
            return Ok(());
        };
        let _op = lock(&slot.op);
        let Some(mut state) = self.load_state(image)? else {
            return Ok(());
        };
        let before = state.pinned.len();
        state.pinned.retain(|p| p.recovery_point() != rp);
        if state.pinned.len() != before {
            write_checksummed(&self.inner.state(image), &state)?;
        }
        remove_if_exists(&self.inner.pinned(image, rp))
    }

    /// Deletes `image` and everything the store keeps of it (history, pinned
    /// copies, a pending epoch). Refused while a writer is open on it. An
    /// unknown image is not an error. The state file goes first, so a crash
    /// part-way leaves an image the store no longer lists.
    pub fn remove_image(&self, image: &ImageName) -> Result<(), StoreError> {
        let Some(slot) = self.existing_slot(image) else {
            return Ok(());
        };
        let _op = lock(&slot.op);
        if lock(&slot.meta).writer_active {
            return Err(StoreError::Busy {
                image: image.clone(),
            });
        }
        let dir = self.inner.image_dir(image);
        remove_if_exists(&self.inner.state(image))?;
        if exists(&dir)? {
            sync_dir(&dir).map_err(|e| StoreError::io("fsync directory", &dir, e))?;
            store_io::remove_dir_all(&dir)
                .map_err(|e| StoreError::io("remove image directory", &dir, e))?;
        }
        remove_if_exists(&self.inner.raw(image))?;
        sync_dir(&self.inner.images)
            .map_err(|e| StoreError::io("fsync directory", &self.inner.images, e))?;
        lock(&slot.meta).pending = None;
        tracing::info!(image = %image, "standby image removed");
        Ok(())
    }

    /// Installs a copy of the file `source` as `image` committed at `epoch`
    /// and recovery point `rp` — the standby side of a role swap, where the
    /// old primary's volume already equals what the new primary holds, so
    /// replication back starts incrementally. Refused when the store already
    /// has anything committed or pending for `image`.
    pub fn adopt(
        &self,
        image: &ImageName,
        source: &Path,
        epoch: Epoch,
        rp: RecoveryPointId,
        created_unix_ms: u64,
    ) -> Result<(), StoreError> {
        if epoch == Epoch(0) || rp.get() == 0 {
            return Err(StoreError::InvalidRequest {
                reason: "adopt needs a non-zero epoch and recovery point".into(),
            });
        }
        let slot = self.slot(image);
        let _op = lock(&slot.op);
        let meta_busy = {
            let meta = lock(&slot.meta);
            meta.writer_active || meta.pending.is_some()
        };
        if meta_busy || self.load_state(image)?.is_some() {
            return Err(StoreError::InvalidRequest {
                reason: format!("{image} already has data on this standby; remove it first"),
            });
        }
        let dir = self.inner.image_dir(image);
        if !exists(&dir)? {
            store_io::create_dir(&dir)
                .map_err(|e| StoreError::io("create image directory", &dir, e))?;
        }
        let raw = self.inner.raw(image);
        let tmp = raw.with_extension("raw.tmp");
        remove_if_exists(&tmp)?;
        let size = fs::metadata(source)
            .map_err(|e| StoreError::io("stat adopted image", source, e))?
            .len();
        self.write_out(source, &[], size, &tmp)?;
        store_io::rename(&tmp, &raw)
            .map_err(|e| StoreError::io("install adopted image", &tmp, e))?;
        sync_dir(&self.inner.images)
            .map_err(|e| StoreError::io("fsync directory", &self.inner.images, e))?;
        let state = ImageStateFile {
            format: state::FORMAT,
            image: image.as_str().to_owned(),
            history: vec![HistoryEntry {
                recovery_point: rp.get(),
                epoch: epoch.0,
                created_unix_ms,
                fuzzy: false,
                size,
                transition: Transition::Initial,
            }],
            pinned: Vec::new(),
        };
        write_checksummed(&self.inner.state(image), &state)?;
        tracing::info!(image = %image, epoch = epoch.0, recovery_point = %rp, size, "image adopted");
        Ok(())
    }

    fn slot(&self, image: &ImageName) -> Arc<Slot> {
        lock(&self.inner.slots)
            .entry(image.clone())
            .or_insert_with(|| {
                Arc::new(Slot {
                    image: image.clone(),
                    op: Mutex::new(()),
                    meta: Mutex::new(SlotMeta::default()),
                })
            })
            .clone()
    }

    fn existing_slot(&self, image: &ImageName) -> Option<Arc<Slot>> {
        lock(&self.inner.slots).get(image).cloned()
    }

    /// The slot of an image the store really holds (its directory exists; a
    /// failed first `open_epoch` can leave a slot without one).
    fn known_slot(&self, image: &ImageName) -> Result<Option<Arc<Slot>>, StoreError> {
        match self.existing_slot(image) {
            Some(slot) if exists(&self.inner.image_dir(image))? => Ok(Some(slot)),
            _ => Ok(None),
        }
    }

    fn load_state(&self, image: &ImageName) -> Result<Option<ImageStateFile>, StoreError> {
        let path = self.inner.state(image);
        let Some(state) = read_checksummed::<ImageStateFile>(&path)? else {
            return Ok(None);
        };
        if state.format != state::FORMAT {
            return Err(StoreError::corrupt(
                &path,
                format!("unsupported format {}", state.format),
            ));
        }
        if state.image != image.as_str() {
            return Err(StoreError::corrupt(
                &path,
                format!("names image {:?}", state.image),
            ));
        }
        if state.history.is_empty() {
            return Err(StoreError::corrupt(&path, "history is empty"));
        }
        Ok(Some(state))
    }
}

impl Inner {
    fn image_dir(&self, image: &ImageName) -> PathBuf {
        self.images.join(format!("{image}.ferry"))
    }
    fn raw(&self, image: &ImageName) -> PathBuf {
        self.images.join(format!("{image}.raw"))
    }
    fn state(&self, image: &ImageName) -> PathBuf {
        self.image_dir(image).join("state.json")
    }
    fn journal(&self, image: &ImageName, epoch: Epoch) -> PathBuf {
        self.image_dir(image).join(format!("epoch-{epoch}.journal"))
    }
    fn staging(&self, image: &ImageName, epoch: Epoch) -> PathBuf {
        self.image_dir(image).join(format!("epoch-{epoch}.staging"))
    }
    fn undo(&self, image: &ImageName, epoch: Epoch) -> PathBuf {
        self.image_dir(image).join(format!("undo-{epoch}.log"))
    }
    fn prev(&self, image: &ImageName, epoch: Epoch) -> PathBuf {
        self.image_dir(image).join(format!("prev-{epoch}.raw"))
    }
    fn pinned(&self, image: &ImageName, rp: RecoveryPointId) -> PathBuf {
        self.image_dir(image).join(format!("pinned-{rp}.raw"))
    }
    fn intent(&self, rp: RecoveryPointId, nonce: u32) -> PathBuf {
        self.commits.join(format!("rp-{rp}-{nonce:08x}.intent"))
    }
}

fn read_dir(dir: &Path) -> Result<Vec<fs::DirEntry>, StoreError> {
    fs::read_dir(dir)
        .and_then(|entries| entries.collect::<io::Result<Vec<_>>>())
        .map_err(|e| StoreError::io("list directory", dir, e))
}

/// The ferry files of an image directory (state.json and unknown names are
/// not listed).
fn list_image_dir(dir: &Path) -> Result<Vec<(ImageFile, PathBuf)>, StoreError> {
    if !exists(dir)? {
        return Ok(Vec::new());
    }
    let mut out: Vec<(ImageFile, PathBuf)> = read_dir(dir)?
        .into_iter()
        .filter_map(|entry| {
            let name = entry.file_name();
            classify(name.to_str()?).map(|kind| (kind, entry.path()))
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Cuts a journal's torn tail off durably.
fn cut_torn_tail(journal: &File, path: &Path, index: &JournalIndex) -> Result<(), StoreError> {
    if index.valid_len < index.file_len {
        if let Some((offset, reason)) = index.tail {
            tracing::warn!(journal = %path.display(), offset, reason, "cutting torn journal tail");
        }
        store_io::set_len(journal, path, index.valid_len)
            .and_then(|()| store_io::sync_all(journal, path))
            .map_err(|e| StoreError::io("truncate journal", path, e))?;
    }
    Ok(())
}

/// Copies `src` to the empty file `dst`, skipping holes and all-zero 4 KiB
/// blocks (the destination stays sparse), then sets its length.
fn copy_sparse(src: &File, src_path: &Path, dst: &File, dst_path: &Path) -> Result<(), StoreError> {
    let len = src
        .metadata()
        .map_err(|e| StoreError::io("stat restore source", src_path, e))?
        .len();
    let mut buf = vec![0u8; COPY_CHUNK];
    let mut pos = 0u64;
    while pos < len {
        // SEEK_DATA/SEEK_HOLE skip holes without reading; if the file system
        // cannot answer, treat the rest as data.
        let data_start = match seek_data(src, pos) {
            Ok(Some(start)) => start,
            Ok(None) => break,
            Err(_) => pos,
        };
        let data_end = match seek_hole(src, data_start) {
            Ok(Some(end)) => end.min(len),
            Ok(None) | Err(_) => len,
        };
        let mut at = data_start;
        while at < data_end {
            let n = usize::try_from(data_end - at)
                .unwrap_or(COPY_CHUNK)
                .min(COPY_CHUNK);
            let chunk = &mut buf[..n];
            src.read_exact_at(chunk, at)
                .map_err(|e| StoreError::io("read restore source", src_path, e))?;
            let mut block = 0usize;
            while block < n {
                let block_end = (block + COPY_BLOCK).min(n);
                if is_zero(&chunk[block..block_end]) {
                    block = block_end;
                    continue;
                }
                // Extend over the following non-zero blocks and write them in one go.
                let mut run_end = block_end;
                while run_end < n && !is_zero(&chunk[run_end..(run_end + COPY_BLOCK).min(n)]) {
                    run_end = (run_end + COPY_BLOCK).min(n);
                }
                store_io::write_all_at(dst, dst_path, &chunk[block..run_end], at + block as u64)
                    .map_err(|e| StoreError::io("write restore target", dst_path, e))?;
                block = run_end;
            }
            at += n as u64;
        }
        pos = data_end.max(pos + 1);
    }
    store_io::set_len(dst, dst_path, len)
        .map_err(|e| StoreError::io("size restore target", dst_path, e))
}

#[cfg(test)]
impl StandbyStore {
    /// Test access to the store's image directory.
    pub(crate) fn image_dir_for_tests(&self, image: &ImageName) -> PathBuf {
        self.inner.image_dir(image)
    }
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn file_names_are_classified() {
        assert_eq!(classify("epoch-12.journal"), Some(ImageFile::Journal(12)));
        assert_eq!(classify("epoch-3.staging"), Some(ImageFile::Staging(3)));
        assert_eq!(classify("undo-7.log"), Some(ImageFile::Undo(7)));
        assert_eq!(classify("prev-9.raw"), Some(ImageFile::Prev(9)));
        assert_eq!(classify("state.json.tmp"), Some(ImageFile::Tmp));
        assert_eq!(classify("state.json"), None);
        assert_eq!(classify("epoch-x.journal"), None);
    }

    #[test]
    fn sparse_copy_keeps_content_and_length() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src_path = dir.path().join("src");
        let src = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&src_path)
            .expect("src");
        src.set_len(5 << 20).expect("len");
        src.write_all_at(&[9u8; 5000], 3 << 20).expect("write");
        src.write_all_at(&[4u8; 10], 123).expect("write");
        let dst_path = dir.path().join("dst");
        let dst = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&dst_path)
            .expect("dst");
        copy_sparse(&src, &src_path, &dst, &dst_path).expect("copy");
        assert_eq!(
            fs::read(&src_path).expect("read"),
            fs::read(&dst_path).expect("read")
        );
    }
}
