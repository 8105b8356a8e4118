//! The primary-side commands `ferry sync` and `ferry verify`: `sync` runs
//! one replication cycle through the shared entry point
//! ([`crate::replicate::Replicator`]) and adds what only the command line
//! has: `--bwlimit`, progress bars, and `SIGHUP` re-reading the config's
//! send limit while it runs. `verify` compares a source with the standby's
//! copy by hashes.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ferry_engine::identity::Identity;
use ferry_engine::rbd::source::RbdSource;
use ferry_engine::rbd::ClusterSpec;
use ferry_engine::session::sender::{GroupReport, SyncOptions, SyncProgress, SyncTarget};
use ferry_engine::session::verify::{verify_image, VerifyReport, VerifySource};
use ferry_protocol::AgentId;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use tokio::sync::watch;
use tracing::info;

use crate::config::{config_path, AgentConfig};
pub use crate::replicate::{rbd_tag, source_state_dir, ProgressSink};
use crate::replicate::{Cycle, CycleOutcome, Replicator};
use crate::uri::{SourceUri, TargetUri};

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
    /// changes.
    pub progress: Option<ProgressSink>,
    /// Replicate blocks of `file:` sources that changed at rest instead of
    /// refusing the cycle (also `[source] accept_changes_at_rest`).
    pub accept_changes_at_rest: bool,
}

/// Runs one replication cycle of every pair (`ferry sync`); returns when the
/// (group) recovery point is committed. Always commits a point, changed or
/// not.
pub async fn sync(request: SyncRequest<'_>) -> Result<GroupReport> {
    let replicator = Replicator::load(request.dir)?;
    if let Some(limit) = request.bwlimit {
        replicator.limiter().set_rate(limit);
    }
    // SIGHUP re-reads the config's send limit while the sync runs (only
    // without --bwlimit, which overrides the config).
    let reload = request.bwlimit.is_none().then(|| {
        let limiter = replicator.limiter().clone();
        let reload_path = config_path(request.dir, None);
        tokio::spawn(async move {
            let Ok(mut hangup) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
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
        })
    });
    let bars = request
        .progress_bar
        .then(|| ProgressBars::new(request.pairs));
    let sink: Option<ProgressSink> = match (&bars, request.progress.clone()) {
        (None, sink) => sink,
        (Some(bars), extra) => {
            let senders = bars.senders.clone();
            Some(std::sync::Arc::new(
                move |index: usize, p: &SyncProgress| {
                    if let Some(tx) = senders.get(index) {
                        let _ = tx.send(p.clone());
                    }
                    if let Some(extra) = &extra {
                        extra(index, p);
                    }
                },
            ))
        }
    };
    let outcome = replicator
        .cycle(Cycle {
            pairs: request.pairs,
            peer: request.peer,
            cluster: request.cluster.clone(),
            progress: sink,
            accept_changes_at_rest: request.accept_changes_at_rest,
            min_recovery_point: 0,
            skip_unchanged: false,
            tweak: request.tweak,
            state_mirror: None,
        })
        .await;
    if let Some(reload) = reload {
        reload.abort();
    }
    if let Some(bars) = bars {
        bars.finish();
    }
    match outcome? {
        CycleOutcome::Committed(report) => Ok(report),
        CycleOutcome::Unchanged => bail!("the cycle committed nothing although it had to"),
    }
}

/// The progress bars of a `ferry sync` on a terminal, one per pair.
struct ProgressBars {
    multi: MultiProgress,
    senders: Vec<watch::Sender<SyncProgress>>,
    tasks: Vec<(ProgressBar, tokio::task::JoinHandle<()>)>,
}

impl ProgressBars {
    fn new(pairs: &[(SourceUri, TargetUri)]) -> Self {
        let multi = MultiProgress::new();
        let mut senders = Vec::with_capacity(pairs.len());
        let mut tasks = Vec::with_capacity(pairs.len());
        for (_, target) in pairs {
            let (tx, rx) = watch::channel(SyncProgress::default());
            senders.push(tx);
            tasks.push(spawn_progress_bar(&multi, target.image.to_string(), rx));
        }
        Self {
            multi,
            senders,
            tasks,
        }
    }

    fn finish(self) {
        for (bar, task) in self.tasks {
            task.abort();
            bar.finish_and_clear();
        }
        let _ = self.multi.clear();
    }
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

/// Compares the source with the standby's copy by hashes; an `rbd:` source
/// is read from `cluster` (as [`crate::cli::ceph::CephArgs::for_dir`]
/// resolves it).
pub async fn verify(
    dir: &Path,
    source: &SourceUri,
    target: &TargetUri,
    peer: AgentId,
    cluster: &ClusterSpec,
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
                RbdSource::open_committed(cluster, spec, &state_dir)
            })
            .with_context(|| format!("opening the last replicated snapshot of {source}"))?
        }
    };
    let options = SyncOptions {
        transport: config.transport.clone(),
        pipeline: config.pipeline,
        limiter: ferry_engine::qos::RateLimiter::new(config.send_limit),
        ..SyncOptions::default()
    };
    let target = SyncTarget {
        addr: target.addr,
        peer,
        image: target.image.clone(),
    };
    Ok(verify_image(local, target, identity, options).await?)
}
