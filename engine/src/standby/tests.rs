//! Store-level tests: epochs and commits against an in-memory model of each
//! image, resume, torn tails, crash injection at every commit step, restore
//! and retention, and the error cases of the API.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;

use bytes::Bytes;
use ferry_protocol::message::OpenImage;
use ferry_protocol::types::{Epoch, ExtentKind, ImageName, RecoveryPointId, SeqNo};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::failpoint::{self, CrashPoint};
use super::*;

fn name(s: &str) -> ImageName {
    ImageName::new(s).expect("valid name")
}

fn open_msg(image: &ImageName, epoch: u64, base: u64, size: u64) -> OpenImage {
    OpenImage {
        image: image.clone(),
        size,
        block_size: 4096,
        epoch: Epoch(epoch),
        base_epoch: Epoch(base),
    }
}

fn data(offset: u64, bytes: Vec<u8>) -> DecodedExtent {
    DecodedExtent {
        offset,
        length: bytes.len() as u32,
        kind: ExtentKind::Data,
        data: Some(Bytes::from(bytes)),
    }
}

fn zero(offset: u64, length: u32) -> DecodedExtent {
    DecodedExtent {
        offset,
        length,
        kind: ExtentKind::Zero,
        data: None,
    }
}

fn discard(offset: u64, length: u32) -> DecodedExtent {
    DecodedExtent {
        offset,
        length,
        kind: ExtentKind::Discard,
        data: None,
    }
}

fn random_bytes(rng: &mut ChaCha8Rng, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    rng.fill(&mut out[..]);
    out
}

/// Applies extents to a model of the image.
fn apply_model(model: &mut Vec<u8>, extents: &[DecodedExtent]) {
    for e in extents {
        let start = e.offset as usize;
        let end = start + e.length as usize;
        if model.len() < end {
            model.resize(end, 0);
        }
        match &e.data {
            Some(d) => model[start..end].copy_from_slice(d),
            None => model[start..end].fill(0),
        }
    }
}

fn rp_meta(id: u64) -> RecoveryPointMeta {
    RecoveryPointMeta {
        id: RecoveryPointId(id),
        created_unix_ms: 1_000 * id,
        fuzzy: false,
    }
}

/// Opens, stages every batch (scan_end = end of its last extent), syncs, seals.
fn run_epoch(
    store: &StandbyStore,
    image: &ImageName,
    epoch: u64,
    base: u64,
    open_size: u64,
    final_size: u64,
    batches: &[Vec<DecodedExtent>],
) -> SealedEpoch {
    let mut writer = store
        .open_epoch(&open_msg(image, epoch, base, open_size))
        .expect("open epoch");
    for (i, extents) in batches.iter().enumerate() {
        let scan_end = extents.last().map_or(0, |e| e.offset + u64::from(e.length));
        let scan_end = scan_end.max(writer.resume_offset());
        let staged = writer
            .stage(StagedBatch {
                seq: SeqNo(i as u64 + 1),
                scan_end,
                extents: extents.clone(),
            })
            .expect("stage");
        assert!(staged);
    }
    let durable = writer.sync().expect("sync");
    assert_eq!(durable, SeqNo(batches.len() as u64));
    writer.seal(durable, final_size).expect("seal")
}

fn raw_bytes(store: &StandbyStore, image: &ImageName) -> Vec<u8> {
    fs::read(store.image_path(image)).expect("read image")
}

fn restored(store: &StandbyStore, image: &ImageName, rp: u64, dir: &Path) -> Vec<u8> {
    let out = dir.join(format!("restore-{image}-{rp}"));
    store
        .restore(image, RecoveryPointId(rp), &out)
        .expect("restore");
    let bytes = fs::read(&out).expect("read restored");
    fs::remove_file(&out).expect("remove restored");
    bytes
}

fn store_at(dir: &Path) -> StandbyStore {
    StandbyStore::open(dir, StoreConfig::default()).expect("open store")
}

