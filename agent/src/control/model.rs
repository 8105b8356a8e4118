//! The control shim's object model: services, protection groups, resources,
//! policies, recovery points and the operation journal, with their typed ids
//! and states. Plain data: no I/O, no rules (see `rules/`), no persistence
//! (see `store/`). Every type serialises to the JSON the HTTP API returns.

use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use ferry_protocol::AgentId;
use serde::{Deserialize, Serialize};

/// At most this many resources in one protection group (semantics doc).
pub const MAX_RESOURCES_PER_GROUP: usize = 20;
/// At most this many manual recovery points per group (semantics doc).
pub const MAX_MANUAL_RECOVERY_POINTS: usize = 5;
/// Smallest policy retention a binding may ask for.
pub const MIN_RETENTION: u8 = 1;
/// Largest policy retention a binding may ask for.
pub const MAX_RETENTION: u8 = 5;

macro_rules! row_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        ///
        /// A SQLite rowid of this agent's store: unique on this agent only (the
        /// peer's ids are kept separately, e.g. [`Group::remote_group_id`]).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }

        impl FromStr for $name {
            type Err = std::num::ParseIntError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                s.parse().map(Self)
            }
        }
    };
}

row_id!(
    /// Identifies a [`Service`].
    ServiceId
);
row_id!(
    /// Identifies a protection [`Group`].
    GroupId
);
row_id!(
    /// Identifies a [`Policy`].
    PolicyId
);
row_id!(
    /// Identifies a control-plane [`RecoveryPoint`] (not the engine's
    /// `ferry_protocol::RecoveryPointId`, which is [`RecoveryPoint::engine_rp`]).
    RpId
);
row_id!(
    /// Identifies an [`Operation`] in the journal.
    OperationId
);

/// Wall-clock time as milliseconds since the Unix epoch (UTC).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The current time. A clock before 1970 reads as the epoch.
    pub fn now() -> Self {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Self(ms)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

/// Declares a string-valued enum: serde as snake_case, `Display` and
/// `FromStr` with the same spelling (also used as the store's column text).
macro_rules! text_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $text:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vdoc])* $variant,)+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The snake_case spelling (API, CLI and store column).
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownValue;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownValue { what: stringify!($name), value: s.to_owned() }),
                }
            }
        }
    };
}

/// A string that names no value of an enum (e.g. a state written by a newer
/// agent, or a typo on the command line).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {value:?}")]
pub struct UnknownValue {
    /// The enum's name.
    pub what: &'static str,
    /// The text that did not match.
    pub value: String,
}

text_enum!(
    /// Which end of the replication a group is on this agent.
    Role {
        /// The group replicates from this site (the "P" of the semantics doc).
        Primary => "primary",
        /// The group receives into this site (the "S" of the semantics doc).
        Standby => "standby",
    }
);

impl Role {
    /// The other role (what a planned migration swaps to).
    pub fn other(self) -> Role {
        match self {
            Role::Primary => Role::Standby,
            Role::Standby => Role::Primary,
        }
    }
}

text_enum!(
    /// A protection group's state: exactly the states of the semantics doc.
    /// Some exist only for one role; see [`GroupState::valid_for`].
    GroupState {
        /// Created locally, not yet mapped to the peer group.
        Created => "created",
        /// Mapped to the peer group; not replicating.
        Mapped => "mapped",
        /// Creating or mapping the peer group failed.
        MappingFailed => "mapping_failed",
        /// (P) Start sync in progress.
        StartingSync => "starting_sync",
        /// (P) Start sync failed.
        StartSyncFailed => "start_sync_failed",
        /// Replicating.
        Syncing => "syncing",
        /// (P) Stop sync in progress.
        StoppingSync => "stopping_sync",
        /// Stop sync failed.
        StopSyncFailed => "stop_sync_failed",
        /// Planned migration in progress.
        Migrating => "migrating",
        /// Planned migration failed.
        MigrationFailed => "migration_failed",
        /// (S) Unplanned failover in progress.
        FailingOver => "failing_over",
        /// (S) Failed over: this standby is now a new primary.
        FailedOver => "failed_over",
        /// (S) Unplanned failover failed.
        FailoverFailed => "failover_failed",
        /// Removing resources.
        Removing => "removing",
        /// Deleting the group.
        Deleting => "deleting",
        /// Deleting the group failed.
        DeleteFailed => "delete_failed",
        /// Re-protect in progress: the new primary makes the old primary
        /// its standby (ferry's addition).
        Reprotecting => "reprotecting",
        /// Re-protect failed (retried with reprotect).
        ReprotectFailed => "reprotect_failed",
    }
);

