//! [`EpochWriter`]: stages the batches of one pending epoch of one image and
//! makes them durable.
//!
//! Incremental epochs append each batch (extent table + data) to the journal
//! as soon as it is staged; `sync` fdatasyncs the journal. Full copies write
//! data straight into the sparse staging file and keep the small journal
//! records in memory until `sync`, which fdatasyncs the staging file *before*
//! writing and fdatasyncing those records — so a durable record always
//! describes durable data.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use ferry_protocol::message::OpenImage;
use ferry_protocol::types::{Epoch, ExtentKind, ImageName, SeqNo};

use super::failpoint;
use super::io as store_io;
use super::journal::{self, encode_table, ExtentEntry, JournalIndex, EXTENT_ENTRY_LEN};
use super::record::{RecordHeader, HEADER_LEN, MAX_BODY_LEN};
use super::slot::Slot;
use super::{BatchRejection, DecodedExtent, PendingEpoch, SealedEpoch, StagedBatch, StoreError};
use crate::sync_util::lock;

/// Writes the batches of one pending epoch. At most one exists per image;
/// dropping it releases the image (and forgets batches staged but not synced).
#[derive(Debug)]
pub struct EpochWriter {
    slot: Arc<Slot>,
    image: ImageName,
    epoch: Epoch,
    base: Epoch,
    size: u64,
    journal: File,
    journal_path: PathBuf,
    staging: Option<(File, PathBuf)>,
    nonce: u64,
    /// Journal bytes written (incremental: including unsynced records).
    written_len: u64,
    /// Journal bytes known durable.
    synced_len: u64,
    staged_seq: SeqNo,
    staged_scan_end: u64,
    durable_seq: SeqNo,
    durable_scan_end: u64,
    /// Full copy: end of the highest extent staged; everything above is a hole.
    high_water: u64,
    /// Full copy: encoded journal records staged but not yet written.
    unsynced_records: Vec<u8>,
    poisoned: bool,
}

/// Files and scan result a writer starts from.
pub(crate) struct WriterFiles {
    pub journal: File,
    pub journal_path: PathBuf,
    pub staging: Option<(File, PathBuf)>,
    pub nonce: u64,
    /// Length of the valid journal.
    pub journal_len: u64,
}

impl EpochWriter {
    /// A writer for `open`, continuing after the durable batches of `index`
    /// (`None` for a fresh journal). The caller has claimed the slot.
    pub(crate) fn new(
        slot: Arc<Slot>,
        open: &OpenImage,
        files: WriterFiles,
        index: Option<&JournalIndex>,
    ) -> Self {
        let durable_seq = index.map_or(SeqNo(0), JournalIndex::durable_seq);
        let durable_scan_end = index.map_or(0, JournalIndex::resume_offset);
        Self {
            slot,
            image: open.image.clone(),
            epoch: open.epoch,
            base: open.base_epoch,
            size: open.size,
            journal: files.journal,
            journal_path: files.journal_path,
            staging: files.staging,
            nonce: files.nonce,
            written_len: files.journal_len,
            synced_len: files.journal_len,
            staged_seq: durable_seq,
            staged_scan_end: durable_scan_end,
            durable_seq,
            durable_scan_end,
            high_water: index.map_or(0, JournalIndex::high_water),
            unsynced_records: Vec::new(),
            poisoned: false,
        }
    }

    /// The epoch being written.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The epoch's base (0 = full copy).
    pub fn base_epoch(&self) -> Epoch {
        self.base
    }

    /// The image being written.
    pub fn image(&self) -> &ImageName {
        &self.image
    }

    /// Highest batch made durable by [`sync`](Self::sync) (or found durable on open).
    pub fn durable_seq(&self) -> SeqNo {
        self.durable_seq
    }

    /// Scan end of the durable batch: the primary resumes its scan here.
    pub fn resume_offset(&self) -> u64 {
        self.durable_scan_end
    }

    /// Highest batch staged (durable or not).
    pub fn staged_seq(&self) -> SeqNo {
        self.staged_seq
    }

    /// The pending-epoch summary of what is durable.
    pub(crate) fn pending(&self) -> PendingEpoch {
        PendingEpoch {
            epoch: self.epoch,
            base_epoch: self.base,
            durable_seq: self.durable_seq,
            resume_offset: self.durable_scan_end,
        }
    }

    fn poisoned_error(&self) -> StoreError {
        StoreError::Poisoned {
            image: self.image.clone(),
            epoch: self.epoch,
        }
    }

