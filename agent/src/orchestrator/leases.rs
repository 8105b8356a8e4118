//! Which agent drives a primary group. With the default control store
//! (`[control] store = "sqlite"`) this agent drives every one of its
//! groups, without leases, as it always did. With `store = "rados"` the
//! site's agents share the groups, and a group's replication loop, its
//! scheduled recovery points, its deferred peer calls and its operations
//! run only on the agent holding the group's lease (`crate::placement`):
//! the lease task's [`Driven`] start and stop (this file) start and stop
//! them (a lease lost ends the group's running operations and take-over
//! too, before another agent may start: `placement/work.rs`); which groups
//! this agent contends for is decided by the placement round
//! (`placement_round.rs`); a mutating operation sent to another
//! agent is refused with the holder's name and API address
//! ([`Orchestrator::require_driver`]), which the operator API then
//! forwards the request to (`api/forward.rs`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde_json::{json, Value};
use tracing::{info, warn};

use super::{CtlError, CtlResult, Orchestrator};
use crate::config::ControlStore;
use crate::control::{Group, GroupId, OperationId, Role, Timestamp};
use crate::placement::driver::{Driven, LeaseBackend, LeaseTask, StopCause};
use crate::placement::lease::LeaseTimes;
use crate::placement::rados::{RadosLeaseConfig, RadosLeases};
use crate::placement::site::{live_agents, peer_endpoints, Presence, SiteRecords};
use crate::placement::work::GroupWork;
use crate::sync_util::lock;

/// How long a fenced client stays blocklisted.
const BLOCKLIST_FOR: Duration = Duration::from_secs(3600);

/// The leases of a multi-agent site (`[control] store = "rados"`).
pub(super) struct Leases {
    /// This agent's name in the site.
    pub(super) agent: String,
    /// `[control] peer_endpoint`: what it announces for peer sites to dial.
    pub(super) peer_endpoint: Option<String>,
    pub(super) times: LeaseTimes,
    pub(super) backend: Arc<dyn LeaseBackend>,
    pub(super) site: Arc<SiteRecords>,
    /// The lease task of each group this agent contends for or holds.
    pub(super) tasks: Mutex<HashMap<GroupId, LeaseTask>>,
    /// The groups this agent drives now (between the lease's start and
    /// stop): what every "may I touch this group" check reads.
    pub(super) held: Mutex<HashSet<GroupId>>,
    /// What the last placement round saw: each group's holder by name, and
    /// every agent's presence record.
    pub(super) seen: Mutex<SiteSeen>,
    /// The operations this process runs now (a lease taken again must not
    /// finish them as left over by a dead holder).
    pub(super) running_ops: Mutex<HashSet<OperationId>>,
    /// What runs on each group besides its replication loop (its
    /// operations, tagged with their ids, and the take-over): ended with
    /// the loop when the group's lease stops it.
    pub(super) work: Arc<GroupWork<GroupId, Option<OperationId>>>,
}

/// The site as the last placement round read it.
#[derive(Default)]
pub(super) struct SiteSeen {
    /// Group name → the agent holding its lease.
    pub(super) holders: BTreeMap<String, String>,
    /// Agent name → its presence record.
    pub(super) agents: BTreeMap<String, Presence>,
}

/// The timing of a lease of `secs` seconds: renewed at a third, stopped a
/// sixth (at least 1 s) before it can end, claims retried every tenth (at
/// least half a second).
pub fn lease_times(secs: u64) -> LeaseTimes {
    let duration = Duration::from_secs(secs);
    LeaseTimes {
        duration,
        renew_permille: 333,
        safety_margin: (duration / 6).max(Duration::from_secs(1)),
        retry: (duration / 10).max(Duration::from_millis(500)),
    }
}

/// This host's name as an agent name (`[control] agent_name` unset).
pub fn host_agent_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(64)
        .collect();
    if name.is_empty() {
        "agent".to_owned()
    } else {
        name
    }
}

