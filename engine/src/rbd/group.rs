//! Group captures: snapshots of several RBD images taken at one instant.
//!
//! The images of a multi-image capture are members of an RBD group that
//! ferry manages, `ferry-<HASH of the image specs>`, and the instant is an
//! RBD group snapshot (`rbd_group_snap_create`). librbd takes every image's
//! exclusive lock for it while answering other clients' lock requests with
//! "busy, retry": their writes wait a moment and then go on. (Taking the
//! locks through `rbd_lock_acquire` instead, as ferry first did, answers
//! them "read-only": the protected VMs' writes *fail* with EROFS for the
//! whole capture — seen in the lab.) A write that completed before the
//! capture is in it; a write issued after another image's write completed
//! can only be missing from the capture if that earlier write is missing
//! too — the property a crash-consistent group recovery point needs. This
//! needs the exclusive-lock feature on every image of a multi-image group.
//!
//! `rbd_diff_iterate2` can only start from a user snapshot, so just before
//! the group snapshot each image also gets a user snapshot; it becomes that
//! image's next diff base (see `Capture::base` in [`super::source`]). An
//! image in an RBD group that ferry did not make is refused; an image moved
//! between ferry groups (the group's membership changed) leaves the old one,
//! whose snapshots go once no image's state names them, and the group once
//! it is also empty. A single image is snapshotted on its own and leaves any
//! ferry group it was in (an RBD group ferry did not make is left alone).
//!
//! A capture that a cycle already started reading is reused when every image
//! of the group has the same one (resuming an interrupted group sync), and
//! retaken for all images otherwise.

use std::collections::BTreeSet;

use tracing::{info, warn};

pub use super::membership::FERRY_GROUP_PREFIX;
use super::membership::{foreign_group, leave_ferry_group, rbd};
use super::source::RbdSource;
use super::{unix_ms, RbdError};
use crate::source::SourceError;
use crate::sync_util::run_all;
use crate::sys::librbd::{CephError, Image, Pool, FEATURE_EXCLUSIVE_LOCK, GROUP_SNAP_PREFIX};

fn short_hash<'a>(parts: impl Iterator<Item = &'a str>) -> String {
    let mut sorted: Vec<&str> = parts.collect();
    sorted.sort_unstable();
    let digest = blake3::hash(sorted.join("\n").as_bytes());
    digest.to_hex()[..16].to_owned()
}

