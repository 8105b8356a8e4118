//! Agent identity: key pair and self-signed certificate, fingerprints.
//!
//! Every agent owns one ECDSA P-256 key pair and a self-signed certificate,
//! kept in `DIR/identity/` (`key.pem` mode 0600, `cert.pem`). Agents name and
//! trust each other by the certificate's fingerprint: SHA-256 of its DER
//! encoding, the same value `openssl x509 -fingerprint -sha256` prints.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ferry_protocol::AgentId;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

/// Why an identity could not be created or loaded.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A file could not be read or written.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// `init` found an identity already there and will not overwrite it.
    #[error(
        "an identity already exists in {dir} (fingerprint {fingerprint}); refusing to overwrite it"
    )]
    AlreadyExists {
        /// The identity directory.
        dir: PathBuf,
        /// Fingerprint of the existing certificate.
        fingerprint: AgentId,
    },
    /// No identity in the directory.
    #[error("no agent identity in {dir}: run `ferry-agent init --dir {agent_dir}` first")]
    Missing {
        /// The identity directory.
        dir: PathBuf,
        /// The agent directory to pass to init.
        agent_dir: PathBuf,
    },
    /// The private key is readable by group or others.
    #[error("private key {path} has mode {mode:o}: it must not be readable by group or others (chmod 600 it)")]
    InsecureKey {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The PEM contents are not a usable key or certificate.
    #[error("{path} is not a valid PEM {what}: {reason}")]
    BadPem {
        /// The file.
        path: PathBuf,
        /// "certificate" or "private key".
        what: &'static str,
        /// Parser's explanation.
        reason: String,
    },
    /// Key generation or self-signing failed.
    #[error("generating the key pair or certificate failed: {0}")]
    Generate(#[from] rcgen::Error),
}

/// An agent's key pair and certificate, loaded in memory.
#[derive(Debug)]
pub struct Identity {
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    fingerprint: AgentId,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            cert: self.cert.clone(),
            key: self.key.clone_key(),
            fingerprint: self.fingerprint,
        }
    }
}

/// SHA-256 fingerprint of a DER certificate.
pub fn fingerprint_of(cert_der: &[u8]) -> AgentId {
    let digest = Sha256::digest(cert_der);
    let mut out = [0u8; 32];
    out.copy_from_slice(&digest);
    AgentId(out)
}

/// Where the identity files of agent directory `dir` live.
pub fn identity_dir(dir: &Path) -> PathBuf {
    dir.join("identity")
}

impl Identity {
    /// Creates a new identity in `DIR/identity/`, refusing to overwrite one.
    pub fn create(dir: &Path) -> Result<Self, IdentityError> {
        let id_dir = identity_dir(dir);
        if id_dir.join("cert.pem").exists() {
            let existing = Self::load(dir)?;
            return Err(IdentityError::AlreadyExists {
                dir: id_dir,
                fingerprint: existing.fingerprint,
            });
        }
        fs::create_dir_all(&id_dir).map_err(|source| IdentityError::Io {
            op: "creating",
            path: id_dir.clone(),
            source,
        })?;
        fs::set_permissions(&id_dir, fs::Permissions::from_mode(0o700)).map_err(|source| {
            IdentityError::Io {
                op: "restricting",
                path: id_dir.clone(),
                source,
            }
        })?;
        let certified = rcgen::generate_simple_self_signed(vec!["ferry-agent".to_owned()])?;
        let key_pem = certified.signing_key.serialize_pem();
        let cert_pem = certified.cert.pem();
        write_new_file(&id_dir.join("key.pem"), key_pem.as_bytes(), 0o600)?;
        write_new_file(&id_dir.join("cert.pem"), cert_pem.as_bytes(), 0o644)?;
        Self::load(dir)
    }

    /// Loads the identity of agent directory `dir`; refuses a key readable by others.
    pub fn load(dir: &Path) -> Result<Self, IdentityError> {
        let id_dir = identity_dir(dir);
        let cert_path = id_dir.join("cert.pem");
        let key_path = id_dir.join("key.pem");
        if !cert_path.exists() || !key_path.exists() {
            return Err(IdentityError::Missing {
                dir: id_dir,
                agent_dir: dir.to_path_buf(),
            });
        }
        let meta = fs::metadata(&key_path).map_err(|source| IdentityError::Io {
            op: "inspecting",
            path: key_path.clone(),
            source,
        })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(IdentityError::InsecureKey {
                path: key_path,
                mode,
            });
        }
        let cert_bytes = read(&cert_path)?;
        let key_bytes = read(&key_path)?;
        let cert =
            CertificateDer::from_pem_slice(&cert_bytes).map_err(|e| IdentityError::BadPem {
                path: cert_path.clone(),
                what: "certificate",
                reason: e.to_string(),
            })?;
        let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| IdentityError::BadPem {
            path: key_path.clone(),
            what: "private key",
            reason: e.to_string(),
        })?;
        let fingerprint = fingerprint_of(&cert);
        Ok(Self {
            cert,
            key,
            fingerprint,
        })
    }

    /// The certificate fingerprint that names this agent.
    pub fn fingerprint(&self) -> AgentId {
        self.fingerprint
    }

    /// The certificate (DER).
    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The private key (DER).
    pub fn key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, IdentityError> {
    fs::read(path).map_err(|source| IdentityError::Io {
        op: "reading",
        path: path.to_path_buf(),
        source,
    })
}

fn write_new_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), IdentityError> {
    let io_err = |op, source| IdentityError::Io {
        op,
        path: path.to_path_buf(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| io_err("creating", e))?;
    file.write_all(bytes).map_err(|e| io_err("writing", e))?;
    file.sync_all().map_err(|e| io_err("syncing", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_then_load_gives_same_fingerprint_and_private_key_mode() {
        let dir = tempfile::tempdir().unwrap();
        let created = Identity::create(dir.path()).unwrap();
        let loaded = Identity::load(dir.path()).unwrap();
        assert_eq!(created.fingerprint(), loaded.fingerprint());
        let mode = fs::metadata(dir.path().join("identity/key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn init_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        Identity::create(dir.path()).unwrap();
        assert!(matches!(
            Identity::create(dir.path()),
            Err(IdentityError::AlreadyExists { .. })
        ));
    }

    #[test]
    fn world_readable_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        Identity::create(dir.path()).unwrap();
        let key = dir.path().join("identity/key.pem");
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        let err = Identity::load(dir.path()).unwrap_err();
        assert!(
            matches!(err, IdentityError::InsecureKey { mode: 0o644, .. }),
            "{err}"
        );
    }

    #[test]
    fn missing_identity_says_how_to_create_one() {
        let dir = tempfile::tempdir().unwrap();
        let err = Identity::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("ferry-agent init"), "{err}");
    }
}
