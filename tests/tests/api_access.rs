//! Who may call which operator route, against a real agent: every route and
//! method `agent/openapi.yaml` documents is called with the read-only token
//! (state-changing methods must answer 403, reads must get past the token
//! check), with the operator token (never 401/403) and with a wrong token
//! (401, except the unauthenticated health route).

use std::path::Path;
use std::time::Duration;

use ferry_agent::api::http::{self, Method, Reply, Target};
use ferry_e2e::{init_agent, Agent};
use serde_json::{json, Value};

#[path = "common/openapi_routes.rs"]
mod openapi_routes;
use openapi_routes::documented_operator_routes;

fn call(target: &Target, method: Method, path: &str, token: &str) -> Reply {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    // A body no route accepts: the operator token's state-changing calls are
    // refused by the body check (or find nothing), never carried out.
    let body = (method != Method::GET).then(|| json!("not a request body"));
    rt.block_on(http::call(
        target,
        method.clone(),
        path,
        Some(token),
        body.as_ref(),
        Duration::from_secs(10),
    ))
    .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// Walks every documented route with each token against `target`.
fn walk(target: &Target, operator: &str, read_only: &str) {
    let routes = documented_operator_routes();
    // Guard the parser: every path the agent serves was found (the agent's
    // own test checks the doc lists exactly those), with its writes.
    let paths: std::collections::BTreeSet<_> = routes.iter().map(|(_, p)| p).collect();
    assert_eq!(paths.len(), ferry_agent::api::OPERATOR_ROUTES.len());
    let writes = routes.iter().filter(|(m, _)| *m != Method::GET).count();
    assert!(writes >= 20, "only {writes} state-changing routes parsed");
    for (method, path) in &routes {
        let ro = call(target, method.clone(), path, read_only);
        let op = call(target, method.clone(), path, operator);
        let wrong = call(target, method.clone(), path, "0123456789abcdef");
        if *method == Method::GET {
            assert!(
                ro.status != 401 && ro.status != 403,
                "read-only token refused on {method} {path}: {} {}",
                ro.status,
                ro.body
            );
        } else {
            assert_eq!(
                ro.status, 403,
                "read-only token not refused on {method} {path}: {}",
                ro.body
            );
            let text = ro.body["error"].as_str().unwrap_or_default();
            assert!(text.contains("read-only"), "{method} {path}: {text}");
        }
        assert!(
            op.status != 401 && op.status != 403,
            "operator token refused on {method} {path}: {} {}",
            op.status,
            op.body
        );
        let expected_wrong = if path == "/v1/health" { 200 } else { 401 };
        assert_eq!(
            wrong.status, expected_wrong,
            "wrong token on {method} {path}"
        );
    }
}

fn token(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_owned()
}

#[test]
fn read_only_token_reads_every_get_route_and_no_write_route() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    let fp = init_agent(&dir);
    // init creates the read-only token beside the operator token.
    let read_only = token(&dir.join("api.readonly.token"));
    let agent = Agent::start(&dir, &fp, &[]);
    let operator = token(&dir.join("api.token"));
    assert_eq!(token(&dir.join("api.readonly.token")), read_only);
    assert_ne!(operator, read_only);
    let addr = std::fs::read_to_string(dir.join("api.addr")).unwrap();
    let addr = addr.trim().trim_start_matches("http://").parse().unwrap();
    walk(&Target::Plain(addr), &operator, &read_only);
    // Nothing the read-only calls reached was created.
    let status = call(&Target::Plain(addr), Method::GET, "/v1/groups", &read_only);
    assert_eq!(status.body, Value::Array(vec![]), "{}", status.body);
    drop(agent);
}

