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
//! - A DR drill (standby) keeps the group replicating; while it runs the
//!   standby refuses the primary's requests that would delete the copies or
//!   the point it uses (stop sync, remove resources, delete group, planned
//!   migration): the operator ends the drill first. An interrupted drill
//!   start or end fails its operation at restart and is retried by the
//!   operator (`drill` again remakes the volumes, `drill --end` removes what
//!   is left).
//! - After a failover the new primary answers the old primary's stop sync
//!   and group delete as done, changing nothing: the old primary can clean
//!   up its own group and never touches the new primary's.
//!
//! Where things are: this file is the core (the struct, `open`, the shared
//! look-ups of groups, resources, services and peer groups, the operation
//! runner and the peer calls); one file per concept holds its own
//! `impl Orchestrator`:
//! - `groups.rs`: create, resources, start/stop sync, delete (primary);
//! - `services.rs`: pairing and services;
//! - `recovery.rs`: recovery after a restart and the background tick;
//! - `policies.rs`, `points.rs`: policies and recovery points;
//! - `qos.rs`: send and receive limits;
//! - `cycle.rs`: the replication loop and one cycle;
//! - `migration.rs` (+ `rbd_migration.rs`): planned migration and its plan;
//! - `failover.rs`: restore and unplanned failover (operator-called);
//! - `drill.rs`: DR drills on the standby (operator-called);
//! - `standby_copies.rs`: the standby store's copies;
//! - `peer.rs`: the peer (standby) side of the peer API;
//! - `progress.rs`: live progress and status;
//! - `rpo_history.rs`: the last hour of each group's RPO lag;
//! - `leases.rs`: which agent drives a group (leases in a multi-agent
//!   site), `placement_round.rs`: which groups this agent contends for,
//!   `handover.rs`: the sources' state a new holder resumes from;
//! - `hold.rs`: the fault-test hold points.

mod cycle;
mod drill;
mod endpoints;
mod failover;
mod groups;
mod handover;
pub mod health;
mod hold;
mod leases;
mod migration;
mod peer;
mod placement_round;
mod points;
mod policies;
mod progress;
mod qos;
mod rbd_migration;
mod recovery;
pub mod replication_rate;
mod reprotect;
pub mod rpo_history;
mod services;
mod standby_copies;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_engine::identity::Identity;
use ferry_engine::qos::RateLimiter;
use ferry_engine::session::receiver::ReceiverContext;
use ferry_engine::transport::TrustStore;
use ferry_protocol::AgentId;
use hyper::Method;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use crate::config::{AgentConfig, ControlStore};
use crate::control::store::shared::rados::RadosLocation;
use crate::control::store::StoreKind;
use crate::control::{
    Group, GroupId, OpResult, OpState, Operation, OperationId, RecoveryPoint, Resource, RpKind,
    Service, Store, StoreError, Timestamp,
};
use crate::metrics::{LiveSource, Metrics};
use crate::replicate::{ReplicateError, Replicator};
use crate::sync_util::lock;
use crate::wire::http::{self, Target};
use crate::wire::tls;

/// Pause after a failed cycle (link down…) before the next attempt.
const RETRY_PAUSE: Duration = Duration::from_secs(2);

/// Failed cycles in a row after which a recovery-point request fails.
const CYCLE_ATTEMPTS: u32 = 3;

/// Timeout of one peer API call.
const PEER_TIMEOUT: Duration = Duration::from_secs(15);

