//! Reading one cycle's capture: listing the changed extents window by
//! window, planning each chunk's reads ([`super::coalesce`]) with several
//! chunks in flight, and turning completed reads into the chunk's extents.
//! The first window can be listed before the cycle starts
//! ([`ListedAhead`]): the sender learns how many bytes a small cycle will
//! read, and the cycle then starts from that listing.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use ferry_protocol::ExtentKind;

use super::coalesce::{coalesce, data_extents};
use super::{state_error, LIST_WINDOW};
use crate::payload_codec::PlainExtent;
use crate::source::{ChunkBody, RawChunk, SourceError};
use crate::sys::librbd::{Aio, Image};

/// A read in flight (or a zero range) of a planned chunk.
enum PendingOp {
    Data {
        offset: u64,
        len: u32,
        aio: Aio,
        /// The listed spans of the read (more than one: gaps bridged).
        spans: Vec<(u64, u64)>,
    },
    Zero {
        offset: u64,
        len: u32,
    },
}

/// A chunk whose reads are in flight.
struct PendingChunk {
    scan_start: u64,
    scan_end: u64,
    ops: Vec<PendingOp>,
}

/// Lists the changes of `[from, from + LIST_WINDOW)` (clamped to `size`) of
/// `snap_image` since `base_snap` (`None`: everything allocated) into
/// `listed`; returns where the listing ends.
fn list_window(
    snap_image: &Image,
    base_snap: Option<&str>,
    from: u64,
    size: u64,
    listed: &mut VecDeque<(u64, u64, bool)>,
) -> Result<u64, SourceError> {
    let len = LIST_WINDOW.min(size - from);
    snap_image
        .diff_iterate(
            base_snap,
            from,
            len,
            base_snap.is_none(),
            &mut |offset, len, exists| {
                listed.push_back((offset, len, exists));
                true
            },
        )
        .map_err(|e| state_error(e.into()))?;
    Ok(from + len)
}

/// The first window of a cycle's listing, made before the cycle starts.
pub(super) struct ListedAhead {
    snap_image: Arc<Image>,
    capture: String,
    base_snap: Option<String>,
    from: u64,
    size: u64,
    listed: VecDeque<(u64, u64, bool)>,
    until: u64,
}

impl ListedAhead {
    /// Lists the first window of the cycle reading `snap_image` (capture
    /// `capture`, `size` bytes) from `from`, changes since `base_snap`.
    pub(super) fn list(
        snap_image: Arc<Image>,
        capture: String,
        base_snap: Option<String>,
        size: u64,
        from: u64,
    ) -> Result<Self, SourceError> {
        let from = from.min(size);
        let mut listed = VecDeque::new();
        let until = if from < size {
            list_window(&snap_image, base_snap.as_deref(), from, size, &mut listed)?
        } else {
            size
        };
        Ok(Self {
            snap_image,
            capture,
            base_snap,
            from,
            size,
            listed,
            until,
        })
    }

    /// Bytes of data (not zero ranges) the cycle reads, when the listing
    /// covers the whole rest of the capture; `None` when it does not.
    pub(super) fn data_bytes(&self) -> Option<u64> {
        (self.until >= self.size).then(|| {
            self.listed
                .iter()
                .filter(|(_, _, exists)| *exists)
                .map(|(_, len, _)| len)
                .sum()
        })
    }

    /// Whether this listing is the start of the cycle reading `capture`
    /// since `base_snap` from `from`.
    pub(super) fn is_for(&self, capture: &str, base_snap: Option<&str>, from: u64) -> bool {
        self.capture == capture && self.base_snap.as_deref() == base_snap && self.from == from
    }
}

/// The cycle being read: what is listed, planned and in flight.
pub(super) struct ActiveCycle {
    snap_image: Arc<Image>,
    base_snap: Option<String>,
    size: u64,
    chunk_size: u64,
    /// Start of the next chunk to plan.
    cursor: u64,
    /// Listed extents not yet planned: (offset, len, exists).
    listed: VecDeque<(u64, u64, bool)>,
    /// Everything below this has been listed.
    listed_until: u64,
    in_flight: VecDeque<PendingChunk>,
    /// Bytes of bridged gaps read this cycle, and how many of them were
    /// cut out before sending.
    bridged_read: u64,
    bridged_cut: u64,
}

impl ActiveCycle {
    /// A cycle reading `snap_image` (the capture) of `size` bytes from
    /// `resume`, listing changes since `base_snap` (`None`: everything
    /// allocated), in chunks of `chunk_size`.
    pub(super) fn new(
        snap_image: Arc<Image>,
        base_snap: Option<String>,
        size: u64,
        chunk_size: u64,
        resume: u64,
    ) -> Self {
        Self {
            snap_image,
            base_snap,
            size,
            chunk_size,
            cursor: resume,
            listed: VecDeque::new(),
            listed_until: resume,
            in_flight: VecDeque::new(),
            bridged_read: 0,
            bridged_cut: 0,
        }
    }

