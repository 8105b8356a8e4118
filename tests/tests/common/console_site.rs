//! Shared by the console's browser tests (`console_browser.rs`,
//! `console_actions.rs`): two real agents with `[console] enabled = true`,
//! one headless chromium per site, the helpers that wait for an action's
//! outcome on a page, and the steps both tests start with (pairing through
//! the services pages, protecting two volumes until they show synced).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferry_agent::imagegen;
use ferry_e2e::browser::Browser;
use ferry_e2e::{init_agent, Agent};

const MIB: u64 = 1024 * 1024;
const CONSOLE_CONFIG: &str = "[console]\nenabled = true\n";
/// Long operations (sync, failover) on a busy CI machine.
pub const SLOW: Duration = Duration::from_secs(120);

/// One site's console in its own browser.
pub struct Site {
    pub browser: Browser,
    /// `http://ADDR/ui/` (`DIR/api.addr` holds ADDR, or a URL with TLS).
    pub base: String,
    /// The agent's data directory.
    pub dir: PathBuf,
}

impl Site {
    /// The console of `agent` in a browser whose zone is `zone`.
    pub fn open(agent: &Agent, zone: &str) -> Site {
        let addr = wait_for_file(&agent.dir.join("api.addr"));
        let addr = addr.trim();
        let origin = if addr.starts_with("http") {
            addr.to_owned()
        } else {
            format!("http://{addr}")
        };
        Site {
            browser: Browser::start_in_zone(zone),
            base: format!("{origin}/ui/"),
            dir: agent.dir.clone(),
        }
    }

    /// Opens `route` (`#/groups`…) and waits for `ready` (a CSS selector).
    pub fn page(&self, route: &str, ready: &str) {
        self.browser.goto(&format!("{}{route}", self.base));
        self.browser.find(ready);
    }

    pub fn sign_in(&self, token_file: &str) {
        let token = std::fs::read_to_string(self.dir.join(token_file)).expect("token file");
        self.browser.goto(&self.base);
        self.browser.fill("API token", token.trim());
        self.browser.click("button[data-action=sign-in]");
        self.browser.find("nav[aria-label=Main]");
    }

    /// Accessibility check and screenshot of the whole page as it is now.
    pub fn record(&self, name: &str) {
        self.browser.assert_accessible();
        self.browser.screenshot_full_page(name);
    }

    /// Accessibility check and screenshot of the viewport with the open
    /// dialog.
    pub fn record_dialog(&self, name: &str) {
        self.browser.find("dialog[open] [data-confirm]");
        self.browser.assert_accessible();
        self.browser.screenshot(name);
    }

