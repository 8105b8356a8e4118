//! Protection groups on the primary: create (and map the standby group on
//! the peer), add and remove resources, start and stop sync, delete. Each
//! operator call is journaled and, when it talks to the peer, runs in the
//! background through the operation runner (`run_op`, in the core). A stop
//! sync made while the standby was unreachable is delivered later
//! (`propagate_stops`, from the background tick). The standby side of
//! these calls is in `peer.rs`.

use std::sync::Arc;

use hyper::Method;
use serde_json::{json, Value};
use tracing::{info, warn};

use super::{remote_id, CtlError, CtlResult, Orchestrator};
use crate::control::{
    Group, GroupState, NewGroup, NewResource, OpRequest, OpResult, Operation, ResourceKind,
    ResourceState, Role, RpoThresholds, StoreError,
};
use crate::uri::SourceUri;

impl Orchestrator {
    /// A group with its resources, recovery points, progress and recent
    /// operations.
    pub fn group_detail(&self, key: &str) -> CtlResult<Value> {
        let g = self.group(key)?;
        let resources = self.db(|s| s.resources(g.id))?;
        let rps = self.db(|s| s.recovery_points(g.id))?;
        let mut ops = self.db(|s| s.operations_of_group(g.id))?;
        let recent = ops.split_off(ops.len().saturating_sub(10));
        Ok(json!({
            "group": g,
            "resources": resources,
            "recovery_points": rps,
            "progress": self.progress_of(g.id),
            "driven_by": self.driven_by(&g),
            "drill": self.db(|s| s.drill(g.id))?,
            "operations": recent,
        }))
    }

    /// Changes a group's RPO thresholds (either role, any state: a local
    /// monitoring setting, not an operation): `None` keeps a value, `Some(0)`
    /// removes it.
    pub fn update_group(
        &self,
        key: &str,
        rpo_warn_secs: Option<u64>,
        rpo_crit_secs: Option<u64>,
    ) -> CtlResult<Group> {
        let g = self.group(key)?;
        let rpo = g
            .rpo
            .updated(rpo_warn_secs, rpo_crit_secs)
            .map_err(|e| CtlError::BadRequest(e.to_string()))?;
        let g = self.db(|s| s.set_rpo_thresholds(g.id, rpo))?;
        info!(group = %g.name, warn_secs = ?rpo.warn_secs, crit_secs = ?rpo.crit_secs, "RPO thresholds set");
        Ok(g)
    }

    /// Creates a primary group and (in the background) its mapped standby
    /// group on the service's peer.
    pub fn create_group(
        self: &Arc<Self>,
        name: &str,
        service: Option<&str>,
        remote_project: &str,
        rpo: RpoThresholds,
    ) -> CtlResult<Operation> {
        let svc = match service {
            Some(key) => self.service(key)?,
            None => {
                let mut all = self.services()?;
                if all.len() != 1 {
                    return Err(CtlError::BadRequest(format!(
                        "{} services exist; name one (--service)",
                        all.len()
                    )));
                }
                all.remove(0)
            }
        };
        let (group, op) = self.db(|s| {
            s.create_group(
                &NewGroup {
                    name: name.to_owned(),
                    role: Role::Primary,
                    service_id: svc.id,
                    remote_group_id: None,
                    remote_project: remote_project.to_owned(),
                    rpo,
                },
                &json!({ "service": svc.name }),
            )
        })?;
        let me = self.clone();
        self.run_op(op.id, async move {
            me.map_remote_group(&group).await?;
            Ok(())
        });
        Ok(op)
    }

    pub(super) async fn map_remote_group(&self, g: &Group) -> CtlResult<()> {
        let svc = self.db(|s| s.service(g.service_id))?;
        let body = json!({
            "name": g.name,
            "primary_group_id": g.id,
            "remote_project": g.remote_project,
        });
        let reply = self
            .peer(&svc, Method::POST, "/v1/peer/groups", Some(&body))
            .await?;
        let remote = reply
            .get("group_id")
            .and_then(Value::as_i64)
            .ok_or_else(|| CtlError::Peer {
                addr: svc.remote_endpoint.clone(),
                reason: "the peer did not say which group it created".into(),
                source: None,
            })?;
        self.db(|s| s.set_remote_group_id(g.id, Some(remote)))?;
        Ok(())
    }

