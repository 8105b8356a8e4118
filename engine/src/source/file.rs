//! The file backend of [`ExtentSource`]: a raw image file or a block device,
//! with change detection against a block-hash manifest.
//!
//! State directory (owned by the source, e.g. `DIR/sources/<peer>/<image>/`):
//! - `state.json`: committed epoch and size, and the in-progress cycle (epoch,
//!   base, size, durable scan offset, pre-scan fingerprint, flags). Replaced
//!   atomically (write temp, fsync, rename, fsync directory).
//! - `manifest-<E>.bin`: the manifest of committed epoch `E` (the base).
//! - `manifest-<E>.partial`: the manifest being written by in-progress epoch
//!   `E`; renamed to `.bin` by [`ExtentSource::commit_cycle`].
//!
//! Resume rule: the partial manifest is fdatasynced and its durable offset
//! recorded in `state.json` by [`ExtentSource::make_durable`], which the
//! pipeline calls (batched: one sync for several chunks) before it hands the
//! sender any chunk the sender may report to the standby — every chunk with
//! changes, the last one, and an unchanged one every
//! [`crate::pipeline::EMPTY_DURABLE_EVERY`] bytes — and at least every
//! [`SYNC_INTERVAL`] bytes of scan and at the end of the scan. So a new
//! process's [`ExtentSource::resumable_offset`] (the durable offset; the
//! process that recorded it gets the full recorded progress) is never below
//! what the standby holds durably, and the sender resumes at the standby's
//! offset. A resume at offset `R` first lowers the durable offset to `R`,
//! because entries past `R` will be rewritten from a new read.
//!
//! Fuzzy detection: a fingerprint taken before the first read is persisted
//! with the cycle and compared after the last: regular files use (device,
//! inode, size, mtime ns, ctime ns); block devices the "sectors written" and
//! "sectors discarded" counters of `/sys/dev/block/MAJ:MIN/stat`; without
//! either the point is fuzzy. A read that ends early (the file shrank) also
//! makes it fuzzy.
//!
//! Changes at rest: when a committed cycle was quiet (not fuzzy) and its
//! fingerprint had settled (a file's ctime at least [`SETTLE_NS`] old when
//! it was taken: ctime ticks coarsely), that fingerprint is kept. If the
//! next incremental cycle starts from the very same fingerprint — nothing
//! wrote the image through the kernel since — yet blocks differ from the
//! base manifest, the bytes changed at rest (media corruption, a write that
//! bypassed the device): [`ExtentSource::end_scan`] refuses with
//! [`SourceError::ChangedAtRest`] rather than replicate them over the
//! standby's good copy, and keeps refusing that cycle until the operator
//! accepts it ([`FileSourceOptions::accept_changes_at_rest`]), which is
//! then logged as a warning.
//!
//! Here: opening the source and the [`ExtentSource`] steps. By concern:
//! `file/types.rs` (the source's data and shared helpers, below all the
//! others), `file/state.rs` (state file, manifests, crash reconciliation),
//! `file/fingerprint.rs` (change fingerprints), `file/scan.rs` (cycle start,
//! reading, end of scan), `file/analyser.rs` (per-block change detection).

mod analyser;
mod fingerprint;
mod scan;
mod state;
#[cfg(test)]
mod tests;
mod types;

use std::cell::Cell;
use std::fs::{self, File};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::sync::Arc;

use ferry_protocol::Epoch;

use super::manifest::{self, BlockHash, Manifest, ManifestHeader, BLOCK_SIZE};
use super::pool::BufferPool;
use super::{
    ChunkAnalyzer, ChunkRecord, CyclePlan, ExtentSource, ImageInfo, RawChunk, ScanOutcome,
    SourceError,
};
use crate::sys::uring::{BlockReader, IoShape};
use analyser::FileAnalyzer;
pub use types::FileSource;
use types::{io_error, remove_if_exists, sync_dir, PersistedState};

/// The partial manifest is made durable at least this often (bytes of scan).
pub const SYNC_INTERVAL: u64 = 256 << 20;

/// Options of a [`FileSource`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileSourceOptions {
    /// Reads in flight per chunk and their size.
    pub io: IoShape,
    /// Use `pread` even where io_uring works.
    pub force_pread: bool,
    /// Replicate blocks that changed at rest (see the module docs) instead
    /// of refusing the cycle; logged as a warning.
    pub accept_changes_at_rest: bool,
}

impl FileSource {
    /// Opens `image` read-only and the state in `state_dir` (created if
    /// missing), finishing a commit an earlier process left half done.
    pub fn open(image: &Path, state_dir: &Path) -> Result<Self, SourceError> {
        Self::open_with(image, state_dir, FileSourceOptions::default())
    }

