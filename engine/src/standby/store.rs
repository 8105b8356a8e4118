//! [`StandbyStore`]: opening and crash recovery, epochs, the commit protocol,
//! retention, restore and hashing of committed images.
//!
//! Concurrency: every image has a [`Slot`] with an operation mutex (held by
//! `open_epoch`, `commit`, `restore`, `hash_range` and recovery; several
//! images are locked in name order) and a small metadata mutex (writer
//! claimed, pending-epoch summary) that writers update on `sync`.
//!
//! By concern: [`handle`] (the store's shared state and look-ups, below
//! all the others), [`layout`] (paths and file kinds), [`epoch`] (opening and
//! resuming epochs), [`commit`] (the commit protocol), [`recovery`] (crash
//! recovery at open), [`retention`] (retained points, pins), [`restore`]
//! (restore and hashing), [`images`] (placeholder, removal, adoption),
//! [`handover`] (fencing, handing an image file over as a failover volume).

mod commit;
mod epoch;
mod handle;
mod handover;
mod images;
mod layout;
mod recovery;
mod restore;
mod retention;

use std::collections::{BTreeMap, HashSet};
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ferry_protocol::types::{Epoch, ImageName, RecoveryPointId};

use super::io::{self as store_io, sync_dir};
use super::slot::Slot;
use super::state::{exists, HistoryEntry, ImageStateFile};
use super::{ImageState, StoreConfig, StoreError};
use crate::sync_util::lock;
use crate::sys::fs::try_lock_exclusive;
use handle::Inner;
pub use handle::StandbyStore;
pub use handover::HandedOverTo;
use layout::read_dir;
pub use restore::MAX_HASHES_PER_CALL;

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
}

#[cfg(test)]
impl StandbyStore {
    /// Test access to the store's image directory.
    pub(crate) fn image_dir_for_tests(&self, image: &ImageName) -> PathBuf {
        self.inner.image_dir(image)
    }
}
