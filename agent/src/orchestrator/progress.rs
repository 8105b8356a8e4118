//! Live progress: per group and resource, what the replication loop is
//! doing (phase, bytes left, rate, RPO lag, QUIC path), as the API's group
//! detail and status show it and as the metrics endpoint reads it
//! ([`LiveSource`]).

use serde_json::{json, Value};

use super::{CtlResult, GroupProgress, Orchestrator};
use crate::control::{Group, GroupId, Role, Timestamp};
use crate::metrics::{GroupLive, ImageLive, ImagePlace, LiveSnapshot, LiveSource, Place};
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
                "driven_by": self.driven_by(&g),
            }));
        }
        Ok(json!({
            "agent": {
                "fingerprint": self.fingerprint.to_hex(),
                "endpoint": self.quic_addr.to_string(),
                "api": lock(&self.api_addr).map(|a| a.to_string()),
                "name": self.site_agent_name(),
            },
            "services": self.services()?,
            "groups": list,
            "qos": self.qos(),
        }))
    }
}

impl Orchestrator {
    /// Every image of `g` with its place on this site; on the standby also
    /// the newest complete recovery point of each, and the newest point all
    /// of them hold (what a failover could use), as creation times in ms.
    fn places_of(&self, g: &Group) -> (Vec<ImagePlace>, Option<u64>) {
        let resources = self.db(|s| s.resources(g.id)).unwrap_or_default();
        if g.role == Role::Primary {
            let places = resources
                .into_iter()
                .map(|r| ImagePlace {
                    place: Place::of_source(&r.uri, &r.standby_target),
                    standby_image: r.standby_target,
                    newest_point_unix_ms: None,
                })
                .collect();
            return (places, None);
        }
        let pool = self.receiver.store.rbd_pool().ok();
        // Per image: the complete (not fuzzy) points it holds, id → created.
        let mut common: Option<std::collections::BTreeMap<u64, u64>> = None;
        let mut places = Vec::new();
        for r in resources {
            let points: std::collections::BTreeMap<u64, u64> =
                ferry_protocol::ImageName::new(r.standby_target.clone())
                    .ok()
                    .and_then(|image| self.receiver.store.recovery_points(&image).ok())
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|p| !p.fuzzy)
                    .map(|p| (p.id.get(), p.created_unix_ms))
                    .collect();
            places.push(ImagePlace {
                place: Place::of_standby(pool, "", &r.standby_target),
                newest_point_unix_ms: points.values().copied().max(),
                standby_image: r.standby_target,
            });
            common = Some(match common {
                None => points,
                Some(c) => c
                    .into_iter()
                    .filter(|(id, _)| points.contains_key(id))
                    .collect(),
            });
        }
        let group_point = common.and_then(|c| c.values().copied().max());
        (places, group_point)
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
                let (places, standby_group_point_unix_ms) = self.places_of(&g);
                // A confirmation only counts on top of a point every image holds.
                let confirmed = lock(&self.confirmed_current).get(&g.id).copied();
                let standby_holds_writes_before_unix_ms = standby_group_point_unix_ms
                    .map(|point| confirmed.map_or(point, |c| point.max(c.max(0) as u64)));
                let place_of = |image: &str| {
                    places
                        .iter()
                        .find(|p| p.standby_image == image)
                        .map(|p| p.place.clone())
                        .unwrap_or_else(|| Place::of_source("", image))
                };
                let images = progress
                    .as_ref()
                    .map(|p| {
                        p.resources
                            .iter()
                            .map(|r| ImageLive {
                                place: place_of(&r.image),
                                remaining_bytes: r.bytes_remaining,
                                rate: r.rate,
                                rtt_seconds: r.rtt_ms.map(|ms| ms / 1000.0),
                                cwnd_bytes: r.cwnd,
                                lost_packets: r.lost_packets,
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                GroupLive {
                    group: g.name.clone(),
                    rpo_lag_seconds: progress.as_ref().and_then(|p| p.rpo_lag_secs),
                    last_recovery_point: progress.as_ref().and_then(|p| p.last_recovery_point),
                    recovery_points,
                    replicating: replicating.contains(&g.id),
                    images,
                    role: g.role.as_str(),
                    places,
                    standby_group_point_unix_ms,
                    standby_holds_writes_before_unix_ms,
                    policy_slots: self.policy_slots(&g),
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