impl Leases {
    /// The leases `control` asks for (None: SQLite, no leases).
    pub(super) fn from_config(
        control: &ControlStore,
        ceph: &ferry_engine::rbd::ClusterSpec,
    ) -> Option<Self> {
        let ControlStore::Rados {
            pool,
            namespace,
            agent_name,
            lease_secs,
            peer_endpoint,
        } = control
        else {
            return None;
        };
        let agent = agent_name.clone().unwrap_or_else(host_agent_name);
        let backend = RadosLeases::new(RadosLeaseConfig {
            cluster: ceph.clone(),
            pool: pool.clone(),
            namespace: namespace.clone(),
            agent: agent.clone(),
            duration: Duration::from_secs(*lease_secs),
            blocklist_for: BLOCKLIST_FOR,
        });
        let site = SiteRecords {
            cluster: ceph.clone(),
            pool: pool.clone(),
            namespace: namespace.clone(),
            agent: agent.clone(),
        };
        Some(Self {
            agent,
            peer_endpoint: peer_endpoint.clone(),
            times: lease_times(*lease_secs),
            backend: Arc::new(backend),
            site: Arc::new(site),
            tasks: Mutex::new(HashMap::new()),
            held: Mutex::new(HashSet::new()),
            seen: Mutex::new(SiteSeen::default()),
            running_ops: Mutex::new(HashSet::new()),
            work: Arc::default(),
        })
    }
}

/// Starts and stops one group for its lease task.
pub(super) struct GroupDriver {
    pub(super) orch: Weak<Orchestrator>,
    pub(super) gid: GroupId,
}

impl Driven for GroupDriver {
    fn start(&self, group: &str) {
        let Some(orch) = self.orch.upgrade() else {
            return;
        };
        let Some(leases) = &orch.leases else {
            return;
        };
        lock(&leases.held).insert(self.gid);
        let (gid, group) = (self.gid, group.to_owned());
        let work = leases.work.clone();
        work.spawn(gid, None, async move { orch.take_over(gid, &group).await });
    }

    fn stop<'a>(
        &'a self,
        group: &'a str,
        cause: StopCause,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            let Some(orch) = self.orch.upgrade() else {
                return;
            };
            if let Some(leases) = &orch.leases {
                lock(&leases.held).remove(&self.gid);
                if cause == StopCause::Lost {
                    for op in leases.work.end(self.gid).await.into_iter().flatten() {
                        warn!(%group, %op, "the group's lease ended: its operation stops here; the group's next holder finishes it");
                        orch.note_running(op, false);
                    }
                }
            }
            orch.halt_loop(self.gid).await;
        })
    }
}

impl Orchestrator {
    /// Whether this agent may drive group `g` now: always without leases
    /// and for groups that are not primary; with leases, while it holds
    /// the group's.
    pub(super) fn drives(&self, g: &Group) -> bool {
        match &self.leases {
            None => true,
            Some(_) if g.role != Role::Primary => true,
            Some(leases) => lock(&leases.held).contains(&g.id),
        }
    }

    /// Refuses a mutating operation on a primary group another agent of
    /// the site drives, naming that agent and its operator API address.
    pub(super) fn require_driver(&self, g: &Group) -> CtlResult<()> {
        if self.drives(g) {
            return Ok(());
        }
        let (holder, api) = self.holder_of(&g.name);
        Err(CtlError::NotDriver {
            group: g.name.clone(),
            holder,
            api,
        })
    }

    /// The agent holding `group`'s lease as the last placement round saw
    /// it, with its operator API address.
    fn holder_of(&self, group: &str) -> (Option<String>, Option<String>) {
        let Some(leases) = &self.leases else {
            return (None, None);
        };
        let seen = lock(&leases.seen);
        let holder = seen.holders.get(group).cloned();
        let api = holder
            .as_ref()
            .and_then(|h| seen.agents.get(h))
            .and_then(|p| p.api.clone());
        (holder, api)
    }

    /// Starts replicating primary group `gid`: at once without leases; with
    /// them only while this agent holds the group's lease (the lease's
    /// start runs it otherwise).
    pub(super) fn start_loop(self: &Arc<Self>, gid: GroupId) {
        let Some(leases) = &self.leases else {
            self.run_loop(gid);
            return;
        };
        // Checked and started under one lock: a stop in between either
        // comes first (nothing starts) or halts what started.
        let held = lock(&leases.held);
        if held.contains(&gid) {
            self.run_loop(gid);
        }
    }

    /// Stops replicating group `gid` (the lease, if any, stays held).
    pub(super) async fn stop_loop(&self, gid: GroupId) {
        self.halt_loop(gid).await;
    }

