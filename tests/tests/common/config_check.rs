//! Property of the `config` fuzz target, shared with the corpus replay in
//! `tests/tests/fuzz_corpus.rs`: the agent's TOML config parser
//! (`AgentConfig::parse`) never panics on any text, answers the same way
//! twice, and every refusal names the file it was given. Every accepted
//! config has its values within the limits `agent/src/config.rs` documents
//! and enforces (retention 1..=64, 1..=256 concurrent images, idle timeout
//! 1..=3600 s, windows and UDP buffer 64 KiB..=1 GiB, 1..=256 workers or the
//! per-core default, zstd level -7..=19, coalesce gap at most 4 MiB, a rate
//! limit is unlimited or at least 1 byte/s, trusted fingerprints 64 hex
//! digits). The config has no serializer of its own, so the check writes
//! the accepted config back as canonical TOML ([`to_toml`]): that text must
//! parse to the same config (nothing accepted is lost or changed by
//! normalisation).

use std::fmt::Write as _;
use std::path::Path;

use crate::config::{AgentConfig, LogFormat, StandbyBackend};

/// Checks one input (bytes that are not UTF-8 are read lossily, as an
/// operator's editor might have saved them).
pub fn check(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let path = Path::new("fuzz/config.toml");
    let first = AgentConfig::parse(&text, path);
    let second = AgentConfig::parse(&text, path);
    match (&first, &second) {
        (Ok(a), Ok(b)) => {
            assert_eq!(
                format!("{a:?}"),
                format!("{b:?}"),
                "parse is not deterministic"
            );
            check_limits(a);
            let written = to_toml(a);
            match AgentConfig::parse(&written, path) {
                Ok(again) => assert_eq!(
                    format!("{a:?}"),
                    format!("{again:?}"),
                    "the accepted config written back as TOML parses differently:\n{written}"
                ),
                Err(e) => panic!("the accepted config written back is refused: {e}\n{written}"),
            }
        }
        (Err(a), Err(b)) => {
            assert_eq!(a.to_string(), b.to_string(), "refusal is not deterministic");
            assert!(
                a.to_string().contains("fuzz/config.toml"),
                "refusal without the file: {a}"
            );
        }
        _ => panic!("the same text parsed once and was refused once"),
    }
}

/// The documented limits of every validated value.
fn check_limits(c: &AgentConfig) {
    const KIB: u64 = 1024;
    const GIB: u64 = 1 << 30;
    assert!((1..=64).contains(&c.retention), "retention {}", c.retention);
    let t = &c.transport;
    assert!(
        (1..=256).contains(&t.max_concurrent_images),
        "max_concurrent_images {}",
        t.max_concurrent_images
    );
    let idle = t.idle_timeout;
    assert!(
        idle.subsec_nanos() == 0 && (1..=3600).contains(&idle.as_secs()),
        "idle_timeout {idle:?}"
    );
    for (name, v) in [
        ("stream_window", u64::from(t.stream_window)),
        ("connection_window", u64::from(t.connection_window)),
        ("send_window", t.send_window),
        ("udp_buffer", t.udp_buffer as u64),
    ] {
        assert!((64 * KIB..=GIB).contains(&v), "{name} {v}");
    }
    assert_eq!(
        t.send_window,
        u64::from(t.connection_window),
        "send_window follows connection_window"
    );
    let workers = c.pipeline.workers;
    assert!(
        (1..=256).contains(&workers) || workers == AgentConfig::default().pipeline.workers,
        "pipeline.workers {workers}"
    );
    assert!(
        (-7..=19).contains(&c.pipeline.zstd_level),
        "zstd_level {}",
        c.pipeline.zstd_level
    );
    if let Some(gap) = c.coalesce_gap {
        assert!(gap <= 4 << 20, "coalesce_gap {gap}");
    }
    // "unlimited", "none", "off" and 0 mean no limit (None); a limit is a
    // positive rate (the limiter reads 0 as unlimited).
    assert_ne!(c.receive_limit, Some(0), "receive_limit Some(0)");
    assert_ne!(c.send_limit, Some(0), "send_limit Some(0)");
    for id in &c.trust {
        let hex = id.to_hex();
        assert!(
            hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
            "trust {hex}"
        );
    }
}

