//! Retention: the recovery points an image keeps restorable, and pinning a
//! point (a kept copy) so rotation does not drop it.

use ferry_protocol::types::{ImageName, RecoveryPointId};

use super::handle::StandbyStore;
use crate::standby::io::{self as store_io, sync_dir};
use crate::standby::state::{remove_if_exists, write_checksummed, HistoryEntry, ImageStateFile};
use crate::standby::{RecoveryPointInfo, StoreError};
use crate::sync_util::lock;

impl StandbyStore {
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

    /// Keeps recovery point `rp` of `image` restorable until [`Self::unpin`],
    /// whatever the retention: the image as it was at `rp` is copied
    /// (sparsely) to `pinned-<RP>.raw` and listed in the state file. Costs a
    /// copy of the image's allocated bytes per pinned point (the RBD backend
    /// keeps a snapshot instead). Idempotent; `rp` must still be retained.
    pub fn pin(&self, image: &ImageName, rp: RecoveryPointId) -> Result<(), StoreError> {
        self.with_committed_state(image, rp, |state| self.pin_locked(image, state, rp))
    }

    pub(super) fn pin_locked(
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
        self.restore_locked(image, state, rp, &tmp, true)?;
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
}