#[test]
fn full_and_incremental_epochs_restore_and_prune() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_dir = tempfile::tempdir().expect("tempdir");
    let store = store_at(dir.path());
    let img = name("vm1.disk0");
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut model = Vec::new();
    let mut snapshots: Vec<(u64, Vec<u8>)> = Vec::new();

    // Epoch 1: full copy of 1 MiB; a zero extent and an untouched gap.
    let size1 = 1 << 20;
    let batches = vec![
        vec![
            data(0, random_bytes(&mut rng, 65536)),
            zero(65536, 65536),
            data(200_000, random_bytes(&mut rng, 5000)),
        ],
        vec![data(500_000, random_bytes(&mut rng, 300_000))],
    ];
    for b in &batches {
        apply_model(&mut model, b);
    }
    model.resize(size1 as usize, 0);
    let sealed = run_epoch(&store, &img, 1, 0, size1, size1, &batches);
    store.commit(rp_meta(1), vec![sealed]).expect("commit 1");
    assert_eq!(raw_bytes(&store, &img), model);
    snapshots.push((1, model.clone()));

    // Epoch 2: incremental with data, zero, discard, growing to 1.5 MiB.
    let size2 = 3 << 19;
    let batches = vec![
        vec![
            data(10, random_bytes(&mut rng, 100)),
            discard(4096, 8192),
            zero(500_000, 1000),
        ],
        vec![
            data(1_000_000, random_bytes(&mut rng, 100_000)),
            data(1_400_000, random_bytes(&mut rng, 1000)),
        ],
    ];
    for b in &batches {
        apply_model(&mut model, b);
    }
    model.resize(size2 as usize, 0);
    let sealed = run_epoch(&store, &img, 2, 1, size2, size2, &batches);
    store.commit(rp_meta(2), vec![sealed]).expect("commit 2");
    assert_eq!(raw_bytes(&store, &img), model);
    snapshots.push((2, model.clone()));

    // Epoch 3: shrink to 600 000 bytes with a write near the new end.
    let size3 = 600_000;
    let batches = vec![vec![data(599_000, random_bytes(&mut rng, 1000))]];
    apply_model(&mut model, &batches[0]);
    model.truncate(size3 as usize);
    let sealed = run_epoch(&store, &img, 3, 2, size2, size3, &batches);
    store.commit(rp_meta(3), vec![sealed]).expect("commit 3");
    assert_eq!(raw_bytes(&store, &img), model);
    snapshots.push((3, model.clone()));

    // Epoch 4: full resync replacing the image (800 000 bytes).
    let size4 = 800_000u64;
    let batches = vec![
        vec![data(4096, random_bytes(&mut rng, 70_000))],
        vec![data(700_000, random_bytes(&mut rng, 100_000))],
    ];
    model = Vec::new();
    for b in &batches {
        apply_model(&mut model, b);
    }
    model.resize(size4 as usize, 0);
    let sealed = run_epoch(&store, &img, 4, 0, size4, size4, &batches);
    store.commit(rp_meta(4), vec![sealed]).expect("commit 4");
    assert_eq!(raw_bytes(&store, &img), model);
    snapshots.push((4, model.clone()));

    // Epochs 5..=7: incremental; an empty epoch in the middle; shrink to 0 at the end.
    for (epoch, size) in [(5u64, 800_000u64), (6, 800_000), (7, 0)] {
        let batches = if epoch == 6 {
            vec![]
        } else {
            vec![vec![data(
                rng.gen_range(0..700_000),
                random_bytes(&mut rng, 4096),
            )]]
        };
        for b in &batches {
            apply_model(&mut model, b);
        }
        model.resize(size as usize, 0);
        let sealed = run_epoch(&store, &img, epoch, epoch - 1, 800_000, size, &batches);
        store
            .commit(rp_meta(epoch * 10), vec![sealed])
            .expect("commit");
        assert_eq!(raw_bytes(&store, &img), model);
        snapshots.push((epoch * 10, model.clone()));
    }

    // Retention 5: the oldest two points are gone, the rest restore exactly.
    let points = store.recovery_points(&img).expect("points");
    let ids: Vec<u64> = points.iter().map(|p| p.id.get()).collect();
    assert_eq!(ids, vec![3, 4, 50, 60, 70]);
    assert!(points.last().expect("current").current);
    assert_eq!(points[1].size, size4);
    for (id, expected) in &snapshots[2..] {
        assert_eq!(
            &restored(&store, &img, *id, out_dir.path()),
            expected,
            "recovery point {id}"
        );
    }
    for pruned in [1u64, 2] {
        let err = store
            .restore(&img, RecoveryPointId(pruned), &out_dir.path().join("x"))
            .expect_err("pruned");
        assert!(
            matches!(err, StoreError::UnknownRecoveryPoint { .. }),
            "{err:?}"
        );
    }
    // History files of pruned points are deleted; needed ones remain.
    let files: Vec<String> = fs::read_dir(store.image_dir_for_tests(&img))
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    for gone in ["undo-2.log", "undo-3.log", "epoch-7.journal"] {
        assert!(
            !files.contains(&gone.to_string()),
            "{gone} should be pruned: {files:?}"
        );
    }
    for kept in ["prev-4.raw", "undo-5.log", "undo-6.log", "undo-7.log"] {
        assert!(
            files.contains(&kept.to_string()),
            "{kept} missing: {files:?}"
        );
    }
    // Restore refuses an existing target.
    let existing = out_dir.path().join("exists");
    fs::write(&existing, b"x").expect("write");
    assert!(store.restore(&img, RecoveryPointId(70), &existing).is_err());
    assert_eq!(fs::read(&existing).expect("read"), b"x");
}

#[test]
fn reopened_store_keeps_state_and_commits_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = name("a");
    let mut model = Vec::new();
    {
        let store = store_at(dir.path());
        let batches = vec![vec![data(0, vec![1; 8192])]];
        apply_model(&mut model, &batches[0]);
        let sealed = run_epoch(&store, &img, 1, 0, 8192, 8192, &batches);
        store
            .commit(rp_meta(1), vec![sealed.clone()])
            .expect("commit");
        // Committing the same point again is a no-op.
        store
            .commit(rp_meta(1), vec![sealed])
            .expect("repeat commit");
    }
    let store = store_at(dir.path());
    let state = store.image_state(&img).expect("state").expect("known");
    assert_eq!(
        (
            state.committed_epoch,
            state.recovery_point,
            state.size,
            state.pending
        ),
        (Epoch(1), RecoveryPointId(1), 8192, None)
    );
    assert_eq!(store.images().expect("images"), vec![img.clone()]);
    let batches = vec![vec![data(100, vec![2; 10])]];
    apply_model(&mut model, &batches[0]);
    let sealed = run_epoch(&store, &img, 2, 1, 8192, 8192, &batches);
    store.commit(rp_meta(2), vec![sealed]).expect("commit");
    assert_eq!(raw_bytes(&store, &img), model);
}

fn resume_case(full: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = name("resume");
    let size = 1 << 20;
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut model = vec![0u8; size as usize];
    let base = if full { 0 } else { 1 };
    if !full {
        let store = store_at(dir.path());
        let b = vec![vec![data(0, random_bytes(&mut rng, size as usize))]];
        apply_model(&mut model, &b[0]);
        let sealed = run_epoch(&store, &img, 1, 0, size, size, &b);
        store.commit(rp_meta(1), vec![sealed]).expect("commit");
    }
    let b1 = vec![data(0, random_bytes(&mut rng, 4096)), zero(4096, 4096)];
    let b2 = vec![data(100_000, random_bytes(&mut rng, 50_000))];
    {
        let store = store_at(dir.path());
        let mut writer = store
            .open_epoch(&open_msg(&img, 2, base, size))
            .expect("open");
        assert!(writer
            .stage(StagedBatch {
                seq: SeqNo(1),
                scan_end: 50_000,
                extents: b1.clone()
            })
            .expect("stage"));
        assert!(writer
            .stage(StagedBatch {
                seq: SeqNo(2),
                scan_end: 200_000,
                extents: b2.clone()
            })
            .expect("stage"));
        assert_eq!(writer.sync().expect("sync"), SeqNo(2));
        // Duplicate is ignored; a gap is refused.
        assert!(!writer
            .stage(StagedBatch {
                seq: SeqNo(2),
                scan_end: 200_000,
                extents: vec![]
            })
            .expect("dup"));
        let err = writer
            .stage(StagedBatch {
                seq: SeqNo(4),
                scan_end: 300_000,
                extents: vec![],
            })
            .expect_err("gap");
        assert!(
            matches!(
                err,
                StoreError::OutOfOrder {
                    expected: SeqNo(3),
                    got: SeqNo(4),
                    ..
                }
            ),
            "{err:?}"
        );
        // Staged but never synced: must not be reported after the writer is gone.
        let stale = vec![data(300_000, vec![0xEE; 10_000])];
        assert!(writer
            .stage(StagedBatch {
                seq: SeqNo(3),
                scan_end: 400_000,
                extents: stale
            })
            .expect("stage"));
        drop(writer);
        let pending = store
            .image_state(&img)
            .expect("state")
            .expect("known")
            .pending
            .expect("pending");
        assert_eq!(
            (pending.epoch, pending.durable_seq, pending.resume_offset),
            (Epoch(2), SeqNo(2), 200_000)
        );
        // Same-process resume reports the synced prefix too.
        let writer = store
            .open_epoch(&open_msg(&img, 2, base, size))
            .expect("resume");
        assert_eq!(
            (writer.durable_seq(), writer.resume_offset()),
            (SeqNo(2), 200_000)
        );
    }
    let store = store_at(dir.path());
    let pending = store
        .image_state(&img)
        .expect("state")
        .expect("known")
        .pending
        .expect("pending");
    assert_eq!(
        (pending.durable_seq, pending.resume_offset),
        (SeqNo(2), 200_000)
    );
    let mut writer = store
        .open_epoch(&open_msg(&img, 2, base, size))
        .expect("resume");
    assert_eq!(
        (writer.epoch(), writer.durable_seq(), writer.resume_offset()),
        (Epoch(2), SeqNo(2), 200_000)
    );
    // The resent batch 3 differs from the lost one (here: the range is zero now).
    let b3 = vec![
        zero(300_000, 10_000),
        data(900_000, random_bytes(&mut rng, 1000)),
    ];
    assert!(writer
        .stage(StagedBatch {
            seq: SeqNo(3),
            scan_end: size,
            extents: b3.clone()
        })
        .expect("stage"));
    assert_eq!(writer.sync().expect("sync"), SeqNo(3));
    let sealed = writer.seal(SeqNo(3), size).expect("seal");
    store.commit(rp_meta(2), vec![sealed]).expect("commit");
    for b in [&b1, &b2, &b3] {
        apply_model(&mut model, b);
    }
    assert_eq!(raw_bytes(&store, &img), model);
}

