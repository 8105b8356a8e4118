//! The standby side of a replication session: accepts connections from
//! trusted primaries, verifies extent batches and stages them durably in the
//! [`StandbyStore`], acknowledges only what is durable, and commits recovery
//! points.
//!
//! Per connection: the first bidirectional stream is the control stream
//! (Hello, Commit → Committed, HashRequest → HashAnswer); every further
//! stream carries one image epoch (OpenImage → ResumeAnswer, ExtentBatch* →
//! Ack/Nack). Each image stream has one blocking worker thread that decodes,
//! verifies and stages batches in order and fsyncs in groups; acks go back
//! only after the fsync.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_protocol::{
    negotiate, Ack, AgentId, Capabilities, Committed, Epoch, ErrorCode, ErrorFrame, ExtentBatch,
    HashAnswer, Hello, ImageName, Message, Nack, OpenImage, ResumeAnswer, SeqNo,
    MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::qos::{RateLimiter, RateMeter};
use crate::session::framing::{FrameReader, FrameWriter, FramingError};
use crate::session::machine::{FrameMachine, MachineError, Step};
use crate::standby::{RecoveryPointMeta, StoreError};
use crate::standby_backend::{EpochSink, Standby};
use crate::sync_util::lock;
use crate::transport::peer_fingerprint;

/// Unsynced bytes after which the stager fsyncs even if more batches wait.
const GROUP_SYNC_BYTES: u64 = 32 * 1024 * 1024;
/// Most hashes one HashAnswer may carry.
const MAX_HASHES_PER_ANSWER: u64 = 65_536;

/// What one standby image is doing right now (for logs and status).
#[derive(Clone, Debug, Default)]
pub struct ImageActivity {
    /// Epoch being received.
    pub epoch: Epoch,
    /// Highest durable batch.
    pub durable_seq: SeqNo,
    /// Plain bytes staged in this epoch.
    pub bytes_staged: u64,
    /// Current receive rate, bytes per second.
    pub rate: u64,
    /// Batches rejected and re-requested.
    pub nacks: u64,
}

/// Totals of a receiver since it started (for metrics; never reset).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReceiverCounters {
    /// Payload bytes of accepted batches as they came off the wire.
    pub bytes_received: u64,
    /// Plain data bytes staged durably into standby images.
    pub bytes_applied: u64,
    /// Extents staged (data and zeroed ranges).
    pub extents: u64,
    /// Batches rejected and asked for again.
    pub nacks: u64,
    /// Recovery points committed.
    pub commits: u64,
}

#[derive(Default)]
struct Totals {
    bytes_received: AtomicU64,
    bytes_applied: AtomicU64,
    extents: AtomicU64,
    nacks: AtomicU64,
    commits: AtomicU64,
}

/// Decides which standby images a connected primary may open, query or
/// hash. The receiver asks before it touches the store for an image and
/// refuses the stream (Error `Unauthorized`) when the answer is no.
///
/// Implementations must fail closed: an unknown peer, an image no group of
/// the peer's service owns, or a lookup that fails all answer `Err`.
pub trait ImageAuthorizer: Send + Sync {
    /// `Ok(())` if `peer` may write and read `image`; otherwise why not.
    fn authorize(&self, peer: AgentId, image: &ImageName) -> Result<(), String>;
}

/// An authorizer that refuses everything (the fail-closed default).
#[derive(Debug, Default, Clone, Copy)]
pub struct DenyAll;

impl ImageAuthorizer for DenyAll {
    fn authorize(&self, peer: AgentId, image: &ImageName) -> Result<(), String> {
        Err(format!(
            "no image authorizer is configured; {image} is refused to {}",
            peer.to_hex()
        ))
    }
}

