//! Scanning the image: starting a fresh cycle or resuming one, reading the
//! next chunk (holes coalesced, only data segments read) with the base
//! hashes of its blocks, and ending the scan (fuzzy and at-rest checks).

use std::io::{Seek, SeekFrom};
use std::time::{SystemTime, UNIX_EPOCH};

use ferry_protocol::Epoch;

use super::types::{io_error, remove_if_exists, AtRest, Cycle, FileSource, InProgress};
use crate::source::manifest::{self, Manifest, ManifestError, ManifestHeader, BLOCK_SIZE};
use crate::source::pool::BufferPool;
use crate::source::{
    ChunkBody, CyclePlan, ExtentSource, ImageInfo, RawChunk, ScanOutcome, SourceError,
};
use crate::sys::uring::{next_data_offset, next_hole_offset};

/// A run of hole chunks is delivered as one chunk of at most this many chunk sizes.
const MAX_HOLE_CHUNKS: u64 = 64;

impl FileSource {
    pub(super) fn image_size(&self) -> Result<u64, SourceError> {
        if self.block_device {
            (&self.image)
                .seek(SeekFrom::End(0))
                .map_err(io_error("size block device", &self.image_path))
        } else {
            Ok(self
                .image
                .metadata()
                .map_err(io_error("stat image", &self.image_path))?
                .len())
        }
    }

    pub(super) fn begin_fresh(
        &mut self,
        plan: &CyclePlan,
        chunk_size: u64,
    ) -> Result<ImageInfo, SourceError> {
        if plan.resume_offset != 0 {
            return Err(SourceError::ResumeBeyondProgress {
                epoch: plan.epoch,
                requested: plan.resume_offset,
                resumable: 0,
            });
        }
        // Forget any other in-progress cycle first.
        self.cycle = None;
        if let Some(old) = self.state.in_progress.clone() {
            let mut next = self.state.clone();
            next.in_progress = None;
            self.store_state(next)?;
            remove_if_exists(&self.partial_path(old.epoch))?;
        }
        let fingerprint = self.fingerprint();
        let current = self.image_size()?;
        // Scan what `info()` announced (the sender put it in OpenImage).
        let size = self.pinned_size.take().unwrap_or(current);
        let resized = size != current;
        let header = ManifestHeader {
            block_size: BLOCK_SIZE,
            image_size: size,
            epoch: plan.epoch,
        };
        let partial = Manifest::create(&self.partial_path(plan.epoch.get()), header)?;
        let mut next = self.state.clone();
        next.in_progress = Some(InProgress {
            epoch: plan.epoch.get(),
            base_epoch: plan.base_epoch.get(),
            image_size: size,
            durable_offset: 0,
            fingerprint,
            fuzzy_seen: resized,
            scan_complete: false,
            settled: None,
            at_rest: None,
        });
        self.store_state(next)?;
        self.cycle = Some(Cycle {
            epoch: plan.epoch,
            base_epoch: plan.base_epoch,
            size,
            chunk_size,
            partial,
            cursor: 0,
            recorded: 0,
            synced: 0,
            clean_from: 0,
            short_read: false,
            scanning: true,
            base_changed_bytes: 0,
            first_base_change: None,
        });
        Ok(ImageInfo {
            size,
            block_size: BLOCK_SIZE,
        })
    }