#[test]
fn resume_incremental_reports_synced_prefix() {
    resume_case(false);
}

#[test]
fn resume_full_copy_reports_synced_prefix_and_drops_stale_staging() {
    resume_case(true);
}

#[test]
fn torn_or_corrupt_tail_is_cut_on_open() {
    for damage in ["truncate", "flip"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let img = name("torn");
        let mut model = vec![0u8; 65536];
        {
            let store = store_at(dir.path());
            let b = vec![vec![data(0, vec![3; 65536])]];
            apply_model(&mut model, &b[0]);
            let sealed = run_epoch(&store, &img, 1, 0, 65536, 65536, &b);
            store.commit(rp_meta(1), vec![sealed]).expect("commit");
            let mut writer = store
                .open_epoch(&open_msg(&img, 2, 1, 65536))
                .expect("open");
            for seq in 1..=3u64 {
                let extents = vec![data(seq * 1000, vec![seq as u8; 500])];
                writer
                    .stage(StagedBatch {
                        seq: SeqNo(seq),
                        scan_end: seq * 2000,
                        extents,
                    })
                    .expect("stage");
            }
            writer.sync().expect("sync");
        }
        let journal = dir.path().join("images/torn.ferry/epoch-2.journal");
        let len = fs::metadata(&journal).expect("meta").len();
        match damage {
            "truncate" => fs::OpenOptions::new()
                .write(true)
                .open(&journal)
                .expect("open")
                .set_len(len - 7)
                .expect("cut"),
            _ => {
                let file = fs::OpenOptions::new()
                    .write(true)
                    .open(&journal)
                    .expect("open");
                file.write_all_at(&[0x55], len - 100).expect("flip");
            }
        }
        let store = store_at(dir.path());
        let pending = store
            .image_state(&img)
            .expect("state")
            .expect("known")
            .pending
            .expect("pending");
        assert_eq!(
            (pending.durable_seq, pending.resume_offset),
            (SeqNo(2), 4000),
            "{damage}"
        );
        assert!(fs::metadata(&journal).expect("meta").len() < len - 7);
        let mut writer = store
            .open_epoch(&open_msg(&img, 2, 1, 65536))
            .expect("resume");
        let b3 = vec![data(3000, vec![9; 500])];
        writer
            .stage(StagedBatch {
                seq: SeqNo(3),
                scan_end: 6000,
                extents: b3.clone(),
            })
            .expect("stage");
        writer.sync().expect("sync");
        let sealed = writer.seal(SeqNo(3), 65536).expect("seal");
        store.commit(rp_meta(2), vec![sealed]).expect("commit");
        apply_model(
            &mut model,
            &[data(1000, vec![1; 500]), data(2000, vec![2; 500])],
        );
        apply_model(&mut model, &b3);
        assert_eq!(raw_bytes(&store, &img), model, "{damage}");
    }
}

/// Two images committed as one group; state before and after, per image.
struct GroupFixture {
    dir: tempfile::TempDir,
    images: [ImageName; 2],
    old: [Vec<u8>; 2],
    new: [Vec<u8>; 2],
    sealed: Vec<SealedEpoch>,
}

/// Commits rp 1 (full copies), then prepares epoch 2 of both images:
/// incremental, or (with `full_second`) a full resync of image 0.
fn group_fixture(full_second: bool) -> GroupFixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let images = [name("g-a"), name("g-b")];
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    let store = store_at(dir.path());
    let mut old = [Vec::new(), Vec::new()];
    let mut new = [Vec::new(), Vec::new()];
    let mut sealed1 = Vec::new();
    for (i, img) in images.iter().enumerate() {
        let size = 300_000 + i as u64 * 10_000;
        let b = vec![vec![data(0, random_bytes(&mut rng, size as usize))]];
        apply_model(&mut old[i], &b[0]);
        sealed1.push(run_epoch(&store, img, 1, 0, size, size, &b));
    }
    store.commit(rp_meta(1), sealed1).expect("commit 1");
    let mut sealed = Vec::new();
    for (i, img) in images.iter().enumerate() {
        let old_size = old[i].len() as u64;
        if full_second && i == 0 {
            let size = 250_000u64;
            let b = vec![vec![data(1000, random_bytes(&mut rng, 100_000))]];
            new[i] = Vec::new();
            apply_model(&mut new[i], &b[0]);
            new[i].resize(size as usize, 0);
            sealed.push(run_epoch(&store, img, 2, 0, size, size, &b));
        } else {
            let size = old_size + 50_000;
            let b = vec![
                vec![
                    data(5000, random_bytes(&mut rng, 20_000)),
                    discard(40_960, 16_384),
                    zero(100_000, 3000),
                ],
                vec![data(old_size + 10, random_bytes(&mut rng, 30_000))],
            ];
            new[i] = old[i].clone();
            for batch in &b {
                apply_model(&mut new[i], batch);
            }
            new[i].resize(size as usize, 0);
            sealed.push(run_epoch(&store, img, 2, 1, size, size, &b));
        }
    }
    drop(store);
    GroupFixture {
        dir,
        images,
        old,
        new,
        sealed,
    }
}

