//! [`RbdSource`]: the changed extents of an RBD image, read from ferry-owned
//! snapshots.
//!
//! A cycle reads one *capture*: a snapshot `ferry.<TAG>.<unix-ms>` taken when
//! the cycle starts (or earlier, for a whole group at once by
//! [`super::group::capture_group`]). The extents listed by
//! `rbd_diff_iterate2(from = committed snapshot)` on the capture are exactly
//! what the standby lacks. Because a snapshot never changes, a cycle is never
//! fuzzy and an interrupted cycle can resume at *any* offset without
//! re-reading what the standby already holds.
//!
//! Snapshots kept per (peer, target): the committed one (the next cycle's
//! base, which the standby still needs) and at most one capture in progress.
//! Everything else carrying this source's tag is removed after a commit.
//!
//! State (`rbd-source.json` in the state directory, checksummed and replaced
//! atomically): committed epoch and snapshot, the capture, the cycle. A
//! source given a [`StateMirror`] also hands each saved state to it before
//! the save counts (a multi-agent site keeps it where another agent taking
//! the replication over reads it).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferry_protocol::Epoch;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use self::reads::{ActiveCycle, ListedAhead};
use super::{unix_ms, ClusterSpec, RbdError, RbdSpec};
use crate::compression::LinkBound;
use crate::source::{
    BufferPool, ChunkAnalyzer, ChunkRecord, CyclePlan, ExtentSource, ImageInfo,
    ListedExtentsAnalyzer, RawChunk, ScanOutcome, SourceError,
};
use crate::standby::{read_checksummed, write_checksummed};
use crate::sys::librbd::{Image, Pool, GROUP_SNAP_PREFIX};

/// Change-detection granularity reported to the pipeline.
const BLOCK_SIZE: u32 = 4096;
/// How much of the image one `rbd_diff_iterate2` call lists.
const LIST_WINDOW: u64 = 1 << 30;
const STATE_FILE: &str = "rbd-source.json";
const STATE_FORMAT: u32 = 1;

/// Tuning of an [`RbdSource`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RbdSourceOptions {
    /// Changed extents of one object closer than this are read as one
    /// extent, and sent as one while the link is not the bottleneck (the
    /// unchanged bytes between them travel too, and the standby writes the
    /// run in one operation); while it is ([`LinkBound`]), only the listed
    /// spans of such a read are sent. Each request costs the OSDs an
    /// operation on both sites (~0.2 ms here); each gap byte costs wire
    /// time, so on a slow link use a small value (`gap ≈ op cost × link
    /// rate`: 2.5 KiB at 100 Mbit/s), and at most 16 KiB: on the lab's 2 GiB
    /// benchmark 16 KiB used the least CPU overall (1.35 wire bytes per
    /// changed byte) while 64 KiB sent 3.7 per changed byte for no gain in
    /// time (benches/RESULTS.md).
    pub coalesce_gap: u32,
    /// Chunks whose reads are in flight at once (each at most one chunk).
    pub chunks_in_flight: usize,
    /// Remove the snapshots a commit made stale on a background thread
    /// instead of before `commit_cycle` returns (the daemon: each removal
    /// waits for a monitor round, about a second on a small cluster, and
    /// the next cycle need not wait for it). A removal cut short by the
    /// process ending is redone by the next open's sweep.
    pub background_sweep: bool,
}

impl Default for RbdSourceOptions {
    fn default() -> Self {
        Self {
            coalesce_gap: 16 * 1024,
            chunks_in_flight: 8,
            background_sweep: false,
        }
    }
}

