//! A real browser for the console's tests: Debian's headless `chromium`
//! driven through `chromedriver` (WebDriver) by the `fantoccini` client.
//!
//! [`Browser::start`] runs chromedriver on a free loopback port and opens a
//! session in a fresh temp profile; dropping the [`Browser`] kills both and
//! every helper process, also when the test panics. Chromium reaches only
//! this machine: other host names resolve to nothing and non-loopback
//! connections go to a dead proxy (see `browser/driver.rs`).
//!
//! The API is blocking (the browser owns a small tokio runtime), like the
//! rest of this crate: call it from plain `#[test]` functions, not from
//! inside a tokio runtime. Every helper waits for what it needs (up to
//! [`DEFAULT_WAIT`] unless it takes a timeout) and panics with the page's
//! URL, its uncaught script errors and a screenshot path when it fails.
//!
//! # Contract for page authors (`agent/console/`)
//!
//! - **Confirmations** are an in-page `<dialog>` opened with `showModal()`
//!   (so it is `dialog[open]`), whose text says what will happen and to
//!   which volumes. Its confirming button carries a `data-confirm`
//!   attribute, its cancelling one `data-cancel`. Tests call
//!   [`Browser::confirm_dialog`] / [`Browser::cancel_dialog`], which return
//!   the dialog's text. No `window.confirm()`: WebDriver would dismiss it.
//! - **Form controls** have a label: a `<label for=…>`, a wrapping
//!   `<label>`, `aria-label` or `aria-labelledby`. Tests fill them by that
//!   label's text ([`Browser::fill`], [`Browser::select`]), as a person
//!   would; a CSS selector is the fallback.
//! - **Actions** are `<button>`s or `<a href>`s (or have `tabindex="0"` and
//!   a `role`), never a bare `div` with a click handler; no positive
//!   `tabindex`; images have `alt`; buttons and links have a name.
//!   [`Browser::assert_accessible`] checks all of this on the current page
//!   (click handlers found through `onclick`, `hx-get`/`hx-post`/… and any
//!   `addEventListener("click", …)` on an element without buttons or links
//!   inside), and [`Browser::tab_until`] proves an action is reachable with
//!   the Tab key from the top of the page.
//! - **Screenshots**: [`Browser::screenshot`] writes `NAME.png` (the
//!   viewport of the 1280×900 window; [`Browser::screenshot_full_page`]
//!   the whole page) to `FERRY_SCREENSHOT_DIR`, by default
//!   `target/console-screenshots/` (the cargo target dir in use);
//!   scripts/test.sh empties it before the tests and prints it at the end.
//! - **TLS**: the browser accepts the agent's self-signed certificate
//!   (`acceptInsecureCerts`), so a console served over TLS can be tested
//!   (and its cookie's `Secure` flag with it).

mod driver;
mod keyboard;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use fantoccini::elements::{Element, ElementRef};
use fantoccini::error::CmdError;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

pub use driver::{processes_naming, CHROMEDRIVER, CHROMIUM};
pub use fantoccini::key::Key;

/// How long helpers without a timeout argument wait for the page.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(20);

const HOOKS_JS: &str = include_str!("browser/hooks.js");
const A11Y_JS: &str = include_str!("browser/a11y.js");
const RESOLVE_JS: &str = include_str!("browser/resolve.js");

