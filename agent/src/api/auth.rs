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

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::console::routes::csrf_refusal;
use crate::console::session::csrf_matches;
use crate::console::{session_cookie, Console, CSRF_HEADER};

/// File holding the read-only API token in the agent directory (unless
/// `[api] read_only_token_file` says otherwise).
pub const READ_ONLY_TOKEN_FILE: &str = "api.readonly.token";

/// The tokens the operator API accepts.
#[derive(Clone)]
pub struct Tokens {
    /// May call every route.
    pub operator: Arc<String>,
    /// May call only routes that change nothing (`None`: no such token).
    pub read_only: Option<Arc<String>>,
}

/// What a presented token allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Every route.
    Operator,
    /// `GET` and `HEAD` only.
    ReadOnly,
}

impl Tokens {
    /// What `presented` allows, if anything. Both tokens are always
    /// compared, each in constant time.
    pub fn access(&self, presented: &str) -> Option<Access> {
        let given = presented.as_bytes();
        let operator: bool = given.ct_eq(self.operator.as_bytes()).into();
        let read_only: bool = match &self.read_only {
            Some(t) => given.ct_eq(t.as_bytes()).into(),
            None => false,
        };
        match (operator, read_only) {
            (true, _) => Some(Access::Operator),
            (false, true) => Some(Access::ReadOnly),
            (false, false) => None,
        }
    }
}

/// Whether a call with `method` may change state (refused to the read-only
/// token).
pub fn mutating(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD)
}

/// Where the read-only token lives for agent directory `dir`.
pub fn read_only_token_path(dir: &Path, configured: Option<&Path>) -> PathBuf {
    configured
        .map(Path::to_path_buf)
        .unwrap_or_else(|| dir.join(READ_ONLY_TOKEN_FILE))
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(read_only: Option<&str>) -> Tokens {
        Tokens {
            operator: Arc::new("op-token".into()),
            read_only: read_only.map(|t| Arc::new(t.to_owned())),
        }
    }

    #[test]
    fn each_token_gets_its_access_and_nothing_else_gets_any() {
        let t = tokens(Some("ro-token"));
        assert_eq!(t.access("op-token"), Some(Access::Operator));
        assert_eq!(t.access("ro-token"), Some(Access::ReadOnly));
        for wrong in [
            "",
            "op-toke",
            "op-tokeN",
            "op-token ",
            "ro-tokenx",
            "RO-TOKEN",
        ] {
            assert_eq!(t.access(wrong), None, "{wrong:?}");
        }
        let t = tokens(None);
        assert_eq!(t.access("ro-token"), None);
        assert_eq!(t.access(""), None);
    }

    #[test]
    fn only_get_and_head_count_as_reading() {
        assert!(!mutating(&Method::GET));
        assert!(!mutating(&Method::HEAD));
        for m in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
            assert!(mutating(&m), "{m}");
        }
    }
}
