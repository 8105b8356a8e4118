//! Optional TLS on the operator API (`[api] tls`), and how the `ferry` CLI
//! trusts it.
//!
//! The server presents the agent's own certificate, or an operator-given
//! chain and key (PEM files). The client **pins the SHA-256 fingerprint** of
//! the served (leaf) certificate, as agents already pin each other
//! (`ferry_engine::identity`): the agent's own certificate is self-signed
//! for the name `ferry-agent`, so no CA or host-name check could accept it,
//! while its fingerprint is what `ferry-agent init` prints and what
//! operators already handle; an operator-given certificate has a
//! fingerprint too (`openssl x509 -noout -fingerprint -sha256`). A pin
//! names exactly one certificate: a CA-issued certificate renewed under the
//! same CA needs the new fingerprint given to clients (`DIR/api.fingerprint`
//! is rewritten at each start for `ferry --dir`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferry_engine::identity::fingerprint_of;
use ferry_engine::transport::PinnedServerVerifier;
use ferry_protocol::AgentId;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::tls::TlsError;

/// ALPN of the operator API over TLS (plain HTTP/1.1, so `curl` works).
const HTTP1_ALPN: &[u8] = b"http/1.1";

/// Why the operator API's certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ApiCertError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("[api] {what} {path}: {reason}")]
    Pem {
        /// "tls_cert" or "tls_key".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The key file can be read by anyone.
    #[error("[api] tls_key {path} has mode {mode:o}: it must not be readable by others (chmod o-rwx it)")]
    InsecureKey {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

/// A certificate chain (leaf first) and its key, ready to serve.
pub struct ApiCert {
    /// The chain.
    pub chain: Vec<CertificateDer<'static>>,
    /// The key.
    pub key: PrivateKeyDer<'static>,
}

impl ApiCert {
    /// The fingerprint clients pin: SHA-256 of the leaf certificate.
    pub fn fingerprint(&self) -> AgentId {
        fingerprint_of(&self.chain[0])
    }

    /// Loads an operator-given chain and key (PEM). The key may be readable
    /// by its group (`ssl-cert` on Debian), not by others.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, ApiCertError> {
        use std::os::unix::fs::PermissionsExt;
        let pem = |what, path: &Path, reason: String| ApiCertError::Pem {
            what,
            path: path.to_path_buf(),
            reason,
        };
        let chain = CertificateDer::pem_file_iter(cert)
            .map_err(|e| pem("tls_cert", cert, e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem("tls_cert", cert, e.to_string()))?;
        if chain.is_empty() {
            return Err(pem("tls_cert", cert, "no CERTIFICATE block".into()));
        }
        let mode = std::fs::metadata(key)
            .map_err(|e| pem("tls_key", key, e.to_string()))?
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o007 != 0 {
            return Err(ApiCertError::InsecureKey {
                path: key.to_path_buf(),
                mode,
            });
        }
        let key_der =
            PrivateKeyDer::from_pem_file(key).map_err(|e| pem("tls_key", key, e.to_string()))?;
        Ok(Self {
            chain,
            key: key_der,
        })
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Server configuration of the operator API: TLS 1.3, no client
/// certificates (callers show a bearer token).
pub fn server_config(cert: ApiCert) -> Result<rustls::ServerConfig, TlsError> {
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_single_cert(cert.chain, cert.key)
        .map_err(TlsError::Config)?;
    tls.alpn_protocols = vec![HTTP1_ALPN.to_vec()];
    Ok(tls)
}

/// Client configuration accepting only a server certificate of fingerprint
/// `expected`.
pub fn client_config(expected: AgentId) -> Result<rustls::ClientConfig, TlsError> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .dangerous()
        .with_custom_certificate_verifier(PinnedServerVerifier::new(expected))
        .with_no_client_auth();
    tls.alpn_protocols = vec![HTTP1_ALPN.to_vec()];
    Ok(tls)
}

/// Parses a fingerprint as operators copy it: 64 hex digits, upper or lower
/// case, with or without the colons `openssl x509 -fingerprint` prints, and
/// with or without its `sha256 Fingerprint=` prefix.
pub fn parse_fingerprint(text: &str) -> Option<AgentId> {
    let text = text.trim();
    let text = text.rsplit_once('=').map_or(text, |(_, fp)| fp);
    let hex: String = text
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    AgentId::from_hex(&hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_as_openssl_and_ferry_print_them() {
        let hex = "ab".repeat(32);
        let want = AgentId::from_hex(&hex).unwrap();
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(parse_fingerprint(&hex), Some(want));
        assert_eq!(parse_fingerprint(&colons), Some(want));
        assert_eq!(
            parse_fingerprint(&format!("sha256 Fingerprint={colons}\n")),
            Some(want)
        );
        assert_eq!(parse_fingerprint("abcd"), None);
        assert_eq!(parse_fingerprint(&"zz".repeat(32)), None);
    }

    #[test]
    fn a_world_readable_key_is_refused_and_a_missing_cert_is_named() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let certified = identity_pair(dir.path());
        let key = dir.path().join("identity/key.pem");
        let cert = dir.path().join("identity/cert.pem");
        let loaded = ApiCert::load(&cert, &key).unwrap();
        assert_eq!(loaded.fingerprint(), certified);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = ApiCert::load(&cert, &key).err().unwrap();
        assert!(
            matches!(err, ApiCertError::InsecureKey { mode: 0o644, .. }),
            "{err}"
        );
        let err = ApiCert::load(&dir.path().join("nope.pem"), &key)
            .err()
            .unwrap();
        assert!(err.to_string().contains("nope.pem"), "{err}");
    }

    /// Creates an agent identity in `dir` (a key and self-signed
    /// certificate, as an operator might reuse) and returns its fingerprint.
    fn identity_pair(dir: &Path) -> AgentId {
        ferry_engine::identity::Identity::create(dir)
            .unwrap()
            .fingerprint()
    }
}