/// Turns on TLS in the agent's config (`lines` go under `[api]`).
fn set_api_tls(dir: &Path, lines: &str) {
    let path = dir.join("config.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("\n[api]\n"), "no [api] section in {text}");
    std::fs::write(
        &path,
        text.replace("\n[api]\n", &format!("\n[api]\n{lines}\n")),
    )
    .unwrap();
}

fn tls_target(dir: &Path, fingerprint: &str) -> Target {
    let conn = ferry_agent::cli::Conn {
        agent: Some(
            std::fs::read_to_string(dir.join("api.addr"))
                .unwrap()
                .trim()
                .to_owned(),
        ),
        agent_fingerprint: Some(fingerprint.to_owned()),
        token: Some("unused".into()),
        ..Default::default()
    };
    ferry_agent::cli::resolve_target(&conn).unwrap().0
}

#[test]
fn operator_api_over_tls_with_the_agents_certificate_pins_its_fingerprint() {
    use ferry_e2e::cli::{ok, text};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    let fp = init_agent(&dir);
    set_api_tls(&dir, "tls = true");
    let agent = Agent::start(&dir, &fp, &[]);
    let url = std::fs::read_to_string(dir.join("api.addr")).unwrap();
    let url = url.trim();
    assert!(url.starts_with("https://"), "{url}");
    let pinned = std::fs::read_to_string(dir.join("api.fingerprint")).unwrap();
    assert_eq!(pinned.trim(), fp);
    // `ferry --dir` finds the URL and the pin by itself.
    let status = ok(&dir, &["status"]);
    assert!(status.is_object(), "{status}");
    // `--agent https://…` with the fingerprint, as printed by init or with
    // openssl's colons.
    let operator = token(&dir.join("api.token"));
    let colons: Vec<String> = fp
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).to_uppercase())
        .collect();
    for pin in [fp.clone(), colons.join(":")] {
        let out = ferry_e2e::ferry(&[
            "--agent",
            url,
            "--agent-fingerprint",
            &pin,
            "--token",
            &operator,
            "group",
            "list",
            "--json",
        ]);
        assert!(out.status.success(), "{}", text(&out));
    }
    // A wrong pin, or no pin, or plain HTTP to the TLS port: refused.
    let other = "ab".repeat(32);
    let out = ferry_e2e::ferry(&[
        "--agent",
        url,
        "--agent-fingerprint",
        &other,
        "--token",
        &operator,
        "group",
        "list",
    ]);
    assert!(!out.status.success(), "{}", text(&out));
    let out = ferry_e2e::ferry(&["--agent", url, "--token", &operator, "group", "list"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--agent-fingerprint"),
        "{}",
        text(&out)
    );
    let plain = url.replace("https://", "http://");
    let out = ferry_e2e::ferry(&["--agent", &plain, "--token", &operator, "group", "list"]);
    assert!(!out.status.success(), "{}", text(&out));
    // Every route over TLS: the tokens mean the same.
    let read_only = token(&dir.join("api.readonly.token"));
    walk(&tls_target(&dir, &fp), &operator, &read_only);
    drop(agent);
}

#[test]
fn operator_api_over_tls_with_an_operator_given_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    let fp = init_agent(&dir);
    // A certificate and key the operator provides (made here as another
    // agent identity would be: ECDSA P-256, self-signed, PEM).
    let certs = tmp.path().join("certs");
    let given = ferry_engine::identity::Identity::create(&certs).unwrap();
    let cert = certs.join("identity/cert.pem");
    let key = certs.join("identity/key.pem");
    set_api_tls(
        &dir,
        &format!(
            "tls_cert = {:?}\ntls_key = {:?}",
            cert.display().to_string(),
            key.display().to_string()
        ),
    );
    let agent = Agent::start(&dir, &fp, &[]);
    let pinned = std::fs::read_to_string(dir.join("api.fingerprint")).unwrap();
    let given_fp = given.fingerprint().to_string();
    assert_eq!(pinned.trim(), given_fp);
    assert_ne!(given_fp, fp);
    let operator = token(&dir.join("api.token"));
    // The given certificate's pin works; the agent's own does not.
    let reply = call(
        &tls_target(&dir, &given_fp),
        Method::GET,
        "/v1/groups",
        &operator,
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let wrong = rt.block_on(http::call(
        &tls_target(&dir, &fp),
        Method::GET,
        "/v1/groups",
        Some(&operator),
        None,
        Duration::from_secs(10),
    ));
    assert!(
        wrong.is_err(),
        "the agent's own fingerprint was accepted for another certificate"
    );
    drop(agent);
}