    /// Adds resources (a VM: all its volumes, the first one is the boot
    /// volume) to a primary group; the standby records them in the
    /// background.
    pub fn add_resources(
        self: &Arc<Self>,
        key: &str,
        uris: &[String],
        vm: Option<&str>,
    ) -> CtlResult<Operation> {
        let g = self.group(key)?;
        self.require_driver(&g)?;
        let existing = self.db(|s| s.resources(g.id))?;
        let mut taken: Vec<String> = existing.iter().map(|r| r.standby_target.clone()).collect();
        let mut new = Vec::with_capacity(uris.len());
        for (i, uri) in uris.iter().enumerate() {
            let source = SourceUri::parse(uri).map_err(|e| CtlError::BadRequest(e.to_string()))?;
            let canonical = source.to_string();
            let size = source_size(&source)?;
            let target = standby_name(&g.name, &source, &mut taken);
            new.push(NewResource {
                uri: canonical,
                kind: match vm {
                    Some(vm) => ResourceKind::VmVolume {
                        vm: vm.to_owned(),
                        boot: i == 0,
                    },
                    None => ResourceKind::Volume,
                },
                size_bytes: size,
                standby_target: target,
            });
        }
        let req = OpRequest::AddResources {
            uris: new.iter().map(|r| r.uri.clone()).collect(),
            already_grouped: Vec::new(),
        };
        let op = self.db(|s| s.begin_checked(g.id, &req, &json!({ "resources": new })))?;
        if let Err(e) = self.db(|s| s.add_resources(g.id, &new)) {
            let _ = self.db(|s| s.finish_operation(op.id, OpResult::Failed(e.to_string())));
            return Err(e);
        }
        let me = self.clone();
        let gid = g.id;
        self.run_op(op.id, async move {
            let g = me.db(|s| s.group(gid))?;
            let svc = me.db(|s| s.service(g.service_id))?;
            let remote = remote_id(&g)?;
            let body = json!({ "resources": new });
            let result = me
                .peer(
                    &svc,
                    Method::POST,
                    &format!("/v1/peer/groups/{remote}/resources"),
                    Some(&body),
                )
                .await;
            let uris: Vec<&str> = new.iter().map(|r| r.uri.as_str()).collect();
            match result {
                Ok(_) => {
                    for uri in uris {
                        me.db(|s| s.set_resource_state(uri, ResourceState::Ready))?;
                    }
                    Ok(())
                }
                Err(e) => {
                    me.db(|s| s.remove_resources(gid, &uris))?;
                    Err(e)
                }
            }
        });
        Ok(op)
    }

    /// Removes resources from a primary group (and the standby's records).
    pub fn remove_resources(self: &Arc<Self>, key: &str, uris: &[String]) -> CtlResult<Operation> {
        let g = self.group(key)?;
        self.require_driver(&g)?;
        let have = self.db(|s| s.resources(g.id))?;
        let mut canonical = Vec::new();
        for uri in uris {
            let c = SourceUri::parse(uri)
                .map(|s| s.to_string())
                .unwrap_or_else(|_| uri.clone());
            if !have.iter().any(|r| r.uri == c) {
                return Err(StoreError::ResourceNotInGroup {
                    uri: c,
                    group: g.name.clone(),
                }
                .into());
            }
            canonical.push(c);
        }
        let req = OpRequest::RemoveResources {
            count: canonical.len(),
        };
        let op = self.db(|s| s.begin_checked(g.id, &req, &json!({ "uris": canonical })))?;
        let me = self.clone();
        self.run_op(op.id, async move {
            if let Some(remote) = g.remote_group_id {
                let svc = me.db(|s| s.service(g.service_id))?;
                me.peer(
                    &svc,
                    Method::POST,
                    &format!("/v1/peer/groups/{remote}/resources/remove"),
                    Some(&json!({ "uris": canonical })),
                )
                .await?;
            }
            let refs: Vec<&str> = canonical.iter().map(String::as_str).collect();
            me.db(|s| s.remove_resources(g.id, &refs))?;
            Ok(())
        });
        Ok(op)
    }

