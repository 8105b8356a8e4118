//! Planned migration (the roles swap with no data loss), both sides: the
//! primary's steps (`migrate_steps`: stop the loop, final sync, verify,
//! install its volumes as the standby copies, commit) and the standby's
//! (`peer_migrate_step`: begin, prepare the new volumes and the
//! [`MigrationPlan`], commit, abort), every step repeatable. This file
//! holds the files flavour and the choice of flavour; the RBD flavour is
//! in `rbd_migration.rs`.

use std::path::Path;
use std::sync::Arc;

use ferry_engine::standby_backend::{AdoptSource, Standby, StandbyKind};
use ferry_protocol::{AgentId, ImageName};
use hyper::Method;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::{info, warn};

use super::{
    error_chain, hold, internal, remote_id, CtlError, CtlResult, MigrateStep, Orchestrator,
    CYCLE_ATTEMPTS, RETRY_PAUSE,
};
use crate::control::{
    Group, GroupState, OpKind, OpRequest, OpResult, OpState, Operation, Resource, ResourceKind,
    Role, StoreError, Transition,
};
use crate::durable::write_durably;
use crate::replicate;
use crate::uri::SourceUri;

impl Orchestrator {
    /// Planned migration (primary; the operator has quiesced the volumes):
    /// stops continuous replication, runs a final cycle (everything written
    /// before the command), has the standby write each image as it is at
    /// that recovery point into a new volume (`DIR/volumes/GROUP/IMAGE.raw`,
    /// or a new RBD image: see `rbd_migration.rs`) and checks its BLAKE3
    /// against the source here, installs each source here as the standby
    /// copy at the same epoch, then the roles swap: both sides `mapped`,
    /// resources named by the new primary's volumes, and the new primary's
    /// first sync is incremental (only blocks written after the swap cross
    /// the link). `file:` volumes need the files backend on both agents,
    /// `rbd:` volumes the RBD backend on both. A retry after a
    /// failure or restart (`migration_failed`) picks up where the standby
    /// is, including a standby that already completed its side.
    pub fn migrate(self: &Arc<Self>, key: &str) -> CtlResult<Operation> {
        let g = self.group(key)?;
        self.require_driver(&g)?;
        let resources = self.db(|s| s.resources(g.id))?;
        let split_vms = self.split_vms(&g, &resources)?;
        migration_kind(&self.receiver.store, &resources, "primary")
            .map_err(CtlError::BadRequest)?;
        let op =
            self.db(|s| s.begin_checked(g.id, &OpRequest::Migrate { split_vms }, &json!({})))?;
        let me = self.clone();
        self.run_op_renaming(op.id, async move { me.migrate_steps(&g).await });
        Ok(op)
    }

    /// VMs with volumes both in `g` and in another group.
    fn split_vms(&self, g: &Group, resources: &[Resource]) -> CtlResult<Vec<String>> {
        let mut split: Vec<String> = Vec::new();
        let all = self.resources()?;
        for r in resources {
            if let ResourceKind::VmVolume { vm, .. } = &r.kind {
                let elsewhere = all.iter().any(|o| {
                    o.group_id != g.id
                        && matches!(&o.kind, ResourceKind::VmVolume { vm: v, .. } if v.as_str() == vm.as_str())
                });
                if elsewhere && !split.contains(vm) {
                    split.push(vm.clone());
                }
            }
        }
        Ok(split)
    }

    async fn peer_migrate(&self, g: &Group, body: &MigrateStep) -> CtlResult<MigrationPlan> {
        let svc = self.db(|s| s.service(g.service_id))?;
        let remote = remote_id(g)?;
        let body = serde_json::to_value(body)
            .map_err(|e| internal("encoding a migrate step")(e.into()))?;
        let reply = self
            .peer(
                &svc,
                Method::POST,
                &format!("/v1/peer/groups/{remote}/migrate"),
                Some(&body),
            )
            .await?;
        serde_json::from_value(reply)
            .map_err(|e| internal("the standby's migration plan")(e.into()))
    }

