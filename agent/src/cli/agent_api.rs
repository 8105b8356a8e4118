//! The operator-API client the control commands share: finding the agent
//! (`--dir` or `--agent`/`--token`), calling it, printing the answer, telling
//! a refusal (HTTP 409, exit status 1) from an error, and polling a long
//! operation to its end.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hyper::Method;
use serde::Serialize;
use serde_json::{json, Value};

use super::args::Conn;
use super::render::print_human;
use super::tables::{render, time_zone, View};
use crate::wire::http::{self, Reply, Target};

/// A request body for the agent: one of the typed bodies its API parses
/// (`wire::bodies`), sent as the JSON value it serialises to.
pub(super) fn json_body(b: &impl Serialize) -> Result<Option<Value>> {
    Ok(Some(
        serde_json::to_value(b).context("encode the request body")?,
    ))
}

/// A connection to one agent's operator API, and how to print its answers.
pub(super) struct Api {
    target: Target,
    token: String,
    json: bool,
    /// The zone times are shown in (`--tz`, else the system's).
    tz: jiff::tz::TimeZone,
}

/// The operator API's address and token for `conn`, for plain HTTP only
/// (an agent that serves HTTPS is refused: use [`resolve_target`]).
pub fn resolve_conn(conn: &Conn) -> Result<(SocketAddr, String)> {
    match resolve_target(conn)? {
        (Target::Plain(addr), token) => Ok((addr, token)),
        (Target::Tls { addr, .. }, _) => {
            bail!("the agent at {addr} serves HTTPS: call it with resolve_target")
        }
    }
}

/// Where the operator API of `conn` is (plain or TLS pinned to the served
/// certificate's fingerprint) and the token to show it.
pub fn resolve_target(conn: &Conn) -> Result<(Target, String)> {
    let (url, source) = match (&conn.agent, &conn.dir) {
        (Some(url), _) => (url.clone(), format!("--agent {url}")),
        (None, Some(dir)) => {
            let addr = crate::api::read_addr(dir)?;
            let source = format!(
                "{} holds {addr:?}",
                dir.join(crate::api::ADDR_FILE).display()
            );
            (addr, source)
        }
        (None, None) => bail!("say which agent: --dir DIR, or --agent URL --token TOKEN"),
    };
    let (https, hostport) = match url.strip_prefix("https://") {
        Some(rest) => (true, rest),
        None => (false, url.strip_prefix("http://").unwrap_or(&url)),
    };
    let hostport = hostport.trim_end_matches('/');
    let addr: SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(hostport)
        .with_context(|| source.clone())?
        .next()
        .with_context(|| format!("{source}: resolves to nothing"))?;
    let target = if https {
        let fp = match (&conn.agent_fingerprint, &conn.dir) {
            (Some(fp), _) => fp.clone(),
            (None, Some(dir)) => {
                let path = dir.join(crate::api::FINGERPRINT_FILE);
                std::fs::read_to_string(&path).with_context(|| {
                    format!("reading {} (the agent serves HTTPS)", path.display())
                })?
            }
            (None, None) => bail!(
                "{source}: an https:// agent needs --agent-fingerprint FP (the SHA-256 \
                 fingerprint of its certificate: `ferry-agent init` printed it, or \
                 `openssl x509 -noout -fingerprint -sha256 -in CERT`)"
            ),
        };
        let expected = crate::wire::api_tls::parse_fingerprint(&fp)
            .with_context(|| format!("{fp:?} is not a SHA-256 fingerprint (64 hex digits)"))?;
        let config = crate::wire::api_tls::client_config(expected)?;
        Target::Tls {
            addr,
            config: std::sync::Arc::new(config),
        }
    } else {
        if conn.agent_fingerprint.is_some() {
            bail!("--agent-fingerprint pins an https:// agent; {source} is plain HTTP");
        }
        Target::Plain(addr)
    };
    let token = match (given_token(conn)?, &conn.dir) {
        (Some(t), _) => t,
        (None, Some(dir)) => crate::api::read_token(dir)?,
        (None, None) => bail!(
            "--agent needs a token: --token-file FILE, FERRY_TOKEN, --token T, or --dir to read it from"
        ),
    };
    Ok((target, token))
}

/// Environment variable the API token may be given in (kept out of `ps`).
pub const TOKEN_ENV: &str = "FERRY_TOKEN";

