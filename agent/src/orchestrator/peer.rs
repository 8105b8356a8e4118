//! The peer (standby) side: the handlers of the peer API by which a
//! primary creates, fills, starts and stops, and deletes its mapped
//! standby group here (journaled here too), records and deletes recovery
//! points, and asks for the newest point the copies hold; and the
//! ownership check of every QUIC write (`check_image_owner`). A standby
//! group that failed over no longer takes changes from the old primary.
//! The standby side of a planned migration is in `migration.rs`.

use ferry_protocol::{AgentId, ImageName};
use serde_json::json;
use tracing::info;

use super::{error_chain, hold, CtlError, CtlResult, Orchestrator, PeerGroupRequest};
use crate::control::{
    Group, GroupState, NewGroup, NewRecoveryPoint, NewResource, OpKind, OpResult, Outcome,
    RecoveryPoint, Resource, ResourceState, Role, RpState, StoreError, Timestamp, Transition,
};
use crate::sync_util::lock;

impl Orchestrator {
    /// Whether `caller` may write (and query) standby image `image` over
    /// QUIC: only if a group of the service that pairs this agent with
    /// `caller`, standby here, lists the image as a resource's standby
    /// target (a primary group's targets name images on the peer). Fails
    /// closed: an unpaired caller, an image of another service's group, an
    /// unknown image or a store error all refuse.
    pub fn check_image_owner(&self, caller: AgentId, image: &str) -> CtlResult<()> {
        let svc = self.service_of_peer(caller)?;
        let forbidden = |reason: String| CtlError::Forbidden {
            fingerprint: caller,
            reason,
        };
        for g in self
            .groups()?
            .into_iter()
            .filter(|g| g.service_id == svc.id && accepts_replication(g))
        {
            if self
                .db(|s| s.resources(g.id))?
                .iter()
                .any(|r| r.standby_target == image)
            {
                return Ok(());
            }
        }
        Err(forbidden(format!(
            "no group of service '{}' owns image {image}",
            svc.name
        )))
    }

    /// A standby group the primary may still change (not failed over).
    fn peer_mapped_group(&self, caller: AgentId, id: i64) -> CtlResult<Group> {
        let g = self.peer_group(caller, id)?;
        if g.new_primary || g.state.is_transitional() {
            return Err(CtlError::BadRequest(format!(
                "group '{}' is {}{} here; the mapping no longer accepts changes from the primary",
                g.name,
                g.state,
                if g.new_primary {
                    " (a new primary)"
                } else {
                    ""
                }
            )));
        }
        Ok(g)
    }

    /// Peer: create (idempotently) and map the standby group of a primary.
    pub fn peer_create_group(&self, caller: AgentId, req: &PeerGroupRequest) -> CtlResult<Group> {
        let svc = self.service_of_peer(caller)?;
        if let Some(g) = self
            .groups()?
            .into_iter()
            .find(|g| g.service_id == svc.id && g.remote_group_id == Some(req.primary_group_id))
        {
            return Ok(g);
        }
        let (g, op) = self.db(|s| {
            s.create_group(
                &NewGroup {
                    name: req.name.clone(),
                    role: Role::Standby,
                    service_id: svc.id,
                    remote_group_id: Some(req.primary_group_id),
                    remote_project: req.remote_project.clone(),
                    rpo: Default::default(),
                },
                &json!({ "primary": caller.to_hex() }),
            )
        })?;
        self.db(|s| s.finish_operation(op.id, OpResult::Succeeded))?;
        let g = self.db(|s| s.group(g.id))?;
        info!(group = %g.name, "standby group created and mapped");
        Ok(g)
    }

    /// Peer: record resources of a standby group.
    pub async fn peer_add_resources(
        &self,
        caller: AgentId,
        id: i64,
        resources: &[NewResource],
    ) -> CtlResult<()> {
        let g = self.peer_mapped_group(caller, id)?;
        let have = self.db(|s| s.resources(g.id))?;
        let new: Vec<NewResource> = resources
            .iter()
            .filter(|r| !have.iter().any(|h| h.uri == r.uri))
            .cloned()
            .collect();
        // An image belongs to one group: a peer may not claim (and so gain
        // write access to) an image another group already owns here.
        let mut taken = Vec::new();
        for other in self.groups()? {
            if other.role == Role::Standby && other.id != g.id {
                taken.extend(self.db(|s| s.resources(other.id))?);
            }
        }
        for r in &new {
            if let Some(owner) = taken.iter().find(|t| t.standby_target == r.standby_target) {
                return Err(CtlError::Forbidden {
                    fingerprint: caller,
                    reason: format!(
                        "image {} already belongs to another group (resource {})",
                        r.standby_target, owner.uri
                    ),
                });
            }
        }
        // A placeholder of the same size per resource (dr-semantics: "on
        // add, the standby creates a placeholder image"), before recording.
        for r in &new {
            let image = ImageName::new(r.standby_target.clone())
                .map_err(|e| CtlError::BadRequest(e.to_string()))?;
            let size = r.size_bytes;
            self.on_store(format!("creating placeholder {image}"), move |st| {
                st.create_placeholder(&image, size)
            })
            .await?;
        }
        self.db(|s| s.add_resources(g.id, &new))?;
        for r in &new {
            self.db(|s| s.set_resource_state(&r.uri, ResourceState::Ready))?;
        }
        Ok(())
    }