    /// Starts replicating a primary group.
    pub fn start_sync(self: &Arc<Self>, key: &str) -> CtlResult<Operation> {
        let g = self.group(key)?;
        self.require_driver(&g)?;
        let missing: Vec<String> = self
            .db(|s| s.resources(g.id))?
            .into_iter()
            .filter(|r| match SourceUri::parse(&r.uri) {
                Ok(SourceUri::File(p)) => !p.exists(),
                Ok(SourceUri::Diff(dir)) => !dir.is_dir(),
                Ok(SourceUri::Rbd(_)) => false,
                Err(_) => true,
            })
            .map(|r| r.uri)
            .collect();
        let op =
            self.db(|s| s.begin_checked(g.id, &OpRequest::StartSync { missing }, &json!({})))?;
        let me = self.clone();
        self.run_op(op.id, async move { me.start_sync_steps(&g).await });
        Ok(op)
    }

    /// Tells the standby group that replication starts or stops.
    async fn set_remote_syncing(self: &Arc<Self>, g: &Group, syncing: bool) -> CtlResult<()> {
        let svc = self.db(|s| s.service(g.service_id))?;
        let remote = remote_id(g)?;
        self.peer(
            &svc,
            Method::POST,
            &format!("/v1/peer/groups/{remote}/sync"),
            Some(&json!({ "syncing": syncing })),
        )
        .await?;
        Ok(())
    }

    pub(super) async fn start_sync_steps(self: &Arc<Self>, g: &Group) -> CtlResult<()> {
        self.set_remote_syncing(g, true).await?;
        self.db(|s| s.set_pending_remote_stop(g.id, false))?;
        for r in self.db(|s| s.resources(g.id))? {
            if r.state != ResourceState::Syncing {
                self.db(|s| s.set_resource_state(&r.uri, ResourceState::InitialSync))?;
            }
        }
        self.start_loop(g.id);
        Ok(())
    }

    /// Stops replicating a primary group; the standby drops its recovery
    /// points and returns to `mapped`.
    pub fn stop_sync(self: &Arc<Self>, key: &str) -> CtlResult<Operation> {
        let g = self.group(key)?;
        self.require_driver(&g)?;
        let op = self.db(|s| s.begin_checked(g.id, &OpRequest::StopSync, &json!({})))?;
        let me = self.clone();
        self.run_op(op.id, async move { me.stop_sync_steps(&g).await });
        Ok(op)
    }

    pub(super) async fn stop_sync_steps(self: &Arc<Self>, g: &Group) -> CtlResult<()> {
        self.stop_loop(g.id).await;
        match self.set_remote_syncing(g, false).await {
            Ok(()) => {}
            // Link down: the stop stands here; the standby hears of it when
            // the link is back (dr-semantics "Link loss").
            Err(CtlError::Peer {
                source: Some(_), ..
            }) => {
                warn!(group = %g.name, "standby unreachable: it hears of the stop sync when the link is back");
                self.db(|s| s.set_pending_remote_stop(g.id, true))?;
            }
            Err(e) => return Err(e),
        }
        for r in self.db(|s| s.resources(g.id))? {
            self.db(|s| s.set_resource_state(&r.uri, ResourceState::Ready))?;
        }
        for rp in self.db(|s| s.recovery_points(g.id))? {
            self.db(|s| s.delete_recovery_point(rp.id))?;
        }
        Ok(())
    }

    /// Tells standbys about stop syncs made while they were unreachable.
    pub(super) async fn propagate_stops(self: &Arc<Self>) -> CtlResult<()> {
        for gid in self.db(|s| s.groups_pending_remote_stop())? {
            let g = self.db(|s| s.group(gid))?;
            if !self.drives(&g) {
                continue;
            }
            if g.role != Role::Primary || g.state != GroupState::Mapped {
                // Started again (or changed role) since: nothing to deliver.
                self.db(|s| s.set_pending_remote_stop(gid, false))?;
                continue;
            }
            match self.set_remote_syncing(&g, false).await {
                Ok(()) => {
                    self.db(|s| s.set_pending_remote_stop(gid, false))?;
                    info!(group = %g.name, "the standby heard of the stop sync made while it was unreachable");
                }
                Err(e) => tracing::debug!(group = %g.name, error = %e, "stop sync still deferred"),
            }
        }
        Ok(())
    }

