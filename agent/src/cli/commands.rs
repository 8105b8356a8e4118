//! What each control command does: one function per command family
//! (`service`, `group`, `rp`, `policy`, `qos`) plus `status` and `op`, each
//! mapping a command to its operator-API route and request body. The bodies
//! are the typed ones the agent's API parses (`wire::bodies`), so the CLI and
//! the server cannot drift apart.

use std::time::Duration;

use anyhow::{Context, Result};
use hyper::Method;

use super::agent_api::{json_body, Api, Outcome};
use super::args::{Conn, GroupCmd, PolicyCmd, QosCmd, RpCmd, ServiceCmd};
use super::render::print_status;
use super::tables::{render, View};
use crate::schedule::{PolicySchedule, Schedule, TzName};
use crate::wire::bodies::{
    AddBody, BindBody, CreateGroupBody, CreateServiceBody, DrillBody, FailoverBody, KeyBody,
    PolicyBody, Qos, RestoreBody, RpBody, UpdateGroupBody, UpdateServiceBody, UrisBody,
};

/// `ferry service …`
pub(super) async fn service(cmd: ServiceCmd, outer: &Conn) -> Result<Outcome> {
    Ok(match cmd {
        ServiceCmd::Key {
            conn,
            endpoint,
            ttl,
        } => {
            let api = Api::new(&conn.or(outer))?;
            let key = KeyBody {
                endpoint,
                ttl_secs: Some(ttl),
            };
            api.run(Method::POST, "/v1/service/key", json_body(&key)?)
                .await?
        }
        ServiceCmd::Create {
            conn,
            key,
            name,
            endpoint,
        } => {
            let api = Api::new(&conn.or(outer))?;
            let create = CreateServiceBody {
                name,
                key,
                local_endpoint: endpoint,
            };
            api.run(Method::POST, "/v1/services", json_body(&create)?)
                .await?
        }
        ServiceCmd::List { conn, show } => {
            Api::new(&conn.or(outer).with_tz(show))?
                .show("/v1/services", View::Services)
                .await?
        }
        ServiceCmd::Show { conn, name } => {
            Api::new(&conn.or(outer))?
                .run(Method::GET, &format!("/v1/services/{name}"), None)
                .await?
        }
        ServiceCmd::Verify { conn, name } => {
            Api::new(&conn.or(outer))?
                .run(Method::POST, &format!("/v1/services/{name}/verify"), None)
                .await?
        }
        ServiceCmd::Update {
            conn,
            name,
            local_endpoint,
            remote_endpoint,
        } => {
            let update = UpdateServiceBody {
                local_endpoint,
                remote_endpoint,
            };
            Api::new(&conn.or(outer))?
                .run(
                    Method::PATCH,
                    &format!("/v1/services/{name}"),
                    json_body(&update)?,
                )
                .await?
        }
        ServiceCmd::Delete { conn, name } => {
            Api::new(&conn.or(outer))?
                .run(Method::DELETE, &format!("/v1/services/{name}"), None)
                .await?
        }
    })
}

/// `ferry group …`
pub(super) async fn group(cmd: GroupCmd, outer: &Conn) -> Result<Outcome> {
    Ok(match cmd {
        GroupCmd::Create {
            conn,
            name,
            service,
            remote_project,
            rpo_warn,
            rpo_crit,
            wait,
        } => {
            let create = CreateGroupBody {
                name,
                service,
                remote_project,
                rpo_warn_secs: duration_arg("--rpo-warn", rpo_warn)?.filter(|s| *s > 0),
                rpo_crit_secs: duration_arg("--rpo-crit", rpo_crit)?.filter(|s| *s > 0),
            };
            Api::new(&conn.or(outer))?
                .op(Method::POST, "/v1/groups", json_body(&create)?, wait)
                .await?
        }
        GroupCmd::Update {
            conn,
            name,
            rpo_warn,
            rpo_crit,
        } => {
            let update = UpdateGroupBody {
                rpo_warn_secs: duration_arg("--rpo-warn", rpo_warn)?,
                rpo_crit_secs: duration_arg("--rpo-crit", rpo_crit)?,
            };
            if update.rpo_warn_secs.is_none() && update.rpo_crit_secs.is_none() {
                anyhow::bail!("nothing to change: give --rpo-warn and/or --rpo-crit");
            }
            Api::new(&conn.or(outer))?
                .run(
                    Method::PATCH,
                    &format!("/v1/groups/{name}"),
                    json_body(&update)?,
                )
                .await?
        }
        GroupCmd::List { conn, show } => {
            Api::new(&conn.or(outer).with_tz(show))?
                .show("/v1/groups", View::Groups)
                .await?
        }
        GroupCmd::RpoHistory { conn, show, name } => {
            Api::new(&conn.or(outer).with_tz(show))?
                .show(&format!("/v1/groups/{name}/rpo-history"), View::RpoHistory)
                .await?
        }
        GroupCmd::Show {
            conn,
            show,
            name,
            watch,
        } => group_show(&conn.or(outer).with_tz(show), &name, watch).await?,
        operation => group_operation(operation, outer).await?,
    })
}

