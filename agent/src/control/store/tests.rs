//! Tests of the control store: persistence across reopen, the operation
//! plan (finish, fail, roll back), refusals, constraint errors and the
//! recovery point life cycle; crash safety and schema migration are in
//! `tests/durability.rs`.

use ferry_protocol::AgentId;
use serde_json::json;

use super::*;
use crate::control::error::StoreError;
use crate::control::model::*;
use crate::control::rules::{check, FailoverTarget, GroupView, OpRequest};
use crate::control::RpoThresholds;

mod durability;
mod shared_store;

fn service(name: &str) -> NewService {
    NewService {
        name: name.into(),
        local_endpoint: "127.0.0.1:7001".into(),
        remote_endpoint: "127.0.0.1:7002".into(),
        remote_fingerprint: AgentId([7; 32]),
    }
}

fn volume(uri: &str) -> NewResource {
    NewResource {
        uri: uri.into(),
        kind: ResourceKind::Volume,
        size_bytes: 1 << 30,
        standby_target: uri.trim_start_matches("file:/").replace('/', "_"),
    }
}

/// A store with service "dr" and primary group `name` in state mapped.
fn mapped_group(store: &mut Store, name: &str) -> Group {
    let svc = match store.service_by_name("dr") {
        Ok(s) => s,
        Err(_) => store.create_service(&service("dr")).unwrap(),
    };
    let (g, op) = store
        .create_group(
            &NewGroup {
                name: name.into(),
                role: Role::Primary,
                service_id: svc.id,
                remote_group_id: None,
                remote_project: "tenant-a".into(),
                rpo: Default::default(),
            },
            &json!({}),
        )
        .unwrap();
    assert_eq!(g.state, GroupState::Created);
    store.finish_operation(op.id, OpResult::Succeeded).unwrap();
    store.group(g.id).unwrap()
}

#[test]
fn everything_persists_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (svc, group, policy, resources, rp, op);
    {
        let mut store = Store::open(dir.path()).unwrap();
        svc = store.create_service(&service("dr")).unwrap();
        let g = mapped_group(&mut store, "g1");
        policy = store
            .create_policy("nightly", &json!({"daily": "02:00", "tz": "Europe/Berlin"}))
            .unwrap();
        store
            .bind_policy(g.id, policy.id, Retention::new(3).unwrap())
            .unwrap();
        let vm = NewResource {
            uri: "file:/vm1-boot.raw".into(),
            kind: ResourceKind::VmVolume {
                vm: "vm1".into(),
                boot: true,
            },
            size_bytes: 10 << 30,
            standby_target: "vm1-boot".into(),
        };
        resources = store
            .add_resources(g.id, &[vm, volume("file:/data.raw")])
            .unwrap();
        store
            .set_resource_state("file:/data.raw", ResourceState::InitialSync)
            .unwrap();
        let t = check(
            &OpRequest::StartSync { missing: vec![] },
            &store.group_view(g.id).unwrap(),
        )
        .unwrap();
        op = store
            .begin_operation(g.id, &t, &json!({"why": "test"}))
            .unwrap();
        rp = store
            .create_recovery_point(
                g.id,
                &NewRecoveryPoint {
                    name: "rp1".into(),
                    engine_rp: 42,
                    kind: RpKind::Manual,
                },
            )
            .unwrap();
        store.set_pending_remote_delete(rp.id, true).unwrap();
        group = store.group(g.id).unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.services().unwrap(), vec![svc]);
    assert_eq!(store.policies().unwrap(), vec![policy.clone()]);
    let g = store.group_by_name("g1").unwrap();
    assert_eq!(g, group);
    assert_eq!(g.state, GroupState::StartingSync);
    assert_eq!(
        g.policy.map(|b| (b.policy_id, b.retention.get())),
        Some((policy.id, 3))
    );
    let mut got = store.resources(g.id).unwrap();
    got.sort_by(|a, b| a.uri.cmp(&b.uri));
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].state, ResourceState::InitialSync);
    assert_eq!(got[1], resources[0]);
    let rps = store.recovery_points(g.id).unwrap();
    assert_eq!(rps.len(), 1);
    assert_eq!(rps[0].engine_rp, 42);
    assert!(rps[0].pending_remote_delete);
    assert_eq!(store.pending_remote_deletes().unwrap(), rps);
    assert_eq!(store.unfinished_operations().unwrap(), vec![op.clone()]);
    assert_eq!(op.params, json!({"why": "test"}));
    assert_eq!(op.group_name.as_deref(), Some("g1"));
    let view = store.group_view(g.id).unwrap();
    assert_eq!((view.resources, view.resources_in_initial_sync), (2, 1));
    assert_eq!(
        (view.manual_recovery_points, view.policy_recovery_points),
        (1, 0)
    );
    assert!(view.policy_bound);
    let _ = rp;
}

