//! A control store shared by the agents of one site. The SQL logic of the
//! store stays as it is; what changes is where its rows persist. A
//! [`SharedBackend`] (RADOS in production: [`rados`]) holds every row of
//! every table as a key `t/TABLE/ROWID` with a version key; each agent
//! keeps a local in-memory SQLite copy the store's queries run on.
//!
//! A write ([`Shared::begin_write`] … [`Shared::publish`] …
//! [`Shared::finish`]): take the site's write lock, reload the copy if the
//! shared version moved, run the transaction (SQLite's update hook notes
//! each row it touches), then before the local commit publish the touched
//! rows and `version + 1` in one write guarded by "version is still v", and
//! tell the other agents. A reader reloads when told (watch/notify) or,
//! for a missed notification, when a version check every few seconds
//! finds the version moved.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::types::{Value, ValueRef};
use rusqlite::Connection;

pub mod delta;
#[cfg(test)]
pub mod memory;
pub mod rados;

use delta::{apply_delta, Delta};

/// The tables of the schema, parents before children (the order rows are
/// inserted on a reload; removed in reverse).
pub const TABLES: &[&str] = &[
    "services",
    "policies",
    "protection_groups",
    "resources",
    "recovery_points",
    "operations",
    "drills",
    "pairing_secrets",
];

/// How often a reader checks the shared version although no notification
/// came (one may have been lost).
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// Why the shared part of a store failed.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    /// The Ceph cluster refused or failed a call.
    #[error(transparent)]
    Ceph(#[from] ferry_engine::rbd::CephError),
    /// Another writer moved the version between our read and our write
    /// (the write lock expired under us); nothing was written.
    #[error("the shared control state moved from version {expected} while this agent wrote; nothing was written")]
    Conflict {
        /// The version the write was based on.
        expected: u64,
    },
    /// The site's write lock stayed held by another agent.
    #[error("another agent of the site held the control write lock for {waited:?}")]
    LockTimeout {
        /// How long this agent waited.
        waited: Duration,
    },
    /// A shared key or value cannot be read.
    #[error("shared control key {key}: {reason}")]
    Decode {
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The shared state was written by a newer ferry.
    #[error("the shared control state has schema version {found}, newer than this agent's {supported}: upgrade ferry on this node")]
    TooNew {
        /// Version found.
        found: u64,
        /// Newest version this build knows.
        supported: u64,
    },
    /// The local copy could not be loaded or read.
    #[error("local copy of the shared control state: {0}")]
    Local(#[from] rusqlite::Error),
}

/// Every shared row at one version.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The version (0: nothing was ever written).
    pub version: u64,
    /// The schema version of the agent that wrote last (0 when none).
    pub schema: u64,
    /// `t/TABLE/ROWID` → row.
    pub rows: BTreeMap<String, Vec<u8>>,
}

/// The rows one transaction changed: key → new row, or `None` when gone.
pub type RowChanges = BTreeMap<String, Option<Vec<u8>>>;

/// Where the rows of a shared store persist (see the module doc).
pub trait SharedBackend: Send {
    /// Takes the site's write lock (waits while another agent holds it).
    fn lock(&self) -> Result<(), SharedError>;
    /// Releases it.
    fn unlock(&self);
    /// The current version.
    fn version(&self) -> Result<u64, SharedError>;
    /// Every row, consistent at one version.
    fn load(&self) -> Result<Snapshot, SharedError>;
    /// The rows changed since version `from`, consistent at the current
    /// version, when the backend still knows them ([`delta`]); `None`
    /// sends the caller to [`SharedBackend::load`].
    fn changes_since(&self, from: u64) -> Result<Option<Delta>, SharedError> {
        let _ = from;
        Ok(None)
    }
    /// Applies `changes`, sets the version to `expected + 1` and the
    /// schema version to `schema`, only if the version is still `expected`
    /// ([`SharedError::Conflict`] otherwise, and nothing changes).
    fn publish(&self, expected: u64, schema: u64, changes: &RowChanges) -> Result<(), SharedError>;
    /// Tells the other agents that the version is now `version`.
    fn notify(&self, version: u64);
    /// Whether another agent said it changed something since the last
    /// call (clears the flag).
    fn take_changed(&self) -> bool;
    /// Where the rows live, for messages.
    fn describe(&self) -> String;
}

/// The key of row `rowid` of `table`.
pub fn row_key(table: &str, rowid: i64) -> String {
    format!("t/{table}/{rowid:020}")
}

/// The table a row key belongs to.
fn key_table(key: &str) -> Option<&str> {
    key.strip_prefix("t/")?.split('/').next()
}

fn encode_value(v: ValueRef<'_>) -> serde_json::Value {
    match v {
        ValueRef::Null => serde_json::Value::Null,
        ValueRef::Integer(i) => i.into(),
        ValueRef::Real(f) => serde_json::json!({ "real": f }),
        ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned().into(),
        ValueRef::Blob(b) => serde_json::json!({ "blob": hex::encode(b) }),
    }
}

fn decode_value(key: &str, v: &serde_json::Value) -> Result<Value, SharedError> {
    let bad = |reason: &str| SharedError::Decode {
        key: key.to_owned(),
        reason: reason.to_owned(),
    };
    Ok(match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Number(n) => Value::Integer(
            n.as_i64()
                .ok_or_else(|| bad("a number that is not an integer"))?,
        ),
        serde_json::Value::String(s) => Value::Text(s.clone()),
        serde_json::Value::Object(o) => match (o.get("real"), o.get("blob")) {
            (Some(r), None) => Value::Real(r.as_f64().ok_or_else(|| bad("real without a number"))?),
            (None, Some(serde_json::Value::String(h))) => {
                Value::Blob(hex::decode(h).map_err(|e| bad(&format!("blob: {e}")))?)
            }
            _ => return Err(bad("an object that is neither {real} nor {blob}")),
        },
        _ => return Err(bad("a value of an unknown kind")),
    })
}