/// One of a group's operations: a call on `/v1/groups/{name}[/…]` that
/// starts an operation (`--wait` waits for its end).
async fn group_operation(cmd: GroupCmd, outer: &Conn) -> Result<Outcome> {
    let (conn, name, method, route, body, wait) = match cmd {
        GroupCmd::Add {
            conn,
            name,
            uris,
            vm,
            wait,
        } => {
            let body = json_body(&AddBody { uris, vm })?;
            (conn, name, Method::POST, "/resources", body, wait)
        }
        GroupCmd::Remove {
            conn,
            name,
            uris,
            wait,
        } => {
            let body = json_body(&UrisBody { uris })?;
            (conn, name, Method::POST, "/resources/remove", body, wait)
        }
        GroupCmd::Start { conn, name, wait } => (conn, name, Method::POST, "/start", None, wait),
        GroupCmd::Stop { conn, name, wait } => (conn, name, Method::POST, "/stop", None, wait),
        GroupCmd::Migrate { conn, name, wait } => {
            (conn, name, Method::POST, "/migrate", None, wait)
        }
        GroupCmd::Restore {
            conn,
            name,
            resource,
            rp,
            out,
            copy,
            wait,
        } => {
            let body = json_body(&RestoreBody {
                resource,
                recovery_point: rp,
                out,
                copy,
            })?;
            (conn, name, Method::POST, "/restore", body, wait)
        }
        GroupCmd::Failover {
            conn,
            name,
            rp,
            copy,
            wait,
        } => {
            let body = json_body(&FailoverBody {
                recovery_point: rp,
                copy,
            })?;
            (conn, name, Method::POST, "/failover", body, wait)
        }
        GroupCmd::Drill {
            conn,
            name,
            end: true,
            wait,
            ..
        } => (conn, name, Method::DELETE, "/drill", None, wait),
        GroupCmd::Drill {
            conn,
            name,
            rp,
            wait,
            ..
        } => {
            let body = json_body(&DrillBody { recovery_point: rp })?;
            (conn, name, Method::POST, "/drill", body, wait)
        }
        GroupCmd::Reprotect { conn, name, wait } => {
            (conn, name, Method::POST, "/reprotect", None, wait)
        }
        GroupCmd::Delete { conn, name, wait } => (conn, name, Method::DELETE, "", None, wait),
        GroupCmd::Create { .. }
        | GroupCmd::Update { .. }
        | GroupCmd::List { .. }
        | GroupCmd::RpoHistory { .. }
        | GroupCmd::Show { .. } => {
            anyhow::bail!("internal: a group read or edit is not an operation")
        }
    };
    Api::new(&conn.or(outer))?
        .op(method, &format!("/v1/groups/{name}{route}"), body, wait)
        .await
}

/// `ferry rp …`
pub(super) async fn rp(cmd: RpCmd, outer: &Conn) -> Result<Outcome> {
    Ok(match cmd {
        RpCmd::Create {
            conn,
            group,
            name,
            wait,
        } => {
            Api::new(&conn.or(outer))?
                .op(
                    Method::POST,
                    &format!("/v1/groups/{group}/recovery-points"),
                    json_body(&RpBody { name })?,
                    wait,
                )
                .await?
        }
        RpCmd::List { conn, show, group } => {
            Api::new(&conn.or(outer).with_tz(show))?
                .show(
                    &format!("/v1/groups/{group}/recovery-points"),
                    View::RecoveryPoints,
                )
                .await?
        }
        RpCmd::Delete {
            conn,
            group,
            rp,
            wait,
        } => {
            Api::new(&conn.or(outer))?
                .op(
                    Method::DELETE,
                    &format!("/v1/groups/{group}/recovery-points/{rp}"),
                    None,
                    wait,
                )
                .await?
        }
    })
}