impl GroupState {
    /// Primary-group states, as listed in the semantics doc.
    pub const PRIMARY: &'static [GroupState] = &[
        GroupState::Created,
        GroupState::Mapped,
        GroupState::MappingFailed,
        GroupState::StartingSync,
        GroupState::StartSyncFailed,
        GroupState::Syncing,
        GroupState::StoppingSync,
        GroupState::StopSyncFailed,
        GroupState::Migrating,
        GroupState::MigrationFailed,
        GroupState::Removing,
        GroupState::Deleting,
        GroupState::DeleteFailed,
        GroupState::Reprotecting,
        GroupState::ReprotectFailed,
    ];

    /// Standby-group states, as listed in the semantics doc.
    pub const STANDBY: &'static [GroupState] = &[
        GroupState::Created,
        GroupState::Mapped,
        GroupState::MappingFailed,
        GroupState::Syncing,
        GroupState::FailingOver,
        GroupState::FailedOver,
        GroupState::FailoverFailed,
        GroupState::Migrating,
        GroupState::MigrationFailed,
        GroupState::StopSyncFailed,
        GroupState::Removing,
        GroupState::Deleting,
        GroupState::DeleteFailed,
        GroupState::Reprotecting,
        GroupState::ReprotectFailed,
    ];

    /// The states a group of `role` can be in.
    pub fn states_of(role: Role) -> &'static [GroupState] {
        match role {
            Role::Primary => Self::PRIMARY,
            Role::Standby => Self::STANDBY,
        }
    }

    /// Whether a group of `role` can be in this state.
    pub fn valid_for(self, role: Role) -> bool {
        Self::states_of(role).contains(&self)
    }

    /// Whether an operation is in progress in this state (the group is busy
    /// and accepts no other operation until it finishes or is rolled back).
    pub fn is_transitional(self) -> bool {
        matches!(
            self,
            GroupState::StartingSync
                | GroupState::StoppingSync
                | GroupState::Migrating
                | GroupState::FailingOver
                | GroupState::Removing
                | GroupState::Deleting
                | GroupState::Reprotecting
        )
    }
}

/// A service: this site's connection to one remote site.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// Store id.
    pub id: ServiceId,
    /// Operator-chosen name, unique on this agent.
    pub name: String,
    /// This agent's endpoint as the peer should reach it (`HOST:PORT`).
    pub local_endpoint: String,
    /// The peer agent's endpoint (`HOST:PORT`).
    pub remote_endpoint: String,
    /// The peer's certificate fingerprint (its agent id).
    #[serde(with = "agent_id_hex")]
    pub remote_fingerprint: AgentId,
    /// When the service was created.
    pub created_at: Timestamp,
}

/// Fields of a service to create.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewService {
    /// Name, unique on this agent.
    pub name: String,
    /// This agent's endpoint as the peer should reach it.
    pub local_endpoint: String,
    /// The peer agent's endpoint.
    pub remote_endpoint: String,
    /// The peer's certificate fingerprint.
    #[serde(with = "agent_id_hex")]
    pub remote_fingerprint: AgentId,
}

/// A policy retention: how many policy-created recovery points are kept
/// (`1..=5`). Constructed only through [`Retention::new`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub struct Retention(u8);

