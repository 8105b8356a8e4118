//! Prerequisites of tests that need something outside the workspace (the
//! two-site Ceph lab, root and loop devices, `systemd-analyze`), checked so
//! that a missing one is never reported as a pass where it matters.
//!
//! Such tests are `#[ignore = "needs …; scripts/test.sh runs it"]`, so a
//! plain `cargo test` lists them as ignored instead of "ok", and call
//! [`require`] first. `scripts/test.sh` runs them (`--include-ignored`) with
//! `FERRY_REQUIRE_ALL=1`; there, and wherever `CI` is set, a missing
//! prerequisite fails the test. Elsewhere (a developer running an ignored
//! test by hand) it prints `skipped: …` and the test returns.

use std::process::Command;

/// Whether a missing prerequisite must fail the test: `CI` set (non-empty)
/// or `FERRY_REQUIRE_ALL=1`.
pub fn strict() -> bool {
    let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty());
    ci || std::env::var("FERRY_REQUIRE_ALL").as_deref() == Ok("1")
}

/// `true` when the prerequisite `what` is `present`. When it is missing:
/// panics with "missing prerequisite: {what}" under CI or
/// `FERRY_REQUIRE_ALL=1`, else prints `skipped: {what}` and returns
/// `false` (the caller returns). `what` should say how to get it.
pub fn require(present: bool, what: &str) -> bool {
    if present {
        return true;
    }
    if strict() {
        panic!(
            "missing prerequisite: {what}\n(CI or FERRY_REQUIRE_ALL=1 is set, so a missing \
             prerequisite fails instead of skipping: provide it; scripts/test.sh installs the \
             packages and starts the Ceph lab, FERRY_SKIP_CEPH=1 leaves out the lab tests)"
        );
    }
    println!("skipped: {what}");
    false
}

/// Whether `tool` is on `PATH`.
pub fn tool_present(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Whether loop devices can be attached here: running as root, with
/// `losetup` and a free loop device (`losetup --find` answers one).
pub fn loop_devices_usable() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "0");
    let free = Command::new("losetup")
        .arg("--find")
        .output()
        .is_ok_and(|o| o.status.success() && !o.stdout.is_empty());
    root && free
}
