//! End-to-end tests of the operator's command line (issue 16): `ferry
//! health` exit codes on a healthy pair and after losing either site,
//! per-group RPO thresholds, `ferry op list`, the human tables with RFC 3339
//! times, and the API token from `FERRY_TOKEN` or `--token-file`. Two real
//! agents on loopback, driven only through the `ferry` binary.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use ferry_agent::imagegen;
use ferry_e2e::cli::{ok, run, text};
use ferry_e2e::{bin, init_agent, Agent};
use serde_json::Value;

const MIB: u64 = 1024 * 1024;

struct Sites {
    tmp: tempfile::TempDir,
    a: Agent,
    b: Agent,
}

/// Two agents paired through a service key, and group g1 of one 4 MiB
/// image created with RPO thresholds and replicating.
fn protected() -> Sites {
    let tmp = tempfile::tempdir().unwrap();
    let a_dir = tmp.path().join("a");
    let b_dir = tmp.path().join("b");
    let a_fp = init_agent(&a_dir);
    let b_fp = init_agent(&b_dir);
    let a = Agent::start(&a_dir, &a_fp, &[]);
    let b = Agent::start(&b_dir, &b_fp, &[]);
    let out = run(&b_dir, &["service", "key"]);
    assert!(out.status.success(), "{}", text(&out));
    let key = String::from_utf8(out.stdout).unwrap();
    ok(&a_dir, &["service", "create", "--key", key.trim()]);
    let image = tmp.path().join("vol.raw");
    imagegen::make_image(&image, 4 * MIB, 7).unwrap();
    let uri = format!("file:{}", image.display());
    let created = ok(
        &a_dir,
        &[
            "group",
            "create",
            "g1",
            "--rpo-warn",
            "10m",
            "--rpo-crit",
            "1h",
            "--wait",
        ],
    );
    assert_eq!(created["state"]["state"], "succeeded", "{created}");
    ok(&a_dir, &["group", "add", "g1", &uri, "--wait"]);
    ok(&a_dir, &["group", "start", "g1", "--wait"]);
    Sites { tmp, a, b }
}

