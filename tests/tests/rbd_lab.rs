//! RBD replication between the two lab clusters (`scripts/ceph-lab.sh up`;
//! every test is `#[ignore]`d for a plain `cargo test` and needs
//! `FERRY_CEPH_LAB=1`, which `scripts/test.sh` sets after bringing the lab
//! up and runs them with `--include-ignored`; under CI or
//! `FERRY_REQUIRE_ALL=1` a missing lab fails them): full and incremental sync of an RBD image from
//! site-a to a standby agent whose images live in site-b's pool, checked by
//! hashing both sides at the recovery point; SIGKILL of the standby
//! mid-apply; a three-image group recovery point with a write-order check;
//! restore into a new image; the RBD group a multi-image capture uses
//! (writers never fail, membership changes stay incremental); removing
//! images a killed client left half-made; `ferry export-diff`/`import-diff` on `rbd:`
//! images against the real `rbd` tool.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ferry_e2e::{bin, ferry, ferry_spawn, hash_file, Pair};

const STANDBY_RBD: &str =
    "[standby]\nbackend = \"rbd\"\nrbd_pool = \"rbd\"\n[ceph]\ncluster = \"site-b\"\n";

use ferry_e2e::lab::{assert_ok as ok, pyrbd, rbd};

fn lab() -> bool {
    ferry_e2e::lab::enabled()
}

