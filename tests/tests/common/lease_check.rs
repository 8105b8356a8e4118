//! Property of the `lease` fuzz target, shared with `cargo test`
//! (`tests/tests/lease_world.rs` runs it over the committed corpus and
//! over random inputs): bytes become a world of two or three agents, each
//! with a [`LeaseMachine`] for one group, and a store that keeps the
//! group's lock as a RADOS advisory lock with a duration does (granted to
//! one client at a time, until its expiry on the store's clock), the
//! lease object's holder records, and a blocklist. Requests and answers
//! take random time, get lost, and agents are stopped (SIGSTOP) for random
//! spans: a stopped agent neither polls, reads answers nor writes, but a
//! holder stopped while it drives has one write decided before the stop
//! that goes out when it runs again (the SIGSTOP between a lease check and
//! a write). Every driving agent writes to the group at each millisecond;
//! the store refuses writes from blocklisted clients. Checked at every step:
//! - a running agent drives the group only while the store's lock is its
//!   own and unexpired (so it stops before anyone else may start), and at
//!   most one running agent drives at a time;
//! - every write the store accepts comes from the client that started
//!   last: once an agent has started, nothing an older holder sends — late
//!   writes from a stopped one included — is accepted;
//! - the machine accepts every answer the driver gives it (no driver-bug
//!   errors in a correct driver).
//!
//! At the end, after a calm spell without faults, exactly one agent drives
//! the group.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::placement::lease::{
    Action, Failure, Holder, Input, LeaseMachine, LeaseState, LeaseTimes,
};

/// Milliseconds: the lease lasts 100, is renewed at 33, stopped at 80.
const TIMES: LeaseTimes = LeaseTimes {
    duration: Duration::from_millis(100),
    renew_permille: 333,
    safety_margin: Duration::from_millis(20),
    retry: Duration::from_millis(10),
};

/// A request to the store, as it travels.
#[derive(Debug, Clone)]
enum Request {
    Claim,
    Renew,
    Fence(Vec<Holder>),
    Release,
    Write,
}

#[derive(Debug)]
struct Travel {
    agent: usize,
    me: Holder,
    request: Request,
    sent: u64,
    /// Milliseconds from the store back to the agent.
    back: u64,
    lose_request: bool,
    lose_answer: bool,
}

#[derive(Default)]
struct Store {
    /// The lock: its holder and expiry.
    lock: Option<(Holder, u64)>,
    records: BTreeSet<Holder>,
    blocklist: BTreeSet<String>,
    /// The client (address) that started driving last.
    last_started: Option<String>,
    accepted_writes: u64,
}

impl Store {
    /// The store's answer to one request at `now` (None for a write).
    fn serve(&mut self, travel: &Travel, now: u64, t0: Instant) -> Option<Input> {
        let sent = t0 + Duration::from_millis(travel.sent);
        if travel.lose_request {
            return match travel.request {
                Request::Write => None,
                _ => Some(Input::Failed(Failure::Transient)),
            };
        }
        if self.blocklist.contains(&travel.me.addr) {
            return match travel.request {
                Request::Write => None,
                _ => Some(Input::Failed(Failure::Fenced)),
            };
        }
        let free_or_mine = match &self.lock {
            None => true,
            Some((h, expiry)) => *h == travel.me || *expiry <= now,
        };
        let duration = TIMES.duration.as_millis() as u64;
        let answer = match &travel.request {
            Request::Write => {
                assert_eq!(
                    self.last_started.as_deref(),
                    Some(travel.me.addr.as_str()),
                    "at {now} ms the store accepted a write of {} sent at {} ms, but {:?} started last",
                    travel.me.addr,
                    travel.sent,
                    self.last_started
                );
                self.accepted_writes += 1;
                return None;
            }
            Request::Claim if free_or_mine => {
                self.lock = Some((travel.me.clone(), now + duration));
                let previous = self.records.iter().cloned().collect();
                Input::Granted { sent, previous }
            }
            Request::Claim => Input::Refused {
                sent,
                holder: self.lock.as_ref().map(|(h, _)| h.clone()),
            },
            Request::Renew if free_or_mine => {
                self.lock = Some((travel.me.clone(), now + duration));
                Input::Renewed { sent }
            }
            Request::Renew => Input::Failed(Failure::Taken),
            Request::Fence(victims) => {
                for v in victims {
                    self.blocklist.insert(v.addr.clone());
                    self.records.remove(v);
                }
                self.records.insert(travel.me.clone());
                Input::Fenced
            }
            Request::Release => {
                if self.lock.as_ref().is_some_and(|(h, _)| *h == travel.me) {
                    self.lock = None;
                }
                Input::Released
            }
        };
        if travel.lose_answer {
            Some(Input::Failed(Failure::Transient))
        } else {
            Some(answer)
        }
    }
}