fn assert_group_at(store: &StandbyStore, fx: &GroupFixture, new: bool) {
    for (i, img) in fx.images.iter().enumerate() {
        let expected = if new { &fx.new[i] } else { &fx.old[i] };
        assert_eq!(
            &raw_bytes(store, img),
            expected,
            "image {img} should be at the {} point",
            if new { "new" } else { "old" }
        );
        let state = store.image_state(img).expect("state").expect("known");
        assert_eq!(
            state.recovery_point,
            RecoveryPointId(if new { 2 } else { 1 })
        );
        assert_eq!(state.size, expected.len() as u64);
    }
}

/// After the group is at rp 2, epoch 3 must still commit, and rp 1 restore.
fn assert_next_epoch_commits(store: &StandbyStore, fx: &GroupFixture) {
    let out = tempfile::tempdir().expect("tempdir");
    let mut sealed = Vec::new();
    let mut expected = Vec::new();
    for (i, img) in fx.images.iter().enumerate() {
        let size = fx.new[i].len() as u64;
        let b = vec![vec![data(0, vec![0xC3; 1000])]];
        let mut model = fx.new[i].clone();
        apply_model(&mut model, &b[0]);
        expected.push(model);
        sealed.push(run_epoch(store, img, 3, 2, size, size, &b));
    }
    store.commit(rp_meta(3), sealed).expect("commit 3");
    for (i, img) in fx.images.iter().enumerate() {
        assert_eq!(raw_bytes(store, img), expected[i]);
        assert_eq!(restored(store, img, 1, out.path()), fx.old[i]);
        assert_eq!(restored(store, img, 2, out.path()), fx.new[i]);
    }
}

fn crash_and_recover(point: CrashPoint, full_second: bool) {
    let fx = group_fixture(full_second);
    {
        let store = store_at(fx.dir.path());
        failpoint::arm(point);
        let err = store
            .commit(rp_meta(2), fx.sealed.clone())
            .expect_err("injected crash");
        failpoint::disarm();
        assert!(
            matches!(err, StoreError::InjectedCrash { point: p } if p == point),
            "{err:?}"
        );
    }
    // Every point is after the intent is durable, so recovery rolls forward.
    let store = store_at(fx.dir.path());
    assert_group_at(&store, &fx, true);
    assert!(fs::read_dir(fx.dir.path().join("commits"))
        .expect("list")
        .next()
        .is_none());
    assert_next_epoch_commits(&store, &fx);
}

#[test]
fn crash_after_intent_rolls_group_forward() {
    crash_and_recover(CrashPoint::AfterIntent, false);
}

#[test]
fn crash_after_undo_written_rolls_forward() {
    crash_and_recover(CrashPoint::AfterUndoWritten, false);
}

#[test]
fn crash_after_data_before_fdatasync_rolls_forward() {
    crash_and_recover(CrashPoint::AfterDataBeforeSync, false);
}

#[test]
fn crash_after_data_before_state_rolls_forward() {
    crash_and_recover(CrashPoint::AfterDataBeforeState, false);
}

#[test]
fn crash_after_state_before_cleanup_rolls_forward() {
    crash_and_recover(CrashPoint::AfterStateBeforeCleanup, false);
}

#[test]
fn crash_between_images_of_a_group_rolls_all_forward() {
    crash_and_recover(CrashPoint::BetweenImages, false);
}

#[test]
fn crash_after_full_rename_of_old_image_rolls_forward() {
    crash_and_recover(CrashPoint::AfterFullRenameOld, true);
}

#[test]
fn crash_after_full_install_rolls_forward() {
    crash_and_recover(CrashPoint::AfterFullRenameNew, true);
}

/// A torn apply (garbage in the touched ranges, as a power loss in the middle
/// of writing could leave) is repaired: forward with the intent, back without.
#[test]
fn torn_apply_is_rolled_forward_with_intent_and_back_without() {
    for keep_intent in [true, false] {
        for full_second in [false, true] {
            let fx = group_fixture(full_second);
            let point = if full_second {
                CrashPoint::AfterFullRenameOld
            } else {
                CrashPoint::AfterDataBeforeSync
            };
            {
                let store = store_at(fx.dir.path());
                failpoint::arm(point);
                store
                    .commit(rp_meta(2), fx.sealed.clone())
                    .expect_err("injected crash");
                failpoint::disarm();
                if !full_second {
                    // Scribble over part of what the epoch touches in image 0.
                    let file = fs::OpenOptions::new()
                        .write(true)
                        .open(store.image_path(&fx.images[0]))
                        .expect("open");
                    file.write_all_at(&[0xAA; 7000], 6000).expect("scribble");
                }
            }
            if !keep_intent {
                for entry in fs::read_dir(fx.dir.path().join("commits")).expect("list") {
                    fs::remove_file(entry.expect("entry").path()).expect("remove intent");
                }
            }
            let store = store_at(fx.dir.path());
            assert_group_at(&store, &fx, keep_intent);
            if keep_intent {
                assert_next_epoch_commits(&store, &fx);
            } else {
                // The epoch stays pending, fully durable, and commits on request.
                for img in &fx.images {
                    let pending = store
                        .image_state(img)
                        .expect("state")
                        .expect("known")
                        .pending
                        .expect("pending");
                    assert_eq!(pending.epoch, Epoch(2));
                }
                store
                    .commit(rp_meta(2), fx.sealed.clone())
                    .expect("commit again");
                assert_group_at(&store, &fx, true);
            }
        }
    }
}

#[test]
fn partial_undo_log_is_discarded_and_rewritten() {
    let fx = group_fixture(false);
    {
        let store = store_at(fx.dir.path());
        failpoint::arm(CrashPoint::AfterUndoWritten);
        store
            .commit(rp_meta(2), fx.sealed.clone())
            .expect_err("injected crash");
        failpoint::disarm();
    }
    // Make image 0's undo log incomplete, as if the crash came while writing it.
    let undo = fx.dir.path().join("images/g-a.ferry/undo-2.log");
    let len = fs::metadata(&undo).expect("meta").len();
    fs::OpenOptions::new()
        .write(true)
        .open(&undo)
        .expect("open")
        .set_len(len / 2)
        .expect("cut");
    let store = store_at(fx.dir.path());
    assert_group_at(&store, &fx, true);
    assert_next_epoch_commits(&store, &fx);
}

