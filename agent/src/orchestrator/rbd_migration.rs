//! Planned migration of a group of `rbd:` volumes with the RBD standby
//! backend on both agents (the files flavour, the choice of flavour and the
//! plan are in `migration.rs`).
//!
//! - Standby (the new primary), `Prepare`: each standby copy's snapshot of
//!   the final sync's recovery point is copied into a new image
//!   `TARGET-m<MS>` of the standby pool (`MS`: when that point was taken, so
//!   a later migration back and forth never reuses a name); a snapshot of
//!   it is recorded as the base of its RBD source towards the old primary
//!   at the point's epoch ([`RbdSource::seed`]), so replicating back sends
//!   only what is written after the swap. The names are written to
//!   `DIR/volumes/GROUP/rbd-volumes.json` *before* the images are created:
//!   a repeated `Prepare` (retry after a failure or a kill) and `Abort`
//!   remove exactly the images an earlier attempt made, and an image of
//!   that name that ferry did not make is never touched (refused).
//! - Primary (the old primary): every source's head must hash (BLAKE3 of
//!   the whole image) like the new volume; then the source's committed
//!   ferry snapshot — the final sync, same epoch — is copied into this
//!   agent's RBD standby pool as the standby copy at that recovery point
//!   and epoch (`Standby::adopt` of an [`AdoptSource::Rbd`]), the standby
//!   commits the swap, and the old source's ferry snapshots and state go.
//!
//! Every step is idempotent; an adopted copy at the same point is kept.

use std::path::{Path, PathBuf};

use ferry_engine::rbd::source::RbdSource;
use ferry_engine::rbd::{image_hash, ClusterSpec, RbdSpec};
use ferry_engine::standby::StoreError as EngineStoreError;
use ferry_engine::standby_backend::AdoptSource;
use ferry_protocol::{AgentId, Epoch, ImageName, RecoveryPointId};
use tracing::{info, warn};

use super::migration::{MigratedImage, MigrationPlan};
use super::{internal, CtlError, CtlResult, Orchestrator};
use crate::config::{config_path, AgentConfig};
use crate::control::{Group, Resource};
use crate::durable::write_durably;
use crate::replicate::{self, source_state_dir};
use crate::uri::SourceUri;

/// The RBD images a migration's `Prepare` made on the standby, by name.
const VOLUMES_FILE: &str = "rbd-volumes.json";

fn rbd_spec(r: &Resource) -> CtlResult<RbdSpec> {
    match SourceUri::parse(&r.uri) {
        Ok(SourceUri::Rbd(spec)) => Ok(spec),
        _ => Err(CtlError::BadRequest(format!(
            "{} is not an rbd: volume",
            r.uri
        ))),
    }
}

fn image_name(r: &Resource) -> CtlResult<ImageName> {
    ImageName::new(r.standby_target.clone()).map_err(|e| CtlError::BadRequest(e.to_string()))
}

impl Orchestrator {
    /// The Ceph cluster of this agent's `rbd:` volumes and RBD standby.
    pub(super) fn ceph_cluster(&self) -> CtlResult<ClusterSpec> {
        AgentConfig::load(config_path(&self.dir, None).as_deref())
            .map(|c| c.ceph)
            .map_err(|e| internal("loading the agent configuration")(e.into()))
    }

    fn rbd_volumes_path(&self, g: &Group) -> PathBuf {
        self.dir.join("volumes").join(&g.name).join(VOLUMES_FILE)
    }

