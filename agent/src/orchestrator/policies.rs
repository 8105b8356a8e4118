//! Policies: named schedules of recovery points ([`PolicySchedule`]),
//! bound to a group with a retention. The scheduler (`run_policies`, run by
//! the background tick) takes the latest due slot of every bound syncing
//! primary group as a policy recovery point (named by its slot, so a
//! restart never fires a slot twice) and prunes policy points beyond the
//! retention.

use std::sync::Arc;

use serde_json::{json, Value};
use tracing::{info, warn};

use super::{hold, CtlError, CtlResult, Orchestrator};
use crate::control::{
    Group, GroupId, GroupState, OpRequest, OpResult, Operation, OperationId, Policy, Retention,
    Role, RpKind, RpState,
};
use crate::schedule::PolicySchedule;

impl Orchestrator {
    /// Creates a policy; the schedule is validated as a [`PolicySchedule`].
    pub fn create_policy(&self, name: &str, schedule: &Value) -> CtlResult<Policy> {
        serde_json::from_value::<PolicySchedule>(schedule.clone())
            .map_err(|e| CtlError::BadRequest(format!("bad policy schedule: {e}")))?;
        self.db(|s| s.create_policy(name, schedule))
    }

    /// All policies.
    pub fn policies(&self) -> CtlResult<Vec<Policy>> {
        self.db(|s| s.policies())
    }

    fn policy(&self, key: &str) -> CtlResult<Policy> {
        self.db(|s| s.policy_by_name(key))
    }

    /// Deletes a policy (refused while bound).
    pub fn delete_policy(&self, key: &str) -> CtlResult<()> {
        let p = self.policy(key)?;
        self.db(|s| s.delete_policy(p.id))
    }

    /// Binds a policy to a group with a retention.
    pub fn bind_policy(&self, group: &str, policy: &str, retention: u8) -> CtlResult<Operation> {
        let g = self.group(group)?;
        let p = self.policy(policy)?;
        let op = self.db(|s| {
            s.begin_checked(
                g.id,
                &OpRequest::BindPolicy { retention },
                &json!({ "policy": p.name, "retention": retention }),
            )
        })?;
        let result = Retention::new(retention)
            .map_err(|e| CtlError::BadRequest(e.to_string()))
            .and_then(|r| self.db(|s| s.bind_policy(g.id, p.id, r)));
        self.finish_now(op.id, result.map(|_| ()))
    }

    /// Unbinds a group's policy.
    pub fn unbind_policy(&self, group: &str) -> CtlResult<Operation> {
        let g = self.group(group)?;
        let op = self.db(|s| s.begin_checked(g.id, &OpRequest::UnbindPolicy, &json!({})))?;
        let result = self.db(|s| s.unbind_policy(g.id)).map(|_| ());
        self.finish_now(op.id, result)
    }

    fn finish_now(&self, op: OperationId, result: CtlResult<()>) -> CtlResult<Operation> {
        match result {
            Ok(()) => self.db(|s| s.finish_operation(op, OpResult::Succeeded)),
            Err(e) => {
                let _ = self.db(|s| s.finish_operation(op, OpResult::Failed(e.to_string())));
                Err(e)
            }
        }
    }

    pub(super) async fn run_policies(self: &Arc<Self>) -> CtlResult<()> {
        let now = jiff::Timestamp::now();
        for g in self.db(|s| s.groups_in_state(GroupState::Syncing))? {
            let Some(binding) = g.policy else { continue };
            if g.role != Role::Primary || !self.drives(&g) {
                continue;
            }
            let policy = self.db(|s| s.policy(binding.policy_id))?;
            let Ok(schedule) = serde_json::from_value::<PolicySchedule>(policy.schedule.clone())
            else {
                continue;
            };
            let last = self.policy_last_fired(g.id, &policy)?;
            let due = schedule.due(last, now);
            let Some(slot) = due.fire else {
                continue;
            };
            if due.skipped > 0 {
                warn!(group = %g.name, skipped = due.skipped, "policy slots missed while the agent was down; firing the latest once");
            }
            let name = format!("{}-{}", policy.name, slot.as_millisecond());
            // The recovery point's name records the slot: a restart never
            // fires the same slot twice.
            if self.db(|s| s.recovery_point_by_name(g.id, &name)).is_ok() {
                continue;
            }
            match self.create_rp_with(g.clone(), name, RpKind::Policy) {
                Ok(op) => {
                    info!(group = %g.name, op = %op.id, "policy recovery point started");
                    hold::reach("policy::started");
                }
                Err(e) => {
                    tracing::debug!(group = %g.name, error = %e, "policy recovery point not started")
                }
            }
        }
        self.prune_policy_points().await
    }

    /// For a primary group with a bound policy: the newest slot of its
    /// schedule that has passed (fired or not) and the slot of its newest
    /// complete policy recovery point (0: none), both in ms since the Unix
    /// epoch — the metrics that show a slot without its recovery point.
    pub(super) fn policy_slots(&self, g: &Group) -> Option<(u64, u64)> {
        let binding = g.policy.as_ref().filter(|_| g.role == Role::Primary)?;
        let policy = self.db(|s| s.policy(binding.policy_id)).ok()?;
        let schedule = serde_json::from_value::<PolicySchedule>(policy.schedule.clone()).ok()?;
        let last_fired = self.policy_last_fired(g.id, &policy).ok()?;
        let due = schedule.due(last_fired, jiff::Timestamp::now());
        let slot = due.new_last_fired.or(last_fired)?;
        let prefix = format!("{}-", policy.name);
        let point = self
            .db(|s| s.recovery_points(g.id))
            .ok()?
            .into_iter()
            .filter(|rp| rp.kind == RpKind::Policy && rp.state == RpState::Complete)
            .filter_map(|rp| rp.name.strip_prefix(&prefix)?.parse::<u64>().ok())
            .max()
            .unwrap_or(0);
        Some((slot.as_millisecond().max(0) as u64, point))
    }

    fn policy_last_fired(
        &self,
        gid: GroupId,
        policy: &Policy,
    ) -> CtlResult<Option<jiff::Timestamp>> {
        let prefix = format!("{}-", policy.name);
        let last = self
            .db(|s| s.recovery_points(gid))?
            .into_iter()
            .filter(|rp| rp.kind == RpKind::Policy)
            .filter_map(|rp| rp.name.strip_prefix(&prefix)?.parse::<i64>().ok())
            .max();
        Ok(last.and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok()))
    }

    async fn prune_policy_points(self: &Arc<Self>) -> CtlResult<()> {
        for g in self.groups()? {
            if g.role != Role::Primary || g.policy.is_none() {
                continue;
            }
            for rp in self.db(|s| s.policy_recovery_points_to_prune(g.id))? {
                self.db(|s| {
                    s.set_recovery_point_state(rp.id, RpState::Complete, RpState::Deleting)
                })?;
                self.db(|s| s.set_pending_remote_delete(rp.id, true))?;
                let _ = self.propagate_one(&g, &rp).await;
            }
        }
        Ok(())
    }
}
