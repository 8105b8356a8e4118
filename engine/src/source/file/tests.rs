//! Tests of the file source: full and incremental cycles, resumes,
//! crashes between steps, fuzzy scans and damaged state.

use super::fingerprint::split_dev;
use super::*;
use crate::payload_codec::PlainExtent;
use ferry_protocol::ExtentKind;
use rand::{RngCore, SeedableRng};
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

const CHUNK: u32 = 64 * 1024;

struct Fixture {
    dir: tempfile::TempDir,
    image: PathBuf,
    state: PathBuf,
}

impl Fixture {
    fn new(content: &[u8]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.raw");
        fs::write(&image, content).unwrap();
        let state = dir.path().join("state");
        Self { dir, image, state }
    }

    fn open(&self) -> FileSource {
        FileSource::open(&self.image, &self.state).unwrap()
    }

    fn write_at(&self, offset: u64, bytes: &[u8]) {
        let file = OpenOptions::new().write(true).open(&self.image).unwrap();
        file.write_all_at(bytes, offset).unwrap();
    }

    fn set_len(&self, len: u64) {
        OpenOptions::new()
            .write(true)
            .open(&self.image)
            .unwrap()
            .set_len(len)
            .unwrap();
    }
}

fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rand_chacha::ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut data);
    data
}

/// Runs a whole cycle synchronously; returns all extents and the outcome.
fn run_cycle(
    source: &mut FileSource,
    epoch: u64,
    base: u64,
) -> (Vec<PlainExtent>, ScanOutcome, u64) {
    let plan = CyclePlan {
        epoch: Epoch(epoch),
        base_epoch: Epoch(base),
        resume_offset: 0,
    };
    source.begin_cycle(&plan, CHUNK).unwrap();
    // Extents are kept (with their buffers) until the end: room for all.
    let pool = BufferPool::bounded(CHUNK as usize, 64);
    let analyzer = source.analyzer();
    let mut extents = Vec::new();
    let mut zero = 0;
    while let Some(raw) = source.read_next(&pool).unwrap() {
        let analyzed = analyzer.analyze(raw).unwrap();
        zero += analyzed.bytes_zero;
        source.record(&analyzed.record).unwrap();
        extents.extend(analyzed.extents);
    }
    let outcome = source.end_scan().unwrap();
    (extents, outcome, zero)
}

fn simple(extents: &[PlainExtent]) -> Vec<(u64, u32, ExtentKind)> {
    extents
        .iter()
        .map(|e| (e.offset, e.length, e.kind))
        .collect()
}

#[test]
fn full_copy_skips_zero_blocks_and_reconstructs() {
    let mut content = random(300 * 1024 + 123, 1);
    content[8192..16384].fill(0); // two zero blocks
    content[64 * 1024..128 * 1024].fill(0); // a whole zero chunk
    let fx = Fixture::new(&content);
    let mut source = fx.open();
    assert_eq!(source.committed_epoch(), Epoch(0));
    let (extents, outcome, zero) = run_cycle(&mut source, 1, 0);
    assert!(!outcome.fuzzy);
    assert_eq!(zero, 8192 + 64 * 1024);
    let mut rebuilt = vec![0u8; content.len()];
    for e in &extents {
        assert_eq!(e.kind, ExtentKind::Data, "full copy sends no zero extents");
        let data = e.data.as_ref().unwrap();
        rebuilt[e.offset as usize..e.offset as usize + data.len()].copy_from_slice(data);
        // Extents never cross chunk boundaries.
        assert_eq!(
            e.offset / u64::from(CHUNK),
            (e.offset + u64::from(e.length) - 1) / u64::from(CHUNK)
        );
    }
    assert_eq!(rebuilt, content);
    let last = extents.last().unwrap();
    assert_eq!(
        last.offset + u64::from(last.length),
        content.len() as u64,
        "exact last block"
    );
    source.commit_cycle(Epoch(1)).unwrap();
    assert_eq!(source.committed_epoch(), Epoch(1));
    assert!(fx.state.join("manifest-1.bin").exists());
}

