//! Proof that a fault landed where a test meant it: the agent, started with
//! `FAILPOINTS=NAME=...return(hold)` (or `return(MS)`), logs `fail point
//! reached` with `point="NAME"` when one of its operations gets to that step
//! (`ferry_engine::testpoint`, the agent's hold points in
//! `agent/src/orchestrator/hold.rs`); the test waits for that line before it
//! kills the agent or cuts the link.

use std::time::{Duration, Instant};

use ferry_e2e::landing::reached;
use ferry_e2e::Agent;

/// Waits until `agent` logs that it reached `point` (true), or `going` says
/// the operation is over without it or `patience` ran out (false).
pub fn wait_reached(
    agent: &Agent,
    point: &str,
    patience: Duration,
    mut going: impl FnMut() -> bool,
) -> bool {
    let deadline = Instant::now() + patience;
    loop {
        if reached(&agent.log_text(), point) {
            return true;
        }
        if Instant::now() >= deadline || !going() {
            // One last look: the point may have been logged meanwhile.
            return reached(&agent.log_text(), point);
        }
        std::thread::sleep(Duration::from_millis(150));
    }
}
