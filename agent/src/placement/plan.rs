//! Which agent claims which free protection group, sans I/O: every agent of
//! a site computes the same [`plan`] from the same [`SiteView`] (the live
//! agents, who holds what, each group's replication rate) and contends
//! only for the groups the plan gives it. The lease decides if two agents
//! with different views contend for one group; the plan only keeps them
//! from trying in the common case and spreads the work.
//!
//! A free group (no holder, or a holder that is not among the live agents)
//! goes to the least-loaded agent, load being the bytes per second of the
//! groups it holds or was planned, with the number of groups as the
//! tie-breaker and the agent's name last. Free groups are placed largest
//! rate first (the longest-processing-time rule), so one large group does
//! not land on an agent already given many small ones. Held groups never
//! move: rebalancing a live holder is an operator's decision.

use std::collections::{BTreeMap, BTreeSet};

/// What an agent knows of its site when it plans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteView<A: Ord, G: Ord> {
    /// The agents that are alive (watching the control objects).
    pub agents: BTreeSet<A>,
    /// Every protection group of the site, with its replication rate in
    /// bytes per second (as its last holder measured it; 0 if never run).
    pub groups: BTreeMap<G, u64>,
    /// The group's lease holder, for the groups that have one.
    pub holders: BTreeMap<G, A>,
}

impl<A: Ord + Clone, G: Ord + Clone> SiteView<A, G> {
    /// An empty site.
    pub fn new() -> Self {
        Self {
            agents: BTreeSet::new(),
            groups: BTreeMap::new(),
            holders: BTreeMap::new(),
        }
    }

    /// The groups without a live holder.
    pub fn free_groups(&self) -> Vec<G> {
        self.groups
            .keys()
            .filter(|g| {
                self.holders
                    .get(*g)
                    .is_none_or(|holder| !self.agents.contains(holder))
            })
            .cloned()
            .collect()
    }

    /// Each live agent's load from the groups it holds now.
    pub fn loads(&self) -> BTreeMap<A, Load> {
        let mut loads: BTreeMap<A, Load> = self
            .agents
            .iter()
            .map(|a| (a.clone(), Load::default()))
            .collect();
        for (group, holder) in &self.holders {
            if let (Some(load), Some(rate)) = (loads.get_mut(holder), self.groups.get(group)) {
                load.add(*rate);
            }
        }
        loads
    }
}

impl<A: Ord + Clone, G: Ord + Clone> Default for SiteView<A, G> {
    fn default() -> Self {
        Self::new()
    }
}

/// An agent's load: compared by bytes per second, then by group count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Load {
    /// Sum of the replication rates of its groups, bytes per second.
    pub bytes_per_sec: u64,
    /// How many groups it drives.
    pub groups: u64,
}

impl Load {
    fn add(&mut self, rate: u64) {
        self.bytes_per_sec = self.bytes_per_sec.saturating_add(rate);
        self.groups += 1;
    }
}

/// The plan: which live agent claims each free group (empty when no agent
/// is alive).
pub fn plan<A: Ord + Clone, G: Ord + Clone>(view: &SiteView<A, G>) -> BTreeMap<G, A> {
    let mut loads = view.loads();
    let mut free: Vec<(u64, G)> = view
        .free_groups()
        .into_iter()
        .map(|g| (view.groups.get(&g).copied().unwrap_or(0), g))
        .collect();
    // Largest rate first; equal rates in group order.
    free.sort_by(|(ra, ga), (rb, gb)| rb.cmp(ra).then_with(|| ga.cmp(gb)));
    let mut placed = BTreeMap::new();
    for (rate, group) in free {
        let Some(agent) = loads
            .iter()
            .min_by(|(aa, la), (ab, lb)| la.cmp(lb).then_with(|| aa.cmp(ab)))
            .map(|(a, _)| a.clone())
        else {
            break;
        };
        if let Some(load) = loads.get_mut(&agent) {
            load.add(rate);
        }
        placed.insert(group, agent);
    }
    placed
}

/// The free groups `me` should claim under the plan.
pub fn claims_for<A: Ord + Clone, G: Ord + Clone>(view: &SiteView<A, G>, me: &A) -> Vec<G> {
    plan(view)
        .into_iter()
        .filter(|(_, agent)| agent == me)
        .map(|(group, _)| group)
        .collect()
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
