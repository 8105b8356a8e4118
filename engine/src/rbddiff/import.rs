//! `import-diff` into a raw image file or block device, atomically.
//!
//! Guarantee: after [`import_diff`] returns an error — malformed input, a
//! snapshot mismatch, an I/O error mid-apply — the target is byte-identical
//! to what it was before (same size, same contents), and the same holds
//! after a crash at any point once the next `import_diff` (or [`recover`])
//! has run on that target. How:
//!
//! 1. Input from a pipe is first spooled to `TARGET.ferry-spool` (disk, not
//!    memory); a diff file is read in place.
//! 2. Pass 1 parses the whole stream, checking every rule (banner, record
//!    lengths, ranges within the declared size, ordering, the end record,
//!    no trailing bytes) and the snapshot chain, and meanwhile copies the
//!    old contents of every range the diff will touch into the undo journal
//!    (see [`super::undo`]). Nothing is written to the target in this pass; a
//!    failure drops the journal and leaves the target untouched.
//! 3. The journal is fsynced and sealed, pass 2 applies the stream, the
//!    target is fsynced, and removing the journal commits. A failure (or a
//!    crash) in pass 2 is rolled back from the journal.
//!
//! A target that does not exist is created as `TARGET.ferry-new`, filled,
//! fsynced and renamed into place, so it either appears complete or not at
//! all. Costs: the old contents of changed ranges are read and written once
//! more (holes and zero pieces are journaled without data).
//!
//! Snapshots: a file has none, so ferry records the diff's to-snapshot in
//! `TARGET.ferry-snap` after a successful import. A diff with a from-snapshot
//! `F` is applied only when that file says `F` (the target is at the state
//! the diff starts from), unless the check is disabled. A diff without a
//! to-snapshot removes the file.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::parser::{Event, Format};
use super::reader::{ReadError, Reader};
use super::undo::{
    self, is_block_device, target_len, with_suffix, zero_fill, UndoError, UndoWriter,
};
use crate::durable::{parent_dir, write_durably, DurableStep};
use crate::sys::fs::{sync_dir, try_lock_exclusive};

/// Zero detection granularity when applying write payloads to a file:
/// aligned all-zero blocks of this size are punched instead of written.
pub const ZERO_BLOCK: u64 = 4096;

/// Where the diff comes from.
pub enum DiffInput<'a> {
    /// A diff file, read twice in place.
    Path(&'a Path),
    /// A stream (stdin): spooled next to the target first.
    Stream(&'a mut dyn Read),
}

/// Import behaviour.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Require `TARGET.ferry-snap` to name the diff's from-snapshot.
    pub check_snapshots: bool,
    /// Create the target when it does not exist.
    pub create: bool,
}

