//! The records of a multi-agent site in RADOS, beside its leases
//! ([`super::rados`]), in the control pool and namespace:
//! - who is alive: object `ferry.agents`, omap `agent.NAME` → the agent's
//!   operator API address, its peer endpoint (QUIC and peer API: what a
//!   primary dials, listed in the site's service key) and the wall-clock
//!   time it last announced itself ([`Presence`]); an agent that stops announcing counts as gone once a
//!   lease duration has passed ([`live_agents`]). The placement plan only
//!   needs this to be roughly right: the lease decides who drives;
//! - who drives each group: each agent lists the groups whose lease it
//!   holds, each with its replication rate ([`rates_announced`], what the
//!   plan weighs free groups by), in its presence record
//!   ([`holders_announced`]), so a placement
//!   round reads one object, not one lease object per group (at 100 agents
//!   and 2,000 groups that was ~67,000 reads/s, docs/scale.md). It lags the
//!   leases by a round at most; the lease decides who drives, and the
//!   authoritative holder, the cookie (agent name) of the lock on the lease
//!   object `ferry.lease.GROUP`, stays readable ([`SiteRecords::holder`]);
//! - the replication state of each group's sources, saved by the holder
//!   each time a source saves it (`source.IMAGE` on the lease object), which
//!   an agent taking the group over restores before it replicates, so it
//!   resumes where the previous holder was instead of copying everything.
//!
//! Every call is one blocking RADOS request through the agent's cluster
//! connection (the one its leases and images use): once another agent has
//! blocklisted it, its writes here are refused too.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ferry_engine::rbd::{CephError, ClusterSpec, RbdError};
use ferry_engine::sys::librados::omap::WriteOp;
use ferry_engine::sys::librados::Pool;
use serde::{Deserialize, Serialize};

use super::rados::{lease_object, LOCK_NAME};

/// The object listing the site's agents.
pub const AGENTS_OBJECT: &str = "ferry.agents";
const AGENT_KEY: &str = "agent.";
const SOURCE_KEY: &str = "source.";

/// Why a site record could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    /// The control pool could not be opened.
    #[error("opening the control pool")]
    Open(#[source] RbdError),
    /// A RADOS call failed.
    #[error(transparent)]
    Ceph(#[from] CephError),
    /// A presence record is not what this agent writes.
    #[error("presence record of agent {agent}: {reason}")]
    Decode {
        /// The agent.
        agent: String,
        /// What is wrong.
        reason: String,
    },
}

/// What an agent says of itself in `ferry.agents`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    /// Its operator API address (`None` before it listens).
    pub api: Option<String>,
    /// Its peer endpoint (`HOST:PORT`), what a primary site dials; `None`
    /// when it listens on an unspecified address, or from an agent of a
    /// version before the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// When it last announced itself, Unix milliseconds (its clock).
    pub seen_ms: i64,
    /// The groups whose lease it held then.
    #[serde(default)]
    pub held: Vec<String>,
    /// The replication rate of each of them then, bytes/s (what the
    /// placement weighs groups by; absent from an agent of a version
    /// before the field).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rates: BTreeMap<String, u64>,
}

/// Who holds each group as the agents' announcements say: a group two
/// records list (the lease moved and the old holder's record is not yet
/// rewritten, or has expired) goes to the newer announcement.
pub fn holders_announced(agents: &BTreeMap<String, Presence>) -> BTreeMap<String, String> {
    let mut best: BTreeMap<String, (i64, &str)> = BTreeMap::new();
    for (agent, presence) in agents {
        for group in &presence.held {
            let newer = best
                .get(group)
                .is_none_or(|(seen, _)| presence.seen_ms > *seen);
            if newer {
                best.insert(group.clone(), (presence.seen_ms, agent));
            }
        }
    }
    best.into_iter()
        .map(|(group, (_, agent))| (group, agent.to_owned()))
        .collect()
}

/// Each group's replication rate as its newest announcement says (a group
/// no record rates is absent: weighed as 0).
pub fn rates_announced(agents: &BTreeMap<String, Presence>) -> BTreeMap<String, u64> {
    let mut best: BTreeMap<&str, (i64, u64)> = BTreeMap::new();
    for presence in agents.values() {
        for (group, rate) in &presence.rates {
            let newer = best
                .get(group.as_str())
                .is_none_or(|(seen, _)| presence.seen_ms > *seen);
            if newer {
                best.insert(group, (presence.seen_ms, *rate));
            }
        }
    }
    best.into_iter()
        .map(|(group, (_, rate))| (group.to_owned(), rate))
        .collect()
}

