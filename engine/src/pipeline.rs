//! The primary-side pipeline: read → analyse → compress → checksum → ordered batches.
//!
//! Threads and queues (all bounded):
//!
//! ```text
//!            tickets (N)                                       recv() returns a ticket
//!   ┌────────────────────────────────────────────────────────────────────────┐
//!   ▼                                                                        │
//! reader ──work(N)──▶ worker × W ──results(N)──▶ sequencer ──output(N)──▶ recv()
//! read_next()         analyze() + Encoder        reorder, record()
//! ```
//!
//! - The **reader** takes a ticket before each `read_next`; there are
//!   `max_chunks_in_flight` (N) tickets and one comes back only when `recv`
//!   hands a chunk to the caller. At most N chunks therefore exist between
//!   the image and the caller, whatever the image size: when the caller stops
//!   calling `recv`, the reader stops within N chunks (back-pressure).
//! - Read buffers come from a pool capped at N buffers of `chunk_size`;
//!   a worker drops its chunk's read buffer once the payload is encoded.
//!   Payload buffers come from a recycling pool (at most N in the pipeline).
//!   Pipeline memory ≤ 2 × N × chunk_size (48 MiB with the defaults on two
//!   cores: N = 6, 4 MiB chunks), plus what the caller holds.
//! - **Workers** run the source's analyser and an [`Encoder`] (own zstd context).
//! - The **sequencer** restores scan order, calls `source.record` in order
//!   (before the chunk is delivered, so delivered ⇒ recorded), and forwards.
//!   A chunk the sender may report to the standby (one with changes, the
//!   last one, an unchanged one every [`EMPTY_DURABLE_EVERY`] bytes) is held
//!   until `source.make_durable` ran, and delivered with
//!   [`EncodedChunk::durable`] set (delivered as durable ⇒ a new process can
//!   resume after it). One sync covers every chunk held: the sequencer keeps
//!   collecting while the caller still has a delivered chunk to work on and
//!   another result is sure to arrive (some chunk is neither held, queued nor
//!   waiting out of order), else it syncs and delivers — so a slow caller
//!   (the network) gets a sync every few chunks, a fast one no wait beyond
//!   one sync.
//!
//! The source is shared by the reader and the sequencer behind a mutex; each
//! holds it only for one `read_next` or `record` call.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver, Sender};

use crate::compression::CompressionSwitch;
use crate::payload_codec::{CodecError, EncodedChunk, Encoder};
use crate::source::manifest::BLOCK_SIZE;
use crate::source::pool::{BufferPool, PoolStats};
use crate::source::{
    ChunkAnalyzer, ChunkRecord, CyclePlan, ExtentSource, ImageInfo, RawChunk, ScanOutcome,
    SourceError,
};

/// Default chunk size: 4 MiB.
pub const DEFAULT_CHUNK_SIZE: u32 = 4 << 20;

/// Tuning of a [`Pipeline`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PipelineConfig {
    /// Worker threads (analyse + compress + checksum). Default: available cores.
    pub workers: usize,
    /// Bytes of image per chunk, a multiple of 4096. Default 4 MiB.
    pub chunk_size: u32,
    /// Chunks between the reader and the caller (the memory cap). Default 2 × workers + 2.
    pub max_chunks_in_flight: usize,
    /// zstd level. Default 1.
    pub zstd_level: i32,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            workers,
            chunk_size: DEFAULT_CHUNK_SIZE,
            max_chunks_in_flight: 2 * workers + 2,
            zstd_level: 1,
        }
    }
}

impl PipelineConfig {
    fn check(&self) -> Result<(), SourceError> {
        let reason = if self.workers == 0 || self.workers > 256 {
            "workers must be 1..=256"
        } else if self.chunk_size == 0 || !self.chunk_size.is_multiple_of(BLOCK_SIZE) {
            "chunk_size must be a positive multiple of 4096"
        } else if self.max_chunks_in_flight == 0 || self.max_chunks_in_flight > 4096 {
            "max_chunks_in_flight must be 1..=4096"
        } else {
            return Ok(());
        };
        Err(SourceError::InvalidConfig { reason })
    }
}