#[test]
fn api_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store_at(dir.path());
    assert!(matches!(
        StandbyStore::open(dir.path(), StoreConfig::default()),
        Err(StoreError::Locked { .. })
    ));
    assert!(matches!(
        StandbyStore::open(dir.path(), StoreConfig { retention: 0 }),
        Err(StoreError::InvalidConfig { .. })
    ));
    let img = name("err");
    // Base epoch 1 on an image with nothing committed.
    assert!(matches!(
        store.open_epoch(&open_msg(&img, 1, 1, 100)),
        Err(StoreError::EpochMismatch {
            committed: Epoch(0),
            base: Epoch(1),
            ..
        })
    ));
    let sealed = run_epoch(
        &store,
        &img,
        1,
        0,
        8192,
        8192,
        &[vec![data(0, vec![1; 100])]],
    );
    store.commit(rp_meta(5), vec![sealed]).expect("commit");
    assert!(matches!(
        store.open_epoch(&open_msg(&img, 1, 0, 100)),
        Err(StoreError::StaleEpoch { .. })
    ));
    assert!(matches!(
        store.open_epoch(&open_msg(&img, 3, 2, 100)),
        Err(StoreError::EpochMismatch {
            committed: Epoch(1),
            base: Epoch(2),
            ..
        })
    ));

    let mut writer = store.open_epoch(&open_msg(&img, 2, 1, 8192)).expect("open");
    assert!(matches!(
        store.open_epoch(&open_msg(&img, 2, 1, 8192)),
        Err(StoreError::Busy { .. })
    ));
    let clone = store.clone();
    let busy = std::thread::spawn(move || {
        clone.commit(
            rp_meta(6),
            vec![SealedEpoch {
                image: name("err"),
                epoch: Epoch(2),
                last_seq: SeqNo(0),
                size: 8192,
            }],
        )
    })
    .join()
    .expect("thread");
    assert!(matches!(busy, Err(StoreError::Busy { .. })), "{busy:?}");

    assert_malformed_batches_are_rejected(&mut writer);
    // Rejected batches change nothing: batch 1 is still expected.
    assert!(writer
        .stage(StagedBatch {
            seq: SeqNo(1),
            scan_end: 500,
            extents: vec![data(0, vec![5; 10])]
        })
        .expect("stage"));
    assert!(matches!(
        reject_seq2_backwards(&mut writer),
        BatchRejection::ScanEndBackwards { .. }
    ));
    // Sealing needs the durable seq.
    assert_eq!(writer.sync().expect("sync"), SeqNo(1));
    let writer_err = writer.seal(SeqNo(2), 8192).expect_err("seal mismatch");
    assert!(matches!(writer_err, StoreError::SealMismatch { .. }));

    // Commit checks: unknown epoch, wrong last seq, old recovery point, duplicates.
    let mut writer = store
        .open_epoch(&open_msg(&img, 2, 1, 8192))
        .expect("reopen");
    assert_eq!(writer.durable_seq(), SeqNo(1));
    writer.sync().expect("sync");
    drop(writer);
    let sealed = |seq| SealedEpoch {
        image: img.clone(),
        epoch: Epoch(2),
        last_seq: SeqNo(seq),
        size: 8192,
    };
    assert!(matches!(
        store.commit(rp_meta(6), vec![sealed(2)]),
        Err(StoreError::InvalidCommit { .. })
    ));
    assert!(matches!(
        store.commit(rp_meta(4), vec![sealed(1)]),
        Err(StoreError::InvalidCommit { .. })
    ));
    assert!(matches!(
        store.commit(rp_meta(6), vec![sealed(1), sealed(1)]),
        Err(StoreError::InvalidCommit { .. })
    ));
    store.commit(rp_meta(6), vec![sealed(1)]).expect("commit");

    // Hashes match the committed bytes; unknown images are reported.
    let bytes = raw_bytes(&store, &img);
    let (rp, size, hashes) = store.hash_range(&img, 0, u64::MAX, 4096).expect("hash");
    assert_eq!((rp, size, hashes.len()), (RecoveryPointId(6), 8192, 2));
    assert_eq!(hashes[1], *blake3::hash(&bytes[4096..]).as_bytes());
    assert!(matches!(
        store.hash_range(&name("nope"), 0, 1, 1),
        Err(StoreError::UnknownImage { .. })
    ));
    assert!(matches!(
        store.hash_range(&img, 0, 1, 0),
        Err(StoreError::InvalidRequest { .. })
    ));
    assert!(matches!(
        store.recovery_points(&name("nope")),
        Err(StoreError::UnknownImage { .. })
    ));
    assert_eq!(store.image_state(&name("nope")).expect("state"), None);
}

/// Batch 1 of `writer`'s epoch (an 8192-byte image) past the end, with an
/// empty or unsorted extent, data of the wrong length, or data on a zero
/// extent: each is rejected with its reason.
fn assert_malformed_batches_are_rejected(writer: &mut EpochWriter) {
    let reject =
        |writer: &mut EpochWriter, extents: Vec<DecodedExtent>, scan_end: u64| -> BatchRejection {
            match writer.stage(StagedBatch {
                seq: SeqNo(1),
                scan_end,
                extents,
            }) {
                Err(StoreError::InvalidBatch { reason, .. }) => reason,
                other => panic!("expected InvalidBatch, got {other:?}"),
            }
        };
    assert!(matches!(
        reject(writer, vec![data(8000, vec![0; 200])], 0),
        BatchRejection::PastEnd { .. }
    ));
    assert!(matches!(
        reject(writer, vec![zero(10, 0)], 0),
        BatchRejection::EmptyExtent { .. }
    ));
    assert!(matches!(
        reject(
            writer,
            vec![data(100, vec![0; 10]), data(105, vec![0; 10])],
            0
        ),
        BatchRejection::Unsorted { .. }
    ));
    let short = DecodedExtent {
        offset: 0,
        length: 10,
        kind: ExtentKind::Data,
        data: Some(Bytes::from_static(b"abc")),
    };
    assert!(matches!(
        reject(writer, vec![short], 0),
        BatchRejection::DataLength { got: 3, .. }
    ));
    let zero_with_data = DecodedExtent {
        offset: 0,
        length: 3,
        kind: ExtentKind::Zero,
        data: Some(Bytes::from_static(b"abc")),
    };
    assert!(matches!(
        reject(writer, vec![zero_with_data], 0),
        BatchRejection::UnexpectedData { .. }
    ));
}

fn reject_seq2_backwards(writer: &mut EpochWriter) -> BatchRejection {
    match writer.stage(StagedBatch {
        seq: SeqNo(2),
        scan_end: 100,
        extents: vec![],
    }) {
        Err(StoreError::InvalidBatch { reason, .. }) => reason,
        other => panic!("expected InvalidBatch, got {other:?}"),
    }
}

