//! The RADOS [`SharedBackend`]: one object per site (`ferry.control` in
//! the configured pool and namespace) whose omap holds every row
//! (`t/TABLE/ROWID`), `version` and `schema`. A write is one RADOS write
//! op guarded by `version == v`; the write lock is a `cls_lock` exclusive
//! lock with a duration on the same object (a dead writer's lock expires);
//! a watch on the object tells this agent at once when another wrote.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_engine::sys::librados::lock::LockMode;
use ferry_engine::sys::librados::omap::{parse_version, version_bytes, Create, WriteOp};
use ferry_engine::sys::librados::watch::Watch;
use ferry_engine::sys::librados::{Cluster, ClusterSpec, Pool};

use super::delta::{decode_log, encode_log, log_key, trimmed_log_key, Delta, LOG_KEEP};
use super::{RowChanges, SharedBackend, SharedError, Snapshot};

/// The control object of a site.
pub const OBJECT: &str = "ferry.control";
/// The write lock's name on it.
const LOCK: &str = "ferry.control.write";
/// How long a write may hold the lock before others may take it over (a
/// write is a few round trips; this bounds the wait after a writer died).
const LOCK_DURATION: Duration = Duration::from_secs(30);
/// How long a writer waits for the lock before giving up.
const LOCK_WAIT: Duration = Duration::from_secs(60);
/// How long a writer waits for the other agents to acknowledge its
/// notification (a live agent acks at once: its handler only sets a flag).
/// Until the OSDs drop a dead agent's watch ([`WATCH_TIMEOUT`]) each
/// write waits this long for it; a reader that missed a notification
/// still catches up by its periodic version check.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the OSDs keep the watch of an agent they lost (librados pings
/// a watch every 5 s; the OSD default is 30 s).
const WATCH_TIMEOUT: Duration = Duration::from_secs(15);

/// Where a site's shared control state lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RadosLocation {
    /// The cluster and user.
    pub cluster: ClusterSpec,
    /// The pool.
    pub pool: String,
    /// The RADOS namespace (`None`: the pool's default).
    pub namespace: Option<String>,
}

/// The RADOS backend of one agent.
pub struct RadosBackend {
    pool: Arc<Pool>,
    /// This agent's lock cookie.
    cookie: String,
    changed: Arc<AtomicBool>,
    _watch: Watch,
    describe: String,
}

fn parse_u64(key: &str, bytes: Option<&Vec<u8>>) -> Result<u64, SharedError> {
    parse_version(bytes).ok_or_else(|| SharedError::Decode {
        key: key.to_owned(),
        reason: format!(
            "not a number: {:?}",
            String::from_utf8_lossy(bytes.map(Vec::as_slice).unwrap_or_default())
        ),
    })
}

impl RadosBackend {
    /// Connects, makes sure the control object exists and watches it.
    pub fn open(at: &RadosLocation) -> Result<Self, SharedError> {
        let cluster = Cluster::connect(&at.cluster)?;
        let pool = cluster.pool(&at.pool, at.namespace.as_deref())?;
        pool.write(OBJECT, &WriteOp::new().create(Create::IfMissing))?;
        let changed = Arc::new(AtomicBool::new(false));
        let flag = changed.clone();
        let watch = Watch::new(&pool, OBJECT, Some(WATCH_TIMEOUT), move |_event| {
            // A notification or a re-armed watch: either way, re-read.
            flag.store(true, Ordering::SeqCst);
        })?;
        let cookie = format!("{}-{}", cluster.instance_id()?, std::process::id());
        let describe = format!("rados:{}/{OBJECT} in {}", pool.name(), cluster.describe());
        tracing::info!(store = %describe, "control state shared with the site's agents in RADOS");
        Ok(Self {
            describe,
            pool,
            cookie,
            changed,
            _watch: watch,
        })
    }
}