#[test]
fn operation_plan_drives_finish_fail_and_rollback() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let g = mapped_group(&mut store, "g1");
    store.add_resources(g.id, &[volume("file:/a")]).unwrap();
    let start = |store: &mut Store| {
        let t = check(
            &OpRequest::StartSync { missing: vec![] },
            &store.group_view(g.id).unwrap(),
        )
        .unwrap();
        store.begin_operation(g.id, &t, &json!(null)).unwrap()
    };

    let op = start(&mut store);
    assert_eq!(store.group(g.id).unwrap().state, GroupState::StartingSync);
    // A second operation on a busy group is refused by the rules...
    let err = check(&OpRequest::StopSync, &store.group_view(g.id).unwrap()).unwrap_err();
    assert_eq!(err.reason, crate::control::rules::RefusalReason::Busy);
    let rolled = store.finish_operation(op.id, OpResult::RolledBack).unwrap();
    assert_eq!(rolled.state, OpState::RolledBack);
    assert!(rolled.finished_at.is_some());
    assert_eq!(store.group(g.id).unwrap().state, GroupState::Mapped);
    // ...and finishing twice by the store.
    assert!(matches!(
        store.finish_operation(op.id, OpResult::Succeeded),
        Err(StoreError::OperationFinished { .. })
    ));

    let op = start(&mut store);
    let failed = store
        .finish_operation(op.id, OpResult::Failed("peer said no".into()))
        .unwrap();
    assert_eq!(
        failed.state,
        OpState::Failed {
            reason: "peer said no".into()
        }
    );
    assert_eq!(
        store.group(g.id).unwrap().state,
        GroupState::StartSyncFailed
    );

    let op = start(&mut store);
    store.finish_operation(op.id, OpResult::Succeeded).unwrap();
    assert_eq!(store.group(g.id).unwrap().state, GroupState::Syncing);
    assert!(store.unfinished_operations().unwrap().is_empty());

    // Planned migration swaps the role and remembers it.
    let t = check(
        &OpRequest::Migrate { split_vms: vec![] },
        &store.group_view(g.id).unwrap(),
    )
    .unwrap();
    let op = store.begin_operation(g.id, &t, &json!({})).unwrap();
    assert_eq!(store.group(g.id).unwrap().state, GroupState::Migrating);
    store.finish_operation(op.id, OpResult::Succeeded).unwrap();
    let after = store.group(g.id).unwrap();
    assert_eq!(
        (after.role, after.state, after.migrated),
        (Role::Standby, GroupState::Mapped, true)
    );
    assert_eq!(store.operations_of_group(g.id).unwrap().len(), 5); // create + 4
}

