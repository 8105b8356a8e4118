//! Which reads a chunk's listed extents become (close data extents bridged
//! into one read, [`super::RbdSourceOptions::coalesce_gap`]), and which
//! bytes of a bridged read are sent: all of them, or only the listed spans
//! while the link is the bottleneck ([`crate::compression::LinkBound`]).
//!
//! A bridged gap is data that did not change since the diff base, so the
//! standby already holds exactly these bytes. Sending it costs wire bytes
//! and saves the standby a write operation (one write instead of two);
//! cutting it saves the wire bytes. Either way the read stays one OSD
//! operation on the primary.

use bytes::Bytes;
use ferry_protocol::ExtentKind;

use crate::payload_codec::PlainExtent;

/// One read (or zero range) planned from a chunk's listed extents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Planned {
    /// First byte in the image.
    pub(super) offset: u64,
    /// Bytes read (listed spans plus the bridged gaps between them).
    pub(super) len: u64,
    /// Data (`true`) or a range the diff lists as zero/discarded.
    pub(super) exists: bool,
    /// The listed spans inside `[offset, offset + len)`, ascending, as
    /// `(offset, len)`: one span when nothing was bridged.
    pub(super) spans: Vec<(u64, u64)>,
}

impl Planned {
    /// Bytes read only to join the spans (unchanged since the base).
    pub(super) fn bridged(&self) -> u64 {
        self.len - self.spans.iter().map(|s| s.1).sum::<u64>()
    }
}

/// Merges data extents whose gap is at most `gap` (within one list, which
/// never crosses a chunk). Zero extents are kept apart; a zero extent between
/// two data extents stops the merge (its bytes must become zero). Adjacent
/// extents of one kind join one span; a bridged gap starts a new span.
pub(super) fn coalesce(pieces: &[(u64, u64, bool)], gap: u64) -> Vec<Planned> {
    let mut out: Vec<Planned> = Vec::with_capacity(pieces.len());
    for &(offset, len, exists) in pieces {
        if let Some(last) = out.last_mut() {
            let last_end = last.offset + last.len;
            let adjacent_same = last_end == offset && last.exists == exists;
            let bridgeable =
                exists && last.exists && offset >= last_end && offset - last_end <= gap;
            if adjacent_same || bridgeable {
                last.len = offset + len - last.offset;
                match last.spans.last_mut() {
                    Some(span) if span.0 + span.1 == offset => span.1 += len,
                    _ => last.spans.push((offset, len)),
                }
                continue;
            }
        }
        out.push(Planned {
            offset,
            len,
            exists,
            spans: vec![(offset, len)],
        });
    }
    out
}

/// The data extents to send for the `length` bytes read at `offset` over
/// the listed `spans`: one extent of all of it, or (`cut`) one per span,
/// sliced from `data` without copying. A read shorter than the spans is
/// passed on whole, so the encoder reports its length.
pub(super) fn data_extents(
    offset: u64,
    length: u32,
    data: Bytes,
    spans: &[(u64, u64)],
    cut: bool,
) -> Vec<PlainExtent> {
    let whole = |data: Bytes| PlainExtent {
        offset,
        length,
        kind: ExtentKind::Data,
        data: Some(data),
    };
    let fits = spans.iter().all(|&(start, len)| {
        start >= offset && start - offset + len <= data.len() as u64 && u32::try_from(len).is_ok()
    });
    if !cut || spans.len() < 2 || !fits {
        return vec![whole(data)];
    }
    spans
        .iter()
        .map(|&(start, len)| {
            let from = (start - offset) as usize;
            PlainExtent {
                offset: start,
                length: len as u32,
                kind: ExtentKind::Data,
                data: Some(data.slice(from..from + len as usize)),
            }
        })
        .collect()
}
