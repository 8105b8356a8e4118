//! Which images of a group sync run at once.
//!
//! An image in flight holds up to ~150 MiB of buffers when it has much to
//! send (read-ahead, pipeline chunks, the send window), so at most
//! `[transport] max_concurrent_images` such images run at once (5 by
//! default). An image whose source tells ahead that its cycle reads at
//! most [`SMALL_IMAGE_BYTES`] ([`ExtentSource::data_bytes_ahead`]: a small
//! delta) holds at most that much, and runs beside them without a slot,
//! drawing its byte count from a shared budget of [`SMALL_IMAGES_BUDGET`]:
//! a reprotect's or a continuous cycle's twenty small deltas then go at
//! once (each first write into an RBD clone's object waits for a copy-up
//! inside Ceph, so waves of five cost most of the time), while a group's
//! full sync still goes five at a time, within the same memory as before.
//! How many image streams the standby lets open at once bounds the rest
//! ([`crate::transport::MAX_IMAGE_STREAMS`]).
//!
//! [`ExtentSource::data_bytes_ahead`]: crate::source::ExtentSource::data_bytes_ahead

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::debug;

use super::image::Planned;
use super::SyncError;
use crate::source::CyclePlan;

/// An image whose cycle reads at most this many bytes is small (an RBD
/// diff lists an object created since the base whole, so a few scattered
/// 1 MiB writes already list 16 MiB).
pub const SMALL_IMAGE_BYTES: u64 = 32 << 20;
/// Bytes all small images in flight may read together: twenty of 16 MiB,
/// a little more than two large images' buffers.
pub const SMALL_IMAGES_BUDGET: u64 = 320 << 20;
/// Unit of the small images' budget (permits count these).
const UNIT: u64 = 64 << 10;

/// The slots of one group sync.
pub(super) struct Admission {
    large: Arc<Semaphore>,
    small: Arc<Semaphore>,
}

/// What lets one image run; dropped when it is done.
pub(super) struct Admitted {
    _permit: OwnedSemaphorePermit,
}

impl Admission {
    /// At most `large_at_once` images that are not known to be small.
    pub(super) fn new(large_at_once: usize) -> Self {
        Self {
            large: Arc::new(Semaphore::new(large_at_once.max(1))),
            small: Arc::new(Semaphore::new(units(SMALL_IMAGES_BUDGET) as usize)),
        }
    }

    /// Asks `plan`'s source what its cycle reads (on a blocking thread: an
    /// RBD source lists its capture) and waits for a small-image share or
    /// a large-image slot. Returns the plan (with its source) and the slot.
    pub(super) async fn admit(&self, mut plan: Planned) -> Result<(Planned, Admitted), SyncError> {
        // The whole cycle, from its start: a resumed one is judged by all
        // it could have to send (the standby may resume it lower than the
        // source could), so an image is never taken for smaller than it is.
        // A fresh cycle then starts from this listing.
        let cycle = CyclePlan {
            epoch: plan.open.epoch,
            base_epoch: plan.open.base_epoch,
            resume_offset: 0,
        };
        let asked = tokio::task::spawn_blocking(move || {
            let bytes = plan.job.source.data_bytes_ahead(&cycle);
            (plan, bytes)
        })
        .await;
        let (plan, bytes) = match asked {
            Ok((plan, Ok(bytes))) => (plan, bytes),
            // Only an estimate: the cycle itself meets the same error.
            Ok((plan, Err(e))) => {
                debug!(image = %plan.job.image, error = %e, "no look-ahead of the cycle's size");
                (plan, None)
            }
            Err(e) => {
                return Err(SyncError::Protocol(format!(
                    "looking ahead at an image's cycle failed: {e}"
                )))
            }
        };
        if let Some(bytes) = bytes.filter(|b| *b <= SMALL_IMAGE_BYTES) {
            debug!(image = %plan.job.image, bytes, "small cycle: runs beside the large ones");
        }
        let slot = self.slot(bytes).await?;
        Ok((plan, slot))
    }

    /// Waits for the slot of an image whose cycle reads `bytes` (`None`:
    /// not known).
    async fn slot(&self, bytes: Option<u64>) -> Result<Admitted, SyncError> {
        let permit = match bytes {
            Some(bytes) if bytes <= SMALL_IMAGE_BYTES => {
                self.small
                    .clone()
                    .acquire_many_owned(units(bytes).max(1))
                    .await
            }
            _ => self.large.clone().acquire_owned().await,
        };
        // The semaphores are never closed.
        let permit = permit.map_err(|e| SyncError::Protocol(format!("image slots: {e}")))?;
        Ok(Admitted { _permit: permit })
    }
}

/// Permits for `bytes` of the small images' budget.
fn units(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(UNIT)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Whether `slot` is granted without anything being released (a
    /// semaphore grants at once or only after a release: no timing).
    async fn granted(admission: &Admission, bytes: Option<u64>) -> Option<Admitted> {
        tokio::time::timeout(Duration::from_millis(20), admission.slot(bytes))
            .await
            .ok()
            .map(|slot| slot.expect("never closed"))
    }

    #[tokio::test]
    async fn twenty_small_deltas_run_beside_five_large_images() {
        let admission = Admission::new(5);
        let mut held = Vec::new();
        for _ in 0..5 {
            held.push(granted(&admission, None).await.expect("a large slot"));
        }
        assert!(
            granted(&admission, None).await.is_none(),
            "a sixth unknown size waits"
        );
        let big = Some(SMALL_IMAGE_BYTES + 1);
        assert!(
            granted(&admission, big).await.is_none(),
            "so does a large delta"
        );
        for i in 0..20 {
            let small = granted(&admission, Some(3 << 20)).await;
            held.push(small.unwrap_or_else(|| panic!("small delta {i} waited")));
        }
        // An empty cycle takes one unit, never none.
        assert!(granted(&admission, Some(0)).await.is_some());
        // The small budget counts bytes: it fills up with the largest small ones.
        let room = SMALL_IMAGES_BUDGET - 20 * (3 << 20);
        let fits = room / SMALL_IMAGE_BYTES;
        for _ in 0..fits {
            held.push(
                granted(&admission, Some(SMALL_IMAGE_BYTES))
                    .await
                    .expect("fits"),
            );
        }
        assert!(granted(&admission, Some(SMALL_IMAGE_BYTES)).await.is_none());
        // A large image done lets the next one in.
        held.remove(0);
        assert!(granted(&admission, None).await.is_some());
    }
}
