//! Re-protect after an unplanned failover (ferry's addition; DRBD and Zerto
//! call the same idea a bitmap merge or a delta sync), both sides:
//!
//! - the new primary (`reprotect`, called by the operator): finds the last
//!   recovery point both sites hold, has the old primary install its
//!   volumes as the standby copies at that point (`Begin`), seeds its own
//!   sources so the first cycle sends only the differences, has the old
//!   primary swap roles (`Commit`), names its resources by its volumes, runs
//!   that first cycle and starts replicating;
//! - the old primary (`peer_reprotect_step`): stops replicating the group
//!   and installs each volume as a standby copy without a full copy
//!   (`ferry_engine::standby_backend::Standby::adopt_for_reprotect`), keeping
//!   its split-brain writes where its answer says.
//!
//! Every step is repeatable: a failed or killed re-protect is retried with
//! `reprotect` until it completes. A planned migration fails back.

use std::sync::Arc;

use base64::Engine as _;
use ferry_engine::rbd::source::RbdSource;
use ferry_engine::source::{BlockHash, FileSource};
use ferry_engine::standby_backend::{ReprotectCopy, ReprotectSource};
use ferry_protocol::{AgentId, Epoch, ImageName, RecoveryPointId};
use hyper::Method;
use serde_json::json;
use tracing::{info, warn};

use super::failover::latest_common_point;
use super::{
    error_chain, hold, internal, remote_id, CtlError, CtlResult, Orchestrator, ReprotectImage,
    ReprotectPlan, ReprotectStep, ReprotectedImage, CYCLE_ATTEMPTS, RETRY_PAUSE,
};
use crate::control::{
    Group, GroupState, OpKind, OpRequest, OpResult, OpState, Operation, OperationId, Resource,
    Role, StoreError,
};
use crate::durable::write_durably;
use crate::replicate::{source_state_dir, Cycle};
use crate::sync_util::lock;
use crate::uri::SourceUri;
use crate::uri::TargetUri;

/// How often the new primary asks whether the old primary's copies are
/// installed.
const BEGIN_POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// How long the old primary holds a `Begin` whose copies are still being
/// installed before it answers `pending` (well inside the peer request
/// timeout).
const BEGIN_LONG_POLL: std::time::Duration = std::time::Duration::from_secs(3);

/// How often a held `Begin` looks whether the install has ended.
const INSTALL_CHECK: std::time::Duration = std::time::Duration::from_millis(20);

/// Where the new primary's first re-protect cycle starts: the common point
/// and, per resource, its volume and epoch there.
struct ReprotectBase {
    engine_rp: u64,
    created_unix_ms: u64,
    volumes: Vec<(Resource, SourceUri, ReprotectImage)>,
}

impl Orchestrator {
    /// Re-protect (the new primary, after an unplanned failover, once the
    /// old primary site is back): the old primary's volumes become this
    /// group's standby copies, and only the blocks written on either side
    /// since the last recovery point both sites hold cross the link (the old
    /// primary's writes after it are rolled back in its copies and kept in
    /// its old volumes). On success the group is a primary in `syncing`.
    /// RBD volumes must be the standby images failed over in place (the
    /// latest point): their snapshot of the point is the base.
    pub fn reprotect(self: &Arc<Self>, key: &str) -> CtlResult<Operation> {
        let g = self.group(key)?;
        self.require_driver(&g)?;
        crate::control::check(&OpRequest::Reprotect, &self.db(|s| s.group_view(g.id))?)
            .map_err(StoreError::Refused)?;
        let base = self.reprotect_base(&g)?;
        let op = self.db(|s| {
            s.begin_checked(
                g.id,
                &OpRequest::Reprotect,
                &json!({ "engine_rp": base.engine_rp }),
            )
        })?;
        let me = self.clone();
        self.run_op(op.id, async move { me.reprotect_steps(&g, base).await });
        Ok(op)
    }