/// A retention outside `1..=5`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("retention {0} is out of range: keep between {MIN_RETENTION} and {MAX_RETENTION} recovery points")]
pub struct RetentionOutOfRange(pub i64);

impl Retention {
    /// `n` if it is in `1..=5`.
    pub fn new(n: u8) -> Result<Self, RetentionOutOfRange> {
        if (MIN_RETENTION..=MAX_RETENTION).contains(&n) {
            Ok(Self(n))
        } else {
            Err(RetentionOutOfRange(i64::from(n)))
        }
    }

    /// The number of recovery points kept.
    pub fn get(self) -> u8 {
        self.0
    }
}

impl TryFrom<u8> for Retention {
    type Error = RetentionOutOfRange;
    fn try_from(n: u8) -> Result<Self, Self::Error> {
        Self::new(n)
    }
}

impl From<Retention> for u8 {
    fn from(r: Retention) -> u8 {
        r.0
    }
}

/// A group's binding to a policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyBinding {
    /// The bound policy.
    pub policy_id: PolicyId,
    /// Newest N policy-created recovery points kept, on both sides.
    pub retention: Retention,
}

/// A protection group as this agent sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    /// Store id.
    pub id: GroupId,
    /// Name, unique on this agent.
    pub name: String,
    /// Which end of the replication this agent is.
    pub role: Role,
    /// A standby that completed an unplanned failover: it cannot start sync
    /// or bind a policy; protecting it again means a new group. Such a group
    /// keeps `role == Standby` (its states are the standby list).
    pub new_primary: bool,
    /// Whether a planned migration has completed on this group (add
    /// resources then needs every recovery point deleted first).
    pub migrated: bool,
    /// Current state.
    pub state: GroupState,
    /// The service connecting it to the peer site.
    pub service_id: ServiceId,
    /// The peer group's id on the peer agent, once mapped.
    pub remote_group_id: Option<i64>,
    /// The project/tenant the standby group lives in on the remote site.
    pub remote_project: String,
    /// The bound policy, if any.
    pub policy: Option<PolicyBinding>,
    /// When the group was created.
    pub created_at: Timestamp,
    /// RPO thresholds `ferry health` checks (this agent's own setting).
    #[serde(default)]
    pub rpo: crate::control::RpoThresholds,
}

/// Fields of a group to create (it starts in [`GroupState::Created`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewGroup {
    /// Name, unique on this agent.
    pub name: String,
    /// Which end this agent is.
    pub role: Role,
    /// The service to the peer site.
    pub service_id: ServiceId,
    /// The peer group's id, if already known (a standby group created at the
    /// primary's request knows it).
    pub remote_group_id: Option<i64>,
    /// The remote project/tenant.
    pub remote_project: String,
    /// RPO thresholds `ferry health` checks.
    #[serde(default)]
    pub rpo: crate::control::RpoThresholds,
}

/// What a resource is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResourceKind {
    /// A plain volume (image).
    Volume,
    /// One volume of a VM (a VM is added as all its volumes at once).
    VmVolume {
        /// The VM's name.
        vm: String,
        /// Whether this is the VM's boot volume.
        boot: bool,
    },
}

text_enum!(
    /// Replication state of one resource.
    ResourceState {
        /// Added; the standby placeholder is not created yet.
        Pending => "pending",
        /// Standby placeholder exists; not replicating.
        Ready => "ready",
        /// First full copy in progress (stop sync is refused meanwhile).
        InitialSync => "initial_sync",
        /// Replicating incrementally.
        Syncing => "syncing",
        /// Being removed from the group (and from the standby).
        Removing => "removing",
        /// Replication of this resource failed; see the agent log / operation.
        Error => "error",
    }
);

