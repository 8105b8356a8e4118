//! Helpers for ferry's end-to-end tests: locate the built binaries, start
//! and kill real `ferry-agent` processes, run `ferry` commands, compare images.
//!
//! Agents are separate processes talking real QUIC on loopback; nothing here
//! mocks the transport or the store. Tests that need something outside the
//! workspace (Ceph lab, loop devices, system tools) check it with
//! [`prereq::require`], which fails them under CI or `FERRY_REQUIRE_ALL=1`.

pub mod browser;
pub mod cli;
pub mod lab;
pub mod landing;
pub mod loopdev;
pub mod multi_agent;
#[cfg(feature = "failpoints")]
pub mod power_loss;
pub mod prereq;
pub mod sites;

use std::fs::File;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Directory holding the workspace's built binaries (`target/<profile>`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test-binary>
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps")
        .to_path_buf()
}

/// Path of a workspace binary. `cargo test` does not build another
/// package's binaries, so the test command builds them first
/// (`cargo build --workspace --bins`, as scripts/test.sh does).
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins --features ferry-e2e/failpoints` first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// Runs `ferry-agent init --dir DIR` and returns the fingerprint (last line).
pub fn init_agent(dir: &Path) -> String {
    let out = Command::new(bin("ferry-agent"))
        .args(["init", "--dir"])
        .arg(dir)
        .output()
        .expect("running ferry-agent init");
    assert!(
        out.status.success(),
        "init failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("utf-8 output");
    let last = stdout
        .lines()
        .last()
        .expect("init prints a fingerprint")
        .trim()
        .to_owned();
    assert_eq!(last.len(), 64, "fingerprint line: {last:?}");
    last
}

/// A running `ferry-agent run` process.
pub struct Agent {
    /// Its data directory.
    pub dir: PathBuf,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its fingerprint.
    pub fingerprint: String,
    child: Option<Child>,
    log: PathBuf,
    trust: Vec<String>,
}

impl Agent {
    /// Starts an agent in `dir` (already initialised) trusting `trust`.
    pub fn start(dir: &Path, fingerprint: &str, trust: &[&str]) -> Agent {
        Self::start_with(dir, fingerprint, trust, &[])
    }

    /// Same, with extra environment variables (e.g. FAILPOINTS).
    pub fn start_with(
        dir: &Path,
        fingerprint: &str,
        trust: &[&str],
        env: &[(&str, &str)],
    ) -> Agent {
        Self::spawn(dir, fingerprint, trust, env, "127.0.0.1:0")
    }

    /// Kills the agent (SIGKILL) if it runs and starts it again on the same
    /// address, with `env`.
    pub fn restart(&mut self, env: &[(&str, &str)]) {
        if let Err(log) = self.try_restart(env) {
            panic!("ferry-agent exited before it was ready:\n{log}");
        }
    }

    /// Waits (60 s at most) until the agent's log contains `needle`, e.g.
    /// [`landing::reached_line`] of a hold point; panics with the log if it
    /// never does.
    pub fn wait_for_log(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.log_text().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "agent never logged {needle:?}:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Like [`Agent::restart`], but an agent that exits before it is ready
    /// is an `Err` with its log instead of a panic. While the agent was
    /// down, another process of a busy test machine may have been given its
    /// port as an ephemeral one: a start refused with "Address already in
    /// use" is tried again for up to 60 s (a production agent's port is
    /// its own; this is a test-machine collision, not a fault under test).
    pub fn try_restart(&mut self, env: &[(&str, &str)]) -> Result<(), String> {
        self.kill9();
        let trust: Vec<String> = self.trust.clone();
        let trust: Vec<&str> = trust.iter().map(String::as_str).collect();
        let listen = self.addr.to_string();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut fresh = loop {
            match Self::try_spawn(&self.dir, &self.fingerprint, &trust, env, &listen) {
                Ok(fresh) => break fresh,
                Err(log) if log.contains("Address already in use") && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(log) => return Err(log),
            }
        };
        assert_eq!(
            fresh.addr, self.addr,
            "restarted agent must keep its address"
        );
        self.child = fresh.child.take();
        self.log = fresh.log.clone();
        Ok(())
    }

    fn spawn(
        dir: &Path,
        fingerprint: &str,
        trust: &[&str],
        env: &[(&str, &str)],
        listen: &str,
    ) -> Agent {
        match Self::try_spawn(dir, fingerprint, trust, env, listen) {
            Ok(agent) => agent,
            Err(log) => panic!("ferry-agent exited before it was ready:\n{log}"),
        }
    }

    /// Starts an agent; `Err` with its log if it exits before it is ready.
    fn try_spawn(
        dir: &Path,
        fingerprint: &str,
        trust: &[&str],
        env: &[(&str, &str)],
        listen: &str,
    ) -> Result<Agent, String> {
        let log = dir.join(format!(
            "agent-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        let log_file = File::create(&log).expect("agent log file");
        let mut cmd = Command::new(bin("ferry-agent"));
        cmd.args(["run", "--dir"])
            .arg(dir)
            .args(["--listen", listen])
            // Many agents run at once: each takes a free port for its
            // operator API (written to DIR/api.addr).
            .args(["--api-listen", "127.0.0.1:0"]);
        for t in trust {
            cmd.args(["--trust", t]);
        }
        // Info unless the test asks for more.
        cmd.env("RUST_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file))
            .spawn()
            .expect("starting ferry-agent");
        let mut agent = Agent {
            dir: dir.to_path_buf(),
            addr: "0.0.0.0:0".parse().expect("literal address"),
            fingerprint: fingerprint.to_owned(),
            child: Some(child),
            log,
            trust: trust.iter().map(|t| t.to_string()).collect(),
        };
        agent.addr = agent.wait_ready()?;
        Ok(agent)
    }

    /// The address the agent listens on once it logs that it is ready;
    /// `Err` with its log if it exits first.
    fn wait_ready(&mut self) -> Result<SocketAddr, String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = self.log_text();
            if let Some(line) = text.lines().find(|l| l.contains("ferry-agent ready")) {
                return Ok(ready_line_listen(line));
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("ferry-agent exited with {status}:\n{text}"));
                }
            }
            assert!(
                Instant::now() < deadline,
                "ferry-agent not ready after 30 s:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the (stopped) agent again in the foreground expecting it to
    /// refuse to run: returns what it printed once it exited non-zero
    /// (panics if it became ready or is still running after 20 s).
    pub fn start_expecting_refusal(&self) -> String {
        let mut cmd = Command::new(bin("ferry-agent"));
        cmd.args(["run", "--dir"])
            .arg(&self.dir)
            .args(["--listen", &self.addr.to_string()])
            .args(["--api-listen", "127.0.0.1:0"])
            .env("RUST_LOG", "info");
        for t in &self.trust {
            cmd.args(["--trust", t]);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting ferry-agent");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                let out = child.wait_with_output().expect("agent output");
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                assert!(!out.status.success(), "agent exited 0:\n{text}");
                return text;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let out = child.wait_with_output().expect("agent output");
                panic!(
                    "agent kept running on damaged state:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Everything the agent logged so far.
    pub fn log_text(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    /// `quic://ADDR/NAME` for an image on this agent (or via `via`).
    pub fn target(&self, image: &str) -> String {
        format!("quic://{}/{image}", self.addr)
    }

    /// The standby copy of `image`.
    pub fn image_path(&self, image: &str) -> PathBuf {
        self.dir.join("images").join(format!("{image}.raw"))
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Sends a signal.
    pub fn signal(&self, signal: i32) {
        let pid = self.pid() as i32;
        // SAFETY-free: libc::kill has no memory-safety preconditions, but it is
        // an FFI call; tests are allowed to use it through a small wrapper.
        kill(pid, signal);
    }

    /// SIGKILLs the agent and waits for it to die.
    /// SIGKILLs the agent; true if it was still running then (a kill that
    /// landed on a live process, not on one that had already exited).
    pub fn kill9(&mut self) -> bool {
        match self.child.take() {
            Some(mut child) => {
                let was_running = matches!(child.try_wait(), Ok(None));
                let _ = child.kill();
                let _ = child.wait();
                was_running
            }
            None => false,
        }
    }

    /// SIGTERMs the agent and returns how it exited (`None`: still running
    /// after 30 s, then SIGKILLed).
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        kill(child.id() as i32, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERMs the agent and waits for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill(child.id() as i32, libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// The listen address named by the agent's "ferry-agent ready" log line,
/// in text (`listen=ADDR`) or JSON (`"listen":"ADDR"`) format.
pub fn ready_line_listen(line: &str) -> SocketAddr {
    let addr = if line.trim_start().starts_with('{') {
        let event: serde_json::Value = serde_json::from_str(line).expect("a JSON log line parses");
        event["fields"]["listen"]
            .as_str()
            .expect("ready event has a listen field")
            .to_owned()
    } else {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix("listen="))
            .expect("ready line names the listen address")
            .to_owned()
    };
    addr.parse().expect("listen address parses")
}

impl Drop for Agent {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_for_a_failed_test();
        }
        self.kill9();
    }
}

