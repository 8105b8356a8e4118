//! Plain-copy baselines ferry is compared with: a shell command (cp,
//! rsync) and an in-process pread/pwrite copy.

use std::fs::File;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use ferry_benches::ceilings::CHUNK;
use ferry_benches::sys;
use serde_json::{json, Value};

use crate::gb;
use crate::procs::run_measured;

pub(crate) struct Baseline {
    pub(crate) name: String,
    pub(crate) wall: f64,
    pub(crate) cpu: f64,
    pub(crate) bytes: u64,
}

impl Baseline {
    pub(crate) fn json(&self) -> Value {
        json!({"name": self.name, "wall_s": self.wall, "cpu_s": self.cpu,
               "mb_per_s": self.bytes as f64 / 1e6 / self.wall,
               "cpu_s_per_gb": self.cpu / gb(self.bytes)})
    }
}

pub(crate) fn shell_baseline(
    name: &str,
    script: &str,
    bytes: u64,
    logs: &Path,
) -> Result<Baseline> {
    let run = run_measured(
        Command::new("sh").args(["-c", script]),
        name,
        &logs.join("baseline.log"),
    )?;
    Ok(Baseline {
        name: name.to_owned(),
        wall: run.wall.as_secs_f64(),
        cpu: run.cpu.as_secs_f64(),
        bytes,
    })
}

/// In-process copy: pread 4 MiB, pwrite it (all-zero chunks skipped, so the
/// copy stays sparse), fdatasync.
pub(crate) fn inprocess_copy(src: &Path, dst: &Path) -> Result<Baseline> {
    use std::os::unix::fs::FileExt;
    let input = File::open(src).with_context(|| format!("opening {}", src.display()))?;
    let size = input.metadata()?.len();
    let wall = Instant::now();
    let cpu = sys::thread_cpu();
    let output = File::create(dst).with_context(|| format!("creating {}", dst.display()))?;
    output.set_len(size)?;
    let mut buf = vec![0u8; CHUNK];
    let mut off = 0u64;
    while off < size {
        let n = input
            .read_at(&mut buf, off)
            .with_context(|| format!("reading {} at {off}", src.display()))?;
        if n == 0 {
            bail!("{} ended early at {off}", src.display());
        }
        if buf[..n].iter().any(|&b| b != 0) {
            output
                .write_all_at(&buf[..n], off)
                .with_context(|| format!("writing {} at {off}", dst.display()))?;
        }
        off += n as u64;
    }
    output
        .sync_data()
        .with_context(|| format!("fdatasync {}", dst.display()))?;
    Ok(Baseline {
        name: "in-process pread/pwrite copy + fdatasync".into(),
        wall: wall.elapsed().as_secs_f64(),
        cpu: sys::thread_cpu().saturating_sub(cpu).as_secs_f64(),
        bytes: size,
    })
}

pub(crate) fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd} >/dev/null")])
        .status()
        .is_ok_and(|s| s.success())
}

pub(crate) fn sq(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}
