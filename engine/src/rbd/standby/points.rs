//! The recovery points of an RBD standby image: listing, restore into a new
//! image, pins (kept snapshots), and hashing ranges of the committed point.

use std::collections::VecDeque;
use std::sync::Arc;

use ferry_protocol::types::{Epoch, ImageName, RecoveryPointId};
use tracing::info;

use super::handle::{ceph, snap_name, RbdStandby};
use crate::standby::{RecoveryPointInfo, StoreError, MAX_HASHES_PER_CALL};
use crate::sync_util::lock;
use crate::sys::librbd::{Aio, CreateOptions};

impl RbdStandby {
    /// The retained recovery points of `image`, oldest first.
    pub fn recovery_points(&self, image: &ImageName) -> Result<Vec<RecoveryPointInfo>, StoreError> {
        let record = self.load(image)?.ok_or_else(|| StoreError::UnknownImage {
            image: image.clone(),
        })?;
        let current = record.history.last().map(|p| p.rp);
        Ok(record
            .points()
            .into_iter()
            .map(|p| RecoveryPointInfo {
                id: RecoveryPointId(p.rp),
                epoch: Epoch(p.epoch),
                created_unix_ms: p.created_unix_ms,
                fuzzy: p.fuzzy,
                size: p.size,
                current: Some(p.rp) == current,
            })
            .collect())
    }

    /// Copies `image` as it was at recovery point `rp` into the new
    /// standalone image `dest` of the same pool (flattened: it does not
    /// depend on the snapshot).
    pub fn restore(
        &self,
        image: &ImageName,
        rp: RecoveryPointId,
        dest: &str,
    ) -> Result<(), StoreError> {
        let record = self.load(image)?.ok_or_else(|| StoreError::UnknownImage {
            image: image.clone(),
        })?;
        if !record.points().iter().any(|p| p.rp == rp.get()) {
            return Err(StoreError::UnknownRecoveryPoint {
                image: image.clone(),
                recovery_point: rp,
            });
        }
        let snap = snap_name(rp.get());
        let ctx = format!("{}/{image}@{snap}", self.pool_name());
        let source = self
            .inner
            .pool
            .open_read_only(image.as_str(), Some(&snap))
            .map_err(ceph(format!("opening {ctx}")))?;
        source
            .copy_to(&self.inner.pool, dest, CreateOptions::default())
            .map_err(ceph(format!(
                "copying {ctx} to {}/{dest}",
                self.pool_name()
            )))?;
        info!(from = %ctx, to = %format!("{}/{dest}", self.pool_name()), "restored recovery point");
        Ok(())
    }

    /// Keeps recovery point `rp` of `image` (its snapshot) until
    /// [`Self::unpin`], whatever the retention. Idempotent; `rp` must still
    /// be retained.
    pub fn pin(&self, image: &ImageName, rp: RecoveryPointId) -> Result<(), StoreError> {
        let slot = self.slot(image);
        let _op = lock(&slot.op);
        let mut record = self.load(image)?.ok_or_else(|| StoreError::UnknownImage {
            image: image.clone(),
        })?;
        if record.pinned.iter().any(|p| p.rp == rp.get()) {
            return Ok(());
        }
        let point = record
            .history
            .iter()
            .find(|p| p.rp == rp.get())
            .cloned()
            .ok_or_else(|| StoreError::UnknownRecoveryPoint {
                image: image.clone(),
                recovery_point: rp,
            })?;
        record.pinned.push(point);
        self.save(&mut record)?;
        info!(image = %image, rp = rp.get(), "recovery point pinned");
        Ok(())
    }

    /// Lets recovery point `rp` of `image` go: its snapshot is removed unless
    /// the retention still holds it. Unknown images and points that are not
    /// pinned are not an error.
    pub fn unpin(&self, image: &ImageName, rp: RecoveryPointId) -> Result<(), StoreError> {
        let slot = self.slot(image);
        let _op = lock(&slot.op);
        let Some(mut record) = self.load(image)? else {
            return Ok(());
        };
        if record.volume_at.is_some() {
            // The image is the operator's volume: ferry no longer opens it
            // for writing (which would take its exclusive lock).
            info!(image = %image, rp = rp.get(), "recovery point kept pinned: the image is a failover's volume");
            return Ok(());
        }
        if self.prune_clones(&mut record)? {
            self.save(&mut record)?;
        }
        if record.clones.iter().any(|c| c.rp == rp.get()) {
            // A clone's parent snapshot stays while ferry knows the clone.
            info!(image = %image, rp = rp.get(), "recovery point kept pinned: a clone depends on its snapshot");
            return Ok(());
        }
        let before = record.pinned.len();
        record.pinned.retain(|p| p.rp != rp.get());
        if record.pinned.len() == before {
            return Ok(());
        }
        self.save(&mut record)?;
        if !record.history.iter().any(|p| p.rp == rp.get()) {
            let snap = snap_name(rp.get());
            let handle = self.open_image(image)?;
            match handle.snap_remove(&snap) {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => {
                    return Err(ceph(format!(
                        "removing {}/{image}@{snap}",
                        self.pool_name()
                    ))(e))
                }
            }
        }
        Ok(())
    }

    /// BLAKE3 of each `granularity` piece of `[offset, offset + length)` of
    /// the image at its current recovery point (clipped to its size).
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
        let record = self.load(image)?.ok_or_else(|| StoreError::UnknownImage {
            image: image.clone(),
        })?;
        let Some(point) = record.history.last() else {
            return Ok((RecoveryPointId(0), 0, Vec::new()));
        };
        let end = offset.saturating_add(length).min(point.size);
        let count = end.saturating_sub(offset).div_ceil(u64::from(granularity));
        if count > MAX_HASHES_PER_CALL {
            return Err(StoreError::InvalidRequest {
                reason: format!("{count} granules requested, the limit is {MAX_HASHES_PER_CALL}"),
            });
        }
        let snap = snap_name(point.rp);
        let ctx = format!("{}/{image}@{snap}", self.pool_name());
        let handle = Arc::new(
            self.inner
                .pool
                .open_read_only(image.as_str(), Some(&snap))
                .map_err(ceph(format!("opening {ctx}")))?,
        );
        let mut hashes = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
        let mut reads: VecDeque<Aio> = VecDeque::new();
        let mut pos = offset;
        let step = u64::from(granularity);
        while pos < end || !reads.is_empty() {
            while pos < end && reads.len() < 16 {
                let len = step.min(end - pos);
                reads.push_back(
                    handle
                        .aio_read(pos, len as usize)
                        .map_err(ceph(format!("reading {ctx}")))?,
                );
                pos += len;
            }
            if let Some(read) = reads.pop_front() {
                let data = read
                    .wait()
                    .map_err(ceph(format!("reading {ctx}")))?
                    .unwrap_or_default();
                hashes.push(*blake3::hash(&data).as_bytes());
            }
        }
        Ok((RecoveryPointId(point.rp), point.size, hashes))
    }
}
