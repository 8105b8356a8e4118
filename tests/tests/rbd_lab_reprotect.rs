//! Re-protect and fail-back of RBD volumes against the two-site Ceph lab
//! (`#[ignore]`d; `FERRY_CEPH_LAB=1`, as `scripts/test.sh` runs them): real
//! agents, both with an RBD standby backend (site-a the primary, site-b
//! its standby), driven through the `ferry` CLI.
//!
//! After a failover to the latest point with the primary SIGKILLed, site-b
//! writes 64 MiB and site-a 32 MiB (split brain); `group reprotect` on
//! site-b makes site-a's images the standby copies (clones of their
//! snapshot of the common point) and sends at most 1.2 × the blocks
//! changed on either side (UDP bytes from site-b's metrics); site-a's copies
//! then hash like site-b's volumes, its old images keep the split-brain
//! writes (head and `ferry-splitbrain-op*` snapshot), and a planned
//! migration fails back home.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use ferry_e2e::cli::ok;
use ferry_e2e::lab::{self, export_hash, pyrbd, rbd, Cleanup};
use ferry_e2e::sites::{succeeded, udp_sent, wait_for, Sites};

const MIB: u64 = 1024 * 1024;
const BLOCK: u64 = 4096;
const PIECE: u64 = 64 * 1024;

/// Both agents with an RBD standby in their site's pool `rbd` and metrics.
fn paired() -> Sites {
    let config = |site: &str| {
        format!(
            "[standby]\nbackend = \"rbd\"\nrbd_pool = \"rbd\"\n[ceph]\ncluster = \"{site}\"\n\
             [metrics]\nlisten = \"127.0.0.1:0\"\n"
        )
    };
    Sites::paired_with(Some(&config("site-a")), Some(&config("site-b")))
}

/// Writes `count` pieces of 64 KiB of seeded random data at seeded 4 KiB
/// aligned places of `site`'s `rbd/IMAGE`; returns the 4 KiB blocks hit.
fn scatter(site: &str, image: &str, size: u64, seed: u64, count: usize) -> BTreeSet<u64> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut offsets = Vec::with_capacity(count);
    let mut blocks = BTreeSet::new();
    for _ in 0..count {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let at = x % ((size - PIECE) / BLOCK) * BLOCK;
        offsets.push(at.to_string());
        blocks.extend(at / BLOCK..(at + PIECE) / BLOCK);
    }
    pyrbd(
        site,
        image,
        &format!(
            "r = random.Random({seed})\n\
             for off in [{}]:\n\
             \x20   img.write(r.randbytes({PIECE}), off)",
            offsets.join(",")
        ),
    );
    blocks
}

/// Split brain: 64 MiB written on the new primary (site-b's `targets`),
/// 32 MiB on the old one (site-a's `images`). Returns the bytes of the
/// blocks changed on either side, and the hash of each old image after.
fn split_brain(
    scratch: &Path,
    images: &[String],
    targets: &[String],
    size: u64,
) -> (u64, Vec<String>) {
    let mut changed = 0u64;
    let mut kept = Vec::new();
    for i in 0..3 {
        let mut hit = scatter(
            "site-b",
            &targets[i],
            size,
            10 + i as u64,
            [342, 341, 341][i],
        );
        hit.extend(scatter(
            "site-a",
            &images[i],
            size,
            20 + i as u64,
            [171, 171, 170][i],
        ));
        changed += hit.len() as u64 * BLOCK;
        kept.push(export_hash(
            scratch,
            "site-a",
            &format!("rbd/{}", images[i]),
        ));
    }
    (changed, kept)
}