/// Shared state of a standby agent's receiver.
pub struct ReceiverContext {
    /// The durable store of standby images.
    pub store: Standby,
    /// Aggregate limit for everything written into standby images.
    pub write_limit: RateLimiter,
    /// This agent's identity.
    pub agent_id: AgentId,
    /// Largest frame accepted.
    pub max_frame_len: usize,
    activity: Mutex<HashMap<ImageName, ImageActivity>>,
    /// Which connection holds which image, so a reconnecting primary can take
    /// over from a connection whose link died silently.
    holders: Mutex<HashMap<ImageName, (u64, quinn::Connection)>>,
    next_connection: AtomicU64,
    totals: Totals,
    authorizer: Arc<dyn ImageAuthorizer>,
}

impl ReceiverContext {
    /// A receiver storing into `store`; `authorizer` decides which images
    /// each connected peer may touch.
    pub fn new(
        store: Standby,
        write_limit: RateLimiter,
        agent_id: AgentId,
        max_frame_len: usize,
        authorizer: Arc<dyn ImageAuthorizer>,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            write_limit,
            agent_id,
            max_frame_len,
            activity: Mutex::default(),
            holders: Mutex::default(),
            next_connection: AtomicU64::new(1),
            totals: Totals::default(),
            authorizer,
        })
    }

    /// Asks the authorizer whether `peer` may touch `image`; a connection
    /// without a peer certificate is refused.
    fn authorize(&self, peer: Option<AgentId>, image: &ImageName) -> Result<(), ServeError> {
        let Some(peer) = peer else {
            return Err(ServeError::Refuse {
                code: ErrorCode::NotPermitted,
                message: format!("{image}: the connection carries no peer certificate"),
            });
        };
        self.authorizer.authorize(peer, image).map_err(|reason| {
            warn!(peer = %peer.to_hex(), %image, %reason, "refused access to an image");
            ServeError::Refuse {
                code: ErrorCode::NotPermitted,
                message: format!("image {image} is not writable by this peer: {reason}"),
            }
        })
    }

    /// A snapshot of what every image is doing.
    pub fn activity(&self) -> HashMap<ImageName, ImageActivity> {
        lock(&self.activity).clone()
    }

    /// Totals since the receiver started.
    pub fn counters(&self) -> ReceiverCounters {
        let t = &self.totals;
        ReceiverCounters {
            bytes_received: t.bytes_received.load(Ordering::Relaxed),
            bytes_applied: t.bytes_applied.load(Ordering::Relaxed),
            extents: t.extents.load(Ordering::Relaxed),
            nacks: t.nacks.load(Ordering::Relaxed),
            commits: t.commits.load(Ordering::Relaxed),
        }
    }

    fn update_activity(&self, image: &ImageName, f: impl FnOnce(&mut ImageActivity)) {
        f(lock(&self.activity).entry(image.clone()).or_default());
    }
}

