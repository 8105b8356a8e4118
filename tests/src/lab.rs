//! Helpers for the tests that run against the two-site Ceph lab
//! (`scripts/ceph-lab.sh up`, enabled with `FERRY_CEPH_LAB=1`): the `rbd`
//! tool and python3-rbd writers on either site.

use std::process::{Command, Output, Stdio};

/// Whether the lab tests are enabled; prints why a test is skipped if not.
pub fn enabled() -> bool {
    if std::env::var("FERRY_CEPH_LAB").as_deref() == Ok("1") {
        true
    } else {
        println!("skipped: set FERRY_CEPH_LAB=1 with scripts/ceph-lab.sh up");
        false
    }
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
