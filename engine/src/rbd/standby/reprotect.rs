//! Re-protect and fail-back on an RBD standby, without copying images:
//!
//! - [`RbdStandby::adopt_clone`] (the old primary, re-protected as the new
//!   standby): the standby copy becomes a copy-on-write clone (format 2) of
//!   the old volume's snapshot of the last recovery point both sites hold.
//!   The old volume itself is never written: what it took after that point
//!   (the split-brain writes) stays in it for the operator, and the copy
//!   starts exactly at the point, so only the new primary's writes since
//!   then have to cross the link.
//! - [`RbdStandby::adopt_in_place`] (the new primary of a re-protected
//!   group, when a planned migration fails back): its volume *is* this
//!   pool's standby image of that name (failed over in place), so it
//!   becomes the standby copy again at the migration's point, as it is.

use ferry_protocol::types::{Epoch, ImageName, RecoveryPointId};
use tracing::info;

use super::handle::{ceph, snap_name, ImageRecord, PointRecord, RbdStandby};
use crate::rbd::RbdSpec;
use crate::standby::StoreError;
use crate::sync_util::lock;
use crate::sys::librbd::{ClusterSpec, CreateOptions};

/// Bytes copied per read when patching a clone up to a group snapshot.
const PATCH_CHUNK: u64 = 4 << 20;

impl RbdStandby {
    /// Installs standby image `image` as a clone of `source` (an image of
    /// `cluster`, no snapshot part) at snapshot `snap`, as committed at
    /// (`rp`, `epoch`). `clone_from` is the user snapshot the clone is made
    /// of: `snap` itself, or when `snap` is a group snapshot (not reachable
    /// by name for a clone) the user snapshot taken just before it; then the
    /// few extents written between the two are copied from `snap` into the
    /// clone, so it holds exactly `snap`. Restartable like
    /// [`RbdStandby::adopt`]; an image already adopted at (`rp`, `epoch`)
    /// is kept. `before_snapshot` runs once the clone holds the point, just
    /// before its recovery-point snapshot is asked for (a batch of images
    /// meets there, so the monitor commits their snapshots in one round);
    /// it does not run for an image adopted already.
    #[allow(clippy::too_many_arguments)]
    pub fn adopt_clone(
        &self,
        image: &ImageName,
        cluster: &ClusterSpec,
        source: &RbdSpec,
        snap: &str,
        clone_from: &str,
        epoch: Epoch,
        rp: RecoveryPointId,
        created_unix_ms: u64,
        before_snapshot: &mut dyn FnMut(),
    ) -> Result<(), StoreError> {
        let slot = self.slot(image);
        let _op = lock(&slot.op);
        if self.begin_adopt(image, epoch, rp)? {
            return Ok(());
        }
        let ctx = format!("{}/{image}", self.pool_name());
        let from_pool = super::volumes::open_source_pool(cluster, source)?;
        from_pool
            .clone_image(
                &source.image,
                clone_from,
                &self.inner.pool,
                image.as_str(),
                CreateOptions::default(),
            )
            .map_err(ceph(format!("cloning {source}@{clone_from} to {ctx}")))?;
        if snap != clone_from {
            let exact = from_pool
                .open_read_only(&source.image, Some(snap))
                .map_err(ceph(format!("opening {source}@{snap}")))?;
            let target = self.open_image(image)?;
            let size = exact
                .size()
                .map_err(ceph(format!("size of {source}@{snap}")))?;
            if target.size().map_err(ceph(format!("size of {ctx}")))? != size {
                target
                    .resize(size)
                    .map_err(ceph(format!("resizing {ctx}")))?;
            }
            let mut extents = Vec::new();
            exact
                .diff_iterate(Some(clone_from), 0, size, false, &mut |off, len, exists| {
                    extents.push((off, len, exists));
                    true
                })
                .map_err(ceph(format!("listing {source}@{clone_from}..{snap}")))?;
            let mut patched = 0u64;
            for (off, len, exists) in extents {
                patch_extent(&exact, &target, off, len, exists)
                    .map_err(ceph(format!("copying {source}@{snap} into {ctx}")))?;
                patched += len;
            }
            target.flush().map_err(ceph(format!("flushing {ctx}")))?;
            info!(image = %ctx, from = %format!("{source}@{snap}"), bytes = patched, "clone patched up to the group snapshot");
        }
        before_snapshot();
        let size = self.finish_adopt(image, epoch, rp, created_unix_ms)?;
        info!(image = %ctx, from = %format!("{source}@{snap}"), %epoch, rp = rp.get(), size, "image adopted as a clone (no copy)");
        Ok(())
    }

