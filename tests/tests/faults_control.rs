//! Seeded fault harness for the control plane: two real `ferry-agent`
//! processes (files backend) paired over real QUIC on loopback protect one
//! group of two small images while randomized scenarios, all drawn from one
//! seed, hit the control operations:
//! - a manual recovery point, with the primary or the standby SIGKILLed
//!   during it (then restarted);
//! - a policy recovery point made due by a **clock jump** forward across k
//!   daily slots, with an agent SIGKILLed while it is being made; clock
//!   jumps back (nothing fires, no slot fires twice) and forward within a
//!   slot (nothing fires);
//! - a planned migration with either agent SIGKILLed during it, restarted
//!   and the migration retried while it is `migration_failed`; replication
//!   then runs the other way;
//! - a link cut both ways (a blackhole in the seeded UDP proxies each agent
//!   reaches the other through) for 2 to 6 s instead of a kill, in any of
//!   the above;
//! - an unplanned failover on the standby (to the latest data or to a
//!   chosen recovery point) with the primary down, the standby SIGKILLed
//!   during it, restarted and the failover retried; the world is then
//!   rebuilt as a new group, as the README's walk-through does;
//! - a DR drill on the standby (at the latest data or a chosen recovery
//!   point) while the primary writes and replicates, the standby SIGKILLed
//!   during the drill's start or its end, restarted and the step retried.
//!
//! Every fault is placed, not timed (`common/control_faults.rs`): the
//! scenario draws a hold point of its operation on the side it hits (a
//! real step: the final sync done, the standby prepared, between failover
//! images, …), arms it on that agent, starts the operation and kills or
//! cuts only once the agent logged the point reached and the operation
//! still runs. A fault whose point was not reached is tallied as drawn,
//! not landed. A kill that landed must have interrupted the operation:
//! a killed primary finishes it as interrupted at restart (a recovery point
//! does not succeed), a killed standby leaves the primary's request to
//! record the point unanswered, a migration ends `migration_failed` and a
//! failover `failover_failed` before their retry. At the end the tallies
//! (drawn/landed per kind) are printed, and a kind drawn at least 3 times
//! that landed less than 80 % of the time fails the run
//! ([`LANDING_FLOOR`]).
//!
//! The clock is real: both agents run with libfaketime preloaded
//! (`FAKETIME_TIMESTAMP_FILE` names a per-run file holding the offset in
//! seconds, which the harness rewrites; monotonic clocks are not faked, so
//! timers and QUIC stay sane). The Debian package `faketime` provides it
//! (scripts/test.sh installs it).
//!
//! After every scenario, with generous deadlines: no operation on either
//! agent is left running; one side is the primary and the other the standby
//! and both are `syncing`; both sides list the same recovery points; the
//! standby images equal the primary's sources by hash; every policy point
//! that appeared is the one the clock made due (the newest due slot, once).
//! Scenario-specific checks: a recovery point that succeeded restores, on
//! the standby, every image to its hash taken when it was requested; a
//! migration ends with the roles swapped exactly once and the new primary's
//! volumes equal the quiesced sources; failover copies equal the chosen
//! point.
//!
//! The policy scenarios live in `common/control_policy.rs`, the failover in
//! `common/control_failover.rs`, the drill in `common/control_drill.rs`.
//!
//! `FERRY_CTL_FAULT_SEED` (default 1) and `FERRY_CTL_FAULT_SCENARIOS`
//! (default 40) select the run; the seed and every scenario are printed, so
//! a failure replays with the same seed (each scenario draws from its own
//! generator, seeded by the seed and its number, so the same scenarios and
//! faults come back whatever the timing did). The long run is the ignored test
//! `control_fault_scenarios_long` (300 scenarios, a time-based seed unless
//! given).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferry_agent::imagegen;
use ferry_e2e::cli::{get, ok, run, text};
use ferry_e2e::{hash_file, init_agent, Agent};
use ferry_engine::netsim::{Impairment, UdpProxy};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

#[path = "common/control_drill.rs"]
mod control_drill;
#[path = "common/control_failover.rs"]
mod control_failover;
#[path = "common/control_faults.rs"]
mod control_faults;
#[path = "common/control_policy.rs"]
mod control_policy;
#[path = "common/tcp_proxy.rs"]
mod tcp_proxy;

