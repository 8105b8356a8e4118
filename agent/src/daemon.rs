//! The agent process: opens the store, listens for trusted primaries,
//! runs the control plane (orchestrator, operator and peer APIs), and reacts
//! to signals (SIGHUP reloads QoS and trust, SIGTERM/SIGINT stop
//! gracefully). Under systemd it reports readiness (after the store is open
//! and every listener bound), feeds the watchdog from its main loop while
//! the engine is healthy, and reports reloads and the stop (see
//! [`crate::systemd`]).

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock, Weak};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ferry_engine::identity::Identity;
use ferry_engine::qos::RateLimiter;
use ferry_engine::rbd::standby::{RbdStandby, RbdStandbyConfig, StateLocation};
use ferry_engine::session::receiver::{serve, ImageAuthorizer, ReceiverContext};
use ferry_engine::standby::{StandbyStore, StoreConfig, StoreError};
use ferry_engine::standby_backend::Standby;
use ferry_engine::transport::{server_endpoint, TrustStore};
use ferry_protocol::{AgentId, ImageName, DEFAULT_MAX_FRAME_LEN};
use tracing::{info, warn};

use crate::api;
use crate::config::{config_path, AgentConfig, ApiTls, ControlStore, StandbyBackend};
use crate::metrics::Metrics;
use crate::orchestrator::{Orchestrator, OrchestratorConfig};
use crate::systemd::{check_health, Notifier};
use crate::wire::api_tls::{self, ApiCert};
use crate::wire::tls;
use crate::wire::tokens;

/// Holds the agent directory's lock: one agent (or offline command) per directory.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

/// Takes the exclusive lock of agent directory `dir`.
pub fn lock_dir(dir: &Path) -> Result<DirLock> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("agent.lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(DirLock { _file: file }),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "{} is in use by another ferry-agent process (lock {} is held)",
            dir.display(),
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}

/// Whether `caller` may write standby image `image`: peers the operator
/// trusted explicitly (`trust` in the config, `--trust`) may write any
/// image (that is what `ferry sync` to a bare agent needs); a peer trusted
/// only through a paired service may write only the images of that
/// service's standby groups ([`Orchestrator::check_image_owner`]). Fails
/// closed: before the orchestrator runs, a service peer is refused.
pub fn check_image_owner(
    operator_trust: &HashSet<AgentId>,
    orch: Option<&Orchestrator>,
    caller: AgentId,
    image: &ImageName,
) -> Result<(), String> {
    if operator_trust.contains(&caller) {
        return Ok(());
    }
    let Some(orch) = orch else {
        return Err("the control plane is not running yet".into());
    };
    orch.check_image_owner(caller, image.as_str())
        .map_err(|e| e.to_string())
}

/// The receiver's [`ImageAuthorizer`] of a running agent.
#[derive(Default)]
pub struct AgentAuthorizer {
    operator_trust: RwLock<HashSet<AgentId>>,
    orch: OnceLock<Weak<Orchestrator>>,
}

impl AgentAuthorizer {
    /// Replaces the explicitly trusted peers (start-up, `SIGHUP`).
    pub fn set_operator_trust(&self, peers: impl IntoIterator<Item = AgentId>) {
        let set = peers.into_iter().collect();
        match self.operator_trust.write() {
            Ok(mut g) => *g = set,
            Err(p) => *p.into_inner() = set,
        }
    }

    /// Connects the orchestrator (service pairings and group ownership).
    pub fn set_orchestrator(&self, orch: &Arc<Orchestrator>) {
        let _ = self.orch.set(Arc::downgrade(orch));
    }
}

impl ImageAuthorizer for AgentAuthorizer {
    fn authorize(&self, peer: AgentId, image: &ImageName) -> Result<(), String> {
        let orch = self.orch.get().and_then(Weak::upgrade);
        let trust = match self.operator_trust.read() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        check_image_owner(&trust, orch.as_deref(), peer, image)
    }
}

