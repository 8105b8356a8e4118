//! Undo logs `NAME.ferry/undo-<E>.log`: the old size and old contents of every
//! range incremental epoch `E` changes, captured before the image is touched.
//! They make an interrupted apply recoverable (roll back when no intent asks
//! to roll forward) and serve as retention history (restore = image + undo
//! logs applied newest to oldest).
//!
//! Records use the framing of [`super::record`] with magic `"FRUL"`:
//! - `HEADER` (first, nonce 0): `a` = epoch, `b` = base epoch; body = format
//!   u32, nonce u64, old size u64.
//! - `DATA`: `a` = offset, `b` = length; body = the old bytes.
//! - `ZERO`: `a` = offset, `b` = length; no body (the old bytes were zero).
//! - `END` (last): `a` = number of DATA/ZERO records, `b` = old size; no body.
//!
//! The log is complete only when it ends in a valid `END` record; it is
//! fsynced (and its directory entry too) before the image is modified. The
//! records before `END` are fdatasynced before `END` is written: a power cut
//! may write pages back in any order, and an `END` that reached the disk
//! while a record before it did not would make a log that was never
//! complete read as a damaged complete one, which recovery refuses.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use ferry_protocol::types::Epoch;

use super::io::{self as store_io, Create};
use super::journal::{read_range, JournalIndex};
use super::record::{self, BodyCursor, Next, RecordHeader, RecordReader, HEADER_LEN};
use super::StoreError;

/// Undo log magic.
const MAGIC: u32 = u32::from_le_bytes(*b"FRUL");
const KIND_HEADER: u8 = 0x01;
const KIND_DATA: u8 = 0x02;
const KIND_ZERO: u8 = 0x03;
const KIND_END: u8 = 0x04;
const FORMAT: u32 = 1;

/// Image bytes read at a time while capturing old contents.
const CHUNK: usize = 1 << 20;
/// Granularity of zero detection inside a chunk.
const PIECE: usize = 64 * 1024;
/// Bytes buffered before a write to the log.
const FLUSH_AT: usize = 4 << 20;

/// Whether every byte of `bytes` is zero.
pub(crate) fn is_zero(bytes: &[u8]) -> bool {
    let mut chunks = bytes.chunks_exact(16);
    let words_zero = chunks
        .by_ref()
        .all(|c| u128::from_ne_bytes(c.try_into().unwrap_or([1; 16])) == 0);
    words_zero && chunks.remainder().iter().all(|b| *b == 0)
}

/// The ranges an epoch touches, clipped to the old size, plus the range a
/// shrink cuts off; sorted and merged.
pub(crate) fn touched_ranges(
    index: &JournalIndex,
    old_size: u64,
    new_size: u64,
) -> Vec<(u64, u64)> {
    let mut ranges: Vec<(u64, u64)> = index
        .extents()
        .filter(|e| e.offset < old_size)
        .map(|e| (e.offset, e.end().min(old_size)))
        .collect();
    if new_size < old_size {
        ranges.push((new_size, old_size));
    }
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match merged.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    merged
}

/// Buffered sequential writer of undo records.
struct LogWriter<'a> {
    file: &'a File,
    path: &'a Path,
    nonce: u64,
    pos: u64,
    buf: Vec<u8>,
    records: u64,
}

impl LogWriter<'_> {
    fn push(&mut self, kind: u8, a: u64, b: u64, body: &[u8]) -> Result<(), StoreError> {
        let header = RecordHeader::for_body(kind, a, b, self.nonce, &[body]);
        self.buf
            .extend_from_slice(&header.encode(MAGIC, self.nonce));
        self.buf.extend_from_slice(body);
        if kind == KIND_DATA || kind == KIND_ZERO {
            self.records += 1;
        }
        if self.buf.len() >= FLUSH_AT {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        store_io::write_all_vectored_at(self.file, self.path, &[&self.buf], self.pos)
            .map_err(|e| StoreError::io("write undo log", self.path, e))?;
        self.pos += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }
}

