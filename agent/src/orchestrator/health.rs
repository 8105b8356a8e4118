//! `ferry health`: every group of this agent rolled up into OK, WARNING or
//! CRITICAL, with one line per problem (`GET /v1/health/groups`).
//!
//! - CRITICAL: the group is in a `*_failed` state; an operation of the
//!   group failed (the newest of its kind, within the window); on the
//!   primary, the standby agent has not answered API calls (each health
//!   request pings it: a cycle reconnecting makes none) or cycles have
//!   failed for longer than `unreachable_secs` with the standby out of
//!   reach, or another error stopped replication for
//!   [`STOPPED_AFTER`] cycles in a row; on the standby, no call from the
//!   primary for longer than `unreachable_secs` while syncing; the RPO lag
//!   above the group's critical threshold.
//! - WARNING: the RPO lag above the warning threshold; a cycle failed and
//!   is being retried; the last cycle needed reconnects; cycles failed
//!   [`FLAP_FAILURES`] times in the last [`FLAP_WINDOW_SECS`] although
//!   replication recovered (link flapping); no complete copy yet (initial
//!   sync); an operation rolled back.
//!
//! RPO lag: on the primary, the age of the newest instant the standby holds
//! every write from (as `ferry status` shows); on the standby, the age of
//! the newest recovery point it holds on every image, or of the primary's
//! last idle check when that is newer (nothing changed since the point).
//! The evaluation ([`evaluate`]) is a pure function of the facts, tested
//! below; [`Orchestrator::health`] gathers them.

use serde::{Deserialize, Serialize};

use super::{CtlResult, GroupProgress, Orchestrator};
use crate::control::{Group, GroupState, OpState, Operation, Role, RpoThresholds, Timestamp};
use crate::sync_util::lock;
use crate::units::human_duration;

/// Failed cycles in a row, of an error other than an unreachable standby,
/// after which replication counts as stopped (CRITICAL).
pub const STOPPED_AFTER: u32 = 3;
/// Failed cycles within [`FLAP_WINDOW_SECS`] that make a link flapping.
pub const FLAP_FAILURES: usize = 3;
/// The window link flapping is counted in.
pub const FLAP_WINDOW_SECS: i64 = 900;

/// How bad things are (ordered: the worst wins).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Nothing to do.
    Ok,
    /// Look at it soon.
    Warning,
    /// DR is not working.
    Critical,
}

impl Level {
    /// The monitoring-plugin exit code (0, 1, 2).
    pub fn exit_code(self) -> u8 {
        match self {
            Level::Ok => 0,
            Level::Warning => 1,
            Level::Critical => 2,
        }
    }

    /// `OK`, `WARNING`, `CRITICAL`.
    pub fn label(self) -> &'static str {
        match self {
            Level::Ok => "OK",
            Level::Warning => "WARNING",
            Level::Critical => "CRITICAL",
        }
    }
}

/// One problem of one group.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Problem {
    /// The group.
    pub group: String,
    /// How bad.
    pub level: Level,
    /// Which check: `group_state`, `operation`, `rpo`, `retrying`,
    /// `standby_unreachable`, `replication_error`, `link_flapping`,
    /// `reconnects`, `initial_sync`, `primary_silent`.
    pub check: String,
    /// What is wrong, for a person.
    pub message: String,
}

/// One group's roll-up.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroupHealth {
    /// Name.
    pub name: String,
    /// Role here.
    pub role: Role,
    /// State here.
    pub state: GroupState,
    /// Its worst problem.
    pub status: Level,
    /// RPO lag now, seconds (`None`: no complete copy, or not replicating).
    pub rpo_lag_secs: Option<f64>,
    /// The thresholds checked (the group's, else the request's defaults).
    pub rpo: RpoThresholds,
}

/// The answer of `GET /v1/health/groups`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HealthReport {
    /// The worst level of any group (`ok` without groups).
    pub status: Level,
    /// When it was computed (ms since the epoch).
    pub checked_at: Timestamp,
    /// Every group.
    pub groups: Vec<GroupHealth>,
    /// Every problem, worst first.
    pub problems: Vec<Problem>,
}

/// What a health request may set (query parameters).
#[derive(Clone, Copy, Debug, Deserialize)]
pub struct HealthParams {
    /// RPO warning threshold for groups without their own, seconds.
    #[serde(default)]
    pub rpo_warn_secs: Option<u64>,
    /// RPO critical threshold for groups without their own, seconds.
    #[serde(default)]
    pub rpo_crit_secs: Option<u64>,
    /// Standby (or, on the standby, primary) out of reach for longer than
    /// this is CRITICAL.
    #[serde(default = "default_unreachable_secs")]
    pub unreachable_secs: u64,
    /// Failed operations older than this are not reported.
    #[serde(default = "default_ops_window_secs")]
    pub ops_window_secs: u64,
}

