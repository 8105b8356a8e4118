//! The data-path harness's flips at rest: a byte changed in a standby
//! image, in a standby image's `state.json`, in a pending epoch's journal,
//! behind a loop-device source, or in an RBD standby head by another
//! client; each must be detected and reported, never replicated or
//! repaired silently. Each returns whether its fault landed.

use std::os::unix::fs::FileExt;
use std::path::Path;

use ferry_e2e::lab::{pyrbd, rbd};
use ferry_e2e::landing::reached_line;
use ferry_e2e::{ferry, standby_journals};
use rand::Rng;

use super::kinds::PrimaryHold;
use super::{World, PATIENCE};

impl World {
    /// A byte of a committed standby image: `ferry verify` must report it.
    pub(super) fn flip_standby_image(&mut self, what: &str) -> bool {
        self.sync_ok(what);
        let i = self.rng.gen_range(0..self.names.len());
        let path = self.pair.standby.image_path(&self.names[i]);
        let len = std::fs::metadata(&path).unwrap().len();
        let at = self.rng.gen_range(0..len);
        let old = flip_byte(&path, at);
        let out = ferry(&[
            "verify",
            "--dir",
            &self.pair.primary_dir.display().to_string(),
            &format!("file:{}", self.sources[i].display()),
            &format!("quic://{}/{}", self.proxy.listen_addr(), self.names[i]),
            "--peer",
            &self.pair.standby.fingerprint,
        ]);
        assert!(
            !out.status.success(),
            "{}: verify did not detect a flipped byte at {at} of {}",
            self.ctx(what),
            path.display()
        );
        put_byte(&path, at, old);
        true
    }

    /// A byte of a standby image's `state.json`: the agent must refuse to
    /// start and name the file.
    pub(super) fn flip_standby_state(&mut self, what: &str) -> bool {
        self.sync_ok(what);
        let i = self.rng.gen_range(0..self.names.len());
        let state = self
            .pair
            .standby
            .image_path(&self.names[i])
            .with_extension("ferry")
            .join("state.json");
        self.kill_standby();
        let text = std::fs::read(&state).unwrap();
        let body = text.iter().position(|b| *b == b'\n').unwrap() + 1;
        let at = self.rng.gen_range(body as u64..text.len() as u64);
        let old = flip_byte(&state, at);
        let refused = self.pair.standby.start_expecting_refusal();
        assert!(
            refused.contains("state.json"),
            "{}: the refusal does not name the damaged file:\n{refused}",
            self.ctx(what)
        );
        put_byte(&state, at, old);
        self.restart_standby("");
        true
    }

