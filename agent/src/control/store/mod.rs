//! The control shim's persistent store: one SQLite file (`control.db`) in
//! the agent's data dir, opened with WAL, `synchronous=FULL` and foreign keys
//! on, so every committed call survives SIGKILL and power loss and a call
//! that fails or is interrupted leaves nothing behind. The schema is
//! versioned with `PRAGMA user_version` and upgraded by an ordered list of
//! migrations applied in one transaction.
//!
//! Calls are short and synchronous. `Store` holds one connection: it is
//! `Send` but not `Sync`; an async caller keeps it behind a mutex and calls
//! it from `spawn_blocking` (or accepts a few-millisecond block). Reads take
//! `&self`, writes `&mut self`; every write is one `BEGIN IMMEDIATE`
//! transaction that re-checks its preconditions inside it.
//!
//! A site of several agents shares one store (`[control] store =
//! "rados"`): the same SQL runs on a local in-memory copy, and `shared/`
//! publishes every write transaction's rows to RADOS and reloads the copy
//! when another agent wrote (see `shared/mod.rs`). The methods below do
//! not know which of the two they run on: writes go through
//! [`Store::write`] and its [`WriteTx`], reads through `Store::conn`.
//!
//! Where things live: `schema.rs` (the migrations and connection settings),
//! `rows.rs` (row ↔ model conversions and the shared by-key reads),
//! `journal.rs` (operations and the group state changes they carry), and
//! one file per object kind: `services.rs`, `policies.rs`, `groups.rs`,
//! `resources.rs`, `recovery_points.rs`, `pairing.rs`, `drills.rs`.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, TransactionBehavior};

use self::rows::Ctx;
use self::schema::{migrate, open_connection};
use self::shared::rados::{RadosBackend, RadosLocation};
use self::shared::{Shared, SharedBackend};
use crate::control::error::{StoreError, StoreResult};

mod drills;
mod groups;
mod journal;
mod pairing;
mod policies;
mod recovery_points;
mod resources;
mod rows;
mod schema;
mod services;
pub mod shared;
#[cfg(test)]
mod tests;
mod write_tx;

pub use drills::NewDrill;
pub use journal::{NewOperation, OpResult};
pub use schema::SCHEMA_VERSION;
pub use write_tx::{CommitError, WriteTx};

/// The database's file name inside the data dir.
pub const DB_FILE_NAME: &str = "control.db";

/// The control store (see the module doc).
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    path: PathBuf,
    /// Where the rows are shared with the site's other agents (`None`: this
    /// agent's own SQLite file is the store).
    shared: Option<Shared>,
}

/// Which store an agent uses (`[control] store`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum StoreKind {
    /// `control.db` in the data dir (one agent per site).
    #[default]
    Sqlite,
    /// Shared with the site's other agents in a RADOS object.
    Rados(RadosLocation),
}

impl Store {
    /// Opens (creating if needed) `data_dir/control.db` and brings its
    /// schema up to [`SCHEMA_VERSION`].
    pub fn open(data_dir: &Path) -> StoreResult<Store> {
        Self::open_at_version(data_dir, SCHEMA_VERSION)
    }

    fn open_at_version(data_dir: &Path, version: usize) -> StoreResult<Store> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::CreateDir {
            path: data_dir.to_owned(),
            source,
        })?;
        let path = data_dir.join(DB_FILE_NAME);
        let mut conn = open_connection(&path)?;
        migrate(&mut conn, &path, version)?;
        Ok(Store {
            conn,
            path,
            shared: None,
        })
    }

    /// Opens the store `kind` names: [`Store::open`] for SQLite, or a
    /// local copy of the site's shared state in RADOS.
    pub fn open_kind(data_dir: &Path, kind: &StoreKind) -> StoreResult<Store> {
        match kind {
            StoreKind::Sqlite => Self::open(data_dir),
            StoreKind::Rados(at) => {
                let backend = RadosBackend::open(at).map_err(|source| StoreError::Shared {
                    context: format!("open the shared control state in pool {}", at.pool),
                    source,
                })?;
                Self::open_shared(Box::new(backend))
            }
        }
    }

    /// A store whose rows live in `backend`, shared with other agents; the
    /// local copy is in memory, loaded from the backend now.
    pub fn open_shared(backend: Box<dyn SharedBackend>) -> StoreResult<Store> {
        let path = PathBuf::from(backend.describe());
        let open_err = |what: &str| {
            let (path, what) = (path.clone(), what.to_owned());
            move |source| StoreError::Open { path, what, source }
        };
        let mut conn = Connection::open_in_memory().map_err(open_err("open the local copy"))?;
        conn.pragma_update(None, "foreign_keys", true)
            .map_err(open_err("enable foreign keys"))?;
        migrate(&mut conn, &path, SCHEMA_VERSION)?;
        let shared = Shared::attach(&conn, backend, SCHEMA_VERSION).map_err(|source| {
            StoreError::Shared {
                context: "load the shared control state".into(),
                source,
            }
        })?;
        Ok(Store {
            conn,
            path,
            shared: Some(shared),
        })
    }

    /// The connection reads run on: for a shared store, first brought up
    /// to date when another agent wrote.
    fn conn(&self) -> &Connection {
        if let Some(shared) = &self.shared {
            shared.refresh_for_read(&self.conn);
        }
        &self.conn
    }

    /// The database file (for a shared store: where its rows live).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version of the open database.
    pub fn schema_version(&self) -> StoreResult<usize> {
        let v: i64 = self
            .conn()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .ctx(|| "read schema version".into())?;
        Ok(usize::try_from(v).unwrap_or(0))
    }

    /// Begins a write: one `BEGIN IMMEDIATE` transaction (the per-object
    /// files call this for every change). For a shared store, first takes
    /// the site's write lock and brings the local copy up to date; the
    /// commit publishes the transaction's rows (see [`WriteTx`]).
    fn write(&mut self, what: impl FnOnce() -> String) -> StoreResult<WriteTx<'_>> {
        let Store { conn, shared, .. } = self;
        if let Some(shared) = shared.as_ref() {
            if let Err(source) = shared.begin_write(conn) {
                return Err(StoreError::Shared {
                    context: format!("begin a shared write to {}", what()),
                    source,
                });
            }
        }
        match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
            Ok(tx) => Ok(WriteTx::new(tx, shared.as_ref())),
            Err(source) => {
                if let Some(shared) = shared.as_ref() {
                    shared.release();
                }
                Err(StoreError::Sqlite {
                    context: format!("begin transaction to {}", what()),
                    source,
                })
            }
        }
    }

    #[cfg(test)]
    fn connection(&mut self) -> &mut Connection {
        &mut self.conn
    }
}