/// Writes a complete undo log at `path` (replacing any partial one) holding the
/// old contents of `ranges` of `image` and `old_size`, and fsyncs it. The
/// caller fsyncs the directory.
pub(crate) fn write(
    path: &Path,
    image: &File,
    image_path: &Path,
    epoch: Epoch,
    base: Epoch,
    old_size: u64,
    ranges: &[(u64, u64)],
) -> Result<(), StoreError> {
    let file = store_io::open(path, Create::Truncate)
        .map_err(|e| StoreError::io("create undo log", path, e))?;
    let nonce: u64 = rand::random();
    let mut first = Vec::with_capacity(20);
    first.extend_from_slice(&FORMAT.to_le_bytes());
    first.extend_from_slice(&nonce.to_le_bytes());
    first.extend_from_slice(&old_size.to_le_bytes());
    let header = RecordHeader::for_body(KIND_HEADER, epoch.get(), base.get(), 0, &[&first]);
    let mut log = LogWriter {
        file: &file,
        path,
        nonce,
        pos: 0,
        buf: Vec::with_capacity(FLUSH_AT + CHUNK + HEADER_LEN),
        records: 0,
    };
    log.buf.extend_from_slice(&header.encode(MAGIC, 0));
    log.buf.extend_from_slice(&first);
    let mut chunk = Vec::with_capacity(CHUNK);
    for &(start, end) in ranges {
        let mut pos = start;
        while pos < end {
            let n = usize::try_from(end - pos).unwrap_or(CHUNK).min(CHUNK);
            // io_uring (sys::uring) could keep several of these reads in flight.
            read_range(image, image_path, pos, n, &mut chunk)?;
            // Emit one record per run of all-zero or non-zero 64 KiB pieces.
            let mut run_start = 0usize;
            let mut run_zero = None;
            for piece_start in (0..n).step_by(PIECE) {
                let piece_end = (piece_start + PIECE).min(n);
                let zero = is_zero(&chunk[piece_start..piece_end]);
                if run_zero.is_some_and(|z| z != zero) {
                    emit(
                        &mut log,
                        pos,
                        &chunk,
                        run_start,
                        piece_start,
                        run_zero == Some(true),
                    )?;
                    run_start = piece_start;
                }
                run_zero = Some(zero);
            }
            emit(&mut log, pos, &chunk, run_start, n, run_zero == Some(true))?;
            pos += n as u64;
        }
    }
    let records = log.records;
    log.flush()?;
    store_io::sync_data(&file, path).map_err(|e| StoreError::io("fdatasync undo log", path, e))?;
    log.push(KIND_END, records, old_size, &[])?;
    log.flush()?;
    super::failpoint::hit(super::failpoint::CrashPoint::UndoBeforeSync)?;
    store_io::sync_all(&file, path).map_err(|e| StoreError::io("fsync undo log", path, e))
}

fn emit(
    log: &mut LogWriter<'_>,
    base: u64,
    chunk: &[u8],
    from: usize,
    to: usize,
    zero: bool,
) -> Result<(), StoreError> {
    if from >= to {
        return Ok(());
    }
    let offset = base + from as u64;
    let len = (to - from) as u64;
    if zero {
        log.push(KIND_ZERO, offset, len, &[])
    } else {
        log.push(KIND_DATA, offset, len, &chunk[from..to])
    }
}

/// A complete, checked undo log.
#[derive(Debug)]
pub(crate) struct UndoLog {
    /// The epoch the log undoes.
    pub epoch: Epoch,
    /// Size of the image before that epoch.
    pub old_size: u64,
    nonce: u64,
    /// (header offset, header) of every DATA/ZERO record.
    records: Vec<(u64, RecordHeader)>,
}

/// State of an undo log on disk.
#[derive(Debug)]
pub(crate) enum UndoStatus {
    /// No file.
    Missing,
    /// Written only partly (the crash came before it was complete).
    Incomplete,
    /// Complete and checked.
    Complete(UndoLog),
}