/// The agents whose last announcement is younger than `ttl_ms` at `now_ms`.
pub fn live_agents(
    agents: &BTreeMap<String, Presence>,
    now_ms: i64,
    ttl_ms: i64,
) -> BTreeSet<String> {
    agents
        .iter()
        .filter(|(_, p)| now_ms.saturating_sub(p.seen_ms) < ttl_ms)
        .map(|(name, _)| name.clone())
        .collect()
}

/// The peer endpoints the `live` agents announced: `own`'s first, then the
/// others by agent name, each once. What a primary site is given to reach
/// this site (its service key, the peer API's answers).
pub fn peer_endpoints(
    agents: &BTreeMap<String, Presence>,
    live: &BTreeSet<String>,
    own: &str,
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let own_first = agents
        .get_key_value(own)
        .into_iter()
        .chain(agents.iter().filter(|(name, _)| name.as_str() != own));
    for (name, presence) in own_first {
        if let Some(peer) = presence.peer.as_ref().filter(|_| live.contains(name)) {
            if !out.contains(peer) {
                out.push(peer.clone());
            }
        }
    }
    out
}

/// Where a site's records live, and who this agent is.
#[derive(Debug, Clone)]
pub struct SiteRecords {
    /// The cluster (the agent's `[ceph]`).
    pub cluster: ClusterSpec,
    /// The control pool.
    pub pool: String,
    /// The control namespace.
    pub namespace: Option<String>,
    /// This agent's name in the site.
    pub agent: String,
}

impl SiteRecords {
    fn pool(&self) -> Result<Arc<Pool>, SiteError> {
        ferry_engine::rbd::open_pool(&self.cluster, &self.pool, self.namespace.as_deref())
            .map_err(SiteError::Open)
    }

    /// Records that this agent is alive now, answering on `api` (operator)
    /// and `peer` (peer endpoint) and holding the leases of `held` (each
    /// group with its replication rate, bytes/s).
    pub fn announce(
        &self,
        api: Option<String>,
        peer: Option<String>,
        held: BTreeMap<String, u64>,
        now_ms: i64,
    ) -> Result<(), SiteError> {
        let record = Presence {
            api,
            peer,
            seen_ms: now_ms,
            held: held.keys().cloned().collect(),
            rates: held,
        };
        let value = serde_json::to_vec(&record).map_err(|e| SiteError::Decode {
            agent: self.agent.clone(),
            reason: e.to_string(),
        })?;
        let mut op = WriteOp::new();
        op.set(&format!("{AGENT_KEY}{}", self.agent), &value);
        self.pool()?.write(AGENTS_OBJECT, &op)?;
        Ok(())
    }

    /// Removes this agent's record (a clean shutdown).
    pub fn withdraw(&self) -> Result<(), SiteError> {
        let mut op = WriteOp::new();
        op.remove(&format!("{AGENT_KEY}{}", self.agent));
        self.pool()?.write(AGENTS_OBJECT, &op)?;
        Ok(())
    }

    /// Every agent's last announcement.
    pub fn agents(&self) -> Result<BTreeMap<String, Presence>, SiteError> {
        let entries = match self.pool()?.omap_list(AGENTS_OBJECT, AGENT_KEY) {
            Ok(entries) => entries,
            Err(e) if e.is_not_found() => return Ok(BTreeMap::new()),
            Err(e) => return Err(e.into()),
        };
        entries
            .into_iter()
            .filter_map(|(key, value)| {
                let agent = key.strip_prefix(AGENT_KEY)?.to_owned();
                Some(
                    serde_json::from_slice::<Presence>(&value)
                        .map(|p| (agent.clone(), p))
                        .map_err(|e| SiteError::Decode {
                            agent,
                            reason: e.to_string(),
                        }),
                )
            })
            .collect()
    }

