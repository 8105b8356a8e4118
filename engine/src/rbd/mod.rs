//! Ceph RBD as a source and a standby of replication.
//!
//! - [`source::RbdSource`]: each cycle reads a ferry-owned snapshot of the
//!   primary image; `rbd_diff_iterate2` against the previous committed
//!   snapshot lists what changed (object map / fast-diff when the image has
//!   them), the extents are read with many asynchronous requests in flight,
//!   and extents of one object that lie close together are read (and later
//!   written) as one request.
//! - [`group::capture_group`]: snapshots of several images taken at one
//!   instant (writes held off with each image's exclusive lock), so a
//!   group's recovery point is crash-consistent across its images.
//! - [`standby::RbdStandby`]: standby images in a pool; extents are written in
//!   place, flushed before they are acknowledged, and every recovery point
//!   is an RBD snapshot. A torn apply is rolled back to the last recovery
//!   point's snapshot before the image is exposed (restore, failover), as
//!   rbd-mirror does.
//!
//! librbd is loaded at run time ([`crate::sys::librbd`]); nothing here needs
//! Ceph's libraries until an `rbd:` address is used.

pub mod diff;
pub mod group;
mod membership;
pub mod source;
pub mod standby;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

pub use crate::sys::librbd::{CephError, ClusterSpec, CreateOptions};
use crate::sys::librbd::{Cluster, Pool};

/// An RBD image address: `POOL/IMAGE[@SNAP]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RbdSpec {
    /// Pool name.
    pub pool: String,
    /// Image name.
    pub image: String,
    /// Snapshot name, if any.
    pub snap: Option<String>,
}

impl RbdSpec {
    /// Parses `POOL/IMAGE[@SNAP]`.
    pub fn parse(input: &str) -> Result<Self, RbdError> {
        let bad = |reason: &'static str| RbdError::BadSpec {
            input: input.to_owned(),
            reason,
        };
        let (pool, rest) = input.split_once('/').ok_or_else(|| bad("missing POOL/"))?;
        let (image, snap) = match rest.split_once('@') {
            Some((image, snap)) => (image, Some(snap)),
            None => (rest, None),
        };
        let valid = |s: &str| !s.is_empty() && !s.contains(['/', '@', '\0']);
        if !valid(pool) {
            return Err(bad("empty or invalid pool name"));
        }
        if !valid(image) {
            return Err(bad("empty or invalid image name"));
        }
        if snap.is_some_and(|s| !valid(s)) {
            return Err(bad("empty or invalid snapshot name"));
        }
        Ok(Self {
            pool: pool.to_owned(),
            image: image.to_owned(),
            snap: snap.map(str::to_owned),
        })
    }
}

impl std::fmt::Display for RbdSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.pool, self.image)?;
        if let Some(snap) = &self.snap {
            write!(f, "@{snap}")?;
        }
        Ok(())
    }
}

/// Errors of the RBD backend.
#[derive(Debug, thiserror::Error)]
pub enum RbdError {
    /// A librados/librbd call failed.
    #[error(transparent)]
    Ceph(#[from] CephError),
    /// An address could not be parsed.
    #[error("bad rbd address {input:?}: {reason} (expected POOL/IMAGE[@SNAP])")]
    BadSpec {
        /// What was given.
        input: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// Local bookkeeping (state files) failed.
    #[error(transparent)]
    State(#[from] crate::standby::StoreError),
    /// The image cannot take part in what was asked.
    #[error("{image}: {reason}")]
    Unsupported {
        /// The image.
        image: String,
        /// Why.
        reason: String,
    },
    /// A snapshot ferry relies on is gone.
    #[error("{image}: snapshot {snap} that ferry needs is missing ({reason})")]
    MissingSnapshot {
        /// The image.
        image: String,
        /// The snapshot.
        snap: String,
        /// What it was needed for.
        reason: &'static str,
    },
}

impl From<RbdError> for crate::source::SourceError {
    fn from(e: RbdError) -> Self {
        Self::Backend(Box::new(e))
    }
}

/// Process-wide cache of cluster connections, so that the images of a group
/// share one librados client.
static CLUSTERS: Mutex<Option<HashMap<ClusterSpec, Weak<Cluster>>>> = Mutex::new(None);

/// Connects to the cluster (or reuses a live connection) and opens `pool`.
pub fn open_pool(cluster: &ClusterSpec, pool: &str) -> Result<Arc<Pool>, RbdError> {
    let connection = {
        let mut guard = CLUSTERS.lock().unwrap_or_else(|p| p.into_inner());
        let map = guard.get_or_insert_with(HashMap::new);
        match map.get(cluster).and_then(Weak::upgrade) {
            Some(c) => c,
            None => {
                let c = Cluster::connect(cluster)?;
                map.insert(cluster.clone(), Arc::downgrade(&c));
                c
            }
        }
    };
    Ok(connection.pool(pool)?)
}

/// BLAKE3 (hex) of every byte of image `spec` (at its snapshot if it names
/// one, else its head), as `rbd export SPEC - | b3sum` would print it, and
/// the image size. Reads 4 MiB pieces, several in flight.
pub fn image_hash(cluster: &ClusterSpec, spec: &RbdSpec) -> Result<(String, u64), RbdError> {
    const PIECE: u64 = 4 << 20;
    const IN_FLIGHT: usize = 8;
    let pool = open_pool(cluster, &spec.pool)?;
    let image = Arc::new(pool.open_read_only(&spec.image, spec.snap.as_deref())?);
    let size = image.size()?;
    let mut hasher = blake3::Hasher::new();
    let mut reads = std::collections::VecDeque::new();
    let mut pos = 0u64;
    while pos < size || !reads.is_empty() {
        while pos < size && reads.len() < IN_FLIGHT {
            let len = PIECE.min(size - pos);
            let len_usize = usize::try_from(len).map_err(|_| RbdError::Unsupported {
                image: spec.to_string(),
                reason: "a read piece does not fit in memory".into(),
            })?;
            reads.push_back((len_usize, image.aio_read(pos, len_usize)?));
            pos += len;
        }
        if let Some((len, read)) = reads.pop_front() {
            let data = read.wait()?.unwrap_or_default();
            hasher.update(&data[..data.len().min(len)]);
            // A short read (past the end of the data) reads as zeroes.
            if data.len() < len {
                hasher.update(&vec![0u8; len - data.len()]);
            }
        }
    }
    Ok((hasher.finalize().to_hex().to_string(), size))
}

/// Milliseconds since the Unix epoch.
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        let s = RbdSpec::parse("rbd/vm1@snap-1").unwrap();
        assert_eq!(
            (s.pool.as_str(), s.image.as_str(), s.snap.as_deref()),
            ("rbd", "vm1", Some("snap-1"))
        );
        assert_eq!(s.to_string(), "rbd/vm1@snap-1");
        assert_eq!(RbdSpec::parse("p/i").unwrap().snap, None);
        for bad in ["", "rbd", "/img", "rbd/", "rbd/img@", "a/b/c", "rbd/@s"] {
            assert!(RbdSpec::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
