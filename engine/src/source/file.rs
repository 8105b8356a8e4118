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

use std::cell::Cell;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ferry_protocol::{Epoch, ExtentKind};
use serde::{Deserialize, Serialize};

use super::manifest::{self, BlockHash, Manifest, ManifestError, ManifestHeader, BLOCK_SIZE};
use super::pool::BufferPool;
use super::{
    AnalyzedChunk, ChunkAnalyzer, ChunkBody, ChunkRecord, CyclePlan, ExtentSource, ImageInfo,
    RawChunk, ScanOutcome, SourceError,
};
use crate::codec::PlainExtent;
use crate::durable::{write_durably, DurableStep};
use crate::sys::uring::{next_data_offset, next_hole_offset, BlockReader, IoShape};

/// A file's fingerprint counts as settled (usable for the at-rest check)
/// when its ctime was at least this old when it was taken: the kernel's
/// timestamps tick at jiffy granularity, so a write in the same tick as the
/// fingerprint could leave it unchanged.
const SETTLE_NS: i64 = 2_000_000_000;

/// The partial manifest is made durable at least this often (bytes of scan).
pub const SYNC_INTERVAL: u64 = 256 << 20;

/// A run of hole chunks is delivered as one chunk of at most this many chunk sizes.
const MAX_HOLE_CHUNKS: u64 = 64;

/// Longest extent the analyser emits: the largest block multiple that fits a u32.
const MAX_EXTENT_LEN: u64 = (u32::MAX as u64 / BLOCK_SIZE as u64) * BLOCK_SIZE as u64;

const STATE_FILE: &str = "state.json";
const STATE_VERSION: u32 = 1;

/// What identifies "the image did not change" between two moments.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Fingerprint {
    /// Regular file: any write changes ctime (and mtime).
    File {
        dev: u64,
        ino: u64,
        size: u64,
        mtime_ns: i64,
        ctime_ns: i64,
    },
    /// Block device: the kernel's counts of sectors written and discarded.
    BlockDevice {
        rdev: u64,
        sectors_written: u64,
        #[serde(default)]
        sectors_discarded: u64,
    },
}

impl Fingerprint {
    /// Whether nothing can have changed the image in the same clock tick
    /// as this fingerprint was taken at `taken_ns` (wall clock).
    fn settled_at(&self, taken_ns: i64) -> bool {
        match self {
            Fingerprint::File { ctime_ns, .. } => taken_ns.saturating_sub(*ctime_ns) >= SETTLE_NS,
            // Exact counters, bumped as each request completes.
            Fingerprint::BlockDevice { .. } => true,
        }
    }
}

/// Blocks found changed although nothing wrote the image (see the module
/// docs), persisted with the cycle so that a retry refuses again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct AtRest {
    bytes: u64,
    first_offset: u64,
}

/// A cycle as persisted in the state file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct InProgress {
    epoch: u64,
    base_epoch: u64,
    image_size: u64,
    /// Every manifest entry below this offset is durable and valid.
    durable_offset: u64,
    /// Taken before the first read; `None` = cannot tell (fuzzy).
    fingerprint: Option<Fingerprint>,
    /// A change during the scan was already seen.
    fuzzy_seen: bool,
    /// The scan reached the end and the whole manifest is durable.
    scan_complete: bool,
    /// The post-scan fingerprint, when the scan was quiet and it had settled:
    /// becomes [`PersistedState::quiet_fingerprint`] at commit.
    #[serde(default)]
    settled: Option<Fingerprint>,
    /// This cycle found changes at rest (refused until accepted).
    #[serde(default)]
    at_rest: Option<AtRest>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct PersistedState {
    version: u32,
    committed_epoch: u64,
    committed_size: u64,
    in_progress: Option<InProgress>,
    /// The settled fingerprint of the committed cycle, if it was quiet.
    #[serde(default)]
    quiet_fingerprint: Option<Fingerprint>,
}

impl Default for PersistedState {
    fn default() -> Self {
        Self {
            version: STATE_VERSION,
            committed_epoch: 0,
            committed_size: 0,
            in_progress: None,
            quiet_fingerprint: None,
        }
    }
}

