//! Unit tests of the lease machine: each rule of `lease.rs` on a scripted
//! clock (the randomized world with a store, delays, lost messages and
//! stopped agents is `tests/tests/common/lease_check.rs`).

use std::time::{Duration, Instant};

use super::*;

const TIMES: LeaseTimes = LeaseTimes {
    duration: Duration::from_secs(30),
    renew_permille: 333,
    safety_margin: Duration::from_secs(5),
    retry: Duration::from_secs(2),
};

fn holder(name: &str) -> Holder {
    Holder {
        agent: name.to_owned(),
        addr: format!("10.0.0.1:0/{name}"),
    }
}

fn secs(t0: Instant, s: u64) -> Instant {
    t0 + Duration::from_secs(s)
}

fn ms(t0: Instant, m: u64) -> Instant {
    t0 + Duration::from_millis(m)
}

/// A machine for `a` that asked for the lease at `t0` (its claim in flight).
fn claiming(t0: Instant) -> LeaseMachine {
    let mut m = LeaseMachine::new(TIMES, holder("a"), t0).unwrap();
    m.poll(t0);
    m
}

/// A machine for `a` that claimed at `t0` and was granted the lock at
/// once, `previous` listed as earlier holders (the actions it asked for
/// are not checked here).
fn granted(t0: Instant, previous: Vec<Holder>) -> LeaseMachine {
    let mut m = claiming(t0);
    m.handle(Input::Granted { sent: t0, previous }, t0).unwrap();
    m
}

/// A machine for `a` that claimed at `t0` and now drives the group (no
/// previous holders).
fn holding(t0: Instant) -> LeaseMachine {
    let mut m = LeaseMachine::new(TIMES, holder("a"), t0).unwrap();
    assert_eq!(m.poll(t0), vec![Action::Claim]);
    let actions = m
        .handle(
            Input::Granted {
                sent: t0,
                previous: Vec::new(),
            },
            ms(t0, 10),
        )
        .unwrap();
    assert_eq!(actions, vec![Action::Fence(Vec::new())]);
    assert_eq!(
        m.handle(Input::Fenced, ms(t0, 20)).unwrap(),
        vec![Action::Start]
    );
    assert!(m.driving());
    m
}

#[test]
fn times_are_validated() {
    assert_eq!(LeaseTimes::DEFAULT.validate(), Ok(()));
    let zero = LeaseTimes {
        duration: Duration::ZERO,
        ..TIMES
    };
    assert_eq!(zero.validate(), Err(LeaseTimesError::ZeroDuration));
    let no_retry = LeaseTimes {
        retry: Duration::ZERO,
        ..TIMES
    };
    assert_eq!(no_retry.validate(), Err(LeaseTimesError::ZeroRetry));
    // Renewing at 90 % of 30 s is after the stop at 25 s.
    let late = LeaseTimes {
        renew_permille: 900,
        ..TIMES
    };
    assert!(matches!(
        late.validate(),
        Err(LeaseTimesError::RenewAfterStop { .. })
    ));
    // A margin as long as the lease leaves no time to hold it.
    let margin = LeaseTimes {
        safety_margin: Duration::from_secs(30),
        ..TIMES
    };
    assert!(margin.validate().is_err());
    assert!(LeaseMachine::new(late, holder("a"), Instant::now()).is_err());
}

#[test]
fn renewal_and_stop_times_follow_the_duration() {
    assert_eq!(TIMES.renew_after(), Duration::from_millis(9990));
    assert_eq!(TIMES.stop_after(), Duration::from_secs(25));
}

#[test]
fn a_contender_claims_at_once_and_starts_only_after_fencing() {
    let t0 = Instant::now();
    let mut m = LeaseMachine::new(TIMES, holder("a"), t0).unwrap();
    assert!(!m.driving());
    assert_eq!(m.next_wake(), Some(t0));
    assert_eq!(m.poll(t0), vec![Action::Claim]);
    // Nothing more while the claim is in flight, whatever the clock says.
    assert_eq!(m.poll(secs(t0, 100)), Vec::new());
    assert_eq!(m.next_wake(), None);
    let actions = m
        .handle(
            Input::Granted {
                sent: t0,
                previous: vec![holder("b"), holder("c"), holder("b")],
            },
            ms(t0, 5),
        )
        .unwrap();
    // Every previous holder is fenced once, sorted; the group is not
    // started yet.
    assert_eq!(actions, vec![Action::Fence(vec![holder("b"), holder("c")])]);
    assert!(!m.driving());
    assert_eq!(m.state(), &LeaseState::Fencing { since: t0 });
    assert_eq!(
        m.handle(Input::Fenced, ms(t0, 50)).unwrap(),
        vec![Action::Start]
    );
    assert!(m.driving());
    assert_eq!(m.state(), &LeaseState::Holding { since: t0 });
}

