//! The `/ui` router: the embedded files and the session API the pages sign
//! in with.
//!
//! - `POST /ui/session` `{"token": "…"}`: the operator or read-only token
//!   (compared in constant time by `auth::Tokens::access`) starts a session:
//!   `Set-Cookie: ferry_session=…; HttpOnly; SameSite=Strict; Path=/`
//!   (`; Secure` with TLS) and `{"csrf", "access", "agent", "expires_at"}`;
//!   a session cookie sent along is ended (a new id at every sign-in).
//!   A wrong token is answered 401 after [`LOGIN_FAILURE_DELAY`], one wrong
//!   token at a time for the whole agent: at most about one guess a second
//!   (the tokens are 256 random bits; this only keeps a guessing client
//!   from also flooding the log).
//! - `GET /ui/session`: the same answer for a valid session cookie, else 401.
//! - `DELETE /ui/session`: signs out (needs the `X-CSRF-Token` header) and
//!   clears the cookie.
//!
//! Nothing here logs a token, a session id or a CSRF token.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::session::{csrf_matches, SessionView};
use super::{assets, session_cookie, Console, CSRF_HEADER};
use crate::wire::tokens::Access;

/// How long a refused sign-in waits before its answer (holding the
/// agent-wide sign-in failure lock).
pub const LOGIN_FAILURE_DELAY: Duration = Duration::from_secs(1);

/// The console's routes (serve on the operator API listener).
pub fn router(console: Arc<Console>) -> Router {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(|| async { assets::serve("") }))
        .route(
            "/ui/session",
            get(show_session).post(sign_in).delete(sign_out),
        )
        .route("/ui/{*path}", get(asset))
        .layer(middleware::from_fn(assets::security_headers))
        .with_state(console)
}

async fn asset(Path(path): Path<String>) -> Response {
    assets::serve(&path)
}

#[derive(Deserialize)]
struct SignIn {
    token: String,
}

fn error(status: StatusCode, text: &str) -> Response {
    (status, Json(json!({ "error": text }))).into_response()
}

/// `access` as the pages and the API spell it.
pub fn access_name(access: Access) -> &'static str {
    match access {
        Access::Operator => "operator",
        Access::ReadOnly => "read_only",
    }
}

fn session_json(console: &Console, view: &SessionView) -> Value {
    let secs = view
        .expires_at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let expires_at = jiff::Timestamp::from_second(i64::try_from(secs).unwrap_or(i64::MAX))
        .map(|t| t.to_string())
        .unwrap_or_default();
    json!({
        "csrf": view.csrf,
        "access": access_name(view.access),
        "agent": console.agent,
        "expires_at": expires_at,
    })
}

async fn sign_in(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    body: Result<Json<SignIn>, JsonRejection>,
) -> Response {
    let Ok(Json(body)) = body else {
        return error(
            StatusCode::BAD_REQUEST,
            "expected a JSON body {\"token\": \"…\"} (Content-Type: application/json)",
        );
    };
    match console.sign_in(&body.token) {
        Some((id, view)) => {
            // Signing in again replaces the browser's session: the old id
            // is worth nothing from now on.
            if let Some(old) = session_cookie(&headers) {
                console.sign_out(old);
            }
            tracing::info!(access = access_name(view.access), "console sign-in");
            let mut response = Json(session_json(&console, &view)).into_response();
            if let Ok(v) = console.cookie(&id).parse() {
                response.headers_mut().insert(header::SET_COOKIE, v);
            }
            response
        }
        None => {
            // Never log what was presented: a wrong token may be a near miss.
            tracing::warn!("refused a console sign-in with a wrong token");
            let _one_at_a_time = console.failed_logins.lock().await;
            tokio::time::sleep(LOGIN_FAILURE_DELAY).await;
            error(
                StatusCode::UNAUTHORIZED,
                "wrong token: sign in with the operator token (DIR/api.token) or the read-only \
                 token (DIR/api.readonly.token)",
            )
        }
    }
}

fn not_signed_in() -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        "not signed in, or the session expired: sign in again",
    )
}

async fn show_session(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    match session_cookie(&headers).and_then(|id| console.session(id)) {
        Some(view) => Json(session_json(&console, &view)).into_response(),
        None => not_signed_in(),
    }
}

async fn sign_out(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let Some(id) = session_cookie(&headers) else {
        return not_signed_in();
    };
    let Some(view) = console.session(id) else {
        return not_signed_in();
    };
    let presented = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
    if !csrf_matches(&view, presented) {
        return csrf_refusal();
    }
    console.sign_out(id);
    tracing::info!("console sign-out");
    let mut response = Json(json!({ "signed_out": true })).into_response();
    if let Ok(v) = console.clear_cookie().parse() {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

/// The answer to a state-changing call with the session cookie but without
/// the session's CSRF token.
pub fn csrf_refusal() -> Response {
    error(
        StatusCode::FORBIDDEN,
        "missing or wrong CSRF token: a state-changing call with the console's session cookie \
         needs the X-CSRF-Token header the sign-in returned",
    )
}
