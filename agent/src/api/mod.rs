//! The agent's HTTP/JSON APIs (axum), documented in `agent/openapi.yaml`:
//! - the **operator API** on a loopback address (`[api] listen`; plain HTTP,
//!   or HTTPS with `[api] tls`, see `wire/api_tls.rs`), every route but
//!   `GET /v1/health` behind `Authorization: Bearer TOKEN` (the token
//!   `ferry-agent init` writes to `DIR/api.token`, mode 0600, or the
//!   read-only token that may only `GET`, see `auth.rs`); the bound address
//!   is written to `DIR/api.addr` so `ferry --dir DIR` finds it;
//! - the **peer API** (`/v1/peer/…`) that agents call on each other, over
//!   mutual TLS on TCP at the agent's QUIC listen address (see `wire/tls.rs`):
//!   pairing needs the one-time secret of a service key, every other route a
//!   caller whose certificate fingerprint belongs to a paired service.
//!
//! Errors are `{"error": TEXT}` plus, for a refusal of the allowed-state
//! table, `"refusal": {op, subject, role, state, reason, rule, context}`
//! with HTTP 409; nothing is changed by a refused request.

// The body, HTTP client and TLS types live in `wire` (below this layer and
// the orchestrator); re-exported so `api::bodies`, `api::http` and
// `api::tls` keep working.
pub use crate::wire::{api_tls, bodies, http, tls};

pub mod auth;
pub mod forward;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::RngCore;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::control::{NewRecoveryPoint, OperationId, RpoThresholds, StoreError};
use crate::orchestrator::{
    CtlError, MigrateStep, Orchestrator, PairRequest, PeerGroupRequest, Qos, ReprotectStep,
    DEFAULT_KEY_TTL,
};
use bodies::{
    AddBody, BindBody, CreateGroupBody, CreateServiceBody, DrillBody, FailoverBody, KeyBody,
    PeerResources, PolicyBody, RestoreBody, RpBody, SyncBody, UpdateGroupBody, UpdateServiceBody,
    UrisBody,
};

/// File holding the operator API token in the agent directory.
pub const TOKEN_FILE: &str = "api.token";
/// File holding the operator API's bound address in the agent directory.
pub const ADDR_FILE: &str = "api.addr";

/// Why the API token or address file could not be handled.
#[derive(Debug, thiserror::Error)]
pub enum ApiFileError {
    /// Reading or writing a file failed.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The token file can be read by other users: anyone who reads it may
    /// drive the agent, so the agent refuses to use it.
    #[error("API token {path} has mode {mode:o}: it must not be readable by group or others (chmod 600 it)")]
    InsecureToken {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

/// Creates `DIR/api.token` (mode 0600) unless it exists; returns the token.
/// An existing token file readable by group or others is refused.
pub fn ensure_token(dir: &Path) -> Result<String, ApiFileError> {
    ensure_token_file(&dir.join(TOKEN_FILE))
}

/// Creates the token file `path` (mode 0600) unless it exists; returns the
/// token. An existing token file readable by group or others is refused.
pub fn ensure_token_file(path: &Path) -> Result<String, ApiFileError> {
    use std::os::unix::fs::PermissionsExt;
    let path = path.to_path_buf();
    if let Ok(meta) = std::fs::metadata(&path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(ApiFileError::InsecureToken { path, mode });
        }
    }
    if let Ok(text) = std::fs::read_to_string(&path) {
        let t = text.trim().to_owned();
        if !t.is_empty() {
            return Ok(t);
        }
    }
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    let token = hex::encode(bytes);
    let io = |what| {
        let path = path.clone();
        move |source| ApiFileError::Io { what, path, source }
    };
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io("creating"))?;
        f.write_all(format!("{token}\n").as_bytes())
            .map_err(io("writing"))?;
        f.sync_all().map_err(io("syncing"))?;
    }
    Ok(token)
}

