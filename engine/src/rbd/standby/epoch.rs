//! Receiving an epoch into an RBD standby image: opening (or resuming) it,
//! the [`RbdEpochWriter`] that applies batches in place and flushes them
//! before they are acknowledged, and rolling a torn head back to the last
//! recovery point's snapshot.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use ferry_protocol::message::OpenImage;
use ferry_protocol::types::{Epoch, ExtentKind, ImageName, SeqNo};
use tracing::info;

use super::handle::{
    ceph, snap_name, zero_all, ImageRecord, PendingRecord, RbdStandby, Slot, MAX_IN_FLIGHT_BYTES,
    MAX_IN_FLIGHT_OPS,
};
use crate::standby::{check_extents, check_open, SealedEpoch, StagedBatch, StoreError};
use crate::sync_util::lock;
use crate::sys::librbd::{Aio, CephError, Image};

impl RbdStandby {
    /// Starts or resumes receiving `open.epoch` of an image.
    pub fn open_epoch(&self, open: &OpenImage) -> Result<RbdEpochWriter, StoreError> {
        let image = &open.image;
        self.finish_intents(Some(image))?;
        let slot = self.slot(image);
        let _op = lock(&slot.op);
        slot.check_no_writer(image)?;
        let known = self.load(image)?;
        if known.is_none() {
            // Never take over (lock, zero) an image ferry left to the
            // operator: a failover's volume or a clone parent it released.
            self.check_not_released(image)?;
        }
        let mut record = known.unwrap_or_else(|| ImageRecord::empty(image));
        if record.fenced || slot.fenced.load(Ordering::Acquire) {
            return Err(StoreError::Fenced {
                image: image.clone(),
            });
        }
        let committed = record.committed();
        check_open(open, committed)?;
        let ctx = format!("{}/{image}", self.pool_name());
        // One open (with the lock) when the image exists; create it first if not.
        let (handle, exists) = match self.open_image(image) {
            Ok(handle) => (handle, true),
            Err(StoreError::Ceph { source, .. }) if source.is_not_found() => {
                if committed != Epoch(0) {
                    return Err(StoreError::Corrupt {
                        path: self.inner.state.describe().into(),
                        reason: format!(
                            "the record of {image} names recovery points but RBD image {ctx} is gone"
                        ),
                    });
                }
                let existed = self.create_pool_image(image.as_str(), open.size)?;
                info!(image = %ctx, size = open.size, "created standby RBD image");
                (self.open_image(image)?, existed)
            }
            Err(e) => return Err(e),
        };
        let resumed = match record.pending {
            Some(p)
                if p.epoch == open.epoch.get()
                    && p.base_epoch == open.base_epoch.get()
                    && p.size == open.size =>
            {
                Some(p)
            }
            Some(p) => {
                info!(image = %ctx, old_epoch = p.epoch, epoch = %open.epoch, "abandoning a pending epoch: rolling the image back");
                self.rollback_head(&handle, &record)?;
                record.pending = None;
                self.save(&mut record)?;
                None
            }
            None => None,
        };
        let pending = match resumed {
            Some(p) => p,
            None => {
                if open.base_epoch == Epoch(0) {
                    // A full copy sends only allocated data: start from zeroes.
                    let size = handle.size().map_err(ceph(format!("size of {ctx}")))?;
                    if size > 0 && exists {
                        zero_all(&handle, size).map_err(ceph(format!("zeroing {ctx}")))?;
                    }
                }
                let p = PendingRecord {
                    epoch: open.epoch.get(),
                    base_epoch: open.base_epoch.get(),
                    durable_seq: 0,
                    resume_offset: 0,
                    size: open.size,
                };
                record.pending = Some(p);
                self.save(&mut record)?;
                p
            }
        };
        let current = handle.size().map_err(ceph(format!("size of {ctx}")))?;
        if open.size > current {
            handle
                .resize(open.size)
                .map_err(ceph(format!("growing {ctx}")))?;
        }
        *lock(&slot.writer_active) = true;
        drop(_op);
        Ok(RbdEpochWriter {
            store: self.clone(),
            slot,
            image: image.clone(),
            handle,
            pending,
            staged_seq: SeqNo(pending.durable_seq),
            staged_scan_end: pending.resume_offset,
            in_flight: VecDeque::new(),
            in_flight_bytes: 0,
            poisoned: false,
        })
    }