    /// What this agent does once it holds group `gid`'s lease: restores the
    /// sources' replication state the previous holder saved, finishes the
    /// operations it left running, and resumes replicating a syncing group.
    async fn take_over(self: Arc<Self>, gid: GroupId, group: &str) {
        info!(%group, "driving the group (lease held)");
        if let Err(error) = self.restore_handover(gid).await {
            warn!(%group, %error, "the previous holder's source state could not be restored; its sources start from this agent's own");
        }
        self.recover_group_operations(gid).await;
        let g = match self.db(|s| s.group(gid)) {
            Ok(g) => g,
            Err(error) => {
                warn!(%group, %error, "the group is gone");
                return;
            }
        };
        if g.role == Role::Primary && g.state == crate::control::GroupState::Syncing {
            self.start_loop(gid);
        }
    }

    /// Who drives group `g`, for `ferry status` and `ferry group show`: this
    /// agent without leases; with them, the lease holder as this agent
    /// knows it (its own task first, else the last placement round).
    pub(super) fn driven_by(&self, g: &Group) -> Value {
        let api = lock(&self.api_addr).map(|a| a.to_string());
        let Some(leases) = &self.leases else {
            return json!({ "agent": host_agent_name(), "api": api, "lease": "none", "this_agent": true });
        };
        if g.role != Role::Primary {
            return Value::Null;
        }
        if self.drives(g) {
            return json!({ "agent": leases.agent, "api": api, "lease": "holding", "this_agent": true });
        }
        let (holder, api) = self.holder_of(&g.name);
        let lease = lock(&leases.tasks)
            .get(&g.id)
            .map_or("not contending", |t| t.view().lease);
        json!({ "agent": holder, "api": api, "lease": lease, "this_agent": false })
    }

    /// Whether this process runs operation `op` now.
    pub(super) fn runs_here(&self, op: OperationId) -> bool {
        self.leases
            .as_ref()
            .is_some_and(|l| lock(&l.running_ops).contains(&op))
    }

    /// Notes that this process runs (`true`) or ended (`false`) `op`.
    pub(super) fn note_running(&self, op: OperationId, running: bool) {
        if let Some(leases) = &self.leases {
            let mut ops = lock(&leases.running_ops);
            if running {
                ops.insert(op);
            } else {
                ops.remove(&op);
            }
        }
    }

    /// The peer endpoints of the site's live agents as the last placement
    /// round saw them, this agent's first (`None` without leases, and
    /// before this agent's first round read the site's records).
    pub fn site_peer_endpoints(&self) -> Option<Vec<String>> {
        let leases = self.leases.as_ref()?;
        let ttl_ms = i64::try_from(leases.times.duration.as_millis()).unwrap_or(i64::MAX);
        let mut seen = lock(&leases.seen).agents.clone();
        if seen.is_empty() {
            return None;
        }
        // This agent as it announces itself now (the round may not have
        // run yet).
        seen.insert(
            leases.agent.clone(),
            Presence {
                api: None,
                peer: self.own_peer_endpoint(),
                seen_ms: Timestamp::now().0,
                held: Vec::new(),
                rates: std::collections::BTreeMap::new(),
            },
        );
        let live = live_agents(&seen, Timestamp::now().0, ttl_ms);
        Some(peer_endpoints(&seen, &live, &leases.agent))
    }

    /// This agent's peer endpoint, as a peer site dials it: `[control]
    /// peer_endpoint`, else its listen address (`None` when that is
    /// unspecified).
    pub(super) fn own_peer_endpoint(&self) -> Option<String> {
        let configured = self.leases.as_ref().and_then(|l| l.peer_endpoint.clone());
        configured
            .or_else(|| (!self.quic_addr.ip().is_unspecified()).then(|| self.quic_addr.to_string()))
    }

    /// This agent's name in a multi-agent site (None without leases).
    pub fn site_agent_name(&self) -> Option<String> {
        self.leases.as_ref().map(|l| l.agent.clone())
    }

    /// Gives every lease up (agent shutdown): each group stops first.
    pub(super) async fn release_leases(&self) {
        let Some(leases) = &self.leases else {
            return;
        };
        let tasks: Vec<LeaseTask> = lock(&leases.tasks).drain().map(|(_, t)| t).collect();
        for task in tasks {
            task.release().await;
        }
        let site = leases.site.clone();
        let _ = tokio::task::spawn_blocking(move || site.withdraw()).await;
    }
}