struct Agent {
    machine: LeaseMachine,
    paused_until: u64,
    /// Delays to and from the store for the next requests (ms, at least 1).
    delay: (u64, u64),
    /// Lose the next request (false) or its answer (true).
    lose_next: Option<bool>,
    inbox: Vec<(u64, Input)>,
}

struct World {
    t0: Instant,
    now: u64,
    store: Store,
    agents: Vec<Agent>,
    /// Requests on their way to the store: (arrival, order, request).
    travels: Vec<(u64, u64, Travel)>,
    seq: u64,
    next_client: u64,
}

impl World {
    fn new(agents: usize) -> Self {
        let mut world = World {
            t0: Instant::now(),
            now: 0,
            store: Store::default(),
            agents: Vec::new(),
            travels: Vec::new(),
            seq: 0,
            next_client: 0,
        };
        for i in 0..agents {
            let machine = world.machine(i);
            world.agents.push(Agent {
                machine,
                paused_until: 0,
                delay: (1, 1),
                lose_next: None,
                inbox: Vec::new(),
            });
        }
        world
    }

    fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    /// A fresh machine for agent `i`, on a new client (as after a
    /// reconnect: a blocklisted client never comes back).
    fn machine(&mut self, i: usize) -> LeaseMachine {
        self.next_client += 1;
        let me = Holder {
            agent: format!("agent{i}"),
            addr: format!("10.0.0.{i}:0/{}", self.next_client),
        };
        LeaseMachine::new(TIMES, me, self.at(self.now)).expect("valid lease times")
    }

    fn send(&mut self, i: usize, request: Request) {
        let agent = &mut self.agents[i];
        let lose = agent.lose_next.take();
        let travel = Travel {
            agent: i,
            me: agent.machine.me().clone(),
            request,
            sent: self.now,
            back: agent.delay.1,
            lose_request: lose == Some(false),
            lose_answer: lose == Some(true),
        };
        self.seq += 1;
        self.travels
            .push((self.now + agent.delay.0, self.seq, travel));
    }

