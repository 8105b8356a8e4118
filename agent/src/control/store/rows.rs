//! Row ↔ model conversions for the store: how each enum, id and time is
//! stored in a column, the column list and row reader of each table, the
//! SQL error helpers, and the shared by-key reads (`get_group`,
//! `get_operation`, …, and the `GroupView` facts) that every per-object
//! file uses. Keeping these reads here means the per-object files never
//! import one another for a look-up.

use ferry_protocol::AgentId;
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, Type, ValueRef};
use rusqlite::{Connection, OptionalExtension, Row, ToSql};

use crate::control::error::{StoreError, StoreResult};
use crate::control::model::{
    DrillPhase, Group, GroupId, GroupState, OpKind, OpState, Operation, OperationId, Policy,
    PolicyBinding, PolicyId, RecoveryPoint, Resource, ResourceKind, ResourceState, Retention, Role,
    RpId, RpKind, RpState, Service, ServiceId, Timestamp,
};
use crate::control::rules::GroupView;
use crate::control::RpoThresholds;

/// Adds what the store was doing to a SQLite error.
pub(super) trait Ctx<T> {
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

pub(super) fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
    )
}

pub(super) fn to_i64(what: &'static str, value: u64) -> StoreResult<i64> {
    i64::try_from(value).map_err(|_| StoreError::OutOfRange { what, value })
}

pub(super) fn to_json(what: &'static str, value: &impl serde::Serialize) -> StoreResult<String> {
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
sql_text_enum!(
    Role,
    GroupState,
    ResourceState,
    RpKind,
    RpState,
    OpKind,
    DrillPhase
);

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

pub(super) const SERVICE_COLS: &str =
    "id, name, local_endpoint, remote_endpoint, remote_fingerprint, created_at";

pub(super) fn service_row(row: &Row<'_>) -> rusqlite::Result<Service> {
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

pub(super) const GROUP_COLS: &str = "id, name, role, new_primary, migrated, state, service_id, \
     remote_group_id, remote_project, policy_id, retention, created_at, rpo_warn_secs, rpo_crit_secs";

#[derive(Debug, thiserror::Error)]
#[error("policy binding with retention {0:?} and policy {1:?} (both or neither, retention 1..=5)")]
struct BadBinding(Option<i64>, Option<i64>);

pub(super) fn group_row(row: &Row<'_>) -> rusqlite::Result<Group> {
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
        rpo: RpoThresholds {
            warn_secs: row.get(12)?,
            crit_secs: row.get(13)?,
        },
    })
}

pub(super) const RESOURCE_COLS: &str =
    "uri, group_id, kind, vm, boot, size_bytes, standby_target, state, volume";

#[derive(Debug, thiserror::Error)]
#[error("resource kind {0:?} without its VM fields")]
struct BadResourceKind(String);

pub(super) fn resource_row(row: &Row<'_>) -> rusqlite::Result<Resource> {
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
        volume: row.get(8)?,
    })
}

pub(super) const RP_COLS: &str =
    "id, group_id, name, engine_rp, kind, created_at, state, pending_remote_delete";

pub(super) fn rp_row(row: &Row<'_>) -> rusqlite::Result<RecoveryPoint> {
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

pub(super) const POLICY_COLS: &str = "id, name, schedule, created_at";

pub(super) fn policy_row(row: &Row<'_>) -> rusqlite::Result<Policy> {
    Ok(Policy {
        id: row.get(0)?,
        name: row.get(1)?,
        schedule: json_column(row, 2)?,
        created_at: row.get(3)?,
    })
}

pub(super) const OP_COLS: &str =
    "id, group_id, group_name, kind, state, failure_reason, transition, \
     started_at, finished_at, params";

#[derive(Debug, thiserror::Error)]
#[error("operation state {0:?}")]
struct BadOpState(String);

pub(super) fn op_row(row: &Row<'_>) -> rusqlite::Result<Operation> {
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

pub(super) fn query_all<T, P: rusqlite::Params>(
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

pub(super) fn get_service(conn: &Connection, id: ServiceId) -> StoreResult<Service> {
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

pub(super) fn get_policy(conn: &Connection, id: PolicyId) -> StoreResult<Policy> {
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

pub(super) fn get_group(conn: &Connection, id: GroupId) -> StoreResult<Group> {
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

pub(super) fn get_resource(conn: &Connection, uri: &str) -> StoreResult<Resource> {
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

pub(super) fn get_rp(conn: &Connection, id: RpId) -> StoreResult<RecoveryPoint> {
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

pub(super) fn get_operation(conn: &Connection, id: OperationId) -> StoreResult<Operation> {
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

pub(super) fn owner_of(conn: &Connection, uri: &str) -> StoreResult<Option<String>> {
    conn.query_row(
        "SELECT g.name FROM resources r JOIN protection_groups g ON g.id = r.group_id WHERE r.uri = ?1",
        [uri],
        |r| r.get(0),
    )
    .optional()
    .ctx(|| format!("look up the group of resource {uri}"))
}

pub(super) fn group_view(conn: &Connection, id: GroupId) -> StoreResult<GroupView> {
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
    let drill: Option<DrillPhase> = conn
        .query_row("SELECT phase FROM drills WHERE group_id = ?1", [id], |r| {
            r.get(0)
        })
        .optional()
        .ctx(|| format!("look for a drill of group '{}'", g.name))?;
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
        drill,
    })
}
