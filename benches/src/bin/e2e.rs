//! The end-to-end benchmark harness: replicates a mixed image between two
//! real agent processes over loopback QUIC and prints wall throughput,
//! CPU-seconds per GB and peak RSS of both processes, side by side with the
//! stage ceilings measured in the same run and with plain-copy baselines,
//! each figure with its target and PASS/MISS.
//!
//! The run fails (non-zero exit, no tables) when a standby copy differs
//! from its source after a sync, or when `ferry sync --json` lacks a report
//! field the figures use (named in the error; never read as 0). Per-core
//! figures use the detected core count (`available_parallelism`), printed
//! with the machine.
//!
//! ```text
//! cargo build --release
//! cargo run --release -p ferry-benches --bin e2e -- [--size 2GiB] [--dir /path] [--json]
//!     [--sparse 64GiB] [--sparse-data 256MiB] [--quic-bytes 1GiB] [--no-baselines]
//! ```
//!
//! GB and MB are decimal (10⁹, 10⁶ bytes); MiB/GiB are binary.

use std::fs::File;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ferry_agent::imagegen::{file_hash, make_image, scattered_writes};
use ferry_benches::ceilings::{self, QuicCeiling, StageReport, CHUNK};
use ferry_benches::measure::{self, RssSampler};
use ferry_benches::sys;
use serde_json::{json, Value};

const MIB: u64 = 1 << 20;
const RSS_LIMIT: u64 = 256 * MIB;
const CPU_RATIO_TARGET: f64 = 1.3;
const WALL_TARGET: f64 = 0.70;
const FRAMING_TARGET: f64 = 0.02;
const WIRE_TARGET: f64 = 3.0;
const SCATTERED_WRITES: u64 = ceilings::SCATTERED_BLOCKS;

/// Integer fields of the `ferry sync --json` report that the budget and the
/// tables use; a report without one of them fails the run.
const REPORT_FIELDS: [&str; 8] = [
    "bytes_scanned",
    "bytes_zero",
    "bytes_changed",
    "bytes_plain_data",
    "bytes_sent",
    "frame_bytes",
    "udp_bytes",
    "batches",
];

/// The integer `name` of a sync report, or an error naming it.
fn report_u64(report: &Value, name: &str) -> Result<u64> {
    match report.get(name) {
        Some(v) => v.as_u64().with_context(|| {
            format!("ferry sync --json report field {name:?} is not a non-negative integer: {v}")
        }),
        None => bail!("ferry sync --json report lacks the field {name:?}: {report}"),
    }
}

/// Cores this machine offers the run (the per-core figures' divisor).
fn cores() -> Result<usize> {
    Ok(std::thread::available_parallelism()
        .context("detecting the number of cores (available_parallelism)")?
        .get())
}

struct Args {
    size: u64,
    dir: Option<PathBuf>,
    json: bool,
    seed: u64,
    sparse: Option<u64>,
    sparse_data: u64,
    quic_bytes: u64,
    baselines: bool,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        size: 2 << 30,
        dir: None,
        json: false,
        seed: 42,
        sparse: None,
        sparse_data: 256 * MIB,
        quic_bytes: 1 << 30,
        baselines: true,
    };
    let mut it = std::env::args().skip(1);
    let bytes = |v: Option<String>, flag: &str| -> Result<u64> {
        let v = v.with_context(|| format!("{flag} needs a value"))?;
        ferry_agent::units::parse_bytes(&v).with_context(|| format!("{flag} {v:?}"))
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--size" => args.size = bytes(it.next(), "--size")?,
            "--dir" => args.dir = Some(PathBuf::from(it.next().context("--dir needs a path")?)),
            "--json" => args.json = true,
            "--seed" => {
                args.seed = it
                    .next()
                    .context("--seed needs a number")?
                    .parse()
                    .context("--seed")?
            }
            "--sparse" => args.sparse = Some(bytes(it.next(), "--sparse")?),
            "--sparse-data" => args.sparse_data = bytes(it.next(), "--sparse-data")?,
            "--quic-bytes" => args.quic_bytes = bytes(it.next(), "--quic-bytes")?,
            "--no-baselines" => args.baselines = false,
            "-h" | "--help" => {
                println!(
                    "e2e [--size 2GiB] [--dir PATH] [--json] [--seed N] [--sparse 64GiB] \
                     [--sparse-data 256MiB] [--quic-bytes 1GiB] [--no-baselines]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    if args.size < 64 * MIB {
        bail!("--size must be at least 64MiB");
    }
    Ok(args)
}

/// Directory holding `ferry` and `ferry-agent` (next to this binary, i.e.
/// `target/release`), or `FERRY_BIN_DIR`.
fn bin_dir() -> Result<PathBuf> {
    let dir = match std::env::var_os("FERRY_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => std::env::current_exe()
            .context("locating this executable")?
            .parent()
            .context("executable has no directory")?
            .to_path_buf(),
    };
    for name in ["ferry", "ferry-agent"] {
        if !dir.join(name).is_file() {
            bail!(
                "{} is missing: run cargo build --release first",
                dir.join(name).display()
            );
        }
    }
    Ok(dir)
}

fn gb(bytes: u64) -> f64 {
    bytes as f64 / 1e9
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB as f64
}

fn verdict(pass: bool) -> &'static str {
    if pass {
        "PASS"
    } else {
        "MISS"
    }
}

