//! The undo journal that makes `import-diff` into an existing file atomic.
//!
//! Before a diff touches the target, the old contents of every range it will
//! change (writes, zeroes, and what a shrink cuts off) and the old size are
//! copied to `TARGET.ferry-undo.partial`, which is then fsynced and renamed
//! to `TARGET.ferry-undo` (the directory fsynced too): from then on the
//! journal is *sealed*. A sealed journal is removed only after the target
//! has been fully updated and fsynced; that removal is the commit point.
//! Whenever a sealed journal is found (a crash or error mid-apply), it is
//! replayed: the target gets its old size and old bytes back, is fsynced,
//! and the journal removed. A `.partial` journal means the target was never
//! touched, so it is simply deleted.
//!
//! Layout (little-endian): magic `"ferry-rbd-undo1\n"`, old size u64, then
//! entries `kind u8, offset u64, length u64, crc32c u32, data` with kind `D`
//! (old bytes follow) or `Z` (the old bytes were zero; no data), then the
//! trailer `E, entry count u64, crc32c u32` where the CRC covers every byte
//! before it. All-zero 64 KiB pieces and holes are stored as `Z` entries, so
//! the journal of a sparse image stays small.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

use crate::durable::parent_dir;
use crate::sys::fs::{seek_data, sync_dir, zero_range};

const MAGIC: &[u8; 16] = b"ferry-rbd-undo1\n";
const KIND_DATA: u8 = b'D';
const KIND_ZERO: u8 = b'Z';
const KIND_END: u8 = b'E';
/// Old contents are read this much at a time.
const CHUNK: usize = 1 << 20;
/// Granularity of zero detection in old contents.
const PIECE: usize = 64 * 1024;

/// Why the undo journal failed.
#[derive(Debug, thiserror::Error)]
pub enum UndoError {
    /// An I/O error on the journal or the target.
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
    /// A sealed journal that does not verify; it is left in place.
    #[error("undo journal {} is corrupt ({reason}); it was left in place and the target was not touched", path.display())]
    Corrupt {
        /// The journal.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> UndoError + 'a {
    move |source| UndoError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// `target` with `suffix` appended to its file name (`vm.raw` → `vm.raw.ferry-undo`).
pub(crate) fn with_suffix(target: &Path, suffix: &str) -> PathBuf {
    let mut name = target.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

/// The sealed journal of `target`: `TARGET.ferry-undo`.
pub fn journal_path(target: &Path) -> PathBuf {
    with_suffix(target, ".ferry-undo")
}

/// The journal while it is written: `TARGET.ferry-undo.partial`.
pub fn partial_path(target: &Path) -> PathBuf {
    with_suffix(target, ".ferry-undo.partial")
}

/// Size of a regular file or block device.
pub fn target_len(file: &File) -> io::Result<u64> {
    let meta = file.metadata()?;
    if meta.file_type().is_block_device() {
        let mut f = file;
        f.seek(SeekFrom::End(0))
    } else {
        Ok(meta.len())
    }
}

/// Whether `file` is a block device (fixed size, no holes).
pub fn is_block_device(file: &File) -> io::Result<bool> {
    Ok(file.metadata()?.file_type().is_block_device())
}

static ZEROES: [u8; PIECE] = [0u8; PIECE];

/// Makes `[offset, offset+len)` of `file` read as zeroes: hole punching for
/// regular files, zero writes for block devices.
pub fn zero_fill(file: &File, block_device: bool, offset: u64, len: u64) -> io::Result<()> {
    if !block_device {
        return zero_range(file, offset, len);
    }
    let mut pos = offset;
    let end = offset.saturating_add(len);
    while pos < end {
        let n = (end - pos).min(PIECE as u64) as usize;
        file.write_all_at(&ZEROES[..n], pos)?;
        pos += n as u64;
    }
    Ok(())
}

/// Writes a journal; see the module docs.
pub struct UndoWriter {
    out: BufWriter<File>,
    partial: PathBuf,
    sealed: PathBuf,
    old_size: u64,
    crc: u32,
    entries: u64,
    bytes: u64,
    block_device: bool,
    buf: Vec<u8>,
}

impl UndoWriter {
    /// Starts the journal of `target` (whose current size is `old_size`),
    /// replacing a stale partial journal.
    pub fn create(target: &Path, old_size: u64, block_device: bool) -> Result<Self, UndoError> {
        let partial = partial_path(target);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&partial)
            .map_err(io_err("creating undo journal", &partial))?;
        let mut w = Self {
            out: BufWriter::with_capacity(1 << 20, file),
            partial,
            sealed: journal_path(target),
            old_size,
            crc: 0,
            entries: 0,
            bytes: 0,
            block_device,
            buf: vec![0u8; CHUNK],
        };
        let mut head = Vec::with_capacity(24);
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&old_size.to_le_bytes());
        w.put(&head)?;
        Ok(w)
    }

    /// Journal bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), UndoError> {
        self.crc = crc32c::crc32c_append(self.crc, bytes);
        self.bytes += bytes.len() as u64;
        self.out
            .write_all(bytes)
            .map_err(io_err("writing undo journal", &self.partial))
    }

