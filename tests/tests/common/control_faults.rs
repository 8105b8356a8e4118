//! The faults of the control fault harness (`faults_control.rs`) and how
//! each is made to land: every fault is a hold point of the operation it
//! hits (`agent/src/orchestrator/hold.rs`) on the primary or the standby.
//! The harness arms the point on that agent (a restart with `FAILPOINTS`),
//! starts the operation, waits for the agent to log the point reached and
//! only then
//! - kills the agent held there (SIGKILL) and restarts it disarmed, or
//! - cuts the link both ways while the agent pauses at the point
//!   ([`PAUSE_MS`]) for longer than the pause, so the operation resumes
//!   into the cut.
//!
//! A fault *landed* when its point was reached and the operation was still
//! running when the kill or cut came; otherwise it is tallied as drawn, not
//! landed (`ferry_e2e::landing::Tally`).

use std::time::Duration;

use ferry_e2e::cli::ok;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::{Side, World, PATIENCE};

/// How long an agent armed for a link cut pauses at its point; every cut
/// lasts longer (2 to 6 s).
pub const PAUSE_MS: u64 = 1500;

/// The operation a fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Manual,
    Policy,
    Migrate,
    Failover,
    Drill,
    /// Reprotect after a failover: "primary" is the new primary (the side
    /// that failed over), "standby" the returning old primary.
    Reprotect,
}

/// The agent a fault's point is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum On {
    Primary,
    Standby,
}

/// What happens once the point is reached.
#[derive(Debug, Clone, Copy)]
pub enum Hit {
    /// SIGKILL of the agent held at the point, restarted at once, disarmed.
    Kill,
    /// The link cut both ways for this long, from the moment the point is
    /// reached (the agent pauses [`PAUSE_MS`] there, then goes on).
    Cut(Duration),
}

/// One fault: a hold point of an operation on one side, and the hit.
#[derive(Debug, Clone, Copy)]
pub struct Fault {
    pub op: Op,
    pub on: On,
    pub point: &'static str,
    /// Hits of the point that pass before the one that lands.
    pub skip: u32,
    pub hit: Hit,
}

/// (point, hits to let pass) of each operation on each side; see
/// `agent/src/orchestrator/hold.rs` for where they are.
fn points(op: Op, on: On) -> &'static [(&'static str, u32)] {
    match (op, on) {
        (Op::Manual, On::Primary) => &[
            ("rp::before-cycle", 0),
            ("rp::before-register", 0),
            ("rp::after-register", 0),
        ],
        (Op::Policy, On::Primary) => &[
            ("policy::started", 0),
            ("rp::before-cycle", 0),
            ("rp::before-register", 0),
            ("rp::after-register", 0),
        ],
        (Op::Manual | Op::Policy, On::Standby) => &[("rp::standby-recorded", 0)],
        (Op::Migrate, On::Primary) => &[
            ("migrate::after-begin", 0),
            ("migrate::after-final-sync", 0),
            ("migrate::prepared", 0),
            ("migrate::before-commit", 0),
            ("migrate::after-commit", 0),
        ],
        (Op::Migrate, On::Standby) => &[
            ("migrate::standby-begun", 0),
            ("migrate::standby-prepared", 0),
            ("migrate::standby-images-removed", 0),
            ("migrate::standby-committed", 0),
        ],
        // The primary site is lost: only the standby runs a failover.
        (Op::Failover, _) => &[
            ("failover::before-images", 0),
            ("failover::after-image", 0),
            ("failover::after-image", 1),
        ],
        (Op::Reprotect, On::Primary) => &[
            ("reprotect::after-begin", 0),
            ("reprotect::old-primary-committed", 0),
        ],
        (Op::Reprotect, On::Standby) => &[
            ("reprotect::old-primary-begun", 0),
            ("reprotect::old-primary-adopted", 0),
        ],
        // A drill is the standby's own: its start or its end.
        (Op::Drill, _) => &[
            ("drill::after-volume", 0),
            ("drill::after-volume", 1),
            ("drill::after-remove", 0),
            ("drill::after-remove", 1),
        ],
    }
}

impl Fault {
    /// Draws the fault of one scenario of `op` (or none): 15 % none, 20 %
    /// a link cut, else a kill; a failover (the primary is down) or a drill
    /// (the standby's alone: a cut changes nothing in it) is killed 80 % of
    /// the time, never cut.
    pub fn draw(rng: &mut ChaCha8Rng, op: Op) -> Option<Fault> {
        let standby_only = matches!(op, Op::Failover | Op::Drill);
        let hit = match (standby_only, rng.gen_range(0..100)) {
            (true, 0..=19) | (false, 0..=14) => return None,
            (true, _) => Hit::Kill,
            (false, 15..=34) => Hit::Cut(Duration::from_millis(rng.gen_range(2000..6000))),
            _ => Hit::Kill,
        };
        let on = if standby_only || rng.gen_bool(0.5) {
            On::Standby
        } else {
            On::Primary
        };
        let candidates = points(op, on);
        let (point, skip) = candidates[rng.gen_range(0..candidates.len())];
        Some(Fault {
            op,
            on,
            point,
            skip,
            hit,
        })
    }

