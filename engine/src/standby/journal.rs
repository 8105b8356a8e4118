//! The epoch journal `NAME.ferry/epoch-<E>.journal`: format, scan (with torn
//! tail detection) and replay onto an image.
//!
//! Records use the framing of [`super::record`] with magic `"FRJL"`:
//! - `OPEN` (first record, nonce 0): `a` = epoch, `b` = base epoch; body =
//!   format u32, nonce u64, image size u64, block size u32.
//! - `BATCH`: `a` = seq, `b` = scan_end; body = extent count u32, then per
//!   extent offset u64, length u32, kind u8 (13 bytes), then — incremental
//!   epochs only — the plain data of the data extents, in extent order.
//!   Full-copy epochs keep the data in the staging file instead.
//!
//! A journal is valid up to its first damaged or incomplete record; what
//! follows is a torn tail, cut off when the epoch is resumed.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use ferry_protocol::types::{Epoch, ExtentKind, SeqNo};

use super::io as store_io;
use super::record::{self, BodyCursor, Next, RecordHeader, RecordReader, HEADER_LEN};
use super::StoreError;
use crate::sys::uring::BlockWriter;

/// Journal magic.
pub(crate) const MAGIC: u32 = u32::from_le_bytes(*b"FRJL");
/// Kind of the first record.
pub(crate) const KIND_OPEN: u8 = 0x01;
/// Kind of a batch record.
pub(crate) const KIND_BATCH: u8 = 0x02;
/// Journal format version stored in the open record.
const FORMAT: u32 = 1;
/// Bytes per extent in a batch record's extent table.
pub(crate) const EXTENT_ENTRY_LEN: usize = 13;

/// An extent as recorded in the journal (data lives elsewhere).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ExtentEntry {
    /// Byte offset in the image.
    pub offset: u64,
    /// Length in bytes.
    pub length: u32,
    /// What the extent does.
    pub kind: ExtentKind,
}

impl ExtentEntry {
    /// End offset (exclusive). Cannot overflow: entries are checked against the
    /// image size when staged and when scanned.
    pub(crate) fn end(&self) -> u64 {
        self.offset + u64::from(self.length)
    }
}

/// Encodes the extent table of a batch record.
pub(crate) fn encode_table(extents: impl ExactSizeIterator<Item = ExtentEntry>) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + extents.len() * EXTENT_ENTRY_LEN);
    // Batches are bounded well below u32::MAX extents by MAX_BODY_LEN.
    out.extend_from_slice(&(extents.len() as u32).to_le_bytes());
    for e in extents {
        out.extend_from_slice(&e.offset.to_le_bytes());
        out.extend_from_slice(&e.length.to_le_bytes());
        out.push(e.kind.code());
    }
    out
}

/// One durable batch found by a scan.
#[derive(Clone, Debug)]
pub(crate) struct BatchInfo {
    /// Sequence number.
    pub seq: SeqNo,
    /// Scan end of the batch.
    pub scan_end: u64,
    /// File offset of the record header.
    pub offset: u64,
    /// The record header (for re-reading the body).
    pub header: RecordHeader,
    /// The batch's extents.
    pub extents: Vec<ExtentEntry>,
}

/// What a scan of a journal found.
#[derive(Clone, Debug)]
pub(crate) struct JournalIndex {
    /// Epoch of the journal.
    pub epoch: Epoch,
    /// Base epoch (0 = full copy).
    pub base: Epoch,
    /// The journal's nonce.
    pub nonce: u64,
    /// Valid batches, in order (seq 1, 2, …).
    pub batches: Vec<BatchInfo>,
    /// Length of the valid prefix.
    pub valid_len: u64,
    /// Length of the file.
    pub file_len: u64,
    /// Where and why the valid prefix ends, if it does before end-of-file.
    pub tail: Option<(u64, &'static str)>,
}

impl JournalIndex {
    /// Whether the epoch is a full copy.
    pub(crate) fn is_full(&self) -> bool {
        self.base == Epoch(0)
    }

    /// Last durable batch (0 = none).
    pub(crate) fn durable_seq(&self) -> SeqNo {
        self.batches.last().map_or(SeqNo(0), |b| b.seq)
    }

