//! A standby agent of a multi-agent site dies mid-epoch and another one
//! finishes the epoch from where the first left it (issue 18), against the
//! Ceph lab (`#[ignore]`d; `FERRY_CEPH_LAB=1`).
//!
//! Both standby agents keep their images in site-b's pool `rbd` and share
//! the site's control state, `[control] store = "rados"` in this test's own
//! namespace of that pool (`ferry-h20-sstate-PID`): with it the RBD
//! standby's per-image records (the pending epoch, its durable batch and
//! resume offset) and commit intents live in RADOS, not in the agent's data
//! directory. The first agent is SIGKILLed while it applies an incremental
//! epoch; a second agent, with a data directory of its own and its own
//! address, is started, and the primary (`ferry sync`) is pointed at its
//! address: the epoch resumes at the durable offset the first agent
//! recorded in RADOS, not from zero, and the standby image ends equal to
//! the source.
//!
//! The second agent presents the site's standby identity (the first one's
//! `identity/` copied into its directory, nothing else): a primary keys its
//! per-peer source state (`sources/PEER/…`, the `ferry.PEER-IMAGE.*`
//! snapshots) by the peer's fingerprint, so a standby agent with an
//! identity of its own is a new replication to it and gets a full copy.

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use ferry_e2e::lab::{assert_ok as ok, export_hash, pyrbd, rbd, Cleanup};
use ferry_e2e::{ferry, ferry_spawn, init_agent, Agent};
use serde_json::Value;

fn lab() -> bool {
    ferry_e2e::lab::enabled()
}

/// The state object of the standby images of pool `rbd`.
/// The standby state's site object; each image's record is in
/// `STATE_OBJECT:IMAGE`, key `image`.
const STATE_OBJECT: &str = "ferry.rbd-standby:rbd";

/// A standby agent's config: images in site-b's `rbd`, control state (and
/// so the standby state) in RADOS namespace `ns` of the same pool.
fn standby_config(ns: &str) -> String {
    format!(
        "[standby]\nbackend = \"rbd\"\nrbd_pool = \"rbd\"\n\
         [ceph]\ncluster = \"site-b\"\n\
         [control]\nstore = \"rados\"\npool = \"rbd\"\nnamespace = \"{ns}\"\n"
    )
}

/// Removes the site's shared objects of namespace `ns` on drop.
struct SiteObjects {
    ns: String,
}

impl Drop for SiteObjects {
    fn drop(&mut self) {
        // Every object of the test's namespace: the control object, the
        // standby state's site object and its per-image records.
        ferry_e2e::lab::remove_namespace_objects("site-b", &self.ns);
    }
}

