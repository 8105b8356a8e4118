//! [`DiffSource`]: replicate a series of `rbd export-diff` files (`diff:DIR`).
//!
//! The directory holds diff files (`*.diff`, v1 or single-diff v2 streams)
//! applied in name order: the first must be a whole image (no from-snapshot),
//! and each later one must start at the snapshot the previous one ended at
//! (when both name one). Each cycle sends the next file not yet committed on
//! the standby; the standby's recovery point is then exactly the image the
//! file's to-snapshot describes. The stream is parsed by the same sans-IO
//! parser as `ferry import-diff`, so malformed files are refused the same way
//! (before anything is committed on the standby).
//!
//! A diff file never changes once written, so a cycle is never fuzzy and can
//! resume at any offset. Records must come in ascending offset order (what
//! `rbd export-diff` writes); a file that goes backwards is refused.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use ferry_protocol::{Epoch, ExtentKind};
use serde::{Deserialize, Serialize};

use super::{
    BufferPool, ChunkAnalyzer, ChunkBody, ChunkRecord, CyclePlan, ExtentSource, ImageInfo,
    ListedExtentsAnalyzer, RawChunk, ScanOutcome, SourceError,
};
use crate::payload_codec::PlainExtent;
use crate::rbddiff::{Event, Reader};
use crate::standby::{read_checksummed, write_checksummed};

const STATE_FILE: &str = "diff-source.json";
const BLOCK_SIZE: u32 = 4096;
/// Extents per chunk at most (keeps batches reasonable for tiny records).
const MAX_EXTENTS_PER_CHUNK: usize = 4096;
/// Longest zero extent handed on (extent lengths are u32).
const MAX_ZERO_EXTENT: u64 = 1 << 30;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Applied {
    epoch: u64,
    file: String,
    to_snap: Option<String>,
    size: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct CycleRef {
    epoch: u64,
    file: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
struct DiffState {
    committed: Option<Applied>,
    cycle: Option<CycleRef>,
}

/// What a diff file's header says.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Header {
    from_snap: Option<String>,
    to_snap: Option<String>,
    size: u64,
}

struct Active {
    reader: Reader<BufReader<File>>,
    file: String,
    size: u64,
    chunk_size: u64,
    cursor: u64,
    resume: u64,
    /// End of the previous record: records must not go backwards.
    last_end: u64,
    done: bool,
}

/// A directory of diff files as a replication source.
pub struct DiffSource {
    dir: PathBuf,
    state_dir: PathBuf,
    state: DiffState,
    active: Option<Active>,
}

fn io_error(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SourceError {
    let path = path.to_path_buf();
    move |source| SourceError::Io { op, path, source }
}

fn bad_diff(path: &Path, detail: impl std::fmt::Display) -> SourceError {
    SourceError::BadDiff {
        path: path.to_path_buf(),
        reason: detail.to_string(),
    }
}

impl DiffSource {
    /// Opens the diff directory `dir` with its bookkeeping in `state_dir`.
    pub fn open(dir: &Path, state_dir: &Path) -> Result<Self, SourceError> {
        if !dir.is_dir() {
            return Err(SourceError::NotAnImage {
                path: dir.to_path_buf(),
            });
        }
        std::fs::create_dir_all(state_dir)
            .map_err(io_error("create state directory", state_dir))?;
        let state = read_checksummed::<DiffState>(&state_dir.join(STATE_FILE))
            .map_err(|e| SourceError::Store(Box::new(e)))?
            .unwrap_or_default();
        Ok(Self {
            dir: dir.to_path_buf(),
            state_dir: state_dir.to_path_buf(),
            state,
            active: None,
        })
    }

    fn save(&mut self, state: DiffState) -> Result<(), SourceError> {
        write_checksummed(&self.state_dir.join(STATE_FILE), &state)
            .map_err(|e| SourceError::Store(Box::new(e)))?;
        self.state = state;
        Ok(())
    }

    /// The diff files in application order.
    fn files(&self) -> Result<Vec<String>, SourceError> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io_error("list", &self.dir))? {
            let entry = entry.map_err(io_error("list", &self.dir))?;
            if let Some(name) = entry.file_name().to_str() {
                if name.ends_with(".diff") {
                    names.push(name.to_owned());
                }
            }
        }
        names.sort();
        Ok(names)
    }

    /// The file the next cycle sends: the in-progress one, else the first
    /// after the committed one.
    fn next_file(&self) -> Result<Option<String>, SourceError> {
        if let Some(cycle) = &self.state.cycle {
            return Ok(Some(cycle.file.clone()));
        }
        let files = self.files()?;
        Ok(match &self.state.committed {
            None => files.into_iter().next(),
            Some(done) => files.into_iter().find(|f| *f > done.file),
        })
    }

    fn header(&self, file: &str) -> Result<Header, SourceError> {
        let path = self.dir.join(file);
        let f = File::open(&path).map_err(io_error("open diff", &path))?;
        let mut reader = Reader::new(BufReader::new(f));
        let mut header = Header {
            from_snap: None,
            to_snap: None,
            size: 0,
        };
        loop {
            let piece = reader.next_piece().map_err(|e| bad_diff(&path, e))?;
            match piece.map(|p| p.event.clone()) {
                Some(Event::FromSnap(s)) => header.from_snap = Some(s),
                Some(Event::ToSnap(s)) => header.to_snap = Some(s),
                Some(Event::Size(size)) => {
                    header.size = size;
                    return Ok(header);
                }
                Some(Event::DiffBegin { index }) if index > 0 => {
                    return Err(bad_diff(
                        &path,
                        "holds several diffs; split it into one file per diff",
                    ))
                }
                Some(_) => {}
                None => return Err(bad_diff(&path, "ends before its size record")),
            }
        }
    }
}

