//! The control shim's orchestrator: runs inside `ferry-agent run` and turns
//! API requests into journaled operations on the control store
//! (`control::Store::begin_checked` → act → `finish_operation`), talks to the
//! peer agent over the mutual-TLS peer API, runs the replication loop of
//! every syncing primary group, and finishes or rolls back what a killed
//! agent left in flight.
//!
//! Decisions (also in `agent/openapi.yaml`):
//! - Long operations (anything that talks to the peer or replicates) return
//!   their journal entry at once and run in a background task; the operator
//!   waits on `GET /v1/operations/{id}`. Purely local ones finish before the
//!   answer.
//! - Replication of a syncing group is continuous: one cycle of all its
//!   resources through the agent's [`Replicator`] (one group recovery point
//!   on the standby), a short pause, again. A cycle whose RBD sources hold no
//!   write since the committed point, and whose standby confirms it holds
//!   that point, commits nothing (an idle check: no snapshot, no transfer);
//!   after a cycle that sent changes the next starts almost at once. A
//!   manual recovery point is the next cycle that *starts* after the
//!   request (never skipped), so it holds every write acknowledged before it.
//! - A standby group mirrors its primary: the peer API creates, maps, fills,
//!   starts/stops and deletes it on the primary's request, journaled on the
//!   standby too. The allowed-state table is enforced on the primary (the
//!   side the operator acts on).
//! - Restart: unfinished `start_sync`, `stop_sync`, `delete_group` and
//!   `create_group` operations are finished by repeating their (idempotent)
//!   peer step; the others are rolled back / failed with the reason
//!   "interrupted by an agent restart". Groups in `syncing` resume replicating.
//!   An interrupted failover leaves the group `failover_failed`, from which
//!   it may be retried.
//! - After a failover the new primary answers the old primary's stop sync
//!   and group delete as done, changing nothing: the old primary can clean
//!   up its own group and never touches the new primary's.

mod hold;
mod rbd_migration;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ferry_engine::identity::Identity;
use ferry_engine::qos::RateLimiter;
use ferry_engine::session::receiver::ReceiverContext;
use ferry_engine::session::sender::{SyncError, SyncProgress};
use ferry_engine::transport::TrustStore;
use ferry_protocol::{AgentId, ImageName};
use hyper::Method;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::api::http::{self, Target};
use crate::api::tls;
use crate::config::AgentConfig;
use crate::control::{
    Group, GroupId, GroupState, NewGroup, NewRecoveryPoint, NewResource, NewService, OpKind,
    OpRequest, OpResult, OpState, Operation, OperationId, Outcome, Policy, RecoveryPoint, Resource,
    ResourceKind, ResourceState, Retention, Role, RpKind, RpState, Service, Store, StoreError,
    Timestamp, Transition,
};
use crate::metrics::{ErrorKind, GroupLive, ImageLive, LiveSnapshot, LiveSource, Metrics};
use crate::replicate::{self, Cycle, CycleOutcome, ReplicateError, Replicator};
use crate::schedule::PolicySchedule;
use crate::uri::{SourceUri, TargetUri};

/// Pause between two replication cycles of a syncing group when the last
/// one found nothing to send (an idle group: a cheap change check per pause).
pub const SYNC_PAUSE: Duration = Duration::from_millis(500);
/// Pause after a cycle that sent changes: the next one starts almost at
/// once, so a busy group's recovery points follow each other closely.
const BUSY_PAUSE: Duration = Duration::from_millis(50);
/// Pause after a failed cycle (link down…) before the next attempt.
const RETRY_PAUSE: Duration = Duration::from_secs(2);
/// Failed cycles in a row after which a recovery-point request fails.
const CYCLE_ATTEMPTS: u32 = 3;
/// Timeout of one peer API call.
const PEER_TIMEOUT: Duration = Duration::from_secs(15);
/// Validity of a service key unless asked otherwise.
pub const DEFAULT_KEY_TTL: Duration = Duration::from_secs(3600);
/// How long a store operation waits for an image a closing writer holds.
const STORE_BUSY_WAIT: Duration = Duration::from_secs(10);
/// How often the policy scheduler and deferred deletions run.
const TICK: Duration = Duration::from_secs(1);

/// Why a control request failed.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The store refused or failed (a `Refused` is a rule of the
    /// allowed-state table; nothing was changed).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The peer agent could not be reached or refused.
    #[error("peer agent {addr}: {reason}")]
    Peer {
        /// The peer's endpoint.
        addr: String,
        /// What happened.
        reason: String,
        /// The transport error, if any.
        #[source]
        source: Option<http::HttpError>,
    },
    /// The peer is not authorised for this call.
    #[error("peer {fingerprint} is not authorised: {reason}")]
    Forbidden {
        /// The caller's fingerprint.
        fingerprint: AgentId,
        /// Why.
        reason: String,
    },
    /// A replication cycle failed.
    #[error("replicating group '{group}'")]
    Replication {
        /// The group.
        group: String,
        /// What failed.
        #[source]
        source: Box<ReplicateError>,
    },
    /// Anything else (I/O, engine).
    #[error("{what}")]
    Internal {
        /// What failed.
        what: String,
        /// The cause.
        #[source]
        source: anyhow::Error,
    },
}

/// Shorthand.
pub type CtlResult<T> = Result<T, CtlError>;

pub use crate::api::bodies::{MigrateStep, PairRequest, PeerGroupRequest, Qos};
pub use crate::service_key::{ServiceKey, ServiceKeyError};

fn hash_secret(secret: &str) -> String {
    blake3::hash(secret.as_bytes()).to_hex().to_string()
}

/// Live replication progress of one resource.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ResourceProgress {
    /// Source URI.
    pub uri: String,
    /// Standby image name.
    pub image: String,
    /// Image size.
    pub bytes_total: u64,
    /// Bytes of the image still to scan in the current cycle.
    pub bytes_remaining: u64,
    /// Bytes sent in the current cycle.
    pub bytes_sent: u64,
    /// Current send rate, bytes/s.
    pub rate: u64,
    /// Phase of the current cycle.
    pub phase: String,
    /// QUIC smoothed round-trip time to the standby, ms (once sending).
    pub rtt_ms: Option<f64>,
    /// QUIC congestion window, bytes (once sending).
    pub cwnd: Option<u64>,
    /// Packets lost on the current QUIC connection (once sending).
    pub lost_packets: Option<u64>,
}

/// Live replication progress of one group (primary side).
#[derive(Clone, Debug, Default, Serialize)]
pub struct GroupProgress {
    /// `replicating`, `waiting` (between cycles), `retrying` (last cycle failed) or `stopped`.
    pub state: String,
    /// Completed cycles since the loop started.
    pub cycles: u64,
    /// Engine id of the last group recovery point committed on the standby.
    pub last_recovery_point: Option<u64>,
    /// The standby holds every write acknowledged on the primary before
    /// this instant (the start of the last completed cycle).
    pub standby_holds_writes_before: Option<Timestamp>,
    /// Age of that instant now, in seconds (RPO lag).
    pub rpo_lag_secs: Option<f64>,
    /// Wall seconds of the last completed cycle (a committed point, or an
    /// idle check that found nothing changed).
    pub last_cycle_seconds: Option<f64>,
    /// Completed cycles that found nothing changed since the committed point
    /// (nothing captured or sent; counted apart from `cycles`).
    pub idle_checks: u64,
    /// Bytes still to scan in the running cycle (all resources).
    pub bytes_remaining: u64,
    /// Current rate, bytes/s (all resources).
    pub rate: u64,
    /// Why the last cycle failed, if it did.
    pub last_error: Option<String>,
    /// Per resource.
    pub resources: Vec<ResourceProgress>,
}

struct CycleDone {
    engine_rp: u64,
    report: ferry_engine::session::sender::GroupReport,
}

impl CycleDone {
    /// Whether every image was scanned in this cycle (none resumed an
    /// epoch interrupted earlier, whose scan predates the cycle).
    fn fresh(&self) -> bool {
        self.report.images.iter().all(|r| r.resumed_at == 0)
    }
}

/// A named recovery point asked of a group's replication loop: the next
/// cycle that starts after the request, registered (and pinned on the
/// standby) before any later cycle can run.
struct RpRequest {
    name: String,
    kind: RpKind,
    reply: oneshot::Sender<Result<RecoveryPoint, String>>,
}

struct SyncLoop {
    cycle_now: mpsc::Sender<RpRequest>,
    task: tokio::task::JoinHandle<()>,
}

/// Settings the orchestrator starts with.
pub struct OrchestratorConfig {
    /// Agent data directory.
    pub dir: PathBuf,
    /// The QUIC listen address (the peer API is on the same TCP port).
    pub quic_addr: SocketAddr,
    /// The live trust store of the QUIC receiver and the peer API.
    pub trust: TrustStore,
    /// The standby receiver (its store, its write limit).
    pub receiver: Arc<ReceiverContext>,
    /// The agent's configuration (replication settings, initial send
    /// limit); replaced on `SIGHUP` through [`Orchestrator::reload_config`].
    pub config: AgentConfig,
    /// Where cycle results are counted (served by `[metrics] listen`).
    pub metrics: Arc<Metrics>,
}

