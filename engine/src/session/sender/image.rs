//! One image's epoch on the primary: opens its stream (rolling forward an
//! epoch the standby committed meanwhile), runs the source pipeline, sends
//! its chunks as batches through the [`SendWindow`], handles acks and Nacks,
//! reconnects and resends what the standby lacks after a link loss, and
//! ends the stream so the standby parks the image's writer for the group
//! commit ([`super::sync_group`]).

use std::ops::Range;
use std::time::{Duration, Instant};

use ferry_protocol::{ExtentBatch, ImageName, Message, OpenImage, ResumeQuery, SeqNo};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::group_window::WindowShare;
use super::links::{is_retryable, open_image_stream_on, open_stream, ImageStream, Links};
use super::types::{ImageJob, PathSnapshot, SyncError, SyncProgress, SyncReport, SyncTarget};
use crate::compression::{Backpressure, CompressionSwitch};
use crate::payload_codec::EncodedChunk;
use crate::pipeline::{Pipeline, PipelineError};
use crate::qos::{RateLimiter, RateMeter};
use crate::session::framing::{FrameWriter, FramingError};
use crate::session::send_window::SendWindow;
use crate::source::{CyclePlan, ExtentSource, SourceError};

/// What one image's transfer hands to the group commit.
pub(super) struct Transferred {
    pub(super) source: Box<dyn ExtentSource>,
    pub(super) open: OpenImage,
    pub(super) last_seq: SeqNo,
    pub(super) fuzzy: bool,
    /// Connection generation on which the image's writer is parked.
    pub(super) parked_on: u64,
    pub(super) report: SyncReport,
}

/// An image whose epoch has been planned against the standby.
pub(super) struct Planned {
    pub(super) job: ImageJob,
    pub(super) open: OpenImage,
}

/// Sends batches through the send window and counts what went out.
struct Transfer<'a> {
    window: SendWindow,
    /// The window's part of the group sync's budget of unacknowledged bytes.
    share: WindowShare<'a>,
    report: SyncReport,
    meter: RateMeter,
    progress: SyncProgress,
}

impl<'a> Transfer<'a> {
    /// Counters for the epoch `open`, resumed at `resume_offset` on a
    /// stream where the standby holds every batch up to `durable`.
    fn new(
        open: &OpenImage,
        resume_offset: u64,
        durable: SeqNo,
        max_unacked_bytes: u64,
        share: WindowShare<'a>,
    ) -> Self {
        Self {
            window: SendWindow::new(durable, max_unacked_bytes),
            share,
            report: SyncReport {
                image: open.image.to_string(),
                epoch: open.epoch.get(),
                base_epoch: open.base_epoch.get(),
                image_size: open.size,
                resumed_at: resume_offset,
                ..SyncReport::default()
            },
            meter: RateMeter::new(Instant::now()),
            progress: SyncProgress {
                image_size: open.size,
                resumed_at: resume_offset,
                bytes_scanned: resume_offset,
                phase: "sending",
                ..SyncProgress::default()
            },
        }
    }

    fn on_ack(&mut self, durable: SeqNo) {
        self.window.ack(durable);
        self.show_window();
    }

    /// Copies the window's state into the live progress and the group's
    /// budget.
    fn show_window(&mut self) {
        self.progress.durable_seq = self.window.durable_seq();
        self.progress.bytes_unacked = self.window.unacked_bytes();
        self.share.follow(self.window.unacked_bytes());
    }

    /// Whether a new batch may go out now: room in the image's window and
    /// in the group's budget.
    fn can_send(&self) -> bool {
        self.window.has_room() && self.share.group().admits(self.window.unacked_bytes())
    }

    /// Queues the batch `build` makes from the next sequence number as
    /// unacknowledged, then sends it. Queuing first means a batch whose
    /// write fails on a dying link is resent after the reconnect instead of
    /// being lost.
    async fn send_new(
        &mut self,
        writer: &mut FrameWriter,
        limiter: &RateLimiter,
        build: impl FnOnce(SeqNo) -> ExtentBatch,
    ) -> Result<(), SyncError> {
        let index = self.window.push(build);
        self.show_window();
        self.report.batches += 1;
        self.send_queued(writer, index, limiter, false).await?;
        // Fault tests: hold or pause the primary with data on the wire.
        crate::testpoint::reach("sender::after-batch");
        Ok(())
    }

