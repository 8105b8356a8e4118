//! Tests of the RBD source that need no cluster: coalescing of close
//! extents and what of a bridged read is sent, the gap that follows the
//! link rate, and the analyser.

use bytes::Bytes;
use ferry_protocol::ExtentKind;

use super::coalesce::{coalesce, data_extents};
use super::*;
use crate::payload_codec::PlainExtent;
use crate::source::ChunkBody;

#[test]
fn coalesces_close_data_extents_only() {
    let pieces = [
        (0, 4096, true),
        (4096, 4096, true),     // adjacent: same span
        (12288, 4096, true),    // gap 4 KiB: bridged, a span of its own
        (200_000, 4096, true),  // far: separate
        (204_096, 4096, false), // zero, adjacent: separate kind
        (208_192, 4096, true),  // after a zero: not merged across it
    ];
    let out = coalesce(&pieces, 16 * 1024);
    let reads: Vec<_> = out.iter().map(|r| (r.offset, r.len, r.exists)).collect();
    assert_eq!(
        reads,
        vec![
            (0, 16384, true),
            (200_000, 4096, true),
            (204_096, 4096, false),
            (208_192, 4096, true)
        ]
    );
    assert_eq!(out[0].spans, vec![(0, 8192), (12288, 4096)]);
    assert_eq!(out[0].bridged(), 4096);
    assert!(out[1..].iter().all(|r| r.spans == vec![(r.offset, r.len)]));
    assert!(out[1..].iter().all(|r| r.bridged() == 0));
    let unbridged = coalesce(&pieces, 0);
    assert_eq!(unbridged.len(), 5);
    assert_eq!(unbridged[0].spans, vec![(0, 8192)]);
}

/// The bytes of `len` at image offset `offset`: a distinct pattern per
/// 4 KiB block, so a slice taken from the wrong place shows.
fn image_bytes(offset: u64, len: u64) -> Vec<u8> {
    (offset..offset + len)
        .map(|i| ((i / 4096) as u8).wrapping_mul(31) ^ (i as u8))
        .collect()
}

/// Encodes `extents` (one chunk) with compression off, as the WAN
/// incremental sends it: returns (plain data bytes, payload bytes).
fn encoded_bytes(extents: &[PlainExtent]) -> (u64, u64) {
    let switch =
        crate::compression::CompressionSwitch::new(crate::compression::CompressionMode::Off, false);
    let mut encoder = crate::payload_codec::Encoder::new(1).with_compression(switch);
    let chunk = encoder.encode(0, 4 << 20, extents).unwrap();
    (chunk.stats.plain_data_bytes, chunk.stats.payload_bytes)
}

#[test]
fn a_bridged_read_sends_only_its_listed_spans_while_the_link_is_the_bottleneck() {
    // Three 4 KiB writes of one object: two adjacent, one 12 KiB further.
    let pieces = [
        (65536, 4096, true),
        (69632, 4096, true),
        (86016, 4096, true),
    ];
    let listed: u64 = pieces.iter().map(|p| p.1).sum();
    let reads = coalesce(&pieces, 16 * 1024);
    assert_eq!(reads.len(), 1, "one read: no extra OSD operation");
    let read = &reads[0];
    assert_eq!((read.offset, read.len), (65536, 24576));
    let data = Bytes::from(image_bytes(read.offset, read.len));
    let len = u32::try_from(read.len).unwrap();

    // Link not the bottleneck: the bridged 12 KiB travel (one standby write).
    let whole = data_extents(read.offset, len, data.clone(), &read.spans, false);
    assert_eq!(whole.len(), 1);
    assert_eq!(encoded_bytes(&whole), (24576, 24576));

    // Link-bound: exactly the listed bytes are sent, from the right places.
    let cut = data_extents(read.offset, len, data.clone(), &read.spans, true);
    let placed: Vec<_> = cut.iter().map(|e| (e.offset, e.length)).collect();
    assert_eq!(placed, vec![(65536, 8192), (86016, 4096)]);
    for extent in &cut {
        let bytes = extent.data.as_deref().unwrap();
        assert_eq!(bytes, image_bytes(extent.offset, u64::from(extent.length)));
    }
    assert_eq!(encoded_bytes(&cut), (listed, listed));
    // The slices share the read buffer: nothing was copied.
    let base = data.as_ptr() as usize;
    assert_eq!(
        cut[1].data.as_ref().unwrap().as_ptr() as usize,
        base + 20480
    );

    // A read with nothing bridged is one extent either way; a short read
    // is passed on whole for the encoder to refuse.
    let single = coalesce(&pieces[..2], 16 * 1024);
    let one = Bytes::from(image_bytes(65536, 8192));
    assert_eq!(
        data_extents(65536, 8192, one, &single[0].spans, true).len(),
        1
    );
    let short = data.slice(..8192);
    let passed = data_extents(read.offset, len, short, &read.spans, true);
    assert_eq!(passed.len(), 1);
    assert_eq!(passed[0].length, len);
}

#[test]
fn gap_follows_link_rate() {
    assert_eq!(RbdSourceOptions::gap_for_link(None), 16 * 1024);
    assert_eq!(RbdSourceOptions::gap_for_link(Some(12_500_000)), 2_500);
    assert_eq!(
        RbdSourceOptions::gap_for_link(Some(10_000_000_000)),
        16 * 1024
    );
}

#[test]
fn analyzer_turns_zero_data_into_zero_extents() {
    let chunk = RawChunk {
        scan_start: 0,
        scan_end: 16384,
        body: ChunkBody::Extents(vec![
            PlainExtent {
                offset: 0,
                length: 4096,
                kind: ExtentKind::Data,
                data: Some(Bytes::from(vec![0u8; 4096])),
            },
            PlainExtent {
                offset: 4096,
                length: 4096,
                kind: ExtentKind::Zero,
                data: None,
            },
            PlainExtent {
                offset: 8192,
                length: 4096,
                kind: ExtentKind::Data,
                data: Some(Bytes::from(vec![7u8; 4096])),
            },
        ]),
        base_hashes: Vec::new(),
    };
    let out = ListedExtentsAnalyzer.analyze(chunk).unwrap();
    assert_eq!(out.extents.len(), 2);
    assert_eq!(
        (out.extents[0].kind, out.extents[0].length),
        (ExtentKind::Zero, 8192)
    );
    assert_eq!(out.extents[1].kind, ExtentKind::Data);
    assert_eq!(out.bytes_zero, 8192);
}