/// The control plane of one agent (see the module doc).
pub struct Orchestrator {
    dir: PathBuf,
    identity: Identity,
    fingerprint: AgentId,
    store: Mutex<Store>,
    trust: TrustStore,
    quic_addr: SocketAddr,
    receiver: Arc<ReceiverContext>,
    send_limit: RateLimiter,
    /// Runs the replication cycles of every group (identity, configuration
    /// and the send limiter held in memory).
    replicator: Replicator,
    syncs: Mutex<HashMap<GroupId, SyncLoop>>,
    progress: Mutex<HashMap<GroupId, GroupProgress>>,
    /// Per group, the newest engine recovery point the standby is known to
    /// hold: new points are numbered above it even if the clock stepped back.
    rp_floor: Mutex<HashMap<GroupId, u64>>,
    api_addr: Mutex<Option<SocketAddr>>,
    metrics: Arc<Metrics>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

fn internal(what: impl Into<String>) -> impl FnOnce(anyhow::Error) -> CtlError {
    let what = what.into();
    move |source| CtlError::Internal { what, source }
}

impl Orchestrator {
    /// Opens the control store, loads the identity, trusts every paired
    /// peer, and applies persisted QoS.
    pub fn open(cfg: OrchestratorConfig) -> CtlResult<Arc<Self>> {
        let store = Store::open(&cfg.dir)?;
        let identity = Identity::load(&cfg.dir)
            .map_err(|e| internal("loading the agent identity")(e.into()))?;
        for svc in store.services()? {
            cfg.trust.insert(svc.remote_fingerprint);
        }
        let send_limit = RateLimiter::new(cfg.config.send_limit);
        let replicator =
            Replicator::new(&cfg.dir, identity.clone(), cfg.config, send_limit.clone());
        let orch = Arc::new(Self {
            fingerprint: identity.fingerprint(),
            identity,
            dir: cfg.dir,
            store: Mutex::new(store),
            trust: cfg.trust,
            quic_addr: cfg.quic_addr,
            receiver: cfg.receiver,
            send_limit,
            replicator,
            syncs: Mutex::new(HashMap::new()),
            progress: Mutex::new(HashMap::new()),
            rp_floor: Mutex::new(HashMap::new()),
            api_addr: Mutex::new(None),
            metrics: cfg.metrics,
        });
        let live: Arc<dyn LiveSource> = orch.clone();
        orch.metrics.attach(Arc::downgrade(&live));
        if let Some(q) = orch.load_qos() {
            orch.apply_qos(&q);
        }
        Ok(orch)
    }

    /// This agent's fingerprint.
    pub fn fingerprint(&self) -> AgentId {
        self.fingerprint
    }

    /// Records where the operator API listens (for status).
    pub fn set_api_addr(&self, addr: SocketAddr) {
        *lock(&self.api_addr) = Some(addr);
    }

    /// Fingerprints of paired peers (kept trusted across config reloads).
    pub fn paired_peers(&self) -> Vec<AgentId> {
        self.db(|s| s.services())
            .map(|v| v.into_iter().map(|s| s.remote_fingerprint).collect())
            .unwrap_or_default()
    }

    fn db<T>(&self, f: impl FnOnce(&mut Store) -> Result<T, StoreError>) -> CtlResult<T> {
        let mut guard = lock(&self.store);
        Ok(f(&mut guard)?)
    }

    // ------------------------------------------------------------ start-up

