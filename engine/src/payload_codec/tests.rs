//! Tests of the payload codec: round trips, compression decisions, and
//! every damaged payload the decoder must refuse.

use super::*;
use ferry_protocol::{Epoch, ImageName, SeqNo};
use rand::{RngCore, SeedableRng};

fn random(len: usize, seed: u64) -> Bytes {
    let mut data = vec![0u8; len];
    rand_chacha::ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut data);
    Bytes::from(data)
}

fn text(len: usize) -> Bytes {
    let line = b"2026-11-02T10:00:00Z INFO ferry::engine applied batch seq=42 bytes=4096\n";
    Bytes::from(line.iter().copied().cycle().take(len).collect::<Vec<u8>>())
}

fn data(offset: u64, bytes: Bytes) -> PlainExtent {
    PlainExtent {
        offset,
        length: bytes.len() as u32,
        kind: ExtentKind::Data,
        data: Some(bytes),
    }
}

fn zero(offset: u64, length: u32) -> PlainExtent {
    PlainExtent {
        offset,
        length,
        kind: ExtentKind::Zero,
        data: None,
    }
}

fn batch(chunk: &EncodedChunk) -> ExtentBatch {
    ExtentBatch {
        image: ImageName::new("img").unwrap(),
        epoch: Epoch(1),
        seq: SeqNo(1),
        scan_start: chunk.scan_start,
        scan_end: chunk.scan_end,
        payload_crc32c: chunk.payload_crc32c,
        plain_blake3: chunk.plain_blake3,
        extents: chunk.extents.clone(),
        payload: chunk.payload.clone(),
    }
}

/// The plain bytes `chunk` decodes to, zero extents filled in.
fn rebuilt(chunk: &EncodedChunk) -> Vec<u8> {
    let mut plain = Vec::new();
    for extent in Decoder::new().decode(&batch(chunk)).unwrap() {
        match extent.data {
            Some(bytes) => plain.extend_from_slice(&bytes),
            None => plain.extend(std::iter::repeat_n(0u8, extent.length as usize)),
        }
    }
    plain
}

fn sample_extents() -> Vec<PlainExtent> {
    vec![
        data(0, random(64 * 1024, 1)),
        zero(64 * 1024, 8192),
        data(80 * 1024, text(100 * 1024)),
        data(200 * 1024, Bytes::from(vec![0u8; 4096])),
        data(300 * 1024, random(4096, 2)),
        PlainExtent {
            offset: 400 * 1024,
            length: 4096,
            kind: ExtentKind::Discard,
            data: None,
        },
    ]
}

#[test]
fn round_trip_random_zero_and_compressible() {
    let extents = sample_extents();
    let mut encoder = Encoder::new(1);
    let chunk = encoder.encode(0, 1 << 20, &extents).unwrap();
    assert_eq!(chunk.extents[0].codec, Codec::Raw, "random data stays raw");
    assert_eq!(chunk.extents[2].codec, Codec::Zstd, "text compresses");
    assert!(chunk.extents[2].encoded_len < 10 * 1024);
    assert_eq!(
        (chunk.extents[3].kind, chunk.extents[3].encoded_len),
        (ExtentKind::Zero, 0),
        "a data extent of zero bytes becomes a zero extent"
    );
    assert_eq!(
        chunk.extents[4].codec,
        Codec::Raw,
        "small random block stays raw"
    );
    assert_eq!(chunk.extents[1].encoded_len, 0);
    assert_eq!(chunk.stats.bytes_changed, (64 + 8 + 100 + 4 + 4 + 4) * 1024);
    assert_eq!(chunk.stats.plain_data_bytes, (64 + 100 + 4) * 1024);
    assert_eq!(chunk.stats.payload_bytes, chunk.payload.len() as u64);
    assert!(chunk.payload.len() < (64 + 100 + 4) * 1024);

    let decoded = Decoder::new().decode(&batch(&chunk)).unwrap();
    assert_eq!(decoded.len(), extents.len());
    for (plain, out) in extents.iter().zip(&decoded) {
        assert_eq!(plain.offset, out.offset);
        assert_eq!(plain.length, out.length);
        if plain
            .data
            .as_deref()
            .is_some_and(|d| d.iter().all(|&b| b == 0))
        {
            assert_eq!((out.kind, &out.data), (ExtentKind::Zero, &None));
        } else {
            assert_eq!(plain.kind, out.kind);
            assert_eq!(plain.data, out.data);
        }
    }
}

