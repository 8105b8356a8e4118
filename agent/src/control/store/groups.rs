//! Protection groups: creating one (with its `create_group` operation),
//! reading them, the peer group's id, binding a policy, the pending stop
//! sync flag, and the facts `rules::check` reads (`group_view`).

use rusqlite::{params, OptionalExtension};

use super::journal::insert_operation;
use super::rows::{
    get_group, get_operation, get_policy, get_service, group_row, group_view, is_unique_violation,
    query_all, to_json, Ctx, GROUP_COLS,
};
use super::Store;
use crate::control::error::{StoreError, StoreResult};
use crate::control::model::{
    Group, GroupId, GroupState, NewGroup, OpKind, Operation, Outcome, PolicyId, Retention,
    Timestamp, Transition,
};
use crate::control::rules::GroupView;
use crate::control::RpoThresholds;

/// A threshold in seconds as SQLite's signed integer.
fn secs(v: Option<u64>) -> StoreResult<Option<i64>> {
    v.map(|s| {
        i64::try_from(s).map_err(|_| StoreError::Sqlite {
            context: format!("RPO threshold {s}s is out of range"),
            source: rusqlite::Error::IntegralValueOutOfRange(0, i64::MAX),
        })
    })
    .transpose()
}

impl Store {
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
            "INSERT INTO protection_groups (name, role, state, service_id, remote_group_id, remote_project, created_at, rpo_warn_secs, rpo_crit_secs)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![new.name, new.role, GroupState::Created, new.service_id, new.remote_group_id, new.remote_project, now, secs(new.rpo.warn_secs)?, secs(new.rpo.crit_secs)?],
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
        get_group(self.conn(), id)
    }

    /// The group with this name.
    pub fn group_by_name(&self, name: &str) -> StoreResult<Group> {
        self.conn()
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
            self.conn(),
            &format!("SELECT {GROUP_COLS} FROM protection_groups ORDER BY id"),
            [],
            group_row,
            || "list groups".into(),
        )
    }

    /// Groups currently in `state` (e.g. the one being deleted).
    pub fn groups_in_state(&self, state: GroupState) -> StoreResult<Vec<Group>> {
        query_all(
            self.conn(),
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

    /// Sets the group's RPO thresholds (checked by the caller: see
    /// [`RpoThresholds::new`]).
    pub fn set_rpo_thresholds(&mut self, id: GroupId, rpo: RpoThresholds) -> StoreResult<Group> {
        let tx = self.write(|| format!("set RPO thresholds of group {id}"))?;
        let n = tx
            .execute(
                "UPDATE protection_groups SET rpo_warn_secs = ?2, rpo_crit_secs = ?3 WHERE id = ?1",
                params![id, secs(rpo.warn_secs)?, secs(rpo.crit_secs)?],
            )
            .ctx(|| format!("set RPO thresholds of group {id}"))?;
        if n == 0 {
            return Err(StoreError::NotFound {
                what: "group",
                key: id.to_string(),
            });
        }
        let g = get_group(&tx, id)?;
        tx.commit()
            .ctx(|| format!("commit RPO thresholds of group '{}'", g.name))?;
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
}
