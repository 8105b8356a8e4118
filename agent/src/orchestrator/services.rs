//! Services: pairing this agent with a peer agent (one service per site
//! pair). The standby side issues a one-time service key; the primary side
//! redeems it over the peer API (`/v1/peer/pair`, checked by
//! [`Orchestrator::accept_pairing`] on the issuer), and both record the
//! service and trust the other's fingerprint. Also: test connection,
//! endpoint updates, deletion. The look-ups (`service`, `services`,
//! `service_of_peer`) are in the core (`mod.rs`).

use std::time::Duration;

use ferry_protocol::AgentId;
use hyper::Method;
use rand::RngCore;
use serde_json::{json, Value};
use tracing::{info, warn};

use super::endpoints;
use super::{
    unreachable, CtlError, CtlResult, Orchestrator, PairRequest, ServiceKey, PEER_TIMEOUT,
};
use crate::control::{NewService, Service, StoreError, Timestamp};
use crate::sync_util::lock;

/// The endpoints of a list an operator or a key gave, or why not.
fn checked_endpoints(list: &str) -> CtlResult<Vec<String>> {
    endpoints::validate(list).map_err(|e| CtlError::BadRequest(e.to_string()))
}

fn hash_secret(secret: &str) -> String {
    blake3::hash(secret.as_bytes()).to_hex().to_string()
}

impl Orchestrator {
    fn advertised_endpoint(&self) -> CtlResult<String> {
        if self.quic_addr.ip().is_unspecified() {
            return Err(CtlError::BadRequest(format!(
                "this agent listens on {}; give the endpoint the peer should use (--endpoint HOST:PORT)",
                self.quic_addr
            )));
        }
        Ok(self.quic_addr.to_string())
    }

    /// How the peer site reaches this one by default: on a multi-agent
    /// site every live agent's announced peer endpoint (this agent's
    /// first), else this agent's listen address.
    fn site_endpoints(&self) -> CtlResult<String> {
        match self.site_peer_endpoints().filter(|l| !l.is_empty()) {
            Some(list) => Ok(endpoints::join(&list)),
            None => self.advertised_endpoint(),
        }
    }