/// Reads `DIR/api.token`.
pub fn read_token(dir: &Path) -> Result<String, ApiFileError> {
    let path = dir.join(TOKEN_FILE);
    std::fs::read_to_string(&path)
        .map(|t| t.trim().to_owned())
        .map_err(|source| ApiFileError::Io {
            what: "reading",
            path,
            source,
        })
}

/// File holding, while the operator API serves TLS, the fingerprint of its
/// certificate (clients pin it).
pub const FINGERPRINT_FILE: &str = "api.fingerprint";

/// Writes `DIR/api.addr` (atomically): `ADDR` for plain HTTP; with TLS
/// (`tls`: the served certificate's fingerprint) `https://ADDR`, and the
/// fingerprint to `DIR/api.fingerprint` (removed when TLS is off, so no
/// stale pin outlives the setting).
pub fn write_addr(
    dir: &Path,
    addr: SocketAddr,
    tls: Option<ferry_protocol::AgentId>,
) -> Result<(), ApiFileError> {
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        let tmp = dir.join(format!("{name}.tmp"));
        crate::durable::write_durably(&tmp, &path, text.as_bytes()).map_err(|source| {
            ApiFileError::Io {
                what: "writing",
                path,
                source,
            }
        })
    };
    let fp_path = dir.join(FINGERPRINT_FILE);
    match tls {
        Some(fp) => {
            write(FINGERPRINT_FILE, format!("{fp}\n"))?;
            write(ADDR_FILE, format!("https://{addr}\n"))
        }
        None => {
            match std::fs::remove_file(&fp_path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(ApiFileError::Io {
                        what: "removing",
                        path: fp_path,
                        source,
                    })
                }
            }
            write(ADDR_FILE, format!("{addr}\n"))
        }
    }
}

/// Reads `DIR/api.addr`.
pub fn read_addr(dir: &Path) -> Result<String, ApiFileError> {
    let path = dir.join(ADDR_FILE);
    std::fs::read_to_string(&path)
        .map(|t| t.trim().to_owned())
        .map_err(|source| ApiFileError::Io {
            what: "reading (is the agent running?)",
            path,
            source,
        })
}

/// An error answer.
pub struct ApiError(CtlError);

impl From<CtlError> for ApiError {
    fn from(e: CtlError) -> Self {
        Self(e)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        Self(CtlError::Store(e))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let text = crate::orchestrator::error_chain(&self.0);
        let (status, refusal) = match &self.0 {
            CtlError::Store(StoreError::Refused(r)) => (StatusCode::CONFLICT, Some(r.clone())),
            CtlError::Store(StoreError::NotFound { .. }) => (StatusCode::NOT_FOUND, None),
            CtlError::Store(
                StoreError::NameTaken { .. }
                | StoreError::ResourceInGroup { .. }
                | StoreError::ResourceNotInGroup { .. }
                | StoreError::TooManyResources { .. }
                | StoreError::TooManyManualRecoveryPoints { .. }
                | StoreError::RecoveryPointExists { .. }
                | StoreError::StateConflict { .. }
                | StoreError::RpStateConflict { .. }
                | StoreError::GroupBusy { .. }
                | StoreError::PolicyAlreadyBound { .. }
                | StoreError::NoPolicyBound { .. }
                | StoreError::PolicyInUse { .. }
                | StoreError::PairingSecret { .. },
            ) => (StatusCode::CONFLICT, None),
            CtlError::Store(_) | CtlError::Internal { .. } | CtlError::Replication { .. } => {
                (StatusCode::INTERNAL_SERVER_ERROR, None)
            }
            CtlError::BadRequest(_) => (StatusCode::BAD_REQUEST, None),
            CtlError::Peer { .. } => (StatusCode::BAD_GATEWAY, None),
            CtlError::Forbidden { .. } => (StatusCode::FORBIDDEN, None),
            CtlError::NotDriver { .. } => (StatusCode::CONFLICT, None),
        };
        let mut body = json!({ "error": text });
        let mut elsewhere = None;
        if let CtlError::NotDriver { holder, api, .. } = &self.0 {
            body["driven_by"] = json!({ "agent": holder, "api": api });
            elsewhere = api.as_deref().and_then(|a| a.parse::<SocketAddr>().ok());
        }
        if let Some(r) = refusal {
            body["refusal"] = serde_json::to_value(r).unwrap_or(Value::Null);
        }
        let mut response = (status, Json(body)).into_response();
        if let Some(api) = elsewhere {
            response
                .extensions_mut()
                .insert(forward::DrivenElsewhere { api });
        }
        response
    }
}