    fn check_batch(&self, batch: &StagedBatch) -> Result<(), BatchRejection> {
        let full = self.staging.is_some();
        let high_water = full.then_some(self.high_water);
        let data_bytes = check_extents(&batch.extents, self.size, high_water)?;
        if batch.scan_end < self.staged_scan_end {
            return Err(BatchRejection::ScanEndBackwards {
                scan_end: batch.scan_end,
                previous: self.staged_scan_end,
            });
        }
        let table = 4 + (batch.extents.len() as u64) * EXTENT_ENTRY_LEN as u64;
        let body = table + if full { 0 } else { data_bytes };
        if body > MAX_BODY_LEN {
            return Err(BatchRejection::TooLarge {
                bytes: body,
                limit: MAX_BODY_LEN,
            });
        }
        Ok(())
    }

    /// Stages a batch. `Ok(true)`: staged; `Ok(false)`: a duplicate (seq not
    /// above the last staged), ignored. Errors: `OutOfOrder` on a gap,
    /// `InvalidBatch` for extents past the image size, unsorted or
    /// overlapping extents, wrong data lengths; I/O errors. A failed call
    /// stages nothing.
    pub fn stage(&mut self, batch: StagedBatch) -> Result<bool, StoreError> {
        if self.poisoned {
            return Err(self.poisoned_error());
        }
        if lock(&self.slot.meta).fenced {
            return Err(StoreError::Fenced {
                image: self.image.clone(),
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
        self.check_batch(&batch)
            .map_err(|reason| StoreError::InvalidBatch {
                image: self.image.clone(),
                seq: batch.seq,
                reason,
            })?;
        let entries: Vec<ExtentEntry> = batch
            .extents
            .iter()
            .map(|e| ExtentEntry {
                offset: e.offset,
                length: e.length,
                kind: e.kind,
            })
            .collect();
        let table = encode_table(entries.iter().copied());
        let data: Vec<&[u8]> = batch
            .extents
            .iter()
            .filter_map(|e| e.data.as_deref())
            .collect();
        let seq = batch.seq.get();
        if let Some((staging, staging_path)) = &self.staging {
            // Full copy: data goes to its place in the staging file (above the
            // high-water mark, so a failure here leaves nothing visible).
            let data_entries: Vec<ExtentEntry> = entries
                .iter()
                .copied()
                .filter(|e| e.kind == ExtentKind::Data)
                .collect();
            journal::write_extents(staging, staging_path, &data_entries, &data)?;
            let header = RecordHeader::for_body(
                journal::KIND_BATCH,
                seq,
                batch.scan_end,
                self.nonce,
                &[&table],
            );
            self.unsynced_records
                .extend_from_slice(&header.encode(journal::MAGIC, self.nonce));
            self.unsynced_records.extend_from_slice(&table);
        } else {
            let mut parts: Vec<&[u8]> = Vec::with_capacity(data.len() + 1);
            parts.push(&table);
            parts.extend_from_slice(&data);
            let header = RecordHeader::for_body(
                journal::KIND_BATCH,
                seq,
                batch.scan_end,
                self.nonce,
                &parts,
            );
            let encoded = header.encode(journal::MAGIC, self.nonce);
            let mut iov: Vec<&[u8]> = Vec::with_capacity(parts.len() + 1);
            iov.push(&encoded);
            iov.extend_from_slice(&parts);
            // io_uring (sys::uring) could replace this pwritev.
            let written = failpoint::disk_full().and_then(|()| {
                store_io::write_all_vectored_at(
                    &self.journal,
                    &self.journal_path,
                    &iov,
                    self.written_len,
                )
            });
            if let Err(e) = written {
                self.cut_journal_back();
                return Err(StoreError::io("write journal", &self.journal_path, e));
            }
            self.written_len += HEADER_LEN as u64 + header.body_len;
        }
        self.staged_seq = batch.seq;
        self.staged_scan_end = batch.scan_end;
        if let Some(end) = entries.iter().map(ExtentEntry::end).max() {
            self.high_water = self.high_water.max(end);
        }
        // Lets a fault test hold the receiver with a batch written but not
        // yet synced (e.g. to cut the power mid-journal).
        crate::testpoint::reach("standby::batch-staged");
        Ok(true)
    }

    /// Removes a partly written record from the journal end; poisons the
    /// writer if that is not possible (a later record could otherwise follow
    /// garbage that a crash might leave looking valid).
    fn cut_journal_back(&mut self) {
        let cut = store_io::set_len(&self.journal, &self.journal_path, self.written_len)
            .and_then(|()| store_io::sync_all(&self.journal, &self.journal_path));
        if let Err(e) = cut {
            tracing::warn!(image = %self.image, epoch = %self.epoch, error = %e, "cannot cut journal back after a failed write");
            self.poisoned = true;
        }
    }

    /// Makes every staged batch durable and returns the highest durable seq.
    /// Only what this returns may be acknowledged. After an error the writer
    /// is poisoned (the state of unsynced data is unknown): drop it and call
    /// `open_epoch` again.
    pub fn sync(&mut self) -> Result<SeqNo, StoreError> {
        if self.poisoned {
            return Err(self.poisoned_error());
        }
        if lock(&self.slot.meta).fenced {
            return Err(StoreError::Fenced {
                image: self.image.clone(),
            });
        }
        if self.staged_seq == self.durable_seq {
            return Ok(self.durable_seq);
        }
        let _span = tracing::debug_span!("standby_sync", image = %self.image, epoch = %self.epoch, seq = %self.staged_seq).entered();
        if let Some((staging, staging_path)) = &self.staging {
            if let Err(e) = store_io::sync_data(staging, staging_path) {
                self.poisoned = true;
                return Err(StoreError::io("fdatasync staging", staging_path, e));
            }
            let written = failpoint::disk_full().and_then(|()| {
                store_io::write_all_vectored_at(
                    &self.journal,
                    &self.journal_path,
                    &[&self.unsynced_records],
                    self.written_len,
                )
            });
            if let Err(e) = written {
                self.poisoned = true;
                return Err(StoreError::io("write journal", &self.journal_path, e));
            }
            self.written_len += self.unsynced_records.len() as u64;
            self.unsynced_records.clear();
        }
        if let Err(e) = store_io::sync_data(&self.journal, &self.journal_path) {
            self.poisoned = true;
            return Err(StoreError::io("fdatasync journal", &self.journal_path, e));
        }
        self.synced_len = self.written_len;
        self.durable_seq = self.staged_seq;
        self.durable_scan_end = self.staged_scan_end;
        lock(&self.slot.meta).pending = Some(self.pending());
        Ok(self.durable_seq)
    }

    /// Ends the epoch: `last_seq` must be the durable (and last staged) batch.
    /// The result goes to [`StandbyStore::commit`](super::StandbyStore::commit).
    pub fn seal(self, last_seq: SeqNo, size: u64) -> Result<SealedEpoch, StoreError> {
        if self.poisoned {
            return Err(self.poisoned_error());
        }
        super::check_size(&format!("seal {} epoch {}", self.image, self.epoch), size)?;
        if last_seq != self.durable_seq || self.staged_seq != self.durable_seq {
            return Err(StoreError::SealMismatch {
                image: self.image.clone(),
                epoch: self.epoch,
                last_seq,
                durable: self.durable_seq,
                staged: self.staged_seq,
            });
        }
        Ok(SealedEpoch {
            image: self.image.clone(),
            epoch: self.epoch,
            last_seq,
            size,
        })
    }
}

impl Drop for EpochWriter {
    fn drop(&mut self) {
        // Forget unsynced records so a later writer appends right after the
        // durable prefix (and a resumed epoch reports only what was synced).
        if self.poisoned || self.written_len > self.synced_len {
            let cut = store_io::set_len(&self.journal, &self.journal_path, self.synced_len)
                .and_then(|()| store_io::sync_all(&self.journal, &self.journal_path));
            if let Err(e) = cut {
                tracing::warn!(image = %self.image, epoch = %self.epoch, error = %e,
                    "cannot cut unsynced journal records; the next open rescans the journal");
            }
        }
        lock(&self.slot.meta).writer_active = false;
    }
}

/// Checks a batch's extents against an image of `size` bytes: non-empty,
/// inside the image, ascending without overlap, data lengths that match, and
/// (full copies, `high_water`) nothing below what is already staged. Returns
/// the batch's data bytes.
pub(crate) fn check_extents(
    extents: &[DecodedExtent],
    size: u64,
    high_water: Option<u64>,
) -> Result<u64, BatchRejection> {
    let mut previous_end: Option<u64> = None;
    let mut data_bytes = 0u64;
    for extent in extents {
        let offset = extent.offset;
        if extent.length == 0 {
            return Err(BatchRejection::EmptyExtent { offset });
        }
        let end = offset
            .checked_add(u64::from(extent.length))
            .filter(|end| *end <= size)
            .ok_or(BatchRejection::PastEnd {
                offset,
                length: extent.length,
                size,
            })?;
        if let Some(previous_end) = previous_end.filter(|p| offset < *p) {
            return Err(BatchRejection::Unsorted {
                offset,
                previous_end,
            });
        }
        if let Some(high_water) = high_water.filter(|h| offset < *h) {
            return Err(BatchRejection::BelowHighWater { offset, high_water });
        }
        match (extent.kind, &extent.data) {
            (ExtentKind::Data, Some(data)) if data.len() == extent.length as usize => {
                data_bytes += u64::from(extent.length);
            }
            (ExtentKind::Data, data) => {
                return Err(BatchRejection::DataLength {
                    offset,
                    expected: extent.length,
                    got: data.as_ref().map_or(0, |d| d.len()),
                })
            }
            (_, Some(_)) => return Err(BatchRejection::UnexpectedData { offset }),
            (_, None) => {}
        }
        previous_end = Some(end);
    }
    Ok(data_bytes)
}
