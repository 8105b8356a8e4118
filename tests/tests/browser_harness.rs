//! Self-test of the browser harness (`ferry_e2e::browser`) against small
//! static pages served from loopback by the test itself (not the agent):
//! navigation, click, fill and select by label, the `<dialog>` +
//! `data-confirm` contract, PNG screenshots, the accessibility check (it
//! must pass a clean page and catch each kind of violation), reaching an
//! action with Tab, and that no browser process outlives a `Browser`, even
//! when the test panics.
//!
//! Needs Debian's `chromium` and `chromium-driver`: `#[ignore]`d for a plain
//! `cargo test`; scripts/test.sh installs them and runs these with
//! `FERRY_REQUIRE_ALL=1`, where a missing browser fails.

#[path = "common/static_site.rs"]
mod static_site;

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use ferry_e2e::browser::{self, processes_naming, Browser};
use ferry_e2e::prereq::require;
use static_site::StaticSite;

const WAIT: Duration = Duration::from_secs(20);

/// A page that follows every rule of the harness contract: labelled
/// controls (three ways), buttons and links, a `<dialog>` confirmation, a
/// keyboard-usable custom control and a delegated click listener.
const CLEAN: &str = r#"
<h1>Groups</h1>
<nav><a href="/second.html" id="next">Second page</a></nav>
<img src="data:image/gif;base64,R0lGODlhAQABAAAAACw=" alt="">
<form id="f" onsubmit="event.preventDefault()">
  <label for="name">Group name</label> <input id="name">
  <label>Zone <select id="zone"><option value="">choose</option>
    <option value="sh">Asia/Shanghai</option><option value="utc">UTC</option></select></label>
  <input id="note" aria-label="Note">
  <button type="button" id="save">Save</button>
</form>
<p id="result">nothing yet</p>
<button type="button" id="stop">Stop sync</button>
<div id="custom" role="button" tabindex="0">Refresh</div>
<ul id="list"><li><button type="button">Volume vol-a</button></li></ul>
<dialog id="confirm"><p>Stop sync of group g1: volumes vol-a, vol-b stop replicating.</p>
  <button type="button" data-cancel>Cancel</button>
  <button type="button" data-confirm>Stop sync</button></dialog>
<script>
  const result = document.getElementById("result");
  document.getElementById("save").addEventListener("click", () => {
    result.textContent = `saved ${document.getElementById("name").value} in ` +
      `${document.getElementById("zone").value} (${document.getElementById("note").value})`;
  });
  const dialog = document.getElementById("confirm");
  document.getElementById("stop").addEventListener("click", () => dialog.showModal());
  dialog.querySelector("[data-confirm]").addEventListener("click", () => {
    dialog.close(); result.textContent = "stopped";
  });
  dialog.querySelector("[data-cancel]").addEventListener("click", () => {
    dialog.close(); result.textContent = "cancelled";
  });
  document.getElementById("custom").addEventListener("click", () => result.textContent = "refreshed");
  document.getElementById("list").addEventListener("click", () => {});
</script>
"#;

fn page(body: &str) -> String {
    format!("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>harness</title></head><body>{body}</body></html>")
}