type ApiResult = Result<Response, ApiError>;

fn ok(v: impl serde::Serialize) -> ApiResult {
    Ok((StatusCode::OK, Json(v)).into_response())
}

fn accepted(op: crate::control::Operation) -> ApiResult {
    Ok((StatusCode::ACCEPTED, Json(json!({ "operation": op }))).into_response())
}

#[derive(Clone)]
struct AppState {
    orch: Arc<Orchestrator>,
}

/// The operator API's routes (every path, for the OpenAPI check).
pub const OPERATOR_ROUTES: &[&str] = &[
    "/v1/health",
    "/v1/status",
    "/v1/service/key",
    "/v1/services",
    "/v1/services/{service}",
    "/v1/services/{service}/verify",
    "/v1/groups",
    "/v1/groups/{group}",
    "/v1/groups/{group}/resources",
    "/v1/groups/{group}/resources/remove",
    "/v1/groups/{group}/start",
    "/v1/groups/{group}/stop",
    "/v1/groups/{group}/recovery-points",
    "/v1/groups/{group}/recovery-points/{rp}",
    "/v1/groups/{group}/standby-points",
    "/v1/groups/{group}/policy",
    "/v1/groups/{group}/restore",
    "/v1/groups/{group}/failover",
    "/v1/resources",
    "/v1/policies",
    "/v1/policies/{policy}",
    "/v1/operations",
    "/v1/operations/{id}",
    "/v1/qos",
    "/v1/groups/{group}/migrate",
    "/v1/groups/{group}/drill",
    "/v1/groups/{group}/reprotect",
    "/v1/health/groups",
    "/v1/groups/{group}/rpo-history",
];

/// The peer API's routes.
pub const PEER_ROUTES: &[&str] = &[
    "/v1/peer/pair",
    "/v1/peer/ping",
    "/v1/peer/groups",
    "/v1/peer/groups/{id}",
    "/v1/peer/groups/{id}/resources",
    "/v1/peer/groups/{id}/resources/remove",
    "/v1/peer/groups/{id}/sync",
    "/v1/peer/groups/{id}/recovery-points",
    "/v1/peer/groups/{id}/recovery-points/{rp}",
    "/v1/peer/groups/{id}/migrate",
    "/v1/peer/groups/{id}/newest-point",
    "/v1/peer/groups/{id}/reprotect",
];

