//! `CEPH_ARGS`, read as the `rbd` tool reads it: the environment's
//! arguments come before the command line's, so an explicit flag wins. The
//! "early" arguments that pick the cluster and the user (`--cluster`,
//! `--conf`/`-c`, `--id`/`-i`/`--user`, `--name`/`-n`, `--keyring`/`-k`)
//! must be known before librados creates its handle, so ferry reads them
//! here into a [`ClusterSpec`]; every other option in `CEPH_ARGS`
//! (`--mon_host`, `--debug_rbd`, …) is applied by librados itself when it
//! reads its configuration (`rados_conf_read_file` parses the environment
//! after the file, as `rados_conf_parse_env` does).

use std::path::PathBuf;

use super::ClusterSpec;

/// A `CEPH_ARGS` that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CephArgsError {
    /// An option that needs a value came last.
    #[error("CEPH_ARGS: {option} needs a value")]
    MissingValue {
        /// The option.
        option: String,
    },
    /// `--name` of an entity that is not a client.
    #[error("CEPH_ARGS: --name {name:?} is not a client (expected client.ID)")]
    NotAClient {
        /// What was given.
        name: String,
    },
}

/// The early options ferry takes from `CEPH_ARGS`.
#[derive(Clone, Copy)]
enum Early {
    Cluster,
    Conf,
    Id,
    Name,
    Keyring,
}

fn early(option: &str) -> Option<Early> {
    Some(match option {
        "--cluster" => Early::Cluster,
        "--conf" | "-c" => Early::Conf,
        "--id" | "-i" | "--user" => Early::Id,
        "--name" | "-n" => Early::Name,
        "--keyring" | "-k" => Early::Keyring,
        _ => return None,
    })
}

impl ClusterSpec {
    /// This spec with the process' `CEPH_ARGS` applied over it (unchanged
    /// when the variable is unset).
    pub fn with_env_ceph_args(self) -> Result<Self, CephArgsError> {
        match std::env::var("CEPH_ARGS") {
            Ok(args) => self.with_ceph_args(&args),
            Err(_) => Ok(self),
        }
    }

    /// This spec with every option `top` sets applied over it (a
    /// command line over a configuration): `top.cluster` without
    /// `top.conf` drops a configured file, since the name selects one.
    pub fn overlay(mut self, top: &ClusterSpec) -> Self {
        if top.cluster.is_some() {
            self.cluster = top.cluster.clone();
            self.conf = None;
        }
        if top.conf.is_some() {
            self.conf = top.conf.clone();
        }
        if top.client_id.is_some() {
            self.client_id = top.client_id.clone();
        }
        if top.keyring.is_some() {
            self.keyring = top.keyring.clone();
        }
        self
    }

    /// This spec with the early options of `args` (a `CEPH_ARGS` value)
    /// applied over it; the last of a repeated option wins, and `--cluster`
    /// without `--conf` drops a configured file (the cluster name selects
    /// `/etc/ceph/NAME.conf`). Other options are left to librados.
    pub fn with_ceph_args(mut self, args: &str) -> Result<Self, CephArgsError> {
        let mut words = args.split_whitespace();
        let (mut cluster, mut conf) = (None, None);
        while let Some(word) = words.next() {
            if word == "--" {
                break;
            }
            let (option, inline) = match word.split_once('=') {
                Some((o, v)) if o.starts_with("--") => (o, Some(v)),
                _ => (word, None),
            };
            let Some(kind) = early(option) else {
                continue;
            };
            let value = match inline {
                Some(v) => v.to_owned(),
                None => words
                    .next()
                    .ok_or_else(|| CephArgsError::MissingValue {
                        option: option.to_owned(),
                    })?
                    .to_owned(),
            };
            match kind {
                Early::Cluster => cluster = Some(value),
                Early::Conf => conf = Some(PathBuf::from(value)),
                Early::Id => self.client_id = Some(value),
                Early::Name => {
                    let id = value
                        .strip_prefix("client.")
                        .filter(|id| !id.is_empty())
                        .ok_or(CephArgsError::NotAClient {
                            name: value.clone(),
                        })?;
                    self.client_id = Some(id.to_owned());
                }
                Early::Keyring => self.keyring = Some(PathBuf::from(value)),
            }
        }
        if cluster.is_some() {
            self.cluster = cluster;
            self.conf = None;
        }
        if conf.is_some() {
            self.conf = conf;
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(args: &str) -> ClusterSpec {
        ClusterSpec::default().with_ceph_args(args).unwrap()
    }

    #[test]
    fn reads_the_early_options_in_every_spelling() {
        for args in ["--id ferry", "-i ferry", "--user ferry", "--id=ferry"] {
            assert_eq!(spec(args).client_id.as_deref(), Some("ferry"), "{args}");
        }
        for args in [
            "--name client.ferry",
            "-n client.ferry",
            "--name=client.ferry",
        ] {
            assert_eq!(spec(args).client_id.as_deref(), Some("ferry"), "{args}");
        }
        let s = spec("--cluster site-a -k /k/ring --mon_host 10.0.0.1 -c /x.conf");
        assert_eq!(s.cluster.as_deref(), Some("site-a"));
        assert_eq!(s.conf, Some(PathBuf::from("/x.conf")));
        assert_eq!(s.keyring, Some(PathBuf::from("/k/ring")));
        assert_eq!(s.client_id, None, "other options are librados' to read");
        assert_eq!(spec("--keyring=/a").keyring, Some(PathBuf::from("/a")));
    }

    #[test]
    fn layers_over_the_configured_spec() {
        let configured = ClusterSpec {
            cluster: None,
            conf: Some("/etc/ceph/dr.conf".into()),
            client_id: Some("configured".into()),
            keyring: Some("/configured.keyring".into()),
        };
        let s = configured.clone().with_ceph_args("--id env").unwrap();
        assert_eq!(s.client_id.as_deref(), Some("env"));
        assert_eq!(s.conf, configured.conf, "untouched options stay");
        assert_eq!(s.keyring, configured.keyring);
        let s = configured.clone().with_ceph_args("--cluster b").unwrap();
        assert_eq!((s.cluster.as_deref(), s.conf), (Some("b"), None));
        let s = configured
            .with_ceph_args("--id a --id b -- --id c")
            .unwrap();
        assert_eq!(s.client_id.as_deref(), Some("b"), "last wins; -- ends");
        assert_eq!(spec(""), ClusterSpec::default());
    }

    #[test]
    fn overlays_what_the_top_sets_only() {
        let base = spec("--conf /etc/ceph/dr.conf --id configured --keyring /k");
        assert_eq!(base.clone().overlay(&ClusterSpec::default()), base);
        let s = base.clone().overlay(&spec("--id top"));
        assert_eq!(s.client_id.as_deref(), Some("top"));
        assert_eq!((&s.conf, &s.keyring), (&base.conf, &base.keyring));
        let s = base.overlay(&spec("--cluster b"));
        assert_eq!((s.cluster.as_deref(), s.conf), (Some("b"), None));
    }

    #[test]
    fn refuses_what_it_cannot_use() {
        for args in ["--id", "--keyring", "-n"] {
            let e = ClusterSpec::default().with_ceph_args(args).unwrap_err();
            assert!(matches!(e, CephArgsError::MissingValue { .. }), "{args}");
        }
        let e = ClusterSpec::default()
            .with_ceph_args("--name osd.0")
            .unwrap_err();
        assert!(e.to_string().contains("osd.0"), "{e}");
    }
}
