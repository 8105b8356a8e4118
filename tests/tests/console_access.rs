//! The web console's server side against real agents: sign-in sessions
//! stand in for the bearer token on `/v1` only with their CSRF token on
//! every state-changing route (each route and method of `agent/openapi.yaml`
//! is walked), a read-only session reads and nothing more, the cookie's
//! attributes (HttpOnly, SameSite=Strict, Path=/, Secure exactly when the
//! API serves TLS), sign-out, `/ui/` absent unless `[console]` is on, no
//! token or session secret in the agent's log, the embedded files with
//! their types and security headers, and the RPO-lag history on both sites.

use std::path::{Path, PathBuf};

use ferry_agent::api::http::{Method, Target};
use ferry_e2e::cli::ok;
use ferry_e2e::sites::{wait_for, Sites};
use ferry_e2e::{init_agent, Agent};
use serde_json::{json, Value};

#[path = "common/console_http.rs"]
mod console_http;
#[path = "common/openapi_routes.rs"]
mod openapi_routes;

use console_http::{request, Answer};
use openapi_routes::documented_operator_routes;

/// The Content-Security-Policy every `/ui` answer carries.
const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; \
                   script-src 'self'; connect-src 'self'; frame-ancestors 'none'; \
                   base-uri 'none'; form-action 'self'";

/// One agent with its tokens and how to reach its operator API.
struct Site {
    _tmp: tempfile::TempDir,
    agent: Agent,
    target: Target,
    operator: String,
    read_only: String,
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_owned()
}

/// Starts an agent whose config (the commented one `init` writes) gets
/// `console` under `[console]` and `api` under `[api]`; `env` for the agent.
fn start(console: &str, api: &str, env: &[(&str, &str)]) -> Site {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    let fp = init_agent(&dir);
    let path = dir.join("config.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    for section in ["\n[console]\n", "\n[api]\n"] {
        assert!(text.contains(section), "no {section} in {text}");
    }
    let text = text
        .replace("\n[console]\n", &format!("\n[console]\n{console}\n"))
        .replace("\n[api]\n", &format!("\n[api]\n{api}\n"));
    std::fs::write(&path, text).unwrap();
    let agent = Agent::start_with(&dir, &fp, &[], env);
    let url = read(&dir.join("api.addr"));
    let target = match url.strip_prefix("https://") {
        None => Target::Plain(url.trim_start_matches("http://").parse().unwrap()),
        Some(_) => {
            let conn = ferry_agent::cli::Conn {
                agent: Some(url.clone()),
                agent_fingerprint: Some(read(&dir.join("api.fingerprint"))),
                token: Some("unused".into()),
                ..Default::default()
            };
            ferry_agent::cli::resolve_target(&conn).unwrap().0
        }
    };
    Site {
        operator: read(&dir.join("api.token")),
        read_only: read(&dir.join("api.readonly.token")),
        _tmp: tmp,
        agent,
        target,
    }
}

/// A signed-in session: its cookie value and CSRF token.
struct Session {
    cookie: String,
    csrf: String,
    answer: Answer,
}

impl Session {
    fn header(&self) -> String {
        format!("ferry_session={}", self.cookie)
    }
}

fn sign_in(site: &Site, token: &str) -> Session {
    let answer = request(
        &site.target,
        "POST",
        "/ui/session",
        &[],
        Some(&json!({ "token": token })),
    );
    assert_eq!(answer.status, 200, "sign-in: {}", answer.text());
    let set = answer
        .header("set-cookie")
        .expect("a Set-Cookie")
        .to_owned();
    let cookie = set
        .split(';')
        .next()
        .and_then(|kv| kv.strip_prefix("ferry_session="))
        .unwrap_or_else(|| panic!("not the session cookie: {set}"))
        .to_owned();
    let csrf = answer.json()["csrf"].as_str().expect("csrf").to_owned();
    Session {
        cookie,
        csrf,
        answer,
    }
}

/// A body no route accepts: calls that get past the gate are refused by
/// the body check or find nothing, never carried out.
fn junk(method: &Method) -> Option<Value> {
    (*method != Method::GET).then(|| json!("not a request body"))
}

fn call(site: &Site, method: &Method, path: &str, headers: &[(&str, &str)]) -> Answer {
    request(
        &site.target,
        method.as_str(),
        path,
        headers,
        junk(method).as_ref(),
    )
}

