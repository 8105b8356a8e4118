//! Unit and property tests of the placement plan: least-loaded by bytes/s,
//! group count as tie-breaker, held groups kept, the same plan from the
//! same view however it was gathered.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::*;

fn view(agents: &[&str], groups: &[(u32, u64)], holders: &[(u32, &str)]) -> SiteView<String, u32> {
    SiteView {
        agents: agents.iter().map(|a| a.to_string()).collect(),
        groups: groups.iter().copied().collect(),
        holders: holders.iter().map(|(g, a)| (*g, a.to_string())).collect(),
    }
}

fn placed(plan: &BTreeMap<u32, String>) -> Vec<(u32, &str)> {
    plan.iter().map(|(g, a)| (*g, a.as_str())).collect()
}

#[test]
fn free_groups_go_to_the_agent_with_the_fewest_bytes_per_second() {
    // a drives 100 MB/s in one group, b 10 MB/s in three: b is less loaded
    // although it drives more groups.
    let v = view(
        &["a", "b"],
        &[(1, 100), (2, 4), (3, 3), (4, 3), (5, 50)],
        &[(1, "a"), (2, "b"), (3, "b"), (4, "b")],
    );
    assert_eq!(placed(&plan(&v)), vec![(5, "b")]);
    assert_eq!(claims_for(&v, &"b".to_string()), vec![5]);
    assert!(claims_for(&v, &"a".to_string()).is_empty());
}

#[test]
fn equal_bytes_per_second_is_decided_by_group_count_then_name() {
    let v = view(
        &["a", "b", "c"],
        &[(1, 0), (2, 0), (3, 0), (9, 0)],
        &[(1, "a"), (2, "a"), (3, "b")],
    );
    // c holds nothing: it takes the free group.
    assert_eq!(placed(&plan(&v)), vec![(9, "c")]);
    let v = view(&["b", "a"], &[(7, 0), (8, 0)], &[]);
    // Equal loads: the first name, then the other (it now has a group).
    assert_eq!(placed(&plan(&v)), vec![(7, "a"), (8, "b")]);
}

#[test]
fn larger_groups_are_placed_first_so_bytes_balance() {
    // Placing in group order would end with a at 20 and b at 100;
    // largest-first gives the 90 alone to a and the three 10s to b.
    let v = view(&["a", "b"], &[(1, 10), (2, 10), (3, 10), (4, 90)], &[]);
    let p = plan(&v);
    assert_eq!(placed(&p), vec![(1, "b"), (2, "b"), (3, "b"), (4, "a")]);
}

#[test]
fn held_groups_stay_and_a_dead_holders_groups_are_free() {
    let v = view(
        &["a", "b"],
        &[(1, 5), (2, 5), (3, 5)],
        &[(1, "a"), (2, "dead"), (3, "b")],
    );
    assert_eq!(v.free_groups(), vec![2]);
    let p = plan(&v);
    assert_eq!(placed(&p), vec![(2, "a")]);
    // The dead agent's load counts for nobody.
    let loads = v.loads();
    assert_eq!(loads.len(), 2);
    assert_eq!(
        loads["a"],
        Load {
            bytes_per_sec: 5,
            groups: 1
        }
    );
}

#[test]
fn no_live_agent_plans_nothing() {
    let v = view(&[], &[(1, 5)], &[]);
    assert!(plan(&v).is_empty());
    assert!(SiteView::<String, u32>::default().free_groups().is_empty());
}

#[test]
fn a_holder_of_an_unknown_group_adds_no_load() {
    let v = view(&["a", "b"], &[(1, 5)], &[(99, "a")]);
    assert_eq!(v.loads()["a"], Load::default());
    assert_eq!(placed(&plan(&v)), vec![(1, "a")]);
}

fn arb_view() -> impl Strategy<Value = SiteView<String, u32>> {
    (
        prop::collection::btree_set(0u8..8, 0..6),
        prop::collection::btree_map(0u32..40, 0u64..1000, 0..30),
        prop::collection::vec((0u32..40, 0u8..10), 0..30),
    )
        .prop_map(|(agents, groups, holders)| SiteView {
            agents: agents.into_iter().map(|a| format!("agent{a}")).collect(),
            groups,
            holders: holders
                .into_iter()
                .map(|(g, a)| (g, format!("agent{a}")))
                .collect(),
        })
}

proptest! {
    /// Every free group is placed once, on a live agent, and each step
    /// picked an agent whose load was the least at that step.
    #[test]
    fn every_free_group_goes_to_a_least_loaded_agent(v in arb_view()) {
        let p = plan(&v);
        let free: BTreeSet<u32> = v.free_groups().into_iter().collect();
        if v.agents.is_empty() {
            prop_assert!(p.is_empty());
            return Ok(());
        }
        prop_assert_eq!(p.keys().copied().collect::<BTreeSet<_>>(), free);
        // Replay in the plan's order (largest rate first) and check each
        // choice against the loads at that point.
        let mut loads = v.loads();
        let mut order: Vec<(u64, u32)> = p.keys().map(|g| (v.groups[g], *g)).collect();
        order.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        for (rate, g) in order {
            let chosen = &p[&g];
            prop_assert!(v.agents.contains(chosen));
            let least = loads.values().min().copied().unwrap_or_default();
            prop_assert_eq!(loads[chosen], least);
            let load = loads.get_mut(chosen).unwrap();
            load.bytes_per_sec += rate;
            load.groups += 1;
        }
    }

    /// Two agents that gathered the same view in different orders plan
    /// the same, and the claims of all agents partition the free groups.
    #[test]
    fn the_plan_depends_on_the_view_only(v in arb_view()) {
        let mut again = SiteView::new();
        for a in v.agents.iter().rev() {
            again.agents.insert(a.clone());
        }
        for (g, r) in v.groups.iter().rev() {
            again.groups.insert(*g, *r);
        }
        for (g, a) in v.holders.iter().rev() {
            again.holders.insert(*g, a.clone());
        }
        prop_assert_eq!(plan(&v), plan(&again));
        let mut claimed: Vec<u32> = v.agents.iter().flat_map(|a| claims_for(&v, a)).collect();
        claimed.sort();
        let before = claimed.len();
        claimed.dedup();
        prop_assert_eq!(before, claimed.len());
        prop_assert_eq!(claimed.len(), plan(&v).len());
    }

    /// The greedy largest-first placement keeps the busiest agent within
    /// the largest single free group of the least busy one, when nothing
    /// was held before.
    #[test]
    fn fresh_placement_balances_bytes(
        agents in 1usize..6,
        rates in prop::collection::vec(0u64..1000, 0..40),
    ) {
        let v = SiteView {
            agents: (0..agents).map(|a| format!("agent{a}")).collect(),
            groups: rates.iter().enumerate().map(|(g, r)| (g as u32, *r)).collect(),
            holders: BTreeMap::new(),
        };
        let mut per_agent: BTreeMap<&String, u64> = v.agents.iter().map(|a| (a, 0)).collect();
        for (g, a) in &plan(&v) {
            *per_agent.get_mut(a).unwrap() += v.groups[g];
        }
        let max = per_agent.values().max().copied().unwrap_or(0);
        let min = per_agent.values().min().copied().unwrap_or(0);
        let largest = rates.iter().max().copied().unwrap_or(0);
        prop_assert!(max - min <= largest, "max {} min {} largest {}", max, min, largest);
    }
}
