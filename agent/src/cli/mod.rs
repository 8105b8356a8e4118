//! The control commands of the `ferry` CLI (`service`, `group`, `rp`,
//! `policy`, `qos`, `status`, `health`, `op`): a thin client of the agent's operator
//! API. `--dir DIR` reads the API address (`DIR/api.addr`) and token
//! (`DIR/api.token`); `--agent URL` names the address, with the token from
//! `--token-file FILE`, `FERRY_TOKEN` or `--token T` (visible in `ps`).
//!
//! Exit status: 0 success, 1 refused (HTTP 409) or the operation failed,
//! 2 any other error (bad request, agent unreachable…); `ferry health`
//! (in `health.rs`) exits as a monitoring plugin: 0 OK, 1 WARNING,
//! 2 CRITICAL, 3 UNKNOWN.
//!
//! Where things live: `args.rs` (the clap types), `commands.rs` (what each
//! command sends to which route), `agent_api.rs` (reaching the agent,
//! calling it, refusals and exit status, waiting for an operation),
//! `render.rs` (printing answers for a person). The commands that need no
//! agent API: `ferry sync` and `ferry verify` (one replication cycle from
//! the command line, and comparing a source with its standby copy) are in
//! `sync_verify.rs`; `ferry export-diff` and `ferry import-diff` are in
//! `export_import_diff.rs`.

use std::process::ExitCode;

use anyhow::Result;

mod agent_api;
mod args;
pub mod ceph;
mod commands;
pub mod export_import_diff;
mod health;
mod render;
pub mod sync_verify;
mod tables;

use agent_api::Outcome;

pub use agent_api::{resolve_conn, resolve_target};
pub use args::{
    Conn, ControlCommand, GroupCmd, OpCmd, PolicyCmd, QosCmd, RpCmd, ServiceCmd, ShowTz,
};

/// Runs a control command; `outer` holds the top-level connection flags.
pub async fn run(cmd: ControlCommand, outer: &Conn) -> Result<ExitCode> {
    use ControlCommand as C;
    let outcome = match cmd {
        C::Health {
            conn,
            rpo_warn,
            rpo_crit,
            unreachable,
            ops_window,
        } => {
            let args = health::HealthArgs {
                rpo_warn,
                rpo_crit,
                unreachable,
                ops_window,
            };
            return Ok(health::health(&conn.or(outer), args).await);
        }
        C::Service(cmd) => commands::service(cmd, outer).await?,
        C::Group(cmd) => commands::group(cmd, outer).await?,
        C::Rp(cmd) => commands::rp(cmd, outer).await?,
        C::Policy(cmd) => commands::policy(cmd, outer).await?,
        C::Qos(cmd) => commands::qos(cmd, outer).await?,
        C::Status { conn, watch } => commands::status(conn.or(outer), watch).await?,
        C::Op {
            conn,
            cmd,
            id,
            wait,
        } => match (cmd, id) {
            (
                Some(OpCmd::List {
                    conn,
                    show,
                    limit,
                    group,
                }),
                _,
            ) => commands::op_list(&conn.or(outer).with_tz(show), limit, group).await?,
            (None, Some(id)) => commands::op(&conn.or(outer), id, wait).await?,
            (None, None) => anyhow::bail!("say which operation: ferry op ID, or ferry op list"),
        },
    };
    Ok(match outcome {
        Outcome::Ok => ExitCode::SUCCESS,
        Outcome::Refused => ExitCode::from(1),
    })
}
