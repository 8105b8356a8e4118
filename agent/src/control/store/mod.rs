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

use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_protocol::AgentId;
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, Type, ValueRef};
use rusqlite::{
    params, Connection, OptionalExtension, Row, ToSql, Transaction, TransactionBehavior,
};

use super::error::{StoreError, StoreResult};
use super::model::{
    Group, GroupId, GroupState, NewGroup, NewRecoveryPoint, NewResource, NewService, OpKind,
    OpState, Operation, OperationId, Outcome, Policy, PolicyBinding, PolicyId, RecoveryPoint,
    Resource, ResourceKind, ResourceState, Retention, Role, RpId, RpKind, RpState, Service,
    ServiceId, Timestamp, Transition, MAX_MANUAL_RECOVERY_POINTS, MAX_RESOURCES_PER_GROUP,
};
use super::rules::{self, GroupView, OpRequest};

/// The database's file name inside the data dir.
pub const DB_FILE_NAME: &str = "control.db";

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
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

/// How an operation ended, for [`Store::finish_operation`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpResult {
    /// It worked: the group takes the transition's success outcome.
    Succeeded,
    /// It failed: the group takes the transition's failure state.
    Failed(String),
    /// It was undone: the group goes back to the state it started from.
    RolledBack,
}

/// A journal entry to write together with a group state change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewOperation {
    /// What it does.
    pub kind: OpKind,
    /// The state plan, if any (recorded for restart recovery).
    pub transition: Option<Transition>,
    /// Parameters the orchestrator needs to finish it after a restart.
    pub params: serde_json::Value,
}

/// The control store (see the module doc).
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

trait Ctx<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> StoreResult<T>;
}

impl<T> Ctx<T> for rusqlite::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> StoreResult<T> {
        self.map_err(|source| StoreError::Sqlite {
            context: what(),
            source,
        })
    }
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
    )
}

fn to_i64(what: &'static str, value: u64) -> StoreResult<i64> {
    i64::try_from(value).map_err(|_| StoreError::OutOfRange { what, value })
}

fn to_json(what: &'static str, value: &impl serde::Serialize) -> StoreResult<String> {
    serde_json::to_string(value).map_err(|source| StoreError::Json { what, source })
}

// Column conversions: enums as their snake_case text, ids and times as
// integers. A value this build does not know is a conversion error naming
// the column, never a panic.
macro_rules! sql_text_enum {
    ($($t:ty),+) => {$(
        impl ToSql for $t {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.as_str()))
            }
        }
        impl FromSql for $t {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                value.as_str()?.parse().map_err(|e| FromSqlError::Other(Box::new(e)))
            }
        }
    )+};
}
sql_text_enum!(Role, GroupState, ResourceState, RpKind, RpState, OpKind);

macro_rules! sql_i64 {
    ($($t:ty),+) => {$(
        impl ToSql for $t {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.0))
            }
        }
        impl FromSql for $t {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                value.as_i64().map(Self)
            }
        }
    )+};
}
sql_i64!(ServiceId, GroupId, PolicyId, RpId, OperationId, Timestamp);

fn conversion_error(
    idx: usize,
    err: impl std::error::Error + Send + Sync + 'static,
) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(idx, Type::Text, Box::new(err))
}

fn json_column<T: serde::de::DeserializeOwned>(row: &Row<'_>, idx: usize) -> rusqlite::Result<T> {
    let text: String = row.get(idx)?;
    serde_json::from_str(&text).map_err(|e| conversion_error(idx, e))
}

fn u64_column(row: &Row<'_>, idx: usize) -> rusqlite::Result<u64> {
    let v: i64 = row.get(idx)?;
    u64::try_from(v).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(idx, v))
}

#[derive(Debug, thiserror::Error)]
#[error("bad agent fingerprint {0:?}")]
struct BadFingerprint(String);

const SERVICE_COLS: &str =
    "id, name, local_endpoint, remote_endpoint, remote_fingerprint, created_at";

fn service_row(row: &Row<'_>) -> rusqlite::Result<Service> {
    let fp: String = row.get(4)?;
    let remote_fingerprint =
        AgentId::from_hex(&fp).ok_or_else(|| conversion_error(4, BadFingerprint(fp.clone())))?;
    Ok(Service {
        id: row.get(0)?,
        name: row.get(1)?,
        local_endpoint: row.get(2)?,
        remote_endpoint: row.get(3)?,
        remote_fingerprint,
        created_at: row.get(5)?,
    })
}

const GROUP_COLS: &str = "id, name, role, new_primary, migrated, state, service_id, \
     remote_group_id, remote_project, policy_id, retention, created_at";

#[derive(Debug, thiserror::Error)]
#[error("policy binding with retention {0:?} and policy {1:?} (both or neither, retention 1..=5)")]
struct BadBinding(Option<i64>, Option<i64>);

fn group_row(row: &Row<'_>) -> rusqlite::Result<Group> {
    let policy_id: Option<PolicyId> = row.get(9)?;
    let retention: Option<i64> = row.get(10)?;
    let policy = match (policy_id, retention) {
        (None, None) => None,
        (Some(policy_id), Some(n)) => {
            let retention = u8::try_from(n)
                .ok()
                .and_then(|n| Retention::new(n).ok())
                .ok_or_else(|| conversion_error(10, BadBinding(Some(n), Some(policy_id.0))))?;
            Some(PolicyBinding {
                policy_id,
                retention,
            })
        }
        (p, r) => return Err(conversion_error(9, BadBinding(r, p.map(|p| p.0)))),
    };
    Ok(Group {
        id: row.get(0)?,
        name: row.get(1)?,
        role: row.get(2)?,
        new_primary: row.get(3)?,
        migrated: row.get(4)?,
        state: row.get(5)?,
        service_id: row.get(6)?,
        remote_group_id: row.get(7)?,
        remote_project: row.get(8)?,
        policy,
        created_at: row.get(11)?,
    })
}

const RESOURCE_COLS: &str = "uri, group_id, kind, vm, boot, size_bytes, standby_target, state";

#[derive(Debug, thiserror::Error)]
#[error("resource kind {0:?} without its VM fields")]
struct BadResourceKind(String);

fn resource_row(row: &Row<'_>) -> rusqlite::Result<Resource> {
    let kind: String = row.get(2)?;
    let vm: Option<String> = row.get(3)?;
    let boot: Option<bool> = row.get(4)?;
    let kind = match (kind.as_str(), vm, boot) {
        ("volume", None, None) => ResourceKind::Volume,
        ("vm_volume", Some(vm), Some(boot)) => ResourceKind::VmVolume { vm, boot },
        _ => return Err(conversion_error(2, BadResourceKind(kind))),
    };
    Ok(Resource {
        uri: row.get(0)?,
        group_id: row.get(1)?,
        kind,
        size_bytes: u64_column(row, 5)?,
        standby_target: row.get(6)?,
        state: row.get(7)?,
    })
}

const RP_COLS: &str =
    "id, group_id, name, engine_rp, kind, created_at, state, pending_remote_delete";

fn rp_row(row: &Row<'_>) -> rusqlite::Result<RecoveryPoint> {
    Ok(RecoveryPoint {
        id: row.get(0)?,
        group_id: row.get(1)?,
        name: row.get(2)?,
        engine_rp: u64_column(row, 3)?,
        kind: row.get(4)?,
        created_at: row.get(5)?,
        state: row.get(6)?,
        pending_remote_delete: row.get(7)?,
    })
}

const POLICY_COLS: &str = "id, name, schedule, created_at";

fn policy_row(row: &Row<'_>) -> rusqlite::Result<Policy> {
    Ok(Policy {
        id: row.get(0)?,
        name: row.get(1)?,
        schedule: json_column(row, 2)?,
        created_at: row.get(3)?,
    })
}

const OP_COLS: &str = "id, group_id, group_name, kind, state, failure_reason, transition, \
     started_at, finished_at, params";

#[derive(Debug, thiserror::Error)]
#[error("operation state {0:?}")]
struct BadOpState(String);

fn op_row(row: &Row<'_>) -> rusqlite::Result<Operation> {
    let state: String = row.get(4)?;
    let reason: Option<String> = row.get(5)?;
    let state = match (state.as_str(), reason) {
        ("running", _) => OpState::Running,
        ("succeeded", _) => OpState::Succeeded,
        ("failed", reason) => OpState::Failed {
            reason: reason.unwrap_or_default(),
        },
        ("rolled_back", _) => OpState::RolledBack,
        _ => return Err(conversion_error(4, BadOpState(state))),
    };
    let transition: Option<String> = row.get(6)?;
    let transition = match transition {
        None => None,
        Some(text) => Some(serde_json::from_str(&text).map_err(|e| conversion_error(6, e))?),
    };
    Ok(Operation {
        id: row.get(0)?,
        group_id: row.get(1)?,
        group_name: row.get(2)?,
        kind: row.get(3)?,
        state,
        transition,
        started_at: row.get(7)?,
        finished_at: row.get(8)?,
        params: json_column(row, 9)?,
    })
}

