//! Live progress: per group and resource, what the replication loop is
//! doing (phase, bytes left, rate, RPO lag, QUIC path), as the API's group
//! detail and status show it and as the metrics endpoint reads it
//! ([`LiveSource`]).

use serde_json::{json, Value};

use super::{CtlResult, GroupProgress, Orchestrator};
use crate::control::{GroupId, Timestamp};
use crate::metrics::{GroupLive, ImageLive, LiveSnapshot, LiveSource};
use crate::sync_util::lock;

impl Orchestrator {
    /// Live progress of a group (`None` when it does not replicate here).
    pub fn progress_of(&self, id: GroupId) -> Option<GroupProgress> {
        let mut p = lock(&self.progress).get(&id).cloned()?;
        p.rpo_lag_secs = p
            .standby_holds_writes_before
            .map(|t| (Timestamp::now().0 - t.0).max(0) as f64 / 1000.0);
        Some(p)
    }

    /// Updates the live progress of group `gid` (by the loop, and by a
    /// running cycle's progress sink).
    pub(super) fn set_progress(&self, gid: GroupId, f: impl FnOnce(&mut GroupProgress)) {
        let mut all = lock(&self.progress);
        let p = all.entry(gid).or_default();
        f(p);
    }

    /// Everything at a glance.
    pub fn status(&self) -> CtlResult<Value> {
        let groups = self.groups()?;
        let mut list = Vec::new();
        for g in groups {
            let resources = self.db(|s| s.resources(g.id))?;
            let rps = self.db(|s| s.recovery_points(g.id))?;
            list.push(json!({
                "name": g.name,
                "id": g.id,
                "role": g.role,
                "state": g.state,
                "new_primary": g.new_primary,
                "resources": resources.len(),
                "recovery_points": rps.len(),
                "progress": self.progress_of(g.id),
            }));
        }
        Ok(json!({
            "agent": {
                "fingerprint": self.fingerprint.to_hex(),
                "endpoint": self.quic_addr.to_string(),
                "api": lock(&self.api_addr).map(|a| a.to_string()),
            },
            "services": self.services()?,
            "groups": list,
            "qos": self.qos(),
        }))
    }
}

impl LiveSource for Orchestrator {
    fn live(&self) -> LiveSnapshot {
        let groups = self.groups().unwrap_or_default();
        let replicating: Vec<GroupId> = lock(&self.syncs).keys().copied().collect();
        let groups = groups
            .into_iter()
            .map(|g| {
                let progress = self.progress_of(g.id);
                let recovery_points = self
                    .db(|s| s.recovery_points(g.id))
                    .map_or(0, |r| r.len() as u64);
                GroupLive {
                    group: g.name.clone(),
                    rpo_lag_seconds: progress.as_ref().and_then(|p| p.rpo_lag_secs),
                    last_recovery_point: progress.as_ref().and_then(|p| p.last_recovery_point),
                    recovery_points,
                    replicating: replicating.contains(&g.id),
                    images: progress
                        .map(|p| {
                            p.resources
                                .into_iter()
                                .map(|r| ImageLive {
                                    image: r.image,
                                    remaining_bytes: r.bytes_remaining,
                                    rate: r.rate,
                                    rtt_seconds: r.rtt_ms.map(|ms| ms / 1000.0),
                                    cwnd_bytes: r.cwnd,
                                    lost_packets: r.lost_packets,
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                }
            })
            .collect();
        LiveSnapshot {
            groups,
            standby: self.receiver.counters(),
            standby_images: self
                .receiver
                .activity()
                .into_iter()
                .map(|(image, a)| (image.to_string(), a.rate))
                .collect(),
        }
    }
}