fn default_unreachable_secs() -> u64 {
    300
}

fn default_ops_window_secs() -> u64 {
    86_400
}

impl Default for HealthParams {
    fn default() -> Self {
        Self {
            rpo_warn_secs: None,
            rpo_crit_secs: None,
            unreachable_secs: default_unreachable_secs(),
            ops_window_secs: default_ops_window_secs(),
        }
    }
}

/// Standby side: when the primary last called about a group.
#[derive(Clone, Copy, Debug, Default)]
pub struct PeerContact {
    /// Any peer call for the group.
    pub last: Option<Timestamp>,
    /// The last idle check (the primary found nothing changed).
    pub idle_confirmed: Option<Timestamp>,
}

/// Primary side: whether the peer agent answered its last API call.
#[derive(Clone, Debug, Default)]
pub struct PeerReach {
    /// Since when calls have failed to reach it (`None`: the last answered).
    pub failing_since: Option<Timestamp>,
    /// Why the last call failed.
    pub last_error: Option<String>,
}

impl PeerReach {
    /// Records a call that reached the peer (`None`) or failed with `error`.
    pub fn record(&mut self, error: Option<String>, now: Timestamp) {
        match error {
            None => *self = PeerReach::default(),
            Some(e) => {
                self.failing_since.get_or_insert(now);
                self.last_error = Some(e);
            }
        }
    }
}

/// One problem as [`evaluate`] finds it: level, check, message.
pub type Finding = (Level, &'static str, String);

/// What [`evaluate`] looks at for one group.
pub struct GroupFacts<'a> {
    /// The group.
    pub group: &'a Group,
    /// Primary: the replication loop's progress.
    pub progress: Option<&'a GroupProgress>,
    /// Primary: whether the standby agent answers API calls.
    pub reach: PeerReach,
    /// Standby: when the newest recovery point held on every image was taken.
    pub standby_newest_point: Option<Timestamp>,
    /// Standby: calls from the primary.
    pub contact: PeerContact,
    /// When this agent started.
    pub started_at: Timestamp,
    /// The group's operations, oldest first.
    pub operations: &'a [Operation],
}

fn secs(from: Timestamp, to: Timestamp) -> f64 {
    (to.0 - from.0).max(0) as f64 / 1000.0
}

fn dur(secs: f64) -> String {
    human_duration(secs.round() as u64)
}

/// The group's RPO lag and problems, as (level, check, message).
pub fn evaluate(
    f: &GroupFacts<'_>,
    p: &HealthParams,
    now: Timestamp,
) -> (Option<f64>, RpoThresholds, Vec<Finding>) {
    let g = f.group;
    let mut out = Vec::new();
    if g.state.to_string().ends_with("_failed") {
        out.push((
            Level::Critical,
            "group_state",
            format!(
                "in state {}: the last operation failed (ferry group show {})",
                g.state, g.name
            ),
        ));
    }
    operation_problems(f.operations, p, now, &mut out);
    let syncing = g.state == GroupState::Syncing;
    let rpo_lag = match g.role {
        Role::Primary if syncing => {
            let unreachable = reach_problem(&f.reach, p, now, &mut out);
            f.progress
                .and_then(|pr| primary_problems(pr, unreachable, p, now, &mut out))
        }
        Role::Standby if syncing && !g.new_primary => standby_problems(f, p, now, &mut out),
        _ => None,
    };
    let rpo = RpoThresholds {
        warn_secs: g.rpo.warn_secs.or(p.rpo_warn_secs),
        crit_secs: g.rpo.crit_secs.or(p.rpo_crit_secs),
    };
    if let Some(lag) = rpo_lag {
        let over = |t: Option<u64>| t.filter(|t| lag > *t as f64);
        if let Some(crit) = over(rpo.crit_secs) {
            out.push((
                Level::Critical,
                "rpo",
                format!(
                    "RPO lag {} above the critical threshold {}",
                    dur(lag),
                    human_duration(crit)
                ),
            ));
        } else if let Some(warn) = over(rpo.warn_secs) {
            out.push((
                Level::Warning,
                "rpo",
                format!(
                    "RPO lag {} above the warning threshold {}",
                    dur(lag),
                    human_duration(warn)
                ),
            ));
        }
    }
    (rpo_lag, rpo, out)
}

