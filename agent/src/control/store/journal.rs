//! The operation journal: starting an operation together with its group's
//! state change (checked against the rules, compare-and-set, one operation
//! per group), finishing it per its recorded plan, and reading the journal
//! back (unfinished operations after a restart, a group's history).

use rusqlite::{params, OptionalExtension, Transaction};

use super::rows::{
    get_group, get_operation, get_resource, group_view, op_row, owner_of, query_all, to_json, Ctx,
    OP_COLS,
};
use super::Store;
use crate::control::error::{StoreError, StoreResult};
use crate::control::model::{
    Group, GroupId, GroupState, OpKind, OpState, Operation, OperationId, Outcome, Timestamp,
    Transition,
};
use crate::control::rules::{self, OpRequest};

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

impl Store {
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
        let op = begin_checked_in(&tx, id, req, &text)?;
        tx.commit().ctx(|| {
            format!(
                "commit start of {} on group '{}'",
                op.kind,
                op.group_name.clone().unwrap_or_default()
            )
        })?;
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

    /// Gives resources new URIs (`(old, new)` pairs) in one transaction,
    /// while an operation runs: a re-protect names them by the new
    /// primary's volumes before its first cycle. Repeatable (a resource
    /// already named `new` is fine).
    pub fn rename_resources(&mut self, renames: &[(String, String)]) -> StoreResult<()> {
        let tx = self.write(|| "rename resources".to_owned())?;
        rename_resources_in(&tx, renames)?;
        tx.commit().ctx(|| "commit resource renames".to_owned())
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
        rename_resources_in(&tx, renames)?;
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
            self.conn(),
            &format!("SELECT {OP_COLS} FROM operations WHERE state = 'running' ORDER BY id"),
            [],
            op_row,
            || "list unfinished operations".into(),
        )
    }

    /// One journal entry.
    pub fn operation(&self, id: OperationId) -> StoreResult<Operation> {
        get_operation(self.conn(), id)
    }

    /// A group's journal, oldest first.
    pub fn operations_of_group(&self, id: GroupId) -> StoreResult<Vec<Operation>> {
        query_all(
            self.conn(),
            &format!("SELECT {OP_COLS} FROM operations WHERE group_id = ?1 ORDER BY id"),
            [id],
            op_row,
            || format!("list operations of group {id}"),
        )
    }

    /// The newest `limit` journal entries, newest first.
    pub fn recent_operations(&self, limit: usize) -> StoreResult<Vec<Operation>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        query_all(
            self.conn(),
            &format!("SELECT {OP_COLS} FROM operations ORDER BY id DESC LIMIT ?1"),
            [limit],
            op_row,
            || "list operations".into(),
        )
    }
}

/// [`Store::begin_checked`] inside the caller's transaction (a drill's
/// start and end write their record in the same one).
pub(super) fn begin_checked_in(
    tx: &Transaction<'_>,
    id: GroupId,
    req: &OpRequest,
    text: &str,
) -> StoreResult<Operation> {
    let view = group_view(tx, id)?;
    let req = match req {
        OpRequest::AddResources { uris, .. } => {
            let mut already_grouped = Vec::new();
            for uri in uris {
                if let Some(group) = owner_of(tx, uri)? {
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
    let group = cas_state(tx, id, t.from, t.during)?;
    refuse_if_busy(tx, &group)?;
    let op_id = insert_operation(tx, &group, t.op, Some(&t), text)?;
    get_operation(tx, op_id)
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

pub(super) fn insert_operation(
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

fn rename_resources_in(
    tx: &rusqlite::Transaction<'_>,
    renames: &[(String, String)],
) -> StoreResult<()> {
    for (old, new) in renames {
        let n = tx
            .execute(
                "UPDATE resources SET uri = ?2 WHERE uri = ?1",
                params![old, new],
            )
            .ctx(|| format!("rename resource {old} to {new}"))?;
        if n == 0 && get_resource(tx, new).is_err() {
            return Err(StoreError::NotFound {
                what: "resource",
                key: old.clone(),
            });
        }
    }
    Ok(())
}
