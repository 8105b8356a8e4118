//! `ferry-agent`: the ferry agent daemon and its offline tools.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use ferry_agent::cli::ceph::CephArgs;
use ferry_agent::config::{config_path, set_command_line_ceph, AgentConfig, DEFAULT_CONFIG};
use ferry_agent::units::human_bytes;
use ferry_engine::identity::Identity;
use ferry_engine::standby_backend::Standby;
use ferry_protocol::{AgentId, ImageName, RecoveryPointId};

/// ferry agent: keeps standby copies of block images, replicated over QUIC.
#[derive(Parser)]
#[command(name = "ferry-agent", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create this agent's identity (key pair + certificate) and API token
    /// (DIR/api.token) in DIR and print its fingerprint as the last line.
    Init {
        /// Agent data directory.
        #[arg(long)]
        dir: PathBuf,
        /// Succeed without changes when DIR already holds an identity (for
        /// package install scripts); the fingerprint is printed either way.
        #[arg(long)]
        if_missing: bool,
    },
    /// Run the agent: accept replication from trusted primaries into DIR/images.
    Run {
        /// Agent data directory.
        #[arg(long)]
        dir: PathBuf,
        /// UDP address to listen on (default from config, else 0.0.0.0:7400).
        #[arg(long)]
        listen: Option<String>,
        /// Fingerprint of a peer allowed to connect (repeatable).
        #[arg(long = "trust", value_name = "FINGERPRINT")]
        trust: Vec<String>,
        /// Configuration file (default DIR/config.toml if present).
        #[arg(long)]
        config: Option<PathBuf>,
        /// TCP address of the operator API (default from config, else
        /// 127.0.0.1:7480; port 0 picks a free one, see DIR/api.addr).
        #[arg(long)]
        api_listen: Option<String>,
        /// The Ceph cluster and user (over CEPH_ARGS and the config's [ceph]).
        #[command(flatten)]
        ceph: CephArgs,
    },
    /// List the recovery points of a standby image (agent must be stopped).
    Points {
        /// Agent data directory.
        #[arg(long)]
        dir: PathBuf,
        /// Image name.
        image: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// The Ceph cluster and user (over CEPH_ARGS and the config's [ceph]).
        #[command(flatten)]
        ceph: CephArgs,
    },
    /// Write a standby image as it was at a recovery point into a new file,
    /// or (RBD standby) a new standalone image of the standby pool (agent
    /// must be stopped).
    Restore {
        /// Agent data directory.
        #[arg(long)]
        dir: PathBuf,
        /// Image name.
        image: String,
        /// Recovery point id (see `points`).
        #[arg(long)]
        rp: u64,
        /// New file to write (must not exist); with an RBD standby, the new
        /// image's name (or rbd:POOL/NAME with the standby pool).
        #[arg(long)]
        out: PathBuf,
        /// The Ceph cluster and user (over CEPH_ARGS and the config's [ceph]).
        #[command(flatten)]
        ceph: CephArgs,
    },
    /// Print the shell completion script for SHELL on stdout.
    GenCompletions {
        /// bash, zsh, fish, elvish or powershell.
        shell: ferry_agent::docgen::Shell,
    },
    /// Write man pages (ferry-agent.1 and one per subcommand) into DIR.
    GenMan {
        /// Output directory (created if missing).
        dir: PathBuf,
    },
    /// Return a standby image whose epoch was interrupted (an RBD image
    /// torn mid-apply) to its last recovery point (agent must be stopped).
    Rollback {
        /// Agent data directory.
        #[arg(long)]
        dir: PathBuf,
        /// Image name.
        image: String,
        /// The Ceph cluster and user (over CEPH_ARGS and the config's [ceph]).
        #[command(flatten)]
        ceph: CephArgs,
    },
}

fn parse_fingerprints(list: &[String]) -> Result<Vec<AgentId>> {
    list.iter()
        .map(|fp| {
            AgentId::from_hex(fp).with_context(|| {
                format!("--trust {fp:?} is not a fingerprint (64 hex digits, as `ferry-agent init` prints)")
            })
        })
        .collect()
}

async fn open_store_offline(
    dir: &std::path::Path,
) -> Result<(ferry_agent::daemon::DirLock, Standby)> {
    let lock = ferry_agent::daemon::lock_dir(dir)?;
    let config = AgentConfig::load(config_path(dir, None).as_deref())?;
    let store = ferry_agent::daemon::open_standby(dir, &config).await?;
    Ok((lock, store))
}

