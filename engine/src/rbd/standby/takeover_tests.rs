//! Two standby agents of one site sharing the RBD standby state in RADOS
//! ([`StateLocation::Rados`]), against site-b of the Ceph lab (`#[ignore]`d;
//! `FERRY_CEPH_LAB=1 cargo test -p ferry-engine --lib takeover_tests --
//! --include-ignored`). The "agents" are two [`RbdStandby`]s with their own
//! (empty) directories and their own cluster connections, as two processes
//! have: an agent's epoch left mid-way is resumed by the other from its
//! durable batch, and a commit one left after its intent is finished by
//! the other — one recovery point, not lost, not doubled. The test's image
//! is `ferry-h20-sstate-PID-e` in pool `rbd`, its state in namespace
//! `ferry-h20-sstate-PID-e`; both are removed at the end.

use bytes::Bytes;
use ferry_protocol::message::OpenImage;
use ferry_protocol::types::{Epoch, ExtentKind, ImageName, RecoveryPointId, SeqNo};

use super::{RbdStandby, RbdStandbyConfig, StateLocation};
use crate::rbd::ClusterSpec;
use crate::standby::failpoint::{self, CrashPoint};
use crate::standby::{DecodedExtent, RecoveryPointMeta, StagedBatch, StoreError};

const MIB: u64 = 1 << 20;
const SIZE: u64 = 8 * MIB;

fn lab() -> bool {
    let on = std::env::var("FERRY_CEPH_LAB").as_deref() == Ok("1");
    if !on {
        eprintln!("skipped: needs the Ceph lab (FERRY_CEPH_LAB=1)");
    }
    on
}

/// An agent's standby store: `client_id` set or not makes the process's
/// connection cache give each agent a cluster connection of its own.
fn agent(dir: &std::path::Path, ns: &str, client_id: Option<&str>) -> RbdStandby {
    RbdStandby::open(&RbdStandbyConfig {
        cluster: ClusterSpec {
            cluster: Some("site-b".into()),
            client_id: client_id.map(str::to_owned),
            ..ClusterSpec::default()
        },
        pool: "rbd".into(),
        namespace: None,
        dir: dir.to_path_buf(),
        state: StateLocation::Rados {
            pool: "rbd".into(),
            namespace: Some(ns.to_owned()),
        },
        retention: 2,
    })
    .expect("open the RBD standby")
}

fn data(offset: u64, fill: u8) -> DecodedExtent {
    DecodedExtent {
        offset,
        length: MIB as u32,
        kind: ExtentKind::Data,
        data: Some(Bytes::from(vec![fill; MIB as usize])),
    }
}

fn batch(seq: u64, extent: DecodedExtent) -> StagedBatch {
    StagedBatch {
        seq: SeqNo(seq),
        scan_end: extent.offset + u64::from(extent.length),
        extents: vec![extent],
    }
}

/// Removes the test's image and state object at the end.
struct Cleanup {
    store: RbdStandby,
    image: ImageName,
    ns: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Err(e) = self.store.remove_image(&self.image) {
            eprintln!("cleanup: removing {}: {e}", self.image);
        }
        let state = self.store.inner.pool.cluster().pool("rbd", Some(&self.ns));
        if let Ok(pool) = state {
            let _ = pool.remove_object("ferry.rbd-standby:rbd");
        }
    }
}

#[test]
#[ignore = "needs the Ceph lab (FERRY_CEPH_LAB=1)"]
fn another_agent_resumes_the_epoch_and_finishes_the_commit() {
    if !lab() {
        return;
    }
    let tag = format!("ferry-h20-sstate-{}-e", std::process::id());
    let image = ImageName::new(&tag).expect("image name");
    let dirs = tempfile::tempdir().expect("temp dir");
    let open = OpenImage {
        image: image.clone(),
        size: SIZE,
        block_size: 4096,
        epoch: Epoch(1),
        base_epoch: Epoch(0),
    };

    // Agent A receives the first half of a full copy and dies.
    let a = agent(&dirs.path().join("a"), &tag, None);
    let _cleanup = Cleanup {
        store: a.clone(),
        image: image.clone(),
        ns: tag.clone(),
    };
    let mut writer = a.open_epoch(&open).expect("A opens the epoch");
    assert!(writer.stage(batch(1, data(0, 0xa1))).expect("stage"));
    assert_eq!(writer.sync().expect("sync"), SeqNo(1));
    // Staged, never durable: not to be counted as received.
    assert!(writer.stage(batch(2, data(2 * MIB, 0xa2))).expect("stage"));
    drop(writer);

    // Agent B, with nothing on its disk, sees where A durably was…
    let b = agent(&dirs.path().join("b"), &tag, Some("admin"));
    let state = b
        .image_state(&image)
        .expect("image state")
        .expect("B knows the image");
    let pending = state.pending.expect("the epoch is pending");
    assert_eq!(
        (pending.epoch, pending.durable_seq, pending.resume_offset),
        (Epoch(1), SeqNo(1), MIB)
    );
    // …resumes there, receives the rest, and dies after its intent.
    let mut writer = b.open_epoch(&open).expect("B resumes the epoch");
    assert_eq!(
        (writer.durable_seq(), writer.resume_offset()),
        (SeqNo(1), MIB)
    );
    // The primary sends batch 2 again (what A staged is not counted).
    assert!(writer.stage(batch(2, data(2 * MIB, 0xb2))).expect("stage"));
    let last = writer.sync().expect("sync");
    let sealed = writer.seal(last, SIZE).expect("seal");
    let rp = RecoveryPointMeta {
        id: RecoveryPointId(1_765_000_000_123),
        created_unix_ms: 1_765_000_000_123,
        fuzzy: false,
    };
    failpoint::arm(CrashPoint::AfterIntent);
    let crashed = b.commit(rp, vec![sealed]);
    failpoint::disarm();
    assert!(
        matches!(crashed, Err(StoreError::InjectedCrash { .. })),
        "{crashed:?}"
    );
    assert_eq!(b.inner.state.intents().expect("intents").len(), 1);

    // A (back, or any agent) asked about the image finishes B's commit.
    let state = a.image_state(&image).expect("image state").expect("known");
    assert_eq!(state.committed_epoch, Epoch(1));
    assert_eq!(state.recovery_point, rp.id);
    assert!(state.pending.is_none());
    assert!(a.inner.state.intents().expect("intents").is_empty());
    let points = a.recovery_points(&image).expect("points");
    assert_eq!(points.len(), 1, "one point, not lost, not doubled");
    // The image at the point: A's durable batch, B's batch, zeroes.
    let (at, size, hashes) = a
        .hash_range(&image, 0, SIZE, MIB as u32)
        .expect("hash the point");
    assert_eq!((at, size), (rp.id, SIZE));
    let expected: Vec<[u8; 32]> = (0..8)
        .map(|i| {
            let fill = match i {
                0 => 0xa1,
                2 => 0xb2,
                _ => 0,
            };
            *blake3::hash(&vec![fill; MIB as usize]).as_bytes()
        })
        .collect();
    assert_eq!(hashes, expected);
    // No local record on either agent's disk.
    for agent in ["a", "b"] {
        assert!(!dirs.path().join(agent).join("images").exists());
    }
}
