//! A `ferry sync` process SIGKILLed mid-transfer, then run again: the new
//! process must resume where the standby durably is and succeed on the first
//! try, leaving the standby equal to the source by hash — for a full copy
//! (standby staging file, high-water mark) and for an incremental epoch
//! (standby journal). And a `ferry sync` killed right after sending its
//! Commit, while the standby is still applying it: the next sync must record
//! that the standby committed the epoch (roll the source forward) instead of
//! being refused with "epoch N is not newer than committed epoch N".

use std::path::Path;
use std::time::{Duration, Instant};

use ferry_e2e::{hash_file, standby_journals, sync_json, sync_spawn, Pair};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

const MIB: u64 = 1024 * 1024;

/// Writes `size` bytes of incompressible data (so `--bwlimit` really slows
/// the transfer down).
fn random_image(path: &Path, size: u64, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut data = vec![0u8; size as usize];
    rng.fill_bytes(&mut data);
    std::fs::write(path, data).unwrap();
}

/// Starts a slow sync, waits until the standby's pending journal has
/// recorded several batches, SIGKILLs the sync, then syncs again: that
/// second sync must succeed at once, resume above 0 and leave the standby
/// equal to the source.
fn kill_mid_transfer_then_resync(pair: &Pair, image: &Path, name: &str) {
    kill_mid_transfer(pair, image, name);
    let report = sync_json(
        &pair.primary_dir,
        image,
        &pair.standby.target(name),
        &pair.standby.fingerprint,
        &[],
    );
    assert!(
        report["resumed_at"].as_u64().unwrap() > 0,
        "the second sync did not resume the interrupted epoch: {report}"
    );
    assert_eq!(
        hash_file(image),
        hash_file(&pair.standby.image_path(name)),
        "standby differs from the source after the resumed sync"
    );
}

/// Starts a slow sync and SIGKILLs it once the standby holds several of its
/// batches durably.
fn kill_mid_transfer(pair: &Pair, image: &Path, name: &str) {
    let target = pair.standby.target(name);
    let mut child = sync_spawn(
        &pair.primary_dir,
        image,
        &target,
        &pair.standby.fingerprint,
        &["--bwlimit", "8M"],
    );
    // Batches durable on the standby (the journal's open record is 64
    // bytes, each batch record at least 57), well before the end of the
    // 48 MiB image.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let len: u64 = standby_journals(&pair.standby.dir)
            .iter()
            .filter_map(|j| std::fs::metadata(j).ok())
            .map(|m| m.len())
            .sum();
        if len > 64 + 57 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the slow sync ended before the standby recorded a batch"
        );
        assert!(Instant::now() < deadline, "no batch reached the standby");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the slow sync ended before it could be killed"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn primary_killed_mid_full_copy_resumes_at_the_standby_offset() {
    let pair = Pair::new(None);
    let image = pair.path("full.raw");
    random_image(&image, 48 * MIB, 1);
    kill_mid_transfer_then_resync(&pair, &image, "full");
}

#[test]
fn primary_killed_mid_incremental_resumes_at_the_standby_offset() {
    let pair = Pair::new(None);
    let image = pair.path("incr.raw");
    random_image(&image, 48 * MIB, 2);
    let target = pair.standby.target("incr");
    sync_json(
        &pair.primary_dir,
        &image,
        &target,
        &pair.standby.fingerprint,
        &[],
    );
    // Every block changes: the incremental epoch sends the whole image.
    random_image(&image, 48 * MIB, 3);
    kill_mid_transfer_then_resync(&pair, &image, "incr");
}

/// A source whose durable progress record lags what the standby holds (as
/// a version that synced it only every 256 MiB left it) cannot resume where
/// the standby is: the sync starts the epoch again under the next number
/// instead of resuming lower and being refused.
#[test]
fn a_lagging_source_progress_record_restarts_the_epoch() {
    let pair = Pair::new(None);
    let image = pair.path("lag.raw");
    random_image(&image, 48 * MIB, 7);
    kill_mid_transfer(&pair, &image, "lag");
    let mut states = Vec::new();
    let mut dirs = vec![pair.primary_dir.join("sources")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.file_name().is_some_and(|n| n == "state.json") {
                states.push(path);
            }
        }
    }
    assert_eq!(states.len(), 1, "{states:?}");
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&states[0]).unwrap()).unwrap();
    assert_eq!(state["in_progress"]["epoch"], 1, "{state}");
    state["in_progress"]["durable_offset"] = 0.into();
    std::fs::write(&states[0], serde_json::to_vec(&state).unwrap()).unwrap();

    let report = sync_json(
        &pair.primary_dir,
        &image,
        &pair.standby.target("lag"),
        &pair.standby.fingerprint,
        &[],
    );
    assert_eq!(report["resumed_at"], 0, "{report}");
    assert_eq!(report["epoch"], 2, "{report}");
    assert_eq!(
        hash_file(&image),
        hash_file(&pair.standby.image_path("lag")),
        "standby differs from the source"
    );
}

/// The standby is held (fail point) right after the commit intent of a
/// sync's recovery point is durable; the sync is SIGKILLed there, so its
/// source never records the commit. The next sync, started while the
/// standby still applies that commit, must roll the source forward and
/// succeed on its first try.
#[cfg(feature = "failpoints")]
#[test]
fn primary_killed_after_sending_commit_rolls_forward() {
    let mut pair = Pair::new(None);
    let image = pair.path("rp.raw");
    random_image(&image, 8 * MIB, 4);
    let target = pair.standby.target("rp");
    sync_json(
        &pair.primary_dir,
        &image,
        &target,
        &pair.standby.fingerprint,
        &[],
    );
    ferry_agent::imagegen::scattered_writes(&image, 100, 5).unwrap();
    let held = hash_file(&image);
    pair.standby
        .restart(&[("FAILPOINTS", "standby::after-intent=sleep(4000)")]);
    let mut child = sync_spawn(
        &pair.primary_dir,
        &image,
        &target,
        &pair.standby.fingerprint,
        &[],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !pair
        .standby
        .log_text()
        .contains("point=\"standby::after-intent\"")
    {
        assert!(
            Instant::now() < deadline,
            "the standby never reached the commit intent:\n{}",
            pair.standby.log_text()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // Changes after the killed sync's scan: the next point must carry them.
    ferry_agent::imagegen::scattered_writes(&image, 50, 6).unwrap();
    assert_ne!(hash_file(&image), held);
    let report = sync_json(
        &pair.primary_dir,
        &image,
        &target,
        &pair.standby.fingerprint,
        &[],
    );
    assert_eq!(report["resumed_at"], 0, "{report}");
    assert_eq!(
        hash_file(&image),
        hash_file(&pair.standby.image_path("rp")),
        "standby differs from the source after the rolled-forward sync"
    );
    // The killed sync's point (epoch 2) was committed by the standby and is
    // the base of this one: an incremental epoch 3, not a full copy.
    assert_eq!(report["epoch"], 3, "{report}");
    assert_eq!(report["base_epoch"], 2, "{report}");
}
