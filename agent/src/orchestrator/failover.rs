//! Restore and unplanned failover, called by the operator on the standby
//! (also while the primary is unreachable): both write recovery points of
//! the standby copies into **new** volumes (files or RBD images), never
//! over the replicated copies. A failover makes the group a new primary.

use std::sync::Arc;

use ferry_engine::session::receiver::ReceiverContext;
use ferry_protocol::ImageName;
use serde_json::json;
use tracing::{info, warn};

use super::{internal, CtlError, CtlResult, Orchestrator};
use crate::control::{GroupState, OpRequest, Operation, StoreError};
use crate::uri::SourceUri;

impl Orchestrator {
    /// Manual restore (standby or new primary): writes one resource as it
    /// was at a complete recovery point into a **new** image — a file path
    /// (files backend) or an image name of the standby pool (RBD backend).
    /// Journaled; runs in the background.
    pub fn restore(
        self: &Arc<Self>,
        key: &str,
        resource: &str,
        rp: &str,
        out: &str,
    ) -> CtlResult<Operation> {
        let g = self.group(key)?;
        let uri = SourceUri::parse(resource)
            .map(|s| s.to_string())
            .unwrap_or_else(|_| resource.to_owned());
        let res = self
            .db(|s| s.resources(g.id))?
            .into_iter()
            .find(|r| r.uri == uri)
            .ok_or_else(|| StoreError::ResourceNotInGroup {
                uri: uri.clone(),
                group: g.name.clone(),
            })?;
        let point = self.db(|s| s.recovery_point_by_name(g.id, rp))?;
        let image = ImageName::new(res.standby_target.clone())
            .map_err(|e| CtlError::BadRequest(e.to_string()))?;
        if let Err(why) = self.receiver.store.check_restore_output(out) {
            return Err(CtlError::BadRequest(format!(
                "restore writes a new image: {out} {why}"
            )));
        }
        let op = self.db(|s| {
            s.begin_checked(
                g.id,
                &OpRequest::Restore {
                    rp_name: point.name.clone(),
                    rp_state: point.state,
                },
                &json!({ "resource": uri, "recovery_point": point.name, "out": out }),
            )
        })?;
        let receiver = self.receiver.clone();
        let out = out.to_owned();
        let engine_rp = ferry_protocol::RecoveryPointId(point.engine_rp);
        self.run_op(op.id, async move {
            tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                receiver.store.restore_into(&image, engine_rp, &out)?;
                Ok(())
            })
            .await
            .map_err(|e| internal("the restore task")(e.into()))?
            .map_err(internal(format!(
                "restoring {uri} at recovery point '{}'",
                point.name
            )))
        });
        Ok(op)
    }

    /// Unplanned failover (standby, also while the primary is unreachable):
    /// every resource is materialised, as it was at the chosen recovery
    /// point (or the latest group recovery point all its standby images
    /// hold), into a new file `DIR/failover/GROUP/IMAGE.raw` (files backend)
    /// or a new image `failover-IMAGE` of the standby pool (RBD backend)
    /// — never the replicated image itself, so a primary that is still
    /// alive cannot overwrite the failed-over data. The group becomes a new
    /// primary (`failed_over`); after a failover to a chosen recovery point
    /// the others become unusable.
    pub fn failover(self: &Arc<Self>, key: &str, rp: Option<&str>) -> CtlResult<Operation> {
        let g = self.group(key)?;
        let point = rp
            .map(|name| self.db(|s| s.recovery_point_by_name(g.id, name)))
            .transpose()?;
        let to = match &point {
            Some(p) => crate::control::FailoverTarget::RecoveryPoint {
                name: p.name.clone(),
                state: p.state,
            },
            None => crate::control::FailoverTarget::Latest,
        };
        let req = OpRequest::Failover { to };
        // The allowed-state table first (begin_checked re-checks atomically).
        crate::control::check(&req, &self.db(|s| s.group_view(g.id))?)
            .map_err(StoreError::Refused)?;
        let resources = self.db(|s| s.resources(g.id))?;
        let out_dir = self.dir.join("failover").join(&g.name);
        // A first attempt never takes over a copy someone else made; a
        // retry replaces what the failed attempt made (it could not have
        // started if any had existed before it).
        let targets: Vec<&str> = resources
            .iter()
            .map(|r| r.standby_target.as_str())
            .collect();
        let mut replace = Vec::new();
        for leftover in self.receiver.store.failover_leftovers(&out_dir, &targets) {
            let exists = leftover
                .exists()
                .map_err(|e| internal(format!("looking up {leftover}"))(e.into()))?;
            if !exists {
                continue;
            }
            if g.state != GroupState::FailoverFailed {
                return Err(CtlError::BadRequest(format!(
                    "{leftover} exists; move it away first"
                )));
            }
            warn!(group = %g.name, output = %leftover, "retrying a failed failover: replacing the failed attempt's copies");
            replace.push(leftover);
        }
        let op = self.db(|s| {
            s.begin_checked(
                g.id,
                &req,
                &json!({ "recovery_point": rp, "out_dir": out_dir }),
            )
        })?;
        let me = self.clone();
        self.run_op(op.id, async move {
            let receiver = me.receiver.clone();
            let images: Vec<ImageName> = resources
                .iter()
                .map(|r| ImageName::new(r.standby_target.clone()))
                .collect::<Result<_, _>>()
                .map_err(|e| CtlError::BadRequest(e.to_string()))?;
            let engine_rp = match &point {
                Some(p) => p.engine_rp,
                None => latest_common_point(&receiver, &images)?,
            };
            let dir = out_dir.clone();
            tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                let rp = ferry_protocol::RecoveryPointId(engine_rp);
                // A retry first removes what the failed attempt made. On
                // RBD this can wait for a killed agent's watch on a
                // half-made image to expire, so it is done here, off the
                // API's workers.
                for leftover in &replace {
                    leftover.remove().map_err(|e| {
                        anyhow::Error::new(e).context(format!(
                            "removing the failed failover's copies in {leftover}"
                        ))
                    })?;
                }
                ferry_engine::testpoint::reach("failover::before-images");
                receiver.store.prepare_failover_outputs(&dir)?;
                for image in &images {
                    let output = receiver.store.failover_output(&dir, image);
                    receiver.store.restore_into(image, rp, output)?;
                    // Fault injection (tests): hold or stop between images.
                    ferry_engine::testpoint::reach("failover::after-image");
                }
                Ok(())
            })
            .await
            .map_err(|e| internal("the failover task")(e.into()))?
            .map_err(internal(format!(
                "materialising group '{}' at engine recovery point {engine_rp}",
                g.name
            )))?;
            if let Some(p) = &point {
                me.db(|s| s.mark_recovery_points_unusable(g.id, Some(p.id)))?;
            }
            info!(group = %g.name, engine_rp, dir = %out_dir.display(), "failed over");
            Ok(())
        });
        Ok(op)
    }
}

/// The newest engine recovery point every image holds (a group recovery
/// point: one id across the group's images).
pub(super) fn latest_common_point(
    receiver: &ReceiverContext,
    images: &[ImageName],
) -> CtlResult<u64> {
    let mut common: Option<Vec<u64>> = None;
    for image in images {
        let ids: Vec<u64> = receiver
            .store
            .recovery_points(image)
            .map_err(|e| internal(format!("listing recovery points of {image}"))(e.into()))?
            .iter()
            .map(|p| p.id.get())
            .collect();
        common = Some(match common {
            None => ids,
            Some(c) => c.into_iter().filter(|id| ids.contains(id)).collect(),
        });
    }
    common.and_then(|c| c.into_iter().max()).ok_or_else(|| {
        CtlError::BadRequest(
            "the standby holds no group recovery point common to all resources".into(),
        )
    })
}
