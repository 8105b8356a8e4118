//! Files-backend failover volumes: the fence stops a writer and commits,
//! the latest point is handed over without a copy (same inode, the store's
//! name gone), older points come from the pinned copies, and neither a
//! retry's leftovers nor removing the standby copy touches the volume.

use std::fs;
use std::os::unix::fs::MetadataExt;

use bytes::Bytes;
use ferry_protocol::message::OpenImage;
use ferry_protocol::types::{Epoch, ExtentKind, SeqNo};

use super::*;
use crate::standby::{
    DecodedExtent, RecoveryPointMeta, SealedEpoch, StagedBatch, StandbyStore, StoreConfig,
};

const SIZE: u64 = 64 * 1024;

fn open_msg(image: &ImageName, epoch: u64, base: u64) -> OpenImage {
    OpenImage {
        image: image.clone(),
        size: SIZE,
        block_size: 4096,
        epoch: Epoch(epoch),
        base_epoch: Epoch(base),
    }
}

fn batch(seq: u64, offset: u64, fill: u8) -> StagedBatch {
    StagedBatch {
        seq: SeqNo(seq),
        scan_end: SIZE,
        extents: vec![DecodedExtent {
            offset,
            length: 8192,
            kind: ExtentKind::Data,
            data: Some(Bytes::from(vec![fill; 8192])),
        }],
    }
}

fn meta(id: u64) -> RecoveryPointMeta {
    RecoveryPointMeta {
        id: RecoveryPointId(id),
        created_unix_ms: id,
        fuzzy: false,
    }
}

/// One epoch writing `fill` at `offset`, sealed.
fn epoch(store: &Standby, image: &ImageName, e: u64, offset: u64, fill: u8) -> SealedEpoch {
    let mut w = store.open_epoch(&open_msg(image, e, e - 1)).expect("open");
    assert!(w.stage(batch(1, offset, fill)).expect("stage"));
    let durable = w.sync().expect("sync");
    w.seal(durable, SIZE).expect("seal")
}

/// The image's content after writing `(offset, fill)` pairs on zeroes.
fn model(writes: &[(u64, u8)]) -> Vec<u8> {
    let mut m = vec![0u8; SIZE as usize];
    for &(offset, fill) in writes {
        m[offset as usize..offset as usize + 8192].fill(fill);
    }
    m
}

fn path_of(volume: &Volume) -> PathBuf {
    PathBuf::from(
        volume
            .location
            .strip_prefix("file:")
            .expect("a file volume"),
    )
}

#[test]
fn files_failover_hands_the_latest_point_over_and_keeps_the_pinned_ones() {
    let dir = tempfile::tempdir().unwrap();
    let raw_store = StandbyStore::open(&dir.path().join("store"), StoreConfig::default()).unwrap();
    let store = Standby::from(raw_store.clone());
    let (a, b) = (
        ImageName::new("g1-a").unwrap(),
        ImageName::new("g1-b").unwrap(),
    );
    for (rp, e, offset, fill) in [(1, 1, 0, 1u8), (2, 2, 16384, 2u8)] {
        let sealed = vec![
            epoch(&store, &a, e, offset, fill),
            epoch(&store, &b, e, offset, fill + 10),
        ];
        store.commit(meta(rp), sealed).unwrap();
        if rp == 1 {
            // Group points are pinned on the standby (peer.rs).
            store.pin(&a, RecoveryPointId(1)).unwrap();
            store.pin(&b, RecoveryPointId(1)).unwrap();
        }
    }
    let at_1 = model(&[(0, 1)]);
    let at_2 = model(&[(0, 1), (16384, 2)]);
    let b_at_1 = model(&[(0, 11)]);

    // An epoch open when the failover starts: the fence waits for it, and
    // it writes nothing more; then nothing opens or commits.
    let mut open = store.open_epoch(&open_msg(&a, 3, 2)).unwrap();
    assert!(matches!(store.fence(&a), Err(StoreError::Busy { .. })));
    assert!(matches!(
        open.stage(batch(1, 0, 9)),
        Err(StoreError::Fenced { .. })
    ));
    drop(open);
    store.fence(&a).unwrap();
    store.fence(&b).unwrap();
    assert!(matches!(
        store.open_epoch(&open_msg(&a, 3, 2)),
        Err(StoreError::Fenced { .. })
    ));

    // Latest point: the file itself, not a copy.
    let inode = fs::metadata(raw_store.image_path(&a)).unwrap().ino();
    let out = dir.path().join("failover").join("g1");
    store.prepare_failover_outputs(&out).unwrap();
    let vol = store
        .failover_volume(&out, &a, RecoveryPointId(2), false)
        .unwrap();
    assert_eq!(vol.method, VolumeMethod::InPlace);
    assert_eq!(path_of(&vol), out.join("g1-a.raw"));
    let m = fs::metadata(path_of(&vol)).unwrap();
    assert_eq!(
        (m.ino(), m.nlink()),
        (inode, 1),
        "the same file, no store name left"
    );
    assert_eq!(fs::read(path_of(&vol)).unwrap(), at_2);
    assert!(!raw_store.image_path(&a).exists());
    // A retry gets the same volume; its leftovers never name it.
    let again = store
        .failover_volume(&out, &a, RecoveryPointId(2), false)
        .unwrap();
    assert_eq!(again, vol);
    let leftovers = store.failover_leftovers(&out, &["g1-a", "g1-b"]).unwrap();
    assert_eq!(leftovers.len(), 1);
    assert_eq!(
        leftovers[0].to_string(),
        out.join("g1-b.raw").display().to_string()
    );

    // The pinned point still restores; the unpinned ones say why not.
    let r1 = dir.path().join("a-at-1.raw");
    store
        .restore_volume(&a, RecoveryPointId(1), &r1, false)
        .unwrap();
    assert_eq!(fs::read(&r1).unwrap(), at_1);
    let err = store
        .restore_volume(&a, RecoveryPointId(2), dir.path().join("x.raw"), false)
        .unwrap_err();
    assert!(err.to_string().contains("handed over"), "{err}");

    // An older point: a reflink or (here, without reflinks) a copy.
    let vol_b = store
        .failover_volume(&out, &b, RecoveryPointId(1), false)
        .unwrap();
    assert_ne!(vol_b.method, VolumeMethod::InPlace);
    assert_eq!(fs::read(path_of(&vol_b)).unwrap(), b_at_1);
    // `--copy` of the latest point: an independent file, the store keeps its own.
    let c = dir.path().join("c");
    store.prepare_failover_outputs(&c).unwrap();
    let copied = store
        .failover_volume(&c, &b, RecoveryPointId(2), true)
        .unwrap();
    assert_eq!(copied.method, VolumeMethod::Copy);
    assert_eq!(
        fs::read(path_of(&copied)).unwrap(),
        model(&[(0, 11), (16384, 12)])
    );
    assert!(raw_store.image_path(&b).exists());

    // Removing the standby copies (group delete) leaves the volumes.
    store.remove_image(&a).unwrap();
    store.remove_image(&b).unwrap();
    assert_eq!(fs::read(path_of(&vol)).unwrap(), at_2);
    assert_eq!(fs::read(path_of(&vol_b)).unwrap(), b_at_1);
}

