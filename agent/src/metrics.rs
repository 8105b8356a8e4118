//! The agent's Prometheus metrics: what is counted, how it is named, and the
//! HTTP endpoint that serves it (`[metrics] listen`, off by default; the
//! bound address is written to `DIR/metrics.addr`).
//!
//! Two kinds of series, both in the text exposition format:
//! - counters and last-cycle gauges the orchestrator records when a
//!   replication cycle of a group ends ([`Metrics::record_cycle`],
//!   [`Metrics::record_failure`]);
//! - live values read at scrape time from a [`LiveSource`] (the
//!   orchestrator): RPO lag, remaining bytes and rate per image, recovery
//!   points per group, QUIC path statistics, and the standby receiver's
//!   totals.
//!
//! Names follow the Prometheus conventions: `ferry_` prefix, base units
//! (bytes, seconds) as a suffix, `_total` on counters. Per-image series are
//! labelled `group` plus `pool`, `namespace`, `image` as ceph-mgr labels
//! `ceph_rbd_*` (see `places.rs`, which also holds the standby's series:
//! the time of its newest complete recovery point per image and group, so
//! the RPO can be read from the standby when the primary is gone).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};

use anyhow::Context;
use ferry_engine::session::receiver::ReceiverCounters;
use ferry_engine::session::sender::GroupReport;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use tracing::warn;

/// File in the agent directory holding the metrics endpoint's address.
pub const ADDR_FILE: &str = "metrics.addr";

mod places;
pub use places::{ImageLabels, ImagePlace, Place};

/// Labels of a per-group series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabels {
    /// Protection group name.
    pub group: String,
}

/// Labels of the cycle counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CycleLabels {
    group: String,
    result: &'static str,
}

/// Labels of the error counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    group: String,
    kind: &'static str,
}

/// What a failed cycle is counted as (`kind` label of `ferry_errors_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// QUIC connection could not be made or kept.
    Transport,
    /// The link was lost and did not come back in time.
    LinkLost,
    /// The standby refused (error frame) or broke the protocol.
    Peer,
    /// Reading the source failed.
    Source,
    /// The local control store failed.
    Store,
    /// The group is misconfigured (no resources, bad URI).
    Config,
    /// Anything else.
    Other,
}

impl ErrorKind {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Transport => "transport",
            ErrorKind::LinkLost => "link_lost",
            ErrorKind::Peer => "peer",
            ErrorKind::Source => "source",
            ErrorKind::Store => "store",
            ErrorKind::Config => "config",
            ErrorKind::Other => "other",
        }
    }
}

/// Live per-image values of a replicating group.
#[derive(Clone, Debug, Default)]
pub struct ImageLive {
    /// Where the (source) image lives on this site.
    pub place: Place,
    /// Bytes still to scan in the running cycle.
    pub remaining_bytes: u64,
    /// Current send rate, bytes/s.
    pub rate: u64,
    /// QUIC smoothed RTT, seconds (once a batch was sent).
    pub rtt_seconds: Option<f64>,
    /// QUIC congestion window, bytes.
    pub cwnd_bytes: Option<u64>,
    /// Packets lost on the current connection.
    pub lost_packets: Option<u64>,
}

/// Live values of one group.
#[derive(Clone, Debug, Default)]
pub struct GroupLive {
    /// Group name.
    pub group: String,
    /// Seconds since the newest instant whose writes the standby holds.
    pub rpo_lag_seconds: Option<f64>,
    /// Named recovery points (manual and policy) of the group in the
    /// control store.
    pub recovery_points: u64,
    /// Engine id of the last group recovery point committed on the standby
    /// by this agent's replication loop.
    pub last_recovery_point: Option<u64>,
    /// Whether the group's replication loop runs here.
    pub replicating: bool,
    /// Per image (while the group replicates from here).
    pub images: Vec<ImageLive>,
    /// This agent's role for the group (`primary` or `standby`).
    pub role: &'static str,
    /// Every image of the group: its place on this site and, on the
    /// standby, its newest complete recovery point.
    pub places: Vec<ImagePlace>,
    /// Standby side: creation time (ms since the Unix epoch) of the newest
    /// recovery point every image of the group holds complete.
    pub standby_group_point_unix_ms: Option<u64>,
    /// Standby side: the newest instant before which the standby holds
    /// every write of the group — the group point's time, or later when the
    /// primary's idle checks confirmed nothing was written since (ms).
    pub standby_holds_writes_before_unix_ms: Option<u64>,
    /// Primary with a bound policy: (the newest passed slot of its
    /// schedule, the slot of its newest complete policy recovery point or
    /// 0), ms since the Unix epoch.
    pub policy_slots: Option<(u64, u64)>,
}