#[test]
fn a_contender_never_fences_itself() {
    let t0 = Instant::now();
    let mut m = claiming(t0);
    let actions = m
        .handle(
            Input::Granted {
                sent: t0,
                previous: vec![holder("a")],
            },
            t0,
        )
        .unwrap();
    assert_eq!(actions, vec![Action::Fence(Vec::new())]);
}

#[test]
fn a_refused_claim_is_retried_and_the_listed_holder_is_fenced_on_takeover() {
    let t0 = Instant::now();
    let mut m = claiming(t0);
    let refused = Input::Refused {
        sent: t0,
        holder: Some(holder("b")),
    };
    assert_eq!(m.handle(refused, ms(t0, 3)).unwrap(), Vec::new());
    let retry_at = ms(t0, 2003);
    assert_eq!(m.next_wake(), Some(retry_at));
    assert_eq!(m.poll(ms(t0, 2002)), Vec::new());
    assert_eq!(m.poll(retry_at), vec![Action::Claim]);
    // The store granted it (b's lease expired) but recorded nobody: b as
    // listed is fenced all the same.
    let actions = m
        .handle(
            Input::Granted {
                sent: retry_at,
                previous: Vec::new(),
            },
            ms(t0, 2010),
        )
        .unwrap();
    assert_eq!(actions, vec![Action::Fence(vec![holder("b")])]);
}

#[test]
fn a_failed_claim_is_retried_after_the_retry_interval() {
    let t0 = Instant::now();
    let mut m = claiming(t0);
    let actions = m
        .handle(Input::Failed(Failure::Transient), secs(t0, 1))
        .unwrap();
    assert_eq!(actions, Vec::new());
    assert_eq!(m.next_wake(), Some(secs(t0, 3)));
    assert_eq!(m.poll(secs(t0, 3)), vec![Action::Claim]);
}

#[test]
fn the_holder_renews_at_its_fraction_and_a_renewal_counts_from_its_send_time() {
    let t0 = Instant::now();
    let mut m = holding(t0);
    let renew_at = t0 + TIMES.renew_after();
    assert_eq!(m.next_wake(), Some(renew_at));
    assert_eq!(m.poll(renew_at - Duration::from_millis(1)), Vec::new());
    assert_eq!(m.poll(renew_at), vec![Action::Renew]);
    // One renewal at a time.
    assert_eq!(m.poll(secs(t0, 11)), Vec::new());
    assert_eq!(m.next_wake(), Some(secs(t0, 25)));
    // The answer arrives 4 s later: the lease counts from the send time.
    let actions = m
        .handle(Input::Renewed { sent: renew_at }, secs(t0, 14))
        .unwrap();
    assert_eq!(actions, Vec::new());
    assert_eq!(m.state(), &LeaseState::Holding { since: renew_at });
    assert!(m.driving());
    assert_eq!(m.next_wake(), Some(renew_at + TIMES.renew_after()));
}

#[test]
fn an_old_renewal_never_moves_the_lease_back() {
    let t0 = Instant::now();
    let mut m = holding(secs(t0, 10));
    m.poll(secs(t0, 20));
    // A (driver-reported) send time before the grant's.
    m.handle(Input::Renewed { sent: t0 }, secs(t0, 20)).unwrap();
    assert_eq!(
        m.state(),
        &LeaseState::Holding {
            since: secs(t0, 10)
        }
    );
}

#[test]
fn transient_renewal_failures_are_retried_until_the_holder_stops_before_expiry() {
    let t0 = Instant::now();
    let mut m = holding(t0);
    let mut now = t0 + TIMES.renew_after();
    assert_eq!(m.poll(now), vec![Action::Renew]);
    let stop = t0 + TIMES.stop_after();
    let mut renewals = 1;
    loop {
        now += Duration::from_millis(700);
        let actions = if now >= stop {
            m.poll(now)
        } else {
            m.handle(Input::Failed(Failure::Transient), now).unwrap()
        };
        if actions == vec![Action::Renew] {
            renewals += 1;
            continue;
        }
        assert_eq!(actions, vec![Action::Stop]);
        break;
    }
    assert!(renewals > 10, "renewed only {renewals} times");
    // It stopped at the first poll at or after the stop time, which is a
    // safety margin before the lease could end at the store.
    assert!(now >= stop && now < t0 + TIMES.duration);
    assert!(!m.driving());
    assert!(matches!(m.state(), LeaseState::Lost { fenced: false, .. }));
}