/// A resource of a protection group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource {
    /// The resource's source URI on the primary site (`file:/path`,
    /// `rbd:pool/img`): its identity, unique on this agent.
    pub uri: String,
    /// Volume or VM volume.
    pub kind: ResourceKind,
    /// Size in bytes (the standby copy has the same size).
    pub size_bytes: u64,
    /// The group it belongs to.
    pub group_id: GroupId,
    /// The image name on the standby.
    pub standby_target: String,
    /// Replication state.
    pub state: ResourceState,
    /// After a failover: where the resource's volume is now, in a form a
    /// cloud platform adopts — `rbd:POOL/IMAGE` or `file:/PATH`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
}

/// Fields of a resource to add (it starts in [`ResourceState::Pending`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewResource {
    /// Source URI (identity).
    pub uri: String,
    /// Volume or VM volume.
    pub kind: ResourceKind,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Image name on the standby.
    pub standby_target: String,
}

/// A recovery-point policy. The schedule is opaque here (the scheduler
/// module owns its format).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Store id.
    pub id: PolicyId,
    /// Name, unique on this agent.
    pub name: String,
    /// The schedule, as the scheduler serialises it.
    pub schedule: serde_json::Value,
    /// When the policy was created.
    pub created_at: Timestamp,
}

text_enum!(
    /// Who created a recovery point.
    RpKind {
        /// An operator (at most 5 per group).
        Manual => "manual",
        /// A policy (newest N kept).
        Policy => "policy",
    }
);

text_enum!(
    /// Life cycle of a recovery point.
    RpState {
        /// Being captured / replicated; not usable yet.
        Creating => "creating",
        /// Complete on the standby: usable for failover and restore.
        Complete => "complete",
        /// Being deleted.
        Deleting => "deleting",
        /// Not usable (e.g. after a failover to another recovery point).
        Unusable => "unusable",
    }
);

/// A group-consistent recovery point.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryPoint {
    /// Store id.
    pub id: RpId,
    /// The group it captures.
    pub group_id: GroupId,
    /// Name, unique within the group.
    pub name: String,
    /// The engine's recovery point id (`ferry_protocol::RecoveryPointId`
    /// value), unique within the group.
    pub engine_rp: u64,
    /// Manual or policy-created.
    pub kind: RpKind,
    /// When it was taken.
    pub created_at: Timestamp,
    /// Life-cycle state.
    pub state: RpState,
    /// Deleted here but the standby has not been told yet (link down):
    /// propagate when the link is back.
    pub pending_remote_delete: bool,
}

/// Fields of a recovery point to record (it starts in [`RpState::Creating`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewRecoveryPoint {
    /// Name, unique within the group.
    pub name: String,
    /// The engine's recovery point id.
    pub engine_rp: u64,
    /// Manual or policy-created.
    pub kind: RpKind,
}

text_enum!(
    /// What an operation does (journal entry kind).
    OpKind {
        /// Create a group (and its mapped standby group).
        CreateGroup => "create_group",
        /// Add resources.
        AddResources => "add_resources",
        /// Remove resources.
        RemoveResources => "remove_resources",
        /// Bind a policy.
        BindPolicy => "bind_policy",
        /// Unbind the policy.
        UnbindPolicy => "unbind_policy",
        /// Start sync.
        StartSync => "start_sync",
        /// Stop sync.
        StopSync => "stop_sync",
        /// Create a recovery point.
        CreateRecoveryPoint => "create_recovery_point",
        /// Delete a recovery point.
        DeleteRecoveryPoint => "delete_recovery_point",
        /// Planned migration (role swap).
        Migrate => "migrate",
        /// Unplanned failover on the standby.
        Failover => "failover",
        /// Restore one resource into a new image.
        Restore => "restore",
        /// Delete the group.
        DeleteGroup => "delete_group",
        /// Start a DR drill (writable copies at one recovery point).
        Drill => "drill",
        /// End a DR drill (remove its volumes, unpin its point).
        EndDrill => "end_drill",
        /// Re-protect after a failover: the old primary becomes the standby.
        Reprotect => "reprotect",
        /// Delete a service.
        DeleteService => "delete_service",
    }
);

