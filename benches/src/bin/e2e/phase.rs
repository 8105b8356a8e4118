//! One measured ferry sync (a phase): its report fields, the stage budget
//! it is held to, the figures derived from both, and the runner that makes
//! one and checks the standby copy against the source.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use ferry_agent::imagegen::file_hash;
use ferry_benches::ceilings::{self, QuicCeiling, StageReport};
use ferry_benches::measure;
use serde_json::{json, Value};

use crate::procs::{run_measured, Agent};
use crate::{gb, CPU_RATIO_TARGET};

/// Integer fields of the `ferry sync --json` report that the budget and the
/// tables use; a report without one of them fails the run.
pub(crate) const REPORT_FIELDS: [&str; 8] = [
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
pub(crate) fn report_u64(report: &Value, name: &str) -> Result<u64> {
    match report.get(name) {
        Some(v) => v.as_u64().with_context(|| {
            format!("ferry sync --json report field {name:?} is not a non-negative integer: {v}")
        }),
        None => bail!("ferry sync --json report lacks the field {name:?}: {report}"),
    }
}

/// Byte counts the budget needs, per phase.
pub(crate) struct PhaseBytes {
    pub(crate) read: u64,
    pub(crate) nonzero_scanned: u64,
    pub(crate) plain: u64,
    pub(crate) payload: u64,
    pub(crate) frames: u64,
}

/// Stage rates (CPU-seconds per GB) used for the budget.
pub(crate) struct Rates {
    pub(crate) read: f64,
    pub(crate) zero: f64,
    blake3_4k: f64,
    blake3_batch: f64,
    pub(crate) compress: f64,
    pub(crate) crc: f64,
    pub(crate) decompress: f64,
    pub(crate) write: f64,
    write_4k: f64,
    pub(crate) quic: f64,
}

impl Rates {
    pub(crate) fn from(stages: &StageReport, quic: &QuicCeiling) -> Result<Self> {
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
    pub(crate) fn budget(&self, b: &PhaseBytes, scattered: bool) -> Vec<(&'static str, f64)> {
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

pub(crate) struct Phase {
    pub(crate) name: &'static str,
    pub(crate) report: Value,
    /// [`REPORT_FIELDS`] of `report`, each present (checked by `sync`).
    pub(crate) fields: std::collections::BTreeMap<&'static str, u64>,
    /// `seconds` of the report.
    pub(crate) report_seconds: f64,
    /// Cores of the machine.
    pub(crate) cores: usize,
    pub(crate) wall: f64,
    pub(crate) image_size: u64,
    pub(crate) ferry_cpu: f64,
    pub(crate) agent_cpu: f64,
    pub(crate) ferry_rss: u64,
    pub(crate) ferry_rss_sampled: u64,
    pub(crate) agent_rss: u64,
    pub(crate) budget: Vec<(&'static str, f64)>,
}

impl Phase {
    /// A report field; only [`REPORT_FIELDS`] (checked present) may be asked.
    pub(crate) fn field(&self, name: &str) -> u64 {
        *self
            .fields
            .get(name)
            .unwrap_or_else(|| panic!("{name} is not in REPORT_FIELDS"))
    }
    pub(crate) fn cpu(&self) -> f64 {
        self.ferry_cpu + self.agent_cpu
    }
    pub(crate) fn budget_total(&self) -> f64 {
        self.budget.iter().map(|b| b.1).sum()
    }
    pub(crate) fn cpu_ratio(&self) -> f64 {
        self.cpu() / self.budget_total()
    }
    pub(crate) fn mb_s(&self) -> f64 {
        self.image_size as f64 / 1e6 / self.wall
    }
    /// Wall throughput (MB/s of image) that the stage budget × 1.3 allows
    /// on this machine's cores.
    pub(crate) fn allowed_mb_s(&self) -> f64 {
        self.image_size as f64 / 1e6 / (CPU_RATIO_TARGET * self.budget_total() / self.cores as f64)
    }
    /// CPU / wall / cores.
    pub(crate) fn core_utilisation(&self) -> f64 {
        self.cpu() / self.wall / self.cores as f64
    }
    pub(crate) fn framing(&self) -> f64 {
        let sent = self.field("bytes_sent");
        if sent == 0 {
            return 0.0;
        }
        (self.field("frame_bytes") as f64 - sent as f64) / sent as f64
    }
    pub(crate) fn udp_overhead(&self) -> f64 {
        let sent = self.field("bytes_sent");
        if sent == 0 {
            return 0.0;
        }
        (self.field("udp_bytes") as f64 - sent as f64) / sent as f64
    }
    pub(crate) fn wire_per_changed(&self, field: &str) -> f64 {
        let changed = self.field("bytes_changed");
        if changed == 0 {
            return 0.0;
        }
        self.field(field) as f64 / changed as f64
    }
    pub(crate) fn json(&self) -> Value {
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

pub(crate) struct Ferry<'a> {
    pub(crate) bin: &'a Path,
    pub(crate) primary: PathBuf,
    pub(crate) agent: &'a Agent,
    pub(crate) standby_dir: PathBuf,
    pub(crate) peer: String,
    pub(crate) rates: &'a Rates,
    pub(crate) logs: PathBuf,
    pub(crate) cores: usize,
}

impl Ferry<'_> {
    pub(crate) fn sync(&self, name: &'static str, image: &Path, image_name: &str) -> Result<Phase> {
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
