//! DR drills on the standby (`ferry group drill G [--rp NAME]`, `--end`):
//! writable volumes of every resource at one complete group recovery point,
//! made with the engine's `Standby::restore_volume` (an RBD clone of the point's
//! snapshot, a reflink where the file system has them, else a copy) next to the standby copies
//! (which a drill never touches) and named where the backend says
//! (`Standby::drill_volume`). The point is pinned on every standby copy
//! until the drill ends, so retention cannot expire it. A drill is not a
//! group state: the group stays `syncing` and keeps taking the primary's
//! cycles and recovery points throughout. Its record (phase, point,
//! volumes) is in the control store, written with the journal entry that
//! starts or ends it, so an agent killed half-way knows after its restart
//! what to finish: a retried start remakes the volumes at the recorded
//! point, a retried `--end` removes whatever is left.

use std::sync::Arc;

use ferry_protocol::{ImageName, RecoveryPointId};
use serde_json::json;
use tracing::{info, warn};

use super::failover::latest_common_point;
use super::{internal, CtlError, CtlResult, Orchestrator};
use crate::control::{
    DrillPhase, DrillVolume, FailoverTarget, Group, NewDrill, OpRequest, Operation, StoreError,
};

impl Orchestrator {
    /// Starts a DR drill of standby group `key` at recovery point `rp`
    /// (default: the latest group point every standby copy holds, as
    /// failover picks it), or resumes one whose start was interrupted.
    /// Journaled; the volumes are made in the background.
    pub fn drill(self: &Arc<Self>, key: &str, rp: Option<&str>) -> CtlResult<Operation> {
        let g = self.group(key)?;
        self.require_driver(&g)?;
        let point = rp
            .map(|name| self.db(|s| s.recovery_point_by_name(g.id, name)))
            .transpose()?;
        let to = match &point {
            Some(p) => FailoverTarget::RecoveryPoint {
                name: p.name.clone(),
                state: p.state,
            },
            None => FailoverTarget::Latest,
        };
        let req = OpRequest::Drill { to };
        // The table first, for its reason (begin_drill re-checks atomically).
        crate::control::check(&req, &self.db(|s| s.group_view(g.id))?)
            .map_err(StoreError::Refused)?;
        let resumed = self.db(|s| s.drill(g.id))?;
        let new = match &resumed {
            Some(d) => {
                if let Some(p) = point.as_ref().filter(|p| p.engine_rp != d.engine_rp) {
                    return Err(CtlError::BadRequest(format!(
                        "group '{}' has an interrupted drill at engine recovery point {}, not \
                         '{}': retry it without --rp, or end it with drill --end",
                        g.name, d.engine_rp, p.name
                    )));
                }
                warn!(group = %g.name, engine_rp = d.engine_rp, "resuming an interrupted drill: remaking its volumes");
                NewDrill {
                    engine_rp: d.engine_rp,
                    recovery_point: d.recovery_point.clone(),
                    volumes: d.volumes.clone(),
                }
            }
            None => self.plan_drill(&g, point.as_ref().map(|p| (p.name.clone(), p.engine_rp)))?,
        };
        let params = json!({
            "recovery_point": new.recovery_point,
            "engine_rp": new.engine_rp,
            "volumes": new.volumes,
            "resumed": resumed.is_some(),
        });
        let (op, drill) = self.db(|s| s.begin_drill(g.id, &req, &params, &new))?;
        let me = self.clone();
        self.run_op(op.id, async move {
            me.pin_standby_point(g.id, drill.engine_rp, true).await?;
            let store = me.receiver.store.clone();
            let volumes = drill.volumes.clone();
            let engine_rp = drill.engine_rp;
            tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                for v in &volumes {
                    let image = ImageName::new(v.image.clone())?;
                    let volume = store.recorded_drill_volume(&v.volume);
                    // What exists was made by this drill's interrupted start
                    // (a first start refuses volumes that exist): remade.
                    volume.remove()?;
                    volume.prepare()?;
                    // A clone (RBD) or a reflink (files, where the file
                    // system has them): nothing copied, the copy untouched.
                    let made = store
                        .restore_volume(&image, RecoveryPointId(engine_rp), volume.output(), false)
                        .map_err(|e| {
                            anyhow::Error::new(e).context(format!("making drill volume {volume}"))
                        })?;
                    info!(%image, volume = %made.location, method = made.method.as_str(), "drill volume ready");
                    // Fault injection (tests): hold or stop between volumes.
                    ferry_engine::testpoint::reach("drill::after-volume");
                }
                Ok(())
            })
            .await
            .map_err(|e| internal("the drill task")(e.into()))?
            .map_err(internal(format!(
                "making the drill volumes of group '{}' at engine recovery point {engine_rp}",
                g.name
            )))?;
            me.db(|s| s.set_drill_phase(g.id, DrillPhase::Active))?;
            info!(group = %g.name, engine_rp, volumes = drill.volumes.len(), "drill started");
            Ok(())
        });
        Ok(op)
    }

    /// The point and the volumes of a new drill; refuses volumes that exist
    /// already (someone else's: move them away first).
    fn plan_drill(&self, g: &Group, point: Option<(String, u64)>) -> CtlResult<NewDrill> {
        let resources = self.db(|s| s.resources(g.id))?;
        let images: Vec<ImageName> = resources
            .iter()
            .map(|r| ImageName::new(r.standby_target.clone()))
            .collect::<Result<_, _>>()
            .map_err(|e| CtlError::BadRequest(e.to_string()))?;
        let (recovery_point, engine_rp) = match point {
            Some((name, engine_rp)) => (Some(name), engine_rp),
            None => (None, latest_common_point(&self.receiver, &images)?),
        };
        let store = &self.receiver.store;
        let mut volumes = Vec::new();
        for (r, image) in resources.iter().zip(&images) {
            let volume = store
                .drill_volume(&self.dir, &g.name, image)
                .map_err(|e| CtlError::BadRequest(e.to_string()))?;
            let exists = volume
                .exists()
                .map_err(|e| internal(format!("looking up {volume}"))(e.into()))?;
            if exists {
                return Err(CtlError::BadRequest(format!(
                    "{volume} exists; move it away first (a drill makes its volumes new)"
                )));
            }
            volumes.push(DrillVolume {
                resource: r.uri.clone(),
                image: r.standby_target.clone(),
                volume: volume.name(),
            });
        }
        Ok(NewDrill {
            engine_rp,
            recovery_point,
            volumes,
        })
    }

    /// Ends the DR drill of group `key`: removes its volumes, unpins its
    /// point (unless a recovery point of the group still holds it) and
    /// forgets the drill. Journaled; runs in the background; a retry after
    /// an interruption removes what is left.
    pub fn end_drill(self: &Arc<Self>, key: &str) -> CtlResult<Operation> {
        let g = self.group(key)?;
        self.require_driver(&g)?;
        let (op, drill) = self.db(|s| s.begin_end_drill(g.id, &json!({})))?;
        let me = self.clone();
        self.run_op(op.id, async move {
            let store = me.receiver.store.clone();
            let volumes = drill.volumes.clone();
            tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                for v in &volumes {
                    let volume = store.recorded_drill_volume(&v.volume);
                    volume.remove().map_err(|e| {
                        anyhow::Error::new(e).context(format!("removing drill volume {volume}"))
                    })?;
                    // Fault injection (tests): hold or stop between volumes.
                    ferry_engine::testpoint::reach("drill::after-remove");
                }
                Ok(())
            })
            .await
            .map_err(|e| internal("the drill end task")(e.into()))?
            .map_err(internal(format!(
                "removing the drill volumes of group '{}'",
                g.name
            )))?;
            // Under the unpin lock: a recovery point at this point deleted
            // meanwhile either sees the drill (and leaves the pin to it) or
            // is gone before it is looked for here.
            let _holders = me.unpin_lock.lock().await;
            let held = me
                .db(|s| s.recovery_points(g.id))?
                .iter()
                .any(|rp| rp.engine_rp == drill.engine_rp);
            if !held {
                me.pin_standby_point(g.id, drill.engine_rp, false).await?;
            }
            me.db(|s| s.clear_drill(g.id))?;
            info!(group = %g.name, engine_rp = drill.engine_rp, "drill ended");
            Ok(())
        });
        Ok(op)
    }

    /// Whether a drill of group `g` runs here (any phase).
    pub(super) fn drilling(&self, g: &Group) -> CtlResult<bool> {
        Ok(self.db(|s| s.drill(g.id))?.is_some())
    }

    /// Refuses a primary's request `what` that would delete the standby
    /// copies (or their points) of a group drilling here.
    pub(super) fn refuse_while_drilling(&self, g: &Group, what: &str) -> CtlResult<()> {
        if self.drilling(g)? {
            return Err(CtlError::BadRequest(format!(
                "{what} is refused while group '{}' runs a DR drill on the standby; end it \
                 there first (ferry group drill {} --end)",
                g.name, g.name
            )));
        }
        Ok(())
    }

    /// Whether a drill of group `g` uses engine recovery point `engine_rp`
    /// (its pin must then outlive the recovery point's).
    pub(super) fn drill_uses_point(&self, g: &Group, engine_rp: u64) -> CtlResult<bool> {
        Ok(self
            .db(|s| s.drill(g.id))?
            .is_some_and(|d| d.engine_rp == engine_rp))
    }
}
