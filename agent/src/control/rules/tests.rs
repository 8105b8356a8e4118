//! Tests of the rules: every operation in every state and role against the
//! allowed-state table typed in from the semantics doc, refusal messages,
//! busy and damaged groups, the state machine, and each operation's
//! preconditions.

use super::*;
use crate::control::model::{DrillPhase, GroupState, OpKind, Outcome, Role, RpKind, RpState};

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
            "reprotect_failed",
        ],
        ("delete_group", Role::Standby) => &[
            "mapping_failed",
            "failed_over",
            "failover_failed",
            "delete_failed",
            "reprotect_failed",
        ],
        // ferry's reprotect: on a new primary after its failover, retried
        // after a failure.
        ("reprotect", Role::Standby) if new_primary => &["failed_over", "reprotect_failed"],
        // A drill starts where failover starts from a settled group.
        ("drill", Role::Standby) if !new_primary => &["syncing"],
        // It ends in every settled state (requests() gives it a drill).
        ("end_drill", Role::Primary) => &[
            "created",
            "mapped",
            "mapping_failed",
            "start_sync_failed",
            "syncing",
            "stop_sync_failed",
            "migration_failed",
            "delete_failed",
            "reprotect_failed",
        ],
        ("end_drill", Role::Standby) => &[
            "created",
            "mapped",
            "mapping_failed",
            "syncing",
            "failed_over",
            "failover_failed",
            "migration_failed",
            "stop_sync_failed",
            "delete_failed",
            "reprotect_failed",
        ],
        _ => &[],
    }
}

/// Every request, with facts that satisfy all its non-state preconditions.
fn requests() -> Vec<(&'static str, OpRequest, bool)> {
    // (op name, request, policy_bound in the view); end_drill is checked
    // against a view with a drill running (see `view_for`).
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
        (
            "drill",
            OpRequest::Drill {
                to: FailoverTarget::Latest,
            },
            false,
        ),
        ("end_drill", OpRequest::EndDrill, false),
        ("reprotect", OpRequest::Reprotect, false),
    ]
}

