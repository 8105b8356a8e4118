//! Reading committed images back: restore of any retained recovery point
//! into a new file (sparse copy or reflink, then the undo logs applied
//! backwards), and
//! BLAKE3 hashes of ranges of the committed image.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use ferry_protocol::types::{ImageName, RecoveryPointId};

use super::handle::StandbyStore;
use crate::hashing::hash_granules;
use crate::standby::io::{self as store_io, sync_dir, Create};
use crate::standby::state::{ImageStateFile, Transition};
use crate::standby::undo::{self, is_zero, UndoStatus};
use crate::standby::StoreError;
use crate::sync_util::lock;
use crate::sys::fs::{seek_data, seek_hole};

/// Most hashes one `hash_range` call returns.
pub const MAX_HASHES_PER_CALL: u64 = 1 << 20;

/// Bytes copied at a time by restore.
const COPY_CHUNK: usize = 1 << 20;
/// Zero-detection block of the sparse copy.
const COPY_BLOCK: usize = 4096;

impl StandbyStore {
    /// Writes the image as it was at recovery point `rp` to the new file
    /// `out` (which must not exist), sparsely: a full, independent copy.
    /// On error `out` is removed.
    pub fn restore(
        &self,
        image: &ImageName,
        rp: RecoveryPointId,
        out: &Path,
    ) -> Result<(), StoreError> {
        self.with_committed_state(image, rp, |state| {
            self.restore_locked(image, state, rp, out, false)
                .map(|_| ())
        })
    }

    /// [`Self::restore`], but `out` shares the data of the store's file it
    /// starts from (a reflink, copy-on-write) where the file system has
    /// reflinks; elsewhere it is a copy. Whether it was a reflink.
    pub fn restore_reflinked(
        &self,
        image: &ImageName,
        rp: RecoveryPointId,
        out: &Path,
    ) -> Result<bool, StoreError> {
        self.with_committed_state(image, rp, |state| {
            self.restore_locked(image, state, rp, out, true)
        })
    }

    /// Runs `f` on the state of a known image that has committed something,
    /// with the image's operation lock held (about recovery point `rp`: its
    /// absence is `UnknownRecoveryPoint`).
    pub(super) fn with_committed_state<T>(
        &self,
        image: &ImageName,
        rp: RecoveryPointId,
        f: impl FnOnce(&mut ImageStateFile) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let slot = self
            .known_slot(image)?
            .ok_or_else(|| StoreError::UnknownImage {
                image: image.clone(),
            })?;
        let _op = lock(&slot.op);
        let mut state =
            self.load_state(image)?
                .ok_or_else(|| StoreError::UnknownRecoveryPoint {
                    image: image.clone(),
                    recovery_point: rp,
                })?;
        f(&mut state)
    }

