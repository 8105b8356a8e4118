//! A meeting point for a batch of blocking jobs: each job waits there until
//! every other job of the batch has arrived or given up, then all go on at
//! once. Unlike `std::sync::Barrier`, a job that fails before it arrives
//! (its ticket is dropped) releases the others instead of leaving them
//! waiting forever.
//!
//! What it is for: Ceph's monitor commits snapshot ids in rounds (at most
//! one per `paxos_propose_interval`, 1 s by default), and a snapshot asked
//! for while a round is under way waits for the next. Jobs that each make
//! a snapshot after some work of their own (a clone of one image of a group)
//! land in one round when they ask at the same moment.

use std::sync::{Arc, Condvar, Mutex};

use crate::sync_util::lock;

/// How many jobs have arrived or given up, out of how many.
#[derive(Debug)]
struct Count {
    expected: usize,
    settled: usize,
}

#[derive(Debug)]
struct Shared {
    count: Mutex<Count>,
    all_settled: Condvar,
}

/// One job's place at the meeting point; see the module doc.
#[derive(Debug)]
pub struct Ticket {
    shared: Arc<Shared>,
    settled: bool,
}

/// Tickets for a batch of `jobs` jobs, one each.
pub fn tickets(jobs: usize) -> Vec<Ticket> {
    let shared = Arc::new(Shared {
        count: Mutex::new(Count {
            expected: jobs,
            settled: 0,
        }),
        all_settled: Condvar::new(),
    });
    (0..jobs)
        .map(|_| Ticket {
            shared: shared.clone(),
            settled: false,
        })
        .collect()
}

impl Ticket {
    /// Arrives and waits until every other job of the batch has arrived or
    /// dropped its ticket. A second call returns at once.
    pub fn arrive_and_wait(&mut self) {
        if self.settled {
            return;
        }
        self.settled = true;
        let mut count = lock(&self.shared.count);
        count.settled += 1;
        if count.settled >= count.expected {
            self.shared.all_settled.notify_all();
            return;
        }
        while count.settled < count.expected {
            count = self
                .shared
                .all_settled
                .wait(count)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}

impl Drop for Ticket {
    /// A job that never arrived (it failed first) stops counting.
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let mut count = lock(&self.shared.count);
        count.settled += 1;
        if count.settled >= count.expected {
            self.shared.all_settled.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn nobody_goes_on_before_everyone_arrived() {
        let arrived = AtomicUsize::new(0);
        let seen: Vec<usize> = crate::sync_util::run_all(
            tickets(4)
                .into_iter()
                .enumerate()
                .map(|(i, mut ticket)| {
                    let arrived = &arrived;
                    move || {
                        std::thread::sleep(std::time::Duration::from_millis(10 * i as u64));
                        arrived.fetch_add(1, Ordering::SeqCst);
                        ticket.arrive_and_wait();
                        arrived.load(Ordering::SeqCst)
                    }
                })
                .collect(),
        );
        assert_eq!(seen, vec![4, 4, 4, 4]);
    }

    #[test]
    fn a_job_that_fails_before_arriving_releases_the_others() {
        let mut all = tickets(3);
        let failed = all.pop();
        let mut jobs: Vec<Box<dyn FnOnce() -> bool + Send>> = all
            .into_iter()
            .map(|mut ticket| {
                Box::new(move || {
                    ticket.arrive_and_wait();
                    true
                }) as Box<dyn FnOnce() -> bool + Send>
            })
            .collect();
        jobs.push(Box::new(move || {
            drop(failed);
            false
        }));
        assert_eq!(crate::sync_util::run_all(jobs), vec![true, true, false]);
    }

    #[test]
    fn a_lone_ticket_never_waits() {
        let mut only = tickets(1);
        only[0].arrive_and_wait();
        only[0].arrive_and_wait();
    }
}
