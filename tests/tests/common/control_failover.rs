//! Unplanned failover in the control fault harness (`faults_control.rs`):
//! the primary site is lost, the standby fails over to the latest data or a
//! chosen recovery point (killed at a hold point of the failover when the
//! scenario drew a fault, see [`super::control_faults`], then retried), the
//! copies are checked; then, half of the time, the old primary comes back
//! with writes of its own (split brain) and the new primary re-protects the
//! group (a fault drawn on either side, the reprotect retried until it
//! completes; the old site's copies must then equal the new primary's
//! volumes), else the world is rebuilt as a new group.

use ferry_e2e::cli::{ok, run, text};
use ferry_e2e::hash_file;
use rand::Rng;
use std::path::{Path, PathBuf};

use super::control_faults::{Fault, On, Op};
use super::{wait_for, wait_op_finished, World};

impl World {
    pub(crate) fn failover(&mut self, to_point: bool, fault: Option<Fault>, what: &str) {
        let point = self.failover_point(to_point);
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
        let out_dir = self.move_earlier_failover_away();
        self.fail_over_the_lost_primary(point.as_deref(), fault, what);
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
        if self.rng.gen_bool(0.5) {
            let fault = Fault::draw(&mut self.rng, Op::Reprotect);
            self.reprotect(&uris, fault, what);
            return;
        }
        self.rebuild_after_failover(&uris, &out_dir, what);
    }

    /// The recovery point to fail over to (`None`: the latest data): with
    /// `to_point`, one of the complete points whose content the world
    /// recorded, drawn at random.
    fn failover_point(&mut self, to_point: bool) -> Option<String> {
        let complete: Vec<String> = self
            .rps(&self.s())
            .iter()
            .filter(|rp| rp["state"] == "complete")
            .filter_map(|rp| rp["name"].as_str().map(str::to_owned))
            .filter(|name| self.committed.contains_key(name))
            .collect();
        if to_point && !complete.is_empty() {
            Some(complete[self.rng.gen_range(0..complete.len())].clone())
        } else {
            None
        }
    }

    /// The volumes of an earlier failover of this group on this site (its
    /// sources after a reprotect, stale since a migration moved the group
    /// back) are in the way: ferry refuses to fail over onto them ("move it
    /// away first"), so the operator moves them away. Returns the directory
    /// the failover writes its volumes to.
    fn move_earlier_failover_away(&self) -> PathBuf {
        let g = &self.group;
        let s = self.s();
        let out_dir = s.join("failover").join(g);
        if out_dir.exists() {
            let moved = self.stats.get("failovers").copied().unwrap_or(0);
            let aside = s.join("failover").join(format!("{g}.moved-{moved}"));
            std::fs::rename(&out_dir, &aside).expect("moving an earlier failover's volumes away");
            println!(
                "  moved an earlier failover's volumes to {}",
                aside.display()
            );
        }
        out_dir
    }

    /// The primary site is lost: kill it and fail the group over on the
    /// standby (to `point`, or the latest data), with `fault` armed; an
    /// interrupted failover must show as failed and is retried (at most 3
    /// times) until the standby is the new primary.
    fn fail_over_the_lost_primary(
        &mut self,
        point: Option<&str>,
        fault: Option<Fault>,
        what: &str,
    ) {
        let g = self.group.clone();
        let s = self.s();
        let standby_side = self.primary.other();
        self.agents[self.primary.index()].kill9();
        let mut args = vec!["group", "failover", g.as_str()];
        if let Some(name) = point {
            args.extend(["--rp", name]);
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
    }

    /// Rebuild: the old primary comes back; the failed-over group goes, the
    /// primary stops and deletes its group, and protects its sources (`uris`)
    /// again as a new group.
    fn rebuild_after_failover(&mut self, uris: &[String], out_dir: &Path, what: &str) {
        let g = self.group.clone();
        let s = self.s();
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
        std::fs::remove_dir_all(out_dir).expect("removing the failover copies");
        self.generation += 1;
        self.group = format!("g{}", self.generation);
        self.committed.clear();
        self.policy_bound = false;
        self.last_fired = None;
        self.policy_seen.clear();
        self.protect(uris);
    }

    /// The old primary (down since the failover) had its sources written
    /// after the sites split; it comes back, and the new primary re-protects
    /// the group: from then on the new primary is the world's primary.
    fn reprotect(&mut self, old_uris: &[String], fault: Option<Fault>, what: &str) {
        let g = self.group.clone();
        for uri in old_uris {
            let path = uri.strip_prefix("file:").expect("a file: source");
            let seed = self.rng.gen();
            ferry_agent::imagegen::scattered_writes(std::path::Path::new(path), 8, seed)
                .expect("split-brain writes on the old primary");
        }
        let old_primary = self.primary;
        self.restart(old_primary);
        self.primary = old_primary.other();
        let p = self.p();
        let new_primary = self.primary;
        if let Some(f) = &fault {
            self.arm(f);
        }
        let op = ok(&p, &["group", "reprotect", &g]);
        let landed = fault.is_some_and(|f| self.land(&f, |w| w.op_running(new_primary, &op)));
        let done = wait_op_finished(&p, &op);
        println!(
            "  reprotect: {}",
            done["state"]["state"].as_str().unwrap_or("?")
        );
        if let Some(f) = fault.filter(|f| landed && f.kills()) {
            if f.on == On::Primary {
                assert_eq!(
                    (
                        done["state"]["state"].as_str(),
                        self.role_state(&p).1.as_str()
                    ),
                    (Some("failed"), "reprotect_failed"),
                    "{}: killed the new primary at {} but the reprotect was not interrupted: {done}",
                    self.ctx(what),
                    f.point
                );
                self.assert_restart_finished_op(new_primary, &self.ctx(what));
            } else {
                // The new primary's next request may find the old primary
                // restarted and go on; the old primary's interrupted
                // operation failed at its restart either way.
                self.assert_restart_finished_op(old_primary, &self.ctx(what));
            }
        }
        let mut retries = 0;
        while self.role_state(&p).1 != "syncing" {
            retries += 1;
            assert!(
                retries <= 3,
                "{}: reprotect still not done after 3 retries: {done}",
                self.ctx(what)
            );
            self.bump("reprotects retried");
            let out = run(&p, &["--json", "group", "reprotect", &g, "--wait"]);
            println!("  retry {retries}: {}", text(&out).replace('\n', " | "));
        }
        let (role, state, new) = self.role_state(&p);
        assert_eq!(
            (role.as_str(), state.as_str(), new),
            ("primary", "syncing", false),
            "{}: the new primary after the reprotect",
            self.ctx(what)
        );
        assert_eq!(
            self.standby_hashes(),
            self.source_hashes(),
            "{}: the old site's copies differ from the new primary's volumes",
            self.ctx(what)
        );
        self.bump("reprotects");
        // Earlier points are unusable on both sides now.
        self.committed.clear();
        self.policy_bound = false;
        self.last_fired = None;
        self.policy_seen.clear();
    }
}