    async fn migrate_steps(self: &Arc<Self>, g: &Group) -> CtlResult<Vec<(String, String)>> {
        self.stop_loop(g.id).await;
        let resources = self.db(|s| s.resources(g.id))?;
        let begun = self.peer_migrate(g, &MigrateStep::Begin).await?;
        let plan = if begun.completed {
            info!(group = %g.name, "the standby already completed the migration; finishing here");
            begun
        } else {
            hold::reach("migrate::after-begin");
            let mut attempt = 0;
            let done = loop {
                attempt += 1;
                match self.run_cycle(g.id).await {
                    // "Everything written before the command": not a cycle
                    // that resumed an epoch scanned before it.
                    Ok(done) if done.fresh() => break done,
                    Ok(done) => {
                        info!(group = %g.name, engine_rp = done.engine_rp, "the final sync resumed an interrupted epoch; syncing again");
                        attempt -= 1;
                    }
                    Err(e) if attempt < CYCLE_ATTEMPTS => {
                        warn!(group = %g.name, error = %error_chain(&e), "final sync failed; retrying");
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                    Err(e) => return Err(e),
                }
            };
            info!(group = %g.name, engine_rp = done.engine_rp, "final sync of the migration done");
            hold::reach("migrate::after-final-sync");
            self.peer_migrate(
                g,
                &MigrateStep::Prepare {
                    engine_rp: done.engine_rp,
                },
            )
            .await?
        };
        hold::reach("migrate::prepared");
        // Fault injection (tests): the standby prepared, this side stops.
        fail::fail_point!("migrate::after-prepare", |_| Err(CtlError::BadRequest(
            "injected failure after the standby prepared the migration".into()
        )));
        let kind = migration_kind(&self.receiver.store, &resources, "primary")
            .map_err(CtlError::BadRequest)?;
        if kind == MigrationKind::Rbd {
            let peer = self.db(|s| s.service(g.service_id))?.remote_fingerprint;
            let renames = match self.verify_and_adopt_rbd(g, peer, &resources, &plan).await {
                Ok(renames) => renames,
                Err((e, abort)) => {
                    if abort && !plan.completed {
                        let _ = self.peer_migrate(g, &MigrateStep::Abort).await;
                    }
                    return Err(e);
                }
            };
            hold::reach("migrate::before-commit");
            if !plan.completed {
                self.peer_migrate(g, &MigrateStep::Commit).await?;
            }
            hold::reach("migrate::after-commit");
            self.db(|s| s.mark_recovery_points_unusable(g.id, None))?;
            self.forget_rbd_sources(peer, &resources).await;
            info!(group = %g.name, "planned migration done; this site is now the standby");
            return Ok(renames);
        }
        // Verify: the new volumes equal the (quiesced) sources here.
        let mut checked = Vec::with_capacity(resources.len());
        for r in &resources {
            let Ok(SourceUri::File(path)) = SourceUri::parse(&r.uri) else {
                return Err(CtlError::BadRequest(format!(
                    "{} is not a file: volume",
                    r.uri
                )));
            };
            let Some(image) = plan.images.iter().find(|i| i.image == r.standby_target) else {
                return Err(CtlError::BadRequest(format!(
                    "the standby's migration plan lacks {}",
                    r.standby_target
                )));
            };
            let p = path.clone();
            let hash = tokio::task::spawn_blocking(move || crate::imagegen::file_hash(&p))
                .await
                .map_err(|e| internal("the hashing task")(e.into()))?
                .map_err(|e| internal(format!("hashing {}", path.display()))(e.into()))?;
            if hash != image.blake3 {
                if !plan.completed {
                    let _ = self.peer_migrate(g, &MigrateStep::Abort).await;
                }
                return Err(CtlError::BadRequest(format!(
                    "{} changed after the final sync (BLAKE3 {hash} here, {} on the standby): \
                     quiesce the volumes and migrate again",
                    r.uri, image.blake3
                )));
            }
            checked.push((r.clone(), path, image.clone()));
        }
        // This site becomes the standby: each source becomes the copy.
        for (r, path, image) in &checked {
            let name = ImageName::new(r.standby_target.clone())
                .map_err(|e| CtlError::BadRequest(e.to_string()))?;
            let (path, epoch) = (path.clone(), ferry_protocol::Epoch(image.epoch));
            let rp = ferry_protocol::RecoveryPointId(plan.engine_rp);
            let created = plan.created_unix_ms;
            self.on_store(
                format!("installing {} as standby copy {name}", path.display()),
                move |st| {
                    st.remove_image(&name)?;
                    st.adopt(&name, AdoptSource::File(&path), epoch, rp, created)
                },
            )
            .await?;
        }
        hold::reach("migrate::before-commit");
        if !plan.completed {
            self.peer_migrate(g, &MigrateStep::Commit).await?;
        }
        hold::reach("migrate::after-commit");
        self.db(|s| s.mark_recovery_points_unusable(g.id, None))?;
        info!(group = %g.name, "planned migration done; this site is now the standby");
        Ok(checked
            .into_iter()
            .map(|(r, _, image)| (r.uri, image.uri))
            .collect())
    }

    /// Peer (standby) side of a planned migration, one step at a time (see
    /// [`MigrateStep`]); every step can be repeated.
    pub async fn peer_migrate_step(
        self: &Arc<Self>,
        caller: AgentId,
        id: i64,
        step: &MigrateStep,
    ) -> CtlResult<MigrationPlan> {
        let g = self.peer_group(caller, id)?;
        let plan_path = self
            .dir
            .join("volumes")
            .join(&g.name)
            .join("migration.json");
        let load_plan = || -> CtlResult<MigrationPlan> {
            let bytes = std::fs::read(&plan_path)
                .map_err(|e| internal(format!("reading {}", plan_path.display()))(e.into()))?;
            serde_json::from_slice(&bytes)
                .map_err(|e| internal(format!("parsing {}", plan_path.display()))(e.into()))
        };
        if g.role == Role::Primary && g.migrated {
            // Done here already (the primary lost the answer): replay it.
            let mut plan = load_plan()?;
            plan.completed = true;
            return Ok(plan);
        }
        if g.new_primary || g.role != Role::Standby {
            return Err(CtlError::BadRequest(format!(
                "group '{}' cannot take part in a planned migration here ({}{})",
                g.name,
                g.state,
                if g.new_primary { ", a new primary" } else { "" }
            )));
        }
        let running = || -> CtlResult<Operation> {
            self.db(|s| s.operations_of_group(g.id))?
                .into_iter()
                .find(|op| op.kind == OpKind::Migrate && op.state == OpState::Running)
                .ok_or_else(|| {
                    CtlError::BadRequest(format!("group '{}' is not migrating here", g.name))
                })
        };
        match step {
            MigrateStep::Begin => {
                if g.state != GroupState::Migrating {
                    if !matches!(g.state, GroupState::Syncing | GroupState::MigrationFailed) {
                        return Err(StoreError::StateConflict {
                            group: g.name.clone(),
                            expected: GroupState::Syncing,
                            actual: g.state,
                        }
                        .into());
                    }
                    self.refuse_while_drilling(&g, "a planned migration")?;
                    let resources = self.db(|s| s.resources(g.id))?;
                    migration_kind(&self.receiver.store, &resources, "standby")
                        .map_err(CtlError::BadRequest)?;
                    if g.state == GroupState::Syncing {
                        self.reset_rbd_volumes(&g)?;
                    }
                    let t = Transition {
                        op: OpKind::Migrate,
                        from: g.state,
                        during: GroupState::Migrating,
                        on_success: crate::control::Outcome::Group {
                            state: GroupState::Mapped,
                            role: Role::Primary,
                            new_primary: false,
                            migrated: true,
                        },
                        on_failure: GroupState::MigrationFailed,
                    };
                    self.db(|s| s.begin_operation(g.id, &t, &json!({ "by": "primary" })))?;
                    hold::reach("migrate::standby-begun");
                }
                Ok(MigrationPlan::default())
            }
            MigrateStep::Prepare { engine_rp } => {
                running()?;
                let resources = self.db(|s| s.resources(g.id))?;
                let kind = migration_kind(&self.receiver.store, &resources, "standby")
                    .map_err(CtlError::BadRequest)?;
                let plan = match kind {
                    MigrationKind::Files => {
                        self.materialise_for_migration(&g, caller, *engine_rp)
                            .await?
                    }
                    MigrationKind::Rbd => {
                        self.materialise_rbd_for_migration(&g, caller, *engine_rp)
                            .await?
                    }
                };
                let bytes = serde_json::to_vec_pretty(&plan)
                    .map_err(|e| internal("encoding the migration plan")(e.into()))?;
                write_durably(&plan_path.with_extension("tmp"), &plan_path, &bytes)
                    .map_err(|e| internal(format!("writing {}", plan_path.display()))(e.into()))?;
                hold::reach("migrate::standby-prepared");
                Ok(plan)
            }
            MigrateStep::Commit => {
                let op = running()?;
                let plan = load_plan()?;
                let resources = self.db(|s| s.resources(g.id))?;
                let renames: Vec<(String, String)> = resources
                    .iter()
                    .filter_map(|r| {
                        let new = plan.images.iter().find(|i| i.image == r.standby_target)?;
                        Some((r.uri.clone(), new.uri.clone()))
                    })
                    .collect();
                if renames.len() != resources.len() {
                    return Err(CtlError::BadRequest(
                        "the migration plan does not cover every resource".into(),
                    ));
                }
                // The replicated copies are not needed any more: the new
                // volumes hold the same bytes.
                self.remove_standby_images(&resources).await?;
                hold::reach("migrate::standby-images-removed");
                self.db(|s| s.mark_recovery_points_unusable(g.id, None))?;
                self.db(|s| s.finish_operation_renaming(op.id, OpResult::Succeeded, &renames))?;
                // The new RBD volumes are the group's now: no later abort
                // may take them for an attempt's leftovers.
                if let Err(error) = self.reset_rbd_volumes(&g) {
                    warn!(group = %g.name, %error, "cannot forget the migration's volume list");
                }
                info!(group = %g.name, "planned migration done; this site is now the primary");
                hold::reach("migrate::standby-committed");
                Ok(plan)
            }
            MigrateStep::Abort => {
                if let Ok(op) = running() {
                    if self.receiver.store.kind() == StandbyKind::Rbd {
                        self.remove_rbd_volumes(&g).await?;
                    }
                    let dir = self.dir.join("volumes").join(&g.name);
                    let _ = std::fs::remove_dir_all(&dir);
                    self.db(|s| s.finish_operation(op.id, OpResult::RolledBack))?;
                }
                Ok(MigrationPlan::default())
            }
        }
    }

    /// Writes every standby image of `g` at `engine_rp` into a new volume
    /// and records it as this agent's replicated base towards `primary`.
    async fn materialise_for_migration(
        &self,
        g: &Group,
        primary: AgentId,
        engine_rp: u64,
    ) -> CtlResult<MigrationPlan> {
        let dir = self.dir.join("volumes").join(&g.name);
        let mut plan = MigrationPlan {
            engine_rp,
            ..MigrationPlan::default()
        };
        for r in self.db(|s| s.resources(g.id))? {
            let image = ImageName::new(r.standby_target.clone())
                .map_err(|e| CtlError::BadRequest(e.to_string()))?;
            let out = dir.join(format!("{image}.raw"));
            let state_dir = replicate::source_state_dir(&self.dir, primary, &image);
            let (d, o) = (dir.clone(), out.clone());
            let rp = ferry_protocol::RecoveryPointId(engine_rp);
            let what = format!(
                "writing {image} at engine recovery point {engine_rp} to {}",
                out.display()
            );
            let (info, hash) = self
                .on_store(what, move |st| {
                    let io = |what: &'static str, p: &Path| {
                        let p = p.to_owned();
                        move |source| ferry_engine::standby::StoreError::Io {
                            op: what,
                            path: p,
                            source,
                        }
                    };
                    let info = st
                        .recovery_points(&image)?
                        .into_iter()
                        .find(|p| p.id == rp)
                        .ok_or(ferry_engine::standby::StoreError::UnknownRecoveryPoint {
                            image: image.clone(),
                            recovery_point: rp,
                        })?;
                    std::fs::create_dir_all(&d).map_err(io("create volume directory", &d))?;
                    match std::fs::remove_file(&o) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(io("remove an earlier attempt", &o)(e)),
                    }
                    st.restore_into(&image, rp, &o)?;
                    ferry_engine::source::FileSource::seed(&o, &state_dir, info.epoch).map_err(
                        |e| ferry_engine::standby::StoreError::InvalidRequest {
                            reason: format!("seeding the source state of {}: {e}", o.display()),
                        },
                    )?;
                    let hash = crate::imagegen::file_hash(&o).map_err(io("hash volume", &o))?;
                    Ok((info, hash))
                })
                .await?;
            plan.created_unix_ms = info.created_unix_ms;
            plan.images.push(MigratedImage {
                image: r.standby_target.clone(),
                uri: format!("file:{}", out.display()),
                epoch: info.epoch.get(),
                size: info.size,
                blake3: hash,
            });
        }
        Ok(plan)
    }
}

