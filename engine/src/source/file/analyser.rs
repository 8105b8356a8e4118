//! Change detection of the file backend, run on the pipeline's worker
//! threads: per block a zero check and a truncated BLAKE3 compared with the
//! base manifest, coalesced into extents.

use bytes::Bytes;
use ferry_protocol::ExtentKind;

use crate::payload_codec::PlainExtent;
use crate::source::manifest::{BlockHash, BLOCK_SIZE};
use crate::source::{AnalyzedChunk, ChunkAnalyzer, ChunkBody, ChunkRecord, RawChunk, SourceError};

/// Longest extent the analyser emits: the largest block multiple that fits a u32.
const MAX_EXTENT_LEN: u64 = (u32::MAX as u64 / BLOCK_SIZE as u64) * BLOCK_SIZE as u64;

/// Change detection of the file backend: zero check and truncated BLAKE3 per
/// block, compared with the base manifest, coalesced into extents.
#[derive(Debug)]
pub(super) struct FileAnalyzer {
    pub(super) block_size: u64,
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