/// The operator API router; with `console` (`[console] enabled`) also the
/// web console under `/ui/`, whose session cookie the gate then accepts.
pub fn operator_router(
    orch: Arc<Orchestrator>,
    tokens: crate::wire::tokens::Tokens,
    console: Option<Arc<crate::console::Console>>,
) -> Router {
    let orch_name = orch.site_agent_name();
    let state = AppState { orch };
    let gate = auth::Gate {
        tokens,
        console: console.clone(),
    };
    let r = OPERATOR_ROUTES;
    let protected = Router::new()
        .route(r[1], get(status))
        .route(r[2], post(service_key))
        .route(r[3], get(list_services).post(create_service))
        .route(
            r[4],
            get(show_service)
                .patch(update_service)
                .delete(delete_service),
        )
        .route(r[5], post(verify_service))
        .route(r[6], get(list_groups).post(create_group))
        .route(
            r[7],
            get(show_group).patch(update_group).delete(delete_group),
        )
        .route(r[8], get(group_resources).post(add_resources))
        .route(r[9], post(remove_resources))
        .route(r[10], post(start_sync))
        .route(r[11], post(stop_sync))
        .route(r[12], get(list_rps).post(create_rp))
        .route(r[13], axum::routing::delete(delete_rp))
        .route(r[14], get(standby_points))
        .route(r[15], axum::routing::put(bind_policy).delete(unbind_policy))
        .route(r[16], post(restore))
        .route(r[17], post(failover))
        .route(r[18], get(list_resources))
        .route(r[19], get(list_policies).post(create_policy))
        .route(r[20], get(show_policy).delete(delete_policy))
        .route(r[21], get(list_operations))
        .route(r[22], get(show_operation))
        .route(r[23], get(get_qos).put(set_qos))
        .route(r[24], post(migrate))
        .route(r[25], post(drill).delete(end_drill))
        .route(r[26], post(reprotect))
        .route(r[27], get(group_health))
        .route(r[28], get(rpo_history))
        // Inside the token check: only an authorised request is forwarded.
        .route_layer(middleware::from_fn_with_state(
            orch_name,
            forward::forward_to_driver,
        ))
        .route_layer(middleware::from_fn_with_state(gate, auth::require_token));
    let api = Router::new()
        .route(r[0], get(health))
        .merge(protected)
        .with_state(state);
    match console {
        Some(console) => api.merge(crate::console::router(console)),
        None => api,
    }
}

async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn group_health(
    State(s): State<AppState>,
    Query(q): Query<crate::orchestrator::health::HealthParams>,
) -> ApiResult {
    s.orch.probe_standbys().await?;
    ok(s.orch.health(&q)?)
}

async fn rpo_history(State(s): State<AppState>, UrlPath(name): UrlPath<String>) -> ApiResult {
    ok(s.orch.rpo_history(&name)?)
}

async fn status(State(s): State<AppState>) -> ApiResult {
    ok(s.orch.status()?)
}

async fn service_key(State(s): State<AppState>, Json(b): Json<KeyBody>) -> ApiResult {
    let ttl = b
        .ttl_secs
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_KEY_TTL);
    let key = s.orch.issue_service_key(b.endpoint, ttl)?;
    ok(
        json!({ "key": key.encode(), "endpoint": key.endpoint, "endpoints": crate::orchestrator::standby_endpoint_list(&key.endpoint), "fingerprint": key.fingerprint, "expires_at": key.expires_at }),
    )
}

async fn list_services(State(s): State<AppState>) -> ApiResult {
    let services: Vec<Value> = s.orch.services()?.iter().map(service_json).collect();
    ok(services)
}

/// A service as the API shows it: its fields, and `remote_endpoints`, the
/// standby site's agents `remote_endpoint` lists (one, or several separated
/// by commas).
fn service_json(svc: &crate::control::Service) -> Value {
    let mut v = serde_json::to_value(svc).unwrap_or(Value::Null);
    if let Some(map) = v.as_object_mut() {
        map.insert(
            "remote_endpoints".into(),
            json!(crate::orchestrator::standby_endpoint_list(
                &svc.remote_endpoint
            )),
        );
    }
    v
}

async fn create_service(State(s): State<AppState>, Json(b): Json<CreateServiceBody>) -> ApiResult {
    let svc = s
        .orch
        .create_service(&b.name, &b.key, b.local_endpoint)
        .await?;
    Ok((StatusCode::CREATED, Json(service_json(&svc))).into_response())
}

async fn show_service(State(s): State<AppState>, UrlPath(name): UrlPath<String>) -> ApiResult {
    ok(service_json(&s.orch.service(&name)?))
}

async fn update_service(
    State(s): State<AppState>,
    UrlPath(name): UrlPath<String>,
    Json(b): Json<UpdateServiceBody>,
) -> ApiResult {
    ok(service_json(&s.orch.update_service(
        &name,
        b.local_endpoint,
        b.remote_endpoint,
    )?))
}