    /// The tally this fault counts in, e.g. `migration: kill standby`.
    pub fn kind(&self) -> String {
        let op = match self.op {
            Op::Manual => "manual point",
            Op::Policy => "policy point",
            Op::Migrate => "migration",
            Op::Failover => "failover",
            Op::Drill => "drill",
            Op::Reprotect => "reprotect",
        };
        let hit = match (self.hit, self.on) {
            (Hit::Kill, On::Primary) => "kill primary",
            (Hit::Kill, On::Standby) => "kill standby",
            (Hit::Cut(_), _) => "link cut",
        };
        format!("{op}: {hit}")
    }

    /// Whether this fault kills an agent.
    pub fn kills(&self) -> bool {
        matches!(self.hit, Hit::Kill)
    }
}

impl World {
    fn side_of(&self, on: On) -> Side {
        match on {
            On::Primary => self.primary,
            On::Standby => self.primary.other(),
        }
    }

    /// Arms `fault`'s point on its agent: restarts it with `FAILPOINTS`.
    pub(crate) fn arm(&mut self, fault: &Fault) {
        let spec = match fault.hit {
            Hit::Kill => ferry_e2e::landing::hold_failpoints(fault.point, fault.skip),
            Hit::Cut(_) => ferry_e2e::landing::pause_failpoints(fault.point, fault.skip, PAUSE_MS),
        };
        let mut env = self.env();
        env.push(("FAILPOINTS", spec));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let side = self.side_of(fault.on);
        self.agents[side.index()].restart(&env);
    }

    /// Lands `fault` on the operation `going` says is still running: waits
    /// for its point, then kills (and restarts disarmed) or cuts; tallies
    /// it and returns whether it landed. A kill that was drawn but whose
    /// point was not reached still restarts the agent, disarming it.
    pub(crate) fn land(&mut self, fault: &Fault, mut going: impl FnMut(&World) -> bool) -> bool {
        let side = self.side_of(fault.on);
        let reached = ferry_e2e::landing::wait_reached(
            &self.agents[side.index()],
            fault.point,
            PATIENCE,
            || going(self),
        );
        let landed = match fault.hit {
            Hit::Kill => {
                let running = reached && going(self);
                self.restart(side);
                running
            }
            Hit::Cut(cut) if reached => {
                // Running when the cut comes (checked first: the cut itself
                // may fail the operation at once, dropping its connection).
                let running = going(self);
                self.set_link_cut(true);
                std::thread::sleep(cut);
                self.set_link_cut(false);
                running
            }
            Hit::Cut(_) => false,
        };
        println!(
            "  {} at {} (hit {}): {}",
            fault.kind(),
            fault.point,
            fault.skip + 1,
            if landed {
                "landed"
            } else if reached {
                "DRAWN, NOT LANDED (the operation was over when the point was reached)"
            } else {
                "DRAWN, NOT LANDED (point not reached)"
            }
        );
        self.tallies.record(&fault.kind(), landed);
        landed
    }

    /// Cuts (or restores) the link both ways.
    pub(crate) fn set_link_cut(&self, cut: bool) {
        for (udp, tcp) in self.proxies.iter().zip(&self.tcp_proxies) {
            udp.set_blackhole(cut);
            tcp.set_cut(cut);
        }
    }

    /// Whether operation `op` of the agent on `side` still runs.
    pub(crate) fn op_running(&self, side: Side, op: &serde_json::Value) -> bool {
        let id = op["operation"]["id"].to_string();
        ok(&self.dir(side), &["op", &id])["state"]["state"] == "running"
    }

    /// How many lines of the current log of the agent on `side` contain
    /// `needle`.
    pub(crate) fn log_count(&self, side: Side, needle: &str) -> usize {
        self.agents[side.index()]
            .log_text()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// The agent on `side`, restarted after a kill that landed in one of its
    /// journaled operations, finished that operation as interrupted.
    pub(crate) fn assert_restart_finished_op(&self, side: Side, ctx: &str) {
        super::wait_for(
            &format!("{ctx}: the restarted agent finishing the killed operation"),
            || self.log_count(side, "finishing an operation interrupted by a restart") > 0,
        );
    }
}
