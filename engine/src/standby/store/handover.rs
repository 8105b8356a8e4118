//! Failover without copying: fencing an image against further replication,
//! and handing the committed image file over as the failover's volume.
//!
//! A hand-over hard-links `DIR/images/NAME.raw` at the failover's output,
//! records it in the state file, then unlinks the store's name: the volume
//! is the very inode replication wrote (no byte is copied), and the store no
//! longer holds a name for it, so nothing it does later (removal, retention,
//! a restore) can reach the operator's volume. Each step is redoable: a
//! killed hand-over finds its link (same inode) and goes on.
//!
//! What it costs: the undo chain that restores older points starts from
//! `NAME.raw`, which is gone; after a hand-over only the pinned copies (every
//! group recovery point is pinned on the standby) stay restorable, and
//! [`StandbyStore::restore`] says so for the others.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use ferry_protocol::types::{ImageName, RecoveryPointId};

use super::handle::StandbyStore;
use crate::standby::io::sync_dir;
use crate::standby::slot::Slot;
use crate::standby::state::{remove_if_exists, write_checksummed, HandedOver};
use crate::standby::StoreError;
use crate::sync_util::lock;

impl StandbyStore {
    /// Fences `image` for a failover: from now on no epoch opens, an open
    /// writer stages and syncs nothing more (it fails, so the session drops
    /// it), and no recovery point commits. `Busy` while a writer is still
    /// open: call again once it has gone (it goes at its next batch). A
    /// commit that failed half-way is rolled forward first: its data was
    /// durable and acknowledged. Idempotent; durable once the image has
    /// committed anything.
    pub fn fence(&self, image: &ImageName) -> Result<(), StoreError> {
        let slot = self.slot(image);
        lock(&slot.meta).fenced = true;
        self.finish_intents(Some(std::slice::from_ref(image)))?;
        let _op = lock(&slot.op);
        if lock(&slot.meta).writer_active {
            return Err(StoreError::Busy {
                image: image.clone(),
            });
        }
        if let Some(mut state) = self.load_state(image)? {
            if !state.fenced {
                state.fenced = true;
                write_checksummed(&self.inner.state(image), &state)?;
                tracing::info!(image = %image, "image fenced: it takes no more replication");
            }
        }
        Ok(())
    }

    /// `Fenced` when `image` was fenced (in memory or in its state file).
    pub(super) fn check_not_fenced(
        &self,
        image: &ImageName,
        slot: &Slot,
    ) -> Result<(), StoreError> {
        let fenced = lock(&slot.meta).fenced || self.load_state(image)?.is_some_and(|s| s.fenced);
        if fenced {
            return Err(StoreError::Fenced {
                image: image.clone(),
            });
        }
        Ok(())
    }

    /// Hands the fenced image, committed at `rp` (its current point), over
    /// as the volume `out` (a new path on the store's file system) without
    /// copying it: see the module doc. `Ok(false)` when it cannot be done
    /// that way and nothing was changed (`out` on another file system): the
    /// caller restores a copy instead. A repeated call for the same `rp`
    /// and `out` succeeds.
    pub fn hand_over(
        &self,
        image: &ImageName,
        rp: RecoveryPointId,
        out: &Path,
    ) -> Result<bool, StoreError> {
        let slot = self
            .known_slot(image)?
            .ok_or_else(|| StoreError::UnknownImage {
                image: image.clone(),
            })?;
        let _op = lock(&slot.op);
        if lock(&slot.meta).writer_active {
            return Err(StoreError::Busy {
                image: image.clone(),
            });
        }
        let unknown = || StoreError::UnknownRecoveryPoint {
            image: image.clone(),
            recovery_point: rp,
        };
        let mut state = self.load_state(image)?.ok_or_else(unknown)?;
        if !state.fenced {
            return Err(StoreError::InvalidRequest {
                reason: format!("{image} must be fenced before it is handed over"),
            });
        }
        let raw = self.inner.raw(image);
        if let Some(done) = &state.handed_over {
            if done.path == out && done.recovery_point == rp.get() {
                // Only the unlink of the store's name can be missing.
                remove_if_exists(&raw)?;
                sync_images(self)?;
                return Ok(true);
            }
            return Err(StoreError::InvalidRequest {
                reason: format!(
                    "{image} was already handed over as {} (recovery point {})",
                    done.path.display(),
                    done.recovery_point
                ),
            });
        }
        if state.current().map(|c| c.recovery_point()) != Some(rp) {
            return Err(StoreError::InvalidRequest {
                reason: format!("{image} is not at recovery point {rp}: it cannot be handed over"),
            });
        }
        let raw_meta = fs::metadata(&raw).map_err(|e| StoreError::io("stat image", &raw, e))?;
        match fs::symlink_metadata(out) {
            // A killed attempt linked it already.
            Ok(m) if m.dev() == raw_meta.dev() && m.ino() == raw_meta.ino() => {}
            Ok(_) => {
                return Err(StoreError::InvalidRequest {
                    reason: format!("{} exists", out.display()),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match fs::hard_link(&raw, out) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EXDEV) => return Ok(false),
                Err(e) => return Err(StoreError::io("link the image as the volume", out, e)),
            },
            Err(e) => return Err(StoreError::io("stat", out, e)),
        }
        let parent = out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        sync_dir(parent).map_err(|e| StoreError::io("fsync directory", parent, e))?;
        state.handed_over = Some(HandedOver {
            recovery_point: rp.get(),
            path: out.to_path_buf(),
        });
        write_checksummed(&self.inner.state(image), &state)?;
        remove_if_exists(&raw)?;
        sync_images(self)?;
        tracing::info!(image = %image, recovery_point = %rp, volume = %out.display(), "image file handed over as the failover volume (no copy)");
        Ok(true)
    }

    /// Where `image`'s file was handed over, if it was.
    pub fn handed_over(&self, image: &ImageName) -> Result<Option<HandedOverTo>, StoreError> {
        if self.known_slot(image)?.is_none() {
            return Ok(None);
        }
        Ok(self
            .load_state(image)?
            .and_then(|s| s.handed_over)
            .map(|h| HandedOverTo {
                recovery_point: RecoveryPointId(h.recovery_point),
                path: h.path,
            }))
    }
}

/// Where and at which point an image file was handed over as a volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandedOverTo {
    /// The recovery point the file held.
    pub recovery_point: RecoveryPointId,
    /// The volume's path.
    pub path: std::path::PathBuf,
}

fn sync_images(store: &StandbyStore) -> Result<(), StoreError> {
    let images = &store.inner.images;
    sync_dir(images).map_err(|e| StoreError::io("fsync directory", images, e))
}
