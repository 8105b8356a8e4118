//! Several standby agents serve one site (issue 18), against the two-site
//! Ceph lab (`#[ignore]`d; `FERRY_CEPH_LAB=1`).
//!
//! One primary agent on site-a replicates a group of two RBD images
//! continuously (a daemon, `ferry group start`) to site-b, where two
//! standby agents (`b1`, `b2`) share the site's identity and its control
//! state in RADOS (`[control] store = "rados"`, this test's own namespace):
//! with it the RBD standby's per-image state (pending epoch, durable batch,
//! resume offset, intents) is the site's, not an agent's.
//!
//! - `ferry service key` on b1 lists both agents' peer endpoints; the
//!   primary's service keeps both (`service show`).
//! - With a writer running, b1 (the agent the primary uses) is SIGKILLed
//!   while it applies an epoch: the site's state in RADOS still holds that
//!   epoch pending, part-way, after the kill.
//! - The primary's daemon moves to b2 on its own; b2 resumes the epoch from
//!   b1's durable progress (its `receiving epoch` line names a durable
//!   batch > 0) and commits it; the primary's next committed cycle sends a
//!   fraction of a full copy (bytes, not time).
//! - The service follows the site: once b1's presence expires, the
//!   primary's service lists b2 alone; once b1 runs again, both (b2, whose
//!   answer carried the list, first), with no operator step.
//! - Once the writer stops, every standby image equals its source at the
//!   group's committed recovery point.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_agent::service_key::ServiceKey;
use ferry_e2e::cli::{ok, run, text};
use ferry_e2e::lab::{self, export_hash, Cleanup};
use ferry_e2e::multi_agent::{make_filled_image, wait_for, RbdGroups, FILL_MIB};
use ferry_e2e::{init_agent, Agent};
use serde_json::{json, Value};

/// Fresh data written into each image for the epoch the kill lands in: 1
/// MiB at the start of each of this many 4 MiB chunks (the engine's chunk
/// size, the step a durable resume offset moves by) from 8 MiB on.
const REWRITE_CHUNKS: u64 = 4;
/// The images' size.
const SIZE_MIB: u64 = 64;
/// The standby site's lease (and so how long a dead agent stays listed).
const LEASE_SECS: u64 = 10;
/// Where the standby state of pool `rbd` lives; one object per image,
/// `STATE_OBJECT:IMAGE`, key `image`.
const STATE_OBJECT: &str = "ferry.rbd-standby:rbd";
const MOVED: &str = "moving to the next standby endpoint";

/// Removes every object of the test's RADOS namespace on site-b (the
/// standby site's control state, presence records, standby state) on drop.
struct Namespace(String);

impl Drop for Namespace {
    fn drop(&mut self) {
        lab::remove_namespace_objects("site-b", &self.0);
    }
}

/// A writer of 4 KiB blocks into the first MiB of every image until
/// dropped; asked to ([`Writer::rewrite`]), it also writes 1 MiB of fresh
/// data at the start of each of `REWRITE_CHUNKS` 4 MiB chunks from 8 MiB
/// on, through its own client (a second writing client would contend with
/// it, and with the primary's captures, for the images' exclusive locks).
/// It stops cleanly (closing the images: a killed client's exclusive lock
/// would hold the next capture for a watch timeout) when its stop file
/// appears.
struct Writer {
    child: Child,
    dir: std::path::PathBuf,
}