impl SharedBackend for RadosBackend {
    fn lock(&self) -> Result<(), SharedError> {
        let start = Instant::now();
        let mut pause = Duration::from_millis(10);
        loop {
            match self.pool.lock_exclusive(
                OBJECT,
                LOCK,
                &self.cookie,
                "ferry control write",
                Some(LOCK_DURATION),
                LockMode::MayRenew,
            ) {
                Ok(()) => return Ok(()),
                Err(e) if e.is_busy() => {}
                Err(e) => return Err(e.into()),
            }
            if start.elapsed() > LOCK_WAIT {
                return Err(SharedError::LockTimeout {
                    waited: start.elapsed(),
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    fn unlock(&self) {
        if let Err(e) = self.pool.unlock(OBJECT, LOCK, &self.cookie) {
            // Expired and taken over, or the cluster is away: it expires.
            tracing::warn!(error = %e, "releasing the control write lock");
        }
    }

    fn version(&self) -> Result<u64, SharedError> {
        match self.pool.omap_get(OBJECT, &["version"]) {
            Ok(vals) => parse_u64("version", vals.get("version")),
            Err(e) if e.is_not_found() => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    fn load(&self) -> Result<Snapshot, SharedError> {
        // The rows come in pages (separate reads): a version that did not
        // move from before the first to after the last says they are one
        // state.
        loop {
            let before = self.version()?;
            let mut snapshot = Snapshot {
                version: before,
                ..Snapshot::default()
            };
            for (key, value) in self.pool.omap_list(OBJECT, "")? {
                match key.as_str() {
                    "version" => {}
                    "schema" => snapshot.schema = parse_u64("schema", Some(&value))?,
                    k if k.starts_with("t/") => {
                        snapshot.rows.insert(key, value);
                    }
                    _ => {}
                }
            }
            if self.version()? == before {
                return Ok(snapshot);
            }
        }
    }

    fn changes_since(&self, from: u64) -> Result<Option<Delta>, SharedError> {
        // Two reads: the change lists up to the version, then the rows
        // with the version in the same read (so they are at that version;
        // a write between the two sends us round again).
        for _ in 0..3 {
            let version = self.version()?;
            if version < from || version - from > LOG_KEEP {
                return Ok(None);
            }
            let logs: Vec<String> = (from + 1..=version).map(log_key).collect();
            let found = if logs.is_empty() {
                Default::default()
            } else {
                let refs: Vec<&str> = logs.iter().map(String::as_str).collect();
                self.pool.omap_get(OBJECT, &refs)?
            };
            if found.len() != logs.len() {
                return Ok(None); // written before the log existed, or trimmed
            }
            let mut keys = BTreeSet::new();
            for (key, bytes) in &found {
                decode_log(key, bytes, &mut keys)?;
            }
            let mut wanted: Vec<&str> = keys.iter().map(String::as_str).collect();
            wanted.extend(["version", "schema"]);
            let mut values = self.pool.omap_get(OBJECT, &wanted)?;
            if parse_u64("version", values.get("version"))? != version {
                continue;
            }
            let schema = parse_u64("schema", values.get("schema"))?;
            let rows = keys
                .into_iter()
                .map(|key| {
                    let row = values.remove(&key);
                    (key, row)
                })
                .collect();
            return Ok(Some(Delta {
                version,
                schema,
                rows,
            }));
        }
        Ok(None)
    }

    fn publish(&self, expected: u64, schema: u64, changes: &RowChanges) -> Result<(), SharedError> {
        let mut op = WriteOp::new()
            .create(Create::IfMissing)
            .guard_eq("version", &version_bytes(expected));
        op.set("version", &version_bytes(expected + 1));
        op.set("schema", schema.to_string().as_bytes());
        op.set(&log_key(expected + 1), &encode_log(changes));
        if let Some(old) = trimmed_log_key(expected + 1) {
            op.remove(&old);
        }
        for (key, row) in changes {
            match row {
                Some(row) => op.set(key, row),
                None => op.remove(key),
            };
        }
        match self.pool.write(OBJECT, &op) {
            Ok(()) => Ok(()),
            Err(e) if e.is_canceled() => Err(SharedError::Conflict { expected }),
            Err(e) => Err(e.into()),
        }
    }

    fn notify(&self, version: u64) {
        match self
            .pool
            .notify(OBJECT, version.to_string().as_bytes(), NOTIFY_TIMEOUT)
        {
            Ok(reply) if !reply.timeouts.is_empty() => tracing::warn!(
                missing = reply.timeouts.len(),
                "agents of the site did not acknowledge a control change in time"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "notifying the site's agents of a control change"),
        }
    }

    fn take_changed(&self) -> bool {
        self.changed.swap(false, Ordering::SeqCst)
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_round_trip_and_zero_is_the_missing_key() {
        assert_eq!(version_bytes(0), Vec::<u8>::new());
        assert_eq!(parse_u64("version", None).unwrap(), 0);
        assert_eq!(parse_u64("version", Some(&version_bytes(0))).unwrap(), 0);
        assert_eq!(parse_u64("version", Some(&version_bytes(42))).unwrap(), 42);
        assert!(parse_u64("version", Some(&b"x1".to_vec())).is_err());
    }
}
