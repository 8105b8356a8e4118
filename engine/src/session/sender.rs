//! The primary side of a replication session: runs the source pipeline for
//! one image epoch, sends the batches to the standby under the bandwidth
//! limit, keeps every unacknowledged batch until the standby says it is
//! durable (resending on Nack and after a reconnect), and commits the
//! recovery point.
//!
//! Resume rule: within one process a lost connection is re-established and
//! only unacknowledged batches are sent again. A new process resumes the same
//! epoch at `min(standby resume offset, source resumable offset)`, which is
//! the standby's offset: only chunks the pipeline delivered as durable
//! ([`EncodedChunk::durable`]: the source made its bookkeeping through their
//! end durable first) become batches, so the standby never holds durably a
//! batch beyond what the source can resume from, and a `ferry sync` killed at
//! any moment is resumed without a refusal. Below the resume offset the
//! source's manifest describes exactly what the standby received; above it
//! nothing of the killed attempt is durable on the standby (its resume cuts
//! the journal and staging tails past the last durable batch). A source
//! whose progress record still lags the standby (left by a version that
//! synced it less often) is not resumed below it: planning starts the epoch
//! again under the next number, and the standby discards the pending one.
//!
//! A process killed after sending its Commit leaves a standby that commits
//! the epoch while the source has not recorded it. Planning sees that and
//! commits the source's cycle first; if the standby applies the Commit only
//! after the planning query, its refusal of the same epoch number is
//! answered the same way (`roll_forward`): the source's scan of that epoch
//! is complete (a Commit is only sent after it), so its cycle is committed
//! and the image moves on to the next epoch.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ferry_protocol::{
    negotiate, AgentId, Commit, CommitImage, Epoch, ErrorFrame, ExtentBatch, ImageName, Message,
    OpenImage, RecoveryPointId, ResumeAnswer, ResumeQuery, SeqNo,
};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::codec::EncodedChunk;
use crate::compression::{Backpressure, CompressionSwitch};
use crate::identity::Identity;
use crate::pipeline::{Pipeline, PipelineConfig, PipelineError};
use crate::qos::{RateLimiter, RateMeter};
use crate::session::framing::{FrameReader, FrameWriter, FramingError};
use crate::session::receiver::local_hello;
use crate::source::{CyclePlan, ExtentSource, SourceError};
use crate::transport::{self, TransportError, TransportSettings};

/// Where and how to replicate one image.
pub struct SyncTarget {
    /// The standby agent's address.
    pub addr: SocketAddr,
    /// The standby agent's certificate fingerprint.
    pub peer: AgentId,
    /// Name of the image on the standby.
    pub image: ImageName,
}

/// Knobs of a sync.
#[derive(Clone, Debug)]
pub struct SyncOptions {
    /// QUIC settings.
    pub transport: TransportSettings,
    /// Pipeline settings.
    pub pipeline: PipelineConfig,
    /// Wire bandwidth limit (shared, adjustable while the sync runs).
    pub limiter: RateLimiter,
    /// Unacknowledged batch bytes kept for resending; sending pauses at this.
    pub max_unacked_bytes: u64,
    /// How long to keep trying to reconnect after the link is lost.
    pub reconnect_for: Duration,
    /// Largest frame.
    pub max_frame_len: usize,
    /// An unchanged stretch of this many source bytes is still reported to
    /// the standby (an empty batch), so a resume does not rescan it.
    pub empty_batch_every: u64,
    /// Recovery point ids are wall-clock milliseconds; a new one is at least
    /// this + 1. The caller passes the newest point it knows the standby
    /// committed, so a clock stepped back behind it does not make every
    /// commit "not newer than the committed" one.
    pub min_recovery_point: u64,
}

impl Default for SyncOptions {
    fn default() -> Self {
        Self {
            transport: TransportSettings::default(),
            pipeline: PipelineConfig::default(),
            limiter: RateLimiter::unlimited(),
            max_unacked_bytes: 64 * 1024 * 1024,
            reconnect_for: Duration::from_secs(120),
            max_frame_len: ferry_protocol::DEFAULT_MAX_FRAME_LEN,
            empty_batch_every: 256 * 1024 * 1024,
            min_recovery_point: 0,
        }
    }
}

/// Live progress of a sync.
#[derive(Clone, Debug, Default)]
pub struct SyncProgress {
    /// Image size in bytes.
    pub image_size: u64,
    /// Where the scan resumed (bytes before it were done in an earlier attempt).
    pub resumed_at: u64,
    /// Source bytes scanned so far.
    pub bytes_scanned: u64,
    /// Changed bytes found so far.
    pub bytes_changed: u64,
    /// Payload bytes sent (including resends).
    pub bytes_sent: u64,
    /// Payload bytes still unacknowledged.
    pub bytes_unacked: u64,
    /// Current wire rate, bytes per second.
    pub rate: u64,
    /// Connections re-established so far.
    pub reconnects: u32,
    /// Highest batch the standby holds durably.
    pub durable_seq: SeqNo,
    /// What the sync is doing.
    pub phase: &'static str,
    /// The QUIC path to the standby as last seen (`None` before the first
    /// batch).
    pub connection: Option<PathSnapshot>,
}

/// QUIC path statistics of the connection an image is sent on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathSnapshot {
    /// Smoothed round-trip time.
    pub rtt: Duration,
    /// Congestion window, bytes.
    pub cwnd: u64,
    /// Packets declared lost on this connection.
    pub lost_packets: u64,
    /// Packets sent on this connection.
    pub sent_packets: u64,
    /// Congestion events (loss or ECN) on this connection.
    pub congestion_events: u64,
}

impl PathSnapshot {
    /// What the path can carry by the congestion controller's estimate:
    /// one congestion window per `base_rtt` (the smallest round trip seen:
    /// the smoothed one swings with scheduling delays on a busy host),
    /// bytes/s. A standby that applies slowly holds the sender through flow
    /// control, not the congestion window, so this stays high; a slow or
    /// long link keeps it near the link's rate.
    pub fn link_rate(&self, base_rtt: Duration) -> u64 {
        let rtt = base_rtt.min(self.rtt).as_secs_f64().max(1e-6);
        (self.cwnd as f64 / rtt) as u64
    }