async fn delete_service(State(s): State<AppState>, UrlPath(name): UrlPath<String>) -> ApiResult {
    s.orch.delete_service(&name)?;
    ok(json!({ "deleted": name }))
}

async fn verify_service(State(s): State<AppState>, UrlPath(name): UrlPath<String>) -> ApiResult {
    ok(s.orch.verify_service(&name).await?)
}

async fn list_groups(State(s): State<AppState>) -> ApiResult {
    ok(s.orch.groups()?)
}

async fn create_group(State(s): State<AppState>, Json(b): Json<CreateGroupBody>) -> ApiResult {
    let rpo = RpoThresholds::new(b.rpo_warn_secs, b.rpo_crit_secs)
        .map_err(|e| CtlError::BadRequest(e.to_string()))?;
    accepted(
        s.orch
            .create_group(&b.name, b.service.as_deref(), &b.remote_project, rpo)?,
    )
}

async fn update_group(
    State(s): State<AppState>,
    UrlPath(name): UrlPath<String>,
    Json(b): Json<UpdateGroupBody>,
) -> ApiResult {
    ok(s.orch
        .update_group(&name, b.rpo_warn_secs, b.rpo_crit_secs)?)
}

async fn show_group(State(s): State<AppState>, UrlPath(name): UrlPath<String>) -> ApiResult {
    ok(s.orch.group_detail(&name)?)
}

async fn delete_group(State(s): State<AppState>, UrlPath(name): UrlPath<String>) -> ApiResult {
    accepted(s.orch.delete_group(&name)?)
}

async fn group_resources(State(s): State<AppState>, UrlPath(name): UrlPath<String>) -> ApiResult {
    let detail = s.orch.group_detail(&name)?;
    ok(detail.get("resources").cloned().unwrap_or(Value::Null))
}

async fn add_resources(
    State(s): State<AppState>,
    UrlPath(name): UrlPath<String>,
    Json(b): Json<AddBody>,
) -> ApiResult {
    accepted(s.orch.add_resources(&name, &b.uris, b.vm.as_deref())?)
}

async fn remove_resources(
    State(s): State<AppState>,
    UrlPath(name): UrlPath<String>,
    Json(b): Json<UrisBody>,
) -> ApiResult {
    accepted(s.orch.remove_resources(&name, &b.uris)?)
}

async fn start_sync(State(s): State<AppState>, UrlPath(name): UrlPath<String>) -> ApiResult {
    accepted(s.orch.start_sync(&name)?)
}

async fn stop_sync(State(s): State<AppState>, UrlPath(name): UrlPath<String>) -> ApiResult {
    accepted(s.orch.stop_sync(&name)?)
}

async fn list_rps(State(s): State<AppState>, UrlPath(name): UrlPath<String>) -> ApiResult {
    ok(s.orch.recovery_points(&name)?)
}

async fn create_rp(
    State(s): State<AppState>,
    UrlPath(name): UrlPath<String>,
    Json(b): Json<RpBody>,
) -> ApiResult {
    accepted(s.orch.create_recovery_point(&name, b.name)?)
}

async fn delete_rp(
    State(s): State<AppState>,
    UrlPath((name, rp)): UrlPath<(String, String)>,
) -> ApiResult {
    accepted(s.orch.delete_recovery_point(&name, &rp)?)
}

async fn standby_points(State(s): State<AppState>, UrlPath(name): UrlPath<String>) -> ApiResult {
    ok(s.orch.standby_engine_points(&name)?)
}

async fn bind_policy(
    State(s): State<AppState>,
    UrlPath(name): UrlPath<String>,
    Json(b): Json<BindBody>,
) -> ApiResult {
    ok(json!({ "operation": s.orch.bind_policy(&name, &b.policy, b.retention)? }))
}

async fn unbind_policy(State(s): State<AppState>, UrlPath(name): UrlPath<String>) -> ApiResult {
    ok(json!({ "operation": s.orch.unbind_policy(&name)? }))
}