impl ExtentSource for DiffSource {
    fn info(&self) -> Result<ImageInfo, SourceError> {
        let size = match self.next_file()? {
            Some(file) => self.header(&file)?.size,
            None => self.state.committed.as_ref().map_or(0, |c| c.size),
        };
        Ok(ImageInfo {
            size,
            block_size: BLOCK_SIZE,
        })
    }

    fn committed_epoch(&self) -> Epoch {
        Epoch(self.state.committed.as_ref().map_or(0, |c| c.epoch))
    }

    fn resumable_offset(&self, epoch: Epoch) -> u64 {
        match &self.state.cycle {
            Some(c) if c.epoch == epoch.get() => u64::MAX,
            _ => 0,
        }
    }

    fn begin_cycle(&mut self, plan: &CyclePlan, chunk_size: u32) -> Result<ImageInfo, SourceError> {
        let committed = self.committed_epoch();
        let bad = |reason| SourceError::bad_plan(plan, committed, reason);
        if plan.base_epoch != Epoch(0) && plan.base_epoch != committed {
            return Err(bad("the base is not the last applied diff"));
        }
        if plan.base_epoch == Epoch(0) && committed != Epoch(0) {
            return Err(bad(
                "the standby has no copy to apply the next diff to; replicate the first (full) diff again into a new standby image",
            ));
        }
        if let Some(c) = &self.state.cycle {
            if c.epoch != plan.epoch.get() {
                let mut state = self.state.clone();
                state.cycle = None;
                self.save(state)?;
            }
        }
        let Some(file) = self.next_file()? else {
            return Err(bad("no new diff file to send"));
        };
        let header = self.header(&file)?;
        let path = self.dir.join(&file);
        match (&self.state.committed, &header.from_snap) {
            (None, Some(from)) => {
                return Err(bad_diff(
                    &path,
                    format!("starts at snapshot {from:?}, but nothing was replicated yet: the first diff must hold the whole image (rbd export-diff without --from-snap)"),
                ))
            }
            (Some(done), Some(from)) if done.to_snap.as_ref().is_some_and(|t| t != from) => {
                return Err(bad_diff(
                    &path,
                    format!("starts at snapshot {from:?}, but the last replicated diff {} ended at {:?}", done.file, done.to_snap),
                ))
            }
            _ => {}
        }
        let mut state = self.state.clone();
        state.cycle = Some(CycleRef {
            epoch: plan.epoch.get(),
            file: file.clone(),
        });
        self.save(state)?;
        let f = File::open(&path).map_err(io_error("open diff", &path))?;
        self.active = Some(Active {
            reader: Reader::new(BufReader::new(f)),
            file,
            size: header.size,
            chunk_size: u64::from(chunk_size.max(BLOCK_SIZE)),
            cursor: plan.resume_offset.min(header.size),
            resume: plan.resume_offset.min(header.size),
            last_end: 0,
            done: false,
        });
        Ok(ImageInfo {
            size: header.size,
            block_size: BLOCK_SIZE,
        })
    }