    /// Scan end of the last durable batch (0 = none).
    pub(crate) fn resume_offset(&self) -> u64 {
        self.batches.last().map_or(0, |b| b.scan_end)
    }

    /// End of the highest extent of any durable batch.
    pub(crate) fn high_water(&self) -> u64 {
        self.batches
            .iter()
            .flat_map(|b| b.extents.iter())
            .map(ExtentEntry::end)
            .max()
            .unwrap_or(0)
    }

    /// Every extent of every durable batch, in journal order.
    pub(crate) fn extents(&self) -> impl Iterator<Item = &ExtentEntry> {
        self.batches.iter().flat_map(|b| b.extents.iter())
    }
}

/// Writes a new journal's open record at offset 0 and fsyncs it; returns the
/// nonce and the journal length.
pub(crate) fn write_open_record(
    file: &File,
    path: &Path,
    epoch: Epoch,
    base: Epoch,
    size: u64,
    block_size: u32,
) -> Result<(u64, u64), StoreError> {
    let nonce: u64 = rand::random();
    let mut body = Vec::with_capacity(24);
    body.extend_from_slice(&FORMAT.to_le_bytes());
    body.extend_from_slice(&nonce.to_le_bytes());
    body.extend_from_slice(&size.to_le_bytes());
    body.extend_from_slice(&block_size.to_le_bytes());
    // The open record is read before the nonce is known, so it uses nonce 0.
    let header = RecordHeader::for_body(KIND_OPEN, epoch.get(), base.get(), 0, &[&body]);
    store_io::write_all_vectored_at(file, path, &[&header.encode(MAGIC, 0), &body], 0)
        .map_err(|e| StoreError::io("write journal", path, e))?;
    store_io::sync_all(file, path).map_err(|e| StoreError::io("fsync journal", path, e))?;
    Ok((nonce, (HEADER_LEN + body.len()) as u64))
}

/// Scans a journal: checks every record, stops at the first damaged or
/// incomplete one (the torn tail), and indexes the valid batches.
///
/// Errors: `Corrupt` when the open record is unusable (such a journal never
/// acknowledged anything: the open record is fsynced before `open_epoch`
/// returns) or when a record passes its checksums but makes no sense (wrong
/// kind, sequence gap, malformed extent table) — that is damage or a bug,
/// not a torn write.
pub(crate) fn scan(file: &File, path: &Path) -> Result<JournalIndex, StoreError> {
    let file_len = file
        .metadata()
        .map_err(|e| StoreError::io("stat journal", path, e))?
        .len();
    let mut reader = RecordReader::new(file, MAGIC, file_len);
    let read_err = |e| StoreError::io("read journal", path, e);
    let (epoch, base, nonce, open_size) = match reader.next_record().map_err(read_err)? {
        Next::Record { header, .. } if header.kind == KIND_OPEN => {
            let mut body = BodyCursor::new(reader.body());
            let format = body.u32();
            let nonce = body.u64();
            let size = body.u64();
            match (format, nonce, size) {
                (Some(FORMAT), Some(nonce), Some(size)) => {
                    (Epoch(header.a), Epoch(header.b), nonce, size)
                }
                _ => return Err(StoreError::corrupt(path, "unsupported journal open record")),
            }
        }
        Next::Record { .. } => {
            return Err(StoreError::corrupt(
                path,
                "first record is not an open record",
            ))
        }
        Next::End => return Err(StoreError::corrupt(path, "journal is empty")),
        Next::Bad { reason, .. } => {
            return Err(StoreError::corrupt(
                path,
                format!("open record unusable: {reason}"),
            ))
        }
    };
    reader.set_nonce(nonce);
    let full = base == Epoch(0);
    let mut batches: Vec<BatchInfo> = Vec::new();
    let mut tail = None;
    loop {
        match reader.next_record().map_err(read_err)? {
            Next::End => break,
            Next::Bad { offset, reason } => {
                tail = Some((offset, reason));
                break;
            }
            Next::Record { header, offset } => {
                if header.kind != KIND_BATCH {
                    return Err(StoreError::corrupt(
                        path,
                        format!(
                            "record at {offset} has unexpected kind {:#04x}",
                            header.kind
                        ),
                    ));
                }
                let expected = batches.last().map_or(SeqNo(1), |b| b.seq.next());
                if header.a != expected.get() {
                    return Err(StoreError::corrupt(
                        path,
                        format!(
                            "record at {offset} has seq {}, expected {expected}",
                            header.a
                        ),
                    ));
                }
                let extents = parse_table(reader.body(), full, open_size).map_err(|why| {
                    StoreError::corrupt(path, format!("record at {offset}: {why}"))
                })?;
                batches.push(BatchInfo {
                    seq: SeqNo(header.a),
                    scan_end: header.b,
                    offset,
                    header,
                    extents,
                });
            }
        }
    }
    Ok(JournalIndex {
        epoch,
        base,
        nonce,
        batches,
        valid_len: reader.position(),
        file_len,
        tail,
    })
}

/// Parses a batch body's extent table and checks that the data section has
/// exactly the right length.
fn parse_table(body: &[u8], full: bool, size: u64) -> Result<Vec<ExtentEntry>, &'static str> {
    let mut cursor = BodyCursor::new(body);
    let count = cursor.u32().ok_or("short extent table")?;
    if (count as usize).saturating_mul(EXTENT_ENTRY_LEN) > cursor.rest().len() {
        return Err("extent count exceeds the record");
    }
    let mut extents = Vec::with_capacity(count as usize);
    let mut data_len = 0u64;
    for _ in 0..count {
        let offset = cursor.u64().ok_or("short extent table")?;
        let length = cursor.u32().ok_or("short extent table")?;
        let kind = cursor
            .u8()
            .and_then(ExtentKind::from_code)
            .ok_or("unknown extent kind")?;
        let end = offset
            .checked_add(u64::from(length))
            .ok_or("extent overflows")?;
        if length == 0 || end > size {
            return Err("extent outside the image");
        }
        if kind == ExtentKind::Data {
            data_len += u64::from(length);
        }
        extents.push(ExtentEntry {
            offset,
            length,
            kind,
        });
    }
    let expected = if full { 0 } else { data_len };
    if cursor.rest().len() as u64 != expected {
        return Err("data section length does not match the extents");
    }
    Ok(extents)
}

