//! A service's standby endpoints (issue 18), with two real agents on
//! loopback: a service of one standby endpoint is keyed, stored, shown and
//! used exactly as before; a service listing several is shown as such,
//! refuses a malformed list, and its primary gets past an endpoint where
//! nobody answers (the peer API moves on to the next one, and the group's
//! replication then runs against the one that answered).

use std::path::Path;
use std::time::{Duration, Instant};

use ferry_agent::imagegen;
use ferry_agent::service_key::ServiceKey;
use ferry_e2e::cli::{ok, run, text};
use ferry_e2e::{init_agent, Agent};
use serde_json::Value;

struct Sites {
    tmp: tempfile::TempDir,
    a: Agent,
    b: Agent,
}

/// Two agents paired through the standby's service key (whose endpoint the
/// test checks first).
fn paired() -> Sites {
    let tmp = tempfile::tempdir().expect("temp dir");
    let (a_dir, b_dir) = (tmp.path().join("a"), tmp.path().join("b"));
    let a_fp = init_agent(&a_dir);
    let b_fp = init_agent(&b_dir);
    let a = Agent::start(&a_dir, &a_fp, &[]);
    let b = Agent::start(&b_dir, &b_fp, &[]);
    let out = run(&b_dir, &["service", "key"]);
    assert!(out.status.success(), "{}", text(&out));
    let key = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let decoded = ServiceKey::decode(&key).expect("a service key");
    assert_eq!(
        decoded.endpoint,
        b.addr.to_string(),
        "a single agent's key names its one endpoint, as before"
    );
    ok(&a_dir, &["service", "create", "--key", &key]);
    Sites { tmp, a, b }
}

/// Protects one 8 MiB file image as group g1 and starts replication.
fn protect(s: &Sites) {
    let image = s.tmp.path().join("vm1.raw");
    imagegen::make_image(&image, 8 << 20, 3).expect("image");
    let a = &s.a.dir;
    let uri = format!("file:{}", image.display());
    ok(a, &["group", "create", "g1", "--wait"]);
    ok(a, &["group", "add", "g1", &uri, "--wait"]);
    ok(a, &["group", "start", "g1", "--wait"]);
}

/// Committed cycles of group g1 on `dir`.
fn cycles(dir: &Path) -> u64 {
    ok(dir, &["status"])["groups"][0]["progress"]["cycles"]
        .as_u64()
        .unwrap_or(0)
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A loopback TCP and UDP port where nothing listens.
fn dead_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let addr = listener.local_addr().expect("its address");
    drop(listener);
    addr.to_string()
}

const MOVED: &str = "moving to the next standby endpoint";

#[test]
fn one_standby_endpoint_is_stored_shown_and_used_as_before() {
    let s = paired();
    let a = &s.a.dir;
    let b_addr = s.b.addr.to_string();
    let shown = ok(a, &["service", "show", "dr"]);
    assert_eq!(shown["remote_endpoint"], b_addr.as_str(), "{shown}");
    assert_eq!(shown["remote_endpoints"], serde_json::json!([b_addr]));
    ok(a, &["service", "verify", "dr"]);
    protect(&s);
    wait_for("a committed cycle", || cycles(a) >= 1);
    assert!(
        !s.a.log_text().contains(MOVED),
        "one endpoint: nothing to move to:\n{}",
        s.a.log_text()
    );
    // An update to one endpoint stores exactly that text.
    ok(
        a,
        &["service", "update", "dr", "--remote-endpoint", &b_addr],
    );
    let listed = ok(a, &["service", "list"]);
    assert_eq!(listed[0]["remote_endpoint"], b_addr.as_str(), "{listed}");
}

#[test]
fn several_standby_endpoints_get_past_one_where_nobody_answers() {
    let s = paired();
    let a = &s.a.dir;
    let b_addr = s.b.addr.to_string();
    let dead = dead_endpoint();
    let list = format!("{dead}, {b_addr}");
    let updated = ok(a, &["service", "update", "dr", "--remote-endpoint", &list]);
    assert_eq!(
        updated["remote_endpoint"],
        format!("{dead},{b_addr}").as_str(),
        "{updated}"
    );
    let shown = ok(a, &["service", "show", "dr"]);
    assert_eq!(shown["remote_endpoints"], serde_json::json!([dead, b_addr]));

    // A list with something that is not HOST:PORT is refused, unchanged.
    let out = run(
        a,
        &["service", "update", "dr", "--remote-endpoint", "nohost,x:1"],
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("'nohost' is not HOST:PORT"),
        "{}",
        text(&out)
    );
    let shown: Value = ok(a, &["service", "show", "dr"]);
    assert_eq!(shown["remote_endpoints"], serde_json::json!([dead, b_addr]));

    // The first endpoint refuses connections: the test connection, the
    // group's mapping and its replication reach the second.
    let verify = ok(a, &["service", "verify", "dr"]);
    assert_eq!(verify["ok"], true, "{verify}");
    assert!(
        s.a.log_text().contains(MOVED),
        "the primary logs the move:\n{}",
        s.a.log_text()
    );
    protect(&s);
    wait_for("a committed cycle", || cycles(a) >= 1);
    let standby_groups = ok(&s.b.dir, &["group", "list"]);
    assert_eq!(standby_groups[0]["name"], "g1", "{standby_groups}");
}