/// Which flavour of planned migration a group takes on this agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum MigrationKind {
    /// `file:` volumes, files standby backend.
    Files,
    /// `rbd:` volumes, RBD standby backend.
    Rbd,
}

/// The flavour for `resources` with this agent's standby backend `store`,
/// or why a planned migration cannot be done here. Both agents need a
/// backend of the volumes' kind: the old primary keeps its volumes as the
/// standby copies of the reversed direction.
fn migration_kind(
    store: &Standby,
    resources: &[Resource],
    role: &str,
) -> Result<MigrationKind, String> {
    let all = |want: fn(&SourceUri) -> bool| {
        resources
            .iter()
            .all(|r| SourceUri::parse(&r.uri).is_ok_and(|u| want(&u)))
    };
    let files = all(|u| matches!(u, SourceUri::File(_)));
    let rbd = all(|u| matches!(u, SourceUri::Rbd(_)));
    match (store.kind(), files, rbd) {
        (StandbyKind::Files, true, _) => Ok(MigrationKind::Files),
        (StandbyKind::Rbd, _, true) => Ok(MigrationKind::Rbd),
        (StandbyKind::Files, _, true) => Err(format!(
            "planned migration of rbd: volumes needs the rbd standby backend on both agents; \
             the {role} uses the files backend"
        )),
        (StandbyKind::Rbd, true, _) => Err(format!(
            "planned migration of file: volumes needs the files standby backend on both agents; \
             the {role} uses the rbd backend"
        )),
        _ => Err(
            "planned migration needs every volume of the group to be of one kind \
                  (file: with the files standby backend, or rbd: with the rbd backend)"
                .into(),
        ),
    }
}