thread_local! {
    /// One io_uring writer per thread (stager threads, commit threads): the
    /// ring is set up once and reused; it falls back to pwrite where io_uring
    /// is unavailable.
    static IMAGE_WRITER: std::cell::RefCell<BlockWriter> = std::cell::RefCell::new(BlockWriter::new());
}

/// Writes a run of extents to `target`: data extents from `data` (each
/// extent's bytes in order) through io_uring with several writes in flight,
/// zero/discard extents as holes. Extents of one call never overlap; pending
/// data writes complete before a hole is punched, so order is kept anyway.
pub(crate) fn write_extents(
    target: &File,
    target_path: &Path,
    extents: &[ExtentEntry],
    data: &[&[u8]],
) -> Result<(), StoreError> {
    let mut data_iter = data.iter();
    let mut pending: Vec<(u64, &[u8])> = Vec::new();
    let flush = |pending: &mut Vec<(u64, &[u8])>| -> Result<(), StoreError> {
        if !pending.is_empty() {
            IMAGE_WRITER
                .with(|writer| {
                    store_io::write_blocks(&mut writer.borrow_mut(), target, target_path, pending)
                })
                .map_err(|e| StoreError::io("write image data", target_path, e))?;
            pending.clear();
        }
        Ok(())
    };
    for extent in extents {
        match extent.kind {
            ExtentKind::Data => {
                let Some(bytes) = data_iter.next() else {
                    return Err(StoreError::corrupt(target_path, "data extent without data"));
                };
                pending.push((extent.offset, bytes));
            }
            ExtentKind::Zero | ExtentKind::Discard => {
                flush(&mut pending)?;
                store_io::zero_range(target, target_path, extent.offset, u64::from(extent.length))
                    .map_err(|e| StoreError::io("punch hole in image", target_path, e))?;
            }
        }
    }
    flush(&mut pending)
}

