//! The agent's TOML configuration, parsed into validated settings.
//!
//! Looked up at `--config FILE`, else `DIR/config.toml` if it exists; every
//! key is optional. Command-line flags override the file. `SIGHUP` re-reads
//! the file and applies what can change live (QoS limits, trusted peers).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ferry_engine::pipeline::PipelineConfig;
use ferry_engine::transport::TransportSettings;
use ferry_protocol::AgentId;
use serde::Deserialize;

use crate::units::{parse_bytes, parse_rate, UnitError};

mod control;
mod transport;
pub use control::ControlStore;
use control::RawControl;
use transport::{apply_transport, RawTransport};

/// Why the configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading config {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("config {path}: {source}")]
    Parse {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: toml::de::Error,
    },
    /// A value is out of range or malformed.
    #[error("config {path}: {key}: {reason}")]
    Invalid {
        /// File (or "command line").
        path: PathBuf,
        /// Offending key.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The `CEPH_ARGS` environment variable cannot be used.
    #[error(transparent)]
    CephArgs(#[from] ferry_engine::rbd::CephArgsError),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    #[serde(default)]
    trust: Vec<String>,
    #[serde(default)]
    qos: RawQos,
    #[serde(default)]
    standby: RawStandby,
    #[serde(default)]
    transport: RawTransport,
    #[serde(default)]
    pipeline: RawPipeline,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    ceph: RawCeph,
    #[serde(default)]
    api: RawApi,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    source: RawSource,
    #[serde(default)]
    console: RawConsole,
    #[serde(default)]
    control: RawControl,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConsole {
    enabled: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    accept_changes_at_rest: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    listen: Option<String>,
    read_only_token_file: Option<PathBuf>,
    tls: Option<bool>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
}

/// How the operator API is served over TLS (`[api] tls = true`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiTls {
    /// With the agent's own certificate (`DIR/identity/cert.pem`); clients
    /// pin its fingerprint, the one `ferry-agent init` prints.
    Own,
    /// With an operator-given certificate chain and key (PEM files).
    Files {
        /// Certificate chain, leaf first.
        cert: PathBuf,
        /// Private key.
        key: PathBuf,
    },
}

/// Default address of the agent's HTTP API (loopback only).
pub const DEFAULT_API_LISTEN: &str = "127.0.0.1:7480";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCeph {
    cluster: Option<String>,
    conf: Option<PathBuf>,
    client_id: Option<String>,
    keyring: Option<PathBuf>,
    coalesce_gap: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQos {
    receive_limit: Option<String>,
    send_limit: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStandby {
    retention: Option<usize>,
    backend: Option<String>,
    rbd_pool: Option<String>,
    rbd_namespace: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPipeline {
    workers: Option<usize>,
    zstd_level: Option<i32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<String>,
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per event.
    Json,
    /// Structured entries in the systemd journal.
    Journald,
}

/// Where this agent keeps standby images.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StandbyBackend {
    /// Raw files under the agent directory (`images/NAME.raw`).
    Files,
    /// Images of an RBD pool (named as the primary names them); recovery
    /// points are RBD snapshots.
    Rbd {
        /// The pool.
        pool: String,
        /// The pool's RBD namespace (`None`: the default namespace).
        namespace: Option<String>,
    },
}

/// Validated agent configuration.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Address to listen on, if configured.
    pub listen: Option<String>,
    /// Trusted peer fingerprints.
    pub trust: Vec<AgentId>,
    /// Aggregate limit for writes into standby images (bytes/s).
    pub receive_limit: Option<u64>,
    /// Sender limit used by `ferry sync` with this directory (bytes/s).
    pub send_limit: Option<u64>,
    /// Recovery points kept restorable per standby image.
    pub retention: usize,
    /// QUIC settings.
    pub transport: TransportSettings,
    /// Pipeline settings.
    pub pipeline: PipelineConfig,
    /// Log format.
    pub log_format: LogFormat,
    /// Where standby images live.
    pub standby_backend: StandbyBackend,
    /// The Ceph cluster of `rbd:` images and of an RBD standby.
    pub ceph: ferry_engine::rbd::ClusterSpec,
    /// RBD sources: bridge gaps up to this many bytes between changed
    /// extents of one object (`None`: derived from the send limit).
    pub coalesce_gap: Option<u32>,
    /// Where the operator HTTP API listens (`[api] listen`, default
    /// [`DEFAULT_API_LISTEN`]).
    pub api_listen: String,
    /// `[api] tls`: serve the operator API over TLS (`None`: plain HTTP).
    pub api_tls: Option<ApiTls>,
    /// `[api] read_only_token_file`: the read-only API token (default
    /// `DIR/api.readonly.token`, created mode 0600 when missing).
    pub api_read_only_token_file: Option<PathBuf>,
    /// Where the Prometheus endpoint listens (`[metrics] listen`; `None`:
    /// no endpoint).
    pub metrics_listen: Option<String>,
    /// `[source] accept_changes_at_rest`: replicate blocks of file sources
    /// that changed although nothing wrote them (default: refuse the cycle).
    pub accept_changes_at_rest: bool,
    /// `[console] enabled`: serve the web console under `/ui/` on the
    /// operator API listener (default off).
    pub console_enabled: bool,
    /// `[control] store`: where the control state lives (default: SQLite).
    pub control_store: ControlStore,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            listen: None,
            trust: Vec::new(),
            receive_limit: None,
            send_limit: None,
            retention: 5,
            transport: TransportSettings::default(),
            pipeline: PipelineConfig::default(),
            log_format: LogFormat::Text,
            standby_backend: StandbyBackend::Files,
            ceph: ferry_engine::rbd::ClusterSpec::default(),
            coalesce_gap: None,
            api_listen: DEFAULT_API_LISTEN.to_owned(),
            api_tls: None,
            api_read_only_token_file: None,
            metrics_listen: None,
            accept_changes_at_rest: false,
            console_enabled: false,
            control_store: ControlStore::Sqlite,
        }
    }
}

