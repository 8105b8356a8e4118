//! `ferry health`: the agent's health roll-up (`GET /v1/health/groups`) as
//! a monitoring plugin prints it: a first line `FERRY OK|WARNING|CRITICAL -
//! summary`, then one line per problem; exit 0, 1 or 2, and 3 (UNKNOWN)
//! when the agent could not be asked. `--json` prints the report instead.

use std::process::ExitCode;

use anyhow::{Context, Result};
use hyper::Method;

use super::agent_api::Api;
use super::args::Conn;
use crate::orchestrator::health::{HealthReport, Level};
use crate::units::parse_duration_secs;

/// What `ferry health` was asked.
pub(super) struct HealthArgs {
    pub rpo_warn: Option<String>,
    pub rpo_crit: Option<String>,
    pub unreachable: String,
    pub ops_window: String,
}

/// The monitoring-plugin exit code of UNKNOWN.
const UNKNOWN: u8 = 3;

/// Runs `ferry health`; never fails (an error is UNKNOWN, exit 3).
pub(super) async fn health(conn: &Conn, args: HealthArgs) -> ExitCode {
    match ask(conn, &args).await {
        Ok(report) => {
            if conn.json {
                match serde_json::to_string(&report) {
                    Ok(text) => println!("{text}"),
                    Err(e) => return unknown(&e.into()),
                }
            } else {
                print!("{}", render(&report));
            }
            ExitCode::from(report.status.exit_code())
        }
        Err(e) => unknown(&e),
    }
}

fn unknown(e: &anyhow::Error) -> ExitCode {
    println!("FERRY UNKNOWN - {e:#}");
    ExitCode::from(UNKNOWN)
}

async fn ask(conn: &Conn, args: &HealthArgs) -> Result<HealthReport> {
    let secs = |flag: &str, v: &str| parse_duration_secs(v).with_context(|| flag.to_owned());
    let mut query = vec![
        format!(
            "unreachable_secs={}",
            secs("--unreachable", &args.unreachable)?
        ),
        format!(
            "ops_window_secs={}",
            secs("--ops-window", &args.ops_window)?
        ),
    ];
    for (flag, key, value) in [
        ("--rpo-warn", "rpo_warn_secs", &args.rpo_warn),
        ("--rpo-crit", "rpo_crit_secs", &args.rpo_crit),
    ] {
        if let Some(v) = value {
            let n = secs(flag, v)?;
            if n > 0 {
                query.push(format!("{key}={n}"));
            }
        }
    }
    let api = Api::new(conn)?;
    let reply = api
        .call(
            Method::GET,
            &format!("/v1/health/groups?{}", query.join("&")),
            None,
        )
        .await?;
    if !reply.ok() {
        let text = reply
            .body
            .get("error")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("no reason given");
        anyhow::bail!("HTTP {}: {text}", reply.status);
    }
    serde_json::from_value(reply.body).context("the agent's health answer")
}

/// The plugin output: a summary line, then one line per problem.
pub(super) fn render(report: &HealthReport) -> String {
    let count = |l: Level| report.groups.iter().filter(|g| g.status == l).count();
    let n = report.groups.len();
    let summary = match report.status {
        Level::Ok => format!("{n} group(s) OK"),
        _ => format!(
            "{} critical, {} warning, {} OK of {n} group(s)",
            count(Level::Critical),
            count(Level::Warning),
            count(Level::Ok)
        ),
    };
    let mut out = format!("FERRY {} - {summary}\n", report.status.label());
    for p in &report.problems {
        out.push_str(&format!(
            "{} {}: {} [{}]\n",
            p.level.label(),
            p.group,
            p.message,
            p.check
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{GroupState, Role, RpoThresholds, Timestamp};
    use crate::orchestrator::health::{GroupHealth, Problem};

    fn report(status: Level, problems: Vec<Problem>) -> HealthReport {
        let group = |name: &str, status| GroupHealth {
            name: name.into(),
            role: Role::Primary,
            state: GroupState::Syncing,
            status,
            rpo_lag_secs: Some(3.0),
            rpo: RpoThresholds::default(),
        };
        HealthReport {
            status,
            checked_at: Timestamp(0),
            groups: vec![group("web", status), group("db", Level::Ok)],
            problems,
        }
    }

    #[test]
    fn one_summary_line_then_one_line_per_problem() {
        assert_eq!(
            render(&report(Level::Ok, vec![])),
            "FERRY OK - 2 group(s) OK\n"
        );
        let problems = vec![
            Problem {
                group: "web".into(),
                level: Level::Critical,
                check: "standby_unreachable".into(),
                message: "standby unreachable for 6m".into(),
            },
            Problem {
                group: "web".into(),
                level: Level::Warning,
                check: "rpo".into(),
                message: "RPO lag 20m above the warning threshold 15m".into(),
            },
        ];
        let text = render(&report(Level::Critical, problems));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "FERRY CRITICAL - 1 critical, 0 warning, 1 OK of 2 group(s)",
                "CRITICAL web: standby unreachable for 6m [standby_unreachable]",
                "WARNING web: RPO lag 20m above the warning threshold 15m [rpo]",
            ]
        );
    }
}