    /// Carries out a machine's actions, in order.
    fn act(&mut self, i: usize, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Claim => self.send(i, Request::Claim),
                Action::Renew => self.send(i, Request::Renew),
                Action::Fence(victims) => self.send(i, Request::Fence(victims)),
                Action::Release => self.send(i, Request::Release),
                Action::Start => {
                    self.store.last_started = Some(self.agents[i].machine.me().addr.clone());
                }
                Action::Stop => {}
            }
        }
    }

    /// One millisecond: the store serves what arrived, then every running
    /// agent reads its answers, polls, is checked, and writes if it drives.
    fn step(&mut self, faults: bool) {
        let now = self.now;
        let mut arrived: Vec<(u64, u64, Travel)> = Vec::new();
        let mut rest = Vec::new();
        for t in self.travels.drain(..) {
            if t.0 <= now {
                arrived.push(t);
            } else {
                rest.push(t);
            }
        }
        self.travels = rest;
        arrived.sort_by_key(|(at, seq, _)| (*at, *seq));
        for (_, _, travel) in arrived {
            if let Some(answer) = self.store.serve(&travel, now, self.t0) {
                // The answer goes to the machine that asked (a machine
                // replaced since then never hears of it).
                let agent = &mut self.agents[travel.agent];
                if *agent.machine.me() == travel.me {
                    agent.inbox.push((now + travel.back, answer));
                }
            }
        }
        for i in 0..self.agents.len() {
            if self.agents[i].paused_until > now {
                continue;
            }
            self.run_agent(i, faults);
        }
        let driving = (0..self.agents.len())
            .filter(|i| self.agents[*i].paused_until <= now && self.agents[*i].machine.driving())
            .count();
        assert!(
            driving <= 1,
            "at {now} ms {driving} running agents drive the group"
        );
        self.now += 1;
    }

    fn run_agent(&mut self, i: usize, faults: bool) {
        let now = self.now;
        let at = self.at(now);
        let mut due = Vec::new();
        self.agents[i].inbox.retain(|(when, input)| {
            if *when <= now {
                due.push(input.clone());
                false
            } else {
                true
            }
        });
        for input in due {
            let actions = self.agents[i]
                .machine
                .handle(input.clone(), at)
                .unwrap_or_else(|e| panic!("at {now} ms agent {i} refused {input:?}: {e}"));
            self.act(i, actions);
        }
        let actions = self.agents[i].machine.poll(at);
        self.act(i, actions);
        let machine = &self.agents[i].machine;
        // A fenced client reconnects as a new one; a released lease is
        // contended for again after a calm spell.
        let replace = matches!(machine.state(), LeaseState::Lost { fenced: true, .. })
            || (!faults && *machine.state() == LeaseState::Released && machine.pending().is_none());
        if replace {
            let fresh = self.machine(i);
            self.agents[i].machine = fresh;
            self.agents[i].inbox.clear();
            return;
        }
        if machine.driving() {
            let mine = self
                .store
                .lock
                .as_ref()
                .is_some_and(|(h, expiry)| h == machine.me() && *expiry > now);
            assert!(
                mine,
                "at {now} ms agent {i} drives the group but the store's lock is {:?}",
                self.store.lock
            );
            self.send(i, Request::Write);
        }
    }

    /// Applies one fault or clock advance from two input bytes.
    fn apply(&mut self, op: u8, arg: u8) {
        let n = self.agents.len();
        let i = usize::from(arg) % n;
        match op % 8 {
            0..=2 => {
                for _ in 0..arg {
                    self.step(true);
                }
            }
            3 => {
                let until = self.now + u64::from(arg) * 2;
                self.agents[i].paused_until = until;
                if self.agents[i].machine.driving() {
                    // Stopped between deciding to write (as the holder) and
                    // writing: the write goes out when the agent runs again.
                    self.send(i, Request::Write);
                    if let Some(t) = self.travels.last_mut() {
                        t.0 = until + 1;
                    }
                }
            }
            4 => {
                self.agents[i].delay = (1 + u64::from(arg % 16), 1 + u64::from(arg / 16));
            }
            5 => self.agents[i].lose_next = Some(arg & 0x80 != 0),
            6 => {
                let actions = self.agents[i].machine.release();
                self.act(i, actions);
            }
            _ => self.step(true),
        }
    }

    /// A spell without faults: every agent runs with 1 ms delays and no
    /// loss for ten lease durations.
    fn calm(&mut self) {
        for agent in &mut self.agents {
            agent.paused_until = 0;
            agent.delay = (1, 1);
            agent.lose_next = None;
        }
        let spell = TIMES.duration.as_millis() as u64 * 10;
        for _ in 0..spell {
            self.step(false);
        }
    }
}

/// Checks one input: the first byte picks two or three agents, then each
/// pair of bytes is one clock advance or fault.
pub fn check(data: &[u8]) {
    let Some((first, rest)) = data.split_first() else {
        return;
    };
    let mut world = World::new(2 + usize::from(first % 2));
    for pair in rest.chunks(2).take(400) {
        world.apply(pair[0], pair.get(1).copied().unwrap_or(0));
    }
    world.calm();
    let driving: Vec<usize> = (0..world.agents.len())
        .filter(|i| world.agents[*i].machine.driving())
        .collect();
    assert_eq!(
        driving.len(),
        1,
        "after a calm spell agents {driving:?} drive the group (lock {:?})",
        world.store.lock
    );
    let writes = world.store.accepted_writes;
    assert!(writes > 0, "no write was ever accepted");
}