    /// The common point (the newest group point every standby copy holds:
    /// the one a failover to the latest data made the volumes of) and each
    /// volume's epoch there.
    fn reprotect_base(&self, g: &Group) -> CtlResult<ReprotectBase> {
        let resources = self.db(|s| s.resources(g.id))?;
        let images: Vec<ImageName> = resources
            .iter()
            .map(|r| ImageName::new(r.standby_target.clone()))
            .collect::<Result<_, _>>()
            .map_err(|e| CtlError::BadRequest(e.to_string()))?;
        let engine_rp = latest_common_point(&self.receiver, &images)?;
        let mut base = ReprotectBase {
            engine_rp,
            created_unix_ms: 0,
            volumes: Vec::with_capacity(resources.len()),
        };
        for (r, image) in resources.into_iter().zip(images) {
            let location = r.volume.clone().ok_or_else(|| {
                CtlError::BadRequest(format!(
                    "{} has no failover volume recorded; reprotect follows a failover",
                    r.uri
                ))
            })?;
            let volume = SourceUri::parse(&location)
                .map_err(|e| CtlError::BadRequest(format!("volume {location}: {e}")))?;
            let point = self
                .receiver
                .store
                .recovery_points(&image)
                .map_err(|e| internal(format!("recovery points of {image}"))(e.into()))?
                .into_iter()
                .find(|p| p.id.get() == engine_rp)
                .ok_or_else(|| {
                    CtlError::BadRequest(format!(
                        "{image} no longer holds recovery point {engine_rp}"
                    ))
                })?;
            if let SourceUri::Rbd(spec) = &volume {
                let standby = self
                    .receiver
                    .store
                    .rbd_image_spec(image.as_str())
                    .map_err(|e| internal("the standby pool")(e.into()))?;
                if !spec.same_image(&standby) {
                    return Err(CtlError::BadRequest(format!(
                        "reprotect of an RBD group needs its volumes failed over in place (the \
                         latest point, the standby images themselves); {} is {location}: delete \
                         the group on both sites and protect it again",
                        r.uri
                    )));
                }
            }
            base.created_unix_ms = point.created_unix_ms;
            base.volumes.push((
                r,
                volume,
                ReprotectImage {
                    image: image.to_string(),
                    epoch: point.epoch.get(),
                },
            ));
        }
        Ok(base)
    }

    async fn peer_reprotect(&self, g: &Group, step: &ReprotectStep) -> CtlResult<ReprotectPlan> {
        let svc = self.db(|s| s.service(g.service_id))?;
        let remote = remote_id(g)?;
        let body = serde_json::to_value(step)
            .map_err(|e| internal("encoding a reprotect step")(e.into()))?;
        let reply = self
            .peer(
                &svc,
                Method::POST,
                &format!("/v1/peer/groups/{remote}/reprotect"),
                Some(&body),
            )
            .await?;
        serde_json::from_value(reply)
            .map_err(|e| internal("the old primary's reprotect plan")(e.into()))
    }

