//! Two sites for the end-to-end tests: two real agents paired through a
//! service key (the way an operator pairs them), with optional config files,
//! plus the small checks most two-site tests share (an operation succeeded,
//! a condition within a deadline, the agent's UDP bytes from its metrics).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cli::{ok, run, text};
use crate::{init_agent, Agent};

/// Agent A (the primary) and agent B (the standby), in one temp dir.
pub struct Sites {
    /// Holds both agents' directories and any test files.
    pub tmp: tempfile::TempDir,
    /// Site A's agent.
    pub a: Agent,
    /// Site B's agent.
    pub b: Agent,
}

impl Sites {
    /// Two agents paired through a service key issued on B and imported on A.
    pub fn paired() -> Sites {
        Self::paired_with(None, None)
    }

    /// [`Sites::paired`] with a `config.toml` for A and/or B.
    pub fn paired_with(a_config: Option<&str>, b_config: Option<&str>) -> Sites {
        let tmp = tempfile::tempdir().expect("temp dir");
        let (a_dir, b_dir) = (tmp.path().join("a"), tmp.path().join("b"));
        let (a_fp, b_fp) = (init_agent(&a_dir), init_agent(&b_dir));
        for (dir, config) in [(&a_dir, a_config), (&b_dir, b_config)] {
            if let Some(config) = config {
                std::fs::write(dir.join("config.toml"), config).expect("writing config.toml");
            }
        }
        let a = Agent::start(&a_dir, &a_fp, &[]);
        let b = Agent::start(&b_dir, &b_fp, &[]);
        let out = run(&b_dir, &["service", "key"]);
        assert!(out.status.success(), "{}", text(&out));
        let key = String::from_utf8(out.stdout).expect("utf-8 key");
        ok(&a_dir, &["service", "create", "--key", key.trim()]);
        Sites { tmp, a, b }
    }

    /// A path in the sites' temp dir.
    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
}

/// Panics unless the operation (as `ferry … --wait` prints it) succeeded.
pub fn succeeded(op: &Value) {
    assert_eq!(op["state"]["state"], "succeeded", "{op}");
}

/// Waits up to `patience` for `f`, polling every 100 ms; panics naming
/// `what` when it never holds.
pub fn wait_for(what: &str, patience: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + patience;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The sum of every `ferry_udp_sent_bytes_total` series of the agent in
/// `dir` (it needs `[metrics] listen`): every UDP byte QUIC sent during
/// cycles, overheads included.
pub fn udp_sent(dir: &Path) -> f64 {
    let addr = std::fs::read_to_string(dir.join("metrics.addr")).expect("metrics.addr");
    let mut conn = TcpStream::connect(addr.trim()).expect("connecting to /metrics");
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .expect("asking for /metrics");
    let mut response = String::new();
    conn.read_to_string(&mut response)
        .expect("reading /metrics");
    response
        .lines()
        .filter(|l| l.starts_with("ferry_udp_sent_bytes_total"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}
