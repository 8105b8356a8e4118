//! The service key `ferry service key` prints on the standby and
//! `ferry service create --key` consumes on the primary: `ferry1.` followed
//! by the base64url (no padding) of a small JSON object. It arrives from an
//! operator's clipboard, so decoding treats it as hostile input.
//!
//! Pure parsing (serde, base64): the `service_key` fuzz target compiles this
//! file on its own.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::control::Timestamp;

/// Prefix of an encoded service key.
pub const KEY_PREFIX: &str = "ferry1.";

/// Longest encoded key accepted (a real one is a few hundred bytes).
pub const MAX_KEY_LEN: usize = 4096;

/// Why a text is not a service key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceKeyError {
    /// The text does not start with `ferry1.`.
    #[error("not a ferry service key: it does not start with '{KEY_PREFIX}'")]
    Prefix,
    /// The text is longer than any key this version issues.
    #[error("not a ferry service key: {len} bytes, at most {MAX_KEY_LEN}")]
    TooLong {
        /// Its length.
        len: usize,
    },
    /// The body is not base64url.
    #[error("not a ferry service key: bad base64url")]
    Base64,
    /// The decoded body is not the key's JSON.
    #[error("not a ferry service key: bad contents ({reason})")]
    Contents {
        /// What serde said.
        reason: String,
    },
    /// A field is present but unusable.
    #[error("not a ferry service key: {field} {reason}")]
    Field {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
}

/// A service key as issued by `ferry service key` (encoded as
/// `ferry1.` + base64url of this JSON).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ServiceKey {
    /// The issuing (standby) site's endpoint, QUIC on UDP and peer API on
    /// TCP: one `HOST:PORT`, or (a site of several standby agents) each
    /// agent's, separated by commas. One field for both, not a new one: an
    /// agent of an earlier version refuses unknown fields
    /// (`deny_unknown_fields`), and a one-endpoint key stays byte for byte
    /// what it was.
    pub endpoint: String,
    /// Its certificate fingerprint (hex).
    pub fingerprint: String,
    /// One-time secret (hex, 32 bytes).
    pub secret: String,
    /// Expiry.
    pub expires_at: Timestamp,
}

impl ServiceKey {
    /// The one-line form.
    pub fn encode(&self) -> String {
        // Serialising plain strings and an integer cannot fail.
        let json = serde_json::to_vec(self).unwrap_or_default();
        format!(
            "{KEY_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
        )
    }

    /// Parses the one-line form (surrounding whitespace ignored) and checks
    /// the fields' shape: a 64-hex-digit fingerprint and secret, a non-empty
    /// endpoint without control characters.
    pub fn decode(text: &str) -> Result<ServiceKey, ServiceKeyError> {
        let text = text.trim();
        if text.len() > MAX_KEY_LEN {
            return Err(ServiceKeyError::TooLong { len: text.len() });
        }
        let body = text
            .strip_prefix(KEY_PREFIX)
            .ok_or(ServiceKeyError::Prefix)?;
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| ServiceKeyError::Base64)?;
        let key: ServiceKey =
            serde_json::from_slice(&json).map_err(|e| ServiceKeyError::Contents {
                reason: e.to_string(),
            })?;
        let hex64 = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex64(&key.fingerprint) {
            return Err(ServiceKeyError::Field {
                field: "fingerprint",
                reason: "must be 64 hex digits",
            });
        }
        if !hex64(&key.secret) {
            return Err(ServiceKeyError::Field {
                field: "secret",
                reason: "must be 64 hex digits",
            });
        }
        if key.endpoint.is_empty() || key.endpoint.chars().any(char::is_control) {
            return Err(ServiceKeyError::Field {
                field: "endpoint",
                reason: "must be a non-empty address without control characters",
            });
        }
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ServiceKey {
        ServiceKey {
            endpoint: "127.0.0.1:7400".into(),
            fingerprint: "ab".repeat(32),
            secret: "cd".repeat(32),
            expires_at: Timestamp(1_700_000_000_000),
        }
    }

    #[test]
    fn a_key_of_several_standby_agents_keeps_the_one_field() {
        let several = ServiceKey {
            endpoint: "10.0.0.1:7400,10.0.0.2:7400".into(),
            ..key()
        };
        let text = several.encode();
        assert_eq!(ServiceKey::decode(&text), Ok(several));
        // What an earlier version issued decodes as before, and an extra
        // `endpoints` field (which an earlier version would refuse) is not
        // how the list travels.
        let json = format!(
            r#"{{"endpoint":"a:1","endpoints":["a:1"],"fingerprint":"{}","secret":"{}","expires_at":1}}"#,
            "ab".repeat(32),
            "cd".repeat(32)
        );
        let extra = format!(
            "{KEY_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
        );
        assert!(matches!(
            ServiceKey::decode(&extra),
            Err(ServiceKeyError::Contents { .. })
        ));
    }

    #[test]
    fn round_trips_and_refuses_damage() {
        let text = key().encode();
        assert_eq!(ServiceKey::decode(&text), Ok(key()));
        assert_eq!(ServiceKey::decode(&format!("  {text}\n")), Ok(key()));
        assert_eq!(
            ServiceKey::decode("ferry1.!!!"),
            Err(ServiceKeyError::Base64)
        );
        assert_eq!(ServiceKey::decode(&text[1..]), Err(ServiceKeyError::Prefix));
        let long = format!("{KEY_PREFIX}{}", "A".repeat(MAX_KEY_LEN));
        assert!(matches!(
            ServiceKey::decode(&long),
            Err(ServiceKeyError::TooLong { .. })
        ));
    }

    #[test]
    fn refuses_malformed_fields() {
        for bad in [
            ServiceKey {
                fingerprint: "zz".repeat(32),
                ..key()
            },
            ServiceKey {
                secret: "cd".into(),
                ..key()
            },
            ServiceKey {
                endpoint: "host\n:1".into(),
                ..key()
            },
            ServiceKey {
                endpoint: String::new(),
                ..key()
            },
        ] {
            assert!(
                matches!(
                    ServiceKey::decode(&bad.encode()),
                    Err(ServiceKeyError::Field { .. })
                ),
                "{bad:?}"
            );
        }
    }
}
