//! Where an image lives, in the labels ceph-mgr's Prometheus module uses
//! (`ceph_rbd_*{pool, namespace, image}`), so ferry's per-image series join
//! with Ceph's (`… * on (pool, namespace, image) group_left …`); and the
//! series of the standby side: what it receives and the time of the newest
//! complete recovery point it holds per image and group — what the RPO is
//! when the primary site is gone.

use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::registry::Unit;

use super::{counter, gauge_family, LiveSnapshot};

/// An image's place on this site: its RBD pool, namespace and image name
/// (the source image on the primary, the standby image in the standby pool
/// on the standby). A file image has no pool or namespace (`""`) and is
/// named by its standby image name on both sites.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct Place {
    /// RBD pool (`""` for files).
    pub pool: String,
    /// RBD namespace (`""`: the default namespace, as ceph-mgr labels it).
    pub namespace: String,
    /// Image name.
    pub image: String,
}

impl Place {
    /// The place of a primary resource with source `uri` (`rbd:POOL/IMAGE`,
    /// `rbd:POOL/NAMESPACE/IMAGE`; anything else: a file, named
    /// `standby_image`).
    pub fn of_source(uri: &str, standby_image: &str) -> Place {
        let file = || Place {
            image: standby_image.to_owned(),
            ..Place::default()
        };
        let Some(spec) = uri.strip_prefix("rbd:") else {
            return file();
        };
        let spec = spec.split_once('@').map_or(spec, |(s, _)| s);
        let parts: Vec<&str> = spec.split('/').collect();
        let (pool, namespace, image) = match parts.as_slice() {
            [pool, image] => (*pool, "", *image),
            [pool, namespace, image] => (*pool, *namespace, *image),
            _ => return file(),
        };
        Place {
            pool: pool.to_owned(),
            namespace: namespace.to_owned(),
            image: image.to_owned(),
        }
    }

    /// The place of standby image `image` in this agent's standby store
    /// (`pool`: the RBD standby pool, `None` for files).
    pub fn of_standby(pool: Option<&str>, namespace: &str, image: &str) -> Place {
        match pool {
            Some(pool) => Place {
                pool: pool.to_owned(),
                namespace: namespace.to_owned(),
                image: image.to_owned(),
            },
            None => Place {
                image: image.to_owned(),
                ..Place::default()
            },
        }
    }
}

/// Labels of a per-image series: the group and the image's place.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ImageLabels {
    /// Protection group name.
    pub group: String,
    /// RBD pool (`""` for files).
    pub pool: String,
    /// RBD namespace.
    pub namespace: String,
    /// Image name on this site.
    pub image: String,
}

impl ImageLabels {
    /// The labels of `place` in `group`.
    pub fn new(group: &str, place: &Place) -> Self {
        Self {
            group: group.to_owned(),
            pool: place.pool.clone(),
            namespace: place.namespace.clone(),
            image: place.image.clone(),
        }
    }
}

/// Labels of `ferry_image_info`: an image's place, its group, this site's
/// role and the standby image name (the same on both sites).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabels {
    group: String,
    role: &'static str,
    pool: String,
    namespace: String,
    image: String,
    standby_image: String,
}

/// One image of a group, for `ferry_image_info` and the standby's points.
#[derive(Clone, Debug, Default)]
pub struct ImagePlace {
    /// Where it lives on this site.
    pub place: Place,
    /// Its standby image name.
    pub standby_image: String,
    /// Standby side: creation time (ms since the Unix epoch) of the newest
    /// complete (not fuzzy) recovery point the standby holds for it.
    pub newest_point_unix_ms: Option<u64>,
}

/// Encodes `ferry_image_info`, the standby's recovery point timestamps and
/// the standby receiver's series.
pub(super) fn encode_standby(
    encoder: &mut DescriptorEncoder<'_>,
    live: &LiveSnapshot,
) -> Result<(), std::fmt::Error> {
    encode_places(encoder, live)?;
    encode_receiver(encoder, live)
}