/// Errors that end one stream or connection on the standby.
#[derive(Debug, thiserror::Error)]
enum ServeError {
    #[error(transparent)]
    Framing(#[from] FramingError),
    #[error("peer error {code:?}: {message}")]
    Refuse { code: ErrorCode, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("worker thread failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

impl From<MachineError> for ServeError {
    fn from(e: MachineError) -> Self {
        match e {
            MachineError::Refuse { code, message } => ServeError::Refuse { code, message },
            MachineError::Store(e) => ServeError::Store(e),
        }
    }
}

impl ServeError {
    fn to_frame(&self) -> ErrorFrame {
        let (code, message) = match self {
            ServeError::Framing(FramingError::Decode(e)) => (ErrorCode::Malformed, e.to_string()),
            ServeError::Framing(e) => (ErrorCode::Internal, e.to_string()),
            ServeError::Refuse { code, message } => (*code, message.clone()),
            ServeError::Store(e) => (store_error_code(e), with_causes(e)),
            ServeError::Join(e) => (ErrorCode::Internal, e.to_string()),
        };
        ErrorFrame::new(code, message)
    }
}

/// `e` and its causes, `": "`-joined: the primary's operator sees why the
/// standby refused (e.g. the librbd call and the cephx user a cap is
/// missing for), not only what it was doing.
fn with_causes(e: &StoreError) -> String {
    let mut out = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

fn store_error_code(e: &StoreError) -> ErrorCode {
    match e {
        // Another agent of the site wrote the image's shared state: as
        // busy, the primary tries again (and reads the state anew).
        StoreError::Busy { .. } | StoreError::StateConflict { .. } => ErrorCode::Busy,
        StoreError::Fenced { .. } => ErrorCode::NotPermitted,
        StoreError::EpochMismatch { .. } => ErrorCode::EpochMismatch,
        StoreError::OutOfOrder { .. } => ErrorCode::OutOfOrder,
        StoreError::UnknownImage { .. } | StoreError::UnknownRecoveryPoint { .. } => {
            ErrorCode::UnknownImage
        }
        StoreError::InvalidBatch { .. } | StoreError::InvalidRequest { .. } => ErrorCode::Malformed,
        _ => ErrorCode::Storage,
    }
}

/// Accepts connections on `endpoint` until it is closed, then ends every
/// connection task it started (so the store is released when this returns).
pub async fn serve(endpoint: quinn::Endpoint, ctx: Arc<ReceiverContext>) {
    let mut connections = tokio::task::JoinSet::new();
    while let Some(incoming) = endpoint.accept().await {
        let ctx = ctx.clone();
        connections.spawn(async move {
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(conn) => handle_connection(conn, ctx).await,
                Err(error) => {
                    warn!(%remote, %error, "refused or failed handshake (is the peer's fingerprint trusted?)")
                }
            }
        });
        // Reap finished connection tasks as we go.
        while connections.try_join_next().is_some() {}
    }
    connections.shutdown().await;
}

type Parked = Arc<Mutex<HashMap<ImageName, EpochSink>>>;

async fn handle_connection(conn: quinn::Connection, ctx: Arc<ReceiverContext>) {
    let remote = conn.remote_address();
    let peer = peer_fingerprint(&conn);
    let conn_id = ctx.next_connection.fetch_add(1, Ordering::Relaxed);
    info!(%remote, peer = ?peer.map(|p| p.to_hex()), conn_id, "primary connected");
    let (send, recv) = match conn.accept_bi().await {
        Ok(s) => s,
        Err(error) => {
            debug!(%remote, %error, "connection closed before its control stream");
            return;
        }
    };
    let parked: Parked = Arc::default();
    let mut control_reader = FrameReader::new(recv, ctx.max_frame_len);
    let mut control_writer = FrameWriter::new(send, ctx.max_frame_len);
    if let Err(error) = handshake(&mut control_reader, &mut control_writer, &ctx).await {
        warn!(%remote, %error, "hello failed");
        let frame = error.to_frame();
        let _ = control_writer.send(&Message::Error(frame.clone())).await;
        control_writer.finish();
        // Let the Error frame reach the peer before the connection goes away.
        let _ = tokio::time::timeout(Duration::from_secs(2), control_writer.stopped()).await;
        conn.close(quinn::VarInt::from_u32(1), frame.message.as_bytes());
        return;
    }
    // Image streams.
    let streams = {
        let conn = conn.clone();
        let ctx = ctx.clone();
        let parked = parked.clone();
        tokio::spawn(async move {
            while let Ok((send, recv)) = conn.accept_bi().await {
                let ctx = ctx.clone();
                let parked = parked.clone();
                let conn = conn.clone();
                tokio::spawn(async move {
                    let mut writer = FrameWriter::new(send, ctx.max_frame_len);
                    let reader = FrameReader::new(recv, ctx.max_frame_len);
                    if let Err(error) =
                        serve_image_stream(reader, &mut writer, &ctx, &parked, conn_id, &conn, peer)
                            .await
                    {
                        if is_closed_by_peer(&conn) {
                            debug!(%error, "image stream ended with its connection");
                        } else {
                            warn!(%error, "image stream failed");
                        }
                        let _ = writer.send(&Message::Error(error.to_frame())).await;
                    }
                    writer.finish();
                });
            }
        })
    };
    if let Err(error) = serve_control(
        &mut control_reader,
        &mut control_writer,
        &ctx,
        &parked,
        peer,
    )
    .await
    {
        if is_closed_by_peer(&conn) {
            debug!(%remote, %error, "primary closed the connection");
        } else {
            warn!(%remote, %error, "control stream failed");
        }
        let _ = control_writer.send(&Message::Error(error.to_frame())).await;
        control_writer.finish();
        // The connection goes away when this task returns; without waiting,
        // the Error frame could be discarded before it reaches the peer,
        // which would then see only a closed connection and no reason.
        let _ = tokio::time::timeout(Duration::from_secs(2), control_writer.stopped()).await;
    } else {
        control_writer.finish();
    }
    streams.abort();
    // Writers of this connection are released (their staged data is durable
    // and found again by the next open_epoch).
    lock(&parked).clear();
    lock(&ctx.holders).retain(|_, (id, _)| *id != conn_id);
    info!(%remote, conn_id, "primary disconnected");
}

/// Whether the primary closed the connection deliberately (end of a sync),
/// as opposed to a lost link or an error.
fn is_closed_by_peer(conn: &quinn::Connection) -> bool {
    matches!(
        conn.close_reason(),
        Some(quinn::ConnectionError::ApplicationClosed(ref close)) if close.error_code == quinn::VarInt::from_u32(0)
    )
}

async fn handshake(
    reader: &mut FrameReader,
    writer: &mut FrameWriter,
    ctx: &ReceiverContext,
) -> Result<(), ServeError> {
    let hello = match reader.next().await? {
        Some(Message::Hello(h)) => h,
        other => {
            return Err(ServeError::Refuse {
                code: ErrorCode::Malformed,
                message: format!("expected Hello first, got {other:?}"),
            })
        }
    };
    let ours = local_hello(ctx.agent_id);
    negotiate(&ours, &hello).map_err(|e| ServeError::Refuse {
        code: ErrorCode::VersionMismatch,
        message: e.to_string(),
    })?;
    writer.send(&Message::Hello(ours)).await?;
    Ok(())
}

/// The Hello this build sends.
pub fn local_hello(agent_id: AgentId) -> Hello {
    Hello {
        min_version: MIN_PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
        agent_id,
        capabilities: Capabilities(
            Capabilities::ZSTD | Capabilities::DISCARD | Capabilities::VERIFY,
        ),
    }
}

async fn serve_control(
    reader: &mut FrameReader,
    writer: &mut FrameWriter,
    ctx: &Arc<ReceiverContext>,
    parked: &Parked,
    peer: Option<AgentId>,
) -> Result<(), ServeError> {
    while let Some(message) = reader.next().await? {
        match message {
            Message::Commit(commit) => {
                let mut sealed = Vec::with_capacity(commit.images.len());
                for part in &commit.images {
                    let writer_for_image = lock(parked).remove(&part.image);
                    let Some(epoch_writer) = writer_for_image else {
                        return Err(ServeError::Refuse {
                            code: ErrorCode::OutOfOrder,
                            message: format!(
                                "commit of recovery point {} names image {} epoch {}, which is not open on this connection",
                                commit.recovery_point, part.image, part.epoch
                            ),
                        });
                    };
                    if epoch_writer.epoch() != part.epoch {
                        return Err(ServeError::Refuse {
                            code: ErrorCode::OutOfOrder,
                            message: format!(
                                "commit names epoch {} of {} but epoch {} is open",
                                part.epoch,
                                part.image,
                                epoch_writer.epoch()
                            ),
                        });
                    }
                    let (last, size) = (part.last_seq, part.size);
                    sealed.push(
                        tokio::task::spawn_blocking(move || epoch_writer.seal(last, size))
                            .await??,
                    );
                }
                let meta = RecoveryPointMeta {
                    id: commit.recovery_point,
                    created_unix_ms: commit.created_unix_ms,
                    fuzzy: commit.fuzzy,
                };
                let store = ctx.store.clone();
                let started = Instant::now();
                tokio::task::spawn_blocking(move || store.commit(meta, sealed)).await??;
                ctx.totals.commits.fetch_add(1, Ordering::Relaxed);
                info!(
                    recovery_point = %commit.recovery_point,
                    images = commit.images.len(),
                    fuzzy = commit.fuzzy,
                    apply_ms = started.elapsed().as_millis() as u64,
                    "recovery point committed"
                );
                writer
                    .send(&Message::Committed(Committed {
                        recovery_point: commit.recovery_point,
                    }))
                    .await?;
            }
            Message::ResumeQuery(query) => {
                ctx.authorize(peer, &query.image)?;
                let store = ctx.store.clone();
                let image = query.image.clone();
                let state =
                    tokio::task::spawn_blocking(move || store.image_state(&image)).await??;
                let committed = state
                    .as_ref()
                    .map(|s| s.committed_epoch)
                    .unwrap_or_default();
                let pending = state
                    .and_then(|s| s.pending)
                    .filter(|p| p.epoch == query.epoch);
                writer
                    .send(&Message::ResumeAnswer(ResumeAnswer {
                        image: query.image,
                        epoch: query.epoch,
                        committed_epoch: committed,
                        durable_seq: pending.as_ref().map(|p| p.durable_seq).unwrap_or_default(),
                        resume_offset: pending.map(|p| p.resume_offset).unwrap_or(0),
                    }))
                    .await?;
            }
            Message::HashRequest(request) => {
                let count = request
                    .length
                    .div_ceil(u64::from(request.granularity.max(1)));
                if request.granularity == 0 || count > MAX_HASHES_PER_ANSWER {
                    return Err(ServeError::Refuse {
                        code: ErrorCode::Malformed,
                        message: format!(
                            "hash request for {} granules of {} bytes: at most {MAX_HASHES_PER_ANSWER} granules of ≥1 byte",
                            count, request.granularity
                        ),
                    });
                }
                ctx.authorize(peer, &request.image)?;
                let store = ctx.store.clone();
                let req = request.clone();
                let (rp, size, hashes) = tokio::task::spawn_blocking(move || {
                    store.hash_range(&req.image, req.offset, req.length, req.granularity)
                })
                .await??;
                writer
                    .send(&Message::HashAnswer(HashAnswer {
                        image: request.image,
                        recovery_point: rp,
                        image_size: size,
                        offset: request.offset,
                        granularity: request.granularity,
                        hashes,
                    }))
                    .await?;
            }
            other => {
                return Err(ServeError::Refuse {
                    code: ErrorCode::OutOfOrder,
                    message: format!(
                        "unexpected frame on the control stream: {}",
                        frame_name(&other)
                    ),
                })
            }
        }
    }
    Ok(())
}

fn frame_name(message: &Message) -> &'static str {
    message.frame_type().name()
}

/// Opens the epoch, taking the image over from a stale connection if needed.
async fn open_epoch_taking_over(
    ctx: &Arc<ReceiverContext>,
    open: &OpenImage,
    conn_id: u64,
    conn: &quinn::Connection,
) -> Result<EpochSink, ServeError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let store = ctx.store.clone();
        let request = open.clone();
        match tokio::task::spawn_blocking(move || store.open_epoch(&request)).await? {
            Ok(writer) => {
                lock(&ctx.holders).insert(open.image.clone(), (conn_id, conn.clone()));
                return Ok(writer);
            }
            Err(StoreError::Busy { .. }) if Instant::now() < deadline => {
                // The same image is held by another connection. A primary
                // reconnecting after a link cut supersedes its old connection.
                let stale = lock(&ctx.holders)
                    .get(&open.image)
                    .filter(|(id, _)| *id != conn_id)
                    .map(|(_, c)| c.clone());
                if let Some(old) = stale {
                    info!(image = %open.image, "closing the stale connection that held this image");
                    old.close(
                        quinn::VarInt::from_u32(2),
                        b"superseded by a new connection",
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

enum StagerInput {
    Batch(Box<ExtentBatch>),
    End,
}

enum StagerOutput {
    Ack(SeqNo),
    Nack(Nack),
}

async fn serve_image_stream(
    mut reader: FrameReader,
    writer: &mut FrameWriter,
    ctx: &Arc<ReceiverContext>,
    parked: &Parked,
    conn_id: u64,
    conn: &quinn::Connection,
    peer: Option<AgentId>,
) -> Result<(), ServeError> {
    let open = match reader.next().await? {
        Some(Message::OpenImage(open)) => open,
        Some(other) => {
            return Err(ServeError::Refuse {
                code: ErrorCode::OutOfOrder,
                message: format!(
                    "an image stream must start with OpenImage, got {}",
                    frame_name(&other)
                ),
            })
        }
        None => return Ok(()),
    };
    // Before anything touches the store: may this peer write this image?
    ctx.authorize(peer, &open.image)?;
    let image = open.image.clone();
    let epoch = open.epoch;
    // A parked writer from this same connection (re-opened stream) is released first.
    drop(lock(parked).remove(&image));
    let epoch_writer = open_epoch_taking_over(ctx, &open, conn_id, conn).await?;
    let store = ctx.store.clone();
    let lookup = image.clone();
    let committed = tokio::task::spawn_blocking(move || store.image_state(&lookup))
        .await??
        .map(|s| s.committed_epoch)
        .unwrap_or_default();
    let durable = epoch_writer.durable_seq();
    info!(%image, %epoch, base = %open.base_epoch, durable_seq = %durable, size = open.size, "receiving epoch");
    writer
        .send(&Message::ResumeAnswer(ResumeAnswer {
            image: image.clone(),
            epoch,
            committed_epoch: committed,
            durable_seq: durable,
            resume_offset: epoch_writer.resume_offset(),
        }))
        .await?;
    ctx.update_activity(&image, |a| {
        *a = ImageActivity {
            epoch,
            durable_seq: durable,
            ..ImageActivity::default()
        }
    });

    let (in_tx, in_rx) = mpsc::channel::<StagerInput>(4);
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<StagerOutput>();
    let stager = {
        let ctx = ctx.clone();
        let parked = parked.clone();
        tokio::task::spawn_blocking(move || stage_loop(epoch_writer, in_rx, out_tx, &ctx, &parked))
    };

    let mut reading = true;
    let result: Result<(), ServeError> = loop {
        tokio::select! {
            frame = reader.next(), if reading => match frame {
                Ok(Some(message)) => match FrameMachine::accept_frame(&image, epoch, message) {
                    Ok(batch) => {
                        if in_tx.send(StagerInput::Batch(Box::new(batch))).await.is_err() {
                            reading = false;
                        }
                    }
                    Err(e) => break Err(e.into()),
                },
                Ok(None) => {
                    reading = false;
                    let _ = in_tx.send(StagerInput::End).await;
                }
                Err(e) => break Err(e.into()),
            },
            out = out_rx.recv() => match out {
                Some(StagerOutput::Ack(seq)) => {
                    writer.send(&Message::Ack(Ack { image: image.clone(), epoch, durable_seq: seq })).await?;
                }
                Some(StagerOutput::Nack(nack)) => {
                    writer.send(&Message::Nack(nack)).await?;
                }
                None => break Ok(()), // stager finished
            },
        }
    };
    drop(in_tx);
    let staged = stager.await?;
    // Flush acks the stager produced after the loop ended.
    while let Ok(out) = out_rx.try_recv() {
        if let StagerOutput::Ack(seq) = out {
            let _ = writer
                .send(&Message::Ack(Ack {
                    image: image.clone(),
                    epoch,
                    durable_seq: seq,
                }))
                .await;
        }
    }
    result?;
    staged?;
    Ok(())
}

/// The blocking per-image worker: verify, stage in order, fsync in groups,
/// acknowledge only durable batches. At the end of the stream the writer is
/// parked for the commit that follows.
fn stage_loop(
    epoch_writer: EpochSink,
    mut input: mpsc::Receiver<StagerInput>,
    output: mpsc::UnboundedSender<StagerOutput>,
    ctx: &ReceiverContext,
    parked: &Parked,
) -> Result<(), ServeError> {
    let mut machine = FrameMachine::new(epoch_writer);
    let mut unsynced: u64 = 0;
    let mut meter = RateMeter::new(Instant::now());
    let image = machine.image().clone();
    let epoch = machine.epoch();
    let sync_and_ack = |m: &mut FrameMachine, unsynced: &mut u64| -> Result<(), ServeError> {
        let durable = m.sync()?;
        *unsynced = 0;
        ctx.update_activity(&image, |a| a.durable_seq = durable);
        let _ = output.send(StagerOutput::Ack(durable));
        Ok(())
    };
    loop {
        let next = if unsynced > 0 {
            match input.try_recv() {
                Ok(item) => Some(item),
                Err(mpsc::error::TryRecvError::Empty) => {
                    sync_and_ack(&mut machine, &mut unsynced)?;
                    input.blocking_recv()
                }
                Err(mpsc::error::TryRecvError::Disconnected) => None,
            }
        } else {
            input.blocking_recv()
        };
        match next {
            Some(StagerInput::Batch(batch)) => {
                if batch.seq == machine.expected() {
                    // Only a batch that will be decoded costs write budget.
                    let declared = FrameMachine::declared_plain(&batch);
                    ctx.write_limit.acquire_blocking(declared.max(1));
                }
                match machine.on_batch(&batch)? {
                    Step::Staged { plain, .. } => {
                        let totals = &ctx.totals;
                        totals
                            .bytes_received
                            .fetch_add(batch.payload.len() as u64, Ordering::Relaxed);
                        totals.bytes_applied.fetch_add(plain, Ordering::Relaxed);
                        totals
                            .extents
                            .fetch_add(batch.extents.len() as u64, Ordering::Relaxed);
                        unsynced += plain.max(1);
                        meter.record(plain, Instant::now());
                        let rate = meter.rate(Instant::now());
                        ctx.update_activity(&image, |a| {
                            a.bytes_staged += plain;
                            a.rate = rate;
                        });
                        if unsynced >= GROUP_SYNC_BYTES {
                            sync_and_ack(&mut machine, &mut unsynced)?;
                        }
                    }
                    Step::Duplicate(_) | Step::AheadOfGap(_) => {}
                    Step::Nack { nack, detail } => {
                        warn!(%image, %epoch, seq = %batch.seq, error = %detail, "rejected a batch; asking for it again");
                        ctx.update_activity(&image, |a| a.nacks += 1);
                        ctx.totals.nacks.fetch_add(1, Ordering::Relaxed);
                        let _ = output.send(StagerOutput::Nack(nack));
                    }
                }
            }
            Some(StagerInput::End) | None => {
                let durable = machine.sync()?;
                ctx.update_activity(&image, |a| a.durable_seq = durable);
                let end_of_stream = matches!(next, Some(StagerInput::End));
                if end_of_stream {
                    lock(parked).insert(image.clone(), machine.into_writer());
                }
                let _ = output.send(StagerOutput::Ack(durable));
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_refusal_carries_its_causes() {
        let e = ServeError::Store(StoreError::Ceph {
            context: "breaking stale locks of rbd/vm1".into(),
            source: crate::sys::librbd::CephError::Call {
                op: "rbd_lock_break",
                target: "rbd/vm1 as client.ferry".into(),
                source: std::io::Error::from_raw_os_error(libc::EACCES),
            },
        });
        let frame = e.to_frame();
        assert_eq!(frame.code, ErrorCode::Storage);
        assert!(
            frame.message.starts_with(
                "RBD standby: breaking stale locks of rbd/vm1: rbd_lock_break rbd/vm1 as client.ferry: "
            ),
            "{}",
            frame.message
        );
        let long = ServeError::Store(StoreError::InvalidRequest {
            reason: "x".repeat(10_000),
        });
        assert!(
            long.to_frame().message.len() <= 4096,
            "cut to the frame cap"
        );
    }
}