/// The in-memory side of the current cycle.
#[derive(Debug)]
struct Cycle {
    epoch: Epoch,
    base_epoch: Epoch,
    size: u64,
    chunk_size: u64,
    partial: Manifest,
    /// Next offset to read.
    cursor: u64,
    /// Every entry below this offset was written (not necessarily synced).
    recorded: u64,
    /// `recorded` at the last sync.
    synced: u64,
    /// Every entry at or beyond this offset reads as zero in the partial file.
    clean_from: u64,
    /// A read ended early: the image shrank during the scan.
    short_read: bool,
    /// Between begin_cycle and end_scan/abort_scan.
    scanning: bool,
    /// Bytes of blocks this process found different from a base entry,
    /// and the first of them.
    base_changed_bytes: u64,
    first_base_change: Option<u64>,
}

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

/// A raw image file or block device with manifest-based change detection.
#[derive(Debug)]
pub struct FileSource {
    image_path: PathBuf,
    state_dir: PathBuf,
    image: File,
    block_device: bool,
    reader: BlockReader,
    state: PersistedState,
    base: Option<Manifest>,
    cycle: Option<Cycle>,
    /// The size the last `info()` reported; a new cycle scans exactly this.
    pinned_size: Cell<Option<u64>>,
    accept_changes_at_rest: bool,
}

fn io_error(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SourceError {
    let path = path.to_owned();
    move |source| SourceError::Io { op, path, source }
}

fn remove_if_exists(path: &Path) -> Result<(), SourceError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(io_error("remove", path)(error)),
    }
}

fn sync_dir(dir: &Path) -> Result<(), SourceError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error("sync directory", dir))
}

/// The kernel's I/O counters of block device MAJ:MIN: from
/// `/sys/dev/block/MAJ:MIN/stat`, or (where that directory is empty, as in
/// some containers) from the `/sys/class/block/*` entry whose `dev` names it.
fn block_device_stat(major: u64, minor: u64) -> Option<String> {
    if let Ok(text) = fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/stat")) {
        return Some(text);
    }
    let wanted = format!("{major}:{minor}");
    fs::read_dir("/sys/class/block")
        .ok()?
        .flatten()
        .find(|entry| {
            fs::read_to_string(entry.path().join("dev")).is_ok_and(|dev| dev.trim() == wanted)
        })
        .and_then(|entry| fs::read_to_string(entry.path().join("stat")).ok())
}