    /// A byte of a pending epoch's journal, the primary held just before
    /// its Commit (every batch durable) and both sides killed. Lands when
    /// the journal existed to be flipped. Three honest outcomes: the damaged
    /// tail is cut and logged (its batches are fetched again); when a
    /// commit intent needs the damaged records, the agent refuses to start
    /// and names the journal; or the journal was no longer needed and is
    /// deleted unread — the standby's hashes prove nothing was taken from
    /// it. Never a damaged journal kept and used in silence.
    pub(super) fn flip_journal(&mut self, pending: &[String], what: &str) -> bool {
        let hold = PrimaryHold::BeforeCommit;
        let mut sync = self.spawn_sync(&[], &hold.failpoints());
        let reached = sync.wait_for_stderr(&reached_line(hold.point()), PATIENCE);
        sync.kill();
        drop(sync);
        self.kill_standby();
        let journal = standby_journals(&self.pair.standby.dir)
            .into_iter()
            .find(|j| std::fs::metadata(j).is_ok_and(|m| m.len() > 64));
        let (Some(journal), true) = (journal, reached) else {
            self.restart_standby("");
            self.assert_standby_after(false, pending, what);
            return false;
        };
        let len = std::fs::metadata(&journal).unwrap().len();
        let at = self.rng.gen_range(64..len);
        let old = flip_byte(&journal, at);
        let env = self.standby_env("");
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        match self.pair.standby.try_restart(&env) {
            Ok(()) => {
                let log = self.pair.standby.log_text();
                if journal.exists() {
                    assert!(
                        log.contains("WARN"),
                        "{}: a damaged journal was kept and not reported:\n{log}",
                        self.ctx(what)
                    );
                } else if !log.contains("WARN") {
                    println!(
                        "  damaged journal {} was no longer needed and was removed unread",
                        journal.display()
                    );
                }
            }
            Err(refusal) => {
                let name = journal.file_name().unwrap().to_string_lossy().to_string();
                assert!(
                    refusal.contains(&name) && refusal.contains("corrupt"),
                    "{}: the refusal does not name the damaged journal:\n{refusal}",
                    self.ctx(what)
                );
                println!("  agent refused its damaged journal {name}; repaired by the harness");
                put_byte(&journal, at, old);
                self.restart_standby("");
            }
        }
        self.assert_standby_after(false, pending, what);
        true
    }
    /// A byte of the first source's backing file flipped behind the loop
    /// device: refused twice as a change at rest with the standby left at
    /// its point, then replicated once accepted.
    pub(super) fn flip_source(&mut self, what: &str) -> bool {
        let Some((device, backing)) = &self.source_device else {
            return false;
        };
        let len = std::fs::metadata(backing).unwrap().len();
        let at = self.rng.gen_range(0..len);
        flip_byte(backing, at);
        device.flush_buffers();
        let before = self.standby_hashes();
        for attempt in ["first", "second"] {
            let out = self.run_sync(&[]);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success() && stderr.contains("changed at rest"),
                "{}: the {attempt} sync after a flip at {at} of the source did not refuse it as a change at rest:\n{stderr}",
                self.ctx(what)
            );
            assert_eq!(
                self.standby_hashes(),
                before,
                "{}: the standby changed after the {attempt} refusal",
                self.ctx(what)
            );
        }
        let out = self.run_sync(&["--accept-changes-at-rest"]);
        assert!(
            out.status.success(),
            "{}: the accepted sync failed:\n{}",
            self.ctx(what),
            String::from_utf8_lossy(&out.stderr)
        );
        let now = self.source_hashes();
        assert_eq!(
            self.standby_hashes(),
            now,
            "{}: the accepted change did not reach the standby",
            self.ctx(what)
        );
        self.committed.push(now);
        true
    }

    /// RBD: another client writes one byte into a standby image head. The
    /// committed snapshot stays intact (verify passes), the next point takes
    /// the byte in (the sink applies epochs in place), and `ferry verify`
    /// must then report it; the harness puts the byte back and syncs again.
    pub(super) fn flip_rbd_head(&mut self, what: &str) -> bool {
        let i = self.rng.gen_range(0..self.names.len());
        let size = std::fs::File::open(&self.sources[i])
            .and_then(|mut f| std::io::Seek::seek(&mut f, std::io::SeekFrom::End(0)))
            .unwrap();
        let at = self.rng.gen_range(0..size);
        let name = self.names[i].clone();
        pyrbd(
            "site-b",
            &name,
            &format!(
                "old = img.read({at}, 1)\nimg.write(bytes([old[0] ^ 0x5a]), {at})\nimg.flush()"
            ),
        );
        let verify = || {
            ferry(&[
                "verify",
                "--dir",
                &self.pair.primary_dir.display().to_string(),
                &format!("file:{}", self.sources[i].display()),
                &format!("quic://{}/{}", self.proxy.listen_addr(), name),
                "--peer",
                &self.pair.standby.fingerprint,
            ])
        };
        let before = verify();
        assert!(
            before.status.success(),
            "{}: the committed snapshot changed with the head:\n{}",
            self.ctx(what),
            String::from_utf8_lossy(&before.stderr)
        );
        // A cycle with no source change: the new point holds the flip.
        let out = self.run_sync(&[]);
        assert!(
            out.status.success(),
            "{}: sync after the flip failed:\n{}",
            self.ctx(what),
            String::from_utf8_lossy(&out.stderr)
        );
        let after = verify();
        assert!(
            !after.status.success(),
            "{}: verify did not report a byte flipped at {at} of the standby head {name}",
            self.ctx(what)
        );
        pyrbd(
            "site-b",
            &name,
            &format!(
                "old = img.read({at}, 1)\nimg.write(bytes([old[0] ^ 0x5a]), {at})\nimg.flush()"
            ),
        );
        true
    }
}

/// The newest `ferry-rp-<ID>` snapshot of a site-b image.
pub(super) fn newest_rbd_point(name: &str) -> Option<u64> {
    let out = rbd(
        "site-b",
        &["snap", "ls", &format!("rbd/{name}"), "--format", "json"],
    );
    let snaps: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    snaps
        .as_array()?
        .iter()
        .filter_map(|s| s["name"].as_str()?.strip_prefix("ferry-rp-")?.parse().ok())
        .max()
}

fn flip_byte(path: &Path, at: u64) -> u8 {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x5a], at).unwrap();
    f.sync_all().unwrap();
    b[0]
}

fn put_byte(path: &Path, at: u64, value: u8) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&[value], at).unwrap();
    f.sync_all().unwrap();
}
