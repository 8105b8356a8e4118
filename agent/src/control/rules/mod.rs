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

use std::fmt;

use serde::{Deserialize, Serialize};

use super::model::{
    GroupState, OpKind, Outcome, Retention, Role, RpKind, RpState, Transition,
    MAX_MANUAL_RECOVERY_POINTS, MAX_RESOURCES_PER_GROUP,
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

fn state_list(states: &[GroupState]) -> String {
    let names: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
    match names.len() {
        0 => String::from("no state"),
        1 => names[0].to_owned(),
        n => format!("{} or {}", names[..n - 1].join(", "), names[n - 1]),
    }
}

struct Checker<'a> {
    op: OpKind,
    g: &'a GroupView,
}

impl Checker<'_> {
    fn refuse(&self, reason: RefusalReason, rule: String, context: String) -> Refusal {
        Refusal {
            op: self.op,
            subject: format!("group '{}'", self.g.name),
            role: Some(self.g.role),
            state: Some(self.g.state),
            reason,
            rule,
            context,
        }
    }

    fn is_state(&self) -> String {
        format!("group '{}' is {}", self.g.name, self.g.state)
    }

    fn role(&self, role: Role) -> Result<(), Refusal> {
        if self.g.role == role {
            return Ok(());
        }
        Err(self.refuse(
            RefusalReason::WrongRole,
            format!("{} is allowed only on a {role} group", self.op.human()),
            format!("group '{}' is a {} group", self.g.name, self.g.role),
        ))
    }

    fn not_new_primary(&self) -> Result<(), Refusal> {
        if !self.g.new_primary {
            return Ok(());
        }
        Err(self.refuse(
            RefusalReason::WrongRole,
            format!(
                "{} is not allowed on a new primary; protect it again with a new group",
                self.op.human()
            ),
            format!("group '{}' failed over and is a new primary", self.g.name),
        ))
    }

    fn state_in(&self, allowed: &[GroupState]) -> Result<(), Refusal> {
        if allowed.contains(&self.g.state) {
            return Ok(());
        }
        Err(self.refuse(
            RefusalReason::WrongState,
            format!(
                "{} is allowed only in {}",
                self.op.human(),
                state_list(allowed)
            ),
            self.is_state(),
        ))
    }

    fn state_not_in(&self, forbidden: &[GroupState]) -> Result<(), Refusal> {
        if !forbidden.contains(&self.g.state) {
            return Ok(());
        }
        Err(self.refuse(
            RefusalReason::WrongState,
            format!(
                "{} on a {} group is not allowed in {}",
                self.op.human(),
                self.g.role,
                state_list(forbidden)
            ),
            self.is_state(),
        ))
    }

    fn precondition(&self, ok: bool, rule: &str, context: String) -> Result<(), Refusal> {
        self.require(ok, RefusalReason::Precondition, rule, context)
    }

    fn limit(&self, ok: bool, rule: &str, context: String) -> Result<(), Refusal> {
        self.require(ok, RefusalReason::Limit, rule, context)
    }

    fn require(
        &self,
        ok: bool,
        reason: RefusalReason,
        rule: &str,
        context: String,
    ) -> Result<(), Refusal> {
        if ok {
            Ok(())
        } else {
            Err(self.refuse(reason, rule.to_owned(), context))
        }
    }

    /// A transition that keeps the group where it is.
    fn stay(&self) -> Transition {
        let s = self.g.state;
        Transition {
            op: self.op,
            from: s,
            during: s,
            on_success: self.group(s),
            on_failure: s,
        }
    }

    fn via(&self, during: GroupState, success: GroupState, failure: GroupState) -> Transition {
        Transition {
            op: self.op,
            from: self.g.state,
            during,
            on_success: self.group(success),
            on_failure: failure,
        }
    }

    fn group(&self, state: GroupState) -> Outcome {
        Outcome::Group {
            state,
            role: self.g.role,
            new_primary: self.g.new_primary,
            migrated: self.g.migrated,
        }
    }
}

