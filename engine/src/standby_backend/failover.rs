//! Failover and restore volumes of a [`Standby`], whichever backend: fencing
//! the standby copies, making each failover volume without copying where it
//! can, restore volumes the same way, and what a failed attempt leaves for
//! its retry to replace.
//!
//! What a volume is, by backend and case:
//!
//! | case | files | RBD |
//! |---|---|---|
//! | failover to the latest point, copy intact | the image file itself, hard-linked at `DIR/failover/GROUP/IMAGE.raw` and unlinked from the store | the standby image itself, same name and snapshots |
//! | failover to an older point, or a torn RBD head | a reflink of the point where the file system has reflinks, else a copy | a clone (format 2) `failover-IMAGE` of the point's snapshot, the point pinned |
//! | restore into a new volume | as above (reflink or copy) | a clone named by the operator, the point pinned |
//! | `--copy` | a full copy (as before) | a full copy (`rbd_copy3`, as before) |

use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};

use ferry_protocol::types::{ImageName, RecoveryPointId};

use super::Standby;
use crate::rbd::standby::RbdStandby;
use crate::standby::StoreError;

/// How a volume was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VolumeMethod {
    /// The standby copy itself became the volume (nothing copied).
    InPlace,
    /// A copy-on-write clone of a recovery point (RBD; nothing copied).
    Clone,
    /// A reflink of the point's file (files; nothing copied).
    Reflink,
    /// A full copy.
    Copy,
}

impl VolumeMethod {
    /// Its name in logs and answers.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InPlace => "in_place",
            Self::Clone => "clone",
            Self::Reflink => "reflink",
            Self::Copy => "copy",
        }
    }
}

/// A volume a failover or restore made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    /// Where it is, as ferry names volumes (and a cloud platform adopts
    /// them): `file:/ABSOLUTE/PATH` or `rbd:POOL[/NAMESPACE]/IMAGE`.
    pub location: String,
    /// How it was made.
    pub method: VolumeMethod,
}

impl Standby {
    /// Fences the standby copy `image` for a failover: it takes no more
    /// replication (no epoch opens, an open writer fails at its next batch,
    /// no recovery point commits). `Busy` while a writer is still open:
    /// call again. Idempotent.
    pub fn fence(&self, image: &ImageName) -> Result<(), StoreError> {
        match self {
            Self::Files(s) => s.fence(image),
            Self::Rbd(s) => s.fence(image),
        }
    }

    /// Makes the failover volume of the fenced copy `image` at recovery
    /// point `rp`: see the module doc. Files go into the group's failover
    /// directory `dir` (made by [`Self::prepare_failover_outputs`]); RBD
    /// clones and copies are named `failover-IMAGE`. With `copy`, always a
    /// full copy. A repeated call after success returns the same volume.
    pub fn failover_volume(
        &self,
        dir: &Path,
        image: &ImageName,
        rp: RecoveryPointId,
        copy: bool,
    ) -> Result<Volume, StoreError> {
        match self {
            Self::Files(s) => {
                let out = dir.join(format!("{image}.raw"));
                let at_rp = s
                    .image_state(image)?
                    .is_some_and(|st| st.recovery_point == rp);
                if !copy && at_rp && s.hand_over(image, rp, &out)? {
                    return Ok(file_volume(&out, VolumeMethod::InPlace));
                }
                self.restore_volume(image, rp, out, copy)
            }
            Self::Rbd(s) => {
                if !copy && s.volume_in_place(image, rp)? {
                    return Ok(rbd_volume(s, image.as_str(), VolumeMethod::InPlace));
                }
                self.restore_volume(image, rp, format!("failover-{image}"), copy)
            }
        }
    }

