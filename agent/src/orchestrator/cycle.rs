//! The replication cycle of a syncing primary group: one loop task per
//! group (`sync_loop`) runs a cycle of all the group's resources through
//! the agent's [`Replicator`] (one group recovery point on the standby),
//! pauses, and runs again. An idle check (nothing written since the
//! committed point, and the standby confirms it holds that point) commits
//! nothing. Recovery point requests (`cycle_now`) are answered by the next
//! cycle that starts after them. The loop records live progress and counts
//! results in the metrics.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ferry_engine::session::sender::{SyncError, SyncOptions, SyncProgress};
use ferry_protocol::ImageName;
use hyper::Method;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::peer::StandbyView;
use super::{
    error_chain, hold, remote_id, CtlError, CtlResult, GroupProgress, Orchestrator,
    ResourceProgress, RpRequest, SyncLoop, CYCLE_ATTEMPTS, RETRY_PAUSE,
};
use crate::control::{GroupId, RecoveryPoint, ResourceState, RpKind, Timestamp};
use crate::metrics::{ErrorKind, Place};
use crate::replicate::{self, Cycle, CycleOutcome, ReplicateError};
use crate::sync_util::lock;
use crate::uri::{SourceUri, TargetUri};

/// Pause between two replication cycles of a syncing group when the last
/// one found nothing to send (an idle group: a cheap change check per pause).
const SYNC_PAUSE: Duration = Duration::from_millis(500);

/// Pause after a cycle that sent changes: the next one starts almost at
/// once, so a busy group's recovery points follow each other closely.
const BUSY_PAUSE: Duration = Duration::from_millis(50);

/// How long a cycle tries to reconnect to a standby agent it lost when the
/// service lists others: then it fails, and the retry goes to the next one.
const STANDBY_SWITCH_AFTER: Duration = Duration::from_secs(10);

/// A cycle that committed a group recovery point on the standby.
pub(super) struct CycleDone {
    pub(super) engine_rp: u64,
    pub(super) report: ferry_engine::session::sender::GroupReport,
}

impl CycleDone {
    /// Whether every image was scanned in this cycle (none resumed an
    /// epoch interrupted earlier, whose scan predates the cycle).
    pub(super) fn fresh(&self) -> bool {
        self.report.images.iter().all(|r| r.resumed_at == 0)
    }
}

impl Orchestrator {
    /// Runs group `gid`'s replication loop now (`leases.rs` decides when).
    pub(super) fn run_loop(self: &Arc<Self>, gid: GroupId) {
        let mut syncs = lock(&self.syncs);
        if let Some(existing) = syncs.get(&gid) {
            if !existing.task.is_finished() {
                return;
            }
        }
        let (tx, rx) = mpsc::channel(16);
        let me = self.clone();
        let task = tokio::spawn(async move { me.sync_loop(gid, rx).await });
        syncs.insert(
            gid,
            SyncLoop {
                cycle_now: tx,
                task,
            },
        );
        lock(&self.progress).insert(
            gid,
            GroupProgress {
                state: "replicating".into(),
                ..GroupProgress::default()
            },
        );
    }

    /// Stops group `gid`'s replication loop and waits until it has ended.
    pub(super) async fn halt_loop(&self, gid: GroupId) {
        let lp = lock(&self.syncs).remove(&gid);
        if let Some(lp) = lp {
            lp.task.abort();
            let _ = lp.task.await;
        }
        if let Some(p) = lock(&self.progress).get_mut(&gid) {
            p.state = "stopped".into();
            p.rate = 0;
        }
    }

    /// Stops every replication loop and gives every lease up (agent
    /// shutdown).
    pub async fn shutdown(&self) {
        self.release_leases().await;
        let ids: Vec<GroupId> = lock(&self.syncs).keys().copied().collect();
        for id in ids {
            self.halt_loop(id).await;
        }
    }