/// Reads and checks the undo log at `path`.
///
/// A log without a valid `END` record is `Incomplete`. A log that does end in
/// a valid `END` record but has a bad record before it was complete once and
/// has been damaged since: `Corrupt`.
pub(crate) fn read(path: &Path) -> Result<UndoStatus, StoreError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(UndoStatus::Missing),
        Err(e) => return Err(StoreError::io("open undo log", path, e)),
    };
    let len = file
        .metadata()
        .map_err(|e| StoreError::io("stat undo log", path, e))?
        .len();
    let read_err = |e| StoreError::io("read undo log", path, e);
    let mut reader = RecordReader::new(&file, MAGIC, len);
    let (epoch, nonce, old_size) = match reader.next_record().map_err(read_err)? {
        Next::Record { header, .. } if header.kind == KIND_HEADER => {
            let mut body = BodyCursor::new(reader.body());
            match (body.u32(), body.u64(), body.u64()) {
                (Some(FORMAT), Some(nonce), Some(old_size)) => (Epoch(header.a), nonce, old_size),
                _ => return Err(StoreError::corrupt(path, "unsupported undo log header")),
            }
        }
        // A crash while the first record was being written.
        _ => return Ok(UndoStatus::Incomplete),
    };
    reader.set_nonce(nonce);
    let has_end = ends_with_end_record(&file, len, nonce, old_size).map_err(read_err)?;
    let mut records = Vec::new();
    loop {
        match reader.next_record().map_err(read_err)? {
            Next::Record { header, offset } => match header.kind {
                KIND_DATA | KIND_ZERO => {
                    if header.kind == KIND_DATA && header.body_len != header.b {
                        return Err(StoreError::corrupt(
                            path,
                            format!("record at {offset} has a wrong body length"),
                        ));
                    }
                    records.push((offset, header));
                }
                KIND_END => {
                    if reader.position() != len
                        || header.a != records.len() as u64
                        || header.b != old_size
                    {
                        return Err(StoreError::corrupt(
                            path,
                            "END record does not match the log",
                        ));
                    }
                    return Ok(UndoStatus::Complete(UndoLog {
                        epoch,
                        old_size,
                        nonce,
                        records,
                    }));
                }
                other => {
                    return Err(StoreError::corrupt(
                        path,
                        format!("record at {offset} has unexpected kind {other:#04x}"),
                    ))
                }
            },
            Next::Bad { offset, reason } if has_end => {
                return Err(StoreError::corrupt(
                    path,
                    format!("record at {offset}: {reason}"),
                ))
            }
            Next::Bad { .. } | Next::End => return Ok(UndoStatus::Incomplete),
        }
    }
}

/// Whether the last `HEADER_LEN` bytes of the file are a valid END record.
fn ends_with_end_record(file: &File, len: u64, nonce: u64, old_size: u64) -> std::io::Result<bool> {
    if len < 2 * HEADER_LEN as u64 {
        return Ok(false);
    }
    let mut raw = [0u8; HEADER_LEN];
    file.read_exact_at(&mut raw, len - HEADER_LEN as u64)?;
    Ok(RecordHeader::decode(&raw, MAGIC, nonce)
        .is_some_and(|h| h.kind == KIND_END && h.body_len == 0 && h.b == old_size))
}

