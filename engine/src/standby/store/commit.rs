//! The commit protocol: a recovery point's images are checked against the
//! disk, an intent file is written, each image is brought to its new epoch
//! (full copy: the staging file becomes the image; incremental: undo log,
//! journal replay, fdatasync), the state files are switched, and files no
//! retained point needs are deleted.

use std::fs::File;
use std::io;
use std::sync::{Arc, MutexGuard};

use ferry_protocol::types::{Epoch, ImageName};

use super::handle::StandbyStore;
use super::layout::{list_image_dir, ImageFile};
use crate::standby::failpoint::{self, CrashPoint};
use crate::standby::io::{self as store_io, sync_dir, Create};
use crate::standby::journal::{self, JournalIndex};
use crate::standby::slot::Slot;
use crate::standby::state::{
    self, exists, open_rw, remove_if_exists, write_checksummed, HistoryEntry, ImageStateFile,
    IntentFile, IntentImage, Transition,
};
use crate::standby::undo::{self, UndoStatus};
use crate::standby::{RecoveryPointMeta, SealedEpoch, StoreError};
use crate::sync_util::lock;

/// One image's step of a commit, checked before the intent is written.
pub(super) struct PlannedImage {
    image: ImageName,
    target: IntentImage,
    index: JournalIndex,
}

impl StandbyStore {
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
        // A fenced image (its group failed over here) takes no more points:
        // checked under the op locks, before any intent is written, so a
        // commit either finished before the fence or changes nothing.
        for slot in &slots {
            self.check_not_fenced(&slot.image, slot)?;
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
    pub(super) fn check_size_fits(&self, image: &ImageName, size: u64) -> Result<(), StoreError> {
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
    pub(super) fn plan_image(
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
    pub(super) fn commit_image(
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
        // `commit` refuses a fenced image, so these stay as they were (unset).
        let (fenced, handed_over) = state
            .as_ref()
            .map(|s| (s.fenced, s.handed_over.clone()))
            .unwrap_or_default();
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
            fenced,
            handed_over,
        };
        write_checksummed(&self.inner.state(image), &new_state)?;
        failpoint::hit(CrashPoint::AfterStateBeforeCleanup)?;
        tracing::info!(image = %image, epoch = target.epoch, recovery_point = %rp.id, size = target.size, "image committed");
        self.cleanup_after_commit(image, &new_state)
    }

    /// Full copy: the staging file becomes the image; the old image (if any
    /// committed) moves into history as `prev-<E>.raw`.
    pub(super) fn apply_full(
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
    pub(super) fn apply_incremental(
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
    pub(super) fn cleanup_after_commit(
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
}