async fn restore(
    State(s): State<AppState>,
    UrlPath(name): UrlPath<String>,
    Json(b): Json<RestoreBody>,
) -> ApiResult {
    accepted(
        s.orch
            .restore(&name, &b.resource, &b.recovery_point, &b.out, b.copy)?,
    )
}

async fn failover(
    State(s): State<AppState>,
    UrlPath(name): UrlPath<String>,
    Json(b): Json<FailoverBody>,
) -> ApiResult {
    accepted(
        s.orch
            .failover(&name, b.recovery_point.as_deref(), b.copy)?,
    )
}

async fn drill(
    State(s): State<AppState>,
    UrlPath(name): UrlPath<String>,
    Json(b): Json<DrillBody>,
) -> ApiResult {
    accepted(s.orch.drill(&name, b.recovery_point.as_deref())?)
}

async fn end_drill(State(s): State<AppState>, UrlPath(name): UrlPath<String>) -> ApiResult {
    accepted(s.orch.end_drill(&name)?)
}

async fn reprotect(State(s): State<AppState>, UrlPath(name): UrlPath<String>) -> ApiResult {
    accepted(s.orch.reprotect(&name)?)
}

async fn migrate(State(s): State<AppState>, UrlPath(name): UrlPath<String>) -> ApiResult {
    accepted(s.orch.migrate(&name)?)
}

async fn list_resources(State(s): State<AppState>) -> ApiResult {
    ok(s.orch.resources()?)
}

async fn list_policies(State(s): State<AppState>) -> ApiResult {
    ok(s.orch.policies()?)
}

async fn create_policy(State(s): State<AppState>, Json(b): Json<PolicyBody>) -> ApiResult {
    Ok((
        StatusCode::CREATED,
        Json(s.orch.create_policy(&b.name, &b.schedule)?),
    )
        .into_response())
}

async fn show_policy(State(s): State<AppState>, UrlPath(name): UrlPath<String>) -> ApiResult {
    let p = s
        .orch
        .policies()?
        .into_iter()
        .find(|p| p.name == name)
        .ok_or(CtlError::Store(StoreError::NotFound {
            what: "policy",
            key: name,
        }))?;
    ok(p)
}

async fn delete_policy(State(s): State<AppState>, UrlPath(name): UrlPath<String>) -> ApiResult {
    s.orch.delete_policy(&name)?;
    ok(json!({ "deleted": name }))
}

#[derive(Deserialize)]
struct OpsQuery {
    limit: Option<usize>,
    /// Only this group's (name or id).
    group: Option<String>,
}

async fn list_operations(State(s): State<AppState>, Query(q): Query<OpsQuery>) -> ApiResult {
    let limit = q.limit.unwrap_or(50);
    match q.group {
        Some(group) => ok(s.orch.operations_of_group(&group, limit)?),
        None => ok(s.orch.operations(limit)?),
    }
}

/// `GET /v1/operations/{id}`'s query.
#[derive(Deserialize)]
struct OpWaitQuery {
    /// Answer once the operation is no longer running, or after this many
    /// milliseconds (at most [`MAX_OP_WAIT_MS`]); absent: at once.
    wait_ms: Option<u64>,
}

/// The longest `wait_ms` one request may hold the connection.
const MAX_OP_WAIT_MS: u64 = 30_000;

async fn show_operation(
    State(s): State<AppState>,
    UrlPath(id): UrlPath<i64>,
    Query(q): Query<OpWaitQuery>,
) -> ApiResult {
    let wait = Duration::from_millis(q.wait_ms.unwrap_or(0).min(MAX_OP_WAIT_MS));
    ok(s.orch.operation_when_done(OperationId(id), wait).await?)
}

async fn get_qos(State(s): State<AppState>) -> ApiResult {
    ok(s.orch.qos())
}

async fn set_qos(State(s): State<AppState>, Json(q): Json<Qos>) -> ApiResult {
    ok(s.orch.set_qos(&q)?)
}

