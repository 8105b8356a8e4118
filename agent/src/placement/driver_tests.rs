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
use crate::placement::work::GroupWork;

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
    causes: Mutex<Vec<StopCause>>,
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

    fn stop<'a>(
        &'a self,
        _group: &'a str,
        cause: StopCause,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        lock(&self.events.causes).push(cause);
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

/// Agent `name`'s backend on the shared in-memory store, and the switch
/// that makes its renewals hang.
fn memory_backend(name: &str, store: &Arc<Mutex<Store>>) -> (Arc<MemoryBackend>, Arc<AtomicBool>) {
    let hang = Arc::new(AtomicBool::new(false));
    let backend = Arc::new(MemoryBackend {
        me: Holder {
            agent: name.to_owned(),
            addr: format!("addr-{name}"),
        },
        store: store.clone(),
        hang_renewals: hang.clone(),
    });
    (backend, hang)
}

fn agent(
    name: &str,
    store: &Arc<Mutex<Store>>,
    events: &Arc<Events>,
) -> (LeaseTask, Arc<AtomicBool>) {
    let (backend, hang) = memory_backend(name, store);
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
    assert_eq!(
        *lock(&events.causes),
        vec![StopCause::Released, StopCause::Released]
    );
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
    assert_eq!(*lock(&events.causes), vec![StopCause::Lost]);
    wait_until("a's lease to be lost", || a.view().lease == "lost").await;
    hang.store(false, Ordering::SeqCst);
    // The late renewal does not restart it; a fresh claim does (fencing
    // nobody: its own record is not a victim).
    wait_until("a to drive again", || started(&events).len() == 2).await;
    assert!(lock(&store).blocklist.is_empty());
    a.release().await;
}

/// A group's work as the daemon runs it ([`GroupWork`]): started with the
/// lease, a task that writes into the store as long as it runs and checks
/// nothing of the lease itself (a cycle or an operation in flight); ended
/// by the lease's stop.
struct Worker {
    name: String,
    store: Arc<Mutex<Store>>,
    work: Arc<GroupWork<u8, ()>>,
    /// Each write: (writer, whether its lock was its own and unexpired).
    writes: Arc<Mutex<Vec<(String, bool)>>>,
}

impl Driven for Worker {
    fn start(&self, _group: &str) {
        let (name, store, writes) = (self.name.clone(), self.store.clone(), self.writes.clone());
        self.work.spawn(0, (), async move {
            loop {
                let held = lock(&store).lock.as_ref().is_some_and(|(a, expiry)| {
                    *a == format!("addr-{name}") && *expiry > Instant::now()
                });
                lock(&writes).push((name.clone(), held));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
    }

    fn stop<'a>(
        &'a self,
        _group: &'a str,
        cause: StopCause,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            if cause == StopCause::Lost {
                self.work.end(0).await;
            }
        })
    }
}

/// Lets hanging renewals go on drop: a failed assertion must not leave a
/// blocking thread the runtime waits for at its end.
struct Unhang(Vec<Arc<AtomicBool>>);

impl Drop for Unhang {
    fn drop(&mut self) {
        for hang in &self.0 {
            hang.store(false, Ordering::SeqCst);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_ends_the_groups_work_before_another_agent_can_start() {
    let store = Arc::new(Mutex::new(Store::default()));
    let writes = Arc::new(Mutex::new(Vec::new()));
    let mut hangs = Unhang(Vec::new());
    let mut tasks = Vec::new();
    for name in ["a", "b"] {
        let (backend, hang) = memory_backend(name, &store);
        let driven = Arc::new(Worker {
            name: name.to_owned(),
            store: store.clone(),
            work: Arc::default(),
            writes: writes.clone(),
        });
        tasks.push(LeaseTask::spawn("g1".into(), TIMES, backend, driven).unwrap());
        hangs.0.push(hang);
    }
    wait_until("a first writer", || !lock(&writes).is_empty()).await;
    let first = lock(&writes)[0].0.clone();
    let (i, other) = if first == "a" { (0, "b") } else { (1, "a") };
    // The holder's renewals hang: it must assume the lease lost and end its
    // work; the other agent takes the group once the lease has ended.
    hangs.0[i].store(true, Ordering::SeqCst);
    wait_until("the other agent's writes", || {
        lock(&writes).iter().any(|(w, _)| w == other)
    })
    .await;
    tokio::time::sleep(TIMES.duration).await;
    let log = lock(&writes).clone();
    let unleased: Vec<&(String, bool)> = log.iter().filter(|(_, held)| !*held).collect();
    assert!(
        unleased.is_empty(),
        "{} of {} writes made without their lease, first {:?}",
        unleased.len(),
        log.len(),
        unleased.first()
    );
    let taken = log
        .iter()
        .position(|(w, _)| w == other)
        .unwrap_or(log.len());
    let late = log[taken..].iter().filter(|(w, _)| w != other).count();
    assert_eq!(
        late, 0,
        "writes of the first holder after the other started"
    );
    drop(hangs);
    for task in tasks {
        task.release().await;
    }
}