#[test]
fn full_copy_rejects_rewrites_below_high_water() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store_at(dir.path());
    let img = name("hw");
    let mut writer = store
        .open_epoch(&open_msg(&img, 1, 0, 1 << 20))
        .expect("open");
    writer
        .stage(StagedBatch {
            seq: SeqNo(1),
            scan_end: 8192,
            extents: vec![data(0, vec![1; 8192])],
        })
        .expect("stage");
    let err = writer
        .stage(StagedBatch {
            seq: SeqNo(2),
            scan_end: 9000,
            extents: vec![data(4096, vec![2; 10])],
        })
        .expect_err("rewrite");
    assert!(matches!(
        err,
        StoreError::InvalidBatch {
            reason: BatchRejection::BelowHighWater {
                high_water: 8192,
                ..
            },
            ..
        }
    ));
}

#[test]
fn new_epoch_discards_other_pending_epoch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store_at(dir.path());
    let img = name("moved-on");
    let mut writer = store.open_epoch(&open_msg(&img, 1, 0, 4096)).expect("open");
    writer
        .stage(StagedBatch {
            seq: SeqNo(1),
            scan_end: 4096,
            extents: vec![data(0, vec![7; 4096])],
        })
        .expect("stage");
    writer.sync().expect("sync");
    drop(writer);
    let writer = store
        .open_epoch(&open_msg(&img, 5, 0, 4096))
        .expect("open newer");
    assert_eq!((writer.epoch(), writer.durable_seq()), (Epoch(5), SeqNo(0)));
    assert!(!dir
        .path()
        .join("images/moved-on.ferry/epoch-1.journal")
        .exists());
    let pending = store
        .image_state(&img)
        .expect("state")
        .expect("known")
        .pending
        .expect("pending");
    assert_eq!(pending.epoch, Epoch(5));
}

#[test]
fn store_is_shareable_across_threads() {
    fn assert_traits<T: Clone + Send + Sync + 'static>() {}
    assert_traits::<StandbyStore>();
    fn assert_send<T: Send>() {}
    assert_send::<EpochWriter>();

    let dir = tempfile::tempdir().expect("tempdir");
    let store = store_at(dir.path());
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let store = store.clone();
            std::thread::spawn(move || {
                let img = name(&format!("par{i}"));
                let payload = vec![i as u8 + 1; 10_000];
                let sealed = run_epoch(
                    &store,
                    &img,
                    1,
                    0,
                    10_000,
                    10_000,
                    &[vec![data(0, payload.clone())]],
                );
                store.commit(rp_meta(1), vec![sealed]).expect("commit");
                assert_eq!(raw_bytes(&store, &img), payload);
            })
        })
        .collect();
    for h in handles {
        h.join().expect("thread");
    }
    assert_eq!(store.images().expect("images").len(), 4);
}

/// Throughput probe (not a pass/fail test): `cargo test --release -p
/// ferry-engine --lib standby::tests::throughput_probe -- --ignored --nocapture`.
/// Set `FERRY_PROBE_DIR` to measure on a particular file system.
#[test]
#[ignore = "measurement, run by hand"]
fn throughput_probe() {
    use std::time::Instant;
    let base = std::env::var_os("FERRY_PROBE_DIR").map(std::path::PathBuf::from);
    let dir = match &base {
        Some(b) => tempfile::tempdir_in(b).expect("tempdir"),
        None => tempfile::tempdir().expect("tempdir"),
    };
    let store = store_at(dir.path());
    let img = name("probe");
    let size: u64 = 256 << 20;
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let pool = Bytes::from(random_bytes(&mut rng, 8 << 20));
    let mb = |bytes: u64, secs: f64| bytes as f64 / secs / 1e6;

    // Full copy: 64 KiB extents, 4 MiB batches, sync every 16 MiB.
    let t = Instant::now();
    let mut writer = store.open_epoch(&open_msg(&img, 1, 0, size)).expect("open");
    let mut seq = 0u64;
    let mut off = 0u64;
    while off < size {
        let extents: Vec<DecodedExtent> = (0..64)
            .map(|i| {
                let o = off + i * 65536;
                let at = (o % (4 << 20)) as usize;
                DecodedExtent {
                    offset: o,
                    length: 65536,
                    kind: ExtentKind::Data,
                    data: Some(pool.slice(at..at + 65536)),
                }
            })
            .collect();
        off += 64 * 65536;
        seq += 1;
        writer
            .stage(StagedBatch {
                seq: SeqNo(seq),
                scan_end: off,
                extents,
            })
            .expect("stage");
        if seq.is_multiple_of(4) {
            writer.sync().expect("sync");
        }
    }
    writer.sync().expect("sync");
    let staged = t.elapsed().as_secs_f64();
    let sealed = writer.seal(SeqNo(seq), size).expect("seal");
    let t = Instant::now();
    store.commit(rp_meta(1), vec![sealed]).expect("commit");
    let commit = t.elapsed().as_secs_f64();
    println!(
        "full copy 256 MiB: stage+sync {:.0} MB/s ({staged:.2} s), commit {:.3} s",
        mb(size, staged),
        commit
    );

    // Incremental: 16384 scattered 4 KiB writes (64 MiB), 256 extents per batch.
    let mut offsets: Vec<u64> = (0..size / 4096).collect();
    for i in (1..offsets.len()).rev() {
        offsets.swap(i, rng.gen_range(0..=i));
    }
    let mut chosen: Vec<u64> = offsets[..16384].iter().map(|b| b * 4096).collect();
    chosen.sort_unstable();
    let t = Instant::now();
    let mut writer = store.open_epoch(&open_msg(&img, 2, 1, size)).expect("open");
    for (i, chunk) in chosen.chunks(256).enumerate() {
        let extents: Vec<DecodedExtent> = chunk
            .iter()
            .map(|&o| {
                let at = (o % (8 << 20)) as usize & !4095;
                DecodedExtent {
                    offset: o,
                    length: 4096,
                    kind: ExtentKind::Data,
                    data: Some(pool.slice(at..at + 4096)),
                }
            })
            .collect();
        let scan_end = chunk.last().map_or(0, |o| o + 4096);
        writer
            .stage(StagedBatch {
                seq: SeqNo(i as u64 + 1),
                scan_end,
                extents,
            })
            .expect("stage");
        if (i + 1) % 16 == 0 {
            writer.sync().expect("sync");
        }
    }
    let last = writer.sync().expect("sync");
    let staged = t.elapsed().as_secs_f64();
    let sealed = writer.seal(last, size).expect("seal");
    let t = Instant::now();
    store.commit(rp_meta(2), vec![sealed]).expect("commit");
    let commit = t.elapsed().as_secs_f64();
    println!(
        "incremental 16384 x 4 KiB: stage+sync {:.0} MB/s ({staged:.2} s), commit (undo+apply+fsync) {commit:.2} s = {:.0} MB/s of changes",
        mb(64 << 20, staged),
        mb(64 << 20, commit)
    );

    let t = Instant::now();
    let (_, _, hashes) = store.hash_range(&img, 0, size, 1 << 20).expect("hash");
    let hash = t.elapsed().as_secs_f64();
    println!(
        "hash_range 256 MiB in {} granules: {:.0} MB/s",
        hashes.len(),
        mb(size, hash)
    );

    let out = dir.path().join("restored");
    let t = Instant::now();
    store
        .restore(&img, RecoveryPointId(1), &out)
        .expect("restore");
    let restore = t.elapsed().as_secs_f64();
    println!(
        "restore of the previous point (copy 256 MiB + one undo log): {restore:.2} s = {:.0} MB/s",
        mb(size, restore)
    );
}

