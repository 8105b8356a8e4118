//! Crash recovery at open: commit intents are rolled forward, a commit
//! that started without an intent is undone, torn journal tails are cut and
//! leftovers deleted.

use std::fs::File;
use std::path::Path;
use std::sync::{Arc, MutexGuard};

use ferry_protocol::types::{Epoch, ImageName, RecoveryPointId};

use super::handle::StandbyStore;
use super::layout::{list_image_dir, read_dir, ImageFile};
use crate::standby::io::{self as store_io, sync_dir};
use crate::standby::journal::{self, JournalIndex};
use crate::standby::slot::Slot;
use crate::standby::state::{
    self, exists, open_rw, read_checksummed, remove_if_exists, ImageStateFile, IntentFile,
};
use crate::standby::undo::{self, UndoStatus};
use crate::standby::{PendingEpoch, RecoveryPointMeta, StoreError};
use crate::sync_util::lock;

impl StandbyStore {
    /// Rolls forward every commit intent left by a crash or a failed commit
    /// (only those naming one of `only`, if given; never one of a commit
    /// running right now).
    pub(super) fn finish_intents(&self, only: Option<&[ImageName]>) -> Result<(), StoreError> {
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
    pub(super) fn recover_image(&self, slot: &Arc<Slot>) -> Result<(), StoreError> {
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
        // A handed-over image has no file of its own any more (and, fenced,
        // never started a commit after the hand-over): nothing to undo.
        let handed_over = state.as_ref().is_some_and(|s| s.handed_over.is_some());
        if let (Some(epoch), false) = (pending, handed_over) {
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
    pub(super) fn roll_back_uncommitted(
        &self,
        image: &ImageName,
        epoch: Epoch,
    ) -> Result<(), StoreError> {
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
}

/// Cuts a journal's torn tail off durably.
pub(super) fn cut_torn_tail(
    journal: &File,
    path: &Path,
    index: &JournalIndex,
) -> Result<(), StoreError> {
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
