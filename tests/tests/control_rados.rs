//! Two agents of one site sharing their control state in RADOS
//! (`[control] store = "rados"`), against the Ceph lab (`#[ignore]`d;
//! `FERRY_CEPH_LAB=1`): two `ferry-agent` processes with their own data
//! dirs and ports and the same pool and namespace, and a standby agent of
//! another site (SQLite store) to pair with.
//!
//! - A service, a group and a policy created through one agent's API are
//!   listed by the other at once (watch/notify; no wait in the test).
//! - Conflicting writes on both at the same time lose none: every policy
//!   created on either is there on both, and of two creations of one name
//!   exactly one wins.
//! - Each agent catches up with the other's writes from the changed rows
//!   alone (the change log), not by reloading every row.
//! - An agent restarted with an empty data dir lists everything.

use std::path::Path;
use std::process::Command;

use ferry_e2e::cli::{ok, run, text};
use ferry_e2e::{init_agent, Agent};
use serde_json::Value;

fn lab() -> bool {
    ferry_e2e::lab::enabled()
}

/// Removes the site's control object (and its namespace's leftovers) on
/// drop.
struct ControlObject {
    namespace: String,
}

impl Drop for ControlObject {
    fn drop(&mut self) {
        let out = Command::new("rados")
            .args(["--cluster", "site-a", "-p", "rbd", "-N", &self.namespace])
            .args(["rm", "ferry.control"])
            .output();
        if let Ok(o) = out {
            if !o.status.success() {
                eprintln!("cleanup: {}", String::from_utf8_lossy(&o.stderr));
            }
        }
    }
}

/// `(id, name)` of every item of a `… list --json` answer, sorted.
fn ids_and_names(list: &Value) -> Vec<(i64, String)> {
    let mut out: Vec<(i64, String)> = list
        .as_array()
        .unwrap_or_else(|| panic!("a list: {list}"))
        .iter()
        .map(|v| {
            (
                v["id"].as_i64().unwrap_or_else(|| panic!("an id: {v}")),
                v["name"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

fn listed(dir: &Path, what: &str) -> Vec<(i64, String)> {
    ids_and_names(&ok(dir, &[what, "list"]))
}

fn create_policy(dir: &Path, name: &str) -> std::process::Output {
    run(
        dir,
        &[
            "policy",
            "create",
            name,
            "--schedule",
            "daily 02:00",
            "--json",
        ],
    )
}

#[test]
#[ignore = "needs the Ceph lab (FERRY_CEPH_LAB=1); scripts/test.sh runs it"]
fn lab_two_agents_of_a_site_share_services_groups_and_policies() {
    if !lab() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let namespace = format!("ferry-h19-rados-{}-site", std::process::id());
    let _cleanup = ControlObject {
        namespace: namespace.clone(),
    };
    let shared = format!(
        "[control]\nstore = \"rados\"\npool = \"rbd\"\nnamespace = \"{namespace}\"\n\
         [ceph]\ncluster = \"site-a\"\n"
    );
    let (a1_dir, a2_dir, b_dir) = (
        tmp.path().join("a1"),
        tmp.path().join("a2"),
        tmp.path().join("b"),
    );
    let (a1_fp, a2_fp, b_fp) = (init_agent(&a1_dir), init_agent(&a2_dir), init_agent(&b_dir));
    for dir in [&a1_dir, &a2_dir] {
        std::fs::write(dir.join("config.toml"), &shared).unwrap();
    }
    // Debug lines of the shared store: how each copy caught up.
    let log = [("RUST_LOG", "info,ferry_agent::control::store::shared=debug")];
    let a1 = Agent::start_with(&a1_dir, &a1_fp, &[], &log);
    let mut a2 = Agent::start_with(&a2_dir, &a2_fp, &[], &log);
    let _b = Agent::start(&b_dir, &b_fp, &[]);
    assert!(a1.log_text().contains("ferry.control"), "{}", a1.log_text());

    // A service made on agent 1 is listed by agent 2.
    let key = run(&b_dir, &["service", "key"]);
    assert!(key.status.success(), "{}", text(&key));
    let key = String::from_utf8(key.stdout).unwrap();
    let svc = ok(&a1_dir, &["service", "create", "--key", key.trim()]);
    assert_eq!(svc["remote_fingerprint"], b_fp);
    assert_eq!(listed(&a2_dir, "service"), listed(&a1_dir, "service"));
    assert_eq!(listed(&a2_dir, "service").len(), 1);

    // A group made on agent 1 (mapped on the standby) is listed by agent 2.
    ok(&a1_dir, &["group", "create", "g1", "--wait"]);
    let groups = listed(&a2_dir, "group");
    assert_eq!(groups.len(), 1, "{groups:?}");
    assert_eq!(groups[0].1, "g1");
    let g2 = ok(&a2_dir, &["group", "show", "g1"]);
    let g1 = ok(&a1_dir, &["group", "show", "g1"]);
    assert_eq!(g2["state"], g1["state"]);

    // A policy made on agent 2 is listed by agent 1.
    let out = create_policy(&a2_dir, "nightly");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(listed(&a1_dir, "policy"), listed(&a2_dir, "policy"));

    // Writes on both at once: none lost, and one name is won once.
    let racers: Vec<_> = [(&a1_dir, "one"), (&a2_dir, "two")]
        .into_iter()
        .flat_map(|(dir, tag)| {
            (0..6).map(move |i| {
                let dir = dir.to_path_buf();
                std::thread::spawn(move || {
                    let named = create_policy(&dir, &format!("{tag}-{i}"));
                    let same = create_policy(&dir, &format!("race-{i}"));
                    (named, same)
                })
            })
        })
        .collect();
    let mut same_won = std::collections::BTreeMap::<String, usize>::new();
    for r in racers {
        let (named, same) = r.join().unwrap();
        assert!(named.status.success(), "{}", text(&named));
        let v: Value = serde_json::from_slice(&same.stdout).unwrap_or(Value::Null);
        if same.status.success() {
            *same_won
                .entry(v["name"].as_str().unwrap().to_owned())
                .or_default() += 1;
        } else {
            assert!(
                text(&same).contains("already exists"),
                "refused as a taken name: {}",
                text(&same)
            );
        }
    }
    assert_eq!(
        same_won.len(),
        6,
        "each raced name was created: {same_won:?}"
    );
    assert!(same_won.values().all(|n| *n == 1), "{same_won:?}");
    let policies = listed(&a1_dir, "policy");
    assert_eq!(policies.len(), 1 + 12 + 6, "{policies:?}");
    assert_eq!(listed(&a2_dir, "policy"), policies);
    // Each agent caught up with the other's writes from the changed rows
    // (the change log), not by reloading every row.
    for (name, agent) in [("agent 1", &a1), ("agent 2", &a2)] {
        assert!(
            agent
                .log_text()
                .contains("caught up with the shared control state"),
            "{name} never caught up incrementally:\n{}",
            agent.log_text()
        );
    }

    // Agent 2 restarted with an empty data dir sees everything.
    a2.stop();
    std::fs::remove_dir_all(&a2_dir).unwrap();
    let a2_fp = init_agent(&a2_dir);
    std::fs::write(a2_dir.join("config.toml"), &shared).unwrap();
    let _a2 = Agent::start(&a2_dir, &a2_fp, &[]);
    for what in ["service", "group", "policy"] {
        assert_eq!(listed(&a2_dir, what), listed(&a1_dir, what), "{what}");
    }
    assert_eq!(listed(&a2_dir, "policy").len(), 19);
    drop(a1);
}
