//! Unplanned failover in the control fault harness (`faults_control.rs`):
//! the primary site is lost, the standby fails over to the latest data or a
//! chosen recovery point (killed at a hold point of the failover when the
//! scenario drew a fault, see [`super::control_faults`], then retried), the
//! copies are checked, and the world is rebuilt as a new group.

use ferry_e2e::cli::{ok, run, text};
use ferry_e2e::hash_file;
use rand::Rng;

use super::control_faults::Fault;
use super::{wait_for, wait_op_finished, World};

impl World {
    pub(crate) fn failover(&mut self, to_point: bool, fault: Option<Fault>, what: &str) {
        let g = self.group.clone();
        let s = self.s();
        let standby_side = self.primary.other();
        let complete: Vec<String> = self
            .rps(&s)
            .iter()
            .filter(|rp| rp["state"] == "complete")
            .filter_map(|rp| rp["name"].as_str().map(str::to_owned))
            .filter(|name| self.committed.contains_key(name))
            .collect();
        let point = if to_point && !complete.is_empty() {
            Some(complete[self.rng.gen_range(0..complete.len())].clone())
        } else {
            None
        };
        // Latest synced data: the check after the previous scenario saw the
        // standby equal to the (unchanged since) sources.
        let expected = match &point {
            Some(name) => self.committed[name].clone(),
            None => self.source_hashes(),
        };
        let resources = self.resources();
        let names: Vec<String> = resources.iter().map(|(_, n)| n.clone()).collect();
        let uris: Vec<String> = resources.iter().map(|(u, _)| u.clone()).collect();
        println!(
            "  failover to {}",
            point.as_deref().unwrap_or("the latest data")
        );
        // The primary site is lost.
        self.agents[self.primary.index()].kill9();
        let mut args = vec!["group", "failover", g.as_str()];
        if let Some(name) = &point {
            args.extend(["--rp", name.as_str()]);
        }
        if let Some(f) = &fault {
            self.arm(f);
        }
        let op = ok(&s, &args);
        let landed = fault.is_some_and(|f| self.land(&f, |w| w.op_running(standby_side, &op)));
        let done = wait_op_finished(&s, &op);
        println!(
            "  failover: {}",
            done["state"]["state"].as_str().unwrap_or("?")
        );
        if done["state"]["state"] != "succeeded" {
            self.bump("failovers interrupted");
        }
        if let Some(f) = fault.filter(|_| landed) {
            assert_eq!(
                (
                    done["state"]["state"].as_str(),
                    self.role_state(&s).1.as_str()
                ),
                (Some("failed"), "failover_failed"),
                "{}: killed the standby at {} but the failover was not interrupted: {done}",
                self.ctx(what),
                f.point
            );
            self.assert_restart_finished_op(standby_side, &self.ctx(what));
        }
        let mut retries = 0;
        loop {
            let (_, state, _) = self.role_state(&s);
            if state == "failed_over" {
                break;
            }
            retries += 1;
            assert!(
                retries <= 3,
                "{}: failover still not done after 3 retries (state {state}): {done}",
                self.ctx(what)
            );
            self.bump("failovers retried");
            args.push("--wait");
            let out = run(&s, &args);
            args.pop();
            println!("  retry {retries}: {}", text(&out).replace('\n', " | "));
        }
        let (role, state, new_primary) = self.role_state(&s);
        assert!(
            new_primary && state == "failed_over",
            "{}: after failover: role {role}, state {state}, new primary {new_primary}",
            self.ctx(what)
        );
        let out_dir = s.join("failover").join(&g);
        let got: Vec<String> = names
            .iter()
            .map(|n| hash_file(&out_dir.join(format!("{n}.raw"))))
            .collect();
        assert_eq!(
            got,
            expected,
            "{}: failover copies differ from {}",
            self.ctx(what),
            point.as_deref().unwrap_or("the latest data")
        );
        self.bump("failovers");

        // Rebuild: the old primary comes back; the failed-over group goes,
        // the primary stops and deletes its group, and protects its sources
        // again as a new group.
        self.restart(self.primary);
        let p = self.p();
        // Either order: the new primary's group may be gone or still there
        // when the old primary stops and deletes its own.
        let new_primary_first = self.rng.gen_bool(0.5);
        if new_primary_first {
            ok(&s, &["group", "delete", &g, "--wait"]);
        }
        // An old primary killed before it recorded the end of its initial
        // sync (the failover came right after the group was protected)
        // refuses stop sync until its first cycle after the restart failed
        // and ended it: retry that refusal only.
        wait_for(
            &format!("{}: stop sync on the old primary", self.ctx(what)),
            || {
                let out = run(&p, &["group", "stop", &g, "--wait"]);
                let said = text(&out);
                assert!(
                    out.status.success() || said.contains("initial full sync"),
                    "{}: stop sync on the old primary: {said}",
                    self.ctx(what)
                );
                out.status.success()
            },
        );
        ok(&p, &["group", "delete", &g, "--wait"]);
        if !new_primary_first {
            assert_eq!(
                self.role_state(&s).1,
                "failed_over",
                "{}: the old primary's delete left the new primary alone",
                self.ctx(what)
            );
            ok(&s, &["group", "delete", &g, "--wait"]);
        }
        std::fs::remove_dir_all(&out_dir).expect("removing the failover copies");
        self.generation += 1;
        self.group = format!("g{}", self.generation);
        self.committed.clear();
        self.policy_bound = false;
        self.last_fired = None;
        self.policy_seen.clear();
        self.protect(&uris);
    }
}