/// A running standby receiver.
pub struct RunningStandby {
    /// Address it listens on.
    pub addr: SocketAddr,
    /// Its shared state.
    pub context: Arc<ReceiverContext>,
    /// Its trusted peers (changeable).
    pub trust: TrustStore,
    /// Which images each trusted peer may write.
    pub authorizer: Arc<AgentAuthorizer>,
    endpoint: quinn::Endpoint,
    task: tokio::task::JoinHandle<()>,
    _lock: DirLock,
}

impl RunningStandby {
    /// Whether the accept loop still runs.
    pub fn is_serving(&self) -> bool {
        !self.task.is_finished()
    }

    /// Stops accepting, closes connections (in-flight batches that were not
    /// acknowledged are simply resent by the primary later) and waits briefly.
    pub async fn shutdown(self) {
        self.shutdown_shared(0).await;
    }

    /// [`RunningStandby::shutdown`] when `others` long-lived owners (the
    /// orchestrator) keep a handle on the receiver: waits for the stager
    /// threads only, not for those owners.
    pub async fn shutdown_shared(self, others: usize) {
        self.endpoint
            .close(quinn::VarInt::from_u32(0), b"agent shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(5), self.endpoint.wait_idle()).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
        // Stager threads finish their last fsync and drop the store.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while Arc::strong_count(&self.context) > 1 + others && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Opens the standby store of agent directory `dir` with the configured
/// backend (runs crash recovery).
pub async fn open_standby(dir: &Path, config: &AgentConfig) -> Result<Standby> {
    let store_dir = dir.to_path_buf();
    let retention = config.retention;
    let backend = config.standby_backend.clone();
    let cluster = config.ceph.clone();
    // A site whose control state is in RADOS keeps the standby's per-image
    // state there too (same pool and namespace), so another standby agent
    // of the site resumes what this one leaves.
    let state = match &config.control_store {
        ControlStore::Sqlite => StateLocation::Files,
        ControlStore::Rados {
            pool, namespace, ..
        } => StateLocation::Rados {
            pool: pool.clone(),
            namespace: namespace.clone(),
        },
    };
    let store = tokio::task::spawn_blocking(move || -> Result<Standby, StoreError> {
        Ok(match backend {
            StandbyBackend::Files => {
                StandbyStore::open(&store_dir, StoreConfig { retention })?.into()
            }
            StandbyBackend::Rbd { pool, namespace } => RbdStandby::open(&RbdStandbyConfig {
                cluster,
                pool,
                namespace,
                dir: store_dir.join("rbd-standby"),
                state,
                retention,
            })?
            .into(),
        })
    })
    .await?
    .with_context(|| format!("opening the standby store of {}", dir.display()))?;
    Ok(store)
}

/// Starts the standby side of an agent in `dir` on `listen`. The peers in
/// `trust` at this moment are the operator's explicit trust (they may write
/// any image); peers added later (paired services) only their groups' images.
pub async fn start_standby(
    dir: &Path,
    listen: SocketAddr,
    trust: TrustStore,
    config: &AgentConfig,
) -> Result<RunningStandby> {
    let lock = lock_dir(dir)?;
    let identity = Identity::load(dir)?;
    let store = open_standby(dir, config).await?;
    let endpoint = server_endpoint(listen, &identity, trust.clone(), &config.transport)?;
    let addr = endpoint.local_addr()?;
    let authorizer = Arc::new(AgentAuthorizer::default());
    authorizer.set_operator_trust(trust.list());
    let context = ReceiverContext::new(
        store,
        RateLimiter::new(config.receive_limit),
        identity.fingerprint(),
        DEFAULT_MAX_FRAME_LEN,
        authorizer.clone(),
    );
    let task = tokio::spawn(serve(endpoint.clone(), context.clone()));
    Ok(RunningStandby {
        addr,
        context,
        trust,
        authorizer,
        endpoint,
        task,
        _lock: lock,
    })
}

/// `ferry-agent run`: serves until SIGTERM/SIGINT.
pub async fn run(
    dir: PathBuf,
    listen: Option<String>,
    trust_flags: Vec<AgentId>,
    explicit_config: Option<PathBuf>,
    api_listen: Option<String>,
) -> Result<()> {
    let cfg_path = config_path(&dir, explicit_config.as_deref());
    let mut config = AgentConfig::load(cfg_path.as_deref())?;
    if let Some(api) = api_listen {
        config.api_listen = api;
    }
    let listen = resolve_listen(listen, &config).await?;
    let trust = TrustStore::new(
        config
            .trust
            .iter()
            .copied()
            .chain(trust_flags.iter().copied()),
    );
    let notifier = Notifier::from_env();
    let metrics = Arc::new(Metrics::new());
    let (standby, peer_tcp) = start_standby_with_peer_port(&dir, listen, &trust, &config).await?;
    let identity = Identity::load(&dir)?;
    let control = start_control(
        &dir,
        &standby,
        peer_tcp,
        &trust,
        &config,
        &identity,
        metrics.clone(),
    )
    .await?;
    let metrics_addr = serve_metrics(&dir, &config, &metrics).await?;
    if trust.list().is_empty() {
        warn!("no trusted peers: replication from other agents is refused until a service is paired (ferry service key / create) or --trust FINGERPRINT is given");
    }
    info!(
        listen = %standby.addr,
        api = %control.api_addr,
        fingerprint = %identity.fingerprint(),
        trusted = trust.list().len(),
        metrics = ?metrics_addr,
        receive_limit = ?config.receive_limit,
        "ferry-agent ready"
    );
    let status = || {
        format!(
            "QUIC on {}, API on {}, {} trusted peer(s)",
            standby.addr,
            control.api_addr,
            trust.list().len()
        )
    };
    // The handlers before READY: a SIGTERM right after READY (systemd stop,
    // a test) must reach the graceful path, not the default action.
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    notifier.ready(&status());
    // The watchdog is fed from this loop, after a health check: if the loop
    // wedges, or the engine behind it does, the pings stop and systemd
    // restarts the agent. Without WatchdogSec= the tick never fires.
    let ping_interval = notifier.watchdog_ping_interval();
    let mut watchdog_tick =
        tokio::time::interval(ping_interval.unwrap_or(Duration::from_secs(3600)));
    watchdog_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut withheld = false;
    let mut progress_tick = tokio::time::interval(Duration::from_secs(10));
    let mut last_staged = std::collections::HashMap::new();
    loop {
        tokio::select! {
            _ = progress_tick.tick() => log_receiving(&standby, &mut last_staged),
            _ = watchdog_tick.tick(), if ping_interval.is_some() => {
                let orch = control.orch.clone();
                let deadline = ping_interval.unwrap_or(Duration::from_secs(1));
                match check_health(standby.is_serving(), move || { let _ = orch.probe_store(); }, deadline).await {
                    Ok(()) => {
                        if withheld {
                            info!("healthy again; feeding the watchdog");
                            notifier.status(&status());
                            withheld = false;
                        }
                        notifier.watchdog();
                    }
                    Err(reason) => {
                        warn!(%reason, "unhealthy: withholding the watchdog ping (systemd restarts the agent if this lasts)");
                        notifier.status(&format!("unhealthy: {reason}; watchdog withheld"));
                        withheld = true;
                    }
                }
            }
            _ = hangup.recv() => {
                notifier.reloading();
                reload_config(cfg_path.as_deref(), &standby, &control, &trust, &trust_flags);
                notifier.reloaded(&status());
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    info!("shutting down");
    notifier.stopping();
    control.orch.shutdown().await;
    // The orchestrator keeps its handle on the receiver until the process
    // ends; waiting for it would only add the full timeout to every stop.
    standby.shutdown_shared(1).await;
    Ok(())
}

/// The QUIC listen address: the flag, else the config's, else 0.0.0.0:7400.
async fn resolve_listen(listen: Option<String>, config: &AgentConfig) -> Result<SocketAddr> {
    let listen = listen
        .or_else(|| config.listen.clone())
        .unwrap_or_else(|| "0.0.0.0:7400".to_owned());
    let addr = tokio::net::lookup_host(&listen)
        .await
        .with_context(|| format!("resolving listen address {listen}"))?
        .next()
        .with_context(|| format!("listen address {listen} resolves to nothing"))?;
    Ok(addr)
}

/// Starts the `[metrics]` endpoint when configured; its bound address.
async fn serve_metrics(
    dir: &Path,
    config: &AgentConfig,
    metrics: &Arc<Metrics>,
) -> Result<Option<SocketAddr>> {
    let Some(listen) = &config.metrics_listen else {
        return Ok(None);
    };
    let addr: SocketAddr = tokio::net::lookup_host(listen)
        .await
        .with_context(|| format!("resolving [metrics] listen {listen}"))?
        .next()
        .with_context(|| format!("[metrics] listen {listen} resolves to nothing"))?;
    Ok(Some(
        crate::metrics::serve(dir, addr, metrics.clone()).await?,
    ))
}

/// Logs one line per image that received data since the last tick.
fn log_receiving(
    standby: &RunningStandby,
    last_staged: &mut std::collections::HashMap<ImageName, u64>,
) {
    for (image, activity) in standby.context.activity() {
        let before = last_staged.insert(image.clone(), activity.bytes_staged);
        if before != Some(activity.bytes_staged) {
            info!(
                %image,
                epoch = %activity.epoch,
                durable_seq = %activity.durable_seq,
                bytes_staged = activity.bytes_staged,
                rate = activity.rate,
                nacks = activity.nacks,
                "receiving"
            );
        }
    }
}

/// SIGHUP: reloads the config file and applies its receive limit and trust
/// (config, flags and paired peers); a bad file keeps the old settings.
fn reload_config(
    cfg_path: Option<&Path>,
    standby: &RunningStandby,
    control: &RunningControl,
    trust: &TrustStore,
    trust_flags: &[AgentId],
) {
    match AgentConfig::load(cfg_path) {
        Ok(new) => {
            standby.context.write_limit.set_rate(new.receive_limit);
            standby
                .authorizer
                .set_operator_trust(new.trust.iter().chain(trust_flags.iter()).copied());
            control.orch.reload_config(new.clone());
            let paired = control.orch.paired_peers();
            for peer in new
                .trust
                .iter()
                .chain(trust_flags.iter())
                .chain(paired.iter())
            {
                trust.insert(*peer);
            }
            for peer in trust.list() {
                if !new.trust.contains(&peer)
                    && !trust_flags.contains(&peer)
                    && !paired.contains(&peer)
                {
                    trust.remove(&peer);
                }
            }
            info!(
                receive_limit = ?new.receive_limit,
                trusted = trust.list().len(),
                "configuration reloaded"
            );
        }
        Err(error) => warn!(%error, "configuration reload failed; keeping the old settings"),
    }
}

/// Starts the standby receiver on `listen` (UDP) and binds the peer API's
/// TCP listener on the same port. With port 0 both must get the same free
/// port: a TCP port is picked first and the QUIC endpoint bound to that
/// number, retrying while the UDP port happens to be taken.
pub async fn start_standby_with_peer_port(
    dir: &Path,
    listen: SocketAddr,
    trust: &TrustStore,
    config: &AgentConfig,
) -> Result<(RunningStandby, std::net::TcpListener)> {
    if listen.port() != 0 {
        let standby = start_standby(dir, listen, trust.clone(), config).await?;
        let tcp = std::net::TcpListener::bind(standby.addr)
            .with_context(|| format!("binding the peer API on TCP {}", standby.addr))?;
        return Ok((standby, tcp));
    }
    let mut attempt = 0;
    loop {
        let tcp = std::net::TcpListener::bind(SocketAddr::new(listen.ip(), 0))
            .with_context(|| format!("binding the peer API on TCP {}", listen.ip()))?;
        let port = tcp.local_addr()?.port();
        match start_standby(
            dir,
            SocketAddr::new(listen.ip(), port),
            trust.clone(),
            config,
        )
        .await
        {
            Ok(standby) => return Ok((standby, tcp)),
            Err(e) if attempt < 20 && is_bind_error(&e) => attempt += 1,
            Err(e) => return Err(e),
        }
    }
}

fn is_bind_error(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<ferry_engine::transport::TransportError>(),
            Some(ferry_engine::transport::TransportError::Bind { .. })
        )
    })
}

/// The control plane of a running agent: orchestrator, operator API and
/// peer API.
pub struct RunningControl {
    /// The orchestrator.
    pub orch: Arc<Orchestrator>,
    /// Where the operator API listens.
    pub api_addr: SocketAddr,
}

/// Starts the orchestrator, the peer API (mutual TLS on TCP at the QUIC
/// address) and the operator API (`[api] listen`, address written to
/// `DIR/api.addr`), then finishes interrupted operations and resumes
/// replication in the background.
pub async fn start_control(
    dir: &Path,
    standby: &RunningStandby,
    peer_tcp: std::net::TcpListener,
    trust: &TrustStore,
    config: &AgentConfig,
    identity: &Identity,
    metrics: Arc<Metrics>,
) -> Result<RunningControl> {
    let read_only_path =
        tokens::read_only_token_path(dir, config.api_read_only_token_file.as_deref());
    let tokens = tokens::Tokens {
        operator: Arc::new(api::ensure_token(dir)?),
        read_only: Some(Arc::new(api::ensure_token_file(&read_only_path)?)),
    };
    let orch = Orchestrator::open(OrchestratorConfig {
        dir: dir.to_path_buf(),
        quic_addr: standby.addr,
        trust: trust.clone(),
        receiver: standby.context.clone(),
        config: config.clone(),
        metrics,
    })?;
    let peer_listener = tls::TlsListener::from_std(peer_tcp, tls::server_config(identity)?)?;
    let peer_app =
        api::peer_router(orch.clone()).into_make_service_with_connect_info::<tls::PeerAddr>();
    tokio::spawn(async move {
        if let Err(error) = axum::serve(peer_listener, peer_app).await {
            warn!(%error, "peer API stopped");
        }
    });
    let api_listen: SocketAddr = tokio::net::lookup_host(&config.api_listen)
        .await
        .with_context(|| format!("resolving [api] listen {}", config.api_listen))?
        .next()
        .with_context(|| format!("[api] listen {} resolves to nothing", config.api_listen))?;
    let tcp = tokio::net::TcpListener::bind(api_listen)
        .await
        .with_context(|| format!("binding the API on {api_listen}"))?;
    let api_addr = tcp.local_addr()?;
    let api_cert = match &config.api_tls {
        None => None,
        Some(ApiTls::Own) => Some(ApiCert {
            chain: vec![identity.cert().clone()],
            key: identity.key(),
        }),
        Some(ApiTls::Files { cert, key }) => Some(ApiCert::load(cert, key)?),
    };
    api::write_addr(dir, api_addr, api_cert.as_ref().map(ApiCert::fingerprint))?;
    orch.set_api_addr(api_addr);
    standby.authorizer.set_orchestrator(&orch);
    let console = config.console_enabled.then(|| {
        Arc::new(crate::console::Console::new(
            tokens.clone(),
            api_cert.is_some(),
            identity.fingerprint().to_hex(),
        ))
    });
    if console.is_some() {
        let scheme = if api_cert.is_some() { "https" } else { "http" };
        info!(url = %format!("{scheme}://{api_addr}/ui/"), "web console on");
    }
    let app = api::operator_router(orch.clone(), tokens, console);
    tokio::spawn(orch.clone().sample_rpo_history());
    match api_cert {
        None => {
            tokio::spawn(async move {
                if let Err(error) = axum::serve(tcp, app).await {
                    warn!(%error, "operator API stopped");
                }
            });
        }
        Some(cert) => {
            let listener =
                tls::TlsListener::without_client_certs(tcp, api_tls::server_config(cert)?)?;
            tokio::spawn(async move {
                if let Err(error) = axum::serve(listener, app).await {
                    warn!(%error, "operator API (TLS) stopped");
                }
            });
        }
    }
    let recovering = orch.clone();
    tokio::spawn(async move {
        if let Err(error) = recovering.recover_and_resume().await {
            warn!(%error, "recovering interrupted operations failed");
        }
    });
    Ok(RunningControl { orch, api_addr })
}
