//! Recovery points on the primary: a manual (or policy) point is the next
//! replication cycle that starts after the request (`cycle_now` in
//! `cycle.rs`), registered here and on the standby, which pins it
//! (`register_rp`). Deletions go to the standby at once or, while it is
//! unreachable, later from the background tick (`propagate_deletions`).

use std::sync::Arc;

use hyper::Method;
use serde_json::json;
use tracing::{info, warn};

use super::{
    error_chain, hold, remote_id, CtlError, CtlResult, Orchestrator, CYCLE_ATTEMPTS, RETRY_PAUSE,
};
use crate::control::{
    Group, GroupId, NewRecoveryPoint, OpRequest, Operation, RecoveryPoint, RpKind, RpState,
    Timestamp,
};

impl Orchestrator {
    /// Recovery points of a group.
    pub fn recovery_points(&self, key: &str) -> CtlResult<Vec<RecoveryPoint>> {
        let g = self.group(key)?;
        self.db(|s| s.recovery_points(g.id))
    }

    /// Creates a manual recovery point: the next replication cycle, named.
    pub fn create_recovery_point(
        self: &Arc<Self>,
        key: &str,
        name: Option<String>,
    ) -> CtlResult<Operation> {
        let g = self.group(key)?;
        self.require_driver(&g)?;
        let name = name.unwrap_or_else(|| format!("manual-{}", Timestamp::now().0));
        if self.db(|s| s.recovery_point_by_name(g.id, &name)).is_ok() {
            return Err(CtlError::BadRequest(format!(
                "group '{}' already has a recovery point named '{name}'",
                g.name
            )));
        }
        self.create_rp_with(g, name, RpKind::Manual)
    }

    pub(super) fn create_rp_with(
        self: &Arc<Self>,
        g: Group,
        name: String,
        kind: RpKind,
    ) -> CtlResult<Operation> {
        let op = self.db(|s| {
            s.begin_checked(
                g.id,
                &OpRequest::CreateRecoveryPoint { kind },
                &json!({ "name": name, "kind": kind }),
            )
        })?;
        let me = self.clone();
        self.run_op(op.id, async move {
            let rp = me.cycle_now(g.id, name, kind).await?;
            info!(group = %g.name, rp = %rp.name, engine_rp = rp.engine_rp, "recovery point created");
            Ok(())
        });
        Ok(op)
    }

    /// Records the group recovery point `engine_rp` (just committed by the
    /// group's loop) as the named point here and on the standby, which pins
    /// it in its store so retention never prunes it. Called by the loop
    /// before its next cycle; the standby call is retried while the link
    /// is down. On failure nothing is left recorded here.
    pub(super) async fn register_rp(
        &self,
        gid: GroupId,
        name: &str,
        kind: RpKind,
        engine_rp: u64,
    ) -> CtlResult<RecoveryPoint> {
        let g = self.db(|s| s.group(gid))?;
        let rp = self.db(|s| {
            s.create_recovery_point(
                gid,
                &NewRecoveryPoint {
                    name: name.to_owned(),
                    engine_rp,
                    kind,
                },
            )
        })?;
        let svc = self.db(|s| s.service(g.service_id))?;
        let remote = remote_id(&g)?;
        let body = json!({ "name": name, "engine_rp": engine_rp, "kind": kind });
        hold::reach("rp::before-register");
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self
                .peer(
                    &svc,
                    Method::POST,
                    &format!("/v1/peer/groups/{remote}/recovery-points"),
                    Some(&body),
                )
                .await
            {
                Ok(_) => {
                    hold::reach("rp::after-register");
                    break;
                }
                Err(e) if attempt < CYCLE_ATTEMPTS => {
                    warn!(group = %g.name, rp = %name, error = %error_chain(&e), "standby did not record the recovery point; retrying");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(e) => {
                    // The standby may have recorded (and pinned) the point
                    // while its answer was lost: delete it there too,
                    // deferred like any deletion (absent there counts as
                    // deleted), instead of forgetting it here only.
                    self.db(|s| {
                        s.set_recovery_point_state(rp.id, RpState::Creating, RpState::Deleting)
                    })?;
                    self.db(|s| s.set_pending_remote_delete(rp.id, true))?;
                    return Err(e);
                }
            }
        }
        self.db(|s| s.set_recovery_point_state(rp.id, RpState::Creating, RpState::Complete))
    }

    /// Deletes a recovery point here and on the standby (deferred while the
    /// standby is unreachable).
    pub fn delete_recovery_point(self: &Arc<Self>, key: &str, rp: &str) -> CtlResult<Operation> {
        let g = self.group(key)?;
        self.require_driver(&g)?;
        let rp = self.db(|s| s.recovery_point_by_name(g.id, rp))?;
        let op = self.db(|s| {
            s.begin_checked(
                g.id,
                &OpRequest::DeleteRecoveryPoint,
                &json!({ "name": rp.name }),
            )
        })?;
        let me = self.clone();
        self.run_op(op.id, async move {
            if rp.state != RpState::Deleting {
                me.db(|s| s.set_recovery_point_state(rp.id, rp.state, RpState::Deleting))?;
            }
            me.db(|s| s.set_pending_remote_delete(rp.id, true))?;
            // Propagation happens now if the standby answers, else later.
            if let Err(e) = me.propagate_one(&g, &rp).await {
                warn!(rp = %rp.name, error = %e, "standby unreachable: deletion deferred");
            }
            Ok(())
        });
        Ok(op)
    }

    pub(super) async fn propagate_one(&self, g: &Group, rp: &RecoveryPoint) -> CtlResult<()> {
        if let Some(remote) = g.remote_group_id {
            let svc = self.db(|s| s.service(g.service_id))?;
            self.peer(
                &svc,
                Method::DELETE,
                &format!("/v1/peer/groups/{remote}/recovery-points/{}", rp.name),
                None,
            )
            .await?;
        }
        self.db(|s| s.delete_recovery_point(rp.id))?;
        Ok(())
    }

    pub(super) async fn propagate_deletions(&self) -> CtlResult<()> {
        for rp in self.db(|s| s.pending_remote_deletes())? {
            let g = self.db(|s| s.group(rp.group_id))?;
            if !self.drives(&g) {
                continue;
            }
            if let Err(e) = self.propagate_one(&g, &rp).await {
                tracing::debug!(rp = %rp.name, error = %e, "deletion still deferred");
            }
        }
        Ok(())
    }
}
