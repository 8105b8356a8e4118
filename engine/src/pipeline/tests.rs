//! Tests of the pipeline over file sources: reconstruction (full and
//! incremental), durability before delivery, back-pressure and abort, fuzzy
//! points, bounded memory, bad configs, and a 1 GiB measurement.

use super::*;
use crate::payload_codec::Decoder;
use crate::source::FileSource;
use ferry_protocol::{Epoch, ExtentBatch, ExtentKind, ImageName, SeqNo};
use rand::{RngCore, SeedableRng};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

fn mixed_content(len: usize, seed: u64) -> Vec<u8> {
    // 64 KiB pieces: random, zero, text, random (50 / 25 / 25).
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut out = vec![0u8; len];
    let line = b"Nov  2 10:00:00 host kernel: [12345.678] ext4 writeback done\n";
    for (i, piece) in out.chunks_mut(64 * 1024).enumerate() {
        match i % 4 {
            0 | 3 => rng.fill_bytes(piece),
            1 => {}
            _ => {
                for (j, b) in piece.iter_mut().enumerate() {
                    *b = line[j % line.len()];
                }
            }
        }
    }
    out
}

fn batch(chunk: &EncodedChunk, seq: u64) -> ExtentBatch {
    ExtentBatch {
        image: ImageName::new("img").unwrap(),
        epoch: Epoch(1),
        seq: SeqNo(seq),
        scan_start: chunk.scan_start,
        scan_end: chunk.scan_end,
        payload_crc32c: chunk.payload_crc32c,
        plain_blake3: chunk.plain_blake3,
        extents: chunk.extents.clone(),
        payload: chunk.payload.clone(),
    }
}

fn setup(content: &[u8]) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.raw");
    std::fs::write(&image, content).unwrap();
    let state = dir.path().join("state");
    (dir, image, state)
}

fn config(chunk: u32, in_flight: usize) -> PipelineConfig {
    PipelineConfig {
        workers: 2,
        chunk_size: chunk,
        max_chunks_in_flight: in_flight,
        zstd_level: 1,
    }
}

/// Runs a cycle, applies every chunk to `target`, returns the outcome.
fn replicate(
    image: &Path,
    state: &Path,
    plan: CyclePlan,
    target: &mut Vec<u8>,
) -> (ScanOutcome, u64) {
    let source = FileSource::open(image, state).unwrap();
    let pipeline = Pipeline::start(Box::new(source), plan, config(1 << 20, 4)).unwrap();
    let size = pipeline.image_info().size as usize;
    target.resize(size, 0);
    let mut decoder = Decoder::new();
    let mut expected_start = plan.resume_offset;
    let mut seq = 0;
    let mut changed = 0;
    while let Some(chunk) = pipeline.recv() {
        let chunk = chunk.unwrap();
        assert_eq!(
            chunk.scan_start, expected_start,
            "chunks arrive in scan order"
        );
        expected_start = chunk.scan_end;
        seq += 1;
        changed += chunk.stats.bytes_changed;
        for extent in decoder.decode(&batch(&chunk, seq)).unwrap() {
            let range = extent.offset as usize..(extent.offset + u64::from(extent.length)) as usize;
            match extent.kind {
                ExtentKind::Data => target[range].copy_from_slice(&extent.data.unwrap()),
                ExtentKind::Zero | ExtentKind::Discard => target[range].fill(0),
            }
        }
    }
    assert_eq!(expected_start, size as u64);
    let stats = pipeline.stats();
    assert!(stats.read_buffers.peak_alive <= 4);
    let (mut source, outcome) = pipeline.finish().unwrap();
    source.commit_cycle(plan.epoch).unwrap();
    (outcome, changed)
}

