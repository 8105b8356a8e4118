//! Groups spread over the agents of a multi-agent site and taken over
//! without a resync, against the two-site Ceph lab (`#[ignore]`d;
//! `FERRY_CEPH_LAB=1`): two primary agents of site-a share their control
//! state in RADOS (`[control] store = "rados"`, one identity for the site,
//! a 10 s lease) and one standby agent keeps RBD images on site-b.
//!
//! - The site's groups get spread over both primary agents; `ferry status`
//!   and `ferry group show` on either name the agent driving each;
//!   mutating operations sent to the agent that does not drive the group
//!   are forwarded to the driver and carried out, and one that was already
//!   forwarded is refused with the driver's name and operator API address.
//! - SIGKILL one primary agent while a writer writes into every image: each
//!   of its groups is driven by the other within the lease + 10 s and
//!   resumes incrementally (the first cycle the new holder commits sends a
//!   fraction of what a full copy of the group sends; its recovery point is
//!   above the dead holder's last), and once the writer stops every standby
//!   image equals its source at the group's committed recovery point.
//! - The killed agent back and the other stopped (SIGTERM): it gives its
//!   leases back, and the first takes every group and resumes each
//!   incrementally from the state the other kept (over its own stale one).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_e2e::cli::{ok, run, text};
use ferry_e2e::lab::{self, export_hash, pyrbd, rbd, Cleanup};
use ferry_e2e::{init_agent, Agent};
use serde_json::Value;

const LEASE_SECS: u64 = 10;

/// Each group's images and the agent driving it, by group name.
type Groups = BTreeMap<String, (Vec<String>, String)>;
/// Random data written into each image before it is protected.
const FILL_MIB: u64 = 24;

/// Removes every object of the test's RADOS namespace (the control state,
/// the agents' records, the leases) on drop.
struct Namespace(String);

impl Drop for Namespace {
    fn drop(&mut self) {
        ferry_e2e::lab::remove_namespace_objects("site-a", &self.0);
    }
}

/// Removes site-a's RBD groups holding any image whose name contains the
/// mark on drop (ferry's groups of multi-image captures; an image in a
/// group cannot be removed), before [`Cleanup`] removes the images.
struct RbdGroups(String);

impl Drop for RbdGroups {
    fn drop(&mut self) {
        let rbd = |args: &[&str]| {
            Command::new("rbd")
                .args(["--cluster", "site-a"])
                .args(args)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
                .unwrap_or_default()
        };
        for group in rbd(&["group", "ls", "rbd"]).lines() {
            let spec = format!("rbd/{group}");
            if rbd(&["group", "image", "ls", &spec]).contains(&self.0) {
                rbd(&["group", "rm", &spec]);
            }
        }
    }
}

/// A writer into the first MiB of every image until dropped.
struct Writer(Child);

