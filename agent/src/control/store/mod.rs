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
//! Where things live: `schema.rs` (the migrations and connection settings),
//! `rows.rs` (row ↔ model conversions and the shared by-key reads),
//! `journal.rs` (operations and the group state changes they carry), and
//! one file per object kind: `services.rs`, `policies.rs`, `groups.rs`,
//! `resources.rs`, `recovery_points.rs`, `pairing.rs`, `drills.rs`.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, Transaction, TransactionBehavior};

use self::rows::Ctx;
use self::schema::{migrate, open_connection};
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
#[cfg(test)]
mod tests;

pub use drills::NewDrill;
pub use journal::{NewOperation, OpResult};
pub use schema::SCHEMA_VERSION;

/// The database's file name inside the data dir.
pub const DB_FILE_NAME: &str = "control.db";

/// The control store (see the module doc).
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    path: PathBuf,
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
        Ok(Store { conn, path })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version of the open database.
    pub fn schema_version(&self) -> StoreResult<usize> {
        let v: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .ctx(|| "read schema version".into())?;
        Ok(usize::try_from(v).unwrap_or(0))
    }

    /// Begins a write: one `BEGIN IMMEDIATE` transaction (the per-object
    /// files call this for every change).
    fn write(&mut self, what: impl FnOnce() -> String) -> StoreResult<Transaction<'_>> {
        self.conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .ctx(|| format!("begin transaction to {}", what()))
    }

    #[cfg(test)]
    fn connection(&mut self) -> &mut Connection {
        &mut self.conn
    }
}