/// Errors delivered by a [`Pipeline`].
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The source failed (read, analyse, record or end of scan).
    #[error("source failed")]
    Source(#[source] SourceError),
    /// A chunk could not be encoded (a source produced inconsistent extents).
    #[error("encoding chunk {scan_start}..{scan_end} failed")]
    Codec {
        /// Start of the chunk.
        scan_start: u64,
        /// End of the chunk.
        scan_end: u64,
        /// The encoder's error.
        #[source]
        source: CodecError,
    },
    /// A pipeline thread panicked.
    #[error("pipeline thread {stage} panicked")]
    Panicked {
        /// Which thread.
        stage: &'static str,
    },
    /// `finish` was called before `recv` returned `None`, or after an error;
    /// the scan was aborted (its progress is kept for a resume).
    #[error("finish called on a scan that did not complete; it was aborted")]
    Incomplete,
}

/// Counters of a running pipeline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PipelineStats {
    /// Read-buffer pool counters (its cap is `max_chunks_in_flight`).
    pub read_buffers: PoolStats,
    /// Payload-buffer pool counters.
    pub payload_buffers: PoolStats,
    /// Chunks the reader produced.
    pub chunks_read: u64,
    /// Chunks `recv` returned.
    pub chunks_delivered: u64,
}

type SharedSource = Arc<Mutex<Box<dyn ExtentSource>>>;
type WorkItem = (u64, Result<RawChunk, SourceError>);
type ResultItem = (u64, Result<(EncodedChunk, ChunkRecord), PipelineError>);

fn lock(source: &SharedSource) -> MutexGuard<'_, Box<dyn ExtentSource>> {
    // A panic while a thread held the lock is reported through `Panicked`;
    // the source's on-disk state stays resumable, so keep using it.
    crate::sync_util::lock(source)
}

/// Shared flags and counters.
#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    failed: AtomicBool,
    chunks_read: AtomicU64,
}