use control_faults::{Fault, On, Op};
use ferry_e2e::landing::Tally;
use tcp_proxy::TcpProxy;

const MIB: u64 = 1024 * 1024;
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;
/// How long anything the harness waits for may take (a busy 2-core machine).
const PATIENCE: Duration = Duration::from_secs(120);
/// What a primary logs when the standby did not answer its request to
/// record a recovery point.
const STANDBY_DID_NOT_RECORD: &str = "standby did not record the recovery point";
/// The policy every primary gets when a policy scenario needs one.
const POLICY: &str = "pol";

/// The landing rate every fault kind must reach. Faults are placed at hold
/// points (the agent stops at a named step and the harness kills or cuts
/// only once it has logged that step), so every drawn fault should land;
/// the only misses left are an operation that ends before reaching its
/// point (e.g. it failed earlier for another reason), which must stay rare.
/// 80 % leaves room for those on a small sample and still fails a harness
/// whose faults mostly miss (the timing-based harness before this one
/// landed 17 of 72 manual-point faults and 1 of 23 failover kills).
const LANDING_FLOOR: f64 = 0.8;
/// Kinds drawn fewer times than this are reported but not judged.
const LANDING_MIN_DRAWN: u64 = 3;

#[derive(Debug, Clone, Copy)]
enum Side {
    A,
    B,
}

impl Side {
    fn index(self) -> usize {
        match self {
            Side::A => 0,
            Side::B => 1,
        }
    }
    fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
}

#[derive(Debug, Clone)]
enum Scenario {
    ManualPoint(Option<Fault>),
    ClockForward {
        slots: i64,
        fault: Option<Fault>,
    },
    ClockBack {
        days: i64,
    },
    ClockWithinSlot,
    Migrate(Option<Fault>),
    Failover {
        to_point: bool,
        fault: Option<Fault>,
    },
    Drill {
        to_point: bool,
        fault: Option<Fault>,
    },
}

/// A policy as created on one agent: its daily time of day and start.
#[derive(Debug, Clone, Copy)]
struct PolicyDef {
    tod_ms: i64,
    from_ms: i64,
}

struct World {
    tmp: tempfile::TempDir,
    agents: Vec<Agent>,
    clock: PathBuf,
    /// Seconds the agents' wall clock is ahead of the real one.
    offset_secs: i64,
    primary: Side,
    group: String,
    generation: u32,
    rng: ChaCha8Rng,
    seed: u64,
    /// Source hashes (ordered by standby name) at each manual point requested.
    committed: BTreeMap<String, Vec<String>>,
    /// The policy created on each agent (A, B), if any.
    policy_on: [Option<PolicyDef>; 2],
    policy_bound: bool,
    /// Newest slot (ms) a policy point of this group was made for.
    last_fired: Option<i64>,
    /// Every policy point name of this group seen so far.
    policy_seen: BTreeSet<String>,
    stats: BTreeMap<&'static str, u64>,
    /// Faults drawn and landed, per kind.
    tallies: Tally,
    /// Seeded UDP proxies each agent's peer reaches it through (A's, B's),
    /// for link cuts.
    proxies: Vec<UdpProxy>,
    /// The TCP side of each proxy (the peer API is HTTPS on the QUIC port
    /// number), cut together with the UDP side.
    tcp_proxies: Vec<TcpProxy>,
    /// Runs the proxies' tasks.
    runtime: tokio::runtime::Runtime,
}

fn real_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The newest daily slot at `tod_ms` (ms after UTC midnight) at or before `t_ms`.
fn slot_at_or_before(t_ms: i64, tod_ms: i64) -> i64 {
    (t_ms - tod_ms).div_euclid(DAY_MS) * DAY_MS + tod_ms
}

fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .expect("a timestamp in range")
        .to_string()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

