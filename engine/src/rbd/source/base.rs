//! The replication base of an [`RbdSource`] outside a cycle: reading the
//! committed snapshot, seeding a base (a planned migration's new volume, a
//! re-protected volume's recovery-point snapshot), finding the snapshot of
//! an epoch (re-protect on the old primary) and ending a replication.

use std::path::Path;

use ferry_protocol::Epoch;
use tracing::info;

use super::{
    open_pool, state_error, unix_ms, ClusterSpec, RbdSource, RbdSpec, SnapRef, SourceState,
    STATE_FILE, STATE_FORMAT,
};
use crate::source::SourceError;
use crate::standby::{read_checksummed, write_checksummed};
use crate::sys::librbd::GROUP_SNAP_PREFIX;

impl RbdSource {
    /// The committed (epoch, snapshot) of the replication of `spec` whose
    /// state is in `state_dir`, if any. Reads the state only.
    pub fn committed_snapshot(
        spec: &RbdSpec,
        state_dir: &Path,
    ) -> Result<Option<(Epoch, String)>, SourceError> {
        let path = state_dir.join(STATE_FILE);
        Ok(read_checksummed::<SourceState>(&path)
            .map_err(|e| state_error(e.into()))?
            .filter(|s| s.format == STATE_FORMAT && s.image == spec.to_string())
            .and_then(|s| s.committed)
            .map(|c| (Epoch(c.epoch), c.snap)))
    }

    /// Records the current head of `spec` as already replicated at `epoch`
    /// under replication `tag` (state in `state_dir`): takes a snapshot
    /// `ferry.<TAG>.<ms>` of it and makes it the committed base, so the
    /// next cycle sends only what is written after now. For an image that
    /// holds exactly what the standby holds at `epoch` (a planned
    /// migration's new primary volume, copied from that recovery point and
    /// not written since). Repeating it with the same epoch keeps the
    /// existing base; any other state in `state_dir` is replaced.
    pub fn seed(
        cluster: &ClusterSpec,
        spec: &RbdSpec,
        state_dir: &Path,
        tag: &str,
        epoch: Epoch,
    ) -> Result<(), SourceError> {
        prepare_base(state_dir, epoch)?;
        let pool = open_pool(cluster, &spec.pool).map_err(state_error)?;
        let head = pool.open(&spec.image).map_err(|e| state_error(e.into()))?;
        if let Some((committed, snap)) = Self::committed_snapshot(spec, state_dir)? {
            if committed == epoch && head.snap_exists(&snap).map_err(|e| state_error(e.into()))? {
                return Ok(());
            }
        }
        let snap = format!("ferry.{tag}.{}", unix_ms());
        head.snap_create(&snap).map_err(|e| state_error(e.into()))?;
        write_base(state_dir, spec, epoch, &snap)?;
        info!(image = %spec, %epoch, snap, "seeded the replication base");
        Ok(())
    }

