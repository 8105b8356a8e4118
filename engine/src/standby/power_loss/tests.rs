//! Tests of the power-loss layer itself: what survives [`simulate`] and what
//! does not, for data, sizes and names.

use std::fs;
use std::path::Path;

use super::super::io::{self as store_io, Create};
use super::{record_on_this_thread, simulate};

struct Setup {
    _tmp: tempfile::TempDir,
    log: std::path::PathBuf,
    dir: std::path::PathBuf,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().expect("tempdir");
    let log = tmp.path().join("log");
    let dir = tmp.path().join("store");
    fs::create_dir(&dir).expect("mkdir");
    Setup {
        log,
        dir,
        _tmp: tmp,
    }
}

/// Creates `path` holding `bytes`, fully durable (file and directory synced).
fn durable_file(path: &Path, bytes: &[u8]) {
    let file = store_io::open(path, Create::New).expect("create");
    store_io::write_all_at(&file, path, bytes, 0).expect("write");
    store_io::sync_all(&file, path).expect("fsync");
    store_io::sync_dir(path.parent().expect("parent")).expect("fsync dir");
}

#[test]
fn unsynced_write_is_lost_synced_write_stays() {
    let s = setup();
    let _rec = record_on_this_thread(&s.log).expect("record");
    let a = s.dir.join("a");
    let b = s.dir.join("b");
    durable_file(&a, b"old contents of a");
    durable_file(&b, b"old contents of b");
    let fa = store_io::open(&a, Create::No).expect("open");
    let fb = store_io::open(&b, Create::No).expect("open");
    store_io::write_all_at(&fa, &a, b"NEW", 4).expect("write");
    store_io::write_all_at(&fa, &a, b" and a longer tail", 17).expect("grow");
    store_io::write_all_vectored_at(&fb, &b, &[b"NE", b"W"], 4).expect("write");
    store_io::sync_data(&fb, &b).expect("fdatasync");
    // After the sync: lost again.
    store_io::write_all_at(&fb, &b, b"!", 0).expect("write");
    drop((fa, fb));
    let report = simulate(&s.log).expect("simulate");
    assert_eq!(fs::read(&a).expect("read"), b"old contents of a");
    assert_eq!(fs::read(&b).expect("read"), b"old NEWtents of b");
    assert_eq!(report.data_rolled_back, 3, "{report:?}");
    // The log is empty afterwards: a second simulation changes nothing.
    let again = simulate(&s.log).expect("simulate");
    assert_eq!(again.records, 0);
}

#[test]
fn unsynced_size_changes_and_hole_punches_are_lost() {
    let s = setup();
    let _rec = record_on_this_thread(&s.log).expect("record");
    let a = s.dir.join("a");
    let old: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8 + 1).collect();
    durable_file(&a, &old);
    let f = store_io::open(&a, Create::No).expect("open");
    store_io::zero_range(&f, &a, 70_000, 100_000).expect("punch");
    store_io::set_len(&f, &a, 1000).expect("shrink");
    store_io::set_len(&f, &a, 5_000_000).expect("grow");
    drop(f);
    simulate(&s.log).expect("simulate");
    assert_eq!(fs::read(&a).expect("read"), old);
}

#[test]
fn created_file_without_directory_sync_vanishes_even_if_fsynced() {
    let s = setup();
    let _rec = record_on_this_thread(&s.log).expect("record");
    let a = s.dir.join("a");
    let f = store_io::open(&a, Create::Truncate).expect("create");
    store_io::write_all_at(&f, &a, b"data", 0).expect("write");
    store_io::sync_all(&f, &a).expect("fsync");
    drop(f);
    let report = simulate(&s.log).expect("simulate");
    assert!(!a.exists(), "{report:?}");
    assert_eq!(report.names_rolled_back, 1);
}

#[test]
fn rename_reverts_without_directory_sync_and_stays_with_it() {
    for dir_sync in [false, true] {
        let s = setup();
        let _rec = record_on_this_thread(&s.log).expect("record");
        let target = s.dir.join("state.json");
        let tmp = s.dir.join("state.json.tmp");
        durable_file(&target, b"version 1");
        // The atomic replace, minus (or with) its final directory fsync.
        let f = store_io::open(&tmp, Create::Truncate).expect("create");
        store_io::write_all_at(&f, &tmp, b"version 2", 0).expect("write");
        store_io::sync_all(&f, &tmp).expect("fsync");
        drop(f);
        store_io::rename(&tmp, &target).expect("rename");
        if dir_sync {
            store_io::sync_dir(&s.dir).expect("fsync dir");
        }
        simulate(&s.log).expect("simulate");
        let expected: &[u8] = if dir_sync { b"version 2" } else { b"version 1" };
        assert_eq!(
            fs::read(&target).expect("read"),
            expected,
            "dir sync {dir_sync}"
        );
        assert!(!tmp.exists(), "dir sync {dir_sync}");
    }
}

#[test]
fn removal_reverts_without_directory_sync_and_stays_with_it() {
    for dir_sync in [false, true] {
        let s = setup();
        let _rec = record_on_this_thread(&s.log).expect("record");
        let a = s.dir.join("journal");
        durable_file(&a, b"journal bytes");
        // Data written after the last fsync is lost even though the file's
        // removal is undone.
        let f = store_io::open(&a, Create::No).expect("open");
        store_io::write_all_at(&f, &a, b"JOURNAL", 0).expect("write");
        drop(f);
        store_io::remove_file(&a).expect("remove");
        assert!(!a.exists());
        let missing = store_io::remove_file(&a).expect_err("already gone");
        assert_eq!(missing.kind(), std::io::ErrorKind::NotFound);
        if dir_sync {
            store_io::sync_dir(&s.dir).expect("fsync dir");
        }
        simulate(&s.log).expect("simulate");
        if dir_sync {
            assert!(!a.exists());
        } else {
            assert_eq!(fs::read(&a).expect("read"), b"journal bytes");
        }
    }
}