/// Whether `op` may run on `group` now; if so, the states it goes through.
pub fn check(op: &OpRequest, group: &GroupView) -> Result<Transition, Refusal> {
    use GroupState as S;
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
        } => {
            c.role(Role::Primary)?;
            c.state_in(&[S::Mapped])?;
            c.precondition(
                !uris.is_empty(),
                "add resources needs at least one resource",
                "none given".to_owned(),
            )?;
            let after = g.resources + uris.len();
            c.limit(
                after <= MAX_RESOURCES_PER_GROUP,
                &format!("a group holds at most {MAX_RESOURCES_PER_GROUP} resources"),
                format!(
                    "group '{}' has {} and {} would be added",
                    g.name,
                    g.resources,
                    uris.len()
                ),
            )?;
            let mut seen = std::collections::HashSet::new();
            for uri in uris {
                c.precondition(
                    seen.insert(uri.as_str()),
                    "a resource can be added only once",
                    format!("{uri} is listed twice"),
                )?;
            }
            if let Some((uri, owner)) = already_grouped.first() {
                return Err(c.refuse(
                    RefusalReason::Precondition,
                    "a resource belongs to at most one group".to_owned(),
                    format!("{uri} is already in group '{owner}'"),
                ));
            }
            c.precondition(
                !g.migrated || g.recovery_points() == 0,
                "after a planned migration, add resources needs every recovery point deleted first",
                format!(
                    "group '{}' has {} recovery points",
                    g.name,
                    g.recovery_points()
                ),
            )?;
            Ok(c.stay())
        }
        OpRequest::RemoveResources { count } => {
            match g.role {
                Role::Primary => {
                    c.state_not_in(&[S::StartingSync, S::Syncing, S::Migrating, S::Removing])?
                }
                Role::Standby => c.state_not_in(&[
                    S::Mapped,
                    S::StopSyncFailed,
                    S::FailingOver,
                    S::Migrating,
                    S::MigrationFailed,
                    S::Removing,
                ])?,
            }
            c.precondition(
                *count > 0,
                "remove resources needs at least one resource",
                "none given".to_owned(),
            )?;
            Ok(c.via(S::Removing, g.state, g.state))
        }
        OpRequest::BindPolicy { retention } => {
            c.role(Role::Primary)?;
            c.not_new_primary()?;
            c.state_in(&[S::Mapped, S::Syncing])?;
            c.precondition(
                !g.policy_bound,
                "bind policy needs the group to have no policy bound",
                format!("group '{}' already has a policy", g.name),
            )?;
            c.precondition(
                g.policy_recovery_points == 0,
                "bind policy needs no policy-created recovery points to exist",
                format!(
                    "group '{}' has {} policy-created recovery points",
                    g.name, g.policy_recovery_points
                ),
            )?;
            if let Err(e) = Retention::new(*retention) {
                return Err(c.refuse(
                    RefusalReason::Limit,
                    e.to_string(),
                    format!("{retention} was asked"),
                ));
            }
            Ok(c.stay())
        }
        OpRequest::UnbindPolicy => {
            c.role(Role::Primary)?;
            c.state_in(&[S::Mapped, S::Syncing])?;
            c.precondition(
                g.policy_bound,
                "unbind policy needs a policy bound",
                format!("group '{}' has no policy", g.name),
            )?;
            Ok(c.stay())
        }
        OpRequest::StartSync { missing } => {
            c.role(Role::Primary)?;
            c.not_new_primary()?;
            c.state_in(&[S::Mapped, S::StartSyncFailed])?;
            c.precondition(
                g.resources > 0,
                "start sync needs at least one resource",
                format!("group '{}' has none", g.name),
            )?;
            c.precondition(
                missing.is_empty(),
                "start sync needs every resource to exist",
                format!("missing: {}", missing.join(", ")),
            )?;
            Ok(c.via(S::StartingSync, S::Syncing, S::StartSyncFailed))
        }
        OpRequest::StopSync => {
            c.role(Role::Primary)?;
            c.state_in(&[S::Syncing, S::StopSyncFailed])?;
            c.precondition(
                g.resources_in_initial_sync == 0,
                "stop sync is refused while a resource is in its initial full sync",
                format!(
                    "{} resources of group '{}' are in initial sync",
                    g.resources_in_initial_sync, g.name
                ),
            )?;
            Ok(c.via(S::StoppingSync, S::Mapped, S::StopSyncFailed))
        }
        OpRequest::CreateRecoveryPoint { kind } => {
            c.role(Role::Primary)?;
            c.state_in(&[S::Syncing])?;
            match kind {
                RpKind::Manual => c.limit(
                    g.manual_recovery_points < MAX_MANUAL_RECOVERY_POINTS,
                    &format!(
                        "a group holds at most {MAX_MANUAL_RECOVERY_POINTS} manual recovery points"
                    ),
                    format!("group '{}' has {}", g.name, g.manual_recovery_points),
                )?,
                RpKind::Policy => c.precondition(
                    g.policy_bound,
                    "a policy recovery point needs a policy bound",
                    format!("group '{}' has no policy", g.name),
                )?,
            }
            Ok(c.stay())
        }
        OpRequest::DeleteRecoveryPoint => {
            c.role(Role::Primary)?;
            c.state_in(&[S::Mapped, S::Syncing, S::StopSyncFailed, S::MigrationFailed])?;
            Ok(c.stay())
        }
        OpRequest::Migrate { split_vms } => {
            c.role(Role::Primary)?;
            c.state_in(&[S::Syncing, S::MigrationFailed])?;
            c.precondition(
                !g.policy_bound,
                "planned migration needs the policy unbound first",
                format!("group '{}' has a policy bound", g.name),
            )?;
            c.precondition(
                split_vms.is_empty(),
                "planned migration needs every VM and all its volumes in the same group",
                format!("split VMs: {}", split_vms.join(", ")),
            )?;
            Ok(Transition {
                op: c.op,
                from: g.state,
                during: S::Migrating,
                on_success: Outcome::Group {
                    state: S::Mapped,
                    role: g.role.other(),
                    new_primary: false,
                    migrated: true,
                },
                on_failure: S::MigrationFailed,
            })
        }
        OpRequest::Failover { to } => {
            c.role(Role::Standby)?;
            c.precondition(
                !g.new_primary,
                "unplanned failover is allowed once; the group is already a new primary",
                format!("group '{}' failed over", g.name),
            )?;
            // A failed (or interrupted) failover may be retried: the standby
            // copies are untouched by it.
            c.state_in(&[S::Syncing, S::FailoverFailed])?;
            if let FailoverTarget::RecoveryPoint { name, state } = to {
                c.precondition(
                    *state == RpState::Complete,
                    "failover needs a complete recovery point",
                    format!("recovery point '{name}' is {state}"),
                )?;
            }
            Ok(Transition {
                op: c.op,
                from: g.state,
                during: S::FailingOver,
                on_success: Outcome::Group {
                    state: S::FailedOver,
                    role: Role::Standby,
                    new_primary: true,
                    migrated: g.migrated,
                },
                on_failure: S::FailoverFailed,
            })
        }
        OpRequest::Restore { rp_name, rp_state } => {
            // "S or new primary": a new primary keeps role standby.
            c.role(Role::Standby)?;
            c.state_in(&[S::Syncing, S::FailedOver, S::FailoverFailed])?;
            c.precondition(
                *rp_state == RpState::Complete,
                "restore needs a complete recovery point",
                format!("recovery point '{rp_name}' is {rp_state}"),
            )?;
            Ok(c.stay())
        }
        OpRequest::DeleteGroup { other_deleting } => {
            match g.role {
                Role::Primary => c.state_in(&[
                    S::Mapped,
                    S::MappingFailed,
                    S::StartSyncFailed,
                    S::MigrationFailed,
                    S::DeleteFailed,
                ])?,
                Role::Standby => c.state_in(&[
                    S::MappingFailed,
                    S::FailedOver,
                    S::FailoverFailed,
                    S::DeleteFailed,
                ])?,
            }
            if let Some(other) = other_deleting {
                return Err(c.refuse(
                    RefusalReason::Busy,
                    "groups are deleted one at a time".to_owned(),
                    format!("group '{other}' is being deleted"),
                ));
            }
            Ok(Transition {
                op: c.op,
                from: g.state,
                during: S::Deleting,
                on_success: Outcome::Deleted,
                on_failure: S::DeleteFailed,
            })
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The allowed-state table, typed in by hand from the semantics doc
    /// (plus the one-operation-at-a-time rule, which removes `stopping_sync`
    /// and `deleting` from the doc's "remove resources" rows). Returns the
    /// states in which `op` is allowed for a group of `role`.
    fn doc_table(op: &str, role: Role, new_primary: bool) -> &'static [&'static str] {
        match (op, role) {
            ("add_resources", Role::Primary) => &["mapped"],
            ("remove_resources", Role::Primary) => &[
                "created",
                "mapped",
                "mapping_failed",
                "start_sync_failed",
                "stop_sync_failed",
                "migration_failed",
                "delete_failed",
            ],
            ("remove_resources", Role::Standby) => &[
                "created",
                "mapping_failed",
                "syncing",
                "failed_over",
                "failover_failed",
                "delete_failed",
            ],
            ("bind_policy", Role::Primary) if !new_primary => &["mapped", "syncing"],
            ("unbind_policy", Role::Primary) => &["mapped", "syncing"],
            ("start_sync", Role::Primary) if !new_primary => &["mapped", "start_sync_failed"],
            ("stop_sync", Role::Primary) => &["syncing", "stop_sync_failed"],
            ("create_recovery_point", Role::Primary) => &["syncing"],
            ("delete_recovery_point", Role::Primary) => {
                &["mapped", "syncing", "stop_sync_failed", "migration_failed"]
            }
            ("migrate", Role::Primary) => &["syncing", "migration_failed"],
            ("failover", Role::Standby) if !new_primary => &["syncing", "failover_failed"],
            ("restore", Role::Standby) => &["syncing", "failed_over", "failover_failed"],
            ("delete_group", Role::Primary) => &[
                "mapped",
                "mapping_failed",
                "start_sync_failed",
                "migration_failed",
                "delete_failed",
            ],
            ("delete_group", Role::Standby) => &[
                "mapping_failed",
                "failed_over",
                "failover_failed",
                "delete_failed",
            ],
            _ => &[],
        }
    }

    /// Every request, with facts that satisfy all its non-state preconditions.
    fn requests() -> Vec<(&'static str, OpRequest, bool)> {
        // (op name, request, policy_bound in the view)
        vec![
            (
                "add_resources",
                OpRequest::AddResources {
                    uris: vec!["file:/new".into()],
                    already_grouped: vec![],
                },
                false,
            ),
            (
                "remove_resources",
                OpRequest::RemoveResources { count: 1 },
                false,
            ),
            ("bind_policy", OpRequest::BindPolicy { retention: 3 }, false),
            ("unbind_policy", OpRequest::UnbindPolicy, true),
            (
                "start_sync",
                OpRequest::StartSync { missing: vec![] },
                false,
            ),
            ("stop_sync", OpRequest::StopSync, false),
            (
                "create_recovery_point",
                OpRequest::CreateRecoveryPoint {
                    kind: RpKind::Manual,
                },
                false,
            ),
            (
                "delete_recovery_point",
                OpRequest::DeleteRecoveryPoint,
                false,
            ),
            ("migrate", OpRequest::Migrate { split_vms: vec![] }, false),
            (
                "failover",
                OpRequest::Failover {
                    to: FailoverTarget::Latest,
                },
                false,
            ),
            (
                "restore",
                OpRequest::Restore {
                    rp_name: "rp1".into(),
                    rp_state: RpState::Complete,
                },
                false,
            ),
            (
                "delete_group",
                OpRequest::DeleteGroup {
                    other_deleting: None,
                },
                false,
            ),
        ]
    }

    fn view(role: Role, new_primary: bool, state: GroupState) -> GroupView {
        GroupView {
            name: "g1".into(),
            role,
            new_primary,
            migrated: false,
            state,
            resources: 3,
            resources_in_initial_sync: 0,
            policy_bound: false,
            policy_recovery_points: 0,
            manual_recovery_points: 1,
        }
    }

    #[test]
    fn every_operation_in_every_state_and_role_matches_the_doc() {
        let mut checked = 0;
        let kinds = [
            (Role::Primary, false),
            (Role::Standby, false),
            (Role::Standby, true),
        ];
        for (role, new_primary) in kinds {
            for &state in GroupState::states_of(role) {
                for (name, req, policy_bound) in requests() {
                    assert_eq!(req.kind().as_str(), name);
                    let mut g = view(role, new_primary, state);
                    g.policy_bound = policy_bound;
                    let expected = doc_table(name, role, new_primary).contains(&state.as_str());
                    let got = check(&req, &g);
                    assert_eq!(
                        got.is_ok(),
                        expected,
                        "{name} on {role} (new primary {new_primary}) in {state}: got {got:?}"
                    );
                    if let Ok(t) = got {
                        assert_eq!(t.op, req.kind());
                        assert_eq!(t.from, state);
                        assert!(t.during.valid_for(role));
                        assert!(t.on_failure.valid_for(role), "{name}: {t:?}");
                        if let Outcome::Group {
                            state: after,
                            role: r,
                            ..
                        } = t.on_success
                        {
                            assert!(after.valid_for(r), "{name}: {t:?}");
                        }
                    }
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 3 * 13 * 12);
    }

    #[test]
    fn refusal_names_the_rule_and_the_state() {
        let g = view(Role::Primary, false, GroupState::Syncing);
        let err = check(&OpRequest::StartSync { missing: vec![] }, &g).unwrap_err();
        assert_eq!(
            err.to_string(),
            "start sync is allowed only in mapped or start_sync_failed (group 'g1' is syncing)"
        );
        assert_eq!(err.reason, RefusalReason::WrongState);
        assert_eq!(err.state, Some(GroupState::Syncing));
        assert_eq!(err.op, OpKind::StartSync);

        let s = view(Role::Standby, false, GroupState::Syncing);
        let err = check(&OpRequest::StopSync, &s).unwrap_err();
        assert_eq!(err.reason, RefusalReason::WrongRole);
        assert_eq!(
            err.to_string(),
            "stop sync is allowed only on a primary group (group 'g1' is a standby group)"
        );
    }

    #[test]
    fn transitional_states_refuse_everything_as_busy() {
        for role in [Role::Primary, Role::Standby] {
            for &state in GroupState::states_of(role) {
                if !state.is_transitional() {
                    continue;
                }
                for (_, req, _) in requests() {
                    let err = check(&req, &view(role, false, state)).unwrap_err();
                    assert_eq!(err.reason, RefusalReason::Busy, "{req:?} {state}");
                }
            }
        }
    }

    #[test]
    fn inconsistent_records_are_refused() {
        let err = check(
            &OpRequest::StopSync,
            &view(Role::Primary, false, GroupState::FailedOver),
        )
        .unwrap_err();
        assert_eq!(err.reason, RefusalReason::Inconsistent);
        let err = check(
            &OpRequest::StopSync,
            &view(Role::Primary, true, GroupState::Syncing),
        )
        .unwrap_err();
        assert_eq!(err.reason, RefusalReason::Inconsistent);
    }

    #[test]
    fn transitions_follow_the_state_machine() {
        use GroupState as S;
        let p = |s| view(Role::Primary, false, s);
        let t = check(&OpRequest::StartSync { missing: vec![] }, &p(S::Mapped)).unwrap();
        assert_eq!(
            (t.from, t.during, t.on_failure),
            (S::Mapped, S::StartingSync, S::StartSyncFailed)
        );
        assert_eq!(
            t.on_success,
            Outcome::Group {
                state: S::Syncing,
                role: Role::Primary,
                new_primary: false,
                migrated: false
            }
        );
        let t = check(&OpRequest::StopSync, &p(S::StopSyncFailed)).unwrap();
        assert_eq!(
            (t.during, t.on_failure),
            (S::StoppingSync, S::StopSyncFailed)
        );
        assert!(matches!(
            t.on_success,
            Outcome::Group {
                state: S::Mapped,
                ..
            }
        ));

        let t = check(&OpRequest::Migrate { split_vms: vec![] }, &p(S::Syncing)).unwrap();
        assert_eq!((t.during, t.on_failure), (S::Migrating, S::MigrationFailed));
        assert_eq!(
            t.on_success,
            Outcome::Group {
                state: S::Mapped,
                role: Role::Standby,
                new_primary: false,
                migrated: true
            }
        );

        let t = check(
            &OpRequest::Failover {
                to: FailoverTarget::Latest,
            },
            &view(Role::Standby, false, S::Syncing),
        )
        .unwrap();
        assert_eq!(
            (t.during, t.on_failure),
            (S::FailingOver, S::FailoverFailed)
        );
        assert_eq!(
            t.on_success,
            Outcome::Group {
                state: S::FailedOver,
                role: Role::Standby,
                new_primary: true,
                migrated: false
            }
        );

        let t = check(
            &OpRequest::DeleteGroup {
                other_deleting: None,
            },
            &p(S::MappingFailed),
        )
        .unwrap();
        assert_eq!((t.during, t.on_failure), (S::Deleting, S::DeleteFailed));
        assert_eq!(t.on_success, Outcome::Deleted);

        let t = check(
            &OpRequest::RemoveResources { count: 2 },
            &p(S::StopSyncFailed),
        )
        .unwrap();
        assert_eq!(t.during, S::Removing);
        assert!(matches!(
            t.on_success,
            Outcome::Group {
                state: S::StopSyncFailed,
                ..
            }
        ));
        assert_eq!(t.on_failure, S::StopSyncFailed);

        let t = check(&OpRequest::DeleteRecoveryPoint, &p(S::Syncing)).unwrap();
        assert!(!t.enters_transitional_state());
    }

    fn refused(req: OpRequest, g: &GroupView) -> Refusal {
        match check(&req, g) {
            Ok(t) => panic!("{req:?} allowed: {t:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn add_resources_preconditions() {
        let mut g = view(Role::Primary, false, GroupState::Mapped);
        let uris = |n: usize| (0..n).map(|i| format!("file:/v{i}")).collect::<Vec<_>>();
        g.resources = 17;
        let ok = OpRequest::AddResources {
            uris: uris(3),
            already_grouped: vec![],
        };
        assert!(check(&ok, &g).is_ok(), "17 + 3 = 20 is the limit");
        let e = refused(
            OpRequest::AddResources {
                uris: uris(4),
                already_grouped: vec![],
            },
            &g,
        );
        assert_eq!(e.reason, RefusalReason::Limit);
        assert!(e.to_string().contains("at most 20"), "{e}");

        let e = refused(
            OpRequest::AddResources {
                uris: vec!["file:/a".into()],
                already_grouped: vec![("file:/a".into(), "g2".into())],
            },
            &g,
        );
        assert_eq!(
            e.to_string(),
            "a resource belongs to at most one group (file:/a is already in group 'g2')"
        );
        let e = refused(
            OpRequest::AddResources {
                uris: vec!["file:/a".into(), "file:/a".into()],
                already_grouped: vec![],
            },
            &g,
        );
        assert!(e.to_string().contains("listed twice"), "{e}");
        let e = refused(
            OpRequest::AddResources {
                uris: vec![],
                already_grouped: vec![],
            },
            &g,
        );
        assert_eq!(e.reason, RefusalReason::Precondition);

        // After a planned migration: every recovery point deleted first.
        g.migrated = true;
        g.manual_recovery_points = 1;
        let e = refused(ok.clone(), &g);
        assert!(e.rule.contains("planned migration"), "{e}");
        g.manual_recovery_points = 0;
        g.policy_recovery_points = 0;
        assert!(check(&ok, &g).is_ok());
    }

    #[test]
    fn policy_preconditions() {
        let mut g = view(Role::Primary, false, GroupState::Syncing);
        for bad in [0, 6, 200] {
            let e = refused(OpRequest::BindPolicy { retention: bad }, &g);
            assert_eq!(e.reason, RefusalReason::Limit, "{bad}");
        }
        for good in 1..=5 {
            assert!(check(&OpRequest::BindPolicy { retention: good }, &g).is_ok());
        }
        g.policy_recovery_points = 1;
        let e = refused(OpRequest::BindPolicy { retention: 2 }, &g);
        assert!(e.rule.contains("policy-created"), "{e}");
        g.policy_recovery_points = 0;
        g.policy_bound = true;
        let e = refused(OpRequest::BindPolicy { retention: 2 }, &g);
        assert!(e.rule.contains("no policy bound"), "{e}");
        // Unbind needs one bound; migration needs none.
        assert!(check(&OpRequest::UnbindPolicy, &g).is_ok());
        let e = refused(OpRequest::Migrate { split_vms: vec![] }, &g);
        assert!(e.rule.contains("policy unbound"), "{e}");
        g.policy_bound = false;
        refused(OpRequest::UnbindPolicy, &g);
        // Policy recovery points need a policy.
        refused(
            OpRequest::CreateRecoveryPoint {
                kind: RpKind::Policy,
            },
            &g,
        );
        g.policy_bound = true;
        assert!(check(
            &OpRequest::CreateRecoveryPoint {
                kind: RpKind::Policy
            },
            &g
        )
        .is_ok());
    }

    #[test]
    fn sync_and_recovery_point_preconditions() {
        let mut g = view(Role::Primary, false, GroupState::Mapped);
        g.resources = 0;
        let e = refused(OpRequest::StartSync { missing: vec![] }, &g);
        assert!(e.rule.contains("at least one resource"), "{e}");
        g.resources = 2;
        let e = refused(
            OpRequest::StartSync {
                missing: vec!["file:/gone".into()],
            },
            &g,
        );
        assert!(e.context.contains("file:/gone"), "{e}");

        let mut g = view(Role::Primary, false, GroupState::Syncing);
        g.resources_in_initial_sync = 1;
        let e = refused(OpRequest::StopSync, &g);
        assert!(e.rule.contains("initial full sync"), "{e}");
        g.resources_in_initial_sync = 0;
        assert!(check(&OpRequest::StopSync, &g).is_ok());

        let manual = OpRequest::CreateRecoveryPoint {
            kind: RpKind::Manual,
        };
        g.manual_recovery_points = 4;
        assert!(check(&manual, &g).is_ok());
        g.manual_recovery_points = 5;
        assert_eq!(refused(manual, &g).reason, RefusalReason::Limit);

        let e = refused(
            OpRequest::Migrate {
                split_vms: vec!["vm1".into()],
            },
            &g,
        );
        assert!(e.context.contains("vm1"), "{e}");
    }

    #[test]
    fn failover_restore_and_delete_preconditions() {
        let s = view(Role::Standby, false, GroupState::Syncing);
        let to_rp = |state| OpRequest::Failover {
            to: FailoverTarget::RecoveryPoint {
                name: "rp1".into(),
                state,
            },
        };
        assert!(check(&to_rp(RpState::Complete), &s).is_ok());
        for bad in [RpState::Creating, RpState::Deleting, RpState::Unusable] {
            refused(to_rp(bad), &s);
        }
        // A failed or interrupted failover is retried from failover_failed.
        let failed = view(Role::Standby, false, GroupState::FailoverFailed);
        assert!(check(&to_rp(RpState::Complete), &failed).is_ok());
        assert!(check(
            &OpRequest::Failover {
                to: FailoverTarget::Latest
            },
            &failed
        )
        .is_ok());
        let np = view(Role::Standby, true, GroupState::FailedOver);
        let restore = |rp_state| OpRequest::Restore {
            rp_name: "rp1".into(),
            rp_state,
        };
        assert!(check(&restore(RpState::Complete), &np).is_ok());
        refused(restore(RpState::Unusable), &np);
        // A new primary cannot start sync or bind a policy (it is not a P).
        refused(OpRequest::StartSync { missing: vec![] }, &np);
        refused(OpRequest::BindPolicy { retention: 1 }, &np);

        let e = refused(
            OpRequest::DeleteGroup {
                other_deleting: Some("g9".into()),
            },
            &view(Role::Primary, false, GroupState::Mapped),
        );
        assert_eq!(e.reason, RefusalReason::Busy);
        assert!(e.to_string().contains("one at a time"), "{e}");
    }

    #[test]
    fn delete_service_only_when_unused() {
        assert!(check_delete_service("dr", &[]).is_ok());
        let e = check_delete_service("dr", &["g1".into(), "g2".into()]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "delete service is refused while a group uses it (service 'dr' is used by groups 'g1', 'g2')"
        );
        assert_eq!(e.op, OpKind::DeleteService);
    }
}