/// `--cluster`/`--conf`/`--id`/`--keyring` of this process' command line
/// (`ferry-agent`), applied over `CEPH_ARGS` and the file's `[ceph]` by
/// every [`AgentConfig::load`] of the process, SIGHUP reloads included.
static COMMAND_LINE_CEPH: OnceLock<ferry_engine::rbd::ClusterSpec> = OnceLock::new();

/// Sets the Ceph options of this process' command line (once, before the
/// first [`AgentConfig::load`]; a second call is ignored).
pub fn set_command_line_ceph(spec: ferry_engine::rbd::ClusterSpec) {
    let _ = COMMAND_LINE_CEPH.set(spec);
}

/// The config file used for agent directory `dir`: `explicit`, else `DIR/config.toml` if present.
pub fn config_path(dir: &Path, explicit: Option<&Path>) -> Option<PathBuf> {
    match explicit {
        Some(p) => Some(p.to_path_buf()),
        None => {
            let default = dir.join("config.toml");
            default.exists().then_some(default)
        }
    }
}

impl AgentConfig {
    /// Loads `path` (or the defaults when `None`).
    /// The process' `CEPH_ARGS` (`--id`, `--keyring`, `--cluster`,
    /// `--conf`) override the file's `[ceph]`, as they override ceph.conf
    /// for the `rbd` tool, and the command line
    /// ([`set_command_line_ceph`]) overrides both.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut config = match path {
            None => Self::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                Self::parse(&text, path)?
            }
        };
        config.ceph = config.ceph.with_env_ceph_args()?;
        if let Some(flags) = COMMAND_LINE_CEPH.get() {
            config.ceph = config.ceph.overlay(flags);
        }
        Ok(config)
    }

    /// Parses TOML text (`path` is only for messages).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        let invalid = |key: &'static str, reason: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            reason,
        };
        let unit = |key: &'static str| move |e: UnitError| invalid(key, e.to_string());
        let mut config = Self {
            listen: raw.listen,
            api_listen: raw
                .api
                .listen
                .clone()
                .unwrap_or_else(|| DEFAULT_API_LISTEN.to_owned()),
            api_read_only_token_file: raw.api.read_only_token_file.clone(),
            api_tls: api_tls(raw.api, &invalid)?,
            metrics_listen: raw.metrics.listen,
            ..Self::default()
        };
        for fp in raw.trust {
            let id = AgentId::from_hex(&fp).ok_or_else(|| {
                invalid("trust", format!("{fp:?} is not a 64-hex-digit fingerprint"))
            })?;
            config.trust.push(id);
        }
        if let Some(r) = raw.qos.receive_limit {
            config.receive_limit = parse_rate(&r).map_err(unit("qos.receive_limit"))?;
        }
        if let Some(r) = raw.qos.send_limit {
            config.send_limit = parse_rate(&r).map_err(unit("qos.send_limit"))?;
        }
        if let Some(n) = raw.standby.retention {
            if !(1..=64).contains(&n) {
                return Err(invalid(
                    "standby.retention",
                    format!("{n} is not in 1..=64"),
                ));
            }
            config.retention = n;
        }
        apply_transport(&mut config.transport, raw.transport, &invalid)?;
        apply_pipeline(&mut config.pipeline, raw.pipeline, &invalid)?;
        config.standby_backend = standby_backend(raw.standby, &invalid)?;
        config.accept_changes_at_rest = raw.source.accept_changes_at_rest.unwrap_or(false);
        config.console_enabled = raw.console.enabled.unwrap_or(false);
        config.control_store = control::control_store(raw.control, &invalid)?;
        config.ceph = ferry_engine::rbd::ClusterSpec {
            cluster: raw.ceph.cluster,
            conf: raw.ceph.conf,
            client_id: raw.ceph.client_id,
            keyring: raw.ceph.keyring,
        };
        if let Some(gap) = raw.ceph.coalesce_gap {
            let n = parse_bytes(&gap).map_err(unit("ceph.coalesce_gap"))?;
            if n > 4 << 20 {
                return Err(invalid(
                    "ceph.coalesce_gap",
                    format!("{n} bytes is more than an object (4 MiB)"),
                ));
            }
            config.coalesce_gap = Some(n as u32);
        }
        config.log_format = log_format(raw.log, &invalid)?;
        Ok(config)
    }
}