    pub(super) fn begin_resume(
        &mut self,
        plan: &CyclePlan,
        chunk_size: u64,
        ip: InProgress,
    ) -> Result<ImageInfo, SourceError> {
        self.pinned_size.set(None);
        let resumable = self.resumable_offset(plan.epoch);
        if plan.resume_offset > resumable {
            return Err(SourceError::ResumeBeyondProgress {
                epoch: plan.epoch,
                requested: plan.resume_offset,
                resumable,
            });
        }
        let size = ip.image_size;
        let block = u64::from(BLOCK_SIZE);
        let resume = plan.resume_offset.min(size);
        // Round down to a block boundary unless it is the very end.
        let resume = if resume == size {
            size
        } else {
            resume - resume % block
        };
        let cycle = match self.cycle.take().filter(|c| c.epoch == plan.epoch) {
            Some(cycle) => cycle,
            None => {
                let partial = Manifest::open(&self.partial_path(ip.epoch), true)?;
                let header = partial.header();
                if header.epoch != plan.epoch || header.image_size != size {
                    return Err(ManifestError::Mismatch {
                        path: partial.path().to_owned(),
                        reason: "partial manifest does not belong to the in-progress cycle",
                    }
                    .into());
                }
                Cycle {
                    epoch: plan.epoch,
                    base_epoch: plan.base_epoch,
                    size,
                    chunk_size,
                    partial,
                    cursor: 0,
                    recorded: 0,
                    synced: 0,
                    // Nothing is known about the file's content.
                    clean_from: size,
                    short_read: false,
                    scanning: false,
                    base_changed_bytes: 0,
                    first_base_change: None,
                }
            }
        };
        self.cycle = Some(cycle);
        // Entries from `resume` on will be rewritten from a new read: they
        // stop being durable-and-valid before the first new read.
        if ip.durable_offset > resume || (ip.scan_complete && resume < size) {
            let mut next = self.state.clone();
            if let Some(p) = next.in_progress.as_mut() {
                p.durable_offset = p.durable_offset.min(resume);
                p.scan_complete = p.scan_complete && resume >= size;
            }
            self.store_state(next)?;
        }
        if let Some(cycle) = self.cycle.as_mut() {
            cycle.chunk_size = chunk_size;
            cycle.cursor = resume;
            cycle.recorded = resume;
            cycle.synced = resume;
            cycle.scanning = true;
        }
        Ok(ImageInfo {
            size,
            block_size: BLOCK_SIZE,
        })
    }

    /// [`ExtentSource::read_next`]: the next chunk of the running scan
    /// (holes coalesced, only data segments read), with the base manifest's
    /// hashes of its blocks.
    pub(super) fn read_chunk(
        &mut self,
        pool: &BufferPool,
    ) -> Result<Option<RawChunk>, SourceError> {
        let Self {
            image,
            image_path,
            reader,
            base,
            cycle,
            ..
        } = self;
        let Some(cycle) = cycle.as_mut().filter(|c| c.scanning) else {
            return Err(SourceError::Misuse {
                reason: "read_next without a running cycle",
            });
        };
        if (pool.buf_size() as u64) < cycle.chunk_size {
            return Err(SourceError::InvalidConfig {
                reason: "pool buffers are smaller than the chunk size",
            });
        }
        if cycle.cursor >= cycle.size {
            return Ok(None);
        }
        let start = cycle.cursor;
        let chunk = cycle.chunk_size;
        let mut end = ((start / chunk + 1) * chunk).min(cycle.size);
        let read_error = |offset| {
            let path = image_path.clone();
            move |source| SourceError::Read {
                path,
                offset,
                source,
            }
        };
        let data_at = next_data_offset(image, start).map_err(read_error(start))?;
        let hole_end = data_at.map_or(cycle.size, |d| d.min(cycle.size));
        let body = if hole_end >= end {
            // The whole chunk is a hole: extend over following hole chunks.
            let cap = (start - start % chunk).saturating_add(MAX_HOLE_CHUNKS * chunk);
            let hole_chunks_end = if hole_end >= cycle.size {
                cycle.size
            } else {
                hole_end - hole_end % chunk
            };
            end = end.max(hole_chunks_end.min(cap).min(cycle.size));
            ChunkBody::Hole
        } else {
            let Some(mut buf) = pool.acquire() else {
                return Err(SourceError::Cancelled);
            };
            let len = (end - start) as usize;
            // Read only the data segments of the chunk; its holes read as
            // zeroes without touching the file (a sparse image with scattered
            // data would otherwise read gigabytes of holes).
            let mut pos = data_at.unwrap_or(start).clamp(start, end);
            buf[..(pos - start) as usize].fill(0);
            while pos < end {
                let data_end = next_hole_offset(image, pos)
                    .map_err(read_error(pos))?
                    .unwrap_or(end)
                    .clamp(pos, end);
                let (from, to) = ((pos - start) as usize, (data_end - start) as usize);
                let n = reader
                    .read_at(image, pos, &mut buf[from..to])
                    .map_err(read_error(pos))?;
                if n < to - from {
                    tracing::warn!(image = %image_path.display(), offset = pos + n as u64,
                        "image ended before its recorded size: the scan is fuzzy");
                    buf[from + n..len].fill(0);
                    cycle.short_read = true;
                    break;
                }
                if data_end >= end {
                    break;
                }
                let next_data = next_data_offset(image, data_end)
                    .map_err(read_error(data_end))?
                    .unwrap_or(end)
                    .clamp(data_end, end);
                buf[to..(next_data - start) as usize].fill(0);
                pos = next_data;
            }
            ChunkBody::Bytes(buf.freeze(len))
        };
        let mut base_hashes = Vec::new();
        if cycle.base_epoch != Epoch(0) {
            let Some(base) = base.as_ref() else {
                return Err(SourceError::Misuse {
                    reason: "incremental cycle without a base manifest",
                });
            };
            let block = u64::from(BLOCK_SIZE);
            let first = start / block;
            let count = manifest::block_count(end - start, BLOCK_SIZE);
            base_hashes.reserve(count as usize);
            base.read_entries(first, count, &mut base_hashes)?;
        }
        cycle.cursor = end;
        Ok(Some(RawChunk {
            scan_start: start,
            scan_end: end,
            body,
            base_hashes,
        }))
    }

