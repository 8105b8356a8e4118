//! Whole images in the pool outside the replication cycle: adopting an
//! existing image as committed, placeholders, removal, and the pool-level
//! volume checks the agent uses.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use ferry_protocol::types::{Epoch, ImageName, RecoveryPointId};
use tracing::{info, warn};

use super::handle::{
    ceph, snap_name, ImageRecord, PointRecord, RbdStandby, SNAP_PREFIX, STALE_WATCH_WAIT,
};
use crate::standby::StoreError;
use crate::sync_util::lock;
use crate::sys::librbd::ClusterSpec;
use crate::sys::librbd::{CreateOptions, GROUP_SNAP_PREFIX};

impl RbdStandby {
    /// Installs a copy of `source` (an image at a snapshot, on `cluster`) as
    /// standby image `image` whose only recovery point is `rp` at `epoch`:
    /// the old primary of a planned migration keeps its volumes, as they
    /// were replicated at `epoch`, as the copies for the reversed direction,
    /// so that replication back starts from `epoch` instead of a full copy.
    /// The copy stays inside the cluster (nothing crosses the link).
    ///
    /// Restartable: the record is written (empty) before the copy, so an
    /// interrupted attempt is recognised and redone; an image already
    /// adopted at (`rp`, `epoch`) is left alone. Refused when the pool
    /// holds an image of that name that this store does not know, or the
    /// store holds other data for it.
    pub fn adopt(
        &self,
        image: &ImageName,
        cluster: &ClusterSpec,
        source: &crate::rbd::RbdSpec,
        epoch: Epoch,
        rp: RecoveryPointId,
        created_unix_ms: u64,
    ) -> Result<(), StoreError> {
        let Some(snap) = source.snap.as_deref() else {
            return Err(StoreError::InvalidRequest {
                reason: format!("adopting {source}: name the snapshot to copy"),
            });
        };
        let slot = self.slot(image);
        let _op = lock(&slot.op);
        if self.begin_adopt(image, epoch, rp)? {
            return Ok(());
        }
        let ctx = format!("{}/{image}", self.pool_name());
        let from = open_source_pool(cluster, source)?
            .open_read_only(&source.image, Some(snap))
            .map_err(ceph(format!("opening {source}")))?;
        from.copy_to(&self.inner.pool, image.as_str(), CreateOptions::default())
            .map_err(ceph(format!("copying {source} to {ctx}")))?;
        let size = self.finish_adopt(image, epoch, rp, created_unix_ms)?;
        info!(image = %ctx, from = %source, %epoch, rp = rp.get(), size, "image adopted");
        Ok(())
    }

    /// The checks and first record of an adoption (the caller holds the
    /// image's op lock). `true` when `image` is already adopted at (`rp`,
    /// `epoch`): nothing to do. Otherwise an interrupted adoption's image
    /// is gone and an empty record says one is under way, so a restart
    /// recognises and redoes it.
    pub(super) fn begin_adopt(
        &self,
        image: &ImageName,
        epoch: Epoch,
        rp: RecoveryPointId,
    ) -> Result<bool, StoreError> {
        if epoch == Epoch(0) || rp.get() == 0 {
            return Err(StoreError::InvalidRequest {
                reason: "adopt needs a non-zero epoch and recovery point".into(),
            });
        }
        self.slot(image).check_no_writer(image)?;
        let ctx = format!("{}/{image}", self.pool_name());
        let mut version = 0;
        match self.load(image)? {
            Some(r)
                if r.pending.is_none()
                    && r.history.len() == 1
                    && r.history[0].rp == rp.get()
                    && r.history[0].epoch == epoch.get() =>
            {
                return Ok(true);
            }
            Some(r) if r.history.is_empty() && r.pending.is_none() => {
                // An interrupted adoption (or a placeholder): start over.
                version = r.version;
                self.remove_pool_image(image.as_str())?;
            }
            Some(_) => {
                return Err(StoreError::InvalidRequest {
                    reason: format!("{image} already has data on this standby; remove it first"),
                })
            }
            None => {
                if self.volume_exists(image.as_str())? {
                    return Err(StoreError::InvalidRequest {
                        reason: format!(
                            "RBD image {ctx} exists but is not a standby image of this agent; \
                             rename or remove it"
                        ),
                    });
                }
            }
        }
        self.save(&mut ImageRecord {
            version,
            ..ImageRecord::empty(image)
        })?;
        Ok(false)
    }