    /// Issues a one-time service key (standby side).
    pub fn issue_service_key(
        &self,
        endpoint: Option<String>,
        ttl: Duration,
    ) -> CtlResult<ServiceKey> {
        let endpoint = match endpoint {
            Some(e) => endpoints::join(&checked_endpoints(&e)?),
            None => self.site_endpoints()?,
        };
        let mut secret = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut secret);
        let secret = hex::encode(secret);
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let expires_at = Timestamp(Timestamp::now().0.saturating_add(ttl_ms));
        self.db(|s| s.create_pairing_secret(&hash_secret(&secret), expires_at))?;
        Ok(ServiceKey {
            endpoint,
            fingerprint: self.fingerprint.to_hex(),
            secret,
            expires_at,
        })
    }

    /// Pairs with the agent that issued `key` (primary side).
    pub async fn create_service(
        &self,
        name: &str,
        key: &str,
        local_endpoint: Option<String>,
    ) -> CtlResult<Service> {
        let key = ServiceKey::decode(key).map_err(|e| CtlError::BadRequest(e.to_string()))?;
        if key.expires_at <= Timestamp::now() {
            return Err(CtlError::BadRequest("the service key has expired".into()));
        }
        let remote = AgentId::from_hex(&key.fingerprint)
            .ok_or_else(|| CtlError::BadRequest("the key's fingerprint is malformed".into()))?;
        if remote == self.fingerprint {
            return Err(CtlError::BadRequest(
                "the key was issued by this very agent; run `ferry service key` on the standby"
                    .into(),
            ));
        }
        let local_endpoint = match local_endpoint {
            Some(e) => e,
            None => self.site_endpoints()?,
        };
        let existing = self.db(|s| s.services())?;
        if let Some(s) = existing.iter().find(|s| s.name == name) {
            return Err(StoreError::NameTaken {
                what: "service",
                name: s.name.clone(),
            }
            .into());
        }
        if let Some(s) = existing.iter().find(|s| s.remote_fingerprint == remote) {
            return Err(CtlError::BadRequest(format!(
                "service '{}' already connects to agent {remote} (one service per site pair)",
                s.name
            )));
        }
        let standbys = checked_endpoints(&key.endpoint)?;
        let body = json!({
            "secret": key.secret,
            "name": name,
            "endpoint": local_endpoint,
            "your_endpoint": key.endpoint,
        });
        // Any agent of the standby site pairs the site (they share its
        // control state): the first that answers.
        for (i, endpoint) in standbys.iter().enumerate() {
            let paired = self
                .peer_raw(
                    endpoint,
                    remote,
                    Method::POST,
                    "/v1/peer/pair",
                    Some(&body),
                    PEER_TIMEOUT,
                )
                .await;
            if unreachable(&paired) && i + 1 < standbys.len() {
                continue;
            }
            paired?;
            break;
        }
        let svc = self.db(|s| {
            s.create_service(&NewService {
                name: name.to_owned(),
                local_endpoint,
                remote_endpoint: endpoints::join(&standbys),
                remote_fingerprint: remote,
            })
        })?;
        self.trust.insert(remote);
        info!(service = %svc.name, peer = %remote, "paired");
        Ok(svc)
    }

    /// Peer side of pairing: checks the one-time secret, records the
    /// service and trusts the caller.
    pub fn accept_pairing(&self, caller: AgentId, req: &PairRequest) -> CtlResult<Service> {
        let existing = self.db(|s| s.services())?;
        if existing.iter().any(|s| s.remote_fingerprint == caller) {
            return Err(CtlError::BadRequest(format!(
                "agent {caller} is already paired with this agent"
            )));
        }
        if let Err(error) =
            self.db(|s| s.consume_pairing_secret(&hash_secret(&req.secret), Timestamp::now()))
        {
            // The secret itself is never logged.
            warn!(peer = %caller, %error, "refused a pairing request");
            return Err(error);
        }
        let svc = self.db(|s| {
            s.create_service(&NewService {
                name: req.name.clone(),
                local_endpoint: req.your_endpoint.clone(),
                remote_endpoint: req.endpoint.clone(),
                remote_fingerprint: caller,
            })
        })?;
        self.trust.insert(caller);
        info!(service = %svc.name, peer = %caller, "paired at the peer's request");
        Ok(svc)
    }

    /// "Test connection": a round trip to the peer API.
    pub async fn verify_service(&self, key: &str) -> CtlResult<Value> {
        let svc = self.service(key)?;
        let started = std::time::Instant::now();
        let reply = self.peer(&svc, Method::GET, "/v1/peer/ping", None).await?;
        Ok(json!({
            "service": svc.name,
            "ok": true,
            "round_trip_ms": started.elapsed().as_secs_f64() * 1000.0,
            "peer": reply,
        }))
    }

    /// Re-configures a service's endpoints.
    pub fn update_service(
        &self,
        key: &str,
        local: Option<String>,
        remote: Option<String>,
    ) -> CtlResult<Service> {
        let svc = self.service(key)?;
        let local = local.unwrap_or(svc.local_endpoint);
        let remote = match remote {
            Some(list) => endpoints::join(&checked_endpoints(&list)?),
            None => svc.remote_endpoint,
        };
        self.db(|s| s.update_service(svc.id, &local, &remote, svc.remote_fingerprint))
    }

    /// Deletes a service (refused while a group uses it) and stops trusting
    /// its peer.
    pub fn delete_service(&self, key: &str) -> CtlResult<()> {
        let svc = self.service(key)?;
        self.db(|s| s.delete_service(svc.id))?;
        self.trust.remove(&svc.remote_fingerprint);
        Ok(())
    }

    /// The standby site's endpoints of `svc` in the order to try them
    /// (`endpoints.rs`).
    pub(super) fn standby_endpoints(&self, svc: &Service) -> Vec<String> {
        let list = endpoints::parse(&svc.remote_endpoint);
        lock(&self.endpoints).order(svc.id, &list)
    }

    /// The standby endpoint of `svc` to dial first (the stored text when
    /// it lists none, so the error names it).
    pub(super) fn standby_endpoint(&self, svc: &Service) -> String {
        self.standby_endpoints(svc)
            .into_iter()
            .next()
            .unwrap_or_else(|| svc.remote_endpoint.clone())
    }

    /// A standby site of several agents lists its live agents' endpoints
    /// in its peer API answers (`endpoints`): when that list differs from
    /// the service's, the service takes it, so an agent started or stopped
    /// on the standby site needs no step on this one. Only when the agent
    /// that answered (at `answered`) is in the list: addresses it announces
    /// that this site does not dial (a NAT, a proxy) leave the operator's
    /// list alone.
    pub(super) fn learn_standby_endpoints(&self, svc: &Service, answered: &str, reply: &Value) {
        let Some(listed) = reply.get("endpoints").and_then(Value::as_array) else {
            return;
        };
        let listed: Vec<&str> = listed.iter().filter_map(Value::as_str).collect();
        let Ok(listed) = endpoints::validate(&listed.join(",")) else {
            return;
        };
        let current = endpoints::parse(&svc.remote_endpoint);
        if !listed.iter().any(|e| e == answered) || endpoints::same_set(&current, &listed) {
            return;
        }
        // The service as stored now (another call may have updated it).
        let Ok(stored) = self.db(|s| s.service(svc.id)) else {
            return;
        };
        if endpoints::same_set(&endpoints::parse(&stored.remote_endpoint), &listed) {
            return;
        }
        let to = endpoints::join(&listed);
        match self.db(|s| {
            s.update_service(
                stored.id,
                &stored.local_endpoint,
                &to,
                stored.remote_fingerprint,
            )
        }) {
            Ok(_) => {
                info!(service = %svc.name, from = %stored.remote_endpoint, to = %to, "the standby site's agents changed; the service's standby endpoints follow")
            }
            Err(error) => {
                warn!(service = %svc.name, %error, "could not record the standby site's endpoints")
            }
        }
    }

    /// `endpoint` of `svc` answered: the next call starts from it.
    pub(super) fn standby_endpoint_worked(&self, svc: &Service, endpoint: &str) {
        lock(&self.endpoints).worked(svc.id, endpoint);
    }

    /// `endpoint` of `svc` could not be reached or its connection was
    /// lost: the next call starts from the next endpoint of the service.
    pub(super) fn standby_endpoint_failed(&self, svc: &Service, endpoint: &str) {
        let list = endpoints::parse(&svc.remote_endpoint);
        if list.len() < 2 {
            return;
        }
        let next = lock(&self.endpoints).failed(svc.id, endpoint, &list);
        if let Some(next) = next.filter(|n| n != endpoint) {
            info!(service = %svc.name, from = %endpoint, to = %next, "standby agent unreachable; moving to the next standby endpoint");
        }
    }
}
