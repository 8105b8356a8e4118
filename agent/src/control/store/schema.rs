//! The SQL schema of `control.db` as an ordered list of migrations, and
//! opening a connection with the durability settings the store relies on
//! (WAL, `synchronous=FULL`, foreign keys). The schema version lives in
//! `PRAGMA user_version` and moves in the same transaction as the schema.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior};

use crate::control::error::{StoreError, StoreResult};

/// Schema migrations, in order: entry `i` takes the schema from version `i`
/// to `i + 1`. Never edit a released entry; append a new one.
const MIGRATIONS: &[&str] = &[
    // v1: the objects.
    r#"
    CREATE TABLE services (
        id                 INTEGER PRIMARY KEY,
        name               TEXT NOT NULL UNIQUE,
        local_endpoint     TEXT NOT NULL,
        remote_endpoint    TEXT NOT NULL,
        remote_fingerprint TEXT NOT NULL,
        created_at         INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE policies (
        id         INTEGER PRIMARY KEY,
        name       TEXT NOT NULL UNIQUE,
        schedule   TEXT NOT NULL,
        created_at INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE protection_groups (
        id              INTEGER PRIMARY KEY,
        name            TEXT NOT NULL UNIQUE,
        role            TEXT NOT NULL CHECK (role IN ('primary', 'standby')),
        new_primary     INTEGER NOT NULL DEFAULT 0 CHECK (new_primary IN (0, 1)),
        state           TEXT NOT NULL,
        service_id      INTEGER NOT NULL REFERENCES services(id) ON DELETE RESTRICT,
        remote_group_id INTEGER,
        remote_project  TEXT NOT NULL,
        policy_id       INTEGER REFERENCES policies(id) ON DELETE RESTRICT,
        retention       INTEGER CHECK (retention BETWEEN 1 AND 5),
        created_at      INTEGER NOT NULL,
        CHECK ((policy_id IS NULL) = (retention IS NULL))
    ) STRICT;
    CREATE INDEX protection_groups_service ON protection_groups(service_id);
    CREATE INDEX protection_groups_policy ON protection_groups(policy_id);
    CREATE TABLE resources (
        uri            TEXT PRIMARY KEY,
        group_id       INTEGER NOT NULL REFERENCES protection_groups(id) ON DELETE CASCADE,
        kind           TEXT NOT NULL CHECK (kind IN ('volume', 'vm_volume')),
        vm             TEXT,
        boot           INTEGER,
        size_bytes     INTEGER NOT NULL CHECK (size_bytes >= 0),
        standby_target TEXT NOT NULL,
        state          TEXT NOT NULL,
        CHECK ((kind = 'volume' AND vm IS NULL AND boot IS NULL)
            OR (kind = 'vm_volume' AND vm IS NOT NULL AND boot IN (0, 1)))
    ) STRICT;
    CREATE INDEX resources_group ON resources(group_id);
    CREATE TABLE recovery_points (
        id         INTEGER PRIMARY KEY,
        group_id   INTEGER NOT NULL REFERENCES protection_groups(id) ON DELETE CASCADE,
        name       TEXT NOT NULL,
        engine_rp  INTEGER NOT NULL CHECK (engine_rp >= 0),
        kind       TEXT NOT NULL CHECK (kind IN ('manual', 'policy')),
        created_at INTEGER NOT NULL,
        state      TEXT NOT NULL,
        UNIQUE (group_id, name),
        UNIQUE (group_id, engine_rp)
    ) STRICT;
    CREATE TABLE operations (
        id             INTEGER PRIMARY KEY,
        group_id       INTEGER REFERENCES protection_groups(id) ON DELETE SET NULL,
        group_name     TEXT,
        kind           TEXT NOT NULL,
        state          TEXT NOT NULL,
        failure_reason TEXT,
        started_at     INTEGER NOT NULL,
        finished_at    INTEGER,
        params         TEXT NOT NULL
    ) STRICT;
    CREATE INDEX operations_group ON operations(group_id);
    CREATE INDEX operations_running ON operations(state) WHERE state = 'running';
    "#,
    // v2: the journal records each operation's state plan (so a restarted
    // agent knows where to finish or roll back to); groups remember a
    // completed planned migration; recovery points remember a deletion the
    // standby has not heard of yet (link down).
    r#"
    ALTER TABLE operations ADD COLUMN transition TEXT;
    ALTER TABLE protection_groups ADD COLUMN migrated INTEGER NOT NULL DEFAULT 0
        CHECK (migrated IN (0, 1));
    ALTER TABLE recovery_points ADD COLUMN pending_remote_delete INTEGER NOT NULL DEFAULT 0
        CHECK (pending_remote_delete IN (0, 1));
    "#,
    // v3: one-time pairing secrets issued by `ferry service key` (only their
    // BLAKE3 hash is kept; a secret pairs once, before it expires).
    r#"
    CREATE TABLE pairing_secrets (
        secret_hash TEXT PRIMARY KEY,
        expires_at  INTEGER NOT NULL,
        used_at     INTEGER
    ) STRICT;
    "#,
    // v4: a primary group remembers a stop sync the standby has not heard of
    // yet (the link was down); it is delivered when the link is back.
    r#"
    ALTER TABLE protection_groups ADD COLUMN pending_remote_stop INTEGER NOT NULL DEFAULT 0
        CHECK (pending_remote_stop IN (0, 1));
    "#,
    // v5: the DR drill of a standby group (at most one): its phase, the
    // engine recovery point it pinned, and its volumes (JSON), so a
    // restarted agent still knows what to remove. A group is not deleted
    // from under its drill (RESTRICT): the rules refuse that first.
    r#"
    CREATE TABLE drills (
        group_id       INTEGER PRIMARY KEY REFERENCES protection_groups(id) ON DELETE RESTRICT,
        phase          TEXT NOT NULL CHECK (phase IN ('starting', 'active', 'ending')),
        engine_rp      INTEGER NOT NULL CHECK (engine_rp >= 0),
        recovery_point TEXT,
        started_at     INTEGER NOT NULL,
        volumes        TEXT NOT NULL
    ) STRICT;
    "#,
    // v6: after a failover, where each resource's volume is now (a file
    // path or an RBD image, as `file:`/`rbd:` URIs), for `group show`.
    r#"
    ALTER TABLE resources ADD COLUMN volume TEXT;
    "#,
    // v7: a group's RPO thresholds for `ferry health` (seconds; NULL: not
    // checked).
    r#"
    ALTER TABLE protection_groups ADD COLUMN rpo_warn_secs INTEGER CHECK (rpo_warn_secs > 0);
    ALTER TABLE protection_groups ADD COLUMN rpo_crit_secs INTEGER CHECK (rpo_crit_secs > 0);
    "#,
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

/// Applies migrations `current..target` in one transaction.
pub(super) fn migrate(conn: &mut Connection, path: &Path, target: usize) -> StoreResult<()> {
    let open_err = |what: &str| {
        let what = what.to_owned();
        let path = path.to_owned();
        move |source| StoreError::Open { path, what, source }
    };
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(open_err("begin migration"))?;
    let found: i64 = tx
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(open_err("read schema version"))?;
    let current = usize::try_from(found)
        .ok()
        .filter(|v| *v <= MIGRATIONS.len())
        .ok_or_else(|| StoreError::TooNew {
            path: path.to_owned(),
            found,
            supported: MIGRATIONS.len(),
        })?;
    if current >= target {
        return Ok(());
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().take(target).skip(current) {
        tx.execute_batch(sql)
            .map_err(|source| StoreError::Migration {
                path: path.to_owned(),
                version: i + 1,
                source,
            })?;
    }
    // `user_version` lives in the database header and is written by this
    // transaction: the schema and its version move together.
    tx.pragma_update(None, "user_version", target as i64)
        .and_then(|()| tx.commit())
        .map_err(|source| StoreError::Migration {
            path: path.to_owned(),
            version: target,
            source,
        })
}

pub(super) fn open_connection(path: &Path) -> StoreResult<Connection> {
    let err = |what: &str| {
        let what = what.to_owned();
        move |source| StoreError::Open {
            path: path.to_owned(),
            what,
            source,
        }
    };
    let conn = Connection::open(path).map_err(err("open"))?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(err("set busy timeout"))?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
        .map_err(err("enable WAL"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Open {
            path: path.to_owned(),
            what: format!("enable WAL (SQLite kept journal_mode={mode})"),
            source: rusqlite::Error::InvalidQuery,
        });
    }
    // FULL: a commit is on disk (WAL fsynced) before the call returns.
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(err("set synchronous=FULL"))?;
    conn.pragma_update(None, "foreign_keys", true)
        .map_err(err("enable foreign keys"))?;
    Ok(conn)
}