/// How many of an agent's last log lines a failed test prints.
const FAILED_TEST_LOG_LINES: usize = 120;

impl Agent {
    /// Prints whether the agent was still running (or how it exited) and
    /// the tail of its log: the agent's directory, and so its log, goes
    /// with the test's temporary directory.
    fn print_for_a_failed_test(&mut self) {
        let state = match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => "still running".to_owned(),
            Some(Ok(Some(status))) => format!("exited: {status}"),
            Some(Err(e)) => format!("state unknown: {e}"),
            None => "not running (stopped by the test)".to_owned(),
        };
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(FAILED_TEST_LOG_LINES)..];
        eprintln!(
            "---- ferry-agent in {} ({state}); last {} of {} log lines ----\n{}\n---- end of {} ----",
            self.dir.display(),
            tail.len(),
            lines.len(),
            tail.join("\n"),
            self.dir.display()
        );
    }
}

#[allow(unsafe_code)]
fn kill(pid: i32, signal: i32) {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// Runs `ferry ARGS…` and returns its output.
pub fn ferry(args: &[&str]) -> Output {
    Command::new(bin("ferry"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running ferry")
}

/// Starts `ferry ARGS…` in the background.
pub fn ferry_spawn(args: &[&str]) -> Child {
    Command::new(bin("ferry"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting ferry")
}

/// The arguments of `ferry sync --dir DIR file:SOURCE TARGET --peer PEER
/// --json EXTRA…`.
pub fn sync_args(
    dir: &Path,
    source: &Path,
    target: &str,
    peer: &str,
    extra: &[&str],
) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "sync".into(),
        "--dir".into(),
        dir.display().to_string(),
        format!("file:{}", source.display()),
        target.into(),
        "--peer".into(),
        peer.into(),
        "--json".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Starts `ferry sync … --json` (see [`sync_args`]) in the background.
pub fn sync_spawn(dir: &Path, source: &Path, target: &str, peer: &str, extra: &[&str]) -> Child {
    let args = sync_args(dir, source, target, peer, extra);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    ferry_spawn(&refs)
}

/// Every pending-epoch journal (`*.journal`) under a files standby agent's
/// image directories (`DIR/images/*/`), sorted.
pub fn standby_journals(standby_dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let images = standby_dir.join("images");
    for dir in std::fs::read_dir(images).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(dir.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if f.path().extension().is_some_and(|e| e == "journal") {
                out.push(f.path());
            }
        }
    }
    out.sort();
    out
}

/// Runs `ferry sync … --json` and returns the parsed report (panics on failure).
pub fn sync_json(
    dir: &Path,
    source: &Path,
    target: &str,
    peer: &str,
    extra: &[&str],
) -> serde_json::Value {
    let args = sync_args(dir, source, target, peer, extra);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = ferry(&refs);
    assert!(
        out.status.success(),
        "ferry sync failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("sync --json prints one JSON object")
}

/// BLAKE3 of a file's contents.
pub fn hash_file(path: &Path) -> String {
    ferry_agent::imagegen::file_hash(path).expect("hashing file")
}

/// A primary and a standby directory, initialised, with the standby running.
pub struct Pair {
    /// Holds the temporary directories.
    pub tmp: tempfile::TempDir,
    /// Primary agent directory.
    pub primary_dir: PathBuf,
    /// Primary fingerprint.
    pub primary_fp: String,
    /// Running standby agent.
    pub standby: Agent,
}

impl Pair {
    /// Sets up a pair; `standby_config` (TOML) is written to the standby's config if given.
    pub fn new(standby_config: Option<&str>) -> Pair {
        let tmp = tempfile::tempdir().expect("temp dir");
        let primary_dir = tmp.path().join("primary");
        let standby_dir = tmp.path().join("standby");
        let primary_fp = init_agent(&primary_dir);
        let standby_fp = init_agent(&standby_dir);
        if let Some(cfg) = standby_config {
            std::fs::write(standby_dir.join("config.toml"), cfg).expect("write config");
        }
        let standby = Agent::start(&standby_dir, &standby_fp, &[&primary_fp]);
        Pair {
            tmp,
            primary_dir,
            primary_fp,
            standby,
        }
    }

    /// A path in the pair's temporary directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
}