impl World {
    fn new(seed: u64) -> World {
        assert!(
            Path::new(LIBFAKETIME).exists(),
            "{LIBFAKETIME} is missing: install the Debian package faketime (scripts/test.sh does)"
        );
        let mut tmp = tempfile::tempdir().expect("temp dir");
        if std::env::var_os("FERRY_CTL_KEEP").is_some() {
            // Debugging a failed seed: the agents' directories survive.
            tmp.disable_cleanup(true);
            println!("control fault harness: keeping {}", tmp.path().display());
        }
        let clock = tmp.path().join("clock");
        std::fs::write(&clock, "+0\n").expect("clock file");
        let mut world = World {
            agents: Vec::new(),
            clock,
            offset_secs: 0,
            primary: Side::A,
            group: "g1".to_owned(),
            generation: 1,
            rng: ChaCha8Rng::seed_from_u64(seed),
            seed,
            committed: BTreeMap::new(),
            policy_on: [None, None],
            policy_bound: false,
            last_fired: None,
            policy_seen: BTreeSet::new(),
            stats: BTreeMap::new(),
            tallies: Tally::default(),
            proxies: Vec::new(),
            tcp_proxies: Vec::new(),
            runtime: tokio::runtime::Runtime::new().expect("a tokio runtime"),
            tmp,
        };
        let dirs = [world.tmp.path().join("a"), world.tmp.path().join("b")];
        let fps: Vec<String> = dirs.iter().map(|d| init_agent(d)).collect();
        let env = world.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        for (dir, fp) in dirs.iter().zip(&fps) {
            // A short idle timeout makes a link cut a real disconnect.
            std::fs::write(
                dir.join("config.toml"),
                "[transport]\nidle_timeout_secs = 2\n",
            )
            .expect("config.toml");
            world.agents.push(Agent::start_with(dir, fp, &[], &env));
        }
        let out = run(&dirs[1], &["service", "key"]);
        assert!(out.status.success(), "{}", text(&out));
        let key = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        ok(&dirs[0], &["service", "create", "--key", &key]);
        // Each side reaches the other through a proxy (agents keep their
        // addresses across restarts, so the proxies stay valid).
        // The TCP side takes the UDP proxy's port number: another process
        // (tests run in parallel) may hold it for TCP; take another port then.
        for (i, agent) in world.agents.iter().enumerate() {
            let mut attempts = 0;
            let (proxy, tcp) = loop {
                attempts += 1;
                let proxy = world
                    .runtime
                    .block_on(UdpProxy::start(
                        "127.0.0.1:0".parse().expect("literal address"),
                        agent.addr,
                        seed.wrapping_add(i as u64),
                        Impairment::default(),
                    ))
                    .expect("starting a UDP proxy");
                match TcpProxy::start(&world.runtime, proxy.listen_addr(), agent.addr) {
                    Ok(tcp) => break (proxy, tcp),
                    Err(e) if attempts < 20 => println!("TCP proxy port taken ({e}); another"),
                    Err(e) => panic!("binding the TCP proxy beside the UDP one: {e}"),
                }
            };
            world.proxies.push(proxy);
            world.tcp_proxies.push(tcp);
        }
        for (dir, other) in [(&dirs[0], 1), (&dirs[1], 0)] {
            let name = ok(dir, &["service", "list"])[0]["name"]
                .as_str()
                .expect("a service name")
                .to_owned();
            let via = world.proxies[other].listen_addr().to_string();
            ok(
                dir,
                &["service", "update", &name, "--remote-endpoint", &via],
            );
            ok(dir, &["service", "verify", &name]);
        }
        let images: Vec<String> = [("vm1.raw", 3 * MIB), ("vm2.raw", 2 * MIB + 4096)]
            .iter()
            .enumerate()
            .map(|(i, (name, size))| {
                let path = world.tmp.path().join(name);
                imagegen::make_image(&path, *size, seed.wrapping_add(i as u64)).expect("image");
                format!("file:{}", path.display())
            })
            .collect();
        world.protect(&images);
        world
    }