// ------------------------------------------------------------------ peer API

type Peer = ConnectInfo<tls::PeerAddr>;

/// The peer API router (serve with `TlsListener` and
/// `into_make_service_with_connect_info::<tls::PeerAddr>()`).
pub fn peer_router(orch: Arc<Orchestrator>) -> Router {
    let r = PEER_ROUTES;
    Router::new()
        .route(r[0], post(peer_pair))
        .route(r[1], get(peer_ping))
        .route(r[2], post(peer_create_group))
        .route(r[3], axum::routing::delete(peer_delete_group))
        .route(r[4], post(peer_add_resources))
        .route(r[5], post(peer_remove_resources))
        .route(r[6], post(peer_sync))
        .route(r[7], post(peer_add_rp))
        .route(r[8], axum::routing::delete(peer_delete_rp))
        .route(r[9], post(peer_migrate))
        .route(r[10], get(peer_newest_point))
        .route(r[11], post(peer_reprotect))
        .with_state(orch)
}

fn trusted(orch: &Orchestrator, peer: &tls::PeerAddr) -> Result<(), ApiError> {
    orch.service_of_peer(peer.fingerprint)?;
    Ok(())
}

async fn peer_pair(
    State(o): State<Arc<Orchestrator>>,
    ConnectInfo(peer): Peer,
    Json(b): Json<PairRequest>,
) -> ApiResult {
    let svc = o.accept_pairing(peer.fingerprint, &b)?;
    ok(json!({ "fingerprint": o.fingerprint().to_hex(), "service": svc.name }))
}

async fn peer_ping(State(o): State<Arc<Orchestrator>>, ConnectInfo(peer): Peer) -> ApiResult {
    let svc = o.service_of_peer(peer.fingerprint)?;
    let mut reply = json!({ "fingerprint": o.fingerprint().to_hex(), "service": svc.name });
    with_site_endpoints(&o, &mut reply);
    ok(reply)
}

/// A standby site of several agents (its control state in RADOS) tells the
/// primary every live agent's peer endpoint (`endpoints`), which the
/// primary's service follows.
fn with_site_endpoints(o: &Orchestrator, reply: &mut Value) {
    if let Some(list) = o.site_peer_endpoints().filter(|l| !l.is_empty()) {
        reply["endpoints"] = json!(list);
    }
}

async fn peer_create_group(
    State(o): State<Arc<Orchestrator>>,
    ConnectInfo(peer): Peer,
    Json(b): Json<PeerGroupRequest>,
) -> ApiResult {
    let g = o.peer_create_group(peer.fingerprint, &b)?;
    ok(json!({ "group_id": g.id, "state": g.state }))
}

async fn peer_delete_group(
    State(o): State<Arc<Orchestrator>>,
    ConnectInfo(peer): Peer,
    UrlPath(id): UrlPath<i64>,
) -> ApiResult {
    trusted(&o, &peer)?;
    o.peer_delete_group(peer.fingerprint, id).await?;
    ok(json!({ "deleted": id }))
}

async fn peer_add_resources(
    State(o): State<Arc<Orchestrator>>,
    ConnectInfo(peer): Peer,
    UrlPath(id): UrlPath<i64>,
    Json(b): Json<PeerResources>,
) -> ApiResult {
    o.peer_add_resources(peer.fingerprint, id, &b.resources)
        .await?;
    ok(json!({ "added": b.resources.len() }))
}

async fn peer_remove_resources(
    State(o): State<Arc<Orchestrator>>,
    ConnectInfo(peer): Peer,
    UrlPath(id): UrlPath<i64>,
    Json(b): Json<UrisBody>,
) -> ApiResult {
    o.peer_remove_resources(peer.fingerprint, id, &b.uris)
        .await?;
    ok(json!({ "removed": b.uris.len() }))
}

/// `as_of` (ms) and `floor`: an idle check's confirmation (see
/// `Orchestrator::peer_newest_point`).
#[derive(Deserialize)]
struct NewestQuery {
    as_of: Option<i64>,
    floor: Option<u64>,
}

