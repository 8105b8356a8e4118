//! The lease of one protection group, sans I/O: a [`LeaseMachine`] decides
//! when its agent asks the store for the group's lock, renews it, fences
//! the holders before it, starts and stops driving the group, and when it
//! must assume it lost the lease — and never touches RADOS itself.
//!
//! The driver (the agent's lease task) feeds it what happened, with the
//! time each request was *sent* on a monotonic clock ([`Input`]), calls
//! [`LeaseMachine::poll`] with the current time, carries out the
//! [`Action`]s in order and sleeps until [`LeaseMachine::next_wake`]. Unit
//! tests and the `lease` fuzz target drive the very same machine.
//!
//! The rules it keeps (a lease is a store lock with a duration, as a RADOS
//! advisory exclusive lock with a duration is):
//! - a grant counts from the moment its request was sent, never from the
//!   reply: the store's expiry is at or after `sent + duration`, so the
//!   holder's own estimate is the earliest the lease can end;
//! - the holder renews at `renew_fraction` of the duration and stops
//!   touching the group at `sent + duration - safety_margin` when no renewal
//!   got through — before the store can let anyone else claim it;
//! - a contender claims only what the store grants, which it does only
//!   after the old lease expired, and fences (blocklists) every holder it
//!   knows of before it starts, so a holder that was stopped while it
//!   believed it held the lease cannot write after the takeover;
//! - a fenced or definitely lost lease stops the group at once.

use std::time::{Duration, Instant};

/// One agent's client as the store names it: what a contender blocklists.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Holder {
    /// The agent's name in the site (for logs and `ferry status`).
    pub agent: String,
    /// The client's address as the store reports it (what is blocklisted).
    pub addr: String,
}

/// How long a lease lasts and when its holder acts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTimes {
    /// The lock's duration, as requested from the store.
    pub duration: Duration,
    /// Renew when this part of the duration (in thousandths) has passed.
    pub renew_permille: u16,
    /// The holder stops touching the group this long before its lease can
    /// end: room for clock-rate drift and the stop itself.
    pub safety_margin: Duration,
    /// A contender tries again after this long (a refused claim, a failed
    /// fence, a lost lease).
    pub retry: Duration,
}

/// Why [`LeaseTimes`] cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseTimesError {
    /// The duration is zero.
    #[error("the lease duration must be more than zero")]
    ZeroDuration,
    /// The holder would stop before it renews, or never have a lease.
    #[error("the renewal at {renew:?} must come before the stop at {stop:?} (duration minus safety margin)")]
    RenewAfterStop {
        /// When it would renew.
        renew: Duration,
        /// When it would stop.
        stop: Duration,
    },
    /// The retry interval is zero.
    #[error("the retry interval must be more than zero")]
    ZeroRetry,
}

impl LeaseTimes {
    /// A 30 s lease renewed at a third, stopped 5 s early, retried every 2 s.
    pub const DEFAULT: LeaseTimes = LeaseTimes {
        duration: Duration::from_secs(30),
        renew_permille: 333,
        safety_margin: Duration::from_secs(5),
        retry: Duration::from_secs(2),
    };

    /// After this long since the grant's request was sent, the holder renews.
    pub fn renew_after(&self) -> Duration {
        self.duration * u32::from(self.renew_permille) / 1000
    }

    /// After this long since the grant's request was sent, the holder must
    /// assume it no longer holds the lease.
    pub fn stop_after(&self) -> Duration {
        self.duration.saturating_sub(self.safety_margin)
    }

    /// Checks that a holder renews before it must stop.
    pub fn validate(&self) -> Result<(), LeaseTimesError> {
        if self.duration.is_zero() {
            return Err(LeaseTimesError::ZeroDuration);
        }
        if self.retry.is_zero() {
            return Err(LeaseTimesError::ZeroRetry);
        }
        let (renew, stop) = (self.renew_after(), self.stop_after());
        if stop.is_zero() || renew >= stop {
            return Err(LeaseTimesError::RenewAfterStop { renew, stop });
        }
        Ok(())
    }
}

