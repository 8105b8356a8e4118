//! End-to-end tests of DR drills (`ferry group drill G [--rp] / --end`):
//! two real agents on loopback with the files backend, driven only through
//! the `ferry` CLI. A drill runs while a writer changes the primary and
//! replication goes on: its volumes hold the chosen point, writing to them
//! changes nothing on the standby copies or their points, new points keep
//! being committed, and `--end` leaves no drill volume and no pin behind. A
//! drill is refused during a migration and when one already runs, and it
//! blocks what would delete its copies. The standby SIGKILLed during a
//! drill's start and during its end (held at a step, feature `failpoints`)
//! is retried to completion.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_agent::imagegen;
use ferry_e2e::cli::{ok, run, text};
use ferry_e2e::sites::Sites;
use ferry_e2e::{hash_file, init_agent, Agent};
use serde_json::Value;

const MIB: u64 = 1024 * 1024;

fn paired() -> Sites {
    Sites::paired()
}

/// Makes the images `(file name, size, seed)` on site A, protects them as
/// group g1 and starts replication; returns the image paths.
fn protect_g1(s: &Sites, images: &[(&str, u64, u64)]) -> Vec<PathBuf> {
    let a = &s.a.dir;
    ok(a, &["group", "create", "g1", "--wait"]);
    let mut add = vec!["group".to_owned(), "add".into(), "g1".into()];
    let mut paths = Vec::new();
    for (name, size, seed) in images {
        let path = s.path(name);
        imagegen::make_image(&path, *size, *seed).unwrap();
        add.push(format!("file:{}", path.display()));
        paths.push(path);
    }
    add.push("--wait".into());
    let add: Vec<&str> = add.iter().map(String::as_str).collect();
    ok(a, &add);
    ok(a, &["group", "start", "g1", "--wait"]);
    paths
}

/// Runs a control command that must be refused (exit 1) with `reason`.
fn refused(dir: &Path, args: &[&str], reason: &str) {
    let out = run(dir, args);
    assert_eq!(out.status.code(), Some(1), "ferry {args:?}: {}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(reason),
        "ferry {args:?} should say {reason:?}: {}",
        text(&out)
    );
}

fn wait_for(what: &str, patience: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + patience;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn succeeded(op: &Value) {
    assert_eq!(op["state"]["state"], "succeeded", "{op}");
}

fn show(dir: &Path) -> Value {
    ok(dir, &["group", "show", "g1"])
}

/// The drill volumes `group show` lists, in resource order.
fn drill_volumes(dir: &Path) -> Vec<PathBuf> {
    show(dir)["drill"]["volumes"]
        .as_array()
        .unwrap_or_else(|| panic!("no drill shown: {}", show(dir)))
        .iter()
        .map(|v| PathBuf::from(v["volume"].as_str().unwrap()))
        .collect()
}

/// The engine recovery points standby image `image` keeps in its history
/// and pinned (its `state.json`).
fn standby_points(agent: &Agent, image: &str) -> (Vec<u64>, Vec<u64>) {
    let state = agent
        .image_path(image)
        .with_extension("ferry")
        .join("state.json");
    let text = std::fs::read_to_string(&state).unwrap();
    let json = text.split_once('\n').unwrap().1;
    let v: Value = serde_json::from_str(json).unwrap();
    let ids = |key: &str| -> Vec<u64> {
        v[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|h| h["recovery_point"].as_u64().unwrap())
                    .collect()
            })
            .unwrap_or_default()
    };
    (ids("history"), ids("pinned"))
}