    /// Reads the current path statistics of `connection`.
    pub fn of(connection: &quinn::Connection) -> Self {
        let path = connection.stats().path;
        Self {
            rtt: path.rtt,
            cwnd: path.cwnd,
            lost_packets: path.lost_packets,
            sent_packets: path.sent_packets,
            congestion_events: path.congestion_events,
        }
    }
}

/// What the link to the standby can carry now: the congestion estimate
/// over the smallest round trip seen (`base_rtt`, updated), capped by the
/// send limit.
fn link_rate(
    connection: &quinn::Connection,
    limiter: &RateLimiter,
    base_rtt: &mut Duration,
) -> u64 {
    let snapshot = PathSnapshot::of(connection);
    if !snapshot.rtt.is_zero() {
        *base_rtt = (*base_rtt).min(snapshot.rtt);
    }
    let path = snapshot.link_rate(*base_rtt);
    limiter.rate().map_or(path, |limit| path.min(limit))
}

/// What a completed sync did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SyncReport {
    /// Image name on the standby.
    pub image: String,
    /// Epoch committed.
    pub epoch: u64,
    /// The epoch it was relative to (0 = full copy).
    pub base_epoch: u64,
    /// Recovery point committed on the standby.
    pub recovery_point: u64,
    /// Image size.
    pub image_size: u64,
    /// Source bytes scanned in this run.
    pub bytes_scanned: u64,
    /// Bytes found changed (data + zeroed ranges).
    pub bytes_changed: u64,
    /// All-zero bytes found while scanning.
    pub bytes_zero: u64,
    /// Extents sent (data and zeroed ranges, first sends only).
    pub extents: u64,
    /// Plain bytes of changed data.
    pub bytes_plain_data: u64,
    /// Payload bytes on the wire (after compression), including resends.
    pub bytes_sent: u64,
    /// Frame bytes on the wire (payload + headers).
    pub frame_bytes: u64,
    /// UDP bytes sent by QUIC (all overheads included); in a group sync
    /// only the group report has it (the connection is shared).
    pub udp_bytes: u64,
    /// Batches sent (first time).
    pub batches: u64,
    /// Batches sent again (after Nack or reconnect).
    pub batches_resent: u64,
    /// Payload bytes sent again (after Nack or reconnect): never more than
    /// what was unacknowledged when the link failed.
    pub bytes_resent: u64,
    /// Connections re-established.
    pub reconnects: u32,
    /// Where this run started scanning (non-zero when resuming).
    pub resumed_at: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// The source changed while it was read.
    pub fuzzy: bool,
    /// The configured `[transport] compression` mode (`auto`, `zstd`, `off`).
    pub compression: String,
    /// Whether zstd was on at the end of the image's transfer (in `auto`: where
    /// the link's backpressure had turned it).
    pub compressing_at_end: bool,
    /// Times `auto` turned zstd on or off during this image's transfer.
    pub compression_switches: u32,
}

/// Why a sync failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// Could not reach or keep a connection to the standby.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The link was lost and did not come back in time.
    #[error("lost the link to {addr} and could not reconnect within {seconds} s: {last}")]
    LinkLost {
        /// Standby address.
        addr: SocketAddr,
        /// How long reconnecting was tried.
        seconds: u64,
        /// The last error seen.
        last: String,
    },
    /// Reading or writing frames failed.
    #[error(transparent)]
    Framing(#[from] FramingError),
    /// The standby reported an error.
    #[error("the standby refused: {code:?}: {message}")]
    Peer {
        /// Error code.
        code: ferry_protocol::ErrorCode,
        /// Its explanation.
        message: String,
    },
    /// The standby broke the protocol.
    #[error("protocol violation by the standby: {0}")]
    Protocol(String),
    /// The source failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The pipeline failed.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
}

impl From<ErrorFrame> for SyncError {
    fn from(e: ErrorFrame) -> Self {
        SyncError::Peer {
            code: e.code,
            message: e.message,
        }
    }
}

fn is_link_error(e: &SyncError) -> bool {
    matches!(
        e,
        SyncError::Transport(TransportError::Connection { .. })
            | SyncError::Transport(TransportError::Connect { .. })
            | SyncError::Framing(FramingError::Read(_))
            | SyncError::Framing(FramingError::Write(_))
            | SyncError::Framing(FramingError::Truncated { .. })
    ) || matches!(e, SyncError::Protocol(m) if m.contains("connection lost"))
}

struct Link {
    connection: quinn::Connection,
    control_reader: FrameReader,
    control_writer: FrameWriter,
}