/// Why a request to the store failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No answer or an error that says nothing about the lock (timeout,
    /// connection reset): the lease may still be held.
    Transient,
    /// Another client holds the lock (or it was broken): the lease is gone.
    Taken,
    /// This agent's client is blocklisted: it must reconnect, and every
    /// lease it held is gone.
    Fenced,
}

/// What the driver reports back to the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The lock was granted to this agent. `previous`: the holders the
    /// lease object records (every client that held it and may not be
    /// fenced yet).
    Granted {
        /// When the granting request was sent.
        sent: Instant,
        /// Holders recorded before this grant.
        previous: Vec<Holder>,
    },
    /// The claim was refused: `holder` holds the lock (as listed).
    Refused {
        /// When the refused request was sent.
        sent: Instant,
        /// The lock's holder, when the store listed one.
        holder: Option<Holder>,
    },
    /// A renewal got through.
    Renewed {
        /// When the renewing request was sent.
        sent: Instant,
    },
    /// A claim or a renewal failed.
    Failed(Failure),
    /// Every holder of the last [`Action::Fence`] is blocklisted and this
    /// agent is recorded as the holder.
    Fenced,
    /// The store released the lock (after [`Action::Release`]).
    Released,
}

/// What the machine asks of the driver, carried out in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Ask the store for the lock (exclusive, with the duration); report
    /// [`Input::Granted`], [`Input::Refused`] or [`Input::Failed`].
    Claim,
    /// Renew the lock held; report [`Input::Renewed`] or [`Input::Failed`].
    Renew,
    /// Blocklist each of these clients, then record this agent as the
    /// holder; report [`Input::Fenced`] or [`Input::Failed`].
    Fence(Vec<Holder>),
    /// Start driving the group (cycles, operations).
    Start,
    /// Stop touching the group now, and wait until nothing of it runs.
    Stop,
    /// Release the lock; report [`Input::Released`] (or a failure).
    Release,
}

/// Where the lease stands, as `ferry status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseState {
    /// Not held. `next_claim`: when the next claim goes out (None while one
    /// is in flight); `observed`: the holder as last listed, with the send
    /// time of the refused claim that listed it.
    Contending {
        /// When the next claim goes out.
        next_claim: Option<Instant>,
        /// The holder as last listed.
        observed: Option<(Holder, Instant)>,
    },
    /// Granted; fencing the previous holders before starting.
    Fencing {
        /// When the grant's request was sent.
        since: Instant,
    },
    /// Held and driven by this agent.
    Holding {
        /// When the request of the last grant or renewal was sent.
        since: Instant,
    },
    /// This agent must assume it lost the lease (renewals failed until the
    /// stop time, or the store said so); it claims again at `retry_at`.
    Lost {
        /// When it claims again.
        retry_at: Instant,
        /// Whether the store blocklisted this agent's client.
        fenced: bool,
    },
    /// Released on purpose (rebalance, shutdown): nothing more happens.
    Released,
}

/// The one request to the store whose answer is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pending {
    /// [`Action::Claim`].
    Claim,
    /// [`Action::Renew`].
    Renew,
    /// [`Action::Fence`].
    Fence,
    /// [`Action::Release`].
    Release,
}

/// Why the machine refused an input (a driver bug, never the store's).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// The input does not answer the request in flight.
    #[error("unexpected {input} while {pending:?} is in flight")]
    Unexpected {
        /// The input's kind.
        input: &'static str,
        /// The request in flight.
        pending: Option<Pending>,
    },
}

/// The lease of one group as one agent sees it. At most one request to
/// the store is in flight at a time; the clock ([`LeaseMachine::poll`])
/// still stops the group while one hangs.
#[derive(Debug, Clone)]
pub struct LeaseMachine {
    times: LeaseTimes,
    me: Holder,
    state: LeaseState,
    pending: Option<Pending>,
    /// Whether the driver has been told to start and not yet to stop.
    driving: bool,
}

impl LeaseMachine {
    /// A contender that claims at once (`now`), as `me`.
    pub fn new(times: LeaseTimes, me: Holder, now: Instant) -> Result<Self, LeaseTimesError> {
        times.validate()?;
        Ok(Self {
            times,
            me,
            state: LeaseState::Contending {
                next_claim: Some(now),
                observed: None,
            },
            pending: None,
            driving: false,
        })
    }