    /// Peer: drop resources of a standby group.
    pub async fn peer_remove_resources(
        &self,
        caller: AgentId,
        id: i64,
        uris: &[String],
    ) -> CtlResult<()> {
        let g = self.peer_mapped_group(caller, id)?;
        self.refuse_while_drilling(&g, "removing resources")?;
        let gone: Vec<Resource> = self
            .db(|s| s.resources(g.id))?
            .into_iter()
            .filter(|h| uris.contains(&h.uri))
            .collect();
        // The copies first: a failure leaves the resources listed, and the
        // primary's retry finds them again.
        self.remove_standby_images(&gone).await?;
        let refs: Vec<&str> = gone.iter().map(|r| r.uri.as_str()).collect();
        self.db(|s| s.remove_resources(g.id, &refs))?;
        Ok(())
    }

    /// Peer: the primary started (true) or stopped (false) replication.
    ///
    /// A stop for a group that is gone here, or that failed over here (a
    /// new primary, whose data the old primary no longer controls), is done
    /// without changing anything (`None`, or the group as it is): the old
    /// primary that comes back after a failover can then stop and delete its
    /// own group.
    pub async fn peer_set_syncing(
        &self,
        caller: AgentId,
        id: i64,
        syncing: bool,
    ) -> CtlResult<Option<Group>> {
        if !syncing {
            match self.peer_group(caller, id) {
                Err(CtlError::Store(StoreError::NotFound { .. })) => return Ok(None),
                Ok(g) if g.new_primary => return Ok(Some(g)),
                _ => {}
            }
        }
        let g = self.peer_mapped_group(caller, id)?;
        if !syncing {
            // Stop sync deletes the copies and their points: not from
            // under a drill.
            self.refuse_while_drilling(&g, "stop sync")?;
        }
        let (from, to, res) = if syncing {
            (
                GroupState::Mapped,
                GroupState::Syncing,
                ResourceState::Syncing,
            )
        } else {
            (
                GroupState::Syncing,
                GroupState::Mapped,
                ResourceState::Ready,
            )
        };
        if g.state == from {
            self.db(|s| s.transition(g.id, from, to, None))?;
        } else if g.state != to {
            return Err(StoreError::StateConflict {
                group: g.name,
                expected: from,
                actual: g.state,
            }
            .into());
        }
        for r in self.db(|s| s.resources(g.id))? {
            self.db(|s| s.set_resource_state(&r.uri, res))?;
        }
        if !syncing {
            // Stop sync deletes the standby's replicated data and recovery
            // points (a repeated call finds nothing left to delete).
            for rp in self.db(|s| s.recovery_points(g.id))? {
                self.db(|s| s.delete_recovery_point(rp.id))?;
            }
            let resources = self.db(|s| s.resources(g.id))?;
            self.remove_standby_images(&resources).await?;
        }
        self.db(|s| s.group(g.id)).map(Some)
    }

    /// Peer: record a complete group recovery point on the standby.
    pub async fn peer_add_recovery_point(
        &self,
        caller: AgentId,
        id: i64,
        new: &NewRecoveryPoint,
    ) -> CtlResult<RecoveryPoint> {
        let g = self.peer_mapped_group(caller, id)?;
        let recorded = match self.db(|s| s.recovery_point_by_name(g.id, &new.name)) {
            Ok(rp) => rp,
            Err(_) => {
                // Pinned before it is recorded: a recorded point is restorable.
                self.pin_standby_point(g.id, new.engine_rp, true).await?;
                let rp = self.db(|s| s.create_recovery_point(g.id, new))?;
                self.db(|s| {
                    s.set_recovery_point_state(rp.id, RpState::Creating, RpState::Complete)
                })?
            }
        };
        hold::reach("rp::standby-recorded");
        // Fault injection (tests): recorded here, the answer is lost.
        fail::fail_point!("rp::standby-answer-lost", |_| Err(CtlError::BadRequest(
            "injected: the answer to the primary is lost".into()
        )));
        Ok(recorded)
    }

