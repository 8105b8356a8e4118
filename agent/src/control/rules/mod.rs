//! The allowed-state table of the semantics doc as code: pure functions that
//! say whether an operation may run on a group (and which states it goes
//! through) or why not. No I/O: the caller gathers the facts into a
//! [`GroupView`] and an [`OpRequest`] (from the store, under the same lock
//! it will write with) and records the returned [`Transition`].
//!
//! Decisions where the doc is silent or loose (also in `control/mod.rs`):
//! - Only one operation at a time per group: every operation is refused
//!   while the group is in a transitional state (`starting_sync`,
//!   `stopping_sync`, `migrating`, `failing_over`, `removing`, `deleting`).
//!   The doc's "remove resources" row lists forbidden states and omits
//!   `stopping_sync`/`deleting` (P) and `deleting` (S); they are refused too.
//! - A new primary (a standby that completed an unplanned failover) keeps
//!   role `standby` with `new_primary = true`; it may restore, remove
//!   resources and be deleted (from `failed_over`), never start sync or bind
//!   a policy.
//! - After a planned migration both sides are `mapped` with roles swapped;
//!   sync is started again by the operator on the new primary.
//! - Removing resources returns the group to the state it was in; a failed
//!   removal too (the doc has no `remove_failed` state); the operation
//!   journal keeps the failure reason.
//! - A DR drill is not a group state: the group stays where it is (and
//!   keeps replicating) while [`GroupView::drill`] says one runs. It starts
//!   where failover may start from a settled group (a standby, not a new
//!   primary, `syncing`), never while another drill runs; it ends whenever
//!   one runs (also after a failover meanwhile). While it runs, the
//!   operations that would delete the copies or the point it uses (delete
//!   group, remove resources) are refused: end the drill first.
//!
//! Layout: this file holds the request and refusal types and [`check`],
//! which refuses damaged records and busy groups and then dispatches to one
//! `check_<op>` per operation in `operations.rs`; `checker.rs` holds the
//! helpers those use to phrase a refusal.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::model::{DrillPhase, GroupState, OpKind, Role, RpKind, RpState, Transition};

mod checker;
mod operations;
#[cfg(test)]
mod tests;

use checker::Checker;
use operations::{
    check_add_resources, check_bind_policy, check_create_recovery_point, check_delete_group,
    check_delete_recovery_point, check_drill, check_end_drill, check_failover, check_migrate,
    check_peer_reprotect, check_remove_resources, check_reprotect, check_restore, check_start_sync,
    check_stop_sync, check_unbind_policy,
};

/// The facts about a group that the rules look at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupView {
    /// Group name (for messages).
    pub name: String,
    /// This agent's role for the group.
    pub role: Role,
    /// Whether it is a new primary (completed failover).
    pub new_primary: bool,
    /// Whether a planned migration has completed on it.
    pub migrated: bool,
    /// Current state.
    pub state: GroupState,
    /// Number of resources.
    pub resources: usize,
    /// Resources still in their initial full sync.
    pub resources_in_initial_sync: usize,
    /// Whether a policy is bound.
    pub policy_bound: bool,
    /// Policy-created recovery points that exist (any state).
    pub policy_recovery_points: usize,
    /// Manual recovery points that exist (any state).
    pub manual_recovery_points: usize,
    /// The DR drill of the group, if one runs (in any phase).
    pub drill: Option<DrillPhase>,
}

impl GroupView {
    /// All recovery points of the group.
    pub fn recovery_points(&self) -> usize {
        self.policy_recovery_points + self.manual_recovery_points
    }
}

/// What a failover restores to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "to", rename_all = "snake_case")]
pub enum FailoverTarget {
    /// The latest data the standby holds.
    Latest,
    /// A chosen recovery point (the others become unusable).
    RecoveryPoint {
        /// Its name (for messages).
        name: String,
        /// Its current state.
        state: RpState,
    },
}

