//! The store under simulated power loss: every commit step and the journal
//! of a pending epoch, with every write not covered by a completed fsync
//! (and every name change not covered by a directory fsync) rolled back
//! before the store is reopened.

use super::*;
use crate::standby::power_loss::{
    record_on_this_thread, simulate_with, Cut, Report, ThreadRecording, Writeback,
};

/// A power-loss log recording this thread's store changes.
struct PowerLog {
    dir: tempfile::TempDir,
    recording: Option<ThreadRecording>,
}

impl PowerLog {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let recording = Some(record_on_this_thread(dir.path()).expect("record"));
        Self { dir, recording }
    }

    /// Cuts the power (the store must be closed, as after a kill) and goes
    /// on recording into a fresh log, as a restarted process would.
    fn cut(&mut self, what: &str) -> Report {
        self.cut_with(what, Cut::default())
    }

    /// [`Self::cut`] with a milder power cut.
    fn cut_with(&mut self, what: &str, cut: Cut) -> Report {
        self.recording = None;
        let report = simulate_with(self.dir.path(), cut).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(report.records > 0, "{what}: nothing was recorded");
        self.recording = Some(record_on_this_thread(self.dir.path()).expect("record"));
        report
    }
}

/// Builds the group fixture (rp 1 committed, epoch 2 sealed for both
/// images) while recording, cuts the power after it (nothing acknowledged
/// may be lost), then commits rp 2 crashing at `point`, cuts the power
/// again, and checks the reopened store rolls the group forward.
fn power_loss_at(point: CrashPoint, full_second: bool) {
    power_cut_at(point, full_second, Cut::default());
}