    /// The last step of an adoption, once the image holds the point's
    /// data: its recovery-point snapshot, then the record with that one
    /// point. Returns the image size.
    pub(super) fn finish_adopt(
        &self,
        image: &ImageName,
        epoch: Epoch,
        rp: RecoveryPointId,
        created_unix_ms: u64,
    ) -> Result<u64, StoreError> {
        let ctx = format!("{}/{image}", self.pool_name());
        let handle = self.open_image(image)?;
        let size = handle.size().map_err(ceph(format!("size of {ctx}")))?;
        let rp_snap = snap_name(rp.get());
        handle
            .snap_create(&rp_snap)
            .map_err(ceph(format!("snapshotting {ctx}@{rp_snap}")))?;
        drop(handle);
        // Replaces the empty record `begin_adopt` stored.
        let version = self.load(image)?.map_or(0, |r| r.version);
        self.save(&mut ImageRecord {
            version,
            history: vec![PointRecord {
                rp: rp.get(),
                epoch: epoch.get(),
                created_unix_ms,
                fuzzy: false,
                size,
            }],
            ..ImageRecord::empty(image)
        })?;
        Ok(size)
    }

    /// Whether the pool holds an RBD image `name` (standby image or not).
    /// An image whose creation was interrupted (listed, but without a
    /// header to open) counts: it is in the way of creating one.
    pub fn volume_exists(&self, name: &str) -> Result<bool, StoreError> {
        let names = self.inner.pool.list_images().map_err(ceph(format!(
            "listing the images of pool {}",
            self.pool_name()
        )))?;
        Ok(names.iter().any(|n| n == name))
    }

    /// Deletes RBD image `name` of the pool with all its snapshots; for
    /// images made next to the standby images (a planned migration's new
    /// volumes), refused for the store's own images (see
    /// [`Self::remove_image`]). An absent image is not an error.
    pub fn remove_volume(&self, name: &str) -> Result<(), StoreError> {
        if let Ok(image) = ImageName::new(name) {
            if self.load(&image)?.is_some() {
                return Err(StoreError::InvalidRequest {
                    reason: format!("{name} is a standby image of this agent"),
                });
            }
        }
        self.remove_pool_image(name)
    }