/// Builds the error for an invalid key of the file being parsed.
pub(crate) type Invalid<'a> = dyn Fn(&'static str, String) -> ConfigError + 'a;

/// The `[api]` TLS keys: `tls = true` alone serves the agent's own
/// certificate; `tls_cert` and `tls_key` (both) an operator-given one.
fn api_tls(raw: RawApi, invalid: &Invalid) -> Result<Option<ApiTls>, ConfigError> {
    match (raw.tls, raw.tls_cert, raw.tls_key) {
        (Some(false) | None, None, None) => Ok(None),
        (Some(true), None, None) => Ok(Some(ApiTls::Own)),
        (Some(false), _, _) => Err(invalid(
            "api.tls",
            "tls = false but tls_cert/tls_key are set".into(),
        )),
        (_, Some(cert), Some(key)) => Ok(Some(ApiTls::Files { cert, key })),
        _ => Err(invalid(
            "api.tls_cert",
            "tls_cert and tls_key go together".into(),
        )),
    }
}

/// Applies the `[pipeline]` section onto the defaults in `p`.
fn apply_pipeline(
    p: &mut PipelineConfig,
    raw: RawPipeline,
    invalid: &Invalid,
) -> Result<(), ConfigError> {
    if let Some(w) = raw.workers {
        if w > 256 {
            return Err(invalid("pipeline.workers", format!("{w} is more than 256")));
        }
        if w > 0 {
            p.workers = w;
        }
    }
    if let Some(level) = raw.zstd_level {
        if !(-7..=19).contains(&level) {
            return Err(invalid(
                "pipeline.zstd_level",
                format!("{level} is not in -7..=19"),
            ));
        }
        p.zstd_level = level;
    }
    Ok(())
}

