//! The web console in a real browser: Debian's headless chromium driven
//! through WebDriver (`ferry_e2e::browser`), against two real agents with
//! `[console] enabled = true`, one browser per site as two operators would
//! have. Every step of the README's walk-through is done through the pages
//! only: pairing (the standby issues its key, the primary pairs with it),
//! creating a group, adding two file volumes, starting sync until both
//! volumes show synced, a named recovery point seen on the standby's
//! console, a restore on the standby, a policy bound and unbound, a refused
//! start sync rendered with the state table's reason, a read-only session
//! without actions, and a failover clicked on the standby's console with the
//! primary agent killed. Every page is screenshotted (`FERRY_SCREENSHOT_DIR`;
//! `docs/console/` holds one committed set) and checked for accessibility.
//!
//! Needs Debian's `chromium` and `chromium-driver`: `#[ignore]`d for a plain
//! `cargo test` like the harness's own tests; scripts/test.sh installs them
//! and runs it (`--include-ignored`, `FERRY_REQUIRE_ALL=1`).

#[path = "common/console_site.rs"]
mod console_site;

use std::path::Path;

use console_site::{make_volumes, pair, protect_and_sync, start_agent, Site, SLOW};
use ferry_e2e::browser;
use ferry_e2e::{hash_file, prereq};

