//! Who may call the operator API: the operator token (every route) and the
//! read-only token (only routes that change nothing, i.e. `GET`/`HEAD`),
//! both compared in constant time (`subtle`), so the time an answer takes
//! says nothing about how much of a guessed token was right.
//!
//! The rule is the HTTP method, not a list of routes: every route of
//! `agent/openapi.yaml` that changes state is a `POST`, `PUT`, `PATCH` or
//! `DELETE` (including `POST …/verify`, which makes the agent call its peer,
//! and `POST /v1/service/key`, which issues a pairing secret), so a route
//! added later is refused to the read-only token unless it is a `GET`.
//!
//! With the web console on, a request without an `Authorization` header may
//! instead carry the console's session cookie (`console::SESSION_COOKIE`):
//! the session grants what the token signed in with grants, and every
//! state-changing method also needs the session's CSRF token in
//! `X-CSRF-Token` (compared in constant time), so another site cannot make
//! a signed-in browser act. A request with an `Authorization` header is
//! judged by that header alone.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::console::routes::csrf_refusal;
use crate::console::session::csrf_matches;
use crate::console::{session_cookie, Console, CSRF_HEADER};
use crate::wire::tokens::{mutating, Access, Tokens};

/// What the operator API's gate checks: the tokens and, with the console
/// on, its sessions.
#[derive(Clone)]
pub struct Gate {
    /// The bearer tokens.
    pub tokens: Tokens,
    /// The console (`None`: `[console]` off, session cookies are ignored).
    pub console: Option<Arc<Console>>,
}

/// The middleware in front of every operator route but `GET /v1/health`.
pub async fn require_token(State(gate): State<Gate>, req: Request, next: Next) -> Response {
    let header = req.headers().get("authorization");
    if header.is_none() {
        if let Some(console) = &gate.console {
            if let Some(id) = session_cookie(req.headers()).map(str::to_owned) {
                return with_session(console, &id, req, next).await;
            }
        }
    }
    let given = header
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given.and_then(|t| gate.tokens.access(t)) {
        Some(access) => allow(access, req, next).await,
        None => {
            // Never log what was presented: a wrong token may be a near miss.
            tracing::warn!(
                method = %req.method(),
                path = %req.uri().path(),
                presented = given.is_some(),
                "refused an operator API call without a valid token"
            );
            (
                StatusCode::UNAUTHORIZED,
                Json(json!({ "error": "missing or wrong API token (Authorization: Bearer TOKEN from DIR/api.token)" })),
            )
                .into_response()
        }
    }
}

/// A call with the console's session cookie `id`.
async fn with_session(console: &Console, id: &str, req: Request, next: Next) -> Response {
    let Some(session) = console.session(id) else {
        tracing::warn!(
            method = %req.method(),
            path = %req.uri().path(),
            "refused an operator API call with an unknown or expired console session"
        );
        return (
            StatusCode::UNAUTHORIZED,
            Json(
                json!({ "error": "not signed in, or the console session expired: sign in again" }),
            ),
        )
            .into_response();
    };
    if mutating(req.method()) {
        let presented = req.headers().get(CSRF_HEADER).and_then(|v| v.to_str().ok());
        if !csrf_matches(&session, presented) {
            tracing::warn!(
                method = %req.method(),
                path = %req.uri().path(),
                presented = presented.is_some(),
                "refused a state-changing console call without its CSRF token"
            );
            return csrf_refusal();
        }
    }
    allow(session.access, req, next).await
}

/// Runs the call if `access` allows its method.
async fn allow(access: Access, req: Request, next: Next) -> Response {
    match access {
        Access::Operator => next.run(req).await,
        Access::ReadOnly if !mutating(req.method()) => next.run(req).await,
        Access::ReadOnly => {
            tracing::warn!(
                method = %req.method(),
                path = %req.uri().path(),
                "refused a state-changing operator API call made with the read-only token"
            );
            (
                StatusCode::FORBIDDEN,
                Json(json!({ "error": format!(
                    "the read-only API token may only read (GET); {} {} changes state: use the \
                     operator token (DIR/api.token)",
                    req.method(),
                    req.uri().path()
                ) })),
            )
                .into_response()
        }
    }
}
