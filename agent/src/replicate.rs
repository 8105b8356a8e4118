//! One replication cycle of a set of (source, target) pairs: the entry point
//! shared by the daemon's continuous replication and by `ferry sync`.
//!
//! A [`Replicator`] holds what every cycle needs and nothing re-reads from
//! disk per cycle: the agent's identity, its configuration (replaced only by
//! [`Replicator::reload`], on `SIGHUP`), and the send limiter the caller owns
//! (the daemon's QoS limiter, or the CLI's `--bwlimit`). A cycle opens each
//! source with its per-target state and lock, captures the RBD sources of
//! the cycle at one instant, and drives the group session to the standby
//! ([`sync_group`]), which commits one recovery point for every image.
//! Errors are typed ([`ReplicateError`]) so the daemon can count and report
//! them without guessing.
//!
//! A cycle may be asked to skip work when nothing changed
//! ([`Cycle::skip_unchanged`]): when every source is an RBD image whose head
//! holds no write since the point the standby committed, no snapshot is
//! taken and nothing is sent ([`CycleOutcome::Unchanged`]). The standby
//! then already holds every write acknowledged before the cycle began.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ferry_engine::identity::{Identity, IdentityError};
use ferry_engine::qos::RateLimiter;
use ferry_engine::rbd::group::capture_group;
use ferry_engine::rbd::source::{RbdSource, RbdSourceOptions, StateMirror};
use ferry_engine::rbd::ClusterSpec;
use ferry_engine::session::sender::{
    standby_committed_epochs, sync_group, GroupReport, ImageJob, SyncError, SyncOptions,
    SyncProgress,
};
use ferry_engine::source::diffstream::DiffSource;
use ferry_engine::source::file::{FileSource, FileSourceOptions};
use ferry_engine::source::{ExtentSource, SourceError};
use ferry_engine::sync_util::run_all;
use ferry_protocol::{AgentId, Epoch, ImageName};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::{AgentConfig, ConfigError};
use crate::sync_util::lock;
use crate::uri::{SourceUri, TargetUri};

/// Receives live per-image progress of a cycle: (pair index, progress).
pub type ProgressSink = Arc<dyn Fn(usize, &SyncProgress) + Send + Sync>;