#[test]
fn a_hung_renewal_stops_the_group_at_the_stop_time_and_a_late_answer_does_not_restart_it() {
    let t0 = Instant::now();
    let mut m = holding(t0);
    let renew_at = t0 + TIMES.renew_after();
    assert_eq!(m.poll(renew_at), vec![Action::Renew]);
    let stop = t0 + TIMES.stop_after();
    assert_eq!(m.poll(stop - Duration::from_millis(1)), Vec::new());
    assert_eq!(m.poll(stop), vec![Action::Stop]);
    assert!(!m.driving());
    // The renewal went through after all, but too late to be trusted.
    let actions = m
        .handle(Input::Renewed { sent: renew_at }, secs(t0, 26))
        .unwrap();
    assert_eq!(actions, Vec::new());
    assert!(!m.driving());
    // It contends afresh after the retry interval (and fences again).
    assert_eq!(m.poll(stop + TIMES.retry), vec![Action::Claim]);
}

#[test]
fn a_holder_stopped_past_its_lease_stops_at_its_first_poll() {
    // SIGSTOP: no poll between 1 s and 40 s.
    let t0 = Instant::now();
    let mut m = holding(t0);
    assert_eq!(m.poll(secs(t0, 40)), vec![Action::Stop]);
    assert!(!m.driving());
}

#[test]
fn a_renewal_taken_by_another_client_stops_at_once() {
    let t0 = Instant::now();
    let mut m = holding(t0);
    m.poll(t0 + TIMES.renew_after());
    let actions = m
        .handle(Input::Failed(Failure::Taken), secs(t0, 11))
        .unwrap();
    assert_eq!(actions, vec![Action::Stop]);
    assert_eq!(
        m.state(),
        &LeaseState::Lost {
            retry_at: secs(t0, 13),
            fenced: false
        }
    );
}

#[test]
fn a_fenced_client_stops_at_once_whatever_it_asked() {
    let t0 = Instant::now();
    let mut m = holding(t0);
    m.poll(t0 + TIMES.renew_after());
    let actions = m
        .handle(Input::Failed(Failure::Fenced), secs(t0, 11))
        .unwrap();
    assert_eq!(actions, vec![Action::Stop]);
    assert!(matches!(m.state(), LeaseState::Lost { fenced: true, .. }));

    let mut c = LeaseMachine::new(TIMES, holder("c"), t0).unwrap();
    c.poll(t0);
    let actions = c.handle(Input::Failed(Failure::Fenced), t0).unwrap();
    assert_eq!(actions, Vec::new());
    assert!(matches!(c.state(), LeaseState::Lost { fenced: true, .. }));
}

#[test]
fn a_grant_that_arrives_after_the_stop_time_is_not_used() {
    let t0 = Instant::now();
    let mut m = claiming(t0);
    let actions = m
        .handle(
            Input::Granted {
                sent: t0,
                previous: vec![holder("b")],
            },
            secs(t0, 25),
        )
        .unwrap();
    assert_eq!(actions, Vec::new());
    assert!(!m.driving());
    assert!(matches!(m.state(), LeaseState::Lost { .. }));
}

#[test]
fn a_fence_that_ends_after_the_stop_time_does_not_start_the_group() {
    let t0 = Instant::now();
    let mut m = granted(t0, vec![holder("b")]);
    assert_eq!(m.next_wake(), Some(secs(t0, 25)));
    // The answer comes late, with no poll in between (the agent was stopped).
    assert_eq!(m.handle(Input::Fenced, secs(t0, 26)).unwrap(), Vec::new());
    assert!(!m.driving());

    // The same with a poll at the stop time before the answer.
    let mut m = granted(t0, Vec::new());
    assert_eq!(m.poll(secs(t0, 25)), Vec::new());
    assert!(matches!(m.state(), LeaseState::Lost { .. }));
    assert_eq!(m.handle(Input::Fenced, secs(t0, 26)).unwrap(), Vec::new());
    assert!(!m.driving());
}

