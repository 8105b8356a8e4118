//! Changes at rest in a source: blocks that differ from the last recovery
//! point although nothing wrote the device since (its kernel write and
//! discard counters are unchanged). Here a loop device's backing file is
//! written directly, as media corruption or a write that bypassed the
//! device would change it. `ferry sync` must refuse such a cycle (the
//! standby keeps its good copy, a retry refuses again), replicate ordinary
//! writes through the device as usual, and replicate the change only when
//! the operator accepts it; a buffered write not yet written back (the
//! counters have not moved) is an ordinary change.
//!
//! Needs root and loop devices (`losetup`): `#[ignore]`d for a plain
//! `cargo test`, run by `scripts/test.sh` (`--include-ignored`). Under CI or
//! `FERRY_REQUIRE_ALL=1` a machine without loop devices fails the test
//! (`ferry_e2e::prereq::require`) instead of passing it untested.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Output;

use ferry_agent::imagegen;
use ferry_e2e::loopdev::LoopDevice;
use ferry_e2e::prereq::{loop_devices_usable, require};
use ferry_e2e::{ferry, hash_file, Pair};

const MIB: u64 = 1024 * 1024;

fn write_at(path: &Path, offset: u64, bytes: &[u8]) {
    let f = OpenOptions::new().write(true).open(path).expect("open");
    f.write_all_at(bytes, offset).expect("write");
    f.sync_all().expect("fsync");
}

fn sync(pair: &Pair, device: &Path, extra: &[&str]) -> Output {
    let dir = pair.primary_dir.display().to_string();
    let source = format!("file:{}", device.display());
    let target = pair.standby.target("disk");
    let mut args = vec![
        "sync",
        "--dir",
        &dir,
        &source,
        &target,
        "--peer",
        &pair.standby.fingerprint,
    ];
    args.extend_from_slice(extra);
    ferry(&args)
}

fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[ignore = "needs root and loop devices; scripts/test.sh runs it"]
fn change_at_rest_is_refused_until_accepted() {
    if !require(
        loop_devices_usable(),
        "root and a free loop device (`losetup --find` as root; in a container, \
         access to /dev/loop-control and /dev/loop*)",
    ) {
        return;
    }
    let pair = Pair::new(None);
    let backing = pair.path("disk.img");
    imagegen::make_image(&backing, 8 * MIB, 31).expect("image");
    let device =
        LoopDevice::attach(&backing).expect("attaching a loop device (losetup found one free)");
    let standby = pair.standby.image_path("disk");

    assert_ok(&sync(&pair, &device.0, &[]), "full sync");
    assert_eq!(hash_file(&standby), hash_file(&backing));

    // An ordinary write through the device replicates as usual.
    write_at(&device.0, 64 * 1024, &[0xab; 4096]);
    assert_ok(&sync(&pair, &device.0, &[]), "sync of a written block");
    device.flush_buffers();
    assert_eq!(hash_file(&standby), hash_file(&backing));
    let good = hash_file(&standby);

    // A change that bypasses the device: its counters do not move.
    write_at(&backing, MIB, &[0x5a; 4096]);
    device.flush_buffers();
    for attempt in ["first", "second"] {
        let out = sync(&pair, &device.0, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{attempt} sync replicated a change at rest:\n{stderr}"
        );
        assert!(
            stderr.contains("changed at rest") && stderr.contains("offset 1048576"),
            "{attempt} refusal does not say what and where:\n{stderr}"
        );
        assert_eq!(
            hash_file(&standby),
            good,
            "the standby's copy changed after the {attempt} refusal"
        );
    }

    // Accepted by the operator: replicated.
    assert_ok(
        &sync(&pair, &device.0, &["--accept-changes-at-rest"]),
        "accepted sync",
    );
    assert_eq!(hash_file(&standby), hash_file(&backing));
    // And the next quiet cycle is an ordinary one again.
    assert_ok(&sync(&pair, &device.0, &[]), "sync after acceptance");

    // A buffered write still in the device's page cache (no fsync, and the
    // writer keeps the device open: its last close would write it back; the
    // counters have not moved yet) is an ordinary change, not one at rest.
    let writer = OpenOptions::new()
        .write(true)
        .open(&device.0)
        .expect("open device");
    writer.write_all_at(&[0x77; 8192], 2 * MIB).expect("write");
    assert_ok(&sync(&pair, &device.0, &[]), "sync of a buffered write");
    assert_eq!(hash_file(&standby), hash_file(&device.0));
    drop(writer);
}
