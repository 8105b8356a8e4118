//! The last hour of each group's RPO lag, for the console's chart
//! (`GET /v1/groups/{group}/rpo-history`): every [`RPO_SAMPLE_INTERVAL`]
//! the agent records, per group, the RPO lag `ferry health` reports for it
//! on this site — on the primary the age of the instant before which the
//! standby holds every write (what `ferry status` and
//! `ferry_rpo_lag_seconds` show while it syncs), on the standby the age of
//! the newest recovery point all its images hold (or of the primary's last
//! idle confirmation), so the standby's chart works with the primary gone.
//! `null` while there is no lag to tell (not syncing, no complete copy yet).
//!
//! In memory only, [`RPO_HISTORY_SAMPLES`] samples per group: after a
//! restart the chart starts again.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};

use super::health::HealthParams;
use super::{CtlResult, Orchestrator};
use crate::control::{GroupId, Timestamp};
use crate::sync_util::lock;

/// Time between two samples.
pub const RPO_SAMPLE_INTERVAL: Duration = Duration::from_secs(10);
/// Samples kept per group: one hour.
pub const RPO_HISTORY_SAMPLES: usize = 360;

/// One sample.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct RpoSample {
    /// When it was taken (ms since the epoch, as every API time).
    pub at: Timestamp,
    /// The RPO lag then, seconds (`None`: none to tell).
    pub lag_secs: Option<f64>,
}

/// Every group's recent samples, oldest first.
#[derive(Default)]
pub struct RpoHistory {
    groups: HashMap<GroupId, VecDeque<RpoSample>>,
}

impl RpoHistory {
    /// Records one round of samples taken `at`: one per group that exists
    /// (`lags`); groups that no longer exist are forgotten.
    pub fn record(&mut self, lags: &[(GroupId, Option<f64>)], at: Timestamp) {
        self.groups
            .retain(|id, _| lags.iter().any(|(present, _)| present == id));
        for (id, lag_secs) in lags {
            let ring = self.groups.entry(*id).or_default();
            if ring.len() >= RPO_HISTORY_SAMPLES {
                ring.pop_front();
            }
            ring.push_back(RpoSample {
                at,
                lag_secs: *lag_secs,
            });
        }
    }

    /// The samples of group `id`, oldest first.
    pub fn samples(&self, id: GroupId) -> Vec<RpoSample> {
        self.groups
            .get(&id)
            .map(|r| r.iter().copied().collect())
            .unwrap_or_default()
    }
}

impl Orchestrator {
    /// Samples every group's RPO lag every [`RPO_SAMPLE_INTERVAL`], for as
    /// long as the agent runs (spawn it once).
    pub async fn sample_rpo_history(self: Arc<Self>) {
        let mut tick = tokio::time::interval(RPO_SAMPLE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(error) = self.record_rpo_sample() {
                tracing::warn!(%error, "sampling the RPO lag of the groups failed");
            }
        }
    }

    /// Records one sample of every group's RPO lag now.
    pub fn record_rpo_sample(&self) -> CtlResult<()> {
        let report = self.health(&HealthParams::default())?;
        let lags: Vec<(GroupId, Option<f64>)> = self
            .groups()?
            .into_iter()
            .map(|g| {
                let lag = report
                    .groups
                    .iter()
                    .find(|h| h.name == g.name)
                    .and_then(|h| h.rpo_lag_secs);
                (g.id, lag)
            })
            .collect();
        lock(&self.rpo_history).record(&lags, report.checked_at);
        Ok(())
    }

    /// The answer of `GET /v1/groups/{group}/rpo-history` (group by name or
    /// id).
    pub fn rpo_history(&self, key: &str) -> CtlResult<Value> {
        let g = self.group(key)?;
        let samples = lock(&self.rpo_history).samples(g.id);
        Ok(json!({
            "group": g.name,
            "interval_secs": RPO_SAMPLE_INTERVAL.as_secs(),
            "samples": samples,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_keeps_the_last_hour_oldest_first() {
        let mut h = RpoHistory::default();
        let (a, b) = (GroupId(1), GroupId(2));
        for i in 0..(RPO_HISTORY_SAMPLES as i64 + 25) {
            let lag = (i % 7 != 0).then_some(i as f64 / 2.0);
            h.record(&[(a, lag), (b, None)], Timestamp(i * 10_000));
        }
        let s = h.samples(a);
        assert_eq!(s.len(), RPO_HISTORY_SAMPLES);
        assert_eq!(s[0].at, Timestamp(25 * 10_000));
        assert_eq!(s[0].lag_secs, Some(12.5));
        assert_eq!(s[3].lag_secs, None); // sample 28: no lag then
        assert!(s.windows(2).all(|w| w[0].at < w[1].at));
        let last = s.last().unwrap();
        let n = RPO_HISTORY_SAMPLES as i64 + 24;
        assert_eq!(last.at, Timestamp(n * 10_000));
        assert_eq!(last.lag_secs, Some(n as f64 / 2.0));
        assert!(h.samples(b).iter().all(|s| s.lag_secs.is_none()));
        assert!(h.samples(GroupId(3)).is_empty());
    }

    #[test]
    fn a_deleted_group_is_forgotten() {
        let mut h = RpoHistory::default();
        h.record(
            &[(GroupId(1), Some(1.0)), (GroupId(2), Some(2.0))],
            Timestamp(0),
        );
        h.record(&[(GroupId(2), Some(3.0))], Timestamp(10_000));
        assert!(h.samples(GroupId(1)).is_empty());
        assert_eq!(h.samples(GroupId(2)).len(), 2);
    }

    #[test]
    fn samples_serialize_as_the_api_documents() {
        let s = RpoSample {
            at: Timestamp(1_700_000_000_000),
            lag_secs: Some(12.5),
        };
        assert_eq!(
            serde_json::to_value(s).unwrap(),
            json!({"at": 1_700_000_000_000_i64, "lag_secs": 12.5})
        );
        let s = RpoSample {
            at: Timestamp(5),
            lag_secs: None,
        };
        assert_eq!(
            serde_json::to_value(s).unwrap(),
            json!({"at": 5, "lag_secs": null})
        );
    }
}