    /// [`Self::restore`] with the slot's operation lock held.
    pub(super) fn restore_locked(
        &self,
        image: &ImageName,
        state: &ImageStateFile,
        rp: RecoveryPointId,
        out: &Path,
        reflink: bool,
    ) -> Result<bool, StoreError> {
        let unknown = || StoreError::UnknownRecoveryPoint {
            image: image.clone(),
            recovery_point: rp,
        };
        let history = &state.history;
        let pinned = state.pinned.iter().find(|p| p.recovery_point() == rp);
        if let (Some(done), None) = (&state.handed_over, pinned) {
            // The undo chain started from the file that became the volume.
            return Err(StoreError::InvalidRequest {
                reason: format!(
                    "{image} was handed over as the failover volume {} at recovery point {}: \
                     only its pinned recovery points can still be restored, and {rp} is not one",
                    done.path.display(),
                    done.recovery_point
                ),
            });
        }
        let in_history = history.iter().position(|h| h.recovery_point() == rp);
        let k = match (in_history, pinned) {
            (Some(k), _) if state.handed_over.is_none() => k,
            (_, Some(pinned)) => {
                let copy = self.inner.pinned(image, rp);
                return self.write_out(&copy, &[], pinned.size, out, reflink);
            }
            (_, None) => return Err(unknown()),
        };
        // Start from the closest full-copy predecessor above k, or the image.
        let full_at = (k + 1..history.len()).find(|&j| history[j].transition == Transition::Full);
        let source = match full_at {
            Some(j) => self.inner.prev(image, history[j].epoch()),
            None => self.inner.raw(image),
        };
        let chain_end = full_at.unwrap_or(history.len());
        let mut logs = Vec::new();
        for entry in history[k + 1..chain_end].iter().rev() {
            let path = self.inner.undo(image, entry.epoch());
            match (entry.transition, undo::read(&path)?) {
                (Transition::Undo, UndoStatus::Complete(log)) => logs.push((path, log)),
                _ => {
                    return Err(StoreError::corrupt(
                        &path,
                        "history needs this complete undo log",
                    ))
                }
            }
        }
        let _span =
            tracing::info_span!("standby_restore", image = %image, recovery_point = %rp).entered();
        self.write_out(&source, &logs, history[k].size, out, reflink)
    }

    /// Copies the committed-image file `source` sparsely into the new file
    /// `out` (or, with `reflink`, shares its data where the file system
    /// can), applies `logs` in order, checks the result is `size` bytes and
    /// makes it durable; whether it was a reflink. On error `out` is
    /// removed.
    pub(super) fn write_out(
        &self,
        source: &Path,
        logs: &[(PathBuf, undo::UndoLog)],
        size: u64,
        out: &Path,
        reflink: bool,
    ) -> Result<bool, StoreError> {
        let out_file = store_io::open(out, Create::New)
            .map_err(|e| StoreError::io("create restore target", out, e))?;
        let result = (|| {
            let src =
                File::open(source).map_err(|e| StoreError::io("open restore source", source, e))?;
            let linked = reflink
                && crate::sys::fs::reflink(&src, &out_file)
                    .map_err(|e| StoreError::io("reflink restore source", out, e))?;
            if !linked {
                copy_sparse(&src, source, &out_file, out)?;
            }
            for (path, log) in logs {
                undo::apply(log, path, &out_file, out)?;
            }
            let len = out_file
                .metadata()
                .map_err(|e| StoreError::io("stat restore target", out, e))?
                .len();
            if len != size {
                return Err(StoreError::corrupt(
                    source,
                    format!("restored image is {len} bytes, recovery point says {size}"),
                ));
            }
            store_io::sync_all(&out_file, out)
                .map_err(|e| StoreError::io("fsync restore target", out, e))?;
            let parent = out
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            sync_dir(parent).map_err(|e| StoreError::io("fsync directory", parent, e))?;
            Ok(linked)
        })();
        if result.is_err() {
            let _ = store_io::remove_file(out);
        }
        result
    }

