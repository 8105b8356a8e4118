//! The store's handle: [`StandbyStore`] and its shared state (directories,
//! retention, per-image slots, commits in flight, the store lock), with the
//! look-ups every concern of the store uses. Below `store.rs` and each file
//! of `store/`, so none of them imports another's parent.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use ferry_protocol::types::ImageName;

use crate::standby::slot::{Slot, SlotMeta};
use crate::standby::state::{self, exists, read_checksummed, ImageStateFile};
use crate::standby::StoreError;
use crate::sync_util::lock;

#[derive(Debug)]
pub(super) struct Inner {
    pub(super) images: PathBuf,
    pub(super) commits: PathBuf,
    pub(super) retention: usize,
    pub(super) slots: Mutex<BTreeMap<ImageName, Arc<Slot>>>,
    /// Intent files of commits running in this process (recovery skips them).
    pub(super) in_flight: Mutex<HashSet<PathBuf>>,
    /// Holds the store's flock for the life of the store.
    pub(super) _lock: File,
}

/// The durable, crash-consistent store of standby images. Cheap to clone;
/// clones share one store. All methods block on disk I/O.
#[derive(Clone, Debug)]
pub struct StandbyStore {
    pub(super) inner: Arc<Inner>,
}

impl StandbyStore {
    pub(super) fn slot(&self, image: &ImageName) -> Arc<Slot> {
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

    pub(super) fn existing_slot(&self, image: &ImageName) -> Option<Arc<Slot>> {
        lock(&self.inner.slots).get(image).cloned()
    }

    /// The slot of an image the store really holds (its directory exists; a
    /// failed first `open_epoch` can leave a slot without one).
    pub(super) fn known_slot(&self, image: &ImageName) -> Result<Option<Arc<Slot>>, StoreError> {
        match self.existing_slot(image) {
            Some(slot) if exists(&self.inner.image_dir(image))? => Ok(Some(slot)),
            _ => Ok(None),
        }
    }

    pub(super) fn load_state(
        &self,
        image: &ImageName,
    ) -> Result<Option<ImageStateFile>, StoreError> {
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