#[test]
#[ignore = "needs chromium and chromedriver; scripts/test.sh runs it"]
fn the_walkthrough_through_the_console_on_both_sites() {
    if !prereq::require(browser::available(), browser::PREREQ) {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut agent_a = start_agent(&tmp.path().join("a"));
    let agent_b = start_agent(&tmp.path().join("b"));
    // The standby's operator works in Shanghai: times show in that zone.
    let (a, b) = (
        Site::open(&agent_a, "UTC"),
        Site::open(&agent_b, "Asia/Shanghai"),
    );

    // The sign-in page, then both operators sign in.
    a.browser.goto(&a.base);
    a.browser.find("input[type=password]");
    a.record("01-sign-in");
    a.sign_in("api.token");
    b.sign_in("api.token");

    pair(&a, &b);
    let volumes = make_volumes(tmp.path());
    protect_and_sync(&a, &volumes);
    refusal_is_rendered(&a);
    named_point_on_both_sites(&a, &b);
    restore_on_the_standby(&b, &volumes[0], &tmp.path().join("restored.raw"));
    policies(&a);
    operations(&a);
    read_only_session(&a);

    // The primary site is lost: fail over on the standby's console.
    agent_a.kill9();
    // The primary's console, still open, says its agent does not answer.
    a.browser.wait_text(".unreachable", "does not answer", SLOW);
    failover_on_the_standby(&b);
    a.browser.assert_no_page_errors();
    b.browser.assert_no_page_errors();
}

/// Start sync on a syncing group: the API's refusal and its reason show.
fn refusal_is_rendered(a: &Site) {
    a.page("#/groups/g1", ".summary[data-state=syncing]");
    a.browser.click("button[data-action=start]");
    let alert = a
        .browser
        .wait_for("[role=alert][data-status='409']", SLOW)
        .text();
    assert!(alert.contains("Refused"), "{alert}");
    assert!(alert.contains("group state: syncing"), "{alert}");
    // The operation history lists the refused request with its reason.
    a.browser.wait_text(
        "#group-ops tr[data-state=refused]",
        "start sync is allowed only in mapped",
        SLOW,
    );
    a.record("07-refusal");
}

/// A named recovery point made on A's console shows on B's.
fn named_point_on_both_sites(a: &Site, b: &Site) {
    a.browser.click("button[data-action=create-rp]");
    a.browser.fill("Recovery point name", "before-upgrade");
    let text = a.browser.confirm_dialog();
    assert!(text.contains("next replication cycle"), "{text}");
    a.after_action_succeeds();
    a.browser.wait_for(
        "#rp-table tr[data-rp=before-upgrade][data-state=complete]",
        SLOW,
    );
    // A name with markup is shown as text on both sites, never parsed.
    const MARKUP: &str = "<img src=x alt=injected>";
    a.browser.click("button[data-action=create-rp]");
    a.browser.fill("Recovery point name", MARKUP);
    a.browser.confirm_dialog();
    a.after_action_succeeds();
    a.browser.wait_text("#rp-table", MARKUP, SLOW);
    b.page(
        "#/groups/g1",
        "#rp-table tr[data-rp=before-upgrade][data-state=complete]",
    );
    b.browser.wait_text("#rp-table", MARKUP, SLOW);
    for site in [a, b] {
        assert_eq!(site.browser.count("#rp-table img"), 0, "markup was parsed");
    }
    let row = b.browser.text_of("#rp-table tr[data-rp=before-upgrade]");
    assert!(row.contains("named"), "{row}");
    assert!(
        row.contains("GMT+8"),
        "the browser's zone by default: {row}"
    );
    b.record("08-group-standby");
    // The zone chosen in the header is kept (localStorage) across pages.
    b.browser.select("Time zone", "UTC");
    b.page("#/groups/g1", "#rp-table tr[data-rp=before-upgrade]");
    b.browser
        .wait_text("#rp-table tr[data-rp=before-upgrade]", "UTC", SLOW);
}

/// Restores vm1 at before-upgrade into a new file on B's console.
fn restore_on_the_standby(b: &Site, source: &Path, out: &Path) {
    b.browser.click("button[data-action=restore]");
    b.browser
        .select("Resource", &format!("file:{}", source.display()));
    b.browser.select("Recovery point", "before-upgrade");
    b.browser.fill(
        "New volume (absolute file path, or an image name with an RBD standby)",
        &out.display().to_string(),
    );
    b.record_dialog("09-restore-dialog");
    let text = b.browser.confirm_dialog();
    assert!(text.contains("NEW volume"), "{text}");
    b.after_action_succeeds();
    assert_eq!(hash_file(out), hash_file(source), "the restored volume");
}

/// Creates a policy, binds it to g1 from the policies page, unbinds it on
/// the group page.
fn policies(a: &Site) {
    a.page("#/policies", "button[data-action=create-policy]");
    a.browser.fill("Policy name", "nightly");
    a.browser.click("button[data-action=create-policy]");
    a.after_action_succeeds();
    a.browser.find("#policies-table tr[data-policy=nightly]");
    a.browser
        .click("#policies-table tr[data-policy=nightly] button[data-action=bind-group]");
    a.browser.select("Group", "g1");
    a.browser.confirm_dialog();
    a.after_action_succeeds();
    a.browser.wait_text(
        "#policies-table tr[data-policy=nightly]",
        "g1 (keep 3)",
        SLOW,
    );
    a.record("10-policies");
    a.page("#/groups/g1", "[data-bound=nightly]");
    a.browser.click("button[data-action=unbind]");
    a.after_action_succeeds();
    a.browser.wait_gone("[data-bound]", SLOW);
}

/// The journal and one operation.
fn operations(a: &Site) {
    a.page("#/operations", "#operations-table tr[data-state=succeeded]");
    a.record("11-operations");
    a.browser
        .click("#operations-table tr[data-state=succeeded] a");
    a.browser.find("[data-state=succeeded] dl.facts");
    a.record("12-operation");
}

/// A read-only session sees the pages without a single action.
fn read_only_session(a: &Site) {
    a.browser.click("button[data-action=sign-out]");
    a.browser.find("input[type=password]");
    a.sign_in("api.readonly.token");
    a.page("#/groups/g1", ".summary[data-state=syncing]");
    a.browser.find("#rp-table tr[data-rp=before-upgrade]");
    let actions = a
        .browser
        .count("button[data-action]:not([data-action=sign-out])");
    assert_eq!(actions, 0, "a read-only session has no actions");
    a.record("13-read-only");
}

/// With A killed, B fails g1 over to the latest point through its console.
fn failover_on_the_standby(b: &Site) {
    b.page("#/groups/g1", ".summary[data-role=standby]");
    assert!(b.browser.tab_until("button[data-action=failover]") > 0);
    b.browser.click("button[data-action=failover]");
    b.record_dialog("14-failover-dialog");
    let text = b.browser.confirm_dialog();
    assert!(
        text.contains("g1-vm1"),
        "the dialog names the volumes: {text}"
    );
    b.after_action_succeeds();
    b.browser.wait_for(".summary[data-state=failed_over]", SLOW);
    b.browser.wait_text("#resources-table", "volume", SLOW);
    b.record("15-group-failed-over");
    let out = b.dir.join("failover").join("g1");
    assert!(out.join("g1-vm1.raw").exists() && out.join("g1-vm2.raw").exists());
    // A new primary cannot start sync: refused with the state table's reason.
    b.browser.click("button[data-action=start]");
    let alert = b
        .browser
        .wait_for("[role=alert][data-status='409']", SLOW)
        .text();
    assert!(alert.contains("Refused"), "{alert}");
}