#[test]
fn seeded_base_makes_the_next_cycle_incremental() {
    let mut content = random(200 * 1024 + 10, 9);
    content[0..4096].fill(0);
    let fx = Fixture::new(&content);
    // An earlier life of the state dir (epoch 1) is replaced.
    let mut source = fx.open();
    run_cycle(&mut source, 1, 0);
    source.commit_cycle(Epoch(1)).unwrap();
    drop(source);
    FileSource::seed(&fx.image, &fx.state, Epoch(7)).unwrap();
    assert!(!fx.state.join("manifest-1.bin").exists());
    fx.write_at(100 * 1024, &[5u8; 10]);
    let mut source = fx.open();
    assert_eq!(source.committed_epoch(), Epoch(7));
    let (extents, _, _) = run_cycle(&mut source, 8, 7);
    assert_eq!(simple(&extents), vec![(100 * 1024, 4096, ExtentKind::Data)]);
    source.commit_cycle(Epoch(8)).unwrap();
    assert!(matches!(
        FileSource::seed(&fx.image, &fx.state, Epoch(0)),
        Err(SourceError::Misuse { .. })
    ));
}

#[test]
fn base_seeded_from_the_standbys_hashes_sends_every_block_that_differs_from_it() {
    // The standby's copy (the old primary's volume, split-brain writes
    // included) and this image diverged in two places each.
    let content = random(200 * 1024 + 10, 11);
    let fx = Fixture::new(&content);
    let standby = fx.dir.path().join("standby.raw");
    let mut theirs = content.clone();
    theirs[8192..8192 + 100].fill(7); // written only on the standby
    theirs[150 * 1024..150 * 1024 + 10].fill(9);
    fs::write(&standby, &theirs).unwrap();
    fx.write_at(40 * 1024, &[3u8; 5000]); // written only here (2 blocks)
    let hashes = block_hashes(&standby).unwrap();
    FileSource::seed_from_hashes(&fx.image, &fx.state, Epoch(4), &hashes).unwrap();
    // Repeating it keeps the state (a retried reprotect).
    FileSource::seed_from_hashes(&fx.image, &fx.state, Epoch(4), &hashes).unwrap();
    let mut source = fx.open();
    assert_eq!(source.committed_epoch(), Epoch(4));
    let (extents, _, _) = run_cycle(&mut source, 5, 4);
    assert_eq!(
        simple(&extents),
        vec![
            (8192, 4096, ExtentKind::Data),
            (40 * 1024, 8192, ExtentKind::Data),
            (148 * 1024, 4096, ExtentKind::Data), // 150 KiB falls in it
        ]
    );
    // Hashes of another size are refused.
    assert!(matches!(
        FileSource::seed_from_hashes(&fx.image, &fx.state, Epoch(9), &hashes[1..]),
        Err(SourceError::Misuse { .. })
    ));
}

#[test]
fn seeding_over_an_earlier_replications_state_at_the_same_epoch_replaces_it() {
    // This site replicated the image before (it was the primary) and
    // committed epoch 4 of its own content; a reprotect now seeds epoch 4
    // from a standby copy that holds other (split-brain) blocks. Keeping
    // the old state would send nothing (control fault harness, seed
    // 2673571956, scenario 15).
    let content = random(64 * 1024, 12);
    let fx = Fixture::new(&content);
    FileSource::seed(&fx.image, &fx.state, Epoch(4)).unwrap();
    let standby = fx.dir.path().join("standby.raw");
    let mut theirs = content.clone();
    theirs[20 * 1024..20 * 1024 + 10].fill(9);
    fs::write(&standby, &theirs).unwrap();
    let hashes = block_hashes(&standby).unwrap();
    FileSource::seed_from_hashes(&fx.image, &fx.state, Epoch(4), &hashes).unwrap();
    let mut source = fx.open();
    let (extents, _, _) = run_cycle(&mut source, 5, 4);
    assert_eq!(simple(&extents), vec![(20 * 1024, 4096, ExtentKind::Data)]);
}

