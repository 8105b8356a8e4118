//! Re-protect and fail-back, files backend, two real agents driven through
//! the `ferry` CLI: after an unplanned failover with the primary SIGKILLed,
//! both sites write (the new primary 64 MiB, the old one 32 MiB: split
//! brain), the old primary comes back and `group reprotect` makes it the
//! standby sending at most 1.2 × the blocks changed on either side (UDP
//! bytes counted by the new primary's metrics, plus the block hashes the old
//! primary answers with); the old site ends equal to the new primary, its
//! discarded writes kept in its old volumes; a planned migration fails
//! back. A SIGKILL of either agent in the middle of a re-protect is retried
//! to completion.

use std::collections::BTreeSet;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_agent::imagegen;
use ferry_e2e::cli::{ok, run, text};
use ferry_e2e::hash_file;
use ferry_e2e::sites::{succeeded, udp_sent, Sites};
use serde_json::Value;

const MIB: u64 = 1024 * 1024;
const BLOCK: u64 = 4096;
const NAMES: [&str; 3] = ["g1-vm1", "g1-vm2", "g1-vm3"];

/// Two agents with metrics, paired through a service key.
fn paired() -> Sites {
    let metrics = "[metrics]\nlisten = \"127.0.0.1:0\"\n";
    Sites::paired_with(Some(metrics), Some(metrics))
}

/// Three volumes with data protected as `g1`, replicated, a recovery point
/// taken; then the primary is SIGKILLed and the standby fails over to the
/// latest point. Returns the old volumes (site A) and the new ones (B).
fn failed_over(s: &mut Sites, sizes: [u64; 3]) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let (a, b) = (s.a.dir.clone(), s.b.dir.clone());
    let old: Vec<PathBuf> = sizes
        .iter()
        .enumerate()
        .map(|(i, &size)| {
            let path = s.tmp.path().join(format!("vm{}.raw", i + 1));
            imagegen::make_image(&path, size, 40 + i as u64).unwrap();
            path
        })
        .collect();
    ok(&a, &["group", "create", "g1", "--wait"]);
    let uris: Vec<String> = old
        .iter()
        .map(|p| format!("file:{}", p.display()))
        .collect();
    let mut add = vec!["group", "add", "g1"];
    add.extend(uris.iter().map(String::as_str));
    add.push("--wait");
    ok(&a, &add);
    ok(&a, &["group", "start", "g1", "--wait"]);
    succeeded(&ok(&a, &["rp", "create", "g1", "--name", "r1", "--wait"]));
    s.a.kill9();
    succeeded(&ok(&b, &["group", "failover", "g1", "--wait"]));
    let new = NAMES
        .iter()
        .map(|n| b.join("failover").join("g1").join(format!("{n}.raw")))
        .collect();
    (old, new)
}

