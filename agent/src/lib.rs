//! ferry's agent: the standby daemon, the primary-side operations behind the
//! `ferry` CLI, configuration, and the demo.
//!
//! Binaries: `ferry-agent` (init, run, offline recovery-point tools) and
//! `ferry` (sync, verify, demo). Both are thin: argument parsing in
//! `src/bin/`, behaviour here.
#![forbid(unsafe_code)]

pub mod api;
pub mod cli;
pub mod client;
pub mod config;
pub mod control;
pub mod daemon;
pub mod demo;
pub mod diffcmd;
pub mod imagegen;
pub mod orchestrator;
pub mod schedule;
pub mod service_key;
pub mod units;
pub mod uri;

/// Sets up logging to stderr: `RUST_LOG` wins, else `default_level`.
pub fn init_logging(default_level: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json {
        let _ = builder.json().try_init();
    } else {
        let _ = builder.try_init();
    }
}
