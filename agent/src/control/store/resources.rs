//! Resources: the volumes of a group, added and removed all or none (a URI
//! belongs to at most one group, a group holds at most 20), and their
//! replication state.

use rusqlite::params;

use super::rows::{
    get_group, get_resource, is_unique_violation, owner_of, query_all, resource_row, to_i64, Ctx,
    RESOURCE_COLS,
};
use super::Store;
use crate::control::error::{StoreError, StoreResult};
use crate::control::model::{
    GroupId, NewResource, Resource, ResourceKind, ResourceState, MAX_RESOURCES_PER_GROUP,
};

impl Store {
    /// Adds resources to a group, all or none, in state `pending`. Refused
    /// if one is already in a group or the group would exceed 20.
    pub fn add_resources(
        &mut self,
        id: GroupId,
        new: &[NewResource],
    ) -> StoreResult<Vec<Resource>> {
        let tx = self.write(|| format!("add resources to group {id}"))?;
        let g = get_group(&tx, id)?;
        let have: i64 = tx
            .query_row(
                "SELECT COUNT(*) FROM resources WHERE group_id = ?1",
                [id],
                |r| r.get(0),
            )
            .ctx(|| format!("count resources of group '{}'", g.name))?;
        let have = usize::try_from(have).unwrap_or(usize::MAX);
        if have.saturating_add(new.len()) > MAX_RESOURCES_PER_GROUP {
            return Err(StoreError::TooManyResources {
                group: g.name,
                have,
                adding: new.len(),
                max: MAX_RESOURCES_PER_GROUP,
            });
        }
        for r in new {
            if let Some(owner) = owner_of(&tx, &r.uri)? {
                return Err(StoreError::ResourceInGroup {
                    uri: r.uri.clone(),
                    group: owner,
                });
            }
            let size = to_i64("resource size", r.size_bytes)?;
            let (kind, vm, boot) = match &r.kind {
                ResourceKind::Volume => ("volume", None, None),
                ResourceKind::VmVolume { vm, boot } => {
                    ("vm_volume", Some(vm.as_str()), Some(*boot))
                }
            };
            tx.execute(
                "INSERT INTO resources (uri, group_id, kind, vm, boot, size_bytes, standby_target, state)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![r.uri, id, kind, vm, boot, size, r.standby_target, ResourceState::Pending],
            )
            .map_err(|e| {
                if is_unique_violation(&e) {
                    // Listed twice in `new`.
                    StoreError::ResourceInGroup { uri: r.uri.clone(), group: g.name.clone() }
                } else {
                    StoreError::Sqlite { context: format!("insert resource {} into group '{}'", r.uri, g.name), source: e }
                }
            })?;
        }
        let mut added = Vec::with_capacity(new.len());
        for r in new {
            added.push(get_resource(&tx, &r.uri)?);
        }
        tx.commit()
            .ctx(|| format!("commit resources of group '{}'", g.name))?;
        Ok(added)
    }

    /// Removes resources from a group, all or none.
    pub fn remove_resources(&mut self, id: GroupId, uris: &[&str]) -> StoreResult<()> {
        let tx = self.write(|| format!("remove resources from group {id}"))?;
        let g = get_group(&tx, id)?;
        for uri in uris {
            let n = tx
                .execute(
                    "DELETE FROM resources WHERE uri = ?1 AND group_id = ?2",
                    params![uri, id],
                )
                .ctx(|| format!("remove resource {uri} from group '{}'", g.name))?;
            if n == 0 {
                return Err(StoreError::ResourceNotInGroup {
                    uri: (*uri).to_owned(),
                    group: g.name,
                });
            }
        }
        tx.commit()
            .ctx(|| format!("commit removal from group '{}'", g.name))
    }

    /// The resource with this URI.
    pub fn resource(&self, uri: &str) -> StoreResult<Resource> {
        get_resource(self.conn(), uri)
    }

    /// A group's resources, by URI.
    pub fn resources(&self, id: GroupId) -> StoreResult<Vec<Resource>> {
        query_all(
            self.conn(),
            &format!("SELECT {RESOURCE_COLS} FROM resources WHERE group_id = ?1 ORDER BY uri"),
            [id],
            resource_row,
            || format!("list resources of group {id}"),
        )
    }

    /// For each URI already in a group: `(uri, group name)` (the
    /// `already_grouped` fact of `OpRequest::AddResources`).
    pub fn resource_owners(&self, uris: &[&str]) -> StoreResult<Vec<(String, String)>> {
        let mut out = Vec::new();
        for uri in uris {
            if let Some(group) = owner_of(self.conn(), uri)? {
                out.push(((*uri).to_owned(), group));
            }
        }
        Ok(out)
    }

    /// Sets a resource's replication state.
    pub fn set_resource_state(&mut self, uri: &str, state: ResourceState) -> StoreResult<Resource> {
        let tx = self.write(|| format!("set state of resource {uri}"))?;
        let n = tx
            .execute(
                "UPDATE resources SET state = ?2 WHERE uri = ?1",
                params![uri, state],
            )
            .ctx(|| format!("set resource {uri} to {state}"))?;
        if n == 0 {
            return Err(StoreError::NotFound {
                what: "resource",
                key: uri.to_owned(),
            });
        }
        let r = get_resource(&tx, uri)?;
        tx.commit()
            .ctx(|| format!("commit state of resource {uri}"))?;
        Ok(r)
    }

    /// Records where a resource's volume is after a failover.
    pub fn set_resource_volume(&mut self, uri: &str, volume: &str) -> StoreResult<()> {
        let tx = self.write(|| format!("set volume of resource {uri}"))?;
        let n = tx
            .execute(
                "UPDATE resources SET volume = ?2 WHERE uri = ?1",
                params![uri, volume],
            )
            .ctx(|| format!("set volume of resource {uri}"))?;
        if n == 0 {
            return Err(StoreError::NotFound {
                what: "resource",
                key: uri.to_owned(),
            });
        }
        tx.commit()
            .ctx(|| format!("commit volume of resource {uri}"))
    }
}
