//! Fencing and restarts of a multi-agent site, against the two-site Ceph
//! lab (`#[ignore]`d; `FERRY_CEPH_LAB=1`): the site of `rbd_lab_leases.rs`
//! (`ferry_e2e::multi_agent`: two primary agents of site-a sharing their
//! control state in RADOS with a 10 s lease, one standby on site-b).
//!
//! - A lease holder stopped (SIGSTOP) past its lease, with a cycle in
//!   flight held just before it writes its capture and its driver stamp
//!   held too (fail points released by a file): the other agent takes the
//!   group over, blocklisting the stopped agent's client, and commits a
//!   cycle. The stopped agent resumed (SIGCONT) then makes both late
//!   writes, and RADOS refuses them: its address is on site-a's
//!   blocklist, its log says the writes were refused, and nothing it
//!   would have written exists (no new snapshot on the source, no new
//!   recovery point on the standby, the lease object's records as the new
//!   holder left them). It stops driving the group, and rejoins as a new
//!   client that does not hold it.
//! - Every agent of both sites SIGKILLed at once while a writer writes and
//!   each group's cycle is in flight (its data sent, held before the
//!   commit), then all started again: each group is driven by exactly one
//!   agent (one locker of its lease object), resumes incrementally, loses
//!   no recovery point and makes none twice (the standby holds the last one
//!   committed before the kill once every agent is dead; its points rise
//!   strictly, those it held at the kill stay but for the oldest its
//!   retention prunes, every new one is above them), and once the writer
//!   stops every standby image equals its source at the committed point.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ferry_e2e::cli::ok;
use ferry_e2e::lab::{self, rbd, Cleanup};
use ferry_e2e::landing::reached_line;
use ferry_e2e::multi_agent::{
    add_and_start, check_standby_points, first_cycle_after_takeover, make_group, multi_agent_site,
    progress_u64, resumed_incrementally, standby_target, status_group, wait_for, Groups, Namespace,
    RbdGroups, Site, Writer, LEASE_SECS,
};
use ferry_e2e::Agent;
use serde_json::Value;

/// The two tests share the lab's two small clusters and this machine's
/// cores: one at a time.
static ONE_SITE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// What one test of this file holds while it runs: its turn on the lab,
/// and the cleanup of its images, RBD groups and RADOS namespace (dropped
/// in reverse order: namespace, groups, images, then the turn).
struct LabTurn {
    mark: String,
    ns: String,
    _namespace: Namespace,
    _groups: RbdGroups,
    _images: Cleanup,
    _one: std::sync::MutexGuard<'static, ()>,
}

impl LabTurn {
    /// Waits for the lab, then names this test's objects `PREFIXPID…`.
    fn take(prefix: &str) -> LabTurn {
        let one = ONE_SITE_AT_A_TIME
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mark = format!("{prefix}{}", std::process::id());
        let ns = format!("{mark}-ctl");
        LabTurn {
            _images: Cleanup {
                mark: mark.clone(),
                parents: mark.clone(),
            },
            _groups: RbdGroups(mark.clone()),
            _namespace: Namespace(ns.clone()),
            _one: one,
            mark,
            ns,
        }
    }
}

