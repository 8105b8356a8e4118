//! The contract of [`StateStore`], run against both stores: the files (a
//! temporary directory) and RADOS (the Ceph lab, `#[ignore]`d; run with
//! `FERRY_CEPH_LAB=1 cargo test -p ferry-engine --lib state::tests --
//! --include-ignored`; each test works in its own namespace of pool `rbd`
//! of site-a, `ferry-h20-sstate-PID-TEST`, and removes its object).

use std::sync::Arc;

use ferry_protocol::types::ImageName;

use super::files::FileState;
use super::rados::RadosState;
use super::StateStore;
use crate::rbd::standby::commit::{Intent, IntentImage};
use crate::rbd::standby::handle::{ImageRecord, PendingRecord, PointRecord, FORMAT};
use crate::standby::StoreError;
use crate::sys::librados::{Cluster, ClusterSpec, Pool};

fn name(s: &str) -> ImageName {
    ImageName::new(s).expect("valid image name")
}

/// A record with one point and an epoch pending mid-way.
fn mid_epoch(image: &str) -> ImageRecord {
    ImageRecord {
        history: vec![PointRecord {
            rp: 1_765_000_000_001,
            epoch: 3,
            created_unix_ms: 1_765_000_000_001,
            fuzzy: false,
            size: 1 << 30,
        }],
        pending: Some(PendingRecord {
            epoch: 4,
            base_epoch: 3,
            durable_seq: 17,
            resume_offset: 123 << 20,
            size: 1 << 30,
        }),
        ..ImageRecord::empty(&name(image))
    }
}

fn intent(rp: u64, images: &[&str]) -> Intent {
    Intent {
        format: FORMAT,
        rp,
        created_unix_ms: rp,
        fuzzy: false,
        images: images
            .iter()
            .map(|i| IntentImage {
                image: (*i).to_owned(),
                epoch: 4,
                last_seq: 17,
                size: 1 << 30,
            })
            .collect(),
    }
}

/// Records: create, read back, compare-and-set, list, remove.
fn records_contract(store: &dyn StateStore) {
    let a = name("vm-a");
    assert_eq!(store.load(&a).expect("load"), None, "nothing stored yet");
    assert!(store.images().expect("images").is_empty());

    let mut record = mid_epoch("vm-a");
    store.save(&mut record).expect("first save");
    assert_eq!(record.version, 1, "a first save makes version 1");
    let loaded = store.load(&a).expect("load").expect("stored");
    assert_eq!(loaded, record, "read back as saved, with its version");

    // A second creation (version 0) of an image that has a record loses.
    let mut again = mid_epoch("vm-a");
    again.pending = None;
    match store.save(&mut again) {
        Err(StoreError::StateConflict {
            expected, found, ..
        }) => assert_eq!((expected, found), (0, 1)),
        other => panic!("a stale save must conflict, got {other:?}"),
    }
    assert_eq!(again.version, 0, "a refused save leaves the version");

    // The durable progress moves on at the current version…
    let mut next = loaded.clone();
    if let Some(p) = next.pending.as_mut() {
        p.durable_seq = 18;
        p.resume_offset = 200 << 20;
    }
    store.save(&mut next).expect("save at the current version");
    assert_eq!(next.version, 2);
    // …and the copy read before it is stale now.
    let mut stale = loaded;
    stale.fenced = true;
    assert!(
        matches!(
            store.save(&mut stale),
            Err(StoreError::StateConflict { .. })
        ),
        "a save from an older read must conflict"
    );
    let now = store.load(&a).expect("load").expect("stored");
    assert_eq!(now, next, "the refused save changed nothing");
    assert!(!now.fenced);

    let mut b = ImageRecord::empty(&name("vm-0"));
    store.save(&mut b).expect("save vm-0");
    assert_eq!(
        store.images().expect("images"),
        vec![name("vm-0"), a.clone()]
    );

    store.remove(&a).expect("remove");
    store.remove(&a).expect("removing a missing record is fine");
    assert_eq!(store.load(&a).expect("load"), None);
    assert_eq!(store.images().expect("images"), vec![name("vm-0")]);
    let mut fresh = mid_epoch("vm-a");
    store
        .save(&mut fresh)
        .expect("a removed image may be created again");
    assert_eq!(fresh.version, 1);
}

/// Intents: unique keys (two groups may commit one point id), read back,
/// listed, removed.
fn intents_contract(store: &dyn StateStore) {
    assert!(store.intents().expect("intents").is_empty());
    let one = store
        .put_intent(&intent(1_765_000_000_002, &["vm-a", "vm-b"]))
        .expect("put");
    let two = store
        .put_intent(&intent(1_765_000_000_002, &["vm-c"]))
        .expect("put");
    assert_ne!(one, two, "two intents of one point id keep apart");
    let mut keys = vec![one.clone(), two.clone()];
    keys.sort();
    assert_eq!(store.intents().expect("intents"), keys);
    let read = store.load_intent(&one).expect("load").expect("stored");
    let images: Vec<&str> = read.images.iter().map(|i| i.image.as_str()).collect();
    assert_eq!((read.rp, images), (1_765_000_000_002, vec!["vm-a", "vm-b"]));
    assert_eq!(read.images[0].last_seq, 17);
    store.remove_intent(&one).expect("remove");
    store
        .remove_intent(&one)
        .expect("removing a missing one is fine");
    assert!(store.load_intent(&one).expect("load").is_none());
    assert_eq!(store.intents().expect("intents"), vec![two.clone()]);
    store.remove_intent(&two).expect("remove");
}