/// Writes `count` pieces of `len` bytes (pseudo-random content and 4 KiB
/// aligned places, from `seed`) into `path`; returns the 4 KiB blocks hit.
fn scatter(path: &Path, seed: u64, count: usize, len: usize) -> BTreeSet<u64> {
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let size = file.metadata().unwrap().len();
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut blocks = BTreeSet::new();
    let mut buf = vec![0u8; len];
    for _ in 0..count {
        let at = next() % ((size - len as u64) / BLOCK) * BLOCK;
        for chunk in buf.chunks_mut(8) {
            let v = next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        file.write_all_at(&buf, at).unwrap();
        blocks.extend(at / BLOCK..(at + len as u64).div_ceil(BLOCK));
    }
    file.sync_all().unwrap();
    blocks
}

fn show(dir: &Path) -> Value {
    ok(dir, &["group", "show", "g1"])
}

fn wait_for(what: &str, f: impl FnMut() -> bool) {
    ferry_e2e::sites::wait_for(what, Duration::from_secs(60), f);
}

/// The standby copies on site A equal the volumes on site B.
fn assert_copies_equal(s: &Sites, new: &[PathBuf]) {
    for (name, volume) in NAMES.iter().zip(new) {
        assert_eq!(
            hash_file(&s.a.image_path(name)),
            hash_file(volume),
            "the old site's copy {name} differs from the new primary's volume"
        );
    }
}

#[test]
fn reprotect_sends_only_the_differences_keeps_the_split_brain_writes_and_fails_back() {
    let mut s = paired();
    let (a, b) = (s.a.dir.clone(), s.b.dir.clone());
    let (old, new) = failed_over(&mut s, [128 * MIB, 64 * MIB, 64 * MIB]);
    // Split brain: 64 MiB written on the new primary, 32 MiB on the old
    // one (its agent is down; the application there went on).
    let mut changed = 0u64;
    let mut blocks_total = 0u64;
    for i in 0..3 {
        let mut hit = scatter(&new[i], 7 + i as u64, [512, 256, 256][i], 64 * 1024);
        hit.extend(scatter(
            &old[i],
            70 + i as u64,
            [256, 128, 128][i],
            64 * 1024,
        ));
        changed += hit.len() as u64 * BLOCK;
        blocks_total += std::fs::metadata(&new[i]).unwrap().len().div_ceil(BLOCK);
    }
    let kept: Vec<String> = old.iter().map(|p| hash_file(p)).collect();
    s.a.restart(&[]);
    // The returning old primary does not resume its old replication.
    assert_eq!(show(&a)["group"]["role"], "primary");
    let before = udp_sent(&b);
    succeeded(&ok(&b, &["group", "reprotect", "g1", "--wait"]));
    let udp = udp_sent(&b) - before;
    // The block hashes of the copies travel once, base64 in JSON.
    let hashes = (blocks_total * 16).div_ceil(3) * 4;
    let wire = udp + hashes as f64;
    println!(
        "reprotect: {:.1} MiB changed on either side, {:.1} MiB UDP + {:.1} MiB block hashes = {:.2} x",
        changed as f64 / MIB as f64,
        udp / MIB as f64,
        hashes as f64 / MIB as f64,
        wire / changed as f64
    );
    assert!(udp > 0.0, "the new primary sent nothing");
    assert!(
        wire <= 1.2 * changed as f64,
        "reprotect sent {wire} bytes for {changed} bytes changed on either side"
    );
    assert_copies_equal(&s, &new);
    // The old primary's discarded writes are where it said: its old volumes,
    // untouched.
    let plan: Value =
        serde_json::from_slice(&std::fs::read(a.join("volumes/g1/reprotect.json")).unwrap())
            .unwrap();
    for (i, path) in old.iter().enumerate() {
        assert_eq!(hash_file(path), kept[i], "{} was changed", path.display());
        let named = plan["images"]
            .as_array()
            .unwrap()
            .iter()
            .any(|im| im["kept"].as_str() == Some(format!("file:{}", path.display()).as_str()));
        assert!(named, "the plan does not name {}: {plan}", path.display());
    }
    let (ga, gb) = (show(&a)["group"].clone(), show(&b)["group"].clone());
    assert_eq!(
        (ga["role"].as_str(), ga["state"].as_str()),
        (Some("standby"), Some("syncing"))
    );
    assert_eq!(
        (gb["role"].as_str(), gb["state"].as_str()),
        (Some("primary"), Some("syncing"))
    );
    assert_eq!(gb["new_primary"], false, "{gb}");
    // Replication goes on from the new primary; then fail back home.
    scatter(&new[1], 99, 16, 64 * 1024);
    succeeded(&ok(
        &b,
        &["rp", "create", "g1", "--name", "after", "--wait"],
    ));
    assert_copies_equal(&s, &new);
    let want: Vec<String> = new.iter().map(|p| hash_file(p)).collect();
    succeeded(&ok(&b, &["group", "migrate", "g1", "--wait"]));
    let home = show(&a);
    assert_eq!(home["group"]["role"], "primary", "{home}");
    for r in home["resources"].as_array().unwrap() {
        let uri = r["uri"].as_str().unwrap();
        let path = uri.strip_prefix("file:").unwrap();
        let i = NAMES
            .iter()
            .position(|n| *n == r["standby_target"].as_str().unwrap())
            .unwrap();
        assert_eq!(hash_file(Path::new(path)), want[i], "{uri} after fail-back");
    }
    assert_eq!(show(&b)["group"]["role"], "standby");
}

/// Starts a re-protect on B with `agent` (A or B) held at `point`,
/// SIGKILLs that agent there and restarts it; the interrupted re-protect
/// fails, and `reprotect` again completes it — or, for a killed old
/// primary, the new primary's next request finds it restarted and the
/// re-protect goes on (the old primary's interrupted operation failed).
#[cfg(feature = "failpoints")]
fn killed_then_retried(point: &str, kill_old_primary: bool) {
    let mut s = paired();
    let b = s.b.dir.clone();
    let (old, new) = failed_over(&mut s, [8 * MIB, 4 * MIB, 4 * MIB]);
    for i in 0..3 {
        scatter(&new[i], 5 + i as u64, 8, 64 * 1024);
        scatter(&old[i], 50 + i as u64, 8, 64 * 1024);
    }
    let hold = [("FAILPOINTS", ferry_e2e::landing::hold_failpoints(point, 0))];
    let hold: Vec<(&str, &str)> = hold.iter().map(|(k, v)| (*k, v.as_str())).collect();
    if kill_old_primary {
        s.a.restart(&hold);
    } else {
        s.a.restart(&[]);
        s.b.restart(&hold);
    }
    let op = ok(&b, &["group", "reprotect", "g1"]);
    let id = op["operation"]["id"].to_string();
    let held = if kill_old_primary { &s.a } else { &s.b };
    let running = || ok(&b, &["op", &id])["state"]["state"] == "running";
    assert!(
        ferry_e2e::landing::wait_reached(held, point, Duration::from_secs(60), running),
        "the reprotect never reached {point}"
    );
    if kill_old_primary {
        s.a.restart(&[]);
    } else {
        s.b.restart(&[]);
    }
    let mut done = Value::Null;
    wait_for("the interrupted reprotect to end", || {
        done = ok(&b, &["op", &id]);
        done["state"]["state"] != "running"
    });
    if done["state"]["state"] == "succeeded" {
        // Only a killed old primary can be absorbed: the new primary asks
        // it again, and it begins afresh once its restart failed the
        // interrupted operation. That failure proves the kill landed.
        assert!(kill_old_primary, "{done}");
        let a_ops = ferry_e2e::cli::get(&s.a.dir, "/v1/operations");
        let failed = a_ops
            .as_array()
            .into_iter()
            .flatten()
            .any(|op| op["kind"] == "reprotect" && op["state"]["state"] == "failed");
        assert!(
            failed,
            "no interrupted reprotect on the old primary: {a_ops}"
        );
    } else {
        assert_eq!(done["state"]["state"], "failed", "{done}");
        assert_eq!(show(&b)["group"]["state"], "reprotect_failed");
        succeeded(&ok(&b, &["group", "reprotect", "g1", "--wait"]));
    }
    assert_copies_equal(&s, &new);
    assert_eq!(show(&s.a.dir)["group"]["role"], "standby");
    assert_eq!(show(&b)["group"]["state"], "syncing");
}

#[cfg(feature = "failpoints")]
#[test]
fn reprotect_killed_on_the_old_primary_after_it_installed_the_copies_is_retried() {
    killed_then_retried("reprotect::old-primary-adopted", true);
}

#[cfg(feature = "failpoints")]
#[test]
fn reprotect_killed_on_the_new_primary_before_the_first_cycle_is_retried() {
    killed_then_retried("reprotect::old-primary-committed", false);
}

/// Fail-back after a reprotect, with the new primary SIGKILLed in the
/// middle of the planned migration (the old site prepared its volumes):
/// the migration fails, and `migrate` again brings the group home.
#[cfg(feature = "failpoints")]
#[test]
fn failback_killed_mid_migration_is_retried_to_completion() {
    let mut s = paired();
    let (a, b) = (s.a.dir.clone(), s.b.dir.clone());
    let (old, new) = failed_over(&mut s, [8 * MIB, 4 * MIB, 4 * MIB]);
    for i in 0..3 {
        scatter(&new[i], 15 + i as u64, 8, 64 * 1024);
        scatter(&old[i], 60 + i as u64, 8, 64 * 1024);
    }
    s.a.restart(&[]);
    succeeded(&ok(&b, &["group", "reprotect", "g1", "--wait"]));
    let want: Vec<String> = new.iter().map(|p| hash_file(p)).collect();
    let point = "migrate::prepared";
    s.b.restart(&[("FAILPOINTS", &ferry_e2e::landing::hold_failpoints(point, 0))]);
    let op = ok(&b, &["group", "migrate", "g1"]);
    let id = op["operation"]["id"].to_string();
    let running = || ok(&b, &["op", &id])["state"]["state"] == "running";
    assert!(
        ferry_e2e::landing::wait_reached(&s.b, point, Duration::from_secs(60), running),
        "the fail-back never reached {point}"
    );
    s.b.restart(&[]);
    let mut done = Value::Null;
    wait_for("the interrupted fail-back to end", || {
        done = ok(&b, &["op", &id]);
        done["state"]["state"] != "running"
    });
    assert_eq!(done["state"]["state"], "failed", "{done}");
    assert_eq!(show(&b)["group"]["state"], "migration_failed");
    succeeded(&ok(&b, &["group", "migrate", "g1", "--wait"]));
    let home = show(&a);
    assert_eq!(home["group"]["role"], "primary", "{home}");
    for r in home["resources"].as_array().unwrap() {
        let path = r["uri"].as_str().unwrap().strip_prefix("file:").unwrap();
        let i = NAMES
            .iter()
            .position(|n| *n == r["standby_target"].as_str().unwrap())
            .unwrap();
        assert_eq!(
            hash_file(Path::new(path)),
            want[i],
            "{path} after fail-back"
        );
    }
}

#[test]
fn reprotect_is_refused_before_a_failover_and_on_the_old_primary() {
    let s = paired();
    let (a, b) = (s.a.dir.clone(), s.b.dir.clone());
    let path = s.tmp.path().join("vm1.raw");
    imagegen::make_image(&path, 4 * MIB, 1).unwrap();
    ok(&a, &["group", "create", "g1", "--wait"]);
    let uri = format!("file:{}", path.display());
    ok(&a, &["group", "add", "g1", &uri, "--wait"]);
    ok(&a, &["group", "start", "g1", "--wait"]);
    for (dir, why) in [
        (&b, "runs on the new primary after an unplanned failover"),
        (&a, "reprotect is allowed only on a standby group"),
    ] {
        let out = run(dir, &["group", "reprotect", "g1"]);
        assert!(!out.status.success(), "{}", text(&out));
        assert!(text(&out).contains(why), "{}", text(&out));
    }
}