/// An operation someone asks for, with the facts only it needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum OpRequest {
    /// Add resources (a VM counts as all its volumes).
    AddResources {
        /// URIs to add.
        uris: Vec<String>,
        /// Those already in a group (this one or another): `(uri, group name)`.
        already_grouped: Vec<(String, String)>,
    },
    /// Remove resources.
    RemoveResources {
        /// How many.
        count: usize,
    },
    /// Bind a policy.
    BindPolicy {
        /// Requested retention (validated here: 1..=5).
        retention: u8,
    },
    /// Unbind the policy.
    UnbindPolicy,
    /// Start sync.
    StartSync {
        /// Resources whose source no longer exists.
        missing: Vec<String>,
    },
    /// Stop sync.
    StopSync,
    /// Create a recovery point.
    CreateRecoveryPoint {
        /// Manual (operator) or policy (scheduler).
        kind: RpKind,
    },
    /// Delete a recovery point.
    DeleteRecoveryPoint,
    /// Planned migration.
    Migrate {
        /// VMs with volumes outside this group (must be empty).
        split_vms: Vec<String>,
    },
    /// Unplanned failover on the standby.
    Failover {
        /// Latest data or a chosen recovery point.
        to: FailoverTarget,
    },
    /// Restore one resource from a recovery point into a new image.
    Restore {
        /// The recovery point's name (for messages).
        rp_name: String,
        /// Its current state.
        rp_state: RpState,
    },
    /// Delete the group.
    DeleteGroup {
        /// Another group being deleted right now on this agent, if any.
        other_deleting: Option<String>,
    },
    /// Start (or resume an interrupted start of) a DR drill.
    Drill {
        /// The latest group point or a chosen recovery point.
        to: FailoverTarget,
    },
    /// End the DR drill.
    EndDrill,
    /// Re-protect (the new primary, after an unplanned failover): the old
    /// primary becomes its standby, only the differences are sent.
    Reprotect,
    /// The old primary's side of a re-protect, asked by the new primary.
    PeerReprotect,
}

impl OpRequest {
    /// The journal kind of this request.
    pub fn kind(&self) -> OpKind {
        match self {
            OpRequest::AddResources { .. } => OpKind::AddResources,
            OpRequest::RemoveResources { .. } => OpKind::RemoveResources,
            OpRequest::BindPolicy { .. } => OpKind::BindPolicy,
            OpRequest::UnbindPolicy => OpKind::UnbindPolicy,
            OpRequest::StartSync { .. } => OpKind::StartSync,
            OpRequest::StopSync => OpKind::StopSync,
            OpRequest::CreateRecoveryPoint { .. } => OpKind::CreateRecoveryPoint,
            OpRequest::DeleteRecoveryPoint => OpKind::DeleteRecoveryPoint,
            OpRequest::Migrate { .. } => OpKind::Migrate,
            OpRequest::Failover { .. } => OpKind::Failover,
            OpRequest::Restore { .. } => OpKind::Restore,
            OpRequest::DeleteGroup { .. } => OpKind::DeleteGroup,
            OpRequest::Drill { .. } => OpKind::Drill,
            OpRequest::EndDrill => OpKind::EndDrill,
            OpRequest::Reprotect | OpRequest::PeerReprotect => OpKind::Reprotect,
        }
    }
}

/// Which kind of rule refused an operation (for API status codes and tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalReason {
    /// The group's recorded state is not valid for its role (store damage).
    Inconsistent,
    /// Not allowed for this role (or on a new primary).
    WrongRole,
    /// Another operation is in progress on the group.
    Busy,
    /// Not allowed in the group's current state.
    WrongState,
    /// A count limit (resources, manual recovery points, retention).
    Limit,
    /// Another precondition of the table.
    Precondition,
}