/// A child process measured exactly: wall, CPU and peak RSS (from `wait4`),
/// and its stdout.
struct ChildRun {
    wall: Duration,
    cpu: Duration,
    max_rss: u64,
    sampled_rss: u64,
    stdout: String,
}

fn run_measured(cmd: &mut Command, what: &str, log: &Path) -> Result<ChildRun> {
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

fn init_agent(bin: &Path, dir: &Path) -> Result<String> {
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

struct Agent {
    child: Child,
    addr: SocketAddr,
}

impl Agent {
    fn start(bin: &Path, dir: &Path, trust: &str) -> Result<Self> {
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

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Byte counts the budget needs, per phase.
struct PhaseBytes {
    read: u64,
    nonzero_scanned: u64,
    plain: u64,
    payload: u64,
    frames: u64,
}

/// Stage rates (CPU-seconds per GB) used for the budget.
struct Rates {
    read: f64,
    zero: f64,
    blake3_4k: f64,
    blake3_batch: f64,
    compress: f64,
    crc: f64,
    decompress: f64,
    write: f64,
    write_4k: f64,
    quic: f64,
}

impl Rates {
    fn from(stages: &StageReport, quic: &QuicCeiling) -> Result<Self> {
        let r = |name: &str| -> Result<f64> {
            Ok(stages
                .get(name)
                .with_context(|| format!("stage {name} not measured"))?
                .cpu_s_per_gb())
        };
        let read = stages
            .get("read_io_uring")
            .or_else(|| stages.get("read_blockreader_pread"))
            .context("read stage not measured")?
            .cpu_s_per_gb();
        Ok(Self {
            read,
            zero: r("zero_check")?,
            blake3_4k: r("blake3_4k")?,
            blake3_batch: r("blake3_batch")?,
            compress: r("zstd1_compress")?,
            crc: r("crc32c")?,
            decompress: r("zstd_decompress")?,
            write: r("write_fdatasync")?,
            write_4k: r("write_4k_random")?,
            quic: quic.cpu_s_per_gb(),
        })
    }

    /// CPU-seconds the stages need for a phase, itemised; `scattered`
    /// phases write 4 KiB extents, so their write stage is the 4 KiB one.
    fn budget(&self, b: &PhaseBytes, scattered: bool) -> Vec<(&'static str, f64)> {
        let (write_name, write_rate) = if scattered {
            ("write 4k random+fdatasync", self.write_4k)
        } else {
            ("write+fdatasync", self.write)
        };
        vec![
            ("read", self.read * gb(b.read)),
            ("zero_check", self.zero * gb(b.read)),
            ("blake3_4k (sender)", self.blake3_4k * gb(b.nonzero_scanned)),
            ("blake3_batch x2", self.blake3_batch * gb(2 * b.plain)),
            ("zstd1_compress", self.compress * gb(b.plain)),
            ("crc32c x2", self.crc * gb(2 * b.payload)),
            ("quic send+recv", self.quic * gb(b.frames)),
            ("zstd_decompress", self.decompress * gb(b.plain)),
            (write_name, write_rate * gb(b.plain)),
        ]
    }
}

struct Phase {
    name: &'static str,
    report: Value,
    /// [`REPORT_FIELDS`] of `report`, each present (checked by `sync`).
    fields: std::collections::BTreeMap<&'static str, u64>,
    /// `seconds` of the report.
    report_seconds: f64,
    /// Cores of the machine.
    cores: usize,
    wall: f64,
    image_size: u64,
    ferry_cpu: f64,
    agent_cpu: f64,
    ferry_rss: u64,
    ferry_rss_sampled: u64,
    agent_rss: u64,
    budget: Vec<(&'static str, f64)>,
}

impl Phase {
    /// A report field; only [`REPORT_FIELDS`] (checked present) may be asked.
    fn field(&self, name: &str) -> u64 {
        *self
            .fields
            .get(name)
            .unwrap_or_else(|| panic!("{name} is not in REPORT_FIELDS"))
    }
    fn cpu(&self) -> f64 {
        self.ferry_cpu + self.agent_cpu
    }
    fn budget_total(&self) -> f64 {
        self.budget.iter().map(|b| b.1).sum()
    }
    fn cpu_ratio(&self) -> f64 {
        self.cpu() / self.budget_total()
    }
    fn mb_s(&self) -> f64 {
        self.image_size as f64 / 1e6 / self.wall
    }
    /// Wall throughput (MB/s of image) that the stage budget × 1.3 allows
    /// on this machine's cores.
    fn allowed_mb_s(&self) -> f64 {
        self.image_size as f64 / 1e6 / (CPU_RATIO_TARGET * self.budget_total() / self.cores as f64)
    }
    /// CPU / wall / cores.
    fn core_utilisation(&self) -> f64 {
        self.cpu() / self.wall / self.cores as f64
    }
    fn framing(&self) -> f64 {
        let sent = self.field("bytes_sent");
        if sent == 0 {
            return 0.0;
        }
        (self.field("frame_bytes") as f64 - sent as f64) / sent as f64
    }
    fn udp_overhead(&self) -> f64 {
        let sent = self.field("bytes_sent");
        if sent == 0 {
            return 0.0;
        }
        (self.field("udp_bytes") as f64 - sent as f64) / sent as f64
    }
    fn wire_per_changed(&self, field: &str) -> f64 {
        let changed = self.field("bytes_changed");
        if changed == 0 {
            return 0.0;
        }
        self.field(field) as f64 / changed as f64
    }
    fn json(&self) -> Value {
        json!({
            "name": self.name,
            "wall_s": self.wall,
            "image_bytes": self.image_size,
            "mb_per_s": self.mb_s(),
            "ferry_cpu_s": self.ferry_cpu,
            "agent_cpu_s": self.agent_cpu,
            "cpu_s_per_gb": self.cpu() / gb(self.image_size),
            "budget_cpu_s": self.budget_total(),
            "budget_cpu_s_per_gb": self.budget_total() / gb(self.image_size),
            "budget_items": self.budget.iter().map(|(k, v)| json!({"stage": k, "cpu_s": v})).collect::<Vec<_>>(),
            "cpu_ratio": self.cpu_ratio(),
            "cores": self.cores,
            "core_utilisation": self.core_utilisation(),
            "allowed_mb_per_s": self.allowed_mb_s(),
            "ferry_peak_rss": self.ferry_rss,
            "ferry_peak_rss_sampled": self.ferry_rss_sampled,
            "agent_peak_rss": self.agent_rss,
            "framing_overhead": self.framing(),
            "udp_overhead": self.udp_overhead(),
            "frame_bytes_per_changed_byte": self.wire_per_changed("frame_bytes"),
            "udp_bytes_per_changed_byte": self.wire_per_changed("udp_bytes"),
            "standby_equals_source": true,
            "sync_report": self.report,
        })
    }
}

struct Ferry<'a> {
    bin: &'a Path,
    primary: PathBuf,
    agent: &'a Agent,
    standby_dir: PathBuf,
    peer: String,
    rates: &'a Rates,
    logs: PathBuf,
    cores: usize,
}

impl Ferry<'_> {
    fn sync(&self, name: &'static str, image: &Path, image_name: &str) -> Result<Phase> {
        let image_size = std::fs::metadata(image)?.len();
        let read = ceilings::bytes_read_by_sync(image)?;
        let agent_pid = self.agent.pid();
        measure::reset_peak_rss(agent_pid)?;
        let agent_cpu0 = measure::process_cpu(agent_pid)?;
        let mut cmd = Command::new(self.bin.join("ferry"));
        cmd.args(["sync", "--dir"])
            .arg(&self.primary)
            .arg(format!("file:{}", image.display()))
            .arg(format!("quic://{}/{image_name}", self.agent.addr))
            .args(["--peer", &self.peer, "--json"]);
        let run = run_measured(
            &mut cmd,
            "ferry sync",
            &self.logs.join(format!("ferry-{name}.log")),
        )?;
        let agent_cpu = measure::process_cpu(agent_pid)?.saturating_sub(agent_cpu0);
        let agent_rss = measure::peak_rss(agent_pid)?;
        let report: Value = serde_json::from_str(
            run.stdout
                .lines()
                .rev()
                .find(|l| l.trim_start().starts_with('{'))
                .context("ferry sync --json printed no JSON object")?,
        )
        .with_context(|| format!("parsing ferry sync output {:?}", run.stdout))?;
        let mut fields = std::collections::BTreeMap::new();
        for name in REPORT_FIELDS {
            fields.insert(name, report_u64(&report, name)?);
        }
        let report_seconds = report
            .get("seconds")
            .and_then(Value::as_f64)
            .with_context(|| {
                format!("ferry sync --json report lacks the number \"seconds\": {report}")
            })?;
        let f = |k: &str| fields[k];
        let bytes = PhaseBytes {
            read,
            nonzero_scanned: f("bytes_scanned").saturating_sub(f("bytes_zero")),
            plain: f("bytes_plain_data"),
            payload: f("bytes_sent"),
            frames: f("frame_bytes"),
        };
        let standby = self
            .standby_dir
            .join("images")
            .join(format!("{image_name}.raw"));
        let (source_hash, standby_hash) = (file_hash(image)?, file_hash(&standby)?);
        if source_hash != standby_hash {
            bail!(
                "after the {name} sync the standby copy {} differs from the source {}: \
                 BLAKE3 {standby_hash} != {source_hash}",
                standby.display(),
                image.display()
            );
        }
        Ok(Phase {
            name,
            report,
            fields,
            report_seconds,
            cores: self.cores,
            wall: run.wall.as_secs_f64(),
            image_size,
            ferry_cpu: run.cpu.as_secs_f64(),
            agent_cpu: agent_cpu.as_secs_f64(),
            ferry_rss: run.max_rss,
            ferry_rss_sampled: run.sampled_rss,
            agent_rss,
            budget: self.rates.budget(&bytes, name.contains("incremental")),
        })
    }
}

struct Baseline {
    name: String,
    wall: f64,
    cpu: f64,
    bytes: u64,
}

impl Baseline {
    fn json(&self) -> Value {
        json!({"name": self.name, "wall_s": self.wall, "cpu_s": self.cpu,
               "mb_per_s": self.bytes as f64 / 1e6 / self.wall,
               "cpu_s_per_gb": self.cpu / gb(self.bytes)})
    }
}

fn shell_baseline(name: &str, script: &str, bytes: u64, logs: &Path) -> Result<Baseline> {
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
fn inprocess_copy(src: &Path, dst: &Path) -> Result<Baseline> {
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

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd} >/dev/null")])
        .status()
        .is_ok_and(|s| s.success())
}

fn sq(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

/// A sparse image of `size` bytes holding `data` bytes of mixed content in
/// 1 MiB pieces spread evenly over it.
fn make_sparse_image(path: &Path, size: u64, data: u64, seed: u64) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let piece_src = path.with_extension("piece");
    make_image(&piece_src, data.max(MIB), seed)?;
    let src = File::open(&piece_src)?;
    let out = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    out.set_len(size)?;
    let pieces = data.div_ceil(MIB).max(1);
    let stride = (size / pieces) / MIB * MIB;
    let mut buf = vec![0u8; MIB as usize];
    for i in 0..pieces {
        let n = src.read_at(&mut buf, i * MIB)?;
        out.write_all_at(&buf[..n], i * stride)?;
    }
    out.sync_all()?;
    std::fs::remove_file(&piece_src)?;
    Ok(())
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let bin = bin_dir()?;
    let cores = cores()?;
    let base = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            d.clone()
        }
        None => std::env::temp_dir(),
    };
    let work = tempfile::Builder::new()
        .prefix("ferry-e2e-")
        .tempdir_in(&base)
        .with_context(|| format!("temp dir in {}", base.display()))?;
    let root = work.path();
    let logs = root.join("logs");
    std::fs::create_dir_all(&logs)?;
    let say = |s: &str| {
        if !args.json {
            eprintln!("[e2e] {s}");
        }
    };

    // 1. The image.
    let image = root.join("image.raw");
    say(&format!(
        "{cores} cores detected (per-core figures divide by it)"
    ));
    say(&format!("making a {} MiB mixed image", mib(args.size)));
    let t = Instant::now();
    make_image(&image, args.size, args.seed)
        .with_context(|| format!("making {}", image.display()))?;
    say(&format!("image made in {:.1} s", t.elapsed().as_secs_f64()));

    // 2. Ceilings.
    say("timing each stage alone on the image's data");
    let stages = ceilings::measure_stages(&image, root)?;
    say("raw quinn loopback");
    let quic = ceilings::quic_ceiling(&root.join("quic-ids"), args.quic_bytes)?;
    let rates = Rates::from(&stages, &quic)?;

    // 3. Baselines (full copies).
    let mut baselines = Vec::new();
    let rsync_dst = root.join("rsync-copy.raw");
    let have_rsync = have("rsync");
    if args.baselines {
        say("baselines: cp, in-process copy, rsync");
        let dst = root.join("cp-copy.raw");
        baselines.push(shell_baseline(
            "cp --sparse=always + sync",
            &format!("cp --sparse=always {} {} && sync", sq(&image), sq(&dst)),
            args.size,
            &logs,
        )?);
        std::fs::remove_file(&dst)?;
        let dst = root.join("inproc-copy.raw");
        baselines.push(inprocess_copy(&image, &dst)?);
        std::fs::remove_file(&dst)?;
        if have_rsync {
            baselines.push(shell_baseline(
                "rsync --sparse (full, local) + sync",
                &format!("rsync --sparse {} {} && sync", sq(&image), sq(&rsync_dst)),
                args.size,
                &logs,
            )?);
        }
    }

    // 4. ferry: agents, full, incremental, unchanged.
    let primary = root.join("primary");
    let standby = root.join("standby");
    let primary_fp = init_agent(&bin, &primary)?;
    let standby_fp = init_agent(&bin, &standby)?;
    let agent = Agent::start(&bin, &standby, &primary_fp)?;
    let agent_idle_rss = measure::status_field(agent.pid(), "VmRSS")?;
    let ferry = Ferry {
        bin: &bin,
        primary,
        agent: &agent,
        standby_dir: standby.clone(),
        peer: standby_fp,
        rates: &rates,
        logs: logs.clone(),
        cores,
    };
    let mut phases = Vec::new();
    say("ferry: full sync");
    phases.push(ferry.sync("full", &image, "bench")?);
    say(&format!(
        "scattered_writes: {SCATTERED_WRITES} x 4 KiB (128 MiB)"
    ));
    scattered_writes(&image, SCATTERED_WRITES, args.seed + 1)?;
    say("ferry: incremental sync");
    phases.push(ferry.sync("incremental", &image, "bench")?);
    if args.baselines && have_rsync {
        baselines.push(shell_baseline(
            "rsync --no-whole-file --inplace (incremental, local) + sync",
            &format!(
                "rsync --no-whole-file --inplace {} {} && sync",
                sq(&image),
                sq(&rsync_dst)
            ),
            args.size,
            &logs,
        )?);
        let _ = std::fs::remove_file(&rsync_dst);
    }
    say("ferry: unchanged sync");
    phases.push(ferry.sync("unchanged", &image, "bench")?);

    // 5. Peak RSS with a big sparse image.
    let mut sparse_phases = Vec::new();
    if let Some(sparse_size) = args.sparse {
        let path = root.join("sparse.raw");
        say(&format!(
            "sparse image: {} GiB with {} MiB of data",
            sparse_size >> 30,
            mib(args.sparse_data)
        ));
        make_sparse_image(&path, sparse_size, args.sparse_data, args.seed + 2)?;
        sparse_phases.push(ferry.sync("sparse-full", &path, "sparse")?);
        scattered_writes(&path, SCATTERED_WRITES, args.seed + 3)?;
        sparse_phases.push(ferry.sync("sparse-incremental", &path, "sparse")?);
    }
    drop(agent);

    // 6. Report.
    let machine = machine();
    let out = json!({
        "machine": machine,
        "image_bytes": args.size,
        "nonzero_bytes": stages.nonzero_bytes,
        "zstd1_bytes": stages.compressed_bytes,
        "engine_payload_bytes": stages.engine_payload_bytes,
        "stages": stages.stages.iter().map(|s| json!({
            "stage": s.name, "bytes": s.bytes, "cpu_s": s.cpu.as_secs_f64(),
            "wall_s": s.wall.as_secs_f64(), "cpu_s_per_gb": s.cpu_s_per_gb(),
            "gb_per_cpu_s": s.gb_per_cpu_s()})).collect::<Vec<_>>(),
        "quic": {"bytes": quic.bytes, "wall_s": quic.wall.as_secs_f64(), "cpu_s": quic.cpu.as_secs_f64(),
                 "mb_per_s": quic.mb_per_s(), "cpu_s_per_gb": quic.cpu_s_per_gb()},
        "baselines": baselines.iter().map(Baseline::json).collect::<Vec<_>>(),
        "agent_idle_rss": agent_idle_rss,
        "phases": phases.iter().map(Phase::json).collect::<Vec<_>>(),
        "sparse_phases": sparse_phases.iter().map(Phase::json).collect::<Vec<_>>(),
    });
    print_tables(
        &stages,
        &quic,
        &baselines,
        &phases,
        &sparse_phases,
        agent_idle_rss,
    );
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_owned();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let cores = cores().unwrap_or(0);
    json!({"cpu": model, "kernel": kernel, "cores": cores})
}

fn print_tables(
    stages: &StageReport,
    quic: &QuicCeiling,
    baselines: &[Baseline],
    phases: &[Phase],
    sparse: &[Phase],
    agent_idle_rss: u64,
) {
    let m = machine();
    println!(
        "\nmachine: {} cores, {}, kernel {}",
        m["cores"],
        m["cpu"].as_str().unwrap_or("?"),
        m["kernel"].as_str().unwrap_or("?")
    );
    println!(
        "image: non-zero {:.0} MiB; zstd -1 of it {:.0} MiB; engine payload {:.0} MiB",
        mib(stages.nonzero_bytes),
        mib(stages.compressed_bytes),
        mib(stages.engine_payload_bytes)
    );
    println!("\n## Stage ceilings (one thread, image data)\n");
    println!("| stage | bytes (MiB) | CPU s | CPU-s/GB | GB per CPU-s |");
    println!("|---|---:|---:|---:|---:|");
    for s in &stages.stages {
        println!(
            "| {} | {:.0} | {:.3} | {:.3} | {:.2} |",
            s.name,
            mib(s.bytes),
            s.cpu.as_secs_f64(),
            s.cpu_s_per_gb(),
            s.gb_per_cpu_s()
        );
    }
    println!(
        "| quic loopback send+recv (process CPU) | {:.0} | {:.3} | {:.3} | {:.2} (wall {:.0} MB/s) |",
        mib(quic.bytes),
        quic.cpu.as_secs_f64(),
        quic.cpu_s_per_gb(),
        1.0 / quic.cpu_s_per_gb(),
        quic.mb_per_s()
    );

    if !baselines.is_empty() {
        println!("\n## Baselines\n");
        println!("| baseline | wall s | MB/s | CPU s | CPU-s/GB |");
        println!("|---|---:|---:|---:|---:|");
        for b in baselines {
            println!(
                "| {} | {:.2} | {:.0} | {:.2} | {:.3} |",
                b.name,
                b.wall,
                b.bytes as f64 / 1e6 / b.wall,
                b.cpu,
                b.cpu / gb(b.bytes)
            );
        }
    }

    for p in phases.iter().chain(sparse) {
        println!("\n## ferry {} sync\n", p.name);
        println!(
            "changed {:.1} MiB, plain data {:.1} MiB, payload {:.1} MiB, frames {:.1} MiB, UDP {:.1} MiB, batches {}, standby == source: yes (BLAKE3, checked)",
            mib(p.field("bytes_changed")),
            mib(p.field("bytes_plain_data")),
            mib(p.field("bytes_sent")),
            mib(p.field("frame_bytes")),
            mib(p.field("udp_bytes")),
            p.field("batches"),
        );
        let budget: Vec<String> = p
            .budget
            .iter()
            .map(|(k, v)| format!("{k} {v:.2}"))
            .collect();
        println!(
            "stage budget {:.2} CPU-s = {}",
            p.budget_total(),
            budget.join(" + ")
        );
        println!("\n| figure | value | target | |");
        println!("|---|---:|---:|---|");
        println!(
            "| wall s (ferry sync process; report says {:.2}) | {:.2} | | |",
            p.report_seconds, p.wall
        );
        let allowed = p.allowed_mb_s();
        println!(
            "| MB/s of image | {:.0} | ≥ {:.0} (70 % of {:.0}) | {} |",
            p.mb_s(),
            WALL_TARGET * allowed,
            allowed,
            verdict(p.mb_s() >= WALL_TARGET * allowed)
        );
        println!(
            "| CPU s: ferry sync + standby agent | {:.2} + {:.2} = {:.2} | | |",
            p.ferry_cpu,
            p.agent_cpu,
            p.cpu()
        );
        println!(
            "| CPU-s per GB of image | {:.3} | ≤ {:.3} (1.3 × {:.3}) | {} |",
            p.cpu() / gb(p.image_size),
            CPU_RATIO_TARGET * p.budget_total() / gb(p.image_size),
            p.budget_total() / gb(p.image_size),
            verdict(p.cpu_ratio() <= CPU_RATIO_TARGET)
        );
        println!(
            "| CPU / stage budget | {:.2}× | ≤ 1.30× | {} |",
            p.cpu_ratio(),
            verdict(p.cpu_ratio() <= CPU_RATIO_TARGET)
        );
        println!(
            "| core utilisation (CPU / wall / {} cores) | {:.0} % | | |",
            p.cores,
            100.0 * p.core_utilisation()
        );
        println!(
            "| peak RSS ferry sync (wait4; 20 ms samples {:.0}) MiB | {:.0} | ≤ 256 | {} |",
            mib(p.ferry_rss_sampled),
            mib(p.ferry_rss),
            verdict(p.ferry_rss <= RSS_LIMIT)
        );
        println!(
            "| peak RSS standby agent MiB (idle {:.0}) | {:.0} | ≤ 256 | {} |",
            mib(agent_idle_rss),
            mib(p.agent_rss),
            verdict(p.agent_rss <= RSS_LIMIT)
        );
        if p.field("bytes_sent") > 0 {
            println!(
                "| framing + checksum overhead (frame − payload) / payload | {:.3} % | ≤ 2 % | {} |",
                100.0 * p.framing(),
                verdict(p.framing() <= FRAMING_TARGET)
            );
            println!(
                "| UDP overhead (udp − payload) / payload | {:.2} % | | |",
                100.0 * p.udp_overhead()
            );
        }
        if p.field("bytes_changed") > 0 {
            let scattered = p.name.contains("incremental");
            let fw = p.wire_per_changed("frame_bytes");
            let uw = p.wire_per_changed("udp_bytes");
            println!(
                "| frame bytes per changed byte | {:.3} | {} | {} |",
                fw,
                if scattered { "≤ 3" } else { "" },
                if scattered {
                    verdict(fw <= WIRE_TARGET)
                } else {
                    ""
                }
            );
            println!(
                "| UDP bytes per changed byte | {:.3} | {} | {} |",
                uw,
                if scattered { "≤ 3" } else { "" },
                if scattered {
                    verdict(uw <= WIRE_TARGET)
                } else {
                    ""
                }
            );
        }
        for b in baselines {
            let same_kind = match p.name {
                "full" => !b.name.contains("incremental"),
                "incremental" => b.name.contains("incremental"),
                _ => false,
            };
            if same_kind {
                println!(
                    "| ferry / {}: wall, CPU | {:.2}× the wall time, {:.2}× the CPU | | |",
                    b.name,
                    p.wall / b.wall,
                    p.cpu() / b.cpu.max(1e-9)
                );
            }
        }
    }
}