#[test]
fn begin_checked_refuses_with_the_rule_and_fills_in_store_facts() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let g1 = mapped_group(&mut store, "g1");
    let g2 = mapped_group(&mut store, "g2");
    store.add_resources(g1.id, &[volume("file:/a")]).unwrap();
    // Refused: wrong state; nothing journaled, state unchanged.
    let err = store
        .begin_checked(g1.id, &OpRequest::StopSync, &json!({}))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "stop sync is allowed only in syncing or stop_sync_failed (group 'g1' is mapped)"
    );
    assert!(matches!(err, StoreError::Refused(_)));
    assert_eq!(store.operations_of_group(g1.id).unwrap().len(), 1);
    // The caller's `already_grouped` is replaced by what the store knows.
    let add = OpRequest::AddResources {
        uris: vec!["file:/a".into()],
        already_grouped: vec![],
    };
    let err = store.begin_checked(g2.id, &add, &json!({})).unwrap_err();
    assert!(
        err.to_string().contains("file:/a is already in group 'g1'"),
        "{err}"
    );
    // Delete group: one at a time, whatever the caller says.
    let del = OpRequest::DeleteGroup {
        other_deleting: None,
    };
    let op = store.begin_checked(g1.id, &del, &json!({})).unwrap();
    assert_eq!(store.group(g1.id).unwrap().state, GroupState::Deleting);
    let err = store.begin_checked(g2.id, &del, &json!({})).unwrap_err();
    assert!(err.to_string().contains("one at a time"), "{err}");
    store
        .finish_operation(op.id, OpResult::Failed("peer unreachable".into()))
        .unwrap();
    assert_eq!(store.group(g1.id).unwrap().state, GroupState::DeleteFailed);
    store.begin_checked(g2.id, &del, &json!({})).unwrap();
}

#[test]
fn deleting_a_group_keeps_its_journal() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let g = mapped_group(&mut store, "g1");
    store.add_resources(g.id, &[volume("file:/a")]).unwrap();
    let t = check(
        &OpRequest::DeleteGroup {
            other_deleting: None,
        },
        &store.group_view(g.id).unwrap(),
    )
    .unwrap();
    let op = store.begin_operation(g.id, &t, &json!({})).unwrap();
    assert_eq!(
        store.groups_in_state(GroupState::Deleting).unwrap().len(),
        1
    );
    let done = store.finish_operation(op.id, OpResult::Succeeded).unwrap();
    assert!(matches!(
        store.group(g.id),
        Err(StoreError::NotFound { what: "group", .. })
    ));
    assert!(matches!(
        store.resource("file:/a"),
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(done.group_id, None);
    assert_eq!(done.group_name.as_deref(), Some("g1"));
    assert_eq!(done.state, OpState::Succeeded);
    // The name and the resource are free again.
    let g2 = mapped_group(&mut store, "g1");
    store.add_resources(g2.id, &[volume("file:/a")]).unwrap();
}

#[test]
fn compare_and_set_conflict_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let g = mapped_group(&mut store, "g1");
    let op = NewOperation {
        kind: OpKind::StartSync,
        transition: None,
        params: json!({}),
    };
    let err = store
        .transition(
            g.id,
            GroupState::StartSyncFailed,
            GroupState::StartingSync,
            Some(&op),
        )
        .unwrap_err();
    match err {
        StoreError::StateConflict {
            group,
            expected,
            actual,
        } => {
            assert_eq!(
                (group.as_str(), expected, actual),
                ("g1", GroupState::StartSyncFailed, GroupState::Mapped)
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(store.group(g.id).unwrap().state, GroupState::Mapped);
    assert_eq!(
        store.operations_of_group(g.id).unwrap().len(),
        1,
        "only the create"
    );
    // With the right expectation it works and journals.
    let journaled = store
        .transition(
            g.id,
            GroupState::Mapped,
            GroupState::StartingSync,
            Some(&op),
        )
        .unwrap()
        .unwrap();
    assert_eq!(journaled.state, OpState::Running);
    // A second journaled transition while one runs: busy, nothing changed.
    let err = store
        .transition(
            g.id,
            GroupState::StartingSync,
            GroupState::Syncing,
            Some(&op),
        )
        .unwrap_err();
    assert!(
        matches!(err, StoreError::GroupBusy { op, .. } if op == journaled.id),
        "{err}"
    );
    assert_eq!(store.group(g.id).unwrap().state, GroupState::StartingSync);
    // Without a journal entry (peer-driven change) it is a plain CAS.
    assert!(store
        .transition(g.id, GroupState::StartingSync, GroupState::Syncing, None)
        .unwrap()
        .is_none());
    assert_eq!(store.group(g.id).unwrap().state, GroupState::Syncing);
}

#[test]
fn constraint_errors_name_the_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let g1 = mapped_group(&mut store, "g1");
    let g2 = mapped_group(&mut store, "g2");
    assert!(matches!(
        store.create_service(&service("dr")),
        Err(StoreError::NameTaken {
            what: "service",
            ..
        })
    ));
    let err = store
        .create_group(
            &NewGroup {
                name: "g1".into(),
                role: Role::Primary,
                service_id: g1.service_id,
                remote_group_id: None,
                remote_project: "p".into(),
                rpo: Default::default(),
            },
            &json!({}),
        )
        .unwrap_err();
    assert_eq!(err.to_string(), "a group named 'g1' already exists");
    let err = store
        .create_group(
            &NewGroup {
                name: "g3".into(),
                role: Role::Primary,
                service_id: ServiceId(99),
                remote_group_id: None,
                remote_project: "p".into(),
                rpo: Default::default(),
            },
            &json!({}),
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::NotFound {
                what: "service",
                ..
            }
        ),
        "{err}"
    );

    // One group per resource, all-or-nothing adds.
    store.add_resources(g1.id, &[volume("file:/a")]).unwrap();
    let err = store
        .add_resources(g2.id, &[volume("file:/b"), volume("file:/a")])
        .unwrap_err();
    assert_eq!(err.to_string(), "resource file:/a is already in group 'g1'");
    assert!(
        store.resources(g2.id).unwrap().is_empty(),
        "file:/b rolled back"
    );
    assert_eq!(
        store.resource_owners(&["file:/a", "file:/b"]).unwrap(),
        vec![("file:/a".into(), "g1".into())]
    );
    let err = store
        .add_resources(g2.id, &[volume("file:/c"), volume("file:/c")])
        .unwrap_err();
    assert!(matches!(err, StoreError::ResourceInGroup { .. }), "{err}");
    assert!(store.resources(g2.id).unwrap().is_empty());

    // At most 20.
    let many: Vec<NewResource> = (0..20).map(|i| volume(&format!("file:/m{i}"))).collect();
    let err = store.add_resources(g1.id, &many).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::TooManyResources {
                have: 1,
                adding: 20,
                max: 20,
                ..
            }
        ),
        "{err}"
    );
    store.add_resources(g1.id, &many[..19]).unwrap();
    assert_eq!(store.resources(g1.id).unwrap().len(), 20);

    // Removal is all-or-nothing too.
    let err = store
        .remove_resources(g1.id, &["file:/m0", "file:/nope"])
        .unwrap_err();
    assert_eq!(err.to_string(), "resource file:/nope is not in group 'g1'");
    assert!(store.resource("file:/m0").is_ok());
    store
        .remove_resources(g1.id, &["file:/m0", "file:/m1"])
        .unwrap();
    assert_eq!(store.resources(g1.id).unwrap().len(), 18);
}

