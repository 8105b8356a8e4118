//! The web console (`[console] enabled = true`): a small single-page app of
//! hand-written static files (`agent/console/`, committed as they are, no
//! build step) embedded in the binary and served under `/ui/` on the
//! operator API listener (same address, same TLS). The pages call the same
//! operator API (`/v1/…`) as the CLI: there is no private route, no
//! server-side template and nothing fetched at run time.
//!
//! The server side is:
//! - `assets.rs`: the embedded files and the headers every `/ui` answer
//!   carries (CSP, `nosniff`, no referrer);
//! - `session.rs`: sign-in sessions in memory (cookie, CSRF token, expiry);
//! - `routes.rs`: `POST/GET/DELETE /ui/session` (sign in, who am I, sign
//!   out) and the `/ui` router;
//! - `api::auth::require_token`: accepts the session cookie on `/v1`
//!   instead of a bearer token, with the CSRF header on every state-changing
//!   method.

pub mod assets;
pub mod routes;
pub mod session;

use std::sync::Mutex;
use std::time::Instant;

use crate::sync_util::lock;
use crate::wire::tokens::{Access, Tokens};
use session::{SessionStore, SessionView};

pub use routes::router;

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "ferry_session";
/// Header carrying the session's CSRF token on state-changing calls.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// The console of one agent: who may sign in, the sessions, how cookies are
/// set.
pub struct Console {
    tokens: Tokens,
    sessions: Mutex<SessionStore>,
    /// Cookies get `Secure` (the operator API serves TLS).
    secure: bool,
    /// The agent's id (certificate fingerprint), shown by the pages.
    agent: String,
    /// Held by each refused sign-in while it waits out its delay: wrong
    /// tokens are answered one at a time (see `routes::LOGIN_FAILURE_DELAY`).
    failed_logins: tokio::sync::Mutex<()>,
}

impl Console {
    /// A console checking sign-ins against `tokens`; `secure`: the API
    /// listener serves TLS; `agent`: the agent's id.
    pub fn new(tokens: Tokens, secure: bool, agent: String) -> Self {
        Self {
            tokens,
            sessions: Mutex::new(SessionStore::default()),
            secure,
            agent,
            failed_logins: tokio::sync::Mutex::new(()),
        }
    }

    /// Starts a session for a correct token; `None` for a wrong one.
    fn sign_in(&self, token: &str) -> Option<(String, SessionView)> {
        let access: Access = self.tokens.access(token)?;
        Some(lock(&self.sessions).create(access, Instant::now()))
    }

    /// The valid session of cookie value `id`, marked used.
    pub fn session(&self, id: &str) -> Option<SessionView> {
        lock(&self.sessions).touch(id, Instant::now())
    }

    /// Ends the session of cookie value `id`.
    fn sign_out(&self, id: &str) -> bool {
        lock(&self.sessions).remove(id)
    }

    /// The `Set-Cookie` value that stores session `id`.
    fn cookie(&self, id: &str) -> String {
        format!(
            "{SESSION_COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/{}",
            if self.secure { "; Secure" } else { "" }
        )
    }

    /// The `Set-Cookie` value that removes the session cookie.
    fn clear_cookie(&self) -> String {
        format!(
            "{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{}",
            if self.secure { "; Secure" } else { "" }
        )
    }
}

/// The session cookie's value in a `Cookie` request header, if any.
pub fn session_cookie(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue};
    use std::sync::Arc;

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        assert_eq!(session_cookie(&h), None);
        h.append("cookie", HeaderValue::from_static("a=1; ferry_sessionx=2"));
        assert_eq!(session_cookie(&h), None);
        h.append(
            "cookie",
            HeaderValue::from_static("b=3;ferry_session=abc_-9 ; c=4"),
        );
        assert_eq!(session_cookie(&h), Some("abc_-9"));
    }

    #[test]
    fn cookies_are_http_only_strict_and_secure_only_with_tls() {
        let tokens = Tokens {
            operator: Arc::new("op".into()),
            read_only: Some(Arc::new("ro".into())),
        };
        let plain = Console::new(tokens.clone(), false, "id".into());
        let c = plain.cookie("xyz");
        assert_eq!(c, "ferry_session=xyz; HttpOnly; SameSite=Strict; Path=/");
        let tls = Console::new(tokens, true, "id".into());
        assert!(tls.cookie("xyz").ends_with("; Secure"));
        assert!(tls.clear_cookie().contains("Max-Age=0"));
        assert!(tls.sign_in("nope").is_none());
        let (id, view) = tls.sign_in("ro").unwrap();
        assert_eq!(view.access, Access::ReadOnly);
        assert!(tls.session(&id).is_some());
        assert!(tls.sign_out(&id));
        assert!(tls.session(&id).is_none());
    }
}