/// Why a browser could not be started.
#[derive(Debug, thiserror::Error)]
pub enum BrowserError {
    /// A temp dir or the runtime could not be made.
    #[error("browser setup: {0}")]
    Io(std::io::Error),
    /// chromedriver could not be executed.
    #[error("running {what}: {source} (apt-get install chromium chromium-driver)")]
    Spawn {
        /// The program.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// chromedriver exited or never listened.
    #[error("chromedriver did not start; its log ends with:\n{log}")]
    DriverNotReady {
        /// The end of chromedriver's log.
        log: String,
    },
    /// chromedriver could not open a chromium session.
    #[error("opening a chromium session: {error}; chromedriver's log ends with:\n{log}")]
    Session {
        /// The WebDriver error.
        error: String,
        /// The end of chromedriver's log.
        log: String,
    },
}

/// Whether chromium and chromedriver are installed where Debian puts them;
/// tests pass this to [`crate::prereq::require`].
pub fn available() -> bool {
    Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists()
}

/// What to tell a developer who lacks the browser.
pub const PREREQ: &str = "chromium and chromedriver (apt-get install chromium chromium-driver)";

/// A headless chromium session; see the module docs.
pub struct Browser {
    // Field order is drop order: the client's task, then the runtime, then
    // the processes (Driver's Drop kills them).
    client: Client,
    rt: tokio::runtime::Runtime,
    driver: driver::Driver,
    shots: PathBuf,
}

/// An element found by [`Browser::wait_for`].
pub struct Elem<'b> {
    browser: &'b Browser,
    el: Element,
    css: String,
}

impl Browser {
    /// Starts chromedriver and a headless chromium session; panics with the
    /// reason when it cannot.
    pub fn start() -> Browser {
        Self::start_retrying(None)
    }

    /// Starts the browser, trying again twice: on a loaded 2-core CI
    /// machine chromium's first launch can miss chromedriver's deadline
    /// (seen once while another test suite ran). Only the launch is
    /// retried; nothing a test checks is.
    fn start_retrying(time_zone: Option<&str>) -> Browser {
        let mut last = None;
        for attempt in 1..=3 {
            match Self::try_start(time_zone) {
                Ok(browser) => return browser,
                Err(e) => {
                    eprintln!("browser launch {attempt} of 3 failed: {e}");
                    last = Some(e);
                }
            }
        }
        match last {
            Some(e) => panic!("{e}"),
            None => unreachable!("three attempts were made"),
        }
    }

    /// [`Browser::start`] with the browser's time zone set (`TZ`, an IANA
    /// name such as `Asia/Shanghai`): pages show times in it.
    pub fn start_in_zone(time_zone: &str) -> Browser {
        Self::start_retrying(Some(time_zone))
    }