    /// Sends the queued batches at `indexes` again, in order.
    async fn resend(
        &mut self,
        writer: &mut FrameWriter,
        indexes: Range<usize>,
        limiter: &RateLimiter,
    ) -> Result<(), SyncError> {
        for index in indexes {
            self.send_queued(writer, index, limiter, true).await?;
        }
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
        let batch = self.window.batch(index);
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
pub(super) async fn transfer_image(links: &Links, plan: Planned) -> Result<Transferred, SyncError> {
    let Planned { job, open } = plan;
    let ImageJob {
        mut source,
        image,
        progress,
    } = job;
    let target = links.target(&image);
    let (open, generation, connection, stream) =
        open_or_roll_forward(links, &mut *source, open, &target).await?;
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
    let options = &links.options;
    let transfer = Transfer::new(
        &open,
        resume_offset,
        durable_at_start,
        options.max_unacked_bytes,
        WindowShare::new(&links.group_window),
    );
    let compression = CompressionSwitch::new(
        options.transport.compression,
        options.limiter.rate().is_some(),
    );
    let mut backpressure = Backpressure::new(compression.clone());
    // The handshake's round trip: a long path is link-bound from the first
    // batch (see ferry_engine::compression).
    let base_rtt = match PathSnapshot::of(&connection).rtt {
        Duration::ZERO => Duration::MAX,
        rtt => {
            backpressure.set_base_rtt(rtt);
            rtt
        }
    };
    let pipeline = Pipeline::start_compressing(source, plan, options.pipeline, compression)?;
    let (chunk_tx, chunks) = mpsc::channel::<Result<EncodedChunk, PipelineError>>(2);
    let forwarder = tokio::task::spawn_blocking(move || {
        while let Some(item) = pipeline.recv() {
            if chunk_tx.blocking_send(item).is_err() {
                return pipeline;
            }
        }
        pipeline
    });
    let mut run = ImageRun {
        links,
        target,
        image,
        open,
        progress,
        generation,
        connection,
        stream,
        transfer,
        chunks,
        backpressure,
        base_rtt,
        pipeline_done: false,
        pending_empty_since: resume_offset,
    };
    if let Err(e) = run.send_all().await {
        drop(run.chunks);
        if let Ok(pipeline) = forwarder.await {
            let _ = pipeline.abort();
        }
        return Err(e);
    }
    run.finish(forwarder).await
}

/// Opens the image stream of `open`. When the standby refuses it because it
/// committed that epoch meanwhile ([`roll_forward`]), opens the next epoch
/// instead. Returns the epoch opened with its connection and stream.
async fn open_or_roll_forward(
    links: &Links,
    source: &mut dyn ExtentSource,
    open: OpenImage,
    target: &SyncTarget,
) -> Result<(OpenImage, u64, quinn::Connection, ImageStream), SyncError> {
    match open_stream(links, &open, target).await {
        Ok((generation, connection, stream)) => Ok((open, generation, connection, stream)),
        Err(refused @ SyncError::Peer { .. }) => match roll_forward(links, source, &open).await? {
            Some(next) => {
                let (generation, connection, stream) = open_stream(links, &next, target).await?;
                Ok((next, generation, connection, stream))
            }
            None => Err(refused),
        },
        Err(e) => Err(e),
    }
}

/// One image's epoch in flight: the stream it is sent on, the window of
/// unacknowledged batches, the pipeline's chunks and the backpressure the
/// link shows.
struct ImageRun<'a> {
    links: &'a Links,
    target: SyncTarget,
    image: ImageName,
    open: OpenImage,
    progress: watch::Sender<SyncProgress>,
    /// Generation of the connection the stream is on.
    generation: u64,
    connection: quinn::Connection,
    stream: ImageStream,
    transfer: Transfer<'a>,
    chunks: mpsc::Receiver<Result<EncodedChunk, PipelineError>>,
    backpressure: Backpressure,
    /// Smallest round trip seen.
    base_rtt: Duration,
    pipeline_done: bool,
    /// Scan end of the last batch made (an empty one included).
    pending_empty_since: u64,
}

impl ImageRun<'_> {
    /// Sends every batch the pipeline delivers until all are durable,
    /// reconnecting and resending what the standby lacks after link losses.
    async fn send_all(&mut self) -> Result<(), SyncError> {
        loop {
            match self.pump().await {
                Ok(()) => return Ok(()),
                Err(e) if is_retryable(&e) => self.reconnect_and_resend(e).await?,
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends chunks while the window has room and handles the standby's
    /// answers, on the current stream, until every batch is durable.
    async fn pump(&mut self) -> Result<(), SyncError> {
        loop {
            if self.pipeline_done && self.transfer.window.is_empty() {
                return Ok(());
            }
            // Before the check: another image's release after it wakes us.
            let links = self.links;
            let group_freed = links.group_window.freed();
            let can_send = !self.pipeline_done && self.transfer.can_send();
            // Waiting on the group's budget only: the others' acks free it.
            let group_bound = !self.pipeline_done && !can_send && self.transfer.window.has_room();
            // Time spent here while the pipeline could go on but the
            // link holds us (unacknowledged cap) counts as backpressure.
            let waiting_since = Instant::now();
            let link_bound_wait = !self.pipeline_done && !can_send;
            tokio::select! {
                _ = group_freed, if group_bound => continue,
                chunk = self.chunks.recv(), if can_send => match chunk {
                    Some(Ok(chunk)) => {
                        if !self.on_chunk(chunk).await? {
                            continue;
                        }
                    }
                    Some(Err(e)) => return Err(e.into()),
                    None => self.pipeline_done = true,
                },
                frame = self.stream.reader.next() => {
                    self.on_frame(frame, waiting_since, link_bound_wait).await?;
                }
            }
            self.transfer.progress.rate = self.transfer.meter.rate(Instant::now());
            self.transfer.progress.connection = Some(PathSnapshot::of(&self.connection));
            let _ = self.progress.send(self.transfer.progress.clone());
        }
    }

    /// Sends `chunk` as the next batch. Returns false (nothing sent) for an
    /// unchanged stretch not yet worth reporting.
    async fn on_chunk(&mut self, chunk: EncodedChunk) -> Result<bool, SyncError> {
        let options = &self.links.options;
        let transfer = &mut self.transfer;
        transfer.report.bytes_scanned += chunk.stats.bytes_scanned;
        transfer.report.bytes_changed += chunk.stats.bytes_changed;
        transfer.report.bytes_zero += chunk.stats.bytes_zero;
        transfer.report.bytes_plain_data += chunk.stats.plain_data_bytes;
        transfer.progress.bytes_scanned = chunk.scan_end;
        transfer.progress.bytes_changed = transfer.report.bytes_changed;
        // Only chunks the source made durable may move the standby's resume
        // offset: a new process must be able to resume wherever the standby is.
        if chunk.extents.is_empty()
            && chunk.scan_end < self.open.size
            && (!chunk.durable
                || chunk.scan_end - self.pending_empty_since < options.empty_batch_every)
        {
            return Ok(false);
        }
        if !chunk.durable {
            return Err(SyncError::Source(SourceError::Misuse {
                reason:
                    "the pipeline delivered a chunk with changes before the source made it durable",
            }));
        }
        self.pending_empty_since = chunk.scan_end;
        transfer.report.extents += chunk.extents.len() as u64;
        let (image, epoch) = (&self.image, self.open.epoch);
        let sending = Instant::now();
        transfer
            .send_new(&mut self.stream.writer, &options.limiter, |seq| {
                ExtentBatch {
                    image: image.clone(),
                    epoch,
                    seq,
                    scan_start: chunk.scan_start,
                    scan_end: chunk.scan_end,
                    payload_crc32c: chunk.payload_crc32c,
                    plain_blake3: chunk.plain_blake3,
                    extents: chunk.extents,
                    payload: chunk.payload,
                }
            })
            .await?;
        let now = Instant::now();
        let link_rate = link_rate(&self.connection, &options.limiter, &mut self.base_rtt);
        self.backpressure.set_base_rtt(self.base_rtt);
        self.backpressure
            .record_blocked(now - sending, now, link_rate);
        Ok(true)
    }

    /// Handles one frame from the standby on the image stream.
    async fn on_frame(
        &mut self,
        frame: Result<Option<Message>, FramingError>,
        waiting_since: Instant,
        link_bound_wait: bool,
    ) -> Result<(), SyncError> {
        let limiter = &self.links.options.limiter;
        match frame? {
            Some(Message::Ack(ack)) => {
                let now = Instant::now();
                let link_rate = link_rate(&self.connection, limiter, &mut self.base_rtt);
                self.backpressure.set_base_rtt(self.base_rtt);
                if link_bound_wait {
                    self.backpressure
                        .record_blocked(now - waiting_since, now, link_rate);
                } else {
                    self.backpressure.tick(now, link_rate);
                }
                self.transfer.on_ack(ack.durable_seq);
                Ok(())
            }
            Some(Message::Nack(nack)) => {
                warn!(image = %self.image, seq = %nack.seq, reason = ?nack.reason, "standby rejected a batch; resending from it");
                let again = self.transfer.window.nack(nack.seq)?;
                self.transfer
                    .resend(&mut self.stream.writer, again, limiter)
                    .await
            }
            Some(Message::Error(e)) => Err(e.into()),
            Some(other) => Err(SyncError::Protocol(format!(
                "unexpected frame on an image stream: {other:?}"
            ))),
            None => Err(SyncError::Protocol(
                "connection lost: the standby closed the image stream".into(),
            )),
        }
    }

    /// After the link failed with `lost`: re-opens the epoch on a new
    /// connection, where the standby reports what is durable, and sends only
    /// the rest again. A loss during that resend is left to the next
    /// [`Self::pump`], which fails and comes back here.
    async fn reconnect_and_resend(&mut self, lost: SyncError) -> Result<(), SyncError> {
        self.transfer.progress.phase = "reconnecting";
        let _ = self.progress.send(self.transfer.progress.clone());
        let (generation, stream, connection) = self.reopen(lost).await?;
        self.generation = generation;
        self.stream = stream;
        self.connection = connection;
        self.transfer.report.reconnects += 1;
        self.transfer.progress.reconnects += 1;
        self.transfer.progress.phase = "sending";
        let durable = self.stream.answer.durable_seq;
        let again = self.transfer.window.reopened(durable)?;
        self.transfer.show_window();
        info!(image = %self.image, durable_seq = %durable, unacked = self.transfer.window.len(), "resending unacknowledged batches");
        let limiter = &self.links.options.limiter;
        if let Err(e) = self
            .transfer
            .resend(&mut self.stream.writer, again, limiter)
            .await
        {
            if !is_retryable(&e) {
                return Err(e);
            }
            // Another loss during the resend: the loop reconnects again.
            warn!(image = %self.image, error = %e, "link lost again while resending");
        }
        Ok(())
    }

    /// Opens the epoch's stream on a new connection, trying again for
    /// `reconnect_for` while that fails with a link error or Busy.
    async fn reopen(
        &self,
        lost: SyncError,
    ) -> Result<(u64, ImageStream, quinn::Connection), SyncError> {
        let links = self.links;
        let mut failed = self.generation;
        let mut last = lost;
        let deadline = Instant::now() + links.options.reconnect_for;
        loop {
            let (generation, connection) = links.reconnect(failed, &last).await?;
            match open_image_stream_on(
                &connection,
                &self.open,
                &self.target,
                &links.identity,
                &links.options,
            )
            .await
            {
                Ok(stream) => return Ok((generation, stream, connection)),
                Err(e) if is_retryable(&e) && Instant::now() < deadline => {
                    failed = generation;
                    last = e;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Every batch is durable: finishes the pipeline and ends the stream,
    /// so the standby parks the image's writer for the commit.
    async fn finish(mut self, forwarder: JoinHandle<Pipeline>) -> Result<Transferred, SyncError> {
        let pipeline = forwarder
            .await
            .map_err(|e| SyncError::Protocol(format!("pipeline forwarder failed: {e}")))?;
        let (source, scan) = pipeline.finish()?;
        let transfer = &mut self.transfer;
        transfer.report.fuzzy = scan.fuzzy;
        transfer.report.compression = self.links.options.transport.compression.to_string();
        transfer.report.compressing_at_end = self.backpressure.compressing();
        transfer.report.compression_switches = self.backpressure.decisions();
        transfer.report.link_bound_at_end = self.backpressure.link_bound();
        let last_seq = transfer.window.last_seq();
        // End the stream; the standby parks the writer for the commit.
        transfer.progress.phase = "committing";
        let _ = self.progress.send(transfer.progress.clone());
        self.stream.writer.finish();
        let mut parked_on = self.generation;
        loop {
            match self.stream.reader.next().await {
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
        self.transfer.progress.phase = "committed";
        let _ = self.progress.send(self.transfer.progress.clone());
        Ok(Transferred {
            source,
            open: self.open,
            last_seq,
            fuzzy: scan.fuzzy,
            parked_on,
            report: self.transfer.report,
        })
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