#[test]
fn a_failed_fence_never_starts_and_gives_the_lock_back() {
    let t0 = Instant::now();
    let mut m = granted(t0, vec![holder("b")]);
    let actions = m
        .handle(Input::Failed(Failure::Transient), secs(t0, 1))
        .unwrap();
    assert_eq!(actions, vec![Action::Release]);
    assert!(!m.driving());
    assert_eq!(m.pending(), Some(Pending::Release));
    assert_eq!(m.handle(Input::Released, secs(t0, 1)).unwrap(), Vec::new());
    assert_eq!(m.poll(secs(t0, 3)), vec![Action::Claim]);
}

#[test]
fn releasing_a_held_lease_stops_the_group_before_the_lock_goes() {
    let t0 = Instant::now();
    let mut m = holding(t0);
    assert_eq!(m.release(), vec![Action::Stop, Action::Release]);
    assert_eq!(m.state(), &LeaseState::Released);
    assert_eq!(m.handle(Input::Released, secs(t0, 1)).unwrap(), Vec::new());
    assert_eq!(m.next_wake(), None);
    assert_eq!(m.poll(secs(t0, 100)), Vec::new());
}

#[test]
fn releasing_during_a_claim_releases_the_lock_the_claim_won() {
    let t0 = Instant::now();
    let mut m = claiming(t0);
    assert_eq!(m.release(), Vec::new());
    let granted = Input::Granted {
        sent: t0,
        previous: Vec::new(),
    };
    assert_eq!(m.handle(granted, t0).unwrap(), vec![Action::Release]);
    assert!(!m.driving());
    m.handle(Input::Released, t0).unwrap();

    // A refused claim leaves nothing to release.
    let mut m = claiming(t0);
    m.release();
    let refused = Input::Refused {
        sent: t0,
        holder: None,
    };
    assert_eq!(m.handle(refused, t0).unwrap(), Vec::new());
    assert_eq!(m.pending(), None);
}

#[test]
fn releasing_during_a_renewal_releases_once_it_is_answered() {
    let t0 = Instant::now();
    let mut m = holding(t0);
    m.poll(t0 + TIMES.renew_after());
    assert_eq!(m.release(), vec![Action::Stop]);
    let actions = m
        .handle(Input::Failed(Failure::Transient), secs(t0, 11))
        .unwrap();
    assert_eq!(actions, vec![Action::Release]);
}

#[test]
fn releasing_without_a_lease_only_stops_contending() {
    let t0 = Instant::now();
    let mut m = LeaseMachine::new(TIMES, holder("a"), t0).unwrap();
    assert_eq!(m.release(), Vec::new());
    assert_eq!(m.poll(t0), Vec::new());
}

#[test]
fn answers_to_nothing_asked_are_refused() {
    let t0 = Instant::now();
    let mut m = LeaseMachine::new(TIMES, holder("a"), t0).unwrap();
    let err = m.handle(Input::Fenced, t0).unwrap_err();
    assert_eq!(
        err,
        LeaseError::Unexpected {
            input: "fence done",
            pending: None
        }
    );
    m.poll(t0);
    assert!(m.handle(Input::Renewed { sent: t0 }, t0).is_err());
    assert!(m.handle(Input::Released, t0).is_err());
    // The refused inputs changed nothing: the claim is still answered.
    let granted = Input::Granted {
        sent: t0,
        previous: Vec::new(),
    };
    assert_eq!(
        m.handle(granted, t0).unwrap(),
        vec![Action::Fence(Vec::new())]
    );
    let mut h = holding(t0);
    assert!(h
        .handle(
            Input::Granted {
                sent: t0,
                previous: Vec::new()
            },
            t0
        )
        .is_err());
    assert!(h.driving());
}

#[test]
fn after_a_loss_the_next_claim_fences_and_starts_afresh() {
    let t0 = Instant::now();
    let mut m = holding(t0);
    assert_eq!(m.poll(secs(t0, 40)), vec![Action::Stop]);
    assert_eq!(m.poll(secs(t0, 42)), vec![Action::Claim]);
    let granted = Input::Granted {
        sent: secs(t0, 42),
        previous: vec![holder("a"), holder("b")],
    };
    assert_eq!(
        m.handle(granted, secs(t0, 42)).unwrap(),
        vec![Action::Fence(vec![holder("b")])]
    );
    assert_eq!(
        m.handle(Input::Fenced, secs(t0, 43)).unwrap(),
        vec![Action::Start]
    );
}