    /// Deletes a group (primary: its standby group too).
    pub fn delete_group(self: &Arc<Self>, key: &str) -> CtlResult<Operation> {
        let g = self.group(key)?;
        self.require_driver(&g)?;
        let op = self.db(|s| {
            s.begin_checked(
                g.id,
                &OpRequest::DeleteGroup {
                    other_deleting: None,
                },
                &json!({}),
            )
        })?;
        let me = self.clone();
        self.run_op(op.id, async move {
            if g.role == Role::Primary {
                me.delete_primary_group(&g).await?;
            } else {
                // A standby group (failed over, or never mapped) takes its
                // replicated copies with it. Failover and restore volumes
                // stay: separate files and images, or (RBD) a copy that
                // became the volume or clones depend on, which the store
                // releases instead of removing.
                let resources = me.db(|s| s.resources(g.id))?;
                me.remove_standby_images(&resources).await?;
            }
            Ok(())
        });
        Ok(op)
    }

    /// Deletes a primary group's standby group, then ends the replication
    /// of its RBD sources here: their ferry snapshots, their membership of
    /// ferry's RBD group (and the group once empty) and their cycle state
    /// go. Without the second step the images stayed in the `ferry-<hash>`
    /// RBD group with its snapshots after the protection group was gone.
    pub(super) async fn delete_primary_group(&self, g: &Group) -> CtlResult<()> {
        let svc = self.db(|s| s.service(g.service_id))?;
        if let Some(remote) = g.remote_group_id {
            self.peer(
                &svc,
                Method::DELETE,
                &format!("/v1/peer/groups/{remote}"),
                None,
            )
            .await?;
        }
        let resources = self.db(|s| s.resources(g.id))?;
        self.forget_rbd_sources(svc.remote_fingerprint, &resources)
            .await;
        Ok(())
    }
}

fn source_size(source: &SourceUri) -> CtlResult<u64> {
    match source {
        SourceUri::File(path) => {
            use std::io::Seek;
            let mut f = std::fs::File::open(path).map_err(|e| {
                CtlError::BadRequest(format!("cannot open {}: {e}", path.display()))
            })?;
            // Seeking to the end sizes block devices too (their metadata
            // length is 0).
            f.seek(std::io::SeekFrom::End(0))
                .map_err(|e| CtlError::BadRequest(format!("cannot size {}: {e}", path.display())))
        }
        // Sized by the source at the first sync.
        SourceUri::Rbd(_) | SourceUri::Diff(_) => Ok(0),
    }
}

/// A valid, unique standby image name: `GROUP-STEM`, sanitised.
fn standby_name(group: &str, source: &SourceUri, taken: &mut Vec<String>) -> String {
    let stem = match source {
        SourceUri::File(p) => p
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "image".into()),
        SourceUri::Rbd(spec) => format!("{}", spec).replace('/', "-"),
        SourceUri::Diff(dir) => dir
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "diffs".into()),
    };
    let clean: String = format!("{group}-{stem}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    let mut name = clean.clone();
    let mut n = 2;
    while taken.contains(&name) {
        name = format!("{clean}-{n}");
        n += 1;
    }
    taken.push(name.clone());
    name
}

#[cfg(test)]
mod tests {
    use ferry_protocol::ImageName;

    use super::*;

    #[test]
    fn standby_names_are_valid_and_unique() {
        let mut taken = Vec::new();
        let a = standby_name("g 1", &SourceUri::File("/x/vm1.raw".into()), &mut taken);
        let b = standby_name("g 1", &SourceUri::File("/y/vm1.raw".into()), &mut taken);
        assert_eq!(a, "g_1-vm1");
        assert_eq!(b, "g_1-vm1-2");
        assert!(ImageName::new(a).is_ok());
    }
}