/// What the standby made of each image for a planned migration.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MigrationPlan {
    /// The final sync's group recovery point.
    pub engine_rp: u64,
    /// When the primary took it (ms since the Unix epoch).
    pub created_unix_ms: u64,
    /// One per resource.
    pub images: Vec<MigratedImage>,
    /// The standby had already completed the role swap.
    #[serde(default)]
    pub completed: bool,
}

/// One standby image turned into the new primary's volume.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MigratedImage {
    /// Standby image name (the resource's standby target).
    pub image: String,
    /// The new volume's source URI on the new primary.
    pub uri: String,
    /// Epoch both sides record as committed.
    pub epoch: u64,
    /// Size in bytes.
    pub size: u64,
    /// BLAKE3 of the new volume.
    pub blake3: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{GroupId, ResourceKind, ResourceState};

    fn resource(uri: &str) -> Resource {
        Resource {
            uri: uri.into(),
            kind: ResourceKind::Volume,
            size_bytes: 0,
            group_id: GroupId(1),
            standby_target: "g1-x".into(),
            state: ResourceState::Syncing,
            volume: None,
        }
    }

    #[test]
    fn migration_kind_needs_one_kind_matching_the_backend() {
        let dir = tempfile::tempdir().unwrap();
        let files: Standby = ferry_engine::standby::StandbyStore::open(
            dir.path(),
            ferry_engine::standby::StoreConfig::default(),
        )
        .unwrap()
        .into();
        let f = resource("file:/v/a.raw");
        let r = resource("rbd:rbd/a");
        assert_eq!(
            migration_kind(&files, std::slice::from_ref(&f), "primary"),
            Ok(MigrationKind::Files)
        );
        let err = migration_kind(&files, std::slice::from_ref(&r), "standby").unwrap_err();
        assert!(
            err.contains("rbd standby backend") && err.contains("the standby uses the files"),
            "{err}"
        );
        let err = migration_kind(&files, &[f, r], "primary").unwrap_err();
        assert!(err.contains("one kind"), "{err}");
    }
}