    /// Ends the replication of `spec` whose state is in `state_dir`: removes
    /// the snapshots the state names (committed and capture) and the state.
    /// Nothing to do is not an error.
    pub fn forget(
        cluster: &ClusterSpec,
        spec: &RbdSpec,
        state_dir: &Path,
    ) -> Result<(), SourceError> {
        let path = state_dir.join(STATE_FILE);
        let Some(state) = read_checksummed::<SourceState>(&path)
            .map_err(|e| state_error(e.into()))?
            .filter(|s| s.format == STATE_FORMAT && s.image == spec.to_string())
        else {
            return Ok(());
        };
        let pool = open_pool(cluster, &spec.pool).map_err(state_error)?;
        let head = pool.open(&spec.image).map_err(|e| state_error(e.into()))?;
        let snaps = state
            .committed
            .into_iter()
            .flat_map(|c| [Some(c.snap), c.base])
            .chain(
                state
                    .capture
                    .into_iter()
                    .flat_map(|c| [Some(c.snap), c.base]),
            )
            .flatten()
            // Group snapshots go with the image's group membership below.
            .filter(|snap| !snap.starts_with(GROUP_SNAP_PREFIX));
        for snap in snaps {
            match head.snap_remove(&snap) {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(state_error(e.into())),
            }
        }
        crate::rbd::membership::forget_ferry_group(&pool, &head, &spec.image)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(SourceError::Io {
                op: "remove state",
                path,
                source,
            }),
        }
    }

    /// Records the existing snapshot `snap` of `spec` as already replicated
    /// at `epoch` under replication `tag` (state in `state_dir`): the next
    /// cycle sends what changed since that snapshot. For a re-protected
    /// volume: the new primary's image, failed over in place at a recovery
    /// point whose snapshot the old primary's new standby copy holds too.
    /// The snapshot is not this replication's own (it does not carry its
    /// tag), so no commit ever removes it. Repeating it with the same
    /// epoch and snapshot keeps the state (an interrupted first cycle
    /// resumes); any other state in `state_dir` is replaced.
    pub fn seed_from_snapshot(
        cluster: &ClusterSpec,
        spec: &RbdSpec,
        state_dir: &Path,
        snap: &str,
        epoch: Epoch,
    ) -> Result<(), SourceError> {
        prepare_base(state_dir, epoch)?;
        let pool = open_pool(cluster, &spec.pool).map_err(state_error)?;
        let head = pool.open(&spec.image).map_err(|e| state_error(e.into()))?;
        if !head.snap_exists(snap).map_err(|e| state_error(e.into()))? {
            return Err(state_error(crate::rbd::RbdError::MissingSnapshot {
                image: spec.to_string(),
                snap: snap.to_owned(),
                reason: "the base a re-protected volume replicates from",
            }));
        }
        let same = Self::committed_snapshot(spec, state_dir)?
            .is_some_and(|(e, committed)| e == epoch && committed == snap);
        if same {
            return Ok(());
        }
        write_base(state_dir, spec, epoch, snap)?;
        info!(image = %spec, %epoch, snap, "seeded the replication base from an existing snapshot");
        Ok(())
    }

    /// The snapshot of `spec` that holds what the standby holds at `epoch`
    /// (the committed one, or the capture of the cycle producing `epoch`:
    /// a standby may have committed a point whose acknowledgement this side
    /// never saw), as `(snapshot, user snapshot to diff or clone from)`;
    /// both are the same unless the snapshot is a group snapshot (then the
    /// second is the user snapshot taken just before it). `None` when this
    /// side keeps no snapshot of that epoch.
    pub fn snapshot_at(
        spec: &RbdSpec,
        state_dir: &Path,
        epoch: Epoch,
    ) -> Result<Option<(String, String)>, SourceError> {
        let path = state_dir.join(STATE_FILE);
        let Some(state) = read_checksummed::<SourceState>(&path)
            .map_err(|e| state_error(e.into()))?
            .filter(|s| s.format == STATE_FORMAT && s.image == spec.to_string())
        else {
            return Ok(None);
        };
        if let Some(c) = state.committed.filter(|c| c.epoch == epoch.get()) {
            let base = c.diff_base().to_owned();
            return Ok(Some((c.snap, base)));
        }
        let capturing = state.cycle.is_some_and(|c| c.epoch == epoch.get());
        Ok(state.capture.filter(|_| capturing).map(|c| {
            let base = c.base.clone().unwrap_or_else(|| c.snap.clone());
            (c.snap, base)
        }))
    }

    /// Ends the replication of `spec` whose state is in `state_dir` but
    /// keeps its snapshots (re-protect: the old primary's new standby copy
    /// is a clone of one of them): only the state goes, so this side never
    /// replicates from it again. Nothing to do is not an error.
    pub fn forget_keeping_snapshots(state_dir: &Path) -> Result<(), SourceError> {
        let path = state_dir.join(STATE_FILE);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(SourceError::Io {
                op: "remove state",
                path,
                source,
            }),
        }
    }
}

/// The checks and the directory before a base is seeded.
fn prepare_base(state_dir: &Path, epoch: Epoch) -> Result<(), SourceError> {
    if epoch == Epoch(0) {
        return Err(SourceError::Misuse {
            reason: "a seeded base needs a non-zero epoch",
        });
    }
    std::fs::create_dir_all(state_dir).map_err(|source| SourceError::Io {
        op: "create state directory",
        path: state_dir.to_path_buf(),
        source,
    })
}

/// Replaces the state in `state_dir` with `snap` committed at `epoch`.
fn write_base(
    state_dir: &Path,
    spec: &RbdSpec,
    epoch: Epoch,
    snap: &str,
) -> Result<(), SourceError> {
    write_checksummed(
        &state_dir.join(STATE_FILE),
        &SourceState {
            format: STATE_FORMAT,
            image: spec.to_string(),
            committed: Some(SnapRef {
                epoch: epoch.get(),
                snap: snap.to_owned(),
                base: None,
            }),
            capture: None,
            cycle: None,
        },
    )
    .map_err(|e| state_error(e.into()))
}