/// Everything read at scrape time.
#[derive(Clone, Debug, Default)]
pub struct LiveSnapshot {
    /// Groups known to this agent.
    pub groups: Vec<GroupLive>,
    /// The standby receiver's totals.
    pub standby: ReceiverCounters,
    /// (standby image, current receive rate in bytes/s).
    pub standby_images: Vec<(String, u64)>,
}

/// Where live values come from (the orchestrator).
pub trait LiveSource: Send + Sync {
    /// Reads the current values.
    fn live(&self) -> LiveSnapshot;
}

type Slot = Arc<Mutex<Option<Weak<dyn LiveSource>>>>;

fn read_slot(slot: &Slot) -> Option<Arc<dyn LiveSource>> {
    let guard = match slot.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    };
    guard.as_ref().and_then(Weak::upgrade)
}

/// Encodes the live values at each scrape.
#[derive(Debug)]
struct LiveCollector {
    slot: Slot,
}

fn gauge_family<L: EncodeLabelSet, V: prometheus_client::encoding::EncodeGaugeValue + Copy>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    series: &[(L, V)],
) -> Result<(), std::fmt::Error> {
    if series.is_empty() {
        return Ok(());
    }
    let mut family = encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    for (labels, value) in series {
        ConstGauge::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, unit, metric.metric_type())?)
}

impl prometheus_client::collector::Collector for LiveCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Some(source) = read_slot(&self.slot) else {
            return Ok(());
        };
        let live = source.live();
        encode_group_gauges(&mut encoder, &live)?;
        encode_image_gauges(&mut encoder, &live)?;
        places::encode_standby(&mut encoder, &live)
    }
}

/// Per-group gauges: RPO lag, recovery points, last recovery point, replicating.
fn encode_group_gauges(
    encoder: &mut DescriptorEncoder<'_>,
    live: &LiveSnapshot,
) -> Result<(), std::fmt::Error> {
    let seconds = Unit::Seconds;
    let group = |g: &GroupLive| GroupLabels {
        group: g.group.clone(),
    };
    let lag: Vec<_> = live
        .groups
        .iter()
        .filter_map(|g| g.rpo_lag_seconds.map(|s| (group(g), s)))
        .collect();
    gauge_family(
        encoder,
        "ferry_rpo_lag",
        "Age of the newest instant whose writes the standby holds (primary side)",
        Some(&seconds),
        &lag,
    )?;
    let points: Vec<_> = live
        .groups
        .iter()
        .map(|g| (group(g), g.recovery_points as i64))
        .collect();
    gauge_family(
        encoder,
        "ferry_recovery_points",
        "Named (manual and policy) recovery points of the group",
        None,
        &points,
    )?;
    let last: Vec<_> = live
        .groups
        .iter()
        .filter_map(|g| g.last_recovery_point.map(|id| (group(g), id as i64)))
        .collect();
    gauge_family(
        encoder,
        "ferry_last_recovery_point",
        "Id of the last group recovery point committed on the standby (one per cycle)",
        None,
        &last,
    )?;
    let replicating: Vec<_> = live
        .groups
        .iter()
        .map(|g| (group(g), i64::from(g.replicating)))
        .collect();
    let slots: Vec<_> = live
        .groups
        .iter()
        .filter_map(|g| {
            g.policy_slots
                .map(|(slot, _)| (group(g), slot as f64 / 1000.0))
        })
        .collect();
    gauge_family(
        encoder,
        "ferry_policy_slot_timestamp",
        "The newest passed slot of the group's policy schedule",
        Some(&seconds),
        &slots,
    )?;
    let points: Vec<_> = live
        .groups
        .iter()
        .filter_map(|g| {
            g.policy_slots
                .map(|(_, point)| (group(g), point as f64 / 1000.0))
        })
        .collect();
    gauge_family(
        encoder,
        "ferry_policy_recovery_point_timestamp",
        "The slot of the group's newest complete policy recovery point (0: none); below ferry_policy_slot_timestamp_seconds while a slot has no point",
        Some(&seconds),
        &points,
    )?;
    gauge_family(
        encoder,
        "ferry_group_replicating",
        "1 while the group's replication loop runs on this agent",
        None,
        &replicating,
    )?;
    Ok(())
}