/// Replays every indexed batch of an incremental journal onto `target`
/// (idempotent: each extent sets its range to fixed content). The caller sets
/// the final size and fsyncs.
pub(crate) fn replay(
    index: &JournalIndex,
    journal: &File,
    journal_path: &Path,
    target: &File,
    target_path: &Path,
) -> Result<(), StoreError> {
    let mut buf = Vec::new();
    for batch in &index.batches {
        let ok = record::read_body_at(journal, batch.offset, &batch.header, index.nonce, &mut buf)
            .map_err(|e| StoreError::io("read journal", journal_path, e))?;
        if !ok {
            return Err(StoreError::corrupt(
                journal_path,
                format!("batch {} changed on disk since it was scanned", batch.seq),
            ));
        }
        let table_len = 4 + batch.extents.len() * EXTENT_ENTRY_LEN;
        let mut data = &buf[table_len.min(buf.len())..];
        let mut slices: Vec<&[u8]> = Vec::with_capacity(batch.extents.len());
        for extent in &batch.extents {
            if extent.kind == ExtentKind::Data {
                let n = extent.length as usize;
                if data.len() < n {
                    return Err(StoreError::corrupt(
                        journal_path,
                        "batch data shorter than its extents",
                    ));
                }
                let (head, rest) = data.split_at(n);
                slices.push(head);
                data = rest;
            }
        }
        write_extents(target, target_path, &batch.extents, &slices)?;
    }
    Ok(())
}

/// Reads `[offset, offset + len)` of a file into `buf` (resized).
pub(crate) fn read_range(
    file: &File,
    path: &Path,
    offset: u64,
    len: usize,
    buf: &mut Vec<u8>,
) -> Result<(), StoreError> {
    buf.resize(len, 0);
    file.read_exact_at(buf, offset)
        .map_err(|e| StoreError::io("read image", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_entry(offset: u64, length: u32) -> ExtentEntry {
        ExtentEntry {
            offset,
            length,
            kind: ExtentKind::Data,
        }
    }

    fn append_batch(
        file: &File,
        nonce: u64,
        at: u64,
        seq: u64,
        extents: &[ExtentEntry],
        data: &[u8],
    ) -> u64 {
        let table = encode_table(extents.iter().copied());
        let header = RecordHeader::for_body(KIND_BATCH, seq, seq * 100, nonce, &[&table, data]);
        crate::sys::fs::write_all_vectored_at(
            file,
            &[&header.encode(MAGIC, nonce), &table, data],
            at,
        )
        .expect("write");
        at + (HEADER_LEN + table.len() + data.len()) as u64
    }

    #[test]
    fn scan_indexes_batches_and_finds_torn_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("open");
        let (nonce, mut end) = write_open_record(&file, &path, Epoch(3), Epoch(2), 1 << 20, 4096)
            .expect("open record");
        end = append_batch(&file, nonce, end, 1, &[data_entry(0, 4)], b"abcd");
        let second = end;
        end = append_batch(&file, nonce, end, 2, &[data_entry(8, 2)], b"xy");
        let index = scan(&file, &path).expect("scan");
        assert_eq!(
            (
                index.epoch,
                index.base,
                index.durable_seq(),
                index.resume_offset()
            ),
            (Epoch(3), Epoch(2), SeqNo(2), 200)
        );
        assert_eq!(index.valid_len, end);
        assert_eq!(index.high_water(), 10);

        file.set_len(end - 1).expect("truncate");
        let index = scan(&file, &path).expect("scan");
        assert_eq!(index.durable_seq(), SeqNo(1));
        assert_eq!(index.valid_len, second);
        assert!(index.tail.is_some());
    }

    #[test]
    fn valid_record_with_sequence_gap_is_corrupt() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("open");
        let (nonce, end) = write_open_record(&file, &path, Epoch(1), Epoch(0), 1 << 20, 4096)
            .expect("open record");
        append_batch(&file, nonce, end, 2, &[data_entry(0, 4)], b"");
        assert!(matches!(
            scan(&file, &path),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
