//! Recovery after a restart: operations a killed agent left `running` are
//! finished by repeating their idempotent step (create group, start and
//! stop sync, delete group: on a standby, removing its copies) or rolled back / failed with "interrupted
//! by an agent restart"; syncing primary groups resume replicating; then
//! the background tick starts (policy scheduler, deferred recovery point
//! deletions, deferred stop syncs). In a multi-agent site a primary group's
//! operations are finished, and its replication resumed, by the agent that
//! takes its lease (`leases.rs`), and the tick skips the groups this agent
//! does not drive.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tracing::{info, warn};

use super::{CtlResult, Orchestrator};
use crate::control::{
    DrillPhase, GroupId, GroupState, OpKind, OpResult, Operation, ResourceState, Role, RpState,
};

/// How often the policy scheduler and deferred deletions run.
const TICK: Duration = Duration::from_secs(1);

impl Orchestrator {
    /// Finishes or rolls back what a previous run left in flight, then
    /// resumes every syncing primary group and starts the scheduler tick.
    pub async fn recover_and_resume(self: &Arc<Self>) -> CtlResult<()> {
        for op in self.db(|s| s.unfinished_operations())? {
            // A leased group's operations are finished by the agent that
            // takes its lease (`take_over`), never by every agent that starts.
            if self.leases.is_some() && self.leased(op.group_id) {
                continue;
            }
            self.finish_interrupted(&op).await;
        }
        for g in self.db(|s| s.groups_in_state(GroupState::Syncing))? {
            if g.role == Role::Primary && self.drives(&g) {
                info!(group = %g.name, "resuming replication");
                self.start_loop(g.id);
            }
        }
        self.spawn_placement();
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            loop {
                tick.tick().await;
                me.tick().await;
            }
        });
        Ok(())
    }

    /// Whether group `gid` (of an operation) is a primary group, driven
    /// under a lease in a multi-agent site.
    fn leased(&self, gid: Option<GroupId>) -> bool {
        gid.and_then(|gid| self.db(|s| s.group(gid)).ok())
            .is_some_and(|g| g.role == Role::Primary)
    }

    /// Finishes the operations of group `gid` a previous holder of its
    /// lease left running (it is dead or fenced: none of them runs any
    /// more). A group creation is left to the agent that made it.
    pub(super) async fn recover_group_operations(self: &Arc<Self>, gid: GroupId) {
        let unfinished = match self.db(|s| s.unfinished_operations()) {
            Ok(ops) => ops,
            Err(error) => {
                warn!(group = %gid, %error, "cannot list the operations left running");
                return;
            }
        };
        for op in unfinished {
            if op.group_id == Some(gid) && op.kind != OpKind::CreateGroup && !self.runs_here(op.id)
            {
                self.finish_interrupted(&op).await;
            }
        }
    }

    /// Finishes or rolls back one operation a killed agent left running.
    async fn finish_interrupted(self: &Arc<Self>, op: &Operation) {
        info!(op = %op.id, kind = %op.kind, group = ?op.group_name, "finishing an operation interrupted by a restart");
        let (result, label) = match self.recover_operation(op).await {
            Ok(r) => (r, "finished"),
            Err(e) => (
                OpResult::Failed(format!("interrupted by an agent restart; {e}")),
                "failed",
            ),
        };
        match self.db(|s| s.finish_operation(op.id, result)) {
            Ok(done) => {
                info!(op = %op.id, state = done.state.as_str(), "{label} after restart")
            }
            Err(error) => warn!(op = %op.id, %error, "cannot finish an interrupted operation"),
        }
    }

    async fn recover_operation(self: &Arc<Self>, op: &Operation) -> CtlResult<OpResult> {
        let interrupted = || OpResult::Failed("interrupted by an agent restart".into());
        let Some(gid) = op.group_id else {
            return Ok(interrupted());
        };
        let g = self.db(|s| s.group(gid))?;
        Ok(match op.kind {
            OpKind::CreateGroup if g.role == Role::Primary => {
                self.map_remote_group(&g).await?;
                OpResult::Succeeded
            }
            OpKind::CreateGroup => OpResult::Succeeded,
            OpKind::StartSync => {
                self.start_sync_steps(&g).await?;
                OpResult::Succeeded
            }
            OpKind::StopSync => {
                self.stop_sync_steps(&g).await?;
                OpResult::Succeeded
            }
            OpKind::DeleteGroup if g.role == Role::Primary => {
                self.delete_primary_group(&g).await?;
                OpResult::Succeeded
            }
            OpKind::DeleteGroup => {
                // The standby copies go with the group: a kill between the
                // journal entry and their removal must not leave them in
                // the store, unowned (volumes a failover made are released
                // by the store, not removed).
                let resources = self.db(|s| s.resources(gid))?;
                self.remove_standby_images(&resources).await?;
                OpResult::Succeeded
            }
            OpKind::AddResources => {
                // Resources still pending were never confirmed by the standby.
                let pending: Vec<String> = self
                    .db(|s| s.resources(gid))?
                    .into_iter()
                    .filter(|r| r.state == ResourceState::Pending)
                    .map(|r| r.uri)
                    .collect();
                let refs: Vec<&str> = pending.iter().map(String::as_str).collect();
                if !refs.is_empty() {
                    self.db(|s| s.remove_resources(gid, &refs))?;
                }
                OpResult::RolledBack
            }
            OpKind::CreateRecoveryPoint => {
                // The standby may have recorded (and pinned) the point just
                // before the kill: delete it there too, deferred like any
                // deletion (absent there counts as deleted).
                if let Some(name) = op.params.get("name").and_then(Value::as_str) {
                    if let Ok(rp) = self.db(|s| s.recovery_point_by_name(gid, name)) {
                        if rp.state == RpState::Creating {
                            self.db(|s| {
                                s.set_recovery_point_state(
                                    rp.id,
                                    RpState::Creating,
                                    RpState::Deleting,
                                )
                            })?;
                            self.db(|s| s.set_pending_remote_delete(rp.id, true))?;
                        }
                    }
                }
                OpResult::RolledBack
            }
            // A drill's start or end is retried by the operator; one that
            // got as far as its last store write is done.
            OpKind::Drill => match self.db(|s| s.drill(gid))?.map(|d| d.phase) {
                Some(DrillPhase::Active) => OpResult::Succeeded,
                _ => OpResult::Failed(format!(
                    "interrupted by an agent restart; retry it (ferry group drill {0}) or \
                     end it (ferry group drill {0} --end)",
                    g.name
                )),
            },
            OpKind::EndDrill => match self.db(|s| s.drill(gid))? {
                None => OpResult::Succeeded,
                Some(_) => OpResult::Failed(format!(
                    "interrupted by an agent restart; retry it (ferry group drill {} --end)",
                    g.name
                )),
            },
            _ => interrupted(),
        })
    }

    async fn tick(self: &Arc<Self>) {
        if let Err(error) = self.run_policies().await {
            warn!(%error, "policy scheduler");
        }
        if let Err(error) = self.propagate_deletions().await {
            warn!(%error, "propagating recovery point deletions");
        }
        if let Err(error) = self.propagate_stops().await {
            warn!(%error, "propagating stopped syncs");
        }
    }
}