/// Applies migrations `current..target` in one transaction.
fn migrate(conn: &mut Connection, path: &Path, target: usize) -> StoreResult<()> {
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

fn open_connection(path: &Path) -> StoreResult<Connection> {
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

    fn write(&mut self, what: impl FnOnce() -> String) -> StoreResult<Transaction<'_>> {
        self.conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .ctx(|| format!("begin transaction to {}", what()))
    }

    // ---------------------------------------------------------------- services

    /// Records a new service. Names are unique.
    pub fn create_service(&mut self, new: &NewService) -> StoreResult<Service> {
        let tx = self.write(|| format!("create service '{}'", new.name))?;
        let now = Timestamp::now();
        tx.execute(
            "INSERT INTO services (name, local_endpoint, remote_endpoint, remote_fingerprint, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![new.name, new.local_endpoint, new.remote_endpoint, new.remote_fingerprint.to_hex(), now],
        )
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::NameTaken { what: "service", name: new.name.clone() }
            } else {
                StoreError::Sqlite { context: format!("insert service '{}'", new.name), source: e }
            }
        })?;
        let id = ServiceId(tx.last_insert_rowid());
        let svc = get_service(&tx, id)?;
        tx.commit()
            .ctx(|| format!("commit service '{}'", new.name))?;
        Ok(svc)
    }

    /// The service with this id.
    pub fn service(&self, id: ServiceId) -> StoreResult<Service> {
        get_service(&self.conn, id)
    }

    /// The service with this name.
    pub fn service_by_name(&self, name: &str) -> StoreResult<Service> {
        self.conn
            .query_row(
                &format!("SELECT {SERVICE_COLS} FROM services WHERE name = ?1"),
                [name],
                service_row,
            )
            .optional()
            .ctx(|| format!("read service '{name}'"))?
            .ok_or_else(|| StoreError::NotFound {
                what: "service",
                key: format!("'{name}'"),
            })
    }

    /// All services, by id.
    pub fn services(&self) -> StoreResult<Vec<Service>> {
        query_all(
            &self.conn,
            &format!("SELECT {SERVICE_COLS} FROM services ORDER BY id"),
            [],
            service_row,
            || "list services".into(),
        )
    }

    /// Re-configures a service's endpoints and peer fingerprint.
    pub fn update_service(
        &mut self,
        id: ServiceId,
        local_endpoint: &str,
        remote_endpoint: &str,
        remote_fingerprint: AgentId,
    ) -> StoreResult<Service> {
        let tx = self.write(|| format!("update service {id}"))?;
        let n = tx
            .execute(
                "UPDATE services SET local_endpoint = ?2, remote_endpoint = ?3, remote_fingerprint = ?4
                 WHERE id = ?1",
                params![id, local_endpoint, remote_endpoint, remote_fingerprint.to_hex()],
            )
            .ctx(|| format!("update service {id}"))?;
        if n == 0 {
            return Err(StoreError::NotFound {
                what: "service",
                key: id.to_string(),
            });
        }
        let svc = get_service(&tx, id)?;
        tx.commit().ctx(|| format!("commit service {id}"))?;
        Ok(svc)
    }

    /// Deletes a service; refused (with the rule's reason) while any group
    /// uses it.
    pub fn delete_service(&mut self, id: ServiceId) -> StoreResult<()> {
        let tx = self.write(|| format!("delete service {id}"))?;
        let svc = get_service(&tx, id)?;
        let users: Vec<String> = query_all(
            &tx,
            "SELECT name FROM protection_groups WHERE service_id = ?1 ORDER BY name",
            [id],
            |r| r.get(0),
            || format!("list groups of service '{}'", svc.name),
        )?;
        rules::check_delete_service(&svc.name, &users)?;
        tx.execute("DELETE FROM services WHERE id = ?1", [id])
            .ctx(|| format!("delete service '{}'", svc.name))?;
        tx.commit()
            .ctx(|| format!("commit deletion of service '{}'", svc.name))
    }

    // ---------------------------------------------------------------- policies

    /// Records a policy with an opaque schedule. Names are unique.
    pub fn create_policy(
        &mut self,
        name: &str,
        schedule: &serde_json::Value,
    ) -> StoreResult<Policy> {
        let text = to_json("policy schedule", schedule)?;
        let tx = self.write(|| format!("create policy '{name}'"))?;
        tx.execute(
            "INSERT INTO policies (name, schedule, created_at) VALUES (?1, ?2, ?3)",
            params![name, text, Timestamp::now()],
        )
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::NameTaken {
                    what: "policy",
                    name: name.to_owned(),
                }
            } else {
                StoreError::Sqlite {
                    context: format!("insert policy '{name}'"),
                    source: e,
                }
            }
        })?;
        let policy = get_policy(&tx, PolicyId(tx.last_insert_rowid()))?;
        tx.commit().ctx(|| format!("commit policy '{name}'"))?;
        Ok(policy)
    }

    /// The policy with this id.
    pub fn policy(&self, id: PolicyId) -> StoreResult<Policy> {
        get_policy(&self.conn, id)
    }

    /// The policy with this name.
    pub fn policy_by_name(&self, name: &str) -> StoreResult<Policy> {
        self.conn
            .query_row(
                &format!("SELECT {POLICY_COLS} FROM policies WHERE name = ?1"),
                [name],
                policy_row,
            )
            .optional()
            .ctx(|| format!("read policy '{name}'"))?
            .ok_or_else(|| StoreError::NotFound {
                what: "policy",
                key: format!("'{name}'"),
            })
    }

    /// All policies, by id.
    pub fn policies(&self) -> StoreResult<Vec<Policy>> {
        query_all(
            &self.conn,
            &format!("SELECT {POLICY_COLS} FROM policies ORDER BY id"),
            [],
            policy_row,
            || "list policies".into(),
        )
    }

    /// Replaces a policy's schedule.
    pub fn update_policy_schedule(
        &mut self,
        id: PolicyId,
        schedule: &serde_json::Value,
    ) -> StoreResult<Policy> {
        let text = to_json("policy schedule", schedule)?;
        let tx = self.write(|| format!("update policy {id}"))?;
        let n = tx
            .execute(
                "UPDATE policies SET schedule = ?2 WHERE id = ?1",
                params![id, text],
            )
            .ctx(|| format!("update policy {id}"))?;
        if n == 0 {
            return Err(StoreError::NotFound {
                what: "policy",
                key: id.to_string(),
            });
        }
        let policy = get_policy(&tx, id)?;
        tx.commit().ctx(|| format!("commit policy {id}"))?;
        Ok(policy)
    }

    /// Deletes a policy; refused while a group is bound to it.
    pub fn delete_policy(&mut self, id: PolicyId) -> StoreResult<()> {
        let tx = self.write(|| format!("delete policy {id}"))?;
        let policy = get_policy(&tx, id)?;
        let groups: Vec<String> = query_all(
            &tx,
            "SELECT name FROM protection_groups WHERE policy_id = ?1 ORDER BY name",
            [id],
            |r| r.get(0),
            || format!("list groups bound to policy '{}'", policy.name),
        )?;
        if !groups.is_empty() {
            return Err(StoreError::PolicyInUse {
                policy: policy.name,
                groups,
            });
        }
        tx.execute("DELETE FROM policies WHERE id = ?1", [id])
            .ctx(|| format!("delete policy '{}'", policy.name))?;
        tx.commit()
            .ctx(|| format!("commit deletion of policy '{}'", policy.name))
    }

    /// Groups bound to a policy (what the scheduler fires for).
    pub fn groups_bound_to(&self, policy: PolicyId) -> StoreResult<Vec<Group>> {
        query_all(
            &self.conn,
            &format!("SELECT {GROUP_COLS} FROM protection_groups WHERE policy_id = ?1 ORDER BY id"),
            [policy],
            group_row,
            || format!("list groups bound to policy {policy}"),
        )
    }

    // ------------------------------------------------------------------ groups

    /// Creates a group in state `created` and, in the same transaction, a
    /// running `create_group` operation whose plan is `created → mapped /
    /// mapping_failed`. The caller maps the peer group, then finishes the
    /// operation.
    pub fn create_group(
        &mut self,
        new: &NewGroup,
        params: &serde_json::Value,
    ) -> StoreResult<(Group, Operation)> {
        let params_text = to_json("operation parameters", params)?;
        let tx = self.write(|| format!("create group '{}'", new.name))?;
        get_service(&tx, new.service_id)?;
        let now = Timestamp::now();
        tx.execute(
            "INSERT INTO protection_groups (name, role, state, service_id, remote_group_id, remote_project, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![new.name, new.role, GroupState::Created, new.service_id, new.remote_group_id, new.remote_project, now],
        )
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::NameTaken { what: "group", name: new.name.clone() }
            } else {
                StoreError::Sqlite { context: format!("insert group '{}'", new.name), source: e }
            }
        })?;
        let id = GroupId(tx.last_insert_rowid());
        let transition = Transition {
            op: OpKind::CreateGroup,
            from: GroupState::Created,
            during: GroupState::Created,
            on_success: Outcome::Group {
                state: GroupState::Mapped,
                role: new.role,
                new_primary: false,
                migrated: false,
            },
            on_failure: GroupState::MappingFailed,
        };
        let group = get_group(&tx, id)?;
        let op_id = insert_operation(
            &tx,
            &group,
            OpKind::CreateGroup,
            Some(&transition),
            &params_text,
        )?;
        let op = get_operation(&tx, op_id)?;
        tx.commit().ctx(|| format!("commit group '{}'", new.name))?;
        Ok((group, op))
    }

    /// The group with this id.
    pub fn group(&self, id: GroupId) -> StoreResult<Group> {
        get_group(&self.conn, id)
    }

    /// The group with this name.
    pub fn group_by_name(&self, name: &str) -> StoreResult<Group> {
        self.conn
            .query_row(
                &format!("SELECT {GROUP_COLS} FROM protection_groups WHERE name = ?1"),
                [name],
                group_row,
            )
            .optional()
            .ctx(|| format!("read group '{name}'"))?
            .ok_or_else(|| StoreError::NotFound {
                what: "group",
                key: format!("'{name}'"),
            })
    }

    /// All groups, by id.
    pub fn groups(&self) -> StoreResult<Vec<Group>> {
        query_all(
            &self.conn,
            &format!("SELECT {GROUP_COLS} FROM protection_groups ORDER BY id"),
            [],
            group_row,
            || "list groups".into(),
        )
    }

    /// Groups currently in `state` (e.g. the one being deleted).
    pub fn groups_in_state(&self, state: GroupState) -> StoreResult<Vec<Group>> {
        query_all(
            &self.conn,
            &format!("SELECT {GROUP_COLS} FROM protection_groups WHERE state = ?1 ORDER BY id"),
            [state],
            group_row,
            || format!("list groups in state {state}"),
        )
    }

    /// Records the peer group's id once mapped.
    pub fn set_remote_group_id(&mut self, id: GroupId, remote: Option<i64>) -> StoreResult<Group> {
        let tx = self.write(|| format!("set remote id of group {id}"))?;
        let n = tx
            .execute(
                "UPDATE protection_groups SET remote_group_id = ?2 WHERE id = ?1",
                params![id, remote],
            )
            .ctx(|| format!("set remote id of group {id}"))?;
        if n == 0 {
            return Err(StoreError::NotFound {
                what: "group",
                key: id.to_string(),
            });
        }
        let g = get_group(&tx, id)?;
        tx.commit()
            .ctx(|| format!("commit remote id of group '{}'", g.name))?;
        Ok(g)
    }

    /// Binds a policy (refused if one is bound already).
    pub fn bind_policy(
        &mut self,
        id: GroupId,
        policy: PolicyId,
        retention: Retention,
    ) -> StoreResult<Group> {
        let tx = self.write(|| format!("bind policy {policy} to group {id}"))?;
        let g = get_group(&tx, id)?;
        get_policy(&tx, policy)?;
        if g.policy.is_some() {
            return Err(StoreError::PolicyAlreadyBound { group: g.name });
        }
        tx.execute(
            "UPDATE protection_groups SET policy_id = ?2, retention = ?3 WHERE id = ?1",
            params![id, policy, retention.get()],
        )
        .ctx(|| format!("bind policy {policy} to group '{}'", g.name))?;
        let g = get_group(&tx, id)?;
        tx.commit()
            .ctx(|| format!("commit policy binding of group '{}'", g.name))?;
        Ok(g)
    }

    /// Unbinds the group's policy (refused if none is bound).
    pub fn unbind_policy(&mut self, id: GroupId) -> StoreResult<Group> {
        let tx = self.write(|| format!("unbind policy of group {id}"))?;
        let g = get_group(&tx, id)?;
        if g.policy.is_none() {
            return Err(StoreError::NoPolicyBound { group: g.name });
        }
        tx.execute(
            "UPDATE protection_groups SET policy_id = NULL, retention = NULL WHERE id = ?1",
            [id],
        )
        .ctx(|| format!("unbind policy of group '{}'", g.name))?;
        let g = get_group(&tx, id)?;
        tx.commit()
            .ctx(|| format!("commit policy unbinding of group '{}'", g.name))?;
        Ok(g)
    }

    /// The facts `rules::check` needs about a group, read consistently (one
    /// read transaction).
    pub fn group_view(&self, id: GroupId) -> StoreResult<GroupView> {
        let tx = self
            .conn
            .unchecked_transaction()
            .ctx(|| format!("begin read of group {id}"))?;
        group_view(&tx, id)
    }

    /// Checks `req` against the allowed-state table and starts it, all in one
    /// transaction (no window between check and write): reads the group's
    /// facts, fills in the facts the store knows (`already_grouped` of
    /// add resources, `other_deleting` of delete group), applies
    /// `rules::check`, then does what [`Store::begin_operation`] does.
    /// A refusal is [`StoreError::Refused`] and changes nothing.
    pub fn begin_checked(
        &mut self,
        id: GroupId,
        req: &OpRequest,
        params: &serde_json::Value,
    ) -> StoreResult<Operation> {
        let text = to_json("operation parameters", params)?;
        let tx = self.write(|| format!("begin {} on group {id}", req.kind()))?;
        let view = group_view(&tx, id)?;
        let req = match req {
            OpRequest::AddResources { uris, .. } => {
                let mut already_grouped = Vec::new();
                for uri in uris {
                    if let Some(group) = owner_of(&tx, uri)? {
                        already_grouped.push((uri.clone(), group));
                    }
                }
                OpRequest::AddResources {
                    uris: uris.clone(),
                    already_grouped,
                }
            }
            OpRequest::DeleteGroup { .. } => {
                let other_deleting = tx
                    .query_row(
                        "SELECT name FROM protection_groups WHERE state = ?1 AND id != ?2
                         ORDER BY id LIMIT 1",
                        params![GroupState::Deleting, id],
                        |r| r.get(0),
                    )
                    .optional()
                    .ctx(|| "look for a group being deleted".into())?;
                OpRequest::DeleteGroup { other_deleting }
            }
            other => other.clone(),
        };
        let t = rules::check(&req, &view)?;
        let group = cas_state(&tx, id, t.from, t.during)?;
        refuse_if_busy(&tx, &group)?;
        let op_id = insert_operation(&tx, &group, t.op, Some(&t), &text)?;
        let op = get_operation(&tx, op_id)?;
        tx.commit()
            .ctx(|| format!("commit start of {} on group '{}'", t.op, group.name))?;
        Ok(op)
    }

    /// Compare-and-set of a group's state: moves it from `expected` to `new`
    /// and, in the same transaction, journals `op` as running (refused with
    /// [`StoreError::GroupBusy`] if another operation is running on it).
    /// Fails with [`StoreError::StateConflict`] and changes nothing if the
    /// group is not in `expected`.
    pub fn transition(
        &mut self,
        id: GroupId,
        expected: GroupState,
        new: GroupState,
        op: Option<&NewOperation>,
    ) -> StoreResult<Option<Operation>> {
        let params_text = op
            .map(|op| to_json("operation parameters", &op.params))
            .transpose()?;
        let tx = self.write(|| format!("move group {id} from {expected} to {new}"))?;
        let group = cas_state(&tx, id, expected, new)?;
        let op = match (op, params_text) {
            (Some(op), Some(text)) => {
                refuse_if_busy(&tx, &group)?;
                let op_id = insert_operation(&tx, &group, op.kind, op.transition.as_ref(), &text)?;
                Some(get_operation(&tx, op_id)?)
            }
            _ => None,
        };
        tx.commit()
            .ctx(|| format!("commit group '{}' {expected} -> {new}", group.name))?;
        Ok(op)
    }

    /// Starts an operation accepted by `rules::check`: moves the group from
    /// `t.from` to `t.during` (compare-and-set) and journals the operation
    /// as running with its plan, in one transaction.
    pub fn begin_operation(
        &mut self,
        id: GroupId,
        t: &Transition,
        params: &serde_json::Value,
    ) -> StoreResult<Operation> {
        let text = to_json("operation parameters", params)?;
        let tx = self.write(|| format!("begin {} on group {id}", t.op))?;
        let group = cas_state(&tx, id, t.from, t.during)?;
        refuse_if_busy(&tx, &group)?;
        let op_id = insert_operation(&tx, &group, t.op, Some(t), &text)?;
        let op = get_operation(&tx, op_id)?;
        tx.commit()
            .ctx(|| format!("commit start of {} on group '{}'", t.op, group.name))?;
        Ok(op)
    }

    /// Journals a running operation that concerns no group (e.g. a service
    /// deletion).
    pub fn begin_service_operation(
        &mut self,
        kind: OpKind,
        params: &serde_json::Value,
    ) -> StoreResult<Operation> {
        let text = to_json("operation parameters", params)?;
        let tx = self.write(|| format!("journal {kind}"))?;
        tx.execute(
            "INSERT INTO operations (kind, state, started_at, params) VALUES (?1, 'running', ?2, ?3)",
            params![kind, Timestamp::now(), text],
        )
        .ctx(|| format!("journal {kind}"))?;
        let op = get_operation(&tx, OperationId(tx.last_insert_rowid()))?;
        tx.commit()
            .ctx(|| format!("commit journal entry {}", op.id))?;
        Ok(op)
    }

    /// Finishes a running operation and, in the same transaction, moves its
    /// group per the recorded plan: success outcome, failure state, or back
    /// to where it started (rolled back). A success that deletes the group
    /// removes it with its resources and recovery points (the journal entry
    /// stays, with the group's name).
    pub fn finish_operation(
        &mut self,
        op_id: OperationId,
        result: OpResult,
    ) -> StoreResult<Operation> {
        self.finish_operation_renaming(op_id, result, &[])
    }

    /// [`Self::finish_operation`] that also gives resources new URIs
    /// (`(old, new)` pairs) in the same transaction: a planned migration's
    /// role swap, after which each side names a resource by the new
    /// primary's source URI.
    pub fn finish_operation_renaming(
        &mut self,
        op_id: OperationId,
        result: OpResult,
        renames: &[(String, String)],
    ) -> StoreResult<Operation> {
        let tx = self.write(|| format!("finish operation {op_id}"))?;
        for (old, new) in renames {
            let n = tx
                .execute(
                    "UPDATE resources SET uri = ?2 WHERE uri = ?1",
                    params![old, new],
                )
                .ctx(|| format!("rename resource {old} to {new}"))?;
            if n == 0 && get_resource(&tx, new).is_err() {
                return Err(StoreError::NotFound {
                    what: "resource",
                    key: old.clone(),
                });
            }
        }
        let op = get_operation(&tx, op_id)?;
        if op.state != OpState::Running {
            return Err(StoreError::OperationFinished {
                id: op_id,
                state: op.state,
            });
        }
        if let (Some(t), Some(gid)) = (op.transition, op.group_id) {
            let g = get_group(&tx, gid)?;
            if g.state != t.during {
                return Err(StoreError::StateConflict {
                    group: g.name,
                    expected: t.during,
                    actual: g.state,
                });
            }
            let outcome = match &result {
                OpResult::Succeeded => t.on_success,
                OpResult::Failed(_) => Outcome::Group {
                    state: t.on_failure,
                    role: g.role,
                    new_primary: g.new_primary,
                    migrated: g.migrated,
                },
                OpResult::RolledBack => Outcome::Group {
                    state: t.from,
                    role: g.role,
                    new_primary: g.new_primary,
                    migrated: g.migrated,
                },
            };
            match outcome {
                Outcome::Group {
                    state,
                    role,
                    new_primary,
                    migrated,
                } => {
                    tx.execute(
                        "UPDATE protection_groups SET state = ?2, role = ?3, new_primary = ?4, migrated = ?5
                         WHERE id = ?1",
                        params![gid, state, role, new_primary, migrated],
                    )
                    .ctx(|| format!("move group '{}' to {state}", g.name))?;
                }
                Outcome::Deleted => {
                    tx.execute("DELETE FROM protection_groups WHERE id = ?1", [gid])
                        .ctx(|| format!("delete group '{}'", g.name))?;
                }
            }
        }
        let (state, reason) = match &result {
            OpResult::Succeeded => ("succeeded", None),
            OpResult::Failed(reason) => ("failed", Some(reason.as_str())),
            OpResult::RolledBack => ("rolled_back", None),
        };
        tx.execute(
            "UPDATE operations SET state = ?2, failure_reason = ?3, finished_at = ?4 WHERE id = ?1",
            params![op_id, state, reason, Timestamp::now()],
        )
        .ctx(|| format!("finish operation {op_id}"))?;
        let op = get_operation(&tx, op_id)?;
        tx.commit()
            .ctx(|| format!("commit end of operation {op_id}"))?;
        Ok(op)
    }

    /// Operations journaled as running: after a restart, the orchestrator
    /// finishes or rolls back each one (oldest first).
    pub fn unfinished_operations(&self) -> StoreResult<Vec<Operation>> {
        query_all(
            &self.conn,
            &format!("SELECT {OP_COLS} FROM operations WHERE state = 'running' ORDER BY id"),
            [],
            op_row,
            || "list unfinished operations".into(),
        )
    }

    /// One journal entry.
    pub fn operation(&self, id: OperationId) -> StoreResult<Operation> {
        get_operation(&self.conn, id)
    }

    /// A group's journal, oldest first.
    pub fn operations_of_group(&self, id: GroupId) -> StoreResult<Vec<Operation>> {
        query_all(
            &self.conn,
            &format!("SELECT {OP_COLS} FROM operations WHERE group_id = ?1 ORDER BY id"),
            [id],
            op_row,
            || format!("list operations of group {id}"),
        )
    }

    // --------------------------------------------------------------- resources

    /// Adds resources to a group, all or none, in state `pending`. Refused
    /// if one is already in a group or the group would exceed 20.
    pub fn add_resources(
        &mut self,
        id: GroupId,
        new: &[NewResource],
    ) -> StoreResult<Vec<Resource>> {
        let tx = self.write(|| format!("add resources to group {id}"))?;
        let g = get_group(&tx, id)?;
        let have: i64 = tx
            .query_row(
                "SELECT COUNT(*) FROM resources WHERE group_id = ?1",
                [id],
                |r| r.get(0),
            )
            .ctx(|| format!("count resources of group '{}'", g.name))?;
        let have = usize::try_from(have).unwrap_or(usize::MAX);
        if have.saturating_add(new.len()) > MAX_RESOURCES_PER_GROUP {
            return Err(StoreError::TooManyResources {
                group: g.name,
                have,
                adding: new.len(),
                max: MAX_RESOURCES_PER_GROUP,
            });
        }
        for r in new {
            if let Some(owner) = owner_of(&tx, &r.uri)? {
                return Err(StoreError::ResourceInGroup {
                    uri: r.uri.clone(),
                    group: owner,
                });
            }
            let size = to_i64("resource size", r.size_bytes)?;
            let (kind, vm, boot) = match &r.kind {
                ResourceKind::Volume => ("volume", None, None),
                ResourceKind::VmVolume { vm, boot } => {
                    ("vm_volume", Some(vm.as_str()), Some(*boot))
                }
            };
            tx.execute(
                "INSERT INTO resources (uri, group_id, kind, vm, boot, size_bytes, standby_target, state)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![r.uri, id, kind, vm, boot, size, r.standby_target, ResourceState::Pending],
            )
            .map_err(|e| {
                if is_unique_violation(&e) {
                    // Listed twice in `new`.
                    StoreError::ResourceInGroup { uri: r.uri.clone(), group: g.name.clone() }
                } else {
                    StoreError::Sqlite { context: format!("insert resource {} into group '{}'", r.uri, g.name), source: e }
                }
            })?;
        }
        let mut added = Vec::with_capacity(new.len());
        for r in new {
            added.push(get_resource(&tx, &r.uri)?);
        }
        tx.commit()
            .ctx(|| format!("commit resources of group '{}'", g.name))?;
        Ok(added)
    }

    /// Removes resources from a group, all or none.
    pub fn remove_resources(&mut self, id: GroupId, uris: &[&str]) -> StoreResult<()> {
        let tx = self.write(|| format!("remove resources from group {id}"))?;
        let g = get_group(&tx, id)?;
        for uri in uris {
            let n = tx
                .execute(
                    "DELETE FROM resources WHERE uri = ?1 AND group_id = ?2",
                    params![uri, id],
                )
                .ctx(|| format!("remove resource {uri} from group '{}'", g.name))?;
            if n == 0 {
                return Err(StoreError::ResourceNotInGroup {
                    uri: (*uri).to_owned(),
                    group: g.name,
                });
            }
        }
        tx.commit()
            .ctx(|| format!("commit removal from group '{}'", g.name))
    }

    /// The resource with this URI.
    pub fn resource(&self, uri: &str) -> StoreResult<Resource> {
        get_resource(&self.conn, uri)
    }

    /// A group's resources, by URI.
    pub fn resources(&self, id: GroupId) -> StoreResult<Vec<Resource>> {
        query_all(
            &self.conn,
            &format!("SELECT {RESOURCE_COLS} FROM resources WHERE group_id = ?1 ORDER BY uri"),
            [id],
            resource_row,
            || format!("list resources of group {id}"),
        )
    }

    /// For each URI already in a group: `(uri, group name)` (the
    /// `already_grouped` fact of `OpRequest::AddResources`).
    pub fn resource_owners(&self, uris: &[&str]) -> StoreResult<Vec<(String, String)>> {
        let mut out = Vec::new();
        for uri in uris {
            if let Some(group) = owner_of(&self.conn, uri)? {
                out.push(((*uri).to_owned(), group));
            }
        }
        Ok(out)
    }

    /// Sets a resource's replication state.
    pub fn set_resource_state(&mut self, uri: &str, state: ResourceState) -> StoreResult<Resource> {
        let tx = self.write(|| format!("set state of resource {uri}"))?;
        let n = tx
            .execute(
                "UPDATE resources SET state = ?2 WHERE uri = ?1",
                params![uri, state],
            )
            .ctx(|| format!("set resource {uri} to {state}"))?;
        if n == 0 {
            return Err(StoreError::NotFound {
                what: "resource",
                key: uri.to_owned(),
            });
        }
        let r = get_resource(&tx, uri)?;
        tx.commit()
            .ctx(|| format!("commit state of resource {uri}"))?;
        Ok(r)
    }

    // --------------------------------------------------------- recovery points

    /// Records a recovery point in state `creating`. Refused beyond 5 manual
    /// ones, or if the name or engine id is taken in the group.
    pub fn create_recovery_point(
        &mut self,
        id: GroupId,
        new: &NewRecoveryPoint,
    ) -> StoreResult<RecoveryPoint> {
        let engine_rp = to_i64("engine recovery point id", new.engine_rp)?;
        let tx = self.write(|| format!("create recovery point '{}' in group {id}", new.name))?;
        let g = get_group(&tx, id)?;
        if new.kind == RpKind::Manual {
            let manual: i64 = tx
                .query_row(
                    "SELECT COUNT(*) FROM recovery_points WHERE group_id = ?1 AND kind = 'manual'",
                    [id],
                    |r| r.get(0),
                )
                .ctx(|| format!("count manual recovery points of group '{}'", g.name))?;
            if usize::try_from(manual).unwrap_or(usize::MAX) >= MAX_MANUAL_RECOVERY_POINTS {
                return Err(StoreError::TooManyManualRecoveryPoints {
                    group: g.name,
                    max: MAX_MANUAL_RECOVERY_POINTS,
                });
            }
        }
        tx.execute(
            "INSERT INTO recovery_points (group_id, name, engine_rp, kind, created_at, state)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                id,
                new.name,
                engine_rp,
                new.kind,
                Timestamp::now(),
                RpState::Creating
            ],
        )
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::RecoveryPointExists {
                    group: g.name.clone(),
                    name: new.name.clone(),
                    engine_rp: new.engine_rp,
                }
            } else {
                StoreError::Sqlite {
                    context: format!("insert recovery point '{}' of group '{}'", new.name, g.name),
                    source: e,
                }
            }
        })?;
        let rp = get_rp(&tx, RpId(tx.last_insert_rowid()))?;
        tx.commit()
            .ctx(|| format!("commit recovery point '{}'", new.name))?;
        Ok(rp)
    }

    /// The recovery point with this id.
    pub fn recovery_point(&self, id: RpId) -> StoreResult<RecoveryPoint> {
        get_rp(&self.conn, id)
    }

    /// The recovery point of a group with this name.
    pub fn recovery_point_by_name(&self, group: GroupId, name: &str) -> StoreResult<RecoveryPoint> {
        self.conn
            .query_row(
                &format!("SELECT {RP_COLS} FROM recovery_points WHERE group_id = ?1 AND name = ?2"),
                params![group, name],
                rp_row,
            )
            .optional()
            .ctx(|| format!("read recovery point '{name}' of group {group}"))?
            .ok_or_else(|| StoreError::NotFound {
                what: "recovery point",
                key: format!("'{name}'"),
            })
    }

    /// A group's recovery points, oldest first.
    pub fn recovery_points(&self, group: GroupId) -> StoreResult<Vec<RecoveryPoint>> {
        query_all(
            &self.conn,
            &format!(
                "SELECT {RP_COLS} FROM recovery_points WHERE group_id = ?1 ORDER BY created_at, id"
            ),
            [group],
            rp_row,
            || format!("list recovery points of group {group}"),
        )
    }

    /// Compare-and-set of a recovery point's state.
    pub fn set_recovery_point_state(
        &mut self,
        id: RpId,
        expected: RpState,
        new: RpState,
    ) -> StoreResult<RecoveryPoint> {
        let tx = self.write(|| format!("set state of recovery point {id}"))?;
        let rp = get_rp(&tx, id)?;
        if rp.state != expected {
            return Err(StoreError::RpStateConflict {
                rp: rp.name,
                expected: expected.to_string(),
                actual: rp.state.to_string(),
            });
        }
        tx.execute(
            "UPDATE recovery_points SET state = ?2 WHERE id = ?1",
            params![id, new],
        )
        .ctx(|| format!("set recovery point '{}' to {new}", rp.name))?;
        let rp = get_rp(&tx, id)?;
        tx.commit()
            .ctx(|| format!("commit state of recovery point '{}'", rp.name))?;
        Ok(rp)
    }

    /// Marks (or clears) a deletion the standby still has to hear about.
    pub fn set_pending_remote_delete(
        &mut self,
        id: RpId,
        pending: bool,
    ) -> StoreResult<RecoveryPoint> {
        let tx = self.write(|| format!("flag recovery point {id}"))?;
        let n = tx
            .execute(
                "UPDATE recovery_points SET pending_remote_delete = ?2 WHERE id = ?1",
                params![id, pending],
            )
            .ctx(|| format!("flag recovery point {id}"))?;
        if n == 0 {
            return Err(StoreError::NotFound {
                what: "recovery point",
                key: id.to_string(),
            });
        }
        let rp = get_rp(&tx, id)?;
        tx.commit()
            .ctx(|| format!("commit flag of recovery point '{}'", rp.name))?;
        Ok(rp)
    }

    /// Remembers (or forgets) that the standby has not heard of this
    /// primary group's stop sync yet.
    pub fn set_pending_remote_stop(&mut self, id: GroupId, pending: bool) -> StoreResult<()> {
        let tx = self.write(|| format!("flag group {id}"))?;
        let n = tx
            .execute(
                "UPDATE protection_groups SET pending_remote_stop = ?2 WHERE id = ?1",
                params![id, pending],
            )
            .ctx(|| format!("flag group {id}"))?;
        if n == 0 {
            return Err(StoreError::NotFound {
                what: "group",
                key: id.to_string(),
            });
        }
        tx.commit().ctx(|| format!("commit flag of group {id}"))
    }

    /// Groups whose stop sync the standby has not heard of yet.
    pub fn groups_pending_remote_stop(&self) -> StoreResult<Vec<GroupId>> {
        let mut stmt = self
            .conn
            .prepare("SELECT id FROM protection_groups WHERE pending_remote_stop = 1 ORDER BY id")
            .ctx(|| "list groups with a pending stop".to_owned())?;
        let rows = stmt
            .query_map([], |row| row.get::<_, i64>(0))
            .ctx(|| "list groups with a pending stop".to_owned())?;
        rows.map(|r| r.map(GroupId).ctx(|| "read a group id".to_owned()))
            .collect()
    }

    /// Removes a recovery point's record (once its data is gone); returns it.
    pub fn delete_recovery_point(&mut self, id: RpId) -> StoreResult<RecoveryPoint> {
        let tx = self.write(|| format!("delete recovery point {id}"))?;
        let rp = get_rp(&tx, id)?;
        tx.execute("DELETE FROM recovery_points WHERE id = ?1", [id])
            .ctx(|| format!("delete recovery point '{}'", rp.name))?;
        tx.commit()
            .ctx(|| format!("commit deletion of recovery point '{}'", rp.name))?;
        Ok(rp)
    }

    /// After a failover to a chosen recovery point: every other recovery
    /// point of the group becomes unusable. Returns how many changed.
    pub fn mark_recovery_points_unusable(
        &mut self,
        group: GroupId,
        except: Option<RpId>,
    ) -> StoreResult<usize> {
        let tx = self.write(|| format!("mark recovery points of group {group} unusable"))?;
        let n = tx
            .execute(
                "UPDATE recovery_points SET state = 'unusable'
                 WHERE group_id = ?1 AND id IS NOT ?2 AND state != 'unusable'",
                params![group, except],
            )
            .ctx(|| format!("mark recovery points of group {group} unusable"))?;
        tx.commit()
            .ctx(|| format!("commit unusable recovery points of group {group}"))?;
        Ok(n)
    }

    /// Recovery points deleted here whose deletion the standby has not
    /// heard of yet (all groups, oldest first).
    pub fn pending_remote_deletes(&self) -> StoreResult<Vec<RecoveryPoint>> {
        query_all(
            &self.conn,
            &format!("SELECT {RP_COLS} FROM recovery_points WHERE pending_remote_delete = 1 ORDER BY created_at, id"),
            [],
            rp_row,
            || "list pending remote deletions".into(),
        )
    }

    /// Policy-created recovery points of a group beyond its retention (the
    /// oldest ones, not already being deleted): what pruning deletes. Empty
    /// if no policy is bound.
    pub fn policy_recovery_points_to_prune(
        &self,
        group: GroupId,
    ) -> StoreResult<Vec<RecoveryPoint>> {
        let g = get_group(&self.conn, group)?;
        let Some(binding) = g.policy else {
            return Ok(Vec::new());
        };
        let mut rps: Vec<RecoveryPoint> = self
            .recovery_points(group)?
            .into_iter()
            .filter(|rp| rp.kind == RpKind::Policy && rp.state == RpState::Complete)
            .collect();
        let keep = usize::from(binding.retention.get());
        let excess = rps.len().saturating_sub(keep);
        rps.truncate(excess);
        Ok(rps)
    }

    // -------------------------------------------------------- pairing secrets

    /// Records a one-time pairing secret (by its hash) valid until `expires`.
    pub fn create_pairing_secret(
        &mut self,
        secret_hash: &str,
        expires: Timestamp,
    ) -> StoreResult<()> {
        let tx = self.write(|| "record a pairing secret".into())?;
        tx.execute(
            "INSERT INTO pairing_secrets (secret_hash, expires_at) VALUES (?1, ?2)",
            params![secret_hash, expires],
        )
        .ctx(|| "insert pairing secret".into())?;
        tx.commit().ctx(|| "commit pairing secret".into())
    }

    /// Uses up a pairing secret: succeeds once, if it exists and `now` is
    /// before its expiry; otherwise [`StoreError::PairingSecret`] says why.
    pub fn consume_pairing_secret(&mut self, secret_hash: &str, now: Timestamp) -> StoreResult<()> {
        let tx = self.write(|| "use a pairing secret".into())?;
        let row: Option<(Timestamp, Option<Timestamp>)> = tx
            .query_row(
                "SELECT expires_at, used_at FROM pairing_secrets WHERE secret_hash = ?1",
                [secret_hash],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .ctx(|| "read pairing secret".into())?;
        let reason = match row {
            None => Some("the service key's secret is unknown to this agent"),
            Some((_, Some(_))) => Some("the service key was already used"),
            Some((expires, None)) if expires <= now => Some("the service key has expired"),
            Some(_) => None,
        };
        if let Some(reason) = reason {
            return Err(StoreError::PairingSecret {
                reason: reason.to_owned(),
            });
        }
        tx.execute(
            "UPDATE pairing_secrets SET used_at = ?2 WHERE secret_hash = ?1",
            params![secret_hash, now],
        )
        .ctx(|| "mark pairing secret used".into())?;
        tx.commit().ctx(|| "commit use of pairing secret".into())
    }

    /// The newest `limit` journal entries, newest first.
    pub fn recent_operations(&self, limit: usize) -> StoreResult<Vec<Operation>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        query_all(
            &self.conn,
            &format!("SELECT {OP_COLS} FROM operations ORDER BY id DESC LIMIT ?1"),
            [limit],
            op_row,
            || "list operations".into(),
        )
    }

    #[cfg(test)]
    fn connection(&mut self) -> &mut Connection {
        &mut self.conn
    }
}