/// Why an operation was refused. Changes nothing; shown to the operator as
/// `"{rule} ({context})"`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{rule} ({context})")]
pub struct Refusal {
    /// The operation refused.
    pub op: OpKind,
    /// The group's (or service's) name.
    pub subject: String,
    /// The group's role, for group operations.
    pub role: Option<Role>,
    /// The group's state, for group operations.
    pub state: Option<GroupState>,
    /// Which kind of rule.
    pub reason: RefusalReason,
    /// The rule broken, as a sentence ("start sync is allowed only in mapped
    /// or start_sync_failed").
    pub rule: String,
    /// The fact that broke it ("group 'g1' is syncing").
    pub context: String,
}

/// Whether `op` may run on `group` now; if so, the states it goes through.
pub fn check(op: &OpRequest, group: &GroupView) -> Result<Transition, Refusal> {
    let c = Checker {
        op: op.kind(),
        g: group,
    };
    let g = group;

    // The record itself must make sense before any rule can be applied.
    if !g.state.valid_for(g.role) || (g.new_primary && g.role != Role::Standby) {
        return Err(c.refuse(
            RefusalReason::Inconsistent,
            format!(
                "{} needs a consistent group record; repair the store",
                c.op.human()
            ),
            format!(
                "group '{}' is recorded as a {}{} group in state {}",
                g.name,
                if g.new_primary { "new-primary " } else { "" },
                g.role,
                g.state
            ),
        ));
    }
    // One operation at a time per group.
    if g.state.is_transitional() {
        return Err(c.refuse(
            RefusalReason::Busy,
            format!(
                "{} must wait: another operation is in progress on the group",
                c.op.human()
            ),
            c.is_state(),
        ));
    }

    match op {
        OpRequest::AddResources {
            uris,
            already_grouped,
        } => check_add_resources(&c, uris, already_grouped),
        OpRequest::RemoveResources { count } => check_remove_resources(&c, *count),
        OpRequest::BindPolicy { retention } => check_bind_policy(&c, *retention),
        OpRequest::UnbindPolicy => check_unbind_policy(&c),
        OpRequest::StartSync { missing } => check_start_sync(&c, missing),
        OpRequest::StopSync => check_stop_sync(&c),
        OpRequest::CreateRecoveryPoint { kind } => check_create_recovery_point(&c, *kind),
        OpRequest::DeleteRecoveryPoint => check_delete_recovery_point(&c),
        OpRequest::Migrate { split_vms } => check_migrate(&c, split_vms),
        OpRequest::Failover { to } => check_failover(&c, to),
        OpRequest::Restore { rp_name, rp_state } => check_restore(&c, rp_name, *rp_state),
        OpRequest::DeleteGroup { other_deleting } => {
            check_delete_group(&c, other_deleting.as_deref())
        }
        OpRequest::Drill { to } => check_drill(&c, to),
        OpRequest::EndDrill => check_end_drill(&c),
        OpRequest::Reprotect => check_reprotect(&c),
        OpRequest::PeerReprotect => check_peer_reprotect(&c),
    }
}

/// Whether a service may be deleted: only when no group uses it.
pub fn check_delete_service(service: &str, groups_using: &[String]) -> Result<(), Refusal> {
    if groups_using.is_empty() {
        return Ok(());
    }
    Err(Refusal {
        op: OpKind::DeleteService,
        subject: format!("service '{service}'"),
        role: None,
        state: None,
        reason: RefusalReason::Precondition,
        rule: "delete service is refused while a group uses it".to_owned(),
        context: format!(
            "service '{service}' is used by group{} {}",
            if groups_using.len() == 1 { "" } else { "s" },
            groups_using
                .iter()
                .map(|g| format!("'{g}'"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    })
}

impl fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RefusalReason::Inconsistent => "inconsistent",
            RefusalReason::WrongRole => "wrong_role",
            RefusalReason::Busy => "busy",
            RefusalReason::WrongState => "wrong_state",
            RefusalReason::Limit => "limit",
            RefusalReason::Precondition => "precondition",
        })
    }
}