    /// Waits until `count(css) == n`.
    pub fn wait_count(&self, css: &str, n: usize, patience: Duration) {
        let deadline = Instant::now() + patience;
        while self.browser.count(css) != n {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {n} × {css:?} (have {})",
                self.browser.count(css)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Clicks the action button `action` of the group page and waits until
    /// its operation (shown next to the actions) succeeded.
    pub fn group_action_succeeds(&self, action: &str) {
        self.browser.click(&format!("button[data-action={action}]"));
        self.after_action_succeeds();
    }

    pub fn after_action_succeeds(&self) {
        let status = [
            ".op-status[data-latest][data-op-state=succeeded]",
            ".op-status[data-latest][data-op-state=done]",
            ".op-status[data-latest][data-op-state=failed]",
            ".op-status[data-latest][data-op-state=refused]",
        ]
        .join(", ");
        let el = self.browser.wait_for(&status, SLOW);
        let state = el.attr("data-op-state").unwrap_or_default();
        assert!(
            state == "succeeded" || state == "done",
            "the operation ended {state}: {} / alert: {}",
            el.text(),
            self.alert_text()
        );
    }

    pub fn alert_text(&self) -> String {
        if self.browser.count("[role=alert]:not([hidden])") == 0 {
            return String::new();
        }
        self.browser.text_of("[role=alert]:not([hidden])")
    }
}

fn wait_for_file(path: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if !text.trim().is_empty() {
                return text;
            }
        }
        assert!(Instant::now() < deadline, "no {}", path.display());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An initialised agent in `dir` with the console on, running.
pub fn start_agent(dir: &Path) -> Agent {
    let fp = init_agent(dir);
    std::fs::write(dir.join("config.toml"), CONSOLE_CONFIG).expect("config.toml");
    Agent::start(dir, &fp, &[])
}

/// Two files of 8 and 4 MiB in `dir`, the volumes the tests protect.
pub fn make_volumes(dir: &Path) -> [PathBuf; 2] {
    let volumes = [dir.join("vm1.raw"), dir.join("vm2.raw")];
    imagegen::make_image(&volumes[0], 8 * MIB, 1).expect("vm1");
    imagegen::make_image(&volumes[1], 4 * MIB, 2).expect("vm2");
    volumes
}

/// B issues its service key on its console; A pairs with it and verifies.
pub fn pair(a: &Site, b: &Site) {
    b.page("#/services", "button[data-action=issue-key]");
    b.browser.click("button[data-action=issue-key]");
    let key = b
        .browser
        .wait_for("textarea[name=service_key]", SLOW)
        .prop("value")
        .expect("the key");
    assert!(key.len() > 40, "a service key: {key}");
    b.record("02-services-key");

    a.page("#/services", "button[data-action=pair]");
    a.browser.fill("Remote site's service key", &key);
    a.browser.click("button[data-action=pair]");
    a.after_action_succeeds();
    a.browser.wait_text("table tbody th", "dr", SLOW);
    a.browser.click("button[data-action=verify]");
    a.browser
        .wait_text(".op-status[data-latest]", "reachable and paired", SLOW);
    a.record("03-services-paired");
    // The QoS dialog applies limits the page then shows.
    a.browser.click("button[data-action=qos]");
    a.browser.fill(
        "Send limit (MiB/s): this agent's replication traffic",
        "200",
    );
    a.record_dialog("04-qos-dialog");
    a.browser.confirm_dialog();
    a.browser.wait_text("#qos", "200.0 MiB/s", SLOW);
}

/// Creates g1 on A's groups page, adds both volumes on its detail page,
/// starts sync and waits until the page shows both volumes synced.
pub fn protect_and_sync(a: &Site, volumes: &[PathBuf]) {
    a.page("#/groups", "button[data-action=create-group]");
    a.browser.fill("Group name", "g1");
    a.browser.fill("RPO warning above (s)", "300");
    a.browser.click("button[data-action=create-group]");
    a.after_action_succeeds();
    a.browser
        .wait_for("#groups-table tr[data-group=g1][data-state=mapped]", SLOW);
    a.browser.click("#groups-table a[href='#/groups/g1']");
    a.browser.find("button[data-action=add-resources]");
    let uris: Vec<String> = volumes
        .iter()
        .map(|p| format!("file:{}", p.display()))
        .collect();
    a.browser.fill(
        "Source URIs, one per line (with a VM the first is the boot volume)",
        &uris.join("\n"),
    );
    a.browser.click("button[data-action=add-resources]");
    a.after_action_succeeds();
    a.wait_count("#resources-table tr[data-uri]", 2, SLOW);
    a.group_action_succeeds("start");
    a.wait_count("#resources-table .sync[data-sync=synced]", 2, SLOW);
    a.browser.find(".summary[data-state=syncing]");
    // The RPO-lag chart draws the agent's samples (one every 10 s) as they come.
    a.browser.wait_for("svg.rpo-chart path.lag", SLOW);
    a.record("06-group-primary-synced");
    a.page(
        "#/groups",
        "#groups-table tr[data-group=g1][data-state=syncing]",
    );
    a.record("05-groups");
}