impl OpKind {
    /// How operators read the operation's name ("start sync").
    pub fn human(self) -> &'static str {
        match self {
            OpKind::CreateGroup => "create group",
            OpKind::AddResources => "add resources",
            OpKind::RemoveResources => "remove resources",
            OpKind::BindPolicy => "bind policy",
            OpKind::UnbindPolicy => "unbind policy",
            OpKind::StartSync => "start sync",
            OpKind::StopSync => "stop sync",
            OpKind::CreateRecoveryPoint => "create recovery point",
            OpKind::DeleteRecoveryPoint => "delete recovery point",
            OpKind::Migrate => "planned migration",
            OpKind::Failover => "unplanned failover",
            OpKind::Restore => "manual restore",
            OpKind::DeleteGroup => "delete group",
            OpKind::Drill => "drill",
            OpKind::EndDrill => "end drill",
            OpKind::Reprotect => "reprotect",
            OpKind::DeleteService => "delete service",
        }
    }
}

/// Where an operation's journal entry stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum OpState {
    /// Started and not finished: after a restart, finish or roll back.
    Running,
    /// Finished; the group is in the success state.
    Succeeded,
    /// Finished with an error; the group is in the failure state.
    Failed {
        /// Why, for the operator.
        reason: String,
    },
    /// Undone; the group is back in the state it started from.
    RolledBack,
}

impl OpState {
    /// The store's column text.
    pub fn as_str(&self) -> &'static str {
        match self {
            OpState::Running => "running",
            OpState::Succeeded => "succeeded",
            OpState::Failed { .. } => "failed",
            OpState::RolledBack => "rolled_back",
        }
    }
}

/// What a group becomes when an operation succeeds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// The group stays, in this state / role.
    Group {
        /// State after success.
        state: GroupState,
        /// Role after success (differs after a planned migration).
        role: Role,
        /// New-primary flag after success (set by a failover).
        new_primary: bool,
        /// Migrated flag after success (set by a planned migration).
        migrated: bool,
    },
    /// The group is gone (delete group).
    Deleted,
}

/// The state plan of a group operation: where it starts, the state held
/// while it runs, and where it ends. Produced by `rules::check`, recorded in
/// the journal so a restarted agent can finish or roll back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// The operation.
    pub op: OpKind,
    /// State when the operation was accepted.
    pub from: GroupState,
    /// State held while it runs (equal to `from` for operations without a
    /// transitional state, e.g. create recovery point).
    pub during: GroupState,
    /// Result of success.
    pub on_success: Outcome,
    /// State after failure.
    pub on_failure: GroupState,
}

impl Transition {
    /// Whether the group's state changes when the operation starts.
    pub fn enters_transitional_state(&self) -> bool {
        self.during != self.from
    }
}

/// One entry of the operation journal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    /// Journal id (what `--wait` waits on).
    pub id: OperationId,
    /// The group operated on; `None` for service operations and after the
    /// group was deleted.
    pub group_id: Option<GroupId>,
    /// The group's name when the operation started (kept after deletion).
    pub group_name: Option<String>,
    /// What it does.
    pub kind: OpKind,
    /// Where it stands.
    pub state: OpState,
    /// The group-state plan, if it is a group operation.
    pub transition: Option<Transition>,
    /// When it started.
    pub started_at: Timestamp,
    /// When it finished (`None` while running).
    pub finished_at: Option<Timestamp>,
    /// Operation parameters (resources, recovery point, target…), for the
    /// orchestrator to finish it after a restart.
    pub params: serde_json::Value,
}

text_enum!(
    /// Where a DR drill of a standby group stands.
    DrillPhase {
        /// Its volumes are being made (or their making was interrupted: a
        /// retry of `drill` resumes it, `drill --end` removes what exists).
        Starting => "starting",
        /// Every volume is made; the drill runs until `drill --end`.
        Active => "active",
        /// Its volumes are being removed (or their removal was
        /// interrupted: a retry of `drill --end` finishes it).
        Ending => "ending",
    }
);

