//! Request bodies of the agent's HTTP APIs (operator and peer) and the
//! checks every body passes before a handler acts on it.
//!
//! The handlers in `api/mod.rs` deserialise exactly these types (axum's
//! `Json` extractor is `serde_json::from_slice`), and the orchestrator then
//! validates their fields with the functions [`check_request_body`] calls
//! (`SourceUri::parse`, `ServiceKey::decode`, `ImageName::new`, the policy
//! schedule's deserialiser, `Retention::new` for a policy binding's
//! retention, which the allowed-state rules apply). [`check_request_body`] runs the same steps
//! without touching state, so the `api_bodies` fuzz target and the corpus
//! replay test exercise what a hostile caller reaches. Pure parsing: no
//! I/O, no async; the fuzz crate compiles this file without the agent.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::control::{NewRecoveryPoint, NewResource, Retention, RpoThresholds};
use crate::schedule::PolicySchedule;
use crate::service_key::ServiceKey;
use crate::uri::SourceUri;

/// Body of `POST /v1/service/key`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeyBody {
    /// Endpoint the primary should use (default: the listen address).
    pub endpoint: Option<String>,
    /// Validity in seconds.
    pub ttl_secs: Option<u64>,
}

/// Body of `POST /v1/services`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CreateServiceBody {
    /// Service name.
    pub name: String,
    /// The service key printed on the standby.
    pub key: String,
    /// This agent's endpoint as the peer should reach it.
    pub local_endpoint: Option<String>,
}

/// Body of `PATCH /v1/services/{service}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UpdateServiceBody {
    /// New local endpoint.
    pub local_endpoint: Option<String>,
    /// New remote endpoint(s): `HOST:PORT`, or the standby site's agents
    /// separated by commas.
    pub remote_endpoint: Option<String>,
}

/// Body of `POST /v1/groups`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CreateGroupBody {
    /// Group name.
    pub name: String,
    /// Service name or id (default: the only one).
    pub service: Option<String>,
    /// Remote project/tenant.
    #[serde(default)]
    pub remote_project: String,
    /// RPO above this many seconds: `ferry health` WARNING (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo_warn_secs: Option<u64>,
    /// RPO above this many seconds: `ferry health` CRITICAL (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo_crit_secs: Option<u64>,
}

/// Body of `PATCH /v1/groups/{group}`: a field left out keeps its value,
/// 0 removes the threshold.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct UpdateGroupBody {
    /// New RPO warning threshold, seconds (0: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo_warn_secs: Option<u64>,
    /// New RPO critical threshold, seconds (0: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo_crit_secs: Option<u64>,
}

/// Body of `POST /v1/groups/{group}/resources`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AddBody {
    /// Source URIs.
    pub uris: Vec<String>,
    /// The VM the volumes belong to.
    pub vm: Option<String>,
}

/// Body of resource removals (operator and peer).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UrisBody {
    /// Source URIs.
    pub uris: Vec<String>,
}

/// Body of `POST /v1/groups/{group}/recovery-points`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RpBody {
    /// Name (default: generated).
    pub name: Option<String>,
}

/// Body of `POST /v1/groups/{group}/policy`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BindBody {
    /// Policy name.
    pub policy: String,
    /// Recovery points kept.
    pub retention: u8,
}

/// Body of `POST /v1/groups/{group}/restore`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RestoreBody {
    /// Resource URI or standby image name.
    pub resource: String,
    /// Recovery point name.
    pub recovery_point: String,
    /// Output path.
    pub out: String,
    /// A full, independent copy instead of a clone or reflink.
    #[serde(default)]
    pub copy: bool,
}

/// Body of `POST /v1/groups/{group}/failover`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FailoverBody {
    /// Recovery point name (default: the latest).
    pub recovery_point: Option<String>,
    /// Full, independent copies instead of the standby copies themselves,
    /// clones or reflinks.
    #[serde(default)]
    pub copy: bool,
}

/// Body of `POST /v1/groups/{group}/drill`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DrillBody {
    /// Recovery point name (default: the latest group point held).
    pub recovery_point: Option<String>,
}

/// Body of `POST /v1/policies`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PolicyBody {
    /// Policy name.
    pub name: String,
    /// The schedule (see `schedule.rs`).
    pub schedule: Value,
}

/// Body of `POST /v1/peer/groups/{id}/sync`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SyncBody {
    /// Whether the standby group is being replicated into.
    pub syncing: bool,
}