impl Default for ImportOptions {
    fn default() -> Self {
        Self {
            check_snapshots: true,
            create: true,
        }
    }
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ImportReport {
    /// Stream format (`rbd diff v1`, …).
    pub format: String,
    /// Diffs applied (more than one only for `rbd image v2`).
    pub diffs: u64,
    /// From-snapshot of the first diff.
    pub from_snap: Option<String>,
    /// To-snapshot of the last diff.
    pub to_snap: Option<String>,
    /// Target size before (None when the target was created).
    pub old_size: Option<u64>,
    /// Target size after.
    pub new_size: u64,
    /// Payload bytes written (zero blocks inside payloads excluded).
    pub bytes_written: u64,
    /// Bytes made zero (zero records and zero blocks inside payloads).
    pub bytes_zeroed: u64,
    /// Write and zero records applied.
    pub records: u64,
    /// Unknown v2 records skipped.
    pub unknown_records: u64,
    /// Undo journal size in bytes.
    pub undo_bytes: u64,
    /// Whether the target was created.
    pub created: bool,
    /// Whether an interrupted earlier import was rolled back first.
    pub recovered: bool,
}

/// Why an import failed. Unless stated otherwise the target is unchanged.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// An I/O error.
    #[error("{op} {}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The diff is malformed (or could not be read).
    #[error("invalid diff {input}; target {} left unchanged", target.display())]
    Diff {
        /// The diff ("-" for stdin).
        input: String,
        /// The target.
        target: PathBuf,
        /// The problem, with its stream offset.
        #[source]
        source: ReadError,
    },
    /// The target does not exist and creation was not allowed.
    #[error("target {} does not exist", path.display())]
    NotFound {
        /// The target.
        path: PathBuf,
    },
    /// Another import holds the target.
    #[error("target {} is busy: another import holds its lock", path.display())]
    Busy {
        /// The target.
        path: PathBuf,
    },
    /// The diff starts from a snapshot the target is not at.
    #[error("diff starts from snapshot {from:?} but target {} is at {}; target left unchanged (pass --no-snap-check if you know the target matches)", path.display(), at.as_deref().map_or("no recorded snapshot".to_owned(), |s| format!("{s:?}")))]
    SnapshotMismatch {
        /// The target.
        path: PathBuf,
        /// The diff's from-snapshot.
        from: String,
        /// The target's recorded snapshot.
        at: Option<String>,
    },
    /// A block device cannot be resized.
    #[error("diff sets the image size to {diff_size} but block device {} has {device_size} bytes", path.display())]
    DeviceSize {
        /// The device.
        path: PathBuf,
        /// Its size.
        device_size: u64,
        /// What the diff wants.
        diff_size: u64,
    },
    /// The undo journal failed before the target was touched, or an old
    /// journal could not be replayed.
    #[error("undo journal of {}", path.display())]
    Undo {
        /// The target.
        path: PathBuf,
        /// The cause.
        #[source]
        source: UndoError,
    },
    /// Applying failed and the target was rolled back to its old contents.
    #[error("applying the diff to {} failed; the target was rolled back to its previous contents", path.display())]
    RolledBack {
        /// The target.
        path: PathBuf,
        /// Why applying failed.
        #[source]
        source: Box<ImportError>,
    },
    /// Applying failed and so did the rollback: the sealed journal is kept
    /// and the next import (or [`recover`]) replays it.
    #[error("applying the diff to {} failed ({apply}) and the rollback failed too; run import-diff again to replay the undo journal {}", path.display(), undo::journal_path(path).display())]
    RollbackFailed {
        /// The target.
        path: PathBuf,
        /// Why applying failed.
        apply: String,
        /// Why the rollback failed.
        #[source]
        source: UndoError,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ImportError + 'a {
    move |source| ImportError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// `TARGET.ferry-snap`: the snapshot the target is at (see the module docs).
pub fn snap_state_path(target: &Path) -> PathBuf {
    with_suffix(target, ".ferry-snap")
}

/// The snapshot recorded for `target`, if any.
pub fn read_snap_state(target: &Path) -> Result<Option<String>, ImportError> {
    let path = snap_state_path(target);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(
            String::from_utf8_lossy(&bytes)
                .trim_end_matches('\n')
                .to_owned(),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("reading snapshot state", &path)(e)),
    }
}

fn write_snap_state(target: &Path, snap: Option<&str>) -> Result<(), ImportError> {
    let path = snap_state_path(target);
    match snap {
        Some(name) => {
            let tmp = with_suffix(&path, ".tmp");
            let dir = parent_dir(&path);
            return write_durably(&tmp, &path, format!("{name}\n").as_bytes()).map_err(|e| match e
                .step
            {
                DurableStep::Create | DurableStep::Write | DurableStep::Sync => {
                    io_err("writing snapshot state", &tmp)(e.source)
                }
                DurableStep::Rename => io_err("writing snapshot state", &path)(e.source),
                DurableStep::SyncDir => io_err("fsyncing directory", dir)(e.source),
            });
        }
        None => match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("removing snapshot state", &path)(e)),
        },
    }
    let dir = parent_dir(&path);
    sync_dir(dir).map_err(io_err("fsyncing directory", dir))
}

