//! [`RadosState`]: an RBD standby's per-image state in the omap of one
//! RADOS object of the site's control pool and namespace, shared by every
//! standby agent of the site (`[control] store = "rados"`).
//!
//! The site object is `ferry.rbd-standby:POOL` (the pool the standby
//! images live in), with keys
//! - `image/NAME`: an index entry (empty) for each image with a record;
//! - `intent/rp-ID-NONCE`: a commit intent (JSON).
//!
//! Each image's record is in an object of its own,
//! `ferry.rbd-standby:POOL:NAME`, keys `image` (JSON, the files' format
//! without their checksum line: RADOS checks its own data) and `version` (a
//! decimal number). Records are written at every durable sync of every
//! image: in one object they would all queue on one PG
//! (docs/scale.md: ~6,000 writes/s at 10,000 images); one object per image
//! spreads them over the pool.
//!
//! A save is ONE write op on the image's object guarded by `version == v`
//! that sets the record and `v + 1`: the OSD applies all of it or, when
//! another agent wrote in between, none (`ECANCELED`, reported as
//! [`StoreError::StateConflict`]). The first save of an image writes its
//! index entry first, so a listed image may lack a record (read as none),
//! never the other way round. A write op is durable on the OSDs when
//! it completes. The state pool is opened on the standby images' own
//! cluster connection, so an agent whose image lock another agent broke
//! (which blocklists its client) can no longer write the state either.

use std::sync::Arc;

use ferry_protocol::types::ImageName;
use serde::de::DeserializeOwned;

use super::{check_record, new_intent_key, IntentKey, StateStore};
use crate::rbd::standby::commit::Intent;
use crate::rbd::standby::handle::ImageRecord;
use crate::standby::StoreError;
use crate::sys::librados::omap::{parse_version, version_bytes, Create, WriteOp};
use crate::sys::librados::{CephError, Pool};

const IMAGE: &str = "image/";
const INTENT: &str = "intent/";
/// The keys of an image's own object.
const RECORD: &str = "image";
const VERSION: &str = "version";

/// Per-image state in the omap of one RADOS object.
pub(in crate::rbd::standby) struct RadosState {
    pool: Arc<Pool>,
    oid: String,
}

impl RadosState {
    /// The state of the standby images of `images` (their pool) in
    /// `pool`/`namespace` of the same cluster connection; creates the
    /// object if it is missing.
    pub(in crate::rbd::standby) fn open(
        images: &Arc<Pool>,
        pool: &str,
        namespace: Option<&str>,
    ) -> Result<Self, StoreError> {
        let where_ = match namespace {
            Some(ns) => format!("pool {pool} namespace {ns}"),
            None => format!("pool {pool}"),
        };
        let state_pool =
            images
                .cluster()
                .pool(pool, namespace)
                .map_err(|source| StoreError::Ceph {
                    context: format!("opening the standby state's {where_}"),
                    source,
                })?;
        let state = Self {
            pool: state_pool,
            oid: format!("ferry.rbd-standby:{}", images.name()),
        };
        state
            .pool
            .write(&state.oid, &WriteOp::new().create(Create::IfMissing))
            .map_err(state.ceph("creating"))?;
        tracing::info!(state = %state.describe(), "RBD standby state shared with the site's agents in RADOS");
        Ok(state)
    }

    fn ceph(&self, what: &str) -> impl FnOnce(CephError) -> StoreError {
        let context = format!("{what} {}", self.describe());
        move |source| StoreError::Ceph { context, source }
    }

    /// Where a key of object `oid` lives, for corruption reports.
    fn whence(&self, oid: &str, key: &str) -> std::path::PathBuf {
        std::path::PathBuf::from(format!("rados:{}/{oid}#{key}", self.pool.name()))
    }

    /// The object of `image`'s record.
    fn image_oid(&self, image: &ImageName) -> String {
        format!("{}:{image}", self.oid)
    }

    /// The values of `keys` of object `oid` (missing ones left out); no
    /// object: none.
    fn get(
        &self,
        oid: &str,
        keys: &[&str],
    ) -> Result<std::collections::BTreeMap<String, Vec<u8>>, StoreError> {
        match self.pool.omap_get(oid, keys) {
            Ok(values) => Ok(values),
            Err(e) if e.is_not_found() => Ok(Default::default()),
            Err(e) => Err(self.ceph(&format!("reading {keys:?} of"))(e)),
        }
    }

    fn decode<T: DeserializeOwned>(
        &self,
        oid: &str,
        key: &str,
        bytes: &[u8],
    ) -> Result<T, StoreError> {
        serde_json::from_slice(bytes)
            .map_err(|e| StoreError::corrupt(&self.whence(oid, key), format!("invalid JSON: {e}")))
    }

    fn parse_version(
        &self,
        oid: &str,
        key: &str,
        bytes: Option<&Vec<u8>>,
    ) -> Result<u64, StoreError> {
        parse_version(bytes).ok_or_else(|| {
            StoreError::corrupt(
                &self.whence(oid, key),
                format!(
                    "not a version: {:?}",
                    String::from_utf8_lossy(bytes.map(Vec::as_slice).unwrap_or_default())
                ),
            )
        })
    }