#[test]
fn pipeline_over_64_mib_reconstructs_the_file_full_and_incremental() {
    let mut content = mixed_content(64 << 20, 11);
    content.truncate((64 << 20) - 1000); // unaligned size
    let (_dir, image, state) = setup(&content);
    let mut target = Vec::new();
    let plan = CyclePlan {
        epoch: Epoch(1),
        base_epoch: Epoch(0),
        resume_offset: 0,
    };
    let (outcome, _) = replicate(&image, &state, plan, &mut target);
    assert!(!outcome.fuzzy);
    assert!(target == content, "full copy reconstructs the image");

    // Scattered writes, a zeroed range: the incremental reconstructs too.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap();
    for i in 0..50u64 {
        let offset = (i * 1_299_709) % (60 << 20) / 4096 * 4096;
        file.write_all_at(&[i as u8 + 1; 4096], offset).unwrap();
        content[offset as usize..offset as usize + 4096].fill(i as u8 + 1);
    }
    file.write_all_at(&vec![0u8; 256 * 1024], 0).unwrap();
    content[..256 * 1024].fill(0);
    drop(file);
    let plan = CyclePlan {
        epoch: Epoch(2),
        base_epoch: Epoch(1),
        resume_offset: 0,
    };
    let (_, changed) = replicate(&image, &state, plan, &mut target);
    assert!(target == content, "incremental reconstructs the image");
    assert!(
        changed <= 50 * 4096 + 256 * 1024,
        "only changed blocks travel: {changed}"
    );
}

/// What a new process would read as the durable scan offset.
fn durable_offset_on_disk(state: &Path) -> u64 {
    let text = std::fs::read(state.join("state.json")).unwrap();
    let value: serde_json::Value = serde_json::from_slice(&text).unwrap();
    value["in_progress"]["durable_offset"].as_u64().unwrap()
}

