//! Metrics of an RBD group against the two-site Ceph lab (`#[ignore]`d;
//! `FERRY_CEPH_LAB=1`, as `scripts/test.sh` runs them): the per-image series
//! carry the `pool`, `namespace`, `image` labels ceph-mgr puts on
//! `ceph_rbd_*` — the source image on site A, the standby image (as `rbd ls`
//! names it) in the standby pool on site B — and the standby exports the
//! time of its newest complete recovery point per image and group.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ferry_e2e::cli::{ok, run, text};
use ferry_e2e::lab::{self, pyrbd, rbd};
use ferry_e2e::{init_agent, Agent};

/// `GET /metrics` of the agent in `dir`: (name{labels} → value).
fn scrape(dir: &Path) -> (String, HashMap<String, f64>) {
    let addr = std::fs::read_to_string(dir.join("metrics.addr")).unwrap();
    let mut conn = TcpStream::connect(addr.trim()).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).unwrap();
    let (_, body) = response.split_once("\r\n\r\n").expect("HTTP response");
    let series = body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect();
    (body.to_owned(), series)
}

/// Removes the test's images on both sites.
struct Cleanup(Vec<(&'static str, String)>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for (site, spec) in &self.0 {
            for args in [["snap", "purge", spec.as_str()].as_slice(), &["rm", spec]] {
                let _ = Command::new("rbd")
                    .args(["--cluster", site, "--no-progress"])
                    .args(args)
                    .output();
            }
        }
    }
}

#[test]
#[ignore = "needs the two-site Ceph lab; scripts/test.sh runs it"]
fn lab_rbd_metrics_carry_ceph_mgr_labels_on_both_sites() {
    if !lab::enabled() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (tmp.path().join("a"), tmp.path().join("b"));
    let (a_fp, b_fp) = (init_agent(&a_dir), init_agent(&b_dir));
    let metrics = "[metrics]\nlisten = \"127.0.0.1:0\"\n";
    std::fs::write(
        a_dir.join("config.toml"),
        format!("{metrics}[ceph]\ncluster = \"site-a\"\n"),
    )
    .unwrap();
    std::fs::write(
        b_dir.join("config.toml"),
        format!("{metrics}[standby]\nbackend = \"rbd\"\nrbd_pool = \"rbd\"\n[ceph]\ncluster = \"site-b\"\n"),
    )
    .unwrap();
    let _a = Agent::start(&a_dir, &a_fp, &[]);
    let _b = Agent::start(&b_dir, &b_fp, &[]);
    let out = run(&b_dir, &["service", "key"]);
    assert!(out.status.success(), "{}", text(&out));
    let key = String::from_utf8(out.stdout).unwrap();
    ok(&a_dir, &["service", "create", "--key", key.trim()]);

    let group = format!("m{}", std::process::id());
    let image = format!("ferry-t-metrics-{}", std::process::id());
    let mut cleanup = Cleanup(vec![("site-a", format!("rbd/{image}"))]);
    rbd(
        "site-a",
        &["create", "--size", "64", &format!("rbd/{image}")],
    );
    pyrbd(
        "site-a",
        &image,
        "img.write(random.Random(1).randbytes(1 << 20), 0)",
    );
    ok(&a_dir, &["group", "create", &group, "--wait"]);
    ok(
        &a_dir,
        &[
            "group",
            "add",
            &group,
            &format!("rbd:rbd/{image}"),
            "--wait",
        ],
    );
    let show = ok(&a_dir, &["group", "show", &group]);
    let standby = show["resources"][0]["standby_target"]
        .as_str()
        .unwrap()
        .to_owned();
    cleanup.0.push(("site-b", format!("rbd/{standby}")));
    ok(&a_dir, &["group", "start", &group, "--wait"]);
    let deadline = Instant::now() + Duration::from_secs(120);
    while ok(&a_dir, &["group", "show", &group])["progress"]["cycles"]
        .as_u64()
        .unwrap_or(0)
        < 1
    {
        assert!(Instant::now() < deadline, "no replication cycle");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Site A: the source image, as ceph-mgr labels it on site-a.
    let (a_text, a) = scrape(&a_dir);
    let src = format!("group=\"{group}\",pool=\"rbd\",namespace=\"\",image=\"{image}\"");
    for name in ["ferry_read_bytes_total", "ferry_sent_bytes_total"] {
        let key = format!("{name}{{{src}}}");
        assert!(
            a.get(&key).is_some_and(|v| *v > 0.0),
            "no {key} in:\n{a_text}"
        );
    }
    let info = format!(
        "ferry_image_info{{group=\"{group}\",role=\"primary\",pool=\"rbd\",namespace=\"\",image=\"{image}\",standby_image=\"{standby}\"}}"
    );
    assert_eq!(a.get(&info), Some(&1.0), "no {info} in:\n{a_text}");

    // Site B: the standby image, by the name `rbd ls` shows in its pool.
    let listed = String::from_utf8(rbd("site-b", &["ls", "rbd"]).stdout).unwrap();
    assert!(
        listed.lines().any(|l| l == standby),
        "{standby} not in {listed}"
    );
    let (b_text, b) = scrape(&b_dir);
    let dst = format!("group=\"{group}\",pool=\"rbd\",namespace=\"\",image=\"{standby}\"");
    let point = format!("ferry_standby_recovery_point_timestamp_seconds{{{dst}}}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let at = *b
        .get(&point)
        .unwrap_or_else(|| panic!("no {point} in:\n{b_text}"));
    assert!(at > now - 600.0 && at <= now + 1.0, "{at} vs {now}");
    let group_point =
        format!("ferry_standby_group_recovery_point_timestamp_seconds{{group=\"{group}\"}}");
    assert_eq!(b.get(&group_point), Some(&at), "{b_text}");
    let info = format!(
        "ferry_image_info{{group=\"{group}\",role=\"standby\",pool=\"rbd\",namespace=\"\",image=\"{standby}\",standby_image=\"{standby}\"}}"
    );
    assert_eq!(b.get(&info), Some(&1.0), "no {info} in:\n{b_text}");
    ok(&a_dir, &["group", "stop", &group, "--wait"]);
    ok(&a_dir, &["group", "delete", &group, "--wait"]);
}