/// The record of `image` in the site's shared standby state, if any.
fn shared_record(ns: &str, image: &str, scratch: &Path) -> Option<Value> {
    let file = scratch.join("omapval");
    let _ = std::fs::remove_file(&file);
    let out = Command::new("rados")
        .args(["--cluster", "site-b", "-p", "rbd", "-N", ns])
        .args(["getomapval", &format!("{STATE_OBJECT}:{image}"), "image"])
        .arg(&file)
        .output()
        .expect("running rados");
    if !out.status.success() {
        return None;
    }
    let bytes = std::fs::read(&file).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// A standby agent in `dir` trusting the primary: a new identity, or the
/// site's standby identity copied from `site_identity` (another agent's
/// data directory).
fn standby(dir: &Path, ns: &str, primary_fp: &str, site_identity: Option<&Agent>) -> Agent {
    let fp = match site_identity {
        None => init_agent(dir),
        Some(other) => {
            let to = dir.join("identity");
            std::fs::create_dir_all(&to).expect("identity directory");
            for file in ["cert.pem", "key.pem"] {
                std::fs::copy(other.dir.join("identity").join(file), to.join(file))
                    .expect("copy the site's identity");
            }
            other.fingerprint.clone()
        }
    };
    std::fs::write(dir.join("config.toml"), standby_config(ns)).expect("standby config");
    Agent::start(dir, &fp, &[primary_fp])
}

fn sync_args(primary: &Path, image: &str, to: &Agent) -> Vec<String> {
    vec![
        "sync".into(),
        "--dir".into(),
        primary.display().to_string(),
        format!("rbd:rbd/{image}"),
        to.target(image),
        "--peer".into(),
        to.fingerprint.clone(),
        "--json".into(),
    ]
}

fn sync(primary: &Path, image: &str, to: &Agent) -> Value {
    let args = sync_args(primary, image, to);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = ferry(&refs);
    ok(&out, "ferry sync");
    serde_json::from_slice(&out.stdout).expect("sync --json prints JSON")
}

/// Seeded random writes of 4 KiB..64 KiB over the whole image.
fn scribble(image: &str, seed: u64, writes: u32) {
    pyrbd(
        "site-a",
        image,
        &format!(
            "r = random.Random({seed})\n\
             size = img.size()\n\
             for i in range({writes}):\n\
             \x20   n = r.choice([4096, 16384, 65536])\n\
             \x20   img.write(r.randbytes(n), r.randrange(0, size - n) // 4096 * 4096)"
        ),
    );
}

/// Whether the agent's data directory holds any per-image standby record
/// (it must not: the state is in RADOS).
fn local_records(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join("rbd-standby").join("images"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
#[ignore = "needs the Ceph lab (FERRY_CEPH_LAB=1); scripts/test.sh runs it"]
fn lab_standby_killed_mid_epoch_is_resumed_by_another_standby_agent() {
    if !lab() {
        return;
    }
    let pid = std::process::id();
    let image = format!("ferry-t-takeover-{pid}");
    let _images = Cleanup {
        mark: format!("takeover-{pid}"),
        parents: format!("ferry-t-takeover-{pid}"),
    };
    let ns = format!("ferry-h20-sstate-{pid}");
    let _objects = SiteObjects { ns: ns.clone() };
    let tmp = tempfile::tempdir().expect("temp dir");
    let primary = tmp.path().join("primary");
    let primary_fp = init_agent(&primary);
    std::fs::write(
        primary.join("config.toml"),
        "[ceph]\ncluster = \"site-a\"\n",
    )
    .expect("primary config");
    let mut first = standby(&tmp.path().join("standby-1"), &ns, &primary_fp, None);

    rbd(
        "site-a",
        &["create", &format!("rbd/{image}"), "--size", "128"],
    );
    scribble(&image, 1, 200);
    let rp1 = sync(&primary, &image, &first)["recovery_point"]
        .as_u64()
        .expect("rp");
    assert!(
        local_records(&first.dir).is_empty(),
        "the standby state must not be on the agent's disk"
    );
    let committed = shared_record(&ns, &image, tmp.path()).expect("the record is in RADOS");
    assert_eq!(committed["history"][0]["rp"].as_u64(), Some(rp1));

    // Many changes, sent slowly; the first standby agent is killed once
    // part of the epoch is durable (recorded in RADOS).
    scribble(&image, 2, 2000);
    let args = sync_args(&primary, &image, &first);
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.extend(["--bwlimit", "4M"]);
    let mut slow: Child = ferry_spawn(&args);
    let deadline = Instant::now() + Duration::from_secs(120);
    let pending = loop {
        let record = shared_record(&ns, &image, tmp.path());
        let pending = record.as_ref().map(|r| r["pending"].clone());
        // A quarter of the image: what the resume must not read again.
        if let Some(p) = pending.filter(|p| p["resume_offset"].as_u64().unwrap_or(0) >= 32 << 20) {
            break p;
        }
        assert!(
            Instant::now() < deadline,
            "no durable progress of the epoch in RADOS:\n{}",
            first.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(first.kill9(), "the first standby agent had already exited");
    let _ = slow.kill();
    let _ = slow.wait();
    let epoch = pending["epoch"].as_u64().expect("epoch");
    // What is durable once the agent is dead (it may have moved on since
    // the poll, never back).
    let at_kill = shared_record(&ns, &image, tmp.path()).expect("record")["pending"].clone();
    assert_eq!(at_kill["epoch"].as_u64(), Some(epoch));
    let resume = at_kill["resume_offset"].as_u64().expect("resume offset");
    let size = 128 << 20;
    assert!(
        resume > 0 && resume < size,
        "killed mid-epoch: resume offset {resume} of {size}"
    );

    // Another standby agent of the site: its own data directory (nothing
    // of the first one's state: only the site's standby identity, which the
    // primary's per-peer source state is keyed by) and its own address,
    // the same RADOS location and Ceph pool. The primary is pointed at its
    // address.
    let second = standby(
        &tmp.path().join("standby-2"),
        &ns,
        &primary_fp,
        Some(&first),
    );
    assert_ne!(second.addr, first.addr);
    assert!(local_records(&second.dir).is_empty());
    let report = sync(&primary, &image, &second);
    eprintln!(
        "killed at durable offset {resume} of epoch {epoch}; the second agent's sync: \
         resumed_at {}, bytes_scanned {}, bytes_sent {}",
        report["resumed_at"], report["bytes_scanned"], report["bytes_sent"]
    );
    assert_eq!(
        report["resumed_at"].as_u64(),
        Some(resume),
        "the epoch must resume at the durable offset the first agent left in RADOS: {report}"
    );
    assert_eq!(report["epoch"].as_u64(), Some(epoch), "{report}");
    assert_eq!(
        report["bytes_scanned"].as_u64(),
        Some(size - resume),
        "only what lies past the durable offset is read again: {report}"
    );
    let rp2 = report["recovery_point"].as_u64().expect("rp");
    assert!(rp2 > rp1);
    assert!(
        local_records(&second.dir).is_empty(),
        "the second agent keeps no local standby record either"
    );
    assert!(
        second.log_text().contains("committed recovery point"),
        "the second agent committed the epoch:\n{}",
        second.log_text()
    );
    let shared = shared_record(&ns, &image, tmp.path()).expect("record");
    assert!(shared["pending"].is_null(), "nothing pending: {shared}");
    assert_eq!(
        shared["history"]
            .as_array()
            .and_then(|h| h.last())
            .map(|p| p["rp"].clone()),
        Some(rp2.into())
    );
    assert_eq!(
        export_hash(tmp.path(), "site-b", &format!("rbd/{image}@ferry-rp-{rp2}")),
        export_hash(tmp.path(), "site-a", &format!("rbd/{image}")),
        "the standby copy equals the source at the recovery point"
    );
    drop(second);
    drop(first);
}