    pub(super) async fn cycle_now(
        &self,
        gid: GroupId,
        name: String,
        kind: RpKind,
    ) -> CtlResult<RecoveryPoint> {
        let sender = lock(&self.syncs).get(&gid).map(|l| l.cycle_now.clone());
        let Some(sender) = sender else {
            return Err(CtlError::BadRequest(
                "the group does not replicate on this agent".into(),
            ));
        };
        let (reply, rx) = oneshot::channel();
        let closed = || CtlError::BadRequest("replication of the group stopped".into());
        sender
            .send(RpRequest { name, kind, reply })
            .await
            .map_err(|_| closed())?;
        match rx.await.map_err(|_| closed())? {
            Ok(rp) => Ok(rp),
            Err(reason) => Err(CtlError::Internal {
                what: "the replication cycle failed".into(),
                source: anyhow::anyhow!(reason),
            }),
        }
    }

    async fn sync_loop(self: Arc<Self>, gid: GroupId, mut rx: mpsc::Receiver<RpRequest>) {
        // (request, failed cycles so far) of each recovery-point request.
        let mut waiting: Vec<(RpRequest, u32)> = Vec::new();
        // Ask the standby before capturing: at the first cycle (this agent
        // may return after a failover) and after a failed one.
        let mut ask_first = true;
        loop {
            // Requests that arrived before this cycle starts are answered
            // by it: it captures every write acknowledged before them.
            while let Ok(w) = rx.try_recv() {
                waiting.push((w, 0));
            }
            if !waiting.is_empty() {
                hold::reach("rp::before-cycle");
            }
            let started = Timestamp::now();
            let clock = std::time::Instant::now();
            self.set_progress(gid, |p| {
                p.state = "replicating".into();
            });
            let name = self
                .db(|s| s.group(gid))
                .map(|g| g.name)
                .unwrap_or_else(|_| gid.to_string());
            let span = tracing::info_span!("cycle", group = %name, peer = tracing::field::Empty);
            let result = tracing::Instrument::instrument(
                self.run_loop_cycle(gid, waiting.is_empty(), ask_first, started),
                span,
            )
            .await;
            let seconds = clock.elapsed().as_secs_f64();
            ask_first = result.is_err();
            let pause = match &result {
                Ok(None) => {
                    self.set_progress(gid, |p| {
                        p.state = "waiting".into();
                        for r in &mut p.resources {
                            r.rate = 0;
                            r.bytes_remaining = 0;
                            r.phase = "unchanged".into();
                        }
                        p.bytes_remaining = 0;
                        p.idle_checks += 1;
                        p.standby_holds_writes_before = Some(started);
                        p.last_cycle_seconds = Some(seconds);
                        p.cycle_completed(0, 0, seconds);
                        p.rate = 0;
                    });
                    SYNC_PAUSE
                }
                Ok(Some(done)) => {
                    let changed: u64 = done.report.images.iter().map(|r| r.bytes_changed).sum();
                    let sent: u64 = done.report.images.iter().map(|r| r.bytes_sent).sum();
                    if changed > 0 {
                        info!(group = %name, recovery_point = done.engine_rp, bytes_changed = changed, bytes_sent = sent, seconds = done.report.seconds, "replication cycle committed");
                    } else {
                        tracing::debug!(group = %name, recovery_point = done.engine_rp, "replication cycle committed (no changes)");
                    }
                    self.set_progress(gid, |p| {
                        p.state = "waiting".into();
                        p.cycles += 1;
                        p.last_recovery_point = Some(done.engine_rp);
                        p.last_cycle_seconds = Some(seconds);
                        p.standby_holds_writes_before = Some(started);
                        p.cycle_completed(done.report.reconnects.into(), sent, seconds);
                        p.rate = 0;
                        p.bytes_remaining = 0;
                        for r in &mut p.resources {
                            r.rate = 0;
                            r.bytes_remaining = 0;
                        }
                    });
                    // Named before the next cycle: the standby pins the
                    // point before its retention could prune it. A cycle that
                    // resumed an interrupted epoch scanned (part of) its
                    // sources before the requests came: it cannot hold every
                    // write acknowledged before them, the next cycle does.
                    let waiters = if done.fresh() {
                        std::mem::take(&mut waiting)
                    } else {
                        info!(group = %name, recovery_point = done.engine_rp, "the cycle resumed an interrupted epoch; recovery point requests wait for the next one");
                        Vec::new()
                    };
                    for (w, _) in waiters {
                        let result = self
                            .register_rp(gid, &w.name, w.kind, done.engine_rp)
                            .await
                            .map_err(|e| error_chain(&e));
                        let _ = w.reply.send(result);
                    }
                    if changed > 0 {
                        BUSY_PAUSE
                    } else {
                        SYNC_PAUSE
                    }
                }
                Err(e) => {
                    let text = error_chain(e);
                    let kind = error_kind(e);
                    self.metrics.record_failure(&name, kind);
                    warn!(group = %name, kind = kind.as_str(), error = %text, "replication cycle failed; retrying");
                    self.set_progress(gid, |p| {
                        p.state = "retrying".into();
                        p.cycle_failed(kind.as_str(), text.clone(), Timestamp::now());
                        p.rate = 0;
                    });
                    // A request fails only after several cycles in a row
                    // failed (a single refused cycle, e.g. the first after
                    // a crash, is retried).
                    let mut still = Vec::new();
                    for (w, failures) in waiting.drain(..) {
                        if failures + 1 >= CYCLE_ATTEMPTS {
                            let _ = w.reply.send(Err(text.clone()));
                        } else {
                            still.push((w, failures + 1));
                        }
                    }
                    waiting = still;
                    RETRY_PAUSE
                }
            };
            tokio::select! {
                w = rx.recv() => match w {
                    Some(w) => waiting.push((w, 0)),
                    None => return,
                },
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    fn raise_rp_floor(&self, gid: GroupId, rp: u64) {
        let mut floors = lock(&self.rp_floor);
        let floor = floors.entry(gid).or_default();
        *floor = (*floor).max(rp);
    }

    /// The newest engine recovery point any standby image of the group
    /// holds; `None` when the standby has no such group any more. With
    /// `confirm = (as_of, floor)` (an idle check found no write since the
    /// committed point `floor` as of `as_of`), the standby records that it
    /// holds every write before `as_of` if it holds `floor` — its metrics
    /// then show the RPO of an idle group as the primary sees it.
    async fn remote_newest_point(
        &self,
        gid: GroupId,
        confirm: Option<(Timestamp, u64)>,
    ) -> CtlResult<Option<StandbyView>> {
        let g = self.db(|s| s.group(gid))?;
        let svc = self.db(|s| s.service(g.service_id))?;
        let remote = remote_id(&g)?;
        let query = confirm.map_or(String::new(), |(as_of, floor)| {
            format!("?as_of={}&floor={floor}", as_of.0)
        });
        let reply = self
            .peer(
                &svc,
                Method::GET,
                &format!("/v1/peer/groups/{remote}/newest-point{query}"),
                None,
            )
            .await?;
        if reply["gone"] == true {
            return Ok(None);
        }
        Ok(Some(StandbyView {
            newest: reply["newest"].as_u64().unwrap_or(0),
            // An agent from before the field accepted whatever it answered.
            accepts: reply["accepts"].as_bool().unwrap_or(true),
        }))
    }

    /// Refuses a cycle before it captures anything when the standby says
    /// the group takes no more replication from this site (it failed over
    /// while this agent was away): a returning old primary must not snapshot
    /// its volumes every retry, and a reprotect's `Begin` must not wait for
    /// such a capture to finish. Asked at a loop's first cycle and after a
    /// failed one; an unreachable standby leaves the cycle to run (and to
    /// fail with the real error).
    async fn refuse_if_standby_failed_over(&self, gid: GroupId) -> CtlResult<()> {
        if let Ok(Some(view)) = self.remote_newest_point(gid, None).await {
            if !view.accepts {
                // As after a cycle the standby refused: a point it holds
                // ends the initial sync this side never recorded, so stop
                // sync and delete stay possible here.
                self.after_refused_cycle(gid, Some(view));
                let name = self.db(|s| s.group(gid))?.name;
                return Err(CtlError::BadRequest(format!(
                    "the standby site failed over group '{name}' and takes no more replication \
                     from this site; nothing was captured. Reprotect on the new primary makes \
                     this site its standby (ferry group reprotect), or delete the group here"
                )));
            }
        }
        Ok(())
    }

    /// One cycle of the replication loop: `None` when nothing changed since
    /// the committed point (`may_skip`: no recovery point is waited for) and
    /// the standby confirmed it still holds that point; otherwise a
    /// committed cycle. An idle check the standby cannot confirm (it is
    /// unreachable, lost the group, or holds an older point) runs a full
    /// cycle instead, so its errors surface as they did before.
    async fn run_loop_cycle(
        self: &Arc<Self>,
        gid: GroupId,
        may_skip: bool,
        ask_first: bool,
        started: Timestamp,
    ) -> CtlResult<Option<CycleDone>> {
        if ask_first {
            self.refuse_if_standby_failed_over(gid).await?;
        }
        if may_skip {
            if let Some(done) = self.run_cycle_may_skip(gid, true).await? {
                return Ok(Some(done));
            }
            let floor = lock(&self.rp_floor).get(&gid).copied().unwrap_or(0);
            match self.remote_newest_point(gid, Some((started, floor))).await {
                Ok(Some(view)) if view.newest >= floor && view.newest > 0 => return Ok(None),
                Ok(view) => {
                    let newest = view.map(|v| v.newest);
                    info!(group = %gid, standby_newest = ?newest, floor, "the standby does not hold the committed point; running a full cycle");
                }
                Err(e) => {
                    info!(group = %gid, error = %error_chain(&e), "the standby did not confirm the committed point; running a full cycle");
                }
            }
        }
        self.run_cycle(gid).await.map(Some)
    }

    /// One replication cycle that commits a point (the loop's, or a
    /// migration's final sync).
    pub(super) async fn run_cycle(self: &Arc<Self>, gid: GroupId) -> CtlResult<CycleDone> {
        self.run_cycle_may_skip(gid, false).await?.ok_or_else(|| {
            CtlError::BadRequest("a cycle that had to commit a point committed nothing".into())
        })
    }

    /// A replication cycle; with `skip_unchanged`, `None` when nothing
    /// changed since the committed point (nothing captured or sent).
    async fn run_cycle_may_skip(
        self: &Arc<Self>,
        gid: GroupId,
        skip_unchanged: bool,
    ) -> CtlResult<Option<CycleDone>> {
        let result = self.run_cycle_once(gid, skip_unchanged).await;
        match &result {
            Ok(Some(done)) => {
                self.raise_rp_floor(gid, done.engine_rp);
                // Every committed cycle counts: the loop's, and those an
                // operation runs (a migration's final sync, a reprotect's
                // first cycle).
                if let Ok(g) = self.db(|s| s.group(gid)) {
                    let sources: HashMap<String, String> = self
                        .db(|s| s.resources(gid))
                        .unwrap_or_default()
                        .into_iter()
                        .map(|r| (r.standby_target, r.uri))
                        .collect();
                    self.metrics.record_cycle(&g.name, &done.report, |image| {
                        Place::of_source(sources.get(image).map_or("", String::as_str), image)
                    });
                }
            }
            Ok(None) => {}
            // The standby may hold a point numbered above this clock
            // (stepped back while this agent was down, or before it knew):
            // the next cycle numbers its point above it.
            // A standby holding a point of the group also ends the initial
            // full sync a killed primary never recorded (the standby may
            // have failed over since: no later cycle will complete, and
            // stop sync would be refused for good). So does a standby that
            // has no such group any more (it failed over, then deleted its
            // group): there is nothing left to sync into, and this side
            // must still be able to stop and delete its group.
            Err(_) => {
                if let Ok(view) = self.remote_newest_point(gid, None).await {
                    self.after_refused_cycle(gid, view);
                }
            }
        }
        result
    }

    /// What a failed or refused cycle learns from the standby's answer
    /// (`None`: it has no such group any more).
    fn after_refused_cycle(&self, gid: GroupId, view: Option<StandbyView>) {
        let ended = match view {
            Some(view) => {
                self.raise_rp_floor(gid, view.newest);
                view.newest > 0
            }
            None => {
                warn!(group = %gid, "the standby has no such group any more; the initial sync ends here");
                true
            }
        };
        if ended {
            if let Err(e) = self.end_initial_sync(gid) {
                warn!(error = %e, "could not record the end of the initial sync");
            }
        }
    }

    /// The standby holds a complete recovery point of the group: its
    /// resources are past their initial full sync.
    fn end_initial_sync(&self, gid: GroupId) -> CtlResult<()> {
        for r in self.db(|s| s.resources(gid))? {
            if r.state == ResourceState::InitialSync {
                self.db(|s| s.set_resource_state(&r.uri, ResourceState::Syncing))?;
            }
        }
        Ok(())
    }

    async fn run_cycle_once(
        self: &Arc<Self>,
        gid: GroupId,
        skip_unchanged: bool,
    ) -> CtlResult<Option<CycleDone>> {
        let g = self.db(|s| s.group(gid))?;
        let svc = self.db(|s| s.service(g.service_id))?;
        let resources = self.db(|s| s.resources(gid))?;
        if resources.is_empty() {
            return Err(CtlError::BadRequest("the group has no resources".into()));
        }
        tracing::Span::current().record("peer", tracing::field::display(svc.remote_fingerprint));
        // One of the standby site's agents (the one that last worked); a
        // cycle that cannot reach it, or loses it, moves the service on to
        // the next, which the retry uses (the standby's state of a pending
        // epoch is the site's, in RADOS: the retry resumes it).
        let endpoint = self.standby_endpoint(&svc);
        let several = self.standby_endpoints(&svc).len() > 1;
        let addr = match Self::resolve(&endpoint).await {
            Ok(addr) => addr,
            Err(e) => {
                self.standby_endpoint_failed(&svc, &endpoint);
                return Err(e);
            }
        };
        let mut pairs = Vec::with_capacity(resources.len());
        for r in &resources {
            let source =
                SourceUri::parse(&r.uri).map_err(|e| CtlError::BadRequest(e.to_string()))?;
            let image = ImageName::new(r.standby_target.clone())
                .map_err(|e| CtlError::BadRequest(e.to_string()))?;
            pairs.push((source, TargetUri { addr, image }));
        }
        self.set_progress(gid, |p| {
            p.resources = resources
                .iter()
                .map(|r| {
                    // The link's last measurements stay visible until this
                    // cycle's connection reports new ones (a scrape between
                    // two cycles used to find no RTT series at all).
                    let last = p.resources.iter().find(|old| old.uri == r.uri);
                    ResourceProgress {
                        uri: r.uri.clone(),
                        image: r.standby_target.clone(),
                        bytes_total: r.size_bytes,
                        bytes_remaining: r.size_bytes,
                        phase: "starting".into(),
                        rtt_ms: last.and_then(|old| old.rtt_ms),
                        cwnd: last.and_then(|old| old.cwnd),
                        lost_packets: last.and_then(|old| old.lost_packets),
                        ..ResourceProgress::default()
                    }
                })
                .collect();
        });
        let me = Arc::downgrade(self);
        let sink: replicate::ProgressSink = Arc::new(move |index: usize, sp: &SyncProgress| {
            if let Some(me) = me.upgrade() {
                me.set_progress(gid, |p| {
                    if let Some(r) = p.resources.get_mut(index) {
                        if let Some(path) = sp.connection {
                            r.rtt_ms = Some(path.rtt.as_secs_f64() * 1000.0);
                            r.cwnd = Some(path.cwnd);
                            r.lost_packets = Some(path.lost_packets);
                        }
                        r.bytes_total = sp.image_size;
                        r.bytes_remaining = sp.image_size.saturating_sub(sp.bytes_scanned);
                        r.bytes_sent = sp.bytes_sent;
                        r.rate = sp.rate;
                        r.phase = sp.phase.to_owned();
                    }
                    p.bytes_remaining = p.resources.iter().map(|r| r.bytes_remaining).sum();
                    p.rate = p.resources.iter().map(|r| r.rate).sum();
                });
            }
        });
        let floor = lock(&self.rp_floor).get(&gid).copied().unwrap_or(0);
        let mirror = self.state_mirror(&g.name);
        // With another standby agent to go to, a lost one is given up
        // after a short reconnect window instead of the engine's default.
        let switch_sooner = |o: &mut SyncOptions| o.reconnect_for = STANDBY_SWITCH_AFTER;
        let result = self
            .replicator
            .cycle(Cycle {
                pairs: &pairs,
                peer: svc.remote_fingerprint,
                cluster: None,
                progress: Some(sink),
                accept_changes_at_rest: false,
                min_recovery_point: floor,
                skip_unchanged,
                tweak: several.then_some(&switch_sooner as &(dyn Fn(&mut SyncOptions) + Sync)),
                state_mirror: mirror.as_deref(),
            })
            .await;
        let outcome = match result {
            Ok(outcome) => {
                self.standby_endpoint_worked(&svc, &endpoint);
                outcome
            }
            Err(source) => {
                let e = CtlError::Replication {
                    group: g.name.clone(),
                    source: Box::new(source),
                };
                if lost_the_standby(&e) {
                    self.standby_endpoint_failed(&svc, &endpoint);
                }
                return Err(e);
            }
        };
        let report = match outcome {
            CycleOutcome::Committed(report) => report,
            CycleOutcome::Unchanged => return Ok(None),
        };
        hold::reach("cycle::committed");
        fail::fail_point!("cycle::after-commit-before-state", |_| Err(
            CtlError::BadRequest("fail point cycle::after-commit-before-state".into())
        ));
        self.end_initial_sync(gid)?;
        Ok(Some(CycleDone {
            engine_rp: report.recovery_point,
            report,
        }))
    }
}

/// Whether a cycle failed because its standby agent could not be reached or
/// its connection was lost (not because it refused something).
fn lost_the_standby(e: &CtlError) -> bool {
    match e {
        CtlError::Replication { source, .. } => {
            matches!(
                source.as_ref(),
                ReplicateError::Sync(
                    SyncError::Transport(_) | SyncError::LinkLost { .. } | SyncError::Framing(_)
                )
            ) || matches!(
                source.as_ref(),
                ReplicateError::Sync(SyncError::Protocol(m)) if m.contains("connection lost")
            )
        }
        _ => false,
    }
}

/// The `kind` label a failed cycle is counted under.
fn error_kind(e: &CtlError) -> ErrorKind {
    match e {
        CtlError::Store(_) => ErrorKind::Store,
        CtlError::BadRequest(_) => ErrorKind::Config,
        CtlError::Peer { .. } | CtlError::Forbidden { .. } => ErrorKind::Peer,
        CtlError::NotDriver { .. } => ErrorKind::Other,
        CtlError::Internal { .. } => ErrorKind::Other,
        CtlError::Replication { source, .. } => match source.as_ref() {
            ReplicateError::Sync(sync) => match sync {
                SyncError::Transport(_) => ErrorKind::Transport,
                SyncError::LinkLost { .. } => ErrorKind::LinkLost,
                SyncError::Framing(_) | SyncError::Peer { .. } | SyncError::Protocol(_) => {
                    ErrorKind::Peer
                }
                SyncError::Source(_) | SyncError::Pipeline(_) => ErrorKind::Source,
            },
            ReplicateError::OpenSource { .. }
            | ReplicateError::Capture(_)
            | ReplicateError::ChangeCheck { .. } => ErrorKind::Source,
            ReplicateError::NothingToReplicate
            | ReplicateError::MixedStandbys { .. }
            | ReplicateError::Config(_) => ErrorKind::Config,
            ReplicateError::Identity(_)
            | ReplicateError::Busy { .. }
            | ReplicateError::StateDir { .. } => ErrorKind::Other,
        },
    }
}
