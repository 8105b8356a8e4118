//! Restore and unplanned failover, called by the operator on the standby
//! (also while the primary is unreachable). A restore makes a **new**
//! volume of a recovery point (an RBD clone or a reflink, else a copy; a
//! full copy on request). A failover fences the standby copies and makes
//! each a volume without copying: at the latest point the copy itself, at
//! an older one a clone or reflink; full copies on request. A failover
//! makes the group a new primary.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ferry_engine::session::receiver::ReceiverContext;
use ferry_engine::standby_backend::{FailoverLeftover, Volume};
use ferry_protocol::ImageName;
use serde_json::json;
use tracing::{info, warn};

use super::{internal, CtlError, CtlResult, Orchestrator};
use crate::control::{Group, GroupState, OpRequest, Operation, Resource, StoreError};

/// How long the fence waits for an epoch that is open on a standby copy
/// when the failover starts: it fails at its next batch, or its session
/// ends when an unreachable primary's connection times out.
const FENCE_WAIT: Duration = Duration::from_secs(60);
use crate::uri::SourceUri;

impl Orchestrator {
    /// Manual restore (standby or new primary): makes one resource as it
    /// was at a complete recovery point a **new** volume — a file path
    /// (files backend: a reflink where the file system has them, else a
    /// copy) or an image name of the standby pool (RBD backend: a clone of
    /// the point's snapshot, the point pinned). With `copy`, a full copy.
    /// Journaled; runs in the background.
    pub fn restore(
        self: &Arc<Self>,
        key: &str,
        resource: &str,
        rp: &str,
        out: &str,
        copy: bool,
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
                &json!({ "resource": uri, "recovery_point": point.name, "out": out, "copy": copy }),
            )
        })?;
        let receiver = self.receiver.clone();
        let out = out.to_owned();
        let engine_rp = ferry_protocol::RecoveryPointId(point.engine_rp);
        self.run_op(op.id, async move {
            tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                let volume = receiver.store.restore_volume(&image, engine_rp, &out, copy)?;
                info!(%image, volume = %volume.location, method = volume.method.as_str(), "restored");
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
    /// every standby copy is fenced (it takes no more replication; an epoch
    /// still open fails at its next batch and is waited for), then becomes
    /// a volume at the chosen recovery point (or the latest group recovery
    /// point all its standby images hold) without copying where it can
    /// (see `ferry_engine::standby_backend::Standby::failover_volume`): at
    /// the latest point the copy itself (RBD: same image name; files: the
    /// file moved into `DIR/failover/GROUP/`), at an older point an RBD
    /// clone `failover-IMAGE` or a reflink (else a copy) in
    /// `DIR/failover/GROUP/`; with `copy`, full copies as before. Each
    /// resource records where its volume is (`group show`). The group
    /// becomes a new primary (`failed_over`); after a failover to a chosen
    /// recovery point the others become unusable.
    pub fn failover(
        self: &Arc<Self>,
        key: &str,
        rp: Option<&str>,
        copy: bool,
    ) -> CtlResult<Operation> {
        let g = self.group(key)?;
        self.require_driver(&g)?;
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
        let replace = self.failover_leftovers(&g, &resources, &out_dir)?;
        let op = self.db(|s| {
            s.begin_checked(
                g.id,
                &req,
                &json!({ "recovery_point": rp, "out_dir": out_dir, "copy": copy }),
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
            // The fence before the point is chosen: nothing commits after.
            for image in &images {
                let image = image.clone();
                me.on_store_for(format!("fencing {image}"), FENCE_WAIT, move |st| {
                    st.fence(&image)
                })
                .await?;
            }
            let engine_rp = match &point {
                Some(p) => p.engine_rp,
                None => latest_common_point(&receiver, &images)?,
            };
            let dir = out_dir.clone();
            let volumes = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<Volume>> {
                let rp = ferry_protocol::RecoveryPointId(engine_rp);
                // A retry first removes what the failed attempt made (never
                // a volume that is the standby copy itself). On RBD this can
                // wait for a killed agent's watch on a half-made image to
                // expire, so it is done here, off the API's workers.
                for leftover in &replace {
                    leftover.remove().map_err(|e| {
                        anyhow::Error::new(e).context(format!(
                            "removing the failed failover's copies in {leftover}"
                        ))
                    })?;
                }
                ferry_engine::testpoint::reach("failover::before-images");
                receiver.store.prepare_failover_outputs(&dir)?;
                let mut volumes = Vec::with_capacity(images.len());
                for image in &images {
                    let volume = receiver.store.failover_volume(&dir, image, rp, copy)?;
                    info!(%image, volume = %volume.location, method = volume.method.as_str(), "failover volume ready");
                    volumes.push(volume);
                    // Fault injection (tests): hold or stop between images.
                    ferry_engine::testpoint::reach("failover::after-image");
                }
                Ok(volumes)
            })
            .await
            .map_err(|e| internal("the failover task")(e.into()))?
            .map_err(internal(format!(
                "materialising group '{}' at engine recovery point {engine_rp}",
                g.name
            )))?;
            for (r, volume) in resources.iter().zip(&volumes) {
                me.db(|s| s.set_resource_volume(&r.uri, &volume.location))?;
            }
            if let Some(p) = &point {
                me.db(|s| s.mark_recovery_points_unusable(g.id, Some(p.id)))?;
            }
            info!(group = %g.name, engine_rp, dir = %out_dir.display(), "failed over");
            Ok(())
        });
        Ok(op)
    }

    /// What a failed failover left that this attempt replaces. A first
    /// attempt never takes over a copy someone else made: any is refused
    /// (a retry from `failover_failed` replaces what the failed attempt
    /// made; it could not have started if any had existed before it).
    fn failover_leftovers(
        &self,
        g: &Group,
        resources: &[Resource],
        out_dir: &Path,
    ) -> CtlResult<Vec<FailoverLeftover>> {
        let targets: Vec<&str> = resources
            .iter()
            .map(|r| r.standby_target.as_str())
            .collect();
        let leftovers = self
            .receiver
            .store
            .failover_leftovers(out_dir, &targets)
            .map_err(|e| internal("listing a failed failover's leftovers")(e.into()))?;
        let mut replace = Vec::new();
        for leftover in leftovers {
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
        Ok(replace)
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
