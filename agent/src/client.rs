//! The primary-side operations behind `ferry sync` and `ferry verify`: they
//! open the file source with its per-target state, drive a session against
//! the standby agent, and show progress.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ferry_engine::identity::Identity;
use ferry_engine::qos::RateLimiter;
use ferry_engine::rbd::group::capture_group;
use ferry_engine::rbd::source::{RbdSource, RbdSourceOptions};
use ferry_engine::rbd::ClusterSpec;
use ferry_engine::session::sender::{
    sync_group, GroupReport, ImageJob, SyncOptions, SyncProgress, SyncTarget,
};
use ferry_engine::session::verify::{verify_image, VerifyReport, VerifySource};
use ferry_engine::source::diffstream::DiffSource;
use ferry_engine::source::file::{FileSource, FileSourceOptions};
use ferry_engine::source::ExtentSource;
use ferry_protocol::{AgentId, ImageName};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
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

/// The tag in the names of the snapshots an `rbd:` source takes for
/// replicating to `image` on agent `peer`.
pub fn rbd_tag(peer: AgentId, image: &ImageName) -> String {
    format!("{}-{image}", &peer.to_hex()[..16])
}

/// Settings for one `ferry sync` run.
pub struct SyncRequest<'a> {
    /// The primary agent directory (identity, config, source state).
    pub dir: &'a Path,
    /// What to replicate where: one pair, or several images of one group
    /// (all on the same standby agent, committed as one recovery point).
    pub pairs: &'a [(SourceUri, TargetUri)],
    /// The standby agent's fingerprint.
    pub peer: AgentId,
    /// `--bwlimit`, overriding the config's send limit (`Some(None)` = unlimited).
    pub bwlimit: Option<Option<u64>>,
    /// Draw a progress bar on stderr.
    pub progress_bar: bool,
    /// Adjust options before the run (tests and the demo shorten timeouts).
    pub tweak: Option<&'a (dyn Fn(&mut SyncOptions) + Sync)>,
    /// Cluster of `rbd:` sources (default: the config's `[ceph]`).
    pub cluster: Option<ClusterSpec>,
    /// Called with (pair index, progress) whenever an image's progress
    /// changes (the agent's orchestrator publishes it on its API).
    pub progress: Option<ProgressSink>,
    /// Replicate blocks of `file:` sources that changed at rest instead of
    /// refusing the cycle (also `[source] accept_changes_at_rest`).
    pub accept_changes_at_rest: bool,
}

/// Receives live per-image progress of a sync: (pair index, progress).
pub type ProgressSink = std::sync::Arc<dyn Fn(usize, &SyncProgress) + Send + Sync>;

fn options_from(config: &AgentConfig) -> SyncOptions {
    SyncOptions {
        transport: config.transport.clone(),
        pipeline: config.pipeline,
        limiter: RateLimiter::new(config.send_limit),
        ..SyncOptions::default()
    }
}