#[test]
fn incremental_detects_single_write_zeroing_growth_and_shrink() {
    let content = random(256 * 1024 + 100, 2);
    let fx = Fixture::new(&content);
    let mut source = fx.open();
    run_cycle(&mut source, 1, 0);
    source.commit_cycle(Epoch(1)).unwrap();

    // No change: no extents.
    let (extents, outcome, _) = run_cycle(&mut source, 2, 1);
    assert!(extents.is_empty());
    assert!(!outcome.fuzzy);
    source.commit_cycle(Epoch(2)).unwrap();
    assert!(
        !fx.state.join("manifest-1.bin").exists(),
        "old manifest deleted"
    );

    // A single 4 KiB write → exactly one 4 KiB extent.
    fx.write_at(40960, &[0xAB; 4096]);
    // A block turned zero → a Zero extent.
    fx.write_at(8192, &[0; 4096]);
    let mut source = fx.open(); // also exercises reopening from disk
    assert_eq!(source.committed_epoch(), Epoch(2));
    let (extents, _, _) = run_cycle(&mut source, 3, 2);
    assert_eq!(
        simple(&extents),
        vec![
            (8192, 4096, ExtentKind::Zero),
            (40960, 4096, ExtentKind::Data)
        ]
    );
    assert_eq!(&extents[1].data.as_ref().unwrap()[..], &[0xAB; 4096][..]);
    source.commit_cycle(Epoch(3)).unwrap();

    // Growth: the new partial last block and new data; new zero tail sends nothing.
    let old_len = content.len() as u64;
    fx.set_len(old_len + 3 * 4096 + 50);
    fx.write_at(old_len + 4096 + 10, b"grown");
    let (extents, _, _) = run_cycle(&mut source, 4, 3);
    let last_old_block = old_len / 4096 * 4096;
    assert_eq!(
        simple(&extents),
        // The old short last block and the new data block, coalesced.
        vec![(last_old_block, 8192, ExtentKind::Data)]
    );
    source.commit_cycle(Epoch(4)).unwrap();

    // Shrink: the standby truncates; only the new short last block is
    // resent (its hash now covers 7 bytes instead of 4096).
    fx.set_len(100 * 1024 + 7);
    let (extents, _, _) = run_cycle(&mut source, 5, 4);
    assert_eq!(simple(&extents), vec![(100 * 1024, 7, ExtentKind::Data)]);
    source.commit_cycle(Epoch(5)).unwrap();
    // Shrink to a block boundary: nothing at all travels.
    fx.set_len(96 * 1024);
    let (extents, _, _) = run_cycle(&mut source, 6, 5);
    assert!(extents.is_empty(), "{:?}", simple(&extents));
    source.commit_cycle(Epoch(6)).unwrap();
    fx.set_len(100 * 1024 + 7);
    fx.write_at(96 * 1024, &content[96 * 1024..100 * 1024 + 7]);
    let (extents, _, _) = run_cycle(&mut source, 7, 6);
    assert_eq!(
        simple(&extents),
        vec![(96 * 1024, 4096 + 7, ExtentKind::Data)]
    );
    source.commit_cycle(Epoch(7)).unwrap();
    // A write in the new last partial block.
    fx.write_at(100 * 1024 + 3, b"x");
    let (extents, _, _) = run_cycle(&mut source, 8, 7);
    assert_eq!(simple(&extents), vec![(100 * 1024, 7, ExtentKind::Data)]);
}

