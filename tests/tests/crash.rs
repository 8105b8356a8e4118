//! The standby agent SIGKILLed in the middle of applying a recovery point:
//! a fail point holds the real agent process at a named step of the commit
//! protocol, the test kills it there with SIGKILL, restarts it, and checks
//! that the standby is exactly at a committed recovery point and that the
//! interrupted sync completes. Needs the `failpoints` feature
//! (scripts/test.sh enables it).
#![cfg(feature = "failpoints")]

use ferry_agent::imagegen;
use ferry_e2e::landing::reached_line;
use ferry_e2e::{ferry_spawn, hash_file, sync_json, Pair};

const MIB: u64 = 1024 * 1024;

/// Kills the standby at `point` during the commit of the sync after
/// `prepare` changed the image (`full`: the first, full sync).
fn kill_at(point: &str, full: bool) {
    let mut pair = Pair::new(None);
    std::fs::write(
        pair.primary_dir.join("config.toml"),
        "[transport]\nidle_timeout_secs = 2\n",
    )
    .unwrap();
    let image = pair.path("vm.raw");
    imagegen::make_image(&image, 48 * MIB, 71).unwrap();
    let target = pair.standby.target("vm");
    let before = if full {
        None
    } else {
        sync_json(
            &pair.primary_dir,
            &image,
            &target,
            &pair.standby.fingerprint,
            &[],
        );
        let h = hash_file(&image);
        assert_eq!(h, hash_file(&pair.standby.image_path("vm")));
        imagegen::scattered_writes(&image, 3000, 72).unwrap();
        Some(h)
    };
    let after = hash_file(&image);
    let failpoints = format!("{point}=sleep(20000)");
    pair.standby.restart(&[("FAILPOINTS", failpoints.as_str())]);

    let src = format!("file:{}", image.display());
    let dir = pair.primary_dir.display().to_string();
    let sync = ferry_spawn(&[
        "sync",
        "--dir",
        &dir,
        &src,
        &target,
        "--peer",
        &pair.standby.fingerprint,
        "--json",
    ]);
    pair.standby.wait_for_log(&reached_line(point));
    pair.standby.kill9();
    pair.standby.restart(&[]);

    // Right after restart the image is at a committed recovery point: the
    // old one or the new one, never a mix.
    let now = hash_file(&pair.standby.image_path("vm"));
    let committed: Vec<&String> = before.iter().chain(std::iter::once(&after)).collect();
    assert!(
        committed.contains(&&now),
        "standby is torn after SIGKILL at {point}"
    );

    // The interrupted sync reconnects and completes.
    let out = sync.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "sync interrupted at {point} did not complete:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(hash_file(&pair.standby.image_path("vm")), after);
    // And the next cycle works normally.
    imagegen::scattered_writes(&image, 100, 73).unwrap();
    sync_json(
        &pair.primary_dir,
        &image,
        &target,
        &pair.standby.fingerprint,
        &[],
    );
    assert_eq!(hash_file(&pair.standby.image_path("vm")), hash_file(&image));
}

#[test]
fn sigkill_after_undo_log_before_apply() {
    kill_at("standby::after-undo-written", false);
}

#[test]
fn sigkill_mid_apply_before_fsync() {
    kill_at("standby::after-data-before-sync", false);
}

#[test]
fn sigkill_after_apply_before_state_update() {
    kill_at("standby::after-data-before-state", false);
}

#[test]
fn sigkill_between_renames_of_a_full_sync() {
    kill_at("standby::after-full-rename-old", true);
}