    /// Returns the head of `handle` to the image's last recovery point (all
    /// zeroes when there is none).
    pub(super) fn rollback_head(
        &self,
        handle: &Arc<Image>,
        record: &ImageRecord,
    ) -> Result<(), StoreError> {
        let ctx = format!("{}/{}", self.pool_name(), record.image);
        match record.history.last() {
            Some(point) => {
                let snap = snap_name(point.rp);
                handle
                    .snap_rollback(&snap)
                    .map_err(ceph(format!("rolling {ctx} back to {snap}")))?;
            }
            None => {
                let size = handle.size().map_err(ceph(format!("size of {ctx}")))?;
                zero_all(handle, size).map_err(ceph(format!("zeroing {ctx}")))?;
            }
        }
        handle.flush().map_err(ceph(format!("flushing {ctx}")))
    }

    /// Rolls a torn image (an epoch pending) back to its last recovery
    /// point and forgets the pending epoch. Returns whether it was torn.
    pub fn rollback(&self, image: &ImageName) -> Result<bool, StoreError> {
        let slot = self.slot(image);
        let _op = lock(&slot.op);
        slot.check_no_writer(image)?;
        let mut record = self.load(image)?.ok_or_else(|| StoreError::UnknownImage {
            image: image.clone(),
        })?;
        if record.pending.is_none() {
            return Ok(false);
        }
        if record.volume_at.is_some() {
            return Err(StoreError::InvalidRequest {
                reason: format!("{image} is a failover's volume: ferry does not roll it back"),
            });
        }
        let handle = self.open_image(image)?;
        self.rollback_head(&handle, &record)?;
        record.pending = None;
        self.save(&mut record)?;
        info!(image = %image, "rolled back to the last recovery point");
        Ok(true)
    }
}

/// Receives one epoch of one image into an [`RbdStandby`].
pub struct RbdEpochWriter {
    store: RbdStandby,
    slot: Arc<Slot>,
    image: ImageName,
    handle: Arc<Image>,
    pending: PendingRecord,
    staged_seq: SeqNo,
    staged_scan_end: u64,
    in_flight: VecDeque<(Aio, u64)>,
    in_flight_bytes: u64,
    poisoned: bool,
}

impl RbdEpochWriter {
    /// The epoch.
    pub fn epoch(&self) -> Epoch {
        Epoch(self.pending.epoch)
    }

    /// Highest durable batch.
    pub fn durable_seq(&self) -> SeqNo {
        SeqNo(self.pending.durable_seq)
    }

    /// Scan offset the primary resumes at.
    pub fn resume_offset(&self) -> u64 {
        self.pending.resume_offset
    }

    /// The image.
    pub fn image(&self) -> &ImageName {
        &self.image
    }

    fn ctx(&self) -> String {
        format!("{}/{}", self.store.pool_name(), self.image)
    }

    /// `Fenced` once a failover fenced the image: nothing more is written
    /// or flushed, and the session drops the writer.
    fn check_fence(&self) -> Result<(), StoreError> {
        if self.slot.fenced.load(Ordering::Acquire) {
            return Err(StoreError::Fenced {
                image: self.image.clone(),
            });
        }
        Ok(())
    }

    fn poison(&mut self, context: &str) -> impl FnOnce(CephError) -> StoreError {
        self.poisoned = true;
        let context = format!("{context} {}", self.ctx());
        move |source| StoreError::Ceph { context, source }
    }

    fn wait_oldest(&mut self) -> Result<(), StoreError> {
        if let Some((op, bytes)) = self.in_flight.pop_front() {
            self.in_flight_bytes -= bytes;
            if let Err(e) = op.wait() {
                return Err(self.poison("writing")(e));
            }
        }
        Ok(())
    }