    /// The cycle [`ListedAhead`] listed the start of, in chunks of
    /// `chunk_size`.
    pub(super) fn from_listed(ahead: ListedAhead, chunk_size: u64) -> Self {
        Self {
            snap_image: ahead.snap_image,
            base_snap: ahead.base_snap,
            size: ahead.size,
            chunk_size,
            cursor: ahead.from,
            listed: ahead.listed,
            listed_until: ahead.until,
            in_flight: VecDeque::new(),
            bridged_read: 0,
            bridged_cut: 0,
        }
    }

    /// The next chunk in scan order (`None` at the end), keeping up to
    /// `in_flight` chunks' reads going, data extents closer than `gap`
    /// read as one. With `link_bound`, a bridged read yields only its
    /// listed spans.
    pub(super) fn next_chunk(
        &mut self,
        gap: u64,
        in_flight: usize,
        link_bound: bool,
    ) -> Result<Option<RawChunk>, SourceError> {
        while self.in_flight.len() < in_flight.max(1) {
            match self.plan_chunk(gap)? {
                Some(chunk) => self.in_flight.push_back(chunk),
                None => break,
            }
        }
        match self.in_flight.pop_front() {
            Some(chunk) => self.complete(chunk, link_bound).map(Some),
            None => Ok(None),
        }
    }

    /// Bytes read only to bridge gaps between listed extents so far, and
    /// how many of them were not sent.
    pub(super) fn bridged(&self) -> (u64, u64) {
        (self.bridged_read, self.bridged_cut)
    }

    /// Plans the next chunk and starts its reads.
    fn plan_chunk(&mut self, gap: u64) -> Result<Option<PendingChunk>, SourceError> {
        if self.cursor >= self.size {
            return Ok(None);
        }
        let scan_start = self.cursor;
        let scan_end = ((scan_start / self.chunk_size + 1) * self.chunk_size).min(self.size);
        while self.listed_until < scan_end {
            self.listed_until = list_window(
                &self.snap_image,
                self.base_snap.as_deref(),
                self.listed_until,
                self.size,
                &mut self.listed,
            )?;
        }
        // Take the listed extents of [scan_start, scan_end), splitting at the end.
        let mut pieces: Vec<(u64, u64, bool)> = Vec::new();
        while let Some(&(offset, len, exists)) = self.listed.front() {
            let end = offset + len;
            if end <= scan_start {
                self.listed.pop_front();
                continue;
            }
            if offset >= scan_end {
                break;
            }
            let start = offset.max(scan_start);
            let stop = end.min(scan_end);
            pieces.push((start, stop - start, exists));
            if end <= scan_end {
                self.listed.pop_front();
            } else {
                break;
            }
        }
        let mut ops = Vec::new();
        for read in coalesce(&pieces, gap) {
            let (offset, len) = (read.offset, read.len);
            let len32 = u32::try_from(len).map_err(|_| SourceError::Misuse {
                reason: "an extent longer than a chunk",
            })?;
            if read.exists {
                self.bridged_read += read.bridged();
                let aio = self
                    .snap_image
                    .aio_read(offset, len32 as usize)
                    .map_err(|e| state_error(e.into()))?;
                ops.push(PendingOp::Data {
                    offset,
                    len: len32,
                    aio,
                    spans: read.spans,
                });
            } else {
                ops.push(PendingOp::Zero { offset, len: len32 });
            }
        }
        self.cursor = scan_end;
        Ok(Some(PendingChunk {
            scan_start,
            scan_end,
            ops,
        }))
    }

    /// Waits for `chunk`'s reads and turns them into its extents; with
    /// `link_bound`, a bridged read yields only its listed spans.
    fn complete(&mut self, chunk: PendingChunk, link_bound: bool) -> Result<RawChunk, SourceError> {
        let mut extents = Vec::with_capacity(chunk.ops.len());
        for op in chunk.ops {
            match op {
                PendingOp::Data {
                    offset,
                    len,
                    aio,
                    spans,
                } => {
                    let data: Bytes = aio
                        .wait()
                        .map_err(|e| state_error(e.into()))?
                        .unwrap_or_default();
                    let sent = data_extents(offset, len, data, &spans, link_bound);
                    if sent.len() > 1 {
                        let listed: u64 = spans.iter().map(|s| s.1).sum();
                        self.bridged_cut += u64::from(len) - listed;
                    }
                    extents.extend(sent);
                }
                PendingOp::Zero { offset, len } => extents.push(PlainExtent {
                    offset,
                    length: len,
                    kind: ExtentKind::Zero,
                    data: None,
                }),
            }
        }
        Ok(RawChunk {
            scan_start: chunk.scan_start,
            scan_end: chunk.scan_end,
            body: ChunkBody::Extents(extents),
            base_hashes: Vec::new(),
        })
    }
}