    /// Writes `image` as it was at recovery point `rp` into the **new**
    /// volume `output` (a file path, or an image name of the standby pool):
    /// a reflink (files, where the file system has them) or a clone (RBD),
    /// else, or with `copy`, a full copy.
    pub fn restore_volume(
        &self,
        image: &ImageName,
        rp: RecoveryPointId,
        output: impl AsRef<OsStr>,
        copy: bool,
    ) -> Result<Volume, StoreError> {
        let output = output.as_ref();
        match self {
            Self::Files(s) => {
                let out = Path::new(output);
                let method = if copy {
                    s.restore(image, rp, out)?;
                    VolumeMethod::Copy
                } else if s.restore_reflinked(image, rp, out)? {
                    VolumeMethod::Reflink
                } else {
                    VolumeMethod::Copy
                };
                Ok(file_volume(out, method))
            }
            Self::Rbd(s) => {
                let name = output.to_string_lossy();
                let method = if copy {
                    s.restore(image, rp, &name)?;
                    VolumeMethod::Copy
                } else {
                    s.clone_point(image, rp, &name)?;
                    VolumeMethod::Clone
                };
                Ok(rbd_volume(s, &name, method))
            }
        }
    }

    /// What a failover of the standby copies `targets` into `dir` may have
    /// left that a first attempt must not find and a retry replaces: each
    /// file `dir/TARGET.raw` (files backend; not one the store handed over
    /// as a volume: that is the volume, kept) or each image
    /// `failover-TARGET` of the standby pool (RBD backend: a clone or copy;
    /// an image that became the volume in place keeps its own name).
    pub fn failover_leftovers(
        &self,
        dir: &Path,
        targets: &[&str],
    ) -> Result<Vec<FailoverLeftover>, StoreError> {
        let mut out = Vec::new();
        for target in targets {
            match self {
                Self::Files(s) => {
                    let path = dir.join(format!("{target}.raw"));
                    let handed = match ImageName::new(*target) {
                        Ok(image) => s.handed_over(&image)?.is_some_and(|h| h.path == path),
                        Err(_) => false,
                    };
                    if !handed {
                        out.push(FailoverLeftover::File(path));
                    }
                }
                Self::Rbd(rbd) => out.push(FailoverLeftover::Volume {
                    store: rbd.clone(),
                    name: format!("failover-{target}"),
                }),
            }
        }
        Ok(out)
    }

    /// Makes what the failover outputs go into (files backend: the
    /// directory `dir`; nothing for the RBD backend).
    pub fn prepare_failover_outputs(&self, dir: &Path) -> std::io::Result<()> {
        match self {
            Self::Files(_) => std::fs::create_dir_all(dir),
            Self::Rbd(_) => Ok(()),
        }
    }
}

fn file_volume(path: &Path, method: VolumeMethod) -> Volume {
    Volume {
        location: format!("file:{}", path.display()),
        method,
    }
}

fn rbd_volume(store: &RbdStandby, name: &str, method: VolumeMethod) -> Volume {
    Volume {
        location: format!("rbd:{}/{name}", store.pool_name()),
        method,
    }
}

/// One thing a failed failover made that a retry replaces (see
/// [`Standby::failover_leftovers`]). Displays as the operator knows it.
#[derive(Clone, Debug)]
pub enum FailoverLeftover {
    /// A file of the group's failover directory (files backend).
    File(PathBuf),
    /// An image of the standby pool (RBD backend).
    Volume {
        /// The store whose pool holds it.
        store: RbdStandby,
        /// Its name.
        name: String,
    },
}

impl FailoverLeftover {
    /// Whether it is there.
    pub fn exists(&self) -> Result<bool, StoreError> {
        match self {
            Self::File(path) => Ok(path.symlink_metadata().is_ok()),
            Self::Volume { store, name } => store.volume_exists(name),
        }
    }

    /// Removes it (an absent one is fine).
    pub fn remove(&self) -> Result<(), StoreError> {
        match self {
            Self::File(path) => match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(StoreError::io("remove file", path, e))
                }
                _ => Ok(()),
            },
            Self::Volume { store, name } => store.remove_volume(name),
        }
    }
}

impl fmt::Display for FailoverLeftover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "{}", path.display()),
            Self::Volume { store, name } => write!(f, "RBD image {}/{name}", store.pool_name()),
        }
    }
}

#[cfg(test)]
mod tests;