    /// libfaketime for an agent: the offset is read from the clock file
    /// (cached for a second); monotonic clocks stay real.
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("LD_PRELOAD", LIBFAKETIME.to_owned()),
            ("FAKETIME_TIMESTAMP_FILE", self.clock.display().to_string()),
            ("FAKETIME_CACHE_DURATION", "1".to_owned()),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_owned()),
        ]
    }

    fn dir(&self, side: Side) -> PathBuf {
        self.agents[side.index()].dir.clone()
    }
    fn p(&self) -> PathBuf {
        self.dir(self.primary)
    }
    fn s(&self) -> PathBuf {
        self.dir(self.primary.other())
    }

    fn restart(&mut self, side: Side) {
        let env = self.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.agents[side.index()].restart(&env);
    }

    fn bump(&mut self, what: &'static str) {
        *self.stats.entry(what).or_default() += 1;
    }

    /// Creates the group on the primary with `uris`, and starts it.
    fn protect(&mut self, uris: &[String]) {
        let p = self.p();
        let g = self.group.clone();
        ok(&p, &["group", "create", &g, "--wait"]);
        let mut add = vec!["group", "add", g.as_str()];
        add.extend(uris.iter().map(String::as_str));
        add.push("--wait");
        ok(&p, &add);
        ok(&p, &["group", "start", &g, "--wait"]);
    }

    fn faked_now_ms(&self) -> i64 {
        real_now_ms() + self.offset_secs * 1000
    }

    /// Sets the agents' clock to `target_ms` (they see it within a second).
    fn set_clock(&mut self, target_ms: i64) {
        self.offset_secs = (target_ms - real_now_ms()) / 1000;
        let content = if self.offset_secs >= 0 {
            format!("+{}\n", self.offset_secs)
        } else {
            format!("{}\n", self.offset_secs)
        };
        std::fs::write(&self.clock, content).expect("clock file");
    }

    /// (uri, standby name) of the group's resources on the primary, by standby name.
    fn resources(&self) -> Vec<(String, String)> {
        let g = ok(&self.p(), &["group", "show", &self.group]);
        let mut out: Vec<(String, String)> = g["resources"]
            .as_array()
            .expect("resources")
            .iter()
            .map(|r| {
                (
                    r["uri"].as_str().expect("uri").to_owned(),
                    r["standby_target"]
                        .as_str()
                        .expect("standby_target")
                        .to_owned(),
                )
            })
            .collect();
        out.sort_by(|x, y| x.1.cmp(&y.1));
        out
    }

    fn source_paths(&self) -> Vec<PathBuf> {
        self.resources()
            .iter()
            .map(|(uri, _)| PathBuf::from(uri.strip_prefix("file:").expect("a file: source")))
            .collect()
    }

    fn source_hashes(&self) -> Vec<String> {
        self.source_paths().iter().map(|p| hash_file(p)).collect()
    }

    fn standby_hashes(&self) -> Vec<String> {
        let standby = &self.agents[self.primary.other().index()];
        self.resources()
            .iter()
            .map(|(_, name)| {
                let path = standby.image_path(name);
                if path.exists() {
                    hash_file(&path)
                } else {
                    "missing".to_owned()
                }
            })
            .collect()
    }

    fn write_sources(&mut self) {
        for path in self.source_paths() {
            let seed = self.rng.gen();
            imagegen::scattered_writes(&path, 8, seed).expect("writing a source");
        }
    }

    fn group_json(&self, dir: &Path) -> Value {
        ok(dir, &["group", "show", &self.group])
    }

    fn role_state(&self, dir: &Path) -> (String, String, bool) {
        let g = self.group_json(dir);
        (
            g["group"]["role"].as_str().unwrap_or("?").to_owned(),
            g["group"]["state"].as_str().unwrap_or("?").to_owned(),
            g["group"]["new_primary"].as_bool().unwrap_or(false),
        )
    }

    fn rps(&self, dir: &Path) -> Vec<Value> {
        ok(dir, &["rp", "list", &self.group])
            .as_array()
            .expect("rp list")
            .clone()
    }

    fn rp_names(&self, dir: &Path) -> BTreeSet<String> {
        self.rps(dir)
            .iter()
            .map(|rp| rp["name"].as_str().unwrap_or("?").to_owned())
            .collect()
    }

    fn policy_names(&self) -> BTreeSet<String> {
        self.rps(&self.p())
            .iter()
            .filter(|rp| rp["kind"] == "policy")
            .map(|rp| rp["name"].as_str().unwrap_or("?").to_owned())
            .collect()
    }

    fn ctx(&self, what: &str) -> String {
        format!(
            "[seed {} (replay: FERRY_CTL_FAULT_SEED={}), {what}, primary {:?}, group {}, clock {:+} s]",
            self.seed, self.seed, self.primary, self.group, self.offset_secs
        )
    }

    fn pick(&mut self) -> Scenario {
        let rng = &mut self.rng;
        match rng.gen_range(0..100) {
            0..=29 => Scenario::ManualPoint(Fault::draw(rng, Op::Manual)),
            30..=49 => Scenario::ClockForward {
                slots: rng.gen_range(1..=4),
                fault: Fault::draw(rng, Op::Policy),
            },
            50..=56 => Scenario::ClockBack {
                days: rng.gen_range(1..=3),
            },
            57..=63 => Scenario::ClockWithinSlot,
            64..=81 => Scenario::Migrate(Fault::draw(rng, Op::Migrate)),
            82..=89 => Scenario::Drill {
                to_point: rng.gen_bool(0.5),
                fault: Fault::draw(rng, Op::Drill),
            },
            _ => Scenario::Failover {
                to_point: rng.gen_bool(0.5),
                fault: Fault::draw(rng, Op::Failover),
            },
        }
    }

    fn scenario(&mut self, n: usize) {
        // Each scenario draws from its own generator (seed, n): what it is
        // and where its fault lands do not depend on how earlier scenarios
        // went (a timing-dependent outcome would shift every later draw),
        // so the printed replay line replays the same scenarios.
        self.rng = ChaCha8Rng::seed_from_u64(
            self.seed
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add(n as u64),
        );
        let scenario = self.pick();
        let what = format!("scenario {n}: {scenario:?}");
        println!("{}", self.ctx(&what));
        match scenario {
            Scenario::ManualPoint(fault) => self.manual_point(n, fault, &what),
            Scenario::ClockForward { slots, fault } => self.clock_forward(slots, fault, &what),
            Scenario::ClockBack { days } => {
                self.ensure_policy(&what);
                let now = self.faked_now_ms();
                let tod = self.policy_def().tod_ms;
                let landing = slot_at_or_before(now - days * DAY_MS, tod) + self.landing_ms();
                self.set_clock(landing);
                self.expect_policy_outcome(None, &what);
            }
            Scenario::ClockWithinSlot => {
                self.ensure_policy(&what);
                let now = self.faked_now_ms();
                let tod = self.policy_def().tod_ms;
                // Later within the same slot interval (at least an hour away
                // from the next slot): nothing is due that was not before.
                let next = slot_at_or_before(now, tod) + DAY_MS;
                let room = next - HOUR_MS - now;
                if room > 60_000 {
                    let step = self.rng.gen_range(0..room);
                    self.set_clock(now + step);
                }
                let due = self.due_slot();
                self.expect_policy_outcome(due, &what);
            }
            Scenario::Migrate(fault) => self.migrate(fault, &what),
            Scenario::Failover { to_point, fault } => self.failover(to_point, fault, &what),
            Scenario::Drill { to_point, fault } => self.drill(to_point, fault, &what),
        }
        self.check(&what);
    }

    /// Somewhere between 1 h and 22 h after a slot: far from slot edges (a
    /// run would need two hours of real time between two clock settings
    /// for the real clock to reach the next slot on its own).
    fn landing_ms(&mut self) -> i64 {
        self.rng.gen_range(HOUR_MS..22 * HOUR_MS)
    }

    // ---------------------------------------------------------- manual

    fn manual_point(&mut self, n: usize, fault: Option<Fault>, what: &str) {
        let p = self.p();
        let g = self.group.clone();
        // At most 5 manual points: drop the oldest first.
        let mut manual: Vec<(i64, String)> = self
            .rps(&p)
            .iter()
            .filter(|rp| rp["kind"] == "manual")
            .map(|rp| {
                (
                    rp["created_at"].as_i64().unwrap_or(0),
                    rp["name"].as_str().unwrap_or("?").to_owned(),
                )
            })
            .collect();
        manual.sort();
        while manual.len() >= 5 {
            let (_, name) = manual.remove(0);
            ok(&p, &["rp", "delete", &g, &name, "--wait"]);
            self.committed.remove(&name);
        }
        if let Some(f) = &fault {
            self.arm(f);
        }
        self.write_sources();
        let hashes = self.source_hashes();
        let name = format!("m{n}");
        let primary = self.primary;
        let lost_before = self.log_count(primary, STANDBY_DID_NOT_RECORD);
        let op = ok(&p, &["rp", "create", &g, "--name", &name]);
        let landed = fault.is_some_and(|f| self.land(&f, |w| w.op_running(primary, &op)));
        let done = wait_op_finished(&p, &op);
        let outcome = done["state"]["state"].as_str().unwrap_or("?").to_owned();
        println!("  recovery point {name}: {outcome}");
        if let Some(f) = fault.filter(|_| landed) {
            self.assert_rp_interrupted(&f, lost_before, Some(&outcome), what);
        }
        if outcome == "succeeded" {
            self.bump("manual points made");
            self.committed.insert(name.clone(), hashes.clone());
            // The point is complete on both sides and restores, on the
            // standby, to what the sources held when it was requested.
            let s = self.s();
            for dir in [&p, &s] {
                wait_for(&format!("{name} complete on {}", dir.display()), || {
                    self.rps(dir)
                        .iter()
                        .any(|rp| rp["name"] == name.as_str() && rp["state"] == "complete")
                });
            }
            // Every resource (image) of the group, in standby-name order
            // as the hashes were taken.
            for (i, (uri, image)) in self.resources().into_iter().enumerate() {
                let out = self.tmp.path().join("restored.raw");
                let _ = std::fs::remove_file(&out);
                let out_s = out.display().to_string();
                let args = ["group", "restore", &g, "--resource", &uri, "--rp", &name];
                let mut args = args.to_vec();
                args.extend(["--out", &out_s, "--wait"]);
                ok(&s, &args);
                assert_eq!(
                    hash_file(&out),
                    hashes[i],
                    "{}: restore of {image} at {name} differs from its source when it was requested",
                    self.ctx(what)
                );
            }
        } else {
            self.bump("manual points interrupted");
        }
    }

    /// A kill that landed in a recovery point (manual or policy) really
    /// interrupted it: a killed primary finished the operation as
    /// interrupted when it restarted, and it did not succeed; a killed
    /// standby never answered the primary's request to record the point
    /// (the primary logged that, and retried).
    fn assert_rp_interrupted(
        &self,
        fault: &Fault,
        lost_before: usize,
        outcome: Option<&str>,
        what: &str,
    ) {
        if !fault.kills() {
            return;
        }
        let ctx = self.ctx(what);
        match fault.on {
            On::Primary => {
                self.assert_restart_finished_op(self.primary, &ctx);
                if let Some(outcome) = outcome {
                    assert_ne!(
                        outcome, "succeeded",
                        "{ctx}: the primary was killed at {} but the point succeeded",
                        fault.point
                    );
                }
            }
            On::Standby => wait_for(
                &format!("{ctx}: the primary to see the killed standby's answer lost"),
                || self.log_count(self.primary, STANDBY_DID_NOT_RECORD) > lost_before,
            ),
        }
    }

    // ------------------------------------------------------- migration

    fn migrate(&mut self, fault: Option<Fault>, what: &str) {
        let old_p = self.p();
        let old_s = self.s();
        let g = self.group.clone();
        if self.policy_bound {
            ok(&old_p, &["policy", "unbind", &g]);
            self.policy_bound = false;
        }
        self.write_sources();
        let quiesced = self.source_hashes();
        let names: Vec<String> = self.resources().into_iter().map(|(_, n)| n).collect();
        if let Some(f) = &fault {
            self.arm(f);
        }
        let primary = self.primary;
        let op = ok(&old_p, &["group", "migrate", &g]);
        let landed = fault.is_some_and(|f| self.land(&f, |w| w.op_running(primary, &op)));
        let done = wait_op_finished(&old_p, &op);
        println!(
            "  migration: {}",
            done["state"]["state"].as_str().unwrap_or("?")
        );
        if done["state"]["state"] != "succeeded" {
            self.bump("migrations interrupted");
        }
        if let Some(f) = fault.filter(|f| landed && f.kills()) {
            // Killed at a step of the migration on either side: the old
            // primary's attempt failed, to be retried.
            assert_eq!(
                (
                    done["state"]["state"].as_str(),
                    self.role_state(&old_p).1.as_str()
                ),
                (Some("failed"), "migration_failed"),
                "{}: killed the {:?} at {} but the migration was not interrupted: {done}",
                self.ctx(what),
                f.on,
                f.point
            );
            if f.on == On::Primary {
                self.assert_restart_finished_op(primary, &self.ctx(what));
            }
        }
        let mut retries = 0;
        while self.role_state(&old_p).1 == "migration_failed" {
            retries += 1;
            assert!(
                retries <= 3,
                "{}: migration still failing after 3 retries: {done}",
                self.ctx(what)
            );
            self.bump("migrations retried");
            let out = run(&old_p, &["--json", "group", "migrate", &g, "--wait"]);
            println!("  retry {retries}: {}", text(&out).replace('\n', " | "));
        }
        let a = self.role_state(&old_p);
        let b = self.role_state(&old_s);
        assert_eq!(
            (a.0.as_str(), a.1.as_str(), b.0.as_str(), b.1.as_str()),
            ("standby", "mapped", "primary", "mapped"),
            "{}: roles after the migration (old primary, old standby)",
            self.ctx(what)
        );
        self.bump("migrations");
        self.primary = self.primary.other();
        // The new primary's volumes hold the quiesced sources, in the same
        // order (by standby name, which the migration keeps).
        let after: Vec<String> = self.resources().into_iter().map(|(_, n)| n).collect();
        assert_eq!(after, names, "{}: standby names kept", self.ctx(what));
        assert_eq!(
            self.source_hashes(),
            quiesced,
            "{}: new primary volumes differ from the quiesced sources",
            self.ctx(what)
        );
        assert_eq!(
            self.standby_hashes(),
            quiesced,
            "{}: the old primary's standby copies differ from the quiesced sources",
            self.ctx(what)
        );
        let p = self.p();
        ok(&p, &["group", "start", &g, "--wait"]);
    }

    // ----------------------------------------------------------- checks

    fn check(&mut self, what: &str) {
        let ctx = self.ctx(what);
        let p = self.p();
        let s = self.s();
        // No operation is stuck.
        for dir in [&p, &s] {
            let mut running = Vec::new();
            wait_for(
                &format!("{ctx}: operations on {} to finish", dir.display()),
                || {
                    running = get(dir, "/v1/operations")
                        .as_array()
                        .expect("operations")
                        .iter()
                        .filter(|op| op["state"]["state"] == "running")
                        .cloned()
                        .collect();
                    if !running.is_empty() {
                        println!("  still running on {}: {running:?}", dir.display());
                    }
                    running.is_empty()
                },
            );
        }
        // The roles are complementary and both sides replicate.
        let mut last = Default::default();
        wait_for(&format!("{ctx}: both sides syncing"), || {
            last = (self.role_state(&p), self.role_state(&s));
            let ((pr, ps, _), (sr, ss, _)) = &last;
            (pr.as_str(), ps.as_str(), sr.as_str(), ss.as_str())
                == ("primary", "syncing", "standby", "syncing")
        });
        // Both sides list the same recovery points; every complete point
        // on the standby is complete on the primary (a deletion deferred
        // while the link was down settles first).
        wait_for(
            &format!("{ctx}: both sides to list the same recovery points"),
            || {
                let (a, b) = (self.rp_names(&p), self.rp_names(&s));
                let settling = self
                    .rps(&p)
                    .iter()
                    .any(|rp| rp["state"] == "deleting" || rp["state"] == "creating");
                if a != b || settling {
                    println!("  recovery points: primary {a:?}, standby {b:?}");
                }
                a == b && !settling
            },
        );
        let primary_complete: BTreeSet<String> = self
            .rps(&p)
            .iter()
            .filter(|rp| rp["state"] == "complete")
            .filter_map(|rp| rp["name"].as_str().map(str::to_owned))
            .collect();
        for rp in self.rps(&s) {
            if rp["state"] == "complete" {
                let name = rp["name"].as_str().unwrap_or("?");
                assert!(
                    primary_complete.contains(name),
                    "{ctx}: the standby's complete point {name} is not complete on the primary: {rp}"
                );
            }
        }
        // The standby holds the sources (unchanged since the scenario).
        let want = self.source_hashes();
        wait_for(&format!("{ctx}: the standby to equal the sources"), || {
            self.standby_hashes() == want
        });
        // No policy point appeared that the clock did not make due.
        if self.policy_bound {
            let new: Vec<String> = self
                .policy_names()
                .difference(&self.policy_seen)
                .cloned()
                .collect();
            assert!(new.is_empty(), "{ctx}: unexpected policy points {new:?}");
        }
    }
}