#[test]
fn bad_plans_are_rejected_and_change_nothing() {
    let fx = Fixture::new(&random(64 * 1024, 3));
    let mut source = fx.open();
    run_cycle(&mut source, 1, 0);
    source.commit_cycle(Epoch(1)).unwrap();
    let plan = |epoch, base, resume| CyclePlan {
        epoch: Epoch(epoch),
        base_epoch: Epoch(base),
        resume_offset: resume,
    };
    assert!(matches!(
        source.begin_cycle(&plan(1, 0, 0), CHUNK),
        Err(SourceError::BadPlan { .. })
    ));
    assert!(matches!(
        source.begin_cycle(&plan(3, 2, 0), CHUNK),
        Err(SourceError::BadPlan { .. })
    ));
    assert!(matches!(
        source.begin_cycle(&plan(2, 1, 4096), CHUNK),
        Err(SourceError::ResumeBeyondProgress { .. })
    ));
    assert!(matches!(
        source.commit_cycle(Epoch(2)),
        Err(SourceError::NotCommittable { .. })
    ));
    assert_eq!(source.committed_epoch(), Epoch(1));
    // A full copy on top of a committed epoch is allowed (base 0).
    let (extents, _, _) = run_cycle(&mut source, 2, 0);
    assert_eq!(extents.len(), 1);
}

#[test]
fn resumable_offset_after_abort_in_process_and_across_processes() {
    let size = (SYNC_INTERVAL + 3 * u64::from(CHUNK)) as usize;
    let fx = Fixture::new(&[]);
    fx.set_len(size as u64);
    // Some data so that not every chunk is a hole.
    for i in 0..8u64 {
        fx.write_at(i * 30 * 1024 * 1024, &random(8192, i));
    }
    let mut source = fx.open();
    let plan = CyclePlan {
        epoch: Epoch(1),
        base_epoch: Epoch(0),
        resume_offset: 0,
    };
    source.begin_cycle(&plan, CHUNK).unwrap();
    let pool = BufferPool::bounded(CHUNK as usize, 1);
    let analyzer = source.analyzer();
    // Scan past the first sync point, then a bit more, then abort.
    let mut recorded = 0;
    while recorded < SYNC_INTERVAL + u64::from(CHUNK) {
        let raw = source.read_next(&pool).unwrap().unwrap();
        let analyzed = analyzer.analyze(raw).unwrap();
        source.record(&analyzed.record).unwrap();
        recorded = analyzed.record.scan_end;
    }
    // Nothing was aborted yet: in-process progress is the full record.
    assert_eq!(source.resumable_offset(Epoch(1)), recorded);
    assert_eq!(source.resumable_offset(Epoch(2)), 0);
    source.abort_scan();
    assert_eq!(source.resumable_offset(Epoch(1)), recorded);
    drop(source);

    // A new process sees the durable offset (abort synced everything).
    let mut source = fx.open();
    assert_eq!(source.resumable_offset(Epoch(1)), recorded);
    // Resuming beyond it is refused; resuming at it works and completes.
    let too_far = CyclePlan {
        resume_offset: recorded + 4096,
        ..plan
    };
    assert!(source.begin_cycle(&too_far, CHUNK).is_err());
    let resume = CyclePlan {
        resume_offset: SYNC_INTERVAL / 2,
        ..plan
    };
    source.begin_cycle(&resume, CHUNK).unwrap();
    // Resuming lowered the durable offset before any new read.
    drop(source);
    let mut source = fx.open();
    assert_eq!(source.resumable_offset(Epoch(1)), SYNC_INTERVAL / 2);
    source.begin_cycle(&resume, CHUNK).unwrap();
    while let Some(raw) = source.read_next(&pool).unwrap() {
        let analyzed = analyzer.analyze(raw).unwrap();
        source.record(&analyzed.record).unwrap();
    }
    let outcome = source.end_scan().unwrap();
    assert!(!outcome.fuzzy);
    source.commit_cycle(Epoch(1)).unwrap();

    // The stitched manifest is right: an incremental finds nothing.
    let (extents, _, _) = run_cycle(&mut source, 2, 1);
    assert!(extents.is_empty());
}