/// `ferry --dir DIR health ARGS…`: exit code, stdout.
fn health(dir: &Path, args: &[&str]) -> (Option<i32>, String) {
    let mut all = vec!["health"];
    all.extend_from_slice(args);
    let out = run(dir, &all);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Polls `health` until it exits with `code`; returns its stdout.
fn health_until(dir: &Path, args: &[&str], code: i32) -> String {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (got, stdout) = health(dir, args);
        if got == Some(code) {
            return stdout;
        }
        assert!(
            Instant::now() < deadline,
            "ferry health {args:?} never exited {code}; last: {got:?}\n{stdout}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn health_is_ok_on_both_sites_then_critical_when_the_peer_is_lost() {
    let mut s = protected();
    let (a, b) = (s.a.dir.clone(), s.b.dir.clone());
    // Both sites OK once the standby holds a complete copy.
    let stdout = health_until(&a, &[], 0);
    assert_eq!(
        stdout.lines().next(),
        Some("FERRY OK - 1 group(s) OK"),
        "{stdout}"
    );
    let stdout = health_until(&b, &[], 0);
    assert!(stdout.starts_with("FERRY OK"), "{stdout}");
    let report = ok(&a, &["health"]);
    assert_eq!(report["status"], "ok", "{report}");
    assert_eq!(report["groups"][0]["rpo"]["warn_secs"], 600);
    assert!(report["groups"][0]["rpo_lag_secs"].as_f64().unwrap() < 600.0);
    assert_eq!(report["problems"], serde_json::json!([]));

    // The standby site is lost: the primary is CRITICAL once cycles have
    // failed for longer than --unreachable.
    s.b.kill9();
    let stdout = health_until(&a, &["--unreachable", "2s"], 2);
    let mut lines = stdout.lines();
    assert!(
        lines
            .next()
            .unwrap_or("")
            .starts_with("FERRY CRITICAL - 1 critical"),
        "{stdout}"
    );
    assert!(
        lines.any(|l| l.starts_with("CRITICAL g1: standby unreachable for")
            && l.ends_with("[standby_unreachable]")),
        "{stdout}"
    );
    let out = run(&a, &["health", "--unreachable", "2s", "--json"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["status"], "critical");

    // The primary site is lost: the standby, back without it, is CRITICAL
    // once the primary has been silent for longer than --unreachable.
    s.a.kill9();
    s.b.restart(&[]);
    let stdout = health_until(&b, &["--unreachable", "2s"], 2);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("CRITICAL g1: no call from the primary")),
        "{stdout}"
    );
    // Unreachable agent: UNKNOWN (3), as a monitoring plugin.
    s.b.kill9();
    let (code, stdout) = health(&b, &[]);
    assert_eq!(code, Some(3), "{stdout}");
    assert!(stdout.starts_with("FERRY UNKNOWN"), "{stdout}");
    drop(s.tmp);
}

/// The thresholds are stored per group, changed with `group update`, and
/// refused when the warning one is above the critical one.
#[test]
fn rpo_thresholds_are_set_updated_and_checked() {
    let s = protected();
    let a = s.a.dir.clone();
    let g = ok(&a, &["group", "show", "g1"]);
    assert_eq!(g["group"]["rpo"]["warn_secs"], 600);
    assert_eq!(g["group"]["rpo"]["crit_secs"], 3600);
    let g = ok(&a, &["group", "update", "g1", "--rpo-crit", "off"]);
    assert_eq!(g["rpo"]["warn_secs"], 600);
    assert!(g["rpo"]["crit_secs"].is_null(), "{g}");
    let out = run(
        &a,
        &[
            "group",
            "update",
            "g1",
            "--rpo-warn",
            "2h",
            "--rpo-crit",
            "1h",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("above the critical one"),
        "{}",
        text(&out)
    );
    // Unchanged by the refused update.
    assert_eq!(
        ok(&a, &["group", "show", "g1"])["group"]["rpo"]["warn_secs"],
        600
    );
    // The standby group has its own (none until set there).
    let b = ok(&s.b.dir, &["group", "show", "g1"]);
    assert!(b["group"]["rpo"]["warn_secs"].is_null(), "{b}");
}

/// `ferry op list` shows the journal (the same entries as the API), the
/// list commands print tables with RFC 3339 times in the zone asked, and
/// `--json` keeps printing the API's JSON.
#[test]
fn op_list_and_tables() {
    let s = protected();
    let a = s.a.dir.clone();
    let ops = ok(&a, &["op", "list"]);
    let kinds: Vec<&str> = ops
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["kind"].as_str().unwrap())
        .collect();
    // Newest first.
    assert_eq!(
        kinds,
        ["start_sync", "add_resources", "create_group"],
        "{ops}"
    );
    assert_eq!(
        ok(&a, &["op", "list", "--limit", "1"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let of_g1 = ok(&a, &["op", "list", "--group", "g1"]);
    assert_eq!(of_g1.as_array().unwrap().len(), 3, "{of_g1}");
    // `ferry op ID` still shows one.
    let first = ops[2]["id"].as_i64().unwrap().to_string();
    assert_eq!(ok(&a, &["op", &first])["kind"], "create_group");

    // The table: a header, one row per operation, times in the zone asked.
    let out = run(&a, &["op", "list", "--tz", "UTC"]);
    assert!(out.status.success(), "{}", text(&out));
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        ["ID", "GROUP", "KIND", "STATE", "STARTED", "FINISHED", "REASON"]
    );
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(&row[1..4], ["g1", "start_sync", "succeeded"], "{table}");
    let started: jiff::Timestamp = row[4].parse().expect("an RFC 3339 time");
    // Seconds precision.
    assert_eq!(
        started.as_second(),
        ops[0]["started_at"].as_i64().unwrap().div_euclid(1000)
    );
    assert!(row[4].ends_with("+00:00"), "{table}");
    let out = run(&a, &["op", "list", "--tz", "Asia/Kolkata"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("+05:30"),
        "{}",
        text(&out)
    );

    for (args, header) in [
        (
            &["group", "list"][..],
            "ID NAME ROLE STATE POLICY RPO WARN/CRIT CREATED",
        ),
        (
            &["service", "list"][..],
            "ID NAME LOCAL ENDPOINT REMOTE ENDPOINT REMOTE FINGERPRINT CREATED",
        ),
        (&["rp", "list", "g1"][..], "no recovery points"),
        (&["policy", "list"][..], "no policies"),
    ] {
        let out = run(&a, args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let first: Vec<&str> = stdout
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        assert_eq!(first.join(" "), header, "{args:?}:\n{stdout}");
    }
    let out = run(&a, &["group", "list"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let row: Vec<&str> = stdout.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(&row[1..4], ["g1", "primary", "syncing"], "{stdout}");
    assert_eq!(row[5], "10m/1h", "{stdout}");
    // group show: the group line, then its resource table.
    let out = run(&a, &["group", "show", "g1", "--tz", "UTC"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("group g1 (id "), "{stdout}");
    assert!(stdout.contains("RPO warn/crit 10m/1h"), "{stdout}");
    assert!(stdout.contains("RESOURCE"), "{stdout}");
    assert!(stdout.contains("4.00 MiB"), "{stdout}");
    // qos show prints what qos set reads.
    ok(&a, &["qos", "set", "--send", "100MBps"]);
    let out = run(&a, &["qos", "show"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("send limit:    100.00 MiB/s"),
        "{}",
        text(&out)
    );
    assert_eq!(ok(&a, &["qos", "show"])["send_limit"], 100 * MIB);
}

/// `--agent URL` with the token from `FERRY_TOKEN` or a private
/// `--token-file` (not on the command line); a token file others may read
/// is refused.
#[test]
fn token_from_environment_or_file() {
    let s = protected();
    let a = &s.a.dir;
    let url = format!(
        "http://{}",
        std::fs::read_to_string(a.join("api.addr")).unwrap().trim()
    );
    let token = std::fs::read_to_string(a.join("api.token")).unwrap();
    let ferry = |env: Option<&str>, args: &[&str]| -> Output {
        let mut cmd = Command::new(bin("ferry"));
        cmd.args(["--agent", &url]).args(args).stdin(Stdio::null());
        cmd.env_remove("FERRY_TOKEN");
        if let Some(t) = env {
            cmd.env("FERRY_TOKEN", t);
        }
        cmd.output().unwrap()
    };
    let out = ferry(Some(token.trim()), &["group", "list", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = ferry(Some("wrong"), &["group", "list"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = ferry(None, &["group", "list"]);
    assert!(text(&out).contains("FERRY_TOKEN"), "{}", text(&out));

    let file = s.tmp.path().join("token");
    std::fs::write(&file, &token).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let f = file.display().to_string();
    let out = ferry(Some("wrong"), &["--token-file", &f, "op", "list", "--json"]);
    assert!(
        out.status.success(),
        "--token-file wins over FERRY_TOKEN: {}",
        text(&out)
    );
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = ferry(None, &["--token-file", &f, "op", "list"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("chmod 600"), "{}", text(&out));
}

/// `group show --watch` prints the group again every second until
/// interrupted (with `--json`, one object per line), and Ctrl-C ends it
/// cleanly.
#[test]
fn group_show_watch_refreshes_until_interrupted() {
    use std::io::{BufRead, BufReader};
    let s = protected();
    let d = s.a.dir.display().to_string();
    let mut child =
        ferry_e2e::ferry_spawn(&["--dir", &d, "group", "show", "g1", "--watch", "--json"]);
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    for _ in 0..2 {
        let line = lines.next().expect("a refresh").unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["group"]["name"], "g1", "{line}");
    }
    assert!(matches!(child.try_wait(), Ok(None)), "still watching");
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "Ctrl-C ends the watch cleanly: {status}");
}
