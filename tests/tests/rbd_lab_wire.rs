//! What an RBD incremental puts on the wire around bridged gaps (the two-site
//! Ceph lab, `FERRY_CEPH_LAB=1`; `#[ignore]`d for a plain `cargo test`):
//! changed extents of one object closer than `[ceph] coalesce_gap` are read
//! as one request and, while the link is not the bottleneck, sent whole; a
//! sync whose link is the bottleneck (here: a send limit, which starts the
//! sender's link-bound signal on) sends only the changed extents. Both
//! standby copies equal the source. Real agents, real QUIC, real librbd.

use ferry_e2e::lab::{self, assert_ok, export_hash, pyrbd, rbd, Cleanup};
use ferry_e2e::{ferry, Pair};
use serde_json::Value;

const STANDBY_RBD: &str =
    "[standby]\nbackend = \"rbd\"\nrbd_pool = \"rbd\"\n[ceph]\ncluster = \"site-b\"\n";

/// Pairs of 4 KiB writes 8 KiB apart (bridged by a 16 KiB gap), the pairs
/// 64 KiB apart (not bridged), all in the image's first object.
const PAIRS: u64 = 8;
const LISTED: u64 = PAIRS * 2 * 4096;
const BRIDGED: u64 = PAIRS * 8192;

/// Writes the pairs with data from `seed`.
fn write_pairs(image: &str, seed: u64) {
    pyrbd(
        "site-a",
        image,
        &format!(
            "r = random.Random({seed})\n\
             for k in range({PAIRS}):\n\
             \x20   img.write(r.randbytes(4096), k * 65536)\n\
             \x20   img.write(r.randbytes(4096), k * 65536 + 12288)"
        ),
    );
}

/// `ferry sync` of `image` with the primary's `config`; its JSON report.
fn sync(pair: &Pair, image: &str, config: &str) -> Value {
    std::fs::write(pair.primary_dir.join("config.toml"), config).expect("primary config");
    let out = ferry(&[
        "sync",
        "--dir",
        &pair.primary_dir.display().to_string(),
        &format!("rbd:rbd/{image}"),
        &pair.standby.target(image),
        "--peer",
        &pair.standby.fingerprint,
        "--json",
    ]);
    assert_ok(&out, "ferry sync");
    serde_json::from_slice(&out.stdout).expect("sync --json prints JSON")
}

/// The standby's copy at the report's recovery point equals the source now.
fn assert_standby_equals_source(pair: &Pair, image: &str, report: &Value) {
    let rp = report["recovery_point"].as_u64().expect("recovery_point");
    let scratch = pair.tmp.path();
    assert_eq!(
        export_hash(scratch, "site-b", &format!("rbd/{image}@ferry-rp-{rp}")),
        export_hash(scratch, "site-a", &format!("rbd/{image}")),
        "standby copy at rp {rp} differs from the source"
    );
}

#[test]
#[ignore = "needs the Ceph lab (FERRY_CEPH_LAB=1); scripts/test.sh runs it"]
fn lab_a_link_bound_incremental_sends_only_the_changed_extents_of_a_bridged_read() {
    if !lab::enabled() {
        return;
    }
    let image = format!("ferry-t-wire{}", std::process::id());
    let _cleanup = Cleanup {
        mark: image.clone(),
        parents: image.clone(),
    };
    rbd(
        "site-a",
        &["create", "--size", "8", &format!("rbd/{image}")],
    );
    // The first object exists in every base, so the diff lists exact extents.
    pyrbd(
        "site-a",
        &image,
        "img.write(random.Random(1).randbytes(4 << 20), 0)",
    );
    let pair = Pair::new(Some(STANDBY_RBD));
    let gap = "[ceph]\ncluster = \"site-a\"\ncoalesce_gap = \"16KiB\"\n";
    let full = sync(&pair, &image, gap);
    assert_eq!(full["base_epoch"], 0, "{full}");

    // Link not the bottleneck (no limit; the reads complete before the
    // first send, so before any measurement): each pair is one read and one
    // extent, gap included.
    write_pairs(&image, 2);
    let free = sync(&pair, &image, gap);
    assert_ne!(free["base_epoch"], 0, "{free}");
    assert_eq!(
        free["bytes_plain_data"].as_u64(),
        Some(LISTED + BRIDGED),
        "{free}"
    );
    assert_standby_equals_source(&pair, &image, &free);

    // A send limit starts the link-bound signal on (the sender measures
    // from there): the same reads, but only the listed bytes are sent.
    write_pairs(&image, 3);
    let limited = format!("{gap}[qos]\nsend_limit = \"64KB/s\"\n");
    let bound = sync(&pair, &image, &limited);
    assert_eq!(bound["bytes_plain_data"].as_u64(), Some(LISTED), "{bound}");
    assert_eq!(bound["bytes_changed"].as_u64(), Some(LISTED), "{bound}");
    assert_standby_equals_source(&pair, &image, &bound);
    assert_eq!(
        ferry(&[
            "verify",
            "--dir",
            &pair.primary_dir.display().to_string(),
            &format!("rbd:rbd/{image}"),
            &pair.standby.target(&image),
            "--peer",
            &pair.standby.fingerprint,
        ])
        .status
        .code(),
        Some(0),
        "ferry verify after the link-bound incremental"
    );
}