/// Per-image gauges of the primary side: remaining bytes, send rate and the
/// QUIC path's RTT, congestion window and lost packets.
fn encode_image_gauges(
    encoder: &mut DescriptorEncoder<'_>,
    live: &LiveSnapshot,
) -> Result<(), std::fmt::Error> {
    let seconds = Unit::Seconds;
    let bytes = Unit::Bytes;
    let per_second = Unit::Other("bytes_per_second".into());
    let image = |g: &GroupLive, i: &ImageLive| ImageLabels::new(&g.group, &i.place);
    let images = || {
        live.groups
            .iter()
            .flat_map(|g| g.images.iter().map(move |i| (g, i)))
    };
    let remaining: Vec<_> = images()
        .map(|(g, i)| (image(g, i), i.remaining_bytes as i64))
        .collect();
    gauge_family(
        encoder,
        "ferry_remaining",
        "Bytes of the image still to scan in the running cycle",
        Some(&bytes),
        &remaining,
    )?;
    let rate: Vec<_> = images()
        .map(|(g, i)| (image(g, i), i.rate as i64))
        .collect();
    gauge_family(
        encoder,
        "ferry_send_rate",
        "Current replication send rate of the image",
        Some(&per_second),
        &rate,
    )?;
    let rtt: Vec<_> = images()
        .filter_map(|(g, i)| i.rtt_seconds.map(|v| (image(g, i), v)))
        .collect();
    gauge_family(
        encoder,
        "ferry_quic_rtt",
        "Smoothed round-trip time of the QUIC path the image is sent on",
        Some(&seconds),
        &rtt,
    )?;
    let cwnd: Vec<_> = images()
        .filter_map(|(g, i)| i.cwnd_bytes.map(|v| (image(g, i), v as i64)))
        .collect();
    gauge_family(
        encoder,
        "ferry_quic_cwnd",
        "Congestion window of the QUIC path the image is sent on",
        Some(&bytes),
        &cwnd,
    )?;
    let lost: Vec<_> = images()
        .filter_map(|(g, i)| i.lost_packets.map(|v| (image(g, i), v as i64)))
        .collect();
    gauge_family(
        encoder,
        "ferry_quic_lost_packets",
        "Packets declared lost on the current QUIC connection (resets on reconnect)",
        None,
        &lost,
    )?;
    Ok(())
}