/// Applies a complete undo log to `target` (restoring the old contents and the
/// old size). Idempotent. The caller fsyncs.
pub(crate) fn apply(
    log: &UndoLog,
    path: &Path,
    target: &File,
    target_path: &Path,
) -> Result<(), StoreError> {
    let file = File::open(path).map_err(|e| StoreError::io("open undo log", path, e))?;
    let mut buf = Vec::new();
    for (offset, header) in &log.records {
        match header.kind {
            KIND_DATA => {
                let ok = record::read_body_at(&file, *offset, header, log.nonce, &mut buf)
                    .map_err(|e| StoreError::io("read undo log", path, e))?;
                if !ok {
                    return Err(StoreError::corrupt(
                        path,
                        format!("record at {offset} changed since it was checked"),
                    ));
                }
                store_io::write_all_at(target, target_path, &buf, header.a)
                    .map_err(|e| StoreError::io("write image data", target_path, e))?;
            }
            _ => store_io::zero_range(target, target_path, header.a, header.b)
                .map_err(|e| StoreError::io("punch hole in image", target_path, e))?,
        }
    }
    store_io::set_len(target, target_path, log.old_size)
        .map_err(|e| StoreError::io("set image size", target_path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::standby::journal::{BatchInfo, ExtentEntry};
    use ferry_protocol::types::{ExtentKind, SeqNo};
    use std::fs::OpenOptions;

    fn index_with(extents: Vec<ExtentEntry>) -> JournalIndex {
        JournalIndex {
            epoch: Epoch(2),
            base: Epoch(1),
            nonce: 0,
            batches: vec![BatchInfo {
                seq: SeqNo(1),
                scan_end: 0,
                offset: 0,
                header: RecordHeader::for_body(0, 0, 0, 0, &[]),
                extents,
            }],
            valid_len: 0,
            file_len: 0,
            tail: None,
        }
    }

    #[test]
    fn ranges_are_clipped_merged_and_include_shrink() {
        let e = |offset, length| ExtentEntry {
            offset,
            length,
            kind: ExtentKind::Data,
        };
        let index = index_with(vec![e(100, 50), e(0, 10), e(140, 20), e(990, 100)]);
        assert_eq!(
            touched_ranges(&index, 1000, 2000),
            vec![(0, 10), (100, 160), (990, 1000)]
        );
        assert_eq!(
            touched_ranges(&index, 1000, 500),
            vec![(0, 10), (100, 160), (500, 1000)]
        );
    }

    #[test]
    fn write_read_apply_restores_old_contents() {
        let dir = tempfile::tempdir().expect("tempdir");
        let image_path = dir.path().join("img");
        let image = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&image_path)
            .expect("open");
        let mut old = vec![0u8; 300_000];
        for (i, b) in old.iter_mut().enumerate().skip(200_000) {
            *b = (i % 7) as u8 + 1;
        }
        image.write_all_at(&old, 0).expect("write");
        let ranges = [(0u64, 150_000u64), (190_000, 300_000)];
        let log_path = dir.path().join("undo");
        write(
            &log_path,
            &image,
            &image_path,
            Epoch(2),
            Epoch(1),
            300_000,
            &ranges,
        )
        .expect("undo");

        // Scribble over everything and grow the file, then undo.
        image
            .write_all_at(&vec![0xEE; 400_000], 0)
            .expect("scribble");
        let UndoStatus::Complete(log) = read(&log_path).expect("read") else {
            panic!("undo log should be complete");
        };
        assert_eq!(log.old_size, 300_000);
        apply(&log, &log_path, &image, &image_path).expect("apply");
        let mut now = vec![0u8; 300_000];
        image.read_exact_at(&mut now, 0).expect("read");
        assert_eq!(image.metadata().expect("meta").len(), 300_000);
        // Bytes outside the captured ranges keep the scribble; inside they are old.
        assert_eq!(&now[..150_000], &old[..150_000]);
        assert_eq!(&now[190_000..], &old[190_000..]);
        assert!(now[150_000..190_000].iter().all(|b| *b == 0xEE));
    }

    #[test]
    fn truncated_log_is_incomplete_damaged_complete_log_is_corrupt() {
        let dir = tempfile::tempdir().expect("tempdir");
        let image_path = dir.path().join("img");
        let image = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&image_path)
            .expect("open");
        image.write_all_at(&[7u8; 8192], 0).expect("write");
        let log_path = dir.path().join("undo");
        write(
            &log_path,
            &image,
            &image_path,
            Epoch(2),
            Epoch(1),
            8192,
            &[(0, 8192)],
        )
        .expect("undo");
        let full = std::fs::read(&log_path).expect("read");

        std::fs::write(&log_path, &full[..full.len() - 1]).expect("truncate");
        assert!(matches!(
            read(&log_path).expect("read"),
            UndoStatus::Incomplete
        ));

        let mut damaged = full.clone();
        damaged[2 * HEADER_LEN + 20 + 10] ^= 0xFF;
        std::fs::write(&log_path, &damaged).expect("damage");
        assert!(matches!(read(&log_path), Err(StoreError::Corrupt { .. })));

        assert!(matches!(
            read(&dir.path().join("none")).expect("read"),
            UndoStatus::Missing
        ));
        assert!(
            is_zero(&[0u8; 33])
                && !is_zero(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1])
        );
    }
}
