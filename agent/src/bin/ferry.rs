//! `ferry`: the operator CLI — protection groups and services (through the
//! agent's API), replicate, verify, demo.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use ferry_agent::cli::ceph::CephArgs;
use ferry_agent::cli::sync_verify;
use ferry_agent::uri::{SourceUri, TargetUri};
use ferry_protocol::AgentId;

/// ferry: disaster-recovery replication of block images.
#[derive(Parser)]
#[command(name = "ferry", version, about)]
struct Cli {
    /// How to reach the agent (control commands): --dir DIR, or --agent URL
    /// with --token-file FILE (or FERRY_TOKEN, or --token T).
    #[command(flatten)]
    conn: ferry_agent::cli::Conn,
    /// The zone times are shown in.
    #[command(flatten)]
    show: ferry_agent::cli::ShowTz,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Control commands (service, group, rp, policy, qos, status, op): a
    /// client of the agent's HTTP API.
    #[command(flatten)]
    Control(ferry_agent::cli::ControlCommand),
    /// Run one replication cycle of SOURCE to a standby agent; exits 0 only
    /// when the recovery point is committed on the standby.
    Sync {
        /// Primary agent directory (identity, config, source state).
        #[arg(long)]
        dir: PathBuf,
        /// What to replicate: file:/path/to/image.raw (file or block device).
        source: String,
        /// Where: quic://HOST:PORT/NAME.
        target: String,
        /// More SOURCE TARGET pairs: all images are replicated over one
        /// connection and committed together as one recovery point.
        #[arg(value_name = "SOURCE TARGET")]
        more: Vec<String>,
        /// The standby agent's certificate fingerprint.
        #[arg(long)]
        peer: String,
        /// Wire bandwidth limit, e.g. 100MB/s, 800Mbit, unlimited (K/M/G are
        /// 1024-based, B byte, b bit; SIGHUP re-reads
        /// qos.send_limit from DIR/config.toml while running).
        #[arg(long)]
        bwlimit: Option<String>,
        /// Print one JSON object with the result on stdout.
        #[arg(long)]
        json: bool,
        /// The Ceph cluster and user of rbd: sources.
        #[command(flatten)]
        ceph: CephArgs,
        /// Replicate blocks of file: sources that changed although nothing
        /// wrote them since the last recovery point (normally refused as
        /// possible corruption at rest), for this run.
        #[arg(long)]
        accept_changes_at_rest: bool,
    },
    /// Prove the standby equals SOURCE by exchanging hashes (no data copied);
    /// exits 0 when equal, 1 when they differ.
    Verify {
        /// Primary agent directory.
        #[arg(long)]
        dir: PathBuf,
        /// file:/path/to/image.raw
        source: String,
        /// quic://HOST:PORT/NAME
        target: String,
        /// The standby agent's certificate fingerprint.
        #[arg(long)]
        peer: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// The Ceph cluster and user of an rbd: source.
        #[command(flatten)]
        ceph: CephArgs,
    },
    /// Write SOURCE (file:/a.raw) as an rbd diff (the `rbd export-diff`
    /// format) to PATH or `-` (stdout).
    ExportDiff {
        /// file:/path/to/image.raw (rbd:POOL[/NAMESPACE]/IMAGE[@SNAP] needs the librbd backend).
        source: String,
        /// Output file (must not exist) or `-` for stdout.
        path: String,
        /// Snapshot to start from (rbd: sources only; files have no snapshots).
        #[arg(long)]
        from_snap: Option<String>,
        /// Export only what differs from this older copy of the image.
        #[arg(long)]
        from_file: Option<PathBuf>,
        /// Snapshot name written as the diff's start (`f` record); use with --from-file.
        #[arg(long)]
        from_snap_name: Option<String>,
        /// Snapshot name written as the diff's end (`t` record).
        #[arg(long)]
        to_snap_name: Option<String>,
        /// 1: `rbd diff v1` (default); 2: an `rbd image v2` stream as written
        /// by `rbd export --export-format 2`.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
        export_format: u8,
        /// The Ceph cluster and user (rbd: only).
        #[command(flatten)]
        ceph: CephArgs,
        /// Print a JSON report on stderr.
        #[arg(long)]
        json: bool,
    },
    /// Apply an rbd diff (`rbd export-diff` output, or `rbd export
    /// --export-format 2`) from PATH or `-` (stdin) to TARGET, atomically:
    /// on any error the target is left exactly as it was.
    ImportDiff {
        /// Diff file or `-` for stdin (spooled next to the target).
        path: String,
        /// file:/path/to/image.raw, created if missing (rbd: needs the librbd backend).
        target: String,
        /// Apply even if TARGET.ferry-snap does not name the diff's from-snapshot.
        #[arg(long)]
        no_snap_check: bool,
        /// Fail instead of creating a missing target.
        #[arg(long)]
        no_create: bool,
        /// The Ceph cluster and user (rbd: only).
        #[command(flatten)]
        ceph: CephArgs,
        /// Print a JSON report on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Print the shell completion script for SHELL on stdout.
    GenCompletions {
        /// bash, zsh, fish, elvish or powershell.
        shell: ferry_agent::docgen::Shell,
    },
    /// Write man pages (ferry.1 and one per subcommand) into DIR.
    GenMan {
        /// Output directory (created if missing).
        dir: PathBuf,
    },
    /// Start a primary and a standby on loopback and show replication, resume
    /// after a link cut, verification and restore.
    Demo {
        /// Image size for the demo.
        #[arg(long, default_value = "256MiB")]
        size: String,
        /// Keep the demo's files in this directory (default: a temporary one).
        #[arg(long)]
        keep: Option<PathBuf>,
    },
}

fn peer(fp: &str) -> Result<AgentId> {
    AgentId::from_hex(fp).with_context(|| {
        format!("--peer {fp:?} is not a fingerprint (64 hex digits, as `ferry-agent init` prints)")
    })
}

/// Exit codes: 0 ok, 1 verify found differences, 2 error.
/// Prints what `ferry sync` did: one image's report (with the group's
/// recovery point and totals) or the group's as JSON, else a line per image
/// and one for the recovery point.
fn print_sync_report(group: &ferry_engine::session::sender::GroupReport, json: bool) -> Result<()> {
    if json {
        if group.images.len() == 1 {
            // One image: its report, with the recovery point and totals.
            let mut report = group.images[0].clone();
            report.recovery_point = group.recovery_point;
            report.reconnects = group.reconnects;
            report.seconds = group.seconds;
            println!("{}", serde_json::to_string(&report)?);
        } else {
            println!("{}", serde_json::to_string(&group)?);
        }
    } else {
        use ferry_agent::units::human_bytes;
        for report in &group.images {
            println!(
                "{}: scanned {}, changed {}, zero {}, sent {}{}",
                report.image,
                human_bytes(report.bytes_scanned),
                human_bytes(report.bytes_changed),
                human_bytes(report.bytes_zero),
                human_bytes(report.bytes_sent),
                if report.fuzzy {
                    " (fuzzy: the source changed while it was read)"
                } else {
                    ""
                },
            );
        }
        println!(
            "committed recovery point {} ({} image{}) in {:.2}s{}",
            group.recovery_point,
            group.images.len(),
            if group.images.len() == 1 { "" } else { "s" },
            group.seconds,
            if group.reconnects > 0 {
                format!(", {} reconnects", group.reconnects)
            } else {
                String::new()
            },
        );
    }
    Ok(())
}

/// Prints `ferry verify`'s answer: JSON, or "equal: …" / "DIFFERENT: …" with
/// the differing ranges.
fn print_verify_report(
    source: &SourceUri,
    report: &ferry_engine::session::verify::VerifyReport,
    json: bool,
) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else if report.equal {
        println!(
            "equal: {} matches the standby's {} at recovery point {} ({} bytes)",
            source_name(source),
            report.image,
            report.recovery_point,
            report.source_size
        );
    } else {
        println!(
            "DIFFERENT: {} vs the standby's {} at recovery point {} (sizes {} / {})",
            source_name(source),
            report.image,
            report.recovery_point,
            report.source_size,
            report.standby_size
        );
        for (offset, len) in &report.mismatches {
            println!("  differs at offset {offset} length {len}");
        }
    }
    Ok(())
}