    /// Starts one write of a run of contiguous data pieces (none if empty).
    fn start_run(&mut self, run: WriteRun) -> Result<(), StoreError> {
        if run.pieces.is_empty() {
            return Ok(());
        }
        let started = self.handle.aio_writev(run.offset, run.pieces);
        self.track(started, run.len)
    }

    /// Adds a started request to those in flight (`weight`: its data
    /// bytes) and waits for the oldest while too much is.
    fn track(&mut self, started: Result<Aio, CephError>, weight: u64) -> Result<(), StoreError> {
        let op = match started {
            Ok(op) => op,
            Err(e) => return Err(self.poison("starting a write to")(e)),
        };
        self.in_flight.push_back((op, weight));
        self.in_flight_bytes += weight;
        while self.in_flight_bytes > MAX_IN_FLIGHT_BYTES || self.in_flight.len() > MAX_IN_FLIGHT_OPS
        {
            self.wait_oldest()?;
        }
        Ok(())
    }

    /// Writes a batch (asynchronously). `Ok(false)`: a duplicate, ignored.
    /// Nothing is durable until [`RbdEpochWriter::sync`].
    pub fn stage(&mut self, batch: StagedBatch) -> Result<bool, StoreError> {
        self.check_fence()?;
        if self.poisoned {
            return Err(StoreError::Poisoned {
                image: self.image.clone(),
                epoch: self.epoch(),
            });
        }
        if batch.seq <= self.staged_seq {
            return Ok(false);
        }
        if batch.seq != self.staged_seq.next() {
            return Err(StoreError::OutOfOrder {
                image: self.image.clone(),
                expected: self.staged_seq.next(),
                got: batch.seq,
            });
        }
        check_extents(&batch.extents, self.pending.size, None).map_err(|reason| {
            StoreError::InvalidBatch {
                image: self.image.clone(),
                seq: batch.seq,
                reason,
            }
        })?;
        if batch.scan_end < self.staged_scan_end {
            return Err(StoreError::InvalidBatch {
                image: self.image.clone(),
                seq: batch.seq,
                reason: crate::standby::BatchRejection::ScanEndBackwards {
                    scan_end: batch.scan_end,
                    previous: self.staged_scan_end,
                },
            });
        }
        let mut run = WriteRun::default();
        for extent in batch.extents {
            let started = match (extent.kind, extent.data) {
                (ExtentKind::Data, Some(data)) => {
                    if run.extends_to(extent.offset, data.len() as u64) {
                        run.push(extent.offset, data);
                        continue;
                    }
                    let flushed = self.start_run(std::mem::take(&mut run));
                    run.push(extent.offset, data);
                    flushed?;
                    continue;
                }
                (ExtentKind::Zero, _) => self
                    .handle
                    .aio_write_zeroes(extent.offset, extent.length as usize),
                // librbd may skip parts of a discard (rbd_skip_partial_discard);
                // write_zeroes guarantees the range reads as zeroes.
                (ExtentKind::Discard, _) => self
                    .handle
                    .aio_write_zeroes(extent.offset, extent.length as usize),
                (ExtentKind::Data, None) => continue, // rejected by check_extents
            };
            self.start_run(std::mem::take(&mut run))?;
            self.track(started, 0)?;
        }
        self.start_run(run)?;
        self.staged_seq = batch.seq;
        self.staged_scan_end = batch.scan_end;
        Ok(true)
    }

    /// Waits for every staged write, flushes the image, records the durable
    /// batch; returns it. Only what this returns may be acknowledged.
    pub fn sync(&mut self) -> Result<SeqNo, StoreError> {
        self.check_fence()?;
        if self.poisoned {
            return Err(StoreError::Poisoned {
                image: self.image.clone(),
                epoch: self.epoch(),
            });
        }
        if self.staged_seq.get() == self.pending.durable_seq {
            return Ok(self.durable_seq());
        }
        while !self.in_flight.is_empty() {
            self.wait_oldest()?;
        }
        if let Err(e) = self.handle.flush() {
            return Err(self.poison("flushing")(e));
        }
        let mut record = match self.store.load(&self.image) {
            Ok(Some(r)) => r,
            Ok(None) => {
                return Err(StoreError::UnknownImage {
                    image: self.image.clone(),
                })
            }
            Err(e) => {
                self.poisoned = true;
                return Err(e);
            }
        };
        let mut pending = self.pending;
        pending.durable_seq = self.staged_seq.get();
        pending.resume_offset = self.staged_scan_end;
        record.pending = Some(pending);
        if let Err(e) = self.store.save(&mut record) {
            self.poisoned = true;
            return Err(e);
        }
        self.pending = pending;
        Ok(self.durable_seq())
    }

