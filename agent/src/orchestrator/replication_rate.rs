//! A group's replication rate: bytes sent per second of wall time, as an
//! exponentially weighted average over about [`HORIZON_SECS`]. The loop
//! records every completed cycle (an idle check as 0 bytes) with the time
//! since the one before, so a group that sends a burst and then idles
//! weighs what it sends on average. A multi-agent site places groups by it
//! (`placement/plan.rs`: the largest first, onto the least-loaded agent).

use std::time::Instant;

/// How far back the average looks, roughly (seconds).
pub const HORIZON_SECS: f64 = 300.0;

/// The running average of one group.
#[derive(Clone, Debug, Default)]
pub struct ReplicationRate {
    bytes_per_sec: f64,
    /// Seconds covered so far, up to the horizon: until then the samples
    /// are weighed by their share of what was seen, so the first cycles
    /// are not averaged with a zero that was never measured.
    covered_secs: f64,
    last: Option<Instant>,
}

impl ReplicationRate {
    /// Records a cycle that sent `bytes` and ended at `now`. The first
    /// record only starts the clock unless `first_secs` says how long the
    /// cycle took.
    pub fn record(&mut self, bytes: u64, now: Instant, first_secs: f64) {
        let secs = match self.last {
            Some(last) => now.saturating_duration_since(last).as_secs_f64(),
            None => first_secs,
        };
        self.last = Some(now);
        self.add(bytes, secs);
    }

    fn add(&mut self, bytes: u64, secs: f64) {
        if secs.is_nan() || secs <= 0.0 {
            return;
        }
        let sample = bytes as f64 / secs;
        let decay = 1.0 - (-secs / HORIZON_SECS).exp();
        let warm = secs / (self.covered_secs + secs);
        let weight = decay.max(warm);
        self.bytes_per_sec += weight * (sample - self.bytes_per_sec);
        self.covered_secs = (self.covered_secs + secs).min(HORIZON_SECS);
    }

    /// The average, bytes per second.
    pub fn bytes_per_sec(&self) -> u64 {
        self.bytes_per_sec.max(0.0).round() as u64
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_steady_group_averages_what_it_sends_per_second() {
        let mut rate = ReplicationRate::default();
        for _ in 0..100 {
            rate.add(10_000_000, 10.0);
        }
        assert_eq!(rate.bytes_per_sec(), 1_000_000);
    }

    #[test]
    fn the_first_cycle_counts_whole_and_idle_checks_pull_the_average_down() {
        let mut rate = ReplicationRate::default();
        rate.add(50_000_000, 5.0);
        assert_eq!(rate.bytes_per_sec(), 10_000_000, "no zero averaged in");
        // Five minutes of idle checks after a burst: the rate fades.
        for _ in 0..60 {
            rate.add(0, 5.0);
        }
        assert!(
            rate.bytes_per_sec() < 10_000_000 / 2,
            "{}",
            rate.bytes_per_sec()
        );
        assert!(rate.bytes_per_sec() > 0, "not forgotten at once");
    }

    #[test]
    fn records_use_the_wall_time_between_cycles() {
        let mut rate = ReplicationRate::default();
        let t0 = Instant::now();
        rate.record(4_000_000, t0, 2.0);
        assert_eq!(rate.bytes_per_sec(), 2_000_000);
        // 4 MB more over 4 s of wall time (cycle and pause): 1 MB/s.
        rate.record(4_000_000, t0 + Duration::from_secs(4), 0.5);
        assert_eq!(
            rate.bytes_per_sec(),
            1_333_333,
            "2 MB/s over 2 s, 1 MB/s over 4 s"
        );
        // A zero or negative interval changes nothing.
        rate.record(9_000_000, t0 + Duration::from_secs(4), 0.0);
        assert_eq!(rate.bytes_per_sec(), 1_333_333);
    }
}