    /// Where the lease stands.
    pub fn state(&self) -> &LeaseState {
        &self.state
    }

    /// The request whose answer is due, if any.
    pub fn pending(&self) -> Option<Pending> {
        self.pending
    }

    /// Whether the driver may touch the group now (between [`Action::Start`]
    /// and [`Action::Stop`]).
    pub fn driving(&self) -> bool {
        self.driving
    }

    /// This agent's client.
    pub fn me(&self) -> &Holder {
        &self.me
    }

    /// The lease's timing.
    pub fn times(&self) -> LeaseTimes {
        self.times
    }

    /// When `poll` must be called next, at the latest (None: the machine
    /// waits for an answer only, or for nothing).
    pub fn next_wake(&self) -> Option<Instant> {
        match &self.state {
            LeaseState::Contending { next_claim, .. } => {
                next_claim.filter(|_| self.pending.is_none())
            }
            LeaseState::Fencing { since } => Some(*since + self.times.stop_after()),
            LeaseState::Holding { since } => {
                let stop = *since + self.times.stop_after();
                if self.pending.is_some() {
                    Some(stop)
                } else {
                    Some((*since + self.times.renew_after()).min(stop))
                }
            }
            LeaseState::Lost { retry_at, .. } => Some(*retry_at),
            LeaseState::Released => None,
        }
    }

    /// What the clock alone makes happen at `now`.
    pub fn poll(&mut self, now: Instant) -> Vec<Action> {
        let times = self.times;
        match self.state.clone() {
            LeaseState::Fencing { since } | LeaseState::Holding { since }
                if now >= since + times.stop_after() =>
            {
                // No renewal (or fence) got through in time: the lease may
                // end at any moment, so the group stops now.
                self.lose(now, false)
            }
            LeaseState::Holding { since }
                if now >= since + times.renew_after() && self.pending.is_none() =>
            {
                self.pending = Some(Pending::Renew);
                vec![Action::Renew]
            }
            LeaseState::Lost { retry_at, .. } if now >= retry_at => {
                self.state = LeaseState::Contending {
                    next_claim: Some(now),
                    observed: None,
                };
                self.poll(now)
            }
            LeaseState::Contending {
                next_claim: Some(at),
                observed,
            } if now >= at && self.pending.is_none() => {
                self.state = LeaseState::Contending {
                    next_claim: None,
                    observed,
                };
                self.pending = Some(Pending::Claim);
                vec![Action::Claim]
            }
            _ => Vec::new(),
        }
    }

    /// Gives the lease up on purpose: stops the group, then releases the
    /// lock (once the request in flight, if any, has been answered).
    pub fn release(&mut self) -> Vec<Action> {
        let mut actions = self.stop_driving();
        let held = matches!(
            self.state,
            LeaseState::Fencing { .. } | LeaseState::Holding { .. }
        );
        self.state = LeaseState::Released;
        if held && self.pending.is_none() {
            self.pending = Some(Pending::Release);
            actions.push(Action::Release);
        }
        actions
    }