/// Rolls back an interrupted import of `target` if its undo journal says
/// one happened; returns whether it did.
pub fn recover(target: &Path) -> Result<bool, ImportError> {
    let file = match OpenOptions::new().read(true).write(true).open(target) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_err("opening target", target)(e)),
    };
    lock(&file, target)?;
    let rolled = undo::recover(target, &file).map_err(|source| ImportError::Undo {
        path: target.to_path_buf(),
        source,
    })?;
    Ok(rolled.is_some())
}

fn lock(file: &File, path: &Path) -> Result<(), ImportError> {
    if try_lock_exclusive(file).map_err(io_err("locking target", path))? {
        Ok(())
    } else {
        Err(ImportError::Busy {
            path: path.to_path_buf(),
        })
    }
}

/// Removes a temporary file when dropped.
struct TempPath(Option<PathBuf>);

impl Drop for TempPath {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Imports one diff stream into `target`; see the module docs for the
/// atomicity and crash-safety guarantee.
pub fn import_diff(
    input: DiffInput<'_>,
    target: &Path,
    opts: &ImportOptions,
) -> Result<ImportReport, ImportError> {
    let mut report = ImportReport::default();
    // Open (and lock) or prepare to create the target.
    let existing = match OpenOptions::new().read(true).write(true).open(target) {
        Ok(f) => Some(f),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err("opening target", target)(e)),
    };
    let new_path = with_suffix(target, ".ferry-new");
    let mut new_guard = TempPath(None);
    let (file, work_path) = open_target(existing, target, opts, &mut report, &mut new_guard)?;
    let block_device = is_block_device(&file).map_err(io_err("inspecting target", target))?;
    let old_size = target_len(&file).map_err(io_err("sizing target", target))?;
    if !report.created {
        report.old_size = Some(old_size);
    }

    // Spool a stream so it can be read twice.
    let mut spool_guard = TempPath(None);
    let (diff_path, input_name) = match input {
        DiffInput::Path(p) => (p.to_path_buf(), p.display().to_string()),
        DiffInput::Stream(r) => {
            let spool = with_suffix(target, ".ferry-spool");
            let mut f = File::create(&spool).map_err(io_err("creating spool file", &spool))?;
            spool_guard.0 = Some(spool.clone());
            io::copy(r, &mut f).map_err(io_err("spooling the diff from stdin to", &spool))?;
            (spool, "-".to_owned())
        }
    };
    let open_diff = || File::open(&diff_path).map_err(io_err("opening diff", &diff_path));
    let diff_err = |source| ImportError::Diff {
        input: input_name.clone(),
        target: target.to_path_buf(),
        source,
    };

    // Pass 1: validate everything and journal the old contents.
    let mut journal = if report.created {
        None
    } else {
        Some(
            UndoWriter::create(target, old_size, block_device).map_err(|source| {
                ImportError::Undo {
                    path: target.to_path_buf(),
                    source,
                }
            })?,
        )
    };
    let pass1 = validate_and_journal(
        open_diff()?,
        &file,
        target,
        old_size,
        block_device,
        journal.as_mut(),
        opts,
        &mut report,
    );
    let pass1 = match pass1 {
        Ok(()) => Ok(()),
        Err(Pass1Error::Read(e)) => Err(diff_err(e)),
        Err(Pass1Error::Other(e)) => Err(e),
    };
    if let Err(e) = pass1 {
        if let Some(j) = journal {
            j.abandon();
        }
        return Err(e);
    }
    if let Some(j) = journal {
        report.undo_bytes = j.bytes();
        j.seal().map_err(|source| ImportError::Undo {
            path: target.to_path_buf(),
            source,
        })?;
    }

    // Pass 2: apply; roll back on any failure.
    let applied = apply(open_diff()?, &file, &work_path, block_device, &mut report)
        .map_err(|e| match e {
            Pass1Error::Read(e) => diff_err(e),
            Pass1Error::Other(e) => e,
        })
        .and_then(|()| {
            file.sync_all()
                .map_err(io_err("fsyncing target", &work_path))
        });
    if let Err(e) = applied {
        if report.created {
            // The guard removes TARGET.ferry-new.
            return Err(e);
        }
        return Err(roll_back(target, &file, e));
    }