impl Writer {
    fn start(images: &[String], scratch: &Path) -> Writer {
        let dir = scratch.join("writer");
        std::fs::create_dir_all(&dir).expect("the writer's directory");
        let script = format!(
            "import os, rados, rbd, random, time\n\
             d = {dir:?}\n\
             c = rados.Rados(clustername='site-a', conffile='/etc/ceph/site-a.conf')\n\
             c.connect()\n\
             io = c.open_ioctx('rbd')\n\
             imgs = [rbd.Image(io, n) for n in {images:?}]\n\
             r = random.Random(7)\n\
             while not os.path.exists(d + '/stop'):\n\
             \x20   for img in imgs:\n\
             \x20       img.write(r.randbytes(4096), r.randrange(0, 256) * 4096)\n\
             \x20   if os.path.exists(d + '/rewrite') and not os.path.exists(d + '/rewritten'):\n\
             \x20       for img in imgs:\n\
             \x20           for k in range({REWRITE_CHUNKS}):\n\
             \x20               img.write(r.randbytes(1 << 20), (8 + 4 * k) << 20)\n\
             \x20       open(d + '/rewritten', 'w').close()\n\
             \x20   time.sleep(0.02)\n\
             for img in imgs:\n\
             \x20   img.close()\n\
             io.close(); c.shutdown()\n",
            dir = dir.display().to_string(),
        );
        let child = Command::new("/usr/bin/python3")
            .args(["-c", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting the writer");
        Writer { child, dir }
    }

    /// Has the fresh data written; returns once it is.
    fn rewrite(&mut self) {
        std::fs::write(self.dir.join("rewrite"), b"").expect("asking for the rewrite");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.dir.join("rewritten").exists() {
            assert!(
                matches!(self.child.try_wait(), Ok(None)),
                "the writer exited"
            );
            assert!(Instant::now() < deadline, "the writer did not rewrite");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = std::fs::write(self.dir.join("stop"), b"");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A standby agent's config: images in site-b's `rbd`, the site's control
/// state (and so its standby state) in namespace `ns` of the same pool.
fn standby_config(ns: &str, name: &str) -> String {
    format!(
        "[standby]\nbackend = \"rbd\"\nrbd_pool = \"rbd\"\n\
         [ceph]\ncluster = \"site-b\"\n\
         [control]\nstore = \"rados\"\npool = \"rbd\"\nnamespace = \"{ns}\"\n\
         agent_name = \"{name}\"\nlease = \"{LEASE_SECS}s\"\n"
    )
}

/// The JSON value of omap key `key` of object `oid` in the site's
/// namespace `ns`, if any.
fn omap_json(ns: &str, oid: &str, key: &str, scratch: &Path) -> Option<Value> {
    let file = scratch.join("omapval");
    let _ = std::fs::remove_file(&file);
    let out = Command::new("rados")
        .args(["--cluster", "site-b", "-p", "rbd", "-N", ns])
        .args(["getomapval", oid, key])
        .arg(&file)
        .output()
        .expect("running rados");
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&std::fs::read(&file).ok()?).ok()
}

/// The record of standby image `image` in the site's standby state.
fn shared_record(ns: &str, image: &str, scratch: &Path) -> Option<Value> {
    omap_json(ns, &format!("{STATE_OBJECT}:{image}"), "image", scratch)
}

/// The number after `key=` in `line`.
fn field(line: &str, key: &str) -> Option<u64> {
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    let digits: String = line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// `ferry status --json`'s only group's progress.
fn progress(dir: &Path) -> Value {
    ok(dir, &["status"])["groups"][0]["progress"].clone()
}

fn progress_u64(dir: &Path, key: &str) -> u64 {
    progress(dir)[key].as_u64().unwrap_or(0)
}

/// The standby images of group `g` on the primary `p`, by source image.
fn standby_targets(p: &Path, images: &[String]) -> Vec<String> {
    let shown = ok(p, &["group", "show", "g"]);
    images
        .iter()
        .map(|image| {
            shown["resources"]
                .as_array()
                .and_then(|rs| {
                    rs.iter()
                        .find(|r| r["uri"] == format!("rbd:rbd/{image}"))
                        .and_then(|r| r["standby_target"].as_str())
                })
                .unwrap_or_else(|| panic!("{image} in {shown}"))
                .to_owned()
        })
        .collect()
}

/// Two images of `SIZE_MIB` with `FILL_MIB` of random data each.
fn make_images(mark: &str) -> Vec<String> {
    let images: Vec<String> = (0..2).map(|i| format!("{mark}-{i}")).collect();
    for (i, image) in images.iter().enumerate() {
        make_filled_image(image, SIZE_MIB, i);
    }
    images
}

/// The two standby agents, started before the pairing (b2 learns the
/// primary from the shared control state); b2 has b1's identity.
fn standby_agents(b1_dir: &Path, b2_dir: &Path, ns: &str) -> (Agent, Agent) {
    let b_fp = init_agent(b1_dir);
    init_agent(b2_dir);
    for file in ["identity/cert.pem", "identity/key.pem"] {
        std::fs::copy(b1_dir.join(file), b2_dir.join(file)).expect("copy the site's identity");
    }
    for (dir, name) in [(b1_dir, "b1"), (b2_dir, "b2")] {
        std::fs::write(dir.join("config.toml"), standby_config(ns, name)).expect("config");
    }
    let b1 = Agent::start(b1_dir, &b_fp, &[]);
    let b2 = Agent::start(b2_dir, &b_fp, &[]);
    (b1, b2)
}

/// Pairs the primary with the standby site through a key b1 issues once
/// both standby agents announced their peer endpoints: the key lists every
/// live standby agent, the issuer's first, and so does the service.
fn pair_through_a_key_listing_both(
    p_dir: &Path,
    b1: &Agent,
    (a1, a2): (&str, &str),
    ns: &str,
    tmp: &Path,
) {
    // Once both announced their peer endpoints (and b1 read them), the
    // key lists every live standby agent, the issuer's first.
    wait_for(
        "both standby agents' peer endpoints in ferry.agents",
        Duration::from_secs(30),
        || {
            let peer = |agent: &str| omap_json(ns, "ferry.agents", &format!("agent.{agent}"), tmp);
            (peer("b1")?["peer"] == a1 && peer("b2")?["peer"] == a2).then_some(())
        },
    );
    // b1 reads b2's record at its next placement round (each key issued
    // before that, listing b1 alone, expires unused within a minute).
    let issued = wait_for("b1's key lists b2", Duration::from_secs(10), || {
        let issued = ok(&b1.dir, &["service", "key", "--ttl", "60"]);
        (issued["endpoints"] != json!([a1])).then_some(issued)
    });
    assert_eq!(issued["endpoints"], json!([a1, a2]), "{issued}");
    let key = issued["key"].as_str().expect("key").to_owned();
    assert_eq!(
        ServiceKey::decode(&key).expect("a key").endpoint,
        format!("{a1},{a2}")
    );
    ok(p_dir, &["service", "create", "--key", &key]);
    let shown = ok(p_dir, &["service", "show", "dr"]);
    assert_eq!(shown["remote_endpoints"], json!([a1, a2]), "{shown}");
}

/// Slows the link, has the writer rewrite its chunks and SIGKILLs b1 once
/// part of that fresh epoch is durable in RADOS (proven from the image's
/// record there); returns the image, the epoch and its resume offset at the
/// kill. The link goes back to full speed.
fn kill_b1_mid_epoch(
    p_dir: &Path,
    b1: &mut Agent,
    writer: &mut Writer,
    targets: &[String],
    ns: &str,
    tmp: &Path,
) -> (String, u64, u64) {
    // A slow epoch of fresh data; b1 is killed once part of it is durable.
    ok(p_dir, &["qos", "set", "--send", "1MB/s"]);
    writer.rewrite();
    let (victim, epoch) = wait_for(
        "durable progress of the fresh epoch in RADOS",
        Duration::from_secs(60),
        || {
            targets.iter().find_map(|t| {
                let pending = shared_record(ns, t, tmp)?["pending"].clone();
                let offset = pending["resume_offset"].as_u64()?;
                // Part-way through the rewritten chunks: only the fresh
                // epoch has a durable batch ending there (the writer's end
                // at 4 MiB, and an image whose epoch is all durable while
                // the other's is not shows the image's size).
                let rewritten_end = (8 + 4 * REWRITE_CHUNKS) << 20;
                (offset > 8 << 20 && offset < rewritten_end)
                    .then(|| (t.clone(), pending["epoch"].as_u64()))
            })
        },
    );
    let epoch = epoch.expect("the pending epoch's number");
    assert!(b1.kill9(), "b1 was running");
    // The kill has landed: the rest of the epoch goes at full speed.
    ok(p_dir, &["qos", "set", "--send", "unlimited"]);
    let at_kill = shared_record(ns, &victim, tmp).expect("the record")["pending"].clone();
    let resume = at_kill["resume_offset"].as_u64().unwrap_or(0);
    assert_eq!(at_kill["epoch"].as_u64(), Some(epoch), "{at_kill}");
    assert!(
        resume > 0 && resume < SIZE_MIB << 20,
        "killed mid-epoch: {at_kill}"
    );
    (victim, epoch, resume)
}

/// Whether `agent` logged the commit of `epoch` of standby image `image`.
fn committed_epoch(agent: &Agent, image: &str, epoch: u64) -> bool {
    agent.log_text().lines().any(|l| {
        l.contains("committed recovery point")
            && l.contains(image)
            && field(l, "epoch") == Some(epoch)
    })
}

/// Once the writer stopped: after an idle check, every standby image
/// equals its source at the committed point.
fn standby_equals_sources_after_an_idle_check(
    p_dir: &Path,
    images: &[String],
    targets: &[String],
    tmp: &Path,
) {
    let idle = progress_u64(p_dir, "idle_checks");
    wait_for("an idle check", Duration::from_secs(120), || {
        (progress_u64(p_dir, "idle_checks") > idle).then_some(())
    });
    let rp = progress_u64(p_dir, "last_recovery_point");
    for (image, target) in images.iter().zip(targets) {
        assert_eq!(
            export_hash(tmp, "site-b", &format!("rbd/{target}@ferry-rp-{rp}")),
            export_hash(tmp, "site-a", &format!("rbd/{image}")),
            "{image} at point {rp}"
        );
    }
}

/// The primary moves to b2 by itself; b2 resumes the epoch where b1's
/// durable progress left it, and commits it. Returns the durable batch b2
/// resumed at, and the bytes and point of the primary's next committed
/// cycle, whose point is in every image's history once, in order.
fn b2_resumes_the_epoch(
    p: &Agent,
    b2: &Agent,
    a2: &str,
    (victim, epoch): (&str, u64),
    targets: &[String],
    ns: &str,
    tmp: &Path,
) -> (u64, u64, u64) {
    let moved_to = format!("to={a2}");
    wait_for("the primary moves to b2", Duration::from_secs(60), || {
        let log = p.log_text();
        log.lines()
            .any(|l| l.contains(MOVED) && l.contains(&moved_to))
            .then_some(())
    });
    let resumed = wait_for("b2 receives the epoch", Duration::from_secs(60), || {
        b2.log_text()
            .lines()
            .find(|l| {
                l.contains("receiving epoch")
                    && l.contains(victim)
                    && field(l, "epoch") == Some(epoch)
            })
            .map(str::to_owned)
    });
    let durable = field(&resumed, "durable_seq").unwrap_or(0);
    assert!(
        durable > 0,
        "b2 resumes from b1's durable batches: {resumed}"
    );
    wait_for("b2 commits the epoch", Duration::from_secs(60), || {
        committed_epoch(b2, victim, epoch).then_some(())
    });
    let (sent, rp) = wait_for(
        "the primary's next committed cycle",
        Duration::from_secs(60),
        || {
            let log = p.log_text();
            let line = log
                .lines()
                .skip_while(|l| !(l.contains(MOVED) && l.contains(&moved_to)))
                .find(|l| l.contains("replication cycle committed"))?;
            Some((field(line, "bytes_sent")?, field(line, "recovery_point")?))
        },
    );
    // The resumed epoch's point is in the site's history of every image
    // once, after the points b1 committed (none lost, none twice).
    for target in targets {
        let record = shared_record(ns, target, tmp).expect("the record");
        let points: Vec<u64> = record["history"]
            .as_array()
            .map(|h| h.iter().filter_map(|p| p["rp"].as_u64()).collect())
            .unwrap_or_default();
        assert!(
            points.windows(2).all(|w| w[0] < w[1]) && points.contains(&rp),
            "{target}: point {rp} once, in order: {points:?}"
        );
    }
    (durable, sent, rp)
}

#[test]
#[ignore = "needs the Ceph lab (FERRY_CEPH_LAB=1); scripts/test.sh runs it"]
fn lab_a_standby_agent_killed_mid_epoch_is_replaced_by_another_without_a_full_copy() {
    if !lab::enabled() {
        return;
    }
    let started = Instant::now();
    let mark = format!("ferry-h21-standbys-{}", std::process::id());
    let _images = Cleanup {
        mark: mark.clone(),
        parents: mark.clone(),
    };
    let _groups = RbdGroups(mark.clone());
    let ns = format!("{mark}-ctl");
    let _namespace = Namespace(ns.clone());
    let tmp = tempfile::tempdir().expect("temp dir");
    let p_dir = tmp.path().join("p");
    let p_fp = init_agent(&p_dir);
    std::fs::write(p_dir.join("config.toml"), "[ceph]\ncluster = \"site-a\"\n").expect("config");
    let p = Agent::start(&p_dir, &p_fp, &[]);
    let (mut b1, b2) = standby_agents(&tmp.path().join("b1"), &tmp.path().join("b2"), &ns);
    let (a1, a2) = (b1.addr.to_string(), b2.addr.to_string());

    pair_through_a_key_listing_both(&p_dir, &b1, (&a1, &a2), &ns, tmp.path());

    let images = make_images(&mark);
    ok(&p_dir, &["group", "create", "g", "--wait"]);
    let uris: Vec<String> = images.iter().map(|i| format!("rbd:rbd/{i}")).collect();
    let mut add = vec!["group", "add", "g"];
    add.extend(uris.iter().map(String::as_str));
    add.push("--wait");
    ok(&p_dir, &add);
    ok(&p_dir, &["group", "start", "g", "--wait"]);
    let targets = standby_targets(&p_dir, &images);
    let mut writer = Writer::start(&images, tmp.path());
    wait_for("two committed cycles", Duration::from_secs(120), || {
        (progress_u64(&p_dir, "cycles") >= 2).then_some(())
    });
    assert!(
        b1.log_text().contains("receiving epoch"),
        "b1 is the one in use"
    );
    assert!(
        !b2.log_text().contains("receiving epoch"),
        "b2 has received nothing yet:\n{}",
        b2.log_text()
    );

    let (victim, epoch, resume) =
        kill_b1_mid_epoch(&p_dir, &mut b1, &mut writer, &targets, &ns, tmp.path());
    let killed_at = Instant::now();
    let committed_by = |agent: &Agent| committed_epoch(agent, &victim, epoch);
    assert!(
        !committed_by(&b1),
        "b1 died before committing epoch {epoch}"
    );

    let (durable, sent, rp) =
        b2_resumes_the_epoch(&p, &b2, &a2, (&victim, epoch), &targets, &ns, tmp.path());
    let full = images.len() as u64 * (FILL_MIB << 20);
    eprintln!(
        "b1 killed at resume offset {resume} of epoch {epoch} ({victim}); b2 resumed at \
         durable batch {durable}; the primary's next committed cycle sent {sent} bytes \
         (a full copy: {full}), point {rp}, {:?} after the kill",
        killed_at.elapsed()
    );
    assert!(
        sent < full / 3,
        "no full copy after the move ({sent} bytes sent):\n{}",
        p.log_text()
    );
    eprintln!("{:?}: b2 committed the epoch", started.elapsed());

    // The service follows the site: b1's presence expires, b2 is left.
    wait_for(
        "the service lists b2 alone",
        Duration::from_secs(LEASE_SECS * 4),
        || {
            let shown = ok(&p_dir, &["service", "show", "dr"]);
            (shown["remote_endpoints"] == json!([a2])).then_some(())
        },
    );

    eprintln!("{:?}: the service lists b2 alone", started.elapsed());
    drop(writer);
    standby_equals_sources_after_an_idle_check(&p_dir, &images, &targets, tmp.path());
    eprintln!(
        "{:?}: the standby images equal their sources",
        started.elapsed()
    );
    // A standby agent (b1 again, a new process) joins the site: the
    // service lists it again, with no operator step.
    b1.restart(&[]);
    wait_for(
        "the service lists b1 again",
        Duration::from_secs(LEASE_SECS * 3),
        || {
            let shown = ok(&p_dir, &["service", "show", "dr"]);
            (shown["remote_endpoints"] == json!([a2, a1])).then_some(())
        },
    );
    eprintln!("{:?}: the service lists b2 and b1", started.elapsed());
    ok(&p_dir, &["group", "stop", "g", "--wait"]);
    let out = run(&p_dir, &["group", "delete", "g", "--wait"]);
    assert!(out.status.success(), "{}", text(&out));
    eprintln!("the test took {:?}", started.elapsed());
    drop(b1);
    drop(b2);
    drop(p);
}