/// Validity of a service key unless asked otherwise.
pub const DEFAULT_KEY_TTL: Duration = Duration::from_secs(3600);

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
    /// Another agent of the site holds the group's lease: the operation
    /// must be sent to it.
    #[error("group '{group}' is driven by agent {} (operator API {}) of this site, not by this one: send the request there", holder.as_deref().unwrap_or("(none known yet)"), api.as_deref().unwrap_or("unknown"))]
    NotDriver {
        /// The group.
        group: String,
        /// The agent holding its lease, as last seen.
        holder: Option<String>,
        /// That agent's operator API address.
        api: Option<String>,
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

pub use crate::service_key::{ServiceKey, ServiceKeyError};
pub use crate::wire::bodies::{
    MigrateStep, PairRequest, PeerGroupRequest, Qos, ReprotectImage, ReprotectPlan, ReprotectStep,
    ReprotectedImage,
};
pub use endpoints::parse as standby_endpoint_list;

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
    /// Bytes sent per second of wall time, averaged over about five
    /// minutes of completed cycles (idle checks count as nothing sent):
    /// what a multi-agent site places groups by.
    pub replication_rate: u64,
    /// The running average behind `replication_rate`.
    #[serde(skip)]
    pub replication_average: replication_rate::ReplicationRate,
    /// Why the last cycle failed, if it did.
    pub last_error: Option<String>,
    /// What kind of error that was (the metrics' `kind` label: transport,
    /// link_lost, peer, source, store, config, other).
    pub last_error_kind: Option<String>,
    /// Failed cycles in a row (0 once a cycle completes).
    pub consecutive_failures: u32,
    /// When the current run of failed cycles began.
    pub failing_since: Option<Timestamp>,
    /// Reconnects the last completed cycle needed (link lost, resumed).
    pub last_cycle_reconnects: u64,
    /// When cycles failed in the last hour (for link flapping).
    #[serde(skip)]
    pub recent_failures: Vec<Timestamp>,
    /// Per resource.
    pub resources: Vec<ResourceProgress>,
}

impl GroupProgress {
    /// Records a completed cycle (committed or idle) that sent `sent`
    /// bytes in `seconds`: the failing run ends.
    fn cycle_completed(&mut self, reconnects: u64, sent: u64, seconds: f64) {
        self.replication_average
            .record(sent, std::time::Instant::now(), seconds);
        self.replication_rate = self.replication_average.bytes_per_sec();
        self.last_error = None;
        self.last_error_kind = None;
        self.consecutive_failures = 0;
        self.failing_since = None;
        self.last_cycle_reconnects = reconnects;
    }

