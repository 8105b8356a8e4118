//! The RADOS object layer a multi-agent site keeps its control state and
//! leases in (`ferry_engine::sys::librados`), against site-a of the Ceph
//! lab (`#[ignore]`d; `FERRY_CEPH_LAB=1`, as `scripts/test.sh` runs them).
//! Every test works in its own namespace of pool `rbd`
//! (`ferry-h19-rados-PID-TEST`) with separate cluster handles standing for
//! separate agents, and removes its objects at the end.
//!
//! - A write op guarded by a compare on a version key applies all of its
//!   keys when the version matches, and nothing when it is stale.
//! - A notify reaches a watch registered through another cluster handle,
//!   with its payload and the notifier's id, and the notifier sees the ack.
//! - An exclusive lock with a duration is refused to a second client
//!   until it expires; then the second client takes it and the first one
//!   can no longer renew it.
//! - A client blocklisted (by the address its lock lists) has its later
//!   writes refused by the OSDs.

use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use ferry_engine::sys::librados::lock::LockMode;
use ferry_engine::sys::librados::omap::{Create, WriteOp};
use ferry_engine::sys::librados::watch::{Watch, WatchEvent};
use ferry_engine::sys::librados::{Cluster, ClusterSpec, Pool};

fn lab() -> bool {
    ferry_e2e::lab::enabled()
}

/// A new client of site-a (its own `rados_t`, so its own global id).
fn client() -> Arc<Cluster> {
    Cluster::connect(&ClusterSpec {
        cluster: Some("site-a".into()),
        ..ClusterSpec::default()
    })
    .expect("connect to site-a")
}

/// Pool `rbd` in this test's own namespace, as seen by `cluster`.
fn pool(cluster: &Arc<Cluster>, test: &str) -> Arc<Pool> {
    let ns = format!("ferry-h19-rados-{}-{test}", std::process::id());
    cluster.pool("rbd", Some(&ns)).expect("open pool rbd")
}

/// Removes `oids` of `pool` at the end of a test, whatever its outcome.
struct Objects {
    pool: Arc<Pool>,
    oids: Vec<&'static str>,
}

impl Drop for Objects {
    fn drop(&mut self) {
        for oid in &self.oids {
            if let Err(e) = self.pool.remove_object(oid) {
                if !e.is_not_found() {
                    eprintln!("cleanup: removing {oid}: {e}");
                }
            }
        }
    }
}

fn omap(pool: &Pool, oid: &str) -> Vec<(String, Vec<u8>)> {
    pool.omap_list(oid, "").expect("list the omap")
}

#[test]
#[ignore = "needs the Ceph lab (FERRY_CEPH_LAB=1); scripts/test.sh runs it"]
fn lab_a_guarded_write_with_a_stale_version_changes_nothing() {
    if !lab() {
        return;
    }
    let (a, b) = (client(), client());
    let (pa, pb) = (pool(&a, "guard"), pool(&b, "guard"));
    let oid = "ferry-h19-rados.control";
    let _cleanup = Objects {
        pool: pa.clone(),
        oids: vec![oid],
    };

    // A creates the object at version 1 (a missing key compares as empty).
    let mut first = WriteOp::new()
        .create(Create::IfMissing)
        .guard_eq("version", b"");
    first.set("version", b"1").set("group/g1", b"one");
    pa.write(oid, &first).expect("first guarded write");

    // B, which read version 1, moves it to 2 and changes two rows.
    let read = pb.omap_get(oid, &["version"]).expect("read the version");
    assert_eq!(read.get("version").map(Vec::as_slice), Some(&b"1"[..]));
    let mut second = WriteOp::new().guard_eq("version", b"1");
    second
        .set("version", b"2")
        .set("group/g2", b"two")
        .remove("group/g1");
    pb.write(oid, &second)
        .expect("B's write at the current version");
    let after_b = omap(&pa, oid);
    assert_eq!(
        after_b,
        vec![
            ("group/g2".to_owned(), b"two".to_vec()),
            ("version".to_owned(), b"2".to_vec()),
        ]
    );

    // A still believes version 1: its write is refused as a whole.
    let mut stale = WriteOp::new().guard_eq("version", b"1");
    stale
        .set("version", b"2")
        .set("group/g1", b"one, again")
        .set("group/g3", b"three")
        .remove("group/g2");
    let err = pa
        .write(oid, &stale)
        .expect_err("a stale version is refused");
    assert!(err.is_canceled(), "refused with ECANCELED: {err}");
    assert_eq!(omap(&pa, oid), after_b, "the refused op changed nothing");

    // Re-read, then retry at the current version: applied.
    let mut retry = WriteOp::new().guard_eq("version", b"2");
    retry.set("version", b"3").set("group/g3", b"three");
    pa.write(oid, &retry)
        .expect("the retry at the current version");
    let got = pb
        .omap_get(oid, &["version", "group/g3", "group/g1"])
        .expect("read back");
    assert_eq!(got.get("version").map(Vec::as_slice), Some(&b"3"[..]));
    assert_eq!(got.get("group/g3").map(Vec::as_slice), Some(&b"three"[..]));
    assert!(!got.contains_key("group/g1"));

    // Paging: many keys come back whole, sorted, by prefix.
    let mut many = WriteOp::new().guard_eq("version", b"3");
    many.set("version", b"4");
    for i in 0..2500 {
        many.set(&format!("rp/{i:05}"), format!("point {i}").as_bytes());
    }
    pa.write(oid, &many).expect("a write of 2501 keys");
    let rps = pb.omap_list(oid, "rp/").expect("list by prefix");
    assert_eq!(rps.len(), 2500);
    assert!(rps.windows(2).all(|w| w[0].0 < w[1].0), "sorted");
    assert_eq!(rps[1234], ("rp/01234".to_owned(), b"point 1234".to_vec()));
    let page = pb.omap_page(oid, "rp/", "rp/02490", 100).expect("a page");
    assert_eq!(page.entries.len(), 9);
    assert!(!page.more);

    // An exclusive create of an existing object is refused.
    let err = pb
        .write(oid, &WriteOp::new().create(Create::Exclusive))
        .expect_err("exists");
    assert!(err.is_exists(), "{err}");
}