    async fn reprotect_steps(self: &Arc<Self>, g: &Group, base: ReprotectBase) -> CtlResult<()> {
        let peer = self.db(|s| s.service(g.service_id))?.remote_fingerprint;
        let begin = ReprotectStep::Begin {
            engine_rp: base.engine_rp,
            created_unix_ms: base.created_unix_ms,
            images: base.volumes.iter().map(|(_, _, i)| i.clone()).collect(),
        };
        let begun = async {
            loop {
                let plan = self.peer_reprotect(g, &begin).await?;
                if !plan.pending {
                    return Ok::<_, CtlError>(plan);
                }
                tokio::time::sleep(BEGIN_POLL).await;
            }
        };
        // While the old primary installs its copies, this side seeds its
        // RBD volumes and takes the first cycle's capture.
        let (plan, ahead) = tokio::join!(begun, self.prepare_rbd_volumes(g, peer, &base));
        let plan = plan?;
        ahead?;
        hold::reach("reprotect::after-begin");
        for (r, volume, image) in &base.volumes {
            let copy = plan.images.iter().find(|i| i.image == image.image);
            let copy = copy.ok_or_else(|| {
                CtlError::BadRequest(format!("the old primary's plan lacks {}", image.image))
            })?;
            info!(group = %g.name, resource = %r.uri, kept = %copy.kept, "the old primary keeps its writes after the common point here");
            match volume {
                SourceUri::File(path) => self.seed_file(peer, path, image, copy).await?,
                // Seeded above, with the capture.
                SourceUri::Rbd(_) => {}
                other => {
                    return Err(CtlError::BadRequest(format!(
                        "reprotect handles file: and rbd: volumes, not {other}"
                    )))
                }
            }
        }
        let renames: Vec<(String, String)> = base
            .volumes
            .iter()
            .filter(|(r, volume, _)| r.uri != volume.to_string())
            .map(|(r, volume, _)| (r.uri.clone(), volume.to_string()))
            .collect();
        if !plan.completed {
            self.peer_reprotect(
                g,
                &ReprotectStep::Commit {
                    renames: renames.clone(),
                },
            )
            .await?;
        }
        hold::reach("reprotect::old-primary-committed");
        self.db(|s| s.rename_resources(&renames))?;
        self.db(|s| s.mark_recovery_points_unusable(g.id, None))?;
        // The first cycle sends the differences; the old site then holds
        // a recovery point of this site's data.
        let mut attempt = 0;
        let done = loop {
            attempt += 1;
            match self.run_cycle(g.id).await {
                Ok(done) => break done,
                Err(e) if attempt < CYCLE_ATTEMPTS => {
                    warn!(group = %g.name, error = %error_chain(&e), "reprotect's first cycle failed; retrying");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(e) => return Err(e),
            }
        };
        info!(group = %g.name, engine_rp = done.engine_rp, "reprotected: the old primary site is the standby");
        self.start_loop(g.id);
        Ok(())
    }

    /// RBD volumes of the group: each replicates to `peer` from its
    /// snapshot of the common point (what the old primary's copy holds),
    /// and the first cycle's group capture is taken now (the cycle reads
    /// it). Needs nothing from the old primary, so it runs while that side
    /// installs its copies. A group without RBD volumes has nothing to do.
    async fn prepare_rbd_volumes(
        &self,
        g: &Group,
        peer: AgentId,
        base: &ReprotectBase,
    ) -> CtlResult<()> {
        let mut seeds = Vec::new();
        for (_, volume, image) in &base.volumes {
            let SourceUri::Rbd(spec) = volume else {
                continue;
            };
            let name = ImageName::new(image.image.clone())
                .map_err(|e| CtlError::BadRequest(e.to_string()))?;
            let state_dir = source_state_dir(&self.dir, peer, &name);
            let cluster = self.ceph_cluster()?;
            let spec = spec.clone();
            let snap = ferry_engine::rbd::standby::snap_name(base.engine_rp);
            let epoch = Epoch(image.epoch);
            seeds.push((volume, name, async move {
                tokio::task::spawn_blocking(move || {
                    RbdSource::seed_from_snapshot(&cluster, &spec, &state_dir, &snap, epoch)
                })
                .await
            }));
        }
        if seeds.is_empty() {
            return Ok(());
        }
        // All at once: each waits for a few round trips to the cluster.
        let (targets, tasks): (Vec<_>, Vec<_>) =
            seeds.into_iter().map(|(v, n, t)| ((v, n), t)).unzip();
        let results = futures_util::future::join_all(tasks).await;
        let svc = self.db(|s| s.service(g.service_id))?;
        let addr = Self::resolve(&self.standby_endpoint(&svc)).await?;
        let mut pairs = Vec::with_capacity(targets.len());
        for ((volume, name), result) in targets.into_iter().zip(results) {
            result
                .map_err(|e| internal("the seeding task")(e.into()))?
                .map_err(|e| internal(format!("seeding {volume}"))(e.into()))?;
            pairs.push((volume.clone(), TargetUri { addr, image: name }));
        }
        self.replicator
            .capture_ahead(Cycle {
                pairs: &pairs,
                peer,
                cluster: None,
                progress: None,
                accept_changes_at_rest: false,
                min_recovery_point: 0,
                skip_unchanged: false,
                tweak: None,
                state_mirror: None,
            })
            .await
            .map_err(|source| CtlError::Replication {
                group: g.name.clone(),
                source: Box::new(source),
            })
    }

    /// A file volume replicates to `peer` from what the old primary's copy
    /// holds (its block hashes, in the plan).
    async fn seed_file(
        &self,
        peer: AgentId,
        path: &std::path::Path,
        image: &ReprotectImage,
        copy: &ReprotectedImage,
    ) -> CtlResult<()> {
        let name =
            ImageName::new(image.image.clone()).map_err(|e| CtlError::BadRequest(e.to_string()))?;
        let state_dir = source_state_dir(&self.dir, peer, &name);
        let epoch = Epoch(image.epoch);
        let hashes = decode_hashes(copy.block_hashes.as_deref().ok_or_else(|| {
            CtlError::BadRequest(format!(
                "the old primary sent no block hashes for {}",
                image.image
            ))
        })?)?;
        let path = path.to_path_buf();
        let shown = path.display().to_string();
        tokio::task::spawn_blocking(move || {
            FileSource::seed_from_hashes(&path, &state_dir, epoch, &hashes)
        })
        .await
        .map_err(|e| internal("the seeding task")(e.into()))?
        .map_err(|e| internal(format!("seeding {shown}"))(e.into()))
    }

    /// The old primary's side of a re-protect, one step at a time (see
    /// [`ReprotectStep`]); every step can be repeated.
    pub async fn peer_reprotect_step(
        self: &Arc<Self>,
        caller: AgentId,
        id: i64,
        step: &ReprotectStep,
    ) -> CtlResult<ReprotectPlan> {
        let g = self.peer_group(caller, id)?;
        let plan_path = self
            .dir
            .join("volumes")
            .join(&g.name)
            .join("reprotect.json");
        let load_plan = || -> CtlResult<ReprotectPlan> {
            let bytes = std::fs::read(&plan_path)
                .map_err(|e| internal(format!("reading {}", plan_path.display()))(e.into()))?;
            serde_json::from_slice(&bytes)
                .map_err(|e| internal(format!("parsing {}", plan_path.display()))(e.into()))
        };
        let ops = self.db(|s| s.operations_of_group(g.id))?;
        let last_reprotect = ops
            .iter()
            .filter(|op| op.kind == OpKind::Reprotect)
            .max_by_key(|op| op.id);
        if g.role == Role::Standby
            && last_reprotect.is_some_and(|op| op.state == OpState::Succeeded)
        {
            // Done here already (the new primary lost the answer).
            let mut plan = load_plan()?;
            plan.completed = true;
            return Ok(plan);
        }
        let running = last_reprotect
            .filter(|op| op.state == OpState::Running)
            .cloned();
        match step {
            ReprotectStep::Begin {
                engine_rp,
                created_unix_ms,
                images,
            } => {
                let op = match running {
                    Some(op) if g.state == GroupState::Reprotecting => op,
                    _ => {
                        self.refuse_while_drilling(&g, "a reprotect")?;
                        let op = self.db(|s| {
                            s.begin_checked(
                                g.id,
                                &OpRequest::PeerReprotect,
                                &json!({ "by": "new primary", "engine_rp": engine_rp }),
                            )
                        })?;
                        // Never again replicate over the failed-over copies.
                        self.stop_loop(g.id).await;
                        op
                    }
                };
                let pending = ReprotectPlan {
                    engine_rp: *engine_rp,
                    pending: true,
                    op: op.id.0,
                    ..ReprotectPlan::default()
                };
                let running = lock(&self.reprotect_tasks).get(&op.id).cloned();
                match running {
                    Some(None) => {
                        return self.answer_when_installed(op.id, &load_plan, pending).await
                    }
                    Some(Some(reason)) => {
                        lock(&self.reprotect_tasks).remove(&op.id);
                        return Err(CtlError::BadRequest(reason));
                    }
                    None => {}
                }
                // Done for this operation: the plan its task wrote.
                if let Ok(plan) = load_plan() {
                    if plan.op == op.id.0 {
                        return Ok(plan);
                    }
                }
                lock(&self.reprotect_tasks).insert(op.id, None);
                let me = self.clone();
                let plan_path = plan_path.clone();
                let (engine_rp, created, images) = (*engine_rp, *created_unix_ms, images.clone());
                tokio::spawn(async move {
                    hold::reach("reprotect::old-primary-begun");
                    let result = me
                        .adopt_old_volumes(&g, caller, op.id.0, engine_rp, created, &images)
                        .await
                        .and_then(|plan| {
                            let bytes = serde_json::to_vec(&plan)
                                .map_err(|e| internal("encoding the reprotect plan")(e.into()))?;
                            if let Some(parent) = plan_path.parent() {
                                std::fs::create_dir_all(parent).map_err(|e| {
                                    internal(format!("creating {}", parent.display()))(e.into())
                                })?;
                            }
                            write_durably(&plan_path.with_extension("tmp"), &plan_path, &bytes)
                                .map_err(|e| {
                                    internal(format!("writing {}", plan_path.display()))(e.into())
                                })
                        });
                    match result {
                        Ok(()) => {
                            hold::reach("reprotect::old-primary-adopted");
                            lock(&me.reprotect_tasks).remove(&op.id);
                        }
                        Err(e) => {
                            warn!(group = %g.name, error = %error_chain(&e), "installing the old volumes as standby copies failed");
                            lock(&me.reprotect_tasks).insert(op.id, Some(error_chain(&e)));
                        }
                    }
                });
                self.answer_when_installed(op.id, &load_plan, pending).await
            }
            ReprotectStep::Commit { renames } => {
                let op = running.ok_or_else(|| {
                    CtlError::BadRequest(format!(
                        "group '{}' is not being reprotected here",
                        g.name
                    ))
                })?;
                let plan = load_plan()?;
                // A standby binds no policy: the old direction's schedule
                // goes with its role (the new primary binds its own).
                if g.policy.is_some() {
                    self.db(|s| s.unbind_policy(g.id))?;
                }
                self.db(|s| s.mark_recovery_points_unusable(g.id, None))?;
                self.db(|s| s.finish_operation_renaming(op.id, OpResult::Succeeded, renames))?;
                info!(group = %g.name, "reprotected: this site is now the standby");
                Ok(plan)
            }
        }
    }

    /// The answer to a `Begin` whose copies are being installed: the plan
    /// as soon as the install task is done, its error if it failed, or
    /// `pending` after [`BEGIN_LONG_POLL`] (the new primary asks again). A
    /// long poll, so the new primary learns of the end at once instead of
    /// at its next poll.
    async fn answer_when_installed(
        &self,
        op: OperationId,
        load_plan: &impl Fn() -> CtlResult<ReprotectPlan>,
        pending: ReprotectPlan,
    ) -> CtlResult<ReprotectPlan> {
        let deadline = tokio::time::Instant::now() + BEGIN_LONG_POLL;
        loop {
            let state = lock(&self.reprotect_tasks).get(&op).cloned();
            match state {
                Some(None) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(INSTALL_CHECK).await;
                }
                Some(None) => return Ok(pending),
                Some(Some(reason)) => {
                    lock(&self.reprotect_tasks).remove(&op);
                    return Err(CtlError::BadRequest(reason));
                }
                None => return load_plan(),
            }
        }
    }

