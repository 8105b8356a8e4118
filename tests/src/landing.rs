//! Proof that a fault harness's faults landed: a running `ferry` process
//! whose output is read while it runs (so a test can see it reach a hold
//! point before it kills or cuts), and per-kind tallies of faults drawn
//! versus faults that landed, with a minimum landing rate a run must reach.
//!
//! A fault that did not land is never a pass of its kind: the harness
//! records it as drawn-not-landed, and [`Tally::assert_landing_rates`]
//! fails the run when too many of a kind missed.

use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Child, ExitStatus, Output};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A spawned process whose stdout and stderr are collected as it runs.
pub struct Running {
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

fn collect(mut from: impl Read + Send + 'static, into: Arc<Mutex<Vec<u8>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            match into.lock() {
                Ok(mut v) => v.extend_from_slice(&buf[..n]),
                Err(p) => p.into_inner().extend_from_slice(&buf[..n]),
            }
        }
    })
}

fn text_of(buf: &Mutex<Vec<u8>>) -> String {
    match buf.lock() {
        Ok(v) => String::from_utf8_lossy(&v).into_owned(),
        Err(p) => String::from_utf8_lossy(&p.into_inner()).into_owned(),
    }
}

impl Running {
    /// Takes over `child`, spawned with piped stdout and stderr.
    pub fn new(mut child: Child) -> Running {
        let mut readers = Vec::new();
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        if let Some(out) = child.stdout.take() {
            readers.push(collect(out, stdout.clone()));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(collect(err, stderr.clone()));
        }
        Running {
            child,
            stdout,
            stderr,
            readers,
        }
    }

    /// What the process wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        text_of(&self.stderr)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits until stderr contains `needle` while the process still runs:
    /// true then; false if it exited first or `patience` ran out.
    pub fn wait_for_stderr(&mut self, needle: &str, patience: Duration) -> bool {
        let deadline = Instant::now() + patience;
        loop {
            if self.stderr_text().contains(needle) {
                return self.is_running();
            }
            if !self.is_running() || Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGKILLs the process if it still runs; true if it was running.
    pub fn kill(&mut self) -> bool {
        let was_running = self.is_running();
        let _ = self.child.kill();
        let _ = self.child.wait();
        was_running
    }

    /// Waits for the process to exit and returns everything it wrote.
    pub fn wait(mut self) -> Output {
        let status: ExitStatus = self.child.wait().expect("waiting for ferry");
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        Output {
            status,
            stdout: text_of(&self.stdout).into_bytes(),
            stderr: text_of(&self.stderr).into_bytes(),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `fail point reached` line a process logs when hold point `point`
/// lands (`ferry_engine::testpoint`, the standby's commit points).
pub fn reached_line(point: &str) -> String {
    format!("point=\"{point}\"")
}

/// Whether `log` (a process's log so far) says `point` was reached.
pub fn reached(log: &str, point: &str) -> bool {
    let needle = reached_line(point);
    log.lines()
        .any(|l| l.contains("fail point reached") && l.contains(&needle))
}

/// Waits until `agent` logs that it reached `point` (true), or `going`
/// says the operation is over without it, or `patience` ran out (false;
/// one last look at the log first).
pub fn wait_reached(
    agent: &crate::Agent,
    point: &str,
    patience: Duration,
    mut going: impl FnMut() -> bool,
) -> bool {
    let deadline = Instant::now() + patience;
    loop {
        if reached(&agent.log_text(), point) {
            return true;
        }
        if Instant::now() >= deadline || !going() {
            return reached(&agent.log_text(), point);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `FAILPOINTS` that holds the `skip + 1`-th hit of `point` until the
/// process is killed (earlier and later hits pass).
pub fn hold_failpoints(point: &str, skip: u32) -> String {
    failpoints(point, skip, "return(hold)")
}

/// `FAILPOINTS` that pauses the `skip + 1`-th hit of `point` for `ms` and
/// goes on (earlier and later hits pass).
pub fn pause_failpoints(point: &str, skip: u32, ms: u64) -> String {
    failpoints(point, skip, &format!("return({ms})"))
}

fn failpoints(point: &str, skip: u32, action: &str) -> String {
    if skip == 0 {
        format!("{point}=1*{action}")
    } else {
        format!("{point}={skip}*off->1*{action}")
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Count {
    drawn: u64,
    landed: u64,
}

/// Faults drawn and faults that landed, per kind.
#[derive(Debug, Default)]
pub struct Tally {
    kinds: BTreeMap<String, Count>,
}

impl Tally {
    /// One fault of `kind` was drawn.
    pub fn drawn(&mut self, kind: &str) {
        self.kinds.entry(kind.to_owned()).or_default().drawn += 1;
    }

    /// The fault of `kind` drawn last landed (with the evidence the caller
    /// checked).
    pub fn landed(&mut self, kind: &str) {
        self.kinds.entry(kind.to_owned()).or_default().landed += 1;
    }

    /// One fault of `kind` was drawn, and whether it landed.
    pub fn record(&mut self, kind: &str, landed: bool) {
        self.drawn(kind);
        if landed {
            self.landed(kind);
        }
    }

    /// Landed of `kind` so far.
    pub fn landed_of(&self, kind: &str) -> u64 {
        self.kinds.get(kind).map_or(0, |c| c.landed)
    }

    /// One line per kind: `kind: landed/drawn (rate)`.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for (kind, c) in &self.kinds {
            let rate = if c.drawn == 0 {
                0.0
            } else {
                100.0 * c.landed as f64 / c.drawn as f64
            };
            out.push_str(&format!(
                "  {kind:<28} drawn {:>5}  landed {:>5}  ({rate:.1} %)\n",
                c.drawn, c.landed
            ));
        }
        out
    }

    /// Fails unless every kind drawn at least `min_drawn` times landed in
    /// at least `floor` (0..=1) of its draws. `exempt` kinds (no fault to
    /// land, e.g. the clean control scenario) are not checked.
    pub fn assert_landing_rates(&self, floor: f64, min_drawn: u64, exempt: &[&str]) {
        let short: Vec<String> = self
            .kinds
            .iter()
            .filter(|(kind, c)| {
                !exempt.contains(&kind.as_str())
                    && c.drawn >= min_drawn
                    && (c.landed as f64) < floor * c.drawn as f64
            })
            .map(|(kind, c)| format!("{kind}: {}/{}", c.landed, c.drawn))
            .collect();
        assert!(
            short.is_empty(),
            "faults that did not land often enough (floor {:.0} %): {}\n{}",
            floor * 100.0,
            short.join(", "),
            self.summary()
        );
    }
}
