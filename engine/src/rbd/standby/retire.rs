//! Retiring expired recovery point snapshots of an RBD standby image off the
//! commit path.
//!
//! Removing a snapshot waits for a monitor commit (the snapshot id goes back
//! to the pool), about a second on a small cluster. Done inside the commit,
//! as before, it made every commit past the retention that second longer, and
//! the primary waits for the commit before its next cycle: a second of RPO
//! per cycle for nothing. The commit now only drops the points from the
//! image's record (that is what makes them gone: no restore, failover or pin
//! can reach them any more) and leaves the snapshots to a thread that removes
//! them after the commit has answered.
//!
//! The thread sweeps rather than remembering names: under the image's op lock
//! it removes every `ferry-rp-<ID>` snapshot whose point the record neither
//! keeps nor pins and that is older than the newest kept point. So a sweep
//! the agent did not live to finish is made good by the image's next one,
//! and snapshots of a commit still in flight (newer than every point the
//! image has committed) are never touched. Ids are compared, not ordered by
//! age: a point is kept because the record names it, whatever its id.

use std::sync::atomic::Ordering;

use ferry_protocol::types::ImageName;
use tracing::{info, warn};

use super::handle::{RbdStandby, SNAP_PREFIX};
use crate::standby::StoreError;
use crate::sync_util::lock;

/// The recovery point id a snapshot name of ours carries.
fn point_of(snap: &str) -> Option<u64> {
    snap.strip_prefix(SNAP_PREFIX)?.parse().ok()
}

impl RbdStandby {
    /// Starts a sweep of `image`'s expired snapshots on its own thread,
    /// unless one is already waiting to start (it will see these too).
    pub(super) fn retire_later(&self, image: &ImageName) {
        let slot = self.slot(image);
        if slot.retire_scheduled.swap(true, Ordering::AcqRel) {
            return;
        }
        let store = self.clone();
        let owned = image.clone();
        let spawned = std::thread::Builder::new()
            .name("ferry-rbd-retire".into())
            .spawn(move || {
                if let Err(error) = store.retire_expired(&owned) {
                    warn!(image = %owned, %error, "could not remove expired recovery point snapshots; the next commit retries");
                }
            });
        if let Err(error) = spawned {
            slot.retire_scheduled.store(false, Ordering::Release);
            warn!(%image, %error, "could not start removing expired recovery point snapshots; the next commit retries");
        }
    }

    /// Removes `image`'s `ferry-rp-*` snapshots of points neither retained
    /// nor pinned and older than its newest retained point. Holds the image's op lock, so no
    /// commit, pin or unpin of the image runs meanwhile.
    pub(crate) fn retire_expired(&self, image: &ImageName) -> Result<(), StoreError> {
        let slot = self.slot(image);
        let _op = lock(&slot.op);
        slot.retire_scheduled.store(false, Ordering::Release);
        let Some(record) = self.load(image)? else {
            return Ok(());
        };
        if record.volume_at.is_some() {
            // The operator's volume now: ferry no longer touches it.
            return Ok(());
        }
        let Some(newest) = record.history.iter().map(|p| p.rp).max() else {
            return Ok(());
        };
        let ctx = format!("{}/{image}", self.pool_name());
        // Opened plainly, not through `open_image`: the sweep runs after the
        // commit answered, when nothing of ours holds the image, so it must
        // neither break another client's lock nor hold the exclusive lock
        // against it (an explicit lock makes that client's writes fail with
        // EROFS). `snap_remove` takes the lock itself and hands it over
        // when asked.
        let handle = self
            .inner
            .pool
            .open(image.as_str())
            .map_err(|source| StoreError::Ceph {
                context: format!("opening {ctx}"),
                source,
            })?;
        let snaps = handle.snapshots().map_err(|source| StoreError::Ceph {
            context: format!("listing the snapshots of {ctx}"),
            source,
        })?;
        for snap in snaps {
            let Some(rp) = point_of(&snap.name) else {
                continue;
            };
            let kept = record.history.iter().any(|p| p.rp == rp)
                || record.pinned.iter().any(|p| p.rp == rp);
            if kept || rp >= newest {
                continue;
            }
            match handle.snap_remove(&snap.name) {
                Ok(()) => info!(image = %ctx, rp, "removed an expired recovery point snapshot"),
                Err(e) if e.is_not_found() => {}
                Err(error) => {
                    warn!(image = %ctx, snap = %snap.name, %error, "could not remove an expired recovery point snapshot")
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::point_of;

    #[test]
    fn only_our_snapshot_names_carry_a_point() {
        assert_eq!(point_of("ferry-rp-1765000000123"), Some(1_765_000_000_123));
        assert_eq!(point_of("ferry-rp-"), None);
        assert_eq!(point_of("ferry-rp-12x"), None);
        assert_eq!(point_of("ferry.abc.123"), None);
        assert_eq!(point_of(".group.1_abc_def"), None);
    }
}