/// The token given other than by `--dir`: `--token`, else `--token-file`,
/// else `FERRY_TOKEN` (set and not empty).
fn given_token(conn: &Conn) -> Result<Option<String>> {
    if let Some(t) = &conn.token {
        return Ok(Some(t.clone()));
    }
    if let Some(path) = &conn.token_file {
        return read_token_file(path).map(Some);
    }
    Ok(std::env::var(TOKEN_ENV)
        .ok()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty()))
}

/// Reads a `--token-file`: refused when group or others may read it (as
/// the agent refuses such a DIR/api.token) or when it is empty.
fn read_token_file(path: &std::path::Path) -> Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let meta =
        std::fs::metadata(path).with_context(|| format!("--token-file {}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "--token-file {} has mode {mode:o}: it must not be readable by group or others (chmod 600 it)",
            path.display()
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--token-file {}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        bail!("--token-file {} is empty", path.display());
    }
    Ok(token.to_owned())
}

/// What a command ended with.
pub(super) enum Outcome {
    Ok,
    Refused,
}

impl Api {
    pub(super) fn new(conn: &Conn) -> Result<Api> {
        let (target, token) = resolve_target(conn)?;
        Ok(Api {
            target,
            token,
            json: conn.json,
            tz: time_zone(conn.tz.as_deref())?,
        })
    }

    /// Gets a list (or one object) and prints it as `view` for a person,
    /// or as JSON with `--json`.
    pub(super) async fn show(&self, path: &str, view: View) -> Result<Outcome> {
        let reply = self.call(Method::GET, path, None).await?;
        if reply.ok() && !self.json {
            print!("{}", render(view, &reply.body, &self.tz));
            return Ok(Outcome::Ok);
        }
        self.report(&reply)
    }

    /// Whether `--json` was given.
    pub(super) fn json(&self) -> bool {
        self.json
    }

    /// The zone times are shown in.
    pub(super) fn tz(&self) -> &jiff::tz::TimeZone {
        &self.tz
    }

    pub(super) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Reply> {
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
    pub(super) async fn run(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Outcome> {
        let reply = self.call(method, path, body).await?;
        self.report(&reply)
    }

    pub(super) fn report(&self, reply: &Reply) -> Result<Outcome> {
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
    pub(super) async fn op(
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

    pub(super) async fn wait(&self, id: i64) -> Result<Outcome> {
        loop {
            // A long poll: the agent answers when the operation ends (or
            // after OP_WAIT_MS), so `--wait` returns at once.
            let asked = std::time::Instant::now();
            let reply = self
                .call(
                    Method::GET,
                    &format!("/v1/operations/{id}?wait_ms={OP_WAIT_MS}"),
                    None,
                )
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
            // An agent that ignores `wait_ms` (older than this CLI)
            // answers at once: poll it as before.
            if asked.elapsed() < Duration::from_millis(OP_WAIT_MS / 2) {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// How long one `--wait` request lets the agent hold it.
const OP_WAIT_MS: u64 = 10_000;

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn token_file(mode: u32, text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        (dir, path)
    }

    #[test]
    fn token_file_is_read_trimmed_and_must_be_private() {
        let (_d, path) = token_file(0o600, "  s3cret\n");
        let conn = Conn {
            token_file: Some(path.clone()),
            ..Default::default()
        };
        assert_eq!(given_token(&conn).unwrap().as_deref(), Some("s3cret"));
        // --token wins over --token-file.
        let both = Conn {
            token: Some("flag".into()),
            ..conn.clone()
        };
        assert_eq!(given_token(&both).unwrap().as_deref(), Some("flag"));
        for mode in [0o640, 0o604, 0o644] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = given_token(&conn).unwrap_err().to_string();
            assert!(err.contains("chmod 600"), "{mode:o}: {err}");
        }
        let (_e, empty) = token_file(0o600, "\n");
        let conn = Conn {
            token_file: Some(empty),
            ..Default::default()
        };
        assert!(given_token(&conn)
            .unwrap_err()
            .to_string()
            .contains("empty"));
    }

    /// `--agent` with a token file reaches an address without any `--dir`.
    #[test]
    fn agent_url_with_token_file_needs_no_dir() {
        let (_d, path) = token_file(0o600, "t0k\n");
        let conn = Conn {
            agent: Some("http://127.0.0.1:7480".into()),
            token_file: Some(path),
            ..Default::default()
        };
        let (addr, token) = resolve_conn(&conn).unwrap();
        assert_eq!(addr.port(), 7480);
        assert_eq!(token, "t0k");
    }
}