fn error_text(a: &Answer) -> String {
    a.json()["error"].as_str().unwrap_or_default().to_owned()
}

/// (a) Every documented operator route, with every method it serves.
#[test]
fn every_state_changing_route_needs_a_session_with_its_csrf_token_and_operator_access() {
    let site = start("enabled = true", "", &[]);
    let op = sign_in(&site, &site.operator);
    let ro = sign_in(&site, &site.read_only);
    assert_eq!(op.answer.json()["access"], "operator");
    assert_eq!(ro.answer.json()["access"], "read_only");
    // Plain HTTP: no Secure attribute (a browser would drop the cookie).
    let set = op.answer.header("set-cookie").unwrap();
    assert!(!set.contains("Secure"), "{set}");
    let routes = documented_operator_routes();
    let paths: std::collections::BTreeSet<_> = routes.iter().map(|(_, p)| p).collect();
    assert_eq!(paths.len(), ferry_agent::api::OPERATOR_ROUTES.len());
    let writes = routes.iter().filter(|(m, _)| *m != Method::GET).count();
    assert!(writes >= 20, "only {writes} state-changing routes parsed");
    let (op_cookie, ro_cookie) = (op.header(), ro.header());
    let forged = "ferry_session=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_owned();
    for (method, path) in &routes {
        let what = format!("{method} {path}");
        if path == "/v1/health" {
            continue;
        }
        let none = call(&site, method, path, &[]);
        assert_eq!(
            none.status,
            401,
            "{what} without a session: {}",
            none.text()
        );
        let unknown = call(
            &site,
            method,
            path,
            &[("Cookie", &forged), ("X-CSRF-Token", &op.csrf)],
        );
        assert_eq!(unknown.status, 401, "{what} with an unknown session");
        if *method == Method::GET {
            for cookie in [&op_cookie, &ro_cookie] {
                let a = call(&site, method, path, &[("Cookie", cookie)]);
                assert!(
                    a.status != 401 && a.status != 403,
                    "{what} refused to a session: {} {}",
                    a.status,
                    a.text()
                );
            }
            continue;
        }
        for (label, headers) in [
            ("no CSRF header", vec![("Cookie", op_cookie.as_str())]),
            (
                "an empty CSRF header",
                vec![("Cookie", op_cookie.as_str()), ("X-CSRF-Token", "")],
            ),
            (
                "another session's CSRF token",
                vec![("Cookie", op_cookie.as_str()), ("X-CSRF-Token", &ro.csrf)],
            ),
            (
                "the CSRF token as the cookie's own value",
                vec![("Cookie", op_cookie.as_str()), ("X-CSRF-Token", &op.cookie)],
            ),
        ] {
            let a = call(&site, method, path, &headers);
            assert_eq!(a.status, 403, "{what} with {label}: {}", a.text());
            assert!(error_text(&a).contains("CSRF"), "{what}: {}", a.text());
        }
        let read_only = call(
            &site,
            method,
            path,
            &[("Cookie", &ro_cookie), ("X-CSRF-Token", &ro.csrf)],
        );
        assert_eq!(read_only.status, 403, "{what} with a read-only session");
        assert!(error_text(&read_only).contains("read-only"), "{what}");
        // The bearer header, when present, decides alone: a wrong token is
        // refused even beside a valid session.
        let wrong_bearer = call(
            &site,
            method,
            path,
            &[
                ("Authorization", "Bearer 0123456789abcdef"),
                ("Cookie", &op_cookie),
                ("X-CSRF-Token", &op.csrf),
            ],
        );
        assert_eq!(wrong_bearer.status, 401, "{what} with a wrong bearer token");
        let allowed = call(
            &site,
            method,
            path,
            &[("Cookie", &op_cookie), ("X-CSRF-Token", &op.csrf)],
        );
        assert!(
            allowed.status != 401 && allowed.status != 403,
            "{what} refused to an operator session with its CSRF token: {} {}",
            allowed.status,
            allowed.text()
        );
    }
    // Health stays open; nothing the calls reached was created.
    assert_eq!(call(&site, &Method::GET, "/v1/health", &[]).status, 200);
    let groups = call(&site, &Method::GET, "/v1/groups", &[("Cookie", &op_cookie)]);
    assert_eq!(groups.json(), json!([]), "{}", groups.text());
    // A session's access follows it: the read-only session still reads.
    let status = call(&site, &Method::GET, "/v1/status", &[("Cookie", &ro_cookie)]);
    assert_eq!(status.status, 200);
}