    /// [`FileSource::open`] with explicit options.
    pub fn open_with(
        image: &Path,
        state_dir: &Path,
        options: FileSourceOptions,
    ) -> Result<Self, SourceError> {
        fs::create_dir_all(state_dir).map_err(io_error("create state directory", state_dir))?;
        let file = File::open(image).map_err(io_error("open image", image))?;
        let file_type = file
            .metadata()
            .map_err(io_error("stat image", image))?
            .file_type();
        let block_device = file_type.is_block_device();
        if !block_device && !file_type.is_file() {
            return Err(SourceError::NotAnImage {
                path: image.to_owned(),
            });
        }
        let mut source = Self {
            image_path: image.to_owned(),
            state_dir: state_dir.to_owned(),
            image: file,
            block_device,
            reader: BlockReader::with_shape(options.io, options.force_pread),
            state: PersistedState::default(),
            base: None,
            cycle: None,
            pinned_size: Cell::new(None),
            accept_changes_at_rest: options.accept_changes_at_rest,
        };
        source.state = source.load_state()?;
        source.reconcile()?;
        source.open_base();
        Ok(source)
    }

    /// Records that the standby already holds `image` exactly as it is now,
    /// committed at `epoch`: writes the manifest of the file's current
    /// contents as the committed base in `state_dir` (replacing whatever
    /// was there), so the next cycle sends only blocks that change after
    /// this call. Used when roles swap in a planned migration (the standby
    /// side adopts the same bytes at the same epoch). The caller makes sure
    /// nothing writes to the image meanwhile.
    pub fn seed(image: &Path, state_dir: &Path, epoch: Epoch) -> Result<(), SourceError> {
        Self::seed_with(image, state_dir, epoch, None)
    }

    /// Like [`FileSource::seed`], but the base is what the standby holds,
    /// given as its block hashes ([`block_hashes`] of the standby's copy),
    /// not this image as it is: the next cycle sends every block whose
    /// content differs from the standby's. For re-protect, where the old
    /// primary's copy holds its own (split-brain) writes too: only blocks
    /// written on either side since the sites diverged cross the link.
    /// Repeating it with the same epoch keeps the state (an interrupted
    /// first cycle resumes).
    pub fn seed_from_hashes(
        image: &Path,
        state_dir: &Path,
        epoch: Epoch,
        hashes: &[BlockHash],
    ) -> Result<(), SourceError> {
        if let Ok(source) = Self::open(image, state_dir) {
            if source.state.committed_epoch == epoch.get()
                && source.manifest_holds(epoch.get(), hashes)
            {
                return Ok(());
            }
        }
        Self::seed_with(image, state_dir, epoch, Some(hashes))
    }

    /// Whether the manifest of committed `epoch` holds exactly `hashes`: a
    /// base seeded with them before. A state at the same epoch number with
    /// other hashes is an earlier replication's (epochs count on across
    /// role swaps, so a site that was the primary before may have committed
    /// the same number from other content): keeping it would skip blocks
    /// that differ from the standby's copy (control fault harness, seed
    /// 2673571956, scenario 15).
    fn manifest_holds(&self, epoch: u64, hashes: &[BlockHash]) -> bool {
        let Ok(manifest) = Manifest::open(&self.manifest_path(epoch), false) else {
            return false;
        };
        if manifest.header().block_count() != hashes.len() as u64 {
            return false;
        }
        let mut held = Vec::with_capacity(hashes.len());
        manifest
            .read_entries(0, hashes.len() as u64, &mut held)
            .is_ok_and(|()| held == hashes)
    }