/// The standby backend of the `[standby]` section (`backend`, `rbd_pool`,
/// `rbd_namespace`).
fn standby_backend(raw: RawStandby, invalid: &Invalid) -> Result<StandbyBackend, ConfigError> {
    let backend = match (raw.backend.as_deref(), raw.rbd_pool, raw.rbd_namespace) {
        (None | Some("files"), None, None) => StandbyBackend::Files,
        (None | Some("files"), pool, _) => {
            return Err(invalid(
                if pool.is_some() {
                    "standby.rbd_pool"
                } else {
                    "standby.rbd_namespace"
                },
                "set only with backend = \"rbd\"".into(),
            ))
        }
        (Some("rbd"), pool, namespace) => {
            if let Some(ns) = &namespace {
                if ns.is_empty() || ns.contains(['/', '@', '\0']) {
                    return Err(invalid(
                        "standby.rbd_namespace",
                        format!("{ns:?} is not an RBD namespace name"),
                    ));
                }
            }
            StandbyBackend::Rbd {
                pool: pool.unwrap_or_else(|| "rbd".to_owned()),
                namespace,
            }
        }
        (Some(other), _, _) => {
            return Err(invalid(
                "standby.backend",
                format!("{other:?} is not files or rbd"),
            ))
        }
    };
    Ok(backend)
}

/// The log format of the `[log]` section.
fn log_format(raw: RawLog, invalid: &Invalid) -> Result<LogFormat, ConfigError> {
    let format = match raw.format.as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some("journald") => LogFormat::Journald,
        Some(other) => {
            return Err(invalid(
                "log.format",
                format!("{other:?} is not text, json or journald"),
            ))
        }
    };
    Ok(format)
}

/// A commented default configuration, written by `ferry-agent init`.
pub const DEFAULT_CONFIG: &str = r#"# ferry-agent configuration. Every key is optional; flags override it.
# Reloaded on SIGHUP: qos.* and trust take effect at once.

# listen = "0.0.0.0:7400"
# Fingerprints of the agents allowed to connect (ferry-agent init prints one).
# trust = ["3f0c…64 hex digits…"]

[qos]
# Aggregate limit for everything written into this site's standby images.
# receive_limit = "unlimited"   # or e.g. "200MB/s", "800Mbit" (K/M/G = 1024-based, B byte, b bit)
# Wire limit of `ferry sync` runs that use this directory.
# send_limit = "unlimited"

[standby]
# Recovery points kept restorable per standby image.
# retention = 5
# Where standby images live: "files" (DIR/images/NAME.raw) or "rbd" (images of
# an RBD pool, recovery points as RBD snapshots ferry-rp-ID).
# backend = "files"
# rbd_pool = "rbd"
# An RBD namespace of that pool (`rbd namespace create POOL/NS` first);
# default: the pool's default namespace.
# rbd_namespace = "dr"

[control]
# Where the control state (services, groups, policies, recovery points, the
# operation journal) lives: "sqlite" (DIR/control.db, one agent per site) or
# "rados" (object ferry.control of `pool`, in the cluster of [ceph], shared by
# every agent of the site; each keeps a copy in memory). With "rados" each
# primary group is driven by one agent of the site at a time under a lease (a
# RADOS lock with a duration on ferry.lease.GROUP, renewed by its holder; an
# agent taking over blocklists the previous holder). The [ceph] user then needs
# mon 'profile rbd' (blocklisting) and osd 'profile rbd pool=POOL'.
# store = "sqlite"
# pool = "ferry"
# namespace = "site-a"
# agent_name = "node-1"   # unique in the site (default: the host name)
# lease = "30s"           # 5s..10m

