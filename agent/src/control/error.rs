//! Errors of the control store. Every variant names what it was doing or
//! which object it concerns; SQLite and I/O errors stay as `#[source]`.

use std::path::PathBuf;

use super::model::{GroupState, OpState, OperationId};
use super::rules::Refusal;

/// Why a store call failed. Nothing was written when an error is returned
/// (every write runs in one SQLite transaction).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The data directory could not be created.
    #[error("cannot create the control store's directory {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The database could not be opened or configured.
    #[error("cannot open the control store {path}: {what}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// The step that failed.
        what: String,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// The database was written by a newer ferry (schema version unknown).
    #[error("control store {path} has schema version {found}, newer than this agent's {supported}: upgrade ferry")]
    TooNew {
        /// The database file.
        path: PathBuf,
        /// Version found.
        found: i64,
        /// Newest version this build knows.
        supported: usize,
    },
    /// Applying a schema migration failed (nothing of it was applied).
    #[error("cannot migrate the control store {path} to schema version {version}")]
    Migration {
        /// The database file.
        path: PathBuf,
        /// The version whose migration failed.
        version: usize,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// A query or write failed.
    #[error("control store: {context}")]
    Sqlite {
        /// What the store was doing.
        context: String,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// The shared control state of a multi-agent site (RADOS) failed;
    /// nothing of the call was committed.
    #[error("shared control store: {context}")]
    Shared {
        /// What the store was doing.
        context: String,
        /// Why it failed.
        #[source]
        source: crate::control::store::shared::SharedError,
    },
    /// No such object.
    #[error("no {what} {key}")]
    NotFound {
        /// Kind of object ("group", "service"…).
        what: &'static str,
        /// The name or id looked up.
        key: String,
    },
    /// The name is already used by another object of that kind.
    #[error("a {what} named '{name}' already exists")]
    NameTaken {
        /// Kind of object.
        what: &'static str,
        /// The name.
        name: String,
    },
    /// A resource is already in a group (one group per resource).
    #[error("resource {uri} is already in group '{group}'")]
    ResourceInGroup {
        /// The resource.
        uri: String,
        /// The group holding it.
        group: String,
    },
    /// A resource to remove or update is not in the group.
    #[error("resource {uri} is not in group '{group}'")]
    ResourceNotInGroup {
        /// The resource.
        uri: String,
        /// The group.
        group: String,
    },
    /// Adding would exceed the per-group resource limit.
    #[error(
        "group '{group}' has {have} resources; adding {adding} would exceed the limit of {max}"
    )]
    TooManyResources {
        /// The group.
        group: String,
        /// Resources it has.
        have: usize,
        /// Resources to add.
        adding: usize,
        /// The limit.
        max: usize,
    },
    /// The group already has the maximum number of manual recovery points.
    #[error("group '{group}' already has {max} manual recovery points (the limit)")]
    TooManyManualRecoveryPoints {
        /// The group.
        group: String,
        /// The limit.
        max: usize,
    },
    /// A recovery point with that name or engine id exists in the group.
    #[error(
        "group '{group}' already has a recovery point named '{name}' or with engine id {engine_rp}"
    )]
    RecoveryPointExists {
        /// The group.
        group: String,
        /// Name asked for.
        name: String,
        /// Engine id asked for.
        engine_rp: u64,
    },
    /// Compare-and-set on a group's state failed: someone else moved it.
    #[error("group '{group}' is {actual}, not {expected} as expected; nothing was changed")]
    StateConflict {
        /// The group.
        group: String,
        /// The state the caller expected.
        expected: GroupState,
        /// The state found.
        actual: GroupState,
    },
    /// Compare-and-set on a recovery point's state failed.
    #[error("recovery point '{rp}' is {actual}, not {expected} as expected; nothing was changed")]
    RpStateConflict {
        /// The recovery point.
        rp: String,
        /// Expected state.
        expected: String,
        /// Found state.
        actual: String,
    },
    /// Another operation is still running on the group.
    #[error("group '{group}' is busy: operation {op} ({kind}) is still running")]
    GroupBusy {
        /// The group.
        group: String,
        /// The running operation.
        op: OperationId,
        /// Its kind.
        kind: String,
    },
    /// The operation was already finished.
    #[error("operation {id} is already finished ({})", state.as_str())]
    OperationFinished {
        /// The operation.
        id: OperationId,
        /// Its final state.
        state: OpState,
    },
    /// A group already has a policy bound.
    #[error("group '{group}' already has a policy bound")]
    PolicyAlreadyBound {
        /// The group.
        group: String,
    },
    /// A group has no policy bound.
    #[error("group '{group}' has no policy bound")]
    NoPolicyBound {
        /// The group.
        group: String,
    },
    /// A policy cannot be deleted while groups are bound to it.
    #[error("policy '{policy}' is bound to group(s) {}; unbind it first", groups.join(", "))]
    PolicyInUse {
        /// The policy.
        policy: String,
        /// The groups bound to it.
        groups: Vec<String>,
    },
    /// A pairing secret cannot be used.
    #[error("pairing refused: {reason}")]
    PairingSecret {
        /// Why (unknown, used, expired).
        reason: String,
    },
    /// A rule of the allowed-state table refused the change.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// A number does not fit the store's 63-bit integers.
    #[error("{what} {value} is too large to store (max {})", i64::MAX)]
    OutOfRange {
        /// What it is.
        what: &'static str,
        /// The value.
        value: u64,
    },
    /// A value could not be encoded to JSON.
    #[error("cannot encode {what} as JSON")]
    Json {
        /// What it is.
        what: &'static str,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
}

/// Shorthand used across the control module.
pub type StoreResult<T> = Result<T, StoreError>;