    fn seed_with(
        image: &Path,
        state_dir: &Path,
        epoch: Epoch,
        given: Option<&[BlockHash]>,
    ) -> Result<(), SourceError> {
        if epoch.get() == 0 {
            return Err(SourceError::Misuse {
                reason: "a seeded base needs a non-zero epoch",
            });
        }
        let mut source = Self::open(image, state_dir)?;
        let size = source.image_size()?;
        if let Some(given) = given {
            if given.len() as u64 != manifest::block_count(size, BLOCK_SIZE) {
                return Err(SourceError::Misuse {
                    reason: "the standby's block hashes do not cover this image's size",
                });
            }
        }
        let path = source.manifest_path(epoch.get());
        let tmp = source.partial_path(epoch.get());
        let manifest = Manifest::create(
            &tmp,
            ManifestHeader {
                block_size: BLOCK_SIZE,
                image_size: size,
                epoch,
            },
        )?;
        if let Some(given) = given {
            manifest.write_entries(0, given)?;
        } else {
            const STEP: usize = 1 << 20;
            let mut buf = vec![0u8; STEP];
            let mut hashes = Vec::with_capacity(STEP / BLOCK_SIZE as usize);
            let mut offset = 0u64;
            while offset < size {
                let len = usize::try_from(size - offset).unwrap_or(STEP).min(STEP);
                let chunk = &mut buf[..len];
                std::os::unix::fs::FileExt::read_exact_at(&source.image, chunk, offset)
                    .map_err(io_error("read image", image))?;
                hashes.clear();
                hashes.extend(chunk.chunks(BLOCK_SIZE as usize).map(BlockHash::of_block));
                manifest.write_entries(offset / u64::from(BLOCK_SIZE), &hashes)?;
                offset += len as u64;
            }
        }
        manifest.sync()?;
        drop(manifest);
        fs::rename(&tmp, &path).map_err(io_error("rename manifest", &tmp))?;
        sync_dir(state_dir)?;
        let old = source.state.committed_epoch;
        source.store_state(PersistedState {
            committed_epoch: epoch.get(),
            committed_size: size,
            ..PersistedState::default()
        })?;
        if old != 0 && old != epoch.get() {
            remove_if_exists(&source.manifest_path(old))?;
        }
        source.sweep()
    }

    /// Name of the read backend (`"io_uring"` or `"pread"`).
    pub fn read_backend(&self) -> &'static str {
        self.reader.backend()
    }
}

impl ExtentSource for FileSource {
    fn info(&self) -> Result<ImageInfo, SourceError> {
        let size = match &self.state.in_progress {
            Some(ip) => ip.image_size,
            None => self.image_size()?,
        };
        self.pinned_size.set(Some(size));
        Ok(ImageInfo {
            size,
            block_size: BLOCK_SIZE,
        })
    }

    fn committed_epoch(&self) -> Epoch {
        if self.base.is_some() {
            Epoch(self.state.committed_epoch)
        } else {
            Epoch(0)
        }
    }

    fn resumable_offset(&self, epoch: Epoch) -> u64 {
        if let Some(cycle) = self.cycle.as_ref().filter(|c| c.epoch == epoch) {
            return cycle.recorded;
        }
        match &self.state.in_progress {
            Some(ip) if ip.epoch == epoch.get() => ip.durable_offset,
            _ => 0,
        }
    }

    fn begin_cycle(&mut self, plan: &CyclePlan, chunk_size: u32) -> Result<ImageInfo, SourceError> {
        let block = u64::from(BLOCK_SIZE);
        let chunk_size = u64::from(chunk_size);
        if chunk_size == 0 || !chunk_size.is_multiple_of(block) {
            return Err(SourceError::InvalidConfig {
                reason: "chunk size must be a positive multiple of 4096",
            });
        }
        let committed = self.committed_epoch();
        let bad = |reason| SourceError::bad_plan(plan, committed, reason);
        if plan.epoch <= committed || plan.epoch.get() <= self.state.committed_epoch {
            return Err(bad("the epoch must be newer than the committed one"));
        }
        if plan.base_epoch != Epoch(0) && plan.base_epoch != committed {
            return Err(bad(
                "the base must be the committed epoch (or 0 for a full copy)",
            ));
        }
        match self.state.in_progress.clone() {
            Some(ip) if ip.epoch == plan.epoch.get() && ip.base_epoch == plan.base_epoch.get() => {
                self.begin_resume(plan, chunk_size, ip)
            }
            _ => self.begin_fresh(plan, chunk_size),
        }
    }

    fn read_next(&mut self, pool: &BufferPool) -> Result<Option<RawChunk>, SourceError> {
        self.read_chunk(pool)
    }

    fn analyzer(&self) -> Arc<dyn ChunkAnalyzer> {
        Arc::new(FileAnalyzer {
            block_size: u64::from(BLOCK_SIZE),
        })
    }