/// Row `rowid` of `table` as stored in the shared state (a JSON object of
/// its columns plus `__rowid`), or `None` when it is gone.
pub fn read_row(conn: &Connection, table: &str, rowid: i64) -> rusqlite::Result<Option<Vec<u8>>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT rowid AS \"__rowid\", * FROM \"{table}\" WHERE rowid = ?1"
    ))?;
    let names: Vec<String> = stmt
        .column_names()
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let mut rows = stmt.query([rowid])?;
    let Some(row) = rows.next()? else {
        return Ok(None);
    };
    let mut obj = serde_json::Map::new();
    for (i, name) in names.iter().enumerate() {
        obj.insert(name.clone(), encode_value(row.get_ref(i)?));
    }
    Ok(Some(
        serde_json::Value::Object(obj).to_string().into_bytes(),
    ))
}

/// Whether `table` has a column aliasing its rowid (`INTEGER PRIMARY KEY`).
fn has_rowid_alias(conn: &Connection, table: &str) -> rusqlite::Result<bool> {
    let mut stmt = conn.prepare(&format!("PRAGMA table_info(\"{table}\")"))?;
    let pks: Vec<(String, i64)> = stmt
        .query_map([], |r| Ok((r.get::<_, String>(2)?, r.get::<_, i64>(5)?)))?
        .filter_map(Result::ok)
        .filter(|(_, pk)| *pk > 0)
        .collect();
    Ok(pks.len() == 1 && pks[0].0.eq_ignore_ascii_case("INTEGER"))
}

/// A row as stored: column name → value.
type JsonRow = serde_json::Map<String, serde_json::Value>;