/// Why a replication cycle failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplicateError {
    /// No pair was given.
    #[error("nothing to replicate: give SOURCE TARGET")]
    NothingToReplicate,
    /// The pairs of one cycle name more than one standby agent.
    #[error(
        "all images of one sync must go to the same standby agent: {first} and {other} differ"
    )]
    MixedStandbys {
        /// The first pair's standby.
        first: std::net::SocketAddr,
        /// Another pair's standby.
        other: std::net::SocketAddr,
    },
    /// The agent's identity could not be loaded.
    #[error("loading the agent identity")]
    Identity(#[source] IdentityError),
    /// The configuration could not be loaded.
    #[error("loading the configuration")]
    Config(#[source] ConfigError),
    /// Another cycle of the same pair holds its lock.
    #[error("another `ferry sync` of {uri} to {image} is running (lock {lock} is held)")]
    Busy {
        /// The source.
        uri: String,
        /// The standby image.
        image: String,
        /// The lock file.
        lock: PathBuf,
    },
    /// The per-target state directory or lock could not be prepared.
    #[error("{op} {path}")]
    StateDir {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A source could not be opened.
    #[error("opening source {uri}")]
    OpenSource {
        /// The source.
        uri: String,
        /// The cause.
        #[source]
        error: SourceError,
    },
    /// The RBD snapshots of the recovery point could not be taken.
    #[error("taking the recovery point's RBD snapshots")]
    Capture(#[source] SourceError),
    /// Checking whether the sources changed failed.
    #[error("checking {uri} for changes since the last recovery point")]
    ChangeCheck {
        /// The source.
        uri: String,
        /// The cause.
        #[source]
        error: SourceError,
    },
    /// The session with the standby failed.
    #[error(transparent)]
    Sync(#[from] SyncError),
}

/// One cycle's request.
pub struct Cycle<'a> {
    /// What to replicate where: one pair, or several images of one group
    /// (all on the same standby agent, committed as one recovery point).
    pub pairs: &'a [(SourceUri, TargetUri)],
    /// The standby agent's fingerprint.
    pub peer: AgentId,
    /// Cluster of `rbd:` sources (default: the configuration's `[ceph]`).
    pub cluster: Option<ClusterSpec>,
    /// Live per-image progress.
    pub progress: Option<ProgressSink>,
    /// Replicate blocks of `file:` sources that changed at rest instead of
    /// refusing the cycle (also `[source] accept_changes_at_rest`).
    pub accept_changes_at_rest: bool,
    /// New recovery point ids are above this (the newest point the standby
    /// is known to hold).
    pub min_recovery_point: u64,
    /// Commit nothing when every source is an RBD image unchanged since the
    /// committed point (the daemon's idle cycles).
    pub skip_unchanged: bool,
    /// Adjust options before the run (tests and the demo shorten timeouts).
    pub tweak: Option<&'a (dyn Fn(&mut SyncOptions) + Sync)>,
    /// Where each `rbd:` source's state goes too each time it is saved, by
    /// standby image (a multi-agent site: see `orchestrator/handover.rs`).
    pub state_mirror: Option<&'a MirrorFor>,
}

/// The [`StateMirror`] of the source replicated to a standby image.
pub type MirrorFor = dyn Fn(&ImageName) -> Arc<dyn StateMirror> + Send + Sync;

/// What a cycle did.
#[derive(Debug)]
pub enum CycleOutcome {
    /// A recovery point was committed on the standby.
    Committed(GroupReport),
    /// Nothing changed since the committed point; nothing was captured or
    /// sent (only with [`Cycle::skip_unchanged`]).
    Unchanged,
}

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

/// What every cycle of one agent directory shares (see the module doc).
pub struct Replicator {
    dir: PathBuf,
    identity: Identity,
    config: Mutex<Arc<AgentConfig>>,
    limiter: RateLimiter,
}

impl Replicator {
    /// A replicator for agent directory `dir` with what the caller already
    /// holds in memory.
    pub fn new(dir: &Path, identity: Identity, config: AgentConfig, limiter: RateLimiter) -> Self {
        Self {
            dir: dir.to_path_buf(),
            identity,
            config: Mutex::new(Arc::new(config)),
            limiter,
        }
    }

    /// Loads the identity and the configuration of `dir` (the CLI); the
    /// send limiter starts at the configuration's send limit.
    pub fn load(dir: &Path) -> Result<Self, ReplicateError> {
        let identity = Identity::load(dir).map_err(ReplicateError::Identity)?;
        let path = crate::config::config_path(dir, None);
        let config = AgentConfig::load(path.as_deref()).map_err(ReplicateError::Config)?;
        let limiter = RateLimiter::new(config.send_limit);
        Ok(Self::new(dir, identity, config, limiter))
    }

    /// The send limiter every cycle uses (shared: changing its rate changes
    /// running cycles at once).
    pub fn limiter(&self) -> &RateLimiter {
        &self.limiter
    }

    /// The configuration cycles use now.
    pub fn config(&self) -> Arc<AgentConfig> {
        lock(&self.config).clone()
    }

    /// Replaces the configuration; the next cycle uses it (a running one
    /// keeps the one it started with). The send limiter is left alone: its
    /// owner decides what wins.
    pub fn reload(&self, config: AgentConfig) {
        *lock(&self.config) = Arc::new(config);
    }

    /// The agent directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The agent's identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Sync options from the current configuration and the shared limiter.
    pub fn options(&self) -> SyncOptions {
        let config = self.config();
        SyncOptions {
            transport: config.transport.clone(),
            pipeline: config.pipeline,
            limiter: self.limiter.clone(),
            ..SyncOptions::default()
        }
    }

    /// Runs one replication cycle of every pair; returns when the (group)
    /// recovery point is committed, or when nothing changed and the request
    /// allowed skipping.
    pub async fn cycle(&self, request: Cycle<'_>) -> Result<CycleOutcome, ReplicateError> {
        let Some((_, first_target)) = request.pairs.first() else {
            return Err(ReplicateError::NothingToReplicate);
        };
        let addr = first_target.addr;
        if let Some((_, other)) = request.pairs.iter().find(|(_, t)| t.addr != addr) {
            return Err(ReplicateError::MixedStandbys {
                first: addr,
                other: other.addr,
            });
        }
        let config = self.config();
        let mut options = self.options();
        options.min_recovery_point = request.min_recovery_point;
        if let Some(tweak) = request.tweak {
            tweak(&mut options);
        }
        let mut opened = self.open_sources(&request, &config, &options)?;
        self.roll_forward(&mut opened, &request, addr, &options)
            .await?;
        if request.skip_unchanged && opened.all_unchanged(&request)? {
            return Ok(CycleOutcome::Unchanged);
        }
        let (jobs, locks) = opened.into_jobs(&request)?;
        let (jobs, observers) = with_progress(jobs, &request);
        let result = sync_group(jobs, addr, request.peer, self.identity.clone(), options).await;
        for task in observers {
            task.abort();
        }
        drop(locks);
        Ok(CycleOutcome::Committed(result?))
    }

    /// Takes the group capture of the RBD sources of `request` now, for a
    /// cycle that runs later (a reprotect captures while the old primary
    /// installs its copies): that cycle finds every image holding the same
    /// capture and reads it instead of taking another. Other sources are
    /// left alone; they are read when the cycle runs.
    pub async fn capture_ahead(&self, request: Cycle<'_>) -> Result<(), ReplicateError> {
        let config = self.config();
        let options = self.options();
        let opened = self.open_sources(&request, &config, &options)?;
        let mut rbd: Vec<RbdSource> = opened
            .sources
            .into_iter()
            .filter_map(|o| match o {
                Opened::Rbd(source) => Some(*source),
                Opened::Other(_) => None,
            })
            .collect();
        capture_rbd(&mut rbd.iter_mut().collect::<Vec<_>>())
    }

    /// RBD sources that still hold the capture of a cycle the standby
    /// already committed (the sync died between the standby's commit and
    /// the source's record) record it now, before anything is captured:
    /// otherwise planning would record it and take the next capture image
    /// by image, not as one group snapshot.
    async fn roll_forward(
        &self,
        opened: &mut OpenedSources,
        request: &Cycle<'_>,
        addr: std::net::SocketAddr,
        options: &SyncOptions,
    ) -> Result<(), ReplicateError> {
        let pending: Vec<(usize, Epoch)> = opened
            .sources
            .iter()
            .enumerate()
            .filter_map(|(i, o)| match o {
                Opened::Rbd(rbd) => rbd.pending_epoch().map(|e| (i, e)),
                Opened::Other(_) => None,
            })
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        let images: Vec<ImageName> = pending
            .iter()
            .map(|(i, _)| request.pairs[*i].1.image.clone())
            .collect();
        let committed =
            standby_committed_epochs(&images, addr, request.peer, &self.identity, options).await?;
        for ((index, epoch), standby) in pending.into_iter().zip(committed) {
            if standby != epoch {
                continue;
            }
            if let Opened::Rbd(rbd) = &mut opened.sources[index] {
                tokio::task::block_in_place(|| rbd.commit_cycle(epoch)).map_err(|error| {
                    ReplicateError::OpenSource {
                        uri: request.pairs[index].0.to_string(),
                        error,
                    }
                })?;
                info!(source = %request.pairs[index].0, %epoch, "the standby had committed the interrupted cycle; recorded it before capturing");
            }
        }
        Ok(())
    }

    fn open_sources(
        &self,
        request: &Cycle<'_>,
        config: &AgentConfig,
        options: &SyncOptions,
    ) -> Result<OpenedSources, ReplicateError> {
        let mut opened = OpenedSources::default();
        let cluster = request
            .cluster
            .clone()
            .unwrap_or_else(|| config.ceph.clone());
        let coalesce_gap = config
            .coalesce_gap
            .unwrap_or_else(|| RbdSourceOptions::gap_for_link(options.limiter.rate()));
        // RBD images are opened all at once below (each open waits for a
        // few round trips to the cluster; a 20-image group paid them one
        // after the other every cycle).
        let mut slots: Vec<Option<Opened>> = Vec::with_capacity(request.pairs.len());
        let mut rbd_opens = Vec::new();
        for (source, target) in request.pairs {
            let state_dir = source_state_dir(&self.dir, request.peer, &target.image);
            opened
                .locks
                .push(take_pair_lock(source, target, &state_dir)?);
            let open_error = |error| ReplicateError::OpenSource {
                uri: source.to_string(),
                error,
            };
            let opened_source = match source {
                SourceUri::File(path) => {
                    let file_options = FileSourceOptions {
                        accept_changes_at_rest: request.accept_changes_at_rest
                            || config.accept_changes_at_rest,
                        ..FileSourceOptions::default()
                    };
                    let file = FileSource::open_with(path, &state_dir, file_options)
                        .map_err(open_error)?;
                    Opened::Other(Box::new(file))
                }
                SourceUri::Diff(diff_dir) => {
                    let diffs = DiffSource::open(diff_dir, &state_dir).map_err(open_error)?;
                    Opened::Other(Box::new(diffs))
                }
                SourceUri::Rbd(spec) => {
                    let tag = rbd_tag(request.peer, &target.image);
                    let rbd_options = RbdSourceOptions {
                        coalesce_gap,
                        // The daemon's next cycle need not wait for the
                        // stale snapshots' removal; `ferry sync` leaves
                        // only what it needs behind when it exits.
                        background_sweep: request.skip_unchanged,
                        ..RbdSourceOptions::default()
                    };
                    let mirror = request.state_mirror.map(|m| m(&target.image));
                    rbd_opens.push((
                        slots.len(),
                        source,
                        spec,
                        state_dir,
                        tag,
                        rbd_options,
                        mirror,
                    ));
                    slots.push(None);
                    continue;
                }
            };
            slots.push(Some(opened_source));
        }
        let results: Vec<(usize, &SourceUri, Result<RbdSource, SourceError>)> =
            tokio::task::block_in_place(|| {
                let cluster = &cluster;
                run_all(
                    rbd_opens
                        .into_iter()
                        .map(|(slot, source, spec, state_dir, tag, options, mirror)| {
                            move || {
                                let result = RbdSource::open(
                                    cluster, spec, &state_dir, &tag, options,
                                )
                                .map(|s| match mirror {
                                    Some(m) => s.with_mirror(m),
                                    None => s,
                                });
                                (slot, source, result)
                            }
                        })
                        .collect(),
                )
            });
        for (slot, source, result) in results {
            let rbd = result.map_err(|error| ReplicateError::OpenSource {
                uri: source.to_string(),
                error,
            })?;
            slots[slot] = Some(Opened::Rbd(Box::new(rbd)));
        }
        opened.sources = slots.into_iter().flatten().collect();
        Ok(opened)
    }
}

/// Takes the lock of one pair's state directory (one cycle per pair).
fn take_pair_lock(
    source: &SourceUri,
    target: &TargetUri,
    state_dir: &Path,
) -> Result<File, ReplicateError> {
    std::fs::create_dir_all(state_dir).map_err(|e| ReplicateError::StateDir {
        op: "creating",
        path: state_dir.to_path_buf(),
        source: e,
    })?;
    let lock_path = state_dir.join("sync.lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| ReplicateError::StateDir {
            op: "opening",
            path: lock_path.clone(),
            source: e,
        })?;
    if lock.try_lock().is_err() {
        return Err(ReplicateError::Busy {
            uri: source.to_string(),
            image: target.image.to_string(),
            lock: lock_path,
        });
    }
    Ok(lock)
}

enum Opened {
    Rbd(Box<RbdSource>),
    Other(Box<dyn ExtentSource>),
}

/// The sources of one cycle, opened and locked, in pair order.
#[derive(Default)]
struct OpenedSources {
    sources: Vec<Opened>,
    /// Held until the cycle ends (dropped with the jobs' owner).
    locks: Vec<File>,
}

impl OpenedSources {
    /// Whether every source is an RBD image unchanged since its committed
    /// point.
    fn all_unchanged(&self, request: &Cycle<'_>) -> Result<bool, ReplicateError> {
        for (opened, (source, _)) in self.sources.iter().zip(request.pairs) {
            let Opened::Rbd(rbd) = opened else {
                return Ok(false);
            };
            let unchanged =
                tokio::task::block_in_place(|| rbd.unchanged_since_commit()).map_err(|error| {
                    ReplicateError::ChangeCheck {
                        uri: source.to_string(),
                        error,
                    }
                })?;
            if !unchanged {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Captures the RBD sources at one instant and makes one job per pair;
    /// returns the pair locks too (held until the session ends).
    fn into_jobs(self, request: &Cycle<'_>) -> Result<(Vec<PairJob>, Vec<File>), ReplicateError> {
        let OpenedSources { sources, locks } = self;
        let mut rbd: Vec<(usize, RbdSource)> = Vec::new();
        let mut others: Vec<(usize, Box<dyn ExtentSource>)> = Vec::new();
        for (index, opened) in sources.into_iter().enumerate() {
            match opened {
                Opened::Rbd(source) => rbd.push((index, *source)),
                Opened::Other(source) => others.push((index, source)),
            }
        }
        capture_rbd(&mut rbd.iter_mut().map(|(_, s)| s).collect::<Vec<_>>())?;
        let mut all: Vec<(usize, Box<dyn ExtentSource>)> = others;
        all.extend(
            rbd.into_iter()
                .map(|(i, s)| (i, Box::new(s) as Box<dyn ExtentSource>)),
        );
        all.sort_by_key(|(i, _)| *i);
        let jobs = all
            .into_iter()
            .zip(request.pairs)
            .map(|((_, source), (_, target))| PairJob {
                source,
                image: target.image.clone(),
            })
            .collect();
        Ok((jobs, locks))
    }
}

/// Captures the RBD images of one cycle at one instant (or finds them all
/// still holding one capture, taken ahead or by an interrupted cycle).
fn capture_rbd(sources: &mut [&mut RbdSource]) -> Result<(), ReplicateError> {
    if sources.is_empty() {
        return Ok(());
    }
    let fresh = tokio::task::block_in_place(|| {
        // Fault tests: a cycle about to write its capture (snapshots) on
        // the sources, e.g. held there while its agent loses the lease.
        ferry_engine::testpoint::reach("cycle::before-capture");
        capture_group(sources)
    })
    .map_err(|error| {
        // Said here: a cycle cancelled meanwhile (its lease lost) logs no
        // failure of its own.
        let chain = crate::logging::error_chain(&error);
        warn!(error = %chain, "capturing the sources failed");
        ReplicateError::Capture(error)
    })?;
    if !fresh {
        info!(
            "reading the RBD capture taken earlier (ahead of the cycle, or by an interrupted sync)"
        );
    }
    Ok(())
}

/// One pair's source and its name on the standby.
struct PairJob {
    source: Box<dyn ExtentSource>,
    image: ImageName,
}

/// Turns pair jobs into session jobs whose progress goes to the request's
/// sink; returns the observer tasks to stop when the cycle ends.
fn with_progress(
    jobs: Vec<PairJob>,
    request: &Cycle<'_>,
) -> (Vec<ImageJob>, Vec<tokio::task::JoinHandle<()>>) {
    let mut image_jobs = Vec::with_capacity(jobs.len());
    let mut observers = Vec::new();
    for (index, job) in jobs.into_iter().enumerate() {
        let (tx, mut rx) = watch::channel(SyncProgress::default());
        let sink = request.progress.clone();
        observers.push(tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let progress = rx.borrow_and_update().clone();
                if let Some(sink) = &sink {
                    sink(index, &progress);
                }
            }
        }));
        image_jobs.push(ImageJob {
            source: job.source,
            image: job.image,
            progress: tx,
        });
    }
    (image_jobs, observers)
}