    /// Names of the images an earlier `Prepare` of this migration made.
    fn load_rbd_volumes(&self, g: &Group) -> CtlResult<Vec<String>> {
        let path = self.rbd_volumes_path(g);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| internal(format!("parsing {}", path.display()))(e.into())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(internal(format!("reading {}", path.display()))(e.into())),
        }
    }

    fn save_rbd_volumes(&self, g: &Group, names: &[String]) -> CtlResult<()> {
        let path = self.rbd_volumes_path(g);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| internal(format!("creating {}", parent.display()))(e.into()))?;
        }
        let bytes = serde_json::to_vec(names)
            .map_err(|e| internal("encoding the migration's volume list")(e.into()))?;
        write_durably(&path.with_extension("tmp"), &path, &bytes)
            .map_err(|e| internal(format!("writing {}", path.display()))(e.into()))
    }

    /// A new migration starts (the standby group leaves `syncing`): images
    /// listed by an earlier, finished migration are not this one's.
    pub(super) fn reset_rbd_volumes(&self, g: &Group) -> CtlResult<()> {
        match std::fs::remove_file(self.rbd_volumes_path(g)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(internal("forgetting an earlier migration's volumes")(
                e.into(),
            )),
        }
    }

    /// Removes the images earlier attempts of this migration made (abort,
    /// or before a new attempt makes them again).
    pub(super) async fn remove_rbd_volumes(&self, g: &Group) -> CtlResult<()> {
        for name in self.load_rbd_volumes(g)? {
            let n = name.clone();
            self.on_store(format!("removing migration volume {name}"), move |st| {
                st.remove_volume(&n)
            })
            .await?;
        }
        Ok(())
    }

    /// Standby side of `Prepare`: a new RBD image per resource holding the
    /// standby copy at `engine_rp`, seeded as the base for replicating back
    /// to `primary`, hashed for the primary to check.
    pub(super) async fn materialise_rbd_for_migration(
        &self,
        g: &Group,
        primary: AgentId,
        engine_rp: u64,
    ) -> CtlResult<MigrationPlan> {
        let cluster = self.ceph_cluster()?;
        let resources = self.db(|s| s.resources(g.id))?;
        let rp = RecoveryPointId(engine_rp);
        // Which point, and the new names, first: nothing is made yet.
        let mut todo = Vec::with_capacity(resources.len());
        for r in &resources {
            let image = image_name(r)?;
            let img = image.clone();
            let info = self
                .on_store(format!("recovery points of {image}"), move |st| {
                    st.recovery_points(&img)?
                        .into_iter()
                        .find(|p| p.id == rp)
                        .ok_or(EngineStoreError::UnknownRecoveryPoint {
                            image: img.clone(),
                            recovery_point: rp,
                        })
                })
                .await?;
            let dest = format!("{image}-m{}", info.created_unix_ms);
            todo.push((image, info, dest));
        }
        // Earlier attempts' images go; this attempt's names are recorded
        // before anything is created.
        self.remove_rbd_volumes(g).await?;
        let names: Vec<String> = todo.iter().map(|(_, _, d)| d.clone()).collect();
        for name in &names {
            let n = name.clone();
            let exists = self
                .on_store(format!("looking up {name}"), move |st| st.volume_exists(&n))
                .await?;
            if exists {
                return Err(CtlError::BadRequest(format!(
                    "RBD image {name} already exists on the standby cluster and ferry did not \
                     make it for this migration: rename or remove it and migrate again"
                )));
            }
        }
        self.save_rbd_volumes(g, &names)?;
        let mut plan = MigrationPlan {
            engine_rp,
            ..MigrationPlan::default()
        };
        for (image, info, dest) in todo {
            let state_dir = source_state_dir(&self.dir, primary, &image);
            let tag = replicate::rbd_tag(primary, &image);
            let (img, d, c) = (image.clone(), dest.clone(), cluster.clone());
            let epoch = info.epoch;
            let what = format!("writing {image} at engine recovery point {engine_rp} to {dest}");
            let (hash, pool) = self
                .on_store(what, move |st| {
                    let pool = st.rbd_pool()?.to_owned();
                    st.restore_into(&img, rp, &d)?;
                    let spec = RbdSpec {
                        pool,
                        image: d.clone(),
                        snap: None,
                    };
                    let seeded = |e: String| EngineStoreError::InvalidRequest {
                        reason: format!("seeding the replication base of {spec}: {e}"),
                    };
                    RbdSource::seed(&c, &spec, &state_dir, &tag, epoch)
                        .map_err(|e| seeded(e.to_string()))?;
                    let (hash, _) = image_hash(&c, &spec).map_err(|e| seeded(e.to_string()))?;
                    Ok((hash, spec.pool))
                })
                .await?;
            plan.created_unix_ms = info.created_unix_ms;
            plan.images.push(MigratedImage {
                image: image.to_string(),
                uri: format!("rbd:{pool}/{dest}"),
                epoch: info.epoch.get(),
                size: info.size,
                blake3: hash,
            });
        }
        Ok(plan)
    }

    /// Primary side after `Prepare`: each source must hash like its new
    /// volume (`Err` names the first that does not, and whether the
    /// standby should be told to abort), then the sources become this
    /// agent's standby copies at the plan's point.
    pub(super) async fn verify_and_adopt_rbd(
        &self,
        g: &Group,
        peer: AgentId,
        resources: &[Resource],
        plan: &MigrationPlan,
    ) -> Result<Vec<(String, String)>, (CtlError, bool)> {
        let cluster = self.ceph_cluster().map_err(|e| (e, false))?;
        let mut checked = Vec::with_capacity(resources.len());
        for r in resources {
            let spec = rbd_spec(r).map_err(|e| (e, false))?;
            let Some(image) = plan.images.iter().find(|i| i.image == r.standby_target) else {
                return Err((
                    CtlError::BadRequest(format!(
                        "the standby's migration plan lacks {}",
                        r.standby_target
                    )),
                    false,
                ));
            };
            if !image.uri.starts_with("rbd:") {
                return Err((
                    CtlError::BadRequest(format!(
                        "the standby made {} for {}, not an RBD image (is its standby backend rbd?)",
                        image.uri, r.uri
                    )),
                    true,
                ));
            }
            let (c, s) = (cluster.clone(), spec.clone());
            let hash = tokio::task::spawn_blocking(move || image_hash(&c, &s))
                .await
                .map_err(|e| (internal("the hashing task")(e.into()), false))?
                .map_err(|e| (internal(format!("hashing {spec}"))(e.into()), false))?
                .0;
            if hash != image.blake3 {
                return Err((
                    CtlError::BadRequest(format!(
                        "{} changed after the final sync (BLAKE3 {hash} here, {} on the standby): \
                         quiesce the volumes and migrate again",
                        r.uri, image.blake3
                    )),
                    true,
                ));
            }
            checked.push((r.clone(), spec, image.clone()));
        }
        for (r, spec, image) in &checked {
            self.adopt_rbd_source(g, peer, r, spec, image, plan)
                .await
                .map_err(|e| (e, false))?;
        }
        Ok(checked
            .into_iter()
            .map(|(r, _, image)| (r.uri, image.uri))
            .collect())
    }

    /// Installs source `spec` of resource `r`, as replicated at the plan's
    /// point, as this agent's standby copy (kept if already installed).
    async fn adopt_rbd_source(
        &self,
        g: &Group,
        peer: AgentId,
        r: &Resource,
        spec: &RbdSpec,
        image: &MigratedImage,
        plan: &MigrationPlan,
    ) -> CtlResult<()> {
        let cluster = self.ceph_cluster()?;
        let name = image_name(r)?;
        let (epoch, rp) = (Epoch(image.epoch), RecoveryPointId(plan.engine_rp));
        let state_dir = source_state_dir(&self.dir, peer, &name);
        let committed = RbdSource::committed_snapshot(spec, &state_dir)
            .map_err(|e| internal(format!("reading the replication state of {spec}"))(e.into()))?;
        let (n, s, created) = (name.clone(), spec.clone(), plan.created_unix_ms);
        let group = g.name.clone();
        self.on_store(
            format!("installing {spec} as standby copy {name}"),
            move |st| {
                match st.image_state(&n)? {
                    Some(have)
                        if have.pending.is_none()
                            && have.recovery_point == rp
                            && have.committed_epoch == epoch =>
                    {
                        return Ok(()); // installed by an earlier attempt
                    }
                    // An earlier attempt's copy at another point.
                    Some(_) => st.remove_image(&n)?,
                    None => {}
                }
                let snap = match &committed {
                    Some((e, snap)) if *e == epoch => snap.clone(),
                    other => {
                        return Err(EngineStoreError::InvalidRequest {
                            reason: format!(
                                "group '{group}': the last replicated snapshot of {s} is of epoch \
                                 {:?}, not the migration's epoch {epoch}; migrate again",
                                other.as_ref().map(|(e, _)| e.get())
                            ),
                        })
                    }
                };
                let source = RbdSpec {
                    snap: Some(snap),
                    ..s.clone()
                };
                let source = AdoptSource::Rbd {
                    cluster: &cluster,
                    spec: &source,
                };
                st.adopt(&n, source, epoch, rp, created)
            },
        )
        .await
    }

    /// The RBD sources among `resources` stop being replicated from here
    /// (after a migration's swap, or with their deleted group): their ferry
    /// snapshots, ferry RBD group membership and state go (best effort: a
    /// failure leaves a snapshot behind and says so). No RBD source, nothing
    /// to do (and no Ceph connection needed).
    pub(super) async fn forget_rbd_sources(&self, peer: AgentId, resources: &[Resource]) {
        if !resources.iter().any(|r| rbd_spec(r).is_ok()) {
            return;
        }
        let cluster = match self.ceph_cluster() {
            Ok(c) => c,
            Err(error) => {
                warn!(%error, "cannot remove the old sources' ferry snapshots");
                return;
            }
        };
        for r in resources {
            let (Ok(spec), Ok(name)) = (rbd_spec(r), image_name(r)) else {
                continue;
            };
            let state_dir: PathBuf = source_state_dir(&self.dir, peer, &name);
            let c = cluster.clone();
            let s = spec.clone();
            let d: &Path = &state_dir;
            let result = tokio::task::block_in_place(|| RbdSource::forget(&c, &s, d));
            match result {
                Ok(()) => {
                    info!(image = %spec, "ended the replication of the source: its ferry snapshots are removed")
                }
                Err(error) => {
                    warn!(image = %spec, %error, "could not remove the ferry snapshots of a source no longer replicated")
                }
            }
        }
    }
}
