//! Tests of the lease task on the real clock with short leases, against a
//! store kept in memory that follows RADOS' rules (a lock granted to one
//! client until its expiry, holder records, a blocklist): the task starts
//! and stops the group as its machine says, and stops it while a renewal
//! hangs. RADOS itself is exercised by `tests/tests/lease_lab.rs`.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;

const TIMES: LeaseTimes = LeaseTimes {
    duration: Duration::from_millis(1200),
    renew_permille: 333,
    safety_margin: Duration::from_millis(500),
    retry: Duration::from_millis(50),
};

#[derive(Default)]
struct Store {
    lock: Option<(String, Instant)>,
    records: BTreeSet<Holder>,
    blocklist: BTreeSet<String>,
}

/// One agent's view of the shared store.
struct MemoryBackend {
    me: Holder,
    store: Arc<Mutex<Store>>,
    /// While set, renewals hang until it is cleared.
    hang_renewals: Arc<AtomicBool>,
}

impl MemoryBackend {
    fn check(&self, store: &Store) -> Result<(), Failure> {
        if store.blocklist.contains(&self.me.addr) {
            Err(Failure::Fenced)
        } else {
            Ok(())
        }
    }

    fn take(&self, store: &mut Store) -> bool {
        let now = Instant::now();
        let free = match &store.lock {
            None => true,
            Some((addr, expiry)) => *addr == self.me.addr || *expiry <= now,
        };
        if free {
            store.lock = Some((self.me.addr.clone(), now + TIMES.duration));
        }
        free
    }
}

impl LeaseBackend for MemoryBackend {
    fn me(&self) -> Option<Holder> {
        Some(self.me.clone())
    }

    fn claim(&self, _group: &str) -> Result<Claim, Failure> {
        let mut store = lock(&self.store);
        self.check(&store)?;
        if self.take(&mut store) {
            Ok(Claim::Granted(store.records.iter().cloned().collect()))
        } else {
            let holder = store.lock.as_ref().map(|(addr, _)| Holder {
                agent: addr.clone(),
                addr: addr.clone(),
            });
            Ok(Claim::Refused(holder))
        }
    }

    fn renew(&self, _group: &str) -> Result<(), Failure> {
        while self.hang_renewals.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut store = lock(&self.store);
        self.check(&store)?;
        if self.take(&mut store) {
            Ok(())
        } else {
            Err(Failure::Taken)
        }
    }

    fn fence(&self, _group: &str, victims: &[Holder]) -> Result<(), Failure> {
        let mut store = lock(&self.store);
        self.check(&store)?;
        for v in victims {
            store.blocklist.insert(v.addr.clone());
            store.records.remove(v);
        }
        store.records.insert(self.me.clone());
        Ok(())
    }

    fn release(&self, _group: &str) -> Result<(), Failure> {
        let mut store = lock(&self.store);
        if store.lock.as_ref().is_some_and(|(a, _)| *a == self.me.addr) {
            store.lock = None;
        }
        Ok(())
    }

    fn driving(&self, _group: &str, _driving: bool) {}

    fn prepare_stamp(&self, _group: &str) -> Result<PreparedWrite, Failure> {
        Ok(Box::new(|| Ok(())))
    }
}

/// Records the starts and stops the task asks for.
#[derive(Default)]
struct Events {
    log: Mutex<Vec<(&'static str, String)>>,
    held_at_stop: Mutex<Vec<bool>>,
}

struct Recorder {
    name: String,
    events: Arc<Events>,
    store: Arc<Mutex<Store>>,
}

impl Driven for Recorder {
    fn start(&self, _group: &str) {
        lock(&self.events.log).push(("start", self.name.clone()));
    }

    fn stop<'a>(&'a self, _group: &'a str) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        // Whether the store still had the lock as this agent's, unexpired,
        // when the task stopped the group.
        let addr = format!("addr-{}", self.name);
        let held = lock(&self.store)
            .lock
            .as_ref()
            .is_some_and(|(a, expiry)| *a == addr && *expiry > Instant::now());
        lock(&self.events.held_at_stop).push(held);
        Box::pin(async move {
            lock(&self.events.log).push(("stop", self.name.clone()));
        })
    }
}

fn agent(
    name: &str,
    store: &Arc<Mutex<Store>>,
    events: &Arc<Events>,
) -> (LeaseTask, Arc<AtomicBool>) {
    let hang = Arc::new(AtomicBool::new(false));
    let backend = Arc::new(MemoryBackend {
        me: Holder {
            agent: name.to_owned(),
            addr: format!("addr-{name}"),
        },
        store: store.clone(),
        hang_renewals: hang.clone(),
    });
    let driven = Arc::new(Recorder {
        name: name.to_owned(),
        events: events.clone(),
        store: store.clone(),
    });
    let task = LeaseTask::spawn("g1".into(), TIMES, backend, driven).unwrap();
    (task, hang)
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..2000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting for {what}");
}

fn started(events: &Events) -> Vec<String> {
    lock(&events.log)
        .iter()
        .filter(|(e, _)| *e == "start")
        .map(|(_, n)| n.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_two_agents_drives_and_the_other_takes_over_after_a_release() {
    let store = Arc::new(Mutex::new(Store::default()));
    let events = Arc::new(Events::default());
    let (a, _) = agent("a", &store, &events);
    let (b, _) = agent("b", &store, &events);
    wait_until("a start", || !started(&events).is_empty()).await;
    // Several lease durations: renewals keep the first holder, the other
    // never starts.
    tokio::time::sleep(TIMES.duration * 3).await;
    let first = started(&events);
    assert_eq!(first.len(), 1, "{:?}", lock(&events.log));
    let (holder, other) = if first[0] == "a" { (a, b) } else { (b, a) };
    wait_until("the views", || {
        holder.view().lease == "holding" && other.view().driven_by.is_some()
    })
    .await;
    assert_eq!(other.view().lease, "contending");
    assert_eq!(
        other.view().driven_by.as_deref(),
        Some(format!("addr-{}", first[0]).as_str())
    );
    holder.release().await;
    wait_until("the other to start", || started(&events).len() == 2).await;
    let log = lock(&events.log).clone();
    // The holder stopped before it released; the other started after.
    assert_eq!(log[1], ("stop", first[0].clone()), "{log:?}");
    assert_ne!(log[2].1, first[0], "{log:?}");
    wait_until("the taker's view", || other.view().lease == "holding").await;
    // The taker fenced the previous holder (it was recorded).
    assert!(lock(&store)
        .blocklist
        .contains(&format!("addr-{}", first[0])));
    other.release().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_renewal_stops_the_group_before_the_lease_can_end() {
    let store = Arc::new(Mutex::new(Store::default()));
    let events = Arc::new(Events::default());
    let (a, hang) = agent("a", &store, &events);
    wait_until("a start", || !started(&events).is_empty()).await;
    hang.store(true, Ordering::SeqCst);
    wait_until("a stop", || lock(&events.log).len() == 2).await;
    assert_eq!(
        *lock(&events.held_at_stop),
        vec![true],
        "the group stopped only after its lease could end"
    );
    wait_until("a's lease to be lost", || a.view().lease == "lost").await;
    hang.store(false, Ordering::SeqCst);
    // The late renewal does not restart it; a fresh claim does (fencing
    // nobody: its own record is not a victim).
    wait_until("a to drive again", || started(&events).len() == 2).await;
    assert!(lock(&store).blocklist.is_empty());
    a.release().await;
}