#[test]
fn recovery_point_limits_and_unique_names() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let g1 = mapped_group(&mut store, "g1");
    let g2 = mapped_group(&mut store, "g2");
    // Recovery points: 5 manual, unique names and engine ids.
    for i in 0..5 {
        store
            .create_recovery_point(
                g1.id,
                &NewRecoveryPoint {
                    name: format!("m{i}"),
                    engine_rp: i,
                    kind: RpKind::Manual,
                },
            )
            .unwrap();
    }
    let err = store
        .create_recovery_point(
            g1.id,
            &NewRecoveryPoint {
                name: "m5".into(),
                engine_rp: 5,
                kind: RpKind::Manual,
            },
        )
        .unwrap_err();
    assert!(
        matches!(err, StoreError::TooManyManualRecoveryPoints { max: 5, .. }),
        "{err}"
    );
    let err = store
        .create_recovery_point(
            g1.id,
            &NewRecoveryPoint {
                name: "m0".into(),
                engine_rp: 9,
                kind: RpKind::Policy,
            },
        )
        .unwrap_err();
    assert!(
        matches!(err, StoreError::RecoveryPointExists { .. }),
        "{err}"
    );
    let err = store
        .create_recovery_point(
            g1.id,
            &NewRecoveryPoint {
                name: "p".into(),
                engine_rp: u64::MAX,
                kind: RpKind::Policy,
            },
        )
        .unwrap_err();
    assert!(matches!(err, StoreError::OutOfRange { .. }), "{err}");
    // The same name in another group is fine.
    store
        .create_recovery_point(
            g2.id,
            &NewRecoveryPoint {
                name: "m0".into(),
                engine_rp: 0,
                kind: RpKind::Manual,
            },
        )
        .unwrap();
}

