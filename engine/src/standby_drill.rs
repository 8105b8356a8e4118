//! Where a DR drill's writable volumes go, per backend, so the agent never
//! matches on one: [`Standby::drill_volume`] names the volume a drill makes
//! of one standby copy — the file `DIR/drill/GROUP/IMAGE.raw` (files
//! backend) or the image `drill-IMAGE` of the standby pool (RBD backend;
//! standby image names already carry the group's name) — and the
//! [`DrillVolume`] it returns is made with [`Standby::restore_volume`] (a
//! clone or a reflink where it can) and looked up and removed here. A drill volume is never a standby copy: the
//! RBD backend refuses to remove one of the store's own images.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

use ferry_protocol::types::ImageName;

use crate::rbd::standby::RbdStandby;
use crate::standby::StoreError;
use crate::standby_backend::Standby;

/// One writable volume of a drill (see the module doc). Displays as the
/// operator finds it: a path, or `pool/image`.
#[derive(Clone, Debug)]
pub enum DrillVolume {
    /// A file (files backend).
    File(PathBuf),
    /// An image of the standby pool (RBD backend).
    Rbd {
        /// The store whose pool holds it.
        store: RbdStandby,
        /// Its name.
        name: String,
    },
}

impl Standby {
    /// The volume a drill of group `group` makes of standby copy `image`:
    /// `agent_dir/drill/GROUP/IMAGE.raw` (files backend) or `drill-IMAGE`
    /// of the standby pool (RBD backend). A group name that is not a plain
    /// file name (the peer chose it: `..`, `/`…) is refused for the files
    /// backend rather than joined into a path.
    pub fn drill_volume(
        &self,
        agent_dir: &Path,
        group: &str,
        image: &ImageName,
    ) -> Result<DrillVolume, StoreError> {
        Ok(match self {
            Self::Files(_) => {
                let dir = ImageName::new(group).map_err(|e| StoreError::InvalidRequest {
                    reason: format!("group name {group:?} cannot name a drill directory: {e}"),
                })?;
                DrillVolume::File(
                    agent_dir
                        .join("drill")
                        .join(dir.as_str())
                        .join(format!("{image}.raw")),
                )
            }
            Self::Rbd(rbd) => DrillVolume::Rbd {
                store: rbd.clone(),
                name: format!("drill-{image}"),
            },
        })
    }

    /// The drill volume the control store recorded as `name` (what
    /// [`DrillVolume::name`] returned), to look up or remove after a
    /// restart.
    pub fn recorded_drill_volume(&self, name: &str) -> DrillVolume {
        match self {
            Self::Files(_) => DrillVolume::File(PathBuf::from(name)),
            Self::Rbd(rbd) => DrillVolume::Rbd {
                store: rbd.clone(),
                name: name.to_owned(),
            },
        }
    }
}

impl DrillVolume {
    /// How the control store records it: the path, or the image name.
    pub fn name(&self) -> String {
        match self {
            Self::File(path) => path.display().to_string(),
            Self::Rbd { name, .. } => name.clone(),
        }
    }

    /// What [`Standby::restore_volume`] takes as its output.
    pub fn output(&self) -> OsString {
        match self {
            Self::File(path) => path.as_os_str().to_owned(),
            Self::Rbd { name, .. } => OsString::from(name),
        }
    }

    /// Makes what the volume goes into (the group's drill directory).
    pub fn prepare(&self) -> Result<(), StoreError> {
        match self {
            Self::File(path) => match path.parent() {
                Some(dir) => std::fs::create_dir_all(dir)
                    .map_err(|e| StoreError::io("create drill directory", dir, e)),
                None => Ok(()),
            },
            Self::Rbd { .. } => Ok(()),
        }
    }

    /// Whether it is there.
    pub fn exists(&self) -> Result<bool, StoreError> {
        match self {
            Self::File(path) => Ok(path.symlink_metadata().is_ok()),
            Self::Rbd { store, name } => store.volume_exists(name),
        }
    }

    /// Removes it (an absent one is fine); a file's drill directory goes
    /// with its last volume.
    pub fn remove(&self) -> Result<(), StoreError> {
        match self {
            Self::File(path) => {
                match std::fs::remove_file(path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(StoreError::io("remove drill volume", path, e))
                    }
                    _ => {}
                }
                // Only an empty directory goes; one still holding another
                // volume (or anything else) stays.
                if let Some(dir) = path.parent() {
                    let _ = std::fs::remove_dir(dir);
                }
                Ok(())
            }
            Self::Rbd { store, name } => store.remove_volume(name),
        }
    }
}

impl fmt::Display for DrillVolume {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "{}", path.display()),
            Self::Rbd { store, name } => write!(f, "{}/{name}", store.pool_name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::standby::{StandbyStore, StoreConfig};

    #[test]
    fn file_drill_volumes_live_under_the_agent_dir_and_go_with_their_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Standby::from(
            StandbyStore::open(&tmp.path().join("store"), StoreConfig::default()).unwrap(),
        );
        let image = ImageName::new("g1-vm1").unwrap();
        for bad in ["..", "a/b", "", ".hidden"] {
            assert!(
                store.drill_volume(tmp.path(), bad, &image).is_err(),
                "{bad:?}"
            );
        }
        let v = store.drill_volume(tmp.path(), "g1", &image).unwrap();
        let want = tmp.path().join("drill").join("g1").join("g1-vm1.raw");
        assert_eq!(v.name(), want.display().to_string());
        assert_eq!(v.output(), want.as_os_str());
        assert!(!v.exists().unwrap());
        v.prepare().unwrap();
        std::fs::write(&want, b"x").unwrap();
        assert!(v.exists().unwrap());
        let again = store.recorded_drill_volume(&v.name());
        again.remove().unwrap();
        assert!(!v.exists().unwrap());
        assert!(!want.parent().unwrap().exists(), "the empty dir goes too");
        again.remove().unwrap();
    }
}