/// The view a request of `requests()` is checked against: end drill needs
/// a drill running.
fn view_for(name: &str, role: Role, new_primary: bool, state: GroupState) -> GroupView {
    let mut g = view(role, new_primary, state);
    if name == "end_drill" {
        g.drill = Some(DrillPhase::Active);
    }
    g
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
        drill: None,
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
                let mut g = view_for(name, role, new_primary, state);
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
    // (primary, standby, new primary) × 15 states × 15 operations.
    assert_eq!(checked, 3 * 15 * 15);
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
            for (name, req, _) in requests() {
                let err = check(&req, &view_for(name, role, false, state)).unwrap_err();
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

#[test]
fn drill_starts_where_failover_does_once_and_ends_whenever_one_runs() {
    use GroupState as S;
    let latest = || OpRequest::Drill {
        to: FailoverTarget::Latest,
    };
    let s = view(Role::Standby, false, S::Syncing);
    let t = check(&latest(), &s).unwrap();
    assert!(
        !t.enters_transitional_state(),
        "a drill keeps the group replicating: {t:?}"
    );
    assert!(matches!(
        t.on_success,
        Outcome::Group {
            state: S::Syncing,
            ..
        }
    ));
    assert_eq!(t.on_failure, S::Syncing);
    // A chosen point must be complete.
    let to_rp = |state| OpRequest::Drill {
        to: FailoverTarget::RecoveryPoint {
            name: "rp1".into(),
            state,
        },
    };
    assert!(check(&to_rp(RpState::Complete), &s).is_ok());
    for bad in [RpState::Creating, RpState::Deleting, RpState::Unusable] {
        let e = refused(to_rp(bad), &s);
        assert!(e.rule.contains("complete recovery point"), "{e}");
    }
    // One drill at a time; an interrupted start may be retried.
    for phase in [DrillPhase::Active, DrillPhase::Ending] {
        let mut d = s.clone();
        d.drill = Some(phase);
        let e = refused(latest(), &d);
        assert_eq!(e.reason, RefusalReason::Busy);
        assert!(e.rule.contains("one drill at a time"), "{e}");
    }
    let mut starting = s.clone();
    starting.drill = Some(DrillPhase::Starting);
    assert!(check(&latest(), &starting).is_ok());
    // Never during a migration (busy), nor where failover is refused.
    let e = refused(latest(), &view(Role::Standby, false, S::Migrating));
    assert_eq!(e.reason, RefusalReason::Busy);
    refused(latest(), &view(Role::Standby, false, S::MigrationFailed));
    refused(latest(), &view(Role::Standby, false, S::Mapped));
    refused(latest(), &view(Role::Primary, false, S::Syncing));
    let e = refused(latest(), &view(Role::Standby, true, S::FailedOver));
    assert!(e.rule.contains("new primary"), "{e}");

    // End: only with a drill; also after a failover meanwhile.
    let e = refused(OpRequest::EndDrill, &s);
    assert!(e.rule.contains("needs a drill running"), "{e}");
    let mut after_failover = view(Role::Standby, true, S::FailedOver);
    after_failover.drill = Some(DrillPhase::Active);
    let t = check(&OpRequest::EndDrill, &after_failover).unwrap();
    assert!(!t.enters_transitional_state());
    for phase in [DrillPhase::Starting, DrillPhase::Ending] {
        let mut d = s.clone();
        d.drill = Some(phase);
        assert!(check(&OpRequest::EndDrill, &d).is_ok(), "{phase}");
    }
    // ... but not in the middle of another operation.
    let mut failing = view(Role::Standby, false, S::FailingOver);
    failing.drill = Some(DrillPhase::Active);
    assert_eq!(
        refused(OpRequest::EndDrill, &failing).reason,
        RefusalReason::Busy
    );
}

#[test]
fn a_running_drill_blocks_what_would_delete_its_copies_but_not_failover() {
    use GroupState as S;
    let mut s = view(Role::Standby, false, S::Syncing);
    s.drill = Some(DrillPhase::Active);
    let e = refused(OpRequest::RemoveResources { count: 1 }, &s);
    assert_eq!(
        e.to_string(),
        "remove resources is refused while a drill runs; end it first with drill --end \
         (group 'g1' has a drill active)"
    );
    let mut np = view(Role::Standby, true, S::FailedOver);
    np.drill = Some(DrillPhase::Starting);
    let e = refused(
        OpRequest::DeleteGroup {
            other_deleting: None,
        },
        &np,
    );
    assert!(e.rule.contains("end it first"), "{e}");
    // Failover and restore go on: they make their own new volumes.
    assert!(check(
        &OpRequest::Failover {
            to: FailoverTarget::Latest
        },
        &s
    )
    .is_ok());
    assert!(check(
        &OpRequest::Restore {
            rp_name: "rp1".into(),
            rp_state: RpState::Complete
        },
        &s
    )
    .is_ok());
    np.drill = None;
    assert!(check(
        &OpRequest::DeleteGroup {
            other_deleting: None
        },
        &np
    )
    .is_ok());
}

#[test]
fn the_old_primary_takes_part_in_a_reprotect_from_any_settled_state_and_becomes_the_standby() {
    use GroupState as S;
    for &state in GroupState::PRIMARY {
        let g = view(Role::Primary, false, state);
        let got = check(&OpRequest::PeerReprotect, &g);
        let allowed = !state.is_transitional()
            && !matches!(state, S::Created | S::MappingFailed | S::DeleteFailed);
        assert_eq!(got.is_ok(), allowed, "{state}: {got:?}");
        if let Ok(t) = got {
            assert_eq!(t.during, S::Reprotecting);
            assert_eq!(t.on_failure, S::ReprotectFailed);
            assert_eq!(
                t.on_success,
                Outcome::Group {
                    state: S::Syncing,
                    role: Role::Standby,
                    new_primary: false,
                    migrated: false
                }
            );
        }
    }
    // Never on a standby: a standby that did not fail over has nothing to
    // give back, and the new primary is the one that asks.
    let e = refused(
        OpRequest::PeerReprotect,
        &view(Role::Standby, false, S::Syncing),
    );
    assert_eq!(e.reason, RefusalReason::WrongRole);
    // The new primary ends as a primary replicating, no longer new.
    let t = check(
        &OpRequest::Reprotect,
        &view(Role::Standby, true, S::FailedOver),
    )
    .unwrap();
    assert_eq!(
        t.on_success,
        Outcome::Group {
            state: S::Syncing,
            role: Role::Primary,
            new_primary: false,
            migrated: false
        }
    );
    let mut drilling = view(Role::Standby, true, S::FailedOver);
    drilling.drill = Some(DrillPhase::Active);
    assert!(refused(OpRequest::Reprotect, &drilling)
        .rule
        .contains("end it first"));
}
