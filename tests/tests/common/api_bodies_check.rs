//! Property of the `api_bodies` fuzz target, shared with the corpus replay
//! in `tests/tests/fuzz_corpus.rs`: the first byte picks one of the control
//! API's JSON body routes (operator and peer, migrate steps included), the
//! rest is the body. `check_request_body` — the deserialisation and
//! stateless field checks the handlers apply — never panics, answers the
//! same way twice, and names the route in every refusal.

use crate::api::bodies::{check_request_body, BodyRoute};

/// Checks one input.
pub fn check(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let route = BodyRoute::ALL[usize::from(selector) % BodyRoute::ALL.len()];
    let first = check_request_body(route, body);
    let second = check_request_body(route, body);
    match (&first, &second) {
        (Ok(()), Ok(())) => {}
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
