//! ferry's agent: the standby daemon, the primary-side operations behind the
//! `ferry` CLI, configuration, and the demo.
//!
//! Binaries: `ferry-agent` (init, run, offline recovery-point tools) and
//! `ferry` (sync, verify, demo). Both are thin: argument parsing in
//! `src/bin/`, behaviour here.
#![forbid(unsafe_code)]

pub mod api;
pub mod cli;
pub mod config;
pub mod console;
pub mod control;
pub mod daemon;
pub mod demo;
pub mod docgen;
pub mod durable;
pub mod imagegen;
pub mod logging;
pub mod metrics;
pub mod orchestrator;
pub mod placement;
pub mod replicate;
pub mod schedule;
pub mod service_key;
pub(crate) mod sync_util;
pub mod systemd;
pub mod units;
pub mod uri;
pub mod wire;

pub use logging::init_logging;