/// `ferry policy …`
pub(super) async fn policy(cmd: PolicyCmd, outer: &Conn) -> Result<Outcome> {
    Ok(match cmd {
        PolicyCmd::Create {
            conn,
            name,
            schedule,
            tz,
            from,
            until,
        } => {
            let schedule: Schedule = schedule.parse()?;
            let tz = TzName::new(&tz)?;
            let from = match from {
                Some(t) => t.parse().with_context(|| format!("--from {t}"))?,
                None => jiff::Timestamp::now(),
            };
            let until = until
                .map(|t| t.parse().with_context(|| format!("--until {t}")))
                .transpose()?;
            let policy = PolicySchedule::new(schedule, tz, from, until)?;
            let create = PolicyBody {
                name,
                schedule: serde_json::to_value(&policy).context("encode the schedule")?,
            };
            Api::new(&conn.or(outer))?
                .run(Method::POST, "/v1/policies", json_body(&create)?)
                .await?
        }
        PolicyCmd::List { conn, show } => {
            Api::new(&conn.or(outer).with_tz(show))?
                .show("/v1/policies", View::Policies)
                .await?
        }
        PolicyCmd::Bind {
            conn,
            group,
            policy,
            retention,
        } => {
            Api::new(&conn.or(outer))?
                .run(
                    Method::PUT,
                    &format!("/v1/groups/{group}/policy"),
                    json_body(&BindBody { policy, retention })?,
                )
                .await?
        }
        PolicyCmd::Unbind { conn, group } => {
            Api::new(&conn.or(outer))?
                .run(Method::DELETE, &format!("/v1/groups/{group}/policy"), None)
                .await?
        }
        PolicyCmd::Delete { conn, name } => {
            Api::new(&conn.or(outer))?
                .run(Method::DELETE, &format!("/v1/policies/{name}"), None)
                .await?
        }
    })
}

/// `ferry qos …`: `set` reads the current limits and changes only the ones
/// given.
pub(super) async fn qos(cmd: QosCmd, outer: &Conn) -> Result<Outcome> {
    Ok(match cmd {
        QosCmd::Set {
            conn,
            receive,
            send,
        } => {
            let api = Api::new(&conn.or(outer))?;
            let current = api.call(Method::GET, "/v1/qos", None).await?;
            if !current.ok() {
                api.report(&current)?
            } else {
                let mut qos: Qos = serde_json::from_value(current.body.clone())
                    .context("the agent's QoS answer")?;
                if let Some(r) = receive {
                    qos.receive_limit = parse_limit(&r)?;
                }
                if let Some(s) = send {
                    qos.send_limit = parse_limit(&s)?;
                }
                api.run(Method::PUT, "/v1/qos", json_body(&qos)?).await?
            }
        }
        QosCmd::Show { conn } => {
            Api::new(&conn.or(outer))?
                .show("/v1/qos", View::Qos)
                .await?
        }
    })
}

/// A duration flag in seconds (`off` → 0).
fn duration_arg(flag: &str, text: Option<String>) -> Result<Option<u64>> {
    text.map(|t| crate::units::parse_duration_secs(&t).with_context(|| flag.to_owned()))
        .transpose()
}

fn parse_limit(text: &str) -> Result<Option<u64>> {
    Ok(crate::units::parse_rate(text)?)
}

