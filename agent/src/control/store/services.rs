//! Services: the pairing of this agent with a peer site (endpoints and the
//! peer's fingerprint). A service is deleted only while no group uses it.

use ferry_protocol::AgentId;
use rusqlite::{params, OptionalExtension};

use super::rows::{get_service, is_unique_violation, query_all, service_row, Ctx, SERVICE_COLS};
use super::Store;
use crate::control::error::{StoreError, StoreResult};
use crate::control::model::{NewService, Service, ServiceId, Timestamp};
use crate::control::rules;

impl Store {
    /// Records a new service. Names are unique.
    pub fn create_service(&mut self, new: &NewService) -> StoreResult<Service> {
        let tx = self.write(|| format!("create service '{}'", new.name))?;
        let now = Timestamp::now();
        tx.execute(
            "INSERT INTO services (name, local_endpoint, remote_endpoint, remote_fingerprint, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![new.name, new.local_endpoint, new.remote_endpoint, new.remote_fingerprint.to_hex(), now],
        )
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::NameTaken { what: "service", name: new.name.clone() }
            } else {
                StoreError::Sqlite { context: format!("insert service '{}'", new.name), source: e }
            }
        })?;
        let id = ServiceId(tx.last_insert_rowid());
        let svc = get_service(&tx, id)?;
        tx.commit()
            .ctx(|| format!("commit service '{}'", new.name))?;
        Ok(svc)
    }

    /// The service with this id.
    pub fn service(&self, id: ServiceId) -> StoreResult<Service> {
        get_service(self.conn(), id)
    }

    /// The service with this name.
    pub fn service_by_name(&self, name: &str) -> StoreResult<Service> {
        self.conn()
            .query_row(
                &format!("SELECT {SERVICE_COLS} FROM services WHERE name = ?1"),
                [name],
                service_row,
            )
            .optional()
            .ctx(|| format!("read service '{name}'"))?
            .ok_or_else(|| StoreError::NotFound {
                what: "service",
                key: format!("'{name}'"),
            })
    }

    /// All services, by id.
    pub fn services(&self) -> StoreResult<Vec<Service>> {
        query_all(
            self.conn(),
            &format!("SELECT {SERVICE_COLS} FROM services ORDER BY id"),
            [],
            service_row,
            || "list services".into(),
        )
    }

    /// Re-configures a service's endpoints and peer fingerprint.
    pub fn update_service(
        &mut self,
        id: ServiceId,
        local_endpoint: &str,
        remote_endpoint: &str,
        remote_fingerprint: AgentId,
    ) -> StoreResult<Service> {
        let tx = self.write(|| format!("update service {id}"))?;
        let n = tx
            .execute(
                "UPDATE services SET local_endpoint = ?2, remote_endpoint = ?3, remote_fingerprint = ?4
                 WHERE id = ?1",
                params![id, local_endpoint, remote_endpoint, remote_fingerprint.to_hex()],
            )
            .ctx(|| format!("update service {id}"))?;
        if n == 0 {
            return Err(StoreError::NotFound {
                what: "service",
                key: id.to_string(),
            });
        }
        let svc = get_service(&tx, id)?;
        tx.commit().ctx(|| format!("commit service {id}"))?;
        Ok(svc)
    }

    /// Deletes a service; refused (with the rule's reason) while any group
    /// uses it.
    pub fn delete_service(&mut self, id: ServiceId) -> StoreResult<()> {
        let tx = self.write(|| format!("delete service {id}"))?;
        let svc = get_service(&tx, id)?;
        let users: Vec<String> = query_all(
            &tx,
            "SELECT name FROM protection_groups WHERE service_id = ?1 ORDER BY name",
            [id],
            |r| r.get(0),
            || format!("list groups of service '{}'", svc.name),
        )?;
        rules::check_delete_service(&svc.name, &users)?;
        tx.execute("DELETE FROM services WHERE id = ?1", [id])
            .ctx(|| format!("delete service '{}'", svc.name))?;
        tx.commit()
            .ctx(|| format!("commit deletion of service '{}'", svc.name))
    }
}