#[test]
fn services_and_policies_in_use_cannot_be_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let g1 = mapped_group(&mut store, "g1");
    mapped_group(&mut store, "g2");
    // Services and policies in use cannot be deleted.
    let err = store.delete_service(g1.service_id).unwrap_err();
    assert_eq!(
        err.to_string(),
        "delete service is refused while a group uses it (service 'dr' is used by groups 'g1', 'g2')"
    );
    let p = store.create_policy("nightly", &json!({})).unwrap();
    assert!(matches!(
        store.create_policy("nightly", &json!({})),
        Err(StoreError::NameTaken { .. })
    ));
    store
        .bind_policy(g1.id, p.id, Retention::new(2).unwrap())
        .unwrap();
    assert!(matches!(
        store.bind_policy(g1.id, p.id, Retention::new(2).unwrap()),
        Err(StoreError::PolicyAlreadyBound { .. })
    ));
    let err = store.delete_policy(p.id).unwrap_err();
    assert_eq!(
        err.to_string(),
        "policy 'nightly' is bound to group(s) g1; unbind it first"
    );
    store.unbind_policy(g1.id).unwrap();
    assert!(matches!(
        store.unbind_policy(g1.id),
        Err(StoreError::NoPolicyBound { .. })
    ));
    store.delete_policy(p.id).unwrap();

    // An unused service can go.
    let other = store.create_service(&service("spare")).unwrap();
    store.delete_service(other.id).unwrap();
    assert!(store.service(other.id).is_err());
}

#[test]
fn recovery_point_life_cycle_and_pruning() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let g = mapped_group(&mut store, "g1");
    let p = store.create_policy("hourly", &json!({})).unwrap();
    store
        .bind_policy(g.id, p.id, Retention::new(2).unwrap())
        .unwrap();
    let mut ids = Vec::new();
    for i in 0..4u64 {
        let rp = store
            .create_recovery_point(
                g.id,
                &NewRecoveryPoint {
                    name: format!("p{i}"),
                    engine_rp: i,
                    kind: RpKind::Policy,
                },
            )
            .unwrap();
        assert_eq!(rp.state, RpState::Creating);
        store
            .set_recovery_point_state(rp.id, RpState::Creating, RpState::Complete)
            .unwrap();
        ids.push(rp.id);
    }
    let err = store
        .set_recovery_point_state(ids[0], RpState::Creating, RpState::Complete)
        .unwrap_err();
    assert!(matches!(err, StoreError::RpStateConflict { .. }), "{err}");
    let prune: Vec<RpId> = store
        .policy_recovery_points_to_prune(g.id)
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(
        prune,
        vec![ids[0], ids[1]],
        "the two oldest go, the newest 2 stay"
    );
    store
        .set_recovery_point_state(ids[0], RpState::Complete, RpState::Deleting)
        .unwrap();
    let deleted = store.delete_recovery_point(ids[0]).unwrap();
    assert_eq!(deleted.name, "p0");
    let prune: Vec<RpId> = store
        .policy_recovery_points_to_prune(g.id)
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(prune, vec![ids[1]]);
    assert_eq!(store.recovery_point_by_name(g.id, "p3").unwrap().id, ids[3]);
    assert_eq!(
        store
            .mark_recovery_points_unusable(g.id, Some(ids[2]))
            .unwrap(),
        2
    );
    let states: Vec<RpState> = store
        .recovery_points(g.id)
        .unwrap()
        .iter()
        .map(|r| r.state)
        .collect();
    assert_eq!(
        states,
        vec![RpState::Unusable, RpState::Complete, RpState::Unusable]
    );
}

