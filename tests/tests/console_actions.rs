//! The rest of the console's actions in a real browser, against two real
//! agents, through the pages only (`console_browser.rs` has the
//! walk-through): RPO thresholds, a DR drill started at a chosen point (its
//! pinned mark, its volumes) and ended, standby points, deleting a
//! recovery point, planned migration, start, stop and start sync on the new
//! primary, failover while the other site is up, reprotect, removing a
//! resource, deleting the group, a weekly policy created and deleted, and a
//! service's endpoints saved and the service deleted. Each step checks what
//! the agent did (files, roles, states), not only what the page says.
//!
//! Needs Debian's `chromium` and `chromium-driver`: `#[ignore]`d for a plain
//! `cargo test`; scripts/test.sh runs it (`--include-ignored`).

#[path = "common/console_site.rs"]
mod console_site;

use console_site::{make_volumes, pair, protect_and_sync, start_agent, Site, SLOW};
use ferry_e2e::browser::{self, screenshot_dir};
use ferry_e2e::prereq;

#[test]
#[ignore = "needs chromium and chromedriver; scripts/test.sh runs it"]
fn every_group_action_through_the_console() {
    if !prereq::require(browser::available(), browser::PREREQ) {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let agent_a = start_agent(&tmp.path().join("a"));
    let agent_b = start_agent(&tmp.path().join("b"));
    let (mut a, mut b) = (Site::open(&agent_a, "UTC"), Site::open(&agent_b, "UTC"));
    // The walk-through's screenshots are the documented set; these go aside.
    for site in [&mut a, &mut b] {
        site.browser
            .set_screenshot_dir(screenshot_dir().join("console-actions"));
        site.sign_in("api.token");
    }
    pair(&a, &b);
    let volumes = make_volumes(tmp.path());
    protect_and_sync(&a, &volumes);
    a.page("#/groups/g1", ".summary[data-state=syncing]");
    thresholds(&a);
    a.browser.click("button[data-action=create-rp]");
    a.browser.fill("Recovery point name", "r1");
    a.browser.confirm_dialog();
    a.after_action_succeeds();
    drill(&b);
    delete_point(&a);
    migrate_and_back(&a, &b);
    remove_and_delete(&a, &b);
    policy_created_and_deleted(&a);
    service_updated_and_deleted(&a);
    a.browser.assert_no_page_errors();
    b.browser.assert_no_page_errors();
}

/// The RPO thresholds dialog changes this site's thresholds.
fn thresholds(a: &Site) {
    a.browser.click("button[data-action=rpo]");
    a.browser.fill("Warning above (seconds)", "900");
    a.browser.fill("Critical above (seconds)", "3600");
    a.browser.confirm_dialog();
    a.after_action_succeeds();
    a.browser
        .wait_text(".summary", "warning 15m 00s, critical 1h 00m", SLOW);
}

/// A drill on B at r1: the point is marked pinned, the drill's volumes
/// exist, the standby points show; ending it removes the volumes.
fn drill(b: &Site) {
    b.page(
        "#/groups/g1",
        "#rp-table tr[data-rp=r1][data-state=complete]",
    );
    b.browser.click("button[data-action=drill-start]");
    b.browser.select("Recovery point", "r1");
    let text = b.browser.confirm_dialog();
    assert!(text.contains("g1-vm1") && text.contains("g1-vm2"), "{text}");
    b.after_action_succeeds();
    b.browser.wait_text("#drill-h", "DR drill", SLOW);
    b.browser
        .wait_text("#rp-table tr[data-rp=r1]", "pinned (drill)", SLOW);
    b.browser.wait_text("#sp-h", "Standby points", SLOW);
    b.browser
        .wait_text("section[aria-labelledby=sp-h]", "g1-vm1: ", SLOW);
    let volume = b.dir.join("drill").join("g1").join("g1-vm1.raw");
    assert!(volume.exists(), "{}", volume.display());
    b.record("16-drill");
    b.browser.click("button[data-action=drill-end]");
    b.browser.confirm_dialog();
    b.after_action_succeeds();
    b.browser.wait_gone("#drill-h", SLOW);
    assert!(!volume.exists(), "the drill's volume is removed");
}

/// Deletes r1 from its row on A.
fn delete_point(a: &Site) {
    a.page("#/groups/g1", "#rp-table tr[data-rp=r1]");
    a.browser
        .click("#rp-table tr[data-rp=r1] button[data-action=delete-rp]");
    let text = a.browser.confirm_dialog();
    assert!(text.contains("Delete recovery point r1"), "{text}");
    a.after_action_succeeds();
    a.browser.wait_gone("#rp-table tr[data-rp=r1]", SLOW);
}

/// Planned migration to B, start and stop sync there and again, then A
/// fails over (B still up) and re-protects: A is the primary again.
fn migrate_and_back(a: &Site, b: &Site) {
    a.browser.click("button[data-action=migrate]");
    a.browser.confirm_dialog();
    a.after_action_succeeds();
    a.browser.wait_for(".summary[data-role=standby]", SLOW);
    // B, the primary now: start sync, stop it, start it again.
    b.page(
        "#/groups/g1",
        ".summary[data-role=primary][data-state=mapped]",
    );
    b.group_action_succeeds("start");
    b.browser.wait_for(".summary[data-state=syncing]", SLOW);
    b.browser.click("button[data-action=stop]");
    b.browser.confirm_dialog();
    b.after_action_succeeds();
    b.browser.wait_for(".summary[data-state=mapped]", SLOW);
    b.group_action_succeeds("start");
    b.wait_count("#resources-table .sync[data-sync=synced]", 2, SLOW);
    a.page("#/groups/g1", ".summary[data-state=syncing]");
    a.browser.click("button[data-action=failover]");
    a.browser.confirm_dialog();
    a.after_action_succeeds();
    a.browser.wait_for(".summary[data-state=failed_over]", SLOW);
    a.browser.click("button[data-action=reprotect]");
    a.browser.confirm_dialog();
    a.after_action_succeeds();
    a.browser
        .wait_for(".summary[data-role=primary][data-state=syncing]", SLOW);
    b.page("#/groups/g1", ".summary[data-role=standby]");
}

/// Stop sync on A, remove one resource from its row, delete the group:
/// both sites drop it.
fn remove_and_delete(a: &Site, b: &Site) {
    a.browser.click("button[data-action=stop]");
    a.browser.confirm_dialog();
    a.after_action_succeeds();
    a.browser.wait_for(".summary[data-state=mapped]", SLOW);
    // Reprotect renamed the resources to this site's volumes: take the
    // second row's, whatever it is called now.
    let row = "#resources-table tr[data-uri]:nth-child(2)";
    let uri = a.browser.find(row).attr("data-uri").expect("data-uri");
    a.browser
        .click(&format!("{row} button[data-action=remove-resource]"));
    let text = a.browser.confirm_dialog();
    assert!(text.contains(&uri), "the dialog names {uri}: {text}");
    a.after_action_succeeds();
    a.wait_count("#resources-table tr[data-uri]", 1, SLOW);
    a.browser.click("button[data-action=delete-group]");
    a.browser.confirm_dialog();
    // A deleted group's page returns to the list, which has no group.
    a.browser.wait_text("#groups-table", "No group yet.", SLOW);
    b.page("#/groups", "#groups-table");
    b.browser.wait_text("#groups-table", "No group yet.", SLOW);
}

/// A weekly policy made with the weekday boxes, then deleted.
fn policy_created_and_deleted(a: &Site) {
    a.page("#/policies", "button[data-action=create-policy]");
    a.browser.fill("Policy name", "twice-weekly");
    a.browser.select("Schedule", "weekly");
    a.browser.click("input[name=weekday][value=mon]");
    a.browser.click("input[name=weekday][value=thu]");
    a.browser.click("button[data-action=create-policy]");
    a.after_action_succeeds();
    a.browser.wait_text(
        "#policies-table tr[data-policy=twice-weekly]",
        "weekly mon,thu 02:30",
        SLOW,
    );
    a.browser
        .click("#policies-table tr[data-policy=twice-weekly] button[data-action=delete-policy]");
    a.browser.confirm_dialog();
    a.after_action_succeeds();
    a.browser
        .wait_gone("#policies-table tr[data-policy=twice-weekly]", SLOW);
}

/// The service's endpoints saved as they are, then the service deleted.
fn service_updated_and_deleted(a: &Site) {
    a.page("#/services", "button[data-action=update-service]");
    a.browser.click("button[data-action=update-service]");
    a.browser.confirm_dialog();
    a.after_action_succeeds();
    a.browser.click("button[data-action=delete-service]");
    a.browser.confirm_dialog();
    a.after_action_succeeds();
    a.browser.wait_text("table", "No service yet.", SLOW);
}
