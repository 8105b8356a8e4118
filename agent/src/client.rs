//! The primary-side operations behind `ferry sync` and `ferry verify`: they
//! open the file source with its per-target state, drive a session against
//! the standby agent, and show progress.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ferry_engine::identity::Identity;
use ferry_engine::qos::RateLimiter;
use ferry_engine::session::sender::{
    sync_image, SyncOptions, SyncProgress, SyncReport, SyncTarget,
};
use ferry_engine::session::verify::{verify_image, VerifyReport};
use ferry_engine::source::file::FileSource;
use ferry_protocol::{AgentId, ImageName};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::watch;
use tracing::info;

use crate::config::{config_path, AgentConfig};
use crate::uri::{SourceUri, TargetUri};

/// Where the source-side state (manifests, cycle progress) of replicating to
/// `image` on agent `peer` lives.
pub fn source_state_dir(dir: &Path, peer: AgentId, image: &ImageName) -> PathBuf {
    dir.join("sources")
        .join(&peer.to_hex()[..16])
        .join(image.as_str())
}

/// Settings for one `ferry sync` run.
pub struct SyncRequest<'a> {
    /// The primary agent directory (identity, config, source state).
    pub dir: &'a Path,
    /// What to replicate.
    pub source: &'a SourceUri,
    /// Where to.
    pub target: &'a TargetUri,
    /// The standby agent's fingerprint.
    pub peer: AgentId,
    /// `--bwlimit`, overriding the config's send limit (`Some(None)` = unlimited).
    pub bwlimit: Option<Option<u64>>,
    /// Draw a progress bar on stderr.
    pub progress_bar: bool,
    /// Adjust options before the run (tests and the demo shorten timeouts).
    pub tweak: Option<&'a (dyn Fn(&mut SyncOptions) + Sync)>,
}

fn options_from(config: &AgentConfig) -> SyncOptions {
    SyncOptions {
        transport: config.transport.clone(),
        pipeline: config.pipeline,
        limiter: RateLimiter::new(config.send_limit),
        ..SyncOptions::default()
    }
}

/// Runs one replication cycle; returns when the recovery point is committed.
pub async fn sync(request: SyncRequest<'_>) -> Result<SyncReport> {
    let SourceUri::File(path) = request.source;
    let identity = Identity::load(request.dir)?;
    let cfg_path = config_path(request.dir, None);
    let config = AgentConfig::load(cfg_path.as_deref())?;
    let mut options = options_from(&config);
    if let Some(limit) = request.bwlimit {
        options.limiter.set_rate(limit);
    }
    if let Some(tweak) = request.tweak {
        tweak(&mut options);
    }
    let state_dir = source_state_dir(request.dir, request.peer, &request.target.image);
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    let lock_path = state_dir.join("sync.lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    if lock.try_lock().is_err() {
        bail!(
            "another `ferry sync` of {} to {} is running (lock {} is held)",
            path.display(),
            request.target.image,
            lock_path.display()
        );
    }
    let source = FileSource::open(path, &state_dir)
        .with_context(|| format!("opening source {}", path.display()))?;

    // SIGHUP re-reads the config's send limit while the sync runs.
    let limiter = options.limiter.clone();
    let reload_path = cfg_path.clone();
    let reload = tokio::spawn(async move {
        let Ok(mut hangup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hangup.recv().await.is_some() {
            match AgentConfig::load(reload_path.as_deref()) {
                Ok(c) => {
                    limiter.set_rate(c.send_limit);
                    info!(send_limit = ?c.send_limit, "send limit reloaded");
                }
                Err(error) => tracing::warn!(%error, "config reload failed"),
            }
        }
    });

    let (progress_tx, progress_rx) = watch::channel(SyncProgress::default());
    let bar = request
        .progress_bar
        .then(|| spawn_progress_bar(progress_rx));
    let target = SyncTarget {
        addr: request.target.addr,
        peer: request.peer,
        image: request.target.image.clone(),
    };
    let result = sync_image(Box::new(source), target, identity, options, progress_tx).await;
    reload.abort();
    if let Some((bar, task)) = bar {
        task.abort();
        bar.finish_and_clear();
    }
    drop(lock);
    Ok(result?)
}

fn spawn_progress_bar(
    mut progress: watch::Receiver<SyncProgress>,
) -> (ProgressBar, tokio::task::JoinHandle<()>) {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg:12} [{bar:30}] {bytes}/{total_bytes} scanned  {prefix}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let handle = bar.clone();
    let task = tokio::spawn(async move {
        while progress.changed().await.is_ok() {
            let p = progress.borrow().clone();
            handle.set_length(p.image_size);
            handle.set_position(p.bytes_scanned);
            handle.set_message(p.phase);
            handle.set_prefix(format!(
                "sent {}  {}/s  reconnects {}",
                crate::units::human_bytes(p.bytes_sent),
                crate::units::human_bytes(p.rate),
                p.reconnects
            ));
        }
    });
    (bar, task)
}

/// Compares the source with the standby's copy by hashes.
pub async fn verify(
    dir: &Path,
    source: &SourceUri,
    target: &TargetUri,
    peer: AgentId,
) -> Result<VerifyReport> {
    let SourceUri::File(path) = source;
    let identity = Identity::load(dir)?;
    let config = AgentConfig::load(config_path(dir, None).as_deref())?;
    let options = options_from(&config);
    let target = SyncTarget {
        addr: target.addr,
        peer,
        image: target.image.clone(),
    };
    Ok(verify_image(path, target, identity, options).await?)
}