/// Seeded random writes of 4 KiB..64 KiB over the whole image.
fn scribble(site: &str, image: &str, seed: u64, writes: u32) {
    pyrbd(
        site,
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

/// BLAKE3 of an image (or snapshot) of SITE, through `rbd export`.
fn image_hash(site: &str, spec: &str, scratch: &Path) -> String {
    let file = scratch.join(format!("export-{}", std::process::id()));
    let _ = std::fs::remove_file(&file);
    rbd(site, &["export", spec, &file.display().to_string()]);
    let hash = hash_file(&file);
    let _ = std::fs::remove_file(&file);
    hash
}

/// Lab images removed (with their snapshots) on drop, on both sites.
struct LabImages(Vec<String>);

impl LabImages {
    fn new(tag: &str, count: usize) -> LabImages {
        LabImages(
            (0..count)
                .map(|i| format!("ferry-t-{tag}{i}-{}", std::process::id()))
                .collect(),
        )
    }
}

impl Drop for LabImages {
    fn drop(&mut self) {
        for site in ["site-a", "site-b"] {
            let out = Command::new("rbd")
                .args(["--cluster", site, "ls", "rbd"])
                .output();
            let Ok(out) = out else { continue };
            let listed = String::from_utf8_lossy(&out.stdout).to_string();
            for name in listed.lines() {
                if self.0.iter().any(|n| name.starts_with(n.as_str())) {
                    let spec = format!("rbd/{name}");
                    for args in [vec!["snap", "purge", &spec], vec!["rm", &spec]] {
                        let _ = Command::new("rbd")
                            .args(["--cluster", site, "--no-progress"])
                            .args(&args)
                            .output();
                    }
                }
            }
        }
    }
}

/// A primary directory pointed at site-a and a running standby that keeps
/// its images in site-b.
fn rbd_pair() -> Pair {
    let pair = Pair::new(Some(STANDBY_RBD));
    std::fs::write(
        pair.primary_dir.join("config.toml"),
        "[ceph]\ncluster = \"site-a\"\n",
    )
    .expect("primary config");
    pair
}

fn sync_rbd(pair: &Pair, images: &[&str], extra: &[&str]) -> serde_json::Value {
    let dir = pair.primary_dir.display().to_string();
    let mut args: Vec<String> = vec!["sync".into(), "--dir".into(), dir];
    for image in images {
        args.push(format!("rbd:rbd/{image}"));
        args.push(pair.standby.target(image));
    }
    args.extend([
        "--peer".into(),
        pair.standby.fingerprint.clone(),
        "--json".into(),
    ]);
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = ferry(&refs);
    ok(&out, "ferry sync");
    serde_json::from_slice(&out.stdout).expect("sync --json prints JSON")
}

fn verify_rbd(pair: &Pair, image: &str) -> Output {
    ferry(&[
        "verify",
        "--dir",
        &pair.primary_dir.display().to_string(),
        &format!("rbd:rbd/{image}"),
        &pair.standby.target(image),
        "--peer",
        &pair.standby.fingerprint,
    ])
}

fn standby_dir(pair: &Pair) -> String {
    pair.standby.dir.display().to_string()
}

#[test]
#[ignore = "needs the Ceph lab (FERRY_CEPH_LAB=1); scripts/test.sh runs it"]
fn lab_full_then_incremental_rbd_replication() {
    if !lab() {
        return;
    }
    let images = LabImages::new("inc", 1);
    let img = images.0[0].as_str();
    let pair = rbd_pair();
    rbd(
        "site-a",
        &["create", &format!("rbd/{img}"), "--size", "128"],
    );
    scribble("site-a", img, 1, 300);

    let full = sync_rbd(&pair, &[img], &[]);
    assert_eq!(full["base_epoch"], 0, "first sync is a full copy: {full}");
    let rp1 = full["recovery_point"].as_u64().expect("rp");
    let source_at_rp1 = image_hash("site-a", &format!("rbd/{img}"), pair.tmp.path());
    assert_eq!(
        image_hash(
            "site-b",
            &format!("rbd/{img}@ferry-rp-{rp1}"),
            pair.tmp.path()
        ),
        source_at_rp1,
        "standby snapshot equals the source at the recovery point"
    );
    ok(&verify_rbd(&pair, img), "ferry verify after the full sync");

    // Scattered writes, a discard and growth: an incremental cycle.
    scribble("site-a", img, 2, 100);
    pyrbd(
        "site-a",
        img,
        "img.discard(8 << 20, 4 << 20)\nimg.resize(160 << 20)\nimg.write(b'z' * 8192, 150 << 20)",
    );
    let inc = sync_rbd(&pair, &[img], &[]);
    assert_ne!(inc["base_epoch"], 0, "second sync is incremental: {inc}");
    let changed = inc["bytes_changed"].as_u64().expect("bytes_changed");
    assert!(
        changed < 40 << 20,
        "an incremental cycle reads what changed, not the image: {changed} bytes"
    );
    let rp2 = inc["recovery_point"].as_u64().expect("rp");
    assert_eq!(
        image_hash(
            "site-b",
            &format!("rbd/{img}@ferry-rp-{rp2}"),
            pair.tmp.path()
        ),
        image_hash("site-a", &format!("rbd/{img}"), pair.tmp.path()),
    );
    // The older point is still there and still equal to the older source.
    assert_eq!(
        image_hash(
            "site-b",
            &format!("rbd/{img}@ferry-rp-{rp1}"),
            pair.tmp.path()
        ),
        source_at_rp1
    );
    ok(
        &verify_rbd(&pair, img),
        "ferry verify after the incremental sync",
    );
    // Only the committed ferry snapshot stays on the primary.
    let snaps = String::from_utf8(rbd("site-a", &["snap", "ls", &format!("rbd/{img}")]).stdout)
        .expect("utf-8");
    assert_eq!(snaps.matches("ferry.").count(), 1, "{snaps}");
}

/// Recovery points past the standby's retention leave the record at the
/// commit and their snapshots soon after, on the sweep the commit starts
/// (engine/src/rbd/standby/retire.rs), not inside the commit any more.
#[test]
#[ignore = "needs the Ceph lab (FERRY_CEPH_LAB=1); scripts/test.sh runs it"]
fn lab_expired_recovery_points_leave_the_standby_after_the_commit() {
    if !lab() {
        return;
    }
    let images = LabImages::new("retire", 1);
    let img = images.0[0].as_str();
    let pair = Pair::new(Some(
        "[standby]\nbackend = \"rbd\"\nrbd_pool = \"rbd\"\nretention = 2\n[ceph]\ncluster = \"site-b\"\n",
    ));
    std::fs::write(
        pair.primary_dir.join("config.toml"),
        "[ceph]\ncluster = \"site-a\"\n",
    )
    .expect("primary config");
    rbd("site-a", &["create", &format!("rbd/{img}"), "--size", "16"]);
    let mut points = Vec::new();
    for seed in 0..4 {
        scribble("site-a", img, 40 + seed, 20);
        let synced = sync_rbd(&pair, &[img], &[]);
        points.push(synced["recovery_point"].as_u64().expect("rp"));
    }
    let kept: Vec<String> = points[2..]
        .iter()
        .map(|rp| format!("ferry-rp-{rp}"))
        .collect();
    // Eventually (the sweep runs after the commit answered): exactly the
    // newest two points' snapshots are left.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut left: Vec<String>;
    loop {
        let listed =
            String::from_utf8(rbd("site-b", &["snap", "ls", &format!("rbd/{img}")]).stdout)
                .expect("utf-8");
        left = listed
            .split_whitespace()
            .filter(|word| word.starts_with("ferry-rp-"))
            .map(str::to_owned)
            .collect();
        left.sort();
        if left == kept || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(left, kept, "points synced: {points:?}");
    ok(&verify_rbd(&pair, img), "ferry verify after the sweep");
}

/// Regression (found by the fault harness's RBD mode): a primary killed
/// while the standby was still committing its recovery point reconnected,
/// and the new connection's open rolled the same commit intent forward on
/// a second thread; its image handle tried to break the live commit's
/// exclusive lock and every sync failed with "breaking stale locks" until
/// the first commit ended. A new sync must wait for the live commit.
#[test]
#[ignore = "needs the Ceph lab (FERRY_CEPH_LAB=1); scripts/test.sh runs it"]
#[cfg(feature = "failpoints")]
fn lab_sync_arriving_during_a_commit_waits_for_it() {
    if !lab() {
        return;
    }
    let images = LabImages::new("race", 2);
    let mut pair = rbd_pair();
    for img in &images.0 {
        rbd("site-a", &["create", &format!("rbd/{img}"), "--size", "16"]);
        scribble("site-a", img, 5, 50);
    }
    let names: Vec<&str> = images.0.iter().map(String::as_str).collect();
    let rp1 = sync_rbd(&pair, &names, &[])["recovery_point"]
        .as_u64()
        .expect("rp");
    for img in &images.0 {
        scribble("site-a", img, 6, 50);
    }
    // The standby's commit stalls (once) after the first image's data.
    pair.standby.restart(&[(
        "FAILPOINTS",
        "standby::after-data-before-state=1*sleep(4000)",
    )]);
    let dir = pair.primary_dir.display().to_string();
    let mut args: Vec<String> = vec!["sync".into(), "--dir".into(), dir];
    for img in &names {
        args.push(format!("rbd:rbd/{img}"));
        args.push(pair.standby.target(img));
    }
    args.extend(["--peer".into(), pair.standby.fingerprint.clone()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut first: Child = ferry_spawn(&refs);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !pair
        .standby
        .log_text()
        .contains("point=\"standby::after-data-before-state\"")
    {
        assert!(
            Instant::now() < deadline,
            "the standby never reached its commit"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The primary dies mid-commit; a new one connects at once.
    let _ = first.kill();
    let _ = first.wait();
    let report = sync_rbd(&pair, &names, &[]);
    let rp2 = report["recovery_point"].as_u64().expect("rp");
    assert!(rp2 > rp1, "{report}");
    for img in &names {
        ok(
            &verify_rbd(&pair, img),
            "ferry verify after the commit race",
        );
    }
    assert!(
        !pair.standby.log_text().contains("breaking stale locks"),
        "{}",
        pair.standby.log_text()
    );
}

#[test]
#[ignore = "needs the Ceph lab (FERRY_CEPH_LAB=1); scripts/test.sh runs it"]
fn lab_standby_killed_mid_apply_rolls_back_to_the_last_recovery_point() {
    if !lab() {
        return;
    }
    let images = LabImages::new("kill", 1);
    let img = images.0[0].as_str();
    let mut pair = rbd_pair();
    rbd(
        "site-a",
        &["create", &format!("rbd/{img}"), "--size", "128"],
    );
    scribble("site-a", img, 3, 200);
    let rp1 = sync_rbd(&pair, &[img], &[])["recovery_point"]
        .as_u64()
        .expect("rp");
    let at_rp1 = image_hash("site-a", &format!("rbd/{img}"), pair.tmp.path());

    // Many changes, sent slowly, and the standby killed while applying them.
    scribble("site-a", img, 4, 1500);
    let dir = pair.primary_dir.display().to_string();
    let source = format!("rbd:rbd/{img}");
    let target = pair.standby.target(img);
    let mut sync: Child = ferry_spawn(&[
        "sync",
        "--dir",
        &dir,
        &source,
        &target,
        "--peer",
        &pair.standby.fingerprint,
        "--bwlimit",
        "4M",
        "--json",
    ]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !pair.standby.log_text().contains("receiving epoch") {
        assert!(
            Instant::now() < deadline,
            "the standby never started receiving"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(3));
    pair.standby.kill9();
    let _ = sync.kill();
    let _ = sync.wait();

    // The recovery point's snapshot is intact…
    assert_eq!(
        image_hash(
            "site-b",
            &format!("rbd/{img}@ferry-rp-{rp1}"),
            pair.tmp.path()
        ),
        at_rp1
    );
    // …the head is torn (part of the new epoch applied)…
    let head = image_hash("site-b", &format!("rbd/{img}"), pair.tmp.path());
    assert_ne!(
        head, at_rp1,
        "the kill came before anything was applied; the test proves nothing"
    );
    // …and rolls back to it.
    let out = Command::new(bin("ferry-agent"))
        .args(["rollback", "--dir", &standby_dir(&pair), img])
        .output()
        .expect("ferry-agent rollback");
    ok(&out, "ferry-agent rollback");
    assert!(String::from_utf8_lossy(&out.stdout).contains("rolled back"));
    assert_eq!(
        image_hash("site-b", &format!("rbd/{img}"), pair.tmp.path()),
        at_rp1
    );

    // The agent comes back and the next sync completes the cycle.
    pair.standby.restart(&[]);
    let report = sync_rbd(&pair, &[img], &[]);
    let rp2 = report["recovery_point"].as_u64().expect("rp");
    assert!(rp2 > rp1);
    ok(
        &verify_rbd(&pair, img),
        "ferry verify after the resumed sync",
    );
}

#[test]
#[ignore = "needs the Ceph lab (FERRY_CEPH_LAB=1); scripts/test.sh runs it"]
fn lab_group_recovery_point_keeps_write_order_across_images() {
    if !lab() {
        return;
    }
    let images = LabImages::new("grp", 3);
    let names: Vec<&str> = images.0.iter().map(String::as_str).collect();
    let pair = rbd_pair();
    for name in &names {
        rbd(
            "site-a",
            &["create", &format!("rbd/{name}"), "--size", "16"],
        );
    }
    // A writer that, in each round i, writes i to image 0, then (after that
    // write completed) to image 1, then to image 2.
    let script = format!(
        "import rados, rbd, struct, sys\n\
         c = rados.Rados(clustername='site-a', conffile='/etc/ceph/site-a.conf')\n\
         c.connect()\n\
         io = c.open_ioctx('rbd')\n\
         imgs = [rbd.Image(io, n) for n in {names:?}]\n\
         i = 0\n\
         while True:\n\
         \x20   i += 1\n\
         \x20   block = struct.pack('<Q', i) * 512\n\
         \x20   for img in imgs:\n\
         \x20       img.write(block, 0)\n"
    );
    let mut writer = Command::new("/usr/bin/python3")
        .args(["-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the writer");
    std::thread::sleep(Duration::from_secs(2));
    let mut points = Vec::new();
    for _ in 0..3 {
        let report = sync_rbd(&pair, &names, &[]);
        points.push(report["recovery_point"].as_u64().expect("rp"));
        std::thread::sleep(Duration::from_millis(300));
    }
    // The captures must not fail the application's writes: ferry first
    // took the images' exclusive locks with rbd_lock_acquire, which makes
    // librbd answer other writers "read-only" (EROFS) for the capture.
    if let Some(status) = writer.try_wait().expect("writer status") {
        let mut err = String::new();
        use std::io::Read;
        let _ = writer.stderr.take().map(|mut e| e.read_to_string(&mut err));
        panic!("the writer died during the captures ({status}): {err}");
    }
    let _ = writer.kill();
    let _ = writer.wait();

    let read_counter = |name: &str, rp: u64| -> u64 {
        let file = pair.path(&format!("{name}-{rp}.raw"));
        rbd(
            "site-b",
            &[
                "export",
                &format!("rbd/{name}@ferry-rp-{rp}"),
                &file.display().to_string(),
            ],
        );
        let bytes = std::fs::read(&file).expect("exported image");
        u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"))
    };
    let mut progressed = false;
    for rp in points {
        let counters: Vec<u64> = names.iter().map(|n| read_counter(n, rp)).collect();
        assert!(
            counters[0] >= counters[1] && counters[1] >= counters[2],
            "recovery point {rp} holds a later write without an earlier one: {counters:?}"
        );
        assert!(
            counters[0] - counters[2] <= 1,
            "one round at most in flight: {counters:?}"
        );
        progressed |= counters[2] > 0;
    }
    assert!(progressed, "the writer never ran during the syncs");
    // The images are in ferry's RBD group while replicated; ending the
    // replication takes them out and removes the group.
    let group_of = |name: &str| {
        let info = rbd("site-a", &["info", &format!("rbd/{name}")]);
        String::from_utf8_lossy(&info.stdout)
            .lines()
            .find_map(|l| l.trim().strip_prefix("group: ").map(str::to_owned))
    };
    let group = group_of(names[0]).expect("the images are in ferry's RBD group");
    assert!(group.contains("ferry-"), "{group}");
    for name in &names {
        assert_eq!(group_of(name).as_deref(), Some(group.as_str()));
    }
}

#[test]
#[ignore = "needs the Ceph lab (FERRY_CEPH_LAB=1); scripts/test.sh runs it"]
fn lab_restore_recovery_point_into_a_new_image() {
    if !lab() {
        return;
    }
    let images = LabImages::new("rst", 1);
    let img = images.0[0].as_str();
    let mut pair = rbd_pair();
    rbd("site-a", &["create", &format!("rbd/{img}"), "--size", "32"]);
    scribble("site-a", img, 5, 100);
    let rp1 = sync_rbd(&pair, &[img], &[])["recovery_point"]
        .as_u64()
        .expect("rp");
    let at_rp1 = image_hash("site-a", &format!("rbd/{img}"), pair.tmp.path());
    scribble("site-a", img, 6, 100);
    sync_rbd(&pair, &[img], &[]);

    pair.standby.stop();
    let restored = format!("{img}-restored");
    let out = Command::new(bin("ferry-agent"))
        .args([
            "restore",
            "--dir",
            &standby_dir(&pair),
            img,
            "--rp",
            &rp1.to_string(),
            "--out",
            &restored,
        ])
        .output()
        .expect("ferry-agent restore");
    ok(&out, "ferry-agent restore");
    assert_eq!(
        image_hash("site-b", &format!("rbd/{restored}"), pair.tmp.path()),
        at_rp1
    );
    let info = String::from_utf8(rbd("site-b", &["info", &format!("rbd/{restored}")]).stdout)
        .expect("utf-8");
    assert!(
        !info.contains("parent:"),
        "restored image is standalone: {info}"
    );
    // An unknown recovery point is refused.
    let out = Command::new(bin("ferry-agent"))
        .args([
            "restore",
            "--dir",
            &standby_dir(&pair),
            img,
            "--rp",
            "1",
            "--out",
            "nope",
        ])
        .output()
        .expect("ferry-agent restore");
    assert!(!out.status.success());
}

#[test]
#[ignore = "needs the Ceph lab (FERRY_CEPH_LAB=1); scripts/test.sh runs it"]
fn lab_rbd_diff_streams_between_rbd_images_both_ways() {
    if !lab() {
        return;
    }
    let images = LabImages::new("dif", 3);
    let (src, via_ferry, via_rbd) = (&images.0[0], &images.0[1], &images.0[2]);
    let tmp = tempfile::tempdir().expect("tmp");
    rbd("site-a", &["create", &format!("rbd/{src}"), "--size", "24"]);
    scribble("site-a", src, 7, 60);
    rbd("site-a", &["snap", "create", &format!("rbd/{src}@s1")]);
    // Zero/discard records and growth between the snapshots.
    pyrbd("site-a", src, "img.discard(4 << 20, 4 << 20)\nimg.discard(0, 65536)\nimg.resize(40 << 20)\nimg.write(b'q' * 9000, 33 << 20)");
    rbd("site-a", &["snap", "create", &format!("rbd/{src}@s2")]);
    let ferry_bin = bin("ferry").display().to_string();
    for (from, to) in [(None, "s1"), (Some("s1"), "s2")] {
        // rbd export-diff | ferry import-diff rbd:
        let from_arg = from.map_or(String::new(), |f| format!("--from-snap {f}"));
        let sh = format!(
            "rbd --cluster site-a --no-progress export-diff {from_arg} rbd/{src}@{to} - | \
             {ferry_bin} import-diff --cluster site-b - rbd:rbd/{via_ferry}"
        );
        ok(
            &Command::new("sh").args(["-c", &sh]).output().expect("sh"),
            &sh,
        );
        // ferry export-diff rbd: | rbd import-diff
        let sh = format!(
            "{ferry_bin} export-diff --cluster site-a {from_arg} rbd:rbd/{src}@{to} - | \
             rbd --cluster site-b --no-progress import-diff - rbd/{via_rbd}"
        );
        if from.is_none() {
            rbd(
                "site-b",
                &["create", &format!("rbd/{via_rbd}"), "--size", "1"],
            );
        }
        ok(
            &Command::new("sh").args(["-c", &sh]).output().expect("sh"),
            &sh,
        );
        let want = image_hash("site-a", &format!("rbd/{src}@{to}"), tmp.path());
        for copy in [via_ferry, via_rbd] {
            assert_eq!(
                image_hash("site-b", &format!("rbd/{copy}@{to}"), tmp.path()),
                want,
                "{copy}@{to}"
            );
        }
    }
    // A truncated stream leaves the RBD target exactly as it was.
    pyrbd("site-a", src, "img.write(b'x' * (1 << 20), 1 << 20)");
    rbd("site-a", &["snap", "create", &format!("rbd/{src}@s3")]);
    let diff = tmp.path().join("s3.diff");
    rbd(
        "site-a",
        &[
            "export-diff",
            "--from-snap",
            "s2",
            &format!("rbd/{src}@s3"),
            &diff.display().to_string(),
        ],
    );
    let bytes = std::fs::read(&diff).expect("diff");
    let cut = tmp.path().join("cut.diff");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).expect("write");
    let before = image_hash("site-b", &format!("rbd/{via_ferry}"), tmp.path());
    let out = ferry(&[
        "import-diff",
        "--cluster",
        "site-b",
        &cut.display().to_string(),
        &format!("rbd:rbd/{via_ferry}"),
    ]);
    assert!(!out.status.success(), "a truncated diff must fail");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("left as it was"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        image_hash("site-b", &format!("rbd/{via_ferry}"), tmp.path()),
        before
    );
    let snaps =
        String::from_utf8(rbd("site-b", &["snap", "ls", &format!("rbd/{via_ferry}")]).stdout)
            .expect("utf-8");
    assert!(
        !snaps.contains("s3") && !snaps.contains("ferry-import-undo"),
        "{snaps}"
    );
}

#[test]
#[ignore = "needs the Ceph lab (FERRY_CEPH_LAB=1); scripts/test.sh runs it"]
fn lab_rbd_diff_of_an_image_larger_than_memory_streams_in_bounded_memory() {
    if !lab() {
        return;
    }
    let images = LabImages::new("big", 2);
    let (src, dst) = (&images.0[0], &images.0[1]);
    // 40 GiB (more than this machine's memory), thin: three written ranges.
    rbd(
        "site-a",
        &["create", &format!("rbd/{src}"), "--size", "40960"],
    );
    pyrbd(
        "site-a",
        src,
        "r = random.Random(9)\nfor off in (0, 17 << 30, (40 << 30) - (1 << 20)):\n    img.write(r.randbytes(1 << 20), off)",
    );
    rbd("site-a", &["snap", "create", &format!("rbd/{src}@s1")]);
    let tmp = tempfile::tempdir().expect("tmp");
    let rss = tmp.path().join("rss");
    let ferry_bin = bin("ferry").display().to_string();
    let sh = format!(
        "/usr/bin/time -f 'export-rss %M' -a -o {rss} {ferry_bin} export-diff --cluster site-a rbd:rbd/{src}@s1 - | \
         /usr/bin/time -f 'import-rss %M' -a -o {rss} {ferry_bin} import-diff --cluster site-b - rbd:rbd/{dst}",
        rss = rss.display()
    );
    ok(
        &Command::new("sh").args(["-c", &sh]).output().expect("sh"),
        &sh,
    );
    let text = std::fs::read_to_string(&rss).expect("rss file");
    for line in text.lines() {
        let kib: u64 = line
            .split_whitespace()
            .last()
            .and_then(|v| v.parse().ok())
            .expect("rss value");
        assert!(
            kib < 256 * 1024,
            "{line} KiB: memory must not grow with the image"
        );
    }
    assert_eq!(text.lines().count(), 2, "{text}");
    // Same size and the same bytes where data was written (and a hole where not).
    let read = |site: &str, image: &str| -> String {
        let file = tmp.path().join(format!("{site}-{image}.txt"));
        pyrbd(
            site,
            image,
            &format!(
                "import hashlib\nh = hashlib.sha256()\nh.update(str(img.size()).encode())\n\
                 for off in (0, 17 << 30, (40 << 30) - (1 << 20), 5 << 30):\n    h.update(img.read(off, 1 << 20))\n\
                 open('{}', 'w').write(h.hexdigest())",
                file.display()
            ),
        );
        std::fs::read_to_string(&file).expect("digest")
    };
    assert_eq!(read("site-a", src), read("site-b", dst));
}

/// Removing an image a killed client left behind, as the retry of an
/// interrupted failover or migration does: one whose creation stopped
/// before its header was written (listed but unopenable), and one a killed
/// writer still watches until the OSDs time the watch out. A CI run failed
/// a failover retry with EBUSY from `rbd_remove` on the second; a local
/// run left the first, which looked absent and then blocked the copy.
#[test]
#[ignore = "needs the Ceph lab (FERRY_CEPH_LAB=1); scripts/test.sh runs it"]
fn lab_removing_images_a_killed_client_left_half_made() {
    if !lab() {
        return;
    }
    use ferry_engine::rbd::standby::{RbdStandby, RbdStandbyConfig};
    use ferry_engine::rbd::ClusterSpec;
    let scratch = tempfile::tempdir().expect("temp dir");
    let store = RbdStandby::open(&RbdStandbyConfig {
        cluster: ClusterSpec {
            cluster: Some("site-b".into()),
            ..ClusterSpec::default()
        },
        pool: "rbd".into(),
        namespace: None,
        dir: scratch.path().join("rbd-standby"),
        state: Default::default(),
        retention: 2,
    })
    .expect("open the RBD standby");
    let tag = std::process::id();

    // Creation interrupted before the header: drop the header object of a
    // fresh image by hand.
    let opens = |name: &str| {
        Command::new("rbd")
            .args(["--cluster", "site-b", "info", &format!("rbd/{name}")])
            .output()
            .expect("rbd info")
            .status
            .success()
    };
    let behead = |name: &str| {
        rbd(
            "site-b",
            &["create", "--size", "4M", &format!("rbd/{name}")],
        );
        let info = rbd("site-b", &["info", &format!("rbd/{name}")]);
        let info = String::from_utf8_lossy(&info.stdout).into_owned();
        let id = info
            .lines()
            .find_map(|l| l.trim().strip_prefix("id: "))
            .expect("image id in rbd info")
            .to_owned();
        let out = Command::new("rados")
            .args(["--cluster", "site-b", "-p", "rbd", "rm"])
            .arg(format!("rbd_header.{id}"))
            .output()
            .expect("rados");
        ok(&out, "rados rm the header");
        assert!(!opens(name), "the header of {name} is gone");
    };
    let headless = format!("halfmade-{tag}");
    behead(&headless);
    assert!(
        store.volume_exists(&headless).expect("exists"),
        "a listed image without a header is in the way of a new one"
    );
    store
        .remove_volume(&headless)
        .expect("remove the headless image");
    assert!(!store.volume_exists(&headless).expect("exists"));
    // A standby image whose creation was interrupted: made again.
    let placeholder = format!("placeholder-{tag}");
    behead(&placeholder);
    let name = ferry_protocol::types::ImageName::new(placeholder.clone()).expect("name");
    store
        .create_placeholder(&name, 8 << 20)
        .expect("a placeholder over a headless image");
    assert!(opens(&placeholder), "the placeholder opens");
    store.remove_image(&name).expect("remove the placeholder");
    assert!(!store.volume_exists(&placeholder).expect("exists"));

    // A writer SIGKILLed with the image open: its watch outlives it.
    let watched = format!("watched-{tag}");
    let spec = format!("rbd/{watched}");
    rbd("site-b", &["create", "--size", "16M", &spec]);
    let mut writer = Command::new("rbd")
        .args(["--cluster", "site-b", "bench", "--io-type", "write"])
        .args(["--io-size", "4K", "--io-threads", "1", "--io-total", "100G"])
        .args(["--io-pattern", "rand", &spec])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("rbd bench");
    let watchers =
        || String::from_utf8_lossy(&rbd("site-b", &["status", &spec]).stdout).contains("watcher=");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !watchers() {
        assert!(Instant::now() < deadline, "rbd bench never opened {spec}");
        std::thread::sleep(Duration::from_millis(200));
    }
    writer.kill().expect("SIGKILL rbd bench");
    writer.wait().expect("reap rbd bench");
    assert!(watchers(), "the killed writer's watch outlives it");
    store
        .remove_volume(&watched)
        .expect("the removal waits out the dead watch");
    assert!(!store.volume_exists(&watched).expect("exists"));
}

/// The RBD group ferry keeps a multi-image capture's images in follows the
/// group's membership: adding an image moves the others into a new group
/// without a full copy of them (their diff base is a user snapshot), the
/// standby equals the sources at every point, `ferry verify` reads the
/// committed group snapshots, and the old group goes once nothing names its
/// snapshots.
#[test]
#[ignore = "needs the Ceph lab (FERRY_CEPH_LAB=1); scripts/test.sh runs it"]
fn lab_group_membership_change_stays_incremental_and_cleans_up() {
    if !lab() {
        return;
    }
    let images = LabImages::new("mem", 3);
    let names: Vec<&str> = images.0.iter().map(String::as_str).collect();
    let pair = rbd_pair();
    for (i, name) in names.iter().enumerate() {
        rbd(
            "site-a",
            &["create", &format!("rbd/{name}"), "--size", "32"],
        );
        scribble("site-a", name, 10 + i as u64, 80);
    }
    let group_of = |name: &str| {
        let info = rbd("site-a", &["info", &format!("rbd/{name}")]);
        String::from_utf8_lossy(&info.stdout)
            .lines()
            .find_map(|l| l.trim().strip_prefix("group: ").map(str::to_owned))
    };
    let groups = || {
        String::from_utf8_lossy(&rbd("site-a", &["group", "ls", "rbd"]).stdout)
            .lines()
            .filter(|l| l.starts_with("ferry-"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let check_points = |report: &serde_json::Value, members: &[&str]| {
        let rp = report["recovery_point"].as_u64().expect("rp");
        for name in members {
            assert_eq!(
                image_hash(
                    "site-b",
                    &format!("rbd/{name}@ferry-rp-{rp}"),
                    pair.tmp.path()
                ),
                image_hash("site-a", &format!("rbd/{name}"), pair.tmp.path()),
                "{name} at {rp}"
            );
            ok(&verify_rbd(&pair, name), "ferry verify");
        }
    };
    let base_epochs = |report: &serde_json::Value| -> Vec<u64> {
        report["images"]
            .as_array()
            .expect("images")
            .iter()
            .map(|i| i["base_epoch"].as_u64().expect("base_epoch"))
            .collect()
    };

    let two = &names[..2];
    let full = sync_rbd(&pair, two, &[]);
    check_points(&full, two);
    for name in two {
        scribble("site-a", name, 20, 10);
    }
    let inc = sync_rbd(&pair, two, &[]);
    assert!(base_epochs(&inc).iter().all(|&e| e > 0), "{inc}");
    check_points(&inc, two);
    let first_group = group_of(two[0]).expect("in ferry's group");
    assert_eq!(group_of(two[1]).as_deref(), Some(first_group.as_str()));
    // Only this replication's newest group snapshot and the one before it.
    let group_snaps = rbd("site-a", &["group", "snap", "ls", &first_group]);
    let group_snaps = String::from_utf8_lossy(&group_snaps.stdout).into_owned();
    assert!(
        (1..=2).contains(&group_snaps.matches("ferry.").count()),
        "{group_snaps}"
    );

    // A third image joins: a new group; the first two stay incremental.
    for name in two {
        scribble("site-a", name, 30, 10);
    }
    let joined = sync_rbd(&pair, &names, &[]);
    assert!(
        base_epochs(&joined)[..2].iter().all(|&e| e > 0),
        "moving to a new group must not cost a full copy: {joined}"
    );
    check_points(&joined, &names);
    let second_group = group_of(names[0]).expect("in ferry's group");
    assert_ne!(second_group, first_group);
    for name in &names {
        assert_eq!(group_of(name).as_deref(), Some(second_group.as_str()));
    }
    // The next capture finds nothing naming the old group's snapshots.
    let again = sync_rbd(&pair, &names, &[]);
    check_points(&again, &names);
    let left = groups();
    let old = first_group.trim_start_matches("rbd/");
    assert!(!left.iter().any(|g| g == old), "{left:?}");
    assert_eq!(
        left.iter().filter(|g| second_group.ends_with(*g)).count(),
        1,
        "{left:?}"
    );

    // One image synced on its own leaves the group.
    let alone = sync_rbd(&pair, &names[..1], &[]);
    check_points(&alone, &names[..1]);
    assert_eq!(group_of(names[0]), None);

    // An image in the operator's own RBD group: replicated alone as it is;
    // refused, with the way out, in a multi-image capture.
    let theirs = format!("rbd/opgrp-{}", std::process::id());
    rbd("site-a", &["group", "create", &theirs]);
    let spec0 = format!("rbd/{}", names[0]);
    rbd("site-a", &["group", "image", "add", &theirs, &spec0]);
    let alone = sync_rbd(&pair, &names[..1], &[]);
    check_points(&alone, &names[..1]);
    assert_eq!(group_of(names[0]).as_deref(), Some(theirs.as_str()));
    let ferry_groups = groups();
    let mut args = vec![
        "sync".to_owned(),
        "--dir".to_owned(),
        pair.primary_dir.display().to_string(),
    ];
    for name in &names[..2] {
        args.push(format!("rbd:rbd/{name}"));
        args.push(pair.standby.target(name));
    }
    args.extend(["--peer".to_owned(), pair.standby.fingerprint.clone()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let refused = ferry(&refs);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&refused.stdout),
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(
        !refused.status.success() && said.contains("which ferry did not make"),
        "{said}"
    );
    assert_eq!(group_of(names[0]).as_deref(), Some(theirs.as_str()));
    assert_eq!(groups(), ferry_groups, "nothing made for a refused capture");
    rbd("site-a", &["group", "image", "remove", &theirs, &spec0]);
    rbd("site-a", &["group", "rm", &theirs]);
}
