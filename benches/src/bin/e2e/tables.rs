//! The printed tables: machine, stage ceilings, baselines, and one table
//! of figures with targets and PASS/MISS per ferry sync phase.

use ferry_benches::ceilings::{QuicCeiling, StageReport};
use serde_json::{json, Value};

use crate::baselines::Baseline;
use crate::phase::Phase;
use crate::{
    cores, gb, mib, verdict, CPU_RATIO_TARGET, FRAMING_TARGET, RSS_LIMIT, WALL_TARGET, WIRE_TARGET,
};

pub(crate) fn machine() -> Value {
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

pub(crate) fn print_tables(
    stages: &StageReport,
    quic: &QuicCeiling,
    baselines: &[Baseline],
    phases: &[Phase],
    sparse: &[Phase],
    agent_idle_rss: u64,
) {
    print_machine(stages);
    print_stage_ceilings(stages, quic);
    print_baselines(baselines);
    for p in phases.iter().chain(sparse) {
        print_phase(p, baselines, agent_idle_rss);
    }
}

/// The machine line and the image's content line.
fn print_machine(stages: &StageReport) {
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
}

/// Each stage timed alone, and the raw QUIC loopback.
fn print_stage_ceilings(stages: &StageReport, quic: &QuicCeiling) {
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
}

/// The plain-copy baselines, when any ran.
fn print_baselines(baselines: &[Baseline]) {
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
}

/// One ferry sync: its byte summary, stage budget and table of figures.
fn print_phase(p: &Phase, baselines: &[Baseline], agent_idle_rss: u64) {
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
    print_time_and_memory_figures(p, agent_idle_rss);
    print_wire_figures(p);
    print_baseline_comparisons(p, baselines);
}

/// Rows for wall time, throughput, CPU and peak RSS of a phase.
fn print_time_and_memory_figures(p: &Phase, agent_idle_rss: u64) {
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
}

/// Rows for framing, UDP overhead and wire bytes per changed byte.
fn print_wire_figures(p: &Phase) {
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
}

/// Rows comparing a full or incremental phase with its baselines.
fn print_baseline_comparisons(p: &Phase, baselines: &[Baseline]) {
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
