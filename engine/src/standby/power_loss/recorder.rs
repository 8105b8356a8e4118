//! [`Recorder`]: appends an undo record to the power-loss log before each
//! change of the store's files, and a sync record after each completed
//! fsync, so [`super::simulate`] can later undo what a power cut would lose.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use super::error::PowerLossError;
use super::log::{parent, read_records, Piece, Record, KEPT, OLD_BYTES, RECORDS};

/// Bytes of a file read at a time while saving old contents.
const CHUNK: usize = 1 << 20;
/// Granularity at which all-zero old bytes are left out of the log.
const BLOCK: usize = 64 * 1024;

/// An open power-loss log. Every method appends under one lock, so records
/// of concurrent threads are whole lines in a consistent order.
#[derive(Debug)]
pub(crate) struct Recorder {
    dir: PathBuf,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    records: File,
    old_bytes: File,
    old_len: u64,
    /// Records in the log so far (the next record's number).
    count: u64,
    /// Kept files not yet needed by no roll-back: record number, the
    /// directories whose fsync the name change still waits for, the file.
    kept: Vec<(u64, Vec<PathBuf>, PathBuf)>,
}

fn absolute(path: &Path) -> io::Result<PathBuf> {
    std::path::absolute(path)
}

fn exists(path: &Path) -> io::Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