/// One writable volume of a DR drill.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrillVolume {
    /// The resource's source URI (as on the primary).
    pub resource: String,
    /// The standby copy it is made from.
    pub image: String,
    /// The drill volume as the backend names it: a file path (files
    /// backend) or an image name of the standby pool (RBD backend).
    pub volume: String,
}

/// A DR drill of a standby group: writable volumes of every resource at one
/// recovery point, made next to the standby copies (which it never
/// touches), with that point pinned until the drill ends. One per group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drill {
    /// The group drilled.
    pub group_id: GroupId,
    /// Where it stands.
    pub phase: DrillPhase,
    /// The engine recovery point the volumes are made at (pinned).
    pub engine_rp: u64,
    /// The control recovery point's name, when the operator chose one
    /// (`None`: the latest group point the standby held).
    pub recovery_point: Option<String>,
    /// When it started.
    pub started_at: Timestamp,
    /// Its volumes, one per resource.
    pub volumes: Vec<DrillVolume>,
}

/// Serde for [`AgentId`] as lower-case hex (the protocol crate has no serde).
pub mod agent_id_hex {
    use ferry_protocol::AgentId;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serialises as 64 lower-case hex digits.
    pub fn serialize<S: Serializer>(id: &AgentId, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&id.to_hex())
    }

    /// Parses 64 hex digits (colons allowed).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<AgentId, D::Error> {
        let text = String::deserialize(d)?;
        AgentId::from_hex(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("bad agent fingerprint {text:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_lists_match_the_semantics_doc() {
        // The doc's 13 primary and 13 standby states (16 distinct), plus
        // ferry's reprotecting and reprotect_failed on both sides.
        assert_eq!(GroupState::PRIMARY.len(), 15);
        assert_eq!(GroupState::STANDBY.len(), 15);
        assert_eq!(GroupState::ALL.len(), 18);
        for s in GroupState::ALL {
            assert!(
                s.valid_for(Role::Primary) || s.valid_for(Role::Standby),
                "{s}"
            );
        }
        assert!(!GroupState::FailedOver.valid_for(Role::Primary));
        assert!(!GroupState::StartingSync.valid_for(Role::Standby));
        assert!(GroupState::StopSyncFailed.valid_for(Role::Standby));
    }

    #[test]
    fn enums_round_trip_through_text_and_json() {
        for s in GroupState::ALL {
            assert_eq!(s.as_str().parse::<GroupState>(), Ok(*s));
            assert_eq!(
                serde_json::to_string(s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
        assert_eq!(GroupState::StartSyncFailed.to_string(), "start_sync_failed");
        assert!("syncng".parse::<GroupState>().is_err());
        for k in OpKind::ALL {
            assert_eq!(k.as_str().parse::<OpKind>(), Ok(*k));
        }
    }

    #[test]
    fn retention_is_one_to_five() {
        assert!(Retention::new(0).is_err());
        assert_eq!(Retention::new(1).unwrap().get(), 1);
        assert_eq!(Retention::new(5).unwrap().get(), 5);
        assert!(Retention::new(6).is_err());
        assert!(serde_json::from_str::<Retention>("6").is_err());
        assert_eq!(serde_json::from_str::<Retention>("3").unwrap().get(), 3);
    }

    #[test]
    fn service_serialises_fingerprint_as_hex() {
        let svc = Service {
            id: ServiceId(1),
            name: "dr".into(),
            local_endpoint: "10.0.0.1:7443".into(),
            remote_endpoint: "10.0.0.2:7443".into(),
            remote_fingerprint: AgentId([0xab; 32]),
            created_at: Timestamp(5),
        };
        let json = serde_json::to_value(&svc).unwrap();
        assert_eq!(json["remote_fingerprint"], "ab".repeat(32));
        let back: Service = serde_json::from_value(json).unwrap();
        assert_eq!(back, svc);
    }
}