    fn read_next(&mut self, _pool: &BufferPool) -> Result<Option<RawChunk>, SourceError> {
        let dir = self.dir.clone();
        let Some(active) = self.active.as_mut() else {
            return Err(SourceError::Misuse {
                reason: "read_next without begin_cycle",
            });
        };
        if active.done {
            return Ok(None);
        }
        let path = dir.join(&active.file);
        let scan_start = active.cursor;
        let mut extents: Vec<PlainExtent> = Vec::new();
        let mut data_bytes = 0u64;
        loop {
            if data_bytes >= active.chunk_size || extents.len() >= MAX_EXTENTS_PER_CHUNK {
                break;
            }
            let Some(piece) = active.reader.next_piece().map_err(|e| bad_diff(&path, e))? else {
                active.done = true;
                break;
            };
            let (offset, length, data) = match *piece.event {
                Event::Data { offset, len } => (offset, len as u64, Some(piece.data)),
                Event::Zero { offset, length } => (offset, length, None),
                Event::Size(size) if size != active.size => {
                    return Err(bad_diff(&path, "changes the image size twice"))
                }
                Event::End => {
                    active.done = true;
                    break;
                }
                _ => continue,
            };
            if offset < active.last_end {
                return Err(bad_diff(
                    &path,
                    format!(
                        "record at offset {offset} comes after one ending at {}: ferry streams diffs whose records ascend (as rbd export-diff writes them); use ferry import-diff for this one",
                        active.last_end
                    ),
                ));
            }
            let end = offset.saturating_add(length).min(active.size);
            active.last_end = offset.saturating_add(length);
            // Skip what a resumed cycle already delivered.
            let start = offset.max(active.resume);
            if end <= start {
                active.cursor = active.cursor.max(end);
                continue;
            }
            match data {
                Some(bytes) => {
                    let skip = usize::try_from(start - offset).unwrap_or(usize::MAX);
                    let take = usize::try_from(end - start).unwrap_or(0);
                    let slice = bytes
                        .get(skip..skip + take)
                        .ok_or_else(|| bad_diff(&path, "data record shorter than announced"))?;
                    extents.push(PlainExtent {
                        offset: start,
                        length: u32::try_from(take)
                            .map_err(|_| bad_diff(&path, "data piece too long"))?,
                        kind: ExtentKind::Data,
                        data: Some(Bytes::copy_from_slice(slice)),
                    });
                    data_bytes += take as u64;
                }
                None => {
                    let mut pos = start;
                    while pos < end {
                        let len = MAX_ZERO_EXTENT.min(end - pos);
                        extents.push(PlainExtent {
                            offset: pos,
                            length: len as u32,
                            kind: ExtentKind::Zero,
                            data: None,
                        });
                        pos += len;
                    }
                }
            }
            active.cursor = end;
        }
        let scan_end = if active.done {
            active.size.max(active.cursor)
        } else {
            active.cursor
        };
        if active.done && extents.is_empty() && scan_start >= scan_end {
            return Ok(None);
        }
        active.cursor = scan_end;
        Ok(Some(RawChunk {
            scan_start,
            scan_end,
            body: ChunkBody::Extents(extents),
            base_hashes: Vec::new(),
        }))
    }

    fn analyzer(&self) -> Arc<dyn ChunkAnalyzer> {
        Arc::new(ListedExtentsAnalyzer)
    }

    fn record(&mut self, _record: &ChunkRecord) -> Result<(), SourceError> {
        Ok(())
    }

    fn end_scan(&mut self) -> Result<ScanOutcome, SourceError> {
        self.active = None;
        Ok(ScanOutcome { fuzzy: false })
    }

    fn abort_scan(&mut self) {
        self.active = None;
    }

    fn commit_cycle(&mut self, epoch: Epoch) -> Result<(), SourceError> {
        let Some(cycle) = self.state.cycle.clone().filter(|c| c.epoch == epoch.get()) else {
            return Err(SourceError::NotCommittable {
                epoch,
                reason: "no cycle of this epoch is in progress",
            });
        };
        let header = self.header(&cycle.file)?;
        self.save(DiffState {
            committed: Some(Applied {
                epoch: epoch.get(),
                file: cycle.file,
                to_snap: header.to_snap,
                size: header.size,
            }),
            cycle: None,
        })?;
        self.active = None;
        Ok(())
    }

    fn discard_cycle(&mut self) -> Result<(), SourceError> {
        self.active = None;
        let mut state = self.state.clone();
        state.cycle = None;
        self.save(state)
    }
}
