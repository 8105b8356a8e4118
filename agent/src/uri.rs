//! Operator-facing addresses: `file:/path` and `rbd:POOL[/NAMESPACE]/IMAGE` sources and
//! `quic://HOST:PORT/NAME` standby targets.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use ferry_protocol::ImageName;

/// Why an address could not be understood.
#[derive(Debug, thiserror::Error)]
pub enum UriError {
    /// The source is not of a supported kind.
    #[error(
        "unsupported source {0:?}: use file:/path/to/image.raw (a raw image file or block device), rbd:POOL[/NAMESPACE]/IMAGE or diff:DIR (rbd export-diff files)"
    )]
    UnsupportedSource(String),
    /// An `rbd:` source that does not parse.
    #[error(transparent)]
    Rbd(#[from] ferry_engine::rbd::RbdError),
    /// The target is not `quic://HOST:PORT/NAME`.
    #[error("bad target {input:?}: {reason} (expected quic://HOST:PORT/NAME)")]
    BadTarget {
        /// What was given.
        input: String,
        /// What is wrong.
        reason: String,
    },
}

/// Where changed extents come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceUri {
    /// A raw image file or block device.
    File(PathBuf),
    /// An RBD image (`rbd:POOL[/NAMESPACE]/IMAGE`).
    Rbd(ferry_engine::rbd::RbdSpec),
    /// A directory of `rbd export-diff` files applied in name order (`diff:DIR`).
    Diff(PathBuf),
}

impl std::fmt::Display for SourceUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(path) => write!(f, "file:{}", path.display()),
            Self::Rbd(spec) => write!(f, "rbd:{spec}"),
            Self::Diff(dir) => write!(f, "diff:{}", dir.display()),
        }
    }
}

impl SourceUri {
    /// Parses `file:/path` (a bare absolute or relative path is taken as a
    /// file too) or `rbd:POOL[/NAMESPACE]/IMAGE`.
    pub fn parse(input: &str) -> Result<Self, UriError> {
        if let Some(dir) = input.strip_prefix("diff:") {
            return Ok(Self::Diff(PathBuf::from(dir)));
        }
        if let Some(spec) = input.strip_prefix("rbd:") {
            let spec = ferry_engine::rbd::RbdSpec::parse(spec)?;
            if spec.snap.is_some() {
                return Err(UriError::UnsupportedSource(format!(
                    "{input} (replicate the image; ferry takes its own snapshots)"
                )));
            }
            return Ok(Self::Rbd(spec));
        }
        if let Some(path) = input.strip_prefix("file://") {
            return Ok(Self::File(PathBuf::from(path)));
        }
        if let Some(path) = input.strip_prefix("file:") {
            return Ok(Self::File(PathBuf::from(path)));
        }
        if input.contains("://") || input.starts_with("rbd:") {
            return Err(UriError::UnsupportedSource(input.to_owned()));
        }
        Ok(Self::File(PathBuf::from(input)))
    }
}

/// A standby image: agent address plus image name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetUri {
    /// The standby agent's UDP address.
    pub addr: SocketAddr,
    /// The image's name on the standby.
    pub image: ImageName,
}

impl TargetUri {
    /// Parses `quic://HOST:PORT/NAME`.
    pub fn parse(input: &str) -> Result<Self, UriError> {
        let bad = |reason: &str| UriError::BadTarget {
            input: input.to_owned(),
            reason: reason.to_owned(),
        };
        let rest = input
            .strip_prefix("quic://")
            .ok_or_else(|| bad("missing quic:// prefix"))?;
        let (host_port, name) = rest.split_once('/').ok_or_else(|| bad("missing /NAME"))?;
        let image = ImageName::new(name).map_err(|e| bad(&e.to_string()))?;
        let addr = host_port
            .to_socket_addrs()
            .map_err(|e| bad(&format!("cannot resolve {host_port}: {e}")))?
            .next()
            .ok_or_else(|| bad("host resolves to no address"))?;
        Ok(Self { addr, image })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sources_and_targets() {
        assert_eq!(
            SourceUri::parse("file:/data/vm1.raw").unwrap(),
            SourceUri::File("/data/vm1.raw".into())
        );
        match SourceUri::parse("rbd:pool/img").unwrap() {
            SourceUri::Rbd(spec) => {
                assert_eq!((spec.pool.as_str(), spec.image.as_str()), ("pool", "img"))
            }
            other => panic!("{other:?}"),
        }
        match SourceUri::parse("rbd:pool/tenant/img").unwrap() {
            SourceUri::Rbd(spec) => assert_eq!(spec.namespace.as_deref(), Some("tenant")),
            other => panic!("{other:?}"),
        }
        assert!(SourceUri::parse("rbd:pool/img@snap").is_err());
        assert!(SourceUri::parse("rbd:img").is_err());
        assert_eq!(
            SourceUri::parse("diff:/spool/vm1").unwrap(),
            SourceUri::Diff("/spool/vm1".into())
        );
        let t = TargetUri::parse("quic://127.0.0.1:7400/vm1").unwrap();
        assert_eq!(t.addr, "127.0.0.1:7400".parse().unwrap());
        assert_eq!(t.image.as_str(), "vm1");
        assert!(TargetUri::parse("quic://127.0.0.1:7400/../etc").is_err());
        assert!(TargetUri::parse("quic://127.0.0.1:7400").is_err());
        assert!(TargetUri::parse("tcp://127.0.0.1:7400/x").is_err());
    }
}