impl RbdSourceOptions {
    /// The gap worth bridging for a link of `bytes_per_second` (unlimited =
    /// `None`), assuming a 0.2 ms OSD operation; at most 16 KiB.
    pub fn gap_for_link(bytes_per_second: Option<u64>) -> u32 {
        const OP_SECONDS_INV: u64 = 5_000; // 1 / 0.2 ms
        const MAX_GAP: u64 = 16 * 1024;
        let gap = bytes_per_second.map_or(MAX_GAP, |r| (r / OP_SECONDS_INV).min(MAX_GAP));
        u32::try_from(gap).unwrap_or(u32::MAX)
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
struct SnapRef {
    epoch: u64,
    /// What the standby holds at `epoch`.
    snap: String,
    /// When `snap` is a group snapshot: the user snapshot taken just before
    /// it, the next cycle's diff base (see [`Capture::base`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    base: Option<String>,
}

impl SnapRef {
    /// The snapshot the next cycle's diff starts from.
    fn diff_base(&self) -> &str {
        self.base.as_deref().unwrap_or(&self.snap)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Capture {
    /// The snapshot the cycle reads (a user snapshot, or the image's
    /// snapshot of a group snapshot, `.group.…`, opened by id).
    pub(crate) snap: String,
    pub(crate) size: u64,
    /// For a group snapshot: a user snapshot of this image taken just
    /// before it. `rbd_diff_iterate2` can only start from a user snapshot,
    /// so it becomes the next cycle's base; everything written after it is
    /// listed then, a superset of what was written after the group
    /// snapshot (the few writes in between are sent twice, harmlessly).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) base: Option<String>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct CycleRef {
    epoch: u64,
    base_epoch: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct SourceState {
    format: u32,
    image: String,
    committed: Option<SnapRef>,
    capture: Option<Capture>,
    cycle: Option<CycleRef>,
}

/// Receives a copy of an [`RbdSource`]'s state each time it is saved: the
/// bytes of its state file, before the save counts (the sweep of the
/// snapshots it made stale comes after). An error fails the save.
pub trait StateMirror: Send + Sync {
    /// Keeps `state` (the state file's new content).
    fn store(&self, state: &[u8]) -> Result<(), String>;
}

/// An RBD image as a replication source.
pub struct RbdSource {
    spec: RbdSpec,
    tag: String,
    state_dir: PathBuf,
    head: Arc<Image>,
    pool: Arc<Pool>,
    state: SourceState,
    options: RbdSourceOptions,
    cycle: Option<ActiveCycle>,
    /// The start of the next cycle's listing, made by
    /// [`ExtentSource::data_bytes_ahead`].
    ahead: Option<ListedAhead>,
    /// The sender's link-bound signal ([`ExtentSource::follow_link`]):
    /// while set, bridged gaps are not sent.
    link: LinkBound,
    /// Where each saved state is copied, if anywhere.
    mirror: Option<Arc<dyn StateMirror>>,
}

fn state_error(e: RbdError) -> SourceError {
    e.into()
}

impl RbdSource {
    /// The snapshot a cycle of `plan` lists its changes since (`None`: a
    /// full copy), or why the plan does not fit this source's state.
    fn base_snap_of(&self, plan: &CyclePlan) -> Result<Option<String>, SourceError> {
        let committed = self.committed_epoch();
        let bad = |reason| SourceError::bad_plan(plan, committed, reason);
        if plan.epoch <= committed {
            return Err(bad("epoch is not newer than the committed one"));
        }
        if plan.base_epoch == Epoch(0) {
            return Ok(None);
        }
        match &self.state.committed {
            Some(c) if c.epoch == plan.base_epoch.get() => Ok(Some(c.diff_base().to_owned())),
            _ => Err(bad("no snapshot of that base epoch")),
        }
    }

    /// Opens `spec` (no snapshot part) on `cluster`, with its bookkeeping in
    /// `state_dir`. `tag` names this replication (peer and target) in the
    /// snapshot names, so two replications of one image never touch each
    /// other's snapshots.
    pub fn open(
        cluster: &ClusterSpec,
        spec: &RbdSpec,
        state_dir: &Path,
        tag: &str,
        options: RbdSourceOptions,
    ) -> Result<Self, SourceError> {
        if spec.snap.is_some() {
            return Err(state_error(RbdError::Unsupported {
                image: spec.to_string(),
                reason: "replicate an image, not a snapshot (ferry takes its own snapshots)".into(),
            }));
        }
        if tag.is_empty()
            || !tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(SourceError::InvalidConfig {
                reason: "snapshot tag must be non-empty [A-Za-z0-9_-]",
            });
        }
        std::fs::create_dir_all(state_dir).map_err(|source| SourceError::Io {
            op: "create state directory",
            path: state_dir.to_path_buf(),
            source,
        })?;
        let pool = spec.open_pool(cluster).map_err(state_error)?;
        let head = Arc::new(pool.open(&spec.image).map_err(|e| state_error(e.into()))?);
        let path = state_dir.join(STATE_FILE);
        let state =
            match read_checksummed::<SourceState>(&path).map_err(|e| state_error(e.into()))? {
                Some(s) if s.format == STATE_FORMAT && s.image == spec.to_string() => s,
                Some(s) => {
                    return Err(state_error(RbdError::Unsupported {
                        image: spec.to_string(),
                        reason: format!(
                            "state file {} belongs to {} (format {})",
                            path.display(),
                            s.image,
                            s.format
                        ),
                    }))
                }
                None => SourceState {
                    format: STATE_FORMAT,
                    image: spec.to_string(),
                    committed: None,
                    capture: None,
                    cycle: None,
                },
            };
        let mut source = Self {
            spec: spec.clone(),
            tag: tag.to_owned(),
            state_dir: state_dir.to_path_buf(),
            head,
            pool,
            state,
            options,
            cycle: None,
            ahead: None,
            link: LinkBound::default(),
            mirror: None,
        };
        source.reconcile()?;
        Ok(source)
    }

    /// The committed snapshot of the replication whose state is in
    /// `state_dir`, opened read-only for hashing (`ferry verify`). Reads the
    /// state only; touches no snapshot, so it is safe while a sync runs.
    pub fn open_committed(
        cluster: &ClusterSpec,
        spec: &RbdSpec,
        state_dir: &Path,
    ) -> Result<crate::hashing::VerifySource, SourceError> {
        let path = state_dir.join(STATE_FILE);
        let state = read_checksummed::<SourceState>(&path)
            .map_err(|e| state_error(e.into()))?
            .filter(|s| s.format == STATE_FORMAT && s.image == spec.to_string());
        let Some(committed) = state.and_then(|s| s.committed) else {
            return Err(SourceError::NotCommittable {
                epoch: Epoch(0),
                reason: "nothing of this image has been replicated to that standby yet",
            });
        };
        let pool = spec.open_pool(cluster).map_err(state_error)?;
        let image = pool
            .open_read_only(&spec.image, Some(&committed.snap))
            .map_err(|e| state_error(e.into()))?;
        let size = image.size().map_err(|e| state_error(e.into()))?;
        Ok(crate::hashing::VerifySource {
            reader: Arc::new(image),
            size,
            name: format!("{spec}@{}", committed.snap),
        })
    }

    /// The image address.
    pub fn spec(&self) -> &RbdSpec {
        &self.spec
    }

    /// The writable handle of the image (snapshots, locks).
    pub(crate) fn head(&self) -> &Arc<Image> {
        &self.head
    }

    /// The image's pool.
    pub(crate) fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// This replication's tag (peer and target).
    pub(crate) fn tag(&self) -> &str {
        &self.tag
    }

    /// The snapshot the standby holds, if any.
    pub(crate) fn committed_snap(&self) -> Option<&str> {
        self.state.committed.as_ref().map(|c| c.snap.as_str())
    }

    /// Snapshot name prefix of this replication.
    fn prefix(&self) -> String {
        format!("ferry.{}.", self.tag)
    }

    /// A fresh capture name for `instant_ms`.
    pub(crate) fn capture_name(&self, instant_ms: u64) -> String {
        format!("{}{instant_ms}", self.prefix())
    }

    /// The capture waiting to be replicated, if any.
    pub fn capture(&self) -> Option<&str> {
        self.state.capture.as_ref().map(|c| c.snap.as_str())
    }

    /// The state file of the replication whose state is in `state_dir`
    /// (where a [`StateMirror`]'s copy goes back to before an open).
    pub fn state_file(state_dir: &Path) -> PathBuf {
        state_dir.join(STATE_FILE)
    }

    /// Hands every state saved from now on to `mirror` too.
    pub fn with_mirror(mut self, mirror: Arc<dyn StateMirror>) -> Self {
        self.mirror = Some(mirror);
        self
    }

    fn save(&mut self, state: SourceState) -> Result<(), SourceError> {
        let path = self.state_dir.join(STATE_FILE);
        write_checksummed(&path, &state).map_err(|e| state_error(e.into()))?;
        if let Some(mirror) = &self.mirror {
            let io = |source| SourceError::Io {
                op: "mirror the state file",
                path: path.clone(),
                source,
            };
            let bytes = std::fs::read(&path).map_err(io)?;
            mirror
                .store(&bytes)
                .map_err(|reason| io(std::io::Error::other(reason)))?;
        }
        self.state = state;
        Ok(())
    }

    /// Records `snap` (already created on the image) as the capture, with
    /// the user snapshot taken just before it when `snap` is a group
    /// snapshot.
    pub(crate) fn adopt_capture(
        &mut self,
        snap: String,
        base: Option<String>,
    ) -> Result<(), SourceError> {
        let size = self.snap_size(&snap)?;
        let mut state = self.state.clone();
        state.capture = Some(Capture { snap, size, base });
        state.cycle = None;
        self.save(state)
    }

    fn snap_size(&self, snap: &str) -> Result<u64, SourceError> {
        let snaps = self.head.snapshots().map_err(|e| state_error(e.into()))?;
        snaps
            .iter()
            .find(|s| s.name == snap)
            .map(|s| s.size)
            .ok_or_else(|| {
                state_error(RbdError::MissingSnapshot {
                    image: self.spec.to_string(),
                    snap: snap.to_owned(),
                    reason: "just created",
                })
            })
    }

    /// The epoch of the cycle whose capture this source still holds
    /// (begun, not recorded as committed), if any.
    pub fn pending_epoch(&self) -> Option<Epoch> {
        match (&self.state.cycle, &self.state.capture) {
            (Some(cycle), Some(_)) => Some(Epoch(cycle.epoch)),
            _ => None,
        }
    }

    /// Whether the image holds no write since the point the standby
    /// committed last, so a new capture would repeat that point. Reads the
    /// head's diff from the committed diff base (with fast-diff, the object
    /// maps only; no lock, no snapshot, no monitor round trip). Conservative:
    /// any listed extent, a size change, or a capture or cycle in progress
    /// answers `false`. Every write acknowledged before the call began is
    /// seen (librbd marks an object in the head's object map before it
    /// writes it), so "unchanged" means the standby already holds every
    /// such write.
    pub fn unchanged_since_commit(&self) -> Result<bool, SourceError> {
        if self.state.capture.is_some() || self.state.cycle.is_some() {
            return Ok(false);
        }
        let Some(committed) = &self.state.committed else {
            return Ok(false);
        };
        let base = committed.diff_base();
        let size = self.head.size().map_err(|e| state_error(e.into()))?;
        if size != self.snap_size(base)? {
            return Ok(false);
        }
        let mut changed = false;
        let listed = self
            .head
            .diff_iterate(Some(base), 0, size, true, &mut |_, _, _| {
                changed = true;
                false // one extent is enough
            });
        match listed {
            Ok(()) => Ok(!changed),
            Err(_) if changed => Ok(false),
            Err(e) => Err(state_error(e.into())),
        }
    }

    /// Forgets the capture and removes its snapshot.
    pub(crate) fn drop_capture(&mut self) -> Result<(), SourceError> {
        let Some(capture) = self.state.capture.clone() else {
            return Ok(());
        };
        let mut state = self.state.clone();
        state.capture = None;
        state.cycle = None;
        self.save(state)?;
        self.remove_snap(&capture.snap);
        if let Some(base) = &capture.base {
            self.remove_snap(base);
        }
        Ok(())
    }

    /// Removes a user snapshot of this replication; group snapshots are
    /// removed through their group ([`super::group::capture_group`]).
    fn remove_snap(&self, snap: &str) {
        if snap.starts_with(GROUP_SNAP_PREFIX) {
            return;
        }
        match self.head.snap_remove(snap) {
            Ok(()) => debug!(image = %self.spec, snap, "removed snapshot"),
            Err(e) if e.is_not_found() => {}
            Err(error) => {
                warn!(image = %self.spec, snap, %error, "could not remove a ferry snapshot; it will be retried after the next commit")
            }
        }
    }

    /// Checks the snapshots the state names and removes stray ones.
    fn reconcile(&mut self) -> Result<(), SourceError> {
        let snaps = self.head.snapshots().map_err(|e| state_error(e.into()))?;
        let has = |name: &str| snaps.iter().any(|s| s.name == name);
        let mut state = self.state.clone();
        if let Some(c) = &state.committed {
            if !has(&c.snap) || !has(c.diff_base()) {
                warn!(image = %self.spec, snap = %c.snap, "the committed ferry snapshot is gone; the next cycle is a full copy");
                state.committed = None;
            }
        }
        if let Some(c) = &state.capture {
            if !has(&c.snap) || c.base.as_deref().is_some_and(|b| !has(b)) {
                warn!(image = %self.spec, snap = %c.snap, "the capture snapshot is gone; a new one will be taken");
                state.capture = None;
                state.cycle = None;
            }
        }
        if state != self.state {
            self.save(state)?;
        }
        self.sweep();
        Ok(())
    }

    /// Removes snapshots with this replication's tag that the state does not name.
    fn sweep(&self) {
        for snap in self.stale_snaps() {
            self.remove_snap(&snap);
        }
    }

    /// [`Self::sweep`] on a thread of its own, with its own reference to
    /// the image.
    fn sweep_in_background(&self) {
        let stale = self.stale_snaps();
        if stale.is_empty() {
            return;
        }
        let head = self.head.clone();
        let spec = self.spec.to_string();
        let spawned = std::thread::Builder::new()
            .name("rbd-sweep".into())
            .spawn(move || {
                for snap in stale {
                    match head.snap_remove(&snap) {
                        Ok(()) => debug!(image = %spec, snap, "removed snapshot"),
                        Err(e) if e.is_not_found() => {}
                        Err(error) => {
                            warn!(image = %spec, snap, %error, "could not remove a ferry snapshot; it will be retried after the next commit")
                        }
                    }
                }
            });
        if let Err(error) = spawned {
            warn!(image = %self.spec, %error, "could not start the snapshot sweep; the next open retries it");
        }
    }

    /// This replication's snapshots the state does not name (group
    /// snapshots excluded: their group removes them).
    fn stale_snaps(&self) -> Vec<String> {
        let Ok(snaps) = self.head.snapshots() else {
            return Vec::new();
        };
        let prefix = self.prefix();
        let keep = |name: &str| {
            self.state
                .committed
                .as_ref()
                .is_some_and(|c| c.snap == name || c.base.as_deref() == Some(name))
                || self
                    .state
                    .capture
                    .as_ref()
                    .is_some_and(|c| c.snap == name || c.base.as_deref() == Some(name))
        };
        snaps
            .into_iter()
            .filter(|s| {
                s.name.starts_with(&prefix)
                    && !keep(&s.name)
                    && !s.name.starts_with(GROUP_SNAP_PREFIX)
            })
            .map(|s| s.name)
            .collect()
    }
}

impl ExtentSource for RbdSource {
    fn info(&self) -> Result<ImageInfo, SourceError> {
        let size = match &self.state.capture {
            Some(c) => c.size,
            None => self.head.size().map_err(|e| state_error(e.into()))?,
        };
        Ok(ImageInfo {
            size,
            block_size: BLOCK_SIZE,
        })
    }

    fn committed_epoch(&self) -> Epoch {
        Epoch(self.state.committed.as_ref().map_or(0, |c| c.epoch))
    }

    fn resumable_offset(&self, epoch: Epoch) -> u64 {
        // The capture never changes: every offset of its cycle is resumable.
        match (&self.state.cycle, &self.state.capture) {
            (Some(c), Some(capture)) if c.epoch == epoch.get() => capture.size,
            _ => 0,
        }
    }

    fn data_bytes_ahead(&mut self, plan: &CyclePlan) -> Result<Option<u64>, SourceError> {
        self.ahead = None;
        // Only a capture taken ahead (a group capture) and not yet started
        // for another epoch: otherwise `begin_cycle` takes a new one.
        let Some(capture) = self.state.capture.clone() else {
            return Ok(None);
        };
        let other_cycle = self
            .state
            .cycle
            .is_some_and(|c| c.epoch != plan.epoch.get() || c.base_epoch != plan.base_epoch.get());
        if other_cycle {
            return Ok(None);
        }
        let Ok(base_snap) = self.base_snap_of(plan) else {
            return Ok(None);
        };
        let snap_image = Arc::new(
            self.pool
                .open_read_only(&self.spec.image, Some(&capture.snap))
                .map_err(|e| state_error(e.into()))?,
        );
        let ahead = ListedAhead::list(
            snap_image,
            capture.snap,
            base_snap,
            capture.size,
            plan.resume_offset,
        )?;
        let bytes = ahead.data_bytes();
        self.ahead = Some(ahead);
        Ok(bytes)
    }

    fn begin_cycle(&mut self, plan: &CyclePlan, chunk_size: u32) -> Result<ImageInfo, SourceError> {
        let base_snap = self.base_snap_of(plan)?;
        let ahead = self.ahead.take();
        // A capture started for another epoch is stale: take a fresh one.
        if let Some(c) = self.state.cycle {
            if c.epoch != plan.epoch.get() || c.base_epoch != plan.base_epoch.get() {
                info!(image = %self.spec, old_epoch = c.epoch, epoch = %plan.epoch, "dropping the capture of an abandoned cycle");
                self.drop_capture()?;
            }
        }
        if plan.resume_offset > 0 && self.state.cycle.is_none() {
            return Err(SourceError::ResumeBeyondProgress {
                epoch: plan.epoch,
                requested: plan.resume_offset,
                resumable: 0,
            });
        }
        if self.state.capture.is_none() {
            let name = self.capture_name(unix_ms());
            self.head
                .snap_create(&name)
                .map_err(|e| state_error(e.into()))?;
            self.adopt_capture(name, None)?;
        }
        let Some(capture) = self.state.capture.clone() else {
            return Err(SourceError::Misuse {
                reason: "capture vanished while starting a cycle",
            });
        };
        let mut state = self.state.clone();
        state.cycle = Some(CycleRef {
            epoch: plan.epoch.get(),
            base_epoch: plan.base_epoch.get(),
        });
        self.save(state)?;
        let chunk_size = u64::from(chunk_size.max(BLOCK_SIZE));
        let resume = plan.resume_offset.min(capture.size);
        let ahead = ahead.filter(|a| a.is_for(&capture.snap, base_snap.as_deref(), resume));
        info!(image = %self.spec, epoch = %plan.epoch, base = ?base_snap, capture = %capture.snap, resume, listed_ahead = ahead.is_some(), "reading RBD capture");
        let cycle = match ahead {
            Some(listed) => ActiveCycle::from_listed(listed, chunk_size),
            _ => {
                let snap_image = Arc::new(
                    self.pool
                        .open_read_only(&self.spec.image, Some(&capture.snap))
                        .map_err(|e| state_error(e.into()))?,
                );
                ActiveCycle::new(snap_image, base_snap, capture.size, chunk_size, resume)
            }
        };
        self.cycle = Some(cycle);
        Ok(ImageInfo {
            size: capture.size,
            block_size: BLOCK_SIZE,
        })
    }

    fn read_next(&mut self, _pool: &BufferPool) -> Result<Option<RawChunk>, SourceError> {
        let Some(cycle) = self.cycle.as_mut() else {
            return Err(SourceError::Misuse {
                reason: "read_next without begin_cycle",
            });
        };
        cycle.next_chunk(
            u64::from(self.options.coalesce_gap),
            self.options.chunks_in_flight,
            self.link.get(),
        )
    }

    fn analyzer(&self) -> Arc<dyn ChunkAnalyzer> {
        Arc::new(ListedExtentsAnalyzer)
    }

    fn record(&mut self, _record: &ChunkRecord) -> Result<(), SourceError> {
        Ok(())
    }

    fn follow_link(&mut self, link: LinkBound) {
        self.link = link;
    }

    fn end_scan(&mut self) -> Result<ScanOutcome, SourceError> {
        if let Some(cycle) = self.cycle.take() {
            let (bridged_read, bridged_cut) = cycle.bridged();
            debug!(
                image = %self.spec,
                bridged_read,
                bridged_cut,
                "bytes read only to bridge gaps between listed extents, and those not sent (link-bound)"
            );
        }
        Ok(ScanOutcome { fuzzy: false })
    }

    fn abort_scan(&mut self) {
        // Dropping the in-flight reads waits for them; the capture stays.
        self.cycle = None;
    }

    fn commit_cycle(&mut self, epoch: Epoch) -> Result<(), SourceError> {
        let (Some(cycle), Some(capture)) = (self.state.cycle, self.state.capture.clone()) else {
            return Err(SourceError::NotCommittable {
                epoch,
                reason: "no cycle of this image is in progress",
            });
        };
        if cycle.epoch != epoch.get() {
            return Err(SourceError::NotCommittable {
                epoch,
                reason: "another epoch is in progress",
            });
        }
        let mut state = self.state.clone();
        state.committed = Some(SnapRef {
            epoch: epoch.get(),
            snap: capture.snap,
            base: capture.base,
        });
        state.capture = None;
        state.cycle = None;
        self.save(state)?;
        self.cycle = None;
        // The standby now holds `epoch`: only its snapshot is still needed.
        if self.options.background_sweep {
            self.sweep_in_background();
        } else {
            self.sweep();
        }
        Ok(())
    }

    fn discard_cycle(&mut self) -> Result<(), SourceError> {
        self.cycle = None;
        self.ahead = None;
        self.drop_capture()
    }
}

mod base;
mod coalesce;
mod reads;
#[cfg(test)]
mod tests;
