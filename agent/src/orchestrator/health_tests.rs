//! Tests of the health roll-up: each check fires on the facts it names and
//! stays quiet otherwise.

use super::*;
use crate::control::{GroupId, OpKind, OperationId, ServiceId};

const NOW: Timestamp = Timestamp(10_000_000_000);

fn at(secs_ago: i64) -> Timestamp {
    Timestamp(NOW.0 - secs_ago * 1000)
}

fn group(role: Role, state: GroupState, rpo: RpoThresholds) -> Group {
    Group {
        id: GroupId(1),
        name: "web".into(),
        role,
        new_primary: false,
        migrated: false,
        state,
        service_id: ServiceId(1),
        remote_group_id: Some(1),
        remote_project: String::new(),
        policy: None,
        created_at: at(86_400),
        rpo,
    }
}

fn healthy_progress(lag_secs: i64) -> GroupProgress {
    GroupProgress {
        state: "waiting".into(),
        cycles: 5,
        standby_holds_writes_before: Some(at(lag_secs)),
        ..Default::default()
    }
}

fn op(id: i64, kind: OpKind, state: OpState, secs_ago: i64) -> Operation {
    Operation {
        id: OperationId(id),
        group_id: Some(GroupId(1)),
        group_name: Some("web".into()),
        kind,
        state,
        transition: None,
        started_at: at(secs_ago + 1),
        finished_at: Some(at(secs_ago)),
        params: serde_json::Value::Null,
    }
}

fn run(
    g: &Group,
    progress: Option<&GroupProgress>,
    ops: &[Operation],
) -> (Option<f64>, Vec<Finding>) {
    let facts = GroupFacts {
        group: g,
        progress,
        reach: PeerReach::default(),
        standby_newest_point: None,
        contact: PeerContact::default(),
        started_at: at(100_000),
        operations: ops,
    };
    let (lag, _, found) = evaluate(&facts, &HealthParams::default(), NOW);
    (lag, found)
}

fn checks(found: &[Finding]) -> Vec<(Level, &'static str)> {
    found.iter().map(|(l, c, _)| (*l, *c)).collect()
}

fn thresholds(warn: u64, crit: u64) -> RpoThresholds {
    RpoThresholds::new(Some(warn), Some(crit)).unwrap()
}

#[test]
fn a_replicating_group_within_its_rpo_is_ok() {
    let g = group(Role::Primary, GroupState::Syncing, thresholds(60, 300));
    let (lag, found) = run(&g, Some(&healthy_progress(10)), &[]);
    assert_eq!(lag, Some(10.0));
    assert!(found.is_empty(), "{found:?}");
}

#[test]
fn rpo_over_the_thresholds_warns_then_is_critical() {
    let g = group(Role::Primary, GroupState::Syncing, thresholds(60, 300));
    let (_, found) = run(&g, Some(&healthy_progress(61)), &[]);
    assert_eq!(checks(&found), [(Level::Warning, "rpo")]);
    let (_, found) = run(&g, Some(&healthy_progress(301)), &[]);
    assert_eq!(checks(&found), [(Level::Critical, "rpo")]);
    assert!(found[0].2.contains("5m1s"), "{}", found[0].2);
    // Without thresholds (and no defaults) the RPO is not checked.
    let g = group(Role::Primary, GroupState::Syncing, RpoThresholds::default());
    assert!(run(&g, Some(&healthy_progress(100_000)), &[]).1.is_empty());
}

#[test]
fn request_defaults_apply_to_groups_without_thresholds() {
    let g = group(Role::Primary, GroupState::Syncing, RpoThresholds::default());
    let facts = GroupFacts {
        group: &g,
        progress: Some(&healthy_progress(120)),
        reach: PeerReach::default(),
        standby_newest_point: None,
        contact: PeerContact::default(),
        started_at: at(100_000),
        operations: &[],
    };
    let params = HealthParams {
        rpo_warn_secs: Some(60),
        ..Default::default()
    };
    let (_, rpo, found) = evaluate(&facts, &params, NOW);
    assert_eq!(rpo.warn_secs, Some(60));
    assert_eq!(checks(&found), [(Level::Warning, "rpo")]);
}

#[test]
fn an_unreachable_standby_warns_then_is_critical_after_the_limit() {
    let g = group(Role::Primary, GroupState::Syncing, RpoThresholds::default());
    let mut p = healthy_progress(30);
    p.consecutive_failures = 4;
    p.last_error_kind = Some("transport".into());
    p.last_error = Some("connection refused".into());
    p.failing_since = Some(at(60));
    let (_, found) = run(&g, Some(&p), &[]);
    assert_eq!(checks(&found), [(Level::Warning, "retrying")]);
    p.failing_since = Some(at(301));
    let (_, found) = run(&g, Some(&p), &[]);
    assert_eq!(checks(&found), [(Level::Critical, "standby_unreachable")]);
    assert!(found[0].2.contains("connection refused"));
}