#[test]
fn a_mixed_extent_travels_as_runs_and_decodes_to_the_same_bytes() {
    let mut mixed = random(128 * 1024, 3).to_vec();
    mixed.extend(vec![0u8; 256 * 1024]);
    mixed.extend(text(192 * 1024).to_vec());
    let extents = vec![data(4096, Bytes::from(mixed.clone()))];
    let chunk = Encoder::new(1).encode(0, 1 << 20, &extents).unwrap();
    let shape: Vec<_> = chunk
        .extents
        .iter()
        .map(|e| (e.kind, e.codec, e.length))
        .collect();
    assert_eq!(
        shape,
        vec![
            (ExtentKind::Data, Codec::Raw, 128 * 1024),
            (ExtentKind::Zero, Codec::Raw, 256 * 1024),
            (ExtentKind::Data, Codec::Zstd, 192 * 1024),
        ]
    );
    assert_eq!(rebuilt(&chunk), mixed);
    // Compression off: the same runs, none compressed.
    let off =
        crate::compression::CompressionSwitch::new(crate::compression::CompressionMode::Off, false);
    let chunk = Encoder::new(1)
        .with_compression(off)
        .encode(0, 1 << 20, &extents)
        .unwrap();
    assert!(chunk.extents.iter().all(|e| e.codec == Codec::Raw));
    assert_eq!(chunk.stats.plain_data_bytes, (128 + 192) * 1024);
}

#[test]
fn on_a_link_bound_sync_interior_zero_blocks_travel_as_zero_extents() {
    // A fresh object's 64 KiB piece with two written 4 KiB blocks and three
    // zero blocks between them; a send limit makes the switch link-bound.
    let mut piece = vec![0u8; 64 * 1024];
    piece[..4096].copy_from_slice(&random(4096, 21));
    piece[4 * 4096..5 * 4096].copy_from_slice(&random(4096, 22));
    let extents = vec![data(0, Bytes::from(piece.clone()))];
    let bound =
        crate::compression::CompressionSwitch::new(crate::compression::CompressionMode::Off, true);
    let chunk = Encoder::new(1)
        .with_compression(bound)
        .encode(0, 1 << 20, &extents)
        .unwrap();
    let shape: Vec<_> = chunk.extents.iter().map(|e| (e.kind, e.length)).collect();
    assert_eq!(
        shape,
        vec![
            (ExtentKind::Data, 4096),
            (ExtentKind::Zero, 3 * 4096),
            (ExtentKind::Data, 4096),
            (ExtentKind::Zero, 11 * 4096),
        ]
    );
    assert_eq!(chunk.payload.len(), 2 * 4096);
    assert_eq!(rebuilt(&chunk), piece);
    // With zstd on they cost a few bytes inside one compressed run.
    let zstd =
        crate::compression::CompressionSwitch::new(crate::compression::CompressionMode::Zstd, true);
    let chunk = Encoder::new(1)
        .with_compression(zstd)
        .encode(0, 1 << 20, &extents)
        .unwrap();
    let shape: Vec<_> = chunk.extents.iter().map(|e| (e.kind, e.length)).collect();
    assert_eq!(
        shape,
        vec![(ExtentKind::Data, 5 * 4096), (ExtentKind::Zero, 11 * 4096)]
    );
}

#[test]
fn empty_chunk_round_trips() {
    let chunk = Encoder::new(1).encode(4096, 8192, &[]).unwrap();
    assert!(chunk.payload.is_empty());
    assert!(Decoder::new().decode(&batch(&chunk)).unwrap().is_empty());
}

#[test]
fn large_payload_beyond_pool_buffer_round_trips() {
    let pool = BufferPool::recycling(64 * 1024, 1);
    let mut encoder = Encoder::with_payload_pool(1, pool);
    let extents = vec![
        data(0, random(300 * 1024, 9)),
        data(1 << 20, text(200 * 1024)),
    ];
    let chunk = encoder.encode(0, 2 << 20, &extents).unwrap();
    let decoded = Decoder::new().decode(&batch(&chunk)).unwrap();
    assert_eq!(decoded[0].data, extents[0].data);
    assert_eq!(decoded[1].data, extents[1].data);
}

#[test]
fn inconsistent_extents_are_rejected() {
    let mut encoder = Encoder::new(1);
    let overlap = vec![data(0, random(8192, 1)), data(4096, random(4096, 2))];
    assert!(matches!(
        encoder.encode(0, 1 << 20, &overlap),
        Err(CodecError::BadPlacement { .. })
    ));
    let outside = vec![data(1 << 20, random(4096, 1))];
    assert!(matches!(
        encoder.encode(0, 1 << 20, &outside),
        Err(CodecError::BadPlacement { .. })
    ));
    let missing = vec![PlainExtent {
        offset: 0,
        length: 4096,
        kind: ExtentKind::Data,
        data: None,
    }];
    assert!(matches!(
        encoder.encode(0, 1 << 20, &missing),
        Err(CodecError::MissingData { .. })
    ));
    let short = vec![PlainExtent {
        offset: 0,
        length: 8192,
        kind: ExtentKind::Data,
        data: Some(random(4096, 3)),
    }];
    assert!(matches!(
        encoder.encode(0, 1 << 20, &short),
        Err(CodecError::LengthMismatch { .. })
    ));
}