    /// Finishes or rolls back what a previous run left in flight, then
    /// resumes every syncing primary group and starts the scheduler tick.
    pub async fn recover_and_resume(self: &Arc<Self>) -> CtlResult<()> {
        let unfinished = self.db(|s| s.unfinished_operations())?;
        for op in unfinished {
            info!(op = %op.id, kind = %op.kind, group = ?op.group_name, "finishing an operation interrupted by a restart");
            let result = self.recover_operation(&op).await;
            let (result, label) = match result {
                Ok(r) => (r, "finished"),
                Err(e) => (
                    OpResult::Failed(format!("interrupted by an agent restart; {e}")),
                    "failed",
                ),
            };
            match self.db(|s| s.finish_operation(op.id, result)) {
                Ok(done) => {
                    info!(op = %op.id, state = done.state.as_str(), "{label} after restart")
                }
                Err(error) => warn!(op = %op.id, %error, "cannot finish an interrupted operation"),
            }
        }
        for g in self.db(|s| s.groups_in_state(GroupState::Syncing))? {
            if g.role == Role::Primary {
                info!(group = %g.name, "resuming replication");
                self.start_loop(g.id);
            }
        }
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            loop {
                tick.tick().await;
                me.tick().await;
            }
        });
        Ok(())
    }

    async fn recover_operation(self: &Arc<Self>, op: &Operation) -> CtlResult<OpResult> {
        let interrupted = || OpResult::Failed("interrupted by an agent restart".into());
        let Some(gid) = op.group_id else {
            return Ok(interrupted());
        };
        let g = self.db(|s| s.group(gid))?;
        Ok(match op.kind {
            OpKind::CreateGroup if g.role == Role::Primary => {
                self.map_remote_group(&g).await?;
                OpResult::Succeeded
            }
            OpKind::CreateGroup => OpResult::Succeeded,
            OpKind::StartSync => {
                self.start_sync_steps(&g).await?;
                OpResult::Succeeded
            }
            OpKind::StopSync => {
                self.stop_sync_steps(&g).await?;
                OpResult::Succeeded
            }
            OpKind::DeleteGroup if g.role == Role::Primary => {
                self.delete_remote_group(&g).await?;
                OpResult::Succeeded
            }
            OpKind::DeleteGroup => OpResult::Succeeded,
            OpKind::AddResources => {
                // Resources still pending were never confirmed by the standby.
                let pending: Vec<String> = self
                    .db(|s| s.resources(gid))?
                    .into_iter()
                    .filter(|r| r.state == ResourceState::Pending)
                    .map(|r| r.uri)
                    .collect();
                let refs: Vec<&str> = pending.iter().map(String::as_str).collect();
                if !refs.is_empty() {
                    self.db(|s| s.remove_resources(gid, &refs))?;
                }
                OpResult::RolledBack
            }
            OpKind::CreateRecoveryPoint => {
                // The standby may have recorded (and pinned) the point just
                // before the kill: delete it there too, deferred like any
                // deletion (absent there counts as deleted).
                if let Some(name) = op.params.get("name").and_then(Value::as_str) {
                    if let Ok(rp) = self.db(|s| s.recovery_point_by_name(gid, name)) {
                        if rp.state == RpState::Creating {
                            self.db(|s| {
                                s.set_recovery_point_state(
                                    rp.id,
                                    RpState::Creating,
                                    RpState::Deleting,
                                )
                            })?;
                            self.db(|s| s.set_pending_remote_delete(rp.id, true))?;
                        }
                    }
                }
                OpResult::RolledBack
            }
            _ => interrupted(),
        })
    }

    async fn tick(self: &Arc<Self>) {
        if let Err(error) = self.run_policies().await {
            warn!(%error, "policy scheduler");
        }
        if let Err(error) = self.propagate_deletions().await {
            warn!(%error, "propagating recovery point deletions");
        }
        if let Err(error) = self.propagate_stops().await {
            warn!(%error, "propagating stopped syncs");
        }
    }

    /// Tells standbys about stop syncs made while they were unreachable.
    async fn propagate_stops(self: &Arc<Self>) -> CtlResult<()> {
        for gid in self.db(|s| s.groups_pending_remote_stop())? {
            let g = self.db(|s| s.group(gid))?;
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

    // -------------------------------------------------------------- peers

    fn advertised_endpoint(&self) -> CtlResult<String> {
        if self.quic_addr.ip().is_unspecified() {
            return Err(CtlError::BadRequest(format!(
                "this agent listens on {}; give the endpoint the peer should use (--endpoint HOST:PORT)",
                self.quic_addr
            )));
        }
        Ok(self.quic_addr.to_string())
    }

    async fn resolve(endpoint: &str) -> CtlResult<SocketAddr> {
        tokio::net::lookup_host(endpoint)
            .await
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| CtlError::Peer {
                addr: endpoint.to_owned(),
                reason: "the endpoint does not resolve".into(),
                source: None,
            })
    }

    async fn peer_raw(
        &self,
        endpoint: &str,
        fingerprint: AgentId,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> CtlResult<Value> {
        let addr = Self::resolve(endpoint).await?;
        let config = tls::client_config(&self.identity, fingerprint)
            .map_err(|e| internal("peer TLS configuration")(e.into()))?;
        let target = Target::Tls {
            addr,
            config: Arc::new(config),
        };
        let reply = http::call(&target, method, path, None, body, PEER_TIMEOUT)
            .await
            .map_err(|source| CtlError::Peer {
                addr: endpoint.to_owned(),
                reason: "cannot reach the peer agent".into(),
                source: Some(source),
            })?;
        if reply.ok() {
            return Ok(reply.body);
        }
        Err(CtlError::Peer {
            addr: endpoint.to_owned(),
            reason: format!(
                "HTTP {}: {}",
                reply.status,
                reply
                    .body
                    .get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("no reason given")
            ),
            source: None,
        })
    }

    async fn peer(
        &self,
        svc: &Service,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> CtlResult<Value> {
        self.peer_raw(
            &svc.remote_endpoint,
            svc.remote_fingerprint,
            method,
            path,
            body,
        )
        .await
    }

    // ----------------------------------------------------------- services

    /// Issues a one-time service key (standby side).
    pub fn issue_service_key(
        &self,
        endpoint: Option<String>,
        ttl: Duration,
    ) -> CtlResult<ServiceKey> {
        let endpoint = match endpoint {
            Some(e) => e,
            None => self.advertised_endpoint()?,
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
            None => self.advertised_endpoint()?,
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
        let body = json!({
            "secret": key.secret,
            "name": name,
            "endpoint": local_endpoint,
            "your_endpoint": key.endpoint,
        });
        self.peer_raw(
            &key.endpoint,
            remote,
            Method::POST,
            "/v1/peer/pair",
            Some(&body),
        )
        .await?;
        let svc = self.db(|s| {
            s.create_service(&NewService {
                name: name.to_owned(),
                local_endpoint,
                remote_endpoint: key.endpoint.clone(),
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

    /// A service by name or id.
    pub fn service(&self, key: &str) -> CtlResult<Service> {
        self.db(|s| match s.service_by_name(key) {
            Err(StoreError::NotFound { .. }) if key.parse::<i64>().is_ok() => {
                s.service(crate::control::ServiceId(key.parse().unwrap_or(0)))
            }
            other => other,
        })
    }

    /// All services.
    pub fn services(&self) -> CtlResult<Vec<Service>> {
        self.db(|s| s.services())
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
        let remote = remote.unwrap_or(svc.remote_endpoint);
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

    /// The service whose peer is `caller` (peer API authorisation).
    pub fn service_of_peer(&self, caller: AgentId) -> CtlResult<Service> {
        self.db(|s| s.services())?
            .into_iter()
            .find(|s| s.remote_fingerprint == caller)
            .ok_or_else(|| CtlError::Forbidden {
                fingerprint: caller,
                reason: "no service connects this agent to it".into(),
            })
    }

    /// Whether `caller` may write (and query) standby image `image` over
    /// QUIC: only if a group of the service that pairs this agent with
    /// `caller`, standby here, lists the image as a resource's standby
    /// target (a primary group's targets name images on the peer). Fails
    /// closed: an unpaired caller, an image of another service's group, an
    /// unknown image or a store error all refuse.
    pub fn check_image_owner(&self, caller: AgentId, image: &str) -> CtlResult<()> {
        let svc = self.service_of_peer(caller)?;
        let forbidden = |reason: String| CtlError::Forbidden {
            fingerprint: caller,
            reason,
        };
        // A standby group failing over or failed over no longer takes the
        // old primary's replication: its images hold the recovery points a
        // new primary restores from ("mapping broken"), which new cycles
        // would replace and prune.
        let replicating = |g: &Group| {
            !g.new_primary
                && !matches!(
                    g.state,
                    GroupState::FailingOver | GroupState::FailedOver | GroupState::FailoverFailed
                )
        };
        for g in self
            .groups()?
            .into_iter()
            .filter(|g| g.service_id == svc.id && g.role == Role::Standby && replicating(g))
        {
            if self
                .db(|s| s.resources(g.id))?
                .iter()
                .any(|r| r.standby_target == image)
            {
                return Ok(());
            }
        }
        Err(forbidden(format!(
            "no group of service '{}' owns image {image}",
            svc.name
        )))
    }

    // ------------------------------------------------------------- groups

    /// A group by name or id.
    pub fn group(&self, key: &str) -> CtlResult<Group> {
        self.db(|s| match s.group_by_name(key) {
            Err(StoreError::NotFound { .. }) if key.parse::<i64>().is_ok() => {
                s.group(GroupId(key.parse().unwrap_or(0)))
            }
            other => other,
        })
    }

    /// All groups.
    pub fn groups(&self) -> CtlResult<Vec<Group>> {
        self.db(|s| s.groups())
    }

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
            "operations": recent,
        }))
    }

    /// Live progress of a group (`None` when it does not replicate here).
    pub fn progress_of(&self, id: GroupId) -> Option<GroupProgress> {
        let mut p = lock(&self.progress).get(&id).cloned()?;
        p.rpo_lag_secs = p
            .standby_holds_writes_before
            .map(|t| (Timestamp::now().0 - t.0).max(0) as f64 / 1000.0);
        Some(p)
    }

    /// All resources of all groups.
    pub fn resources(&self) -> CtlResult<Vec<Resource>> {
        let groups = self.groups()?;
        let mut out = Vec::new();
        for g in groups {
            out.extend(self.db(|s| s.resources(g.id))?);
        }
        Ok(out)
    }

    /// Creates a primary group and (in the background) its mapped standby
    /// group on the service's peer.
    pub fn create_group(
        self: &Arc<Self>,
        name: &str,
        service: Option<&str>,
        remote_project: &str,
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

    async fn map_remote_group(&self, g: &Group) -> CtlResult<()> {
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

    /// Runs `work` in the background and finishes journal entry `op` with
    /// its result.
    fn run_op<F>(self: &Arc<Self>, op: OperationId, work: F)
    where
        F: std::future::Future<Output = CtlResult<()>> + Send + 'static,
    {
        self.run_op_renaming(op, async move { work.await.map(|()| Vec::new()) });
    }

    /// [`Self::run_op`] whose work also returns resource renames to record
    /// with the operation's end (see `Store::finish_operation_renaming`).
    fn run_op_renaming<F>(self: &Arc<Self>, op: OperationId, work: F)
    where
        F: std::future::Future<Output = CtlResult<Vec<(String, String)>>> + Send + 'static,
    {
        let me = self.clone();
        tokio::spawn(async move {
            let (result, renames) = match work.await {
                Ok(renames) => (OpResult::Succeeded, renames),
                Err(e) => {
                    warn!(%op, error = %e, "operation failed");
                    (OpResult::Failed(error_chain(&e)), Vec::new())
                }
            };
            if let Err(error) = me.db(|s| s.finish_operation_renaming(op, result, &renames)) {
                warn!(%op, %error, "cannot finish operation");
            }
        });
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

    async fn start_sync_steps(self: &Arc<Self>, g: &Group) -> CtlResult<()> {
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
        let op = self.db(|s| s.begin_checked(g.id, &OpRequest::StopSync, &json!({})))?;
        let me = self.clone();
        self.run_op(op.id, async move { me.stop_sync_steps(&g).await });
        Ok(op)
    }

    async fn stop_sync_steps(self: &Arc<Self>, g: &Group) -> CtlResult<()> {
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

    /// Deletes a group (primary: its standby group too).
    pub fn delete_group(self: &Arc<Self>, key: &str) -> CtlResult<Operation> {
        let g = self.group(key)?;
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
                me.delete_remote_group(&g).await?;
            } else {
                // A standby group (failed over, or never mapped) takes its
                // replicated copies with it; failover and restore outputs
                // are separate images and stay.
                let resources = me.db(|s| s.resources(g.id))?;
                me.remove_standby_images(&resources).await?;
            }
            Ok(())
        });
        Ok(op)
    }

    async fn delete_remote_group(&self, g: &Group) -> CtlResult<()> {
        let Some(remote) = g.remote_group_id else {
            return Ok(());
        };
        let svc = self.db(|s| s.service(g.service_id))?;
        self.peer(
            &svc,
            Method::DELETE,
            &format!("/v1/peer/groups/{remote}"),
            None,
        )
        .await?;
        Ok(())
    }

    // ---------------------------------------------------- recovery points

    /// Takes the control store's lock and reads from it (the watchdog's
    /// health probe: a store wedged on a hung disk never answers).
    pub fn probe_store(&self) -> CtlResult<()> {
        self.db(|s| s.groups()).map(|_| ())
    }

    /// Recovery points of a group.
    pub fn recovery_points(&self, key: &str) -> CtlResult<Vec<RecoveryPoint>> {
        let g = self.group(key)?;
        self.db(|s| s.recovery_points(g.id))
    }

    /// Creates a manual recovery point: the next replication cycle, named.
    pub fn create_recovery_point(
        self: &Arc<Self>,
        key: &str,
        name: Option<String>,
    ) -> CtlResult<Operation> {
        let g = self.group(key)?;
        let name = name.unwrap_or_else(|| format!("manual-{}", Timestamp::now().0));
        if self.db(|s| s.recovery_point_by_name(g.id, &name)).is_ok() {
            return Err(CtlError::BadRequest(format!(
                "group '{}' already has a recovery point named '{name}'",
                g.name
            )));
        }
        self.create_rp_with(g, name, RpKind::Manual)
    }

    fn create_rp_with(
        self: &Arc<Self>,
        g: Group,
        name: String,
        kind: RpKind,
    ) -> CtlResult<Operation> {
        let op = self.db(|s| {
            s.begin_checked(
                g.id,
                &OpRequest::CreateRecoveryPoint { kind },
                &json!({ "name": name, "kind": kind }),
            )
        })?;
        let me = self.clone();
        self.run_op(op.id, async move {
            let rp = me.cycle_now(g.id, name, kind).await?;
            info!(group = %g.name, rp = %rp.name, engine_rp = rp.engine_rp, "recovery point created");
            Ok(())
        });
        Ok(op)
    }

    /// Records the group recovery point `engine_rp` (just committed by the
    /// group's loop) as the named point here and on the standby, which pins
    /// it in its store so retention never prunes it. Called by the loop
    /// before its next cycle; the standby call is retried while the link
    /// is down. On failure nothing is left recorded here.
    async fn register_rp(
        &self,
        gid: GroupId,
        name: &str,
        kind: RpKind,
        engine_rp: u64,
    ) -> CtlResult<RecoveryPoint> {
        let g = self.db(|s| s.group(gid))?;
        let rp = self.db(|s| {
            s.create_recovery_point(
                gid,
                &NewRecoveryPoint {
                    name: name.to_owned(),
                    engine_rp,
                    kind,
                },
            )
        })?;
        let svc = self.db(|s| s.service(g.service_id))?;
        let remote = remote_id(&g)?;
        let body = json!({ "name": name, "engine_rp": engine_rp, "kind": kind });
        hold::reach("rp::before-register");
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self
                .peer(
                    &svc,
                    Method::POST,
                    &format!("/v1/peer/groups/{remote}/recovery-points"),
                    Some(&body),
                )
                .await
            {
                Ok(_) => {
                    hold::reach("rp::after-register");
                    break;
                }
                Err(e) if attempt < CYCLE_ATTEMPTS => {
                    warn!(group = %g.name, rp = %name, error = %error_chain(&e), "standby did not record the recovery point; retrying");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(e) => {
                    // The standby may have recorded (and pinned) the point
                    // while its answer was lost: delete it there too,
                    // deferred like any deletion (absent there counts as
                    // deleted), instead of forgetting it here only.
                    self.db(|s| {
                        s.set_recovery_point_state(rp.id, RpState::Creating, RpState::Deleting)
                    })?;
                    self.db(|s| s.set_pending_remote_delete(rp.id, true))?;
                    return Err(e);
                }
            }
        }
        self.db(|s| s.set_recovery_point_state(rp.id, RpState::Creating, RpState::Complete))
    }

    /// Deletes a recovery point here and on the standby (deferred while the
    /// standby is unreachable).
    pub fn delete_recovery_point(self: &Arc<Self>, key: &str, rp: &str) -> CtlResult<Operation> {
        let g = self.group(key)?;
        let rp = self.db(|s| s.recovery_point_by_name(g.id, rp))?;
        let op = self.db(|s| {
            s.begin_checked(
                g.id,
                &OpRequest::DeleteRecoveryPoint,
                &json!({ "name": rp.name }),
            )
        })?;
        let me = self.clone();
        self.run_op(op.id, async move {
            if rp.state != RpState::Deleting {
                me.db(|s| s.set_recovery_point_state(rp.id, rp.state, RpState::Deleting))?;
            }
            me.db(|s| s.set_pending_remote_delete(rp.id, true))?;
            // Propagation happens now if the standby answers, else later.
            if let Err(e) = me.propagate_one(&g, &rp).await {
                warn!(rp = %rp.name, error = %e, "standby unreachable: deletion deferred");
            }
            Ok(())
        });
        Ok(op)
    }

    async fn propagate_one(&self, g: &Group, rp: &RecoveryPoint) -> CtlResult<()> {
        if let Some(remote) = g.remote_group_id {
            let svc = self.db(|s| s.service(g.service_id))?;
            self.peer(
                &svc,
                Method::DELETE,
                &format!("/v1/peer/groups/{remote}/recovery-points/{}", rp.name),
                None,
            )
            .await?;
        }
        self.db(|s| s.delete_recovery_point(rp.id))?;
        Ok(())
    }

    async fn propagate_deletions(&self) -> CtlResult<()> {
        for rp in self.db(|s| s.pending_remote_deletes())? {
            let g = self.db(|s| s.group(rp.group_id))?;
            if let Err(e) = self.propagate_one(&g, &rp).await {
                tracing::debug!(rp = %rp.name, error = %e, "deletion still deferred");
            }
        }
        Ok(())
    }

    // ----------------------------------------------------------- policies

    /// Creates a policy; the schedule is validated as a [`PolicySchedule`].
    pub fn create_policy(&self, name: &str, schedule: &Value) -> CtlResult<Policy> {
        serde_json::from_value::<PolicySchedule>(schedule.clone())
            .map_err(|e| CtlError::BadRequest(format!("bad policy schedule: {e}")))?;
        self.db(|s| s.create_policy(name, schedule))
    }

    /// All policies.
    pub fn policies(&self) -> CtlResult<Vec<Policy>> {
        self.db(|s| s.policies())
    }

    fn policy(&self, key: &str) -> CtlResult<Policy> {
        self.db(|s| s.policy_by_name(key))
    }

    /// Deletes a policy (refused while bound).
    pub fn delete_policy(&self, key: &str) -> CtlResult<()> {
        let p = self.policy(key)?;
        self.db(|s| s.delete_policy(p.id))
    }

    /// Binds a policy to a group with a retention.
    pub fn bind_policy(&self, group: &str, policy: &str, retention: u8) -> CtlResult<Operation> {
        let g = self.group(group)?;
        let p = self.policy(policy)?;
        let op = self.db(|s| {
            s.begin_checked(
                g.id,
                &OpRequest::BindPolicy { retention },
                &json!({ "policy": p.name, "retention": retention }),
            )
        })?;
        let result = Retention::new(retention)
            .map_err(|e| CtlError::BadRequest(e.to_string()))
            .and_then(|r| self.db(|s| s.bind_policy(g.id, p.id, r)));
        self.finish_now(op.id, result.map(|_| ()))
    }

    /// Unbinds a group's policy.
    pub fn unbind_policy(&self, group: &str) -> CtlResult<Operation> {
        let g = self.group(group)?;
        let op = self.db(|s| s.begin_checked(g.id, &OpRequest::UnbindPolicy, &json!({})))?;
        let result = self.db(|s| s.unbind_policy(g.id)).map(|_| ());
        self.finish_now(op.id, result)
    }

    fn finish_now(&self, op: OperationId, result: CtlResult<()>) -> CtlResult<Operation> {
        match result {
            Ok(()) => self.db(|s| s.finish_operation(op, OpResult::Succeeded)),
            Err(e) => {
                let _ = self.db(|s| s.finish_operation(op, OpResult::Failed(e.to_string())));
                Err(e)
            }
        }
    }

    async fn run_policies(self: &Arc<Self>) -> CtlResult<()> {
        let now = jiff::Timestamp::now();
        for g in self.db(|s| s.groups_in_state(GroupState::Syncing))? {
            let Some(binding) = g.policy else { continue };
            if g.role != Role::Primary {
                continue;
            }
            let policy = self.db(|s| s.policy(binding.policy_id))?;
            let Ok(schedule) = serde_json::from_value::<PolicySchedule>(policy.schedule.clone())
            else {
                continue;
            };
            let last = self.policy_last_fired(g.id, &policy)?;
            let due = schedule.due(last, now);
            let Some(slot) = due.fire else {
                continue;
            };
            if due.skipped > 0 {
                warn!(group = %g.name, skipped = due.skipped, "policy slots missed while the agent was down; firing the latest once");
            }
            let name = format!("{}-{}", policy.name, slot.as_millisecond());
            // The recovery point's name records the slot: a restart never
            // fires the same slot twice.
            if self.db(|s| s.recovery_point_by_name(g.id, &name)).is_ok() {
                continue;
            }
            match self.create_rp_with(g.clone(), name, RpKind::Policy) {
                Ok(op) => {
                    info!(group = %g.name, op = %op.id, "policy recovery point started");
                    hold::reach("policy::started");
                }
                Err(e) => {
                    tracing::debug!(group = %g.name, error = %e, "policy recovery point not started")
                }
            }
        }
        self.prune_policy_points().await
    }

    fn policy_last_fired(
        &self,
        gid: GroupId,
        policy: &Policy,
    ) -> CtlResult<Option<jiff::Timestamp>> {
        let prefix = format!("{}-", policy.name);
        let last = self
            .db(|s| s.recovery_points(gid))?
            .into_iter()
            .filter(|rp| rp.kind == RpKind::Policy)
            .filter_map(|rp| rp.name.strip_prefix(&prefix)?.parse::<i64>().ok())
            .max();
        Ok(last.and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok()))
    }

    async fn prune_policy_points(self: &Arc<Self>) -> CtlResult<()> {
        for g in self.groups()? {
            if g.role != Role::Primary || g.policy.is_none() {
                continue;
            }
            for rp in self.db(|s| s.policy_recovery_points_to_prune(g.id))? {
                self.db(|s| {
                    s.set_recovery_point_state(rp.id, RpState::Complete, RpState::Deleting)
                })?;
                self.db(|s| s.set_pending_remote_delete(rp.id, true))?;
                let _ = self.propagate_one(&g, &rp).await;
            }
        }
        Ok(())
    }

    // ----------------------------------------------------------- journal

    /// One journal entry.
    pub fn operation(&self, id: OperationId) -> CtlResult<Operation> {
        self.db(|s| s.operation(id))
    }

    /// The newest journal entries.
    pub fn operations(&self, limit: usize) -> CtlResult<Vec<Operation>> {
        self.db(|s| s.recent_operations(limit))
    }

    // ---------------------------------------------------------------- qos

    fn qos_path(&self) -> PathBuf {
        self.dir.join("qos.json")
    }

    fn load_qos(&self) -> Option<Qos> {
        let text = std::fs::read(self.qos_path()).ok()?;
        serde_json::from_slice(&text).ok()
    }

    fn apply_qos(&self, q: &Qos) {
        self.receiver.write_limit.set_rate(q.receive_limit);
        self.send_limit.set_rate(q.send_limit);
    }

    /// A reloaded configuration (`SIGHUP`): the next replication cycle uses
    /// its settings, the send limit becomes the file's, and then QoS set
    /// through the API is applied again (it wins over the file).
    pub fn reload_config(&self, config: AgentConfig) {
        self.send_limit.set_rate(config.send_limit);
        self.replicator.reload(config);
        self.reapply_qos();
    }

    /// Re-applies QoS persisted by `set_qos` (after a config reload, which
    /// set the config file's limits): the API's settings win.
    pub fn reapply_qos(&self) {
        if let Some(q) = self.load_qos() {
            self.apply_qos(&q);
        }
    }

    /// Current QoS.
    pub fn qos(&self) -> Qos {
        Qos {
            receive_limit: self.receiver.write_limit.rate(),
            send_limit: self.send_limit.rate(),
        }
    }

    /// Sets QoS at run time (running syncs pick it up at once) and persists
    /// it in `DIR/qos.json` (it wins over the config file's `[qos]`).
    pub fn set_qos(&self, q: &Qos) -> CtlResult<Qos> {
        let path = self.qos_path();
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_vec_pretty(q).unwrap_or_default();
        write_durably(&tmp, &path, &text)
            .map_err(|e| internal(format!("writing {}", path.display()))(e.into()))?;
        self.apply_qos(q);
        Ok(self.qos())
    }

    // ------------------------------------------------------------- status

    /// Everything at a glance.
    pub fn status(&self) -> CtlResult<Value> {
        let groups = self.groups()?;
        let mut list = Vec::new();
        for g in groups {
            let resources = self.db(|s| s.resources(g.id))?;
            let rps = self.db(|s| s.recovery_points(g.id))?;
            list.push(json!({
                "name": g.name,
                "id": g.id,
                "role": g.role,
                "state": g.state,
                "new_primary": g.new_primary,
                "resources": resources.len(),
                "recovery_points": rps.len(),
                "progress": self.progress_of(g.id),
            }));
        }
        Ok(json!({
            "agent": {
                "fingerprint": self.fingerprint.to_hex(),
                "endpoint": self.quic_addr.to_string(),
                "api": lock(&self.api_addr).map(|a| a.to_string()),
            },
            "services": self.services()?,
            "groups": list,
            "qos": self.qos(),
        }))
    }

    // --------------------------------------------------- replication loop

    fn start_loop(self: &Arc<Self>, gid: GroupId) {
        let mut syncs = lock(&self.syncs);
        if let Some(existing) = syncs.get(&gid) {
            if !existing.task.is_finished() {
                return;
            }
        }
        let (tx, rx) = mpsc::channel(16);
        let me = self.clone();
        let task = tokio::spawn(async move { me.sync_loop(gid, rx).await });
        syncs.insert(
            gid,
            SyncLoop {
                cycle_now: tx,
                task,
            },
        );
        lock(&self.progress).insert(
            gid,
            GroupProgress {
                state: "replicating".into(),
                ..GroupProgress::default()
            },
        );
    }

    async fn stop_loop(&self, gid: GroupId) {
        let lp = lock(&self.syncs).remove(&gid);
        if let Some(lp) = lp {
            lp.task.abort();
            let _ = lp.task.await;
        }
        if let Some(p) = lock(&self.progress).get_mut(&gid) {
            p.state = "stopped".into();
            p.rate = 0;
        }
    }

    /// Stops every replication loop (agent shutdown).
    pub async fn shutdown(&self) {
        let ids: Vec<GroupId> = lock(&self.syncs).keys().copied().collect();
        for id in ids {
            self.stop_loop(id).await;
        }
    }

    async fn cycle_now(
        &self,
        gid: GroupId,
        name: String,
        kind: RpKind,
    ) -> CtlResult<RecoveryPoint> {
        let sender = lock(&self.syncs).get(&gid).map(|l| l.cycle_now.clone());
        let Some(sender) = sender else {
            return Err(CtlError::BadRequest(
                "the group does not replicate on this agent".into(),
            ));
        };
        let (reply, rx) = oneshot::channel();
        let closed = || CtlError::BadRequest("replication of the group stopped".into());
        sender
            .send(RpRequest { name, kind, reply })
            .await
            .map_err(|_| closed())?;
        match rx.await.map_err(|_| closed())? {
            Ok(rp) => Ok(rp),
            Err(reason) => Err(CtlError::Internal {
                what: "the replication cycle failed".into(),
                source: anyhow::anyhow!(reason),
            }),
        }
    }

    async fn sync_loop(self: Arc<Self>, gid: GroupId, mut rx: mpsc::Receiver<RpRequest>) {
        // (request, failed cycles so far) of each recovery-point request.
        let mut waiting: Vec<(RpRequest, u32)> = Vec::new();
        loop {
            // Requests that arrived before this cycle starts are answered
            // by it: it captures every write acknowledged before them.
            while let Ok(w) = rx.try_recv() {
                waiting.push((w, 0));
            }
            if !waiting.is_empty() {
                hold::reach("rp::before-cycle");
            }
            let started = Timestamp::now();
            let clock = std::time::Instant::now();
            self.set_progress(gid, |p| {
                p.state = "replicating".into();
            });
            let name = self
                .db(|s| s.group(gid))
                .map(|g| g.name)
                .unwrap_or_else(|_| gid.to_string());
            let span = tracing::info_span!("cycle", group = %name, peer = tracing::field::Empty);
            let result =
                tracing::Instrument::instrument(self.run_loop_cycle(gid, waiting.is_empty()), span)
                    .await;
            let seconds = clock.elapsed().as_secs_f64();
            let pause = match &result {
                Ok(None) => {
                    self.set_progress(gid, |p| {
                        p.state = "waiting".into();
                        for r in &mut p.resources {
                            r.rate = 0;
                            r.bytes_remaining = 0;
                            r.phase = "unchanged".into();
                        }
                        p.bytes_remaining = 0;
                        p.idle_checks += 1;
                        p.standby_holds_writes_before = Some(started);
                        p.last_cycle_seconds = Some(seconds);
                        p.last_error = None;
                        p.rate = 0;
                    });
                    SYNC_PAUSE
                }
                Ok(Some(done)) => {
                    self.metrics.record_cycle(&name, &done.report);
                    let changed: u64 = done.report.images.iter().map(|r| r.bytes_changed).sum();
                    let sent: u64 = done.report.images.iter().map(|r| r.bytes_sent).sum();
                    if changed > 0 {
                        info!(group = %name, recovery_point = done.engine_rp, bytes_changed = changed, bytes_sent = sent, seconds = done.report.seconds, "replication cycle committed");
                    } else {
                        tracing::debug!(group = %name, recovery_point = done.engine_rp, "replication cycle committed (no changes)");
                    }
                    self.set_progress(gid, |p| {
                        p.state = "waiting".into();
                        p.cycles += 1;
                        p.last_recovery_point = Some(done.engine_rp);
                        p.last_cycle_seconds = Some(seconds);
                        p.standby_holds_writes_before = Some(started);
                        p.last_error = None;
                        p.rate = 0;
                        p.bytes_remaining = 0;
                        for r in &mut p.resources {
                            r.rate = 0;
                            r.bytes_remaining = 0;
                        }
                    });
                    // Named before the next cycle: the standby pins the
                    // point before its retention could prune it. A cycle that
                    // resumed an interrupted epoch scanned (part of) its
                    // sources before the requests came: it cannot hold every
                    // write acknowledged before them, the next cycle does.
                    let waiters = if done.fresh() {
                        std::mem::take(&mut waiting)
                    } else {
                        info!(group = %name, recovery_point = done.engine_rp, "the cycle resumed an interrupted epoch; recovery point requests wait for the next one");
                        Vec::new()
                    };
                    for (w, _) in waiters {
                        let result = self
                            .register_rp(gid, &w.name, w.kind, done.engine_rp)
                            .await
                            .map_err(|e| error_chain(&e));
                        let _ = w.reply.send(result);
                    }
                    if changed > 0 {
                        BUSY_PAUSE
                    } else {
                        SYNC_PAUSE
                    }
                }
                Err(e) => {
                    let text = error_chain(e);
                    let kind = error_kind(e);
                    self.metrics.record_failure(&name, kind);
                    warn!(group = %name, kind = kind.as_str(), error = %text, "replication cycle failed; retrying");
                    self.set_progress(gid, |p| {
                        p.state = "retrying".into();
                        p.last_error = Some(text.clone());
                        p.rate = 0;
                    });
                    // A request fails only after several cycles in a row
                    // failed (a single refused cycle, e.g. the first after
                    // a crash, is retried).
                    let mut still = Vec::new();
                    for (w, failures) in waiting.drain(..) {
                        if failures + 1 >= CYCLE_ATTEMPTS {
                            let _ = w.reply.send(Err(text.clone()));
                        } else {
                            still.push((w, failures + 1));
                        }
                    }
                    waiting = still;
                    RETRY_PAUSE
                }
            };
            tokio::select! {
                w = rx.recv() => match w {
                    Some(w) => waiting.push((w, 0)),
                    None => return,
                },
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    fn raise_rp_floor(&self, gid: GroupId, rp: u64) {
        let mut floors = lock(&self.rp_floor);
        let floor = floors.entry(gid).or_default();
        *floor = (*floor).max(rp);
    }

    /// The newest engine recovery point any standby image of the group
    /// holds; `None` when the standby has no such group any more.
    async fn remote_newest_point(&self, gid: GroupId) -> CtlResult<Option<u64>> {
        let g = self.db(|s| s.group(gid))?;
        let svc = self.db(|s| s.service(g.service_id))?;
        let remote = remote_id(&g)?;
        let reply = self
            .peer(
                &svc,
                Method::GET,
                &format!("/v1/peer/groups/{remote}/newest-point"),
                None,
            )
            .await?;
        if reply["gone"] == true {
            return Ok(None);
        }
        Ok(Some(reply["newest"].as_u64().unwrap_or(0)))
    }

    /// Peer: the newest engine recovery point any standby image of the
    /// group holds (0: none); `None` when this agent has no such group (it
    /// was deleted here).
    pub fn peer_newest_point(&self, caller: AgentId, id: i64) -> CtlResult<Option<u64>> {
        let g = match self.peer_group(caller, id) {
            Ok(g) => g,
            Err(CtlError::Store(StoreError::NotFound { .. })) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut newest = 0;
        for r in self.db(|s| s.resources(g.id))? {
            let Ok(image) = ImageName::new(r.standby_target.clone()) else {
                continue;
            };
            if let Ok(points) = self.receiver.store.recovery_points(&image) {
                newest = points.iter().map(|p| p.id.get()).fold(newest, u64::max);
            }
        }
        Ok(Some(newest))
    }

    fn set_progress(&self, gid: GroupId, f: impl FnOnce(&mut GroupProgress)) {
        let mut all = lock(&self.progress);
        let p = all.entry(gid).or_default();
        f(p);
    }

    /// One cycle of the replication loop: `None` when nothing changed since
    /// the committed point (`may_skip`: no recovery point is waited for) and
    /// the standby confirmed it still holds that point; otherwise a
    /// committed cycle. An idle check the standby cannot confirm (it is
    /// unreachable, lost the group, or holds an older point) runs a full
    /// cycle instead, so its errors surface as they did before.
    async fn run_loop_cycle(
        self: &Arc<Self>,
        gid: GroupId,
        may_skip: bool,
    ) -> CtlResult<Option<CycleDone>> {
        if may_skip {
            if let Some(done) = self.run_cycle_may_skip(gid, true).await? {
                return Ok(Some(done));
            }
            let floor = lock(&self.rp_floor).get(&gid).copied().unwrap_or(0);
            match self.remote_newest_point(gid).await {
                Ok(Some(newest)) if newest >= floor && newest > 0 => return Ok(None),
                Ok(newest) => {
                    info!(group = %gid, standby_newest = ?newest, floor, "the standby does not hold the committed point; running a full cycle");
                }
                Err(e) => {
                    info!(group = %gid, error = %error_chain(&e), "the standby did not confirm the committed point; running a full cycle");
                }
            }
        }
        self.run_cycle(gid).await.map(Some)
    }

    /// One replication cycle that commits a point (the loop's, or a
    /// migration's final sync).
    async fn run_cycle(self: &Arc<Self>, gid: GroupId) -> CtlResult<CycleDone> {
        self.run_cycle_may_skip(gid, false).await?.ok_or_else(|| {
            CtlError::BadRequest("a cycle that had to commit a point committed nothing".into())
        })
    }

    /// A replication cycle; with `skip_unchanged`, `None` when nothing
    /// changed since the committed point (nothing captured or sent).
    async fn run_cycle_may_skip(
        self: &Arc<Self>,
        gid: GroupId,
        skip_unchanged: bool,
    ) -> CtlResult<Option<CycleDone>> {
        let result = self.run_cycle_once(gid, skip_unchanged).await;
        match &result {
            Ok(Some(done)) => self.raise_rp_floor(gid, done.engine_rp),
            Ok(None) => {}
            // The standby may hold a point numbered above this clock
            // (stepped back while this agent was down, or before it knew):
            // the next cycle numbers its point above it.
            // A standby holding a point of the group also ends the initial
            // full sync a killed primary never recorded (the standby may
            // have failed over since: no later cycle will complete, and
            // stop sync would be refused for good). So does a standby that
            // has no such group any more (it failed over, then deleted its
            // group): there is nothing left to sync into, and this side
            // must still be able to stop and delete its group.
            Err(_) => {
                let ended = match self.remote_newest_point(gid).await {
                    Ok(Some(newest)) => {
                        self.raise_rp_floor(gid, newest);
                        newest > 0
                    }
                    Ok(None) => {
                        warn!(group = %gid, "the standby has no such group any more; the initial sync ends here");
                        true
                    }
                    Err(_) => false,
                };
                if ended {
                    if let Err(e) = self.end_initial_sync(gid) {
                        warn!(error = %e, "could not record the end of the initial sync");
                    }
                }
            }
        }
        result
    }

    /// The standby holds a complete recovery point of the group: its
    /// resources are past their initial full sync.
    fn end_initial_sync(&self, gid: GroupId) -> CtlResult<()> {
        for r in self.db(|s| s.resources(gid))? {
            if r.state == ResourceState::InitialSync {
                self.db(|s| s.set_resource_state(&r.uri, ResourceState::Syncing))?;
            }
        }
        Ok(())
    }

    async fn run_cycle_once(
        self: &Arc<Self>,
        gid: GroupId,
        skip_unchanged: bool,
    ) -> CtlResult<Option<CycleDone>> {
        let g = self.db(|s| s.group(gid))?;
        let svc = self.db(|s| s.service(g.service_id))?;
        let resources = self.db(|s| s.resources(gid))?;
        if resources.is_empty() {
            return Err(CtlError::BadRequest("the group has no resources".into()));
        }
        tracing::Span::current().record("peer", tracing::field::display(svc.remote_fingerprint));
        let addr = Self::resolve(&svc.remote_endpoint).await?;
        let mut pairs = Vec::with_capacity(resources.len());
        for r in &resources {
            let source =
                SourceUri::parse(&r.uri).map_err(|e| CtlError::BadRequest(e.to_string()))?;
            let image = ImageName::new(r.standby_target.clone())
                .map_err(|e| CtlError::BadRequest(e.to_string()))?;
            pairs.push((source, TargetUri { addr, image }));
        }
        self.set_progress(gid, |p| {
            p.resources = resources
                .iter()
                .map(|r| ResourceProgress {
                    uri: r.uri.clone(),
                    image: r.standby_target.clone(),
                    bytes_total: r.size_bytes,
                    bytes_remaining: r.size_bytes,
                    phase: "starting".into(),
                    ..ResourceProgress::default()
                })
                .collect();
        });
        let me = Arc::downgrade(self);
        let sink: replicate::ProgressSink = Arc::new(move |index: usize, sp: &SyncProgress| {
            if let Some(me) = me.upgrade() {
                me.set_progress(gid, |p| {
                    if let Some(r) = p.resources.get_mut(index) {
                        if let Some(path) = sp.connection {
                            r.rtt_ms = Some(path.rtt.as_secs_f64() * 1000.0);
                            r.cwnd = Some(path.cwnd);
                            r.lost_packets = Some(path.lost_packets);
                        }
                        r.bytes_total = sp.image_size;
                        r.bytes_remaining = sp.image_size.saturating_sub(sp.bytes_scanned);
                        r.bytes_sent = sp.bytes_sent;
                        r.rate = sp.rate;
                        r.phase = sp.phase.to_owned();
                    }
                    p.bytes_remaining = p.resources.iter().map(|r| r.bytes_remaining).sum();
                    p.rate = p.resources.iter().map(|r| r.rate).sum();
                });
            }
        });
        let floor = lock(&self.rp_floor).get(&gid).copied().unwrap_or(0);
        let outcome = self
            .replicator
            .cycle(Cycle {
                pairs: &pairs,
                peer: svc.remote_fingerprint,
                cluster: None,
                progress: Some(sink),
                accept_changes_at_rest: false,
                min_recovery_point: floor,
                skip_unchanged,
                tweak: None,
            })
            .await
            .map_err(|source| CtlError::Replication {
                group: g.name.clone(),
                source: Box::new(source),
            })?;
        let report = match outcome {
            CycleOutcome::Committed(report) => report,
            CycleOutcome::Unchanged => return Ok(None),
        };
        hold::reach("cycle::committed");
        fail::fail_point!("cycle::after-commit-before-state", |_| Err(
            CtlError::BadRequest("fail point cycle::after-commit-before-state".into())
        ));
        self.end_initial_sync(gid)?;
        Ok(Some(CycleDone {
            engine_rp: report.recovery_point,
            report,
        }))
    }

    // ------------------------------------------------------ planned migration

    /// Planned migration (primary; the operator has quiesced the volumes):
    /// stops continuous replication, runs a final cycle (everything written
    /// before the command), has the standby write each image as it is at
    /// that recovery point into a new volume (`DIR/volumes/GROUP/IMAGE.raw`,
    /// or a new RBD image: see [`rbd_migration`]) and checks its BLAKE3
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
        let resources = self.db(|s| s.resources(g.id))?;
        let split_vms = self.split_vms(&g, &resources)?;
        rbd_migration::migration_kind(&self.receiver.store, &resources, "primary")
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
        let kind = rbd_migration::migration_kind(&self.receiver.store, &resources, "primary")
            .map_err(CtlError::BadRequest)?;
        if kind == rbd_migration::MigrationKind::Rbd {
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
                    let ferry_engine::standby_backend::Standby::Files(files) = st else {
                        return Err(ferry_engine::standby::StoreError::InvalidRequest {
                            reason: "the standby backend is not files".into(),
                        });
                    };
                    files.remove_image(&name)?;
                    files.adopt(&name, &path, epoch, rp, created)
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
                    let resources = self.db(|s| s.resources(g.id))?;
                    rbd_migration::migration_kind(&self.receiver.store, &resources, "standby")
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
                let kind =
                    rbd_migration::migration_kind(&self.receiver.store, &resources, "standby")
                        .map_err(CtlError::BadRequest)?;
                let plan = match kind {
                    rbd_migration::MigrationKind::Files => {
                        self.materialise_for_migration(&g, caller, *engine_rp)
                            .await?
                    }
                    rbd_migration::MigrationKind::Rbd => {
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
                    if matches!(
                        self.receiver.store,
                        ferry_engine::standby_backend::Standby::Rbd(_)
                    ) {
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
                    let ferry_engine::standby_backend::Standby::Files(files) = st else {
                        return Err(ferry_engine::standby::StoreError::InvalidRequest {
                            reason: "the standby backend is not files".into(),
                        });
                    };
                    let info = files
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
                    files.restore(&image, rp, &o)?;
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

    // ---------------------------------------------------- peer (standby) side

    fn peer_group(&self, caller: AgentId, id: i64) -> CtlResult<Group> {
        let svc = self.service_of_peer(caller)?;
        let g = self.db(|s| s.group(GroupId(id)))?;
        if g.service_id != svc.id {
            return Err(CtlError::Forbidden {
                fingerprint: caller,
                reason: format!("group {id} does not belong to its service"),
            });
        }
        Ok(g)
    }

    /// A standby group the primary may still change (not failed over).
    fn peer_mapped_group(&self, caller: AgentId, id: i64) -> CtlResult<Group> {
        let g = self.peer_group(caller, id)?;
        if g.new_primary || g.state.is_transitional() {
            return Err(CtlError::BadRequest(format!(
                "group '{}' is {}{} here; the mapping no longer accepts changes from the primary",
                g.name,
                g.state,
                if g.new_primary {
                    " (a new primary)"
                } else {
                    ""
                }
            )));
        }
        Ok(g)
    }

    /// Peer: create (idempotently) and map the standby group of a primary.
    pub fn peer_create_group(&self, caller: AgentId, req: &PeerGroupRequest) -> CtlResult<Group> {
        let svc = self.service_of_peer(caller)?;
        if let Some(g) = self
            .groups()?
            .into_iter()
            .find(|g| g.service_id == svc.id && g.remote_group_id == Some(req.primary_group_id))
        {
            return Ok(g);
        }
        let (g, op) = self.db(|s| {
            s.create_group(
                &NewGroup {
                    name: req.name.clone(),
                    role: Role::Standby,
                    service_id: svc.id,
                    remote_group_id: Some(req.primary_group_id),
                    remote_project: req.remote_project.clone(),
                },
                &json!({ "primary": caller.to_hex() }),
            )
        })?;
        self.db(|s| s.finish_operation(op.id, OpResult::Succeeded))?;
        let g = self.db(|s| s.group(g.id))?;
        info!(group = %g.name, "standby group created and mapped");
        Ok(g)
    }

    /// Peer: record resources of a standby group.
    pub async fn peer_add_resources(
        &self,
        caller: AgentId,
        id: i64,
        resources: &[NewResource],
    ) -> CtlResult<()> {
        let g = self.peer_mapped_group(caller, id)?;
        let have = self.db(|s| s.resources(g.id))?;
        let new: Vec<NewResource> = resources
            .iter()
            .filter(|r| !have.iter().any(|h| h.uri == r.uri))
            .cloned()
            .collect();
        // An image belongs to one group: a peer may not claim (and so gain
        // write access to) an image another group already owns here.
        let mut taken = Vec::new();
        for other in self.groups()? {
            if other.role == Role::Standby && other.id != g.id {
                taken.extend(self.db(|s| s.resources(other.id))?);
            }
        }
        for r in &new {
            if let Some(owner) = taken.iter().find(|t| t.standby_target == r.standby_target) {
                return Err(CtlError::Forbidden {
                    fingerprint: caller,
                    reason: format!(
                        "image {} already belongs to another group (resource {})",
                        r.standby_target, owner.uri
                    ),
                });
            }
        }
        // A placeholder of the same size per resource (dr-semantics: "on
        // add, the standby creates a placeholder image"), before recording.
        for r in &new {
            let image = ImageName::new(r.standby_target.clone())
                .map_err(|e| CtlError::BadRequest(e.to_string()))?;
            let size = r.size_bytes;
            self.on_store(format!("creating placeholder {image}"), move |st| {
                st.create_placeholder(&image, size)
            })
            .await?;
        }
        self.db(|s| s.add_resources(g.id, &new))?;
        for r in &new {
            self.db(|s| s.set_resource_state(&r.uri, ResourceState::Ready))?;
        }
        Ok(())
    }

    /// Peer: drop resources of a standby group.
    pub async fn peer_remove_resources(
        &self,
        caller: AgentId,
        id: i64,
        uris: &[String],
    ) -> CtlResult<()> {
        let g = self.peer_mapped_group(caller, id)?;
        let gone: Vec<Resource> = self
            .db(|s| s.resources(g.id))?
            .into_iter()
            .filter(|h| uris.contains(&h.uri))
            .collect();
        // The copies first: a failure leaves the resources listed, and the
        // primary's retry finds them again.
        self.remove_standby_images(&gone).await?;
        let refs: Vec<&str> = gone.iter().map(|r| r.uri.as_str()).collect();
        self.db(|s| s.remove_resources(g.id, &refs))?;
        Ok(())
    }

    /// Runs `f` on the standby store off the async runtime. An image still
    /// held by the writer of a cycle the primary just aborted is waited
    /// for (the receiver drops it when the connection closes).
    async fn on_store<T, F>(&self, what: String, f: F) -> CtlResult<T>
    where
        T: Send + 'static,
        F: Fn(
                &ferry_engine::standby_backend::Standby,
            ) -> Result<T, ferry_engine::standby::StoreError>
            + Send
            + 'static,
    {
        let receiver = self.receiver.clone();
        let mut waited = Duration::ZERO;
        loop {
            let r = receiver.clone();
            let f = &f;
            let result = tokio::task::block_in_place(|| f(&r.store));
            match result {
                Err(ferry_engine::standby::StoreError::Busy { .. }) if waited < STORE_BUSY_WAIT => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    waited += Duration::from_millis(100);
                }
                other => return other.map_err(|e| internal(what)(e.into())),
            }
        }
    }

    /// Deletes the standby copies of `resources` from the standby store
    /// (absent ones are fine).
    async fn remove_standby_images(&self, resources: &[Resource]) -> CtlResult<()> {
        for r in resources {
            let image = ImageName::new(r.standby_target.clone())
                .map_err(|e| CtlError::BadRequest(e.to_string()))?;
            self.on_store(format!("removing standby image {image}"), move |st| {
                st.remove_image(&image)
            })
            .await?;
        }
        Ok(())
    }

    /// Pins (or unpins) engine recovery point `engine_rp` on the standby
    /// copy of every resource of group `gid`.
    async fn pin_standby_point(&self, gid: GroupId, engine_rp: u64, pin: bool) -> CtlResult<()> {
        for r in self.db(|s| s.resources(gid))? {
            let image = ImageName::new(r.standby_target.clone())
                .map_err(|e| CtlError::BadRequest(e.to_string()))?;
            let rp = ferry_protocol::RecoveryPointId(engine_rp);
            let what = format!(
                "{} recovery point {engine_rp} of {image}",
                if pin { "pinning" } else { "unpinning" }
            );
            self.on_store(what, move |st| {
                if pin {
                    st.pin(&image, rp)
                } else {
                    st.unpin(&image, rp)
                }
            })
            .await?;
        }
        Ok(())
    }

    /// Peer: the primary started (true) or stopped (false) replication.
    ///
    /// A stop for a group that is gone here, or that failed over here (a
    /// new primary, whose data the old primary no longer controls), is done
    /// without changing anything (`None`, or the group as it is): the old
    /// primary that comes back after a failover can then stop and delete its
    /// own group.
    pub async fn peer_set_syncing(
        &self,
        caller: AgentId,
        id: i64,
        syncing: bool,
    ) -> CtlResult<Option<Group>> {
        if !syncing {
            match self.peer_group(caller, id) {
                Err(CtlError::Store(StoreError::NotFound { .. })) => return Ok(None),
                Ok(g) if g.new_primary => return Ok(Some(g)),
                _ => {}
            }
        }
        let g = self.peer_mapped_group(caller, id)?;
        let (from, to, res) = if syncing {
            (
                GroupState::Mapped,
                GroupState::Syncing,
                ResourceState::Syncing,
            )
        } else {
            (
                GroupState::Syncing,
                GroupState::Mapped,
                ResourceState::Ready,
            )
        };
        if g.state == from {
            self.db(|s| s.transition(g.id, from, to, None))?;
        } else if g.state != to {
            return Err(StoreError::StateConflict {
                group: g.name,
                expected: from,
                actual: g.state,
            }
            .into());
        }
        for r in self.db(|s| s.resources(g.id))? {
            self.db(|s| s.set_resource_state(&r.uri, res))?;
        }
        if !syncing {
            // Stop sync deletes the standby's replicated data and recovery
            // points (a repeated call finds nothing left to delete).
            for rp in self.db(|s| s.recovery_points(g.id))? {
                self.db(|s| s.delete_recovery_point(rp.id))?;
            }
            let resources = self.db(|s| s.resources(g.id))?;
            self.remove_standby_images(&resources).await?;
        }
        self.db(|s| s.group(g.id)).map(Some)
    }

    /// Peer: record a complete group recovery point on the standby.
    pub async fn peer_add_recovery_point(
        &self,
        caller: AgentId,
        id: i64,
        new: &NewRecoveryPoint,
    ) -> CtlResult<RecoveryPoint> {
        let g = self.peer_mapped_group(caller, id)?;
        let recorded = match self.db(|s| s.recovery_point_by_name(g.id, &new.name)) {
            Ok(rp) => rp,
            Err(_) => {
                // Pinned before it is recorded: a recorded point is restorable.
                self.pin_standby_point(g.id, new.engine_rp, true).await?;
                let rp = self.db(|s| s.create_recovery_point(g.id, new))?;
                self.db(|s| {
                    s.set_recovery_point_state(rp.id, RpState::Creating, RpState::Complete)
                })?
            }
        };
        hold::reach("rp::standby-recorded");
        // Fault injection (tests): recorded here, the answer is lost.
        fail::fail_point!("rp::standby-answer-lost", |_| Err(CtlError::BadRequest(
            "injected: the answer to the primary is lost".into()
        )));
        Ok(recorded)
    }

    /// Peer: delete a recovery point of a standby group (absent = done).
    pub async fn peer_delete_recovery_point(
        &self,
        caller: AgentId,
        id: i64,
        name: &str,
    ) -> CtlResult<()> {
        let g = self.peer_group(caller, id)?;
        if g.new_primary {
            // Not propagated after the standby failed over.
            return Ok(());
        }
        match self.db(|s| s.recovery_point_by_name(g.id, name)) {
            Ok(rp) => {
                self.pin_standby_point(g.id, rp.engine_rp, false).await?;
                self.db(|s| s.delete_recovery_point(rp.id))?;
                Ok(())
            }
            Err(CtlError::Store(StoreError::NotFound { .. })) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Peer: delete a standby group (absent = done), journaled here.
    pub async fn peer_delete_group(&self, caller: AgentId, id: i64) -> CtlResult<()> {
        let g = match self.peer_group(caller, id) {
            Ok(g) => g,
            Err(CtlError::Store(StoreError::NotFound { .. })) => return Ok(()),
            Err(e) => return Err(e),
        };
        if g.new_primary {
            // dr-semantics: deleting the primary group deletes its standby
            // group, "not after S failed over": the old primary's delete
            // succeeds there and leaves this new primary alone.
            info!(group = %g.name, "the old primary deleted its group; this new primary stays");
            return Ok(());
        }
        let t = Transition {
            op: OpKind::DeleteGroup,
            from: g.state,
            during: GroupState::Deleting,
            on_success: Outcome::Deleted,
            on_failure: GroupState::DeleteFailed,
        };
        let op = self.db(|s| s.begin_operation(g.id, &t, &json!({ "by": "primary" })))?;
        let resources = self.db(|s| s.resources(g.id))?;
        if let Err(e) = self.remove_standby_images(&resources).await {
            self.db(|s| s.finish_operation(op.id, OpResult::Failed(error_chain(&e))))?;
            return Err(e);
        }
        self.db(|s| s.finish_operation(op.id, OpResult::Succeeded))?;
        info!(group = %g.name, "standby group deleted at the primary's request");
        Ok(())
    }

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
        let out_path = PathBuf::from(out);
        if matches!(
            self.receiver.store,
            ferry_engine::standby_backend::Standby::Files(_)
        ) && (out_path.exists() || !out_path.is_absolute())
        {
            return Err(CtlError::BadRequest(format!(
                "restore writes a new image: {out} must be an absolute path that does not exist"
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
                match &receiver.store {
                    ferry_engine::standby_backend::Standby::Files(files) => {
                        files.restore(&image, engine_rp, Path::new(&out))?
                    }
                    ferry_engine::standby_backend::Standby::Rbd(rbd) => {
                        rbd.restore(&image, engine_rp, &out)?
                    }
                }
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
        let files = matches!(
            self.receiver.store,
            ferry_engine::standby_backend::Standby::Files(_)
        );
        if files && out_dir.exists() {
            if g.state != GroupState::FailoverFailed {
                return Err(CtlError::BadRequest(format!(
                    "{} exists; move it away first",
                    out_dir.display()
                )));
            }
            // A retry: what is there is the failed attempt's partial output,
            // removed by the operation below.
            warn!(group = %g.name, dir = %out_dir.display(), "retrying a failed failover: replacing the failed attempt's copies");
        }
        let replace_out_dir = files && out_dir.exists();
        let mut replace_images = Vec::new();
        if let ferry_engine::standby_backend::Standby::Rbd(rbd) = &self.receiver.store {
            // The same rule for the RBD images `failover-IMAGE`: a first
            // attempt never takes over an image someone else made; a retry
            // replaces what the failed attempt made (it could not have
            // started if any had existed before it).
            for r in &resources {
                let name = format!("failover-{}", r.standby_target);
                let exists = rbd
                    .volume_exists(&name)
                    .map_err(|e| internal(format!("looking up RBD image {name}"))(e.into()))?;
                if !exists {
                    continue;
                }
                if g.state != GroupState::FailoverFailed {
                    return Err(CtlError::BadRequest(format!(
                        "RBD image {}/{name} exists; move it away first",
                        rbd.pool_name()
                    )));
                }
                warn!(group = %g.name, image = %name, "retrying a failed failover: replacing the failed attempt's copy");
                replace_images.push(name);
            }
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
                if replace_out_dir {
                    match std::fs::remove_dir_all(&dir) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                            return Err(anyhow::Error::new(e).context(format!(
                                "removing the failed failover's copies in {}",
                                dir.display()
                            )))
                        }
                        _ => {}
                    }
                }
                if let ferry_engine::standby_backend::Standby::Rbd(rbd) = &receiver.store {
                    for name in &replace_images {
                        rbd.remove_volume(name).map_err(|e| {
                            anyhow::Error::new(e)
                                .context(format!("removing the failed failover's RBD image {name}"))
                        })?;
                    }
                }
                ferry_engine::testpoint::reach("failover::before-images");
                match &receiver.store {
                    ferry_engine::standby_backend::Standby::Files(files) => {
                        std::fs::create_dir_all(&dir)?;
                        for image in &images {
                            files.restore(image, rp, &dir.join(format!("{image}.raw")))?;
                            // Fault injection (tests): hold or stop between images.
                            ferry_engine::testpoint::reach("failover::after-image");
                        }
                    }
                    ferry_engine::standby_backend::Standby::Rbd(rbd) => {
                        for image in &images {
                            rbd.restore(image, rp, &format!("failover-{image}"))?;
                            ferry_engine::testpoint::reach("failover::after-image");
                        }
                    }
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

    /// Engine recovery points of the standby images of a group (standby side).
    pub fn standby_engine_points(&self, key: &str) -> CtlResult<Value> {
        let g = self.group(key)?;
        let mut out = serde_json::Map::new();
        for r in self.db(|s| s.resources(g.id))? {
            let Ok(image) = ImageName::new(r.standby_target.clone()) else {
                continue;
            };
            let points = self
                .receiver
                .store
                .recovery_points(&image)
                .map(|v| v.iter().map(|p| p.id.get()).collect::<Vec<_>>())
                .unwrap_or_default();
            out.insert(r.standby_target, json!(points));
        }
        Ok(Value::Object(out))
    }
}

/// The newest engine recovery point every image holds (a group recovery
/// point: one id across the group's images).
/// The `kind` label a failed cycle is counted under.
fn error_kind(e: &CtlError) -> ErrorKind {
    match e {
        CtlError::Store(_) => ErrorKind::Store,
        CtlError::BadRequest(_) => ErrorKind::Config,
        CtlError::Peer { .. } | CtlError::Forbidden { .. } => ErrorKind::Peer,
        CtlError::Internal { .. } => ErrorKind::Other,
        CtlError::Replication { source, .. } => match source.as_ref() {
            ReplicateError::Sync(sync) => match sync {
                SyncError::Transport(_) => ErrorKind::Transport,
                SyncError::LinkLost { .. } => ErrorKind::LinkLost,
                SyncError::Framing(_) | SyncError::Peer { .. } | SyncError::Protocol(_) => {
                    ErrorKind::Peer
                }
                SyncError::Source(_) | SyncError::Pipeline(_) => ErrorKind::Source,
            },
            ReplicateError::OpenSource { .. }
            | ReplicateError::Capture(_)
            | ReplicateError::ChangeCheck { .. } => ErrorKind::Source,
            ReplicateError::NothingToReplicate
            | ReplicateError::MixedStandbys { .. }
            | ReplicateError::Config(_) => ErrorKind::Config,
            ReplicateError::Identity(_)
            | ReplicateError::Busy { .. }
            | ReplicateError::StateDir { .. } => ErrorKind::Other,
        },
    }
}

impl LiveSource for Orchestrator {
    fn live(&self) -> LiveSnapshot {
        let groups = self.groups().unwrap_or_default();
        let replicating: Vec<GroupId> = lock(&self.syncs).keys().copied().collect();
        let groups = groups
            .into_iter()
            .map(|g| {
                let progress = self.progress_of(g.id);
                let recovery_points = self
                    .db(|s| s.recovery_points(g.id))
                    .map_or(0, |r| r.len() as u64);
                GroupLive {
                    group: g.name.clone(),
                    rpo_lag_seconds: progress.as_ref().and_then(|p| p.rpo_lag_secs),
                    last_recovery_point: progress.as_ref().and_then(|p| p.last_recovery_point),
                    recovery_points,
                    replicating: replicating.contains(&g.id),
                    images: progress
                        .map(|p| {
                            p.resources
                                .into_iter()
                                .map(|r| ImageLive {
                                    image: r.image,
                                    remaining_bytes: r.bytes_remaining,
                                    rate: r.rate,
                                    rtt_seconds: r.rtt_ms.map(|ms| ms / 1000.0),
                                    cwnd_bytes: r.cwnd,
                                    lost_packets: r.lost_packets,
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                }
            })
            .collect();
        LiveSnapshot {
            groups,
            standby: self.receiver.counters(),
            standby_images: self
                .receiver
                .activity()
                .into_iter()
                .map(|(image, a)| (image.to_string(), a.rate))
                .collect(),
        }
    }
}

fn latest_common_point(receiver: &ReceiverContext, images: &[ImageName]) -> CtlResult<u64> {
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

fn remote_id(g: &Group) -> CtlResult<i64> {
    g.remote_group_id.ok_or_else(|| {
        CtlError::BadRequest(format!(
            "group '{}' is not mapped to a standby group",
            g.name
        ))
    })
}

/// The error and its causes on one line.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        cur = s.source();
    }
    text
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

/// Writes `bytes` to `tmp`, fsyncs, renames over `path`, fsyncs the dir.
pub fn write_durably(tmp: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(tmp, path)?;
    if let Some(parent) = path.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// Whether an operation has ended.
pub fn is_finished(op: &Operation) -> bool {
    op.state != OpState::Running
}

#[cfg(test)]
mod tests {
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
