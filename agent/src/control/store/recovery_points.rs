//! Recovery points: creating them (at most 5 manual ones per group), their
//! state, deletions the standby has not heard of yet, marking the others
//! unusable after a failover, and which policy points retention prunes.

use rusqlite::{params, OptionalExtension};

use super::rows::{
    get_group, get_rp, is_unique_violation, query_all, rp_row, to_i64, Ctx, RP_COLS,
};
use super::Store;
use crate::control::error::{StoreError, StoreResult};
use crate::control::model::{
    GroupId, NewRecoveryPoint, RecoveryPoint, RpId, RpKind, RpState, Timestamp,
    MAX_MANUAL_RECOVERY_POINTS,
};

impl Store {
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
        get_rp(self.conn(), id)
    }

    /// The recovery point of a group with this name.
    pub fn recovery_point_by_name(&self, group: GroupId, name: &str) -> StoreResult<RecoveryPoint> {
        self.conn()
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
            self.conn(),
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
            self.conn(),
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
        let g = get_group(self.conn(), group)?;
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
}