async fn main_inner(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Control(cmd) => ferry_agent::cli::run(cmd, &cli.conn.with_tz(cli.show)).await,
        Command::Sync {
            dir,
            source,
            target,
            more,
            peer: fp,
            bwlimit,
            json,
            ceph,
            accept_changes_at_rest,
        } => {
            if more.len() % 2 != 0 {
                anyhow::bail!("extra arguments must come in SOURCE TARGET pairs");
            }
            let mut pairs = vec![(SourceUri::parse(&source)?, TargetUri::parse(&target)?)];
            for pair in more.chunks(2) {
                pairs.push((SourceUri::parse(&pair[0])?, TargetUri::parse(&pair[1])?));
            }
            let bwlimit = bwlimit
                .map(|b| ferry_agent::units::parse_rate(&b))
                .transpose()?;
            let group = sync_verify::sync(sync_verify::SyncRequest {
                dir: &dir,
                pairs: &pairs,
                peer: peer(&fp)?,
                bwlimit,
                progress_bar: !json && std::io::stderr().is_terminal(),
                tweak: None,
                cluster: if ceph.is_empty() {
                    None
                } else {
                    Some(ceph.for_dir(&dir)?)
                },
                progress: None,
                accept_changes_at_rest,
            })
            .await?;
            print_sync_report(&group, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify {
            dir,
            source,
            target,
            peer: fp,
            json,
            ceph,
        } => {
            let source = SourceUri::parse(&source)?;
            let target = TargetUri::parse(&target)?;
            let cluster = ceph.for_dir(&dir)?;
            let report = sync_verify::verify(&dir, &source, &target, peer(&fp)?, &cluster).await?;
            print_verify_report(&source, &report, json)?;
            Ok(if report.equal {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::ExportDiff {
            source,
            path,
            from_snap,
            from_file,
            from_snap_name,
            to_snap_name,
            export_format,
            ceph,
            json,
        } => {
            use ferry_agent::cli::export_import_diff;
            let report = export_import_diff::export_diff(&export_import_diff::ExportArgs {
                source,
                output: path,
                from_snap,
                from_file,
                from_snap_name,
                to_snap_name,
                image_v2: export_format == 2,
                cluster: ceph.standalone()?,
            })?;
            // stdout may carry the diff itself, so the report goes to stderr.
            if json {
                eprintln!("{}", serde_json::to_string(&report)?);
            } else {
                eprintln!("{}", export_import_diff::export_summary(&report));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::ImportDiff {
            path,
            target,
            no_snap_check,
            no_create,
            ceph,
            json,
        } => {
            use ferry_agent::cli::export_import_diff;
            let report = export_import_diff::import_diff(&export_import_diff::ImportArgs {
                input: path,
                target,
                no_snap_check,
                no_create,
                cluster: ceph.standalone()?,
            })?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!("{}", export_import_diff::import_summary(&report));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::GenCompletions { shell } => {
            ferry_agent::docgen::write_completions(Cli::command(), shell, &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::GenMan { dir } => {
            for page in ferry_agent::docgen::write_man_pages(Cli::command(), &dir)? {
                println!("{}", page.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { size, keep } => {
            let size = ferry_agent::units::parse_bytes(&size)?;
            let temp;
            let work = match keep {
                Some(dir) => {
                    std::fs::create_dir_all(&dir)?;
                    dir
                }
                None => {
                    temp = tempfile::tempdir()?;
                    temp.path().to_path_buf()
                }
            };
            ferry_agent::demo::run(&work, size).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn source_name(source: &SourceUri) -> String {
    source.to_string()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    ferry_agent::init_logging("warn", ferry_agent::config::LogFormat::Text);
    // Fail points are compiled in only with the `failpoints` feature (tests);
    // otherwise this reads nothing and does nothing.
    let _fail_scenario = fail::FailScenario::setup();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ferry: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(main_inner(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ferry: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every command's flags are unique (clap checks on first use only: a
    /// `--tz` flattened into `policy create`, which has its own, made that
    /// command panic).
    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
        let parsed = Cli::try_parse_from([
            "ferry",
            "--tz",
            "UTC",
            "policy",
            "create",
            "p",
            "--schedule",
            "daily 02:00",
            "--tz",
            "Europe/Berlin",
            "--dir",
            "/x",
        ]);
        assert!(parsed.is_ok(), "{:?}", parsed.err());
    }
}
