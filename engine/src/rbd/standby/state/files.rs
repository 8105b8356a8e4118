//! [`FileState`]: an RBD standby's per-image state in checksummed local
//! files (the default, and the format of every earlier version):
//! `images/NAME.json` and `commits/rp-ID-NONCE.json` under the store
//! directory, each replaced atomically (tmp file, fsync, rename, fsync of
//! the directory).
//!
//! One process owns the directory (its `store.lock`), so versions are
//! kept in memory: a record read from disk is at version 1, each save
//! adds one. They make [`StateStore::save`] the same compare-and-set as
//! the shared store's, without a byte more in the files.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ferry_protocol::types::ImageName;

use super::{check_record, new_intent_key, IntentKey, StateStore};
use crate::rbd::standby::commit::Intent;
use crate::rbd::standby::handle::ImageRecord;
use crate::standby::{read_checksummed, write_checksummed, StoreError};
use crate::sync_util::lock;
use crate::sys::fs::sync_dir;

/// Per-image state in files under one directory.
pub(in crate::rbd::standby) struct FileState {
    dir: PathBuf,
    /// The version of each image's record as this process last saw or
    /// wrote it; one lock per image, held across a save.
    versions: Mutex<HashMap<ImageName, Arc<Mutex<Option<u64>>>>>,
}

impl FileState {
    /// The state under `dir` (creating `images/` and `commits/`).
    pub(in crate::rbd::standby) fn open(dir: &Path) -> Result<Self, StoreError> {
        for sub in ["images", "commits"] {
            let d = dir.join(sub);
            fs::create_dir_all(&d).map_err(|e| StoreError::io("create directory", &d, e))?;
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            versions: Mutex::new(HashMap::new()),
        })
    }

    /// The file of `image`'s record.
    pub(in crate::rbd::standby) fn record_path(&self, image: &ImageName) -> PathBuf {
        self.dir.join("images").join(format!("{image}.json"))
    }

    fn intent_path(&self, key: &str) -> PathBuf {
        self.dir.join("commits").join(format!("{key}.json"))
    }

    fn version_slot(&self, image: &ImageName) -> Arc<Mutex<Option<u64>>> {
        lock(&self.versions)
            .entry(image.clone())
            .or_default()
            .clone()
    }

    /// Reads the record file; `known` is the version this process holds
    /// for it (`None`: not seen yet, 1 if the file exists).
    fn read(
        &self,
        image: &ImageName,
        known: &mut Option<u64>,
    ) -> Result<Option<ImageRecord>, StoreError> {
        let path = self.record_path(image);
        let Some(mut record) = read_checksummed::<ImageRecord>(&path)? else {
            *known = Some(0);
            return Ok(None);
        };
        check_record(&record, image, &path)?;
        let version = match *known {
            Some(v) if v > 0 => v,
            _ => 1,
        };
        *known = Some(version);
        record.version = version;
        Ok(Some(record))
    }
}

impl StateStore for FileState {
    fn describe(&self) -> String {
        format!("files in {}", self.dir.display())
    }

    fn shared(&self) -> bool {
        false
    }

    fn load(&self, image: &ImageName) -> Result<Option<ImageRecord>, StoreError> {
        let slot = self.version_slot(image);
        let mut known = lock(&slot);
        self.read(image, &mut known)
    }

    fn save(&self, record: &mut ImageRecord) -> Result<(), StoreError> {
        let image = ImageName::new(&record.image).map_err(|e| StoreError::InvalidRequest {
            reason: e.to_string(),
        })?;
        let slot = self.version_slot(&image);
        let mut known = lock(&slot);
        let current = match *known {
            Some(v) => v,
            None => self.read(&image, &mut known)?.map_or(0, |r| r.version),
        };
        if current != record.version {
            return Err(StoreError::StateConflict {
                image,
                store: self.describe(),
                expected: record.version,
                found: current,
            });
        }
        write_checksummed(&self.record_path(&image), record)?;
        record.version = current + 1;
        *known = Some(record.version);
        Ok(())
    }

    fn remove(&self, image: &ImageName) -> Result<(), StoreError> {
        let slot = self.version_slot(image);
        let mut known = lock(&slot);
        remove_file(&self.record_path(image))?;
        *known = Some(0);
        Ok(())
    }

    fn images(&self) -> Result<Vec<ImageName>, StoreError> {
        let dir = self.dir.join("images");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| StoreError::io("list", &dir, e))? {
            let entry = entry.map_err(|e| StoreError::io("list", &dir, e))?;
            let name = entry.file_name();
            if let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".json")) {
                if let Ok(image) = ImageName::new(stem) {
                    out.push(image);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn put_intent(&self, intent: &Intent) -> Result<IntentKey, StoreError> {
        let key = new_intent_key(intent.rp);
        write_checksummed(&self.intent_path(&key), intent)?;
        Ok(key)
    }

    fn intents(&self) -> Result<Vec<IntentKey>, StoreError> {
        let dir = self.dir.join("commits");
        let mut keys = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| StoreError::io("list", &dir, e))? {
            let path = entry.map_err(|e| StoreError::io("list", &dir, e))?.path();
            if path.extension().is_some_and(|e| e == "json") {
                if let Some(stem) = path.file_stem().and_then(|s| s.to_str()) {
                    keys.push(stem.to_owned());
                }
            }
        }
        keys.sort();
        Ok(keys)
    }

    fn load_intent(&self, key: &IntentKey) -> Result<Option<Intent>, StoreError> {
        read_checksummed(&self.intent_path(key))
    }

    fn remove_intent(&self, key: &IntentKey) -> Result<(), StoreError> {
        remove_file(&self.intent_path(key))
    }
}

/// Removes `path` (a missing file is fine) and syncs its directory.
fn remove_file(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(StoreError::io("remove", path, e)),
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    sync_dir(dir).map_err(|e| StoreError::io("fsync directory", dir, e))
}
