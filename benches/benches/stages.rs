//! Criterion benches of each pipeline stage on the same 50/25/25 mix of
//! random, zero and log-text 64 KiB chunks that targets.md's ceilings use:
//! zero check, BLAKE3 (per 4 KiB block as change detection does, and per
//! batch as the end-to-end check does), CRC-32C, zstd compress/decompress,
//! the batch codec both ways, and frame encode/decode.

use bytes::{Bytes, BytesMut};
use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, Throughput,
};
use ferry_benches::mixed_chunks;
use ferry_engine::payload_codec::{Decoder, Encoder, PlainExtent};
use ferry_protocol::{Epoch, ExtentBatch, ExtentKind, FrameDecoder, ImageName, Message, SeqNo};

const CHUNK: usize = 64 * 1024;
const TOTAL: usize = 64 * 1024 * 1024;

fn stages(c: &mut Criterion) {
    let chunks = mixed_chunks(TOTAL / CHUNK, CHUNK, 7);
    let mut group = c.benchmark_group("stage");
    group.throughput(Throughput::Bytes(TOTAL as u64));
    group.sample_size(10);
    bench_checks(&mut group, &chunks);
    bench_zstd(&mut group, &chunks);
    bench_codec_and_frames(&mut group, &chunks);
    group.finish();
}

/// Zero check, BLAKE3 per 4 KiB block and per 64 KiB chunk, CRC-32C.
fn bench_checks(group: &mut BenchmarkGroup<WallTime>, chunks: &[Vec<u8>]) {
    group.bench_function("zero_check", |b| {
        b.iter(|| chunks.iter().filter(|c| c.iter().all(|x| *x == 0)).count())
    });
    group.bench_function("blake3_4k_blocks", |b| {
        b.iter(|| {
            let mut acc = 0u8;
            for c in chunks {
                for block in c.chunks(4096) {
                    acc ^= blake3::hash(block).as_bytes()[0];
                }
            }
            acc
        })
    });
    group.bench_function("blake3_64k", |b| {
        b.iter(|| {
            chunks
                .iter()
                .map(|c| blake3::hash(c).as_bytes()[0])
                .fold(0u8, |a, x| a ^ x)
        })
    });
    group.bench_function("crc32c", |b| {
        b.iter(|| {
            chunks
                .iter()
                .fold(0u32, |acc, c| crc32c::crc32c_append(acc, c))
        })
    });
}

/// zstd compress at levels 1 and -1, and decompress of level 1.
fn bench_zstd(group: &mut BenchmarkGroup<WallTime>, chunks: &[Vec<u8>]) {
    for level in [1, -1] {
        group.bench_with_input(
            BenchmarkId::new("zstd_compress", level),
            &level,
            |b, &level| {
                let mut compressor = zstd::bulk::Compressor::new(level).unwrap();
                b.iter(|| {
                    chunks
                        .iter()
                        .map(|c| compressor.compress(c).unwrap().len())
                        .sum::<usize>()
                })
            },
        );
    }
    let compressed: Vec<Vec<u8>> = {
        let mut compressor = zstd::bulk::Compressor::new(1).unwrap();
        chunks
            .iter()
            .map(|c| compressor.compress(c).unwrap())
            .collect()
    };
    group.bench_function("zstd_decompress", |b| {
        let mut decompressor = zstd::bulk::Decompressor::new().unwrap();
        b.iter(|| {
            compressed
                .iter()
                .map(|c| decompressor.decompress(c, CHUNK).unwrap().len())
                .sum::<usize>()
        })
    });
}

/// The batch codec as the pipeline uses it (4 MiB batches of 64 KiB
/// extents) both ways, and frame encode/decode of the encoded batches.
fn bench_codec_and_frames(group: &mut BenchmarkGroup<WallTime>, chunks: &[Vec<u8>]) {
    let batches = plain_batches(chunks);
    group.bench_function("codec_encode", |b| {
        let mut encoder = Encoder::new(1);
        b.iter(|| {
            batches
                .iter()
                .enumerate()
                .map(|(i, extents)| {
                    let start = (i * 64 * CHUNK) as u64;
                    encoder
                        .encode(start, start + (64 * CHUNK) as u64, extents)
                        .unwrap()
                        .payload
                        .len()
                })
                .sum::<usize>()
        })
    });
    let encoded = encoded_batches(&batches);
    group.bench_function("codec_decode_verify", |b| {
        let mut decoder = Decoder::new();
        b.iter(|| {
            encoded
                .iter()
                .map(|batch| decoder.decode(batch).unwrap().len())
                .sum::<usize>()
        })
    });
    group.bench_function("frame_encode_decode", |b| {
        let decoder = FrameDecoder::new(ferry_protocol::DEFAULT_MAX_FRAME_LEN);
        let mut buf = BytesMut::with_capacity(8 << 20);
        b.iter(|| {
            let mut n = 0;
            for batch in &encoded {
                Message::ExtentBatch(batch.clone())
                    .encode(&mut buf, ferry_protocol::DEFAULT_MAX_FRAME_LEN)
                    .unwrap();
                if let Some(Message::ExtentBatch(back)) = decoder.decode(&mut buf).unwrap() {
                    n += back.payload.len();
                }
            }
            n
        })
    });
}

/// The non-zero chunks as 4 MiB batches of 64 KiB data extents.
fn plain_batches(chunks: &[Vec<u8>]) -> Vec<Vec<PlainExtent>> {
    chunks
        .chunks(64)
        .enumerate()
        .map(|(bi, group)| {
            group
                .iter()
                .enumerate()
                .filter(|(_, c)| !c.iter().all(|x| *x == 0))
                .map(|(i, c)| PlainExtent {
                    offset: ((bi * 64 + i) * CHUNK) as u64,
                    length: CHUNK as u32,
                    kind: ExtentKind::Data,
                    data: Some(Bytes::copy_from_slice(c)),
                })
                .collect()
        })
        .collect()
}

/// `batches` encoded at zstd level 1 into the protocol's batches.
fn encoded_batches(batches: &[Vec<PlainExtent>]) -> Vec<ExtentBatch> {
    let image = ImageName::new("bench").unwrap();
    let mut encoder = Encoder::new(1);
    batches
        .iter()
        .enumerate()
        .map(|(i, extents)| {
            let start = (i * 64 * CHUNK) as u64;
            let chunk = encoder
                .encode(start, start + (64 * CHUNK) as u64, extents)
                .unwrap();
            ExtentBatch {
                image: image.clone(),
                epoch: Epoch(1),
                seq: SeqNo(i as u64 + 1),
                scan_start: chunk.scan_start,
                scan_end: chunk.scan_end,
                payload_crc32c: chunk.payload_crc32c,
                plain_blake3: chunk.plain_blake3,
                extents: chunk.extents,
                payload: chunk.payload,
            }
        })
        .collect()
}

criterion_group!(benches, stages);
criterion_main!(benches);
