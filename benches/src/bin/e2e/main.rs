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

mod baselines;
mod phase;
mod procs;
mod tables;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use ferry_agent::imagegen::{make_image, scattered_writes};
use ferry_benches::ceilings::{self, QuicCeiling, StageReport};
use ferry_benches::measure;
use serde_json::{json, Value};

use baselines::{have, inprocess_copy, shell_baseline, sq, Baseline};
use phase::{Ferry, Phase, Rates};
use procs::{init_agent, Agent};
use tables::{machine, print_tables};

const MIB: u64 = 1 << 20;
const RSS_LIMIT: u64 = 256 * MIB;
const CPU_RATIO_TARGET: f64 = 1.3;
const WALL_TARGET: f64 = 0.70;
const FRAMING_TARGET: f64 = 0.02;
const WIRE_TARGET: f64 = 3.0;
const SCATTERED_WRITES: u64 = ceilings::SCATTERED_BLOCKS;

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
    let work = work_dir(&args)?;
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
    let rsync_dst = root.join("rsync-copy.raw");
    let have_rsync = have("rsync");
    let mut baselines = if args.baselines {
        say("baselines: cp, in-process copy, rsync");
        full_copy_baselines(&args, &image, root, &logs, have_rsync.then_some(&rsync_dst))?
    } else {
        Vec::new()
    };

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
    let out = report_json(
        &args,
        &stages,
        &quic,
        &baselines,
        &phases,
        &sparse_phases,
        agent_idle_rss,
    );
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

/// The scratch directory of the run, under `--dir` or the system temp dir.
fn work_dir(args: &Args) -> Result<tempfile::TempDir> {
    let base = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            d.clone()
        }
        None => std::env::temp_dir(),
    };
    tempfile::Builder::new()
        .prefix("ferry-e2e-")
        .tempdir_in(&base)
        .with_context(|| format!("temp dir in {}", base.display()))
}

/// The full-copy baselines: cp, the in-process copy and, when `rsync_dst`
/// is given, a full rsync to it (kept for the incremental rsync later).
fn full_copy_baselines(
    args: &Args,
    image: &Path,
    root: &Path,
    logs: &Path,
    rsync_dst: Option<&PathBuf>,
) -> Result<Vec<Baseline>> {
    let mut baselines = Vec::new();
    let dst = root.join("cp-copy.raw");
    baselines.push(shell_baseline(
        "cp --sparse=always + sync",
        &format!("cp --sparse=always {} {} && sync", sq(image), sq(&dst)),
        args.size,
        logs,
    )?);
    std::fs::remove_file(&dst)?;
    let dst = root.join("inproc-copy.raw");
    baselines.push(inprocess_copy(image, &dst)?);
    std::fs::remove_file(&dst)?;
    if let Some(rsync_dst) = rsync_dst {
        baselines.push(shell_baseline(
            "rsync --sparse (full, local) + sync",
            &format!("rsync --sparse {} {} && sync", sq(image), sq(rsync_dst)),
            args.size,
            logs,
        )?);
    }
    Ok(baselines)
}

/// The whole run as the `--json` document.
fn report_json(
    args: &Args,
    stages: &StageReport,
    quic: &QuicCeiling,
    baselines: &[Baseline],
    phases: &[Phase],
    sparse_phases: &[Phase],
    agent_idle_rss: u64,
) -> Value {
    let machine = machine();
    json!({
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
    })
}
