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

mod ceph_args;
pub mod diff;
pub mod group;
mod membership;
pub mod source;
pub mod standby;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

pub use crate::sys::librbd::{CephError, ClusterSpec, CreateOptions};
use crate::sys::librbd::{Cluster, Pool};
pub use ceph_args::CephArgsError;

/// An RBD image address: `POOL[/NAMESPACE]/IMAGE[@SNAP]`, as `rbd` takes
/// it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RbdSpec {
    /// Pool name.
    pub pool: String,
    /// RBD namespace of the pool (`None`: the default namespace).
    pub namespace: Option<String>,
    /// Image name.
    pub image: String,
    /// Snapshot name, if any.
    pub snap: Option<String>,
}

impl RbdSpec {
    /// Parses `POOL[/NAMESPACE]/IMAGE[@SNAP]`.
    pub fn parse(input: &str) -> Result<Self, RbdError> {
        let bad = |reason: &'static str| RbdError::BadSpec {
            input: input.to_owned(),
            reason,
        };
        let (path, snap) = match input.split_once('@') {
            Some((path, snap)) => (path, Some(snap)),
            None => (input, None),
        };
        let parts: Vec<&str> = path.split('/').collect();
        let (pool, namespace, image) = match parts.as_slice() {
            [pool, image] => (*pool, None, *image),
            [pool, namespace, image] => (*pool, Some(*namespace), *image),
            [_] => return Err(bad("missing POOL/")),
            _ => return Err(bad("too many '/'")),
        };
        let valid = |s: &str| !s.is_empty() && !s.contains(['/', '@', '\0']);
        if !valid(pool) {
            return Err(bad("empty or invalid pool name"));
        }
        if namespace.is_some_and(|n| !valid(n)) {
            return Err(bad("empty or invalid namespace name"));
        }
        if !valid(image) {
            return Err(bad("empty or invalid image name"));
        }
        if snap.is_some_and(|s| !valid(s)) {
            return Err(bad("empty or invalid snapshot name"));
        }
        Ok(Self {
            pool: pool.to_owned(),
            namespace: namespace.map(str::to_owned),
            image: image.to_owned(),
            snap: snap.map(str::to_owned),
        })
    }

    /// Whether both address the same image (pool, namespace and name;
    /// snapshots aside).
    pub fn same_image(&self, other: &RbdSpec) -> bool {
        self.pool == other.pool && self.namespace == other.namespace && self.image == other.image
    }

    /// Connects to `cluster` (or reuses a live connection) and opens this
    /// address' pool, in its namespace.
    pub fn open_pool(&self, cluster: &ClusterSpec) -> Result<Arc<Pool>, RbdError> {
        open_pool(cluster, &self.pool, self.namespace.as_deref())
    }
}

impl std::fmt::Display for RbdSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/", self.pool)?;
        if let Some(namespace) = &self.namespace {
            write!(f, "{namespace}/")?;
        }
        write!(f, "{}", self.image)?;
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
    #[error("bad rbd address {input:?}: {reason} (expected POOL[/NAMESPACE]/IMAGE[@SNAP])")]
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

/// Connects to the cluster (or reuses a live connection) and opens `pool`,
/// in RBD namespace `namespace` (`None`: the pool's default namespace).
pub fn open_pool(
    cluster: &ClusterSpec,
    pool: &str,
    namespace: Option<&str>,
) -> Result<Arc<Pool>, RbdError> {
    let connection = {
        let mut guard = crate::sync_util::lock(&CLUSTERS);
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
    Ok(connection.pool(pool, namespace)?)
}

/// Drops `connection` from the cache of live connections, so that the
/// next [`open_pool`] of `cluster` connects as a new client: what a client
/// the cluster has blocklisted (fenced) needs, as its handle stays refused
/// for as long as it lives.
pub fn forget_connection(cluster: &ClusterSpec, connection: &Arc<Cluster>) {
    let mut guard = crate::sync_util::lock(&CLUSTERS);
    if let Some(map) = guard.as_mut() {
        let cached = map.get(cluster).and_then(Weak::upgrade);
        if cached.is_some_and(|c| Arc::ptr_eq(&c, connection)) {
            map.remove(cluster);
        }
    }
}

/// BLAKE3 (hex) of every byte of image `spec` (at its snapshot if it names
/// one, else its head), as `rbd export SPEC - | b3sum` would print it, and
/// the image size. Reads 4 MiB pieces, several in flight.
pub fn image_hash(cluster: &ClusterSpec, spec: &RbdSpec) -> Result<(String, u64), RbdError> {
    const PIECE: u64 = 4 << 20;
    const IN_FLIGHT: usize = 8;
    let pool = spec.open_pool(cluster)?;
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
        assert_eq!(RbdSpec::parse("p/i").unwrap().namespace, None);
        let s = RbdSpec::parse("rbd/tenant-1/vm1@snap-1").unwrap();
        assert_eq!(
            (
                s.pool.as_str(),
                s.namespace.as_deref(),
                s.image.as_str(),
                s.snap.as_deref()
            ),
            ("rbd", Some("tenant-1"), "vm1", Some("snap-1"))
        );
        assert_eq!(s.to_string(), "rbd/tenant-1/vm1@snap-1");
        assert_eq!(
            RbdSpec::parse("p/ns/i").unwrap().to_string(),
            "p/ns/i",
            "the display round-trips"
        );
        for bad in [
            "",
            "rbd",
            "/img",
            "rbd/",
            "rbd/img@",
            "a/b/c/d",
            "rbd/@s",
            "rbd//img",
            "/ns/img",
            "rbd/ns/",
            "rbd/ns/img@",
            "rbd/ns/@s",
            "rbd/img@a/b",
        ] {
            assert!(RbdSpec::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
