//! A multi-agent Ceph site for the lab tests (`rbd_lab_leases.rs`,
//! `rbd_lab_fencing.rs`): two primary agents of site-a sharing their
//! control state in a RADOS namespace (`[control] store = "rados"`, one
//! identity for the site, a 10 s lease) and one standby agent keeping RBD
//! images on site-b, paired; plus what those tests share: groups of RBD
//! images, a writer into them, cleanups of what they leave in the lab, and
//! the checks of a group's cycles and standby copies.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cli::{ok, run, text};
use crate::lab::{export_hash, pyrbd, rbd};
use crate::{init_agent, Agent};

/// The lease of the site's groups, in seconds.
pub const LEASE_SECS: u64 = 10;
/// Random data written into each image before it is protected.
pub const FILL_MIB: u64 = 24;

/// Each group's images and the agent driving it, by group name.
pub type Groups = BTreeMap<String, (Vec<String>, String)>;

/// Removes every object of the test's RADOS namespace (the control state,
/// the agents' records, the leases) on drop.
pub struct Namespace(pub String);

impl Drop for Namespace {
    fn drop(&mut self) {
        crate::lab::remove_namespace_objects("site-a", &self.0);
    }
}

/// Removes site-a's RBD groups holding any image whose name contains the
/// mark on drop (ferry's groups of multi-image captures; an image in a
/// group cannot be removed), before [`crate::lab::Cleanup`] removes the
/// images.
pub struct RbdGroups(pub String);

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
pub struct Writer(Child);

impl Writer {
    /// Starts writing 4 KiB blocks into `images` of site-a's pool `rbd`.
    pub fn start(images: &[String]) -> Writer {
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
pub fn wait_for<T>(what: &str, limit: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
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
pub fn status_group(dir: &Path, name: &str) -> Value {
    let status = ok(dir, &["status"]);
    status["groups"]
        .as_array()
        .and_then(|gs| gs.iter().find(|g| g["name"] == name).cloned())
        .unwrap_or_else(|| panic!("group {name} in {status}"))
}

/// A number of a status group's `progress` (0 when absent).
pub fn progress_u64(group: &Value, key: &str) -> u64 {
    group["progress"][key].as_u64().unwrap_or(0)
}

/// The `replication cycle committed` line's `bytes_sent` and
/// `recovery_point` of the first cycle group `name` committed after this
/// agent took its lease (from the agent's log).
pub fn first_cycle_after_takeover(log: &str, name: &str) -> Option<(u64, u64)> {
    let ours = |line: &&str| line.contains(&format!("group={name}"));
    let mut lines = log
        .lines()
        .filter(ours)
        .skip_while(|l| !l.contains("driving the group (lease held)"));
    lines.next()?;
    let line = lines.find(|l| l.contains("replication cycle committed"))?;
    Some((
        log_field(line, "bytes_sent")?,
        log_field(line, "recovery_point")?,
    ))
}

/// The number logged as `key=N` on `line`.
pub fn log_field(line: &str, key: &str) -> Option<u64> {
    let at = line.find(&format!("{key}="))? + key.len() + 1;
    let digits: String = line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The site: its primary agents by name, its standby, their directories.
/// Fields drop in declaration order: the agents first (a failed test prints
/// their logs as they drop), the directory holding those logs last.
pub struct Site {
    /// `p1` and `p2`.
    pub primaries: BTreeMap<String, Agent>,
    /// The standby agent on site-b.
    pub standby: Agent,
    /// Holds every agent's directory (and test files).
    pub tmp: tempfile::TempDir,
}

impl Site {
    /// Primary agent `agent`'s directory.
    pub fn dir(&self, agent: &str) -> PathBuf {
        self.primaries[agent].dir.clone()
    }
}

/// Two primary agents (`p1`, `p2`, started with `p1_env` and `p2_env`,
/// e.g. fail points) of site-a sharing their control state in namespace
/// `ns` and one identity, and a standby on site-b, paired.
pub fn multi_agent_site(ns: &str, p1_env: &[(&str, &str)], p2_env: &[(&str, &str)]) -> Site {
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
    primaries.insert(
        "p1".to_owned(),
        Agent::start_with(&p1_dir, &a_fp, &[], p1_env),
    );
    primaries.insert(
        "p2".to_owned(),
        Agent::start_with(&p2_dir, &a_fp, &[], p2_env),
    );
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

/// Creates site-a's image `rbd/IMAGE` of `size_mib` MiB and writes
/// `FILL_MIB` MiB of random data (seeded by `seed`) into it from 8 MiB on.
pub fn make_filled_image(image: &str, size_mib: u64, seed: usize) {
    rbd(
        "site-a",
        &[
            "create",
            "--size",
            &size_mib.to_string(),
            &format!("rbd/{image}"),
        ],
    );
    pyrbd(
        "site-a",
        image,
        &format!(
            "r = random.Random({seed})\n\
             for k in range({FILL_MIB}):\n\
             \x20   img.write(r.randbytes(1 << 20), (k + 8) << 20)"
        ),
    );
}

/// Makes group `name`'s images (random data in `FILL_MIB` of each) and the
/// group on p1; returns the images and the agent that drives the group.
pub fn make_group(site: &Site, mark: &str, name: &str, count: usize) -> (Vec<String>, String) {
    let images: Vec<String> = (0..count).map(|i| format!("{mark}-{name}-{i}")).collect();
    for (i, image) in images.iter().enumerate() {
        make_filled_image(image, 64, i);
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

/// Adds `images` to group `name` and starts it, through agent `via`.
pub fn add_and_start(site: &Site, via: &str, name: &str, images: &[String]) {
    let uris: Vec<String> = images.iter().map(|i| format!("rbd:rbd/{i}")).collect();
    let mut add = vec!["group", "add", name];
    add.extend(uris.iter().map(String::as_str));
    add.push("--wait");
    ok(&site.dir(via), &add);
    ok(&site.dir(via), &["group", "start", name, "--wait"]);
}

/// The standby copy of source `image` of group `name`, as agent `dir`
/// shows the group.
pub fn standby_target(dir: &Path, name: &str, image: &str) -> String {
    let shown = ok(dir, &["group", "show", name]);
    shown["resources"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["uri"] == format!("rbd:rbd/{image}")))
        .and_then(|r| r["standby_target"].as_str())
        .unwrap_or_else(|| panic!("{image} in {shown}"))
        .to_owned()
}

/// Once an idle check of each group on `agent` finds nothing new (the
/// writer has stopped), every standby image equals its source at the
/// committed point.
pub fn check_standby_points(site: &Site, agent: &str, groups: &Groups) {
    let dir = site.dir(agent);
    for (name, (images, _)) in groups {
        let idle = progress_u64(&status_group(&dir, name), "idle_checks");
        let g = wait_for(
            &format!("an idle check of {name}"),
            Duration::from_secs(120),
            || {
                let g = status_group(&dir, name);
                (progress_u64(&g, "idle_checks") > idle).then_some(g)
            },
        );
        let rp = progress_u64(&g, "last_recovery_point");
        for image in images {
            let target = standby_target(&dir, name, image);
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
pub fn resumed_incrementally(
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
