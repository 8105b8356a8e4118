//! Helpers for the tests that run against the two-site Ceph lab
//! (`scripts/ceph-lab.sh up`, enabled with `FERRY_CEPH_LAB=1`): the `rbd`
//! tool and python3-rbd writers on either site.
//!
//! The lab is a prerequisite in the sense of [`crate::prereq`]: lab tests
//! are `#[ignore]`d for a plain `cargo test` and start with
//! `if !lab::enabled() { return; }`, which fails the test under CI or
//! `FERRY_REQUIRE_ALL=1` (as `scripts/test.sh` runs them) when
//! `FERRY_CEPH_LAB=1` is not set.

use std::path::Path;
use std::process::{Command, Output, Stdio};

/// Whether the lab is there (`FERRY_CEPH_LAB=1`), through
/// [`crate::prereq::require`]: when it is not, panics under CI or
/// `FERRY_REQUIRE_ALL=1`, else prints why the test is skipped and returns
/// `false`.
pub fn enabled() -> bool {
    crate::prereq::require(
        std::env::var("FERRY_CEPH_LAB").as_deref() == Ok("1"),
        "the two-site Ceph lab (run `scripts/ceph-lab.sh up` as root, then set \
         FERRY_CEPH_LAB=1; or FERRY_SKIP_CEPH=1 scripts/test.sh leaves the lab tests out)",
    )
}

/// Panics with the output of `out` unless it succeeded.
pub fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `rbd --cluster SITE ARGS`, panicking on failure. `--no-progress` is added
/// except for the subcommands that reject it (`ls`, `info`, `snap ls`,
/// `snap protect`).
pub fn rbd(site: &str, args: &[&str]) -> Output {
    let rejects_no_progress = matches!(args, ["ls" | "info" | "diff" | "status", ..])
        || matches!(args, ["snap", "ls" | "protect", ..] | ["group", ..]);
    let quiet: &[&str] = if rejects_no_progress {
        &[]
    } else {
        &["--no-progress"]
    };
    let out = Command::new("rbd")
        .args(["--cluster", site])
        .args(quiet)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running rbd");
    assert_ok(&out, &format!("rbd --cluster {site} {}", args.join(" ")));
    out
}

/// Runs python3-rbd `body` with `img` open on SITE's pool `rbd` (`random`
/// is imported).
pub fn pyrbd(site: &str, image: &str, body: &str) {
    let script = format!(
        "import rados, rbd, random\n\
         c = rados.Rados(clustername='{site}', conffile='/etc/ceph/{site}.conf')\n\
         c.connect()\n\
         io = c.open_ioctx('rbd')\n\
         img = rbd.Image(io, '{image}')\n\
         {body}\n\
         img.close(); io.close(); c.shutdown()\n"
    );
    let out = Command::new("/usr/bin/python3")
        .args(["-c", &script])
        .output()
        .expect("running python3");
    assert_ok(&out, "python3-rbd");
}

/// BLAKE3 of an image or snapshot (`POOL/IMAGE[@SNAP]`) on `site`, through
/// `rbd export` into `scratch`.
pub fn export_hash(scratch: &Path, site: &str, spec: &str) -> String {
    let file = scratch.join("export.raw");
    let _ = std::fs::remove_file(&file);
    rbd(site, &["export", spec, &file.display().to_string()]);
    let hash = crate::hash_file(&file);
    let _ = std::fs::remove_file(&file);
    hash
}

/// On drop, removes every image of pool `rbd` whose name contains `mark`,
/// on both sites, with its snapshots: images that do not start with
/// `parents` (clones, re-protected copies, migration volumes) before those
/// that do, in two rounds, so children go before their parents.
pub struct Cleanup {
    /// What the test's image names contain.
    pub mark: String,
    /// How the test's source images (the parents) start.
    pub parents: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for _round in 0..2 {
            for site in ["site-a", "site-b"] {
                let Ok(out) = Command::new("rbd")
                    .args(["--cluster", site, "ls", "rbd"])
                    .output()
                else {
                    continue;
                };
                let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter(|l| l.contains(self.mark.as_str()))
                    .map(str::to_owned)
                    .collect();
                names.sort_by_key(|n| n.starts_with(self.parents.as_str()));
                for name in names {
                    let spec = format!("rbd/{name}");
                    for args in [["snap", "purge", spec.as_str()].as_slice(), &["rm", &spec]] {
                        let _ = Command::new("rbd")
                            .args(["--cluster", site, "--no-progress"])
                            .args(args)
                            .output();
                    }
                }
            }
        }
    }
}

/// Removes every object of RADOS namespace `namespace` of pool `rbd` on
/// `site` (a test's shared control and standby state), ignoring failures:
/// for cleanups on drop.
pub fn remove_namespace_objects(site: &str, namespace: &str) {
    let rados = |args: &[&str]| {
        Command::new("rados")
            .args(["--cluster", site, "-p", "rbd", "-N", namespace])
            .args(args)
            .output()
    };
    let Ok(listed) = rados(&["ls"]) else {
        return;
    };
    for oid in String::from_utf8_lossy(&listed.stdout).lines() {
        let _ = rados(&["rm", oid]);
    }
}