    /// Records a failed cycle of `kind` with `error`, at `now`.
    fn cycle_failed(&mut self, kind: &str, error: String, now: Timestamp) {
        self.last_error = Some(error);
        self.last_error_kind = Some(kind.to_owned());
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        self.failing_since.get_or_insert(now);
        self.recent_failures.retain(|t| now.0 - t.0 < 3_600_000);
        self.recent_failures.push(now);
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
    /// Standby side, per group: the newest instant (primary's clock, ms)
    /// before which the primary's idle checks confirmed this standby holds
    /// every write (in memory: after a restart the newest point's time
    /// stands until the next check).
    confirmed_current: Mutex<HashMap<GroupId, i64>>,
    api_addr: Mutex<Option<SocketAddr>>,
    metrics: Arc<Metrics>,
    /// Standby side, per group: when the primary last called about it, and
    /// last confirmed an idle check (for `ferry health`).
    peer_contact: Mutex<HashMap<GroupId, health::PeerContact>>,
    /// Primary side, per service: whether the peer answered its last call.
    peer_reach: Mutex<HashMap<crate::control::ServiceId, health::PeerReach>>,
    /// When this agent started (the baseline of "no word from the primary").
    started_at: Timestamp,
    /// Held while a pin's holder goes (a drill ending, a recovery point
    /// deleted): each checks whether the other still holds the point and
    /// unpins, so one of them always unpins a point both held.
    unpin_lock: tokio::sync::Mutex<()>,
    /// Re-protects whose old-primary side installs its copies in the
    /// background, by operation: running (`None`) or failed (the reason).
    reprotect_tasks: Mutex<HashMap<OperationId, Option<String>>>,
    /// The last hour of every group's RPO lag (for the console's chart).
    rpo_history: Mutex<rpo_history::RpoHistory>,
    /// The groups' leases in a multi-agent site (`None`: this agent drives
    /// all its groups).
    leases: Option<leases::Leases>,
    /// Bumped each time an operation of this agent finishes: what a
    /// waiting `GET /v1/operations/{id}?wait_ms=` wakes on.
    op_finished: tokio::sync::watch::Sender<u64>,
    /// Primary side, per service: which of the standby site's agents to
    /// dial first (`endpoints.rs`).
    endpoints: Mutex<endpoints::EndpointPicker>,
}

/// Whether a peer call found nobody at its endpoint (no connection, or a
/// name that does not resolve), as opposed to an answer.
fn unreachable<T>(result: &CtlResult<T>) -> bool {
    matches!(
        result,
        Err(CtlError::Peer {
            source: Some(_),
            ..
        })
    ) || matches!(result, Err(CtlError::Peer { reason, .. }) if reason == UNRESOLVED)
}

/// The reason of a peer error for an endpoint that does not resolve.
const UNRESOLVED: &str = "the endpoint does not resolve";

fn internal(what: impl Into<String>) -> impl FnOnce(anyhow::Error) -> CtlError {
    let what = what.into();
    move |source| CtlError::Internal { what, source }
}

impl Orchestrator {
    /// Opens the control store, loads the identity, trusts every paired
    /// peer, and applies persisted QoS.
    pub fn open(cfg: OrchestratorConfig) -> CtlResult<Arc<Self>> {
        let kind = match &cfg.config.control_store {
            ControlStore::Sqlite => StoreKind::Sqlite,
            ControlStore::Rados {
                pool, namespace, ..
            } => StoreKind::Rados(RadosLocation {
                cluster: cfg.config.ceph.clone(),
                pool: pool.clone(),
                namespace: namespace.clone(),
            }),
        };
        let store = Store::open_kind(&cfg.dir, &kind)?;
        let leases = leases::Leases::from_config(&cfg.config.control_store, &cfg.config.ceph);
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
            reprotect_tasks: Mutex::new(HashMap::new()),
            rp_floor: Mutex::new(HashMap::new()),
            confirmed_current: Mutex::new(HashMap::new()),
            api_addr: Mutex::new(None),
            peer_contact: Mutex::new(HashMap::new()),
            op_finished: tokio::sync::watch::Sender::new(0),
            peer_reach: Mutex::new(HashMap::new()),
            started_at: Timestamp::now(),
            metrics: cfg.metrics,
            unpin_lock: tokio::sync::Mutex::new(()),
            rpo_history: Mutex::new(rpo_history::RpoHistory::default()),
            leases,
            endpoints: Mutex::new(endpoints::EndpointPicker::default()),
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

    async fn resolve(endpoint: &str) -> CtlResult<SocketAddr> {
        tokio::net::lookup_host(endpoint)
            .await
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| CtlError::Peer {
                addr: endpoint.to_owned(),
                reason: UNRESOLVED.into(),
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
        timeout: Duration,
    ) -> CtlResult<Value> {
        let addr = Self::resolve(endpoint).await?;
        let config = tls::client_config(&self.identity, fingerprint)
            .map_err(|e| internal("peer TLS configuration")(e.into()))?;
        let target = Target::Tls {
            addr,
            config: Arc::new(config),
        };
        let reply = http::call(&target, method, path, None, body, timeout)
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
        self.peer_within(svc, method, path, body, PEER_TIMEOUT)
            .await
    }

    /// [`Orchestrator::peer`] with its own timeout. Tries the standby
    /// site's endpoints in the picker's order: one that cannot be reached
    /// moves the service on to the next, an answer (a refusal too) ends
    /// the call.
    async fn peer_within(
        &self,
        svc: &Service,
        method: Method,
        path: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> CtlResult<Value> {
        let mut result = Err(CtlError::Peer {
            addr: svc.remote_endpoint.clone(),
            reason: "the service lists no standby endpoint".into(),
            source: None,
        });
        for endpoint in self.standby_endpoints(svc) {
            result = self
                .peer_raw(
                    &endpoint,
                    svc.remote_fingerprint,
                    method.clone(),
                    path,
                    body,
                    timeout,
                )
                .await;
            if unreachable(&result) {
                self.standby_endpoint_failed(svc, &endpoint);
                continue;
            }
            self.standby_endpoint_worked(svc, &endpoint);
            if let Ok(reply) = &result {
                self.learn_standby_endpoints(svc, &endpoint, reply);
            }
            break;
        }
        // Whether the peer answered at all (a refusal is an answer), for
        // `ferry health`'s "standby unreachable for longer than N".
        let unreachable = match &result {
            Err(
                e @ CtlError::Peer {
                    source: Some(_), ..
                },
            ) => Some(error_chain(e)),
            _ => None,
        };
        lock(&self.peer_reach)
            .entry(svc.id)
            .or_default()
            .record(unreachable, Timestamp::now());
        result
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

    /// All resources of all groups.
    pub fn resources(&self) -> CtlResult<Vec<Resource>> {
        let groups = self.groups()?;
        let mut out = Vec::new();
        for g in groups {
            out.extend(self.db(|s| s.resources(g.id))?);
        }
        Ok(out)
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
        self.note_running(op, true);
        // With leases, the operation is part of its group's work: it ends
        // when the group's lease stops the group (see `leases.rs`).
        let group = self.leases.as_ref().and_then(|leases| {
            let gid = self.db(|s| s.operation(op)).ok()?.group_id?;
            Some((leases.work.clone(), gid))
        });
        let run = async move {
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
            me.note_running(op, false);
            me.op_finished.send_modify(|finished| *finished += 1);
        };
        match group {
            Some((work, gid)) => work.spawn(gid, Some(op), run),
            None => {
                tokio::spawn(run);
            }
        }
    }

    /// Takes the control store's lock and reads from it (the watchdog's
    /// health probe: a store wedged on a hung disk never answers).
    pub fn probe_store(&self) -> CtlResult<()> {
        self.db(|s| s.groups()).map(|_| ())
    }

    /// One journal entry.
    pub fn operation(&self, id: OperationId) -> CtlResult<Operation> {
        self.db(|s| s.operation(id))
    }

    /// Journal entry `id` once it is no longer running, or as it stands
    /// after `wait` (a long poll: `--wait` learns of the end at once
    /// instead of at its next poll). Woken by this agent's operations
    /// ending, and re-read every second for one another agent of the site
    /// carries out (a shared store).
    pub async fn operation_when_done(
        &self,
        id: OperationId,
        wait: Duration,
    ) -> CtlResult<Operation> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut finished = self.op_finished.subscribe();
        loop {
            finished.mark_unchanged();
            let op = self.operation(id)?;
            let now = tokio::time::Instant::now();
            if op.state != OpState::Running || now >= deadline {
                return Ok(op);
            }
            let slice = (deadline - now).min(Duration::from_secs(1));
            // A timeout or a change: either way the journal is read again.
            let _ = tokio::time::timeout(slice, finished.changed()).await;
        }
    }

    /// The newest journal entries.
    pub fn operations(&self, limit: usize) -> CtlResult<Vec<Operation>> {
        self.db(|s| s.recent_operations(limit))
    }

    /// The newest `limit` operations of one group, newest first.
    pub fn operations_of_group(&self, key: &str, limit: usize) -> CtlResult<Vec<Operation>> {
        let g = self.group(key)?;
        let mut ops = self.db(|s| s.operations_of_group(g.id))?;
        ops.reverse();
        ops.truncate(limit);
        Ok(ops)
    }

    fn peer_group(&self, caller: AgentId, id: i64) -> CtlResult<Group> {
        let svc = self.service_of_peer(caller)?;
        let g = self.db(|s| s.group(GroupId(id)))?;
        if g.service_id != svc.id {
            return Err(CtlError::Forbidden {
                fingerprint: caller,
                reason: format!("group {id} does not belong to its service"),
            });
        }
        lock(&self.peer_contact).entry(g.id).or_default().last = Some(Timestamp::now());
        Ok(g)
    }
}

fn remote_id(g: &Group) -> CtlResult<i64> {
    g.remote_group_id.ok_or_else(|| {
        CtlError::BadRequest(format!(
            "group '{}' is not mapped to a standby group",
            g.name
        ))
    })
}

/// The error and its causes on one line (kept here for the orchestrator's
/// callers; it lives with the logging).
pub use crate::logging::error_chain;

/// Whether an operation has ended.
pub fn is_finished(op: &Operation) -> bool {
    op.state != OpState::Running
}