/// Makes every source hold a capture of one instant; returns whether new
/// snapshots were taken.
pub fn capture_group(sources: &mut [&mut RbdSource]) -> Result<bool, SourceError> {
    let first = sources.first().and_then(|s| s.capture().map(str::to_owned));
    let same = first.as_deref().is_some_and(|name| {
        let suffix = name.rsplit('.').next();
        sources
            .iter()
            .all(|s| s.capture().is_some_and(|c| c.rsplit('.').next() == suffix))
    });
    if same {
        return Ok(false);
    }
    for source in sources.iter_mut() {
        source.drop_capture()?;
    }
    let instant = unix_ms();
    if sources.len() == 1 {
        let source = &mut sources[0];
        let membership = source.head().group().map_err(rbd)?;
        leave_ferry_group(source.pool(), membership, &source.spec().image, None)?;
        remove_unreferenced_group_snaps(sources, None)?;
        let source = &mut sources[0];
        let name = source.capture_name(instant);
        source.head().snap_create(&name).map_err(rbd)?;
        source.adopt_capture(name, None)?;
        info!(image = %source.spec(), instant, "captured a recovery point");
        return Ok(true);
    }
    for source in sources.iter() {
        let features = source.head().features().map_err(rbd)?;
        if features & FEATURE_EXCLUSIVE_LOCK == 0 {
            return Err(SourceError::from(RbdError::Unsupported {
                image: source.spec().to_string(),
                reason: "a group recovery point over several images needs the exclusive-lock feature on each (rbd feature enable POOL/IMAGE exclusive-lock)".into(),
            }));
        }
    }
    let namespace = &sources[0].spec().namespace;
    if let Some(other) = sources.iter().find(|s| &s.spec().namespace != namespace) {
        return Err(SourceError::from(RbdError::Unsupported {
            image: other.spec().to_string(),
            reason: format!(
                "the images of one group recovery point must be in one RBD namespace (librbd \
                 keeps an RBD group and its images in one); {} is in {}",
                sources[0].spec(),
                namespace.as_deref().unwrap_or("the default namespace")
            ),
        }));
    }
    let mut order: Vec<usize> = (0..sources.len()).collect();
    order.sort_by_key(|&i| sources[i].spec().to_string());
    let specs: Vec<String> = sources.iter().map(|s| s.spec().to_string()).collect();
    let group = format!(
        "{FERRY_GROUP_PREFIX}{}",
        short_hash(specs.iter().map(String::as_str))
    );
    let snap_prefix = format!("ferry.{}.", short_hash(sources.iter().map(|s| s.tag())));
    // Each image's group, looked up once; someone else's is refused before
    // anything is made.
    let memberships = sources
        .iter()
        .map(|s| s.head().group().map_err(rbd))
        .collect::<Result<Vec<_>, _>>()?;
    for (source, membership) in sources.iter().zip(&memberships) {
        if let Some((_, current)) = membership {
            if !current.starts_with(FERRY_GROUP_PREFIX) {
                return Err(foreign_group(source.pool(), &source.spec().image, current));
            }
        }
    }
    let started = std::time::Instant::now();
    let group_pool = sources[order[0]].pool().clone();
    group_pool.group_create(&group).map_err(rbd)?;
    let mut joining: Vec<&RbdSource> = Vec::new();
    for (source, membership) in sources.iter().zip(memberships) {
        let joined = leave_ferry_group(
            source.pool(),
            membership,
            &source.spec().image,
            Some(&group),
        )?;
        if !joined {
            joining.push(source);
        }
    }
    join_group(&group_pool, &group, &joining)?;
    remove_unreferenced_group_snaps(sources, Some((&group, &snap_prefix)))?;
    let prepared = started.elapsed();

    // Each image's next diff base first, then the instant itself.
    let mut bases: Vec<(usize, String)> = Vec::with_capacity(sources.len());
    let group_snap = format!("{snap_prefix}{instant}");
    let mut based = prepared;
    let result = (|| {
        create_bases(sources, &order, instant, &mut bases)?;
        based = started.elapsed();
        group_pool
            .group_snap_create(&group, &group_snap)
            .map_err(rbd)?;
        let mut views = Vec::with_capacity(sources.len());
        for &i in &order {
            let view = image_snap_of(sources[i].head(), &group, &group_snap)?;
            views.push((i, view));
        }
        Ok::<_, SourceError>(views)
    })();
    let views = match result {
        Ok(views) => views,
        Err(e) => {
            if let Err(error) = group_pool.group_snap_remove(&group, &group_snap) {
                warn!(%group, snap = %group_snap, %error, "could not remove a failed group snapshot; the next capture retries");
            }
            for (i, name) in &bases {
                if let Err(error) = sources[*i].head().snap_remove(name) {
                    warn!(image = %sources[*i].spec(), snap = %name, %error, "could not remove a failed capture's snapshot; the next commit's sweep retries");
                }
            }
            return Err(e);
        }
    };
    for (i, view) in views {
        let base = bases
            .iter()
            .find(|(j, _)| *j == i)
            .map(|(_, name)| name.clone());
        sources[i].adopt_capture(view, base)?;
    }
    // Each snapshot step waits for a monitor commit of snapshot ids; the
    // split says which one a slow capture waited on.
    info!(
        images = sources.len(),
        group = %group,
        snap = %group_snap,
        instant,
        prepare_ms = prepared.as_millis() as u64,
        bases_ms = (based - prepared).as_millis() as u64,
        group_snap_ms = (started.elapsed() - based).as_millis() as u64,
        "captured a group recovery point"
    );
    Ok(true)
}

/// Adds `joining` to ferry's RBD group `group` all at once: each add is a
/// few OSD round trips on the image's header and the group's object, and
/// one after the other they made the first capture of a 20-image group
/// (after a failover or a reprotect) wait for 20 of them in a row.
fn join_group(group_pool: &Pool, group: &str, joining: &[&RbdSource]) -> Result<(), SourceError> {
    let results = run_all(
        joining
            .iter()
            .map(|source| {
                let (pool, image) = (source.pool(), source.spec().image.as_str());
                move || group_pool.group_image_add(group, pool, image)
            })
            .collect(),
    );
    for (source, result) in joining.iter().zip(results) {
        result.map_err(rbd)?;
        info!(image = %source.spec(), group = %group, "added the image to ferry's RBD group");
    }
    Ok(())
}