#[test]
#[ignore = "needs the Ceph lab (FERRY_CEPH_LAB=1); scripts/test.sh runs it"]
fn lab_a_notify_reaches_another_clients_watch() {
    if !lab() {
        return;
    }
    let (a, b) = (client(), client());
    let (pa, pb) = (pool(&a, "notify"), pool(&b, "notify"));
    let oid = "ferry-h19-rados.watched";
    let _cleanup = Objects {
        pool: pa.clone(),
        oids: vec![oid],
    };
    pa.write(oid, &WriteOp::new().create(Create::IfMissing))
        .expect("create the object");

    let (tx, rx) = mpsc::channel();
    let watch = Watch::new(&pb, oid, None, move |event| {
        let _ = tx.send(event);
    })
    .expect("B watches the object");

    let reply = pa
        .notify(oid, b"version 7", Duration::from_secs(10))
        .expect("A notifies");
    let event = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("B's watch got the notification");
    let a_id = a.instance_id().expect("A's id");
    assert_eq!(
        event,
        WatchEvent::Notify {
            notifier_id: a_id,
            payload: b"version 7".to_vec(),
        }
    );
    let b_id = b.instance_id().expect("B's id");
    assert_ne!(a_id, b_id, "two handles are two clients");
    assert!(
        reply.acks.iter().any(|(gid, _, _)| *gid == b_id),
        "B acknowledged: {reply:?}"
    );
    assert!(reply.timeouts.is_empty(), "{reply:?}");

    // After the watch is dropped, a notify finds no watcher.
    drop(watch);
    let reply = pa
        .notify(oid, b"anyone?", Duration::from_secs(5))
        .expect("notify with no watcher");
    assert!(reply.acks.is_empty(), "{reply:?}");
    assert!(rx.try_recv().is_err(), "no event after the watch is gone");
}