/// A running scan of one source: see the module docs.
pub struct Pipeline {
    source: SharedSource,
    info: ImageInfo,
    output: Receiver<Result<EncodedChunk, PipelineError>>,
    tickets: Sender<()>,
    read_pool: BufferPool,
    payload_pool: BufferPool,
    shared: Arc<Shared>,
    threads: Vec<(&'static str, JoinHandle<()>)>,
    ended: AtomicBool,
    delivered: AtomicU64,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

fn spawn(
    name: &'static str,
    body: impl FnOnce() + Send + 'static,
) -> Result<(&'static str, JoinHandle<()>), SourceError> {
    std::thread::Builder::new()
        .name(format!("ferry-{name}"))
        .spawn(body)
        .map(|handle| (name, handle))
        .map_err(|source| SourceError::Io {
            op: "spawn pipeline thread",
            path: name.into(),
            source,
        })
}

impl Pipeline {
    /// Starts threads: 1 reader (source.read_next), N workers (analyze +
    /// Encoder::encode), results reordered into scan order; `source.record`
    /// called in order. Bounded queues everywhere. Calls
    /// `source.begin_cycle(&plan, config.chunk_size)` first; on error the
    /// source is dropped (its on-disk state stays valid: reopen it).
    pub fn start(
        source: Box<dyn ExtentSource>,
        plan: CyclePlan,
        config: PipelineConfig,
    ) -> Result<Pipeline, SourceError> {
        Self::start_compressing(source, plan, config, CompressionSwitch::always())
    }

    /// [`Pipeline::start`] whose workers compress only while `compression`
    /// is on (the sender flips it in `auto` mode); the source follows the
    /// switch's [`crate::compression::LinkBound`] signal.
    pub fn start_compressing(
        mut source: Box<dyn ExtentSource>,
        plan: CyclePlan,
        config: PipelineConfig,
        compression: CompressionSwitch,
    ) -> Result<Pipeline, SourceError> {
        config.check()?;
        source.follow_link(compression.link_bound());
        let info = source.begin_cycle(&plan, config.chunk_size)?;
        let analyzer = source.analyzer();
        let n = config.max_chunks_in_flight;
        let chunk = config.chunk_size as usize;
        let read_pool = BufferPool::bounded(chunk, n);
        let payload_pool = BufferPool::recycling(chunk, n);
        let source: SharedSource = Arc::new(Mutex::new(source));
        let shared = Arc::new(Shared::default());

        let (ticket_tx, ticket_rx) = bounded::<()>(n);
        for _ in 0..n {
            // The channel has room for exactly n tickets.
            let _ = ticket_tx.try_send(());
        }
        let (work_tx, work_rx) = bounded::<WorkItem>(n);
        let (result_tx, result_rx) = bounded::<ResultItem>(n);
        let (output_tx, output_rx) = bounded::<Result<EncodedChunk, PipelineError>>(n);

        let mut threads = Vec::with_capacity(config.workers + 2);
        {
            let source = Arc::clone(&source);
            let pool = read_pool.clone();
            let shared = Arc::clone(&shared);
            threads.push(spawn("reader", move || {
                reader_loop(source, pool, ticket_rx, work_tx, shared)
            })?);
        }
        for _ in 0..config.workers {
            let analyzer = Arc::clone(&analyzer);
            let work_rx = work_rx.clone();
            let result_tx = result_tx.clone();
            let encoder = Encoder::with_payload_pool(config.zstd_level, payload_pool.clone())
                .with_compression(compression.clone());
            let shared = Arc::clone(&shared);
            threads.push(spawn("worker", move || {
                worker_loop(analyzer, encoder, work_rx, result_tx, shared)
            })?);
        }
        drop(work_rx);
        drop(result_tx);
        {
            let source = Arc::clone(&source);
            let shared = Arc::clone(&shared);
            let pool = read_pool.clone();
            threads.push(spawn("sequencer", move || {
                sequencer_loop(source, result_rx, output_tx, shared, pool, n, info.size)
            })?);
        }
        tracing::debug!(
            size = info.size,
            epoch = plan.epoch.get(),
            base = plan.base_epoch.get(),
            resume = plan.resume_offset,
            workers = config.workers,
            in_flight = n,
            "pipeline started"
        );
        Ok(Pipeline {
            source,
            info,
            output: output_rx,
            tickets: ticket_tx,
            read_pool,
            payload_pool,
            shared,
            threads,
            ended: AtomicBool::new(false),
            delivered: AtomicU64::new(0),
        })
    }

    /// Geometry of the cycle (use this size in `OpenImage` and `CommitImage`).
    pub fn image_info(&self) -> ImageInfo {
        self.info
    }

    /// Next encoded chunk in scan order (blocking). None when the scan is
    /// complete (or after an error was delivered). Chunks with no extents
    /// are also returned (for progress/resume accounting). If the caller
    /// stops calling recv, everything stalls within the memory cap.
    pub fn recv(&self) -> Option<Result<EncodedChunk, PipelineError>> {
        if self.ended.load(Ordering::Acquire) {
            return None;
        }
        match self.output.recv() {
            Ok(item) => {
                // One ticket per delivered chunk; the channel has room because
                // every outstanding chunk holds one.
                let _ = self.tickets.try_send(());
                self.delivered.fetch_add(1, Ordering::Relaxed);
                Some(item)
            }
            Err(_) => {
                self.ended.store(true, Ordering::Release);
                None
            }
        }
    }

    /// Counters (buffer pools, chunks).
    pub fn stats(&self) -> PipelineStats {
        PipelineStats {
            read_buffers: self.read_pool.stats(),
            payload_buffers: self.payload_pool.stats(),
            chunks_read: self.shared.chunks_read.load(Ordering::Relaxed),
            chunks_delivered: self.delivered.load(Ordering::Relaxed),
        }
    }

    /// After recv returned None: joins threads, calls source.end_scan(),
    /// returns the source back. Called earlier or after an error, it aborts
    /// the scan and returns [`PipelineError::Incomplete`] (the source is then
    /// dropped; reopen it — use [`Pipeline::abort`] to keep it).
    pub fn finish(self) -> Result<(Box<dyn ExtentSource>, ScanOutcome), PipelineError> {
        let complete =
            self.ended.load(Ordering::Acquire) && !self.shared.failed.load(Ordering::Acquire);
        if !complete {
            drop(self.abort());
            return Err(PipelineError::Incomplete);
        }
        let (source, panicked) = self.stop_and_join();
        if let Some(stage) = panicked {
            return Err(PipelineError::Panicked { stage });
        }
        let mut source = source;
        let outcome = source.end_scan().map_err(PipelineError::Source)?;
        Ok((source, outcome))
    }

    /// Stops early (connection lost etc.): threads exit promptly, source
    /// returned for a later resume (`abort_scan` was called on it).
    pub fn abort(self) -> Box<dyn ExtentSource> {
        let (mut source, _) = self.stop_and_join();
        source.abort_scan();
        source
    }

    fn stop_and_join(self) -> (Box<dyn ExtentSource>, Option<&'static str>) {
        let Pipeline {
            source,
            output,
            tickets,
            read_pool,
            shared,
            threads,
            ..
        } = self;
        shared.stop.store(true, Ordering::Release);
        read_pool.close();
        drop(tickets);
        drop(output);
        let mut panicked = None;
        for (stage, handle) in threads {
            if handle.join().is_err() {
                tracing::error!(stage, "pipeline thread panicked");
                panicked.get_or_insert(stage);
            }
        }
        // Every thread holding a clone has been joined (a panicking thread
        // drops its clone while unwinding), so this is the last reference.
        let source = match Arc::try_unwrap(source) {
            Ok(mutex) => mutex
                .into_inner()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
            Err(_) => unreachable!("all pipeline threads were joined"),
        };
        (source, panicked)
    }
}

fn reader_loop(
    source: SharedSource,
    pool: BufferPool,
    tickets: Receiver<()>,
    work: Sender<WorkItem>,
    shared: Arc<Shared>,
) {
    let _span = tracing::debug_span!("pipeline.read").entered();
    let mut seq = 0u64;
    loop {
        if tickets.recv().is_err() || shared.stop.load(Ordering::Acquire) {
            return;
        }
        let next = lock(&source).read_next(&pool);
        seq += 1;
        let item = match next {
            Ok(Some(chunk)) => {
                shared.chunks_read.fetch_add(1, Ordering::Relaxed);
                tracing::trace!(start = chunk.scan_start, end = chunk.scan_end, "read");
                Ok(chunk)
            }
            Ok(None) => return,
            Err(error) => {
                if shared.stop.load(Ordering::Acquire) {
                    return;
                }
                Err(error)
            }
        };
        let failed = item.is_err();
        if work.send((seq, item)).is_err() || failed {
            return;
        }
    }
}

fn worker_loop(
    analyzer: Arc<dyn ChunkAnalyzer>,
    mut encoder: Encoder,
    work: Receiver<WorkItem>,
    results: Sender<ResultItem>,
    shared: Arc<Shared>,
) {
    let _span = tracing::debug_span!("pipeline.worker").entered();
    for (seq, item) in work.iter() {
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        let result = match item {
            Err(error) => Err(PipelineError::Source(error)),
            Ok(raw) => process(&*analyzer, &mut encoder, raw),
        };
        if results.send((seq, result)).is_err() {
            return;
        }
    }
}

/// Analyse and encode one chunk; the chunk's read buffer is released before
/// this returns (the extents referencing it are dropped here).
fn process(
    analyzer: &dyn ChunkAnalyzer,
    encoder: &mut Encoder,
    raw: RawChunk,
) -> Result<(EncodedChunk, ChunkRecord), PipelineError> {
    let (scan_start, scan_end) = (raw.scan_start, raw.scan_end);
    let analyzed = analyzer.analyze(raw).map_err(PipelineError::Source)?;
    let mut encoded = encoder
        .encode(scan_start, scan_end, &analyzed.extents)
        .map_err(|source| PipelineError::Codec {
            scan_start,
            scan_end,
            source,
        })?;
    encoded.stats.bytes_zero = analyzed.bytes_zero;
    tracing::trace!(
        scan_start,
        scan_end,
        extents = encoded.extents.len(),
        plain = encoded.stats.plain_data_bytes,
        payload = encoded.stats.payload_bytes,
        "encoded"
    );
    Ok((encoded, analyzed.record))
}

/// A chunk without extents is made durable (and may then be reported to the
/// standby as an empty batch) once this many scan bytes passed since the last
/// durable chunk.
pub const EMPTY_DURABLE_EVERY: u64 = 256 << 20;

/// The sequencer's side of the pipeline: restores scan order, records each
/// chunk, and makes recorded chunks durable in batches before delivering
/// them (see the module docs).
struct Sequencer {
    source: SharedSource,
    output: Sender<Result<EncodedChunk, PipelineError>>,
    /// Chunks that may exist between the reader and the caller.
    in_flight: usize,
    image_size: u64,
    /// Recorded chunks not delivered yet, in scan order; the first one
    /// needs to be made durable before delivery.
    held: Vec<EncodedChunk>,
    /// End of the last chunk made durable (start of the scan at first).
    durable_end: Option<u64>,
}

impl Sequencer {
    /// The sender may report `chunk` to the standby: it must be durable first.
    fn needs_durable(&self, chunk: &EncodedChunk) -> bool {
        !chunk.extents.is_empty()
            || chunk.scan_end >= self.image_size
            || chunk
                .scan_end
                .saturating_sub(self.durable_end.unwrap_or(chunk.scan_start))
                >= EMPTY_DURABLE_EVERY
    }

    /// Takes a recorded chunk: delivered at once when nothing waits for
    /// durability, else held. Returns false when the caller is gone.
    fn push(&mut self, chunk: EncodedChunk) -> bool {
        if self.durable_end.is_none() {
            self.durable_end = Some(chunk.scan_start);
        }
        if self.held.is_empty() && !self.needs_durable(&chunk) {
            return self.output.send(Ok(chunk)).is_ok();
        }
        self.held.push(chunk);
        true
    }

    /// Whether to go on collecting chunks before making them durable: the
    /// caller still has a delivered chunk to work on, and another result is
    /// sure to come (some chunk is neither held, nor delivered, nor parked
    /// out of order: it is being read or analysed, or its ticket is free).
    fn keep_collecting(&self, out_of_order: usize) -> bool {
        let queued = self.output.len();
        queued > 0 && self.held.len() + queued + out_of_order < self.in_flight
    }

    /// Makes every held chunk durable (one `make_durable` for all) and
    /// delivers them. Returns false when the caller is gone or it failed
    /// (the failure was delivered).
    fn flush(&mut self) -> Result<bool, PipelineError> {
        if self.held.is_empty() {
            return Ok(true);
        }
        lock(&self.source)
            .make_durable()
            .map_err(PipelineError::Source)?;
        if let Some(last) = self.held.last() {
            self.durable_end = Some(last.scan_end);
        }
        for mut chunk in self.held.drain(..) {
            chunk.durable = true;
            if self.output.send(Ok(chunk)).is_err() {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

fn sequencer_loop(
    source: SharedSource,
    results: Receiver<ResultItem>,
    output: Sender<Result<EncodedChunk, PipelineError>>,
    shared: Arc<Shared>,
    read_pool: BufferPool,
    in_flight: usize,
    image_size: u64,
) {
    let _span = tracing::debug_span!("pipeline.sequence").entered();
    let mut seq = Sequencer {
        source,
        output,
        in_flight,
        image_size,
        held: Vec::new(),
        durable_end: None,
    };
    let mut pending = BTreeMap::new();
    let mut next = 1u64;
    let fail = |shared: &Shared, seq: &Sequencer, error: PipelineError| {
        shared.failed.store(true, Ordering::Release);
        shared.stop.store(true, Ordering::Release);
        read_pool.close();
        // Held chunks are not durable: they are dropped, never delivered.
        let _ = seq.output.send(Err(error));
    };
    loop {
        let received = if seq.held.is_empty() || seq.keep_collecting(pending.len()) {
            results.recv().ok()
        } else {
            match results.try_recv() {
                Ok(item) => Some(item),
                Err(crossbeam_channel::TryRecvError::Empty) => {
                    // The caller would wait, or nothing more can arrive
                    // before it takes a chunk: deliver what is held.
                    match seq.flush() {
                        Ok(true) => continue,
                        Ok(false) => return,
                        Err(error) => return fail(&shared, &seq, error),
                    }
                }
                Err(crossbeam_channel::TryRecvError::Disconnected) => None,
            }
        };
        let Some((n, result)) = received else {
            // The scan ended (or stopped): deliver the rest.
            if shared.stop.load(Ordering::Acquire) {
                return;
            }
            if let Err(error) = seq.flush() {
                fail(&shared, &seq, error);
            }
            return;
        };
        pending.insert(n, result);
        while let Some(item) = pending.remove(&next) {
            next += 1;
            let recorded = match item {
                Ok((chunk, record)) => match lock(&seq.source).record(&record) {
                    Ok(()) => Ok(chunk),
                    Err(error) => Err(PipelineError::Source(error)),
                },
                Err(error) => Err(error),
            };
            match recorded {
                Ok(chunk) => {
                    if !seq.push(chunk) {
                        return;
                    }
                }
                Err(error) => return fail(&shared, &seq, error),
            }
        }
    }
}

#[cfg(test)]
mod tests;
