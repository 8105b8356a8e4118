//! `GET /v1/operations/{id}?wait_ms=N`, the long poll behind `--wait`,
//! against real agents: the answer comes when the operation ends, not at
//! once, and `ferry rp create --wait` returns the finished operation.

#![cfg(feature = "failpoints")]

use std::path::Path;
use std::time::Duration;

use ferry_agent::api::http::{self, Method, Target};
use ferry_agent::imagegen;
use ferry_e2e::cli::ok;
use ferry_e2e::sites::Sites;
use serde_json::Value;

const MIB: u64 = 1024 * 1024;

fn get(dir: &Path, path: &str) -> Value {
    let token = std::fs::read_to_string(dir.join("api.token")).expect("api.token");
    let addr = std::fs::read_to_string(dir.join("api.addr")).expect("api.addr");
    let addr = addr
        .trim()
        .trim_start_matches("http://")
        .parse()
        .expect("api.addr holds an address");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let reply = rt
        .block_on(http::call(
            &Target::Plain(addr),
            Method::GET,
            path,
            Some(token.trim()),
            None,
            Duration::from_secs(60),
        ))
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(reply.status, 200, "GET {path}: {}", reply.body);
    reply.body
}

/// A recovery point whose cycle is held 4 s at its start: asked at once,
/// the journal says running; asked with `wait_ms`, the answer waits for
/// the end and says succeeded (an agent that ignored `wait_ms` would say
/// running here too).
#[test]
fn long_poll_answers_when_the_operation_ends() {
    let mut s = Sites::paired();
    let a = s.a.dir.clone();
    let img = s.path("vm.raw");
    imagegen::make_image(&img, 8 * MIB, 7).expect("image");
    ok(&a, &["group", "create", "g1", "--wait"]);
    let uri = format!("file:{}", img.display());
    ok(&a, &["group", "add", "g1", &uri, "--wait"]);
    ok(&a, &["group", "start", "g1", "--wait"]);

    let held = ferry_e2e::landing::pause_failpoints("rp::before-cycle", 0, 4000);
    s.a.restart(&[("FAILPOINTS", &held)]);
    let started = ok(&a, &["rp", "create", "g1", "--name", "held"]);
    let id = started["operation"]["id"]
        .as_i64()
        .expect("an operation id");
    assert!(
        ferry_e2e::landing::wait_reached(&s.a, "rp::before-cycle", Duration::from_secs(60), || {
            true
        }),
        "the recovery point's cycle never reached its hold"
    );
    let now = get(&a, &format!("/v1/operations/{id}"));
    assert_eq!(now["state"]["state"], "running", "{now}");
    let waited = get(&a, &format!("/v1/operations/{id}?wait_ms=30000"));
    assert_eq!(waited["state"]["state"], "succeeded", "{waited}");
    assert!(!waited["finished_at"].is_null(), "{waited}");

    // A finished operation answers at once, whatever the wait.
    let again = get(&a, &format!("/v1/operations/{id}?wait_ms=30000"));
    assert_eq!(again["state"]["state"], "succeeded", "{again}");

    // The CLI's --wait goes through the same long poll.
    let op = ok(&a, &["rp", "create", "g1", "--name", "after", "--wait"]);
    assert_eq!(op["state"]["state"], "succeeded", "{op}");
}