    /// Creates RBD image `name` of `size` bytes; `Ok(true)` when an image
    /// that opens was already there. An image whose creation was
    /// interrupted before its header was written (a killed process: listed,
    /// cannot be opened, holds nothing) is removed and made again.
    pub(super) fn create_pool_image(&self, name: &str, size: u64) -> Result<bool, StoreError> {
        let ctx = format!("{}/{name}", self.pool_name());
        let create = || {
            self.inner
                .pool
                .create_image(name, size, CreateOptions::default())
        };
        match create() {
            Ok(()) => return Ok(false),
            Err(e) if e.is_exists() => {}
            Err(e) => return Err(ceph(format!("creating {ctx}"))(e)),
        }
        match self.inner.pool.open_read_only(name, None) {
            Ok(_) => {
                // Ours from a killed attempt has no snapshot yet.
                self.check_not_released_name(name)?;
                return Ok(true);
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(ceph(format!("opening {ctx}"))(e)),
        }
        warn!(image = %ctx, "removing an image whose creation was interrupted (no header) to make it again");
        self.remove_pool_image(name)?;
        create().map_err(ceph(format!("creating {ctx}")))?;
        Ok(false)
    }

    /// Refuses (`InvalidRequest`) when the pool holds an image `image` the
    /// store has no record of but which carries ferry recovery point
    /// snapshots: a failover's volume or a clone parent that ferry released
    /// to the operator (or a copy whose removal was interrupted), never to
    /// be taken over, locked or zeroed by a new standby copy.
    pub(super) fn check_not_released(&self, image: &ImageName) -> Result<(), StoreError> {
        self.check_not_released_name(image.as_str())
    }

    fn check_not_released_name(&self, name: &str) -> Result<(), StoreError> {
        let ctx = format!("{}/{name}", self.pool_name());
        let handle = match self.inner.pool.open_read_only(name, None) {
            Ok(handle) => handle,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(ceph(format!("opening {ctx}"))(e)),
        };
        let snaps = handle
            .snapshots()
            .map_err(ceph(format!("listing snapshots of {ctx}")))?;
        if snaps.iter().any(|s| s.name.starts_with(SNAP_PREFIX)) {
            return Err(StoreError::InvalidRequest {
                reason: format!(
                    "RBD image {ctx} exists with ferry recovery point snapshots but this \
                     standby has no record of it (a failed-over volume or clone parent left \
                     to the operator?): rename or remove it"
                ),
            });
        }
        Ok(())
    }

    /// Removes RBD image `name` and its snapshots; absent is fine.
    pub(super) fn remove_pool_image(&self, name: &str) -> Result<(), StoreError> {
        let ctx = format!("{}/{name}", self.pool_name());
        match self.inner.pool.open(name) {
            Ok(handle) => {
                for snap in handle
                    .snapshots()
                    .map_err(ceph(format!("listing snapshots of {ctx}")))?
                {
                    // A group snapshot's image snapshot is not reachable by
                    // name; `rbd_remove` refuses a group member anyway.
                    if snap.name.starts_with(GROUP_SNAP_PREFIX) {
                        continue;
                    }
                    match handle.snap_remove(&snap.name) {
                        Ok(()) => {}
                        Err(e) if e.is_not_found() => {}
                        Err(e) => return Err(ceph(format!("removing {ctx}@{}", snap.name))(e)),
                    }
                }
            }
            // Absent, or its creation was interrupted before the header was
            // written (listed but unopenable): `rbd_remove` below tells the
            // two apart and cleans up the second.
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(ceph(format!("opening {ctx}"))(e)),
        }
        // `rbd_remove` refuses an image that still has watchers. A process
        // killed while it had the image open (an interrupted failover or
        // migration copy) keeps its watch until the OSDs time it out
        // (`osd_client_watch_timeout`, 30 s by default): wait that out
        // rather than failing the retry that came to clean up after it.
        let deadline = Instant::now() + STALE_WATCH_WAIT;
        let mut warned = false;
        loop {
            match self.inner.pool.remove_image(name) {
                Ok(()) => return Ok(()),
                Err(e) if e.is_not_found() => return Ok(()),
                Err(e) if e.is_busy() && Instant::now() < deadline => {
                    if !warned {
                        warn!(image = %ctx, wait_s = STALE_WATCH_WAIT.as_secs(), "image still has watchers; waiting for a killed client's watch to expire");
                        warned = true;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) if e.is_busy() => {
                    return Err(ceph(format!(
                        "removing {ctx} (it still has watchers after {} s: a client has it \
                         open, see `rbd status {ctx}`)",
                        STALE_WATCH_WAIT.as_secs()
                    ))(e))
                }
                Err(e) => return Err(ceph(format!("removing {ctx}"))(e)),
            }
        }
    }

    /// Creates `image` in the pool as an empty placeholder of `size` bytes
    /// (a resource was added to a protected group; its first sync fills
    /// it). An image the store already knows is left alone.
    pub fn create_placeholder(&self, image: &ImageName, size: u64) -> Result<(), StoreError> {
        let slot = self.slot(image);
        let _op = lock(&slot.op);
        if self.load(image)?.is_some() {
            return Ok(());
        }
        let ctx = format!("{}/{image}", self.pool_name());
        // Already there: made by an attempt killed before its record below.
        self.create_pool_image(image.as_str(), size)?;
        self.save(&mut ImageRecord::empty(image))?;
        info!(image = %ctx, size, "created placeholder standby image");
        Ok(())
    }

    /// Deletes `image` from the pool with every recovery point snapshot, and
    /// its bookkeeping. Refused while a writer is open on it; an unknown
    /// image is not an error. The record goes first, so a crash part-way
    /// leaves an image the store no longer lists.
    ///
    /// An image that is a failover's volume, or whose snapshots clones
    /// depend on, is released instead: the store forgets it, and the RBD
    /// image stays in the pool with its snapshots, for the operator (who
    /// may `rbd flatten` the clones, then remove it).
    pub fn remove_image(&self, image: &ImageName) -> Result<(), StoreError> {
        let slot = self.slot(image);
        let _op = lock(&slot.op);
        slot.check_no_writer(image)?;
        let mut record = self.load(image)?;
        if let Some(r) = record.as_mut() {
            // Clones the operator removed no longer hold the image back.
            self.prune_clones(r)?;
        }
        // Forgotten or removed, the image leaves a failover's fence with its
        // record (as a restarted agent would): a copy adopted or sent later
        // under this name is a new one.
        if let Some(record) = record.filter(ImageRecord::in_use) {
            self.inner.state.remove(image)?;
            slot.fenced.store(false, Ordering::Release);
            let clones: Vec<&str> = record.clones.iter().map(|c| c.name.as_str()).collect();
            warn!(
                image = %format!("{}/{image}", self.pool_name()),
                volume = record.volume_at.is_some(),
                clones = ?clones,
                "standby image released, not removed: it is a failover's volume or clones depend on its snapshots"
            );
            return Ok(());
        }
        self.inner.state.remove(image)?;
        slot.fenced.store(false, Ordering::Release);
        self.remove_pool_image(image.as_str())?;
        info!(image = %format!("{}/{image}", self.pool_name()), "standby image removed");
        Ok(())
    }
}

/// The pool of `source` (an image another pool or site holds, to adopt
/// from), with the error an adoption reports.
pub(super) fn open_source_pool(
    cluster: &ClusterSpec,
    source: &crate::rbd::RbdSpec,
) -> Result<std::sync::Arc<crate::sys::librbd::Pool>, StoreError> {
    source
        .open_pool(cluster)
        .map_err(|e| StoreError::InvalidRequest {
            reason: format!("opening pool {} for {source}: {e}", source.pool),
        })
}
