//! Groups spread over the agents of a multi-agent site and taken over
//! without a resync, against the two-site Ceph lab (`#[ignore]`d;
//! `FERRY_CEPH_LAB=1`): two primary agents of site-a share their control
//! state in RADOS (`[control] store = "rados"`, one identity for the site,
//! a 10 s lease) and one standby agent keeps RBD images on site-b.
//!
//! - The site's groups get spread over both primary agents; `ferry status`
//!   and `ferry group show` on either name the agent driving each;
//!   mutating operations sent to the agent that does not drive the group
//!   are forwarded to the driver and carried out, and one that was already
//!   forwarded is refused with the driver's name and operator API address.
//! - SIGKILL one primary agent while a writer writes into every image: each
//!   of its groups is driven by the other within the lease + 10 s and
//!   resumes incrementally (the first cycle the new holder commits sends a
//!   fraction of what a full copy of the group sends; its recovery point is
//!   above the dead holder's last), and once the writer stops every standby
//!   image equals its source at the group's committed recovery point.
//! - The killed agent back and the other stopped (SIGTERM): it gives its
//!   leases back, and the first takes every group and resumes each
//!   incrementally from the state the other kept (over its own stale one).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use ferry_e2e::cli::ok;
use ferry_e2e::lab::{self, Cleanup};
use ferry_e2e::multi_agent::{
    add_and_start, check_standby_points, make_group, multi_agent_site, progress_u64,
    resumed_incrementally, status_group, wait_for, Groups, Namespace, RbdGroups, Site, Writer,
    LEASE_SECS,
};