#[test]
fn crash_between_rename_and_state_rolls_forward() {
    let fx = Fixture::new(&random(64 * 1024, 4));
    let mut source = fx.open();
    run_cycle(&mut source, 1, 0);
    drop(source);
    fs::rename(
        fx.state.join("manifest-1.partial"),
        fx.state.join("manifest-1.bin"),
    )
    .unwrap();
    let mut source = fx.open();
    assert_eq!(source.committed_epoch(), Epoch(1));
    let (extents, _, _) = run_cycle(&mut source, 2, 1);
    assert!(extents.is_empty());
}

#[test]
fn write_during_scan_is_fuzzy() {
    let fx = Fixture::new(&random(256 * 1024, 5));
    let mut source = fx.open();
    let plan = CyclePlan {
        epoch: Epoch(1),
        base_epoch: Epoch(0),
        resume_offset: 0,
    };
    source.begin_cycle(&plan, CHUNK).unwrap();
    let pool = BufferPool::bounded(CHUNK as usize, 1);
    let analyzer = source.analyzer();
    let mut first = true;
    while let Some(raw) = source.read_next(&pool).unwrap() {
        if first {
            fx.write_at(200 * 1024, b"changed while reading");
            first = false;
        }
        let analyzed = analyzer.analyze(raw).unwrap();
        source.record(&analyzed.record).unwrap();
    }
    assert!(source.end_scan().unwrap().fuzzy);
    // A quiet scan is not fuzzy.
    let (_, outcome, _) = run_cycle(&mut source, 2, 0);
    assert!(!outcome.fuzzy);
}

#[test]
fn truncation_during_scan_is_fuzzy_and_reads_zeroes() {
    let fx = Fixture::new(&random(256 * 1024, 6));
    let mut source = fx.open();
    let plan = CyclePlan {
        epoch: Epoch(1),
        base_epoch: Epoch(0),
        resume_offset: 0,
    };
    let info = source.begin_cycle(&plan, CHUNK).unwrap();
    assert_eq!(info.size, 256 * 1024);
    fx.set_len(100 * 1024);
    let pool = BufferPool::bounded(CHUNK as usize, 1);
    let analyzer = source.analyzer();
    let mut end = 0;
    while let Some(raw) = source.read_next(&pool).unwrap() {
        let analyzed = analyzer.analyze(raw).unwrap();
        for e in &analyzed.extents {
            assert!(e.offset + u64::from(e.length) <= 100 * 1024);
        }
        source.record(&analyzed.record).unwrap();
        end = analyzed.record.scan_end;
    }
    assert_eq!(end, 256 * 1024, "the scan covers the cycle's size");
    assert!(source.end_scan().unwrap().fuzzy);
}

#[test]
fn rejects_non_images_and_damaged_base_forces_full_copy() {
    let fx = Fixture::new(&random(64 * 1024, 7));
    assert!(matches!(
        FileSource::open(fx.dir.path(), &fx.state),
        Err(SourceError::NotAnImage { .. })
    ));
    let mut source = fx.open();
    run_cycle(&mut source, 1, 0);
    source.commit_cycle(Epoch(1)).unwrap();
    drop(source);
    fs::write(fx.state.join("manifest-1.bin"), b"garbage").unwrap();
    let mut source = fx.open();
    assert_eq!(source.committed_epoch(), Epoch(0), "no usable base");
    let plan = CyclePlan {
        epoch: Epoch(2),
        base_epoch: Epoch(1),
        resume_offset: 0,
    };
    assert!(source.begin_cycle(&plan, CHUNK).is_err());
    let (extents, _, _) = run_cycle(&mut source, 2, 0);
    assert_eq!(extents.len(), 1);
}

#[test]
fn split_dev_matches_glibc() {
    // makedev(8, 1) and makedev(259, 70000)
    assert_eq!(split_dev(0x801), (8, 1));
    let (major, minor) = (259u64, 70000u64);
    let dev = ((major & 0xfff) << 8)
        | ((major & !0xfff) << 32)
        | (minor & 0xff)
        | ((minor & !0xff) << 12);
    assert_eq!(split_dev(dev), (259, 70000));
}