async fn main_inner(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Init { dir, if_missing } => {
            let identity = match Identity::create(&dir) {
                Err(ferry_engine::identity::IdentityError::AlreadyExists { .. }) if if_missing => {
                    let identity = Identity::load(&dir)?;
                    ferry_agent::api::ensure_token(&dir)?;
                    println!(
                        "identity already present in {}",
                        dir.join("identity").display()
                    );
                    println!("fingerprint:");
                    println!("{}", identity.fingerprint());
                    return Ok(());
                }
                other => other?,
            };
            let config = dir.join("config.toml");
            if !config.exists() {
                std::fs::write(&config, DEFAULT_CONFIG)
                    .with_context(|| format!("writing {}", config.display()))?;
            }
            ferry_agent::api::ensure_token(&dir)?;
            let read_only = dir.join(ferry_agent::wire::tokens::READ_ONLY_TOKEN_FILE);
            ferry_agent::api::ensure_token_file(&read_only)?;
            println!(
                "created agent identity in {}",
                dir.join("identity").display()
            );
            println!(
                "API token in {} (mode 0600)",
                dir.join(ferry_agent::api::TOKEN_FILE).display()
            );
            println!(
                "read-only API token (GET routes only) in {} (mode 0600)",
                read_only.display()
            );
            println!("fingerprint:");
            println!("{}", identity.fingerprint());
        }
        Command::Run {
            dir,
            listen,
            trust,
            config,
            api_listen,
            ceph,
        } => {
            set_command_line_ceph(ceph.spec());
            let cfg = AgentConfig::load(config_path(&dir, config.as_deref()).as_deref())?;
            ferry_agent::init_logging("info", cfg.log_format);
            let trust = parse_fingerprints(&trust)?;
            ferry_agent::daemon::run(dir, listen, trust, config, api_listen).await?;
        }
        Command::Points {
            dir,
            image,
            json,
            ceph,
        } => {
            set_command_line_ceph(ceph.spec());
            let image = ImageName::new(image)?;
            let (_lock, store) = open_store_offline(&dir).await?;
            let points = store.recovery_points(&image)?;
            if json {
                let list: Vec<_> = points
                    .iter()
                    .map(|p| {
                        serde_json::json!({
                            "recovery_point": p.id.get(), "epoch": p.epoch.get(),
                            "created_unix_ms": p.created_unix_ms, "fuzzy": p.fuzzy,
                            "size": p.size, "current": p.current,
                        })
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(list));
            } else {
                for p in points {
                    println!(
                        "rp {:>4}  epoch {:>4}  created {}  {:>10}  {}{}",
                        p.id,
                        p.epoch,
                        p.created_unix_ms,
                        human_bytes(p.size),
                        if p.fuzzy { "fuzzy " } else { "" },
                        if p.current { "current" } else { "" }
                    );
                }
            }
        }
        Command::Restore {
            dir,
            image,
            rp,
            out,
            ceph,
        } => {
            set_command_line_ceph(ceph.spec());
            let image = ImageName::new(image)?;
            let (_lock, store) = open_store_offline(&dir).await?;
            let output = store.operator_output(&out).map_err(anyhow::Error::msg)?;
            store.restore_into(&image, RecoveryPointId(rp), &output)?;
            println!(
                "restored {image} at recovery point {rp} to {}",
                out.display()
            );
        }
        Command::GenCompletions { shell } => {
            ferry_agent::docgen::write_completions(Cli::command(), shell, &mut std::io::stdout());
        }
        Command::GenMan { dir } => {
            for page in ferry_agent::docgen::write_man_pages(Cli::command(), &dir)? {
                println!("{}", page.display());
            }
        }
        Command::Rollback { dir, image, ceph } => {
            set_command_line_ceph(ceph.spec());
            let image = ImageName::new(image)?;
            let (_lock, store) = open_store_offline(&dir).await?;
            let torn = store.rollback(&image)?;
            if torn {
                println!("{image}: rolled back to its last recovery point");
            } else {
                println!("{image}: already at its last recovery point");
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Fail points are compiled in only with the `failpoints` feature (tests);
    // otherwise this reads nothing and does nothing.
    let _fail_scenario = fail::FailScenario::setup();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ferry-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(main_inner(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry-agent: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
