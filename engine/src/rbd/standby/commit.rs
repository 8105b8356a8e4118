//! Committing a recovery point over several RBD standby images: the
//! intent file, each image's snapshot and record, and rolling forward an
//! interrupted commit when the store opens.

use std::sync::Arc;

use ferry_protocol::types::ImageName;
use serde::{Deserialize, Serialize};
use tracing::info;

use super::handle::{ceph, snap_name, PointRecord, RbdStandby, Slot, FORMAT};
use crate::standby::failpoint::{self, CrashPoint};
use crate::standby::{RecoveryPointMeta, SealedEpoch, StoreError};
use crate::sync_util::lock;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct IntentImage {
    pub(super) image: String,
    pub(super) epoch: u64,
    pub(super) last_seq: u64,
    pub(super) size: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct Intent {
    pub(super) format: u32,
    pub(super) rp: u64,
    pub(super) created_unix_ms: u64,
    pub(super) fuzzy: bool,
    pub(super) images: Vec<IntentImage>,
}

impl RbdStandby {
    /// Commits recovery point `rp` made of `epochs` (one per image): all of
    /// them reach it, or (crash before the intent is durable) none.
    /// Committing an already committed point succeeds without doing anything.
    pub fn commit(
        &self,
        rp: RecoveryPointMeta,
        epochs: Vec<SealedEpoch>,
    ) -> Result<(), StoreError> {
        if epochs.is_empty() {
            return Err(StoreError::InvalidRequest {
                reason: "a commit needs at least one image".into(),
            });
        }
        let slots: Vec<_> = {
            let mut names: Vec<&ImageName> = epochs.iter().map(|e| &e.image).collect();
            names.sort();
            names.dedup();
            if names.len() != epochs.len() {
                return Err(StoreError::InvalidRequest {
                    reason: "an image appears twice in one commit".into(),
                });
            }
            names.into_iter().map(|n| self.slot(n)).collect()
        };
        let _guards: Vec<_> = slots.iter().map(|s| lock(&s.op)).collect();
        let mut todo = Vec::new();
        for sealed in &epochs {
            let record = self
                .load(&sealed.image)?
                .ok_or_else(|| StoreError::UnknownImage {
                    image: sealed.image.clone(),
                })?;
            // A fenced image (its group failed over here) takes no more
            // points: checked under the op locks, before the intent.
            if record.fenced {
                return Err(StoreError::Fenced {
                    image: sealed.image.clone(),
                });
            }
            if record
                .history
                .iter()
                .any(|p| p.rp == rp.id.get() && p.epoch == sealed.epoch.get())
            {
                continue; // already committed (a retried Commit)
            }
            if rp.id.get() <= record.history.last().map_or(0, |p| p.rp) {
                return Err(StoreError::InvalidCommit {
                    image: sealed.image.clone(),
                    recovery_point: rp.id,
                    reason: format!("recovery point {} is not newer than the current one", rp.id),
                });
            }
            match record.pending {
                Some(p)
                    if p.epoch == sealed.epoch.get() && p.durable_seq == sealed.last_seq.get() => {}
                other => {
                    return Err(StoreError::InvalidCommit {
                        image: sealed.image.clone(),
                        recovery_point: rp.id,
                        reason: format!(
                            "epoch {} with last batch {} is not what is durable here ({:?})",
                            sealed.epoch,
                            sealed.last_seq,
                            other.map(|p| (p.epoch, p.durable_seq))
                        ),
                    })
                }
            }
            todo.push(IntentImage {
                image: sealed.image.to_string(),
                epoch: sealed.epoch.get(),
                last_seq: sealed.last_seq.get(),
                size: sealed.size,
            });
        }
        if todo.is_empty() {
            return Ok(());
        }
        let intent = Intent {
            format: FORMAT,
            rp: rp.id.get(),
            created_unix_ms: rp.created_unix_ms,
            fuzzy: rp.fuzzy,
            images: todo,
        };
        let key = self.inner.state.put_intent(&intent)?;
        failpoint::hit(CrashPoint::AfterIntent)?;
        self.apply_intent(&intent)?;
        self.inner.state.remove_intent(&key)
    }

    /// Snapshots and records every image of `intent` (idempotent). The
    /// images of a group are done at once, one thread each: their records
    /// are separate files, and snapshots asked for together share the
    /// monitor rounds that allocate and retire snapshot ids (about a second
    /// each on a small cluster) instead of queueing one round per image.
    pub(super) fn apply_intent(&self, intent: &Intent) -> Result<(), StoreError> {
        if intent.images.len() <= 1 {
            for entry in &intent.images {
                self.apply_intent_image(intent, entry)?;
            }
            return Ok(());
        }
        std::thread::scope(|scope| {
            let threads: Vec<_> = intent
                .images
                .iter()
                .map(|entry| scope.spawn(move || self.apply_intent_image(intent, entry)))
                .collect();
            let mut first_error = None;
            for thread in threads {
                let result = thread.join().unwrap_or_else(|_| {
                    Err(StoreError::InvalidRequest {
                        reason: "applying a recovery point to an image panicked".into(),
                    })
                });
                if let Err(e) = result {
                    first_error.get_or_insert(e);
                }
            }
            first_error.map_or(Ok(()), Err)
        })
    }

    /// [`Self::apply_intent`] for one image.
    pub(super) fn apply_intent_image(
        &self,
        intent: &Intent,
        entry: &IntentImage,
    ) -> Result<(), StoreError> {
        {
            let image = ImageName::new(&entry.image).map_err(|e| StoreError::InvalidRequest {
                reason: e.to_string(),
            })?;
            let ctx = format!("{}/{image}", self.pool_name());
            let Some(mut record) = self.load(&image)? else {
                return Err(StoreError::UnknownImage { image });
            };
            if record.history.iter().any(|p| p.rp == intent.rp) {
                return Ok(());
            }
            let handle = self.open_image(&image)?;
            let size = handle.size().map_err(ceph(format!("size of {ctx}")))?;
            if size != entry.size {
                handle
                    .resize(entry.size)
                    .map_err(ceph(format!("resizing {ctx}")))?;
            }
            failpoint::hit(CrashPoint::AfterDataBeforeSync)?;
            handle.flush().map_err(ceph(format!("flushing {ctx}")))?;
            failpoint::hit(CrashPoint::AfterDataBeforeState)?;
            let snap = snap_name(intent.rp);
            if !handle
                .snap_exists(&snap)
                .map_err(ceph(format!("looking up {ctx}@{snap}")))?
            {
                handle
                    .snap_create(&snap)
                    .map_err(ceph(format!("snapshotting {ctx}@{snap}")))?;
            }
            record.history.push(PointRecord {
                rp: intent.rp,
                epoch: entry.epoch,
                created_unix_ms: intent.created_unix_ms,
                fuzzy: intent.fuzzy,
                size: entry.size,
            });
            record.pending = None;
            let excess = record.history.len().saturating_sub(self.inner.retention);
            let dropped = record
                .history
                .drain(..excess)
                .filter(|old| !record.pinned.iter().any(|p| p.rp == old.rp))
                .count();
            self.save(&mut record)?;
            info!(image = %ctx, rp = intent.rp, epoch = entry.epoch, "committed recovery point");
            if dropped > 0 {
                // After this commit answers: see standby/retire.rs.
                self.retire_later(&image);
            }
        }
        Ok(())
    }

    /// Rolls forward every commit whose intent is stored; with a state
    /// shared by the site's agents, only those naming `image` (none when
    /// `None`): another live agent may be carrying out the others, and
    /// applying an intent takes its images' exclusive locks. An intent a
    /// dead agent left is thus finished by whichever agent next works on
    /// one of its images.
    ///
    /// A commit running on another thread holds its images' slots until its
    /// intent is gone: the slots are taken here too (sorted, as `commit`
    /// takes them) and the intent read again under them, so a live commit
    /// is waited for, never applied twice at once (two writers of one
    /// image, the second breaking the first's exclusive lock).
    pub(super) fn finish_intents(&self, image: Option<&ImageName>) -> Result<(), StoreError> {
        let state = &self.inner.state;
        let only = match (state.shared(), image) {
            (false, _) => None,
            (true, Some(image)) => Some(image),
            (true, None) => return Ok(()),
        };
        for key in state.intents()? {
            let Some(intent) = state.load_intent(&key)? else {
                continue;
            };
            if only.is_some_and(|image| !intent.images.iter().any(|e| e.image == image.as_str())) {
                continue;
            }
            let mut names = Vec::with_capacity(intent.images.len());
            for entry in &intent.images {
                names.push(ImageName::new(&entry.image).map_err(|e| {
                    StoreError::InvalidRequest {
                        reason: e.to_string(),
                    }
                })?);
            }
            names.sort();
            names.dedup();
            let slots: Vec<Arc<Slot>> = names.iter().map(|n| self.slot(n)).collect();
            let _guards: Vec<_> = slots.iter().map(|s| lock(&s.op)).collect();
            // The commit that wrote it may have finished while we waited.
            let Some(intent) = state.load_intent(&key)? else {
                continue;
            };
            info!(
                rp = intent.rp,
                images = intent.images.len(),
                state = %state.describe(),
                "finishing an interrupted commit"
            );
            self.apply_intent(&intent)?;
            state.remove_intent(&key)?;
        }
        Ok(())
    }
}