/// A POST to `dir`'s agent marked as already forwarded by another agent
/// of the site: the agent carries it out or refuses it, never forwards it.
fn post_forwarded(dir: &Path, path: &str) -> ferry_agent::api::http::Reply {
    let conn = ferry_agent::cli::Conn {
        dir: Some(dir.to_path_buf()),
        ..Default::default()
    };
    let (target, token) = ferry_agent::cli::resolve_target(&conn).expect("agent API and token");
    let call = ferry_agent::api::http::Call {
        method: ferry_agent::api::http::Method::POST,
        path,
        token: Some(&token),
        body: None,
        limit: 1 << 20,
        forwarded_by: Some("a-test"),
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(ferry_agent::api::http::call_limited(
            &target,
            call,
            Duration::from_secs(10),
        ))
        .unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

/// Four groups of one or two images, each made on p1. The first is filled
/// and started through the agent that does not drive it (each request
/// forwarded to the driver), after that agent refused a request another
/// agent had already forwarded, naming the driver and its API address; the
/// others through their driver. Returns each group's images and driver.
fn start_groups(site: &Site, mark: &str) -> Groups {
    let mut groups = Groups::new();
    for g in 0..4 {
        let name = format!("lg-{g}");
        let (images, holder) = make_group(site, mark, &name, 1 + g % 2);
        let other = if holder == "p1" { "p2" } else { "p1" };
        let mut via = holder.as_str();
        if g == 0 {
            wait_for(
                &format!("{other} sees {holder} drive {name}"),
                Duration::from_secs(30),
                || {
                    let shown = ok(&site.dir(other), &["group", "show", &name]);
                    (shown["driven_by"]["agent"] == holder.as_str()).then_some(())
                },
            );
            let api = ok(&site.dir(&holder), &["status"])["agent"]["api"]
                .as_str()
                .unwrap()
                .to_owned();
            let refused = post_forwarded(&site.dir(other), &format!("/v1/groups/{name}/start"));
            assert_eq!(refused.status, 409, "{}", refused.body);
            let said = refused.body["error"].as_str().unwrap_or_default();
            assert!(
                said.contains(&format!("driven by agent {holder}")),
                "{said}"
            );
            assert!(said.contains(&api), "{api}: {said}");
            assert_eq!(refused.body["driven_by"]["api"], api.as_str());
            via = other;
        }
        add_and_start(site, via, &name, &images);
        groups.insert(name, (images, holder));
    }
    let forwarded = |agent: &str| {
        site.primaries[agent]
            .log_text()
            .matches("forwarded an operation to the agent driving its group")
            .count()
    };
    assert_eq!(
        forwarded("p1") + forwarded("p2"),
        2,
        "lg-0's add and start were forwarded, nothing else"
    );
    eprintln!(
        "drivers: {:?}",
        groups.iter().map(|(n, (_, h))| (n, h)).collect::<Vec<_>>()
    );
    groups
}

#[test]
#[ignore = "needs the Ceph lab (FERRY_CEPH_LAB=1); scripts/test.sh runs it"]
fn lab_groups_spread_over_a_sites_agents_and_move_on_without_a_resync() {
    if !lab::enabled() {
        return;
    }
    let mark = format!("ferry-h20-wire-{}", std::process::id());
    let _images = Cleanup {
        mark: mark.clone(),
        parents: mark.clone(),
    };
    let _groups = RbdGroups(mark.clone());
    let _namespace = Namespace(format!("{mark}-ctl"));
    let mut site = multi_agent_site(&format!("{mark}-ctl"), &[], &[]);

    let groups = start_groups(&site, &mark);
    let drivers: BTreeSet<&String> = groups.values().map(|(_, h)| h).collect();
    assert_eq!(drivers.len(), 2, "spread over both agents: {groups:?}");
    // Either agent names the driver once the driver's next announcement
    // and the other's next placement round are through (a round or two:
    // the view lags the leases, by design).
    let seen_at = Instant::now();
    for (name, (_, holder)) in &groups {
        for agent in ["p1", "p2"] {
            wait_for(
                &format!("{agent} names {holder} as {name}'s driver"),
                Duration::from_secs(LEASE_SECS),
                || {
                    let g = status_group(&site.dir(agent), name);
                    (g["driven_by"]["agent"] == holder.as_str()).then_some(())
                },
            );
        }
    }
    eprintln!(
        "both agents named every driver {:?} after the last start",
        seen_at.elapsed()
    );

    // Continuous replication with a writer; every group commits twice.
    let all_images: Vec<String> = groups.values().flat_map(|(i, _)| i.clone()).collect();
    let writer = Writer::start(&all_images);
    for (name, (_, holder)) in &groups {
        wait_for(
            &format!("two cycles of {name}"),
            Duration::from_secs(180),
            || (progress_u64(&status_group(&site.dir(holder), name), "cycles") >= 2).then_some(()),
        );
    }

    // SIGKILL p1; the groups it drove move to p2.
    let victims: Vec<String> = groups
        .iter()
        .filter(|(_, (_, h))| h == "p1")
        .map(|(n, _)| n.clone())
        .collect();
    let last_rp: BTreeMap<String, u64> = victims
        .iter()
        .map(|n| {
            let g = status_group(&site.dir("p1"), n);
            (n.clone(), progress_u64(&g, "last_recovery_point"))
        })
        .collect();
    let killed = site.primaries.get_mut("p1").unwrap().kill9();
    assert!(killed, "p1 was running");
    let killed_at = Instant::now();
    let p2 = site.dir("p2");
    wait_for(
        "p2 drives p1's groups",
        Duration::from_secs(LEASE_SECS + 10),
        || {
            victims
                .iter()
                .all(|n| status_group(&p2, n)["driven_by"]["lease"] == "holding")
                .then_some(())
        },
    );
    eprintln!(
        "p1's groups driven by p2 {:?} after the SIGKILL",
        killed_at.elapsed()
    );
    resumed_incrementally(&site, "p2", &groups, &victims, &last_rp);
    drop(writer);
    check_standby_points(&site, "p2", &groups);

    // p1 back, p2 stopped (SIGTERM): p2 gives its leases back at once, p1
    // takes every group (restoring the state p2 kept over its own stale
    // files) and resumes each incrementally.
    site.primaries.get_mut("p1").unwrap().restart(&[]);
    let writer = Writer::start(&all_images);
    let last_rp: BTreeMap<String, u64> = groups
        .keys()
        .map(|n| {
            let g = status_group(&p2, n);
            (n.clone(), progress_u64(&g, "last_recovery_point"))
        })
        .collect();
    let p1 = site.dir("p1");
    wait_for("p1 sees p2 drive lg-0", Duration::from_secs(30), || {
        let shown = ok(&p1, &["group", "show", "lg-0"]);
        (shown["driven_by"]["agent"] == "p2").then_some(())
    });
    let stopped = site.primaries.get_mut("p2").unwrap().terminate();
    assert!(
        stopped.is_some_and(|s| s.success()),
        "p2 stops cleanly: {stopped:?}"
    );
    let p1 = site.dir("p1");
    wait_for("p1 drives every group", Duration::from_secs(60), || {
        groups
            .keys()
            .all(|n| status_group(&p1, n)["driven_by"]["lease"] == "holding")
            .then_some(())
    });
    let names: Vec<String> = groups.keys().cloned().collect();
    resumed_incrementally(&site, "p1", &groups, &names, &last_rp);
    drop(writer);
    check_standby_points(&site, "p1", &groups);
    for name in groups.keys() {
        ok(&p1, &["group", "stop", name, "--wait"]);
        ok(&p1, &["group", "delete", name, "--wait"]);
    }
    drop(site.standby);
}
