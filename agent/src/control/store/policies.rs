//! Policies (named, opaque schedules) and which groups are bound to them.
//! A policy is deleted only while no group is bound to it.

use rusqlite::{params, OptionalExtension};

use super::rows::{
    get_policy, group_row, is_unique_violation, policy_row, query_all, to_json, Ctx, GROUP_COLS,
    POLICY_COLS,
};
use super::Store;
use crate::control::error::{StoreError, StoreResult};
use crate::control::model::{Group, Policy, PolicyId, Timestamp};

impl Store {
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
        get_policy(self.conn(), id)
    }

    /// The policy with this name.
    pub fn policy_by_name(&self, name: &str) -> StoreResult<Policy> {
        self.conn()
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
            self.conn(),
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
            self.conn(),
            &format!("SELECT {GROUP_COLS} FROM protection_groups WHERE policy_id = ?1 ORDER BY id"),
            [policy],
            group_row,
            || format!("list groups bound to policy {policy}"),
        )
    }
}