/// Linux `dev_t` → (major, minor), as glibc's `gnu_dev_major/minor`.
fn split_dev(dev: u64) -> (u64, u64) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    (major, minor)
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
        if epoch.get() == 0 {
            return Err(SourceError::Misuse {
                reason: "a seeded base needs a non-zero epoch",
            });
        }
        let mut source = Self::open(image, state_dir)?;
        let size = source.image_size()?;
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

    fn state_path(&self) -> PathBuf {
        self.state_dir.join(STATE_FILE)
    }

    fn manifest_path(&self, epoch: u64) -> PathBuf {
        self.state_dir.join(format!("manifest-{epoch}.bin"))
    }

    fn partial_path(&self, epoch: u64) -> PathBuf {
        self.state_dir.join(format!("manifest-{epoch}.partial"))
    }

    fn load_state(&self) -> Result<PersistedState, SourceError> {
        let path = self.state_path();
        let text = match fs::read(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return Ok(PersistedState::default())
            }
            Err(error) => return Err(io_error("read state", &path)(error)),
        };
        let state: PersistedState =
            serde_json::from_slice(&text).map_err(|source| SourceError::State {
                path: path.clone(),
                source,
            })?;
        if state.version != STATE_VERSION {
            return Err(SourceError::Misuse {
                reason: "state file has an unsupported version",
            });
        }
        Ok(state)
    }

    /// Replaces the state file atomically and durably; the in-memory state
    /// changes only if that succeeded.
    fn store_state(&mut self, state: PersistedState) -> Result<(), SourceError> {
        let path = self.state_path();
        let tmp = self.state_dir.join(format!("{STATE_FILE}.tmp"));
        let text = serde_json::to_vec_pretty(&state).map_err(|source| SourceError::State {
            path: path.clone(),
            source,
        })?;
        write_durably(&tmp, &path, &text).map_err(|e| match e.step {
            DurableStep::Create => io_error("create state", &tmp)(e.source),
            DurableStep::Write => io_error("write state", &tmp)(e.source),
            DurableStep::Sync => io_error("sync state", &tmp)(e.source),
            DurableStep::Rename => io_error("rename state", &path)(e.source),
            DurableStep::SyncDir => io_error("sync directory", &self.state_dir)(e.source),
        })?;
        self.state = state;
        Ok(())
    }

    /// Completes or forgets what an earlier process left behind.
    fn reconcile(&mut self) -> Result<(), SourceError> {
        let Some(ip) = self.state.in_progress.clone() else {
            return self.sweep();
        };
        let partial = self.partial_path(ip.epoch);
        let done = self.manifest_path(ip.epoch);
        if !partial.exists() {
            let mut next = self.state.clone();
            if ip.scan_complete && done.exists() {
                // commit_cycle renamed the manifest but did not get to write
                // the state: the standby had committed; roll forward.
                next.committed_epoch = ip.epoch;
                next.committed_size = ip.image_size;
            }
            next.in_progress = None;
            self.store_state(next)?;
        }
        self.sweep()
    }

    /// Deletes manifests that are neither the committed one nor the partial
    /// of the in-progress cycle (best effort).
    fn sweep(&self) -> Result<(), SourceError> {
        let keep_bin = format!("manifest-{}.bin", self.state.committed_epoch);
        let keep_partial = self
            .state
            .in_progress
            .as_ref()
            .map(|ip| format!("manifest-{}.partial", ip.epoch));
        let entries = fs::read_dir(&self.state_dir)
            .map_err(io_error("list state directory", &self.state_dir))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let is_manifest = name.starts_with("manifest-")
                && (name.ends_with(".bin") || name.ends_with(".partial"));
            if is_manifest && name != keep_bin && Some(name) != keep_partial.as_deref() {
                if let Err(error) = fs::remove_file(entry.path()) {
                    tracing::warn!(%error, file = name, "cannot remove stale manifest");
                }
            }
        }
        Ok(())
    }

    /// Opens the committed manifest; a missing or damaged one demotes the
    /// source to "nothing committed" so that the next cycle is a full copy.
    fn open_base(&mut self) {
        self.base = None;
        let epoch = self.state.committed_epoch;
        if epoch == 0 {
            return;
        }
        let path = self.manifest_path(epoch);
        let opened = Manifest::open(&path, false).and_then(|m| {
            let header = m.header();
            if header.epoch != Epoch(epoch) {
                Err(ManifestError::Mismatch {
                    path: path.clone(),
                    reason: "epoch differs from the committed epoch",
                })
            } else if header.image_size != self.state.committed_size {
                Err(ManifestError::Mismatch {
                    path: path.clone(),
                    reason: "image size differs from the committed size",
                })
            } else {
                Ok(m)
            }
        });
        match opened {
            Ok(manifest) => self.base = Some(manifest),
            Err(error) => {
                tracing::warn!(error = %error, image = %self.image_path.display(),
                    "committed manifest unusable; the next cycle must be a full copy");
            }
        }
    }

    fn image_size(&self) -> Result<u64, SourceError> {
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

    fn fingerprint(&self) -> Option<Fingerprint> {
        let meta = self.image.metadata().ok()?;
        if self.block_device {
            // The counters move when writes reach the device, not when they
            // enter its page cache, where a scan already sees them: write
            // the dirty pages out first, or a buffered write could look
            // like a change at rest (or escape fuzzy detection).
            self.image.sync_all().ok()?;
            let rdev = meta.rdev();
            let (major, minor) = split_dev(rdev);
            let text = block_device_stat(major, minor)?;
            // Fields: reads, read merges, sectors read, read ticks, writes,
            // write merges, sectors written, write ticks, in flight, io
            // ticks, queue time, discards, discard merges, sectors
            // discarded (4.18+), ...
            let fields: Vec<&str> = text.split_whitespace().collect();
            let sectors_written = fields.get(6)?.parse().ok()?;
            let sectors_discarded = fields.get(13).and_then(|f| f.parse().ok()).unwrap_or(0);
            Some(Fingerprint::BlockDevice {
                rdev,
                sectors_written,
                sectors_discarded,
            })
        } else {
            let nanos =
                |secs: i64, nsec: i64| secs.saturating_mul(1_000_000_000).saturating_add(nsec);
            Some(Fingerprint::File {
                dev: meta.dev(),
                ino: meta.ino(),
                size: meta.len(),
                mtime_ns: nanos(meta.mtime(), meta.mtime_nsec()),
                ctime_ns: nanos(meta.ctime(), meta.ctime_nsec()),
            })
        }
    }

    /// Makes every recorded entry durable and records that in the state file.
    fn sync_progress(&mut self) -> Result<(), SourceError> {
        let Some(cycle) = self.cycle.as_mut() else {
            return Ok(());
        };
        cycle.partial.sync()?;
        let recorded = cycle.recorded;
        let short_read = cycle.short_read;
        let epoch = cycle.epoch.get();
        let mut next = self.state.clone();
        if let Some(ip) = next.in_progress.as_mut().filter(|ip| ip.epoch == epoch) {
            ip.durable_offset = recorded;
            ip.fuzzy_seen |= short_read;
        }
        self.store_state(next)?;
        if let Some(cycle) = self.cycle.as_mut() {
            cycle.synced = recorded;
        }
        Ok(())
    }

    fn begin_fresh(&mut self, plan: &CyclePlan, chunk_size: u64) -> Result<ImageInfo, SourceError> {
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

    fn begin_resume(
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
        let bad = |reason| SourceError::BadPlan {
            epoch: plan.epoch,
            base_epoch: plan.base_epoch,
            committed,
            reason,
        };
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

/// Change detection of the file backend: zero check and truncated BLAKE3 per
/// block, compared with the base manifest, coalesced into extents.
#[derive(Debug)]
struct FileAnalyzer {
    block_size: u64,
}

impl ChunkAnalyzer for FileAnalyzer {
    fn analyze(&self, chunk: RawChunk) -> Result<AnalyzedChunk, SourceError> {
        let RawChunk {
            scan_start,
            scan_end,
            body,
            base_hashes,
        } = chunk;
        let unexpected = SourceError::UnexpectedChunk {
            scan_start,
            scan_end,
        };
        let Some(len) = scan_end.checked_sub(scan_start) else {
            return Err(unexpected);
        };
        let bs = self.block_size;
        let blocks = len.div_ceil(bs) as usize;
        let mut hashes = Vec::with_capacity(blocks);
        let mut bytes_zero = 0u64;
        let data: Option<Bytes> = match body {
            ChunkBody::Hole => {
                hashes.resize(blocks, BlockHash::ZERO);
                bytes_zero = len;
                None
            }
            ChunkBody::Bytes(bytes) if bytes.len() as u64 == len => {
                for block in bytes.chunks(bs as usize) {
                    let hash = BlockHash::of_block(block);
                    if hash.is_zero_marker() {
                        bytes_zero += block.len() as u64;
                    }
                    hashes.push(hash);
                }
                Some(bytes)
            }
            ChunkBody::Bytes(_) | ChunkBody::Extents(_) => return Err(unexpected),
        };

        let mut extents = Vec::new();
        // Current run of changed blocks: (first block, end block, kind).
        let mut run: Option<(u64, u64, ExtentKind)> = None;
        let flush = |run: Option<(u64, u64, ExtentKind)>, extents: &mut Vec<PlainExtent>| {
            let Some((first, end, kind)) = run else {
                return;
            };
            let offset = scan_start + first * bs;
            let end_offset = (scan_start + end * bs).min(scan_end);
            let length = end_offset - offset;
            let bytes = match (kind, &data) {
                (ExtentKind::Data, Some(data)) => Some(
                    data.slice((offset - scan_start) as usize..(end_offset - scan_start) as usize),
                ),
                _ => None,
            };
            extents.push(PlainExtent {
                offset,
                // MAX_EXTENT_LEN keeps every run within u32.
                length: length as u32,
                kind,
                data: bytes,
            });
        };
        let mut base_changed_bytes = 0u64;
        let mut first_base_change = None;
        for (index, hash) in hashes.iter().enumerate() {
            let index = index as u64;
            let changed = match base_hashes.get(index as usize) {
                Some(base) if base != hash => {
                    let offset = scan_start + index * bs;
                    base_changed_bytes += bs.min(scan_end - offset);
                    first_base_change.get_or_insert(offset);
                    true
                }
                Some(_) => false,
                // Not in the base (full copy, or the image grew): the
                // standby's range reads as zero, so only data is a change.
                None => !hash.is_zero_marker(),
            };
            let kind = if hash.is_zero_marker() {
                ExtentKind::Zero
            } else {
                ExtentKind::Data
            };
            if !changed {
                flush(run.take(), &mut extents);
                continue;
            }
            match run.as_mut() {
                Some((first, end, run_kind))
                    if *run_kind == kind
                        && *end == index
                        && (index + 1 - *first) * bs <= MAX_EXTENT_LEN =>
                {
                    *end = index + 1;
                }
                _ => {
                    flush(run.take(), &mut extents);
                    run = Some((index, index + 1, kind));
                }
            }
        }
        flush(run.take(), &mut extents);
        Ok(AnalyzedChunk {
            extents,
            bytes_zero,
            record: ChunkRecord {
                scan_start,
                scan_end,
                hashes,
                base_changed_bytes,
                first_base_change,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngCore, SeedableRng};
    use std::os::unix::fs::FileExt;

    const CHUNK: u32 = 64 * 1024;

    struct Fixture {
        dir: tempfile::TempDir,
        image: PathBuf,
        state: PathBuf,
    }

    impl Fixture {
        fn new(content: &[u8]) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let image = dir.path().join("disk.raw");
            fs::write(&image, content).unwrap();
            let state = dir.path().join("state");
            Self { dir, image, state }
        }

        fn open(&self) -> FileSource {
            FileSource::open(&self.image, &self.state).unwrap()
        }

        fn write_at(&self, offset: u64, bytes: &[u8]) {
            let file = OpenOptions::new().write(true).open(&self.image).unwrap();
            file.write_all_at(bytes, offset).unwrap();
        }

        fn set_len(&self, len: u64) {
            OpenOptions::new()
                .write(true)
                .open(&self.image)
                .unwrap()
                .set_len(len)
                .unwrap();
        }
    }

    fn random(len: usize, seed: u64) -> Vec<u8> {
        let mut data = vec![0u8; len];
        rand_chacha::ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut data);
        data
    }

    /// Runs a whole cycle synchronously; returns all extents and the outcome.
    fn run_cycle(
        source: &mut FileSource,
        epoch: u64,
        base: u64,
    ) -> (Vec<PlainExtent>, ScanOutcome, u64) {
        let plan = CyclePlan {
            epoch: Epoch(epoch),
            base_epoch: Epoch(base),
            resume_offset: 0,
        };
        source.begin_cycle(&plan, CHUNK).unwrap();
        // Extents are kept (with their buffers) until the end: room for all.
        let pool = BufferPool::bounded(CHUNK as usize, 64);
        let analyzer = source.analyzer();
        let mut extents = Vec::new();
        let mut zero = 0;
        while let Some(raw) = source.read_next(&pool).unwrap() {
            let analyzed = analyzer.analyze(raw).unwrap();
            zero += analyzed.bytes_zero;
            source.record(&analyzed.record).unwrap();
            extents.extend(analyzed.extents);
        }
        let outcome = source.end_scan().unwrap();
        (extents, outcome, zero)
    }

    fn simple(extents: &[PlainExtent]) -> Vec<(u64, u32, ExtentKind)> {
        extents
            .iter()
            .map(|e| (e.offset, e.length, e.kind))
            .collect()
    }

    #[test]
    fn full_copy_skips_zero_blocks_and_reconstructs() {
        let mut content = random(300 * 1024 + 123, 1);
        content[8192..16384].fill(0); // two zero blocks
        content[64 * 1024..128 * 1024].fill(0); // a whole zero chunk
        let fx = Fixture::new(&content);
        let mut source = fx.open();
        assert_eq!(source.committed_epoch(), Epoch(0));
        let (extents, outcome, zero) = run_cycle(&mut source, 1, 0);
        assert!(!outcome.fuzzy);
        assert_eq!(zero, 8192 + 64 * 1024);
        let mut rebuilt = vec![0u8; content.len()];
        for e in &extents {
            assert_eq!(e.kind, ExtentKind::Data, "full copy sends no zero extents");
            let data = e.data.as_ref().unwrap();
            rebuilt[e.offset as usize..e.offset as usize + data.len()].copy_from_slice(data);
            // Extents never cross chunk boundaries.
            assert_eq!(
                e.offset / u64::from(CHUNK),
                (e.offset + u64::from(e.length) - 1) / u64::from(CHUNK)
            );
        }
        assert_eq!(rebuilt, content);
        let last = extents.last().unwrap();
        assert_eq!(
            last.offset + u64::from(last.length),
            content.len() as u64,
            "exact last block"
        );
        source.commit_cycle(Epoch(1)).unwrap();
        assert_eq!(source.committed_epoch(), Epoch(1));
        assert!(fx.state.join("manifest-1.bin").exists());
    }

    #[test]
    fn seeded_base_makes_the_next_cycle_incremental() {
        let mut content = random(200 * 1024 + 10, 9);
        content[0..4096].fill(0);
        let fx = Fixture::new(&content);
        // An earlier life of the state dir (epoch 1) is replaced.
        let mut source = fx.open();
        run_cycle(&mut source, 1, 0);
        source.commit_cycle(Epoch(1)).unwrap();
        drop(source);
        FileSource::seed(&fx.image, &fx.state, Epoch(7)).unwrap();
        assert!(!fx.state.join("manifest-1.bin").exists());
        fx.write_at(100 * 1024, &[5u8; 10]);
        let mut source = fx.open();
        assert_eq!(source.committed_epoch(), Epoch(7));
        let (extents, _, _) = run_cycle(&mut source, 8, 7);
        assert_eq!(simple(&extents), vec![(100 * 1024, 4096, ExtentKind::Data)]);
        source.commit_cycle(Epoch(8)).unwrap();
        assert!(matches!(
            FileSource::seed(&fx.image, &fx.state, Epoch(0)),
            Err(SourceError::Misuse { .. })
        ));
    }

    #[test]
    fn incremental_detects_single_write_zeroing_growth_and_shrink() {
        let content = random(256 * 1024 + 100, 2);
        let fx = Fixture::new(&content);
        let mut source = fx.open();
        run_cycle(&mut source, 1, 0);
        source.commit_cycle(Epoch(1)).unwrap();

        // No change: no extents.
        let (extents, outcome, _) = run_cycle(&mut source, 2, 1);
        assert!(extents.is_empty());
        assert!(!outcome.fuzzy);
        source.commit_cycle(Epoch(2)).unwrap();
        assert!(
            !fx.state.join("manifest-1.bin").exists(),
            "old manifest deleted"
        );

        // A single 4 KiB write → exactly one 4 KiB extent.
        fx.write_at(40960, &[0xAB; 4096]);
        // A block turned zero → a Zero extent.
        fx.write_at(8192, &[0; 4096]);
        let mut source = fx.open(); // also exercises reopening from disk
        assert_eq!(source.committed_epoch(), Epoch(2));
        let (extents, _, _) = run_cycle(&mut source, 3, 2);
        assert_eq!(
            simple(&extents),
            vec![
                (8192, 4096, ExtentKind::Zero),
                (40960, 4096, ExtentKind::Data)
            ]
        );
        assert_eq!(&extents[1].data.as_ref().unwrap()[..], &[0xAB; 4096][..]);
        source.commit_cycle(Epoch(3)).unwrap();

        // Growth: the new partial last block and new data; new zero tail sends nothing.
        let old_len = content.len() as u64;
        fx.set_len(old_len + 3 * 4096 + 50);
        fx.write_at(old_len + 4096 + 10, b"grown");
        let (extents, _, _) = run_cycle(&mut source, 4, 3);
        let last_old_block = old_len / 4096 * 4096;
        assert_eq!(
            simple(&extents),
            // The old short last block and the new data block, coalesced.
            vec![(last_old_block, 8192, ExtentKind::Data)]
        );
        source.commit_cycle(Epoch(4)).unwrap();

        // Shrink: the standby truncates; only the new short last block is
        // resent (its hash now covers 7 bytes instead of 4096).
        fx.set_len(100 * 1024 + 7);
        let (extents, _, _) = run_cycle(&mut source, 5, 4);
        assert_eq!(simple(&extents), vec![(100 * 1024, 7, ExtentKind::Data)]);
        source.commit_cycle(Epoch(5)).unwrap();
        // Shrink to a block boundary: nothing at all travels.
        fx.set_len(96 * 1024);
        let (extents, _, _) = run_cycle(&mut source, 6, 5);
        assert!(extents.is_empty(), "{:?}", simple(&extents));
        source.commit_cycle(Epoch(6)).unwrap();
        fx.set_len(100 * 1024 + 7);
        fx.write_at(96 * 1024, &content[96 * 1024..100 * 1024 + 7]);
        let (extents, _, _) = run_cycle(&mut source, 7, 6);
        assert_eq!(
            simple(&extents),
            vec![(96 * 1024, 4096 + 7, ExtentKind::Data)]
        );
        source.commit_cycle(Epoch(7)).unwrap();
        // A write in the new last partial block.
        fx.write_at(100 * 1024 + 3, b"x");
        let (extents, _, _) = run_cycle(&mut source, 8, 7);
        assert_eq!(simple(&extents), vec![(100 * 1024, 7, ExtentKind::Data)]);
    }

    #[test]
    fn bad_plans_are_rejected_and_change_nothing() {
        let fx = Fixture::new(&random(64 * 1024, 3));
        let mut source = fx.open();
        run_cycle(&mut source, 1, 0);
        source.commit_cycle(Epoch(1)).unwrap();
        let plan = |epoch, base, resume| CyclePlan {
            epoch: Epoch(epoch),
            base_epoch: Epoch(base),
            resume_offset: resume,
        };
        assert!(matches!(
            source.begin_cycle(&plan(1, 0, 0), CHUNK),
            Err(SourceError::BadPlan { .. })
        ));
        assert!(matches!(
            source.begin_cycle(&plan(3, 2, 0), CHUNK),
            Err(SourceError::BadPlan { .. })
        ));
        assert!(matches!(
            source.begin_cycle(&plan(2, 1, 4096), CHUNK),
            Err(SourceError::ResumeBeyondProgress { .. })
        ));
        assert!(matches!(
            source.commit_cycle(Epoch(2)),
            Err(SourceError::NotCommittable { .. })
        ));
        assert_eq!(source.committed_epoch(), Epoch(1));
        // A full copy on top of a committed epoch is allowed (base 0).
        let (extents, _, _) = run_cycle(&mut source, 2, 0);
        assert_eq!(extents.len(), 1);
    }

    #[test]
    fn resumable_offset_after_abort_in_process_and_across_processes() {
        let size = (SYNC_INTERVAL + 3 * u64::from(CHUNK)) as usize;
        let fx = Fixture::new(&[]);
        fx.set_len(size as u64);
        // Some data so that not every chunk is a hole.
        for i in 0..8u64 {
            fx.write_at(i * 30 * 1024 * 1024, &random(8192, i));
        }
        let mut source = fx.open();
        let plan = CyclePlan {
            epoch: Epoch(1),
            base_epoch: Epoch(0),
            resume_offset: 0,
        };
        source.begin_cycle(&plan, CHUNK).unwrap();
        let pool = BufferPool::bounded(CHUNK as usize, 1);
        let analyzer = source.analyzer();
        // Scan past the first sync point, then a bit more, then abort.
        let mut recorded = 0;
        while recorded < SYNC_INTERVAL + u64::from(CHUNK) {
            let raw = source.read_next(&pool).unwrap().unwrap();
            let analyzed = analyzer.analyze(raw).unwrap();
            source.record(&analyzed.record).unwrap();
            recorded = analyzed.record.scan_end;
        }
        // Nothing was aborted yet: in-process progress is the full record.
        assert_eq!(source.resumable_offset(Epoch(1)), recorded);
        assert_eq!(source.resumable_offset(Epoch(2)), 0);
        source.abort_scan();
        assert_eq!(source.resumable_offset(Epoch(1)), recorded);
        drop(source);

        // A new process sees the durable offset (abort synced everything).
        let mut source = fx.open();
        assert_eq!(source.resumable_offset(Epoch(1)), recorded);
        // Resuming beyond it is refused; resuming at it works and completes.
        let too_far = CyclePlan {
            resume_offset: recorded + 4096,
            ..plan
        };
        assert!(source.begin_cycle(&too_far, CHUNK).is_err());
        let resume = CyclePlan {
            resume_offset: SYNC_INTERVAL / 2,
            ..plan
        };
        source.begin_cycle(&resume, CHUNK).unwrap();
        // Resuming lowered the durable offset before any new read.
        drop(source);
        let mut source = fx.open();
        assert_eq!(source.resumable_offset(Epoch(1)), SYNC_INTERVAL / 2);
        source.begin_cycle(&resume, CHUNK).unwrap();
        while let Some(raw) = source.read_next(&pool).unwrap() {
            let analyzed = analyzer.analyze(raw).unwrap();
            source.record(&analyzed.record).unwrap();
        }
        let outcome = source.end_scan().unwrap();
        assert!(!outcome.fuzzy);
        source.commit_cycle(Epoch(1)).unwrap();

        // The stitched manifest is right: an incremental finds nothing.
        let (extents, _, _) = run_cycle(&mut source, 2, 1);
        assert!(extents.is_empty());
    }

    #[test]
    fn crash_between_rename_and_state_rolls_forward() {
        let fx = Fixture::new(&random(64 * 1024, 4));
        let mut source = fx.open();
        run_cycle(&mut source, 1, 0);
        drop(source);
        fs::rename(
            fx.state.join("manifest-1.partial"),
            fx.state.join("manifest-1.bin"),
        )
        .unwrap();
        let mut source = fx.open();
        assert_eq!(source.committed_epoch(), Epoch(1));
        let (extents, _, _) = run_cycle(&mut source, 2, 1);
        assert!(extents.is_empty());
    }

    #[test]
    fn write_during_scan_is_fuzzy() {
        let fx = Fixture::new(&random(256 * 1024, 5));
        let mut source = fx.open();
        let plan = CyclePlan {
            epoch: Epoch(1),
            base_epoch: Epoch(0),
            resume_offset: 0,
        };
        source.begin_cycle(&plan, CHUNK).unwrap();
        let pool = BufferPool::bounded(CHUNK as usize, 1);
        let analyzer = source.analyzer();
        let mut first = true;
        while let Some(raw) = source.read_next(&pool).unwrap() {
            if first {
                fx.write_at(200 * 1024, b"changed while reading");
                first = false;
            }
            let analyzed = analyzer.analyze(raw).unwrap();
            source.record(&analyzed.record).unwrap();
        }
        assert!(source.end_scan().unwrap().fuzzy);
        // A quiet scan is not fuzzy.
        let (_, outcome, _) = run_cycle(&mut source, 2, 0);
        assert!(!outcome.fuzzy);
    }

    #[test]
    fn truncation_during_scan_is_fuzzy_and_reads_zeroes() {
        let fx = Fixture::new(&random(256 * 1024, 6));
        let mut source = fx.open();
        let plan = CyclePlan {
            epoch: Epoch(1),
            base_epoch: Epoch(0),
            resume_offset: 0,
        };
        let info = source.begin_cycle(&plan, CHUNK).unwrap();
        assert_eq!(info.size, 256 * 1024);
        fx.set_len(100 * 1024);
        let pool = BufferPool::bounded(CHUNK as usize, 1);
        let analyzer = source.analyzer();
        let mut end = 0;
        while let Some(raw) = source.read_next(&pool).unwrap() {
            let analyzed = analyzer.analyze(raw).unwrap();
            for e in &analyzed.extents {
                assert!(e.offset + u64::from(e.length) <= 100 * 1024);
            }
            source.record(&analyzed.record).unwrap();
            end = analyzed.record.scan_end;
        }
        assert_eq!(end, 256 * 1024, "the scan covers the cycle's size");
        assert!(source.end_scan().unwrap().fuzzy);
    }

    #[test]
    fn rejects_non_images_and_damaged_base_forces_full_copy() {
        let fx = Fixture::new(&random(64 * 1024, 7));
        assert!(matches!(
            FileSource::open(fx.dir.path(), &fx.state),
            Err(SourceError::NotAnImage { .. })
        ));
        let mut source = fx.open();
        run_cycle(&mut source, 1, 0);
        source.commit_cycle(Epoch(1)).unwrap();
        drop(source);
        fs::write(fx.state.join("manifest-1.bin"), b"garbage").unwrap();
        let mut source = fx.open();
        assert_eq!(source.committed_epoch(), Epoch(0), "no usable base");
        let plan = CyclePlan {
            epoch: Epoch(2),
            base_epoch: Epoch(1),
            resume_offset: 0,
        };
        assert!(source.begin_cycle(&plan, CHUNK).is_err());
        let (extents, _, _) = run_cycle(&mut source, 2, 0);
        assert_eq!(extents.len(), 1);
    }

    #[test]
    fn split_dev_matches_glibc() {
        // makedev(8, 1) and makedev(259, 70000)
        assert_eq!(split_dev(0x801), (8, 1));
        let (major, minor) = (259u64, 70000u64);
        let dev = ((major & 0xfff) << 8)
            | ((major & !0xfff) << 32)
            | (minor & 0xff)
            | ((minor & !0xff) << 12);
        assert_eq!(split_dev(dev), (259, 70000));
    }
}
