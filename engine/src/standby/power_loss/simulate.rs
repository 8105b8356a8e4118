//! [`simulate`]: rolls a killed process's unsynced changes back, as a power
//! cut at the moment of the kill could have lost them.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::error::PowerLossError;
use super::log::{parent, read_records, Piece, Record, KEPT, OLD_BYTES, RECORDS};

/// Which unsynced data writes a simulated power cut lets reach the disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Writeback {
    /// None: every write no fsync covered is lost (the worst case for
    /// losing data).
    #[default]
    Nothing,
    /// Per file, only its last unsynced change, if it is a write: it reached
    /// the disk before every earlier unsynced write of the file (reordered
    /// writeback; the file grows to hold it, earlier appended ranges read as
    /// zero). Catches a "commit record" written without an fsync barrier
    /// after the data it vouches for.
    LastWriteFirst,
    /// Each unsynced write independently, with probability 1/2 (drawn from
    /// `seed` and the record's number): writeback in any order.
    Random {
        /// Selects the draw; the same seed gives the same outcome.
        seed: u64,
    },
}

/// How a simulated power cut treats unsynced changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cut {
    /// Which unsynced writes reach the disk.
    pub writeback: Writeback,
    /// Keep every name change (creations, renames, removals), synced or not:
    /// e.g. ext4, where any fsync on the file system commits the journal
    /// holding them. Default: they are lost unless their directory was
    /// fsynced (strict POSIX).
    pub keep_names: bool,
}

/// Whether unsynced write `n` reaches the disk under [`Writeback::Random`].
fn coin(seed: u64, n: u64) -> bool {
    // splitmix64 of the seed and the record number.
    let mut z = seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) & 1 == 1
}

/// What [`simulate`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Records the log held.
    pub records: usize,
    /// Data changes (writes, hole punches, size changes) rolled back.
    pub data_rolled_back: usize,
    /// Name changes (creations, renames, removals) rolled back.
    pub names_rolled_back: usize,
    /// Data changes of files that no longer exist anywhere (nothing to do).
    pub data_of_gone_files: usize,
    /// Unsynced writes that reached the disk ([`Writeback`]).
    pub data_kept: usize,
    /// Files the roll-back touched, each once, sorted.
    pub files: Vec<PathBuf>,
}

/// Simulates a power cut on the files recorded in the log in `dir`: every
/// change not covered by a later completed fsync (of the file, for data; of
/// the parent directory, for names) is undone, newest first. Call it after
/// the recording process is dead (SIGKILL), before anything reopens the
/// files. The log is emptied afterwards, so a restarted process records
/// afresh into the same directory. An empty or missing log is no error.
pub fn simulate(dir: &Path) -> Result<Report, PowerLossError> {
    simulate_with(dir, Cut::default())
}

/// [`simulate`], with `cut` choosing which unsynced changes survive.
pub fn simulate_with(dir: &Path, cut: Cut) -> Result<Report, PowerLossError> {
    let records = read_records(dir)?;
    let mut data_upto: HashMap<(u64, u64), u64> = HashMap::new();
    let mut dir_upto: HashMap<&Path, u64> = HashMap::new();
    for record in &records {
        match record {
            Record::Synced { dev, ino, upto, .. } => {
                let e = data_upto.entry((*dev, *ino)).or_default();
                *e = (*e).max(*upto);
            }
            Record::DirSynced { dir, upto } => {
                let e = dir_upto.entry(dir.as_path()).or_default();
                *e = (*e).max(*upto);
            }
            _ => {}
        }
    }
    let name_covered = |n: u64, path: &Path| dir_upto.get(parent(path)).is_some_and(|u| n < *u);
    let kept_dir = dir.join(KEPT);
    let inodes = inode_paths(&records, &kept_dir)?;
    let old_path = dir.join(OLD_BYTES);
    let mut report = Report {
        records: records.len(),
        ..Report::default()
    };
    let mut touched = std::collections::BTreeSet::new();

    // Data first: it follows the inode wherever its name is now, so undoing
    // data and names are independent. Walking newest first, the first
    // uncovered record met for a file is its last unsynced change.
    let mut seen: std::collections::HashSet<(u64, u64)> = std::collections::HashSet::new();
    let mut kept: Vec<(PathBuf, u64, Vec<u8>)> = Vec::new();
    for (n, record) in records.iter().enumerate().rev() {
        let Record::Data {
            dev,
            ino,
            offset,
            len,
            old_size,
            pieces,
            write,
            ..
        } = record
        else {
            continue;
        };
        if data_upto
            .get(&(*dev, *ino))
            .is_some_and(|u| (n as u64) < *u)
        {
            continue;
        }
        let Some(path) = inodes.get(&(*dev, *ino)) else {
            report.data_of_gone_files += 1;
            continue;
        };
        let last = seen.insert((*dev, *ino));
        let survives = match cut.writeback {
            Writeback::Nothing => false,
            Writeback::LastWriteFirst => last,
            Writeback::Random { seed } => coin(seed, n as u64),
        };
        // Its bytes as it wrote them: every newer change is undone already.
        if survives && *write {
            kept.push((path.clone(), *offset, read_at(path, *offset, *len)?));
        }
        undo_data(path, &old_path, *offset, *len, *old_size, pieces)?;
        report.data_rolled_back += 1;
        touched.insert(path.clone());
    }
    // Oldest first, so a newer surviving write wins where they overlap.
    for (path, offset, bytes) in kept.into_iter().rev() {
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| PowerLossError::io("open", &path, e))?;
        file.write_all_at(&bytes, offset)
            .and_then(|()| file.sync_all())
            .map_err(|e| PowerLossError::io("keep the last write of", &path, e))?;
        report.data_rolled_back -= 1;
        report.data_kept += 1;
    }

    for (n, record) in records.iter().enumerate().rev() {
        if cut.keep_names {
            break;
        }
        let n = n as u64;
        let undone = match record {
            Record::Created { path, dir } if !name_covered(n, path) => {
                let result = if *dir {
                    fs::remove_dir_all(path)
                } else {
                    fs::remove_file(path)
                };
                ignore_missing(result)
                    .map_err(|e| PowerLossError::io("undo creation of", path, e))?;
                touched.insert(path.clone());
                true
            }
            Record::Renamed { from, to, kept }
                if !(name_covered(n, from) && name_covered(n, to)) =>
            {
                // Undone only if it happened (a kill can land between the
                // record and the rename).
                if exists(to)? && !exists(from)? {
                    fs::rename(to, from)
                        .map_err(|e| PowerLossError::io("undo rename to", to, e))?;
                    if let Some(kept) = kept {
                        ignore_missing(fs::rename(kept, to))
                            .map_err(|e| PowerLossError::io("restore replaced", to, e))?;
                    }
                    touched.insert(to.clone());
                    touched.insert(from.clone());
                }
                true
            }
            Record::Removed { path, kept } if !name_covered(n, path) => {
                if exists(kept)? {
                    fs::rename(kept, path)
                        .map_err(|e| PowerLossError::io("undo removal of", path, e))?;
                    touched.insert(path.clone());
                }
                true
            }
            _ => false,
        };
        if undone {
            report.names_rolled_back += 1;
        }
    }

    // Empty the log: what was not undone is durable now.
    ignore_missing(fs::remove_dir_all(&kept_dir))
        .map_err(|e| PowerLossError::io("empty", &kept_dir, e))?;
    fs::create_dir_all(&kept_dir).map_err(|e| PowerLossError::io("create", &kept_dir, e))?;
    for name in [RECORDS, OLD_BYTES] {
        let path = dir.join(name);
        ignore_missing(fs::remove_file(&path))
            .map_err(|e| PowerLossError::io("empty", &path, e))?;
    }
    report.files = touched.into_iter().collect();
    Ok(report)
}

