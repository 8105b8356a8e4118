//! The processes behind a [`super::Browser`]: Debian's `chromedriver` on a
//! free loopback port, the headless `chromium` it starts, and their cleanup.
//!
//! Everything a browser writes lives in one private temp dir (profile,
//! crash database, driver log), and every process of it names that dir on
//! its command line. Chromedriver runs in its own process group (chromium
//! and its helpers inherit it); dropping a [`Driver`] SIGKILLs that group
//! and then any process still naming the dir (chromium's crash handlers
//! leave the group with `setsid`), so no process outlives the test, even
//! when it panics.

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::BrowserError;

/// Debian's chromedriver (package `chromium-driver`).
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Debian's chromium (package `chromium`).
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// How long chromedriver may take to listen.
const DRIVER_START: Duration = Duration::from_secs(30);

/// A running chromedriver and the temp dir its browser uses.
pub struct Driver {
    child: Child,
    /// The loopback port chromedriver serves WebDriver on.
    pub port: u16,
    /// The browser's private dir (kept until the processes are gone).
    pub dir: tempfile::TempDir,
}

impl Driver {
    /// Starts chromedriver on a free loopback port; a port taken between
    /// choosing and binding it is tried again with another (3 tries).
    pub fn spawn(time_zone: Option<&str>) -> Result<Driver, BrowserError> {
        let dir = tempfile::Builder::new()
            .prefix("ferry-browser-")
            .tempdir()
            .map_err(BrowserError::Io)?;
        let mut last = None;
        for _ in 0..3 {
            let port = free_port().map_err(BrowserError::Io)?;
            match start(dir.path(), port, time_zone) {
                Ok(child) => return Ok(Driver { child, port, dir }),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(BrowserError::DriverNotReady { log: String::new() }))
    }

    /// WebDriver URL of this chromedriver.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The last lines of chromedriver's log, for error messages.
    pub fn log_tail(&self) -> String {
        log_tail(self.dir.path())
    }

    /// Capabilities for a new session: headless chromium, a fresh profile,
    /// and no network beyond loopback.
    pub fn capabilities(&self) -> serde_json::Map<String, Value> {
        let profile = self.dir.path().join("profile");
        let caps = json!({
            "browserName": "chrome",
            // Agents serve TLS with their own self-signed certificates.
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": chromium_args(&profile),
            },
        });
        match caps {
            Value::Object(map) => map,
            _ => unreachable!("json! of an object literal is an object"),
        }
    }
}

/// The flags chromium runs with. Root in CI needs `--no-sandbox`; there is
/// no display, hence the new headless mode. Host names other than
/// `localhost` resolve to nothing and every non-loopback connection goes to
/// a proxy that is not there (port 9, discard), so a page can fetch nothing
/// from outside this machine; chromium's own background traffic is off.
fn chromium_args(profile: &Path) -> Vec<String> {
    let mut args: Vec<String> = [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--window-size=1280,900",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1, EXCLUDE [::1]",
        "--proxy-server=http://127.0.0.1:9",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-default-apps",
        "--disable-extensions",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--no-default-browser-check",
        "--force-color-profile=srgb",
        "--lang=en-US",
        "--mute-audio",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(format!("--user-data-dir={}", profile.display()));
    args
}

/// Spawns chromedriver on `port` and waits until it accepts connections.
fn start(dir: &Path, port: u16, time_zone: Option<&str>) -> Result<Child, BrowserError> {
    let log = dir.join("chromedriver.log");
    let mut cmd = Command::new(CHROMEDRIVER);
    cmd.arg(format!("--port={port}"))
        .arg(format!("--log-path={}", log.display()))
        // Chromium's config and crash database go to the temp dir, not
        // the user's home.
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .env("HOME", dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    if let Some(tz) = time_zone {
        cmd.env("TZ", tz);
    }
    let mut child = cmd.spawn().map_err(|e| BrowserError::Spawn {
        what: CHROMEDRIVER,
        source: e,
    })?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + DRIVER_START;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(child);
        }
        let exited = matches!(child.try_wait(), Ok(Some(_)));
        if exited || Instant::now() > deadline {
            kill_group(&mut child, dir);
            return Err(BrowserError::DriverNotReady { log: log_tail(dir) });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A port that was free a moment ago on 127.0.0.1.
fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn log_tail(dir: &Path) -> String {
    let text = fs::read_to_string(dir.join("chromedriver.log")).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// SIGKILLs chromedriver's process group, then every process that still
/// names `dir`, reaps chromedriver and waits (10 s at most) until none is
/// left.
fn kill_group(child: &mut Child, dir: &Path) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) takes plain integers; the negative pid names the
        // process group chromedriver leads (`process_group(0)` at spawn),
        // which holds only chromedriver and the chromium it started.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = processes_naming(dir);
        if left.is_empty() || Instant::now() > deadline {
            return;
        }
        for pid in left {
            // SAFETY: kill(2) with a pid just read from /proc whose command
            // line names this browser's private temp dir.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Processes whose command line contains `dir` (zombies have none).
pub fn processes_naming(dir: &Path) -> Vec<libc::pid_t> {
    let needle = dir.as_os_str().as_encoded_bytes();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let own = std::process::id();
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<libc::pid_t>().ok())
        .filter(|pid| u32::try_from(*pid).ok() != Some(own))
        .filter(|pid| {
            fs::read(PathBuf::from(format!("/proc/{pid}/cmdline")))
                .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle))
        })
        .collect()
}

impl Drop for Driver {
    fn drop(&mut self) {
        let dir = self.dir.path().to_path_buf();
        kill_group(&mut self.child, &dir);
    }
}
