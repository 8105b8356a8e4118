//! The control commands of the `ferry` CLI (`service`, `group`, `rp`,
//! `policy`, `qos`, `status`, `op`): a thin client of the agent's operator
//! API. `--dir DIR` reads the API address (`DIR/api.addr`) and token
//! (`DIR/api.token`); `--agent URL --token T` names them directly.
//!
//! Exit status: 0 success, 1 refused (HTTP 409) or the operation failed,
//! 2 any other error (bad request, agent unreachable…).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use hyper::Method;
use serde_json::{json, Value};

use crate::api::http::{self, Reply, Target};
use crate::schedule::{PolicySchedule, Schedule, TzName};

/// How to reach the agent.
#[derive(Args, Clone, Debug, Default)]
pub struct Conn {
    /// Agent data directory (API address and token are read from it).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// API URL (http://HOST:PORT) instead of --dir.
    #[arg(long)]
    pub agent: Option<String>,
    /// API token with --agent.
    #[arg(long)]
    pub token: Option<String>,
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

impl Conn {
    /// `self` with unset fields taken from `outer` (the top-level flags).
    pub fn or(self, outer: &Conn) -> Conn {
        Conn {
            dir: self.dir.or_else(|| outer.dir.clone()),
            agent: self.agent.or_else(|| outer.agent.clone()),
            token: self.token.or_else(|| outer.token.clone()),
            json: self.json || outer.json,
        }
    }
}

/// A control command.
#[derive(Subcommand, Debug)]
pub enum ControlCommand {
    /// Services: this site's connection to a remote site.
    #[command(subcommand)]
    Service(ServiceCmd),
    /// Protection groups.
    #[command(subcommand)]
    Group(GroupCmd),
    /// Recovery points of a group.
    #[command(subcommand)]
    Rp(RpCmd),
    /// Recovery-point policies.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Bandwidth limits.
    #[command(subcommand)]
    Qos(QosCmd),
    /// Groups, progress and QoS at a glance.
    Status {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
        /// Refresh every second until interrupted.
        #[arg(long)]
        watch: bool,
    },
    /// Show (and wait for) an operation.
    Op {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
        /// Operation id.
        id: i64,
        /// Wait until it has finished.
        #[arg(long)]
        wait: bool,
    },
}

/// `ferry service …`
#[derive(Subcommand, Debug)]
pub enum ServiceCmd {
    /// On the standby: print a one-time service key (one line).
    Key {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
        /// Endpoint the primary should use (default: the agent's listen address).
        #[arg(long)]
        endpoint: Option<String>,
        /// Validity in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
    /// On the primary: pair with the agent that issued KEY.
    Create {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
        /// The service key printed by `ferry service key` on the standby.
        #[arg(long)]
        key: String,
        /// Service name (the same on both agents).
        #[arg(long, default_value = "dr")]
        name: String,
        /// This agent's endpoint as the peer should reach it.
        #[arg(long)]
        endpoint: Option<String>,
    },
    /// List services.
    List {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
    },
    /// Test the connection to the peer.
    Verify {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
        /// Service name or id.
        name: String,
    },
    /// Re-configure endpoints.
    Update {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
        /// Service name or id.
        name: String,
        /// New local endpoint.
        #[arg(long)]
        local_endpoint: Option<String>,
        /// New remote endpoint.
        #[arg(long)]
        remote_endpoint: Option<String>,
    },
    /// Delete a service (refused while a group uses it).
    Delete {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
        /// Service name or id.
        name: String,
    },
}

/// `ferry group …`
#[derive(Subcommand, Debug)]
pub enum GroupCmd {
    /// Create a protection group (its standby group is created and mapped).
    Create {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
        /// Group name.
        name: String,
        /// Service (default: the only one).
        #[arg(long)]
        service: Option<String>,
        /// Remote project/tenant.
        #[arg(long, default_value = "")]
        remote_project: String,
        /// Wait for the operation.
        #[arg(long)]
        wait: bool,
    },
    /// List groups.
    List {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
    },
    /// Show a group with resources, recovery points and progress.
    Show {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
        /// Group name or id.
        name: String,
    },
    /// Add resources (source URIs), or a VM's volumes with --vm.
    Add {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
        /// Group name or id.
        name: String,
        /// Source URIs (file:/path, rbd:pool/image); with --vm the first is the boot volume.
        #[arg(required = true)]
        uris: Vec<String>,
        /// The VM these volumes belong to.
        #[arg(long)]
        vm: Option<String>,
        /// Wait for the operation.
        #[arg(long)]
        wait: bool,
    },
    /// Remove resources.
    Remove {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
        /// Group name or id.
        name: String,
        /// Source URIs.
        #[arg(required = true)]
        uris: Vec<String>,
        /// Wait for the operation.
        #[arg(long)]
        wait: bool,
    },
    /// Start replication.
    Start {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
        /// Group name or id.
        name: String,
        /// Wait for the operation.
        #[arg(long)]
        wait: bool,
    },
    /// Stop replication.
    Stop {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
        /// Group name or id.
        name: String,
        /// Wait for the operation.
        #[arg(long)]
        wait: bool,
    },
    /// (primary) Planned migration: final sync of everything written before
    /// the command (quiesce the volumes first), checksums compared, then the
    /// roles swap; start sync on the new primary to replicate back.
    Migrate {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
        /// Group name or id.
        name: String,
        /// Wait for the operation.
        #[arg(long)]
        wait: bool,
    },
    /// (standby / new primary) Restore one resource at a recovery point
    /// into a new image.
    Restore {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
        /// Group name or id.
        name: String,
        /// The resource's source URI (as on the primary).
        #[arg(long)]
        resource: String,
        /// Recovery point name.
        #[arg(long)]
        rp: String,
        /// New file (absolute path, must not exist) or, with an RBD
        /// standby, a new image name in the standby pool.
        #[arg(long)]
        out: String,
        /// Wait for the operation.
        #[arg(long)]
        wait: bool,
    },
    /// (standby) Unplanned failover: materialise every resource at a
    /// recovery point (default: the latest group recovery point held) into
    /// DIR/failover/GROUP/; the group becomes a new primary.
    Failover {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
        /// Group name or id.
        name: String,
        /// Recovery point name (default: latest synced data).
        #[arg(long)]
        rp: Option<String>,
        /// Wait for the operation.
        #[arg(long)]
        wait: bool,
    },
    /// Delete a group (and its standby group).
    Delete {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
        /// Group name or id.
        name: String,
        /// Wait for the operation.
        #[arg(long)]
        wait: bool,
    },
}

/// `ferry rp …`
#[derive(Subcommand, Debug)]
pub enum RpCmd {
    /// Create a manual recovery point (the next replication cycle, named).
    Create {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
        /// Group name or id.
        group: String,
        /// Recovery point name (default manual-TIMESTAMP).
        #[arg(long)]
        name: Option<String>,
        /// Wait for the operation.
        #[arg(long)]
        wait: bool,
    },
    /// List a group's recovery points.
    List {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
        /// Group name or id.
        group: String,
    },
    /// Delete a recovery point (here and on the standby).
    Delete {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
        /// Group name or id.
        group: String,
        /// Recovery point name.
        rp: String,
        /// Wait for the operation.
        #[arg(long)]
        wait: bool,
    },
}

/// `ferry policy …`
#[derive(Subcommand, Debug)]
pub enum PolicyCmd {
    /// Create a policy.
    Create {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
        /// Policy name.
        name: String,
        /// `daily HH:MM`, `weekly mon,thu HH:MM` or `monthly 1,15,month-end HH:MM`.
        #[arg(long)]
        schedule: String,
        /// IANA time zone.
        #[arg(long, default_value = "UTC")]
        tz: String,
        /// Effective from (RFC 3339; default now).
        #[arg(long)]
        from: Option<String>,
        /// Effective until (RFC 3339, exclusive).
        #[arg(long)]
        until: Option<String>,
    },
    /// List policies.
    List {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
    },
    /// Bind a policy to a group with a retention (1..=5).
    Bind {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
        /// Group.
        group: String,
        /// Policy.
        policy: String,
        /// Newest N policy recovery points kept.
        #[arg(long)]
        retention: u8,
    },
    /// Unbind a group's policy.
    Unbind {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
        /// Group.
        group: String,
    },
    /// Delete a policy (refused while bound).
    Delete {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
        /// Policy.
        name: String,
    },
}

/// `ferry qos …`
#[derive(Subcommand, Debug)]
pub enum QosCmd {
    /// Set limits (e.g. 100M, 1Gbit, unlimited); unset ones are kept.
    Set {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
        /// Limit of writes into this site's standby images.
        #[arg(long)]
        receive: Option<String>,
        /// Limit of this agent's replication traffic.
        #[arg(long)]
        send: Option<String>,
    },
    /// Show limits.
    Show {
        /// How to reach the agent.
        #[command(flatten)]
        conn: Conn,
    },
}

struct Api {
    target: Target,
    token: String,
    json: bool,
}

/// The operator API's address and token for `conn`.
pub fn resolve_conn(conn: &Conn) -> Result<(SocketAddr, String)> {
    if let Some(url) = &conn.agent {
        let hostport = url
            .strip_prefix("http://")
            .unwrap_or(url)
            .trim_end_matches('/');
        let addr: SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(hostport)
            .with_context(|| format!("--agent {url}"))?
            .next()
            .with_context(|| format!("--agent {url} resolves to nothing"))?;
        let token = match (&conn.token, &conn.dir) {
            (Some(t), _) => t.clone(),
            (None, Some(dir)) => crate::api::read_token(dir)?,
            (None, None) => bail!("--agent needs --token (or --dir to read it from)"),
        };
        return Ok((addr, token));
    }
    let Some(dir) = &conn.dir else {
        bail!("say which agent: --dir DIR, or --agent URL --token TOKEN");
    };
    let addr = crate::api::read_addr(dir)?;
    let addr: SocketAddr = addr
        .parse()
        .with_context(|| format!("{} holds {addr:?}", dir.join("api.addr").display()))?;
    let token = match &conn.token {
        Some(t) => t.clone(),
        None => crate::api::read_token(dir)?,
    };
    Ok((addr, token))
}

/// What a command ended with.
enum Outcome {
    Ok,
    Refused,
}

impl Api {
    fn new(conn: &Conn) -> Result<Api> {
        let (addr, token) = resolve_conn(conn)?;
        Ok(Api {
            target: Target::Plain(addr),
            token,
            json: conn.json,
        })
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Reply> {
        Ok(http::call(
            &self.target,
            method,
            path,
            Some(&self.token),
            body.as_ref(),
            Duration::from_secs(60),
        )
        .await?)
    }

    /// Calls, prints, and classifies.
    async fn run(&self, method: Method, path: &str, body: Option<Value>) -> Result<Outcome> {
        let reply = self.call(method, path, body).await?;
        self.report(&reply)
    }

    fn report(&self, reply: &Reply) -> Result<Outcome> {
        if reply.ok() {
            if self.json {
                println!("{}", reply.body);
            } else {
                print_human(&reply.body);
            }
            return Ok(Outcome::Ok);
        }
        if self.json {
            println!("{}", reply.body);
        }
        let text = reply
            .body
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("no reason given");
        if reply.status == 409 {
            eprintln!("ferry: refused: {text}");
            if let Some(r) = reply.body.get("refusal") {
                eprintln!(
                    "  rule: {}\n  state: {}",
                    r.get("rule").and_then(Value::as_str).unwrap_or("?"),
                    r.get("state").and_then(Value::as_str).unwrap_or("?")
                );
            }
            return Ok(Outcome::Refused);
        }
        bail!("HTTP {}: {text}", reply.status)
    }

    /// Starts a long operation; with `wait`, polls it to the end.
    async fn op(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        wait: bool,
    ) -> Result<Outcome> {
        let reply = self.call(method, path, body).await?;
        if !reply.ok() || !wait {
            return self.report(&reply);
        }
        let id = reply
            .body
            .pointer("/operation/id")
            .and_then(Value::as_i64)
            .context("the agent did not return an operation id")?;
        self.wait(id).await
    }

    async fn wait(&self, id: i64) -> Result<Outcome> {
        loop {
            let reply = self
                .call(Method::GET, &format!("/v1/operations/{id}"), None)
                .await?;
            if !reply.ok() {
                return self.report(&reply);
            }
            let state = reply
                .body
                .pointer("/state/state")
                .and_then(Value::as_str)
                .unwrap_or("running")
                .to_owned();
            if state != "running" {
                if self.json {
                    println!("{}", reply.body);
                } else {
                    print_human(&json!({ "operation": reply.body }));
                }
                if state == "succeeded" {
                    return Ok(Outcome::Ok);
                }
                let reason = reply
                    .body
                    .pointer("/state/reason")
                    .and_then(Value::as_str)
                    .unwrap_or("rolled back");
                eprintln!("ferry: operation {id} {state}: {reason}");
                return Ok(Outcome::Refused);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn print_human(v: &Value) {
    if let Some(op) = v.get("operation") {
        let id = op.get("id").and_then(Value::as_i64).unwrap_or(0);
        let kind = op.get("kind").and_then(Value::as_str).unwrap_or("?");
        let state = op
            .pointer("/state/state")
            .and_then(Value::as_str)
            .unwrap_or("?");
        println!("operation {id} ({kind}): {state}");
        return;
    }
    if let Some(key) = v.get("key").and_then(Value::as_str) {
        println!("{key}");
        return;
    }
    match serde_json::to_string_pretty(v) {
        Ok(text) => println!("{text}"),
        Err(_) => println!("{v}"),
    }
}

fn parse_limit(text: &str) -> Result<Option<u64>> {
    Ok(crate::units::parse_rate(text)?)
}

/// Runs a control command; `outer` holds the top-level connection flags.
pub async fn run(cmd: ControlCommand, outer: &Conn) -> Result<ExitCode> {
    use ControlCommand as C;
    let outcome = match cmd {
        C::Service(s) => match s {
            ServiceCmd::Key {
                conn,
                endpoint,
                ttl,
            } => {
                let api = Api::new(&conn.or(outer))?;
                api.run(
                    Method::POST,
                    "/v1/service/key",
                    Some(json!({ "endpoint": endpoint, "ttl_secs": ttl })),
                )
                .await?
            }
            ServiceCmd::Create {
                conn,
                key,
                name,
                endpoint,
            } => {
                let api = Api::new(&conn.or(outer))?;
                api.run(
                    Method::POST,
                    "/v1/services",
                    Some(json!({ "name": name, "key": key, "local_endpoint": endpoint })),
                )
                .await?
            }
            ServiceCmd::List { conn } => {
                Api::new(&conn.or(outer))?
                    .run(Method::GET, "/v1/services", None)
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
                Api::new(&conn.or(outer))?
                    .run(
                        Method::PATCH,
                        &format!("/v1/services/{name}"),
                        Some(json!({ "local_endpoint": local_endpoint, "remote_endpoint": remote_endpoint })),
                    )
                    .await?
            }
            ServiceCmd::Delete { conn, name } => {
                Api::new(&conn.or(outer))?
                    .run(Method::DELETE, &format!("/v1/services/{name}"), None)
                    .await?
            }
        },
        C::Group(g) => match g {
            GroupCmd::Create {
                conn,
                name,
                service,
                remote_project,
                wait,
            } => {
                Api::new(&conn.or(outer))?
                    .op(
                        Method::POST,
                        "/v1/groups",
                        Some(json!({ "name": name, "service": service, "remote_project": remote_project })),
                        wait,
                    )
                    .await?
            }
            GroupCmd::List { conn } => {
                Api::new(&conn.or(outer))?
                    .run(Method::GET, "/v1/groups", None)
                    .await?
            }
            GroupCmd::Show { conn, name } => {
                Api::new(&conn.or(outer))?
                    .run(Method::GET, &format!("/v1/groups/{name}"), None)
                    .await?
            }
            GroupCmd::Add {
                conn,
                name,
                uris,
                vm,
                wait,
            } => {
                Api::new(&conn.or(outer))?
                    .op(
                        Method::POST,
                        &format!("/v1/groups/{name}/resources"),
                        Some(json!({ "uris": uris, "vm": vm })),
                        wait,
                    )
                    .await?
            }
            GroupCmd::Remove {
                conn,
                name,
                uris,
                wait,
            } => {
                Api::new(&conn.or(outer))?
                    .op(
                        Method::POST,
                        &format!("/v1/groups/{name}/resources/remove"),
                        Some(json!({ "uris": uris })),
                        wait,
                    )
                    .await?
            }
            GroupCmd::Start { conn, name, wait } => {
                Api::new(&conn.or(outer))?
                    .op(Method::POST, &format!("/v1/groups/{name}/start"), None, wait)
                    .await?
            }
            GroupCmd::Stop { conn, name, wait } => {
                Api::new(&conn.or(outer))?
                    .op(Method::POST, &format!("/v1/groups/{name}/stop"), None, wait)
                    .await?
            }
            GroupCmd::Migrate { conn, name, wait } => {
                Api::new(&conn.or(outer))?
                    .op(Method::POST, &format!("/v1/groups/{name}/migrate"), None, wait)
                    .await?
            }
            GroupCmd::Restore {
                conn,
                name,
                resource,
                rp,
                out,
                wait,
            } => {
                Api::new(&conn.or(outer))?
                    .op(
                        Method::POST,
                        &format!("/v1/groups/{name}/restore"),
                        Some(json!({ "resource": resource, "recovery_point": rp, "out": out })),
                        wait,
                    )
                    .await?
            }
            GroupCmd::Failover {
                conn,
                name,
                rp,
                wait,
            } => {
                Api::new(&conn.or(outer))?
                    .op(
                        Method::POST,
                        &format!("/v1/groups/{name}/failover"),
                        Some(json!({ "recovery_point": rp })),
                        wait,
                    )
                    .await?
            }
            GroupCmd::Delete { conn, name, wait } => {
                Api::new(&conn.or(outer))?
                    .op(Method::DELETE, &format!("/v1/groups/{name}"), None, wait)
                    .await?
            }
        },
        C::Rp(r) => match r {
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
                        Some(json!({ "name": name })),
                        wait,
                    )
                    .await?
            }
            RpCmd::List { conn, group } => {
                Api::new(&conn.or(outer))?
                    .run(
                        Method::GET,
                        &format!("/v1/groups/{group}/recovery-points"),
                        None,
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
        },
        C::Policy(p) => match p {
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
                Api::new(&conn.or(outer))?
                    .run(
                        Method::POST,
                        "/v1/policies",
                        Some(json!({ "name": name, "schedule": policy })),
                    )
                    .await?
            }
            PolicyCmd::List { conn } => {
                Api::new(&conn.or(outer))?
                    .run(Method::GET, "/v1/policies", None)
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
                        Some(json!({ "policy": policy, "retention": retention })),
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
        },
        C::Qos(q) => match q {
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
                    let mut body = current.body.clone();
                    if let Some(r) = receive {
                        body["receive_limit"] = json!(parse_limit(&r)?);
                    }
                    if let Some(s) = send {
                        body["send_limit"] = json!(parse_limit(&s)?);
                    }
                    api.run(Method::PUT, "/v1/qos", Some(body)).await?
                }
            }
            QosCmd::Show { conn } => {
                Api::new(&conn.or(outer))?
                    .run(Method::GET, "/v1/qos", None)
                    .await?
            }
        },
        C::Status { conn, watch } => {
            let conn = conn.or(outer);
            let api = Api::new(&conn)?;
            loop {
                let reply = api.call(Method::GET, "/v1/status", None).await?;
                if !reply.ok() {
                    break api.report(&reply)?;
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
                    break Outcome::Ok;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        C::Op { conn, id, wait } => {
            let api = Api::new(&conn.or(outer))?;
            if wait {
                api.wait(id).await?
            } else {
                api.run(Method::GET, &format!("/v1/operations/{id}"), None)
                    .await?
            }
        }
    };
    Ok(match outcome {
        Outcome::Ok => ExitCode::SUCCESS,
        Outcome::Refused => ExitCode::from(1),
    })
}

fn bar(done: u64, total: u64) -> String {
    const WIDTH: u64 = 24;
    let filled = done
        .saturating_mul(WIDTH)
        .checked_div(total)
        .unwrap_or(WIDTH)
        .min(WIDTH);
    format!(
        "[{}{}]",
        "#".repeat(filled as usize),
        "-".repeat((WIDTH - filled) as usize)
    )
}

fn print_status(v: &Value) {
    use crate::units::human_bytes;
    let s = |p: &str| {
        v.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("-")
            .to_owned()
    };
    println!(
        "agent {}  endpoint {}  api {}",
        &s("/agent/fingerprint")[..16.min(s("/agent/fingerprint").len())],
        s("/agent/endpoint"),
        s("/agent/api")
    );
    let groups = v
        .get("groups")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if groups.is_empty() {
        println!("no groups");
    }
    for g in groups {
        let gs = |p: &str| {
            g.pointer(p)
                .map(|x| x.to_string().trim_matches('"').to_owned())
                .unwrap_or_else(|| "-".into())
        };
        println!(
            "group {} ({} {}): {} resources, {} recovery points",
            gs("/name"),
            gs("/role"),
            gs("/state"),
            gs("/resources"),
            gs("/recovery_points")
        );
        let Some(p) = g.get("progress").filter(|p| !p.is_null()) else {
            continue;
        };
        let num = |x: &Value, k: &str| x.get(k).and_then(Value::as_u64).unwrap_or(0);
        println!(
            "  {}  cycles {}  last rp {}  rpo lag {}  remaining {}  rate {}/s{}",
            p.get("state").and_then(Value::as_str).unwrap_or("-"),
            num(p, "cycles"),
            p.get("last_recovery_point")
                .map(|x| x.to_string())
                .unwrap_or_default(),
            p.get("rpo_lag_secs")
                .and_then(Value::as_f64)
                .map(|x| format!("{x:.1}s"))
                .unwrap_or_else(|| "-".into()),
            human_bytes(num(p, "bytes_remaining")),
            human_bytes(num(p, "rate")),
            p.get("last_error")
                .and_then(Value::as_str)
                .map(|e| format!("  last error: {e}"))
                .unwrap_or_default()
        );
        for r in p
            .get("resources")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
        {
            let total = num(&r, "bytes_total");
            let remaining = num(&r, "bytes_remaining");
            println!(
                "    {} {} {} {}/s  {}",
                bar(total.saturating_sub(remaining), total),
                r.get("image").and_then(Value::as_str).unwrap_or("-"),
                human_bytes(remaining),
                human_bytes(num(&r, "rate")),
                r.get("phase").and_then(Value::as_str).unwrap_or("-"),
            );
        }
    }
}
