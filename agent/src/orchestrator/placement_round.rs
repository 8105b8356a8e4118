//! The placement round of a multi-agent site, every retry interval of the
//! lease (at least a second): this agent announces itself and the leases
//! it holds, reads who is alive and who holds each group's lease (from the
//! same records: one read), computes the site's placement
//! plan (`crate::placement::plan`: free groups to the least-loaded live
//! agent; every agent computes the same plan from the same records) and
//! contends for the groups the plan gives it. A group whose holder died is
//! free in the plan as soon as its presence record is older than a lease;
//! the lease itself lets the new holder in only once the old lock expired.
//! Tasks contending for a group another live agent now holds, and tasks of
//! groups that are gone or no longer primary, are given up.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info, warn};

use super::leases::GroupDriver;
use super::Orchestrator;
use crate::control::{GroupId, Role, Timestamp};
use crate::placement::driver::LeaseTask;
use crate::placement::plan::{claims_for, SiteView};
use crate::placement::site::{
    holders_announced, live_agents, rates_announced, Presence, SiteError,
};
use crate::sync_util::lock;

/// What one round read from the site's records.
struct SiteRead {
    agents: BTreeMap<String, Presence>,
    holders: BTreeMap<String, String>,
    /// Each group's replication rate, bytes/s, as its newest record says.
    rates: BTreeMap<String, u64>,
}

impl Orchestrator {
    /// Starts the placement rounds (a multi-agent site only).
    pub(super) fn spawn_placement(self: &Arc<Self>) {
        let Some(leases) = &self.leases else {
            return;
        };
        let every = leases.times.retry.max(Duration::from_secs(1));
        info!(agent = %leases.agent, lease_secs = leases.times.duration.as_secs(), "multi-agent site: groups are driven under leases");
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let Some(orch) = me.upgrade() else {
                    return;
                };
                orch.placement_round().await;
            }
        });
    }

    /// One round (see the module doc).
    async fn placement_round(self: &Arc<Self>) {
        let Some(leases) = &self.leases else {
            return;
        };
        let groups: Vec<(GroupId, String)> = match self.groups() {
            Ok(groups) => groups
                .into_iter()
                .filter(|g| g.role == Role::Primary && g.remote_group_id.is_some())
                .map(|g| (g.id, g.name))
                .collect(),
            Err(error) => {
                warn!(%error, "placement: cannot list the site's groups");
                return;
            }
        };
        let site = leases.site.clone();
        let api = lock(&self.api_addr).map(|a| a.to_string());
        let peer = self.own_peer_endpoint();
        // The groups this agent drives, each with its replication rate (read
        // once the held set's lock is released: no lock inside another).
        let driving: Vec<(GroupId, String)> = {
            let held = lock(&leases.held);
            groups
                .iter()
                .filter(|(gid, _)| held.contains(gid))
                .cloned()
                .collect()
        };
        let held: BTreeMap<String, u64> = driving
            .into_iter()
            .map(|(gid, name)| {
                let rate = self.progress_of(gid).map_or(0, |p| p.replication_rate);
                (name, rate)
            })
            .collect();
        let read = tokio::task::spawn_blocking(move || read_site(&site, api, peer, held)).await;
        let read = match read {
            Ok(Ok(read)) => read,
            Ok(Err(error)) => {
                warn!(%error, "placement: cannot read the site's records");
                return;
            }
            Err(error) => {
                warn!(%error, "placement: the site read panicked");
                return;
            }
        };
        let ttl_ms = i64::try_from(leases.times.duration.as_millis()).unwrap_or(i64::MAX);
        let mut live = live_agents(&read.agents, Timestamp::now().0, ttl_ms);
        live.insert(leases.agent.clone());
        let view = SiteView {
            agents: live.clone(),
            groups: groups
                .iter()
                .map(|(_, n)| (n.clone(), read.rates.get(n).copied().unwrap_or(0)))
                .collect(),
            holders: read.holders.clone(),
        };
        let claims: BTreeSet<String> = claims_for(&view, &leases.agent).into_iter().collect();
        {
            let mut seen = lock(&leases.seen);
            seen.holders = read.holders.clone();
            seen.agents = read.agents;
        }
        // A service paired through another agent of the site: its peer is
        // trusted here too (a standby agent serves any primary the site
        // is paired with).
        for peer in self.paired_peers() {
            self.trust.insert(peer);
        }
        self.contend(&groups, &claims);
        self.give_up(&groups, &read.holders, &live).await;
    }

    /// Spawns a lease task for each group of `claims` this agent has none
    /// for.
    fn contend(self: &Arc<Self>, groups: &[(GroupId, String)], claims: &BTreeSet<String>) {
        let Some(leases) = &self.leases else {
            return;
        };
        let mut tasks = lock(&leases.tasks);
        for (gid, name) in groups {
            if !claims.contains(name) || tasks.contains_key(gid) {
                continue;
            }
            info!(group = %name, "placement: claiming the group");
            let driver = Arc::new(GroupDriver {
                orch: Arc::downgrade(self),
                gid: *gid,
            });
            match LeaseTask::spawn(name.clone(), leases.times, leases.backend.clone(), driver) {
                Ok(task) => {
                    tasks.insert(*gid, task);
                }
                Err(error) => warn!(group = %name, %error, "lease times"),
            }
        }
    }

    /// Ends the lease tasks of groups that are gone (or no longer primary)
    /// and of groups another live agent holds while this one only contends.
    async fn give_up(
        &self,
        groups: &[(GroupId, String)],
        holders: &BTreeMap<String, String>,
        live: &BTreeSet<String>,
    ) {
        let Some(leases) = &self.leases else {
            return;
        };
        let names: HashMap<GroupId, &String> = groups.iter().map(|(id, n)| (*id, n)).collect();
        let ending: Vec<(GroupId, LeaseTask)> = {
            let mut tasks = lock(&leases.tasks);
            let ids: Vec<GroupId> = tasks
                .iter()
                .filter(|(gid, task)| match names.get(gid) {
                    None => true,
                    Some(name) => {
                        matches!(task.view().lease, "contending" | "lost" | "connecting")
                            && holders
                                .get(*name)
                                .is_some_and(|h| *h != leases.agent && live.contains(h))
                    }
                })
                .map(|(gid, _)| *gid)
                .collect();
            ids.into_iter()
                .filter_map(|gid| tasks.remove(&gid).map(|t| (gid, t)))
                .collect()
        };
        for (gid, task) in ending {
            debug!(group = %gid, "placement: giving the lease task up");
            task.release().await;
        }
    }
}

/// Announces this agent (holding `held`), then reads every agent's record:
/// who is alive and who holds which group, in one read whatever the
/// number of groups.
fn read_site(
    site: &crate::placement::site::SiteRecords,
    api: Option<String>,
    peer: Option<String>,
    held: BTreeMap<String, u64>,
) -> Result<SiteRead, SiteError> {
    site.announce(api, peer, held, Timestamp::now().0)?;
    let agents = site.agents()?;
    let holders = holders_announced(&agents);
    let rates = rates_announced(&agents);
    Ok(SiteRead {
        agents,
        holders,
        rates,
    })
}