#[test]
#[ignore = "needs the Ceph lab (FERRY_CEPH_LAB=1); scripts/test.sh runs it"]
fn lab_rbd_reprotect_sends_only_the_differences_keeps_the_split_brain_writes_and_fails_back() {
    if !lab::enabled() {
        return;
    }
    let tag = format!("rpt{}", std::process::id());
    let _cleanup = Cleanup {
        mark: tag.clone(),
        parents: "ferry-t-".into(),
    };
    let mut s = paired();
    let (a, b) = (s.a.dir.clone(), s.b.dir.clone());
    let scratch = s.tmp.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let size = 256 * MIB;
    let images: Vec<String> = (0..3).map(|i| format!("ferry-t-{tag}-{i}")).collect();
    for (i, image) in images.iter().enumerate() {
        rbd(
            "site-a",
            &["create", "--size", "256", &format!("rbd/{image}")],
        );
        scatter("site-a", image, size, 1 + i as u64, 128);
    }
    ok(&a, &["group", "create", "g1", "--wait"]);
    let uris: Vec<String> = images.iter().map(|i| format!("rbd:rbd/{i}")).collect();
    let mut add = vec!["group", "add", "g1"];
    add.extend(uris.iter().map(String::as_str));
    add.push("--wait");
    ok(&a, &add);
    ok(&a, &["group", "start", "g1", "--wait"]);
    succeeded(&ok(&a, &["rp", "create", "g1", "--name", "r1", "--wait"]));
    let targets: Vec<String> = ok(&b, &["group", "show", "g1"])["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["standby_target"].as_str().unwrap().to_owned())
        .collect();
    s.a.kill9();
    succeeded(&ok(&b, &["group", "failover", "g1", "--wait"]));
    let (changed, kept) = split_brain(&scratch, &images, &targets, size);
    let snaps_of = |image: &str| {
        String::from_utf8_lossy(&rbd("site-a", &["snap", "ls", &format!("rbd/{image}")]).stdout)
            .to_string()
    };
    let snaps_before: Vec<String> = images.iter().map(|i| snaps_of(i)).collect();
    s.a.restart(&[]);
    // The returning old primary's loop asks the standby before it captures
    // anything, hears that the group failed over there, and snapshots
    // nothing (the state table already refuses its replication).
    wait_for(
        "the old primary's loop to hear of the failover",
        Duration::from_secs(60),
        || s.a.log_text().contains("takes no more replication"),
    );
    for (i, image) in images.iter().enumerate() {
        assert_eq!(
            snaps_of(image),
            snaps_before[i],
            "the returning old primary snapshotted {image}"
        );
    }
    let before = udp_sent(&b);
    succeeded(&ok(&b, &["group", "reprotect", "g1", "--wait"]));
    let udp = udp_sent(&b) - before;
    println!(
        "rbd reprotect: {:.1} MiB changed on either side, {:.1} MiB UDP ({:.2} x)",
        changed as f64 / MIB as f64,
        udp / MIB as f64,
        udp / changed as f64
    );
    assert!(udp > 0.0, "the new primary sent nothing");
    // The first cycle's capture was taken ahead (with the old primary's
    // install): the sender looked at each image's listing before the
    // transfer, and the cycle started from that listing.
    assert!(
        s.b.log_text().contains("listed_ahead=true"),
        "no RBD cycle started from a listing made ahead"
    );
    assert!(
        udp <= 1.2 * changed as f64,
        "reprotect sent {udp} bytes for {changed} bytes changed on either side"
    );
    for i in 0..3 {
        let volume = export_hash(&scratch, "site-b", &format!("rbd/{}", targets[i]));
        let copy = export_hash(&scratch, "site-a", &format!("rbd/{}", targets[i]));
        assert_eq!(copy, volume, "site-a's copy {} differs", targets[i]);
        // The old image is untouched and its split-brain snapshot holds
        // the same.
        let old = format!("rbd/{}", images[i]);
        assert_eq!(
            export_hash(&scratch, "site-a", &old),
            kept[i],
            "{old} changed"
        );
        let snaps =
            String::from_utf8_lossy(&rbd("site-a", &["snap", "ls", &old]).stdout).to_string();
        let keep = snaps
            .split_whitespace()
            .find(|w| w.starts_with("ferry-splitbrain-op"))
            .unwrap_or_else(|| panic!("no split-brain snapshot on {old}:\n{snaps}"))
            .to_owned();
        assert_eq!(
            export_hash(&scratch, "site-a", &format!("{old}@{keep}")),
            kept[i]
        );
    }
    let ga = ok(&a, &["group", "show", "g1"])["group"].clone();
    assert_eq!(
        (ga["role"].as_str(), ga["state"].as_str()),
        (Some("standby"), Some("syncing")),
        "{ga}"
    );
    // Fail back home by planned migration (the volumes quiesced).
    let want: Vec<String> = targets
        .iter()
        .map(|t| export_hash(&scratch, "site-b", &format!("rbd/{t}")))
        .collect();
    succeeded(&ok(&b, &["group", "migrate", "g1", "--wait"]));
    let home = ok(&a, &["group", "show", "g1"]);
    assert_eq!(home["group"]["role"], "primary", "{home}");
    for r in home["resources"].as_array().unwrap() {
        let uri = r["uri"].as_str().unwrap();
        let spec = uri.strip_prefix("rbd:").unwrap();
        let i = targets
            .iter()
            .position(|t| t == r["standby_target"].as_str().unwrap())
            .unwrap();
        assert_eq!(
            export_hash(&scratch, "site-a", spec),
            want[i],
            "{uri} after fail-back"
        );
    }
    assert_eq!(ok(&b, &["group", "show", "g1"])["group"]["role"], "standby");
}