/// Each page breaks one rule; the id of the offending element is the key.
fn bad_pages() -> Vec<(&'static str, &'static str, String)> {
    let bad = |extra: &str| page(&format!("{CLEAN}{extra}"));
    vec![
        (
            "/unlabelled.html",
            "orphan",
            bad(r#"<input id="orphan" type="text">"#),
        ),
        (
            "/divclick.html",
            "fake",
            bad(r#"<div id="fake" onclick="void 0">Start sync</div>"#),
        ),
        (
            "/listener.html",
            "hooked",
            bad(r#"<span id="hooked">Delete</span>
                <script>document.getElementById("hooked").addEventListener("click", () => {});</script>"#),
        ),
        (
            "/htmx.html",
            "hx",
            bad(r#"<div id="hx" hx-post="/api/groups/g1/stop">Stop</div>"#),
        ),
        (
            "/tabindex.html",
            "jump",
            bad(r#"<button id="jump" tabindex="2">First</button>"#),
        ),
        (
            "/img.html",
            "noalt",
            bad(r#"<img id="noalt" src="data:image/gif;base64,R0lGODlhAQABAAAAACw=">"#),
        ),
        (
            "/emptybutton.html",
            "empty",
            bad(r#"<button id="empty" type="button"></button>"#),
        ),
        (
            "/emptylabel.html",
            "blank",
            bad(r#"<label for="blank"> </label><input id="blank">"#),
        ),
    ]
}

fn site() -> StaticSite {
    let mut pages = HashMap::new();
    pages.insert("/clean.html", page(CLEAN));
    pages.insert(
        "/second.html",
        page(r#"<h1 id="second">Second page</h1><a href="/clean.html">Back</a>"#),
    );
    pages.insert(
        "/broken.html",
        page("<h1>Broken</h1><script>throw new Error('boom in page');</script>"),
    );
    pages.insert(
        "/tall.html",
        page(r#"<h1>Top</h1><div style="height: 3000px">tall</div><p>Bottom</p>"#),
    );
    pages.insert(
        "/keys.html",
        page(
            r#"<a href="/second.html" id="k1">One</a>
            <input id="k2" aria-label="Two">
            <button type="button" id="k3" tabindex="-1">Not in tab order</button>
            <button type="button" id="k4">Four</button>
            <div id="k5" onclick="void 0">Mouse only</div>
            <button type="button" id="k6">Six</button>
            <p id="out">idle</p>
            <script>document.getElementById("k6").addEventListener("click",
              () => document.getElementById("out").textContent = "six pressed");</script>"#,
        ),
    );
    for (path, _, html) in bad_pages() {
        pages.insert(path, html);
    }
    StaticSite::serve(pages)
}

fn have_browser() -> bool {
    require(browser::available(), browser::PREREQ)
}

#[test]
#[ignore = "needs chromium and chromedriver; scripts/test.sh runs it"]
fn navigates_clicks_fills_and_selects_by_label() {
    if !have_browser() {
        return;
    }
    let site = site();
    let mut b = Browser::start();
    let shots = tempfile::tempdir().expect("temp dir");
    b.set_screenshot_dir(shots.path());
    b.goto(&site.url("/clean.html"));
    assert_eq!(b.text_of("h1"), "Groups");

    b.fill("Group name", "g1");
    b.select("Zone", "Asia/Shanghai");
    b.fill("Note", "first try");
    // A CSS selector works too, and fill replaces what was there.
    b.fill("#note", "nightly");
    b.click("#save");
    b.wait_text("#result", "saved g1 in sh (nightly)", WAIT);
    assert_eq!(b.find("#zone").prop("value").as_deref(), Some("sh"));

    b.click("#next");
    assert_eq!(b.wait_for("#second", WAIT).text(), "Second page");
    assert!(b.url().ends_with("/second.html"), "{}", b.url());
    assert!(b.page_errors().is_empty(), "{:?}", b.page_errors());
    b.assert_no_page_errors();

    // An uncaught error in a page's script is reported.
    b.goto(&site.url("/broken.html"));
    b.find("h1");
    let errors = b.page_errors();
    assert!(
        errors.iter().any(|e| e.contains("boom in page")),
        "{errors:?}"
    );
    let failed = catch_unwind(AssertUnwindSafe(|| b.assert_no_page_errors()));
    assert!(
        failed.is_err(),
        "assert_no_page_errors passed a broken page"
    );
}

#[test]
#[ignore = "needs chromium and chromedriver; scripts/test.sh runs it"]
fn confirms_and_cancels_an_in_page_dialog() {
    if !have_browser() {
        return;
    }
    let site = site();
    let b = Browser::start();
    b.goto(&site.url("/clean.html"));

    b.click("#stop");
    let text = b.cancel_dialog();
    assert!(text.contains("vol-a, vol-b"), "dialog text: {text:?}");
    b.wait_text("#result", "cancelled", WAIT);
    b.wait_gone("dialog[open]", WAIT);

    b.click("#stop");
    let text = b.confirm_dialog();
    assert!(
        text.contains("Stop sync of group g1"),
        "dialog text: {text:?}"
    );
    b.wait_text("#result", "stopped", WAIT);
    assert_eq!(b.count("dialog[open]"), 0);
}

#[test]
#[ignore = "needs chromium and chromedriver; scripts/test.sh runs it"]
fn screenshot_is_a_png_of_the_viewport() {
    if !have_browser() {
        return;
    }
    let site = site();
    let b = Browser::start();
    b.goto(&site.url("/clean.html"));
    let path = b.screenshot("harness-clean page");
    assert_eq!(
        path.file_name().and_then(|n| n.to_str()),
        Some("harness-clean_page.png")
    );
    assert_eq!(path.parent(), Some(browser::screenshot_dir().as_path()));
    let png = std::fs::read(&path).expect("reading the screenshot");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    let (width, height) = png_size(&png);
    assert_eq!(width, 1280, "viewport width");
    assert!(height >= 600, "viewport height {height}");
    // A rendered page with text and controls, not an empty frame.
    assert!(png.len() > 10_000, "only {} bytes", png.len());

    b.goto(&site.url("/tall.html"));
    let path = b.screenshot_full_page("harness-tall");
    let png = std::fs::read(&path).expect("reading the full-page screenshot");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    let (full_width, full_height) = png_size(&png);
    // The viewport's width less the vertical scroll bar.
    assert!(
        (1200..=1280).contains(&full_width),
        "full-page width {full_width}"
    );
    assert!(full_height >= 3000, "full-page height {full_height}");
    let viewport = png_size(&std::fs::read(b.screenshot("harness-tall-viewport")).expect("png"));
    assert!(viewport.1 < 3000, "viewport shot height {}", viewport.1);
}

/// Width and height from a PNG's IHDR chunk.
fn png_size(png: &[u8]) -> (u32, u32) {
    assert!(png.len() > 24 && &png[12..16] == b"IHDR", "no IHDR chunk");
    let be = |at: usize| u32::from_be_bytes([png[at], png[at + 1], png[at + 2], png[at + 3]]);
    (be(16), be(20))
}

#[test]
#[ignore = "needs chromium and chromedriver; scripts/test.sh runs it"]
fn accessibility_check_passes_a_clean_page_and_catches_each_violation() {
    if !have_browser() {
        return;
    }
    let site = site();
    let mut b = Browser::start();
    // The failures provoked here leave their screenshots out of the
    // console's.
    let shots = tempfile::tempdir().expect("temp dir");
    b.set_screenshot_dir(shots.path());
    b.goto(&site.url("/clean.html"));
    b.find("#save");
    assert_eq!(b.accessibility_violations(), Vec::<String>::new());
    b.assert_accessible();

    for (path, id, _) in bad_pages() {
        b.goto(&site.url(path));
        b.find("h1");
        let found = b.accessibility_violations();
        assert_eq!(found.len(), 1, "{path}: {found:#?}");
        assert!(
            found[0].contains(&format!("id=\"{id}\"")),
            "{path}: {found:#?}"
        );
        let failed = catch_unwind(AssertUnwindSafe(|| b.assert_accessible()));
        let message = failed.expect_err("assert_accessible must fail on {path}");
        let message = message
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default();
        assert!(
            message.contains("1 accessibility violation"),
            "{path}: {message}"
        );
        assert!(message.contains(id), "{path}: {message}");
        assert!(
            message.contains(&format!("page: {}", site.url(path))),
            "{message}"
        );
        // The failure names its screenshot, and it is there.
        let shot = message
            .lines()
            .find_map(|l| l.trim().strip_prefix("screenshot: "))
            .unwrap_or_else(|| panic!("no screenshot line: {message}"));
        assert!(
            shot.starts_with(&shots.path().display().to_string()),
            "{shot}"
        );
        assert!(std::path::Path::new(shot).is_file(), "{shot} missing");
    }
}

#[test]
#[ignore = "needs chromium and chromedriver; scripts/test.sh runs it"]
fn tab_reaches_actions_from_the_top_and_enter_activates() {
    if !have_browser() {
        return;
    }
    let site = site();
    let mut b = Browser::start();
    let shots = tempfile::tempdir().expect("temp dir");
    b.set_screenshot_dir(shots.path());
    b.goto(&site.url("/keys.html"));
    // k1, k2, k4, k6: tabindex=-1 and the mouse-only div are skipped.
    assert_eq!(b.tab_until("#k4"), 3);
    // Counted from the top again, wherever the focus was.
    assert_eq!(b.tab_until("#k6"), 4);
    assert_eq!(b.tab_until("#k1"), 1);
    b.tab_until("#k6");
    b.press_enter();
    b.wait_text("#out", "six pressed", WAIT);

    for unreachable in ["#k3", "#k5"] {
        let failed = catch_unwind(AssertUnwindSafe(|| b.tab_until(unreachable)));
        let message = failed.expect_err("an element off the tab order must fail");
        let message = message
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default();
        assert!(message.contains("not reachable with Tab"), "{message}");
    }
}

/// Waits (30 s at most) until no process names `dir`; returns those left.
fn left_after(dir: &std::path::Path) -> Vec<i32> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = processes_naming(dir);
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
#[ignore = "needs chromium and chromedriver; scripts/test.sh runs it"]
fn no_browser_process_outlives_the_browser_even_on_panic() {
    if !have_browser() {
        return;
    }
    let site = site();
    let b = Browser::start();
    b.goto(&site.url("/clean.html"));
    let dir = b.private_dir().to_path_buf();
    let running = processes_naming(&dir);
    // chromedriver, chromium and its helpers.
    assert!(running.len() >= 3, "browser processes: {running:?}");
    drop(b);
    assert_eq!(left_after(&dir), Vec::<i32>::new());
    assert!(!dir.exists(), "private dir {} left behind", dir.display());

    let url = site.url("/clean.html");
    let (tx, rx) = std::sync::mpsc::channel();
    let shots = tempfile::tempdir().expect("temp dir");
    let shots_dir = shots.path().to_path_buf();
    let panicked = std::thread::spawn(move || {
        let mut b = Browser::start();
        b.set_screenshot_dir(shots_dir);
        b.goto(&url);
        tx.send(b.private_dir().to_path_buf())
            .expect("sending the dir");
        b.wait_for("#no-such-element-anywhere", Duration::from_secs(1));
    })
    .join();
    assert!(
        panicked.is_err(),
        "waiting for a missing element must panic"
    );
    let dir = rx.recv().expect("the thread's browser dir");
    assert_eq!(left_after(&dir), Vec::<i32>::new());
}