    // Commit.
    if report.created {
        std::fs::rename(&new_path, target).map_err(io_err("renaming new target", target))?;
        new_guard.0 = None;
        let dir = parent_dir(target);
        sync_dir(dir).map_err(io_err("fsyncing directory", dir))?;
    } else {
        undo::commit(target).map_err(|source| ImportError::Undo {
            path: target.to_path_buf(),
            source,
        })?;
    }
    report.new_size = target_len(&file).map_err(io_err("sizing target", target))?;
    write_snap_state(target, report.to_snap.as_deref())?;
    Ok(report)
}

/// Locks the existing `target` (rolling back an import a crash
/// interrupted) or, with `opts.create`, creates and locks `TARGET.ferry-new`
/// (removed by `new_guard` unless the import commits). Returns the file and
/// the path written.
fn open_target(
    existing: Option<File>,
    target: &Path,
    opts: &ImportOptions,
    report: &mut ImportReport,
    new_guard: &mut TempPath,
) -> Result<(File, PathBuf), ImportError> {
    let new_path = with_suffix(target, ".ferry-new");
    match existing {
        Some(f) => {
            lock(&f, target)?;
            report.recovered = undo::recover(target, &f)
                .map_err(|source| ImportError::Undo {
                    path: target.to_path_buf(),
                    source,
                })?
                .is_some();
            Ok((f, target.to_path_buf()))
        }
        None if opts.create => {
            // Truncate only once locked: another import may be using it.
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&new_path)
                .map_err(io_err("creating target", &new_path))?;
            lock(&f, &new_path)?;
            f.set_len(0)
                .map_err(io_err("truncating new target", &new_path))?;
            new_guard.0 = Some(new_path.clone());
            report.created = true;
            Ok((f, new_path))
        }
        None => Err(ImportError::NotFound {
            path: target.to_path_buf(),
        }),
    }
}

/// Pass 2 failed with `e`: the undo log puts the old contents back.
fn roll_back(target: &Path, file: &File, e: ImportError) -> ImportError {
    match undo::recover(target, file) {
        Ok(_) => ImportError::RolledBack {
            path: target.to_path_buf(),
            source: Box::new(e),
        },
        Err(source) => ImportError::RollbackFailed {
            path: target.to_path_buf(),
            apply: e.to_string(),
            source,
        },
    }
}

enum Pass1Error {
    Read(ReadError),
    Other(ImportError),
}

impl From<ReadError> for Pass1Error {
    fn from(e: ReadError) -> Self {
        Pass1Error::Read(e)
    }
}

impl From<ImportError> for Pass1Error {
    fn from(e: ImportError) -> Self {
        Pass1Error::Other(e)
    }
}

#[allow(clippy::too_many_arguments)]
fn validate_and_journal(
    diff: File,
    file: &File,
    target: &Path,
    old_size: u64,
    block_device: bool,
    mut journal: Option<&mut UndoWriter>,
    opts: &ImportOptions,
    report: &mut ImportReport,
) -> Result<(), Pass1Error> {
    let undo_err = |source| ImportError::Undo {
        path: target.to_path_buf(),
        source,
    };
    let mut reader = Reader::new(diff);
    let mut diff_index = 0u64;
    // Lowest start of a shrink already journaled.
    let mut shrink_saved = old_size;
    let mut to_snap = None;
    while let Some(piece) = reader.next_piece()? {
        match piece.event {
            Event::Banner(f) => {
                report.format = f.to_string();
            }
            Event::DiffBegin { index } => {
                diff_index = *index;
                to_snap = None;
            }
            Event::FromSnap(name) if diff_index == 0 => {
                report.from_snap = Some(name.clone());
                if opts.check_snapshots {
                    let at = if report.created {
                        None
                    } else {
                        read_snap_state(target)?
                    };
                    if at.as_deref() != Some(name.as_str()) {
                        return Err(ImportError::SnapshotMismatch {
                            path: target.to_path_buf(),
                            from: name.clone(),
                            at,
                        }
                        .into());
                    }
                }
            }
            Event::ToSnap(name) => to_snap = Some(name.clone()),
            Event::Size(size) => {
                if block_device && *size != old_size {
                    return Err(ImportError::DeviceSize {
                        path: target.to_path_buf(),
                        device_size: old_size,
                        diff_size: *size,
                    }
                    .into());
                }
                if *size < shrink_saved {
                    if let Some(j) = journal.as_deref_mut() {
                        j.save(file, target, *size, shrink_saved - *size)
                            .map_err(undo_err)?;
                    }
                    shrink_saved = *size;
                }
            }
            Event::Write { offset, length } | Event::Zero { offset, length } => {
                if let Some(j) = journal.as_deref_mut() {
                    j.save(file, target, *offset, *length).map_err(undo_err)?;
                }
            }
            Event::DiffEnd => {
                report.diffs += 1;
                report.to_snap = to_snap.take();
            }
            _ => {}
        }
    }
    Ok(())
}

