//! Tests of the shared store (`[control] store = "rados"`) that do not
//! need Ceph: the same store code over the in-process backend
//! (`shared/memory.rs`), which keeps RADOS' contract (write lock, version
//! guard, notifications). After every step the shared rows must equal
//! every agent's local copy row for row, so a row a transaction changed
//! without the update hook noticing (a cascade, a `SET NULL`) fails here.

use std::collections::BTreeMap;

use super::*;
use crate::control::store::shared::memory::MemorySite;
use crate::control::store::shared::{
    read_row, row_key, RowChanges, SharedBackend, SharedError, Snapshot, TABLES,
};

/// Every row of `store`'s local copy, keyed and encoded as shared.
fn dump(store: &Store) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for table in TABLES {
        let mut stmt = store
            .conn
            .prepare(&format!("SELECT rowid FROM {table}"))
            .unwrap();
        let ids: Vec<i64> = stmt
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        for id in ids {
            let row = read_row(&store.conn, table, id).unwrap().unwrap();
            out.insert(row_key(table, id), row);
        }
    }
    out
}

/// The shared rows equal each store's copy (after it caught up).
fn assert_in_step(site: &MemorySite, stores: &[&Store]) {
    let shared = site.snapshot();
    for (i, store) in stores.iter().enumerate() {
        let _ = store.services().unwrap(); // a read catches up
        assert_eq!(dump(store), shared.rows, "agent {i}'s copy");
        assert_eq!(
            store.shared.as_ref().map(|s| s.version()),
            Some(shared.version)
        );
    }
}

#[test]
fn the_schema_has_no_table_the_shared_store_leaves_out() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut stmt = store
        .conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
        .unwrap();
    let mut tables: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut known: Vec<String> = TABLES.iter().map(|t| (*t).to_owned()).collect();
    tables.sort();
    known.sort();
    assert_eq!(tables, known);
}

#[test]
fn a_write_on_one_agent_is_read_on_the_other_at_once() {
    let site = MemorySite::default();
    let mut a = Store::open_shared(site.handle()).unwrap();
    let mut b = Store::open_shared(site.handle()).unwrap();
    let svc = a.create_service(&service("dr")).unwrap();
    assert_eq!(b.services().unwrap(), vec![svc.clone()]);
    let g = mapped_group(&mut b, "g1");
    assert_eq!(a.group_by_name("g1").unwrap(), g);
    let policy = a
        .create_policy("nightly", &json!({"daily": "02:00"}))
        .unwrap();
    assert_eq!(b.policies().unwrap(), vec![policy]);
    b.add_resources(g.id, &[volume("file:/a"), volume("file:/b")])
        .unwrap();
    assert_eq!(a.resources(g.id).unwrap().len(), 2);
    assert_in_step(&site, &[&a, &b]);

    // A third agent with nothing local sees everything.
    let c = Store::open_shared(site.handle()).unwrap();
    assert_eq!(c.services().unwrap(), vec![svc]);
    assert_eq!(c.group(g.id).unwrap(), b.group(g.id).unwrap());
    assert_in_step(&site, &[&a, &b, &c]);
}

/// Records manual recovery point `rp1` of group `gid`.
fn add_manual_point(store: &mut Store, gid: GroupId) {
    store
        .create_recovery_point(
            gid,
            &NewRecoveryPoint {
                name: "rp1".into(),
                engine_rp: 1,
                kind: RpKind::Manual,
            },
        )
        .unwrap();
}

/// Journals the deletion of group `gid` (the rules allowing it).
fn begin_group_delete(store: &mut Store, gid: GroupId) -> Operation {
    let t = check(
        &OpRequest::DeleteGroup {
            other_deleting: None,
        },
        &store.group_view(gid).unwrap(),
    )
    .unwrap();
    store.begin_operation(gid, &t, &json!({})).unwrap()
}