    /// Makes this pool's image `image` (a volume this store released or
    /// made, e.g. failed over in place) its standby copy again, as it is
    /// now, committed at (`rp`, `epoch`): its head must hold exactly that
    /// point (a planned migration checked it against the new primary's
    /// volume). Nothing is copied; the snapshots it has keep their names.
    /// Repeatable.
    pub fn adopt_in_place(
        &self,
        image: &ImageName,
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
        slot.check_no_writer(image)?;
        let ctx = format!("{}/{image}", self.pool_name());
        let old = self.load(image)?;
        match &old {
            Some(r)
                if r.pending.is_none()
                    && r.volume_at.is_none()
                    && r.history.len() == 1
                    && r.history[0].rp == rp.get()
                    && r.history[0].epoch == epoch.get() =>
            {
                return Ok(());
            }
            Some(r) if r.pending.is_some() => {
                return Err(StoreError::InvalidRequest {
                    reason: format!("{ctx} has an epoch pending; it cannot be taken back as it is"),
                })
            }
            _ => {}
        }
        if !self.volume_exists(image.as_str())? {
            return Err(StoreError::UnknownImage {
                image: image.clone(),
            });
        }
        let handle = self.open_image(image)?;
        let size = handle.size().map_err(ceph(format!("size of {ctx}")))?;
        let rp_snap = snap_name(rp.get());
        if !handle
            .snap_exists(&rp_snap)
            .map_err(ceph(format!("looking up {ctx}@{rp_snap}")))?
        {
            handle
                .snap_create(&rp_snap)
                .map_err(ceph(format!("snapshotting {ctx}@{rp_snap}")))?;
        }
        drop(handle);
        // Pins and clones of the image's older points stay known, so their
        // snapshots are never swept while something depends on them.
        let (pinned, clones, version) = old
            .map(|r| (r.pinned, r.clones, r.version))
            .unwrap_or_default();
        self.save(&mut ImageRecord {
            version,
            history: vec![PointRecord {
                rp: rp.get(),
                epoch: epoch.get(),
                created_unix_ms,
                fuzzy: false,
                size,
            }],
            pinned,
            clones,
            ..ImageRecord::empty(image)
        })?;
        info!(image = %ctx, %epoch, rp = rp.get(), size, "the volume is the standby copy again (in place, no copy)");
        Ok(())
    }
}

/// Copies `off..off+len` of `from` into `to` (zeroes when `exists` is
/// false), in chunks.
fn patch_extent(
    from: &crate::sys::librbd::Image,
    to: &std::sync::Arc<crate::sys::librbd::Image>,
    off: u64,
    len: u64,
    exists: bool,
) -> Result<(), crate::sys::librbd::CephError> {
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(PATCH_CHUNK);
        let at = off + done;
        let n_usize = usize::try_from(n).unwrap_or(usize::MAX);
        if exists {
            let mut buf = vec![0u8; n_usize];
            from.read_at(at, &mut buf)?;
            to.aio_write(at, bytes::Bytes::from(buf))?.wait()?;
        } else {
            to.aio_write_zeroes(at, n_usize)?.wait()?;
        }
        done += n;
    }
    Ok(())
}