    /// Ends the epoch: `last_seq` must be the durable (and last staged) batch.
    pub fn seal(self, last_seq: SeqNo, size: u64) -> Result<SealedEpoch, StoreError> {
        if self.poisoned {
            return Err(StoreError::Poisoned {
                image: self.image.clone(),
                epoch: self.epoch(),
            });
        }
        crate::standby::check_size(&format!("seal {} epoch {}", self.image, self.epoch()), size)?;
        if last_seq != self.durable_seq() || self.staged_seq != self.durable_seq() {
            return Err(StoreError::SealMismatch {
                image: self.image.clone(),
                epoch: self.epoch(),
                last_seq,
                durable: self.durable_seq(),
                staged: self.staged_seq,
            });
        }
        Ok(SealedEpoch {
            image: self.image.clone(),
            epoch: self.epoch(),
            last_seq,
            size,
        })
    }
}

impl Drop for RbdEpochWriter {
    fn drop(&mut self) {
        // In-flight writes complete (dropping an Aio waits); they are simply
        // not acknowledged and will be resent.
        self.in_flight.clear();
        *lock(&self.slot.writer_active) = false;
    }
}

/// The most bytes of contiguous data pieces joined into one write: one RBD
/// object at the default object size. A run never crosses a multiple of
/// it, so at that size each joined write is one OSD write.
const WRITE_RUN_LIMIT: u64 = 4 << 20;

/// Contiguous data pieces of a batch collected for one vectored write: a
/// full sync's 64 KiB pieces of one object become one request instead of
/// 64 (each one an OSD transaction on the standby cluster).
#[derive(Default)]
struct WriteRun {
    offset: u64,
    len: u64,
    pieces: Vec<bytes::Bytes>,
}

impl WriteRun {
    /// Whether a piece of `len` bytes at `offset` continues this run
    /// without leaving its `WRITE_RUN_LIMIT` window.
    fn extends_to(&self, offset: u64, len: u64) -> bool {
        let window_end = (self.offset / WRITE_RUN_LIMIT + 1) * WRITE_RUN_LIMIT;
        !self.pieces.is_empty()
            && self.offset + self.len == offset
            && offset.saturating_add(len) <= window_end
    }

    fn push(&mut self, offset: u64, piece: bytes::Bytes) {
        if self.pieces.is_empty() {
            self.offset = offset;
        }
        self.len += piece.len() as u64;
        self.pieces.push(piece);
    }
}

#[cfg(test)]
mod tests {
    use super::{WriteRun, WRITE_RUN_LIMIT};
    use bytes::Bytes;

    fn piece(len: usize) -> Bytes {
        Bytes::from(vec![7u8; len])
    }

    #[test]
    fn contiguous_pieces_join_until_an_object_boundary() {
        let mut run = WriteRun::default();
        assert!(!run.extends_to(0, 4096), "an empty run extends nothing");
        run.push(WRITE_RUN_LIMIT - 8192, piece(4096));
        assert!(run.extends_to(WRITE_RUN_LIMIT - 4096, 4096));
        assert!(!run.extends_to(WRITE_RUN_LIMIT - 4096 + 1, 4096), "a gap");
        assert!(
            !run.extends_to(WRITE_RUN_LIMIT - 4096, 8192),
            "crosses the boundary"
        );
        run.push(WRITE_RUN_LIMIT - 4096, piece(4096));
        assert_eq!(
            (run.offset, run.len, run.pieces.len()),
            (WRITE_RUN_LIMIT - 8192, 8192, 2)
        );
        assert!(
            !run.extends_to(WRITE_RUN_LIMIT, 4096),
            "the next object starts a new run"
        );
    }
}
