//! Prerequisites of tests (the Ceph lab, root and loop devices,
//! systemd-analyze): a missing one fails the test in CI or with
//! `FERRY_REQUIRE_ALL=1`, and is reported as a skip elsewhere.

/// Whether the prerequisite `what` is present. Missing: with `CI` set or
/// `FERRY_REQUIRE_ALL=1`, panics naming it; otherwise prints `skipped:` and
/// returns false.
pub fn require(present: bool, what: &str) -> bool {
    if present {
        return true;
    }
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty());
    let all = std::env::var("FERRY_REQUIRE_ALL").as_deref() == Ok("1");
    assert!(
        !(ci || all),
        "missing prerequisite: {what} (CI / FERRY_REQUIRE_ALL=1 require it; scripts/test.sh installs and starts what it can)"
    );
    println!("skipped: {what}");
    false
}