    /// What an answer from the store (or the driver) makes happen; `now` is
    /// the time it arrived.
    pub fn handle(&mut self, input: Input, now: Instant) -> Result<Vec<Action>, LeaseError> {
        let pending = self.pending;
        let expected = matches!(
            (&input, pending),
            (
                Input::Granted { .. } | Input::Refused { .. },
                Some(Pending::Claim)
            ) | (Input::Renewed { .. }, Some(Pending::Renew))
                | (Input::Fenced, Some(Pending::Fence))
                | (Input::Released, Some(Pending::Release))
                | (Input::Failed(_), Some(_))
        );
        if !expected {
            return Err(LeaseError::Unexpected {
                input: input_name(&input),
                pending,
            });
        }
        self.pending = None;
        if self.state == LeaseState::Released {
            return Ok(self.after_release(&input, pending));
        }
        if let Input::Failed(Failure::Fenced) = input {
            // Whatever was asked: this client can do nothing any more.
            return Ok(self.lose(now, true));
        }
        Ok(match (input, self.state.clone()) {
            (Input::Granted { sent, previous }, LeaseState::Contending { observed, .. }) => {
                self.granted(sent, previous, observed, now)
            }
            (Input::Refused { sent, holder }, LeaseState::Contending { .. }) => {
                let observed = holder.filter(|h| h.addr != self.me.addr).map(|h| (h, sent));
                self.contend_later(now, observed)
            }
            (Input::Failed(_), LeaseState::Contending { observed, .. }) => {
                self.contend_later(now, observed)
            }
            (Input::Fenced, LeaseState::Fencing { since }) => {
                if now >= since + self.times.stop_after() {
                    self.lose(now, false)
                } else {
                    self.state = LeaseState::Holding { since };
                    self.driving = true;
                    vec![Action::Start]
                }
            }
            (Input::Failed(_), LeaseState::Fencing { .. }) => {
                // A holder that could not be fenced might still write:
                // never start; give the lock back for another agent.
                let mut actions = self.lose(now, false);
                self.pending = Some(Pending::Release);
                actions.push(Action::Release);
                actions
            }
            (Input::Renewed { sent }, LeaseState::Holding { since }) => {
                // A renewal counts from its own send time; an older answer
                // never moves the lease back.
                self.state = LeaseState::Holding {
                    since: since.max(sent),
                };
                self.poll(now)
            }
            (Input::Failed(Failure::Transient), LeaseState::Holding { .. }) => {
                // Try again at once while the lease lasts; poll stops the
                // group at the stop time.
                self.poll(now)
            }
            (Input::Failed(_), LeaseState::Holding { .. }) => self.lose(now, false),
            // Answers that arrive after the clock stopped the group (a late
            // grant, renewal or fence): the group stays stopped and the next
            // claim fences and starts afresh. A late grant leaves a lock
            // that expires on its own.
            (_, LeaseState::Lost { .. }) => Vec::new(),
            // A release's answer.
            (_, _) => Vec::new(),
        })
    }

    /// An answer that arrives after [`LeaseMachine::release`]: the lock it
    /// may have won or kept is released at once.
    fn after_release(&mut self, input: &Input, pending: Option<Pending>) -> Vec<Action> {
        let may_hold = matches!(
            input,
            Input::Granted { .. } | Input::Renewed { .. } | Input::Fenced
        ) || (matches!(input, Input::Failed(Failure::Transient))
            && pending != Some(Pending::Release));
        if may_hold {
            self.pending = Some(Pending::Release);
            vec![Action::Release]
        } else {
            Vec::new()
        }
    }

    fn granted(
        &mut self,
        sent: Instant,
        previous: Vec<Holder>,
        observed: Option<(Holder, Instant)>,
        now: Instant,
    ) -> Vec<Action> {
        let mut victims = previous;
        victims.extend(observed.map(|(holder, _)| holder));
        victims.retain(|h| h.addr != self.me.addr);
        victims.sort();
        victims.dedup();
        self.state = LeaseState::Fencing { since: sent };
        if now >= sent + self.times.stop_after() {
            // The grant came back too late to be of use.
            return self.lose(now, false);
        }
        self.pending = Some(Pending::Fence);
        vec![Action::Fence(victims)]
    }

    fn contend_later(&mut self, now: Instant, observed: Option<(Holder, Instant)>) -> Vec<Action> {
        self.state = LeaseState::Contending {
            next_claim: Some(now + self.times.retry),
            observed,
        };
        Vec::new()
    }

    /// Stops the group (if it runs) and waits `retry` before claiming again.
    fn lose(&mut self, now: Instant, fenced: bool) -> Vec<Action> {
        let actions = self.stop_driving();
        self.state = LeaseState::Lost {
            retry_at: now + self.times.retry,
            fenced,
        };
        actions
    }

    fn stop_driving(&mut self) -> Vec<Action> {
        if std::mem::take(&mut self.driving) {
            vec![Action::Stop]
        } else {
            Vec::new()
        }
    }
}

fn input_name(input: &Input) -> &'static str {
    match input {
        Input::Granted { .. } => "grant",
        Input::Refused { .. } => "refusal",
        Input::Renewed { .. } => "renewal",
        Input::Failed(_) => "failure",
        Input::Fenced => "fence done",
        Input::Released => "release done",
    }
}

#[cfg(test)]
#[path = "lease_tests.rs"]
mod tests;
