//! End-to-end tests of ferry as a service: the systemd units pass
//! `systemd-analyze verify`; a real `ferry-agent` speaks the sd_notify
//! protocol on a real NOTIFY_SOCKET (READY after its listeners are bound,
//! WATCHDOG pings, RELOADING on SIGHUP, STOPPING on SIGTERM, the watchdog
//! withheld while unhealthy); the Prometheus endpoint after a real
//! replication between two agents; JSON logs with structured fields and no
//! secrets; SIGHUP reloads the configuration; completions and man pages;
//! `init --if-missing`.
//!
//! The `systemd-analyze verify` test is `#[ignore]`d for a plain `cargo
//! test` (it needs the tool); `scripts/test.sh` runs it, and under CI or
//! `FERRY_REQUIRE_ALL=1` a missing `systemd-analyze` fails it.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_agent::imagegen;
use ferry_e2e::cli::{ok, text};
use ferry_e2e::prereq::{require, tool_present};
use ferry_e2e::{bin, ferry, init_agent, Agent};
use serde_json::Value;

const MIB: u64 = 1024 * 1024;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

// ------------------------------------------------------------ unit files

#[test]
#[ignore = "needs systemd-analyze; scripts/test.sh runs it"]
fn unit_files_pass_systemd_analyze_verify() {
    if !require(
        tool_present("systemd-analyze"),
        "systemd-analyze (`apt-get install systemd`; scripts/test.sh installs it)",
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let agent = bin("ferry-agent");
    // verify checks that ExecStart's binary exists: point it at the built one.
    for unit in ["ferry-agent.service", "ferry-agent@.service"] {
        let source = repo_root().join("contrib/systemd").join(unit);
        let text = std::fs::read_to_string(&source).unwrap();
        for key in [
            "Type=notify",
            "WatchdogSec=",
            "ProtectSystem=strict",
            "NoNewPrivileges=yes",
            "User=ferry",
            "ExecReload=/bin/kill -HUP $MAINPID",
        ] {
            assert!(text.contains(key), "{unit} lacks {key}");
        }
        let local = text.replace("/usr/bin/ferry-agent", &agent.display().to_string());
        std::fs::write(tmp.path().join(unit), &local).unwrap();
    }
    let postinst = std::fs::read_to_string(repo_root().join("contrib/debian/postinst")).unwrap();
    assert!(
        postinst.contains("adduser --quiet ferry ceph"),
        "ferry joins group ceph"
    );
    std::fs::copy(
        tmp.path().join("ferry-agent@.service"),
        tmp.path().join("ferry-agent@site-a.service"),
    )
    .unwrap();
    let units = [
        tmp.path().join("ferry-agent.service"),
        tmp.path().join("ferry-agent@site-a.service"),
    ];
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&units)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("ferry-agent"),
        "systemd-analyze complains about the units:\n{stderr}"
    );
    // Hardening: systemd's own exposure score (0 best, 10 worst).
    for unit in &units {
        let out = Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--no-pager"])
            .arg(unit)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let score: f64 = stdout
            .lines()
            .find_map(|l| l.split("Overall exposure level for ").nth(1))
            .and_then(|rest| rest.split(':').nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no exposure score in:\n{}", text(&out)));
        println!("{}: exposure {score}", unit.display());
        assert!(score <= 2.5, "{} exposure {score} > 2.5", unit.display());
    }
}

// ------------------------------------------------------------ sd_notify

/// A NOTIFY_SOCKET as systemd provides it: a unix datagram socket.
struct NotifySocket {
    _dir: tempfile::TempDir,
    path: PathBuf,
    socket: UnixDatagram,
    seen: Vec<String>,
}

impl NotifySocket {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Self {
            _dir: dir,
            path,
            socket,
            seen: Vec::new(),
        }
    }

    /// Waits (30 s at most) for a message containing `line`; returns it.
    fn wait_for(&mut self, line: &str, child: &mut Child) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut buf = vec![0u8; 4096];
        loop {
            match self.socket.recv(&mut buf) {
                Ok(n) => {
                    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                    self.seen.push(msg.clone());
                    if msg.lines().any(|l| l == line) {
                        return msg;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("notify socket: {e}"),
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "ferry-agent exited ({status}) before sending {line}; got {:?}",
                    self.seen
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {line} within 30 s; got {:?}",
                self.seen
            );
        }
    }

    fn count(&self, line: &str) -> usize {
        self.seen
            .iter()
            .filter(|m| m.lines().any(|l| l == line))
            .count()
    }
}