#[test]
fn crc_flip_is_payload_crc() {
    let chunk = Encoder::new(1)
        .encode(0, 1 << 20, &sample_extents())
        .unwrap();
    let mut bad = batch(&chunk);
    let mut payload = bad.payload.to_vec();
    payload[1000] ^= 0x10;
    bad.payload = Bytes::from(payload);
    let error = Decoder::new().decode(&bad).unwrap_err();
    assert_eq!(error.nack_reason(), NackReason::PayloadCrc);
}

#[test]
fn tamper_with_recomputed_crc_is_plain_blake3() {
    let chunk = Encoder::new(1)
        .encode(0, 1 << 20, &sample_extents())
        .unwrap();
    let mut bad = batch(&chunk);
    let mut payload = bad.payload.to_vec();
    // Byte 10 lies in the first (raw) extent: decoding still succeeds.
    payload[10] ^= 0x01;
    bad.payload = Bytes::from(payload);
    bad.payload_crc32c = crc32c::crc32c(&bad.payload);
    let error = Decoder::new().decode(&bad).unwrap_err();
    assert!(
        matches!(error, VerifyError::PlainBlake3 { .. }),
        "{error:?}"
    );
    assert_eq!(error.nack_reason(), NackReason::PlainBlake3);
}

#[test]
fn zstd_bomb_is_a_decode_error() {
    // 16 MiB of zeroes in a tiny frame, declared as a 4 KiB extent.
    let frame = zstd::bulk::compress(&vec![0u8; 16 << 20], 1).unwrap();
    assert!(frame.len() < 4096);
    let payload = Bytes::from(frame);
    let bomb = ExtentBatch {
        image: ImageName::new("img").unwrap(),
        epoch: Epoch(1),
        seq: SeqNo(1),
        scan_start: 0,
        scan_end: 4096,
        payload_crc32c: crc32c::crc32c(&payload),
        plain_blake3: [0; 32],
        extents: vec![ExtentHeader {
            offset: 0,
            length: 4096,
            kind: ExtentKind::Data,
            codec: Codec::Zstd,
            encoded_len: payload.len() as u32,
        }],
        payload,
    };
    let error = Decoder::new().decode(&bomb).unwrap_err();
    assert!(matches!(error, VerifyError::Zstd { .. }), "{error:?}");
    assert_eq!(error.nack_reason(), NackReason::Decode);
}

#[test]
fn short_frame_and_declared_giant_extent_are_decode_errors() {
    let frame = zstd::bulk::compress(&[7u8; 1000], 1).unwrap();
    let payload = Bytes::from(frame);
    let mut short = ExtentBatch {
        image: ImageName::new("img").unwrap(),
        epoch: Epoch(1),
        seq: SeqNo(1),
        scan_start: 0,
        scan_end: u64::MAX,
        payload_crc32c: crc32c::crc32c(&payload),
        plain_blake3: [0; 32],
        extents: vec![ExtentHeader {
            offset: 0,
            length: 4096,
            kind: ExtentKind::Data,
            codec: Codec::Zstd,
            encoded_len: payload.len() as u32,
        }],
        payload,
    };
    let error = Decoder::new().decode(&short).unwrap_err();
    assert!(
        matches!(error, VerifyError::ShortFrame { actual: 1000, .. }),
        "{error:?}"
    );
    // A 4 GiB extent is refused before any allocation.
    short.extents[0].length = u32::MAX;
    let error = Decoder::new().decode(&short).unwrap_err();
    assert!(matches!(error, VerifyError::TooLarge { .. }), "{error:?}");
    assert_eq!(error.nack_reason(), NackReason::Decode);
}

#[test]
fn malformed_layouts_are_decode_errors() {
    let chunk = Encoder::new(1)
        .encode(0, 1 << 20, &sample_extents())
        .unwrap();
    let good = batch(&chunk);
    let mut cases = Vec::new();
    let mut b = good.clone();
    b.extents.swap(0, 1);
    cases.push(b);
    let mut b = good.clone();
    b.extents[1].encoded_len = 5;
    cases.push(b);
    let mut b = good.clone();
    b.extents[0].encoded_len -= 1;
    cases.push(b);
    let mut b = good.clone();
    b.scan_end = 300 * 1024;
    cases.push(b);
    let mut b = good.clone();
    b.extents[0].length = 0;
    cases.push(b);
    for case in cases {
        let error = Decoder::new().decode(&case).unwrap_err();
        assert_eq!(error.nack_reason(), NackReason::Decode, "{error:?}");
    }
}