#[test]
fn files_fence_refuses_a_commit_of_an_epoch_sealed_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Standby::from(StandbyStore::open(dir.path(), StoreConfig::default()).unwrap());
    let a = ImageName::new("g1-a").unwrap();
    let first = epoch(&store, &a, 1, 0, 1);
    store.commit(meta(1), vec![first]).unwrap();
    let sealed = epoch(&store, &a, 2, 0, 2);
    store.fence(&a).unwrap();
    assert!(matches!(
        store.commit(meta(2), vec![sealed]),
        Err(StoreError::Fenced { .. })
    ));
    assert_eq!(
        store.image_state(&a).unwrap().unwrap().recovery_point,
        RecoveryPointId(1)
    );
}

/// On a file system with reflinks (XFS with `reflink=1`, btrfs), restores
/// and older-point failovers share the point's data instead of copying it.
/// Run with `FERRY_REFLINK_DIR=/mnt/xfs cargo test -p ferry-engine
/// reflink -- --ignored` (a loop-mounted XFS image will do).
#[test]
#[ignore = "needs a file system with reflinks: FERRY_REFLINK_DIR=DIR"]
fn files_restores_are_reflinks_where_the_file_system_has_them() {
    let base = std::env::var("FERRY_REFLINK_DIR")
        .expect("FERRY_REFLINK_DIR must name a directory on XFS (reflink=1) or btrfs; scripts/test.sh mounts one");
    let dir = tempfile::tempdir_in(base).unwrap();
    let store = Standby::from(
        StandbyStore::open(&dir.path().join("store"), StoreConfig::default()).unwrap(),
    );
    let a = ImageName::new("g1-a").unwrap();
    store
        .commit(meta(1), vec![epoch(&store, &a, 1, 0, 1)])
        .unwrap();
    store.pin(&a, RecoveryPointId(1)).unwrap();
    store
        .commit(meta(2), vec![epoch(&store, &a, 2, 16384, 2)])
        .unwrap();
    let latest = dir.path().join("latest.raw");
    let vol = store
        .restore_volume(&a, RecoveryPointId(2), &latest, false)
        .unwrap();
    assert_eq!(vol.method, VolumeMethod::Reflink);
    assert_eq!(fs::read(&latest).unwrap(), model(&[(0, 1), (16384, 2)]));
    let copy = dir.path().join("copy.raw");
    let vol = store
        .restore_volume(&a, RecoveryPointId(2), &copy, true)
        .unwrap();
    assert_eq!(vol.method, VolumeMethod::Copy);
    store.fence(&a).unwrap();
    let out = dir.path().join("failover");
    store.prepare_failover_outputs(&out).unwrap();
    let older = store
        .failover_volume(&out, &a, RecoveryPointId(1), false)
        .unwrap();
    assert_eq!(older.method, VolumeMethod::Reflink);
    assert_eq!(fs::read(path_of(&older)).unwrap(), model(&[(0, 1)]));
}