/// Runs one replication cycle of every pair; returns when the (group)
/// recovery point is committed.
pub async fn sync(request: SyncRequest<'_>) -> Result<GroupReport> {
    let Some((_, first_target)) = request.pairs.first() else {
        bail!("nothing to replicate: give SOURCE TARGET");
    };
    let addr = first_target.addr;
    if let Some((_, other)) = request.pairs.iter().find(|(_, t)| t.addr != addr) {
        bail!(
            "all images of one sync must go to the same standby agent: {} and {} differ",
            addr,
            other.addr
        );
    }
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

    let mut sources: Vec<Box<dyn ExtentSource>> = Vec::with_capacity(request.pairs.len());
    let mut rbd_sources: Vec<(usize, RbdSource)> = Vec::new();
    let mut locks = Vec::with_capacity(request.pairs.len());
    let cluster = request
        .cluster
        .clone()
        .unwrap_or_else(|| config.ceph.clone());
    let coalesce_gap = config
        .coalesce_gap
        .unwrap_or_else(|| RbdSourceOptions::gap_for_link(options.limiter.rate()));
    for (index, (source, target)) in request.pairs.iter().enumerate() {
        let state_dir = source_state_dir(request.dir, request.peer, &target.image);
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
                "another `ferry sync` of {source} to {} is running (lock {} is held)",
                target.image,
                lock_path.display()
            );
        }
        locks.push(lock);
        match source {
            SourceUri::File(path) => {
                let file_options = FileSourceOptions {
                    accept_changes_at_rest: request.accept_changes_at_rest
                        || config.accept_changes_at_rest,
                    ..FileSourceOptions::default()
                };
                let source = FileSource::open_with(path, &state_dir, file_options)
                    .with_context(|| format!("opening source {}", path.display()))?;
                sources.push(Box::new(source));
            }
            SourceUri::Diff(diff_dir) => {
                let source = DiffSource::open(diff_dir, &state_dir)
                    .with_context(|| format!("opening source {}", diff_dir.display()))?;
                sources.push(Box::new(source));
            }
            SourceUri::Rbd(spec) => {
                let tag = rbd_tag(request.peer, &target.image);
                let rbd_options = RbdSourceOptions {
                    coalesce_gap,
                    ..RbdSourceOptions::default()
                };
                let rbd = tokio::task::block_in_place(|| {
                    RbdSource::open(&cluster, spec, &state_dir, &tag, rbd_options)
                })
                .with_context(|| format!("opening source {source}"))?;
                rbd_sources.push((index, rbd));
            }
        }
    }
    // The RBD images of one sync are captured at one instant.
    if !rbd_sources.is_empty() {
        let mut refs: Vec<&mut RbdSource> = rbd_sources.iter_mut().map(|(_, s)| s).collect();
        let fresh = tokio::task::block_in_place(|| capture_group(&mut refs))
            .context("taking the recovery point's RBD snapshots")?;
        if !fresh {
            info!("resuming the RBD capture of an interrupted sync");
        }
    }
    for (index, rbd) in rbd_sources {
        sources.insert(index, Box::new(rbd));
    }
    let mut jobs = Vec::with_capacity(sources.len());
    let mut progress_rx = Vec::new();
    for (source, (_, target)) in sources.into_iter().zip(request.pairs.iter()) {
        let (tx, rx) = watch::channel(SyncProgress::default());
        progress_rx.push(rx);
        jobs.push(ImageJob {
            source,
            image: target.image.clone(),
            progress: tx,
        });
    }

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

    let bar_rx = progress_rx.clone();
    let bars = request.progress_bar.then(|| {
        let multi = MultiProgress::new();
        let tasks: Vec<_> = bar_rx
            .into_iter()
            .zip(request.pairs.iter())
            .map(|(rx, (_, t))| spawn_progress_bar(&multi, t.image.to_string(), rx))
            .collect();
        (multi, tasks)
    });
    let observers: Vec<_> = match &request.progress {
        Some(sink) => progress_rx
            .iter()
            .enumerate()
            .map(|(index, rx)| {
                let mut rx = rx.clone();
                let sink = sink.clone();
                tokio::spawn(async move {
                    while rx.changed().await.is_ok() {
                        let p = rx.borrow_and_update().clone();
                        sink(index, &p);
                    }
                })
            })
            .collect(),
        None => Vec::new(),
    };
    let result = sync_group(jobs, addr, request.peer, identity, options).await;
    for task in observers {
        task.abort();
    }
    reload.abort();
    if let Some((multi, tasks)) = bars {
        for (bar, task) in tasks {
            task.abort();
            bar.finish_and_clear();
        }
        let _ = multi.clear();
    }
    drop(locks);
    Ok(result?)
}

fn spawn_progress_bar(
    multi: &MultiProgress,
    name: String,
    mut progress: watch::Receiver<SyncProgress>,
) -> (ProgressBar, tokio::task::JoinHandle<()>) {
    let bar = multi.add(ProgressBar::new(0));
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg:20} [{bar:30}] {bytes}/{total_bytes} scanned  {prefix}",
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
            handle.set_message(format!("{name} {}", p.phase));
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
    let identity = Identity::load(dir)?;
    let config = AgentConfig::load(config_path(dir, None).as_deref())?;
    let local = match source {
        SourceUri::File(path) => VerifySource::file(path)?,
        SourceUri::Diff(_) => bail!(
            "{source}: a diff series has no image to hash; verify the image the diffs were exported from"
        ),
        SourceUri::Rbd(spec) => {
            let state_dir = source_state_dir(dir, peer, &target.image);
            tokio::task::block_in_place(|| {
                RbdSource::open_committed(&config.ceph, spec, &state_dir)
            })
            .with_context(|| format!("opening the last replicated snapshot of {source}"))?
        }
    };
    let options = options_from(&config);
    let target = SyncTarget {
        addr: target.addr,
        peer,
        image: target.image.clone(),
    };
    Ok(verify_image(local, target, identity, options).await?)
}
