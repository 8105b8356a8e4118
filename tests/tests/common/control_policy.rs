//! Policy recovery points in the control fault harness
//! (`faults_control.rs`): the policy bound to the group on the primary, the
//! slot the clock makes due, a forward clock jump across slots (with a
//! fault landed while the point is made, see [`super::control_faults`]),
//! and the check that exactly the newest due slot fired, once.

use std::collections::BTreeSet;
use std::time::Duration;

use ferry_e2e::cli::ok;

use super::control_faults::Fault;
use super::{
    rfc3339, slot_at_or_before, wait_for, PolicyDef, World, DAY_MS, HOUR_MS, POLICY,
    STANDBY_DID_NOT_RECORD,
};

impl World {
    pub(crate) fn policy_def(&self) -> PolicyDef {
        self.policy_on[self.primary.index()].expect("a policy on the primary")
    }

    /// The policy is bound to the group on the primary (created there first
    /// if needed; the group's policy points are deleted first, as binding
    /// requires).
    pub(crate) fn ensure_policy(&mut self, what: &str) {
        if self.policy_bound {
            return;
        }
        let p = self.p();
        let g = self.group.clone();
        for rp in self.rps(&p) {
            if rp["kind"] == "policy" {
                let name = rp["name"].as_str().unwrap_or("?").to_owned();
                ok(&p, &["rp", "delete", &g, &name, "--wait"]);
            }
        }
        if self.policy_on[self.primary.index()].is_none() {
            let now = self.faked_now_ms();
            // The next slot is 6 h away.
            let tod_ms = (now + 6 * HOUR_MS).rem_euclid(DAY_MS) / 60_000 * 60_000;
            let schedule = format!(
                "daily {:02}:{:02}",
                tod_ms / HOUR_MS,
                (tod_ms % HOUR_MS) / 60_000
            );
            let from = rfc3339(now);
            ok(
                &p,
                &[
                    "policy",
                    "create",
                    POLICY,
                    "--schedule",
                    &schedule,
                    "--tz",
                    "UTC",
                    "--from",
                    &from,
                ],
            );
            self.policy_on[self.primary.index()] = Some(PolicyDef {
                tod_ms,
                from_ms: now,
            });
        }
        ok(&p, &["policy", "bind", &g, POLICY, "--retention", "5"]);
        self.policy_bound = true;
        self.last_fired = None;
        self.policy_seen = self.policy_names();
        // Binding may make a slot due at once (a policy created long ago).
        let due = self.due_slot();
        self.expect_policy_outcome(due, what);
    }

    /// The slot the scheduler must fire now, if any: the newest slot at or
    /// before the clock, after the effective start and after the last fired.
    pub(crate) fn due_slot(&self) -> Option<i64> {
        let def = self.policy_def();
        let slot = slot_at_or_before(self.faked_now_ms(), def.tod_ms);
        let after_last = self.last_fired.is_none_or(|l| slot > l);
        (slot >= def.from_ms && after_last).then_some(slot)
    }

    pub(crate) fn clock_forward(&mut self, slots: i64, fault: Option<Fault>, what: &str) {
        self.ensure_policy(what);
        self.write_sources();
        let now = self.faked_now_ms();
        let tod = self.policy_def().tod_ms;
        // Across exactly `slots` slots after the clock, the last fired slot
        // and the policy's start (the clock may have been stepped back
        // before either): the newest of them fires, once.
        let base = slot_at_or_before(now, tod)
            .max(self.last_fired.unwrap_or(i64::MIN))
            .max(slot_at_or_before(self.policy_def().from_ms, tod));
        let landing = base + slots * DAY_MS + self.landing_ms();
        if let Some(f) = &fault {
            self.arm(f);
        }
        let primary = self.primary;
        let lost_before = self.log_count(primary, STANDBY_DID_NOT_RECORD);
        self.set_clock(landing);
        let due = self.due_slot();
        let Some(slot) = due else {
            panic!("{}: a forward jump makes a slot due", self.ctx(what));
        };
        if let Some(f) = fault {
            // The point is in flight until it is complete on the primary.
            let name = format!("{POLICY}-{slot}");
            let p = self.p();
            let pending = |w: &World| {
                !w.rps(&p)
                    .iter()
                    .any(|rp| rp["name"] == name.as_str() && rp["state"] == "complete")
            };
            if self.land(&f, pending) {
                self.assert_rp_interrupted(&f, lost_before, None, what);
            }
        }
        self.expect_policy_outcome(due, what);
    }

    /// Waits for the policy point of `due` (complete on both sides) or, with
    /// none due, gives the scheduler a few ticks; then no other policy point
    /// may have appeared.
    pub(crate) fn expect_policy_outcome(&mut self, due: Option<i64>, what: &str) {
        let p = self.p();
        let s = self.s();
        let expected: BTreeSet<String> =
            due.iter().map(|slot| format!("{POLICY}-{slot}")).collect();
        match due {
            Some(slot) => {
                let name = format!("{POLICY}-{slot}");
                for dir in [&p, &s] {
                    wait_for(&format!("policy point {name} on {}", dir.display()), || {
                        self.rps(dir)
                            .iter()
                            .any(|rp| rp["name"] == name.as_str() && rp["state"] == "complete")
                    });
                }
                self.bump("policy points fired");
            }
            None => self.bump("clock changes that fire nothing"),
        }
        // Several scheduler ticks (1 s) after the clock file's cache (1 s).
        std::thread::sleep(Duration::from_secs(4));
        let new: BTreeSet<String> = self
            .policy_names()
            .difference(&self.policy_seen)
            .cloned()
            .collect();
        assert_eq!(
            new,
            expected,
            "{}: policy points that appeared (expected exactly the newest due slot, once)",
            self.ctx(what)
        );
        self.policy_seen.extend(new);
        if let Some(slot) = due {
            self.last_fired = Some(slot);
        }
    }
}
