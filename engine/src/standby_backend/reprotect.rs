//! Re-protect on the old primary, whichever backend: after an unplanned
//! failover, the old primary's volumes become the standby copies of the
//! reversed direction without a full copy crossing the link, and what the
//! old primary wrote after the sites diverged (the split-brain writes) is
//! kept where the answer says, never silently dropped.
//!
//! | | files | RBD |
//! |---|---|---|
//! | the standby copy | a copy of the old volume as it is (split-brain writes included), committed at the common point | a clone (format 2) of the old volume's snapshot of the common point: exactly that point |
//! | what the new primary sends first | every block whose content differs from the copy's (it gets the copy's block hashes) | what it wrote since the common point (its snapshot of that point is its base) |
//! | the discarded writes | the old volume file, untouched | the old volume, untouched, and its snapshot `ferry-splitbrain-MS` |

use std::path::Path;

use ferry_protocol::types::{Epoch, ImageName, RecoveryPointId};

use super::Standby;
use crate::rbd::RbdSpec;
use crate::rendezvous::Ticket;
use crate::source::BlockHash;
use crate::standby::StoreError;
use crate::sys::librbd::ClusterSpec;

/// The old primary's volume of one image, for [`Standby::adopt_for_reprotect`].
#[derive(Clone, Copy, Debug)]
pub enum ReprotectSource<'a> {
    /// A raw file (files backend).
    File(&'a Path),
    /// An RBD image of `cluster` (RBD backend).
    Rbd {
        /// The cluster holding it.
        cluster: &'a ClusterSpec,
        /// The image (no snapshot part).
        spec: &'a RbdSpec,
        /// Its snapshot holding the common recovery point (a user or a
        /// group snapshot).
        snap: &'a str,
        /// The user snapshot to clone: `snap`, or the one taken just
        /// before a group snapshot.
        clone_from: &'a str,
        /// The name of the snapshot that keeps the split-brain writes
        /// (made of the head if it does not exist yet).
        keep_snap: &'a str,
    },
}

/// What [`Standby::adopt_for_reprotect`] made of one image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReprotectCopy {
    /// Where the old primary's data, split-brain writes included, stays
    /// (`file:/PATH`, or `rbd:POOL/IMAGE@SNAP`).
    pub kept: String,
    /// Files: the block hashes of the copy, the new primary's replication
    /// base (see `FileSource::seed_from_hashes`). RBD: `None` (the new
    /// primary's base is its snapshot of the common point).
    pub block_hashes: Option<Vec<BlockHash>>,
}

impl Standby {
    /// Installs the old primary's volume `source` as standby copy `image`
    /// committed at (`rp`, `epoch`), the last recovery point both sites
    /// hold, for a re-protect (see the module doc for what each backend
    /// makes). Repeatable: a copy already adopted at (`rp`, `epoch`) is
    /// kept. A source of the other backend's kind is refused.
    ///
    /// `together`: this image's place in a batch of images adopted at once
    /// (see [`crate::rendezvous`]); an RBD adoption meets the batch before
    /// its snapshots, a files adoption leaves it at once.
    pub fn adopt_for_reprotect(
        &self,
        image: &ImageName,
        source: ReprotectSource<'_>,
        epoch: Epoch,
        rp: RecoveryPointId,
        created_unix_ms: u64,
        together: Option<Ticket>,
    ) -> Result<ReprotectCopy, StoreError> {
        match (self, source) {
            (Self::Files(s), ReprotectSource::File(path)) => {
                drop(together);
                let adopted = s.image_state(image)?.is_some_and(|st| {
                    st.pending.is_none() && st.recovery_point == rp && st.committed_epoch == epoch
                });
                if !adopted {
                    if s.image_state(image)?.is_some() {
                        s.remove_image(image)?;
                    }
                    s.adopt(image, path, epoch, rp, created_unix_ms)?;
                }
                let copy = s.image_path(image);
                let hashes = crate::source::block_hashes(&copy)
                    .map_err(|e| StoreError::io("hash the adopted copy", &copy, e))?;
                Ok(ReprotectCopy {
                    kept: format!("file:{}", path.display()),
                    block_hashes: Some(hashes),
                })
            }
            (
                Self::Rbd(s),
                ReprotectSource::Rbd {
                    cluster,
                    spec,
                    snap,
                    clone_from,
                    keep_snap,
                },
            ) => {
                // The snapshot that keeps the head and the clone's
                // recovery-point snapshot each wait for a monitor round; they
                // are asked for together, once this image's clone holds the
                // point and every other image of `together` got as far, so
                // the whole group's snapshots land in one round.
                let mut together = together;
                let (kept, adopted) = std::thread::scope(|scope| {
                    let mut keeping = None;
                    let adopted = s.adopt_clone(
                        image,
                        cluster,
                        spec,
                        snap,
                        clone_from,
                        epoch,
                        rp,
                        created_unix_ms,
                        &mut || {
                            if let Some(ticket) = together.as_mut() {
                                ticket.arrive_and_wait();
                            }
                            keeping =
                                Some(scope.spawn(|| keep_split_brain(cluster, spec, keep_snap)));
                        },
                    );
                    // Adopted earlier (or failed): the kept snapshot on its own.
                    drop(together);
                    let kept = match keeping {
                        Some(handle) => handle.join().unwrap_or_else(|_| {
                            Err(StoreError::InvalidRequest {
                                reason: format!("snapshotting {spec}@{keep_snap} panicked"),
                            })
                        }),
                        None if adopted.is_ok() => keep_split_brain(cluster, spec, keep_snap),
                        None => Ok(()),
                    };
                    (kept, adopted)
                });
                adopted?;
                kept?;
                Ok(ReprotectCopy {
                    kept: format!("rbd:{spec}@{keep_snap}"),
                    block_hashes: None,
                })
            }
            (Self::Rbd(_), ReprotectSource::File(_)) => Err(super::not_backend("files")),
            (Self::Files(_), ReprotectSource::Rbd { .. }) => Err(super::not_backend("rbd")),
        }
    }
}

/// Snapshots the head of `spec` as `keep_snap` unless it exists: the old
/// primary's writes after the sites diverged, kept for the operator.
fn keep_split_brain(
    cluster: &ClusterSpec,
    spec: &RbdSpec,
    keep_snap: &str,
) -> Result<(), StoreError> {
    let fail = |what: &str, e: &dyn std::fmt::Display| StoreError::InvalidRequest {
        reason: format!("{what} {spec}@{keep_snap}: {e}"),
    };
    let pool = spec.open_pool(cluster).map_err(|e| fail("opening", &e))?;
    let head = pool.open(&spec.image).map_err(|e| fail("opening", &e))?;
    if !head
        .snap_exists(keep_snap)
        .map_err(|e| fail("looking up", &e))?
    {
        head.snap_create(keep_snap)
            .map_err(|e| fail("snapshotting", &e))?;
        tracing::info!(image = %spec, snap = keep_snap, "kept the old primary's split-brain writes in a snapshot");
    }
    Ok(())
}