/// [`power_loss_at`] with `cut` at the crash point.
fn power_cut_at(point: CrashPoint, full_second: bool, cut: Cut) {
    let mut log = PowerLog::start();
    let fx = group_fixture(full_second);
    log.cut("power loss after the fixture");
    {
        let store = store_at(fx.dir.path());
        assert_group_at(&store, &fx, false);
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
    let report = log.cut_with(&format!("{cut:?} at {point:?}"), cut);
    if point == CrashPoint::AfterDataBeforeSync && cut == Cut::default() {
        assert!(report.data_rolled_back > 0, "{report:?}");
    }
    // The intent is durable before every point: the group rolls forward.
    let store = store_at(fx.dir.path());
    assert_group_at(&store, &fx, true);
    drop(store);
    log.cut("power loss after recovery");
    let store = store_at(fx.dir.path());
    assert_group_at(&store, &fx, true);
    assert_next_epoch_commits(&store, &fx);
    drop(store);
    log.cut("power loss after the next commit");
    let store = store_at(fx.dir.path());
    for img in &fx.images {
        let state = store.image_state(img).expect("state").expect("known");
        assert_eq!(state.recovery_point, RecoveryPointId(3), "{report:?}");
    }
}

#[test]
fn power_loss_after_intent() {
    power_loss_at(CrashPoint::AfterIntent, false);
}

#[test]
fn power_loss_after_undo_written() {
    power_loss_at(CrashPoint::AfterUndoWritten, false);
}

#[test]
fn power_loss_after_data_before_fdatasync() {
    power_loss_at(CrashPoint::AfterDataBeforeSync, false);
}

#[test]
fn power_loss_after_data_before_state() {
    power_loss_at(CrashPoint::AfterDataBeforeState, false);
}

#[test]
fn power_loss_after_state_before_cleanup() {
    power_loss_at(CrashPoint::AfterStateBeforeCleanup, false);
}

#[test]
fn power_loss_between_images() {
    power_loss_at(CrashPoint::BetweenImages, false);
}

#[test]
fn power_loss_after_full_rename_of_old_image() {
    power_loss_at(CrashPoint::AfterFullRenameOld, true);
}

#[test]
fn power_loss_after_full_install() {
    power_loss_at(CrashPoint::AfterFullRenameNew, true);
}

/// A batch staged but not synced is lost with the power; the synced one
/// survives, the journal is cut after it and the epoch resumes there.
#[test]
fn power_loss_mid_journal_keeps_the_synced_prefix() {
    for full in [false, true] {
        let mut log = PowerLog::start();
        let dir = tempfile::tempdir().expect("tempdir");
        let img = name("j");
        let size = 200_000u64;
        let store = store_at(dir.path());
        let mut model = Vec::new();
        if !full {
            let b = vec![vec![data(0, vec![7; size as usize])]];
            apply_model(&mut model, &b[0]);
            let sealed = run_epoch(&store, &img, 1, 0, size, size, &b);
            store.commit(rp_meta(1), vec![sealed]).expect("commit 1");
        }
        let (epoch, base) = if full { (1, 0) } else { (2, 1) };
        let mut writer = store
            .open_epoch(&open_msg(&img, epoch, base, size))
            .expect("open");
        let b1 = vec![data(1000, vec![1; 5000])];
        let b2 = vec![data(100_000, vec![2; 50_000])];
        writer
            .stage(StagedBatch {
                seq: SeqNo(1),
                scan_end: 6000,
                extents: b1,
            })
            .expect("stage 1");
        assert_eq!(writer.sync().expect("sync"), SeqNo(1));
        writer
            .stage(StagedBatch {
                seq: SeqNo(2),
                scan_end: 150_000,
                extents: b2,
            })
            .expect("stage 2");
        // The process dies: no drop handler runs.
        std::mem::forget(writer);
        drop(store);
        let report = log.cut("power loss mid-journal");
        assert!(report.data_rolled_back > 0, "full {full}: {report:?}");
        let store = store_at(dir.path());
        let pending = store
            .image_state(&img)
            .expect("state")
            .expect("known")
            .pending
            .expect("epoch still pending");
        assert_eq!(pending.durable_seq, SeqNo(1), "full {full}");
        assert_eq!(pending.resume_offset, 6000, "full {full}");
        let mut writer = store
            .open_epoch(&open_msg(&img, epoch, base, size))
            .expect("resume");
        assert_eq!(writer.durable_seq(), SeqNo(1));
        let b2 = vec![data(100_000, vec![3; 50_000])];
        writer
            .stage(StagedBatch {
                seq: SeqNo(2),
                scan_end: size,
                extents: b2.clone(),
            })
            .expect("stage 2 again");
        let last = writer.sync().expect("sync");
        let sealed = writer.seal(last, size).expect("seal");
        store.commit(rp_meta(2), vec![sealed]).expect("commit");
        if full {
            model = vec![0; size as usize];
        }
        apply_model(&mut model, &[data(1000, vec![1; 5000])]);
        apply_model(&mut model, &b2);
        drop(store);
        log.cut("power loss after the commit");
        let store = store_at(dir.path());
        assert_eq!(raw_bytes(&store, &img), model, "full {full}");
    }
}

/// A power cut while the undo log of an incremental commit is written but
/// not yet fsynced, on a file system that keeps the log's name (ext4 commits
/// it with any other fsync) and writes some of its pages back in any order:
/// the store must reopen and roll the commit forward, never find a log whose
/// END record survived a lost record before it (that reads as a damaged
/// complete log, which recovery must refuse). The undo log spans several
/// write calls (over 8 MiB of old data).
#[test]
fn power_loss_while_the_undo_log_is_written_never_leaves_a_complete_looking_damaged_log() {
    use crate::standby::power_loss::{simulate_with, Cut, Writeback};
    const SIZE: usize = 12 << 20;
    let img = name("undo");
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let old = random_bytes(&mut rng, SIZE);
    let batches: Vec<Vec<DecodedExtent>> = (0..3)
        .map(|i| {
            vec![data(
                (i * SIZE / 3) as u64,
                random_bytes(&mut rng, SIZE / 3),
            )]
        })
        .collect();
    let mut new = old.clone();
    for batch in &batches {
        apply_model(&mut new, batch);
    }
    let mut kept_some = false;
    for seed in 0..24 {
        let mut log = PowerLog::start();
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store_at(dir.path());
        let size = SIZE as u64;
        let sealed = run_epoch(
            &store,
            &img,
            1,
            0,
            size,
            size,
            &[vec![data(0, old.clone())]],
        );
        store.commit(rp_meta(1), vec![sealed]).expect("commit 1");
        let sealed = run_epoch(&store, &img, 2, 1, size, size, &batches);
        failpoint::arm(CrashPoint::UndoBeforeSync);
        let err = store
            .commit(rp_meta(2), vec![sealed])
            .expect_err("injected crash");
        failpoint::disarm();
        assert!(matches!(err, StoreError::InjectedCrash { .. }), "{err:?}");
        drop(store);
        log.recording = None;
        let cut = Cut {
            writeback: Writeback::Random { seed },
            keep_names: true,
        };
        let report = simulate_with(log.dir.path(), cut).expect("power cut");
        kept_some |= report.data_kept > 0;
        let store = StandbyStore::open(dir.path(), StoreConfig::default())
            .unwrap_or_else(|e| panic!("seed {seed}: the store does not reopen: {e} ({report:?})"));
        let state = store.image_state(&img).expect("state").expect("known");
        assert_eq!(state.recovery_point, RecoveryPointId(2), "seed {seed}");
        assert!(
            raw_bytes(&store, &img) == new,
            "seed {seed}: image is not at rp 2"
        );
    }
    assert!(kept_some, "no seed let an unsynced undo-log write survive");
}

/// Every commit step again, with milder cuts: a seeded random subset of the
/// unsynced writes reaches the disk, and name changes survive or not.
#[test]
fn milder_power_cuts_at_every_commit_step() {
    let points = [
        (CrashPoint::AfterIntent, false),
        (CrashPoint::UndoBeforeSync, false),
        (CrashPoint::AfterUndoWritten, false),
        (CrashPoint::AfterDataBeforeSync, false),
        (CrashPoint::AfterDataBeforeState, false),
        (CrashPoint::AfterStateBeforeCleanup, false),
        (CrashPoint::BetweenImages, false),
        (CrashPoint::AfterFullRenameOld, true),
        (CrashPoint::AfterFullRenameNew, true),
    ];
    for (point, full) in points {
        for seed in 0..4 {
            for keep_names in [false, true] {
                let cut = Cut {
                    writeback: Writeback::Random { seed },
                    keep_names,
                };
                power_cut_at(point, full, cut);
            }
        }
    }
}