fn query_all<T, P: rusqlite::Params>(
    conn: &Connection,
    sql: &str,
    params: P,
    f: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
    what: impl Fn() -> String,
) -> StoreResult<Vec<T>> {
    let mut stmt = conn.prepare_cached(sql).ctx(&what)?;
    let rows = stmt.query_map(params, f).ctx(&what)?;
    rows.collect::<rusqlite::Result<Vec<T>>>().ctx(&what)
}

fn get_service(conn: &Connection, id: ServiceId) -> StoreResult<Service> {
    conn.query_row(
        &format!("SELECT {SERVICE_COLS} FROM services WHERE id = ?1"),
        [id],
        service_row,
    )
    .optional()
    .ctx(|| format!("read service {id}"))?
    .ok_or_else(|| StoreError::NotFound {
        what: "service",
        key: id.to_string(),
    })
}

fn get_policy(conn: &Connection, id: PolicyId) -> StoreResult<Policy> {
    conn.query_row(
        &format!("SELECT {POLICY_COLS} FROM policies WHERE id = ?1"),
        [id],
        policy_row,
    )
    .optional()
    .ctx(|| format!("read policy {id}"))?
    .ok_or_else(|| StoreError::NotFound {
        what: "policy",
        key: id.to_string(),
    })
}

fn get_group(conn: &Connection, id: GroupId) -> StoreResult<Group> {
    conn.query_row(
        &format!("SELECT {GROUP_COLS} FROM protection_groups WHERE id = ?1"),
        [id],
        group_row,
    )
    .optional()
    .ctx(|| format!("read group {id}"))?
    .ok_or_else(|| StoreError::NotFound {
        what: "group",
        key: id.to_string(),
    })
}