#[test]
fn cascades_and_set_null_reach_the_shared_rows() {
    let site = MemorySite::default();
    let mut a = Store::open_shared(site.handle()).unwrap();
    let b = Store::open_shared(site.handle()).unwrap();
    let g = mapped_group(&mut a, "g1");
    a.add_resources(g.id, &[volume("file:/a")]).unwrap();
    add_manual_point(&mut a, g.id);
    assert_in_step(&site, &[&a, &b]);
    let op = begin_group_delete(&mut a, g.id);
    let done = a.finish_operation(op.id, OpResult::Succeeded).unwrap();
    assert_eq!(done.group_id, None, "the journal keeps the op, SET NULL");
    // The group's resources and recovery point went with it (CASCADE),
    // in the shared rows too.
    assert_in_step(&site, &[&a, &b]);
    assert!(matches!(
        b.resource("file:/a"),
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(b.operation(op.id).unwrap().group_id, None);
}

#[test]
fn interleaved_writes_of_two_agents_lose_nothing() {
    let site = MemorySite::default();
    let mut a = Store::open_shared(site.handle()).unwrap();
    let mut b = Store::open_shared(site.handle()).unwrap();
    // Neither reads before writing: each write must start from the other's.
    for i in 0..10 {
        a.create_policy(&format!("a{i}"), &json!({ "i": i }))
            .unwrap();
        b.create_policy(&format!("b{i}"), &json!({ "i": i }))
            .unwrap();
    }
    // A name taken on the other agent is refused, not duplicated.
    assert!(matches!(
        a.create_policy("b3", &json!({})),
        Err(StoreError::NameTaken { .. })
    ));
    assert_eq!(a.policies().unwrap().len(), 20);
    assert_eq!(b.policies().unwrap(), a.policies().unwrap());
    assert_in_step(&site, &[&a, &b]);
}

#[test]
fn concurrent_writers_on_threads_lose_nothing() {
    let site = MemorySite::default();
    let stores: Vec<Store> = (0..3)
        .map(|_| Store::open_shared(site.handle()).unwrap())
        .collect();
    let handles: Vec<_> = stores
        .into_iter()
        .enumerate()
        .map(|(n, mut store)| {
            std::thread::spawn(move || {
                for i in 0..15 {
                    store
                        .create_policy(&format!("p{n}-{i}"), &json!({}))
                        .unwrap();
                }
                store
            })
        })
        .collect();
    let stores: Vec<Store> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for store in &stores {
        assert_eq!(store.policies().unwrap().len(), 45);
    }
    assert_in_step(&site, &stores.iter().collect::<Vec<_>>());
    assert_eq!(site.snapshot().version, 45);
}

/// A backend whose publish always fails, over a working site.
struct Refusing(Box<dyn SharedBackend>);

impl SharedBackend for Refusing {
    fn lock(&self) -> Result<(), SharedError> {
        self.0.lock()
    }
    fn unlock(&self) {
        self.0.unlock()
    }
    fn version(&self) -> Result<u64, SharedError> {
        self.0.version()
    }
    fn load(&self) -> Result<Snapshot, SharedError> {
        self.0.load()
    }
    fn publish(&self, expected: u64, _: u64, _: &RowChanges) -> Result<(), SharedError> {
        Err(SharedError::Conflict { expected })
    }
    fn notify(&self, v: u64) {
        self.0.notify(v)
    }
    fn take_changed(&self) -> bool {
        self.0.take_changed()
    }
    fn describe(&self) -> String {
        "refusing".into()
    }
}

#[test]
fn a_refused_publish_commits_nothing_locally_and_frees_the_lock() {
    let site = MemorySite::default();
    let mut a = Store::open_shared(site.handle()).unwrap();
    a.create_service(&service("dr")).unwrap();
    let mut r = Store::open_shared(Box::new(Refusing(site.handle()))).unwrap();
    let before = dump(&r);
    let err = r.create_policy("p", &json!({})).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Shared {
                source: SharedError::Conflict { .. },
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(dump(&r), before, "rolled back");
    assert!(matches!(
        r.policy_by_name("p"),
        Err(StoreError::NotFound { .. })
    ));
    // The lock was released: the other agent writes on.
    a.create_policy("q", &json!({})).unwrap();
    assert_in_step(&site, &[&a]);
}

#[test]
fn shared_state_of_a_newer_schema_is_refused() {
    let site = MemorySite::default();
    site.handle()
        .publish(0, SCHEMA_VERSION as u64 + 1, &RowChanges::new())
        .unwrap();
    let err = Store::open_shared(site.handle()).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Shared {
                source: SharedError::TooNew { .. },
                ..
            }
        ),
        "{err}"
    );
}

/// Told of another agent's writes, a copy catches up from the changed
/// rows alone (no full load), cascades and `SET NULL` included, and ends
/// row for row equal to the shared state.
#[test]
fn an_agent_catches_up_from_the_changed_rows_alone() {
    let site = MemorySite::default();
    let mut a = Store::open_shared(site.handle()).unwrap();
    let b = Store::open_shared(site.handle()).unwrap();
    let g = mapped_group(&mut a, "g1");
    assert_in_step(&site, &[&a, &b]);
    let loads = site.full_loads();
    a.add_resources(g.id, &[volume("file:/a"), volume("file:/b")])
        .unwrap();
    add_manual_point(&mut a, g.id);
    a.create_policy("nightly", &json!({"daily": "02:00"}))
        .unwrap();
    assert_in_step(&site, &[&a, &b]);
    let op = begin_group_delete(&mut a, g.id);
    a.finish_operation(op.id, OpResult::Succeeded).unwrap();
    assert_in_step(&site, &[&a, &b]);
    assert_eq!(b.operation(op.id).unwrap().group_id, None);
    assert_eq!(
        site.full_loads(),
        loads,
        "every catch-up was incremental (no agent reloaded every row)"
    );
}

/// A copy further behind than the change log reaches reloads every row,
/// and ends equal all the same.
#[test]
fn a_copy_behind_the_change_log_reloads_every_row() {
    use crate::control::store::shared::delta::LOG_KEEP;
    let site = MemorySite::default();
    let mut a = Store::open_shared(site.handle()).unwrap();
    // b loads version 1, then sleeps through more writes than the log keeps.
    a.create_policy("p0", &json!({ "i": 0 })).unwrap();
    let b = Store::open_shared(site.handle()).unwrap();
    for i in 1..=LOG_KEEP + 1 {
        a.create_policy(&format!("p{i}"), &json!({ "i": i }))
            .unwrap();
    }
    let loads = site.full_loads();
    assert_in_step(&site, &[&a, &b]);
    assert_eq!(
        site.full_loads(),
        loads + 1,
        "b reloaded once, a not at all"
    );
    assert_eq!(b.policies().unwrap().len() as u64, LOG_KEEP + 2);
}