impl Writer {
    fn start(images: &[String]) -> Writer {
        let script = format!(
            "import rados, rbd, random, time\n\
             c = rados.Rados(clustername='site-a', conffile='/etc/ceph/site-a.conf')\n\
             c.connect()\n\
             io = c.open_ioctx('rbd')\n\
             imgs = [rbd.Image(io, n) for n in {images:?}]\n\
             r = random.Random(7)\n\
             while True:\n\
             \x20   for img in imgs:\n\
             \x20       img.write(r.randbytes(4096), r.randrange(0, 256) * 4096)\n\
             \x20   time.sleep(0.02)\n"
        );
        let child = Command::new("/usr/bin/python3")
            .args(["-c", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting the writer");
        Writer(child)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `probe` every 200 ms until it returns `Some`, at most `limit`.
fn wait_for<T>(what: &str, limit: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `ferry status --json`'s group `name`.
fn status_group(dir: &Path, name: &str) -> Value {
    let status = ok(dir, &["status"]);
    status["groups"]
        .as_array()
        .and_then(|gs| gs.iter().find(|g| g["name"] == name).cloned())
        .unwrap_or_else(|| panic!("group {name} in {status}"))
}

fn progress_u64(group: &Value, key: &str) -> u64 {
    group["progress"][key].as_u64().unwrap_or(0)
}

/// The `replication cycle committed` line's `bytes_sent` and
/// `recovery_point` of the first cycle group `name` committed after this
/// agent took its lease (from the agent's log).
fn first_cycle_after_takeover(log: &str, name: &str) -> Option<(u64, u64)> {
    let field = |line: &str, key: &str| -> Option<u64> {
        let at = line.find(&format!("{key}="))? + key.len() + 1;
        let digits: String = line[at..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    };
    let ours = |line: &&str| line.contains(&format!("group={name}"));
    let mut lines = log
        .lines()
        .filter(ours)
        .skip_while(|l| !l.contains("driving the group (lease held)"));
    lines.next()?;
    let line = lines.find(|l| l.contains("replication cycle committed"))?;
    Some((field(line, "bytes_sent")?, field(line, "recovery_point")?))
}

/// Fields drop in declaration order: the agents first (a failed test
/// prints their logs as they drop), their directories' tempdir last.
struct Site {
    primaries: BTreeMap<String, Agent>,
    standby: Agent,
    tmp: tempfile::TempDir,
}

impl Site {
    fn dir(&self, agent: &str) -> PathBuf {
        self.primaries[agent].dir.clone()
    }
}

/// Two primary agents (`p1`, `p2`) of site-a sharing their control state
/// in namespace `ns` and one identity, and a standby on site-b, paired.
fn multi_agent_site(ns: &str) -> Site {
    let tmp = tempfile::tempdir().unwrap();
    let (p1_dir, p2_dir, b_dir) = (
        tmp.path().join("p1"),
        tmp.path().join("p2"),
        tmp.path().join("b"),
    );
    let a_fp = init_agent(&p1_dir);
    init_agent(&p2_dir);
    // One identity for the site (the standby knows the site by it) and one
    // operator token (an agent forwards the operator's request with it).
    for file in ["identity/cert.pem", "identity/key.pem", "api.token"] {
        std::fs::copy(p1_dir.join(file), p2_dir.join(file)).unwrap();
    }
    let b_fp = init_agent(&b_dir);
    for (dir, name) in [(&p1_dir, "p1"), (&p2_dir, "p2")] {
        std::fs::write(
            dir.join("config.toml"),
            format!(
                "[control]\nstore = \"rados\"\npool = \"rbd\"\nnamespace = \"{ns}\"\n\
                 agent_name = \"{name}\"\nlease = \"{LEASE_SECS}s\"\n\
                 [ceph]\ncluster = \"site-a\"\n"
            ),
        )
        .unwrap();
    }
    std::fs::write(
        b_dir.join("config.toml"),
        "[standby]\nbackend = \"rbd\"\nrbd_pool = \"rbd\"\n[ceph]\ncluster = \"site-b\"\n",
    )
    .unwrap();
    let mut primaries = BTreeMap::new();
    primaries.insert("p1".to_owned(), Agent::start(&p1_dir, &a_fp, &[]));
    primaries.insert("p2".to_owned(), Agent::start(&p2_dir, &a_fp, &[]));
    let standby = Agent::start(&b_dir, &b_fp, &[]);
    let out = run(&b_dir, &["service", "key"]);
    assert!(out.status.success(), "{}", text(&out));
    let key = String::from_utf8(out.stdout).unwrap();
    ok(&p1_dir, &["service", "create", "--key", key.trim()]);
    // Both agents announced themselves before any group exists.
    wait_for(
        "both agents in ferry.agents",
        Duration::from_secs(30),
        || {
            let out = Command::new("rados")
                .args(["--cluster", "site-a", "-p", "rbd", "-N", ns])
                .args(["listomapkeys", "ferry.agents"])
                .output()
                .ok()?;
            let keys = String::from_utf8_lossy(&out.stdout).to_string();
            (keys.contains("agent.p1") && keys.contains("agent.p2")).then_some(())
        },
    );
    Site {
        tmp,
        primaries,
        standby,
    }
}

/// Makes group `name`'s images (random data in `FILL_MIB` of each) and the
/// group on p1; returns the images and the agent that drives the group.
fn make_group(site: &Site, mark: &str, name: &str, count: usize) -> (Vec<String>, String) {
    let images: Vec<String> = (0..count).map(|i| format!("{mark}-{name}-{i}")).collect();
    for (i, image) in images.iter().enumerate() {
        rbd(
            "site-a",
            &["create", "--size", "64", &format!("rbd/{image}")],
        );
        pyrbd(
            "site-a",
            image,
            &format!(
                "r = random.Random({i})\n\
                 for k in range({FILL_MIB}):\n\
                 \x20   img.write(r.randbytes(1 << 20), (k + 8) << 20)"
            ),
        );
    }
    ok(&site.dir("p1"), &["group", "create", name, "--wait"]);
    let holder = wait_for(
        &format!("a driver for {name}"),
        Duration::from_secs(60),
        || {
            let shown = ok(&site.dir("p1"), &["group", "show", name]);
            shown["driven_by"]["agent"].as_str().map(str::to_owned)
        },
    );
    (images, holder)
}

/// A POST to `dir`'s agent marked as already forwarded by another agent
/// of the site: the agent carries it out or refuses it, never forwards it.
fn post_forwarded(dir: &Path, path: &str) -> ferry_agent::api::http::Reply {
    let conn = ferry_agent::cli::Conn {
        dir: Some(dir.to_path_buf()),
        ..Default::default()
    };
    let (target, token) = ferry_agent::cli::resolve_target(&conn).expect("agent API and token");
    let call = ferry_agent::api::http::Call {
        method: ferry_agent::api::http::Method::POST,
        path,
        token: Some(&token),
        body: None,
        limit: 1 << 20,
        forwarded_by: Some("a-test"),
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(ferry_agent::api::http::call_limited(
            &target,
            call,
            Duration::from_secs(10),
        ))
        .unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

/// Four groups of one or two images, each made on p1. The first is filled
/// and started through the agent that does not drive it (each request
/// forwarded to the driver), after that agent refused a request another
/// agent had already forwarded, naming the driver and its API address; the
/// others through their driver. Returns each group's images and driver.
fn start_groups(site: &Site, mark: &str) -> Groups {
    let mut groups = Groups::new();
    for g in 0..4 {
        let name = format!("lg-{g}");
        let (images, holder) = make_group(site, mark, &name, 1 + g % 2);
        let other = if holder == "p1" { "p2" } else { "p1" };
        let uris: Vec<String> = images.iter().map(|i| format!("rbd:rbd/{i}")).collect();
        let mut add = vec!["group", "add", name.as_str()];
        add.extend(uris.iter().map(String::as_str));
        add.push("--wait");
        let mut via = holder.as_str();
        if g == 0 {
            wait_for(
                &format!("{other} sees {holder} drive {name}"),
                Duration::from_secs(30),
                || {
                    let shown = ok(&site.dir(other), &["group", "show", &name]);
                    (shown["driven_by"]["agent"] == holder.as_str()).then_some(())
                },
            );
            let api = ok(&site.dir(&holder), &["status"])["agent"]["api"]
                .as_str()
                .unwrap()
                .to_owned();
            let refused = post_forwarded(&site.dir(other), &format!("/v1/groups/{name}/start"));
            assert_eq!(refused.status, 409, "{}", refused.body);
            let said = refused.body["error"].as_str().unwrap_or_default();
            assert!(
                said.contains(&format!("driven by agent {holder}")),
                "{said}"
            );
            assert!(said.contains(&api), "{api}: {said}");
            assert_eq!(refused.body["driven_by"]["api"], api.as_str());
            via = other;
        }
        ok(&site.dir(via), &add);
        ok(&site.dir(via), &["group", "start", &name, "--wait"]);
        groups.insert(name, (images, holder));
    }
    let forwarded = |agent: &str| {
        site.primaries[agent]
            .log_text()
            .matches("forwarded an operation to the agent driving its group")
            .count()
    };
    assert_eq!(
        forwarded("p1") + forwarded("p2"),
        2,
        "lg-0's add and start were forwarded, nothing else"
    );
    eprintln!(
        "drivers: {:?}",
        groups.iter().map(|(n, (_, h))| (n, h)).collect::<Vec<_>>()
    );
    groups
}

/// Once an idle check of each group on `agent` finds nothing new (the
/// writer has stopped), every standby image equals its source at the
/// committed point.
fn check_standby_points(site: &Site, agent: &str, groups: &Groups) {
    let p2 = site.dir(agent);
    for (name, (images, _)) in groups {
        let idle = progress_u64(&status_group(&p2, name), "idle_checks");
        let g = wait_for(
            &format!("an idle check of {name}"),
            Duration::from_secs(120),
            || {
                let g = status_group(&p2, name);
                (progress_u64(&g, "idle_checks") > idle).then_some(g)
            },
        );
        let rp = progress_u64(&g, "last_recovery_point");
        let shown = ok(&p2, &["group", "show", name]);
        for image in images {
            let target = shown["resources"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["uri"] == format!("rbd:rbd/{image}"))
                .and_then(|r| r["standby_target"].as_str())
                .unwrap()
                .to_owned();
            assert_eq!(
                export_hash(
                    site.tmp.path(),
                    "site-b",
                    &format!("rbd/{target}@ferry-rp-{rp}")
                ),
                export_hash(site.tmp.path(), "site-a", &format!("rbd/{image}")),
                "{name}: {image} at point {rp}"
            );
        }
    }
}

/// For each of `names`, the first cycle `agent` committed after taking the
/// group's lease sent less than a third of a full copy of the group, and
/// its recovery point is above `last_rp` (the previous holder's last).
fn resumed_incrementally(
    site: &Site,
    agent: &str,
    groups: &Groups,
    names: &[String],
    last_rp: &BTreeMap<String, u64>,
) {
    let log = || site.primaries[agent].log_text();
    for name in names {
        let (sent, rp) = wait_for(
            &format!("a cycle of {name} on {agent}"),
            Duration::from_secs(180),
            || first_cycle_after_takeover(&log(), name),
        );
        let full = groups[name].0.len() as u64 * (FILL_MIB << 20);
        eprintln!(
            "{name}: first cycle on {agent} sent {sent} bytes (a full copy: {full} bytes), point {rp} after {}",
            last_rp[name]
        );
        assert!(
            sent < full / 3,
            "{name} resumed with a full copy ({sent} bytes sent):\n{}",
            log()
        );
        assert!(
            rp > last_rp[name],
            "{name}: point {rp} after {}",
            last_rp[name]
        );
    }
}

#[test]
#[ignore = "needs the Ceph lab (FERRY_CEPH_LAB=1); scripts/test.sh runs it"]
fn lab_groups_spread_over_a_sites_agents_and_move_on_without_a_resync() {
    if !lab::enabled() {
        return;
    }
    let mark = format!("ferry-h20-wire-{}", std::process::id());
    let _images = Cleanup {
        mark: mark.clone(),
        parents: mark.clone(),
    };
    let _groups = RbdGroups(mark.clone());
    let _namespace = Namespace(format!("{mark}-ctl"));
    let mut site = multi_agent_site(&format!("{mark}-ctl"));

    let groups = start_groups(&site, &mark);
    let drivers: BTreeSet<&String> = groups.values().map(|(_, h)| h).collect();
    assert_eq!(drivers.len(), 2, "spread over both agents: {groups:?}");
    for (name, (_, holder)) in &groups {
        for agent in ["p1", "p2"] {
            let g = status_group(&site.dir(agent), name);
            assert_eq!(g["driven_by"]["agent"], holder.as_str(), "{agent}: {g}");
        }
    }

    // Continuous replication with a writer; every group commits twice.
    let all_images: Vec<String> = groups.values().flat_map(|(i, _)| i.clone()).collect();
    let writer = Writer::start(&all_images);
    for (name, (_, holder)) in &groups {
        wait_for(
            &format!("two cycles of {name}"),
            Duration::from_secs(180),
            || (progress_u64(&status_group(&site.dir(holder), name), "cycles") >= 2).then_some(()),
        );
    }

    // SIGKILL p1; the groups it drove move to p2.
    let victims: Vec<String> = groups
        .iter()
        .filter(|(_, (_, h))| h == "p1")
        .map(|(n, _)| n.clone())
        .collect();
    let last_rp: BTreeMap<String, u64> = victims
        .iter()
        .map(|n| {
            let g = status_group(&site.dir("p1"), n);
            (n.clone(), progress_u64(&g, "last_recovery_point"))
        })
        .collect();
    let killed = site.primaries.get_mut("p1").unwrap().kill9();
    assert!(killed, "p1 was running");
    let killed_at = Instant::now();
    let p2 = site.dir("p2");
    wait_for(
        "p2 drives p1's groups",
        Duration::from_secs(LEASE_SECS + 10),
        || {
            victims
                .iter()
                .all(|n| status_group(&p2, n)["driven_by"]["lease"] == "holding")
                .then_some(())
        },
    );
    eprintln!(
        "p1's groups driven by p2 {:?} after the SIGKILL",
        killed_at.elapsed()
    );
    resumed_incrementally(&site, "p2", &groups, &victims, &last_rp);
    drop(writer);
    check_standby_points(&site, "p2", &groups);

    // p1 back, p2 stopped (SIGTERM): p2 gives its leases back at once, p1
    // takes every group (restoring the state p2 kept over its own stale
    // files) and resumes each incrementally.
    site.primaries.get_mut("p1").unwrap().restart(&[]);
    let writer = Writer::start(&all_images);
    let last_rp: BTreeMap<String, u64> = groups
        .keys()
        .map(|n| {
            let g = status_group(&p2, n);
            (n.clone(), progress_u64(&g, "last_recovery_point"))
        })
        .collect();
    let p1 = site.dir("p1");
    wait_for("p1 sees p2 drive lg-0", Duration::from_secs(30), || {
        let shown = ok(&p1, &["group", "show", "lg-0"]);
        (shown["driven_by"]["agent"] == "p2").then_some(())
    });
    let stopped = site.primaries.get_mut("p2").unwrap().terminate();
    assert!(
        stopped.is_some_and(|s| s.success()),
        "p2 stops cleanly: {stopped:?}"
    );
    let p1 = site.dir("p1");
    wait_for("p1 drives every group", Duration::from_secs(60), || {
        groups
            .keys()
            .all(|n| status_group(&p1, n)["driven_by"]["lease"] == "holding")
            .then_some(())
    });
    let names: Vec<String> = groups.keys().cloned().collect();
    resumed_incrementally(&site, "p1", &groups, &names, &last_rp);
    drop(writer);
    check_standby_points(&site, "p1", &groups);
    for name in groups.keys() {
        ok(&p1, &["group", "stop", name, "--wait"]);
        ok(&p1, &["group", "delete", name, "--wait"]);
    }
    drop(site.standby);
}