/// Failed (CRITICAL) or rolled-back (WARNING) operations: the newest of
/// each kind, finished within the window, with no later success of that
/// kind.
fn operation_problems(ops: &[Operation], p: &HealthParams, now: Timestamp, out: &mut Vec<Finding>) {
    let window_ms = i64::try_from(p.ops_window_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    let mut seen = Vec::new();
    for op in ops.iter().rev() {
        if op.state == OpState::Running || seen.contains(&op.kind) {
            continue;
        }
        seen.push(op.kind);
        let finished = op.finished_at.unwrap_or(op.started_at);
        if now.0.saturating_sub(finished.0) > window_ms {
            continue;
        }
        match &op.state {
            OpState::Failed { reason } => out.push((
                Level::Critical,
                "operation",
                format!(
                    "operation {} ({}) failed {} ago: {reason}",
                    op.id,
                    op.kind,
                    dur(secs(finished, now))
                ),
            )),
            OpState::RolledBack => out.push((
                Level::Warning,
                "operation",
                format!(
                    "operation {} ({}) was rolled back {} ago",
                    op.id,
                    op.kind,
                    dur(secs(finished, now))
                ),
            )),
            _ => {}
        }
    }
}

/// The standby agent not answering API calls (a cycle may hang meanwhile,
/// reconnecting): CRITICAL after `unreachable_secs`, else WARNING. Returns
/// whether it was reported.
fn reach_problem(
    reach: &PeerReach,
    p: &HealthParams,
    now: Timestamp,
    out: &mut Vec<Finding>,
) -> bool {
    let Some(since) = reach.failing_since else {
        return false;
    };
    let failing = secs(since, now);
    let error = reach.last_error.as_deref().unwrap_or("no reason given");
    let level = if failing > p.unreachable_secs as f64 {
        Level::Critical
    } else {
        Level::Warning
    };
    out.push((
        level,
        "standby_unreachable",
        format!("standby unreachable for {}: {error}", dur(failing)),
    ));
    true
}

/// A primary's replication loop; returns the RPO lag. `reported`: the
/// standby's being out of reach is reported already.
fn primary_problems(
    pr: &GroupProgress,
    reported: bool,
    p: &HealthParams,
    now: Timestamp,
    out: &mut Vec<Finding>,
) -> Option<f64> {
    let error = pr.last_error.as_deref().unwrap_or("no reason given");
    if pr.consecutive_failures > 0 && reported {
        // One line for one cause.
    } else if pr.consecutive_failures > 0 {
        let kind = pr.last_error_kind.as_deref().unwrap_or("other");
        let failing = secs(pr.failing_since.unwrap_or(now), now);
        let unreachable = matches!(kind, "transport" | "link_lost" | "peer");
        if unreachable && failing > p.unreachable_secs as f64 {
            out.push((
                Level::Critical,
                "standby_unreachable",
                format!("standby unreachable for {}: {error}", dur(failing)),
            ));
        } else if !unreachable && pr.consecutive_failures >= STOPPED_AFTER {
            out.push((
                Level::Critical,
                "replication_error",
                format!(
                    "replication stopped by a {kind} error ({} failed cycles in a row for {}): {error}",
                    pr.consecutive_failures,
                    dur(failing)
                ),
            ));
        } else {
            out.push((
                Level::Warning,
                "retrying",
                format!(
                    "{} failed cycle(s) in a row for {}, retrying: {error}",
                    pr.consecutive_failures,
                    dur(failing)
                ),
            ));
        }
    } else {
        let flaps = pr
            .recent_failures
            .iter()
            .filter(|t| now.0 - t.0 < FLAP_WINDOW_SECS * 1000)
            .count();
        if flaps >= FLAP_FAILURES {
            out.push((
                Level::Warning,
                "link_flapping",
                format!(
                    "{flaps} failed cycles in the last {} although replication recovered",
                    human_duration(FLAP_WINDOW_SECS as u64)
                ),
            ));
        }
        if pr.last_cycle_reconnects > 0 {
            out.push((
                Level::Warning,
                "reconnects",
                format!(
                    "the last cycle lost the link and reconnected {} time(s)",
                    pr.last_cycle_reconnects
                ),
            ));
        }
    }
    let lag = pr.standby_holds_writes_before.map(|t| secs(t, now));
    if lag.is_none() && pr.consecutive_failures == 0 {
        out.push((
            Level::Warning,
            "initial_sync",
            "no complete copy on the standby yet (initial sync)".to_owned(),
        ));
    }
    lag
}

/// A syncing standby group; returns the RPO lag.
fn standby_problems(
    f: &GroupFacts<'_>,
    p: &HealthParams,
    now: Timestamp,
    out: &mut Vec<Finding>,
) -> Option<f64> {
    let last = f.contact.last.unwrap_or(f.started_at).max(f.started_at);
    let silent = secs(last, now);
    if silent > p.unreachable_secs as f64 {
        out.push((
            Level::Critical,
            "primary_silent",
            format!(
                "no call from the primary for {}: the link or the primary site is down",
                dur(silent)
            ),
        ));
    }
    let Some(point) = f.standby_newest_point else {
        out.push((
            Level::Warning,
            "initial_sync",
            "no complete recovery point held yet (initial sync)".to_owned(),
        ));
        return None;
    };
    let holds = f.contact.idle_confirmed.map_or(point, |t| t.max(point));
    Some(secs(holds, now))
}

/// How long `ferry health` waits for a standby's ping.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

impl Orchestrator {
    /// Pings the standby of every service a replicating primary group uses,
    /// so "unreachable since" is known even while a cycle hangs
    /// reconnecting (it makes no API call then). Failures are recorded,
    /// not returned.
    pub async fn probe_standbys(&self) -> CtlResult<()> {
        let groups = self.groups()?;
        for svc in self.services()? {
            let used = groups.iter().any(|g| {
                g.service_id == svc.id && g.role == Role::Primary && g.state == GroupState::Syncing
            });
            if used {
                let _ = self
                    .peer_within(
                        &svc,
                        hyper::Method::GET,
                        "/v1/peer/ping",
                        None,
                        PROBE_TIMEOUT,
                    )
                    .await;
            }
        }
        Ok(())
    }

    /// Every group's health (see the module doc).
    pub fn health(&self, params: &HealthParams) -> CtlResult<HealthReport> {
        let now = Timestamp::now();
        let mut groups = Vec::new();
        let mut problems = Vec::new();
        for g in self.groups()? {
            let progress = self.progress_of(g.id);
            let operations = self.db(|s| s.operations_of_group(g.id))?;
            let contact = lock(&self.peer_contact)
                .get(&g.id)
                .copied()
                .unwrap_or_default();
            let standby_newest_point = match g.role {
                Role::Standby => self.standby_newest_point(&g)?,
                Role::Primary => None,
            };
            let reach = lock(&self.peer_reach)
                .get(&g.service_id)
                .cloned()
                .unwrap_or_default();
            let facts = GroupFacts {
                group: &g,
                progress: progress.as_ref(),
                reach,
                standby_newest_point,
                contact,
                started_at: self.started_at,
                operations: &operations,
            };
            let (rpo_lag_secs, rpo, found) = evaluate(&facts, params, now);
            let status = found.iter().map(|(l, _, _)| *l).max().unwrap_or(Level::Ok);
            problems.extend(found.into_iter().map(|(level, check, message)| Problem {
                group: g.name.clone(),
                level,
                check: check.to_owned(),
                message,
            }));
            groups.push(GroupHealth {
                name: g.name.clone(),
                role: g.role,
                state: g.state,
                status,
                rpo_lag_secs,
                rpo,
            });
        }
        problems.sort_by_key(|p| std::cmp::Reverse(p.level));
        Ok(HealthReport {
            status: groups.iter().map(|g| g.status).max().unwrap_or(Level::Ok),
            checked_at: now,
            groups,
            problems,
        })
    }

    /// When the newest recovery point held on every standby image of the
    /// group was taken (`None` while an image holds none).
    fn standby_newest_point(&self, g: &Group) -> CtlResult<Option<Timestamp>> {
        let mut oldest_newest: Option<u64> = None;
        let resources = self.db(|s| s.resources(g.id))?;
        if resources.is_empty() {
            return Ok(None);
        }
        for r in resources {
            let Ok(image) = ferry_protocol::ImageName::new(r.standby_target.clone()) else {
                return Ok(None);
            };
            let newest = self
                .receiver
                .store
                .recovery_points(&image)
                .ok()
                .and_then(|points| {
                    points
                        .iter()
                        .filter(|p| !p.fuzzy)
                        .map(|p| p.created_unix_ms)
                        .max()
                });
            let Some(newest) = newest else {
                return Ok(None);
            };
            oldest_newest = Some(oldest_newest.map_or(newest, |o| o.min(newest)));
        }
        Ok(oldest_newest.map(|ms| Timestamp(i64::try_from(ms).unwrap_or(i64::MAX))))
    }
}

#[cfg(test)]
#[path = "health_tests.rs"]
mod tests;
