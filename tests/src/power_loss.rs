//! Power-loss simulation for end-to-end tests of the files standby (needs
//! the `failpoints` feature).
//!
//! A SIGKILL keeps the page cache, so on its own it cannot show a missing
//! fsync. With [`env_for`]'s variable set, a `failpoints` build of
//! `ferry-agent` records, before every change to its standby store's files,
//! how to undo it, and notes every completed fsync (see
//! `ferry_engine::standby::power_loss` for what is and is not modelled).
//! After the agent is SIGKILLed, [`simulate`] rolls back every change no
//! completed fsync covered — file data and sizes (fsync/fdatasync of the
//! file), and creations, renames and removals (fsync of the directory) — as
//! a power cut at the kill would have lost them, and empties the log.
//!
//! Use from a fault harness (the files standby only):
//!
//! ```text
//! let log = pair.path("power-loss");
//! let (key, value) = ferry_e2e::power_loss::env_for(&log);
//! pair.standby.restart(&[("FAILPOINTS", "standby::after-data-before-sync=sleep(20000)"), (key, &value)]);
//! // … start the sync, wait for `fail point reached` with the point …
//! pair.standby.kill9();                  // the process must be dead
//! let report = ferry_e2e::power_loss::simulate(&log);
//! assert!(report.records > 0);           // the layer was active
//! pair.standby.restart(&[(key, &value)]); // keep recording (or restart without it)
//! ```
//!
//! Keep the variable on every restart between two simulations: changes made
//! by an agent that did not record cannot be rolled back (they count as
//! durable). Simulating after a clean stop is allowed and must lose nothing
//! acknowledged.

use std::path::Path;

pub use ferry_engine::standby::power_loss::{Cut, Report, Writeback, LOG_ENV};

/// The environment variable (name, value) that makes a `failpoints` agent
/// record into the power-loss log in `dir` (created on first use).
pub fn env_for(dir: &Path) -> (&'static str, String) {
    (LOG_ENV, dir.display().to_string())
}

/// Rolls back every change recorded in `dir` that no completed fsync
/// covered (the worst case); call it only after the recording agent was
/// killed and reaped. Panics (with the log's error) when the log cannot be
/// rolled back.
pub fn simulate(dir: &Path) -> Report {
    simulate_with(dir, Cut::default())
}

/// [`simulate`] with a milder cut: `cut.writeback` lets some unsynced writes
/// reach the disk (e.g. `Writeback::Random { seed }`), `cut.keep_names`
/// keeps unsynced creations, renames and removals (as on ext4).
pub fn simulate_with(dir: &Path, cut: Cut) -> Report {
    match ferry_engine::standby::power_loss::simulate_with(dir, cut) {
        Ok(report) => report,
        Err(e) => panic!("power-loss simulation in {} failed: {e}", dir.display()),
    }
}
