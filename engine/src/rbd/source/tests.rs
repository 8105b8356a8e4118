//! Tests of the RBD source that need no cluster: coalescing of close
//! extents, the gap that follows the link rate, and the analyser.

use super::*;

#[test]
fn coalesces_close_data_extents_only() {
    let pieces = [
        (0, 4096, true),
        (8192, 4096, true),     // gap 4 KiB: merged
        (200_000, 4096, true),  // far: separate
        (204_096, 4096, false), // zero, adjacent: separate kind
        (208_192, 4096, true),  // after a zero: not merged across it
    ];
    let out = coalesce(&pieces, 16 * 1024);
    assert_eq!(
        out,
        vec![
            (0, 12288, true),
            (200_000, 4096, true),
            (204_096, 4096, false),
            (208_192, 4096, true)
        ]
    );
    assert_eq!(coalesce(&pieces, 0).len(), 5);
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