/// The agent's metrics registry (see the module doc).
pub struct Metrics {
    registry: Registry,
    slot: Slot,
    read: Family<ImageLabels, Counter>,
    changed: Family<ImageLabels, Counter>,
    sent: Family<ImageLabels, Counter>,
    plain: Family<ImageLabels, Counter>,
    extents: Family<ImageLabels, Counter>,
    compression: Family<ImageLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    cycles: Family<CycleLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    reconnects: Family<GroupLabels, Counter>,
    udp: Family<GroupLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// An empty registry with every family declared.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let slot: Slot = Arc::new(Mutex::new(None));
        let m = Self {
            read: Family::default(),
            changed: Family::default(),
            sent: Family::default(),
            plain: Family::default(),
            extents: Family::default(),
            compression: Family::default(),
            cycles: Family::default(),
            errors: Family::default(),
            reconnects: Family::default(),
            udp: Family::default(),
            slot: slot.clone(),
            registry: Registry::default(),
        };
        registry.register_with_unit(
            "ferry_read",
            "Source bytes read (scanned) by replication cycles",
            Unit::Bytes,
            m.read.clone(),
        );
        registry.register_with_unit(
            "ferry_changed",
            "Source bytes found changed (data and zeroed ranges)",
            Unit::Bytes,
            m.changed.clone(),
        );
        registry.register_with_unit(
            "ferry_sent",
            "Payload bytes sent to the standby after compression, resends included",
            Unit::Bytes,
            m.sent.clone(),
        );
        registry.register_with_unit(
            "ferry_plain_data",
            "Changed data bytes before compression",
            Unit::Bytes,
            m.plain.clone(),
        );
        registry.register(
            "ferry_extents_sent",
            "Extents sent to the standby (data and zeroed ranges)",
            m.extents.clone(),
        );
        registry.register(
            "ferry_compression_ratio",
            "Plain data bytes per payload byte sent in the image's last cycle",
            m.compression.clone(),
        );
        registry.register(
            "ferry_cycles",
            "Replication cycles by result (ok, failed)",
            m.cycles.clone(),
        );
        registry.register(
            "ferry_errors",
            "Failed replication cycles by error kind",
            m.errors.clone(),
        );
        registry.register(
            "ferry_reconnects",
            "QUIC connections re-established during cycles",
            m.reconnects.clone(),
        );
        registry.register_with_unit(
            "ferry_udp_sent",
            "UDP bytes sent by QUIC during cycles (all overheads)",
            Unit::Bytes,
            m.udp.clone(),
        );
        registry.register_collector(Box::new(LiveCollector { slot }));
        Self { registry, ..m }
    }

    /// Sets where live values are read from at scrape time.
    pub fn attach(&self, source: Weak<dyn LiveSource>) {
        let mut guard = match self.slot.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        *guard = Some(source);
    }

    /// Records a committed cycle of `group`; `place` gives the place of a
    /// standby image name (the source image it is replicated from).
    pub fn record_cycle(&self, group: &str, report: &GroupReport, place: impl Fn(&str) -> Place) {
        for r in &report.images {
            let labels = ImageLabels::new(group, &place(&r.image));
            self.read.get_or_create(&labels).inc_by(r.bytes_scanned);
            self.changed.get_or_create(&labels).inc_by(r.bytes_changed);
            self.sent.get_or_create(&labels).inc_by(r.bytes_sent);
            self.plain.get_or_create(&labels).inc_by(r.bytes_plain_data);
            self.extents.get_or_create(&labels).inc_by(r.extents);
            if r.bytes_sent > 0 {
                self.compression
                    .get_or_create(&labels)
                    .set(r.bytes_plain_data as f64 / r.bytes_sent as f64);
            }
        }
        let g = GroupLabels {
            group: group.to_owned(),
        };
        self.reconnects
            .get_or_create(&g)
            .inc_by(u64::from(report.reconnects));
        self.udp.get_or_create(&g).inc_by(report.udp_bytes);
        self.cycles
            .get_or_create(&CycleLabels {
                group: group.to_owned(),
                result: "ok",
            })
            .inc();
    }

    /// Records a failed cycle of `group`.
    pub fn record_failure(&self, group: &str, kind: ErrorKind) {
        self.cycles
            .get_or_create(&CycleLabels {
                group: group.to_owned(),
                result: "failed",
            })
            .inc();
        self.errors
            .get_or_create(&ErrorLabels {
                group: group.to_owned(),
                kind: kind.as_str(),
            })
            .inc();
    }

    /// The text exposition of every series.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `GET /metrics` on `listen` and writes the bound address to