[ceph]
# The cluster of rbd: sources and of an RBD standby (librbd is loaded at run
# time; install librbd1). Defaults: /etc/ceph/ceph.conf, client.admin.
# Run as a least-privileged Ceph user (README "Ceph users and caps"); CEPH_ARGS
# (e.g. "--id ferry") overrides these, as it does for the rbd tool.
# cluster = "ceph"
# conf = "/etc/ceph/ceph.conf"
# client_id = "admin"
# Default: librados' search, /etc/ceph/$cluster.$name.keyring first.
# keyring = "/etc/ceph/ceph.client.ferry.keyring"
# RBD sources read changed extents of one object closer than this as one
# request: fewer OSD operations on both sites. While the link is not the
# bottleneck the unchanged bytes between them are sent too (the standby writes
# the run in one operation); while it is, only the changed extents are sent.
# Default: 16 KiB, or (send limit x 0.2 ms) when a send limit is set.
# coalesce_gap = "32KiB"

[source]
# A file: source whose blocks differ from the last recovery point although
# nothing wrote it since (timestamps / device write counters unchanged) is
# refused as possible corruption at rest: the standby keeps its good copy.
# Set true (for one cycle, then remove) to replicate such a change anyway.
# accept_changes_at_rest = false

[api]
# The operator HTTP API (token in DIR/api.token). Keep it on loopback unless
# TLS is on; the agent-to-agent API is served over mutual TLS on the QUIC
# listen port (TCP).
# listen = "127.0.0.1:7480"
# HTTPS with the agent's own certificate: clients pin its fingerprint
# (ferry --agent https://HOST:7480 --agent-fingerprint FP, FP as printed by
# ferry-agent init or `openssl x509 -fingerprint -sha256`).
# tls = true
# …or with an operator-given certificate chain and key (PEM); clients pin
# that certificate's fingerprint the same way.
# tls_cert = "/etc/ferry/api.crt"
# tls_key = "/etc/ferry/api.key"
# A second token that may only read (GET routes: status, lists, metrics of
# groups) for dashboards and checks; every other route answers 403 to it.
# Created mode 0600 when missing.
# read_only_token_file = "/var/lib/ferry/api.readonly.token"

[console]
# The web console: pages for groups, recovery points, policies and every
# operation, at http(s)://API-ADDRESS/ui/ on the operator API listener above
# (same address, same TLS). Sign in with the operator or the read-only token.
# enabled = false

[metrics]
# A Prometheus endpoint (GET /metrics; address also in DIR/metrics.addr).
# Off unless set; keep it on loopback or a management network.
# listen = "127.0.0.1:9477"

[transport]
# Images with much to send replicated at once over one connection (images
# whose cycle reads at most 32 MiB run beside them, 320 MiB of them at most).
# max_concurrent_images = 5
# idle_timeout_secs = 10
# Flow-control windows: size them to bandwidth x round-trip time.
# stream_window = "16MiB"
# connection_window = "48MiB"
# udp_buffer = "4MiB"
# Bytes a group sync's images together keep sent but not yet durable on the
# standby (each image may always have one batch out): the sync's memory;
# raise it on links whose bandwidth x round-trip time is larger.
# group_unacked_bytes = "64MiB"
# Compress extents before sending: "auto" (while the link, not the CPU, is
# the bottleneck: decided from measured send backpressure), "zstd", "off".
# compression = "auto"
# Largest UDP datagram path-MTU discovery probes for (1200..=65527; 8952 is
# a jumbo frame; discovery settles lower on paths that drop larger ones).
# max_udp_payload = 8952

[pipeline]
# workers = 0        # 0 = one per core
# zstd_level = 1

