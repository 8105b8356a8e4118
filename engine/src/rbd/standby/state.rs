//! Where an RBD standby keeps the per-image state that must outlive the
//! agent: each image's record (retained and pinned recovery points, the
//! pending epoch with its durable batch and resume offset, fence, volume,
//! clones) and the intents of commits in progress.
//!
//! [`StateStore`] is that store; the standby above it does not know which
//! one it uses:
//! - [`files::FileState`] (the default): checksummed files under the
//!   agent's data directory, `images/NAME.json` and
//!   `commits/rp-ID-NONCE.json`, exactly as before this trait existed.
//!   One agent owns them (the directory's `store.lock`).
//! - [`rados::RadosState`] (`[control] store = "rados"`): omap keys of one
//!   RADOS object per standby pool in the site's control pool and
//!   namespace, so any standby agent of the site can resume an epoch
//!   another one left mid-way, from its durable batch, without a full
//!   copy.
//!
//! Every record carries the version it was loaded at (never serialized);
//! [`StateStore::save`] is a compare-and-set on it, so of two agents that
//! raced on one image, the second write is refused
//! ([`StoreError::StateConflict`]) instead of losing the first. A save is
//! durable when it returns (an fsynced rename, or a completed RADOS write
//! op); nothing is acknowledged before.

pub(super) mod files;
pub(super) mod rados;
#[cfg(test)]
mod tests;

use ferry_protocol::types::ImageName;

use super::commit::Intent;
use super::handle::ImageRecord;
use crate::standby::StoreError;

/// Where an [`super::RbdStandby`] keeps its per-image state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum StateLocation {
    /// Checksummed files in the store directory (one agent owns them).
    #[default]
    Files,
    /// Omap of a RADOS object in `pool` (RADOS namespace `namespace`) of
    /// the standby's cluster, shared by the site's standby agents.
    Rados {
        /// The pool (the site's control pool).
        pool: String,
        /// The RADOS namespace (`None`: the pool's default).
        namespace: Option<String>,
    },
}

/// Names one stored commit intent (unique per commit).
pub(super) type IntentKey = String;

/// The durable per-image state of an RBD standby.
pub(super) trait StateStore: Send + Sync {
    /// Where the state lives, for messages.
    fn describe(&self) -> String;

    /// Whether other agents use the same state at the same time: intents
    /// are then rolled forward only for the images being worked on (an
    /// intent may be another live agent's commit in progress).
    fn shared(&self) -> bool;

    /// The record of `image` with its version, `None` if there is none.
    fn load(&self, image: &ImageName) -> Result<Option<ImageRecord>, StoreError>;

    /// Stores `record` if the stored version is still `record.version`
    /// (0: no record may exist), and advances `record.version`. Durable
    /// when it returns; a stale version is [`StoreError::StateConflict`]
    /// and changes nothing.
    fn save(&self, record: &mut ImageRecord) -> Result<(), StoreError>;

    /// Forgets `image`'s record (none is fine).
    fn remove(&self, image: &ImageName) -> Result<(), StoreError>;

    /// Every image with a record, sorted.
    fn images(&self) -> Result<Vec<ImageName>, StoreError>;

    /// Stores a new intent durably; returns its key.
    fn put_intent(&self, intent: &Intent) -> Result<IntentKey, StoreError>;

    /// The keys of every stored intent, sorted.
    fn intents(&self) -> Result<Vec<IntentKey>, StoreError>;

    /// An intent, `None` once it is gone.
    fn load_intent(&self, key: &IntentKey) -> Result<Option<Intent>, StoreError>;

    /// Removes an intent durably (a missing one is fine).
    fn remove_intent(&self, key: &IntentKey) -> Result<(), StoreError>;
}

/// The check every store makes of a loaded record: right format, and the
/// image it names is the one asked for.
pub(super) fn check_record(
    record: &ImageRecord,
    image: &ImageName,
    whence: &std::path::Path,
) -> Result<(), StoreError> {
    if record.format != super::handle::FORMAT || record.image != image.as_str() {
        return Err(StoreError::corrupt(
            whence,
            format!("names image {:?} (format {})", record.image, record.format),
        ));
    }
    Ok(())
}

/// A new intent's key: unique per commit, since two groups may commit the
/// same recovery point id (ids are the primary's milliseconds) at once,
/// and one intent must not replace the other's. Sorted by point.
pub(super) fn new_intent_key(rp: u64) -> IntentKey {
    let nonce: u64 = rand::random();
    format!("rp-{rp}-{nonce:016x}")
}