/// Body of `POST /v1/peer/groups/{id}/resources`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerResources {
    /// The resources to record.
    pub resources: Vec<NewResource>,
}

/// QoS settings (bytes/s; `None` = unlimited).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Qos {
    /// Limit of everything written into this site's standby images.
    pub receive_limit: Option<u64>,
    /// Limit of this agent's replication traffic as a primary.
    pub send_limit: Option<u64>,
}

/// Body of `POST /v1/peer/pair`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PairRequest {
    /// The one-time secret of the service key.
    pub secret: String,
    /// The service's name (the same on both agents).
    pub name: String,
    /// The caller's endpoint (QUIC + peer API).
    pub endpoint: String,
    /// The endpoint the caller used to reach us (from the key).
    pub your_endpoint: String,
}

/// Body of `POST /v1/peer/groups/{id}/migrate`: one step of a planned
/// migration, driven by the primary.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum MigrateStep {
    /// The standby group enters `migrating` (journaled); answers a
    /// completed plan if the standby already finished its side.
    Begin,
    /// Write every image at the final sync's recovery point into a new
    /// volume, seeded as the base for replicating back; answers the plan.
    Prepare {
        /// The final sync's group recovery point.
        engine_rp: u64,
    },
    /// Swap roles: the standby group becomes the primary.
    Commit,
    /// Give up: new volumes removed, the group back to where it was.
    Abort,
}

/// One step of a re-protect, sent by the new primary to the old primary
/// (`POST /v1/peer/groups/{id}/reprotect`); every step can be repeated.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum ReprotectStep {
    /// The old primary stops replicating the group (journaled, state
    /// `reprotecting`) and installs each volume as the standby copy at the
    /// last recovery point both sites hold, in the background; answers
    /// `pending` until it is done, then what it made.
    Begin {
        /// That group recovery point.
        engine_rp: u64,
        /// When it was taken (ms since the Unix epoch).
        created_unix_ms: u64,
        /// Each image's epoch at that point.
        images: Vec<ReprotectImage>,
    },
    /// The roles swap: the old primary's group becomes the standby, its
    /// resources named by the new primary's volumes (`(old, new)` URIs).
    Commit {
        /// Resource renames.
        renames: Vec<(String, String)>,
    },
}

/// One image of a [`ReprotectStep::Begin`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReprotectImage {
    /// The standby image name (the resource's standby target).
    pub image: String,
    /// Its epoch at the common recovery point.
    pub epoch: u64,
}

/// What the old primary made of each image for a re-protect.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ReprotectPlan {
    /// The common group recovery point.
    pub engine_rp: u64,
    /// One per resource.
    pub images: Vec<ReprotectedImage>,
    /// The old primary had already completed its side (Commit).
    #[serde(default)]
    pub completed: bool,
    /// The old primary is still installing its copies (in the background,
    /// so a large group never outlasts a request): ask again.
    #[serde(default)]
    pub pending: bool,
    /// The old primary's operation that made the plan.
    #[serde(default)]
    pub op: i64,
}

/// One image of a [`ReprotectPlan`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReprotectedImage {
    /// The standby image name.
    pub image: String,
    /// Where the old primary's split-brain writes stay (`file:/PATH` or
    /// `rbd:POOL/IMAGE@SNAP`).
    pub kept: String,
    /// Files: the standby copy's block hashes (16 bytes per 4 KiB block,
    /// base64), the new primary's replication base; RBD: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_hashes: Option<String>,
}

/// Body of `POST /v1/peer/groups`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerGroupRequest {
    /// Group name (the same on both agents).
    pub name: String,
    /// The primary group's id on the primary agent.
    pub primary_group_id: i64,
    /// Remote project/tenant.
    pub remote_project: String,
}