    /// Peer: delete a recovery point of a standby group (absent = done).
    pub async fn peer_delete_recovery_point(
        &self,
        caller: AgentId,
        id: i64,
        name: &str,
    ) -> CtlResult<()> {
        let g = self.peer_group(caller, id)?;
        if g.new_primary {
            // Not propagated after the standby failed over.
            return Ok(());
        }
        match self.db(|s| s.recovery_point_by_name(g.id, name)) {
            Ok(rp) => {
                // A drill at this point keeps it pinned until it ends.
                let _holders = self.unpin_lock.lock().await;
                if !self.drill_uses_point(&g, rp.engine_rp)? {
                    self.pin_standby_point(g.id, rp.engine_rp, false).await?;
                }
                self.db(|s| s.delete_recovery_point(rp.id))?;
                Ok(())
            }
            Err(CtlError::Store(StoreError::NotFound { .. })) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Peer: delete a standby group (absent = done), journaled here.
    pub async fn peer_delete_group(&self, caller: AgentId, id: i64) -> CtlResult<()> {
        let g = match self.peer_group(caller, id) {
            Ok(g) => g,
            Err(CtlError::Store(StoreError::NotFound { .. })) => return Ok(()),
            Err(e) => return Err(e),
        };
        if g.new_primary {
            // dr-semantics: deleting the primary group deletes its standby
            // group, "not after S failed over": the old primary's delete
            // succeeds there and leaves this new primary alone.
            info!(group = %g.name, "the old primary deleted its group; this new primary stays");
            return Ok(());
        }
        self.refuse_while_drilling(&g, "deleting the group")?;
        let t = Transition {
            op: OpKind::DeleteGroup,
            from: g.state,
            during: GroupState::Deleting,
            on_success: Outcome::Deleted,
            on_failure: GroupState::DeleteFailed,
        };
        let op = self.db(|s| s.begin_operation(g.id, &t, &json!({ "by": "primary" })))?;
        hold::reach("delete::standby-begun");
        let resources = self.db(|s| s.resources(g.id))?;
        if let Err(e) = self.remove_standby_images(&resources).await {
            self.db(|s| s.finish_operation(op.id, OpResult::Failed(error_chain(&e))))?;
            return Err(e);
        }
        self.db(|s| s.finish_operation(op.id, OpResult::Succeeded))?;
        info!(group = %g.name, "standby group deleted at the primary's request");
        Ok(())
    }

    /// Peer: the newest engine recovery point any standby image of the
    /// group holds (0: none); `None` when this agent has no such group (it
    /// was deleted here).
    /// With `confirm = (as_of, floor)` from an idle check, records that
    /// this standby holds every write before `as_of` when it holds `floor`
    /// (the primary's committed point) — the primary's own test.
    pub fn peer_newest_point(
        &self,
        caller: AgentId,
        id: i64,
        confirm: Option<(i64, u64)>,
    ) -> CtlResult<Option<StandbyView>> {
        let g = match self.peer_group(caller, id) {
            Ok(g) => g,
            Err(CtlError::Store(StoreError::NotFound { .. })) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut newest = 0;
        for r in self.db(|s| s.resources(g.id))? {
            let Ok(image) = ImageName::new(r.standby_target.clone()) else {
                continue;
            };
            if let Ok(points) = self.receiver.store.recovery_points(&image) {
                newest = points.iter().map(|p| p.id.get()).fold(newest, u64::max);
            }
        }
        // The primary asks before skipping an idle cycle: it found nothing
        // changed since the point it committed (`ferry health` on this side).
        lock(&self.peer_contact)
            .entry(g.id)
            .or_default()
            .idle_confirmed = Some(Timestamp::now());
        if let Some((as_of, floor)) = confirm {
            if newest >= floor && newest > 0 {
                let mut confirmed = lock(&self.confirmed_current);
                let at = confirmed.entry(g.id).or_insert(as_of);
                *at = (*at).max(as_of);
            }
        }
        Ok(Some(StandbyView {
            newest,
            accepts: accepts_replication(&g),
        }))
    }
}

/// What the standby answers a primary's `newest-point` question with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StandbyView {
    /// The newest engine recovery point any standby image of the group
    /// holds (0: none).
    pub newest: u64,
    /// Whether the group still takes the primary's replication (see
    /// [`accepts_replication`]).
    pub accepts: bool,
}

/// Whether a group on this agent takes its primary's replication: a
/// standby group that is not failing over or failed over. One that is no
/// longer does: its images hold the recovery points a new primary restores
/// from ("mapping broken"), which new cycles would replace and prune.
pub fn accepts_replication(g: &Group) -> bool {
    g.role == Role::Standby
        && !g.new_primary
        && !matches!(
            g.state,
            GroupState::FailingOver | GroupState::FailedOver | GroupState::FailoverFailed
        )
}
