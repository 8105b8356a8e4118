//! Failover without copying on an RBD standby: fencing an image against
//! further replication, making the image itself the volume (failover to its
//! latest point, head intact), and copy-on-write clones (clone format 2) of
//! a recovery point's snapshot (an older point, a torn head, a restore).
//!
//! What ferry keeps for them: an image that became a volume is never
//! written, rolled back, swept or removed by ferry again (removing the
//! standby copy releases it instead, see [`RbdStandby::remove_image`]); a
//! clone's parent point is pinned, so retention never drops its snapshot,
//! and the parent image is released rather than removed while ferry knows
//! the clone.

use std::sync::atomic::Ordering;

use ferry_protocol::types::{ImageName, RecoveryPointId};
use tracing::info;

use super::handle::{ceph, snap_name, CloneRecord, ImageRecord, RbdStandby};
use crate::standby::StoreError;
use crate::sync_util::lock;
use crate::sys::librbd::CreateOptions;

impl RbdStandby {
    /// Fences `image` for a failover: from now on no epoch opens, an open
    /// writer writes and flushes nothing more (it fails, so the session
    /// drops it), and no recovery point commits. `Busy` while a writer is
    /// still open: call again once it has gone. An interrupted commit is
    /// rolled forward first. Idempotent and durable.
    pub fn fence(&self, image: &ImageName) -> Result<(), StoreError> {
        let slot = self.slot(image);
        slot.fenced.store(true, Ordering::Release);
        self.finish_intents(Some(image))?;
        let _op = lock(&slot.op);
        slot.check_no_writer(image)?;
        if let Some(mut record) = self.load(image)? {
            if !record.fenced {
                record.fenced = true;
                self.save(&mut record)?;
                info!(image = %image, "image fenced: it takes no more replication");
            }
        }
        Ok(())
    }

    /// Makes the fenced image itself the volume, if its head is intact at
    /// recovery point `rp` (its latest: no epoch pending since): nothing is
    /// copied, the image keeps its name and its snapshots. `Ok(false)` when
    /// it is not (a torn head, or `rp` is older): nothing was changed, and
    /// the caller clones the point instead. A repeated call succeeds.
    pub fn volume_in_place(
        &self,
        image: &ImageName,
        rp: RecoveryPointId,
    ) -> Result<bool, StoreError> {
        let slot = self.slot(image);
        let _op = lock(&slot.op);
        slot.check_no_writer(image)?;
        let mut record = self.load(image)?.ok_or_else(|| StoreError::UnknownImage {
            image: image.clone(),
        })?;
        if !record.fenced {
            return Err(StoreError::InvalidRequest {
                reason: format!("{image} must be fenced before it becomes a volume"),
            });
        }
        if record.volume_at == Some(rp.get()) {
            return Ok(true);
        }
        let latest = record.history.last().map(|p| p.rp);
        if record.pending.is_some() || latest != Some(rp.get()) {
            return Ok(false);
        }
        record.volume_at = Some(rp.get());
        self.save(&mut record)?;
        info!(image = %format!("{}/{image}", self.pool_name()), rp = rp.get(), "the standby image is now the failover's volume (in place, no copy)");
        Ok(true)
    }

    /// Makes image `dest` of the pool a copy-on-write clone (format 2, no
    /// data copied) of `image` at recovery point `rp`. The point is pinned
    /// and the clone recorded before the clone is made, so its snapshot
    /// outlives retention whatever happens after; `dest` must not exist.
    pub fn clone_point(
        &self,
        image: &ImageName,
        rp: RecoveryPointId,
        dest: &str,
    ) -> Result<(), StoreError> {
        let slot = self.slot(image);
        let _op = lock(&slot.op);
        let mut record = self.load(image)?.ok_or_else(|| StoreError::UnknownImage {
            image: image.clone(),
        })?;
        let point = record
            .points()
            .into_iter()
            .find(|p| p.rp == rp.get())
            .cloned()
            .ok_or_else(|| StoreError::UnknownRecoveryPoint {
                image: image.clone(),
                recovery_point: rp,
            })?;
        if !record.pinned.iter().any(|p| p.rp == rp.get()) {
            record.pinned.push(point);
        }
        if !record.clones.iter().any(|c| c.name == dest) {
            record.clones.push(CloneRecord {
                name: dest.to_owned(),
                rp: rp.get(),
            });
        }
        self.save(&mut record)?;
        let snap = snap_name(rp.get());
        let ctx = format!("{}/{image}@{snap}", self.pool_name());
        self.inner
            .pool
            .clone_image(
                image.as_str(),
                &snap,
                &self.inner.pool,
                dest,
                CreateOptions::default(),
            )
            .map_err(ceph(format!(
                "cloning {ctx} to {}/{dest}",
                self.pool_name()
            )))?;
        info!(from = %ctx, to = %format!("{}/{dest}", self.pool_name()), "cloned recovery point (copy-on-write, no copy)");
        Ok(())
    }

    /// Forgets the clones of `record` that are gone from the pool (the
    /// operator removed them): their points need no pin for them any more.
    /// Whether any was forgotten. A clone still there keeps its record,
    /// flattened or not (ferry cannot tell without opening it).
    pub(super) fn prune_clones(&self, record: &mut ImageRecord) -> Result<bool, StoreError> {
        if record.clones.is_empty() {
            return Ok(false);
        }
        let names = self.inner.pool.list_images().map_err(ceph(format!(
            "listing the images of pool {}",
            self.pool_name()
        )))?;
        let before = record.clones.len();
        record.clones.retain(|c| names.contains(&c.name));
        Ok(record.clones.len() != before)
    }
}