/// Sign-out (of the operator session `op`) needs the CSRF token too; once
/// signed out, the cookie is cleared and the old cookie and CSRF token open
/// nothing.
fn sign_out_needs_the_csrf_token_and_ends_the_session(site: &Site, op: &Session) {
    let cookie = op.header();
    let refused = request(
        &site.target,
        "DELETE",
        "/ui/session",
        &[("Cookie", &cookie)],
        None,
    );
    assert_eq!(refused.status, 403, "{}", refused.text());
    assert_eq!(
        request(
            &site.target,
            "GET",
            "/ui/session",
            &[("Cookie", &cookie)],
            None
        )
        .status,
        200,
        "a refused sign-out ended the session"
    );
    let out = request(
        &site.target,
        "DELETE",
        "/ui/session",
        &[("Cookie", &cookie), ("X-CSRF-Token", &op.csrf)],
        None,
    );
    assert_eq!(out.status, 200, "{}", out.text());
    let cleared = out.header("set-cookie").expect("the cookie cleared");
    assert!(cleared.starts_with("ferry_session=;"), "{cleared}");
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    // The old cookie and CSRF token are worth nothing now.
    assert_eq!(
        request(
            &site.target,
            "GET",
            "/ui/session",
            &[("Cookie", &cookie)],
            None
        )
        .status,
        401
    );
    assert_eq!(
        request(
            &site.target,
            "GET",
            "/v1/groups",
            &[("Cookie", &cookie)],
            None
        )
        .status,
        401
    );
    let late = request(
        &site.target,
        "POST",
        "/v1/groups",
        &[("Cookie", &cookie), ("X-CSRF-Token", &op.csrf)],
        Some(&json!({ "name": "g" })),
    );
    assert_eq!(late.status, 401, "{}", late.text());
}