fn ignore_missing(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn exists(path: &Path) -> Result<bool, PowerLossError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(PowerLossError::io("stat", path, e)),
    }
}

/// Where each regular file the log mentions is now: the directories of every
/// recorded path, and everything under `kept/`.
fn inode_paths(
    records: &[Record],
    kept_dir: &Path,
) -> Result<HashMap<(u64, u64), PathBuf>, PowerLossError> {
    let mut dirs: Vec<&Path> = Vec::new();
    for record in records {
        match record {
            Record::Data { path, .. }
            | Record::Synced { path, .. }
            | Record::Created { path, .. }
            | Record::Removed { path, .. } => dirs.push(parent(path)),
            Record::Renamed { from, to, .. } => {
                dirs.push(parent(from));
                dirs.push(parent(to));
            }
            Record::DirSynced { .. } => {}
        }
    }
    dirs.sort();
    dirs.dedup();
    let mut map = HashMap::new();
    for dir in dirs {
        scan(dir, false, &mut map)?;
    }
    scan(kept_dir, true, &mut map)?;
    Ok(map)
}

fn scan(
    dir: &Path,
    recursive: bool,
    map: &mut HashMap<(u64, u64), PathBuf>,
) -> Result<(), PowerLossError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(PowerLossError::io("list", dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| PowerLossError::io("list", dir, e))?;
        let path = entry.path();
        let meta = match fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(PowerLossError::io("stat", &path, e)),
        };
        if meta.is_file() {
            map.insert((meta.dev(), meta.ino()), path);
        } else if meta.is_dir() && recursive {
            scan(&path, true, map)?;
        }
    }
    Ok(())
}

/// The `len` bytes at `offset` of `path`.
fn read_at(path: &Path, offset: u64, len: u64) -> Result<Vec<u8>, PowerLossError> {
    let file = File::open(path).map_err(|e| PowerLossError::io("open", path, e))?;
    let n = usize::try_from(len).map_err(|_| {
        PowerLossError::io("write too large", path, io::ErrorKind::InvalidData.into())
    })?;
    let mut buf = vec![0u8; n];
    file.read_exact_at(&mut buf, offset)
        .map_err(|e| PowerLossError::io("read the last write of", path, e))?;
    Ok(buf)
}

/// Puts back `old_size` and the old contents of `[offset, offset + len)`.
fn undo_data(
    path: &Path,
    old_path: &Path,
    offset: u64,
    len: u64,
    old_size: u64,
    pieces: &[Piece],
) -> Result<(), PowerLossError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| PowerLossError::io("open", path, e))?;
    file.set_len(old_size)
        .map_err(|e| PowerLossError::io("restore size of", path, e))?;
    let end = offset.saturating_add(len).min(old_size);
    if end > offset {
        crate::sys::fs::zero_range(&file, offset, end - offset)
            .map_err(|e| PowerLossError::io("zero", path, e))?;
    }
    if !pieces.is_empty() {
        let old = File::open(old_path).map_err(|e| PowerLossError::io("open", old_path, e))?;
        let mut buf = Vec::new();
        for piece in pieces {
            let n = usize::try_from(piece.len).map_err(|_| {
                PowerLossError::io(
                    "piece too large",
                    old_path,
                    io::ErrorKind::InvalidData.into(),
                )
            })?;
            buf.resize(n, 0);
            old.read_exact_at(&mut buf, piece.at)
                .map_err(|e| PowerLossError::io("read old bytes", old_path, e))?;
            file.write_all_at(&buf, piece.offset)
                .map_err(|e| PowerLossError::io("restore old bytes of", path, e))?;
        }
    }
    file.sync_all()
        .map_err(|e| PowerLossError::io("fsync", path, e))
}