    fn record(&mut self, record: &ChunkRecord) -> Result<(), SourceError> {
        let Some(cycle) = self.cycle.as_mut().filter(|c| c.scanning) else {
            return Err(SourceError::Misuse {
                reason: "record without a running cycle",
            });
        };
        if record.scan_start != cycle.recorded
            || record.scan_end > cycle.size
            || record.scan_end < record.scan_start
        {
            return Err(SourceError::Misuse {
                reason: "records must arrive in scan order",
            });
        }
        let block = u64::from(BLOCK_SIZE);
        if record.hashes.len() as u64
            != manifest::block_count(record.scan_end - record.scan_start, BLOCK_SIZE)
        {
            return Err(SourceError::Misuse {
                reason: "record has the wrong number of hashes",
            });
        }
        let all_zero = record.hashes.iter().all(BlockHash::is_zero_marker);
        if !(all_zero && record.scan_start >= cycle.clean_from) {
            cycle
                .partial
                .write_entries(record.scan_start / block, &record.hashes)?;
            if !all_zero {
                cycle.clean_from = cycle.clean_from.max(record.scan_end);
            }
        }
        cycle.base_changed_bytes += record.base_changed_bytes;
        if cycle.first_base_change.is_none() {
            cycle.first_base_change = record.first_base_change;
        }
        cycle.recorded = record.scan_end;
        if cycle.recorded - cycle.synced >= SYNC_INTERVAL {
            self.sync_progress()?;
        }
        Ok(())
    }

    fn make_durable(&mut self) -> Result<(), SourceError> {
        match self.cycle.as_ref() {
            Some(cycle) if cycle.scanning && cycle.recorded > cycle.synced => self.sync_progress(),
            _ => Ok(()),
        }
    }

    fn end_scan(&mut self) -> Result<ScanOutcome, SourceError> {
        self.finish_scan()
    }

    fn abort_scan(&mut self) {
        if !self.cycle.as_ref().is_some_and(|c| c.scanning) {
            return;
        }
        if let Err(error) = self.sync_progress() {
            tracing::warn!(%error, image = %self.image_path.display(),
                "could not persist scan progress on abort; a resume will start earlier");
        }
        if let Some(cycle) = self.cycle.as_mut() {
            cycle.scanning = false;
        }
    }

    fn commit_cycle(&mut self, epoch: Epoch) -> Result<(), SourceError> {
        if epoch.get() == self.state.committed_epoch && self.base.is_some() {
            return Ok(());
        }
        let Some(ip) = self
            .state
            .in_progress
            .clone()
            .filter(|ip| ip.epoch == epoch.get())
        else {
            return Err(SourceError::NotCommittable {
                epoch,
                reason: "it is not the in-progress epoch",
            });
        };
        if !ip.scan_complete {
            return Err(SourceError::NotCommittable {
                epoch,
                reason: "its scan is not complete",
            });
        }
        if self.cycle.as_ref().is_some_and(|c| c.scanning) {
            return Err(SourceError::NotCommittable {
                epoch,
                reason: "a scan is running",
            });
        }
        let old = self.state.committed_epoch;
        let partial = self.partial_path(epoch.get());
        let done = self.manifest_path(epoch.get());
        if partial.exists() {
            fs::rename(&partial, &done).map_err(io_error("rename manifest", &partial))?;
        } else if !done.exists() {
            return Err(SourceError::NotCommittable {
                epoch,
                reason: "its manifest is missing",
            });
        }
        sync_dir(&self.state_dir)?;
        self.cycle = None;
        let mut next = self.state.clone();
        next.committed_epoch = epoch.get();
        next.committed_size = ip.image_size;
        next.quiet_fingerprint = ip.settled.clone();
        next.in_progress = None;
        self.store_state(next)?;
        self.open_base();
        if old != 0 && old != epoch.get() {
            remove_if_exists(&self.manifest_path(old))?;
            sync_dir(&self.state_dir)?;
        }
        Ok(())
    }

    fn discard_cycle(&mut self) -> Result<(), SourceError> {
        self.cycle = None;
        if let Some(ip) = self.state.in_progress.clone() {
            let mut next = self.state.clone();
            next.in_progress = None;
            self.store_state(next)?;
            remove_if_exists(&self.partial_path(ip.epoch))?;
        }
        Ok(())
    }
}

/// The block hashes of `image` as a file source's manifest records them
/// ([`BLOCK_SIZE`] blocks, the last one short): what
/// [`FileSource::seed_from_hashes`] takes.
pub fn block_hashes(image: &Path) -> std::io::Result<Vec<BlockHash>> {
    let file = fs::File::open(image)?;
    let size = file.metadata()?.len();
    const STEP: usize = 1 << 20;
    let mut buf = vec![0u8; STEP];
    let mut hashes =
        Vec::with_capacity(usize::try_from(manifest::block_count(size, BLOCK_SIZE)).unwrap_or(0));
    let mut offset = 0u64;
    while offset < size {
        let len = usize::try_from(size - offset).unwrap_or(STEP).min(STEP);
        let chunk = &mut buf[..len];
        std::os::unix::fs::FileExt::read_exact_at(&file, chunk, offset)?;
        hashes.extend(chunk.chunks(BLOCK_SIZE as usize).map(BlockHash::of_block));
        offset += len as u64;
    }
    Ok(hashes)
}