fn get_resource(conn: &Connection, uri: &str) -> StoreResult<Resource> {
    conn.query_row(
        &format!("SELECT {RESOURCE_COLS} FROM resources WHERE uri = ?1"),
        [uri],
        resource_row,
    )
    .optional()
    .ctx(|| format!("read resource {uri}"))?
    .ok_or_else(|| StoreError::NotFound {
        what: "resource",
        key: uri.to_owned(),
    })
}

fn get_rp(conn: &Connection, id: RpId) -> StoreResult<RecoveryPoint> {
    conn.query_row(
        &format!("SELECT {RP_COLS} FROM recovery_points WHERE id = ?1"),
        [id],
        rp_row,
    )
    .optional()
    .ctx(|| format!("read recovery point {id}"))?
    .ok_or_else(|| StoreError::NotFound {
        what: "recovery point",
        key: id.to_string(),
    })
}

fn get_operation(conn: &Connection, id: OperationId) -> StoreResult<Operation> {
    conn.query_row(
        &format!("SELECT {OP_COLS} FROM operations WHERE id = ?1"),
        [id],
        op_row,
    )
    .optional()
    .ctx(|| format!("read operation {id}"))?
    .ok_or_else(|| StoreError::NotFound {
        what: "operation",
        key: id.to_string(),
    })
}