    fn entry(&mut self, kind: u8, offset: u64, data: &[u8], len: u64) -> Result<(), UndoError> {
        let mut head = [0u8; 21];
        head[0] = kind;
        head[1..9].copy_from_slice(&offset.to_le_bytes());
        head[9..17].copy_from_slice(&len.to_le_bytes());
        head[17..21].copy_from_slice(&crc32c::crc32c(data).to_le_bytes());
        self.put(&head)?;
        self.put(data)?;
        self.entries += 1;
        Ok(())
    }

    /// Saves the current contents of `[offset, offset+len)` of `target`
    /// (clipped to the old size).
    pub fn save(
        &mut self,
        target: &File,
        target_path: &Path,
        offset: u64,
        len: u64,
    ) -> Result<(), UndoError> {
        let end = offset.saturating_add(len).min(self.old_size);
        let mut pos = offset;
        while pos < end {
            if !self.block_device {
                // Skip holes: they are zeroes, recorded without data.
                let data = seek_data(target, pos)
                    .map_err(io_err("seeking data in target", target_path))?
                    .unwrap_or(end)
                    .min(end);
                if data > pos {
                    self.entry(KIND_ZERO, pos, &[], data - pos)?;
                    pos = data;
                    continue;
                }
            }
            let n = (end - pos).min(CHUNK as u64) as usize;
            let mut buf = std::mem::take(&mut self.buf);
            let result = read_exact_at(target, &mut buf[..n], pos)
                .map_err(io_err("reading target for the undo journal", target_path))
                .and_then(|()| {
                    for (i, piece) in buf[..n].chunks(PIECE).enumerate() {
                        let at = pos + (i * PIECE) as u64;
                        if super::is_zero(piece) {
                            self.entry(KIND_ZERO, at, &[], piece.len() as u64)?;
                        } else {
                            self.entry(KIND_DATA, at, piece, piece.len() as u64)?;
                        }
                    }
                    Ok(())
                });
            self.buf = buf;
            result?;
            pos += n as u64;
        }
        Ok(())
    }

    /// Writes the trailer, fsyncs, and renames the journal to its sealed name
    /// (fsyncing the directory). After this the target may be modified.
    pub fn seal(mut self) -> Result<PathBuf, UndoError> {
        let mut trailer = [0u8; 9];
        trailer[0] = KIND_END;
        trailer[1..9].copy_from_slice(&self.entries.to_le_bytes());
        self.put(&trailer)?;
        let crc = self.crc.to_le_bytes();
        self.out
            .write_all(&crc)
            .map_err(io_err("writing undo journal", &self.partial))?;
        let file = self.out.into_inner().map_err(|e| UndoError::Io {
            op: "flushing undo journal",
            path: self.partial.clone(),
            source: e.into_error(),
        })?;
        file.sync_all()
            .map_err(io_err("fsyncing undo journal", &self.partial))?;
        std::fs::rename(&self.partial, &self.sealed)
            .map_err(io_err("sealing undo journal", &self.sealed))?;
        let dir = parent_dir(&self.sealed);
        sync_dir(dir).map_err(io_err("fsyncing directory", dir))?;
        Ok(self.sealed)
    }

    /// Drops an unsealed journal (the target was not touched).
    pub fn abandon(self) {
        drop(self.out);
        let _ = std::fs::remove_file(&self.partial);
    }
}

fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => {
                // Past end-of-file reads as zeroes (cannot happen below the old size).
                buf[done..].fill(0);
                return Ok(());
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// What a rollback restored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollback {
    /// The size the target got back.
    pub old_size: u64,
    /// Journal entries replayed.
    pub entries: u64,
}

/// Removes the sealed journal after a successful apply (the commit point)
/// and fsyncs the directory.
pub fn commit(target: &Path) -> Result<(), UndoError> {
    let sealed = journal_path(target);
    std::fs::remove_file(&sealed).map_err(io_err("removing undo journal", &sealed))?;
    let dir = parent_dir(&sealed);
    sync_dir(dir).map_err(io_err("fsyncing directory", dir))
}