/// Takes every image's next diff base (a user snapshot) at once: each
/// `snap_create` waits for one monitor commit (the snapshot id), up to
/// `paxos_propose_interval` (1 s by default), so one after the other they
/// made an N-image capture cost N + 1 commits (4 s for 3 images on the lab)
/// and all at once 2. Every base is still complete before the group
/// snapshot starts, which the diff needs (a base after the instant would
/// miss the writes between them). The bases made are pushed to `bases`,
/// also when one fails, so the caller removes them.
fn create_bases(
    sources: &[&mut RbdSource],
    order: &[usize],
    instant: u64,
    bases: &mut Vec<(usize, String)>,
) -> Result<(), SourceError> {
    let results: Vec<(usize, String, Result<(), CephError>)> = run_all(
        order
            .iter()
            .map(|&i| {
                let image = sources[i].head();
                let name = sources[i].capture_name(instant);
                move || {
                    let result = image.snap_create(&name);
                    (i, name, result)
                }
            })
            .collect(),
    );
    let mut first_error = None;
    for (i, name, result) in results {
        match result {
            Ok(()) => bases.push((i, name)),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(rbd(e)),
        None => Ok(()),
    }
}

/// The name of `image`'s snapshot of group snapshot `group@group_snap`.
fn image_snap_of(image: &Image, group: &str, group_snap: &str) -> Result<String, SourceError> {
    for snap in image.snapshots().map_err(rbd)? {
        if !snap.name.starts_with(GROUP_SNAP_PREFIX) {
            continue;
        }
        if let Some((_, g, s)) = image.snap_group(snap.id).map_err(rbd)? {
            if g == group && s == group_snap {
                return Ok(snap.name);
            }
        }
    }
    Err(SourceError::from(RbdError::Unsupported {
        image: group.to_owned(),
        reason: format!("group snapshot {group_snap} made no snapshot of an image of the group"),
    }))
}

/// Removes the group snapshots of ferry groups on these images that no
/// source's state names: this replication's earlier ones in `current`
/// (group, snapshot-name prefix), and any in another ferry group the images
/// were in before (the group's membership changed). Such an old group goes
/// once no image is in it and nothing here names its snapshots.
fn remove_unreferenced_group_snaps(
    sources: &[&mut RbdSource],
    current: Option<(&str, &str)>,
) -> Result<(), SourceError> {
    use std::collections::BTreeMap;
    type GroupKey = (i64, String);
    let mut referenced: BTreeMap<GroupKey, BTreeSet<String>> = BTreeMap::new();
    let mut unnamed: BTreeMap<GroupKey, BTreeSet<String>> = BTreeMap::new();
    for source in sources {
        for snap in source.head().snapshots().map_err(rbd)? {
            if !snap.name.starts_with(GROUP_SNAP_PREFIX) {
                continue;
            }
            let Some((pool_id, g, s)) = source.head().snap_group(snap.id).map_err(rbd)? else {
                continue;
            };
            if !g.starts_with(FERRY_GROUP_PREFIX) {
                continue;
            }
            let named =
                source.committed_snap() == Some(&snap.name) || source.capture() == Some(&snap.name);
            let key = (pool_id, g);
            if named {
                referenced.entry(key).or_default().insert(s);
                continue;
            }
            match current {
                Some((group, prefix)) if key.1 == group && !s.starts_with(prefix) => {}
                _ => {
                    unnamed.entry(key).or_default().insert(s);
                }
            }
        }
    }
    let pool = sources.first().map(|s| s.pool().clone());
    let Some(pool) = pool else {
        return Ok(());
    };
    for ((pool_id, group), snaps) in &unnamed {
        let group_pool = pool.pool_by_id(*pool_id).map_err(rbd)?;
        let named = referenced.get(&(*pool_id, group.clone()));
        for snap in snaps {
            if named.is_some_and(|n| n.contains(snap)) {
                continue;
            }
            group_pool.group_snap_remove(group, snap).map_err(rbd)?;
            info!(%group, %snap, "removed an unreferenced group snapshot");
        }
        let old = current.is_none_or(|(g, _)| g != group);
        if old && named.is_none() && group_pool.group_image_count(group).map_err(rbd)? == 0 {
            group_pool.group_remove(group).map_err(rbd)?;
            info!(%group, "removed an empty ferry RBD group");
        }
    }
    Ok(())
}
