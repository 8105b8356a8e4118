//! Failover without copying, files backend, two real agents driven through
//! the `ferry` CLI: a 3-volume group with data fails over to its latest
//! point by handing the standby files over (the volumes are the very inodes
//! replication wrote: no byte copied), or to an older point (its content,
//! the standby copies left as they were); `--copy` keeps independent copies;
//! `group show` names each volume; a commit the old primary sends after the
//! failover started is refused and changes no volume.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferry_agent::imagegen;
use ferry_e2e::cli::ok;
use ferry_e2e::hash_file;
use ferry_e2e::sites::Sites;

const MIB: u64 = 1024 * 1024;

fn paired() -> Sites {
    Sites::paired()
}

/// Three volumes holding data (`seed` varies them), protected as `g1` and
/// replicated; returns each volume's path.
fn protect_three(s: &Sites, seed: u64) -> Vec<PathBuf> {
    let a = &s.a.dir;
    let made: Vec<PathBuf> = [(1, 8 * MIB), (2, 4 * MIB), (3, 6 * MIB)]
        .iter()
        .map(|&(i, size)| {
            let path = s.tmp.path().join(format!("vm{i}.raw"));
            imagegen::make_image(&path, size, seed + i).unwrap();
            path
        })
        .collect();
    ok(a, &["group", "create", "g1", "--wait"]);
    let uris: Vec<String> = made
        .iter()
        .map(|p| format!("file:{}", p.display()))
        .collect();
    let mut add = vec!["group", "add", "g1"];
    add.extend(uris.iter().map(String::as_str));
    add.push("--wait");
    ok(a, &add);
    ok(a, &["group", "start", "g1", "--wait"]);
    made
}

