//! The daemon's continuous replication of an RBD group when nothing is
//! written: idle checks commit no recovery point, take no snapshot and send
//! nothing, while the RPO lag stays small; the first write after a quiet
//! spell starts a cycle that brings the standby to the source exactly.
//! Real agents, real QUIC on loopback, the two-site Ceph lab.

use std::path::Path;
use std::time::{Duration, Instant};

use ferry_e2e::cli::{ok, run, text};
use ferry_e2e::lab::{self, rbd};
use ferry_e2e::{hash_file, init_agent, Agent};
use serde_json::Value;

fn wait_for(what: &str, patience: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + patience;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn progress(dir: &Path) -> Value {
    ok(dir, &["status"])["groups"][0]["progress"].clone()
}

fn field(dir: &Path, name: &str) -> u64 {
    progress(dir)[name].as_u64().unwrap_or(0)
}

/// Names of the ferry snapshots of `spec` on `site`.
fn ferry_snaps(site: &str, spec: &str) -> Vec<String> {
    let out = rbd(site, &["snap", "ls", "--all", "--format", "json", spec]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut names: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["name"].as_str())
        .filter(|n| n.starts_with("ferry"))
        .map(str::to_owned)
        .collect();
    names.sort();
    names
}

fn export_hash(scratch: &Path, site: &str, spec: &str) -> String {
    std::fs::create_dir_all(scratch).unwrap();
    let file = scratch.join("export.raw");
    let _ = std::fs::remove_file(&file);
    rbd(site, &["export", spec, &file.display().to_string()]);
    hash_file(&file)
}

#[test]
#[ignore = "needs the Ceph lab (FERRY_CEPH_LAB=1); scripts/test.sh runs it"]
fn lab_idle_rbd_group_commits_nothing_until_written() {
    if !lab::enabled() {
        return;
    }
    let image = format!("ferry-t-idle{}", std::process::id());
    let spec = format!("rbd/{image}");
    rbd("site-a", &["create", "--size", "16", &spec]);
    lab::pyrbd("site-a", &image, "img.write(b'a' * 65536, 0)");
    let tmp = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (tmp.path().join("a"), tmp.path().join("b"));
    let a_fp = init_agent(&a_dir);
    let b_fp = init_agent(&b_dir);
    std::fs::write(a_dir.join("config.toml"), "[ceph]\ncluster = \"site-a\"\n").unwrap();
    std::fs::write(
        b_dir.join("config.toml"),
        "[standby]\nbackend = \"rbd\"\nrbd_pool = \"rbd\"\n[ceph]\ncluster = \"site-b\"\n",
    )
    .unwrap();
    let _a = Agent::start(&a_dir, &a_fp, &[]);
    let _b = Agent::start(&b_dir, &b_fp, &[]);
    let key = run(&b_dir, &["service", "key"]);
    assert!(key.status.success(), "{}", text(&key));
    let key = String::from_utf8(key.stdout).unwrap();
    ok(&a_dir, &["service", "create", "--key", key.trim()]);
    ok(&a_dir, &["group", "create", "g1", "--wait"]);
    ok(
        &a_dir,
        &["group", "add", "g1", &format!("rbd:{spec}"), "--wait"],
    );
    let standby = ok(&b_dir, &["group", "show", "g1"])["resources"][0]["standby_target"]
        .as_str()
        .unwrap()
        .to_owned();
    ok(&a_dir, &["group", "start", "g1", "--wait"]);
    let patience = Duration::from_secs(180);
    wait_for("the first recovery point", patience, || {
        field(&a_dir, "cycles") >= 1
    });

    // Quiet: idle checks go on, no cycle commits, no snapshot is taken.
    let cycles = field(&a_dir, "cycles");
    let idle = field(&a_dir, "idle_checks");
    wait_for("idle checks", patience, || {
        field(&a_dir, "idle_checks") >= idle + 3 && field(&a_dir, "cycles") == cycles
    });
    let snaps = ferry_snaps("site-a", &spec);
    let standby_snaps = ferry_snaps("site-b", &format!("rbd/{standby}"));
    let idle = field(&a_dir, "idle_checks");
    wait_for("more idle checks", patience, || {
        field(&a_dir, "idle_checks") >= idle + 3
    });
    let quiet = progress(&a_dir);
    assert_eq!(quiet["cycles"].as_u64(), Some(cycles), "{quiet}");
    assert_eq!(
        ferry_snaps("site-a", &spec),
        snaps,
        "an idle check took a snapshot"
    );
    assert_eq!(
        ferry_snaps("site-b", &format!("rbd/{standby}")),
        standby_snaps,
        "an idle check made a recovery point"
    );
    // The standby holds every write acknowledged before the last check.
    let lag = quiet["rpo_lag_secs"].as_f64().unwrap();
    assert!(lag < 30.0, "RPO lag {lag} s while idle: {quiet}");
    assert!(quiet["last_cycle_seconds"].as_f64().is_some(), "{quiet}");

    // A write ends the quiet spell: the next cycle commits it.
    lab::pyrbd("site-a", &image, "img.write(b'b' * 4096, 8 * 1048576)");
    wait_for("a cycle after the write", patience, || {
        field(&a_dir, "cycles") > cycles
    });
    let newest = ferry_snaps("site-b", &format!("rbd/{standby}"));
    let newest = newest.last().expect("a recovery point snapshot");
    let scratch = tmp.path().join("scratch");
    assert_eq!(
        export_hash(&scratch, "site-b", &format!("rbd/{standby}@{newest}")),
        export_hash(&scratch, "site-a", &spec),
        "the standby's newest point is not the source after the write"
    );
    ok(&a_dir, &["group", "stop", "g1", "--wait"]);
    ok(&a_dir, &["group", "delete", "g1", "--wait"]);
    rbd("site-a", &["snap", "purge", &spec]);
    rbd("site-a", &["rm", &spec]);
}
