//! Opening an epoch: a new one gets its journal (and, for a full copy, its
//! staging file); a pending one with the same base is resumed at its last
//! durable batch, after its torn tail is cut; anything else pending is
//! discarded first.

use ferry_protocol::message::OpenImage;
use ferry_protocol::types::{Epoch, ImageName};

use super::handle::StandbyStore;
use super::layout::{list_image_dir, ImageFile};
use super::recovery::cut_torn_tail;
use crate::standby::io::{self as store_io, sync_dir, Create};
use crate::standby::journal::{self, JournalIndex};
use crate::standby::state::{exists, open_rw, remove_if_exists, HistoryEntry, ImageStateFile};
use crate::standby::writer::{EpochWriter, WriterFiles};
use crate::standby::StoreError;
use crate::sync_util::lock;

impl StandbyStore {
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
        self.check_not_fenced(image, &slot)?;
        let state = self.load_state(image)?;
        let committed = state
            .as_ref()
            .and_then(ImageStateFile::current)
            .map_or(Epoch(0), HistoryEntry::epoch);
        crate::standby::check_open(open, committed)?;
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
    pub(super) fn try_resume(
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

    pub(super) fn create_epoch_files(&self, open: &OpenImage) -> Result<WriterFiles, StoreError> {
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
    pub(super) fn discard_epoch(&self, image: &ImageName, epoch: Epoch) -> Result<(), StoreError> {
        remove_if_exists(&self.inner.journal(image, epoch))?;
        remove_if_exists(&self.inner.staging(image, epoch))?;
        remove_if_exists(&self.inner.undo(image, epoch))?;
        remove_if_exists(&self.inner.prev(image, epoch))
    }
}
