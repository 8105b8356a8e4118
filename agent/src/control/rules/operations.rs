//! One check per operation: each `check_<op>` is that operation's row of the
//! allowed-state table (role, states, preconditions) and returns the states
//! the group goes through. [`super::check`] first refuses damaged records and
//! busy groups, then dispatches here.

use super::checker::Checker;
use super::{FailoverTarget, Refusal, RefusalReason};
use crate::control::model::{
    DrillPhase, GroupState, Outcome, Retention, Role, RpKind, RpState, Transition,
    MAX_MANUAL_RECOVERY_POINTS, MAX_RESOURCES_PER_GROUP,
};

/// Add resources: a primary group in `mapped`; at least one URI, none listed
/// twice or already in a group, at most [`MAX_RESOURCES_PER_GROUP`] in all;
/// after a planned migration, only once every recovery point is deleted.
pub(super) fn check_add_resources(
    c: &Checker<'_>,
    uris: &[String],
    already_grouped: &[(String, String)],
) -> Result<Transition, Refusal> {
    use GroupState as S;
    let g = c.g;
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

/// Remove resources: refused in the states where a primary replicates or
/// migrates (or a standby receives, fails over or migrates), and while a DR
/// drill runs; the group returns to the state it was in, also on failure.
pub(super) fn check_remove_resources(c: &Checker<'_>, count: usize) -> Result<Transition, Refusal> {
    use GroupState as S;
    let g = c.g;
    match g.role {
        Role::Primary => c.state_not_in(&[
            S::StartingSync,
            S::Syncing,
            S::Migrating,
            S::Removing,
            S::ReprotectFailed,
        ])?,
        Role::Standby => c.state_not_in(&[
            S::Mapped,
            S::StopSyncFailed,
            S::FailingOver,
            S::Migrating,
            S::MigrationFailed,
            S::Removing,
            S::ReprotectFailed,
        ])?,
    }
    c.precondition(
        count > 0,
        "remove resources needs at least one resource",
        "none given".to_owned(),
    )?;
    c.no_drill()?;
    Ok(c.via(S::Removing, g.state, g.state))
}

/// Bind policy: a primary group (not a new primary) in `mapped` or `syncing`,
/// with no policy bound and no policy-created recovery points left; retention
/// 1..=5.
pub(super) fn check_bind_policy(c: &Checker<'_>, retention: u8) -> Result<Transition, Refusal> {
    use GroupState as S;
    let g = c.g;
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
    if let Err(e) = Retention::new(retention) {
        return Err(c.refuse(
            RefusalReason::Limit,
            e.to_string(),
            format!("{retention} was asked"),
        ));
    }
    Ok(c.stay())
}

/// Unbind policy: a primary group in `mapped` or `syncing` with a policy bound.
pub(super) fn check_unbind_policy(c: &Checker<'_>) -> Result<Transition, Refusal> {
    use GroupState as S;
    let g = c.g;
    c.role(Role::Primary)?;
    c.state_in(&[S::Mapped, S::Syncing])?;
    c.precondition(
        g.policy_bound,
        "unbind policy needs a policy bound",
        format!("group '{}' has no policy", g.name),
    )?;
    Ok(c.stay())
}

/// Start sync: a primary group (not a new primary) in `mapped` or
/// `start_sync_failed`, with at least one resource and every source present.
pub(super) fn check_start_sync(c: &Checker<'_>, missing: &[String]) -> Result<Transition, Refusal> {
    use GroupState as S;
    let g = c.g;
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

/// Stop sync: a primary group in `syncing` or `stop_sync_failed` with no
/// resource still in its initial full sync.
pub(super) fn check_stop_sync(c: &Checker<'_>) -> Result<Transition, Refusal> {
    use GroupState as S;
    let g = c.g;
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

/// Create recovery point: a primary group in `syncing`; at most
/// [`MAX_MANUAL_RECOVERY_POINTS`] manual ones, and a policy one needs a policy
/// bound.
pub(super) fn check_create_recovery_point(
    c: &Checker<'_>,
    kind: RpKind,
) -> Result<Transition, Refusal> {
    use GroupState as S;
    let g = c.g;
    c.role(Role::Primary)?;
    c.state_in(&[S::Syncing])?;
    match kind {
        RpKind::Manual => c.limit(
            g.manual_recovery_points < MAX_MANUAL_RECOVERY_POINTS,
            &format!("a group holds at most {MAX_MANUAL_RECOVERY_POINTS} manual recovery points"),
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

/// Delete recovery point: a primary group in `mapped`, `syncing`,
/// `stop_sync_failed` or `migration_failed`.
pub(super) fn check_delete_recovery_point(c: &Checker<'_>) -> Result<Transition, Refusal> {
    use GroupState as S;
    c.role(Role::Primary)?;
    c.state_in(&[S::Mapped, S::Syncing, S::StopSyncFailed, S::MigrationFailed])?;
    Ok(c.stay())
}

/// Planned migration: a primary group in `syncing` or `migration_failed`, no
/// policy bound, no VM split across groups; on success both roles swap and the
/// group is `mapped`.
pub(super) fn check_migrate(c: &Checker<'_>, split_vms: &[String]) -> Result<Transition, Refusal> {
    use GroupState as S;
    let g = c.g;
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

/// Unplanned failover: a standby group, once (never on a new primary), in
/// `syncing` or `failover_failed` (a failed one may be retried), to the latest
/// data or a complete recovery point; on success it is a new primary in
/// `failed_over`.
pub(super) fn check_failover(c: &Checker<'_>, to: &FailoverTarget) -> Result<Transition, Refusal> {
    use GroupState as S;
    let g = c.g;
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

/// Restore: a standby group or new primary in `syncing`, `failed_over` or
/// `failover_failed`, from a complete recovery point.
pub(super) fn check_restore(
    c: &Checker<'_>,
    rp_name: &str,
    rp_state: RpState,
) -> Result<Transition, Refusal> {
    use GroupState as S;
    // "S or new primary": a new primary keeps role standby.
    c.role(Role::Standby)?;
    c.state_in(&[S::Syncing, S::FailedOver, S::FailoverFailed])?;
    c.precondition(
        rp_state == RpState::Complete,
        "restore needs a complete recovery point",
        format!("recovery point '{rp_name}' is {rp_state}"),
    )?;
    Ok(c.stay())
}

/// Delete group: a settled state that depends on the role, no DR drill
/// running (end it first: its volumes are the operator's to look at); one
/// group is deleted at a time.
pub(super) fn check_delete_group(
    c: &Checker<'_>,
    other_deleting: Option<&str>,
) -> Result<Transition, Refusal> {
    use GroupState as S;
    let g = c.g;
    match g.role {
        Role::Primary => c.state_in(&[
            S::Mapped,
            S::MappingFailed,
            S::StartSyncFailed,
            S::MigrationFailed,
            S::DeleteFailed,
            S::ReprotectFailed,
        ])?,
        Role::Standby => c.state_in(&[
            S::MappingFailed,
            S::FailedOver,
            S::FailoverFailed,
            S::DeleteFailed,
            S::ReprotectFailed,
        ])?,
    }
    c.no_drill()?;
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

/// DR drill: where an unplanned failover may start from a settled group (a
/// standby group, not a new primary, `syncing`), at the latest group point
/// or a complete recovery point, while no other drill runs. An interrupted
/// start (phase `starting`) may be retried. The group keeps its state (and
/// keeps replicating): a drill is not a transitional state.
pub(super) fn check_drill(c: &Checker<'_>, to: &FailoverTarget) -> Result<Transition, Refusal> {
    use GroupState as S;
    let g = c.g;
    c.role(Role::Standby)?;
    c.precondition(
        !g.new_primary,
        "a drill rehearses a failover; the group is already a new primary",
        format!("group '{}' failed over", g.name),
    )?;
    c.state_in(&[S::Syncing])?;
    match g.drill {
        None | Some(DrillPhase::Starting) => {}
        Some(phase) => {
            return Err(c.refuse(
                RefusalReason::Busy,
                "a group runs one drill at a time; end it first with drill --end".to_owned(),
                format!("group '{}' has a drill {phase}", g.name),
            ))
        }
    }
    if let FailoverTarget::RecoveryPoint { name, state } = to {
        c.precondition(
            *state == RpState::Complete,
            "a drill needs a complete recovery point",
            format!("recovery point '{name}' is {state}"),
        )?;
    }
    Ok(c.stay())
}

/// End the DR drill: whenever one runs (in any phase, any settled state:
/// also after a failover meanwhile). The group keeps its state.
pub(super) fn check_end_drill(c: &Checker<'_>) -> Result<Transition, Refusal> {
    let g = c.g;
    c.precondition(
        g.drill.is_some(),
        "drill --end needs a drill running",
        format!("group '{}' has no drill", g.name),
    )?;
    Ok(c.stay())
}

/// Re-protect (ferry's addition): a new primary (a standby that failed
/// over) in `failed_over` or `reprotect_failed` (a failed one is retried),
/// with resources and no drill running. On success it is a primary
/// (no longer a new primary) in `syncing`: the old primary holds its
/// volumes' standby copies and the loop replicates to it.
pub(super) fn check_reprotect(c: &Checker<'_>) -> Result<Transition, Refusal> {
    use GroupState as S;
    let g = c.g;
    c.role(Role::Standby)?;
    c.precondition(
        g.new_primary,
        "reprotect runs on the new primary after an unplanned failover",
        format!("group '{}' has not failed over", g.name),
    )?;
    c.state_in(&[S::FailedOver, S::ReprotectFailed])?;
    c.precondition(
        g.resources > 0,
        "reprotect needs at least one resource",
        format!("group '{}' has none", g.name),
    )?;
    c.no_drill()?;
    Ok(Transition {
        op: c.op,
        from: g.state,
        during: S::Reprotecting,
        on_success: Outcome::Group {
            state: S::Syncing,
            role: Role::Primary,
            new_primary: false,
            migrated: g.migrated,
        },
        on_failure: S::ReprotectFailed,
    })
}

/// The old primary's side of a re-protect (asked by the new primary over
/// the service): a primary group in any settled state but the deleting
/// ones (it may still be `syncing`: its cycles fail against the fenced
/// copies); it becomes a standby in `syncing`. Only this operation gives a
/// returning old primary a role again: it never takes the primary role
/// back by itself.
pub(super) fn check_peer_reprotect(c: &Checker<'_>) -> Result<Transition, Refusal> {
    use GroupState as S;
    let g = c.g;
    c.role(Role::Primary)?;
    c.state_not_in(&[S::Created, S::MappingFailed, S::DeleteFailed])?;
    Ok(Transition {
        op: c.op,
        from: g.state,
        during: S::Reprotecting,
        on_success: Outcome::Group {
            state: S::Syncing,
            role: Role::Standby,
            new_primary: false,
            migrated: g.migrated,
        },
        on_failure: S::ReprotectFailed,
    })
}