fn encode_places(
    encoder: &mut DescriptorEncoder<'_>,
    live: &LiveSnapshot,
) -> Result<(), std::fmt::Error> {
    let info: Vec<_> = live
        .groups
        .iter()
        .flat_map(|g| {
            g.places.iter().map(move |p| {
                let labels = InfoLabels {
                    group: g.group.clone(),
                    role: g.role,
                    pool: p.place.pool.clone(),
                    namespace: p.place.namespace.clone(),
                    image: p.place.image.clone(),
                    standby_image: p.standby_image.clone(),
                };
                (labels, 1i64)
            })
        })
        .collect();
    gauge_family(
        encoder,
        "ferry_image_info",
        "1 per image of a group: its place on this site (pool, namespace, image as ceph-mgr labels them), this site's role, the standby image name",
        None,
        &info,
    )?;
    let seconds = Unit::Seconds;
    let per_image: Vec<_> = live
        .groups
        .iter()
        .filter(|g| g.role == "standby")
        .flat_map(|g| {
            g.places.iter().filter_map(move |p| {
                let ms = p.newest_point_unix_ms?;
                Some((ImageLabels::new(&g.group, &p.place), ms as f64 / 1000.0))
            })
        })
        .collect();
    gauge_family(
        encoder,
        "ferry_standby_recovery_point_timestamp",
        "Creation time of the newest complete recovery point the standby holds for the image (RPO from the standby: time() minus this)",
        Some(&seconds),
        &per_image,
    )?;
    let per_group: Vec<_> = live
        .groups
        .iter()
        .filter_map(|g| {
            let ms = g.standby_group_point_unix_ms?;
            Some((
                super::GroupLabels {
                    group: g.group.clone(),
                },
                ms as f64 / 1000.0,
            ))
        })
        .collect();
    gauge_family(
        encoder,
        "ferry_standby_group_recovery_point_timestamp",
        "Creation time of the newest recovery point every image of the group holds complete on the standby (the point a failover can use)",
        Some(&seconds),
        &per_group,
    )?;
    let holds: Vec<_> = live
        .groups
        .iter()
        .filter_map(|g| {
            let ms = g.standby_holds_writes_before_unix_ms?;
            Some((
                super::GroupLabels {
                    group: g.group.clone(),
                },
                ms as f64 / 1000.0,
            ))
        })
        .collect();
    gauge_family(
        encoder,
        "ferry_standby_holds_writes_before_timestamp",
        "The standby holds every write of the group before this instant: its group recovery point's time, or later when the primary's idle checks confirmed nothing was written since (RPO from the standby: time() minus this)",
        Some(&seconds),
        &holds,
    )
}

/// Labels of a standby receiver series: the image's group (`""` when no
/// group of this agent maps it, e.g. `ferry sync` without the control
/// plane) and place.
fn receiving_labels(live: &LiveSnapshot, standby_image: &str) -> ImageLabels {
    for g in live.groups.iter().filter(|g| g.role == "standby") {
        if let Some(p) = g.places.iter().find(|p| p.standby_image == standby_image) {
            return ImageLabels::new(&g.group, &p.place);
        }
    }
    ImageLabels::new("", &Place::of_standby(None, "", standby_image))
}

/// The standby receiver: its counters (agent-wide: one receiver serves
/// every group) and per-image receive rates.
fn encode_receiver(
    encoder: &mut DescriptorEncoder<'_>,
    live: &LiveSnapshot,
) -> Result<(), std::fmt::Error> {
    let bytes = Unit::Bytes;
    let per_second = Unit::Other("bytes_per_second".into());
    let s = live.standby;
    counter(
        encoder,
        "ferry_standby_received",
        "Payload bytes of accepted batches received by the standby (compressed)",
        Some(&bytes),
        s.bytes_received,
    )?;
    counter(
        encoder,
        "ferry_applied",
        "Plain data bytes staged durably into standby images",
        Some(&bytes),
        s.bytes_applied,
    )?;
    counter(
        encoder,
        "ferry_standby_extents",
        "Extents staged into standby images",
        None,
        s.extents,
    )?;
    counter(
        encoder,
        "ferry_standby_nacks",
        "Batches the standby rejected and asked for again",
        None,
        s.nacks,
    )?;
    counter(
        encoder,
        "ferry_standby_commits",
        "Recovery points committed on this standby",
        None,
        s.commits,
    )?;
    let receiving: Vec<_> = live
        .standby_images
        .iter()
        .map(|(image, rate)| (receiving_labels(live, image), *rate as i64))
        .collect();
    gauge_family(
        encoder,
        "ferry_standby_receive_rate",
        "Current rate at which the standby stages data into the image",
        Some(&per_second),
        &receiving,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_follow_ceph_mgr_labels() {
        let p = Place::of_source("rbd:vms/disk1", "g-disk1");
        assert_eq!(
            (p.pool.as_str(), p.namespace.as_str(), p.image.as_str()),
            ("vms", "", "disk1")
        );
        let p = Place::of_source("rbd:vms/tenant-a/disk1@snap", "g-disk1");
        assert_eq!(
            (p.pool.as_str(), p.namespace.as_str(), p.image.as_str()),
            ("vms", "tenant-a", "disk1")
        );
        let p = Place::of_source("file:/srv/vm1.raw", "g-vm1");
        assert_eq!((p.pool.as_str(), p.image.as_str()), ("", "g-vm1"));
        let p = Place::of_source("rbd:nonsense", "g-x");
        assert_eq!((p.pool.as_str(), p.image.as_str()), ("", "g-x"));
        let p = Place::of_standby(Some("dr"), "", "g-disk1");
        assert_eq!((p.pool.as_str(), p.image.as_str()), ("dr", "g-disk1"));
        assert_eq!(Place::of_standby(None, "", "g-vm1").pool, "");
    }
}