/// Every route that takes a JSON body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyRoute {
    /// `POST /v1/service/key`.
    ServiceKey,
    /// `POST /v1/services`.
    CreateService,
    /// `PATCH /v1/services/{service}`.
    UpdateService,
    /// `POST /v1/groups`.
    CreateGroup,
    /// `POST /v1/groups/{group}/resources`.
    AddResources,
    /// `POST /v1/groups/{group}/resources/remove`.
    RemoveResources,
    /// `POST /v1/groups/{group}/recovery-points`.
    CreateRecoveryPoint,
    /// `POST /v1/groups/{group}/policy`.
    BindPolicy,
    /// `POST /v1/groups/{group}/restore`.
    Restore,
    /// `POST /v1/groups/{group}/failover`.
    Failover,
    /// `POST /v1/policies`.
    CreatePolicy,
    /// `PUT /v1/qos`.
    SetQos,
    /// `POST /v1/peer/pair`.
    PeerPair,
    /// `POST /v1/peer/groups`.
    PeerCreateGroup,
    /// `POST /v1/peer/groups/{id}/resources`.
    PeerAddResources,
    /// `POST /v1/peer/groups/{id}/resources/remove`.
    PeerRemoveResources,
    /// `POST /v1/peer/groups/{id}/sync`.
    PeerSync,
    /// `POST /v1/peer/groups/{id}/recovery-points`.
    PeerAddRecoveryPoint,
    /// `POST /v1/peer/groups/{id}/migrate`.
    PeerMigrate,
    /// `POST /v1/groups/{group}/drill`.
    Drill,
    /// `POST /v1/peer/groups/{id}/reprotect`.
    PeerReprotect,
    /// `PATCH /v1/groups/{group}`.
    UpdateGroup,
}

impl BodyRoute {
    /// Every route, in a fixed order (the fuzz target picks by index).
    pub const ALL: &'static [BodyRoute] = &[
        BodyRoute::ServiceKey,
        BodyRoute::CreateService,
        BodyRoute::UpdateService,
        BodyRoute::CreateGroup,
        BodyRoute::AddResources,
        BodyRoute::RemoveResources,
        BodyRoute::CreateRecoveryPoint,
        BodyRoute::BindPolicy,
        BodyRoute::Restore,
        BodyRoute::Failover,
        BodyRoute::CreatePolicy,
        BodyRoute::SetQos,
        BodyRoute::PeerPair,
        BodyRoute::PeerCreateGroup,
        BodyRoute::PeerAddResources,
        BodyRoute::PeerRemoveResources,
        BodyRoute::PeerSync,
        BodyRoute::PeerAddRecoveryPoint,
        BodyRoute::PeerMigrate,
        BodyRoute::Drill,
        BodyRoute::PeerReprotect,
        BodyRoute::UpdateGroup,
    ];
}