    /// Installs each of `g`'s volumes here as the standby copy at the
    /// common point (see `Standby::adopt_for_reprotect`).
    async fn adopt_old_volumes(
        &self,
        g: &Group,
        new_primary: AgentId,
        op_id: i64,
        engine_rp: u64,
        created_unix_ms: u64,
        images: &[ReprotectImage],
    ) -> CtlResult<ReprotectPlan> {
        let keep_snap = format!("ferry-splitbrain-op{op_id}");
        let rp = RecoveryPointId(engine_rp);
        // One task per image, all at once: each costs a few cluster round
        // trips (two snapshots take a monitor round each, ~1 s on the lab),
        // which add up to minutes for a large group when run one by one.
        let resources = self.db(|s| s.resources(g.id))?;
        // The RBD images meet before their snapshots, so the monitor commits
        // the whole group's in one round (see ferry_engine::rendezvous).
        let rbd_count = resources
            .iter()
            .filter(|r| matches!(SourceUri::parse(&r.uri), Ok(SourceUri::Rbd(_))))
            .count();
        let mut tickets = ferry_engine::rendezvous::tickets(rbd_count).into_iter();
        let mut jobs = Vec::new();
        for r in resources {
            let image = images
                .iter()
                .find(|i| i.image == r.standby_target)
                .ok_or_else(|| {
                    CtlError::BadRequest(format!(
                        "the new primary did not name {} ({})",
                        r.standby_target, r.uri
                    ))
                })?
                .clone();
            let name = ImageName::new(image.image.clone())
                .map_err(|e| CtlError::BadRequest(e.to_string()))?;
            let epoch = Epoch(image.epoch);
            let state_dir = source_state_dir(&self.dir, new_primary, &name);
            let source = SourceUri::parse(&r.uri)
                .map_err(|e| CtlError::BadRequest(format!("{}: {e}", r.uri)))?;
            let receiver = self.receiver.clone();
            let job: Box<dyn FnOnce() -> anyhow::Result<ReprotectCopy> + Send> = match source {
                SourceUri::File(path) => Box::new(move || {
                    Ok(receiver.store.adopt_for_reprotect(
                        &name,
                        ReprotectSource::File(&path),
                        epoch,
                        rp,
                        created_unix_ms,
                        None,
                    )?)
                }),
                SourceUri::Rbd(spec) => {
                    let cluster = self.ceph_cluster()?;
                    let snaps = RbdSource::snapshot_at(&spec, &state_dir, epoch).map_err(|e| {
                        internal(format!("reading the replication state of {spec}"))(e.into())
                    })?;
                    let Some((snap, clone_from)) = snaps else {
                        return Err(CtlError::BadRequest(format!(
                            "{spec} keeps no snapshot of epoch {epoch} (recovery point {engine_rp}, \
                             the last one both sites hold): it cannot be reprotected with only the \
                             differences; delete the group on both sites and protect it again"
                        )));
                    };
                    let keep = keep_snap.clone();
                    let ticket = tickets.next();
                    Box::new(move || {
                        let copy = receiver.store.adopt_for_reprotect(
                            &name,
                            ReprotectSource::Rbd {
                                cluster: &cluster,
                                spec: &spec,
                                snap: &snap,
                                clone_from: &clone_from,
                                keep_snap: &keep,
                            },
                            epoch,
                            rp,
                            created_unix_ms,
                            ticket,
                        )?;
                        // This side never replicates from the old volume
                        // again (its snapshots stay: the copy is a clone of
                        // one).
                        RbdSource::forget_keeping_snapshots(&state_dir)?;
                        Ok(copy)
                    })
                }
                other => {
                    return Err(CtlError::BadRequest(format!(
                        "reprotect handles file: and rbd: volumes, not {other}"
                    )))
                }
            };
            jobs.push((r.uri.clone(), image, tokio::task::spawn_blocking(job)));
        }
        let mut plan = ReprotectPlan {
            engine_rp,
            op: op_id,
            ..ReprotectPlan::default()
        };
        let mut failed = None;
        for (uri, image, job) in jobs {
            let copy = job
                .await
                .map_err(|e| internal("an adoption task")(e.into()))
                .and_then(|r| {
                    r.map_err(internal(format!(
                        "installing {uri} as standby copy {}",
                        image.image
                    )))
                });
            match copy {
                Ok(copy) => {
                    info!(group = %g.name, image = %image.image, kept = %copy.kept, "old volume installed as the standby copy");
                    plan.images.push(ReprotectedImage {
                        image: image.image.clone(),
                        kept: copy.kept,
                        block_hashes: copy.block_hashes.as_deref().map(encode_hashes),
                    });
                }
                // Every task runs to its end before the step fails.
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(plan),
        }
    }
}

fn encode_hashes(hashes: &[BlockHash]) -> String {
    let mut bytes = Vec::with_capacity(hashes.len() * 16);
    for h in hashes {
        bytes.extend_from_slice(&h.0);
    }
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn decode_hashes(text: &str) -> CtlResult<Vec<BlockHash>> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| CtlError::BadRequest(format!("the old primary's block hashes: {e}")))?;
    if bytes.len() % 16 != 0 {
        return Err(CtlError::BadRequest(
            "the old primary's block hashes are not 16 bytes each".into(),
        ));
    }
    Ok(bytes
        .chunks_exact(16)
        .map(|c| {
            let mut h = [0u8; 16];
            h.copy_from_slice(c);
            BlockHash(h)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_hashes_survive_the_wire_and_bad_ones_are_refused() {
        let hashes = vec![BlockHash([1; 16]), BlockHash([2; 16])];
        let text = encode_hashes(&hashes);
        assert_eq!(decode_hashes(&text).unwrap(), hashes);
        let short = base64::engine::general_purpose::STANDARD.encode([0u8; 15]);
        assert!(decode_hashes(&short).is_err());
        assert!(decode_hashes("not base64!").is_err());
    }
}