    /// Every key with `prefix`, without it, sorted.
    fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let entries = match self.pool.omap_list(&self.oid, prefix) {
            Ok(entries) => entries,
            Err(e) if e.is_not_found() => Vec::new(),
            Err(e) => return Err(self.ceph(&format!("listing {prefix}* of"))(e)),
        };
        Ok(entries
            .into_iter()
            .filter_map(|(k, _)| k.strip_prefix(prefix).map(str::to_owned))
            .collect())
    }
}

impl StateStore for RadosState {
    fn describe(&self) -> String {
        format!(
            "rados:{}/{} in {}",
            self.pool.name(),
            self.oid,
            self.pool.cluster().describe()
        )
    }

    fn shared(&self) -> bool {
        true
    }

    fn load(&self, image: &ImageName) -> Result<Option<ImageRecord>, StoreError> {
        let oid = self.image_oid(image);
        let values = self.get(&oid, &[RECORD, VERSION])?;
        let Some(bytes) = values.get(RECORD) else {
            return Ok(None);
        };
        let mut record: ImageRecord = self.decode(&oid, RECORD, bytes)?;
        check_record(&record, image, &self.whence(&oid, RECORD))?;
        record.version = self.parse_version(&oid, VERSION, values.get(VERSION))?;
        Ok(Some(record))
    }

    fn save(&self, record: &mut ImageRecord) -> Result<(), StoreError> {
        let image = ImageName::new(&record.image).map_err(|e| StoreError::InvalidRequest {
            reason: e.to_string(),
        })?;
        let oid = self.image_oid(&image);
        let json = serde_json::to_vec(record).map_err(|e| StoreError::InvalidRequest {
            reason: format!("encoding the record of {image}: {e}"),
        })?;
        if record.version == 0 {
            // Listed before it exists: never a record the index misses.
            let mut index = WriteOp::new().create(Create::MustExist);
            index.set(&format!("{IMAGE}{image}"), b"");
            self.pool
                .write(&self.oid, &index)
                .map_err(self.ceph(&format!("indexing the record of {image} in")))?;
        }
        let next = record.version + 1;
        let mut op = WriteOp::new()
            .create(Create::IfMissing)
            .guard_eq(VERSION, &version_bytes(record.version));
        op.set(RECORD, &json).set(VERSION, &version_bytes(next));
        match self.pool.write(&oid, &op) {
            Ok(()) => {
                record.version = next;
                Ok(())
            }
            Err(e) if e.is_canceled() => {
                let found = self
                    .get(&oid, &[VERSION])
                    .and_then(|v| self.parse_version(&oid, VERSION, v.get(VERSION)))
                    .unwrap_or(u64::MAX);
                Err(StoreError::StateConflict {
                    image,
                    store: self.describe(),
                    expected: record.version,
                    found,
                })
            }
            Err(e) => Err(self.ceph(&format!("saving the record of {image} in"))(e)),
        }
    }

    fn remove(&self, image: &ImageName) -> Result<(), StoreError> {
        match self.pool.remove_object(&self.image_oid(image)) {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => {
                return Err(self.ceph(&format!("removing the record of {image} from"))(
                    e,
                ));
            }
        }
        let mut op = WriteOp::new();
        op.remove(&format!("{IMAGE}{image}"));
        self.pool
            .write(&self.oid, &op)
            .map_err(self.ceph(&format!("removing the index entry of {image} from")))
    }

    fn images(&self) -> Result<Vec<ImageName>, StoreError> {
        Ok(self
            .list(IMAGE)?
            .into_iter()
            .filter_map(|name| ImageName::new(&name).ok())
            .collect())
    }

    fn put_intent(&self, intent: &Intent) -> Result<IntentKey, StoreError> {
        let key = new_intent_key(intent.rp);
        let json = serde_json::to_vec(intent).map_err(|e| StoreError::InvalidRequest {
            reason: format!("encoding the intent of recovery point {}: {e}", intent.rp),
        })?;
        let mut op = WriteOp::new().create(Create::MustExist);
        op.set(&format!("{INTENT}{key}"), &json);
        self.pool
            .write(&self.oid, &op)
            .map_err(self.ceph(&format!("storing commit intent {key} in")))?;
        Ok(key)
    }

    fn intents(&self) -> Result<Vec<IntentKey>, StoreError> {
        self.list(INTENT)
    }

    fn load_intent(&self, key: &IntentKey) -> Result<Option<Intent>, StoreError> {
        let full = format!("{INTENT}{key}");
        self.get(&self.oid, &[&full])?
            .get(&full)
            .map(|bytes| self.decode(&self.oid, &full, bytes))
            .transpose()
    }

    fn remove_intent(&self, key: &IntentKey) -> Result<(), StoreError> {
        let mut op = WriteOp::new();
        op.remove(&format!("{INTENT}{key}"));
        self.pool
            .write(&self.oid, &op)
            .map_err(self.ceph(&format!("removing commit intent {key} from")))
    }
}