/// Why a request body is refused.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The body is not the route's JSON.
    #[error("{route:?}: bad request body")]
    Json {
        /// The route.
        route: BodyRoute,
        /// What serde said.
        #[source]
        source: serde_json::Error,
    },
    /// A field does not pass the check the orchestrator applies.
    #[error("{route:?}: {field}: {reason}")]
    Field {
        /// The route.
        route: BodyRoute,
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

fn parse<T: serde::de::DeserializeOwned>(route: BodyRoute, body: &[u8]) -> Result<T, BodyError> {
    serde_json::from_slice(body).map_err(|source| BodyError::Json { route, source })
}

/// Deserialises `body` as `route`'s request and applies the stateless field
/// checks its handler applies (source URIs, service key, standby image
/// names, policy schedule). `Ok` means the request would reach the
/// orchestrator's stateful checks.
pub fn check_request_body(route: BodyRoute, body: &[u8]) -> Result<(), BodyError> {
    let field = |field: &'static str| {
        move |reason: String| BodyError::Field {
            route,
            field,
            reason,
        }
    };
    match route {
        BodyRoute::ServiceKey => {
            parse::<KeyBody>(route, body)?;
        }
        BodyRoute::CreateService => {
            let b: CreateServiceBody = parse(route, body)?;
            ServiceKey::decode(&b.key).map_err(|e| field("key")(e.to_string()))?;
        }
        BodyRoute::UpdateService => {
            parse::<UpdateServiceBody>(route, body)?;
        }
        BodyRoute::CreateGroup => {
            let b: CreateGroupBody = parse(route, body)?;
            RpoThresholds::new(b.rpo_warn_secs, b.rpo_crit_secs)
                .map_err(|e| field("rpo_warn_secs")(e.to_string()))?;
        }
        BodyRoute::UpdateGroup => {
            // Checked against the group's current thresholds (stateful).
            parse::<UpdateGroupBody>(route, body)?;
        }
        BodyRoute::AddResources => {
            let b: AddBody = parse(route, body)?;
            for uri in &b.uris {
                SourceUri::parse(uri).map_err(|e| field("uris")(e.to_string()))?;
            }
        }
        BodyRoute::RemoveResources | BodyRoute::PeerRemoveResources => {
            parse::<UrisBody>(route, body)?;
        }
        BodyRoute::CreateRecoveryPoint => {
            parse::<RpBody>(route, body)?;
        }
        BodyRoute::BindPolicy => {
            let b: BindBody = parse(route, body)?;
            Retention::new(b.retention).map_err(|e| field("retention")(e.to_string()))?;
        }
        BodyRoute::Restore => {
            parse::<RestoreBody>(route, body)?;
        }
        BodyRoute::Failover => {
            parse::<FailoverBody>(route, body)?;
        }
        BodyRoute::Drill => {
            parse::<DrillBody>(route, body)?;
        }
        BodyRoute::CreatePolicy => {
            let b: PolicyBody = parse(route, body)?;
            serde_json::from_value::<PolicySchedule>(b.schedule)
                .map_err(|e| field("schedule")(e.to_string()))?;
        }
        BodyRoute::SetQos => {
            parse::<Qos>(route, body)?;
        }
        BodyRoute::PeerPair => {
            parse::<PairRequest>(route, body)?;
        }
        BodyRoute::PeerCreateGroup => {
            parse::<PeerGroupRequest>(route, body)?;
        }
        BodyRoute::PeerAddResources => {
            let b: PeerResources = parse(route, body)?;
            for r in &b.resources {
                ferry_protocol::ImageName::new(r.standby_target.clone())
                    .map_err(|e| field("standby_target")(e.to_string()))?;
            }
        }
        BodyRoute::PeerSync => {
            parse::<SyncBody>(route, body)?;
        }
        BodyRoute::PeerAddRecoveryPoint => {
            parse::<NewRecoveryPoint>(route, body)?;
        }
        BodyRoute::PeerMigrate => {
            parse::<MigrateStep>(route, body)?;
        }
        BodyRoute::PeerReprotect => {
            let b: ReprotectStep = parse(route, body)?;
            if let ReprotectStep::Begin { images, .. } = &b {
                for i in images {
                    ferry_protocol::ImageName::new(i.image.clone())
                        .map_err(|e| field("image")(e.to_string()))?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_bodies_pass_and_bad_fields_are_named() {
        use BodyRoute as R;
        for (route, body) in [
            (
                R::AddResources,
                r#"{"uris":["file:/data/vm1.raw","rbd:pool/img"]}"#,
            ),
            (R::PeerMigrate, r#"{"step":"prepare","engine_rp":7}"#),
            (
                R::CreatePolicy,
                r#"{"name":"p","schedule":{"schedule":{"kind":"daily","at":"02:00"},"tz":"UTC","effective_from":"2026-01-01T00:00:00Z"}}"#,
            ),
            (R::SetQos, r#"{"receive_limit":null,"send_limit":1000}"#),
            (
                R::CreateGroup,
                r#"{"name":"g","rpo_warn_secs":60,"rpo_crit_secs":600}"#,
            ),
            (R::UpdateGroup, r#"{"rpo_crit_secs":0}"#),
        ] {
            if let Err(e) = check_request_body(route, body.as_bytes()) {
                panic!("{route:?} {body}: {e}");
            }
        }
        for (route, body, what) in [
            (R::AddResources, r#"{"uris":["rbd:img@snap"]}"#, "uris"),
            (
                R::CreateService,
                r#"{"name":"dr","key":"ferry1.!!"}"#,
                "key",
            ),
            (R::PeerMigrate, r#"{"step":"explode"}"#, ""),
            (
                R::CreateGroup,
                r#"{"name":"g","rpo_warn_secs":600,"rpo_crit_secs":60}"#,
                "rpo_warn_secs",
            ),
            (
                R::CreatePolicy,
                r#"{"name":"p","schedule":{"schedule":{"kind":"daily","at":"25:00"},"tz":"UTC","effective_from":"2026-01-01T00:00:00Z"}}"#,
                "schedule",
            ),
            (
                R::PeerAddResources,
                r#"{"resources":[{"uri":"file:/x","kind":{"type":"volume"},"size_bytes":1,"standby_target":"../x"}]}"#,
                "standby_target",
            ),
            // Regression (the api_bodies fuzz target's limits property): a
            // retention outside the documented 1..=5 passed this check
            // (the allowed-state rules refused it later, with a 409).
            (
                R::BindPolicy,
                r#"{"policy":"p","retention":0}"#,
                "retention",
            ),
            (
                R::BindPolicy,
                r#"{"policy":"p","retention":6}"#,
                "retention",
            ),
        ] {
            let err = check_request_body(route, body.as_bytes()).unwrap_err();
            assert!(err.to_string().contains(what), "{route:?}: {err}");
        }
    }
}
