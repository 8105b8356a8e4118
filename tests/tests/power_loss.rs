//! The files standby under simulated power loss: a real agent records every
//! change to its store (`ferry_e2e::power_loss`), is held at a named step
//! of the commit protocol (or with a journal batch written but not synced)
//! and SIGKILLed there; then every change no completed fsync covered is
//! rolled back, as a power cut would lose it, and the agent restarts.
//!
//! After each cut, per image of a two-image group, the standby image equals
//! by hash the last committed recovery point or the pending one, and the
//! whole group the same one; a clean sync then succeeds on its first try
//! and brings the standby to the sources; a power cut after that clean
//! sync loses nothing. Each case asserts its fault landed (the point was
//! reached before the kill) and that the layer recorded. Most cuts are the
//! worst case (every unsynced change lost); `milder_power_cuts_*` keep a
//! random part of the unsynced writes and every name change, leaving torn
//! images and undo logs for recovery to handle.
//! Needs the `failpoints` feature.
#![cfg(feature = "failpoints")]

use std::path::PathBuf;
use std::process::Child;

use ferry_agent::imagegen;
use ferry_e2e::landing::reached_line;
use ferry_e2e::{ferry, ferry_spawn, hash_file, power_loss, standby_journals, Pair};

const MIB: u64 = 1024 * 1024;
const NAMES: [&str; 2] = ["pl-a", "pl-b"];

/// A pair replicating a two-image group, its standby recording into a
/// power-loss log from its first start.
struct Group {
    pair: Pair,
    sources: Vec<PathBuf>,
    log: PathBuf,
}

impl Group {
    fn new() -> Group {
        let mut pair = Pair::new(None);
        std::fs::write(
            pair.primary_dir.join("config.toml"),
            "[transport]\nidle_timeout_secs = 2\n",
        )
        .unwrap();
        let log = pair.path("power-loss");
        let (key, value) = power_loss::env_for(&log);
        pair.standby.restart(&[(key, value.as_str())]);
        let sources: Vec<PathBuf> = NAMES
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let path = pair.path(&format!("{n}.raw"));
                imagegen::make_image(&path, (24 - 8 * i as u64) * MIB, 200 + i as u64).unwrap();
                path
            })
            .collect();
        Group { pair, sources, log }
    }

    fn sync_args(&self) -> Vec<String> {
        let mut args = vec![
            "sync".to_string(),
            "--dir".into(),
            self.pair.primary_dir.display().to_string(),
        ];
        for (name, source) in NAMES.iter().zip(&self.sources) {
            args.push(format!("file:{}", source.display()));
            args.push(self.pair.standby.target(name));
        }
        args.extend([
            "--peer".into(),
            self.pair.standby.fingerprint.clone(),
            "--json".into(),
        ]);
        args
    }

    /// One clean group sync; it must succeed on its first try.
    fn clean_sync(&self, what: &str) {
        let args = self.sync_args();
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = ferry(&refs);
        assert!(
            out.status.success(),
            "{what}: clean sync failed on its first try:\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.pair.standby.log_text()
        );
        assert_eq!(self.standby_hashes(), self.source_hashes(), "{what}");
    }

    fn spawn_sync(&self) -> Child {
        let args = self.sync_args();
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        ferry_spawn(&refs)
    }

    fn source_hashes(&self) -> Vec<Option<String>> {
        self.sources.iter().map(|s| Some(hash_file(s))).collect()
    }

    /// Hash of each standby image (`None`: no image file).
    fn standby_hashes(&self) -> Vec<Option<String>> {
        NAMES
            .iter()
            .map(|n| {
                let path = self.pair.standby.image_path(n);
                path.exists().then(|| hash_file(&path))
            })
            .collect()
    }

    fn change_sources(&self, seed: u64) {
        for (i, source) in self.sources.iter().enumerate() {
            imagegen::scattered_writes(source, 1500, seed + i as u64).unwrap();
        }
    }

    /// SIGKILLs the standby (and reaps it), cuts the power, restarts it
    /// recording again.
    fn power_cut(&mut self, env: &[(&str, &str)]) -> power_loss::Report {
        self.power_cut_with(env, power_loss::Cut::default())
    }

    /// [`Self::power_cut`] with a milder cut.
    fn power_cut_with(&mut self, env: &[(&str, &str)], cut: power_loss::Cut) -> power_loss::Report {
        self.pair.standby.kill9();
        let report = power_loss::simulate_with(&self.log, cut);
        let (key, value) = power_loss::env_for(&self.log);
        let mut env: Vec<(&str, &str)> = env.to_vec();
        env.push((key, value.as_str()));
        self.pair.standby.restart(&env);
        report
    }

    /// Restarts the standby held at `point` and starts a group sync that
    /// reaches it; returns the running sync once the point has landed.
    fn hold_at(&mut self, point: &str, failpoints: &str) -> Child {
        let committed = self.standby_hashes();
        self.power_cut(&[("FAILPOINTS", failpoints)]);
        assert_eq!(
            self.standby_hashes(),
            committed,
            "a power cut of an idle standby lost committed data"
        );
        let sync = self.spawn_sync();
        self.pair.standby.wait_for_log(&reached_line(point));
        let log = self.pair.standby.log_text();
        assert!(
            log.contains("fail point reached") && log.contains("power-loss recording on"),
            "the fault did not land at {point} with recording on:\n{log}"
        );
        sync
    }
}

/// Kills the held sync client (this test started it).
fn stop(mut sync: Child) {
    let _ = sync.kill();
    let _ = sync.wait();
}