    /// The agent holding `group`'s lease now (the lock's cookie), if any.
    pub fn holder(&self, group: &str) -> Result<Option<String>, SiteError> {
        match self.pool()?.lockers(&lease_object(group), LOCK_NAME) {
            Ok(info) => Ok(info.lockers.into_iter().next().map(|l| l.cookie)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Keeps `state` as the replication state of `group`'s source `key`.
    pub fn save_state(&self, group: &str, key: &str, state: &[u8]) -> Result<(), SiteError> {
        let mut op = WriteOp::new();
        op.set(&format!("{SOURCE_KEY}{key}"), state);
        self.pool()?.write(&lease_object(group), &op)?;
        Ok(())
    }

    /// Every source state of `group` kept, by key.
    pub fn states(&self, group: &str) -> Result<Vec<(String, Vec<u8>)>, SiteError> {
        match self.pool()?.omap_list(&lease_object(group), SOURCE_KEY) {
            Ok(entries) => Ok(entries
                .into_iter()
                .filter_map(|(k, v)| Some((k.strip_prefix(SOURCE_KEY)?.to_owned(), v)))
                .collect()),
            Err(e) if e.is_not_found() => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seen_ms: i64) -> Presence {
        Presence {
            api: Some("127.0.0.1:1".into()),
            peer: None,
            seen_ms,
            held: Vec::new(),
            rates: BTreeMap::new(),
        }
    }

    fn holding(seen_ms: i64, groups: &[&str]) -> Presence {
        Presence {
            held: groups.iter().map(|g| (*g).to_owned()).collect(),
            ..at(seen_ms)
        }
    }

    #[test]
    fn a_group_two_records_list_goes_to_the_newer_announcement() {
        let agents: BTreeMap<String, Presence> = [
            // p1 announced g1 and g2, then died; p2 took g2 over since.
            ("p1".to_owned(), holding(1_000, &["g1", "g2"])),
            ("p2".to_owned(), holding(4_000, &["g2", "g3"])),
            ("p3".to_owned(), holding(3_000, &[])),
        ]
        .into_iter()
        .collect();
        let holders = holders_announced(&agents);
        let want: BTreeMap<String, String> = [("g1", "p1"), ("g2", "p2"), ("g3", "p2")]
            .into_iter()
            .map(|(g, a)| (g.to_owned(), a.to_owned()))
            .collect();
        assert_eq!(holders, want);
    }

    #[test]
    fn a_groups_rate_is_its_newest_announcements() {
        let rated = |seen_ms: i64, rates: &[(&str, u64)]| Presence {
            held: rates.iter().map(|(g, _)| (*g).to_owned()).collect(),
            rates: rates.iter().map(|(g, r)| ((*g).to_owned(), *r)).collect(),
            ..at(seen_ms)
        };
        let agents: BTreeMap<String, Presence> = [
            // p1 announced g1 and g2 and died; p2 drives g2 now, at another rate.
            ("p1".to_owned(), rated(1_000, &[("g1", 500), ("g2", 900)])),
            ("p2".to_owned(), rated(4_000, &[("g2", 700)])),
            ("p3".to_owned(), holding(5_000, &["g3"])),
        ]
        .into_iter()
        .collect();
        let want: BTreeMap<String, u64> = [("g1", 500), ("g2", 700)]
            .into_iter()
            .map(|(g, r)| (g.to_owned(), r))
            .collect();
        assert_eq!(rates_announced(&agents), want);
    }

    #[test]
    fn a_record_of_an_older_agent_without_held_groups_still_reads() {
        let old = br#"{"api":"127.0.0.1:9","seen_ms":5}"#;
        let presence: Presence = serde_json::from_slice(old).expect("an older record");
        assert!(presence.held.is_empty());
        assert!(presence.rates.is_empty());
        assert_eq!(presence.peer, None);
    }

    #[test]
    fn the_sites_peer_endpoints_are_the_live_agents_own_first() {
        let with_peer = |seen_ms: i64, peer: Option<&str>| Presence {
            peer: peer.map(str::to_owned),
            ..at(seen_ms)
        };
        let agents: BTreeMap<String, Presence> = [
            ("b1".to_owned(), with_peer(9_000, Some("10.0.0.1:7443"))),
            ("b2".to_owned(), with_peer(9_000, Some("10.0.0.2:7443"))),
            ("b3".to_owned(), with_peer(9_000, None)),
            ("gone".to_owned(), with_peer(1_000, Some("10.0.0.9:7443"))),
            ("twin".to_owned(), with_peer(9_000, Some("10.0.0.1:7443"))),
        ]
        .into_iter()
        .collect();
        let live = live_agents(&agents, 10_000, 5_000);
        assert_eq!(
            peer_endpoints(&agents, &live, "b2"),
            vec!["10.0.0.2:7443".to_owned(), "10.0.0.1:7443".to_owned()]
        );
        assert_eq!(
            peer_endpoints(&agents, &live, "b3"),
            vec!["10.0.0.1:7443".to_owned(), "10.0.0.2:7443".to_owned()]
        );
    }

    #[test]
    fn an_agent_is_live_until_its_announcement_is_older_than_the_ttl() {
        let agents: BTreeMap<String, Presence> = [
            ("fresh".to_owned(), at(9_500)),
            ("edge".to_owned(), at(5_001)),
            ("stale".to_owned(), at(5_000)),
            ("ahead".to_owned(), at(12_000)),
        ]
        .into_iter()
        .collect();
        let live = live_agents(&agents, 10_000, 5_000);
        let want: BTreeSet<String> = ["fresh", "edge", "ahead"]
            .into_iter()
            .map(str::to_owned)
            .collect();
        assert_eq!(live, want);
        assert!(live_agents(&agents, 100_000, 5_000).is_empty());
    }
}
