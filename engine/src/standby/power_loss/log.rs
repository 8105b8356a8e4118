//! Layout of a power-loss log directory and its record format.
//!
//! - `records.jsonl`: one JSON [`Record`] per line, appended before the change
//!   it undoes (a sync record after its sync completed). A record's number is
//!   its 0-based line. A last line cut short by a kill is ignored: the change
//!   it announced had not started.
//! - `old-bytes.bin`: the non-zero old bytes of data records, appended; a
//!   record points into it with [`Piece`]s.
//! - `kept/`: files a removal or a replacing rename took away, kept alive
//!   under unique names until the log is rolled back or emptied.
//!
//! Paths are absolute. Everything is written with plain `write`s: a SIGKILL
//! keeps them (they are in the page cache), and the log is read back before
//! any real power cut could matter.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::PowerLossError;

/// The records file.
pub(crate) const RECORDS: &str = "records.jsonl";
/// The old-bytes file.
pub(crate) const OLD_BYTES: &str = "old-bytes.bin";
/// The directory of kept files.
pub(crate) const KEPT: &str = "kept";

/// A run of non-zero old bytes: `len` bytes of the file at `offset` were, at
/// `at` in the old-bytes file. Old bytes not in a piece were zero.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Piece {
    /// File offset.
    pub offset: u64,
    /// Offset in `old-bytes.bin`.
    pub at: u64,
    /// Length.
    pub len: u64,
}

/// One change, and how to undo it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Record {
    /// File `(dev, ino)` (then at `path`) is about to change in
    /// `[offset, offset + len)` or in size; it was `old_size` bytes long and
    /// held `pieces` (zero elsewhere) in the part of that range below
    /// `old_size`. `write`: the change writes new bytes into the range (not
    /// a hole punch or a size change).
    Data {
        dev: u64,
        ino: u64,
        path: PathBuf,
        offset: u64,
        len: u64,
        old_size: u64,
        pieces: Vec<Piece>,
        #[serde(default)]
        write: bool,
    },
    /// An fsync/fdatasync of file `(dev, ino)` completed; it covers that
    /// file's data records numbered below `upto` (logged when it started).
    Synced {
        dev: u64,
        ino: u64,
        path: PathBuf,
        upto: u64,
    },
    /// The name `path` (a file, or a directory if `dir`) is about to be created.
    Created { path: PathBuf, dir: bool },
    /// `from` is about to be renamed to `to`; the file `to` named before (if
    /// any) is kept at `kept`.
    Renamed {
        from: PathBuf,
        to: PathBuf,
        kept: Option<PathBuf>,
    },
    /// The name `path` is about to be removed; its file (or directory) is
    /// moved to `kept` instead.
    Removed { path: PathBuf, kept: PathBuf },
    /// An fsync of directory `dir` completed; it covers the name records of
    /// entries in `dir` numbered below `upto`.
    DirSynced { dir: PathBuf, upto: u64 },
}

/// Reads every complete record of the log in `dir` (none if it has none).
pub(crate) fn read_records(dir: &Path) -> Result<Vec<Record>, PowerLossError> {
    let path = dir.join(RECORDS);
    let text = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(PowerLossError::io("read records", &path, e)),
    };
    let complete = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let mut records = Vec::new();
    for (n, line) in text[..complete]
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .enumerate()
    {
        let record = serde_json::from_slice(line).map_err(|e| PowerLossError::Corrupt {
            path: path.clone(),
            line: n + 1,
            reason: e.to_string(),
        })?;
        records.push(record);
    }
    Ok(records)
}

/// The parent directory of `path` (the path itself if it has none).
pub(crate) fn parent(path: &Path) -> &Path {
    path.parent().unwrap_or(path)
}