/// Power cut at commit step `point` of the group's second sync (`first`:
/// of its first, full sync).
fn power_cut_at(point: &str, first: bool) {
    power_cut_at_with(point, first, power_loss::Cut::default());
}

/// [`power_cut_at`] with `cut` at the commit step.
fn power_cut_at_with(point: &str, first: bool, cut: power_loss::Cut) {
    let mut g = Group::new();
    let none = vec![None, None];
    let before = if first {
        none.clone()
    } else {
        g.clean_sync("initial sync");
        g.change_sources(300);
        g.standby_hashes()
    };
    let after = g.source_hashes();
    assert_ne!(before, after);
    let sync = g.hold_at(point, &format!("{point}=sleep(20000)"));
    stop(sync);
    let report = g.power_cut_with(&[], cut);
    assert!(report.records > 0, "{point}: nothing was recorded");
    if point == "standby::after-data-before-sync" && cut == power_loss::Cut::default() {
        // The applied, unsynced image writes are exactly what a cut loses.
        assert!(
            report.data_rolled_back > 0,
            "{point}: the power cut rolled no image data back: {report:?}"
        );
    }
    let now = g.standby_hashes();
    assert!(
        now == before || now == after,
        "{point}: standby is not at one group recovery point after the power cut\n\
         now {now:?}\nbefore {before:?}\nafter {after:?}\nrolled back: {report:?}"
    );
    println!(
        "{point} ({cut:?}): standby at the {} point after the cut; {report:?}",
        if now == after { "pending" } else { "committed" }
    );
    g.clean_sync(point);
    g.change_sources(400);
    g.clean_sync(point);
    g.power_cut(&[]);
    assert_eq!(
        g.standby_hashes(),
        g.source_hashes(),
        "{point}: a power cut after a clean sync lost acknowledged data"
    );
    g.change_sources(450);
    g.clean_sync(point);
}

#[test]
fn power_cut_after_intent() {
    power_cut_at("standby::after-intent", false);
}

#[test]
fn power_cut_undo_before_sync() {
    power_cut_at("standby::undo-before-sync", false);
}

#[test]
fn power_cut_after_undo_written() {
    power_cut_at("standby::after-undo-written", false);
}

#[test]
fn power_cut_after_data_before_sync() {
    power_cut_at("standby::after-data-before-sync", false);
}

#[test]
fn power_cut_after_data_before_state() {
    power_cut_at("standby::after-data-before-state", false);
}

#[test]
fn power_cut_after_state_before_cleanup() {
    power_cut_at("standby::after-state-before-cleanup", false);
}

#[test]
fn power_cut_between_images() {
    power_cut_at("standby::between-images", false);
}

#[test]
fn power_cut_after_full_rename_old() {
    power_cut_at("standby::after-full-rename-old", true);
}

#[test]
fn power_cut_after_full_rename_new() {
    power_cut_at("standby::after-full-rename-new", true);
}

/// Milder cuts (part of the unsynced writes reach the disk, in any order;
/// unsynced name changes survive, as on ext4) where they leave a torn image
/// or a torn undo log: recovery must still bring the group to one point.
#[test]
fn milder_power_cuts_mid_apply_and_mid_undo_log() {
    for (point, seed) in [
        ("standby::after-data-before-sync", 1),
        ("standby::undo-before-sync", 2),
    ] {
        let cut = power_loss::Cut {
            writeback: power_loss::Writeback::Random { seed },
            keep_names: true,
        };
        power_cut_at_with(point, false, cut);
    }
}

/// Power cut mid-transfer with a batch written to a pending epoch's journal
/// but not synced: the unsynced tail is gone, the synced prefix stays, the
/// agent resumes the epoch and the clean sync re-fetches the rest.
#[test]
fn power_cut_mid_journal() {
    let mut g = Group::new();
    g.clean_sync("initial sync");
    let committed = g.standby_hashes();
    g.change_sources(500);
    let point = "standby::batch-staged";
    let sync = g.hold_at(point, &format!("{point}=1*off->1*return(hold)"));
    stop(sync);
    g.pair.standby.kill9();
    let journals = standby_journals(&g.pair.standby.dir);
    assert!(!journals.is_empty(), "no pending journal at the kill");
    let lengths: Vec<u64> = journals
        .iter()
        .map(|j| std::fs::metadata(j).unwrap().len())
        .collect();
    let report = power_loss::simulate(&g.log);
    let cut: Vec<&PathBuf> = journals
        .iter()
        .zip(&lengths)
        .filter(|(j, len)| std::fs::metadata(j).map_or(0, |m| m.len()) < **len)
        .map(|(j, _)| j)
        .collect();
    assert!(
        !cut.is_empty(),
        "the power cut removed no unsynced journal tail: {report:?}"
    );
    println!("mid-journal: journals cut back {cut:?}; {report:?}");
    let (key, value) = power_loss::env_for(&g.log);
    g.pair.standby.restart(&[(key, value.as_str())]);
    let log = g.pair.standby.log_text();
    assert!(
        !log.contains("discarding unusable pending epoch"),
        "a journal cut at its last fsync must stay usable:\n{log}"
    );
    assert_eq!(
        g.standby_hashes(),
        committed,
        "the standby left its committed point: {report:?}"
    );
    g.clean_sync("after the mid-journal cut");
    g.power_cut(&[]);
    assert_eq!(
        g.standby_hashes(),
        g.source_hashes(),
        "a power cut after a clean sync lost acknowledged data"
    );
}