/// Starts `ferry-agent run` as systemd would: NOTIFY_SOCKET, and
/// WATCHDOG_USEC/WATCHDOG_PID (the pid is the agent's own: `exec` keeps the
/// shell's).
fn spawn_notified(dir: &Path, notify: &NotifySocket, env: &[(&str, &str)]) -> Child {
    let log = std::fs::File::create(dir.join("agent.log")).unwrap();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("WATCHDOG_PID=$$ exec \"$0\" \"$@\"")
        .arg(bin("ferry-agent"))
        .args(["run", "--dir"])
        .arg(dir)
        .args(["--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0"])
        .env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", "400000")
        .env("RUST_LOG", "info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap()
}

fn signal(child: &Child, sig: i32) {
    let out = Command::new("kill")
        .args([format!("-{sig}"), child.id().to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "agent did not exit within 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn agent_reports_ready_watchdog_reload_and_stop_on_notify_socket() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    init_agent(&dir);
    std::fs::write(
        dir.join("config.toml"),
        "[metrics]\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let mut notify = NotifySocket::new();
    let mut child = spawn_notified(&dir, &notify, &[]);
    let ready = notify.wait_for("READY=1", &mut child);
    assert_eq!(
        notify.seen.len(),
        1,
        "READY is the first message: {:?}",
        notify.seen
    );
    assert!(ready.contains("STATUS="), "{ready}");
    // Ready means every listener is bound and the store open.
    for file in ["api.addr", "metrics.addr", "control.db"] {
        assert!(dir.join(file).exists(), "{file} missing at READY");
    }
    notify.wait_for("WATCHDOG=1", &mut child);
    notify.wait_for("WATCHDOG=1", &mut child);
    assert!(notify.count("WATCHDOG=1") >= 2);

    signal(&child, libc::SIGHUP);
    notify.wait_for("RELOADING=1", &mut child);
    let reloading = notify.seen.last().unwrap().clone();
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    let readies = notify.count("READY=1");
    notify.wait_for("READY=1", &mut child);
    assert_eq!(notify.count("READY=1"), readies + 1);

    signal(&child, libc::SIGTERM);
    notify.wait_for("STOPPING=1", &mut child);
    let status = wait_exit(&mut child);
    assert!(status.success(), "agent exited with {status}");
}

#[cfg(feature = "failpoints")]
#[test]
fn unhealthy_agent_withholds_the_watchdog_ping() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    init_agent(&dir);
    let mut notify = NotifySocket::new();
    let mut child = spawn_notified(&dir, &notify, &[("FAILPOINTS", "agent-unhealthy=return")]);
    notify.wait_for("READY=1", &mut child);
    let status = notify.wait_for(
        "STATUS=unhealthy: declared unhealthy by fail point agent-unhealthy; watchdog withheld",
        &mut child,
    );
    assert!(!status.contains("WATCHDOG=1"), "{status}");
    assert_eq!(
        notify.count("WATCHDOG=1"),
        0,
        "an unhealthy agent never pings: {:?}",
        notify.seen
    );
    signal(&child, libc::SIGTERM);
    notify.wait_for("STOPPING=1", &mut child);
    assert!(wait_exit(&mut child).success());
}

#[test]
fn journald_format_starts_with_or_without_a_journal() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    init_agent(&dir);
    std::fs::write(dir.join("config.toml"), "[log]\nformat = \"journald\"\n").unwrap();
    let mut notify = NotifySocket::new();
    let mut child = spawn_notified(&dir, &notify, &[]);
    notify.wait_for("READY=1", &mut child);
    signal(&child, libc::SIGTERM);
    notify.wait_for("STOPPING=1", &mut child);
    assert!(wait_exit(&mut child).success());
    let log = std::fs::read_to_string(dir.join("agent.log")).unwrap();
    if Path::new("/run/systemd/journal/socket").exists() {
        // Events went to the journal, not to stderr.
        assert!(!log.contains("ferry-agent ready"), "{log}");
    } else {
        assert!(
            log.contains("no journal socket; logging text to stderr"),
            "{log}"
        );
        assert!(log.contains("ferry-agent ready"), "{log}");
    }
}

// ------------------------------------------------------------ two sites

struct Sites {
    tmp: tempfile::TempDir,
    a: Agent,
    b: Agent,
    key: String,
}

/// Two agents with `config` each, paired; g1 protects one 8 MiB image and
/// has completed at least one replication cycle.
fn replicating(config: &str) -> Sites {
    let tmp = tempfile::tempdir().unwrap();
    let a_dir = tmp.path().join("a");
    let b_dir = tmp.path().join("b");
    let a_fp = init_agent(&a_dir);
    let b_fp = init_agent(&b_dir);
    std::fs::write(a_dir.join("config.toml"), config).unwrap();
    std::fs::write(b_dir.join("config.toml"), config).unwrap();
    let a = Agent::start(&a_dir, &a_fp, &[]);
    let b = Agent::start(&b_dir, &b_fp, &[]);
    let d = b_dir.display().to_string();
    let out = ferry(&["--dir", &d, "service", "key"]);
    assert!(out.status.success(), "{}", text(&out));
    let key = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    ok(&a_dir, &["service", "create", "--key", &key]);
    let image = tmp.path().join("vm1.raw");
    imagegen::make_image(&image, 8 * MIB, 7).unwrap();
    let uri = format!("file:{}", image.display());
    ok(&a_dir, &["group", "create", "g1", "--wait"]);
    ok(&a_dir, &["group", "add", "g1", &uri, "--wait"]);
    ok(&a_dir, &["group", "start", "g1", "--wait"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let show = ok(&a_dir, &["group", "show", "g1"]);
        if show["progress"]["cycles"].as_u64().unwrap_or(0) >= 1 {
            break;
        }
        assert!(Instant::now() < deadline, "no replication cycle: {show}");
        std::thread::sleep(Duration::from_millis(100));
    }
    Sites { tmp, a, b, key }
}

/// GET /metrics from the address in DIR/metrics.addr: (name{labels} → value).
fn scrape(dir: &Path) -> (String, HashMap<String, f64>) {
    let addr = std::fs::read_to_string(dir.join("metrics.addr")).unwrap();
    let mut conn = TcpStream::connect(addr.trim()).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    let mut series = HashMap::new();
    for line in body.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (name, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let base = name.split('{').next().unwrap();
        assert!(
            base.starts_with("ferry_")
                && base
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "not a Prometheus name: {line:?}"
        );
        series.insert(name.to_owned(), value);
    }
    (body.to_owned(), series)
}

/// Every series the Grafana dashboard queries is one the agents export
/// (`a_text`, `b_text`: both sites' scrapes); it queries at least 10.
fn assert_the_dashboard_queries_only_exported_series(a_text: &str, b_text: &str) {
    let dashboard =
        std::fs::read_to_string(repo_root().join("contrib/grafana/ferry.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&dashboard).unwrap();
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if let Some(name) = word.strip_prefix("ferry_") {
                    let family = format!("ferry_{}", name.strip_suffix("_total").unwrap_or(name));
                    let declared = format!("# TYPE {family} ");
                    assert!(
                        a_text.contains(&declared) || b_text.contains(&declared),
                        "the dashboard queries {word}, which no agent exports"
                    );
                    queried += 1;
                }
            }
        }
    }
    assert!(queried >= 10, "{queried} series queried");
}

#[test]
fn metrics_endpoint_reports_a_real_replication() {
    let s = replicating("[metrics]\nlisten = \"127.0.0.1:0\"\n");
    // A policy whose 00:00 UTC slot has passed today: it fires at once, and
    // the slot and its recovery point show until both are the same slot.
    let d = &s.a.dir;
    ok(
        d,
        &[
            "policy",
            "create",
            "nightly",
            "--schedule",
            "daily 00:00",
            "--tz",
            "UTC",
            "--from",
            "2020-01-01T00:00:00Z",
        ],
    );
    ok(d, &["policy", "bind", "g1", "nightly", "--retention", "2"]);
    let slot_key = "ferry_policy_slot_timestamp_seconds{group=\"g1\"}";
    let point_key = "ferry_policy_recovery_point_timestamp_seconds{group=\"g1\"}";
    let deadline = Instant::now() + Duration::from_secs(60);
    let (a_text, a) = loop {
        let (text, series) = scrape(d);
        let slot = series.get(slot_key).copied().unwrap_or(0.0);
        if slot > 0.0 && series.get(point_key) == Some(&slot) {
            break (text, series);
        }
        assert!(
            Instant::now() < deadline,
            "the policy slot never got its point:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let slot = a[slot_key];
    assert!(
        slot <= now_s && slot > now_s - 86_400.0,
        "today's 00:00 UTC: {slot}"
    );
    let get = |m: &HashMap<String, f64>, text: &str, key: &str| -> f64 {
        *m.get(key)
            .unwrap_or_else(|| panic!("no series {key} in:\n{text}"))
    };
    // Per-image series carry ceph-mgr's labels (a file: no pool or namespace).
    let img = "group=\"g1\",pool=\"\",namespace=\"\",image=\"g1-vm1\"";
    assert!(get(&a, &a_text, &format!("ferry_read_bytes_total{{{img}}}")) >= (8 * MIB) as f64);
    assert!(get(&a, &a_text, &format!("ferry_sent_bytes_total{{{img}}}")) > 0.0);
    assert!(get(&a, &a_text, &format!("ferry_extents_sent_total{{{img}}}")) >= 1.0);
    assert!(get(&a, &a_text, &format!("ferry_compression_ratio{{{img}}}")) > 0.0);
    assert!(
        get(
            &a,
            &a_text,
            "ferry_cycles_total{group=\"g1\",result=\"ok\"}"
        ) >= 1.0
    );
    assert!(get(&a, &a_text, "ferry_rpo_lag_seconds{group=\"g1\"}") >= 0.0);
    assert_eq!(
        get(&a, &a_text, "ferry_group_replicating{group=\"g1\"}"),
        1.0
    );
    assert!(get(&a, &a_text, &format!("ferry_quic_rtt_seconds{{{img}}}")) > 0.0);
    assert!(get(&a, &a_text, &format!("ferry_quic_cwnd_bytes{{{img}}}")) > 0.0);
    assert!(a.contains_key(&format!("ferry_quic_lost_packets{{{img}}}")));
    assert!(a.contains_key(&format!("ferry_remaining_bytes{{{img}}}")));
    assert!(a.contains_key("ferry_recovery_points{group=\"g1\"}"));
    assert!(get(&a, &a_text, "ferry_last_recovery_point{group=\"g1\"}") > 0.0);
    // The standby side counts what it applied.
    let (b_text, b) = scrape(&s.b.dir);
    assert!(get(&b, &b_text, "ferry_applied_bytes_total") > 0.0);
    assert!(get(&b, &b_text, "ferry_standby_commits_total") >= 1.0);
    assert!(get(&b, &b_text, "ferry_standby_extents_total") >= 1.0);
    assert!(get(&b, &b_text, "ferry_standby_received_bytes_total") > 0.0);
    // The standby tells, without the primary, how old its newest complete
    // recovery point is, per image and for the group (the failover point).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let image_point = get(
        &b,
        &b_text,
        &format!("ferry_standby_recovery_point_timestamp_seconds{{{img}}}"),
    );
    let group_point = get(
        &b,
        &b_text,
        "ferry_standby_group_recovery_point_timestamp_seconds{group=\"g1\"}",
    );
    assert!(
        image_point > now - 3600.0 && image_point <= now + 1.0,
        "{image_point} vs {now}"
    );
    assert_eq!(
        group_point, image_point,
        "one image: the group's point is the image's"
    );
    // Nothing is written now: the primary's idle checks confirm to the
    // standby that it still holds every write, so its view of the RPO
    // moves past the point's creation time.
    let holds_key = "ferry_standby_holds_writes_before_timestamp_seconds{group=\"g1\"}";
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (text, series) = scrape(&s.b.dir);
        let holds = series.get(holds_key).copied().unwrap_or(0.0);
        if holds > group_point {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no idle check confirmed past {group_point}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for (site, text) in [("primary", &a_text), ("standby", &b_text)] {
        let info = format!(
            "ferry_image_info{{group=\"g1\",role=\"{site}\",pool=\"\",namespace=\"\",image=\"g1-vm1\",standby_image=\"g1-vm1\"}} 1"
        );
        assert!(text.contains(&info), "no {info} in:\n{text}");
    }
    assert!(
        a_text.contains("# TYPE ferry_read_bytes counter"),
        "{a_text}"
    );
    assert_the_dashboard_queries_only_exported_series(&a_text, &b_text);
}

#[test]
fn json_logs_carry_structured_fields_and_no_secrets() {
    let mut s = replicating("[log]\nformat = \"json\"\n");
    s.a.stop();
    s.b.stop();
    let secret = ferry_agent::orchestrator::ServiceKey::decode(&s.key)
        .unwrap()
        .secret;
    let tokens: Vec<String> = [&s.a.dir, &s.b.dir]
        .iter()
        .map(|d| {
            std::fs::read_to_string(d.join("api.token"))
                .unwrap()
                .trim()
                .to_owned()
        })
        .collect();
    let mut events = Vec::new();
    for dir in [&s.a.dir, &s.b.dir] {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if !path
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("agent-")
            {
                continue;
            }
            let log = std::fs::read_to_string(&path).unwrap();
            for secret in tokens.iter().chain([&secret, &s.key]) {
                assert!(!secret.is_empty());
                assert!(
                    !log.contains(secret.as_str()),
                    "a secret is in {}",
                    path.display()
                );
            }
            for line in log.lines() {
                let event: Value =
                    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                assert!(
                    event["level"].is_string() && event["timestamp"].is_string(),
                    "{line}"
                );
                events.push(event);
            }
        }
    }
    let find = |message: &str| {
        events
            .iter()
            .find(|e| e["fields"]["message"] == message)
            .unwrap_or_else(|| panic!("no {message:?} event in {} events", events.len()))
    };
    assert_eq!(find("replication cycle committed")["fields"]["group"], "g1");
    let receiving = find("receiving epoch");
    assert_eq!(receiving["fields"]["image"], "g1-vm1");
    assert!(receiving["fields"]["epoch"].is_string() || receiving["fields"]["epoch"].is_number());
    let connected = find("primary connected");
    assert!(
        connected["fields"]["peer"].as_str().unwrap_or("").len() >= 64,
        "{connected}"
    );
    let _ = &s.tmp;
}

/// Waits (60 s at most) until g1's running cycle on `dir` has sent data.
fn wait_mid_transfer(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let show = ok(dir, &["group", "show", "g1"]);
        let sent = show["progress"]["resources"][0]["bytes_sent"]
            .as_u64()
            .unwrap_or(0);
        let remaining = show["progress"]["resources"][0]["bytes_remaining"]
            .as_u64()
            .unwrap_or(0);
        if sent > 0 && remaining > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "no transfer in progress: {show}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_mid_transfer_exits_cleanly_and_loses_nothing() {
    // A send limit stretches each cycle so a SIGTERM lands mid-transfer.
    let mut s = replicating("[qos]\nsend_limit = \"8MB\"\n");
    let source = s.tmp.path().join("vm1.raw");
    let standby_copy = s.b.image_path("g1-vm1");
    let converge = |s: &Sites, name: &str| {
        ok(&s.a.dir, &["rp", "create", "g1", "--name", name, "--wait"]);
        assert_eq!(
            ferry_e2e::hash_file(&source),
            ferry_e2e::hash_file(&standby_copy),
            "standby copy differs from the source after {name}"
        );
    };
    // The standby stops while batches arrive.
    imagegen::make_image(&source, 24 * MIB, 8).unwrap();
    wait_mid_transfer(&s.a.dir);
    let status = s.b.terminate().expect("standby exits after SIGTERM");
    assert!(status.success(), "standby exited with {status}");
    assert!(s.b.log_text().contains("shutting down"));
    s.b.restart(&[]);
    converge(&s, "after-standby-stop");
    // The primary stops while it sends.
    imagegen::make_image(&source, 24 * MIB, 9).unwrap();
    wait_mid_transfer(&s.a.dir);
    let status = s.a.terminate().expect("primary exits after SIGTERM");
    assert!(status.success(), "primary exited with {status}");
    s.a.restart(&[]);
    converge(&s, "after-primary-stop");
}

#[test]
fn sighup_reloads_the_configuration_and_keeps_it_when_broken() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    let fp = init_agent(&dir);
    let agent = Agent::start(&dir, &fp, &[]);
    std::fs::write(dir.join("config.toml"), "[qos]\nreceive_limit = \"3MB\"\n").unwrap();
    agent.signal(libc::SIGHUP);
    let wait_log = |needle: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !agent.log_text().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in:\n{}",
                agent.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // "3MB" is 3 MiB (K/M/G are powers of 1024, as ferry prints them).
    wait_log("receive_limit=Some(3145728)");
    std::fs::write(dir.join("config.toml"), "[qos]\nreceive_limit = \"fast\"\n").unwrap();
    agent.signal(libc::SIGHUP);
    wait_log("configuration reload failed; keeping the old settings");
    // Still serving.
    let d = dir.display().to_string();
    let out = ferry(&["--dir", &d, "status", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
}

// ------------------------------------------------------------ packaging

#[test]
fn completions_and_man_pages_come_from_the_clap_definitions() {
    let tmp = tempfile::tempdir().unwrap();
    for binary in ["ferry", "ferry-agent"] {
        for shell in ["bash", "zsh", "fish"] {
            let out = Command::new(bin(binary))
                .args(["gen-completions", shell])
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", text(&out));
            let script = String::from_utf8(out.stdout).unwrap();
            let sub = if binary == "ferry" { "sync" } else { "restore" };
            assert!(script.contains(sub), "{binary} {shell}:\n{script}");
            if shell == "bash" {
                // The function is registered for the binary's own name.
                let complete = script
                    .lines()
                    .find(|l| l.trim_start().starts_with("complete -F"))
                    .unwrap_or_else(|| panic!("no complete line:\n{script}"));
                assert_eq!(
                    complete.split_whitespace().last(),
                    Some(binary),
                    "{complete}"
                );
            }
        }
        let out = Command::new(bin(binary))
            .args(["gen-completions", "tcsh"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "an unknown shell is refused");
        let man = tmp.path().join("man");
        let out = Command::new(bin(binary))
            .arg("gen-man")
            .arg(&man)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let page = std::fs::read_to_string(man.join(format!("{binary}.1"))).unwrap();
        assert!(page.starts_with(".ie") || page.contains(".TH"), "{page}");
        assert!(page.contains(&format!(".TH {binary} 1")), "{page}");
        if tool_present("man") {
            let out = Command::new("man")
                .arg("-l")
                .arg(man.join(format!("{binary}.1")))
                .env("MANPAGER", "cat")
                .env("MANWIDTH", "100")
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", text(&out));
            let rendered = String::from_utf8_lossy(&out.stdout);
            assert!(rendered.contains("SYNOPSIS"), "{rendered}");
        } else {
            println!(
                "man is not installed: rendering not checked (scripts/test.sh installs man-db)"
            );
        }
    }
    assert!(tmp.path().join("man/ferry-sync.1").exists());
    assert!(!tmp.path().join("man/ferry-help.1").exists());
    assert!(tmp.path().join("man/ferry-agent-run.1").exists());
}

#[test]
fn init_if_missing_keeps_the_identity() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    let fp = init_agent(&dir);
    let again = |extra: &[&str]| {
        Command::new(bin("ferry-agent"))
            .arg("init")
            .args(extra)
            .arg("--dir")
            .arg(&dir)
            .output()
            .unwrap()
    };
    let out = again(&["--if-missing"]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().last(), Some(fp.as_str()));
    let out = again(&[]);
    assert!(!out.status.success(), "init without --if-missing refuses");
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
}