/// A TOML basic string literal of `s`.
fn quoted(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => write!(out, "\\u{:04X}", u32::from(c)).unwrap(),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `config` written back as TOML, every value in canonical form (sizes and
/// rates in plain bytes). Fields the parser fills from defaults (not from
/// the file) are written only when they differ from the default.
pub fn to_toml(c: &AgentConfig) -> String {
    let mut out = String::new();
    if let Some(listen) = &c.listen {
        writeln!(out, "listen = {}", quoted(listen)).unwrap();
    }
    let trust: Vec<String> = c.trust.iter().map(|id| quoted(&id.to_hex())).collect();
    writeln!(out, "trust = [{}]", trust.join(", ")).unwrap();
    let rate =
        |r: Option<u64>| quoted(&r.map_or_else(|| "unlimited".to_owned(), |n| n.to_string()));
    writeln!(out, "[qos]").unwrap();
    writeln!(out, "receive_limit = {}", rate(c.receive_limit)).unwrap();
    writeln!(out, "send_limit = {}", rate(c.send_limit)).unwrap();
    writeln!(out, "[standby]").unwrap();
    writeln!(out, "retention = {}", c.retention).unwrap();
    match &c.standby_backend {
        StandbyBackend::Files => writeln!(out, "backend = \"files\"").unwrap(),
        StandbyBackend::Rbd { pool, namespace } => {
            writeln!(out, "backend = \"rbd\"\nrbd_pool = {}", quoted(pool)).unwrap();
            if let Some(ns) = namespace {
                writeln!(out, "rbd_namespace = {}", quoted(ns)).unwrap();
            }
        }
    }
    let t = &c.transport;
    writeln!(out, "[transport]").unwrap();
    writeln!(out, "max_concurrent_images = {}", t.max_concurrent_images).unwrap();
    writeln!(out, "idle_timeout_secs = {}", t.idle_timeout.as_secs()).unwrap();
    writeln!(out, "stream_window = \"{}\"", t.stream_window).unwrap();
    writeln!(out, "connection_window = \"{}\"", t.connection_window).unwrap();
    writeln!(out, "udp_buffer = \"{}\"", t.udp_buffer).unwrap();
    writeln!(out, "[pipeline]").unwrap();
    if c.pipeline.workers != AgentConfig::default().pipeline.workers {
        writeln!(out, "workers = {}", c.pipeline.workers).unwrap();
    }
    writeln!(out, "zstd_level = {}", c.pipeline.zstd_level).unwrap();
    writeln!(out, "[log]").unwrap();
    let format = match c.log_format {
        LogFormat::Text => "text",
        LogFormat::Json => "json",
        LogFormat::Journald => "journald",
    };
    writeln!(out, "format = \"{format}\"").unwrap();
    writeln!(out, "[ceph]").unwrap();
    if let Some(cluster) = &c.ceph.cluster {
        writeln!(out, "cluster = {}", quoted(cluster)).unwrap();
    }
    if let Some(conf) = &c.ceph.conf {
        let conf = conf.to_str().expect("a path read from TOML text is UTF-8");
        writeln!(out, "conf = {}", quoted(conf)).unwrap();
    }
    if let Some(id) = &c.ceph.client_id {
        writeln!(out, "client_id = {}", quoted(id)).unwrap();
    }
    if let Some(keyring) = &c.ceph.keyring {
        let keyring = keyring
            .to_str()
            .expect("a path read from TOML text is UTF-8");
        writeln!(out, "keyring = {}", quoted(keyring)).unwrap();
    }
    if let Some(gap) = c.coalesce_gap {
        writeln!(out, "coalesce_gap = \"{gap}\"").unwrap();
    }
    writeln!(out, "[api]\nlisten = {}", quoted(&c.api_listen)).unwrap();
    writeln!(out, "[metrics]").unwrap();
    if let Some(listen) = &c.metrics_listen {
        writeln!(out, "listen = {}", quoted(listen)).unwrap();
    }
    writeln!(
        out,
        "[source]\naccept_changes_at_rest = {}",
        c.accept_changes_at_rest
    )
    .unwrap();
    writeln!(out, "[console]\nenabled = {}", c.console_enabled).unwrap();
    out
}