impl Recorder {
    /// Opens (creating) the log in `dir`, continuing after any records a
    /// killed process left (a cut-short last line is dropped).
    pub(crate) fn open(dir: &Path) -> Result<Self, PowerLossError> {
        let dir = absolute(dir).map_err(|e| PowerLossError::io("resolve", dir, e))?;
        let kept = dir.join(KEPT);
        fs::create_dir_all(&kept).map_err(|e| PowerLossError::io("create", &kept, e))?;
        let count = read_records(&dir)?.len() as u64;
        let records_path = dir.join(RECORDS);
        let records = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&records_path)
            .map_err(|e| PowerLossError::io("open", &records_path, e))?;
        let text =
            fs::read(&records_path).map_err(|e| PowerLossError::io("read", &records_path, e))?;
        let complete = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        records
            .set_len(complete as u64)
            .map_err(|e| PowerLossError::io("cut partial record", &records_path, e))?;
        let old_path = dir.join(OLD_BYTES);
        let old_bytes = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&old_path)
            .map_err(|e| PowerLossError::io("open", &old_path, e))?;
        let old_len = old_bytes
            .metadata()
            .map_err(|e| PowerLossError::io("stat", &old_path, e))?
            .len();
        Ok(Self {
            dir,
            state: Mutex::new(State {
                records,
                old_bytes,
                old_len,
                count,
                kept: Vec::new(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        crate::sync_util::lock(&self.state)
    }

    /// Before `[offset, offset + len)` of `file` is written.
    pub(crate) fn before_write(
        &self,
        file: &File,
        path: &Path,
        offset: u64,
        len: u64,
    ) -> io::Result<()> {
        self.before_range(file, path, offset, len, true)
    }

    /// Before `[offset, offset + len)` of `file` is zeroed (hole punch).
    pub(crate) fn before_zero(
        &self,
        file: &File,
        path: &Path,
        offset: u64,
        len: u64,
    ) -> io::Result<()> {
        self.before_range(file, path, offset, len, false)
    }

    fn before_range(
        &self,
        file: &File,
        path: &Path,
        offset: u64,
        len: u64,
        write: bool,
    ) -> io::Result<()> {
        let meta = file.metadata()?;
        let old_size = meta.len();
        let mut state = self.lock();
        let end = offset.saturating_add(len).min(old_size);
        let pieces = save_old_bytes(&mut state, file, offset, end)?;
        let record = Record::Data {
            dev: meta.dev(),
            ino: meta.ino(),
            path: absolute(path)?,
            offset,
            len,
            old_size,
            pieces,
            write,
        };
        append(&mut state, &record)
    }

    /// Before `file` is truncated or extended to `new_len` bytes.
    pub(crate) fn before_set_len(&self, file: &File, path: &Path, new_len: u64) -> io::Result<()> {
        let meta = file.metadata()?;
        let old_size = meta.len();
        let mut state = self.lock();
        let offset = new_len.min(old_size);
        let pieces = save_old_bytes(&mut state, file, offset, old_size)?;
        let record = Record::Data {
            dev: meta.dev(),
            ino: meta.ino(),
            path: absolute(path)?,
            offset,
            len: old_size - offset,
            old_size,
            pieces,
            write: false,
        };
        append(&mut state, &record)
    }

    /// Before an fsync starts: the number the sync record will cover up to.
    pub(crate) fn sync_start(&self) -> u64 {
        self.lock().count
    }

    /// After an fsync/fdatasync of `file`, started at `upto`, completed.
    pub(crate) fn synced(&self, file: &File, path: &Path, upto: u64) -> io::Result<()> {
        let meta = file.metadata()?;
        let record = Record::Synced {
            dev: meta.dev(),
            ino: meta.ino(),
            path: absolute(path)?,
            upto,
        };
        append(&mut self.lock(), &record)
    }

    /// After an fsync of directory `dir`, started at `upto`, completed.
    /// Kept files whose name change this made durable are deleted (no
    /// roll-back can need them), so a long recording does not pile up
    /// every removed journal.
    pub(crate) fn dir_synced(&self, dir: &Path, upto: u64) -> io::Result<()> {
        let dir = absolute(dir)?;
        let mut state = self.lock();
        append(
            &mut state,
            &Record::DirSynced {
                dir: dir.clone(),
                upto,
            },
        )?;
        let mut done = Vec::new();
        state.kept.retain_mut(|(n, waiting, kept)| {
            if *n < upto {
                waiting.retain(|w| *w != dir);
            }
            if waiting.is_empty() {
                done.push(std::mem::take(kept));
                false
            } else {
                true
            }
        });
        drop(state);
        for kept in done {
            let meta = fs::symlink_metadata(&kept)?;
            if meta.is_dir() {
                fs::remove_dir_all(&kept)?;
            } else {
                fs::remove_file(&kept)?;
            }
        }
        Ok(())
    }

    /// Before the name `path` (which does not exist) is created.
    pub(crate) fn before_create(&self, path: &Path, dir: bool) -> io::Result<()> {
        let record = Record::Created {
            path: absolute(path)?,
            dir,
        };
        append(&mut self.lock(), &record)
    }

    /// Renames `from` to `to`, keeping the file `to` named before (if any)
    /// by a hard link in the log's `kept/`.
    pub(crate) fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let (from, to) = (absolute(from)?, absolute(to)?);
        let mut state = self.lock();
        let kept = if exists(&to)? {
            let kept = self.kept_path(&state, &to);
            // A copy where a hard link cannot be made (another file system).
            if fs::hard_link(&to, &kept).is_err() {
                fs::copy(&to, &kept)?;
            }
            let mut waiting = vec![parent(&from).to_path_buf(), parent(&to).to_path_buf()];
            waiting.dedup();
            let n = state.count;
            state.kept.push((n, waiting, kept.clone()));
            Some(kept)
        } else {
            None
        };
        append(
            &mut state,
            &Record::Renamed {
                from: from.clone(),
                to: to.clone(),
                kept,
            },
        )?;
        fs::rename(&from, &to)
    }

    /// Removes the name `path` (a file or a whole directory) by moving it
    /// into the log's `kept/`. `NotFound` when it does not exist.
    pub(crate) fn remove(&self, path: &Path) -> io::Result<()> {
        let path = absolute(path)?;
        let mut state = self.lock();
        let meta = fs::symlink_metadata(&path)?;
        let kept = self.kept_path(&state, &path);
        append(
            &mut state,
            &Record::Removed {
                path: path.clone(),
                kept: kept.clone(),
            },
        )?;
        match fs::rename(&path, &kept) {
            Ok(()) => {
                let n = state.count - 1;
                state
                    .kept
                    .push((n, vec![parent(&path).to_path_buf()], kept));
                Ok(())
            }
            // The log is on another file system: remove for real; the
            // record's missing kept file makes the roll-back skip it (the
            // removal then counts as durable).
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                if meta.is_dir() {
                    fs::remove_dir_all(&path)
                } else {
                    fs::remove_file(&path)
                }
            }
            Err(e) => Err(e),
        }
    }

    fn kept_path(&self, state: &State, path: &Path) -> PathBuf {
        let name = path
            .file_name()
            .map_or_else(|| "unnamed".into(), |n| n.to_string_lossy().into_owned());
        self.dir.join(KEPT).join(format!("{}-{name}", state.count))
    }
}

fn append(state: &mut State, record: &Record) -> io::Result<()> {
    let mut line = serde_json::to_vec(record).map_err(io::Error::other)?;
    line.push(b'\n');
    state.records.write_all(&line)?;
    state.count += 1;
    Ok(())
}

/// Copies the non-zero 64 KiB blocks of `[start, end)` of `file` into the
/// old-bytes file; returns where they went.
fn save_old_bytes(state: &mut State, file: &File, start: u64, end: u64) -> io::Result<Vec<Piece>> {
    let mut pieces: Vec<Piece> = Vec::new();
    let mut buf = vec![0u8; CHUNK];
    let mut pos = start;
    while pos < end {
        let n = usize::try_from(end - pos).unwrap_or(CHUNK).min(CHUNK);
        let chunk = &mut buf[..n];
        file.read_exact_at(chunk, pos)?;
        for (i, block) in chunk.chunks(BLOCK).enumerate() {
            if block.iter().all(|b| *b == 0) {
                continue;
            }
            let offset = pos + (i * BLOCK) as u64;
            state.old_bytes.write_all_at(block, state.old_len)?;
            match pieces.last_mut() {
                Some(last)
                    if last.offset + last.len == offset && last.at + last.len == state.old_len =>
                {
                    last.len += block.len() as u64;
                }
                _ => pieces.push(Piece {
                    offset,
                    at: state.old_len,
                    len: block.len() as u64,
                }),
            }
            state.old_len += block.len() as u64;
        }
        pos += n as u64;
    }
    Ok(pieces)
}