#[test]
fn service_update_and_group_remote_id() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let g = mapped_group(&mut store, "g1");
    let svc = store
        .update_service(g.service_id, "10.0.0.1:1", "10.0.0.2:2", AgentId([1; 32]))
        .unwrap();
    assert_eq!(
        (svc.local_endpoint.as_str(), svc.remote_endpoint.as_str()),
        ("10.0.0.1:1", "10.0.0.2:2")
    );
    assert_eq!(store.service_by_name("dr").unwrap(), svc);
    assert!(matches!(
        store.update_service(ServiceId(77), "a", "b", AgentId([0; 32])),
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(
        store
            .set_remote_group_id(g.id, Some(17))
            .unwrap()
            .remote_group_id,
        Some(17)
    );
    let p = store.create_policy("x", &json!({"a": 1})).unwrap();
    assert_eq!(
        store
            .update_policy_schedule(p.id, &json!({"a": 2}))
            .unwrap()
            .schedule,
        json!({"a": 2})
    );
    assert_eq!(store.policy_by_name("x").unwrap().schedule, json!({"a": 2}));
    store
        .bind_policy(g.id, p.id, Retention::new(1).unwrap())
        .unwrap();
    assert_eq!(store.groups_bound_to(p.id).unwrap().len(), 1);
    let op = store
        .begin_service_operation(OpKind::DeleteService, &json!({"service": 1}))
        .unwrap();
    assert_eq!(op.group_id, None);
    let done = store.finish_operation(op.id, OpResult::Succeeded).unwrap();
    assert_eq!(done.state, OpState::Succeeded);
}

#[test]
fn pairing_secrets_work_once_and_expire() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    store.create_pairing_secret("h1", Timestamp(1_000)).unwrap();
    store.create_pairing_secret("h2", Timestamp(1_000)).unwrap();
    let reason = |e: StoreError| match e {
        StoreError::PairingSecret { reason } => reason,
        other => panic!("{other}"),
    };
    assert!(reason(
        store
            .consume_pairing_secret("nope", Timestamp(5))
            .unwrap_err()
    )
    .contains("unknown"));
    store.consume_pairing_secret("h1", Timestamp(999)).unwrap();
    assert!(reason(
        store
            .consume_pairing_secret("h1", Timestamp(999))
            .unwrap_err()
    )
    .contains("already used"));
    assert!(reason(
        store
            .consume_pairing_secret("h2", Timestamp(1_000))
            .unwrap_err()
    )
    .contains("expired"));
    // Survives a reopen.
    drop(store);
    let mut store = Store::open(dir.path()).unwrap();
    assert!(store.consume_pairing_secret("h1", Timestamp(1)).is_err());
    assert!(store.recent_operations(10).unwrap().is_empty());
}

/// A standby group in syncing with one resource (as the peer API makes it).
fn syncing_standby_group(store: &mut Store, name: &str) -> Group {
    let svc = match store.service_by_name("dr") {
        Ok(s) => s,
        Err(_) => store.create_service(&service("dr")).unwrap(),
    };
    let (g, op) = store
        .create_group(
            &NewGroup {
                name: name.into(),
                role: Role::Standby,
                service_id: svc.id,
                remote_group_id: Some(9),
                remote_project: "tenant-a".into(),
                rpo: Default::default(),
            },
            &json!({}),
        )
        .unwrap();
    store.finish_operation(op.id, OpResult::Succeeded).unwrap();
    store.add_resources(g.id, &[volume("file:/d/vm1")]).unwrap();
    let g = store.group(g.id).unwrap();
    store
        .transition(g.id, g.state, GroupState::Syncing, None)
        .unwrap();
    store.group(g.id).unwrap()
}