/// `rados --cluster site-a -p rbd -N NS ARGS`'s standard output.
fn rados(ns: &str, args: &[&str]) -> String {
    let out = Command::new("rados")
        .args(["--cluster", "site-a", "-p", "rbd", "-N", ns])
        .args(args)
        .output()
        .expect("running rados");
    lab::assert_ok(&out, &format!("rados {}", args.join(" ")));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The omap of group `group`'s lease object (holder records and the
/// driver stamp), read from RADOS.
fn lease_omap(ns: &str, group: &str) -> BTreeMap<String, String> {
    let oid = format!("ferry.lease.{group}");
    rados(ns, &["listomapkeys", &oid])
        .lines()
        .map(|key| {
            let value = rados(ns, &["getomapval", &oid, key, "/dev/stdout"]);
            // rados may print a line about where it wrote the value.
            let value = value
                .lines()
                .filter(|l| !l.starts_with("Writing to"))
                .collect::<String>();
            (key.to_owned(), value)
        })
        .collect()
}

/// The address of the client that agent `agent` holds group `group`'s
/// lease with, from the lease object's holder records.
fn recorded_client(omap: &BTreeMap<String, String>, agent: &str) -> Option<String> {
    omap.iter()
        .find(|(k, v)| k.starts_with("holder.") && v.as_str() == agent)
        .map(|(k, _)| k["holder.".len()..].to_owned())
}

/// The lockers (cookie = agent name) of group `group`'s lease lock.
fn lease_lockers(ns: &str, group: &str) -> Vec<String> {
    let info = rados(
        ns,
        &[
            "lock",
            "info",
            &format!("ferry.lease.{group}"),
            "ferry.lease",
        ],
    );
    let info: Value = serde_json::from_str(&info).unwrap_or_else(|e| panic!("{e}: {info}"));
    info["lockers"]
        .as_array()
        .map(|ls| {
            ls.iter()
                .filter_map(|l| l["cookie"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Site-a's OSD blocklist (`ceph osd blocklist ls`).
fn blocklist() -> String {
    let out = Command::new("ceph")
        .args(["--cluster", "site-a", "osd", "blocklist", "ls"])
        .output()
        .expect("running ceph");
    lab::assert_ok(&out, "ceph osd blocklist ls");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Takes the addresses the test's agents blocklisted off site-a's
/// blocklist again (they would stay for an hour) on drop.
struct Unblock(Vec<std::path::PathBuf>);

impl Drop for Unblock {
    fn drop(&mut self) {
        let mut addrs = BTreeSet::new();
        for dir in &self.0 {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for log in entries.flatten() {
                let text = std::fs::read_to_string(log.path()).unwrap_or_default();
                for line in text
                    .lines()
                    .filter(|l| l.contains("blocklisting a previous holder"))
                {
                    if let Some(addr) = line
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("addr="))
                    {
                        addrs.insert(addr.to_owned());
                    }
                }
            }
        }
        for addr in addrs {
            let _ = Command::new("ceph")
                .args(["--cluster", "site-a", "osd", "blocklist", "rm", &addr])
                .output();
        }
    }
}

/// The names of the snapshots of `spec` on `site` (every namespace), in
/// the order the cluster made them.
fn snapshots(site: &str, spec: &str) -> Vec<String> {
    let out = rbd(site, &["snap", "ls", "--all", "--format", "json", spec]);
    let listed: Value = serde_json::from_slice(&out.stdout).expect("rbd snap ls --format json");
    let mut snaps: Vec<(u64, String)> = listed
        .as_array()
        .map(|ss| {
            ss.iter()
                .filter_map(|s| Some((s["id"].as_u64()?, s["name"].as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default();
    snaps.sort();
    snaps.into_iter().map(|(_, n)| n).collect()
}

/// The recovery points `ferry-rp-N` a standby image holds, in the order
/// they were made.
fn standby_points(target: &str) -> Vec<u64> {
    snapshots("site-b", &format!("rbd/{target}"))
        .iter()
        .filter_map(|n| n.strip_prefix("ferry-rp-")?.parse().ok())
        .collect()
}

/// Whether `points` rise strictly (none made twice or out of order).
fn rising(points: &[u64]) -> bool {
    points.windows(2).all(|w| w[0] < w[1])
}

/// The part of `log` after its first line containing `marker`.
fn after<'a>(log: &'a str, marker: &str) -> &'a str {
    log.find(marker).map_or("", |at| &log[at..])
}

/// The agent resumed after its lease was taken (with its held writes
/// released) had its capture and its driver stamp refused by RADOS as a
/// blocklisted client's, and committed no cycle.
fn late_writes_refused(agent: &Agent) {
    agent.wait_for_log(
        "late write refused: this agent's client is blocklisted (another agent fenced it)",
    );
    agent.wait_for_log("capturing the sources failed");
    let log = agent.log_text();
    let resumed = after(&log, "fail point released");
    let refusal = resumed
        .lines()
        .find(|l| l.contains("capturing the sources failed"))
        .unwrap_or_default();
    eprintln!("p1's late capture: {refusal}");
    assert!(
        refusal.contains("os error 108"),
        "the capture refused as from a blocklisted client (EBLOCKLISTED): {refusal}"
    );
    eprintln!(
        "p1's late stamp: {}",
        resumed
            .lines()
            .find(|l| l.contains("late write refused"))
            .unwrap_or_default()
    );
    assert!(
        !resumed.contains("replication cycle committed"),
        "p1 committed a cycle after it resumed:\n{resumed}"
    );
}

/// The fenced agent (its old client `fenced`) connected as a new client,
/// not blocklisted, and shows group `fg` driven by p2.
fn rejoins_as_a_new_client(agent: &Agent, fenced: &str) {
    agent.wait_for_log("contending again as a new client after this agent was fenced");
    let rejoined = agent
        .log_text()
        .lines()
        .find(|l| l.contains("contending again as a new client"))
        .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("addr=")))
        .map(str::to_owned)
        .expect("p1's new client's address");
    assert_ne!(rejoined, fenced, "a new client");
    wait_for("p1 shows p2 driving fg", Duration::from_secs(30), || {
        let g = status_group(&agent.dir, "fg");
        (g["driven_by"]["agent"] == "p2" && g["driven_by"]["this_agent"] == false).then_some(())
    });
    eprintln!(
        "p1 rejoined as client {rejoined}: {}",
        status_group(&agent.dir, "fg")["driven_by"]
    );
    assert!(
        !blocklist().contains(&rejoined),
        "p1's new client is not fenced"
    );
}

#[test]
#[ignore = "needs the Ceph lab (FERRY_CEPH_LAB=1); scripts/test.sh runs it"]
fn lab_a_holder_stopped_past_its_lease_is_fenced_and_its_late_writes_refused() {
    if !lab::enabled() {
        return;
    }
    let turn = LabTurn::take("ferry-h21-fence-");
    let started = Instant::now();
    let (mark, ns) = (turn.mark.clone(), turn.ns.clone());
    // p1's late writes, held until this file exists: its driver stamp
    // (from the moment it holds a lease) and its third capture.
    let gate_dir = tempfile::tempdir().unwrap();
    let gate = gate_dir.path().join("late-writes-go");
    let failpoints = format!(
        "lease::before-stamp=return(wait:{gate});cycle::before-capture=2*off->1*return(wait:{gate})",
        gate = gate.display()
    );
    let site = multi_agent_site(&ns, &[("FAILPOINTS", &failpoints)], &[]);
    let _unblock = Unblock(vec![site.dir("p1"), site.dir("p2")]);
    let (p1, p2) = (site.dir("p1"), site.dir("p2"));

    // One group; equal loads, so the first agent by name drives it.
    let (images, holder) = make_group(&site, &mark, "fg", 1);
    assert_eq!(holder, "p1", "the free group goes to p1");
    add_and_start(&site, "p1", "fg", &images);
    let source = format!("rbd/{}", images[0]);
    let writer = Writer::start(&images);
    // Two cycles committed; the third is in flight, held just before it
    // writes its capture on the source.
    site.primaries["p1"].wait_for_log(&reached_line("cycle::before-capture"));
    let p1_last = progress_u64(&status_group(&p1, "fg"), "last_recovery_point");
    assert!(p1_last > 0, "p1 committed before its third cycle");
    let p1_client = recorded_client(&lease_omap(&ns, "fg"), "p1")
        .expect("p1's client recorded as the holder in the lease object");

    // SIGSTOP the holder past its lease: p2 takes the group over, fencing
    // p1's client, and commits a cycle.
    site.primaries["p1"].signal(libc::SIGSTOP);
    let stopped = Instant::now();
    wait_for("p2 drives fg", Duration::from_secs(LEASE_SECS + 20), || {
        (status_group(&p2, "fg")["driven_by"]["lease"] == "holding").then_some(())
    });
    eprintln!("p2 holds fg {:?} after p1 stopped", stopped.elapsed());
    let (sent, rp) = wait_for("a cycle of fg on p2", Duration::from_secs(60), || {
        first_cycle_after_takeover(&site.primaries["p2"].log_text(), "fg")
    });
    eprintln!("p2's first cycle of fg: point {rp} (p1's last {p1_last}), {sent} bytes sent");
    assert!(rp > p1_last, "p2's point {rp} after p1's {p1_last}");
    let fenced = blocklist();
    assert!(
        fenced.contains(&p1_client),
        "p1's client {p1_client} on site-a's blocklist:\n{fenced}"
    );
    eprintln!(
        "site-a's blocklist has p1's client: {}",
        fenced
            .lines()
            .find(|l| l.contains(&p1_client))
            .unwrap_or("")
    );

    // Nothing new to replicate: what RADOS holds before p1 resumes.
    drop(writer);
    let idle = progress_u64(&status_group(&p2, "fg"), "idle_checks");
    wait_for("an idle check on p2", Duration::from_secs(60), || {
        (progress_u64(&status_group(&p2, "fg"), "idle_checks") > idle).then_some(())
    });
    let target = standby_target(&p2, "fg", &images[0]);
    let source_snaps = snapshots("site-a", &source);
    let points = standby_points(&target);
    let lease = lease_omap(&ns, "fg");
    assert_eq!(
        lease.get("driven_by").map(String::as_str),
        Some("p2"),
        "{lease:?}"
    );
    assert_eq!(
        recorded_client(&lease, "p1"),
        None,
        "p1's record replaced: {lease:?}"
    );

    // p1 resumes with both writes released: RADOS refuses them.
    std::fs::write(&gate, b"go").unwrap();
    site.primaries["p1"].signal(libc::SIGCONT);
    late_writes_refused(&site.primaries["p1"]);

    // p1 stops driving the group and rejoins as a new client, not a holder.
    rejoins_as_a_new_client(&site.primaries["p1"], &p1_client);

    // Nothing p1 would have written exists.
    let now_snaps = snapshots("site-a", &source);
    let new: Vec<&String> = now_snaps
        .iter()
        .filter(|s| !source_snaps.contains(s))
        .collect();
    assert!(new.is_empty(), "new snapshots on {source}: {new:?}");
    assert_eq!(standby_points(&target), points, "the standby's points");
    assert_eq!(lease_omap(&ns, "fg"), lease, "the lease object's records");
    assert_eq!(lease_lockers(&ns, "fg"), vec!["p2".to_owned()]);
    eprintln!(
        "after p1's late writes: source snapshots {now_snaps:?}, standby points {points:?}, lease {lease:?}"
    );

    ok(&p2, &["group", "stop", "fg", "--wait"]);
    ok(&p2, &["group", "delete", "fg", "--wait"]);
    drop(site.standby);
    eprintln!("fencing test: {:?}", started.elapsed());
}

/// Makes `count` groups of one image each, started through their drivers.
fn start_groups(site: &Site, mark: &str, count: usize) -> Groups {
    let mut groups = Groups::new();
    for g in 0..count {
        let name = format!("rg-{g}");
        let (images, holder) = make_group(site, mark, &name, 1);
        add_and_start(site, &holder, &name, &images);
        groups.insert(name, (images, holder));
    }
    groups
}

/// The agent driving `name`, once exactly one of p1 and p2 says it holds
/// the lease and the other names it.
fn sole_driver(site: &Site, name: &str) -> Option<String> {
    let views: Vec<(String, Value)> = ["p1", "p2"]
        .iter()
        .map(|a| {
            (
                (*a).to_owned(),
                status_group(&site.dir(a), name)["driven_by"].clone(),
            )
        })
        .collect();
    let holding: Vec<&String> = views
        .iter()
        .filter(|(_, v)| v["lease"] == "holding")
        .map(|(a, _)| a)
        .collect();
    let [holder] = holding.as_slice() else {
        return None;
    };
    views
        .iter()
        .all(|(_, v)| v["agent"] == holder.as_str())
        .then(|| (*holder).clone())
}

#[test]
#[ignore = "needs the Ceph lab (FERRY_CEPH_LAB=1); scripts/test.sh runs it"]
fn lab_every_agent_restarted_at_once_loses_nothing_and_every_group_resumes() {
    if !lab::enabled() {
        return;
    }
    let turn = LabTurn::take("ferry-h21-fence-r");
    let started = Instant::now();
    let (mark, ns) = (turn.mark.clone(), turn.ns.clone());
    // Each agent's third cycle holds with its data sent, before the commit.
    let failpoints = [("FAILPOINTS", "sender::before-commit=2*off->1*return(hold)")];
    let mut site = multi_agent_site(&ns, &failpoints, &failpoints);
    let _unblock = Unblock(vec![site.dir("p1"), site.dir("p2")]);
    let groups = start_groups(&site, &mark, 2);
    let drivers: BTreeSet<&String> = groups.values().map(|(_, h)| h).collect();
    assert_eq!(drivers.len(), 2, "one group on each agent: {groups:?}");
    let all_images: Vec<String> = groups.values().flat_map(|(i, _)| i.clone()).collect();
    let writer = Writer::start(&all_images);
    for agent in ["p1", "p2"] {
        site.primaries[agent].wait_for_log(&reached_line("sender::before-commit"));
    }
    let mut last_rp = BTreeMap::new();
    let mut targets = BTreeMap::new();
    for (name, (images, holder)) in &groups {
        let rp = progress_u64(
            &status_group(&site.dir(holder), name),
            "last_recovery_point",
        );
        assert!(rp > 0, "{name} committed before the kill");
        last_rp.insert(name.clone(), rp);
        targets.insert(
            name.clone(),
            standby_target(&site.dir(holder), name, &images[0]),
        );
    }
    eprintln!("before the kill: drivers {groups:?}, last points {last_rp:?}");

    // SIGKILL all three agents at once, then start them all again.
    for agent in site.primaries.values() {
        agent.signal(libc::SIGKILL);
    }
    site.standby.signal(libc::SIGKILL);
    let killed = Instant::now();
    for agent in site.primaries.values_mut() {
        agent.kill9();
    }
    site.standby.kill9();
    // Nothing runs: the standby's points as the kill left them hold the
    // last one each group committed, in order.
    let at_kill: BTreeMap<String, Vec<u64>> = targets
        .iter()
        .map(|(name, target)| (name.clone(), standby_points(target)))
        .collect();
    for (name, points) in &at_kill {
        eprintln!("{name}: points on the standby after the kill {points:?}");
        assert!(
            points.contains(&last_rp[name]),
            "{name}: point {} committed before the kill is gone: {points:?}",
            last_rp[name]
        );
        assert!(rising(points), "{name}: {points:?}");
    }
    site.standby.restart(&[]);
    for agent in site.primaries.values_mut() {
        agent.restart(&[]);
    }

    // Every group is driven again by exactly one agent.
    let mut now_driven = Groups::new();
    for (name, (images, _)) in &groups {
        let driver = wait_for(
            &format!("one driver of {name}"),
            Duration::from_secs(LEASE_SECS + 30),
            || sole_driver(&site, name),
        );
        assert_eq!(
            lease_lockers(&ns, name),
            vec![driver.clone()],
            "{name}'s lease lock"
        );
        now_driven.insert(name.clone(), (images.clone(), driver));
    }
    eprintln!(
        "after the restart: drivers {now_driven:?}, {:?} after the kill",
        killed.elapsed()
    );
    for (name, (_, driver)) in &now_driven {
        resumed_incrementally(&site, driver, &groups, std::slice::from_ref(name), &last_rp);
    }
    drop(writer);
    for (name, entry) in &now_driven {
        let one: Groups = [(name.clone(), entry.clone())].into();
        check_standby_points(&site, &entry.1, &one);
    }

    // No recovery point lost or made twice: the standby's, in the order
    // they were made, rise strictly; those it held at the kill are still
    // there but for the oldest its retention pruned since, and every new
    // one is above them.
    for (name, target) in &targets {
        let points = standby_points(target);
        let before = &at_kill[name];
        eprintln!("{name}: points on the standby at the end {points:?}");
        assert!(rising(&points), "{name}: {points:?}");
        let kept: Vec<u64> = points
            .iter()
            .copied()
            .filter(|p| before.contains(p))
            .collect();
        assert!(
            before.ends_with(&kept),
            "{name}: a point held at the kill is gone ({before:?} then {points:?})"
        );
        let newest = before.last().copied().unwrap_or(0);
        assert!(
            points.iter().all(|p| before.contains(p) || *p > newest),
            "{name}: a new point at or below {newest}: {points:?}"
        );
    }
    for (name, (_, driver)) in &now_driven {
        let dir = site.dir(driver);
        ok(&dir, &["group", "stop", name, "--wait"]);
        ok(&dir, &["group", "delete", name, "--wait"]);
    }
    drop(site.standby);
    eprintln!("restart-all test: {:?}", started.elapsed());
}