/// Changes `path` in place until dropped (a writer on the primary).
struct Writer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Writer {
    fn start(path: &Path) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, path) = (stop.clone(), path.to_owned());
        let thread = std::thread::spawn(move || {
            let mut rounds = 0;
            while !flag.load(Ordering::Relaxed) {
                imagegen::scattered_writes(&path, 16, 1000 + rounds).unwrap();
                rounds += 1;
                std::thread::sleep(Duration::from_millis(30));
            }
            rounds
        });
        Writer {
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn cycles(a: &Path) -> u64 {
    show(a)["progress"]["cycles"].as_u64().unwrap_or(0)
}

#[test]
fn drill_while_the_primary_writes_and_replication_goes_on() {
    let s = paired();
    let (a, b) = (s.a.dir.clone(), s.b.dir.clone());
    let imgs = protect_g1(&s, &[("vm1.raw", 4 * MIB, 11), ("vm2.raw", 2 * MIB, 12)]);
    succeeded(&ok(&a, &["rp", "create", "g1", "--name", "r1", "--wait"]));
    let at_r1: Vec<String> = imgs.iter().map(|p| hash_file(p)).collect();
    let writer = Writer::start(&imgs[0]);

    // A drill at r1 while the primary keeps changing.
    let op = ok(&b, &["group", "drill", "g1", "--rp", "r1", "--wait"]);
    succeeded(&op);
    assert_eq!(op["params"]["volumes"].as_array().unwrap().len(), 2, "{op}");
    let g = show(&b);
    assert_eq!(g["group"]["state"], "syncing", "not a transitional state");
    assert_eq!(g["drill"]["phase"], "active", "{g}");
    assert_eq!(g["drill"]["recovery_point"], "r1", "{g}");
    let vols = drill_volumes(&b);
    assert_eq!(
        vols,
        [
            b.join("drill").join("g1").join("g1-vm1.raw"),
            b.join("drill").join("g1").join("g1-vm2.raw")
        ]
    );
    for (vol, want) in vols.iter().zip(&at_r1) {
        assert_eq!(&hash_file(vol), want, "{} holds r1", vol.display());
    }
    // One drill at a time; nothing that would delete its copies.
    refused(&b, &["group", "drill", "g1"], "one drill at a time");

    // Replication goes on: cycles and a recovery point during the drill.
    let before = cycles(&a);
    wait_for("cycles during the drill", Duration::from_secs(60), || {
        cycles(&a) >= before + 3
    });
    succeeded(&ok(&a, &["rp", "create", "g1", "--name", "r2", "--wait"]));
    let rps = ok(&b, &["rp", "list", "g1"]);
    assert!(
        rps.as_array()
            .unwrap()
            .iter()
            .any(|rp| rp["name"] == "r2" && rp["state"] == "complete"),
        "{rps}"
    );

    // Writing to a drill volume changes neither the copies nor the point.
    imagegen::scattered_writes(&vols[0], 64, 77).unwrap();
    assert_ne!(hash_file(&vols[0]), at_r1[0]);
    let rounds = writer.stop();
    assert!(rounds > 0);
    succeeded(&ok(&a, &["rp", "create", "g1", "--name", "r3", "--wait"]));
    assert_eq!(
        hash_file(&s.b.image_path("g1-vm1")),
        hash_file(&imgs[0]),
        "the standby copy holds the primary's data, not the drill's writes"
    );
    let restored = s.path("r1-vm1.raw");
    let out = restored.display().to_string();
    let u1 = format!("file:{}", imgs[0].display());
    let args = [
        "group",
        "restore",
        "g1",
        "--resource",
        &u1,
        "--rp",
        "r1",
        "--out",
        &out,
        "--wait",
    ];
    succeeded(&ok(&b, &args));
    assert_eq!(hash_file(&restored), at_r1[0], "r1 is untouched");

    // --end removes exactly the drill's volumes.
    succeeded(&ok(&b, &["group", "drill", "g1", "--end", "--wait"]));
    assert!(show(&b)["drill"].is_null());
    assert!(!b.join("drill").join("g1").exists());
    assert!(s.b.image_path("g1-vm1").exists() && restored.exists());
    refused(
        &b,
        &["group", "drill", "g1", "--end"],
        "needs a drill running",
    );

    // A drill at the latest point pins it beyond the retention, until --end
    // (a point no recovery point holds: cycles went on past r3).
    let writer = Writer::start(&imgs[0]);
    let named: Vec<u64> = ok(&b, &["rp", "list", "g1"])
        .as_array()
        .unwrap()
        .iter()
        .map(|rp| rp["engine_rp"].as_u64().unwrap())
        .collect();
    let newest = *named.iter().max().unwrap();
    wait_for("a cycle after r3", Duration::from_secs(60), || {
        ["g1-vm1", "g1-vm2"]
            .iter()
            .all(|i| standby_points(&s.b, i).0.iter().any(|p| *p > newest))
    });
    succeeded(&ok(&b, &["group", "drill", "g1", "--wait"]));
    let g = show(&b);
    let rp = g["drill"]["engine_rp"].as_u64().unwrap();
    assert!(g["drill"]["recovery_point"].is_null(), "{g}");
    assert!(!named.contains(&rp), "{rp} is a plain cycle's point");
    for image in ["g1-vm1", "g1-vm2"] {
        assert!(standby_points(&s.b, image).1.contains(&rp), "{image}");
    }
    wait_for(
        "the drilled point to leave the retained history",
        Duration::from_secs(120),
        || !standby_points(&s.b, "g1-vm1").0.contains(&rp),
    );
    assert!(
        standby_points(&s.b, "g1-vm1").1.contains(&rp),
        "still pinned"
    );
    writer.stop();
    succeeded(&ok(&b, &["group", "drill", "g1", "--end", "--wait"]));
    for image in ["g1-vm1", "g1-vm2"] {
        assert!(
            !standby_points(&s.b, image).1.contains(&rp),
            "{image}: unpinned after --end"
        );
    }
    assert!(!b.join("drill").exists() || b.join("drill").read_dir().unwrap().next().is_none());
    assert_eq!(show(&b)["group"]["state"], "syncing");

    // Stop sync (which deletes the standby's copies and points) is refused
    // by the standby while it drills; ended, the stop is retried.
    succeeded(&ok(&b, &["group", "drill", "g1", "--wait"]));
    refused(&a, &["group", "stop", "g1", "--wait"], "runs a DR drill");
    assert_eq!(show(&a)["group"]["state"], "stop_sync_failed");
    assert_eq!(show(&b)["group"]["state"], "syncing");
    assert!(s.b.image_path("g1-vm1").exists());
    succeeded(&ok(&b, &["group", "drill", "g1", "--end", "--wait"]));
    succeeded(&ok(&a, &["group", "stop", "g1", "--wait"]));
    assert_eq!(show(&b)["group"]["state"], "mapped");
}

/// A drill is refused while the group migrates, and a planned migration
/// (like a standby-side delete) is refused while a drill runs.
#[cfg(feature = "failpoints")]
#[test]
fn drill_and_migration_exclude_each_other() {
    let mut s = paired();
    let (a, b) = (s.a.dir.clone(), s.b.dir.clone());
    protect_g1(&s, &[("vm.raw", 2 * MIB, 21)]);
    succeeded(&ok(&a, &["rp", "create", "g1", "--name", "r1", "--wait"]));

    succeeded(&ok(&b, &["group", "drill", "g1", "--wait"]));
    refused(&a, &["group", "migrate", "g1", "--wait"], "runs a DR drill");
    assert_eq!(show(&a)["group"]["state"], "migration_failed");
    assert_eq!(show(&b)["group"]["state"], "syncing");
    assert!(show(&b)["drill"]["phase"] == "active");
    succeeded(&ok(&b, &["group", "drill", "g1", "--end", "--wait"]));

    // The retried migration, held while the standby migrates: a drill must
    // wait.
    let point = "migrate::after-begin";
    s.a.restart(&[("FAILPOINTS", &ferry_e2e::landing::hold_failpoints(point, 0))]);
    let op = ok(&a, &["group", "migrate", "g1"]);
    let id = op["operation"]["id"].to_string();
    let running = || ok(&a, &["op", &id])["state"]["state"] == "running";
    assert!(
        ferry_e2e::landing::wait_reached(&s.a, point, Duration::from_secs(60), running),
        "the migration never reached {point}"
    );
    assert_eq!(show(&b)["group"]["state"], "migrating");
    refused(&b, &["group", "drill", "g1"], "must wait");
    assert!(show(&b)["drill"].is_null());
    assert!(!b.join("drill").join("g1").exists());
}

/// Starts a drill held at its `skip + 1`-th volume, SIGKILLs the standby
/// there and restarts it; returns the interrupted operation as it ended.
#[cfg(feature = "failpoints")]
fn killed_at(s: &mut Sites, point: &str, skip: u32, args: &[&str]) -> Value {
    let b = s.b.dir.clone();
    s.b.restart(&[(
        "FAILPOINTS",
        &ferry_e2e::landing::hold_failpoints(point, skip),
    )]);
    let op = ok(&b, args);
    let id = op["operation"]["id"].to_string();
    let running = || ok(&b, &["op", &id])["state"]["state"] == "running";
    assert!(
        ferry_e2e::landing::wait_reached(&s.b, point, Duration::from_secs(60), running),
        "{args:?} never reached {point}:\n{}",
        s.b.log_text()
    );
    assert!(running(), "{args:?} ended while held at {point}");
    s.b.restart(&[]);
    let mut done = Value::Null;
    wait_for("the interrupted operation", Duration::from_secs(40), || {
        done = ok(&b, &["op", &id]);
        done["state"]["state"] != "running"
    });
    done
}

#[cfg(feature = "failpoints")]
#[test]
fn drill_start_and_end_interrupted_by_standby_kills_are_retried_and_survive_failover() {
    let mut s = paired();
    let (a, b) = (s.a.dir.clone(), s.b.dir.clone());
    let imgs = protect_g1(&s, &[("vm1.raw", 2 * MIB, 31), ("vm2.raw", 2 * MIB, 32)]);
    succeeded(&ok(&a, &["rp", "create", "g1", "--name", "r1", "--wait"]));
    let want: Vec<String> = imgs.iter().map(|p| hash_file(p)).collect();
    let dir = b.join("drill").join("g1");

    // Killed after its first volume: the start fails, the drill stays
    // `starting` and the retry remakes every volume.
    let args = ["group", "drill", "g1", "--rp", "r1"];
    let done = killed_at(&mut s, "drill::after-volume", 0, &args);
    assert_eq!(done["state"]["state"], "failed", "{done}");
    let g = show(&b);
    assert_eq!(g["drill"]["phase"], "starting", "{g}");
    assert_eq!(g["group"]["state"], "syncing");
    assert!(dir.join("g1-vm1.raw").exists() && !dir.join("g1-vm2.raw").exists());
    succeeded(&ok(&b, &["group", "drill", "g1", "--wait"]));
    assert_eq!(show(&b)["drill"]["phase"], "active");
    assert_eq!(hash_file(&dir.join("g1-vm1.raw")), want[0]);
    assert_eq!(hash_file(&dir.join("g1-vm2.raw")), want[1]);

    // Killed after removing its first volume: the end fails, a retry
    // removes the rest.
    let args = ["group", "drill", "g1", "--end"];
    let done = killed_at(&mut s, "drill::after-remove", 0, &args);
    assert_eq!(done["state"]["state"], "failed", "{done}");
    assert_eq!(show(&b)["drill"]["phase"], "ending");
    assert!(!dir.join("g1-vm1.raw").exists() && dir.join("g1-vm2.raw").exists());
    refused(&b, &["group", "drill", "g1"], "one drill at a time");
    succeeded(&ok(&b, &["group", "drill", "g1", "--end", "--wait"]));
    assert!(show(&b)["drill"].is_null());
    assert!(!dir.exists());

    // An interrupted start can also just be ended: nothing is left.
    let args = ["group", "drill", "g1"];
    let done = killed_at(&mut s, "drill::after-volume", 0, &args);
    assert_eq!(done["state"]["state"], "failed", "{done}");
    let rp = show(&b)["drill"]["engine_rp"].as_u64().unwrap();
    assert!(standby_points(&s.b, "g1-vm1").1.contains(&rp));
    succeeded(&ok(&b, &["group", "drill", "g1", "--end", "--wait"]));
    assert!(!dir.exists());
    let r1 = ok(&b, &["rp", "list", "g1"])[0]["engine_rp"]
        .as_u64()
        .unwrap();
    for image in ["g1-vm1", "g1-vm2"] {
        let pinned = standby_points(&s.b, image).1;
        assert!(!pinned.contains(&rp) || rp == r1, "{image}: {pinned:?}");
    }
    // Replication went on throughout.
    succeeded(&ok(&a, &["rp", "create", "g1", "--name", "r2", "--wait"]));

    // A failover during a drill leaves the drill; the new primary is not
    // deleted from under it, and --end still works.
    succeeded(&ok(&b, &["group", "drill", "g1", "--rp", "r1", "--wait"]));
    s.a.kill9();
    succeeded(&ok(
        &b,
        &["group", "failover", "g1", "--rp", "r2", "--wait"],
    ));
    let g = show(&b);
    assert_eq!(g["group"]["state"], "failed_over");
    assert_eq!(g["drill"]["phase"], "active", "{g}");
    assert_eq!(hash_file(&dir.join("g1-vm2.raw")), want[1]);
    refused(&b, &["group", "delete", "g1"], "end it first");
    succeeded(&ok(&b, &["group", "drill", "g1", "--end", "--wait"]));
    assert!(!dir.exists());
    succeeded(&ok(&b, &["group", "delete", "g1", "--wait"]));
}

fn rbd_export_hash(scratch: &Path, site: &str, spec: &str) -> String {
    std::fs::create_dir_all(scratch).unwrap();
    let file = scratch.join("export.raw");
    let _ = std::fs::remove_file(&file);
    ferry_e2e::lab::rbd(site, &["export", spec, &file.display().to_string()]);
    hash_file(&file)
}

/// Removes (with their snapshots) every image of pool `rbd` on both lab
/// clusters whose name contains `ferry-t-TAG-` (drill volumes too), when
/// dropped.
struct RbdCleanup(String);

impl Drop for RbdCleanup {
    fn drop(&mut self) {
        for site in ["site-a", "site-b"] {
            let Ok(out) = std::process::Command::new("rbd")
                .args(["--cluster", site, "ls", "rbd"])
                .output()
            else {
                continue;
            };
            let mark = format!("ferry-t-{}-", self.0);
            let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.contains(mark.as_str()))
                .map(str::to_owned)
                .collect();
            // Drill volumes (possibly clones) before the copies they
            // come from.
            names.sort_by_key(|n| !n.starts_with("drill-"));
            for name in names {
                let spec = format!("rbd/{name}");
                for args in [
                    vec!["snap", "purge", spec.as_str()],
                    vec!["rm", spec.as_str()],
                ] {
                    let _ = std::process::Command::new("rbd")
                        .args(["--cluster", site, "--no-progress"])
                        .args(args)
                        .output();
                }
            }
        }
    }
}