/// (b), (c), (e): sign-in over TLS, the cookie, sign-out, and the log.
#[test]
fn sign_in_over_tls_sets_a_strict_secure_cookie_sign_out_ends_it_and_the_log_holds_no_secret() {
    // Debug logging: whatever the agent and its libraries say about a
    // request, no secret may be in it.
    let site = start("enabled = true", "tls = true", &[("RUST_LOG", "debug")]);
    // A wrong token: 401 with a JSON reason and no cookie.
    let wrong = request(
        &site.target,
        "POST",
        "/ui/session",
        &[],
        Some(&json!({ "token": format!("{}x", site.operator) })),
    );
    assert_eq!(wrong.status, 401, "{}", wrong.text());
    assert!(
        error_text(&wrong).contains("wrong token"),
        "{}",
        wrong.text()
    );
    assert!(wrong.header("set-cookie").is_none());
    let not_json = request(&site.target, "POST", "/ui/session", &[], None);
    assert_eq!(not_json.status, 400, "{}", not_json.text());

    let op = sign_in(&site, &site.operator);
    let set = op.answer.header("set-cookie").unwrap().to_owned();
    let attributes: Vec<&str> = set.split(';').map(str::trim).skip(1).collect();
    for needed in ["HttpOnly", "SameSite=Strict", "Path=/", "Secure"] {
        assert!(attributes.contains(&needed), "{needed} missing: {set}");
    }
    assert_eq!(op.cookie.len(), 43, "256 bits, base64url: {set}");
    assert!(op
        .cookie
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    let body = op.answer.json();
    assert_eq!(body["access"], "operator");
    assert_eq!(body["agent"], site.agent.fingerprint.as_str());
    assert_eq!(op.csrf.len(), 43);
    assert_ne!(op.csrf, op.cookie);
    let expires: jiff::Timestamp = body["expires_at"]
        .as_str()
        .expect("expires_at")
        .parse()
        .expect("RFC 3339");
    assert!(expires > jiff::Timestamp::now(), "{body}");
    assert!(!body.to_string().contains(&site.operator));

    // Who am I: the same session and CSRF token.
    let cookie = op.header();
    let me = request(
        &site.target,
        "GET",
        "/ui/session",
        &[("Cookie", &cookie)],
        None,
    );
    assert_eq!(me.status, 200, "{}", me.text());
    assert_eq!(me.json()["csrf"], op.csrf.as_str());
    assert_eq!(
        request(&site.target, "GET", "/ui/session", &[], None).status,
        401
    );
    let groups = request(
        &site.target,
        "GET",
        "/v1/groups",
        &[("Cookie", &cookie)],
        None,
    );
    assert_eq!(groups.status, 200, "{}", groups.text());

    sign_out_needs_the_csrf_token_and_ends_the_session(&site, &op);

    let ro = sign_in(&site, &site.read_only);
    assert_eq!(ro.answer.json()["access"], "read_only");
    // Signing in again from the same browser ends the session it had.
    let ro_cookie = ro.header();
    let again = request(
        &site.target,
        "POST",
        "/ui/session",
        &[("Cookie", &ro_cookie)],
        Some(&json!({ "token": site.read_only })),
    );
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(
        request(
            &site.target,
            "GET",
            "/ui/session",
            &[("Cookie", &ro_cookie)],
            None
        )
        .status,
        401,
        "the replaced session still works"
    );

    // (e) No token, session id or CSRF token in the log.
    let log = site.agent.log_text();
    assert!(
        log.contains("console sign-in"),
        "the sign-ins were not logged:\n{log}"
    );
    for (what, secret) in [
        ("operator token", &site.operator),
        ("read-only token", &site.read_only),
        ("session id", &op.cookie),
        ("CSRF token", &op.csrf),
        ("read-only session id", &ro.cookie),
        ("read-only CSRF token", &ro.csrf),
    ] {
        assert!(
            !log.contains(secret.as_str()),
            "the {what} is in the agent's log"
        );
    }
}

/// (d) Off by default: no `/ui`, and a session cookie opens nothing.
#[test]
fn without_the_console_section_there_is_no_ui_and_no_cookie_access() {
    let site = start("", "", &[]);
    for path in ["/ui/", "/ui/index.html", "/ui/session", "/ui/groups/web"] {
        let a = request(&site.target, "GET", path, &[], None);
        assert_eq!(a.status, 404, "{path}: {}", a.text());
    }
    let a = request(
        &site.target,
        "POST",
        "/ui/session",
        &[],
        Some(&json!({ "token": site.operator })),
    );
    assert_eq!(a.status, 404, "{}", a.text());
    assert!(a.header("set-cookie").is_none());
    let a = request(
        &site.target,
        "GET",
        "/v1/groups",
        &[(
            "Cookie",
            "ferry_session=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        )],
        None,
    );
    assert_eq!(a.status, 401);
    // The bearer token works as ever.
    let bearer = format!("Bearer {}", site.operator);
    let a = request(
        &site.target,
        "GET",
        "/v1/groups",
        &[("Authorization", &bearer)],
        None,
    );
    assert_eq!(a.status, 200, "{}", a.text());
}

/// Every file under `agent/console/`, relative to it.
fn console_files() -> Vec<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                out.push(path.strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/console");
    let mut out = Vec::new();
    walk(&root, &root, &mut out);
    out
}

fn security_headers(a: &Answer, what: &str) {
    assert_eq!(a.header("content-security-policy"), Some(CSP), "{what}");
    assert_eq!(
        a.header("x-content-type-options"),
        Some("nosniff"),
        "{what}"
    );
    assert_eq!(a.header("referrer-policy"), Some("no-referrer"), "{what}");
}

/// (f) The embedded files, their types and the headers of every answer.
#[test]
fn the_console_files_are_served_as_committed_with_their_types_and_security_headers() {
    let site = start("enabled = true", "", &[]);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../agent/console");
    let files = console_files();
    assert!(
        files.iter().any(|f| f == Path::new("index.html")),
        "{files:?}"
    );
    for file in &files {
        let name = file.to_str().expect("UTF-8 file names");
        let a = request(&site.target, "GET", &format!("/ui/{name}"), &[], None);
        assert_eq!(a.status, 200, "{name}");
        assert_eq!(a.body, std::fs::read(root.join(file)).unwrap(), "{name}");
        security_headers(&a, name);
        let ty = a.header("content-type").unwrap_or_default();
        let expected = match file.extension().and_then(|e| e.to_str()) {
            Some("html") => "text/html",
            Some("js" | "mjs") => "javascript",
            Some("css") => "text/css",
            Some("svg") => "image/svg+xml",
            Some("png") => "image/png",
            Some("json") => "application/json",
            _ => "",
        };
        assert!(ty.contains(expected), "{name}: {ty}");
    }
    let index = std::fs::read(root.join("index.html")).unwrap();
    // The page, at /ui/ and for any client route; never cached.
    for path in ["/ui/", "/ui/index.html", "/ui/groups", "/ui/groups/web"] {
        let a = request(&site.target, "GET", path, &[], None);
        assert_eq!(a.status, 200, "{path}");
        assert_eq!(a.body, index, "{path}");
        assert_eq!(a.header("cache-control"), Some("no-store"), "{path}");
        assert!(a.header("content-type").unwrap().starts_with("text/html"));
        security_headers(&a, path);
    }
    let a = request(&site.target, "GET", "/ui", &[], None);
    assert_eq!(a.status, 308);
    assert_eq!(a.header("location"), Some("/ui/"));
    // A file that is not there, and paths that try to leave the folder.
    for path in [
        "/ui/no-such-file.js",
        "/ui/../Cargo.toml",
        "/ui/%2e%2e/Cargo.toml",
    ] {
        let a = request(&site.target, "GET", path, &[], None);
        assert_eq!(a.status, 404, "{path}: {}", a.text());
        security_headers(&a, path);
    }
    let a = request(&site.target, "GET", "/ui/session", &[], None);
    assert_eq!(a.status, 401);
    security_headers(&a, "/ui/session");
    assert_eq!(a.header("cache-control"), Some("no-store"));
}

/// (g) The RPO-lag history fills on the primary and on the standby.
#[test]
fn rpo_history_has_samples_on_both_sites_once_the_group_syncs() {
    let sites = Sites::paired();
    let (a, b) = (&sites.a.dir, &sites.b.dir);
    let image = sites.path("vm1.raw");
    ferry_agent::imagegen::make_image(&image, 4 << 20, 7).unwrap();
    let uri = format!("file:{}", image.display());
    ok(a, &["group", "create", "web", "--wait"]);
    ok(a, &["group", "add", "web", &uri, "--wait"]);
    ok(a, &["group", "start", "web", "--wait"]);
    ok(a, &["rp", "create", "web", "--name", "first", "--wait"]);
    for dir in [a, b] {
        let mut last = Value::Null;
        wait_for(
            "an RPO lag sample",
            std::time::Duration::from_secs(90),
            || {
                last = ferry_e2e::cli::get(dir, "/v1/groups/web/rpo-history");
                last["samples"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|x| x["lag_secs"].is_number()))
            },
        );
        assert_eq!(last["group"], "web", "{last}");
        assert_eq!(last["interval_secs"], 10, "{last}");
        let samples = last["samples"].as_array().unwrap();
        let times: Vec<i64> = samples.iter().map(|s| s["at"].as_i64().unwrap()).collect();
        assert!(times.windows(2).all(|w| w[0] < w[1]), "{last}");
        let now_ms = jiff::Timestamp::now().as_millisecond();
        assert!(
            times.iter().all(|t| *t <= now_ms && now_ms - t < 3_600_000),
            "{last}"
        );
        for lag in samples.iter().filter_map(|s| s["lag_secs"].as_f64()) {
            assert!((0.0..3600.0).contains(&lag), "{last}");
        }
    }
    // The CLI shows the same samples: a table with a lag, or the JSON.
    let json = ok(b, &["group", "rpo-history", "web"]);
    assert!(!json["samples"].as_array().unwrap().is_empty(), "{json}");
    let out = ferry_e2e::cli::run(b, &["group", "rpo-history", "web", "--tz", "UTC"]);
    assert!(out.status.success(), "{}", ferry_e2e::cli::text(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("AT"), "{table}");
    assert!(
        table
            .lines()
            .skip(1)
            .any(|l| l.contains("+00:00") && l.ends_with('s')),
        "{table}"
    );
    // By id too; an unknown group is 404.
    let by_id = ferry_e2e::cli::get(a, "/v1/groups/1/rpo-history");
    assert_eq!(by_id["group"], "web");
    let conn = ferry_agent::cli::Conn {
        dir: Some(a.clone()),
        ..Default::default()
    };
    let (target, token) = ferry_agent::cli::resolve_target(&conn).unwrap();
    let bearer = format!("Bearer {token}");
    let missing = request(
        &target,
        "GET",
        "/v1/groups/nope/rpo-history",
        &[("Authorization", &bearer)],
        None,
    );
    assert_eq!(missing.status, 404, "{}", missing.text());
}