#[test]
#[ignore = "needs the Ceph lab (FERRY_CEPH_LAB=1); scripts/test.sh runs it"]
fn lab_an_exclusive_lock_with_a_duration_is_refused_to_others_until_it_expires() {
    if !lab() {
        return;
    }
    let (a, b) = (client(), client());
    let (pa, pb) = (pool(&a, "lock"), pool(&b, "lock"));
    let oid = "ferry-h19-rados.lease.g1";
    let _cleanup = Objects {
        pool: pa.clone(),
        oids: vec![oid],
    };
    let lease = Duration::from_secs(4);
    let lock = |p: &Pool, cookie: &str, mode| {
        p.lock_exclusive(oid, "lease", cookie, "ferry lease", Some(lease), mode)
    };

    lock(&pa, "agent-a", LockMode::Acquire).expect("A takes the lease");
    let info = pb.lockers(oid, "lease").expect("list lockers");
    assert!(info.exclusive);
    assert_eq!(info.lockers.len(), 1);
    assert_eq!(
        info.lockers[0].client,
        format!("client.{}", a.instance_id().expect("id"))
    );
    assert_eq!(info.lockers[0].cookie, "agent-a");

    let err = lock(&pb, "agent-b", LockMode::Acquire).expect_err("held by A");
    assert!(err.is_busy(), "EBUSY: {err}");
    // A renews while it holds it; B's MustRenew of a lock it never had fails.
    lock(&pa, "agent-a", LockMode::MustRenew).expect("A renews");
    assert!(lock(&pb, "agent-b", LockMode::MustRenew).is_err());

    // A stops renewing; B keeps trying and is refused until the lease ends.
    let stopped = Instant::now();
    let mut refusals = 0;
    loop {
        match lock(&pb, "agent-b", LockMode::Acquire) {
            Ok(()) => break,
            Err(e) if e.is_busy() => refusals += 1,
            Err(e) => panic!("B's attempt failed otherwise: {e}"),
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(120),
            "the lease never expired"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(refusals > 0, "B was refused while A's lease ran");
    let info = pa.lockers(oid, "lease").expect("list lockers");
    assert_eq!(info.lockers.len(), 1);
    assert_eq!(info.lockers[0].cookie, "agent-b");

    // A, back, can neither renew nor retake it.
    let err = lock(&pa, "agent-a", LockMode::MustRenew).expect_err("A lost it");
    assert!(err.is_not_found() || err.is_busy(), "{err}");
    assert!(lock(&pa, "agent-a", LockMode::Acquire)
        .expect_err("B holds it")
        .is_busy());
    pb.unlock(oid, "lease", "agent-b").expect("B releases");
    lock(&pa, "agent-a", LockMode::Acquire).expect("free again");
    pa.unlock(oid, "lease", "agent-a").expect("A releases");
}

#[test]
#[ignore = "needs the Ceph lab (FERRY_CEPH_LAB=1); scripts/test.sh runs it"]
fn lab_a_blocklisted_clients_later_write_fails() {
    if !lab() {
        return;
    }
    let (a, b) = (client(), client());
    let (pa, pb) = (pool(&a, "fence"), pool(&b, "fence"));
    let (oid, data) = ("ferry-h19-rados.lease.g2", "ferry-h19-rados.state.g2");
    let _cleanup = Objects {
        pool: pa.clone(),
        oids: vec![oid, data],
    };

    // B holds the lease and writes.
    pb.lock_exclusive(oid, "lease", "agent-b", "", None, LockMode::Acquire)
        .expect("B takes the lease");
    let mut write = WriteOp::new().create(Create::IfMissing);
    write.set("epoch", b"1");
    pb.write(data, &write)
        .expect("B writes while it holds the lease");
    eprintln!("B's addresses: {}", b.addrs().expect("getaddrs"));

    // A fences B by the address its lock lists, then takes the lease over.
    let info = pa.lockers(oid, "lease").expect("lockers");
    let holder = info.lockers.first().expect("B holds it").clone();
    assert_eq!(
        holder.client,
        format!("client.{}", b.instance_id().expect("id"))
    );
    assert!(!holder.address.is_empty());
    a.blocklist_add(&holder.address, Duration::from_secs(600))
        .expect("blocklist B");
    let unblock = Unblock(holder.address.clone());
    pa.break_lock(oid, "lease", &holder.client, &holder.cookie)
        .expect("break B's lock");
    pa.lock_exclusive(oid, "lease", "agent-a", "", None, LockMode::Acquire)
        .expect("A takes the lease");

    // B's late write is refused by the OSDs and changes nothing.
    let mut late = WriteOp::new();
    late.set("epoch", b"2");
    let err = pb
        .write(data, &late)
        .expect_err("a fenced client cannot write");
    assert!(err.is_blocklisted(), "EBLOCKLISTED: {err}");
    let got = pa.omap_get(data, &["epoch"]).expect("read");
    assert_eq!(got.get("epoch").map(Vec::as_slice), Some(&b"1"[..]));
    // A (not blocklisted) still writes.
    let mut next = WriteOp::new();
    next.set("epoch", b"2");
    pa.write(data, &next).expect("A writes");
    pa.unlock(oid, "lease", "agent-a").expect("A releases");
    drop(unblock);
}

/// `ceph osd blocklist rm ADDR` on drop, so a failed test leaves no entry.
struct Unblock(String);

impl Drop for Unblock {
    fn drop(&mut self) {
        let out = std::process::Command::new("ceph")
            .args(["--cluster", "site-a", "osd", "blocklist", "rm", &self.0])
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            other => eprintln!("cleanup: ceph osd blocklist rm {}: {other:?}", self.0),
        }
    }
}
