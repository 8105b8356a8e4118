//! The file source's persistent state: `state.json` (committed epoch and
//! size, the in-progress cycle) and the manifests next to it, the
//! in-memory side of the running cycle, and what reconciles them after a
//! crash.

use std::fs;
use std::io;
use std::path::PathBuf;

use ferry_protocol::Epoch;

use super::types::{io_error, FileSource, PersistedState, STATE_FILE, STATE_VERSION};
use crate::durable::{write_durably, DurableStep};
use crate::source::manifest::{Manifest, ManifestError};
use crate::source::SourceError;

impl FileSource {
    pub(super) fn state_path(&self) -> PathBuf {
        self.state_dir.join(STATE_FILE)
    }

    pub(super) fn manifest_path(&self, epoch: u64) -> PathBuf {
        self.state_dir.join(format!("manifest-{epoch}.bin"))
    }

    pub(super) fn partial_path(&self, epoch: u64) -> PathBuf {
        self.state_dir.join(format!("manifest-{epoch}.partial"))
    }

    pub(super) fn load_state(&self) -> Result<PersistedState, SourceError> {
        let path = self.state_path();
        let text = match fs::read(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return Ok(PersistedState::default())
            }
            Err(error) => return Err(io_error("read state", &path)(error)),
        };
        let state: PersistedState =
            serde_json::from_slice(&text).map_err(|source| SourceError::State {
                path: path.clone(),
                source,
            })?;
        if state.version != STATE_VERSION {
            return Err(SourceError::Misuse {
                reason: "state file has an unsupported version",
            });
        }
        Ok(state)
    }

    /// Replaces the state file atomically and durably; the in-memory state
    /// changes only if that succeeded.
    pub(super) fn store_state(&mut self, state: PersistedState) -> Result<(), SourceError> {
        let path = self.state_path();
        let tmp = self.state_dir.join(format!("{STATE_FILE}.tmp"));
        let text = serde_json::to_vec_pretty(&state).map_err(|source| SourceError::State {
            path: path.clone(),
            source,
        })?;
        write_durably(&tmp, &path, &text).map_err(|e| match e.step {
            DurableStep::Create => io_error("create state", &tmp)(e.source),
            DurableStep::Write => io_error("write state", &tmp)(e.source),
            DurableStep::Sync => io_error("sync state", &tmp)(e.source),
            DurableStep::Rename => io_error("rename state", &path)(e.source),
            DurableStep::SyncDir => io_error("sync directory", &self.state_dir)(e.source),
        })?;
        self.state = state;
        Ok(())
    }

    /// Completes or forgets what an earlier process left behind.
    pub(super) fn reconcile(&mut self) -> Result<(), SourceError> {
        let Some(ip) = self.state.in_progress.clone() else {
            return self.sweep();
        };
        let partial = self.partial_path(ip.epoch);
        let done = self.manifest_path(ip.epoch);
        if !partial.exists() {
            let mut next = self.state.clone();
            if ip.scan_complete && done.exists() {
                // commit_cycle renamed the manifest but did not get to write
                // the state: the standby had committed; roll forward.
                next.committed_epoch = ip.epoch;
                next.committed_size = ip.image_size;
            }
            next.in_progress = None;
            self.store_state(next)?;
        }
        self.sweep()
    }

    /// Deletes manifests that are neither the committed one nor the partial
    /// of the in-progress cycle (best effort).
    pub(super) fn sweep(&self) -> Result<(), SourceError> {
        let keep_bin = format!("manifest-{}.bin", self.state.committed_epoch);
        let keep_partial = self
            .state
            .in_progress
            .as_ref()
            .map(|ip| format!("manifest-{}.partial", ip.epoch));
        let entries = fs::read_dir(&self.state_dir)
            .map_err(io_error("list state directory", &self.state_dir))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let is_manifest = name.starts_with("manifest-")
                && (name.ends_with(".bin") || name.ends_with(".partial"));
            if is_manifest && name != keep_bin && Some(name) != keep_partial.as_deref() {
                if let Err(error) = fs::remove_file(entry.path()) {
                    tracing::warn!(%error, file = name, "cannot remove stale manifest");
                }
            }
        }
        Ok(())
    }

    /// Opens the committed manifest; a missing or damaged one demotes the
    /// source to "nothing committed" so that the next cycle is a full copy.
    pub(super) fn open_base(&mut self) {
        self.base = None;
        let epoch = self.state.committed_epoch;
        if epoch == 0 {
            return;
        }
        let path = self.manifest_path(epoch);
        let opened = Manifest::open(&path, false).and_then(|m| {
            let header = m.header();
            if header.epoch != Epoch(epoch) {
                Err(ManifestError::Mismatch {
                    path: path.clone(),
                    reason: "epoch differs from the committed epoch",
                })
            } else if header.image_size != self.state.committed_size {
                Err(ManifestError::Mismatch {
                    path: path.clone(),
                    reason: "image size differs from the committed size",
                })
            } else {
                Ok(m)
            }
        });
        match opened {
            Ok(manifest) => self.base = Some(manifest),
            Err(error) => {
                tracing::warn!(error = %error, image = %self.image_path.display(),
                    "committed manifest unusable; the next cycle must be a full copy");
            }
        }
    }

    /// Makes every recorded entry durable and records that in the state file.
    pub(super) fn sync_progress(&mut self) -> Result<(), SourceError> {
        let Some(cycle) = self.cycle.as_mut() else {
            return Ok(());
        };
        cycle.partial.sync()?;
        let recorded = cycle.recorded;
        let short_read = cycle.short_read;
        let epoch = cycle.epoch.get();
        let mut next = self.state.clone();
        if let Some(ip) = next.in_progress.as_mut().filter(|ip| ip.epoch == epoch) {
            ip.durable_offset = recorded;
            ip.fuzzy_seen |= short_read;
        }
        self.store_state(next)?;
        if let Some(cycle) = self.cycle.as_mut() {
            cycle.synced = recorded;
        }
        Ok(())
    }
}
