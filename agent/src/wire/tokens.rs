//! The operator API's two bearer tokens and what each allows: the
//! operator token (every route) and the read-only token (`GET`/`HEAD`
//! only), compared in constant time (`subtle`). Below both the API's
//! gate (`api::auth`) and the console's sign-in (`console`), which turn a
//! token into an `Access`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper::Method;
use subtle::ConstantTimeEq;

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
