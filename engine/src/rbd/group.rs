//! Group captures: snapshots of several RBD images taken at one instant.
//!
//! Every image's exclusive lock is taken (in a fixed order), which makes
//! other librbd clients finish their in-flight writes and hold new ones;
//! then every image is snapshotted and the locks are released. A write
//! that completed before the capture is in it; a write issued after another
//! image's write completed can only be missing from the capture if that
//! earlier write is missing too — the property a crash-consistent group
//! recovery point needs. (RBD group snapshots, `rbd_group_snap_create`, do
//! the same internally, but their snapshots live in the group namespace,
//! which `rbd_diff_iterate2` cannot name as a base; so ferry takes user
//! snapshots under the same quiesce.) This needs the exclusive-lock feature
//! on every image of a multi-image group.
//!
//! A capture that a cycle already started reading is reused when every image
//! of the group has the same one (resuming an interrupted group sync), and
//! retaken for all images otherwise.

use tracing::info;

use super::source::RbdSource;
use super::{unix_ms, RbdError};
use crate::source::SourceError;
use crate::sys::librbd::FEATURE_EXCLUSIVE_LOCK;

/// Makes every source hold a capture of one instant; returns whether new
/// snapshots were taken.
pub fn capture_group(sources: &mut [&mut RbdSource]) -> Result<bool, SourceError> {
    let first = sources.first().and_then(|s| s.capture().map(str::to_owned));
    let same = first.as_deref().is_some_and(|name| {
        let suffix = name.rsplit('.').next();
        sources
            .iter()
            .all(|s| s.capture().is_some_and(|c| c.rsplit('.').next() == suffix))
    });
    if same {
        return Ok(false);
    }
    for source in sources.iter_mut() {
        source.drop_capture()?;
    }
    let rbd = |e: crate::sys::librbd::CephError| SourceError::Rbd(Box::new(RbdError::Ceph(e)));
    if sources.len() > 1 {
        for source in sources.iter() {
            let features = source.head().features().map_err(rbd)?;
            if features & FEATURE_EXCLUSIVE_LOCK == 0 {
                return Err(SourceError::Rbd(Box::new(RbdError::Unsupported {
                    image: source.spec().to_string(),
                    reason: "a group recovery point over several images needs the exclusive-lock feature on each (rbd feature enable POOL/IMAGE exclusive-lock)".into(),
                })));
            }
        }
    }
    let instant = unix_ms();
    let mut order: Vec<usize> = (0..sources.len()).collect();
    order.sort_by_key(|&i| sources[i].spec().to_string());
    let mut locked = Vec::new();
    let result = (|| {
        if sources.len() > 1 {
            for &i in &order {
                sources[i].head().lock_exclusive().map_err(rbd)?;
                locked.push(i);
            }
        }
        let mut names = Vec::with_capacity(sources.len());
        for &i in &order {
            let name = sources[i].capture_name(instant);
            sources[i].head().snap_create(&name).map_err(rbd)?;
            names.push((i, name));
        }
        Ok::<_, SourceError>(names)
    })();
    for &i in locked.iter().rev() {
        if let Err(error) = sources[i].head().lock_release() {
            tracing::warn!(image = %sources[i].spec(), %error, "releasing the exclusive lock failed; librbd releases it when the handle closes");
        }
    }
    for (i, name) in result? {
        sources[i].adopt_capture(name)?;
    }
    info!(
        images = sources.len(),
        instant, "captured a group recovery point"
    );
    Ok(true)
}