#[test]
fn created_directory_without_parent_sync_vanishes_with_its_contents() {
    let s = setup();
    let _rec = record_on_this_thread(&s.log).expect("record");
    let sub = s.dir.join("images").join("vm.ferry");
    store_io::create_dir_all(&sub).expect("mkdir -p");
    durable_file(&sub.join("state.json"), b"{}");
    store_io::sync_dir(&s.dir.join("images")).expect("fsync images");
    simulate(&s.log).expect("simulate");
    // images/ itself was never made durable in the store directory.
    assert!(!s.dir.join("images").exists());
}

#[test]
fn a_restarted_process_appends_and_a_cut_last_record_is_ignored() {
    let s = setup();
    let a = s.dir.join("a");
    {
        let _rec = record_on_this_thread(&s.log).expect("record");
        durable_file(&a, b"synced");
    }
    // A kill in the middle of appending a record leaves half a line.
    let records = s.log.join(super::log::RECORDS);
    let mut text = fs::read(&records).expect("read");
    text.extend_from_slice(b"{\"op\":\"crea");
    fs::write(&records, &text).expect("write");
    {
        let _rec = record_on_this_thread(&s.log).expect("record again");
        let f = store_io::open(&a, Create::No).expect("open");
        store_io::write_all_at(&f, &a, b"UNSYNCED", 0).expect("write");
    }
    let report = simulate(&s.log).expect("simulate");
    assert_eq!(fs::read(&a).expect("read"), b"synced");
    assert_eq!(report.data_rolled_back, 1, "{report:?}");
}

#[test]
fn kept_files_go_once_their_name_change_is_durable() {
    let s = setup();
    let _rec = record_on_this_thread(&s.log).expect("record");
    let kept = s.log.join(super::log::KEPT);
    let count = || fs::read_dir(&kept).expect("list").count();
    let a = s.dir.join("a");
    let b = s.dir.join("b");
    let d = s.dir.join("d");
    durable_file(&a, b"a");
    durable_file(&b, b"b");
    durable_file(&d, b"d");
    store_io::remove_file(&a).expect("remove");
    store_io::rename(&b, &s.dir.join("c")).expect("rename");
    store_io::rename(&d, &s.dir.join("c")).expect("replace");
    // The removed file and the replaced one are kept until a directory
    // fsync makes their loss durable.
    assert_eq!(count(), 2);
    store_io::sync_dir(&s.dir).expect("fsync dir");
    assert_eq!(count(), 0);
    let report = simulate(&s.log).expect("simulate");
    assert_eq!(report.names_rolled_back, 0, "{report:?}");
    assert_eq!(fs::read(s.dir.join("c")).expect("read"), b"d");
    assert!(!a.exists() && !b.exists() && !d.exists());
}

#[test]
fn reordered_writeback_keeps_only_the_last_unsynced_write_of_each_file() {
    let s = setup();
    let _rec = record_on_this_thread(&s.log).expect("record");
    let a = s.dir.join("a");
    durable_file(&a, b"0123456789");
    let f = store_io::open(&a, Create::No).expect("open");
    store_io::write_all_at(&f, &a, b"AB", 2).expect("overwrite");
    store_io::write_all_at(&f, &a, b"records", 10).expect("append");
    store_io::write_all_at(&f, &a, b"END", 17).expect("append the end");
    drop(f);
    let cut = super::Cut {
        writeback: super::Writeback::LastWriteFirst,
        keep_names: false,
    };
    let report = super::simulate_with(&s.log, cut).expect("simulate");
    // The end reached the disk, the bytes before it did not.
    assert_eq!(fs::read(&a).expect("read"), b"0123456789\0\0\0\0\0\0\0END");
    assert_eq!(
        (report.data_kept, report.data_rolled_back),
        (1, 2),
        "{report:?}"
    );
}

#[test]
fn random_writeback_keeps_a_seeded_subset_and_names_can_be_kept() {
    let mut outcomes = std::collections::BTreeSet::new();
    for seed in 0..16 {
        let s = setup();
        let _rec = record_on_this_thread(&s.log).expect("record");
        let a = s.dir.join("a");
        let f = store_io::open(&a, Create::New).expect("create");
        for (i, piece) in [b"aa", b"bb", b"cc"].iter().enumerate() {
            store_io::write_all_at(&f, &a, *piece, 2 * i as u64).expect("write");
        }
        // Overlapping: where both survive, the newer one wins.
        store_io::write_all_at(&f, &a, b"X", 1).expect("write");
        drop(f);
        let cut = super::Cut {
            writeback: super::Writeback::Random { seed },
            keep_names: true,
        };
        let report = super::simulate_with(&s.log, cut).expect("simulate");
        let bytes = fs::read(&a).expect("the name is kept");
        assert_eq!(report.data_kept + report.data_rolled_back, 4, "{report:?}");
        outcomes.insert(bytes);
    }
    assert!(outcomes.len() > 4, "{outcomes:?}");
    for bytes in &outcomes {
        for (i, (byte, new)) in bytes.iter().zip(b"aXbbcc").enumerate() {
            assert!(
                *byte == 0 || *byte == *new || (i == 1 && *byte == b'a'),
                "{bytes:?}"
            );
        }
    }
}