/// The standby agent not answering API calls (while a cycle may hang,
/// reconnecting) is one line: WARNING, then CRITICAL after the limit.
#[test]
fn a_standby_not_answering_calls_is_critical_after_the_limit() {
    let g = group(Role::Primary, GroupState::Syncing, RpoThresholds::default());
    let mut p = healthy_progress(30);
    p.consecutive_failures = 1;
    p.last_error_kind = Some("peer".into());
    p.failing_since = Some(at(400));
    let eval = |reach: PeerReach| {
        let facts = GroupFacts {
            group: &g,
            progress: Some(&p),
            reach,
            standby_newest_point: None,
            contact: PeerContact::default(),
            started_at: at(100_000),
            operations: &[],
        };
        checks(&evaluate(&facts, &HealthParams::default(), NOW).2)
    };
    let mut reach = PeerReach::default();
    reach.record(Some("connection refused".into()), at(10));
    assert_eq!(
        eval(reach.clone()),
        [(Level::Warning, "standby_unreachable")]
    );
    let mut long = PeerReach::default();
    long.record(Some("connection refused".into()), at(301));
    long.record(Some("connection refused".into()), at(1));
    assert_eq!(
        long.failing_since,
        Some(at(301)),
        "the first failure counts"
    );
    assert_eq!(
        eval(long.clone()),
        [(Level::Critical, "standby_unreachable")]
    );
    long.record(None, at(0));
    assert_eq!(long.failing_since, None, "an answer ends it");
}

#[test]
fn a_persistent_source_error_is_replication_stopped() {
    let g = group(Role::Primary, GroupState::Syncing, RpoThresholds::default());
    let mut p = healthy_progress(30);
    p.last_error_kind = Some("source".into());
    p.last_error = Some("open /data/a.raw: no such file".into());
    p.failing_since = Some(at(5));
    p.consecutive_failures = STOPPED_AFTER - 1;
    assert_eq!(
        checks(&run(&g, Some(&p), &[]).1),
        [(Level::Warning, "retrying")]
    );
    p.consecutive_failures = STOPPED_AFTER;
    assert_eq!(
        checks(&run(&g, Some(&p), &[]).1),
        [(Level::Critical, "replication_error")]
    );
}

#[test]
fn flapping_and_reconnects_warn_after_recovery() {
    let g = group(Role::Primary, GroupState::Syncing, RpoThresholds::default());
    let mut p = healthy_progress(5);
    p.recent_failures = vec![at(800), at(400), at(100)];
    assert_eq!(
        checks(&run(&g, Some(&p), &[]).1),
        [(Level::Warning, "link_flapping")]
    );
    // Older failures do not count.
    p.recent_failures = vec![at(2000), at(400), at(100)];
    assert!(run(&g, Some(&p), &[]).1.is_empty());
    p.last_cycle_reconnects = 2;
    assert_eq!(
        checks(&run(&g, Some(&p), &[]).1),
        [(Level::Warning, "reconnects")]
    );
}

#[test]
fn failed_states_and_operations_are_critical_until_a_later_success() {
    let g = group(
        Role::Standby,
        GroupState::FailoverFailed,
        RpoThresholds::default(),
    );
    let failed = op(
        7,
        OpKind::Failover,
        OpState::Failed {
            reason: "fence: busy".into(),
        },
        60,
    );
    let (_, found) = run(&g, None, std::slice::from_ref(&failed));
    assert_eq!(
        checks(&found),
        [
            (Level::Critical, "group_state"),
            (Level::Critical, "operation")
        ]
    );
    assert!(found[1].2.contains("fence: busy"));
    // A later failover that succeeded clears the failed one.
    let g = group(
        Role::Standby,
        GroupState::FailedOver,
        RpoThresholds::default(),
    );
    let ok = op(8, OpKind::Failover, OpState::Succeeded, 30);
    assert!(run(&g, None, &[failed.clone(), ok]).1.is_empty());
    // Outside the window it is not reported.
    let old = op(
        7,
        OpKind::Restore,
        OpState::Failed { reason: "x".into() },
        100_000,
    );
    assert!(run(&g, None, &[old]).1.is_empty());
    let rolled = op(9, OpKind::Drill, OpState::RolledBack, 10);
    assert_eq!(
        checks(&run(&g, None, &[rolled]).1),
        [(Level::Warning, "operation")]
    );
}

#[test]
fn a_standby_checks_its_own_points_and_the_primary_calls() {
    let g = group(Role::Standby, GroupState::Syncing, thresholds(60, 300));
    let facts = |point: Option<Timestamp>, contact: PeerContact| {
        let (lag, _, found) = evaluate(
            &GroupFacts {
                group: &g,
                progress: None,
                reach: PeerReach::default(),
                standby_newest_point: point,
                contact,
                started_at: at(100_000),
                operations: &[],
            },
            &HealthParams::default(),
            NOW,
        );
        (lag, checks(&found))
    };
    let recent = PeerContact {
        last: Some(at(2)),
        idle_confirmed: None,
    };
    assert_eq!(facts(Some(at(30)), recent), (Some(30.0), vec![]));
    assert_eq!(
        facts(Some(at(400)), recent),
        (Some(400.0), vec![(Level::Critical, "rpo")])
    );
    // An idle check of the primary after the point: nothing changed since.
    let idle = PeerContact {
        last: Some(at(2)),
        idle_confirmed: Some(at(3)),
    };
    assert_eq!(facts(Some(at(400)), idle), (Some(3.0), vec![]));
    // No call from the primary for longer than the limit.
    let silent = PeerContact {
        last: Some(at(600)),
        idle_confirmed: None,
    };
    assert_eq!(
        facts(Some(at(30)), silent).1,
        [(Level::Critical, "primary_silent")]
    );
    assert_eq!(facts(None, recent).1, [(Level::Warning, "initial_sync")]);
}

#[test]
fn levels_order_and_exit_codes() {
    assert!(Level::Critical > Level::Warning && Level::Warning > Level::Ok);
    assert_eq!(
        [Level::Ok, Level::Warning, Level::Critical].map(Level::exit_code),
        [0, 1, 2]
    );
    assert_eq!(
        serde_json::to_value(Level::Warning).unwrap(),
        serde_json::json!("warning")
    );
}