/// Waits until operation `op` of the agent at `dir` is no longer running.
fn wait_op_finished(dir: &Path, op: &Value) -> Value {
    let id = op["operation"]["id"].to_string();
    let mut last = Value::Null;
    wait_for(&format!("operation {id} to finish"), || {
        last = ok(dir, &["op", &id]);
        last["state"]["state"] != "running"
    });
    last
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn run_harness(default_scenarios: u64, default_seed: u64) {
    let seed = env_u64("FERRY_CTL_FAULT_SEED").unwrap_or(default_seed);
    let scenarios = env_u64("FERRY_CTL_FAULT_SCENARIOS").unwrap_or(default_scenarios);
    println!(
        "control fault harness: seed {seed}, {scenarios} scenarios (replay: FERRY_CTL_FAULT_SEED={seed})"
    );
    let started = Instant::now();
    let mut world = World::new(seed);
    world.check("initial protection");
    for n in 1..=scenarios as usize {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| world.scenario(n)));
        if let Err(panic) = result {
            // What the agents said last, for the failure report.
            for (name, agent) in ["A", "B"].iter().zip(&world.agents) {
                let log = agent.log_text();
                let lines: Vec<&str> = log.lines().collect();
                let tail = &lines[lines.len().saturating_sub(40)..];
                println!(
                    "--- agent {name}: last lines of its log ---\n{}",
                    tail.join("\n")
                );
            }
            std::panic::resume_unwind(panic);
        }
    }
    println!(
        "control fault harness: seed {seed}: {scenarios} scenarios passed in {:.0} s: {:?}\nfaults drawn and landed, per kind:\n{}",
        started.elapsed().as_secs_f64(),
        world.stats,
        world.tallies.summary()
    );
    println!("replay: FERRY_CTL_FAULT_SEED={seed}");
    world
        .tallies
        .assert_landing_rates(LANDING_FLOOR, LANDING_MIN_DRAWN, &[]);
}

