//! The primary side of a replication session: runs the source pipeline for
//! one image epoch, sends the batches to the standby under the bandwidth
//! limit, keeps every unacknowledged batch until the standby says it is
//! durable (resending on Nack and after a reconnect), and commits the
//! recovery point.
//!
//! Resume rule: within one process a lost connection is re-established and
//! only unacknowledged batches are sent again. A new process resumes the same
//! epoch at `min(standby resume offset, source resumable offset)`.

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
    /// Plain bytes of changed data.
    pub bytes_plain_data: u64,
    /// Payload bytes on the wire (after compression), including resends.
    pub bytes_sent: u64,
    /// Frame bytes on the wire (payload + headers).
    pub frame_bytes: u64,
    /// UDP bytes sent by QUIC (all overheads included).
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

async fn open_link(
    endpoint: &quinn::Endpoint,
    target: &SyncTarget,
    identity: &Identity,
    options: &SyncOptions,
) -> Result<Link, SyncError> {
    let connection = transport::connect(
        endpoint,
        target.addr,
        identity,
        target.peer,
        &options.transport,
    )
    .await?;
    let (send, recv) = connection.open_bi().await.map_err(|source| {
        transport::explain_connection_error(target.addr, source, identity.fingerprint())
    })?;
    let mut control_writer = FrameWriter::new(send, options.max_frame_len);
    let mut control_reader = FrameReader::new(recv, options.max_frame_len);
    let ours = local_hello(identity.fingerprint());
    control_writer.send(&Message::Hello(ours.clone())).await?;
    let theirs = match next_or_lost(&mut control_reader, &connection, target.addr, identity).await?
    {
        Message::Hello(h) => h,
        Message::Error(e) => return Err(e.into()),
        other => {
            return Err(SyncError::Protocol(format!(
                "expected Hello, got {other:?}"
            )))
        }
    };
    negotiate(&ours, &theirs).map_err(|e| SyncError::Protocol(e.to_string()))?;
    if theirs.agent_id != target.peer {
        return Err(SyncError::Protocol(format!(
            "the standby's Hello names agent {} but its certificate is {}",
            theirs.agent_id, target.peer
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

async fn open_image_stream(
    link: &Link,
    open: &OpenImage,
    target: &SyncTarget,
    identity: &Identity,
    options: &SyncOptions,
) -> Result<ImageStream, SyncError> {
    let (send, recv) = link.connection.open_bi().await.map_err(|source| {
        transport::explain_connection_error(target.addr, source, identity.fingerprint())
    })?;
    let mut writer = FrameWriter::new(send, options.max_frame_len);
    let mut reader = FrameReader::new(recv, options.max_frame_len);
    writer.send(&Message::OpenImage(open.clone())).await?;
    match next_or_lost(&mut reader, &link.connection, target.addr, identity).await? {
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
            .await
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

/// Replicates one cycle of `source` to the standby and commits it as a
/// recovery point. Progress is published on `progress`.
pub async fn sync_image(
    mut source: Box<dyn ExtentSource>,
    target: SyncTarget,
    identity: Identity,
    options: SyncOptions,
    progress: watch::Sender<SyncProgress>,
) -> Result<SyncReport, SyncError> {
    let started = Instant::now();
    let info = source.info()?;
    let endpoint = transport::client_endpoint(target.addr, &options.transport)?;
    let mut link = open_link(&endpoint, &target, &identity, &options).await?;

    // Ask the standby where it stands (no side effects on its state).
    let source_committed = source.committed_epoch();
    link.control_writer
        .send(&Message::ResumeQuery(ResumeQuery {
            image: target.image.clone(),
            epoch: source_committed.next(),
        }))
        .await?;
    let probe_answer = match next_or_lost(
        &mut link.control_reader,
        &link.connection,
        target.addr,
        &identity,
    )
    .await?
    {
        Message::ResumeAnswer(a) if a.image == target.image => a,
        Message::Error(e) => return Err(e.into()),
        other => {
            return Err(SyncError::Protocol(format!(
                "expected ResumeAnswer, got {other:?}"
            )))
        }
    };
    let scan_complete = source.resumable_offset(source_committed.next()) >= info.size;
    let (epoch, base_epoch, commit_first) = plan_epoch(
        source_committed,
        probe_answer.committed_epoch,
        scan_complete,
    );
    if commit_first {
        source.commit_cycle(base_epoch)?;
        info!(image = %target.image, epoch = %base_epoch, "the standby had already committed our last epoch; recorded it");
    }
    let open = OpenImage {
        image: target.image.clone(),
        size: info.size,
        block_size: info.block_size,
        epoch,
        base_epoch,
    };
    let mut stream = open_image_stream(&link, &open, &target, &identity, &options).await?;
    let resume_offset = stream
        .answer
        .resume_offset
        .min(source.resumable_offset(epoch));
    let durable_at_start = stream.answer.durable_seq;
    if resume_offset > 0 {
        info!(image = %target.image, %epoch, resume_offset, durable_seq = %durable_at_start, "resuming an interrupted epoch");
    }
    let plan = CyclePlan {
        epoch,
        base_epoch,
        resume_offset,
    };

    let mut transfer = Transfer {
        unacked: VecDeque::new(),
        unacked_bytes: 0,
        next_seq: durable_at_start.next(),
        durable_seq: durable_at_start,
        report: SyncReport {
            image: target.image.to_string(),
            epoch: epoch.get(),
            base_epoch: base_epoch.get(),
            image_size: info.size,
            resumed_at: resume_offset,
            ..SyncReport::default()
        },
        meter: RateMeter::new(Instant::now()),
        progress: SyncProgress {
            image_size: info.size,
            resumed_at: resume_offset,
            bytes_scanned: resume_offset,
            phase: "sending",
            ..SyncProgress::default()
        },
    };

    // The pipeline is blocking; a thread forwards its chunks to this task.
    let pipeline = Pipeline::start(source, plan, options.pipeline)?;
    let (chunk_tx, mut chunk_rx) = mpsc::channel::<Result<EncodedChunk, PipelineError>>(2);
    let forwarder = tokio::task::spawn_blocking(move || {
        while let Some(item) = pipeline.recv() {
            if chunk_tx.blocking_send(item).is_err() {
                return (pipeline, false);
            }
        }
        (pipeline, true)
    });

    let mut pipeline_done = false;
    let mut pending_empty_since: u64 = resume_offset;
    let mut last_scan_end = resume_offset;
    let mut stream_finished = false;
    let outcome: Result<(), SyncError> = 'session: loop {
        let result: Result<bool, SyncError> = async {
            loop {
                if pipeline_done && transfer.unacked.is_empty() {
                    if !stream_finished {
                        stream.writer.finish();
                        stream_finished = true;
                    }
                    return Ok(true);
                }
                let can_send = !pipeline_done && transfer.unacked_bytes < options.max_unacked_bytes;
                tokio::select! {
                    chunk = chunk_rx.recv(), if can_send => match chunk {
                        Some(Ok(chunk)) => {
                            transfer.report.bytes_scanned += chunk.stats.bytes_scanned;
                            transfer.report.bytes_changed += chunk.stats.bytes_changed;
                            transfer.report.bytes_zero += chunk.stats.bytes_zero;
                            transfer.report.bytes_plain_data += chunk.stats.plain_data_bytes;
                            transfer.progress.bytes_scanned = chunk.scan_end;
                            transfer.progress.bytes_changed = transfer.report.bytes_changed;
                            last_scan_end = chunk.scan_end;
                            let empty = chunk.extents.is_empty();
                            if empty && chunk.scan_end - pending_empty_since < options.empty_batch_every && chunk.scan_end < info.size {
                                continue;
                            }
                            pending_empty_since = chunk.scan_end;
                            let seq = transfer.next_seq;
                            transfer.next_seq = seq.next();
                            let item = InFlight {
                                batch: ExtentBatch {
                                    image: target.image.clone(),
                                    epoch,
                                    seq,
                                    scan_start: chunk.scan_start,
                                    scan_end: chunk.scan_end,
                                    payload_crc32c: chunk.payload_crc32c,
                                    plain_blake3: chunk.plain_blake3,
                                    extents: chunk.extents,
                                    payload: chunk.payload,
                                },
                            };
                            transfer.send_new(&mut stream.writer, &options.limiter, item).await?;
                        }
                        Some(Err(e)) => return Err(e.into()),
                        None => { pipeline_done = true; }
                    },
                    frame = stream.reader.next() => match frame {
                        Ok(Some(Message::Ack(ack))) => transfer.on_ack(ack.durable_seq),
                        Ok(Some(Message::Nack(nack))) => {
                            warn!(image = %target.image, seq = %nack.seq, reason = ?nack.reason, "standby rejected a batch; resending from it");
                            let from = transfer.unacked.iter().position(|f| f.batch.seq == nack.seq);
                            let Some(from) = from else {
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
                let _ = progress.send(transfer.progress.clone());
            }
        }
        .await;
        match result {
            Ok(_) => break 'session Ok(()),
            Err(e) if is_link_error(&e) => {
                warn!(image = %target.image, error = %e, "link lost; reconnecting");
                transfer.progress.phase = "reconnecting";
                let _ = progress.send(transfer.progress.clone());
                let deadline = Instant::now() + options.reconnect_for;
                let mut last = e.to_string();
                let mut delay = Duration::from_millis(200);
                loop {
                    if Instant::now() >= deadline {
                        break 'session Err(SyncError::LinkLost {
                            addr: target.addr,
                            seconds: options.reconnect_for.as_secs(),
                            last,
                        });
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                    let attempt = async {
                        let new_link = open_link(&endpoint, &target, &identity, &options).await?;
                        let new_stream =
                            open_image_stream(&new_link, &open, &target, &identity, &options)
                                .await?;
                        Ok::<_, SyncError>((new_link, new_stream))
                    }
                    .await;
                    match attempt {
                        Ok((new_link, new_stream)) => {
                            link.connection
                                .close(quinn::VarInt::from_u32(0), b"replaced");
                            link = new_link;
                            stream = new_stream;
                            stream_finished = false;
                            transfer.report.reconnects += 1;
                            transfer.progress.reconnects += 1;
                            transfer.progress.phase = "sending";
                            let durable = stream.answer.durable_seq;
                            if durable < transfer.durable_seq {
                                break 'session Err(SyncError::Protocol(format!(
                                    "the standby acknowledged batch {} as durable but now holds only {}",
                                    transfer.durable_seq, durable
                                )));
                            }
                            transfer.on_ack(durable);
                            info!(image = %target.image, durable_seq = %durable, unacked = transfer.unacked.len(), "reconnected; resending unacknowledged batches");
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
                            match resend {
                                Ok(()) => break,
                                Err(e) => last = e.to_string(),
                            }
                        }
                        Err(e)
                            if is_link_error(&e)
                                || matches!(
                                    e,
                                    SyncError::Peer {
                                        code: ferry_protocol::ErrorCode::Busy,
                                        ..
                                    }
                                ) =>
                        {
                            last = e.to_string();
                        }
                        Err(e) => break 'session Err(e),
                    }
                }
            }
            Err(e) => break 'session Err(e),
        }
    };
    if let Err(e) = outcome {
        drop(chunk_rx);
        if let Ok((pipeline, _)) = forwarder.await {
            let _ = pipeline.abort();
        }
        return Err(e);
    }
    let _ = last_scan_end;
    let (pipeline, _) = forwarder
        .await
        .map_err(|e| SyncError::Protocol(format!("pipeline forwarder failed: {e}")))?;
    let (mut source, outcome) = pipeline.finish()?;
    transfer.report.fuzzy = outcome.fuzzy;
    let last_seq = SeqNo(transfer.next_seq.get() - 1);

    // Commit the recovery point on the control stream.
    transfer.progress.phase = "committing";
    let _ = progress.send(transfer.progress.clone());
    let recovery_point = RecoveryPointId(epoch.get());
    let commit = Commit {
        recovery_point,
        created_unix_ms: unix_ms(),
        fuzzy: outcome.fuzzy,
        images: vec![CommitImage {
            image: target.image.clone(),
            epoch,
            last_seq,
            size: info.size,
        }],
    };
    // Wait until the image stream is closed by the standby (its writer parked),
    // then commit. A link lost during the commit is re-established and the
    // standby asked whether the point is already committed.
    while let Ok(Some(frame)) = stream.reader.next().await {
        if let Message::Error(e) = frame {
            return Err(e.into());
        }
    }
    let deadline = Instant::now() + options.reconnect_for;
    let mut reconnect = false;
    loop {
        let attempt = async {
            if reconnect {
                link = open_link(&endpoint, &target, &identity, &options).await?;
                link.control_writer
                    .send(&Message::ResumeQuery(ResumeQuery { image: target.image.clone(), epoch }))
                    .await?;
                let answer = match next_or_lost(&mut link.control_reader, &link.connection, target.addr, &identity).await? {
                    Message::ResumeAnswer(a) => a,
                    Message::Error(e) => return Err(e.into()),
                    other => return Err(SyncError::Protocol(format!("expected ResumeAnswer, got {other:?}"))),
                };
                if answer.committed_epoch == epoch {
                    return Ok(());
                }
                let mut again = open_image_stream(&link, &open, &target, &identity, &options).await?;
                if again.answer.durable_seq != last_seq {
                    return Err(SyncError::Protocol(format!(
                        "before committing, the standby holds batch {} of epoch {epoch} durably, but batch {last_seq} was acknowledged",
                        again.answer.durable_seq
                    )));
                }
                again.writer.finish();
                while let Ok(Some(_)) = again.reader.next().await {}
            }
            link.control_writer.send(&Message::Commit(commit.clone())).await?;
            match next_or_lost(&mut link.control_reader, &link.connection, target.addr, &identity).await? {
                Message::Committed(c) if c.recovery_point == recovery_point => Ok(()),
                Message::Error(e) => Err(e.into()),
                other => Err(SyncError::Protocol(format!("expected Committed, got {other:?}"))),
            }
        }
        .await;
        match attempt {
            Ok(()) => break,
            Err(e)
                if (is_link_error(&e)
                    || matches!(
                        e,
                        SyncError::Peer {
                            code: ferry_protocol::ErrorCode::Busy,
                            ..
                        }
                    ))
                    && Instant::now() < deadline =>
            {
                warn!(image = %target.image, error = %e, "link lost while committing; reconnecting");
                transfer.report.reconnects += 1;
                reconnect = true;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e),
        }
    }
    source.commit_cycle(epoch)?;
    transfer.report.recovery_point = recovery_point.get();
    transfer.report.udp_bytes = link.connection.stats().udp_tx.bytes;
    transfer.report.seconds = started.elapsed().as_secs_f64();
    transfer.progress.phase = "committed";
    let _ = progress.send(transfer.progress.clone());
    link.control_writer.finish();
    link.connection.close(quinn::VarInt::from_u32(0), b"done");
    endpoint.wait_idle().await;
    Ok(transfer.report)
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