async fn peer_newest_point(
    State(o): State<Arc<Orchestrator>>,
    ConnectInfo(peer): Peer,
    UrlPath(id): UrlPath<i64>,
    Query(q): Query<NewestQuery>,
) -> ApiResult {
    let confirm = q.as_of.zip(q.floor);
    let mut reply = match o.peer_newest_point(peer.fingerprint, id, confirm)? {
        Some(view) => json!({ "newest": view.newest, "accepts": view.accepts }),
        None => json!({ "newest": 0, "gone": true }),
    };
    with_site_endpoints(&o, &mut reply);
    ok(reply)
}

async fn peer_sync(
    State(o): State<Arc<Orchestrator>>,
    ConnectInfo(peer): Peer,
    UrlPath(id): UrlPath<i64>,
    Json(b): Json<SyncBody>,
) -> ApiResult {
    let g = o.peer_set_syncing(peer.fingerprint, id, b.syncing).await?;
    ok(json!({ "state": g.map(|g| g.state) }))
}

async fn peer_add_rp(
    State(o): State<Arc<Orchestrator>>,
    ConnectInfo(peer): Peer,
    UrlPath(id): UrlPath<i64>,
    Json(b): Json<NewRecoveryPoint>,
) -> ApiResult {
    ok(o.peer_add_recovery_point(peer.fingerprint, id, &b).await?)
}

async fn peer_delete_rp(
    State(o): State<Arc<Orchestrator>>,
    ConnectInfo(peer): Peer,
    UrlPath((id, rp)): UrlPath<(i64, String)>,
) -> ApiResult {
    o.peer_delete_recovery_point(peer.fingerprint, id, &rp)
        .await?;
    ok(json!({ "deleted": rp }))
}

async fn peer_migrate(
    State(o): State<Arc<Orchestrator>>,
    ConnectInfo(peer): Peer,
    UrlPath(id): UrlPath<i64>,
    Json(b): Json<MigrateStep>,
) -> ApiResult {
    ok(o.peer_migrate_step(peer.fingerprint, id, &b).await?)
}

async fn peer_reprotect(
    State(o): State<Arc<Orchestrator>>,
    ConnectInfo(peer): Peer,
    UrlPath(id): UrlPath<i64>,
    Json(b): Json<ReprotectStep>,
) -> ApiResult {
    ok(o.peer_reprotect_step(peer.fingerprint, id, &b).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every route the routers serve is described in `agent/openapi.yaml`.
    #[test]
    fn openapi_describes_every_route() {
        let doc = include_str!("../../openapi.yaml");
        for route in OPERATOR_ROUTES.iter().chain(PEER_ROUTES) {
            assert!(
                doc.contains(&format!("\n  {route}:")),
                "{route} is missing from agent/openapi.yaml"
            );
        }
        // …and nothing else is.
        let documented = doc.lines().filter(|l| l.starts_with("  /v1/")).count();
        assert_eq!(documented, OPERATOR_ROUTES.len() + PEER_ROUTES.len());
    }

    #[test]
    fn token_file_is_private_and_stable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let t1 = ensure_token(dir.path()).unwrap();
        let t2 = ensure_token(dir.path()).unwrap();
        assert_eq!(t1, t2);
        assert_eq!(t1.len(), 64);
        let mode = std::fs::metadata(dir.path().join(TOKEN_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(read_token(dir.path()).unwrap(), t1);
    }

    #[test]
    fn group_or_world_readable_token_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        ensure_token(dir.path()).unwrap();
        let path = dir.path().join(TOKEN_FILE);
        for mode in [0o640, 0o604, 0o644] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = ensure_token(dir.path()).unwrap_err();
            assert!(
                matches!(err, ApiFileError::InsecureToken { mode: m, .. } if m == mode),
                "{err}"
            );
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(ensure_token(dir.path()).is_ok());
    }
}