/// Engine recovery point ids are wall-clock milliseconds: with the clock
/// stepped back three days behind the standby's newest point, every cycle
/// was refused ("recovery point is not newer than the committed …") and
/// replication stalled until the clock caught up (found by this harness,
/// seed 20261203, scenario 15). Now the primary numbers new points above the
/// standby's newest: a recovery point after the step completes, the
/// standby follows the sources, and so does a migration's final sync after
/// the primary restarted.
#[test]
fn clock_stepped_back_does_not_stall_replication() {
    let mut world = World::new(7);
    world.check("protected");
    let p = world.p();
    let g = world.group.clone();
    ok(&p, &["rp", "create", &g, "--name", "before", "--wait"]);
    let back = world.faked_now_ms() - 3 * DAY_MS;
    world.set_clock(back);
    // The agents read the clock file at most a second later.
    std::thread::sleep(Duration::from_secs(2));
    world.write_sources();
    let op = ok(&p, &["rp", "create", &g, "--name", "after", "--wait"]);
    assert_eq!(op["state"]["state"], "succeeded", "{op}");
    world.check("a recovery point after the clock stepped back");
    // The primary restarted (what it knew of the standby's points is gone),
    // the clock still behind: a planned migration's final sync completes too
    // (seed 20261203, scenario 16, before the floor covered that sync).
    world.restart(world.primary);
    world.write_sources();
    let want = world.source_hashes();
    let op = ok(&p, &["group", "migrate", &g, "--wait"]);
    assert_eq!(op["state"]["state"], "succeeded", "{op}");
    world.primary = world.primary.other();
    assert_eq!(world.source_hashes(), want, "the new primary's volumes");
    let p = world.p();
    ok(&p, &["group", "start", &g, "--wait"]);
    world.check("replicating back after the migration");
}

#[test]
fn control_fault_scenarios_short() {
    run_harness(40, 1);
}

#[test]
#[ignore = "long run: cargo test -p ferry-e2e --test faults_control -- --ignored --nocapture"]
fn control_fault_scenarios_long() {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(7);
    run_harness(300, seed);
}