    /// [`ExtentSource::end_scan`]: makes the manifest durable, decides
    /// whether the scan was fuzzy, and refuses blocks that changed at rest
    /// unless the operator accepted them.
    pub(super) fn finish_scan(&mut self) -> Result<ScanOutcome, SourceError> {
        let Some(cycle) = self.cycle.as_ref().filter(|c| c.scanning) else {
            return Err(SourceError::Misuse {
                reason: "end_scan without a running cycle",
            });
        };
        if cycle.recorded < cycle.size {
            return Err(SourceError::Misuse {
                reason: "end_scan before the whole image was recorded",
            });
        }
        cycle.partial.sync()?;
        let epoch = cycle.epoch.get();
        let incremental = cycle.base_epoch != Epoch(0);
        let short_read = cycle.short_read;
        let size = cycle.size;
        let changed = (cycle.base_changed_bytes, cycle.first_base_change);
        let now = self.fingerprint();
        let taken_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        let quiet_since_commit = self.state.quiet_fingerprint.clone();
        let mut next = self.state.clone();
        let Some(ip) = next.in_progress.as_mut().filter(|ip| ip.epoch == epoch) else {
            return Err(SourceError::Misuse {
                reason: "the running cycle is not the persisted one",
            });
        };
        let fuzzy =
            short_read || ip.fuzzy_seen || ip.fingerprint.is_none() || ip.fingerprint != now;
        if let (false, true, (bytes, Some(first_offset))) = (fuzzy, incremental, changed) {
            if quiet_since_commit.is_some() && quiet_since_commit == ip.fingerprint {
                ip.at_rest.get_or_insert(AtRest {
                    bytes,
                    first_offset,
                });
            }
        }
        if let Some(at_rest) = ip.at_rest.clone() {
            if !self.accept_changes_at_rest {
                // Persist the finding (a retry must refuse again) and the
                // synced manifest (a retry resumes at the end and refuses at
                // once), not a completed scan: the cycle cannot commit.
                ip.durable_offset = size;
                self.store_state(next)?;
                if let Some(cycle) = self.cycle.as_mut() {
                    cycle.synced = size;
                }
                return Err(SourceError::ChangedAtRest {
                    path: self.image_path.clone(),
                    bytes: at_rest.bytes,
                    first_offset: at_rest.first_offset,
                });
            }
            tracing::warn!(image = %self.image_path.display(), bytes = at_rest.bytes,
                first_offset = at_rest.first_offset,
                "replicating blocks that changed at rest, as the operator accepted");
        }
        ip.settled = match &now {
            Some(print) if !fuzzy && print.settled_at(taken_ns) => now.clone(),
            _ => None,
        };
        ip.durable_offset = size;
        ip.fuzzy_seen = fuzzy;
        ip.scan_complete = true;
        self.store_state(next)?;
        if let Some(cycle) = self.cycle.as_mut() {
            cycle.scanning = false;
            cycle.synced = size;
        }
        Ok(ScanOutcome { fuzzy })
    }
}