#[test]
fn pinned_point_outlives_retention_until_unpinned() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_dir = tempfile::tempdir().expect("tempdir");
    let store = StandbyStore::open(dir.path(), StoreConfig { retention: 2 }).expect("open");
    let img = name("pinned");
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let size = 1u64 << 20;
    let mut model = vec![0u8; size as usize];
    let mut at_rp = Vec::new();
    for epoch in 1..=6u64 {
        let batch = vec![data(epoch * 4096, random_bytes(&mut rng, 10_000))];
        apply_model(&mut model, &batch);
        let base = epoch - 1;
        let sealed = run_epoch(&store, &img, epoch, base, size, size, &[batch]);
        store.commit(rp_meta(epoch), vec![sealed]).expect("commit");
        at_rp.push(model.clone());
        if epoch == 2 {
            store.pin(&img, RecoveryPointId(2)).expect("pin");
            store
                .pin(&img, RecoveryPointId(2))
                .expect("pin is idempotent");
        }
    }
    let ids: Vec<u64> = store
        .recovery_points(&img)
        .expect("points")
        .iter()
        .map(|p| p.id.get())
        .collect();
    assert_eq!(ids, vec![2, 5, 6], "retention 2 plus the pinned point");
    assert_eq!(restored(&store, &img, 2, out_dir.path()), at_rp[1]);
    assert!(matches!(
        store.pin(&img, RecoveryPointId(1)),
        Err(StoreError::UnknownRecoveryPoint { .. })
    ));
    // The pin survives a reopen; an orphan copy (pin interrupted before its
    // state update) is removed by the next commit.
    drop(store);
    let store = StandbyStore::open(dir.path(), StoreConfig { retention: 2 }).expect("reopen");
    assert_eq!(restored(&store, &img, 2, out_dir.path()), at_rp[1]);
    let orphan = store.image_dir_for_tests(&img).join("pinned-99.raw");
    fs::write(&orphan, b"x").expect("orphan");
    let batch = vec![data(0, random_bytes(&mut rng, 100))];
    let sealed = run_epoch(&store, &img, 7, 6, size, size, &[batch]);
    store.commit(rp_meta(7), vec![sealed]).expect("commit 7");
    assert!(!orphan.exists(), "unlisted pinned copy removed");
    store.unpin(&img, RecoveryPointId(2)).expect("unpin");
    store.unpin(&img, RecoveryPointId(2)).expect("unpin twice");
    let ids: Vec<u64> = store
        .recovery_points(&img)
        .expect("points")
        .iter()
        .map(|p| p.id.get())
        .collect();
    assert_eq!(ids, vec![6, 7]);
    assert!(!store
        .image_dir_for_tests(&img)
        .join("pinned-2.raw")
        .exists());
}

#[test]
fn removed_image_is_gone_and_adopted_image_continues_incrementally() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_dir = tempfile::tempdir().expect("tempdir");
    let store = store_at(dir.path());
    let img = name("moved");
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let size = 256u64 << 10;
    let batch = vec![data(0, random_bytes(&mut rng, 8192))];
    let sealed = run_epoch(&store, &img, 1, 0, size, size, &[batch]);
    store.commit(rp_meta(1), vec![sealed]).expect("commit");
    // A writer blocks removal.
    let writer = store.open_epoch(&open_msg(&img, 2, 1, size)).expect("open");
    assert!(matches!(
        store.remove_image(&img),
        Err(StoreError::Busy { .. })
    ));
    drop(writer);
    store.remove_image(&img).expect("remove");
    store.remove_image(&img).expect("remove twice");
    assert!(store.images().expect("images").is_empty());
    assert!(!store.image_path(&img).exists());
    assert!(store.image_state(&img).expect("state").is_none());

    // Adopt a volume as epoch 9 / RP 40, then an increment on base 9 applies.
    let volume = out_dir.path().join("volume.raw");
    let mut model = random_bytes(&mut rng, size as usize);
    fs::write(&volume, &model).expect("volume");
    store
        .adopt(&img, &volume, Epoch(9), RecoveryPointId(40), 40_000)
        .expect("adopt");
    assert!(matches!(
        store.adopt(&img, &volume, Epoch(9), RecoveryPointId(40), 40_000),
        Err(StoreError::InvalidRequest { .. })
    ));
    let state = store.image_state(&img).expect("state").expect("known");
    assert_eq!((state.committed_epoch, state.size), (Epoch(9), size));
    let batch = vec![data(4096, random_bytes(&mut rng, 4096))];
    apply_model(&mut model, &batch);
    let sealed = run_epoch(&store, &img, 10, 9, size, size, &[batch]);
    store
        .commit(rp_meta(41), vec![sealed])
        .expect("commit on adopted");
    assert_eq!(raw_bytes(&store, &img), model);
    assert_eq!(
        restored(&store, &img, 40, out_dir.path()),
        fs::read(&volume).expect("volume")
    );
}