[log]
# format = "text"    # or "json", or "journald" (under systemd)
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_text_parses() {
        AgentConfig::parse(DEFAULT_CONFIG, Path::new("default")).unwrap();
    }

    #[test]
    fn values_are_validated() {
        let c = AgentConfig::parse(
            "[qos]\nreceive_limit = \"100M\"\n[standby]\nretention = 3\n",
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(c.receive_limit, Some(100 * 1024 * 1024));
        assert_eq!(c.retention, 3);
        let err = AgentConfig::parse("[standby]\nretention = 0\n", Path::new("x")).unwrap_err();
        assert!(err.to_string().contains("standby.retention"), "{err}");
        let err = AgentConfig::parse("trust = [\"abc\"]\n", Path::new("x")).unwrap_err();
        assert!(err.to_string().contains("fingerprint"), "{err}");
        assert!(AgentConfig::parse("bogus = 1\n", Path::new("x")).is_err());
        let c = AgentConfig::parse(
            "[standby]\nbackend = \"rbd\"\nrbd_pool = \"dr\"\n[ceph]\ncluster = \"site-b\"\ncoalesce_gap = \"16KiB\"\n",
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(
            c.standby_backend,
            StandbyBackend::Rbd {
                pool: "dr".into(),
                namespace: None
            }
        );
        assert_eq!(c.ceph.cluster.as_deref(), Some("site-b"));
        assert_eq!(c.coalesce_gap, Some(16 * 1024));
        assert!(AgentConfig::parse("[standby]\nbackend = \"nfs\"\n", Path::new("x")).is_err());
        assert!(AgentConfig::parse("[standby]\nrbd_pool = \"x\"\n", Path::new("x")).is_err());
        let c = AgentConfig::parse(
            "[standby]\nbackend = \"rbd\"\nrbd_namespace = \"tenant\"\n\
             [ceph]\nclient_id = \"ferry-dr\"\nkeyring = \"/etc/ceph/k\"\n",
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(
            c.standby_backend,
            StandbyBackend::Rbd {
                pool: "rbd".into(),
                namespace: Some("tenant".into())
            }
        );
        assert_eq!(c.ceph.client_id.as_deref(), Some("ferry-dr"));
        assert_eq!(c.ceph.keyring.as_deref(), Some(Path::new("/etc/ceph/k")));
        for bad in [
            "[standby]\nrbd_namespace = \"x\"\n",
            "[standby]\nbackend = \"rbd\"\nrbd_namespace = \"a/b\"\n",
            "[standby]\nbackend = \"rbd\"\nrbd_namespace = \"\"\n",
        ] {
            let err = AgentConfig::parse(bad, Path::new("x")).unwrap_err();
            assert!(err.to_string().contains("rbd_namespace"), "{bad}: {err}");
        }
        let c = AgentConfig::parse(
            "[metrics]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"journald\"\n",
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(c.metrics_listen.as_deref(), Some("127.0.0.1:0"));
        assert_eq!(c.log_format, LogFormat::Journald);
        assert!(AgentConfig::parse("[log]\nformat = \"xml\"\n", Path::new("x")).is_err());
    }

    #[test]
    fn console_is_off_unless_enabled() {
        let parse = |t: &str| AgentConfig::parse(t, Path::new("x"));
        assert!(!parse("").unwrap().console_enabled);
        assert!(
            !parse("[console]\nenabled = false\n")
                .unwrap()
                .console_enabled
        );
        assert!(
            parse("[console]\nenabled = true\n")
                .unwrap()
                .console_enabled
        );
        assert!(parse("[console]\nenabled = \"yes\"\n").is_err());
        assert!(parse("[console]\nport = 1\n").is_err());
    }

    #[test]
    fn api_tls_and_read_only_token() {
        let parse = |t: &str| AgentConfig::parse(t, Path::new("x"));
        assert_eq!(parse("").unwrap().api_tls, None);
        assert_eq!(parse("[api]\ntls = false\n").unwrap().api_tls, None);
        assert_eq!(
            parse("[api]\ntls = true\n").unwrap().api_tls,
            Some(ApiTls::Own)
        );
        let c =
            parse("[api]\ntls_cert = \"/c\"\ntls_key = \"/k\"\nread_only_token_file = \"/r\"\n")
                .unwrap();
        assert_eq!(
            c.api_tls,
            Some(ApiTls::Files {
                cert: "/c".into(),
                key: "/k".into()
            })
        );
        assert_eq!(c.api_read_only_token_file, Some(PathBuf::from("/r")));
        for bad in [
            "[api]\ntls_cert = \"/c\"\n",
            "[api]\ntls = true\ntls_key = \"/k\"\n",
            "[api]\ntls = false\ntls_cert = \"/c\"\ntls_key = \"/k\"\n",
        ] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(err.contains("api.tls"), "{bad}: {err}");
        }
    }
}