/// A drill of a group of two RBD images on an RBD standby: the drill
/// volumes are images `drill-IMAGE` of the standby pool equal to the chosen
/// point, writing to one changes neither the point nor replication (a new
/// point is committed during the drill), and `--end` leaves no drill image.
#[test]
#[ignore = "needs the Ceph lab (FERRY_CEPH_LAB=1); scripts/test.sh runs it"]
fn lab_rbd_drill_starts_and_ends_beside_the_standby_copies() {
    use ferry_e2e::lab::{self, rbd};
    if !lab::enabled() {
        return;
    }
    let tag = format!("drl{}", std::process::id());
    let _cleanup = RbdCleanup(tag.clone());
    let images: Vec<String> = (0..2).map(|i| format!("ferry-t-{tag}-{i}")).collect();
    for image in &images {
        rbd(
            "site-a",
            &["create", "--size", "16", &format!("rbd/{image}")],
        );
        lab::pyrbd(
            "site-a",
            image,
            "r = random.Random(3)\nfor i in range(64):\n    img.write(r.randbytes(4096), r.randrange(0, 4096) * 4096)",
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let (a_fp, b_fp) = (init_agent(&a), init_agent(&b));
    std::fs::write(a.join("config.toml"), "[ceph]\ncluster = \"site-a\"\n").unwrap();
    std::fs::write(
        b.join("config.toml"),
        "[standby]\nbackend = \"rbd\"\nrbd_pool = \"rbd\"\nretention = 2\n[ceph]\ncluster = \"site-b\"\n",
    )
    .unwrap();
    let _agents = (Agent::start(&a, &a_fp, &[]), Agent::start(&b, &b_fp, &[]));
    let key = String::from_utf8(run(&b, &["service", "key"]).stdout).unwrap();
    ok(&a, &["service", "create", "--key", key.trim()]);
    ok(&a, &["group", "create", "g1", "--wait"]);
    let uris: Vec<String> = images.iter().map(|i| format!("rbd:rbd/{i}")).collect();
    let mut add = vec!["group", "add", "g1"];
    add.extend(uris.iter().map(String::as_str));
    add.push("--wait");
    ok(&a, &add);
    ok(&a, &["group", "start", "g1", "--wait"]);
    succeeded(&ok(&a, &["rp", "create", "g1", "--name", "r1", "--wait"]));
    let scratch = tmp.path().join("scratch");
    let hash = |site: &str, spec: &str| rbd_export_hash(&scratch, site, spec);
    let at_r1: Vec<String> = images
        .iter()
        .map(|i| hash("site-a", &format!("rbd/{i}")))
        .collect();
    lab::pyrbd("site-a", &images[0], "img.write(b'x' * 8192, 0)");

    let op = ok(&b, &["group", "drill", "g1", "--rp", "r1", "--wait"]);
    succeeded(&op);
    let g = show(&b);
    assert_eq!(g["group"]["state"], "syncing");
    let standby: Vec<String> = g["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["standby_target"].as_str().unwrap().to_owned())
        .collect();
    let vols: Vec<String> = g["drill"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["volume"].as_str().unwrap().to_owned())
        .collect();
    let want: Vec<String> = standby.iter().map(|n| format!("drill-{n}")).collect();
    assert_eq!(vols, want, "{g}");
    for (vol, h) in vols.iter().zip(&at_r1) {
        assert_eq!(&hash("site-b", &format!("rbd/{vol}")), h, "{vol} holds r1");
    }
    // Writable, and writing changes neither r1 nor replication.
    lab::pyrbd("site-b", &vols[0], "img.write(b'd' * 65536, 0)");
    assert_ne!(hash("site-b", &format!("rbd/{}", vols[0])), at_r1[0]);
    succeeded(&ok(&a, &["rp", "create", "g1", "--name", "r2", "--wait"]));
    let restored = format!("ferry-t-{tag}-restored");
    let args = [
        "group",
        "restore",
        "g1",
        "--resource",
        &uris[0],
        "--rp",
        "r1",
        "--out",
        &restored,
        "--wait",
    ];
    succeeded(&ok(&b, &args));
    assert_eq!(hash("site-b", &format!("rbd/{restored}")), at_r1[0]);

    succeeded(&ok(&b, &["group", "drill", "g1", "--end", "--wait"]));
    assert!(show(&b)["drill"].is_null());
    let listed = String::from_utf8_lossy(&rbd("site-b", &["ls", "rbd"]).stdout).to_string();
    for vol in &vols {
        assert!(!listed.lines().any(|l| l == vol), "{vol} left: {listed}");
    }
    for name in &standby {
        assert!(listed.lines().any(|l| l == name), "copy {name} gone");
    }
}
