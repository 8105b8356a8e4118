//! The Ceph identity options every command that touches RBD takes
//! (`--cluster`, `--conf`, `--id`, `--keyring`), and how they layer: the
//! command line over `CEPH_ARGS` over the agent directory's `[ceph]` over
//! librados' defaults (`/etc/ceph/ceph.conf`, `client.admin`) — the order
//! the `rbd` tool uses for its command line, `CEPH_ARGS` and ceph.conf.

use std::path::{Path, PathBuf};

use anyhow::Result;
use ferry_engine::rbd::ClusterSpec;

use crate::config::{config_path, AgentConfig};

/// Which Ceph cluster, and as which cephx user.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct CephArgs {
    /// Ceph cluster name of rbd: images (selects /etc/ceph/NAME.conf and
    /// /etc/ceph/NAME.client.ID.keyring); default from CEPH_ARGS, then the
    /// agent's config.toml [ceph], else "ceph".
    #[arg(long, value_name = "NAME")]
    pub cluster: Option<String>,
    /// Ceph configuration file of rbd: images.
    #[arg(long, value_name = "PATH")]
    pub conf: Option<PathBuf>,
    /// Ceph user (client id, without "client."), as `rbd --id`; default from
    /// CEPH_ARGS, then config.toml [ceph] client_id, else "admin".
    #[arg(long = "id", value_name = "ID")]
    pub id: Option<String>,
    /// Keyring file of that user, as `rbd --keyring`.
    #[arg(long, value_name = "PATH")]
    pub keyring: Option<PathBuf>,
}

impl CephArgs {
    /// Whether no option was given.
    pub fn is_empty(&self) -> bool {
        self.cluster.is_none() && self.conf.is_none() && self.id.is_none() && self.keyring.is_none()
    }

    /// These options as a spec (unset fields `None`).
    pub fn spec(&self) -> ClusterSpec {
        ClusterSpec {
            cluster: self.cluster.clone(),
            conf: self.conf.clone(),
            client_id: self.id.clone(),
            keyring: self.keyring.clone(),
        }
    }

    /// These options applied over `base` (`--cluster` without `--conf`
    /// drops a configured file: the name selects one).
    pub fn over(&self, base: ClusterSpec) -> ClusterSpec {
        base.overlay(&self.spec())
    }

    /// The cluster of a command without an agent directory: these options
    /// over `CEPH_ARGS` over librados' defaults.
    pub fn standalone(&self) -> Result<ClusterSpec> {
        Ok(self.over(ClusterSpec::default().with_env_ceph_args()?))
    }

    /// The cluster of a command run with agent directory `dir`: these
    /// options over `CEPH_ARGS` over `DIR/config.toml`'s `[ceph]`.
    pub fn for_dir(&self, dir: &Path) -> Result<ClusterSpec> {
        let config = AgentConfig::load(config_path(dir, None).as_deref())?;
        Ok(self.over(config.ceph))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_what_they_name_only() {
        let base = ClusterSpec {
            cluster: None,
            conf: Some("/etc/ceph/dr.conf".into()),
            client_id: Some("configured".into()),
            keyring: Some("/configured".into()),
        };
        assert!(CephArgs::default().is_empty());
        assert_eq!(CephArgs::default().over(base.clone()), base);
        let flags = CephArgs {
            id: Some("ferry".into()),
            ..CephArgs::default()
        };
        assert!(!flags.is_empty());
        let s = flags.over(base.clone());
        assert_eq!(s.client_id.as_deref(), Some("ferry"));
        assert_eq!(
            (s.conf, s.keyring),
            (base.conf.clone(), base.keyring.clone())
        );
        let s = CephArgs {
            cluster: Some("site-b".into()),
            keyring: Some("/k".into()),
            ..CephArgs::default()
        }
        .over(base);
        assert_eq!(s.cluster.as_deref(), Some("site-b"));
        assert_eq!(s.conf, None, "--cluster selects its own conf");
        assert_eq!(s.keyring, Some(PathBuf::from("/k")));
    }
}