    /// BLAKE3 of each `granularity` piece of `[offset, offset + length)` of
    /// the committed image (clipped to its size), with the recovery point and
    /// size it was taken at. An image with nothing committed hashes as empty.
    pub fn hash_range(
        &self,
        image: &ImageName,
        offset: u64,
        length: u64,
        granularity: u32,
    ) -> Result<(RecoveryPointId, u64, Vec<[u8; 32]>), StoreError> {
        if granularity == 0 {
            return Err(StoreError::InvalidRequest {
                reason: "hash granularity must be > 0".into(),
            });
        }
        let slot = self
            .known_slot(image)?
            .ok_or_else(|| StoreError::UnknownImage {
                image: image.clone(),
            })?;
        let _op = lock(&slot.op);
        let Some(state) = self.load_state(image)? else {
            return Ok((RecoveryPointId(0), 0, Vec::new()));
        };
        if let Some(done) = &state.handed_over {
            return Err(StoreError::InvalidRequest {
                reason: format!(
                    "{image} was handed over as the failover volume {}: the store no longer holds it",
                    done.path.display()
                ),
            });
        }
        let Some(current) = state.current().cloned() else {
            return Ok((RecoveryPointId(0), 0, Vec::new()));
        };
        let end = offset.saturating_add(length).min(current.size);
        let count = end.saturating_sub(offset).div_ceil(u64::from(granularity));
        if count > MAX_HASHES_PER_CALL {
            return Err(StoreError::InvalidRequest {
                reason: format!("{count} granules requested, the limit is {MAX_HASHES_PER_CALL}"),
            });
        }
        let raw = self.inner.raw(image);
        let file = File::open(&raw).map_err(|e| StoreError::io("open image", &raw, e))?;
        let _span = tracing::debug_span!("standby_hash", image = %image, offset, length).entered();
        let hashes = hash_granules(&file, current.size, offset, length, granularity)
            .map_err(|e| StoreError::io("hash image", &raw, e))?;
        Ok((current.recovery_point(), current.size, hashes))
    }
}

/// Copies `src` to the empty file `dst`, skipping holes and all-zero 4 KiB
/// blocks (the destination stays sparse), then sets its length.
fn copy_sparse(src: &File, src_path: &Path, dst: &File, dst_path: &Path) -> Result<(), StoreError> {
    let len = src
        .metadata()
        .map_err(|e| StoreError::io("stat restore source", src_path, e))?
        .len();
    let mut buf = vec![0u8; COPY_CHUNK];
    let mut pos = 0u64;
    while pos < len {
        // SEEK_DATA/SEEK_HOLE skip holes without reading; if the file system
        // cannot answer, treat the rest as data.
        let data_start = match seek_data(src, pos) {
            Ok(Some(start)) => start,
            Ok(None) => break,
            Err(_) => pos,
        };
        let data_end = match seek_hole(src, data_start) {
            Ok(Some(end)) => end.min(len),
            Ok(None) | Err(_) => len,
        };
        let mut at = data_start;
        while at < data_end {
            let n = usize::try_from(data_end - at)
                .unwrap_or(COPY_CHUNK)
                .min(COPY_CHUNK);
            let chunk = &mut buf[..n];
            src.read_exact_at(chunk, at)
                .map_err(|e| StoreError::io("read restore source", src_path, e))?;
            let mut block = 0usize;
            while block < n {
                let block_end = (block + COPY_BLOCK).min(n);
                if is_zero(&chunk[block..block_end]) {
                    block = block_end;
                    continue;
                }
                // Extend over the following non-zero blocks and write them in one go.
                let mut run_end = block_end;
                while run_end < n && !is_zero(&chunk[run_end..(run_end + COPY_BLOCK).min(n)]) {
                    run_end = (run_end + COPY_BLOCK).min(n);
                }
                store_io::write_all_at(dst, dst_path, &chunk[block..run_end], at + block as u64)
                    .map_err(|e| StoreError::io("write restore target", dst_path, e))?;
                block = run_end;
            }
            at += n as u64;
        }
        pos = data_end.max(pos + 1);
    }
    store_io::set_len(dst, dst_path, len)
        .map_err(|e| StoreError::io("size restore target", dst_path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::{self, OpenOptions};

    #[test]
    fn sparse_copy_keeps_content_and_length() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src_path = dir.path().join("src");
        let src = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&src_path)
            .expect("src");
        src.set_len(5 << 20).expect("len");
        src.write_all_at(&[9u8; 5000], 3 << 20).expect("write");
        src.write_all_at(&[4u8; 10], 123).expect("write");
        let dst_path = dir.path().join("dst");
        let dst = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&dst_path)
            .expect("dst");
        copy_sparse(&src, &src_path, &dst, &dst_path).expect("copy");
        assert_eq!(
            fs::read(&src_path).expect("read"),
            fs::read(&dst_path).expect("read")
        );
    }
}