/// Replaces every row of the local copy by `snapshot`'s, in one
/// transaction (foreign keys checked at its end).
pub fn reload(conn: &Connection, snapshot: &Snapshot) -> Result<(), SharedError> {
    let mut by_table: BTreeMap<&str, Vec<(&str, JsonRow)>> = BTreeMap::new();
    for (key, bytes) in &snapshot.rows {
        let table = key_table(key)
            .filter(|t| TABLES.contains(t))
            .ok_or_else(|| SharedError::Decode {
                key: key.clone(),
                reason: "not a row of a table this agent knows".into(),
            })?;
        let obj = match serde_json::from_slice(bytes) {
            Ok(serde_json::Value::Object(o)) => o,
            Ok(_) => serde_json::Map::new(),
            Err(e) => {
                return Err(SharedError::Decode {
                    key: key.clone(),
                    reason: e.to_string(),
                })
            }
        };
        by_table.entry(table).or_default().push((key, obj));
    }
    let tx = conn.unchecked_transaction()?;
    tx.execute_batch("PRAGMA defer_foreign_keys = ON")?;
    for table in TABLES.iter().rev() {
        tx.execute(&format!("DELETE FROM \"{table}\""), [])?;
    }
    for table in TABLES {
        let alias = has_rowid_alias(&tx, table)?;
        for (key, obj) in by_table.get(table).map(Vec::as_slice).unwrap_or(&[]) {
            let mut cols = Vec::new();
            let mut vals = Vec::new();
            for (name, v) in obj {
                if name == "__rowid" {
                    if alias {
                        continue;
                    }
                    cols.push("rowid".to_owned());
                } else {
                    cols.push(format!("\"{}\"", name.replace('"', "\"\"")));
                }
                vals.push(decode_value(key, v)?);
            }
            insert_row(&tx, table, &cols, vals)?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Inserts one row of `table`: quoted column names and their values.
fn insert_row(
    tx: &Connection,
    table: &str,
    cols: &[String],
    vals: Vec<Value>,
) -> rusqlite::Result<()> {
    let marks = vec!["?"; cols.len()].join(", ");
    tx.execute(
        &format!(
            "INSERT INTO \"{table}\" ({}) VALUES ({marks})",
            cols.join(", ")
        ),
        rusqlite::params_from_iter(vals),
    )?;
    Ok(())
}

/// The shared half of a [`super::Store`]: its backend, the version the
/// local copy holds, and the rows the open transaction touched.
pub struct Shared {
    backend: Box<dyn SharedBackend>,
    version: Cell<u64>,
    last_check: Cell<Instant>,
    touched: Arc<Mutex<BTreeSet<(String, i64)>>>,
    locked: Cell<bool>,
    /// The schema version of the local copy (this build's).
    schema: u64,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("backend", &self.backend.describe())
            .field("version", &self.version.get())
            .finish()
    }
}

impl Shared {
    /// Attaches `backend` to the local copy `conn` (at schema version
    /// `schema`): notes touched rows from now on and loads every shared
    /// row.
    pub fn attach(
        conn: &Connection,
        backend: Box<dyn SharedBackend>,
        schema: usize,
    ) -> Result<Self, SharedError> {
        let touched: Arc<Mutex<BTreeSet<(String, i64)>>> = Arc::default();
        let sink = touched.clone();
        conn.update_hook(Some(move |_action, db: &str, table: &str, rowid: i64| {
            if db == "main" && TABLES.contains(&table) {
                if let Ok(mut set) = sink.lock() {
                    set.insert((table.to_owned(), rowid));
                }
            }
        }));
        let shared = Self {
            backend,
            version: Cell::new(0),
            last_check: Cell::new(Instant::now()),
            touched,
            locked: Cell::new(false),
            schema: schema as u64,
        };
        shared.sync(conn, None)?;
        Ok(shared)
    }

    /// Where the rows live, for messages.
    pub fn describe(&self) -> String {
        self.backend.describe()
    }

    /// The version the local copy holds.
    pub fn version(&self) -> u64 {
        self.version.get()
    }

    /// Reloads the local copy unless it already holds `known` (the
    /// current version, when the caller just read it).
    fn sync(&self, conn: &Connection, known: Option<u64>) -> Result<(), SharedError> {
        if known == Some(self.version.get()) {
            return Ok(());
        }
        if self.catch_up(conn)? {
            return Ok(());
        }
        let snapshot = self.backend.load()?;
        if snapshot.schema > self.schema {
            return Err(SharedError::TooNew {
                found: snapshot.schema,
                supported: self.schema,
            });
        }
        if snapshot.version != self.version.get() || known.is_none() {
            reload(conn, &snapshot)?;
            tracing::debug!(
                version = snapshot.version,
                rows = snapshot.rows.len(),
                "reloaded the shared control state"
            );
            self.version.set(snapshot.version);
        }
        Ok(())
    }

    /// Brings a loaded copy to the current version by the rows changed
    /// since its own ([`delta`]); false when that cannot be done (nothing
    /// loaded yet, the backend's log does not reach back, a newer schema,
    /// a delta that does not apply) and the caller reloads every row.
    fn catch_up(&self, conn: &Connection) -> Result<bool, SharedError> {
        let from = self.version.get();
        if from == 0 {
            return Ok(false);
        }
        let Some(delta) = self.backend.changes_since(from)? else {
            return Ok(false);
        };
        if delta.schema > self.schema || delta.version < from {
            return Ok(false);
        }
        if delta.version > from {
            if let Err(error) = apply_delta(conn, &delta) {
                tracing::warn!(%error, from, to = delta.version, "the shared control changes did not apply; reloading every row");
                return Ok(false);
            }
            tracing::debug!(
                from,
                version = delta.version,
                rows = delta.rows.len(),
                "caught up with the shared control state"
            );
        }
        self.version.set(delta.version);
        Ok(true)
    }

    /// Before a read: reloads if another agent said it wrote, or if the
    /// last check is old and the version moved. A failure leaves the
    /// local copy as it is (logged): reads go on from it.
    pub fn refresh_for_read(&self, conn: &Connection) {
        let told = self.backend.take_changed();
        if !told && self.last_check.get().elapsed() < CHECK_EVERY {
            return;
        }
        self.last_check.set(Instant::now());
        let result = self
            .backend
            .version()
            .and_then(|v| self.sync(conn, Some(v)));
        if let Err(e) = result {
            tracing::warn!(error = %e, store = %self.describe(), "cannot refresh the control state; reading the local copy");
        }
    }

    /// Before a write transaction: takes the site's write lock and brings
    /// the local copy to the current version.
    pub fn begin_write(&self, conn: &Connection) -> Result<(), SharedError> {
        self.backend.lock()?;
        self.locked.set(true);
        let _ = self.backend.take_changed();
        let result = self
            .backend
            .version()
            .and_then(|v| self.sync(conn, Some(v)));
        if let Err(e) = result {
            self.release();
            return Err(e);
        }
        self.last_check.set(Instant::now());
        if let Ok(mut set) = self.touched.lock() {
            set.clear();
        }
        Ok(())
    }

    /// Before the local commit: publishes the rows the transaction
    /// touched (as `tx` sees them). Returns the new version, or `None`
    /// when nothing changed.
    pub fn publish(&self, tx: &Connection) -> Result<Option<u64>, SharedError> {
        let touched = match self.touched.lock() {
            Ok(mut set) => std::mem::take(&mut *set),
            Err(_) => BTreeSet::new(),
        };
        if touched.is_empty() {
            return Ok(None);
        }
        let mut changes = RowChanges::new();
        for (table, rowid) in touched {
            changes.insert(row_key(&table, rowid), read_row(tx, &table, rowid)?);
        }
        let expected = self.version.get();
        self.backend.publish(expected, self.schema, &changes)?;
        Ok(Some(expected + 1))
    }

    /// After the transaction ended: records the new version (when it
    /// committed one), releases the lock and tells the other agents.
    pub fn finish(&self, new_version: Option<u64>) {
        if let Some(v) = new_version {
            self.version.set(v);
        }
        self.release();
        if let Some(v) = new_version {
            self.backend.notify(v);
        }
    }

    /// Releases the write lock if held (a transaction that did not commit).
    pub fn release(&self) {
        if self.locked.replace(false) {
            self.backend.unlock();
        }
    }

    /// The local commit failed after the rows were published: the copy
    /// no longer matches; the next access reloads it.
    pub fn invalidate(&self) {
        self.version.set(u64::MAX);
    }
}