/// What one store instance saved, a new one (a restarted agent, or
/// another agent of the site) reads: the record with its pending epoch's
/// durable batch and resume offset, and the intents.
fn survives_reopen(first: &dyn StateStore, second: &dyn StateStore) {
    let mut record = mid_epoch("vm-r");
    first.save(&mut record).expect("save");
    let key = first
        .put_intent(&intent(1_765_000_000_003, &["vm-r"]))
        .expect("put");
    let read = second.load(&name("vm-r")).expect("load").expect("stored");
    assert_eq!(read, record);
    let pending = read.pending.expect("the pending epoch survives");
    assert_eq!(
        (pending.durable_seq, pending.resume_offset),
        (17, 123 << 20)
    );
    assert_eq!(second.intents().expect("intents"), vec![key.clone()]);
    let mut moved = read;
    moved.pending = None;
    second.save(&mut moved).expect("the new owner saves");
    second.remove_intent(&key).expect("remove");
}

#[test]
fn files_keep_the_contract() {
    let dir = tempfile::tempdir().expect("temp dir");
    records_contract(&FileState::open(&dir.path().join("a")).expect("open"));
    intents_contract(&FileState::open(&dir.path().join("b")).expect("open"));
    let path = dir.path().join("c");
    let first = FileState::open(&path).expect("open");
    let second = FileState::open(&path).expect("open again");
    survives_reopen(&first, &second);
}

#[test]
fn files_keep_their_format() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = FileState::open(dir.path()).expect("open");
    let mut record = mid_epoch("vm-f");
    store.save(&mut record).expect("save");
    let text = std::fs::read_to_string(dir.path().join("images/vm-f.json")).expect("the file");
    assert!(text.starts_with("FERRY1 "), "checksummed: {text}");
    assert!(
        !text.contains("version"),
        "the version is not stored: {text}"
    );
    let key = store
        .put_intent(&intent(1_765_000_000_004, &["vm-f"]))
        .expect("put");
    assert!(dir.path().join(format!("commits/{key}.json")).exists());
    assert!(key.starts_with("rp-1765000000004-"), "{key}");
}

/// The lab's site-a, or `None` (the test is skipped) without
/// `FERRY_CEPH_LAB=1`.
fn lab_cluster() -> Option<Arc<Cluster>> {
    if std::env::var("FERRY_CEPH_LAB").as_deref() != Ok("1") {
        eprintln!("skipped: needs the Ceph lab (FERRY_CEPH_LAB=1)");
        return None;
    }
    Some(
        Cluster::connect(&ClusterSpec {
            cluster: Some("site-a".into()),
            ..ClusterSpec::default()
        })
        .expect("connect to site-a"),
    )
}

/// The state of pool `rbd`'s images in this test's namespace, and a guard
/// removing its object.
struct LabState {
    state: RadosState,
    cleanup: Arc<Pool>,
}

impl LabState {
    fn open(cluster: &Arc<Cluster>, test: &str) -> LabState {
        let ns = format!("ferry-h20-sstate-{}-{test}", std::process::id());
        let images = cluster.pool("rbd", None).expect("pool rbd");
        LabState {
            state: RadosState::open(&images, "rbd", Some(&ns)).expect("open the RADOS state"),
            cleanup: cluster.pool("rbd", Some(&ns)).expect("pool rbd"),
        }
    }
}

impl Drop for LabState {
    fn drop(&mut self) {
        for image in self.state.images().unwrap_or_default() {
            if let Err(e) = self.state.remove(&image) {
                eprintln!("cleanup: {e}");
            }
        }
        if let Err(e) = self.cleanup.remove_object("ferry.rbd-standby:rbd") {
            if !e.is_not_found() {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

#[test]
#[ignore = "needs the Ceph lab (FERRY_CEPH_LAB=1)"]
fn rados_keeps_the_contract() {
    let Some(cluster) = lab_cluster() else {
        return;
    };
    records_contract(&LabState::open(&cluster, "records").state);
    intents_contract(&LabState::open(&cluster, "intents").state);
    // Another agent: its own cluster connection, the same location.
    let first = LabState::open(&cluster, "reopen");
    let other = lab_cluster().expect("lab");
    let second = LabState::open(&other, "reopen");
    survives_reopen(&first.state, &second.state);
}

#[test]
#[ignore = "needs the Ceph lab (FERRY_CEPH_LAB=1)"]
fn rados_two_agents_racing_on_one_image_lose_no_write() {
    let Some(cluster) = lab_cluster() else {
        return;
    };
    let a = LabState::open(&cluster, "race");
    let b = LabState::open(&lab_cluster().expect("lab"), "race");
    let mut created = mid_epoch("vm-x");
    a.state.save(&mut created).expect("create");
    // Both read version 1; each moves the durable batch on.
    let mut on_a = a.state.load(&name("vm-x")).expect("load").expect("stored");
    let mut on_b = b.state.load(&name("vm-x")).expect("load").expect("stored");
    if let Some(p) = on_a.pending.as_mut() {
        p.durable_seq = 30;
    }
    if let Some(p) = on_b.pending.as_mut() {
        p.durable_seq = 40;
    }
    b.state.save(&mut on_b).expect("the first writer wins");
    match a.state.save(&mut on_a) {
        Err(StoreError::StateConflict {
            expected, found, ..
        }) => assert_eq!((expected, found), (1, 2)),
        other => panic!("the second writer must conflict, got {other:?}"),
    }
    let now = a.state.load(&name("vm-x")).expect("load").expect("stored");
    assert_eq!(now.pending.map(|p| p.durable_seq), Some(40));
    assert_eq!(now.version, 2);
}
