//! Measuring other processes through `/proc`: CPU time of a live process,
//! its peak RSS (VmHWM) with a reset, and a sampler that tracks the peak RSS
//! of a short-lived process every few milliseconds.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::sys;

fn proc_path(pid: u32, file: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{file}"))
}

/// User + system CPU of every thread of process `pid` so far
/// (`/proc/PID/stat` fields utime and stime; clock-tick resolution, 10 ms).
pub fn process_cpu(pid: u32) -> Result<Duration> {
    let path = proc_path(pid, "stat");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    parse_stat_cpu(&text, sys::clock_ticks()).with_context(|| format!("parsing {}", path.display()))
}

/// utime + stime from the text of a `/proc/PID/stat` file.
pub fn parse_stat_cpu(text: &str, ticks_per_second: u64) -> Result<Duration> {
    // The command name (field 2) may contain spaces and parentheses: fields
    // after the last ')' start with field 3 (state).
    let rest = text
        .rfind(')')
        .map(|i| &text[i + 1..])
        .context("no ')' after the command name")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 14 (utime) is index 11 counting from field 3; field 15 (stime) is 12.
    if fields.len() < 13 {
        bail!("only {} fields after the command name", fields.len());
    }
    let utime: u64 = fields[11].parse().context("utime")?;
    let stime: u64 = fields[12].parse().context("stime")?;
    let ticks = utime + stime;
    let tps = ticks_per_second.max(1);
    Ok(
        Duration::from_secs(ticks / tps)
            + Duration::from_nanos((ticks % tps) * 1_000_000_000 / tps),
    )
}

/// A `kB` field of `/proc/PID/status` (e.g. `VmHWM`, `VmRSS`), in bytes.
pub fn status_field(pid: u32, field: &str) -> Result<u64> {
    let path = proc_path(pid, "status");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    parse_status_field(&text, field).with_context(|| format!("{field} in {}", path.display()))
}

/// A `kB` field from the text of a `/proc/PID/status` file, in bytes.
pub fn parse_status_field(text: &str, field: &str) -> Result<u64> {
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(field).and_then(|r| r.strip_prefix(':')) {
            let kib: u64 = rest
                .split_whitespace()
                .next()
                .context("empty value")?
                .parse()
                .context("not a number")?;
            return Ok(kib * 1024);
        }
    }
    bail!("field {field} not found")
}

/// Peak RSS (VmHWM) of process `pid` since start or the last [`reset_peak_rss`].
pub fn peak_rss(pid: u32) -> Result<u64> {
    status_field(pid, "VmHWM")
}

/// Resets the peak RSS of process `pid` to its current RSS
/// (writes `5` to `/proc/PID/clear_refs`; needs the same user).
pub fn reset_peak_rss(pid: u32) -> Result<()> {
    let path = proc_path(pid, "clear_refs");
    std::fs::write(&path, b"5").with_context(|| format!("writing {}", path.display()))
}

/// Samples VmHWM of a process every `interval` on a background thread and
/// keeps the largest value seen (the value is lost when the process exits,
/// so a short-lived process must be sampled while it runs).
pub struct RssSampler {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl RssSampler {
    /// Starts sampling `pid`.
    pub fn start(pid: u32, interval: Duration) -> Self {
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let peak = Arc::clone(&peak);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match peak_rss(pid) {
                        Ok(v) => {
                            peak.fetch_max(v, Ordering::Relaxed);
                        }
                        // The process is gone (or a zombie without status fields).
                        Err(_) => break,
                    }
                    std::thread::sleep(interval);
                }
            })
        };
        Self {
            peak,
            stop,
            thread: Some(thread),
        }
    }

    /// Largest VmHWM seen so far, in bytes.
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    /// Stops sampling and returns the largest VmHWM seen.
    pub fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peak()
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_awkward_command_name() {
        // Fields 3.. : state ppid pgrp session tty tpgid flags minflt cminflt
        // majflt cmajflt utime stime …
        let text = "1234 (a) b (c)) S 1 1 1 0 -1 0 10 0 0 0 250 150 0 0 20 0";
        let cpu = parse_stat_cpu(text, 100).unwrap();
        assert_eq!(cpu, Duration::from_secs(4));
        assert!(parse_stat_cpu("1234 (x) S 1 2", 100).is_err());
    }

    #[test]
    fn parses_status_fields() {
        let text = "Name:\tx\nVmPeak:\t  100 kB\nVmHWM:\t    2048 kB\nVmRSS:\t 1024 kB\n";
        assert_eq!(parse_status_field(text, "VmHWM").unwrap(), 2048 * 1024);
        assert_eq!(parse_status_field(text, "VmRSS").unwrap(), 1024 * 1024);
        assert!(parse_status_field(text, "VmSwap").is_err());
    }

    #[test]
    fn own_process_is_measurable() {
        let pid = std::process::id();
        assert!(peak_rss(pid).unwrap() > 0);
        process_cpu(pid).unwrap();
        reset_peak_rss(pid).unwrap();
        let sampler = RssSampler::start(pid, Duration::from_millis(5));
        std::thread::sleep(Duration::from_millis(20));
        assert!(sampler.stop() > 0);
    }
}