/// A failover fences an image; once the store has removed it and later
/// adopts a volume under the same name (a fail-back makes this site the
/// standby again), the new copy takes replication. The fence lived on in
/// memory (only the state file was new), so the copy refused every epoch
/// until the agent restarted (control harness seed 3303142260, scenario 7).
#[test]
fn an_image_removed_after_a_failover_fence_and_adopted_again_takes_replication() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_dir = tempfile::tempdir().expect("tempdir");
    let store = store_at(dir.path());
    let img = name("failed-over");
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let size = 128u64 << 10;
    let sealed = run_epoch(
        &store,
        &img,
        1,
        0,
        size,
        size,
        &[vec![data(0, random_bytes(&mut rng, 4096))]],
    );
    store.commit(rp_meta(1), vec![sealed]).expect("commit");
    store.fence(&img).expect("fence");
    assert!(matches!(
        store.open_epoch(&open_msg(&img, 2, 1, size)),
        Err(StoreError::Fenced { .. })
    ));
    store.remove_image(&img).expect("remove");

    let volume = out_dir.path().join("volume.raw");
    let mut model = random_bytes(&mut rng, size as usize);
    fs::write(&volume, &model).expect("volume");
    store
        .adopt(&img, &volume, Epoch(7), RecoveryPointId(20), 20_000)
        .expect("adopt");
    let batch = vec![data(8192, random_bytes(&mut rng, 4096))];
    apply_model(&mut model, &batch);
    let sealed = run_epoch(&store, &img, 8, 7, size, size, &[batch]);
    store
        .commit(rp_meta(21), vec![sealed])
        .expect("commit on the adopted copy");
    assert_eq!(raw_bytes(&store, &img), model);
}

#[test]
fn placeholder_is_listed_empty_and_replaced_by_the_first_full_copy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store_at(dir.path());
    let img = name("placeholder");
    let size = 512u64 << 10;
    store.create_placeholder(&img, size).expect("placeholder");
    store.create_placeholder(&img, size).expect("idempotent");
    assert_eq!(store.images().expect("images"), vec![img.clone()]);
    let state = store.image_state(&img).expect("state").expect("known");
    assert_eq!(state.committed_epoch, Epoch(0));
    assert_eq!(
        fs::metadata(store.image_path(&img)).expect("raw").len(),
        size
    );
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut model = vec![0u8; size as usize];
    let batch = vec![data(8192, random_bytes(&mut rng, 5000))];
    apply_model(&mut model, &batch);
    let sealed = run_epoch(&store, &img, 1, 0, size, size, &[batch]);
    store.commit(rp_meta(1), vec![sealed]).expect("commit");
    assert_eq!(raw_bytes(&store, &img), model);
    drop(store);
    let store = store_at(dir.path());
    assert_eq!(raw_bytes(&store, &img), model);
}

/// Regression: a Commit naming an image size no file can have (a hostile or
/// buggy primary) must be refused before anything is recorded; before the
/// fix the commit record was written, the commit failed at `set_len`, and
/// every reopen replayed the record and failed: the standby was bricked.
#[test]
fn commit_with_an_impossible_size_is_refused_and_the_store_reopens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = name("a");
    {
        let store = store_at(dir.path());
        let batches = vec![vec![data(0, vec![7; 8192])]];
        let sealed = run_epoch(&store, &img, 1, 0, 8192, 8192, &batches);
        store.commit(rp_meta(1), vec![sealed]).expect("commit");
    }
    for (epoch, size) in [(2, u64::MAX), (3, 1 << 63), (4, MAX_IMAGE_SIZE + 1)] {
        {
            let store = store_at(dir.path());
            let mut writer = store
                .open_epoch(&open_msg(&img, epoch, 1, 8192))
                .expect("open epoch");
            let durable = writer.sync().expect("sync");
            match writer.seal(durable, size) {
                Err(StoreError::InvalidRequest { reason }) => {
                    assert!(reason.contains("size"), "{reason}")
                }
                Err(other) => panic!("size {size}: unexpected error {other}"),
                Ok(sealed) => {
                    let result = store.commit(rp_meta(epoch), vec![sealed]);
                    panic!("size {size} was sealed (commit: {result:?})");
                }
            }
        }
        // The store reopens and still holds the last good point.
        let store = store_at(dir.path());
        let state = store.image_state(&img).expect("state").expect("known");
        assert_eq!(state.committed_epoch, Epoch(1));
        assert_eq!(raw_bytes(&store, &img), vec![7; 8192]);
    }
    // A huge open is refused the same way, before any file grows.
    let store = store_at(dir.path());
    assert!(matches!(
        store.open_epoch(&open_msg(&img, 5, 1, u64::MAX)),
        Err(StoreError::InvalidRequest { .. })
    ));
    assert_eq!(raw_bytes(&store, &img), vec![7; 8192]);
}

/// A size under [`MAX_IMAGE_SIZE`] that the filesystem still cannot hold
/// (ext4's per-file limit is 16 TiB with 4 KiB blocks; XFS and btrfs take
/// it, sparse). Whichever way the filesystem answers, the standby must stay
/// openable at a complete recovery point: either the commit fails and the
/// last good point remains, or it succeeds and the new point is complete.
#[test]
fn commit_larger_than_the_filesystem_allows_leaves_an_openable_store() {
    const SIZE: u64 = 20 << 40; // 20 TiB: above ext4's limit, below the cap.
    let dir = tempfile::tempdir().expect("tempdir");
    let img = name("a");
    {
        let store = store_at(dir.path());
        let batches = vec![vec![data(0, vec![7; 8192])]];
        let sealed = run_epoch(&store, &img, 1, 0, 8192, 8192, &batches);
        store.commit(rp_meta(1), vec![sealed]).expect("commit");
    }
    let grown = {
        let store = store_at(dir.path());
        let batches = vec![vec![data(8192, vec![9; 4096])]];
        let sealed = run_epoch(&store, &img, 2, 1, SIZE, SIZE, &batches);
        store.commit(rp_meta(2), vec![sealed])
    };
    // Reopened (as after a restart): never bricked by the recorded commit.
    let store = store_at(dir.path());
    let state = store.image_state(&img).expect("state").expect("known");
    match grown {
        Err(e) => {
            assert_eq!(state.committed_epoch, Epoch(1), "failed commit: {e}");
            assert_eq!(raw_bytes(&store, &img), vec![7; 8192]);
        }
        Ok(_) => {
            assert_eq!(state.committed_epoch, Epoch(2));
            let raw = store.image_path(&img);
            assert_eq!(std::fs::metadata(&raw).expect("stat").len(), SIZE);
        }
    }
    // The store still takes a new epoch (3: it replaces a failed pending 2).
    let batches = vec![vec![data(0, vec![5; 4096])]];
    let base = state.committed_epoch.get();
    let size = if base == 2 { SIZE } else { 8192 };
    let sealed = run_epoch(&store, &img, 3, base, size, size, &batches);
    store.commit(rp_meta(3), vec![sealed]).expect("next commit");
}

mod power_loss_cases;