#[test]
fn every_chunk_with_changes_is_durable_on_disk_before_delivery() {
    // Fast and slow consumers, several in-flight limits (1 and 2 are
    // the edge cases of collecting chunks before a sync).
    for (in_flight, pause_ms) in [(1, 0), (2, 0), (4, 0), (4, 3), (8, 0), (8, 2)] {
        let content = mixed_content(8 << 20, 31);
        let (_dir, image, state) = setup(&content);
        let source = FileSource::open(&image, &state).unwrap();
        let plan = CyclePlan {
            epoch: Epoch(1),
            base_epoch: Epoch(0),
            resume_offset: 0,
        };
        let pipeline =
            Pipeline::start(Box::new(source), plan, config(256 * 1024, in_flight)).unwrap();
        let mut with_changes = 0;
        while let Some(chunk) = pipeline.recv() {
            let chunk = chunk.unwrap();
            if !chunk.extents.is_empty() {
                with_changes += 1;
                assert!(chunk.durable, "chunk {} not durable", chunk.scan_start);
            }
            if chunk.durable {
                let on_disk = durable_offset_on_disk(&state);
                assert!(
                    on_disk >= chunk.scan_end,
                    "in flight {in_flight}: chunk ..{} delivered as durable, disk says {on_disk}",
                    chunk.scan_end
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(pause_ms));
        }
        assert!(with_changes > 8, "the test image must have changes");
        pipeline.finish().unwrap();
    }
}

#[test]
fn unchanged_chunks_are_delivered_without_waiting_for_durability() {
    let content = mixed_content(8 << 20, 32);
    let (_dir, image, state) = setup(&content);
    let mut standby = Vec::new();
    let full = CyclePlan {
        epoch: Epoch(1),
        base_epoch: Epoch(0),
        resume_offset: 0,
    };
    replicate(&image, &state, full, &mut standby);
    let source = FileSource::open(&image, &state).unwrap();
    let plan = CyclePlan {
        epoch: Epoch(2),
        base_epoch: Epoch(1),
        resume_offset: 0,
    };
    let size = content.len() as u64;
    let pipeline = Pipeline::start(Box::new(source), plan, config(256 * 1024, 4)).unwrap();
    let mut delivered = 0;
    while let Some(chunk) = pipeline.recv() {
        let chunk = chunk.unwrap();
        assert!(chunk.extents.is_empty());
        // Only the last chunk (the sender reports it) must be durable.
        assert_eq!(chunk.durable, chunk.scan_end == size, "{}", chunk.scan_end);
        delivered += 1;
    }
    assert!(delivered > 8);
    pipeline.finish().unwrap();
}

#[test]
fn back_pressure_holds_and_abort_returns_a_resumable_source() {
    let content = mixed_content(16 << 20, 12);
    let (_dir, image, state) = setup(&content);
    let source = FileSource::open(&image, &state).unwrap();
    let plan = CyclePlan {
        epoch: Epoch(1),
        base_epoch: Epoch(0),
        resume_offset: 0,
    };
    let pipeline = Pipeline::start(Box::new(source), plan, config(256 * 1024, 3)).unwrap();
    let first = pipeline.recv().unwrap().unwrap();
    // Wait (bounded) until the reader is blocked on tickets: it can have
    // read at most 1 delivered + 3 in flight.
    for _ in 0..200 {
        if pipeline.stats().chunks_read >= 4 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let stats = pipeline.stats();
    assert!(stats.chunks_read <= 4, "{stats:?}");
    assert!(stats.read_buffers.peak_alive <= 3, "{stats:?}");
    let second = pipeline.recv().unwrap().unwrap();
    assert_eq!(second.scan_start, first.scan_end);
    let source = pipeline.abort();
    // Delivered chunks are recorded; the in-process resumable offset covers them.
    let resumable = source.resumable_offset(Epoch(1));
    assert!(resumable >= second.scan_end, "{resumable}");
    // Resume from the delivered end and finish.
    let plan = CyclePlan {
        resume_offset: second.scan_end,
        ..plan
    };
    let pipeline = Pipeline::start(source, plan, config(256 * 1024, 3)).unwrap();
    let mut next = second.scan_end;
    while let Some(chunk) = pipeline.recv() {
        let chunk = chunk.unwrap();
        assert_eq!(chunk.scan_start, next);
        next = chunk.scan_end;
    }
    assert_eq!(next, content.len() as u64);
    let (_, outcome) = pipeline.finish().unwrap();
    assert!(!outcome.fuzzy);
}

#[test]
fn write_between_recv_calls_makes_the_point_fuzzy() {
    let content = mixed_content(8 << 20, 13);
    let (_dir, image, state) = setup(&content);
    let source = FileSource::open(&image, &state).unwrap();
    let plan = CyclePlan {
        epoch: Epoch(1),
        base_epoch: Epoch(0),
        resume_offset: 0,
    };
    let pipeline = Pipeline::start(Box::new(source), plan, config(256 * 1024, 2)).unwrap();
    let mut count = 0;
    while let Some(chunk) = pipeline.recv() {
        chunk.unwrap();
        count += 1;
        if count == 2 {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(&image)
                .unwrap();
            file.write_all_at(b"written during the scan", 7 << 20)
                .unwrap();
        }
    }
    let (_, outcome) = pipeline.finish().unwrap();
    assert!(outcome.fuzzy);
}

#[test]
fn memory_stays_bounded_on_a_64_gib_sparse_file() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("sparse.raw");
    let file = std::fs::File::create(&image).unwrap();
    file.set_len(64 << 30).unwrap();
    // Data scattered over the image so that some chunks must be read.
    let mut data = vec![0u8; 64 * 1024];
    rand_chacha::ChaCha8Rng::seed_from_u64(14).fill_bytes(&mut data);
    for i in 0..64u64 {
        file.write_all_at(&data, i << 30).unwrap();
    }
    drop(file);
    let source = FileSource::open(&image, &dir.path().join("state")).unwrap();
    let plan = CyclePlan {
        epoch: Epoch(1),
        base_epoch: Epoch(0),
        resume_offset: 0,
    };
    let in_flight = 3;
    let pipeline = Pipeline::start(Box::new(source), plan, config(1 << 20, in_flight)).unwrap();
    let mut held = Vec::new();
    let mut scanned = 0u64;
    let mut data_bytes = 0u64;
    while let Some(chunk) = pipeline.recv() {
        let chunk = chunk.unwrap();
        scanned += chunk.stats.bytes_scanned;
        data_bytes += chunk.stats.plain_data_bytes;
        // Hold a few payloads like a sender waiting for acks.
        held.push(chunk.payload);
        if held.len() > 2 {
            held.remove(0);
        }
        let stats = pipeline.stats();
        assert!(stats.read_buffers.alive <= in_flight, "{stats:?}");
    }
    let stats = pipeline.stats();
    assert_eq!(scanned, 64 << 30);
    assert_eq!(data_bytes, 64 * 64 * 1024);
    assert!(stats.read_buffers.peak_alive <= in_flight, "{stats:?}");
    assert!(
        stats.payload_buffers.peak_alive <= in_flight + 2,
        "{stats:?}"
    );
    let (_, outcome) = pipeline.finish().unwrap();
    assert!(!outcome.fuzzy);
}

#[test]
fn invalid_config_is_rejected() {
    let (_dir, image, state) = setup(&[1u8; 4096]);
    let source = FileSource::open(&image, &state).unwrap();
    let plan = CyclePlan {
        epoch: Epoch(1),
        base_epoch: Epoch(0),
        resume_offset: 0,
    };
    let result = Pipeline::start(Box::new(source), plan, config(1000, 2));
    assert!(matches!(result, Err(SourceError::InvalidConfig { .. })));
}

#[test]
fn finish_before_the_end_is_incomplete() {
    let content = mixed_content(4 << 20, 15);
    let (_dir, image, state) = setup(&content);
    let source = FileSource::open(&image, &state).unwrap();
    let plan = CyclePlan {
        epoch: Epoch(1),
        base_epoch: Epoch(0),
        resume_offset: 0,
    };
    let pipeline = Pipeline::start(Box::new(source), plan, config(256 * 1024, 2)).unwrap();
    pipeline.recv().unwrap().unwrap();
    assert!(matches!(pipeline.finish(), Err(PipelineError::Incomplete)));
    // The progress survived for a new process.
    let source = FileSource::open(&image, &state).unwrap();
    assert!(source.resumable_offset(Epoch(1)) >= 256 * 1024);
}

/// CPU seconds (user + system) of this process so far, from /proc.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name (which is in parentheses).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

struct Run {
    seconds: f64,
    cpu: f64,
    stats: crate::payload_codec::ChunkStats,
    backend: &'static str,
}

fn timed_cycle(
    image: &Path,
    state: &Path,
    plan: CyclePlan,
    config: PipelineConfig,
    force_pread: bool,
) -> Run {
    let options = crate::source::file::FileSourceOptions {
        force_pread,
        ..Default::default()
    };
    let source = FileSource::open_with(image, state, options).unwrap();
    let backend = source.read_backend();
    let cpu0 = cpu_seconds();
    let t0 = std::time::Instant::now();
    let pipeline = Pipeline::start(Box::new(source), plan, config).unwrap();
    let mut stats = crate::payload_codec::ChunkStats::default();
    while let Some(chunk) = pipeline.recv() {
        stats.add(&chunk.unwrap().stats);
    }
    let (mut source, _) = pipeline.finish().unwrap();
    let seconds = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    source.commit_cycle(plan.epoch).unwrap();
    Run {
        seconds,
        cpu,
        stats,
        backend,
    }
}

/// Release-build throughput on a 1 GiB mixed image (50 % random, 25 %
/// zero, 25 % text), with single-core stage baselines measured in the
/// same run. `cargo test --release -p ferry-engine --lib -- --ignored
/// --nocapture bench_pipeline_1gib`
#[test]
#[ignore = "benchmark: run in release with --ignored --nocapture"]
fn bench_pipeline_1gib() {
    const SIZE: usize = 1 << 30;
    let dir =
        tempfile::tempdir_in(std::env::var("FERRY_BENCH_DIR").unwrap_or_else(|_| "/tmp".into()))
            .unwrap();
    let image = dir.path().join("mixed.raw");
    let content = mixed_content(SIZE, 42);
    std::fs::write(&image, &content).unwrap();
    let mb = |bytes: f64, secs: f64| bytes / secs / 1e6;

    // Baselines, one core, 4 MiB pieces; rates per wall second and per
    // CPU second (the machine may be shared: CPU rates are steadier).
    let rate = |t: std::time::Instant, cpu0: f64| {
        let secs = t.elapsed().as_secs_f64();
        (mb(SIZE as f64, secs), mb(SIZE as f64, cpu_seconds() - cpu0))
    };
    let (t, c) = (std::time::Instant::now(), cpu_seconds());
    let mut sink = 0u8;
    for piece in content.chunks(4 << 20) {
        sink ^= blake3::hash(piece).as_bytes()[0];
    }
    let blake3_rate = rate(t, c);
    let (t, c) = (std::time::Instant::now(), cpu_seconds());
    let mut compressor = zstd::bulk::Compressor::new(1).unwrap();
    let mut out = vec![0u8; zstd::zstd_safe::compress_bound(4 << 20)];
    for piece in content.chunks(4 << 20) {
        sink ^= compressor.compress_to_buffer(piece, &mut out[..]).unwrap() as u8;
    }
    let zstd_rate = rate(t, c);
    let file = std::fs::File::open(&image).unwrap();
    let mut buf = vec![0u8; 4 << 20];
    let mut read_rates = Vec::new();
    for force in [false, true] {
        let mut reader = crate::sys::uring::BlockReader::with_shape(Default::default(), force);
        let (t, c) = (std::time::Instant::now(), cpu_seconds());
        let mut offset = 0;
        while offset < SIZE as u64 {
            offset += reader.read_at(&file, offset, &mut buf).unwrap() as u64;
        }
        read_rates.push((reader.backend(), rate(t, c)));
    }
    drop(content);
    println!("baselines, 1 core, MB/s per wall-s / per CPU-s: blake3 {:.0}/{:.0}, zstd-1 mix {:.0}/{:.0}, \
              page-cache read {} {:.0}/{:.0}, {} {:.0}/{:.0} (sink {sink})",
        blake3_rate.0, blake3_rate.1, zstd_rate.0, zstd_rate.1,
        read_rates[0].0, read_rates[0].1.0, read_rates[0].1.1,
        read_rates[1].0, read_rates[1].1.0, read_rates[1].1.1);

    for (run, (label, level, force_pread)) in [
        ("level 1", 1, false),
        ("level -1", -1, false),
        ("level 1, pread", 1, true),
    ]
    .into_iter()
    .enumerate()
    {
        let state = dir.path().join(format!("state-{run}"));
        let config = PipelineConfig {
            zstd_level: level,
            ..PipelineConfig::default()
        };
        let full = timed_cycle(
            &image,
            &state,
            CyclePlan {
                epoch: Epoch(1),
                base_epoch: Epoch(0),
                resume_offset: 0,
            },
            config,
            force_pread,
        );
        let incr = timed_cycle(
            &image,
            &state,
            CyclePlan {
                epoch: Epoch(2),
                base_epoch: Epoch(1),
                resume_offset: 0,
            },
            config,
            force_pread,
        );
        for (kind, run) in [("full", &full), ("incremental (no change)", &incr)] {
            println!(
                "{label:>15} [{}] {kind:>24}: {:.0} MB/s wall, {:.2} s, {:.2} CPU-s ({:.2} CPU-s/GB), payload {} MB of {} MB plain, {} MB changed",
                run.backend,
                mb(SIZE as f64, run.seconds),
                run.seconds,
                run.cpu,
                run.cpu / (SIZE as f64 / 1e9),
                run.stats.payload_bytes / 1_000_000,
                run.stats.plain_data_bytes / 1_000_000,
                run.stats.bytes_changed / 1_000_000,
            );
        }
        assert_eq!(full.stats.bytes_scanned, SIZE as u64);
        assert_eq!(incr.stats.bytes_changed, 0);
    }
}