    /// Starts a browser, or says why not.
    pub fn try_start(time_zone: Option<&str>) -> Result<Browser, BrowserError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(BrowserError::Io)?;
        let driver = driver::Driver::spawn(time_zone)?;
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = rt
            .block_on(
                ClientBuilder::new(connector)
                    .capabilities(driver.capabilities())
                    .connect(&driver.url()),
            )
            .map_err(|e| BrowserError::Session {
                error: e.to_string(),
                log: driver.log_tail(),
            })?;
        let hooks = rt.block_on(cdp(
            &client,
            "Page.addScriptToEvaluateOnNewDocument",
            json!({ "source": HOOKS_JS }),
        ));
        if let Err(e) = hooks {
            return Err(BrowserError::Session {
                error: format!("installing the page hooks: {e}"),
                log: driver.log_tail(),
            });
        }
        Ok(Browser {
            client,
            rt,
            driver,
            shots: screenshot_dir(),
        })
    }

    /// The browser's private temp dir (profile, driver log). Every process
    /// of this browser names it on its command line; see
    /// [`processes_naming`].
    pub fn private_dir(&self) -> &Path {
        self.driver.dir.path()
    }

    /// Sends this browser's screenshots (also those of failures) to `dir`
    /// instead of [`screenshot_dir`].
    pub fn set_screenshot_dir(&mut self, dir: impl Into<PathBuf>) {
        self.shots = dir.into();
    }

    /// The fantoccini client, for what the helpers do not cover.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Runs a future of the client (e.g. from [`Browser::client`]) to its end.
    pub fn block_on<F: Future>(&self, fut: F) -> F::Output {
        self.rt.block_on(fut)
    }

    /// Opens `url` and waits for its load event.
    pub fn goto(&self, url: &str) {
        let res = self.block_on(self.client.goto(url));
        self.check(res, &format!("opening {url}"));
    }

    /// The page's current URL.
    pub fn url(&self) -> String {
        let res = self.block_on(self.client.current_url());
        self.check(res, "reading the URL").to_string()
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page
    /// and returns what it returns.
    pub fn eval(&self, script: &str, args: Vec<Value>) -> Value {
        let res = self.block_on(self.client.execute(script, args));
        self.check(res, "running a script in the page")
    }

    /// Uncaught script errors and unhandled promise rejections of the
    /// current page, oldest first.
    pub fn page_errors(&self) -> Vec<String> {
        let res = self.block_on(self.client.execute(
            "return window.__ferry ? window.__ferry.errors.slice() : []",
            vec![],
        ));
        match res {
            Ok(Value::Array(items)) => items.iter().map(text_of_json).collect(),
            _ => Vec::new(),
        }
    }

    /// Panics if the current page had an uncaught script error.
    pub fn assert_no_page_errors(&self) {
        let errors = self.page_errors();
        if !errors.is_empty() {
            self.fail(&format!(
                "the page's scripts failed: {}",
                errors.join(" | ")
            ));
        }
    }

    /// Waits up to `timeout` for a displayed element matching `css` and
    /// returns it (the first displayed one in document order).
    pub fn wait_for(&self, css: &str, timeout: Duration) -> Elem<'_> {
        let el = self.poll(
            timeout,
            &format!("no visible element matches {css:?}"),
            |b| {
                let all = b.block_on(b.client.find_all(Locator::Css(css)))?;
                for el in all {
                    match b.block_on(el.is_displayed()) {
                        Ok(true) => return Ok(Some(el)),
                        Ok(false) => {}
                        Err(e) if e.is_stale_element_reference() => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(None)
            },
        );
        Elem {
            browser: self,
            el,
            css: css.to_owned(),
        }
    }

    /// [`Browser::wait_for`] with [`DEFAULT_WAIT`].
    pub fn find(&self, css: &str) -> Elem<'_> {
        self.wait_for(css, DEFAULT_WAIT)
    }

    /// Waits up to `timeout` until no displayed element matches `css`.
    pub fn wait_gone(&self, css: &str, timeout: Duration) {
        let what = format!("{css:?} is still displayed");
        self.poll(timeout, &what, |b| {
            let shown = b.block_on(b.client.execute(
                "return Array.from(document.querySelectorAll(arguments[0]))\
                 .some(e => e.getClientRects().length > 0)",
                vec![json!(css)],
            ))?;
            Ok((shown == Value::Bool(false)).then_some(()))
        });
    }

    /// Waits up to `timeout` until the first displayed element matching
    /// `css` has a text containing `needle`; returns that text.
    pub fn wait_text(&self, css: &str, needle: &str, timeout: Duration) -> String {
        let what = format!("no visible {css:?} with a text containing {needle:?}");
        self.poll(timeout, &what, |b| {
            let all = b.block_on(b.client.find_all(Locator::Css(css)))?;
            for el in all {
                match b.block_on(el.text()) {
                    Ok(text) if text.contains(needle) => return Ok(Some(text)),
                    Ok(_) => {}
                    Err(e) if e.is_stale_element_reference() => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(None)
        })
    }

    /// The visible text of the first displayed element matching `css`.
    pub fn text_of(&self, css: &str) -> String {
        self.find(css).text()
    }

    /// How many elements match `css` right now (displayed or not).
    pub fn count(&self, css: &str) -> usize {
        let res = self.block_on(self.client.find_all(Locator::Css(css)));
        self.check(res, &format!("finding {css:?}")).len()
    }

    /// Clicks the first displayed element matching `css` as a mouse would
    /// (scrolled into view; an element covered by another is retried until
    /// [`DEFAULT_WAIT`]).
    pub fn click(&self, css: &str) {
        self.find(css).click();
    }

    /// Types `value` into the control named by `target`: the text of its
    /// label (see the module docs), else a CSS selector. Clears it first.
    pub fn fill(&self, target: &str, value: &str) {
        let el = self.control(target);
        let res = self.block_on(async {
            el.clear().await?;
            el.send_keys(value).await
        });
        self.check(res, &format!("typing into {target:?}"));
    }

    /// Chooses `option` (its visible text or its value) in the `<select>`
    /// named by `target` (label text, else CSS selector).
    pub fn select(&self, target: &str, option: &str) {
        let select = self.control(target);
        let what = format!("no option {option:?} in the select {target:?}");
        let opt = self.poll(DEFAULT_WAIT, &what, |b| {
            let found = b.block_on(b.client.execute(
                "const [s, want] = arguments; const norm = t => (t || '').replace(/\\s+/g, ' ').trim();\
                 return Array.from(s.options || []).find(o => norm(o.textContent) === norm(want) || o.value === want) || null;",
                vec![element_json(&select), json!(option)],
            ))?;
            Ok(element_from_json(&b.client, &found))
        });
        let res = self.block_on(opt.click());
        self.check(res, &format!("choosing {option:?} in {target:?}"));
    }

    /// Clicks the `data-confirm` button of the open `<dialog>` and waits
    /// until the dialog is closed; returns the dialog's text.
    pub fn confirm_dialog(&self) -> String {
        self.answer_dialog("[data-confirm]")
    }

    /// Clicks the `data-cancel` button of the open `<dialog>` and waits
    /// until the dialog is closed; returns the dialog's text.
    pub fn cancel_dialog(&self) -> String {
        self.answer_dialog("[data-cancel]")
    }

    fn answer_dialog(&self, button: &str) -> String {
        let dialog = self.find("dialog[open]");
        let text = dialog.text();
        let res = self.block_on(dialog.el.find(Locator::Css(button)));
        let answer = self.check(res, &format!("finding the open dialog's {button} button"));
        let res = self.block_on(answer.click());
        self.check(res, &format!("clicking the dialog's {button} button"));
        let what = format!("the dialog stayed open after its {button} button was clicked");
        self.poll(DEFAULT_WAIT, &what, |b| {
            let res = b.block_on(b.client.execute(
                "const d = arguments[0]; return !d.isConnected || !d.open;",
                vec![element_json(&dialog.el)],
            ));
            match res {
                Ok(v) => Ok((v == Value::Bool(true)).then_some(())),
                // The confirmation navigated away: the dialog is gone.
                Err(e) if e.is_stale_element_reference() => Ok(Some(())),
                Err(e) => Err(e),
            }
        });
        text
    }

    /// Saves the viewport as `NAME.png` in the screenshot dir (see the
    /// module docs) and returns its path. `name` may hold letters, digits,
    /// `-`, `_` and `.`; anything else becomes `_`.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        match self.try_screenshot(name) {
            Ok(path) => path,
            Err(e) => panic!("screenshot {name:?}: {e}"),
        }
    }

    /// Like [`Browser::screenshot`], but of the whole page, however far it
    /// scrolls (the viewport's width, the document's height).
    pub fn screenshot_full_page(&self, name: &str) -> PathBuf {
        let png = self.block_on(async {
            let metrics = cdp(&self.client, "Page.getLayoutMetrics", json!({})).await?;
            let (page, view) = (&metrics["cssContentSize"], &metrics["cssLayoutViewport"]);
            let side = |v: &Value, key: &str| v[key].as_f64().unwrap_or(0.0);
            // At least the viewport, so a short page is not cut off.
            let clip = json!({
                "x": 0, "y": 0, "scale": 1,
                "width": side(page, "width").max(side(view, "clientWidth")),
                "height": side(page, "height").max(side(view, "clientHeight")),
            });
            let shot = cdp(
                &self.client,
                "Page.captureScreenshot",
                json!({ "format": "png", "captureBeyondViewport": true, "clip": clip }),
            )
            .await?;
            Ok::<Value, CmdError>(shot)
        });
        let shot = self.check(png, &format!("full-page screenshot {name:?}"));
        let data = shot["data"].as_str().unwrap_or_default();
        match base64::engine::general_purpose::STANDARD.decode(data) {
            Ok(png) => self
                .save_png(name, png)
                .unwrap_or_else(|e| panic!("screenshot {name:?}: {e}")),
            Err(e) => panic!("screenshot {name:?}: chromium sent no PNG: {e}"),
        }
    }

    fn try_screenshot(&self, name: &str) -> Result<PathBuf, String> {
        let png = self
            .block_on(self.client.screenshot())
            .map_err(|e| e.to_string())?;
        self.save_png(name, png)
    }

    /// Writes `png` as `NAME.png` in the screenshot dir.
    fn save_png(&self, name: &str, png: Vec<u8>) -> Result<PathBuf, String> {
        let safe: String = name
            .chars()
            .map(|c| match c {
                'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '_' | '.' => c,
                _ => '_',
            })
            .collect();
        std::fs::create_dir_all(&self.shots)
            .map_err(|e| format!("creating {}: {e}", self.shots.display()))?;
        let path = self.shots.join(format!("{safe}.png"));
        std::fs::write(&path, png).map_err(|e| format!("writing {}: {e}", path.display()))?;
        Ok(path)
    }

    /// The current page's accessibility violations (one line each; see
    /// the module docs for the rules), empty for a clean page.
    pub fn accessibility_violations(&self) -> Vec<String> {
        match self.eval(A11Y_JS, vec![]) {
            Value::Array(items) => items.iter().map(text_of_json).collect(),
            other => panic!("the accessibility check returned {other}"),
        }
    }

    /// Panics listing every accessibility violation of the current page.
    pub fn assert_accessible(&self) {
        let found = self.accessibility_violations();
        if !found.is_empty() {
            self.fail(&format!(
                "{} accessibility violation(s):\n  - {}",
                found.len(),
                found.join("\n  - ")
            ));
        }
    }

    /// Finds the control `target` names (label text, else CSS selector).
    fn control(&self, target: &str) -> Element {
        let what = format!("no form control labelled or matching {target:?}");
        self.poll(DEFAULT_WAIT, &what, |b| {
            let res = b.block_on(b.client.execute(RESOLVE_JS, vec![json!(target)]))?;
            let found: Vec<Element> = res["found"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| element_from_json(&b.client, v))
                        .collect()
                })
                .unwrap_or_default();
            if res["by"] == "label" && found.len() > 1 {
                b.fail(&format!(
                    "{} visible controls are labelled {target:?}: label them apart",
                    found.len()
                ));
            }
            Ok(found.into_iter().next())
        })
    }

    /// Calls `step` until it returns `Some` (every 50 ms, up to `timeout`);
    /// stale elements count as "not yet", other WebDriver errors fail.
    fn poll<T>(
        &self,
        timeout: Duration,
        what: &str,
        mut step: impl FnMut(&Browser) -> Result<Option<T>, CmdError>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            match step(self) {
                Ok(Some(v)) => return v,
                Ok(None) => {}
                Err(e) if e.is_stale_element_reference() => {}
                Err(e) => self.fail(&format!("{what}: {e}")),
            }
            if Instant::now() > deadline {
                self.fail(&format!("after {timeout:?}: {what}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn check<T>(&self, res: Result<T, CmdError>, what: &str) -> T {
        res.unwrap_or_else(|e| self.fail(&format!("{what}: {e}")))
    }

    /// Panics with `msg`, the page's URL and script errors and a screenshot.
    fn fail(&self, msg: &str) -> ! {
        let url = self
            .block_on(self.client.current_url())
            .map(|u| u.to_string())
            .unwrap_or_else(|e| format!("(unknown: {e})"));
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let test = std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .rsplit("::")
            .next()
            .unwrap_or("unnamed")
            .to_owned();
        let shot = match self.try_screenshot(&format!("failure-{test}-{stamp}")) {
            Ok(p) => p.display().to_string(),
            Err(e) => format!("(none: {e})"),
        };
        let errors = self.page_errors();
        panic!(
            "{msg}\n  page: {url}\n  screenshot: {shot}\n  page script errors: {}",
            if errors.is_empty() {
                "none".to_owned()
            } else {
                errors.join(" | ")
            }
        );
    }
}

impl Elem<'_> {
    /// Its visible text.
    pub fn text(&self) -> String {
        let res = self.browser.block_on(self.el.text());
        self.browser
            .check(res, &format!("reading the text of {:?}", self.css))
    }

    /// An attribute, `None` when absent.
    pub fn attr(&self, name: &str) -> Option<String> {
        let res = self.browser.block_on(self.el.attr(name));
        self.browser
            .check(res, &format!("reading {name} of {:?}", self.css))
    }

    /// A DOM property (e.g. `value`, `checked`) as a string.
    pub fn prop(&self, name: &str) -> Option<String> {
        let res = self.browser.block_on(self.el.prop(name));
        self.browser
            .check(res, &format!("reading .{name} of {:?}", self.css))
    }

    /// Clicks it (retried while another element covers it, up to
    /// [`DEFAULT_WAIT`]).
    pub fn click(&self) {
        let what = format!("clicking {:?}", self.css);
        self.browser
            .poll(DEFAULT_WAIT, &what, |b| match b.block_on(self.el.click()) {
                Ok(()) => Ok(Some(())),
                Err(e) if e.is_element_not_interactable() => Ok(None),
                Err(e) if e.to_string().contains("click intercepted") => Ok(None),
                Err(e) => Err(e),
            });
    }

    /// The first displayed element inside it matching `css`.
    pub fn find(&self, css: &str) -> Elem<'_> {
        let all = self.browser.block_on(self.el.find_all(Locator::Css(css)));
        let all = self
            .browser
            .check(all, &format!("finding {css:?} in {:?}", self.css));
        for el in all {
            if self.browser.block_on(el.is_displayed()).unwrap_or(false) {
                return Elem {
                    browser: self.browser,
                    el,
                    css: format!("{} {css}", self.css),
                };
            }
        }
        self.browser
            .fail(&format!("no visible {css:?} inside {:?}", self.css))
    }

    /// The fantoccini element, for what these helpers do not cover.
    pub fn element(&self) -> &Element {
        &self.el
    }
}

