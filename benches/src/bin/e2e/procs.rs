//! The processes of the end-to-end run: a child measured exactly (wall,
//! CPU and peak RSS), `ferry-agent init`, and the standby agent kept running.

use std::fs::File;
use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ferry_benches::measure::{self, RssSampler};
use ferry_benches::sys;

/// A child process measured exactly: wall, CPU and peak RSS (from `wait4`),
/// and its stdout.
pub(crate) struct ChildRun {
    pub(crate) wall: Duration,
    pub(crate) cpu: Duration,
    pub(crate) max_rss: u64,
    pub(crate) sampled_rss: u64,
    pub(crate) stdout: String,
}

pub(crate) fn run_measured(cmd: &mut Command, what: &str, log: &Path) -> Result<ChildRun> {
    let log_file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    // A forked child's ru_maxrss starts at the parent's peak RSS (exec keeps
    // the old mm's high-water mark): reset ours to our current RSS first, and
    // keep that floor to tell whether wait4's figure is the child's own.
    let own = std::process::id();
    measure::reset_peak_rss(own)?;
    let floor = measure::peak_rss(own)?;
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file))
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let sampler = RssSampler::start(child.id(), Duration::from_millis(20));
    let mut stdout = String::new();
    if let Some(mut out) = child.stdout.take() {
        out.read_to_string(&mut stdout)
            .with_context(|| format!("reading the output of {what}"))?;
    }
    let sampled_rss = sampler.peak();
    let (code, usage) = sys::wait4(child.id()).with_context(|| format!("waiting for {what}"))?;
    let wall = start.elapsed();
    drop(sampler);
    if code != 0 {
        let err = std::fs::read_to_string(log).unwrap_or_default();
        bail!("{what} exited with {code}:\n{stdout}\n{err}");
    }
    // ru_maxrss at the floor means the child never grew past our own RSS at
    // fork: its real peak is then the sampled one.
    let max_rss = if usage.max_rss > floor {
        usage.max_rss
    } else {
        sampled_rss
    };
    Ok(ChildRun {
        wall,
        cpu: usage.cpu(),
        max_rss,
        sampled_rss,
        stdout,
    })
}

pub(crate) fn init_agent(bin: &Path, dir: &Path) -> Result<String> {
    let out = Command::new(bin.join("ferry-agent"))
        .args(["init", "--dir"])
        .arg(dir)
        .output()
        .context("running ferry-agent init")?;
    if !out.status.success() {
        bail!(
            "ferry-agent init --dir {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let fp = stdout
        .lines()
        .last()
        .context("ferry-agent init printed nothing")?
        .trim()
        .to_owned();
    if fp.len() != 64 {
        bail!("unexpected fingerprint line {fp:?}");
    }
    Ok(fp)
}

pub(crate) struct Agent {
    pub(crate) child: Child,
    pub(crate) addr: SocketAddr,
}

impl Agent {
    pub(crate) fn start(bin: &Path, dir: &Path, trust: &str) -> Result<Self> {
        let log = dir.join("agent.log");
        let log_file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(bin.join("ferry-agent"))
            .args(["run", "--dir"])
            .arg(dir)
            .args(["--listen", "127.0.0.1:0", "--trust", trust])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file))
            .spawn()
            .context("starting ferry-agent run")?;
        let mut agent = Agent {
            child,
            addr: "0.0.0.0:0".parse().context("literal address")?,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.contains("ferry-agent ready")) {
                let addr = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("listen="))
                    .context("ready line without listen=")?;
                agent.addr = addr.parse().with_context(|| format!("address {addr:?}"))?;
                return Ok(agent);
            }
            if let Some(status) = agent.child.try_wait()? {
                bail!("ferry-agent exited with {status} before it was ready:\n{text}");
            }
            if Instant::now() > deadline {
                bail!("ferry-agent not ready after 30 s:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