fn apply(
    diff: File,
    file: &File,
    path: &Path,
    block_device: bool,
    report: &mut ImportReport,
) -> Result<(), Pass1Error> {
    let mut reader = Reader::new(diff);
    while let Some(piece) = reader.next_piece()? {
        match piece.event {
            Event::Size(size) if !block_device => {
                file.set_len(*size)
                    .map_err(io_err("resizing target", path))?;
            }
            Event::Write { .. } => report.records += 1,
            Event::Data { offset, .. } => {
                write_payload(file, path, block_device, *offset, piece.data, report)?;
            }
            Event::Zero { offset, length } => {
                report.records += 1;
                zero_fill(file, block_device, *offset, *length)
                    .map_err(io_err("zeroing range in target", path))?;
                report.bytes_zeroed += length;
            }
            Event::Unknown { tag, length } => {
                report.unknown_records += 1;
                tracing::warn!(
                    tag = %(*tag as char).escape_default(),
                    length,
                    "skipping unknown v2 diff record"
                );
            }
            _ => {}
        }
    }
    if reader.parser().format() == Some(Format::ImageV2) {
        tracing::debug!(diffs = report.diffs, "applied rbd image v2 stream");
    }
    Ok(())
}

/// Writes a payload piece, punching aligned all-zero blocks instead of
/// writing them (keeps sparse files sparse).
fn write_payload(
    file: &File,
    path: &Path,
    block_device: bool,
    offset: u64,
    data: &[u8],
    report: &mut ImportReport,
) -> Result<(), ImportError> {
    let mut pos = 0usize;
    // (is_zero, start, end) of the run being gathered, in `data` indices.
    let mut run: Option<(bool, usize, usize)> = None;
    let flush = |run: (bool, usize, usize), report: &mut ImportReport| -> Result<(), ImportError> {
        let (zero, start, end) = run;
        let at = offset + start as u64;
        if zero {
            zero_fill(file, block_device, at, (end - start) as u64)
                .map_err(io_err("zeroing range in target", path))?;
            report.bytes_zeroed += (end - start) as u64;
        } else {
            file.write_all_at(&data[start..end], at)
                .map_err(io_err("writing target", path))?;
            report.bytes_written += (end - start) as u64;
        }
        Ok(())
    };
    while pos < data.len() {
        let image_pos = offset + pos as u64;
        let to_boundary = (ZERO_BLOCK - image_pos % ZERO_BLOCK) as usize;
        let end = (pos + to_boundary).min(data.len());
        let full_block = end - pos == ZERO_BLOCK as usize;
        let zero = full_block && super::is_zero(&data[pos..end]);
        run = match run {
            Some((z, s, _)) if z == zero => Some((z, s, end)),
            Some(r) => {
                flush(r, report)?;
                Some((zero, pos, end))
            }
            None => Some((zero, pos, end)),
        };
        pos = end;
    }
    if let Some(r) = run {
        flush(r, report)?;
    }
    Ok(())
}