/// `ferry status [--watch]`: the agent's groups and progress, refreshed
/// every second with `--watch`.
pub(super) async fn status(conn: Conn, watch: bool) -> Result<Outcome> {
    let api = Api::new(&conn)?;
    loop {
        let reply = api.call(Method::GET, "/v1/status", None).await?;
        if !reply.ok() {
            return api.report(&reply);
        }
        if conn.json {
            println!("{}", reply.body);
        } else {
            if watch {
                print!("\x1b[2J\x1b[H");
            }
            print_status(&reply.body);
        }
        if !watch {
            return Ok(Outcome::Ok);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// `ferry group show NAME [--watch]`: the group as tables, refreshed every
/// second with `--watch` until interrupted (`--json`: one line each time).
async fn group_show(conn: &Conn, name: &str, watch: bool) -> Result<Outcome> {
    let api = Api::new(conn)?;
    let path = format!("/v1/groups/{name}");
    if !watch {
        return api.show(&path, View::GroupDetail).await;
    }
    loop {
        let reply = api.call(Method::GET, &path, None).await?;
        if !reply.ok() {
            return api.report(&reply);
        }
        if api.json() {
            println!("{}", reply.body);
        } else {
            print!(
                "\x1b[2J\x1b[H{}",
                render(View::GroupDetail, &reply.body, api.tz())
            );
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(Outcome::Ok),
        }
    }
}

/// `ferry op list [--limit N] [--group G]`: the journal, newest first.
pub(super) async fn op_list(conn: &Conn, limit: usize, group: Option<String>) -> Result<Outcome> {
    let mut path = format!("/v1/operations?limit={limit}");
    if let Some(g) = group {
        path.push_str(&format!("&group={g}"));
    }
    Api::new(conn)?.show(&path, View::Operations).await
}

/// `ferry op ID [--wait]`: one operation, or wait until it has finished.
pub(super) async fn op(conn: &Conn, id: i64, wait: bool) -> Result<Outcome> {
    let api = Api::new(conn)?;
    if wait {
        api.wait(id).await
    } else {
        api.run(Method::GET, &format!("/v1/operations/{id}"), None)
            .await
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The typed bodies put on the wire exactly the JSON the CLI wrote by
    /// hand with `json!` before it sent them (unset options as `null`).
    #[test]
    fn typed_bodies_send_the_json_the_cli_always_sent() {
        let some = |s: &str| Some(s.to_owned());
        let s = |s: &str| s.to_owned();
        let cases = [
            (
                json_body(&KeyBody {
                    endpoint: None,
                    ttl_secs: Some(3600),
                }),
                json!({ "endpoint": null, "ttl_secs": 3600 }),
            ),
            (
                json_body(&CreateServiceBody {
                    name: s("dr"),
                    key: s("ferry1.k"),
                    local_endpoint: some("10.0.0.1:7000"),
                }),
                json!({ "name": "dr", "key": "ferry1.k", "local_endpoint": "10.0.0.1:7000" }),
            ),
            (
                json_body(&UpdateServiceBody {
                    local_endpoint: None,
                    remote_endpoint: some("b:2"),
                }),
                json!({ "local_endpoint": null, "remote_endpoint": "b:2" }),
            ),
            (
                json_body(&CreateGroupBody {
                    name: s("g1"),
                    service: None,
                    remote_project: s(""),
                    rpo_warn_secs: None,
                    rpo_crit_secs: None,
                }),
                json!({ "name": "g1", "service": null, "remote_project": "" }),
            ),
            (
                json_body(&AddBody {
                    uris: vec![s("file:/a"), s("rbd:p/i")],
                    vm: some("vm1"),
                }),
                json!({ "uris": ["file:/a", "rbd:p/i"], "vm": "vm1" }),
            ),
            (
                json_body(&UrisBody {
                    uris: vec![s("file:/a")],
                }),
                json!({ "uris": ["file:/a"] }),
            ),
            (
                json_body(&RestoreBody {
                    resource: s("file:/a"),
                    recovery_point: s("rp1"),
                    out: s("/restore/a.raw"),
                    copy: false,
                }),
                json!({ "resource": "file:/a", "recovery_point": "rp1", "out": "/restore/a.raw", "copy": false }),
            ),
            (
                json_body(&FailoverBody {
                    recovery_point: None,
                    copy: true,
                }),
                json!({ "recovery_point": null, "copy": true }),
            ),
            (
                json_body(&RpBody { name: some("rp1") }),
                json!({ "name": "rp1" }),
            ),
            (
                json_body(&PolicyBody {
                    name: s("nightly"),
                    schedule: json!({ "tz": "UTC" }),
                }),
                json!({ "name": "nightly", "schedule": { "tz": "UTC" } }),
            ),
            (
                json_body(&BindBody {
                    policy: s("nightly"),
                    retention: 3,
                }),
                json!({ "policy": "nightly", "retention": 3 }),
            ),
            (
                json_body(&Qos {
                    receive_limit: None,
                    send_limit: Some(1000),
                }),
                json!({ "receive_limit": null, "send_limit": 1000 }),
            ),
        ];
        for (sent, before) in cases {
            let sent = sent.unwrap().unwrap();
            assert_eq!(sent, before);
            assert_eq!(
                sent.to_string(),
                before.to_string(),
                "same bytes on the wire"
            );
        }
    }
}