/// `DIR/metrics.addr`. Returns the bound address.
pub async fn serve(
    dir: &Path,
    listen: SocketAddr,
    metrics: Arc<Metrics>,
) -> anyhow::Result<SocketAddr> {
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse;
    let tcp = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the metrics endpoint on {listen}"))?;
    let addr = tcp.local_addr()?;
    let path = dir.join(ADDR_FILE);
    let tmp = dir.join(format!("{ADDR_FILE}.tmp"));
    crate::durable::write_durably(&tmp, &path, format!("{addr}\n").as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move {
                match metrics.encode() {
                    Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
                    Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                }
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(error) = axum::serve(tcp, app).await {
            warn!(%error, "metrics endpoint stopped");
        }
    });
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_engine::session::sender::SyncReport;

    struct Fixed(LiveSnapshot);
    impl LiveSource for Fixed {
        fn live(&self) -> LiveSnapshot {
            self.0.clone()
        }
    }

    /// A standby group of two images on RBD pool `dr`; the newest point
    /// both hold is older than the newest `s1-a` holds.
    fn standby_group() -> GroupLive {
        let place = |image: &str, ms| ImagePlace {
            place: Place::of_standby(Some("dr"), "", image),
            standby_image: image.into(),
            newest_point_unix_ms: ms,
        };
        GroupLive {
            group: "s1".into(),
            role: "standby",
            places: vec![place("s1-a", Some(1_700_000_000_500)), place("s1-b", None)],
            standby_group_point_unix_ms: Some(1_699_999_999_000),
            standby_holds_writes_before_unix_ms: Some(1_700_000_060_000),
            policy_slots: Some((1_700_000_100_000, 0)),
            ..GroupLive::default()
        }
    }

    #[test]
    fn cycles_and_live_values_are_exposed_with_prometheus_names() {
        let metrics = Metrics::new();
        let report = GroupReport {
            recovery_point: 3,
            images: vec![SyncReport {
                image: "db".into(),
                bytes_scanned: 4096,
                bytes_changed: 2048,
                bytes_plain_data: 2048,
                bytes_sent: 512,
                extents: 2,
                ..SyncReport::default()
            }],
            reconnects: 1,
            ..GroupReport::default()
        };
        metrics.record_cycle("g1", &report, |image| {
            Place::of_source("rbd:vms/disk", image)
        });
        metrics.record_failure("g1", ErrorKind::LinkLost);
        let source: Arc<dyn LiveSource> = Arc::new(Fixed(LiveSnapshot {
            groups: vec![
                GroupLive {
                    group: "g1".into(),
                    rpo_lag_seconds: Some(1.5),
                    recovery_points: 2,
                    last_recovery_point: Some(41),
                    replicating: true,
                    role: "primary",
                    places: vec![],
                    standby_group_point_unix_ms: None,
                    standby_holds_writes_before_unix_ms: None,
                    policy_slots: None,
                    images: vec![ImageLive {
                        place: Place::of_source("rbd:vms/ns1/db", "g1-db"),
                        remaining_bytes: 100,
                        rate: 7,
                        rtt_seconds: Some(0.001),
                        cwnd_bytes: Some(12000),
                        lost_packets: Some(0),
                    }],
                },
                standby_group(),
            ],
            standby: ReceiverCounters {
                bytes_applied: 99,
                ..ReceiverCounters::default()
            },
            standby_images: vec![("s1-b".into(), 5)],
        }));
        metrics.attach(Arc::downgrade(&source));
        let text = metrics.encode().unwrap();
        for line in [
            "ferry_read_bytes_total{group=\"g1\",pool=\"vms\",namespace=\"\",image=\"disk\"} 4096",
            "ferry_sent_bytes_total{group=\"g1\",pool=\"vms\",namespace=\"\",image=\"disk\"} 512",
            "ferry_extents_sent_total{group=\"g1\",pool=\"vms\",namespace=\"\",image=\"disk\"} 2",
            "ferry_compression_ratio{group=\"g1\",pool=\"vms\",namespace=\"\",image=\"disk\"} 4.0",
            "ferry_cycles_total{group=\"g1\",result=\"ok\"} 1",
            "ferry_cycles_total{group=\"g1\",result=\"failed\"} 1",
            "ferry_errors_total{group=\"g1\",kind=\"link_lost\"} 1",
            "ferry_rpo_lag_seconds{group=\"g1\"} 1.5",
            "ferry_remaining_bytes{group=\"g1\",pool=\"vms\",namespace=\"ns1\",image=\"db\"} 100",
            "ferry_quic_cwnd_bytes{group=\"g1\",pool=\"vms\",namespace=\"ns1\",image=\"db\"} 12000",
            "ferry_image_info{group=\"s1\",role=\"standby\",pool=\"dr\",namespace=\"\",image=\"s1-a\",standby_image=\"s1-a\"} 1",
            "ferry_standby_recovery_point_timestamp_seconds{group=\"s1\",pool=\"dr\",namespace=\"\",image=\"s1-a\"} 1700000000.5",
            "ferry_standby_group_recovery_point_timestamp_seconds{group=\"s1\"} 1699999999.0",
            "ferry_standby_holds_writes_before_timestamp_seconds{group=\"s1\"} 1700000060.0",
            "ferry_policy_slot_timestamp_seconds{group=\"s1\"} 1700000100.0",
            "ferry_policy_recovery_point_timestamp_seconds{group=\"s1\"} 0.0",
            "ferry_standby_receive_rate_bytes_per_second{group=\"s1\",pool=\"dr\",namespace=\"\",image=\"s1-b\"} 5",
            "ferry_recovery_points{group=\"g1\"} 2",
            "ferry_last_recovery_point{group=\"g1\"} 41",
            "ferry_applied_bytes_total 99",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
        drop(source);
        // The source is gone (agent shutting down): live series disappear.
        let text = metrics.encode().unwrap();
        assert!(!text.contains("ferry_rpo_lag_seconds"), "{text}");
        assert!(text.contains("ferry_read_bytes_total"), "{text}");
    }
}
