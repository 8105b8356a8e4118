//! The file source's data, below every file of the source: [`FileSource`]
//! itself, its persisted state (`state.json`: the committed cycle and the one
//! in progress, changes found at rest), the in-memory side of the running
//! cycle, change fingerprints, and the small I/O helpers all steps share.

use std::cell::Cell;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use ferry_protocol::Epoch;
use serde::{Deserialize, Serialize};

use crate::source::manifest::Manifest;
use crate::source::SourceError;
use crate::sys::uring::BlockReader;

/// A raw image file or block device with manifest-based change detection.
#[derive(Debug)]
pub struct FileSource {
    pub(super) image_path: PathBuf,
    pub(super) state_dir: PathBuf,
    pub(super) image: File,
    pub(super) block_device: bool,
    pub(super) reader: BlockReader,
    pub(super) state: PersistedState,
    pub(super) base: Option<Manifest>,
    pub(super) cycle: Option<Cycle>,
    /// The size the last `info()` reported; a new cycle scans exactly this.
    pub(super) pinned_size: Cell<Option<u64>>,
    pub(super) accept_changes_at_rest: bool,
}

pub(super) fn io_error(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SourceError {
    let path = path.to_owned();
    move |source| SourceError::Io { op, path, source }
}

pub(super) fn remove_if_exists(path: &Path) -> Result<(), SourceError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(io_error("remove", path)(error)),
    }
}

pub(super) fn sync_dir(dir: &Path) -> Result<(), SourceError> {
    crate::sys::fs::sync_dir(dir).map_err(io_error("sync directory", dir))
}

/// A file's fingerprint counts as settled (usable for the at-rest check)
/// when its ctime was at least this old when it was taken: the kernel's
/// timestamps tick at jiffy granularity, so a write in the same tick as the
/// fingerprint could leave it unchanged.
const SETTLE_NS: i64 = 2_000_000_000;

/// What identifies "the image did not change" between two moments.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(super) enum Fingerprint {
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
    pub(super) fn settled_at(&self, taken_ns: i64) -> bool {
        match self {
            Fingerprint::File { ctime_ns, .. } => taken_ns.saturating_sub(*ctime_ns) >= SETTLE_NS,
            // Exact counters, bumped as each request completes.
            Fingerprint::BlockDevice { .. } => true,
        }
    }
}

pub(super) const STATE_FILE: &str = "state.json";
pub(super) const STATE_VERSION: u32 = 1;

/// Blocks found changed although nothing wrote the image (see the module
/// docs), persisted with the cycle so that a retry refuses again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct AtRest {
    pub(super) bytes: u64,
    pub(super) first_offset: u64,
}

/// A cycle as persisted in the state file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct InProgress {
    pub(super) epoch: u64,
    pub(super) base_epoch: u64,
    pub(super) image_size: u64,
    /// Every manifest entry below this offset is durable and valid.
    pub(super) durable_offset: u64,
    /// Taken before the first read; `None` = cannot tell (fuzzy).
    pub(super) fingerprint: Option<Fingerprint>,
    /// A change during the scan was already seen.
    pub(super) fuzzy_seen: bool,
    /// The scan reached the end and the whole manifest is durable.
    pub(super) scan_complete: bool,
    /// The post-scan fingerprint, when the scan was quiet and it had settled:
    /// becomes [`PersistedState::quiet_fingerprint`] at commit.
    #[serde(default)]
    pub(super) settled: Option<Fingerprint>,
    /// This cycle found changes at rest (refused until accepted).
    #[serde(default)]
    pub(super) at_rest: Option<AtRest>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct PersistedState {
    pub(super) version: u32,
    pub(super) committed_epoch: u64,
    pub(super) committed_size: u64,
    pub(super) in_progress: Option<InProgress>,
    /// The settled fingerprint of the committed cycle, if it was quiet.
    #[serde(default)]
    pub(super) quiet_fingerprint: Option<Fingerprint>,
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
pub(super) struct Cycle {
    pub(super) epoch: Epoch,
    pub(super) base_epoch: Epoch,
    pub(super) size: u64,
    pub(super) chunk_size: u64,
    pub(super) partial: Manifest,
    /// Next offset to read.
    pub(super) cursor: u64,
    /// Every entry below this offset was written (not necessarily synced).
    pub(super) recorded: u64,
    /// `recorded` at the last sync.
    pub(super) synced: u64,
    /// Every entry at or beyond this offset reads as zero in the partial file.
    pub(super) clean_from: u64,
    /// A read ended early: the image shrank during the scan.
    pub(super) short_read: bool,
    /// Between begin_cycle and end_scan/abort_scan.
    pub(super) scanning: bool,
    /// Bytes of blocks this process found different from a base entry,
    /// and the first of them.
    pub(super) base_changed_bytes: u64,
    pub(super) first_base_change: Option<u64>,
}