/// The first connection of a sync. Silence (a handshake that times out: the
/// link is down or the standby is restarting) is retried for
/// `reconnect_for`, like a link lost later; an answer that refuses us (wrong
/// peer, untrusted certificate) fails at once.
async fn first_link(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    peer: AgentId,
    identity: &Identity,
    options: &SyncOptions,
) -> Result<Link, SyncError> {
    let deadline = Instant::now() + options.reconnect_for;
    loop {
        match open_link(endpoint, addr, peer, identity, options).await {
            // Silence, or a stateless reset (the standby lost our
            // half-open connection: restart, packet loss in the handshake).
            Err(SyncError::Transport(TransportError::Connection {
                source: quinn::ConnectionError::TimedOut | quinn::ConnectionError::Reset,
                ..
            })) if Instant::now() < deadline => {
                warn!(addr = %addr, "no usable answer from the standby; trying again");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => return other,
        }
    }
}

async fn open_link(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    peer: AgentId,
    identity: &Identity,
    options: &SyncOptions,
) -> Result<Link, SyncError> {
    let connection = transport::connect(endpoint, addr, identity, peer, &options.transport).await?;
    let (send, recv) = connection.open_bi().await.map_err(|source| {
        transport::explain_connection_error(addr, source, identity.fingerprint())
    })?;
    let mut control_writer = FrameWriter::new(send, options.max_frame_len);
    let mut control_reader = FrameReader::new(recv, options.max_frame_len);
    let ours = local_hello(identity.fingerprint());
    control_writer.send(&Message::Hello(ours.clone())).await?;
    let theirs = match next_or_lost(&mut control_reader, &connection, addr, identity).await? {
        Message::Hello(h) => h,
        Message::Error(e) => return Err(e.into()),
        other => {
            return Err(SyncError::Protocol(format!(
                "expected Hello, got {other:?}"
            )))
        }
    };
    negotiate(&ours, &theirs).map_err(|e| SyncError::Protocol(e.to_string()))?;
    if theirs.agent_id != peer {
        return Err(SyncError::Protocol(format!(
            "the standby's Hello names agent {} but its certificate is {}",
            theirs.agent_id, peer
        )));
    }
    Ok(Link {
        connection,
        control_reader,
        control_writer,
    })
}

/// Reads the next frame; a finished stream or lost connection becomes an error
/// that explains itself.
async fn next_or_lost(
    reader: &mut FrameReader,
    connection: &quinn::Connection,
    addr: SocketAddr,
    identity: &Identity,
) -> Result<Message, SyncError> {
    match reader.next().await {
        Ok(Some(m)) => Ok(m),
        Ok(None) => Err(SyncError::Protocol(
            "connection lost: the standby closed the stream".into(),
        )),
        Err(FramingError::Read(quinn::ReadError::ConnectionLost(source))) => {
            Err(transport::explain_connection_error(addr, source, identity.fingerprint()).into())
        }
        Err(e) => {
            if let Some(reason) = connection.close_reason() {
                return Err(transport::explain_connection_error(
                    addr,
                    reason,
                    identity.fingerprint(),
                )
                .into());
            }
            Err(e.into())
        }
    }
}

struct ImageStream {
    reader: FrameReader,
    writer: FrameWriter,
    answer: ResumeAnswer,
}

async fn open_image_stream_on(
    connection: &quinn::Connection,
    open: &OpenImage,
    target: &SyncTarget,
    identity: &Identity,
    options: &SyncOptions,
) -> Result<ImageStream, SyncError> {
    let (send, recv) = connection.open_bi().await.map_err(|source| {
        transport::explain_connection_error(target.addr, source, identity.fingerprint())
    })?;
    let mut writer = FrameWriter::new(send, options.max_frame_len);
    let mut reader = FrameReader::new(recv, options.max_frame_len);
    writer.send(&Message::OpenImage(open.clone())).await?;
    match next_or_lost(&mut reader, connection, target.addr, identity).await? {
        Message::ResumeAnswer(answer)
            if answer.image == open.image && answer.epoch == open.epoch =>
        {
            Ok(ImageStream {
                reader,
                writer,
                answer,
            })
        }
        Message::Error(e) => Err(e.into()),
        other => Err(SyncError::Protocol(format!(
            "expected ResumeAnswer, got {other:?}"
        ))),
    }
}

struct InFlight {
    batch: ExtentBatch,
}

/// Sends batches to the standby, keeps unacknowledged ones, handles acks.
struct Transfer {
    unacked: VecDeque<InFlight>,
    unacked_bytes: u64,
    next_seq: SeqNo,
    durable_seq: SeqNo,
    report: SyncReport,
    meter: RateMeter,
    progress: SyncProgress,
}

impl Transfer {
    fn on_ack(&mut self, durable: SeqNo) {
        if durable > self.durable_seq {
            self.durable_seq = durable;
        }
        while let Some(front) = self.unacked.front() {
            if front.batch.seq <= self.durable_seq {
                self.unacked_bytes -= front.batch.payload.len() as u64 + 1;
                self.unacked.pop_front();
            } else {
                break;
            }
        }
        self.progress.durable_seq = self.durable_seq;
        self.progress.bytes_unacked = self.unacked_bytes;
    }

    /// Queues a new batch as unacknowledged, then sends it. Queuing first
    /// means a batch whose write fails on a dying link is resent after the
    /// reconnect instead of being lost.
    async fn send_new(
        &mut self,
        writer: &mut FrameWriter,
        limiter: &RateLimiter,
        item: InFlight,
    ) -> Result<(), SyncError> {
        self.unacked_bytes += item.batch.payload.len() as u64 + 1;
        self.progress.bytes_unacked = self.unacked_bytes;
        self.unacked.push_back(item);
        self.report.batches += 1;
        self.send_queued(writer, self.unacked.len() - 1, limiter, false)
            .await?;
        // Fault tests: hold or pause the primary with data on the wire.
        crate::testpoint::reach("sender::after-batch");
        Ok(())
    }

    /// Sends the queued batch at `index` (again, when `resend`).
    async fn send_queued(
        &mut self,
        writer: &mut FrameWriter,
        index: usize,
        limiter: &RateLimiter,
        resend: bool,
    ) -> Result<(), SyncError> {
        let batch = &self.unacked[index].batch;
        limiter.acquire(FrameWriter::batch_frame_len(batch)).await;
        let frame = writer.send_batch(batch).await?;
        let payload = batch.payload.len() as u64;
        self.report.bytes_sent += payload;
        self.report.frame_bytes += frame;
        if resend {
            self.report.batches_resent += 1;
            self.report.bytes_resent += payload;
        }
        self.meter.record(frame, Instant::now());
        self.progress.bytes_sent = self.report.bytes_sent;
        Ok(())
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Decides epoch and base from what the source and the standby hold.
/// Returns (epoch, base_epoch, commit_base_first): when the last flag is set
/// the standby committed `base_epoch` but the source never heard so; the
/// source must record that commit before starting the new epoch.
fn plan_epoch(
    source_committed: Epoch,
    standby_committed: Epoch,
    source_scan_complete: bool,
) -> (Epoch, Epoch, bool) {
    if standby_committed == source_committed && source_committed != Epoch(0) {
        (source_committed.next(), source_committed, false)
    } else if standby_committed == source_committed.next() && source_scan_complete {
        (standby_committed.next(), standby_committed, true)
    } else {
        // Nothing in common (first sync, lost manifest, standby reset): full copy.
        let epoch = Epoch(source_committed.get().max(standby_committed.get()) + 1);
        (epoch, Epoch(0), false)
    }
}

/// One image of a group sync: where its changes come from and its name on
/// the standby.
pub struct ImageJob {
    /// The source of the image's changes.
    pub source: Box<dyn ExtentSource>,
    /// Name on the standby.
    pub image: ImageName,
    /// Where this image's live progress is published.
    pub progress: watch::Sender<SyncProgress>,
}

/// What a completed group sync did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct GroupReport {
    /// The recovery point committed on the standby (covers every image).
    pub recovery_point: u64,
    /// Per image.
    pub images: Vec<SyncReport>,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Any image changed while it was read.
    pub fuzzy: bool,
    /// Connections re-established.
    pub reconnects: u32,
    /// UDP bytes sent on the shared connection (all images, all overheads).
    pub udp_bytes: u64,
}

/// The connection to the standby, shared by every image of a group sync,
/// re-established (once, by whichever image notices first) when it fails.
struct Links {
    endpoint: quinn::Endpoint,
    target_addr: SocketAddr,
    peer: AgentId,
    identity: Identity,
    options: SyncOptions,
    state: tokio::sync::Mutex<LinkState>,
    reconnects: std::sync::atomic::AtomicU32,
}

struct LinkState {
    generation: u64,
    link: Link,
}

impl Links {
    fn target(&self, image: &ImageName) -> SyncTarget {
        SyncTarget {
            addr: self.target_addr,
            peer: self.peer,
            image: image.clone(),
        }
    }

    async fn current(&self) -> (u64, quinn::Connection) {
        let state = self.state.lock().await;
        (state.generation, state.link.connection.clone())
    }

    /// Replaces the connection of generation `failed` (unless another image
    /// already did) and returns the current one.
    async fn reconnect(
        &self,
        failed: u64,
        why: &SyncError,
    ) -> Result<(u64, quinn::Connection), SyncError> {
        let mut state = self.state.lock().await;
        if state.generation != failed {
            return Ok((state.generation, state.link.connection.clone()));
        }
        warn!(addr = %self.target_addr, error = %why, "link lost; reconnecting");
        let deadline = Instant::now() + self.options.reconnect_for;
        let mut delay = Duration::from_millis(200);
        let mut last = why.to_string();
        loop {
            if Instant::now() >= deadline {
                return Err(SyncError::LinkLost {
                    addr: self.target_addr,
                    seconds: self.options.reconnect_for.as_secs(),
                    last,
                });
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
            match open_link(
                &self.endpoint,
                self.target_addr,
                self.peer,
                &self.identity,
                &self.options,
            )
            .await
            {
                Ok(link) => {
                    state
                        .link
                        .connection
                        .close(quinn::VarInt::from_u32(0), b"replaced");
                    state.link = link;
                    state.generation += 1;
                    self.reconnects
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    info!(addr = %self.target_addr, generation = state.generation, "reconnected");
                    return Ok((state.generation, state.link.connection.clone()));
                }
                Err(e) if is_retryable(&e) => last = e.to_string(),
                Err(e) => return Err(e),
            }
        }
    }

    /// One request/answer on the control stream of the current connection.
    /// [`Self::ask`] across link losses: the question is asked again on a
    /// new connection (questions are idempotent: resume queries).
    async fn ask_across_reconnects(&self, request: &Message) -> Result<Message, SyncError> {
        loop {
            let generation = self.state.lock().await.generation;
            match self.ask(request).await {
                Ok((_, answer)) => return Ok(answer),
                Err(e) if is_link_error(&e) => {
                    self.reconnect(generation, &e).await?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn ask(&self, request: &Message) -> Result<(u64, Message), SyncError> {
        let mut state = self.state.lock().await;
        let generation = state.generation;
        let LinkState { link, .. } = &mut *state;
        link.control_writer.send(request).await?;
        let answer = next_or_lost(
            &mut link.control_reader,
            &link.connection,
            self.target_addr,
            &self.identity,
        )
        .await?;
        Ok((generation, answer))
    }
}

fn is_retryable(e: &SyncError) -> bool {
    is_link_error(e)
        || matches!(
            e,
            SyncError::Peer {
                code: ferry_protocol::ErrorCode::Busy,
                ..
            }
        )
}

/// What one image's transfer hands to the group commit.
struct Transferred {
    source: Box<dyn ExtentSource>,
    open: OpenImage,
    last_seq: SeqNo,
    fuzzy: bool,
    /// Connection generation on which the image's writer is parked.
    parked_on: u64,
    report: SyncReport,
}

/// An image whose epoch has been planned against the standby.
struct Planned {
    job: ImageJob,
    open: OpenImage,
}

/// Replicates one cycle of `source` to the standby and commits it as a
/// recovery point. Progress is published on `progress`.
pub async fn sync_image(
    source: Box<dyn ExtentSource>,
    target: SyncTarget,
    identity: Identity,
    options: SyncOptions,
    progress: watch::Sender<SyncProgress>,
) -> Result<SyncReport, SyncError> {
    let job = ImageJob {
        source,
        image: target.image.clone(),
        progress,
    };
    let mut group = sync_group(vec![job], target.addr, target.peer, identity, options).await?;
    let mut report = group
        .images
        .pop()
        .ok_or_else(|| SyncError::Protocol("group sync returned no image".into()))?;
    report.recovery_point = group.recovery_point;
    report.reconnects = group.reconnects;
    report.seconds = group.seconds;
    Ok(report)
}

/// Replicates one cycle of every image in `jobs` over one connection (up to
/// `max_concurrent_images` at once) and commits them together as one
/// recovery point: the standby applies it only when every image is complete,
/// and atomically across images.
pub async fn sync_group(
    jobs: Vec<ImageJob>,
    addr: SocketAddr,
    peer: AgentId,
    identity: Identity,
    options: SyncOptions,
) -> Result<GroupReport, SyncError> {
    let own = identity.fingerprint();
    sync_group_inner(jobs, addr, peer, identity, options)
        .await
        .map_err(|e| explain_refusal(e, addr, own))
}

/// The epoch the standby committed last for each of `images`, asked on a
/// connection of its own. The agent asks before capturing when a source
/// still holds the capture of a sync that died after the standby's commit
/// but before the source recorded it: the source rolls forward first, so
/// the next capture is taken afresh (for a group: at one instant) instead of
/// image by image while planning.
pub async fn standby_committed_epochs(
    images: &[ImageName],
    addr: SocketAddr,
    peer: AgentId,
    identity: &Identity,
    options: &SyncOptions,
) -> Result<Vec<Epoch>, SyncError> {
    let endpoint = transport::client_endpoint(addr, &options.transport)?;
    let mut link = first_link(&endpoint, addr, peer, identity, options).await?;
    let mut committed = Vec::with_capacity(images.len());
    for image in images {
        let query = ResumeQuery {
            image: image.clone(),
            epoch: Epoch(1),
        };
        link.control_writer
            .send(&Message::ResumeQuery(query))
            .await?;
        let answer =
            next_or_lost(&mut link.control_reader, &link.connection, addr, identity).await?;
        match answer {
            Message::ResumeAnswer(a) if a.image == *image => committed.push(a.committed_epoch),
            Message::Error(e) => return Err(e.into()),
            other => {
                return Err(SyncError::Protocol(format!(
                    "expected ResumeAnswer, got {other:?}"
                )))
            }
        }
    }
    link.connection.close(quinn::VarInt::from_u32(0), b"done");
    Ok(committed)
}

/// In TLS 1.3 the client finishes its handshake before the server has
/// checked the client's certificate, so a standby that does not trust us is
/// often first noticed as a lost stream: say why it was lost.
fn explain_refusal(error: SyncError, addr: SocketAddr, own: AgentId) -> SyncError {
    let lost = match &error {
        SyncError::Framing(FramingError::Write(quinn::WriteError::ConnectionLost(c)))
        | SyncError::Framing(FramingError::Read(quinn::ReadError::ConnectionLost(c))) => c.clone(),
        _ => return error,
    };
    match transport::explain_connection_error(addr, lost, own) {
        refused @ TransportError::Refused { .. } => SyncError::Transport(refused),
        _ => error,
    }
}

async fn sync_group_inner(
    jobs: Vec<ImageJob>,
    addr: SocketAddr,
    peer: AgentId,
    identity: Identity,
    options: SyncOptions,
) -> Result<GroupReport, SyncError> {
    let started = Instant::now();
    if jobs.is_empty() {
        return Err(SyncError::Protocol(
            "a group sync needs at least one image".into(),
        ));
    }
    let mut names = std::collections::HashSet::new();
    for job in &jobs {
        if !names.insert(job.image.clone()) {
            return Err(SyncError::Protocol(format!(
                "image {} appears twice in one group",
                job.image
            )));
        }
    }
    let endpoint = transport::client_endpoint(addr, &options.transport)?;
    let link = first_link(&endpoint, addr, peer, &identity, &options).await?;
    let links = std::sync::Arc::new(Links {
        endpoint: endpoint.clone(),
        target_addr: addr,
        peer,
        identity,
        options: options.clone(),
        state: tokio::sync::Mutex::new(LinkState {
            generation: 0,
            link,
        }),
        reconnects: std::sync::atomic::AtomicU32::new(0),
    });

    // Plan every image's epoch against what the standby holds.
    let mut planned = Vec::with_capacity(jobs.len());
    for mut job in jobs {
        let info = job.source.info()?;
        let source_committed = job.source.committed_epoch();
        let answer = links
            .ask_across_reconnects(&Message::ResumeQuery(ResumeQuery {
                image: job.image.clone(),
                epoch: source_committed.next(),
            }))
            .await?;
        let answer = match answer {
            Message::ResumeAnswer(a) if a.image == job.image => a,
            Message::Error(e) => return Err(e.into()),
            other => {
                return Err(SyncError::Protocol(format!(
                    "expected ResumeAnswer, got {other:?}"
                )))
            }
        };
        let scan_complete = job.source.resumable_offset(source_committed.next()) >= info.size;
        let (mut epoch, base_epoch, commit_first) =
            plan_epoch(source_committed, answer.committed_epoch, scan_complete);
        if epoch == answer.epoch && answer.resume_offset > job.source.resumable_offset(epoch) {
            // The standby holds more of this epoch than the source can resume
            // from (a progress record from a version that synced it less
            // often): resuming lower would be refused. Start the epoch again
            // under the next number; the standby discards the pending one.
            warn!(image = %job.image, %epoch, standby_offset = answer.resume_offset,
                source_offset = job.source.resumable_offset(epoch),
                "the source cannot resume where the standby is; starting the epoch again");
            epoch = epoch.next();
        }
        if commit_first {
            job.source.commit_cycle(base_epoch)?;
            info!(image = %job.image, epoch = %base_epoch, "the standby had already committed our last epoch; recorded it");
        }
        let open = OpenImage {
            image: job.image.clone(),
            size: info.size,
            block_size: info.block_size,
            epoch,
            base_epoch,
        };
        planned.push(Planned { job, open });
    }

    // Transfer, at most max_concurrent_images at once.
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(
        options.transport.max_concurrent_images.max(1) as usize,
    ));
    let mut tasks = tokio::task::JoinSet::new();
    for (index, plan) in planned.into_iter().enumerate() {
        let links = links.clone();
        let slots = slots.clone();
        tasks.spawn(async move {
            let _slot = slots.acquire_owned().await;
            (index, transfer_image(&links, plan).await)
        });
    }
    let mut done: Vec<Option<Transferred>> = Vec::new();
    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((index, Ok(t))) => {
                if done.len() <= index {
                    done.resize_with(index + 1, || None);
                }
                done[index] = Some(t);
            }
            Ok((_, Err(e))) => {
                if failure.is_none() {
                    failure = Some(e);
                    tasks.abort_all();
                }
            }
            Err(e) if e.is_cancelled() => {}
            Err(e) => {
                failure.get_or_insert(SyncError::Protocol(format!("image task failed: {e}")));
            }
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let mut done: Vec<Transferred> = done.into_iter().flatten().collect();

    // Commit every image as one recovery point.
    let recovery_point = RecoveryPointId(
        unix_ms()
            .max(done.iter().map(|t| t.open.epoch.get()).max().unwrap_or(1))
            .max(options.min_recovery_point.saturating_add(1)),
    );
    let fuzzy = done.iter().any(|t| t.fuzzy);
    let commit = Commit {
        recovery_point,
        created_unix_ms: unix_ms(),
        fuzzy,
        images: done
            .iter()
            .map(|t| CommitImage {
                image: t.open.image.clone(),
                epoch: t.open.epoch,
                last_seq: t.last_seq,
                size: t.open.size,
            })
            .collect(),
    };
    // Fault tests: every batch is durable on the standby, no Commit sent.
    crate::testpoint::reach("sender::before-commit");
    commit_group(&links, &commit, &mut done).await?;
    // Fault tests: the standby committed, the source has not recorded it
    // (the next sync must roll it forward).
    crate::testpoint::reach("sender::after-commit");
    let mut report = GroupReport {
        recovery_point: recovery_point.get(),
        fuzzy,
        ..GroupReport::default()
    };
    for t in done {
        let Transferred {
            mut source,
            open,
            report: mut image_report,
            ..
        } = t;
        source.commit_cycle(open.epoch)?;
        image_report.recovery_point = recovery_point.get();
        report.images.push(image_report);
    }
    {
        let mut state = links.state.lock().await;
        let link = &mut state.link;
        report.udp_bytes = link.connection.stats().udp_tx.bytes;
        if let [only] = report.images.as_mut_slice() {
            only.udp_bytes = report.udp_bytes;
        }
        link.control_writer.finish();
        link.connection.close(quinn::VarInt::from_u32(0), b"done");
    }
    report.reconnects = links.reconnects.load(std::sync::atomic::Ordering::Relaxed);
    report.seconds = started.elapsed().as_secs_f64();
    endpoint.wait_idle().await;
    Ok(report)
}

/// Sends `commit`, re-parking images on a new connection and asking whether
/// the point was already committed when the link fails meanwhile.
async fn commit_group(
    links: &Links,
    commit: &Commit,
    done: &mut [Transferred],
) -> Result<(), SyncError> {
    let deadline = Instant::now() + links.options.reconnect_for;
    let recovery_point = commit.recovery_point;
    loop {
        let (generation, _) = links.current().await;
        let attempt = async {
            let (first_image, first_epoch) = (done[0].open.image.clone(), done[0].open.epoch);
            if done.iter().any(|t| t.parked_on != generation) {
                // The standby may already have committed before the link broke.
                let query = ResumeQuery { image: first_image, epoch: first_epoch };
                let (_, answer) = links.ask(&Message::ResumeQuery(query)).await?;
                if let Message::ResumeAnswer(a) = answer {
                    if a.committed_epoch == first_epoch {
                        return Ok(true);
                    }
                }
            }
            for t in done.iter_mut() {
                if t.parked_on == generation {
                    continue;
                }
                let (gen_now, connection) = links.current().await;
                let target = links.target(&t.open.image);
                let mut again = open_image_stream_on(&connection, &t.open, &target, &links.identity, &links.options).await?;
                if again.answer.durable_seq != t.last_seq {
                    return Err(SyncError::Protocol(format!(
                        "before committing, the standby holds batch {} of {} epoch {} durably, but batch {} was acknowledged",
                        again.answer.durable_seq, t.open.image, t.open.epoch, t.last_seq
                    )));
                }
                again.writer.finish();
                while let Ok(Some(_)) = again.reader.next().await {}
                t.parked_on = gen_now;
            }
            match links.ask(&Message::Commit(commit.clone())).await?.1 {
                Message::Committed(c) if c.recovery_point == recovery_point => Ok(true),
                Message::Error(e) => Err(e.into()),
                other => Err(SyncError::Protocol(format!("expected Committed, got {other:?}"))),
            }
        }
        .await;
        match attempt {
            Ok(_) => return Ok(()),
            Err(e) if is_retryable(&e) && Instant::now() < deadline => {
                links.reconnect(generation, &e).await?;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Opens the image stream of `open` on the current connection (on a new
/// one if that fails with a link error or Busy).
async fn open_stream(
    links: &Links,
    open: &OpenImage,
    target: &SyncTarget,
) -> Result<(u64, quinn::Connection, ImageStream), SyncError> {
    let (generation, connection) = links.current().await;
    match open_image_stream_on(&connection, open, target, &links.identity, &links.options).await {
        Ok(s) => Ok((generation, connection, s)),
        Err(e) if is_retryable(&e) => {
            let (g, c) = links.reconnect(generation, &e).await?;
            let s = open_image_stream_on(&c, open, target, &links.identity, &links.options).await?;
            Ok((g, c, s))
        }
        Err(e) => Err(e),
    }
}

/// The standby refused to open `open.epoch`. If that is because it has
/// meanwhile committed that very epoch — an earlier `ferry sync` process
/// sent the Commit and was killed before its source recorded it, and the
/// standby applied the Commit after this process's planning query — the
/// source records the commit (its scan of the epoch is complete and durable:
/// a Commit is only sent after the scan ended) and the image moves on to the
/// next epoch, relative to it. Returns that next epoch, or `None` when the
/// refusal has another cause.
async fn roll_forward(
    links: &Links,
    source: &mut dyn ExtentSource,
    open: &OpenImage,
) -> Result<Option<OpenImage>, SyncError> {
    let answer = links
        .ask_across_reconnects(&Message::ResumeQuery(ResumeQuery {
            image: open.image.clone(),
            epoch: open.epoch,
        }))
        .await?;
    let committed = match answer {
        Message::ResumeAnswer(a) if a.image == open.image => a.committed_epoch,
        _ => return Ok(None),
    };
    if committed != open.epoch || source.resumable_offset(open.epoch) < open.size {
        return Ok(None);
    }
    source.commit_cycle(open.epoch)?;
    info!(image = %open.image, epoch = %open.epoch, "the standby committed our last epoch while this sync started; recorded it and moving on");
    let info = source.info()?;
    Ok(Some(OpenImage {
        image: open.image.clone(),
        size: info.size,
        block_size: info.block_size,
        epoch: open.epoch.next(),
        base_epoch: open.epoch,
    }))
}

/// Runs one image's epoch: pipeline → batches → acks, across reconnects.
/// Returns when every batch is durable on the standby and its writer is
/// parked for the commit.
async fn transfer_image(links: &Links, plan: Planned) -> Result<Transferred, SyncError> {
    let Planned { job, mut open } = plan;
    let ImageJob {
        mut source,
        image,
        progress,
    } = job;
    let target = links.target(&image);
    let (mut generation, mut connection, mut stream) =
        match open_stream(links, &open, &target).await {
            Ok(opened) => opened,
            Err(refused @ SyncError::Peer { .. }) => {
                match roll_forward(links, &mut *source, &open).await? {
                    Some(next) => {
                        open = next;
                        open_stream(links, &open, &target).await?
                    }
                    None => return Err(refused),
                }
            }
            Err(e) => return Err(e),
        };
    let resume_offset = stream
        .answer
        .resume_offset
        .min(source.resumable_offset(open.epoch));
    let durable_at_start = stream.answer.durable_seq;
    if resume_offset > 0 {
        info!(%image, epoch = %open.epoch, resume_offset, durable_seq = %durable_at_start, "resuming an interrupted epoch");
    }
    let plan = CyclePlan {
        epoch: open.epoch,
        base_epoch: open.base_epoch,
        resume_offset,
    };
    let info_size = open.size;
    let mut transfer = Transfer {
        unacked: VecDeque::new(),
        unacked_bytes: 0,
        next_seq: durable_at_start.next(),
        durable_seq: durable_at_start,
        report: SyncReport {
            image: image.to_string(),
            epoch: open.epoch.get(),
            base_epoch: open.base_epoch.get(),
            image_size: info_size,
            resumed_at: resume_offset,
            ..SyncReport::default()
        },
        meter: RateMeter::new(Instant::now()),
        progress: SyncProgress {
            image_size: info_size,
            resumed_at: resume_offset,
            bytes_scanned: resume_offset,
            phase: "sending",
            ..SyncProgress::default()
        },
    };
    let options = &links.options;
    let compression = CompressionSwitch::new(
        options.transport.compression,
        options.limiter.rate().is_some(),
    );
    let mut backpressure = Backpressure::new(compression.clone());
    let mut base_rtt = Duration::MAX;
    let pipeline = Pipeline::start_compressing(source, plan, options.pipeline, compression)?;
    let (chunk_tx, mut chunk_rx) = mpsc::channel::<Result<EncodedChunk, PipelineError>>(2);
    let forwarder = tokio::task::spawn_blocking(move || {
        while let Some(item) = pipeline.recv() {
            if chunk_tx.blocking_send(item).is_err() {
                return pipeline;
            }
        }
        pipeline
    });

    let mut pipeline_done = false;
    let mut pending_empty_since: u64 = resume_offset;
    let outcome: Result<(), SyncError> = loop {
        let result: Result<(), SyncError> = async {
            loop {
                if pipeline_done && transfer.unacked.is_empty() {
                    return Ok(());
                }
                let can_send = !pipeline_done && transfer.unacked_bytes < options.max_unacked_bytes;
                // Time spent here while the pipeline could go on but the
                // link holds us (unacknowledged cap) counts as backpressure.
                let waiting_since = Instant::now();
                let link_bound_wait = !pipeline_done && !can_send;
                tokio::select! {
                    chunk = chunk_rx.recv(), if can_send => match chunk {
                        Some(Ok(chunk)) => {
                            transfer.report.bytes_scanned += chunk.stats.bytes_scanned;
                            transfer.report.bytes_changed += chunk.stats.bytes_changed;
                            transfer.report.bytes_zero += chunk.stats.bytes_zero;
                            transfer.report.bytes_plain_data += chunk.stats.plain_data_bytes;
                            transfer.progress.bytes_scanned = chunk.scan_end;
                            transfer.progress.bytes_changed = transfer.report.bytes_changed;
                            // Only chunks the source made durable may move the
                            // standby's resume offset: a new process must be
                            // able to resume wherever the standby is.
                            if chunk.extents.is_empty()
                                && chunk.scan_end < info_size
                                && (!chunk.durable
                                    || chunk.scan_end - pending_empty_since < options.empty_batch_every)
                            {
                                continue;
                            }
                            if !chunk.durable {
                                return Err(SyncError::Source(SourceError::Misuse {
                                    reason: "the pipeline delivered a chunk with changes before the source made it durable",
                                }));
                            }
                            pending_empty_since = chunk.scan_end;
                            transfer.report.extents += chunk.extents.len() as u64;
                            let seq = transfer.next_seq;
                            transfer.next_seq = seq.next();
                            let item = InFlight {
                                batch: ExtentBatch {
                                    image: image.clone(),
                                    epoch: open.epoch,
                                    seq,
                                    scan_start: chunk.scan_start,
                                    scan_end: chunk.scan_end,
                                    payload_crc32c: chunk.payload_crc32c,
                                    plain_blake3: chunk.plain_blake3,
                                    extents: chunk.extents,
                                    payload: chunk.payload,
                                },
                            };
                            let sending = Instant::now();
                            transfer.send_new(&mut stream.writer, &options.limiter, item).await?;
                            let now = Instant::now();
                            let link_rate = link_rate(&connection, &options.limiter, &mut base_rtt);
                            backpressure.record_blocked(now - sending, now, link_rate);
                        }
                        Some(Err(e)) => return Err(e.into()),
                        None => pipeline_done = true,
                    },
                    frame = stream.reader.next() => match frame {
                        Ok(Some(Message::Ack(ack))) => {
                            let now = Instant::now();
                            let link_rate = link_rate(&connection, &options.limiter, &mut base_rtt);
                            if link_bound_wait {
                                backpressure.record_blocked(now - waiting_since, now, link_rate);
                            } else {
                                backpressure.tick(now, link_rate);
                            }
                            transfer.on_ack(ack.durable_seq);
                        }
                        Ok(Some(Message::Nack(nack))) => {
                            warn!(%image, seq = %nack.seq, reason = ?nack.reason, "standby rejected a batch; resending from it");
                            let Some(from) = transfer.unacked.iter().position(|f| f.batch.seq == nack.seq) else {
                                return Err(SyncError::Protocol(format!("Nack for batch {} which is not in flight", nack.seq)));
                            };
                            for i in from..transfer.unacked.len() {
                                transfer.send_queued(&mut stream.writer, i, &options.limiter, true).await?;
                            }
                        }
                        Ok(Some(Message::Error(e))) => return Err(e.into()),
                        Ok(Some(other)) => return Err(SyncError::Protocol(format!("unexpected frame on an image stream: {other:?}"))),
                        Ok(None) => return Err(SyncError::Protocol("connection lost: the standby closed the image stream".into())),
                        Err(e) => return Err(e.into()),
                    },
                }
                transfer.progress.rate = transfer.meter.rate(Instant::now());
                transfer.progress.connection = Some(PathSnapshot::of(&connection));
                let _ = progress.send(transfer.progress.clone());
            }
        }
        .await;
        match result {
            Ok(()) => break Ok(()),
            Err(e) if is_retryable(&e) => {
                transfer.progress.phase = "reconnecting";
                let _ = progress.send(transfer.progress.clone());
                // Re-open the epoch on a new connection; the standby reports
                // what is durable and only the rest is sent again.
                let reopened = async {
                    let mut failed = generation;
                    let mut last = e;
                    let deadline = Instant::now() + options.reconnect_for;
                    loop {
                        let (g, c) = links.reconnect(failed, &last).await?;
                        match open_image_stream_on(&c, &open, &target, &links.identity, options)
                            .await
                        {
                            Ok(s) => return Ok::<_, SyncError>((g, s, c)),
                            Err(e) if is_retryable(&e) && Instant::now() < deadline => {
                                failed = g;
                                last = e;
                            }
                            Err(e) => return Err(e),
                        }
                    }
                }
                .await;
                let (g, new_stream, new_connection) = match reopened {
                    Ok(x) => x,
                    Err(e) => break Err(e),
                };
                generation = g;
                stream = new_stream;
                connection = new_connection;
                transfer.report.reconnects += 1;
                transfer.progress.reconnects += 1;
                transfer.progress.phase = "sending";
                let durable = stream.answer.durable_seq;
                if durable < transfer.durable_seq {
                    break Err(SyncError::Protocol(format!(
                        "the standby acknowledged batch {} as durable but now holds only {}",
                        transfer.durable_seq, durable
                    )));
                }
                transfer.on_ack(durable);
                info!(%image, durable_seq = %durable, unacked = transfer.unacked.len(), "resending unacknowledged batches");
                let mut resend = Ok(());
                for i in 0..transfer.unacked.len() {
                    if let Err(e) = transfer
                        .send_queued(&mut stream.writer, i, &options.limiter, true)
                        .await
                    {
                        resend = Err(e);
                        break;
                    }
                }
                if let Err(e) = resend {
                    if !is_retryable(&e) {
                        break Err(e);
                    }
                    // Another loss during the resend: the loop reconnects again.
                    warn!(%image, error = %e, "link lost again while resending");
                }
            }
            Err(e) => break Err(e),
        }
    };
    if let Err(e) = outcome {
        drop(chunk_rx);
        if let Ok(pipeline) = forwarder.await {
            let _ = pipeline.abort();
        }
        return Err(e);
    }
    let pipeline = forwarder
        .await
        .map_err(|e| SyncError::Protocol(format!("pipeline forwarder failed: {e}")))?;
    let (source, scan) = pipeline.finish()?;
    transfer.report.fuzzy = scan.fuzzy;
    transfer.report.compression = links.options.transport.compression.to_string();
    transfer.report.compressing_at_end = backpressure.compressing();
    transfer.report.compression_switches = backpressure.decisions();
    let last_seq = SeqNo(transfer.next_seq.get() - 1);
    // End the stream; the standby parks the writer for the commit.
    transfer.progress.phase = "committing";
    let _ = progress.send(transfer.progress.clone());
    stream.writer.finish();
    let mut parked_on = generation;
    loop {
        match stream.reader.next().await {
            Ok(Some(Message::Error(e))) => return Err(e.into()),
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(_) => {
                // The link died after the last ack: the commit re-parks it.
                parked_on = u64::MAX;
                break;
            }
        }
    }
    transfer.progress.phase = "committed";
    let _ = progress.send(transfer.progress.clone());
    Ok(Transferred {
        source,
        open,
        last_seq,
        fuzzy: scan.fuzzy,
        parked_on,
        report: transfer.report,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_planning() {
        // First sync ever.
        assert_eq!(
            plan_epoch(Epoch(0), Epoch(0), false),
            (Epoch(1), Epoch(0), false)
        );
        // Normal incremental.
        assert_eq!(
            plan_epoch(Epoch(3), Epoch(3), false),
            (Epoch(4), Epoch(3), false)
        );
        // Standby committed our epoch 4 but we crashed before recording it.
        assert_eq!(
            plan_epoch(Epoch(3), Epoch(4), true),
            (Epoch(5), Epoch(4), true)
        );
        // Same, but our scan of 4 never completed: cannot trust it, full copy.
        assert_eq!(
            plan_epoch(Epoch(3), Epoch(4), false),
            (Epoch(5), Epoch(0), false)
        );
        // Standby was reset.
        assert_eq!(
            plan_epoch(Epoch(7), Epoch(0), false),
            (Epoch(8), Epoch(0), false)
        );
    }
}
