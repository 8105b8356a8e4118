//! Membership of the RBD groups ferry makes (`ferry-<HASH>`): taking an
//! image out of a ferry group it no longer shares, refusing a group ferry
//! did not make, and forgetting the group when an image's replication ends.
//! Used by group captures ([`super::group`]) and by the source
//! ([`super::source`]) alike, so neither needs the other for it.

use std::sync::Arc;

use tracing::info;

use super::RbdError;
use crate::source::SourceError;
use crate::sys::librbd::{CephError, Image, Pool};

/// Name prefix of the RBD groups ferry makes.
pub const FERRY_GROUP_PREFIX: &str = "ferry-";

/// A librbd failure as a source error.
pub(crate) fn rbd(e: CephError) -> SourceError {
    RbdError::Ceph(e).into()
}

/// Takes image `name` (of `pool`, in group `membership`: pool id and name,
/// from [`Image::group`]) out of any ferry RBD group other than `keep`;
/// returns whether the image is in `keep`. The group's snapshots stay
/// (the image's state may still name one); they go with the group's
/// cleanup. An image in an RBD group ferry did not make is left there, and
/// refused when `keep` asks for ferry's group.
pub(crate) fn leave_ferry_group(
    pool: &Arc<Pool>,
    membership: Option<(i64, String)>,
    name: &str,
    keep: Option<&str>,
) -> Result<bool, SourceError> {
    let Some((group_pool_id, current)) = membership else {
        return Ok(false);
    };
    if keep == Some(current.as_str()) {
        return Ok(true);
    }
    if !current.starts_with(FERRY_GROUP_PREFIX) {
        if keep.is_none() {
            // Not ferry's, and no group is needed: leave it alone.
            return Ok(false);
        }
        return Err(foreign_group(pool, name, &current));
    }
    let group_pool = pool.pool_by_id(group_pool_id).map_err(rbd)?;
    group_pool
        .group_image_remove(&current, pool, name)
        .map_err(rbd)?;
    info!(image = %format!("{}/{name}", pool.name()), group = %current, "removed the image from a ferry RBD group it no longer shares");
    Ok(false)
}

/// The refusal of image `name` (of `pool`), a member of RBD group
/// `current` that ferry did not make, for a multi-image capture.
pub(crate) fn foreign_group(pool: &Pool, name: &str, current: &str) -> SourceError {
    SourceError::from(RbdError::Unsupported {
        image: format!("{}/{name}", pool.name()),
        reason: format!(
            "the image is in RBD group {current}, which ferry did not make; an image can be \
             in one group only and ferry keeps the images of a protection group in its own \
             (rbd group image remove GROUP {}/{name})",
            pool.name()
        ),
    })
}

/// Ends `image`'s membership of a ferry RBD group (its replication ends):
/// removes it from the group, and the group once it is empty (with every
/// snapshot of it).
pub(crate) fn forget_ferry_group(
    pool: &Arc<Pool>,
    image: &Image,
    name: &str,
) -> Result<(), SourceError> {
    let membership = image.group().map_err(rbd)?;
    let Some((group_pool_id, current)) = membership.clone() else {
        return Ok(());
    };
    if !current.starts_with(FERRY_GROUP_PREFIX) {
        return Ok(());
    }
    leave_ferry_group(pool, membership, name, None)?;
    let group_pool = pool.pool_by_id(group_pool_id).map_err(rbd)?;
    if group_pool.group_image_count(&current).map_err(rbd)? == 0 {
        group_pool.group_remove(&current).map_err(rbd)?;
        info!(group = %current, "removed an empty ferry RBD group");
    }
    Ok(())
}