/// Where screenshots go: `FERRY_SCREENSHOT_DIR`, else
/// `<cargo target dir>/console-screenshots` (the test binary runs from
/// `<target>/<profile>/deps`).
pub fn screenshot_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FERRY_SCREENSHOT_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let target = crate::bin_dir()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("target"));
    target.join("console-screenshots")
}

/// Runs a chromedriver-specific CDP command (`goog/cdp/execute`).
async fn cdp(client: &Client, cmd: &'static str, params: Value) -> Result<Value, CmdError> {
    client.issue_cmd(CdpCommand { cmd, params }).await
}

#[derive(Debug)]
struct CdpCommand {
    cmd: &'static str,
    params: Value,
}

impl fantoccini::wd::WebDriverCompatibleCommand for CdpCommand {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!(
            "session/{}/goog/cdp/execute",
            session.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _url: &url::Url) -> (http::Method, Option<String>) {
        let body = json!({ "cmd": self.cmd, "params": self.params });
        (http::Method::POST, Some(body.to_string()))
    }
}

/// The WebDriver JSON of an element, to pass it to a script.
fn element_json(el: &Element) -> Value {
    json!({ ELEMENT_KEY: el.element_id().to_string() })
}

/// An element a script returned, `None` for anything else.
fn element_from_json(client: &Client, v: &Value) -> Option<Element> {
    let id = v.get(ELEMENT_KEY)?.as_str()?;
    Some(Element::from_element_id(
        client.clone(),
        ElementRef::from(id.to_owned()),
    ))
}

/// The W3C WebDriver key of element references in JSON.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

fn text_of_json(v: &Value) -> String {
    v.as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| v.to_string())
}