/// `group show`'s volume of each resource, by standby image name.
fn volumes(dir: &Path) -> Vec<(String, String)> {
    ok(dir, &["group", "show", "g1"])["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["standby_target"].as_str().unwrap().to_owned(),
                r["volume"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn failover_to_the_latest_point_hands_the_standby_files_over_without_copying() {
    let mut s = paired();
    let (a, b) = (s.a.dir.clone(), s.b.dir.clone());
    let made = protect_three(&s, 100);
    ok(&a, &["rp", "create", "g1", "--name", "r1", "--wait"]);
    let want: Vec<String> = made.iter().map(|p| hash_file(p)).collect();
    let names = ["g1-vm1", "g1-vm2", "g1-vm3"];
    let inodes: Vec<u64> = names
        .iter()
        .map(|n| std::fs::metadata(s.b.image_path(n)).unwrap().ino())
        .collect();
    s.a.kill9();
    let op = ok(&b, &["group", "failover", "g1", "--wait"]);
    assert_eq!(op["state"]["state"], "succeeded", "{op}");
    let out = b.join("failover").join("g1");
    let shown = volumes(&b);
    for (i, name) in names.iter().enumerate() {
        let volume = out.join(format!("{name}.raw"));
        assert!(
            shown.contains(&(name.to_string(), format!("file:{}", volume.display()))),
            "group show does not name {}: {shown:?}",
            volume.display()
        );
        assert_eq!(
            hash_file(&volume),
            want[i],
            "{name} is not the latest point"
        );
        // The very file replication wrote, and no second name for it: no
        // byte was copied, and the store cannot reach it any more.
        let m = std::fs::metadata(&volume).unwrap();
        assert_eq!((m.ino(), m.nlink()), (inodes[i], 1), "{name} was copied");
        assert!(!s.b.image_path(name).exists());
    }
    // The group's recovery point still restores (from its pinned copy).
    let restored = s.tmp.path().join("r1-vm2.raw");
    let uri = format!("file:{}", made[1].display());
    let restored_arg = restored.display().to_string();
    ok(
        &b,
        &[
            "group",
            "restore",
            "g1",
            "--resource",
            &uri,
            "--rp",
            "r1",
            "--out",
            &restored_arg,
            "--wait",
        ],
    );
    assert_eq!(hash_file(&restored), want[1]);
    // Deleting the failed-over group leaves the volumes alone.
    ok(&b, &["group", "delete", "g1", "--wait"]);
    for (i, name) in names.iter().enumerate() {
        assert_eq!(hash_file(&out.join(format!("{name}.raw"))), want[i]);
    }
}

#[test]
fn failover_to_an_older_point_makes_volumes_with_its_content() {
    let mut s = paired();
    let (a, b) = (s.a.dir.clone(), s.b.dir.clone());
    let made = protect_three(&s, 200);
    ok(&a, &["rp", "create", "g1", "--name", "r1", "--wait"]);
    let at_r1: Vec<String> = made.iter().map(|p| hash_file(p)).collect();
    for (i, p) in made.iter().enumerate() {
        imagegen::scattered_writes(p, 40, 300 + i as u64).unwrap();
        assert_ne!(hash_file(p), at_r1[i]);
    }
    ok(&a, &["rp", "create", "g1", "--name", "r2", "--wait"]);
    let at_r2: Vec<String> = made.iter().map(|p| hash_file(p)).collect();
    s.a.kill9();
    let op = ok(&b, &["group", "failover", "g1", "--rp", "r1", "--wait"]);
    assert_eq!(op["state"]["state"], "succeeded", "{op}");
    let out = b.join("failover").join("g1");
    let shown = volumes(&b);
    for (i, name) in ["g1-vm1", "g1-vm2", "g1-vm3"].iter().enumerate() {
        let volume = out.join(format!("{name}.raw"));
        assert_eq!(hash_file(&volume), at_r1[i], "{name} is not r1");
        assert!(shown.contains(&(name.to_string(), format!("file:{}", volume.display()))));
        // The standby copies stay at the latest point, untouched.
        assert_eq!(hash_file(&s.b.image_path(name)), at_r2[i]);
    }
    let rps = ok(&b, &["rp", "list", "g1"]);
    let r2 = rps
        .as_array()
        .unwrap()
        .iter()
        .find(|rp| rp["name"] == "r2")
        .unwrap();
    assert_eq!(r2["state"], "unusable", "{rps}");
}

#[test]
fn failover_with_copy_keeps_the_standby_copies_and_makes_independent_files() {
    let mut s = paired();
    let b = s.b.dir.clone();
    let made = protect_three(&s, 400);
    ok(&s.a.dir, &["rp", "create", "g1", "--name", "r1", "--wait"]);
    let want: Vec<String> = made.iter().map(|p| hash_file(p)).collect();
    s.a.kill9();
    let op = ok(&b, &["group", "failover", "g1", "--copy", "--wait"]);
    assert_eq!(op["state"]["state"], "succeeded", "{op}");
    for (i, name) in ["g1-vm1", "g1-vm2", "g1-vm3"].iter().enumerate() {
        let volume = b.join("failover").join("g1").join(format!("{name}.raw"));
        assert_eq!(hash_file(&volume), want[i]);
        let standby = s.b.image_path(name);
        assert_eq!(hash_file(&standby), want[i], "the standby copy stays");
        let (v, c) = (
            std::fs::metadata(&volume).unwrap(),
            std::fs::metadata(&standby).unwrap(),
        );
        assert_ne!(v.ino(), c.ino(), "{name}: --copy made no copy");
    }
}

/// The old primary sealed its epochs on the standby and is paused before
/// its Commit when the standby fails over: the failover does not wait for
/// it, and the Commit that follows is refused (the copy was fenced), so the
/// volumes hold the point the failover chose, not the late writes.
#[cfg(feature = "failpoints")]
#[test]
fn a_commit_the_old_primary_sends_after_the_failover_started_is_refused() {
    use ferry_e2e::landing::{pause_failpoints, wait_reached};
    let mut s = paired();
    let (a, b) = (s.a.dir.clone(), s.b.dir.clone());
    let made = protect_three(&s, 500);
    ok(&a, &["rp", "create", "g1", "--name", "r1", "--wait"]);
    let at_r1: Vec<String> = made.iter().map(|p| hash_file(p)).collect();
    s.a.kill9();
    imagegen::scattered_writes(&made[0], 40, 501).unwrap();
    s.a.restart(&[(
        "FAILPOINTS",
        &pause_failpoints("sender::before-commit", 0, 15_000),
    )]);
    assert!(
        wait_reached(
            &s.a,
            "sender::before-commit",
            Duration::from_secs(60),
            || true
        ),
        "the primary never reached its commit"
    );
    let op = ok(&b, &["group", "failover", "g1", "--wait"]);
    assert_eq!(op["state"]["state"], "succeeded", "{op}");
    wait_for("the old primary's commit refused", || {
        s.a.log_text().contains("is fenced") || s.b.log_text().contains("is fenced")
    });
    let out = b.join("failover").join("g1");
    for (i, name) in ["g1-vm1", "g1-vm2", "g1-vm3"].iter().enumerate() {
        assert_eq!(
            hash_file(&out.join(format!("{name}.raw"))),
            at_r1[i],
            "{name} took the old primary's late writes"
        );
    }
}
