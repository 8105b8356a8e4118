//! Whole-image operations outside the replication cycle: an empty
//! placeholder image, removal of an image and all it keeps, and adopting an
//! existing file as a committed image.

use std::fs::{self};
use std::path::Path;

use ferry_protocol::types::{Epoch, ImageName, RecoveryPointId};

use super::handle::StandbyStore;
use crate::standby::io::{self as store_io, sync_dir, Create};
use crate::standby::state::{
    self, exists, remove_if_exists, write_checksummed, HistoryEntry, ImageStateFile, Transition,
};
use crate::standby::StoreError;
use crate::sync_util::lock;

impl StandbyStore {
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
        {
            // The image is gone, and with it a failover's fence (its state
            // file held it; a restarted agent knows nothing of it either): a
            // copy adopted or sent later under this name is a new one.
            let mut meta = lock(&slot.meta);
            meta.pending = None;
            meta.fenced = false;
        }
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
        self.write_out(source, &[], size, &tmp, true)?;
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
            fenced: false,
            handed_over: None,
        };
        write_checksummed(&self.inner.state(image), &state)?;
        tracing::info!(image = %image, epoch = epoch.0, recovery_point = %rp, size, "image adopted");
        Ok(())
    }
}
