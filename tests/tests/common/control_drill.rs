//! DR drills in the control fault harness (`faults_control.rs`): the
//! standby drills at the latest data or a chosen recovery point while the
//! primary keeps writing and replicating, with the standby killed at a hold
//! point of the drill's start or of its end when the scenario drew a fault
//! (see [`super::control_faults`]); the interrupted step is retried to
//! completion. The drill volumes must hold the point, the standby must
//! catch up with the sources during the drill (replication goes on, and
//! the drill's own writes never reach the copies), and `--end` must leave
//! no drill volume.

use std::path::PathBuf;

use ferry_agent::imagegen;
use ferry_e2e::cli::{ok, run, text};
use ferry_e2e::hash_file;
use rand::Rng;

use super::control_faults::Fault;
use super::{wait_for, wait_op_finished, World};

impl World {
    pub(crate) fn drill(&mut self, to_point: bool, fault: Option<Fault>, what: &str) {
        let g = self.group.clone();
        let s = self.s();
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
        // Latest data: the check after the previous scenario saw the
        // standby equal to the (unchanged since) sources.
        let expected = match &point {
            Some(name) => self.committed[name].clone(),
            None => self.source_hashes(),
        };
        println!(
            "  drill at {}",
            point.as_deref().unwrap_or("the latest data")
        );
        let mut args = vec!["group", "drill", g.as_str()];
        if let Some(name) = &point {
            args.extend(["--rp", name.as_str()]);
        }
        let at = |p: &str| fault.filter(|f| f.point == p);
        self.drill_step(&args, at("drill::after-volume"), "starting", what);
        let g_json = self.group_json(&s);
        assert_eq!(
            g_json["drill"]["phase"],
            "active",
            "{}: {g_json}",
            self.ctx(what)
        );
        let vols: Vec<PathBuf> = g_json["drill"]["volumes"]
            .as_array()
            .expect("drill volumes")
            .iter()
            .map(|v| PathBuf::from(v["volume"].as_str().unwrap_or("?")))
            .collect();
        let got: Vec<String> = vols.iter().map(|v| hash_file(v)).collect();
        assert_eq!(
            got,
            expected,
            "{}: drill volumes differ from {}",
            self.ctx(what),
            point.as_deref().unwrap_or("the latest data")
        );
        // Replication goes on during the drill, and what is written to a
        // drill volume never reaches the standby copies.
        let seed = self.rng.gen();
        imagegen::scattered_writes(&vols[0], 8, seed).expect("writing a drill volume");
        self.write_sources();
        let want = self.source_hashes();
        wait_for(
            &format!(
                "{}: the standby catching up during the drill",
                self.ctx(what)
            ),
            || self.standby_hashes() == want,
        );
        args.truncate(3);
        args.push("--end");
        self.drill_step(&args, at("drill::after-remove"), "ending", what);
        let g_json = self.group_json(&s);
        assert!(g_json["drill"].is_null(), "{}: {g_json}", self.ctx(what));
        for v in &vols {
            assert!(!v.exists(), "{}: {} left", self.ctx(what), v.display());
        }
        self.bump("drills");
    }

    /// Runs one drill step (`args`: start or `--end`), with `fault` landed
    /// in it if drawn (the step then fails, its drill left `phase`), and
    /// retries it until it is done.
    fn drill_step(&mut self, args: &[&str], fault: Option<Fault>, phase: &str, what: &str) {
        let s = self.s();
        let standby_side = self.primary.other();
        if let Some(f) = &fault {
            self.arm(f);
        }
        let op = ok(&s, args);
        let landed = fault.is_some_and(|f| self.land(&f, |w| w.op_running(standby_side, &op)));
        let done = wait_op_finished(&s, &op);
        println!(
            "  {args:?}: {}",
            done["state"]["state"].as_str().unwrap_or("?")
        );
        if let Some(f) = fault.filter(|_| landed) {
            let g_json = self.group_json(&s);
            assert_eq!(
                (done["state"]["state"].as_str(), g_json["drill"]["phase"].as_str()),
                (Some("failed"), Some(phase)),
                "{}: killed the standby at {} but the drill step was not interrupted: {done} {g_json}",
                self.ctx(what),
                f.point
            );
            self.assert_restart_finished_op(standby_side, &self.ctx(what));
        }
        let mut retries = 0;
        while ok(&s, &["op", &op["operation"]["id"].to_string()])["state"]["state"] != "succeeded" {
            retries += 1;
            assert!(
                retries <= 3,
                "{}: {args:?} still not done after 3 retries",
                self.ctx(what)
            );
            self.bump("drill steps retried");
            let mut again = args.to_vec();
            again.push("--wait");
            let out = run(&s, &again);
            println!("  retry {retries}: {}", text(&out).replace('\n', " | "));
            if out.status.success() {
                break;
            }
        }
    }
}