fn owner_of(conn: &Connection, uri: &str) -> StoreResult<Option<String>> {
    conn.query_row(
        "SELECT g.name FROM resources r JOIN protection_groups g ON g.id = r.group_id WHERE r.uri = ?1",
        [uri],
        |r| r.get(0),
    )
    .optional()
    .ctx(|| format!("look up the group of resource {uri}"))
}

fn group_view(conn: &Connection, id: GroupId) -> StoreResult<GroupView> {
    let g = get_group(conn, id)?;
    let (resources, in_initial_sync): (i64, i64) = conn
        .query_row(
            "SELECT COUNT(*), COALESCE(SUM(state = 'initial_sync'), 0) FROM resources WHERE group_id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .ctx(|| format!("count resources of group '{}'", g.name))?;
    let (manual, policy): (i64, i64) = conn
        .query_row(
            "SELECT COALESCE(SUM(kind = 'manual'), 0), COALESCE(SUM(kind = 'policy'), 0)
             FROM recovery_points WHERE group_id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .ctx(|| format!("count recovery points of group '{}'", g.name))?;
    let count = |n: i64| usize::try_from(n).unwrap_or(0);
    Ok(GroupView {
        name: g.name,
        role: g.role,
        new_primary: g.new_primary,
        migrated: g.migrated,
        state: g.state,
        resources: count(resources),
        resources_in_initial_sync: count(in_initial_sync),
        policy_bound: g.policy.is_some(),
        policy_recovery_points: count(policy),
        manual_recovery_points: count(manual),
    })
}

fn cas_state(
    tx: &Transaction<'_>,
    id: GroupId,
    expected: GroupState,
    new: GroupState,
) -> StoreResult<Group> {
    let g = get_group(tx, id)?;
    if g.state != expected {
        return Err(StoreError::StateConflict {
            group: g.name,
            expected,
            actual: g.state,
        });
    }
    tx.execute(
        "UPDATE protection_groups SET state = ?3 WHERE id = ?1 AND state = ?2",
        params![id, expected, new],
    )
    .ctx(|| format!("move group '{}' from {expected} to {new}", g.name))?;
    get_group(tx, id)
}

fn refuse_if_busy(tx: &Transaction<'_>, g: &Group) -> StoreResult<()> {
    let running: Option<(OperationId, String)> = tx
        .query_row(
            "SELECT id, kind FROM operations WHERE group_id = ?1 AND state = 'running' ORDER BY id LIMIT 1",
            [g.id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .ctx(|| format!("look for running operations of group '{}'", g.name))?;
    match running {
        Some((op, kind)) => Err(StoreError::GroupBusy {
            group: g.name.clone(),
            op,
            kind,
        }),
        None => Ok(()),
    }
}

fn insert_operation(
    tx: &Transaction<'_>,
    g: &Group,
    kind: OpKind,
    transition: Option<&Transition>,
    params_text: &str,
) -> StoreResult<OperationId> {
    let transition = transition
        .map(|t| to_json("operation plan", t))
        .transpose()?;
    tx.execute(
        "INSERT INTO operations (group_id, group_name, kind, state, transition, started_at, params)
         VALUES (?1, ?2, ?3, 'running', ?4, ?5, ?6)",
        params![
            g.id,
            g.name,
            kind,
            transition,
            Timestamp::now(),
            params_text
        ],
    )
    .ctx(|| format!("journal {kind} on group '{}'", g.name))?;
    Ok(OperationId(tx.last_insert_rowid()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::rules::check;
    use serde_json::json;

    fn service(name: &str) -> NewService {
        NewService {
            name: name.into(),
            local_endpoint: "127.0.0.1:7001".into(),
            remote_endpoint: "127.0.0.1:7002".into(),
            remote_fingerprint: AgentId([7; 32]),
        }
    }

    fn volume(uri: &str) -> NewResource {
        NewResource {
            uri: uri.into(),
            kind: ResourceKind::Volume,
            size_bytes: 1 << 30,
            standby_target: uri.trim_start_matches("file:/").replace('/', "_"),
        }
    }

    /// A store with service "dr" and primary group `name` in state mapped.
    fn mapped_group(store: &mut Store, name: &str) -> Group {
        let svc = match store.service_by_name("dr") {
            Ok(s) => s,
            Err(_) => store.create_service(&service("dr")).unwrap(),
        };
        let (g, op) = store
            .create_group(
                &NewGroup {
                    name: name.into(),
                    role: Role::Primary,
                    service_id: svc.id,
                    remote_group_id: None,
                    remote_project: "tenant-a".into(),
                },
                &json!({}),
            )
            .unwrap();
        assert_eq!(g.state, GroupState::Created);
        store.finish_operation(op.id, OpResult::Succeeded).unwrap();
        store.group(g.id).unwrap()
    }

    #[test]
    fn open_configures_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("data")).unwrap();
        assert_eq!(store.path(), dir.path().join("data").join("control.db"));
        assert!(store.path().exists());
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
        let q = |sql: &str| -> String {
            store
                .conn
                .query_row(sql, [], |r| r.get::<_, rusqlite::types::Value>(0))
                .map(|v| format!("{v:?}"))
                .unwrap()
        };
        assert_eq!(q("PRAGMA journal_mode"), "Text(\"wal\")");
        assert_eq!(q("PRAGMA synchronous"), "Integer(2)"); // FULL
        assert_eq!(q("PRAGMA foreign_keys"), "Integer(1)");
    }

    #[test]
    fn everything_persists_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (svc, group, policy, resources, rp, op);
        {
            let mut store = Store::open(dir.path()).unwrap();
            svc = store.create_service(&service("dr")).unwrap();
            let g = mapped_group(&mut store, "g1");
            policy = store
                .create_policy("nightly", &json!({"daily": "02:00", "tz": "Europe/Berlin"}))
                .unwrap();
            store
                .bind_policy(g.id, policy.id, Retention::new(3).unwrap())
                .unwrap();
            let vm = NewResource {
                uri: "file:/vm1-boot.raw".into(),
                kind: ResourceKind::VmVolume {
                    vm: "vm1".into(),
                    boot: true,
                },
                size_bytes: 10 << 30,
                standby_target: "vm1-boot".into(),
            };
            resources = store
                .add_resources(g.id, &[vm, volume("file:/data.raw")])
                .unwrap();
            store
                .set_resource_state("file:/data.raw", ResourceState::InitialSync)
                .unwrap();
            let t = check(
                &OpRequest::StartSync { missing: vec![] },
                &store.group_view(g.id).unwrap(),
            )
            .unwrap();
            op = store
                .begin_operation(g.id, &t, &json!({"why": "test"}))
                .unwrap();
            rp = store
                .create_recovery_point(
                    g.id,
                    &NewRecoveryPoint {
                        name: "rp1".into(),
                        engine_rp: 42,
                        kind: RpKind::Manual,
                    },
                )
                .unwrap();
            store.set_pending_remote_delete(rp.id, true).unwrap();
            group = store.group(g.id).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.services().unwrap(), vec![svc]);
        assert_eq!(store.policies().unwrap(), vec![policy.clone()]);
        let g = store.group_by_name("g1").unwrap();
        assert_eq!(g, group);
        assert_eq!(g.state, GroupState::StartingSync);
        assert_eq!(
            g.policy.map(|b| (b.policy_id, b.retention.get())),
            Some((policy.id, 3))
        );
        let mut got = store.resources(g.id).unwrap();
        got.sort_by(|a, b| a.uri.cmp(&b.uri));
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].state, ResourceState::InitialSync);
        assert_eq!(got[1], resources[0]);
        let rps = store.recovery_points(g.id).unwrap();
        assert_eq!(rps.len(), 1);
        assert_eq!(rps[0].engine_rp, 42);
        assert!(rps[0].pending_remote_delete);
        assert_eq!(store.pending_remote_deletes().unwrap(), rps);
        assert_eq!(store.unfinished_operations().unwrap(), vec![op.clone()]);
        assert_eq!(op.params, json!({"why": "test"}));
        assert_eq!(op.group_name.as_deref(), Some("g1"));
        let view = store.group_view(g.id).unwrap();
        assert_eq!((view.resources, view.resources_in_initial_sync), (2, 1));
        assert_eq!(
            (view.manual_recovery_points, view.policy_recovery_points),
            (1, 0)
        );
        assert!(view.policy_bound);
        let _ = rp;
    }

    #[test]
    fn operation_plan_drives_finish_fail_and_rollback() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let g = mapped_group(&mut store, "g1");
        store.add_resources(g.id, &[volume("file:/a")]).unwrap();
        let start = |store: &mut Store| {
            let t = check(
                &OpRequest::StartSync { missing: vec![] },
                &store.group_view(g.id).unwrap(),
            )
            .unwrap();
            store.begin_operation(g.id, &t, &json!(null)).unwrap()
        };

        let op = start(&mut store);
        assert_eq!(store.group(g.id).unwrap().state, GroupState::StartingSync);
        // A second operation on a busy group is refused by the rules...
        let err = check(&OpRequest::StopSync, &store.group_view(g.id).unwrap()).unwrap_err();
        assert_eq!(err.reason, crate::control::rules::RefusalReason::Busy);
        let rolled = store.finish_operation(op.id, OpResult::RolledBack).unwrap();
        assert_eq!(rolled.state, OpState::RolledBack);
        assert!(rolled.finished_at.is_some());
        assert_eq!(store.group(g.id).unwrap().state, GroupState::Mapped);
        // ...and finishing twice by the store.
        assert!(matches!(
            store.finish_operation(op.id, OpResult::Succeeded),
            Err(StoreError::OperationFinished { .. })
        ));

        let op = start(&mut store);
        let failed = store
            .finish_operation(op.id, OpResult::Failed("peer said no".into()))
            .unwrap();
        assert_eq!(
            failed.state,
            OpState::Failed {
                reason: "peer said no".into()
            }
        );
        assert_eq!(
            store.group(g.id).unwrap().state,
            GroupState::StartSyncFailed
        );

        let op = start(&mut store);
        store.finish_operation(op.id, OpResult::Succeeded).unwrap();
        assert_eq!(store.group(g.id).unwrap().state, GroupState::Syncing);
        assert!(store.unfinished_operations().unwrap().is_empty());

        // Planned migration swaps the role and remembers it.
        let t = check(
            &OpRequest::Migrate { split_vms: vec![] },
            &store.group_view(g.id).unwrap(),
        )
        .unwrap();
        let op = store.begin_operation(g.id, &t, &json!({})).unwrap();
        assert_eq!(store.group(g.id).unwrap().state, GroupState::Migrating);
        store.finish_operation(op.id, OpResult::Succeeded).unwrap();
        let after = store.group(g.id).unwrap();
        assert_eq!(
            (after.role, after.state, after.migrated),
            (Role::Standby, GroupState::Mapped, true)
        );
        assert_eq!(store.operations_of_group(g.id).unwrap().len(), 5); // create + 4
    }

    #[test]
    fn begin_checked_refuses_with_the_rule_and_fills_in_store_facts() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let g1 = mapped_group(&mut store, "g1");
        let g2 = mapped_group(&mut store, "g2");
        store.add_resources(g1.id, &[volume("file:/a")]).unwrap();
        // Refused: wrong state; nothing journaled, state unchanged.
        let err = store
            .begin_checked(g1.id, &OpRequest::StopSync, &json!({}))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "stop sync is allowed only in syncing or stop_sync_failed (group 'g1' is mapped)"
        );
        assert!(matches!(err, StoreError::Refused(_)));
        assert_eq!(store.operations_of_group(g1.id).unwrap().len(), 1);
        // The caller's `already_grouped` is replaced by what the store knows.
        let add = OpRequest::AddResources {
            uris: vec!["file:/a".into()],
            already_grouped: vec![],
        };
        let err = store.begin_checked(g2.id, &add, &json!({})).unwrap_err();
        assert!(
            err.to_string().contains("file:/a is already in group 'g1'"),
            "{err}"
        );
        // Delete group: one at a time, whatever the caller says.
        let del = OpRequest::DeleteGroup {
            other_deleting: None,
        };
        let op = store.begin_checked(g1.id, &del, &json!({})).unwrap();
        assert_eq!(store.group(g1.id).unwrap().state, GroupState::Deleting);
        let err = store.begin_checked(g2.id, &del, &json!({})).unwrap_err();
        assert!(err.to_string().contains("one at a time"), "{err}");
        store
            .finish_operation(op.id, OpResult::Failed("peer unreachable".into()))
            .unwrap();
        assert_eq!(store.group(g1.id).unwrap().state, GroupState::DeleteFailed);
        store.begin_checked(g2.id, &del, &json!({})).unwrap();
    }

    #[test]
    fn deleting_a_group_keeps_its_journal() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let g = mapped_group(&mut store, "g1");
        store.add_resources(g.id, &[volume("file:/a")]).unwrap();
        let t = check(
            &OpRequest::DeleteGroup {
                other_deleting: None,
            },
            &store.group_view(g.id).unwrap(),
        )
        .unwrap();
        let op = store.begin_operation(g.id, &t, &json!({})).unwrap();
        assert_eq!(
            store.groups_in_state(GroupState::Deleting).unwrap().len(),
            1
        );
        let done = store.finish_operation(op.id, OpResult::Succeeded).unwrap();
        assert!(matches!(
            store.group(g.id),
            Err(StoreError::NotFound { what: "group", .. })
        ));
        assert!(matches!(
            store.resource("file:/a"),
            Err(StoreError::NotFound { .. })
        ));
        assert_eq!(done.group_id, None);
        assert_eq!(done.group_name.as_deref(), Some("g1"));
        assert_eq!(done.state, OpState::Succeeded);
        // The name and the resource are free again.
        let g2 = mapped_group(&mut store, "g1");
        store.add_resources(g2.id, &[volume("file:/a")]).unwrap();
    }

    #[test]
    fn compare_and_set_conflict_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let g = mapped_group(&mut store, "g1");
        let op = NewOperation {
            kind: OpKind::StartSync,
            transition: None,
            params: json!({}),
        };
        let err = store
            .transition(
                g.id,
                GroupState::StartSyncFailed,
                GroupState::StartingSync,
                Some(&op),
            )
            .unwrap_err();
        match err {
            StoreError::StateConflict {
                group,
                expected,
                actual,
            } => {
                assert_eq!(
                    (group.as_str(), expected, actual),
                    ("g1", GroupState::StartSyncFailed, GroupState::Mapped)
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(store.group(g.id).unwrap().state, GroupState::Mapped);
        assert_eq!(
            store.operations_of_group(g.id).unwrap().len(),
            1,
            "only the create"
        );
        // With the right expectation it works and journals.
        let journaled = store
            .transition(
                g.id,
                GroupState::Mapped,
                GroupState::StartingSync,
                Some(&op),
            )
            .unwrap()
            .unwrap();
        assert_eq!(journaled.state, OpState::Running);
        // A second journaled transition while one runs: busy, nothing changed.
        let err = store
            .transition(
                g.id,
                GroupState::StartingSync,
                GroupState::Syncing,
                Some(&op),
            )
            .unwrap_err();
        assert!(
            matches!(err, StoreError::GroupBusy { op, .. } if op == journaled.id),
            "{err}"
        );
        assert_eq!(store.group(g.id).unwrap().state, GroupState::StartingSync);
        // Without a journal entry (peer-driven change) it is a plain CAS.
        assert!(store
            .transition(g.id, GroupState::StartingSync, GroupState::Syncing, None)
            .unwrap()
            .is_none());
        assert_eq!(store.group(g.id).unwrap().state, GroupState::Syncing);
    }

    #[test]
    fn constraint_errors_name_the_conflict() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let g1 = mapped_group(&mut store, "g1");
        let g2 = mapped_group(&mut store, "g2");
        assert!(matches!(
            store.create_service(&service("dr")),
            Err(StoreError::NameTaken {
                what: "service",
                ..
            })
        ));
        let err = store
            .create_group(
                &NewGroup {
                    name: "g1".into(),
                    role: Role::Primary,
                    service_id: g1.service_id,
                    remote_group_id: None,
                    remote_project: "p".into(),
                },
                &json!({}),
            )
            .unwrap_err();
        assert_eq!(err.to_string(), "a group named 'g1' already exists");
        let err = store
            .create_group(
                &NewGroup {
                    name: "g3".into(),
                    role: Role::Primary,
                    service_id: ServiceId(99),
                    remote_group_id: None,
                    remote_project: "p".into(),
                },
                &json!({}),
            )
            .unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::NotFound {
                    what: "service",
                    ..
                }
            ),
            "{err}"
        );

        // One group per resource, all-or-nothing adds.
        store.add_resources(g1.id, &[volume("file:/a")]).unwrap();
        let err = store
            .add_resources(g2.id, &[volume("file:/b"), volume("file:/a")])
            .unwrap_err();
        assert_eq!(err.to_string(), "resource file:/a is already in group 'g1'");
        assert!(
            store.resources(g2.id).unwrap().is_empty(),
            "file:/b rolled back"
        );
        assert_eq!(
            store.resource_owners(&["file:/a", "file:/b"]).unwrap(),
            vec![("file:/a".into(), "g1".into())]
        );
        let err = store
            .add_resources(g2.id, &[volume("file:/c"), volume("file:/c")])
            .unwrap_err();
        assert!(matches!(err, StoreError::ResourceInGroup { .. }), "{err}");
        assert!(store.resources(g2.id).unwrap().is_empty());

        // At most 20.
        let many: Vec<NewResource> = (0..20).map(|i| volume(&format!("file:/m{i}"))).collect();
        let err = store.add_resources(g1.id, &many).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::TooManyResources {
                    have: 1,
                    adding: 20,
                    max: 20,
                    ..
                }
            ),
            "{err}"
        );
        store.add_resources(g1.id, &many[..19]).unwrap();
        assert_eq!(store.resources(g1.id).unwrap().len(), 20);

        // Removal is all-or-nothing too.
        let err = store
            .remove_resources(g1.id, &["file:/m0", "file:/nope"])
            .unwrap_err();
        assert_eq!(err.to_string(), "resource file:/nope is not in group 'g1'");
        assert!(store.resource("file:/m0").is_ok());
        store
            .remove_resources(g1.id, &["file:/m0", "file:/m1"])
            .unwrap();
        assert_eq!(store.resources(g1.id).unwrap().len(), 18);

        // Recovery points: 5 manual, unique names and engine ids.
        for i in 0..5 {
            store
                .create_recovery_point(
                    g1.id,
                    &NewRecoveryPoint {
                        name: format!("m{i}"),
                        engine_rp: i,
                        kind: RpKind::Manual,
                    },
                )
                .unwrap();
        }
        let err = store
            .create_recovery_point(
                g1.id,
                &NewRecoveryPoint {
                    name: "m5".into(),
                    engine_rp: 5,
                    kind: RpKind::Manual,
                },
            )
            .unwrap_err();
        assert!(
            matches!(err, StoreError::TooManyManualRecoveryPoints { max: 5, .. }),
            "{err}"
        );
        let err = store
            .create_recovery_point(
                g1.id,
                &NewRecoveryPoint {
                    name: "m0".into(),
                    engine_rp: 9,
                    kind: RpKind::Policy,
                },
            )
            .unwrap_err();
        assert!(
            matches!(err, StoreError::RecoveryPointExists { .. }),
            "{err}"
        );
        let err = store
            .create_recovery_point(
                g1.id,
                &NewRecoveryPoint {
                    name: "p".into(),
                    engine_rp: u64::MAX,
                    kind: RpKind::Policy,
                },
            )
            .unwrap_err();
        assert!(matches!(err, StoreError::OutOfRange { .. }), "{err}");
        // The same name in another group is fine.
        store
            .create_recovery_point(
                g2.id,
                &NewRecoveryPoint {
                    name: "m0".into(),
                    engine_rp: 0,
                    kind: RpKind::Manual,
                },
            )
            .unwrap();

        // Services and policies in use cannot be deleted.
        let err = store.delete_service(g1.service_id).unwrap_err();
        assert_eq!(
            err.to_string(),
            "delete service is refused while a group uses it (service 'dr' is used by groups 'g1', 'g2')"
        );
        let p = store.create_policy("nightly", &json!({})).unwrap();
        assert!(matches!(
            store.create_policy("nightly", &json!({})),
            Err(StoreError::NameTaken { .. })
        ));
        store
            .bind_policy(g1.id, p.id, Retention::new(2).unwrap())
            .unwrap();
        assert!(matches!(
            store.bind_policy(g1.id, p.id, Retention::new(2).unwrap()),
            Err(StoreError::PolicyAlreadyBound { .. })
        ));
        let err = store.delete_policy(p.id).unwrap_err();
        assert_eq!(
            err.to_string(),
            "policy 'nightly' is bound to group(s) g1; unbind it first"
        );
        store.unbind_policy(g1.id).unwrap();
        assert!(matches!(
            store.unbind_policy(g1.id),
            Err(StoreError::NoPolicyBound { .. })
        ));
        store.delete_policy(p.id).unwrap();

        // An unused service can go.
        let other = store.create_service(&service("spare")).unwrap();
        store.delete_service(other.id).unwrap();
        assert!(store.service(other.id).is_err());
    }

    #[test]
    fn recovery_point_life_cycle_and_pruning() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let g = mapped_group(&mut store, "g1");
        let p = store.create_policy("hourly", &json!({})).unwrap();
        store
            .bind_policy(g.id, p.id, Retention::new(2).unwrap())
            .unwrap();
        let mut ids = Vec::new();
        for i in 0..4u64 {
            let rp = store
                .create_recovery_point(
                    g.id,
                    &NewRecoveryPoint {
                        name: format!("p{i}"),
                        engine_rp: i,
                        kind: RpKind::Policy,
                    },
                )
                .unwrap();
            assert_eq!(rp.state, RpState::Creating);
            store
                .set_recovery_point_state(rp.id, RpState::Creating, RpState::Complete)
                .unwrap();
            ids.push(rp.id);
        }
        let err = store
            .set_recovery_point_state(ids[0], RpState::Creating, RpState::Complete)
            .unwrap_err();
        assert!(matches!(err, StoreError::RpStateConflict { .. }), "{err}");
        let prune: Vec<RpId> = store
            .policy_recovery_points_to_prune(g.id)
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(
            prune,
            vec![ids[0], ids[1]],
            "the two oldest go, the newest 2 stay"
        );
        store
            .set_recovery_point_state(ids[0], RpState::Complete, RpState::Deleting)
            .unwrap();
        let deleted = store.delete_recovery_point(ids[0]).unwrap();
        assert_eq!(deleted.name, "p0");
        let prune: Vec<RpId> = store
            .policy_recovery_points_to_prune(g.id)
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(prune, vec![ids[1]]);
        assert_eq!(store.recovery_point_by_name(g.id, "p3").unwrap().id, ids[3]);
        assert_eq!(
            store
                .mark_recovery_points_unusable(g.id, Some(ids[2]))
                .unwrap(),
            2
        );
        let states: Vec<RpState> = store
            .recovery_points(g.id)
            .unwrap()
            .iter()
            .map(|r| r.state)
            .collect();
        assert_eq!(
            states,
            vec![RpState::Unusable, RpState::Complete, RpState::Unusable]
        );
    }

    #[test]
    fn dropped_transaction_leaves_the_previous_state() {
        let dir = tempfile::tempdir().unwrap();
        let gid;
        {
            let mut store = Store::open(dir.path()).unwrap();
            gid = mapped_group(&mut store, "g1").id;
            let tx = store.connection().transaction().unwrap();
            tx.execute(
                "UPDATE protection_groups SET state = 'syncing' WHERE id = ?1",
                [gid],
            )
            .unwrap();
            tx.execute(
                "INSERT INTO operations (group_id, kind, state, started_at, params) VALUES (?1, 'start_sync', 'running', 0, '{}')",
                [gid],
            )
            .unwrap();
            // Dropped without commit (as if the call returned early with an error).
            drop(tx);
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.group(gid).unwrap().state, GroupState::Mapped);
        assert!(store.unfinished_operations().unwrap().is_empty());
    }

    const CRASH_DIR_ENV: &str = "FERRY_CONTROL_STORE_CRASH_DIR";

    /// Child half of `crash_mid_transaction_loses_only_the_open_transaction`:
    /// commits a start-sync operation, then dies (abort: no destructors, no
    /// rollback, like SIGKILL) in the middle of the transaction finishing it.
    #[test]
    #[ignore = "run by crash_mid_transaction_loses_only_the_open_transaction in a child process"]
    fn crash_child() {
        let Some(dir) = std::env::var_os(CRASH_DIR_ENV) else {
            return;
        };
        let mut store = Store::open(Path::new(&dir)).unwrap();
        let g = mapped_group(&mut store, "g1");
        store.add_resources(g.id, &[volume("file:/a")]).unwrap();
        let t = check(
            &OpRequest::StartSync { missing: vec![] },
            &store.group_view(g.id).unwrap(),
        )
        .unwrap();
        store.begin_operation(g.id, &t, &json!({"n": 1})).unwrap();
        let tx = store.connection().transaction().unwrap();
        tx.execute("UPDATE protection_groups SET state = 'syncing'", [])
            .unwrap();
        tx.execute("UPDATE operations SET state = 'succeeded'", [])
            .unwrap();
        tx.execute("DELETE FROM resources", []).unwrap();
        std::process::abort();
    }

    #[test]
    fn crash_mid_transaction_loses_only_the_open_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "control::store::tests::crash_child",
                "--ignored",
                "--test-threads=1",
            ])
            .env(CRASH_DIR_ENV, dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGABRT),
            "the child must die mid-transaction: {status}"
        );
        let store = Store::open(dir.path()).unwrap();
        let g = store.group_by_name("g1").unwrap();
        assert_eq!(
            g.state,
            GroupState::StartingSync,
            "committed state survives, open tx is gone"
        );
        assert_eq!(store.resources(g.id).unwrap().len(), 1);
        let unfinished = store.unfinished_operations().unwrap();
        assert_eq!(unfinished.len(), 1);
        assert_eq!(unfinished[0].kind, OpKind::StartSync);
        assert_eq!(unfinished[0].params, json!({"n": 1}));
        let t = unfinished[0].transition.unwrap();
        assert_eq!(
            (t.from, t.during, t.on_failure),
            (
                GroupState::Mapped,
                GroupState::StartingSync,
                GroupState::StartSyncFailed
            )
        );
    }

    #[test]
    fn migrates_a_version_1_database() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut v1 = Store::open_at_version(dir.path(), 1).unwrap();
            assert_eq!(v1.schema_version().unwrap(), 1);
            let conn = v1.connection();
            conn.execute_batch(&format!(
                "INSERT INTO services VALUES (1, 'dr', 'a:1', 'b:2', '{}', 10);
                 INSERT INTO protection_groups (id, name, role, state, service_id, remote_project, created_at)
                     VALUES (1, 'g1', 'primary', 'syncing', 1, 'tenant', 11);
                 INSERT INTO resources VALUES ('file:/a', 1, 'volume', NULL, NULL, 4096, 'a', 'syncing');
                 INSERT INTO recovery_points VALUES (1, 1, 'rp1', 3, 'manual', 12, 'complete');
                 INSERT INTO operations (group_id, group_name, kind, state, started_at, params)
                     VALUES (1, 'g1', 'start_sync', 'running', 13, '{{}}');",
                "ab".repeat(32)
            ))
            .unwrap();
            // v1 has none of v2's columns.
            assert!(conn
                .execute("UPDATE recovery_points SET pending_remote_delete = 1", [])
                .is_err());
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
        let g = store.group_by_name("g1").unwrap();
        assert_eq!(
            (g.state, g.migrated, g.new_primary),
            (GroupState::Syncing, false, false)
        );
        assert_eq!(
            store.service(g.service_id).unwrap().remote_fingerprint,
            AgentId([0xab; 32])
        );
        assert_eq!(store.resource("file:/a").unwrap().size_bytes, 4096);
        let rp = store.recovery_point_by_name(g.id, "rp1").unwrap();
        assert!(!rp.pending_remote_delete);
        assert_eq!(rp.state, RpState::Complete);
        let ops = store.unfinished_operations().unwrap();
        assert_eq!(ops.len(), 1);
        assert_eq!(ops[0].transition, None);
        drop(store);
        // Opening again is a no-op.
        assert_eq!(
            Store::open(dir.path()).unwrap().schema_version().unwrap(),
            SCHEMA_VERSION
        );
    }

    #[test]
    fn refuses_a_newer_schema_and_damaged_rows() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = Store::open(dir.path()).unwrap();
            mapped_group(&mut store, "g1");
            store
                .connection()
                .execute_batch("UPDATE protection_groups SET state = 'exploded'")
                .unwrap();
        }
        {
            let store = Store::open(dir.path()).unwrap();
            let err = store.group_by_name("g1").unwrap_err();
            let chain = format!("{err}: {:?}", std::error::Error::source(&err));
            assert!(chain.contains("exploded"), "{chain}");
        }
        {
            let mut store = Store::open(dir.path()).unwrap();
            store
                .connection()
                .pragma_update(None, "user_version", 99)
                .unwrap();
        }
        let err = Store::open(dir.path()).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::TooNew {
                    found: 99,
                    supported: SCHEMA_VERSION,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn service_update_and_group_remote_id() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let g = mapped_group(&mut store, "g1");
        let svc = store
            .update_service(g.service_id, "10.0.0.1:1", "10.0.0.2:2", AgentId([1; 32]))
            .unwrap();
        assert_eq!(
            (svc.local_endpoint.as_str(), svc.remote_endpoint.as_str()),
            ("10.0.0.1:1", "10.0.0.2:2")
        );
        assert_eq!(store.service_by_name("dr").unwrap(), svc);
        assert!(matches!(
            store.update_service(ServiceId(77), "a", "b", AgentId([0; 32])),
            Err(StoreError::NotFound { .. })
        ));
        assert_eq!(
            store
                .set_remote_group_id(g.id, Some(17))
                .unwrap()
                .remote_group_id,
            Some(17)
        );
        let p = store.create_policy("x", &json!({"a": 1})).unwrap();
        assert_eq!(
            store
                .update_policy_schedule(p.id, &json!({"a": 2}))
                .unwrap()
                .schedule,
            json!({"a": 2})
        );
        assert_eq!(store.policy_by_name("x").unwrap().schedule, json!({"a": 2}));
        store
            .bind_policy(g.id, p.id, Retention::new(1).unwrap())
            .unwrap();
        assert_eq!(store.groups_bound_to(p.id).unwrap().len(), 1);
        let op = store
            .begin_service_operation(OpKind::DeleteService, &json!({"service": 1}))
            .unwrap();
        assert_eq!(op.group_id, None);
        let done = store.finish_operation(op.id, OpResult::Succeeded).unwrap();
        assert_eq!(done.state, OpState::Succeeded);
    }

    #[test]
    fn pairing_secrets_work_once_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        store.create_pairing_secret("h1", Timestamp(1_000)).unwrap();
        store.create_pairing_secret("h2", Timestamp(1_000)).unwrap();
        let reason = |e: StoreError| match e {
            StoreError::PairingSecret { reason } => reason,
            other => panic!("{other}"),
        };
        assert!(reason(
            store
                .consume_pairing_secret("nope", Timestamp(5))
                .unwrap_err()
        )
        .contains("unknown"));
        store.consume_pairing_secret("h1", Timestamp(999)).unwrap();
        assert!(reason(
            store
                .consume_pairing_secret("h1", Timestamp(999))
                .unwrap_err()
        )
        .contains("already used"));
        assert!(reason(
            store
                .consume_pairing_secret("h2", Timestamp(1_000))
                .unwrap_err()
        )
        .contains("expired"));
        // Survives a reopen.
        drop(store);
        let mut store = Store::open(dir.path()).unwrap();
        assert!(store.consume_pairing_secret("h1", Timestamp(1)).is_err());
        assert!(store.recent_operations(10).unwrap().is_empty());
    }
}