#[test]
fn a_drill_is_recorded_with_its_operation_survives_reopen_and_blocks_deletion() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let g = syncing_standby_group(&mut store, "g1");
    let req = OpRequest::Drill {
        to: FailoverTarget::Latest,
    };
    let new = NewDrill {
        engine_rp: 42,
        recovery_point: None,
        volumes: vec![DrillVolume {
            resource: "file:/d/vm1".into(),
            image: "d_vm1".into(),
            volume: "/x/drill/g1/d_vm1.raw".into(),
        }],
    };
    let (op, drill) = store.begin_drill(g.id, &req, &json!({}), &new).unwrap();
    assert_eq!(drill.phase, DrillPhase::Starting);
    assert_eq!(
        (drill.engine_rp, drill.volumes.clone()),
        (42, new.volumes.clone())
    );
    // The group keeps its state: a drill is not a transitional state.
    assert_eq!(store.group(g.id).unwrap().state, GroupState::Syncing);
    assert_eq!(
        store.group_view(g.id).unwrap().drill,
        Some(DrillPhase::Starting)
    );
    // One operation at a time while its volumes are made.
    let busy = store.begin_end_drill(g.id, &json!({})).unwrap_err();
    assert!(matches!(busy, StoreError::GroupBusy { .. }), "{busy}");
    // An interrupted start is retried with the recorded point and volumes.
    store
        .finish_operation(op.id, OpResult::Failed("killed".into()))
        .unwrap();
    let other = NewDrill {
        engine_rp: 43,
        ..new.clone()
    };
    let (op, again) = store.begin_drill(g.id, &req, &json!({}), &other).unwrap();
    assert_eq!(again.engine_rp, 42, "the recorded drill is resumed");
    store.set_drill_phase(g.id, DrillPhase::Active).unwrap();
    store.finish_operation(op.id, OpResult::Succeeded).unwrap();
    drop(store);

    let mut store = Store::open(dir.path()).unwrap();
    let drill = store
        .drill(g.id)
        .unwrap()
        .expect("the drill survives a reopen");
    assert_eq!(drill.phase, DrillPhase::Active);
    let e = store.begin_drill(g.id, &req, &json!({}), &new).unwrap_err();
    assert!(e.to_string().contains("one drill at a time"), "{e}");
    // Deleting the group (here: as a failed-over new primary would) is
    // refused by the rules while it drills.
    let view = store.group_view(g.id).unwrap();
    let e = check(
        &OpRequest::DeleteGroup {
            other_deleting: None,
        },
        &GroupView {
            state: GroupState::FailedOver,
            new_primary: true,
            ..view
        },
    )
    .unwrap_err();
    assert!(e.rule.contains("end it first"), "{e}");
    let (op, ending) = store.begin_end_drill(g.id, &json!({})).unwrap();
    assert_eq!(ending.phase, DrillPhase::Ending);
    assert_eq!(store.group(g.id).unwrap().state, GroupState::Syncing);
    store.clear_drill(g.id).unwrap();
    store.finish_operation(op.id, OpResult::Succeeded).unwrap();
    assert_eq!(store.drill(g.id).unwrap(), None);
    let e = store.begin_end_drill(g.id, &json!({})).unwrap_err();
    assert!(e.to_string().contains("needs a drill running"), "{e}");
    store.clear_drill(g.id).unwrap();
}

/// A group's RPO thresholds persist, can be removed, and the schema refuses
/// a threshold of 0 even if a caller skipped `RpoThresholds::new`.
#[test]
fn rpo_thresholds_persist_and_zero_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let id;
    {
        let mut store = Store::open(dir.path()).unwrap();
        let g = mapped_group(&mut store, "g1");
        assert_eq!(g.rpo, RpoThresholds::default());
        id = g.id;
        let t = RpoThresholds::new(Some(60), Some(600)).unwrap();
        assert_eq!(store.set_rpo_thresholds(id, t).unwrap().rpo, t);
        let zero = RpoThresholds {
            warn_secs: Some(0),
            crit_secs: None,
        };
        assert!(store.set_rpo_thresholds(id, zero).is_err());
    }
    let mut store = Store::open(dir.path()).unwrap();
    assert_eq!(store.group(id).unwrap().rpo.crit_secs, Some(600));
    let cleared = store
        .set_rpo_thresholds(id, RpoThresholds::default())
        .unwrap();
    assert_eq!(cleared.rpo, RpoThresholds::default());
}