/// Replays `target`'s sealed journal if there is one (see the module docs)
/// and deletes a stale partial one. `file` is the open target.
pub fn recover(target: &Path, file: &File) -> Result<Option<Rollback>, UndoError> {
    let partial = partial_path(target);
    if partial.exists() {
        std::fs::remove_file(&partial).map_err(io_err("removing partial journal", &partial))?;
    }
    let sealed = journal_path(target);
    let journal = match File::open(&sealed) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("opening undo journal", &sealed)(e)),
    };
    // Verify everything before touching the target.
    let (old_size, entries) = walk(&journal, &sealed, None)?;
    let block_device = is_block_device(file).map_err(io_err("inspecting target", target))?;
    if !block_device {
        file.set_len(old_size)
            .map_err(io_err("restoring target size", target))?;
    }
    walk(&journal, &sealed, Some((file, target, block_device)))?;
    file.sync_all()
        .map_err(io_err("fsyncing restored target", target))?;
    commit(target)?;
    Ok(Some(Rollback { old_size, entries }))
}

/// Reads the journal, checking it; with `apply`, also restores the entries.
fn walk(
    journal: &File,
    path: &Path,
    apply: Option<(&File, &Path, bool)>,
) -> Result<(u64, u64), UndoError> {
    let corrupt = |reason: &str| UndoError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.to_owned(),
    };
    let mut r = BufReader::with_capacity(1 << 20, journal);
    r.seek(SeekFrom::Start(0))
        .map_err(io_err("reading undo journal", path))?;
    let mut src = Src { r, crc: 0, path };
    let mut head = [0u8; 24];
    src.read(&mut head)?;
    if &head[..16] != MAGIC {
        return Err(corrupt("bad magic"));
    }
    let old_size = u64::from_le_bytes(head[16..24].try_into().unwrap_or([0; 8]));
    let mut data = vec![0u8; PIECE];
    let mut entries = 0u64;
    loop {
        let mut kind = [0u8; 1];
        src.read(&mut kind)?;
        if kind[0] == KIND_END {
            let mut count = [0u8; 8];
            src.read(&mut count)?;
            let expected = src.crc;
            let mut stored = [0u8; 4];
            src.r
                .read_exact(&mut stored)
                .map_err(|_| corrupt("truncated trailer"))?;
            if u32::from_le_bytes(stored) != expected {
                return Err(corrupt("checksum mismatch"));
            }
            if u64::from_le_bytes(count) != entries {
                return Err(corrupt("entry count mismatch"));
            }
            return Ok((old_size, entries));
        }
        let mut head = [0u8; 20];
        src.read(&mut head)?;
        let offset = u64::from_le_bytes(head[0..8].try_into().unwrap_or([0; 8]));
        let len = u64::from_le_bytes(head[8..16].try_into().unwrap_or([0; 8]));
        let sum = u32::from_le_bytes(head[16..20].try_into().unwrap_or([0; 4]));
        if offset.checked_add(len).is_none_or(|e| e > old_size) {
            return Err(corrupt("entry past the old size"));
        }
        match kind[0] {
            KIND_DATA => {
                if len > PIECE as u64 {
                    return Err(corrupt("data entry too long"));
                }
                let buf = &mut data[..len as usize];
                src.read(buf)?;
                if crc32c::crc32c(buf) != sum {
                    return Err(corrupt("entry checksum mismatch"));
                }
                if let Some((file, target, _)) = apply {
                    file.write_all_at(buf, offset)
                        .map_err(io_err("restoring target contents", target))?;
                }
            }
            KIND_ZERO => {
                if let Some((file, target, block_device)) = apply {
                    zero_fill(file, block_device, offset, len)
                        .map_err(io_err("restoring zeroes in target", target))?;
                }
            }
            _ => return Err(corrupt("unknown entry kind")),
        }
        entries += 1;
    }
}

/// The journal being read, with the running checksum.
struct Src<'a> {
    r: BufReader<&'a File>,
    crc: u32,
    path: &'a Path,
}

impl Src<'_> {
    fn read(&mut self, buf: &mut [u8]) -> Result<(), UndoError> {
        self.r.read_exact(buf).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                UndoError::Corrupt {
                    path: self.path.to_path_buf(),
                    reason: "truncated".to_owned(),
                }
            } else {
                io_err("reading undo journal", self.path)(e)
            }
        })?;
        self.crc = crc32c::crc32c_append(self.crc, buf);
        Ok(())
    }
}
