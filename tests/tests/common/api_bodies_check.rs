//! Property of the `api_bodies` fuzz target, shared with the corpus replay
//! in `tests/tests/fuzz_corpus.rs`: the first byte picks one of the control
//! API's JSON body routes (operator and peer, migrate steps included), the
//! rest is the body. `check_request_body` — the deserialisation and
//! stateless field checks the handlers apply — never panics, answers the
//! same way twice, and names the route in every refusal.
//!
//! An accepted body is within the limits `agent/openapi.yaml` documents:
//! a policy binding's retention is 1..=5, source URIs parse (and print
//! back to a URI that parses to the same source), a peer resource's
//! standby target is a valid image name, a service key decodes (and
//! re-encodes to a key that decodes the same). Every body type implements
//! `Serialize` (the `ferry` CLI sends the operator bodies as these types),
//! and every accepted body round-trips through serde_json: serialised and
//! parsed back, it is the same value (policy schedules too).

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::bodies::{
    check_request_body, AddBody, BindBody, BodyRoute, CreateGroupBody, CreateServiceBody,
    DrillBody, FailoverBody, KeyBody, MigrateStep, PairRequest, PeerGroupRequest, PeerResources,
    PolicyBody, Qos, ReprotectStep, RestoreBody, RpBody, SyncBody, UpdateGroupBody,
    UpdateServiceBody, UrisBody,
};
use crate::control::{NewRecoveryPoint, Retention};
use crate::schedule::PolicySchedule;
use crate::service_key::ServiceKey;
use crate::uri::SourceUri;

/// Checks one input.
pub fn check(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let route = BodyRoute::ALL[usize::from(selector) % BodyRoute::ALL.len()];
    let first = check_request_body(route, body);
    let second = check_request_body(route, body);
    match (&first, &second) {
        (Ok(()), Ok(())) => check_accepted(route, body),
        (Err(a), Err(b)) => {
            assert_eq!(a.to_string(), b.to_string(), "refusal is not deterministic");
            assert!(
                a.to_string().contains(&format!("{route:?}")),
                "refusal without its route: {a}"
            );
        }
        _ => panic!("{route:?}: the same body was accepted once and refused once"),
    }
}

/// The body, parsed as `T` (it was accepted, so it parses).
fn parsed<T: DeserializeOwned>(route: BodyRoute, body: &[u8]) -> T {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{route:?}: accepted body does not parse: {e}"))
}

/// `value` serialised and parsed back is the same value (compared as JSON,
/// so types without `PartialEq` are covered).
fn round_trips<T: Serialize + DeserializeOwned>(route: BodyRoute, value: &T) {
    let json = serde_json::to_vec(value)
        .unwrap_or_else(|e| panic!("{route:?}: accepted value does not serialise: {e}"));
    let again: T = serde_json::from_slice(&json).unwrap_or_else(|e| {
        panic!(
            "{route:?}: serialised value does not parse back: {e}\n{}",
            String::from_utf8_lossy(&json)
        )
    });
    assert_eq!(
        serde_json::to_value(value).unwrap(),
        serde_json::to_value(&again).unwrap(),
        "{route:?}: value changed in a serde_json round trip"
    );
}

/// The documented limits and round trips of an accepted body.
fn check_accepted(route: BodyRoute, body: &[u8]) {
    match route {
        BodyRoute::BindPolicy => {
            let b: BindBody = parsed(route, body);
            assert!(
                (1..=5).contains(&b.retention) && Retention::new(b.retention).is_ok(),
                "{route:?}: retention {} accepted (documented 1..=5)",
                b.retention
            );
            round_trips(route, &b);
        }
        BodyRoute::AddResources => {
            let b: AddBody = parsed(route, body);
            for uri in &b.uris {
                let source = SourceUri::parse(uri).expect("accepted URI parses");
                let printed = source.to_string();
                let again = SourceUri::parse(&printed)
                    .unwrap_or_else(|e| panic!("{route:?}: {uri:?} prints as {printed:?}: {e}"));
                assert_eq!(source, again, "{route:?}: {uri:?} -> {printed:?}");
            }
            round_trips(route, &b);
        }
        BodyRoute::CreateService => {
            let b: CreateServiceBody = parsed(route, body);
            let key = ServiceKey::decode(&b.key).expect("accepted key decodes");
            let again = ServiceKey::decode(&key.encode()).expect("re-encoded key decodes");
            assert_eq!(key, again, "{route:?}: service key changed by encode");
            round_trips(route, &b);
        }
        BodyRoute::CreatePolicy => {
            let b: PolicyBody = parsed(route, body);
            round_trips(route, &b);
            let schedule: PolicySchedule =
                serde_json::from_value(b.schedule).expect("accepted schedule parses");
            round_trips(route, &schedule);
            let again: PolicySchedule =
                serde_json::from_value(serde_json::to_value(&schedule).unwrap()).unwrap();
            assert_eq!(
                schedule, again,
                "{route:?}: schedule changed in a round trip"
            );
        }
        BodyRoute::SetQos => {
            let q: Qos = parsed(route, body);
            round_trips(route, &q);
        }
        BodyRoute::PeerPair => round_trips(route, &parsed::<PairRequest>(route, body)),
        BodyRoute::PeerCreateGroup => round_trips(route, &parsed::<PeerGroupRequest>(route, body)),
        BodyRoute::PeerAddResources => {
            let b: PeerResources = parsed(route, body);
            for r in &b.resources {
                assert!(
                    ferry_protocol::ImageName::new(r.standby_target.clone()).is_ok(),
                    "{route:?}: standby_target {:?} accepted",
                    r.standby_target
                );
            }
            round_trips(route, &b.resources);
        }
        BodyRoute::PeerAddRecoveryPoint => {
            round_trips(route, &parsed::<NewRecoveryPoint>(route, body))
        }
        BodyRoute::PeerMigrate => round_trips(route, &parsed::<MigrateStep>(route, body)),
        BodyRoute::PeerReprotect => {
            let b: ReprotectStep = parsed(route, body);
            if let ReprotectStep::Begin { images, .. } = &b {
                for i in images {
                    assert!(
                        ferry_protocol::ImageName::new(i.image.clone()).is_ok(),
                        "{route:?}: image {:?} accepted",
                        i.image
                    );
                }
            }
            round_trips(route, &b);
        }
        BodyRoute::ServiceKey => round_trips(route, &parsed::<KeyBody>(route, body)),
        BodyRoute::UpdateService => round_trips(route, &parsed::<UpdateServiceBody>(route, body)),
        BodyRoute::CreateGroup => round_trips(route, &parsed::<CreateGroupBody>(route, body)),
        BodyRoute::RemoveResources | BodyRoute::PeerRemoveResources => {
            round_trips(route, &parsed::<UrisBody>(route, body))
        }
        BodyRoute::CreateRecoveryPoint => round_trips(route, &parsed::<RpBody>(route, body)),
        BodyRoute::Restore => round_trips(route, &parsed::<RestoreBody>(route, body)),
        BodyRoute::Failover => round_trips(route, &parsed::<FailoverBody>(route, body)),
        BodyRoute::Drill => round_trips(route, &parsed::<DrillBody>(route, body)),
        BodyRoute::UpdateGroup => round_trips(route, &parsed::<UpdateGroupBody>(route, body)),
        BodyRoute::PeerSync => round_trips(route, &parsed::<SyncBody>(route, body)),
    }
}
