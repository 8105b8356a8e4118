//! Small checksummed JSON files: each image's `state.json` (committed
//! recovery point and retained history) and group-commit intents
//! (`DIR/commits/rp-<ID>.intent`).
//!
//! File format: one line `FERRY1 <crc32c of the JSON, 8 hex digits>\n`, then
//! the JSON. Files are replaced atomically (write `*.tmp`, fsync, rename,
//! fsync the directory), so a reader sees the old or the new version; a CRC
//! mismatch therefore means real damage and is reported as `Corrupt`.

use std::fs::{self, File};
use std::io;
use std::path::Path;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use ferry_protocol::types::{Epoch, ImageName, RecoveryPointId, SeqNo};

use super::io::{self as store_io, Create};
use super::StoreError;

const PREFIX: &[u8] = b"FERRY1 ";

/// Version of the state and intent formats.
pub(crate) const FORMAT: u32 = 1;

/// How a history entry's image was reached from the entry before it, which
/// says what file restores the earlier one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Transition {
    /// First commit of the image: nothing before it.
    Initial,
    /// Incremental epoch: `undo-<epoch>.log` turns this image into the previous one.
    Undo,
    /// Full copy replacing an existing image: `prev-<epoch>.raw` is the previous one.
    Full,
}

/// One retained recovery point of an image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HistoryEntry {
    /// Recovery point id.
    pub recovery_point: u64,
    /// Epoch committed at that point.
    pub epoch: u64,
    /// When the primary took it (ms since the Unix epoch).
    pub created_unix_ms: u64,
    /// Whether the point is fuzzy (not crash-consistent).
    pub fuzzy: bool,
    /// Image size at that point.
    pub size: u64,
    /// How it was reached from the previous entry.
    pub transition: Transition,
}

impl HistoryEntry {
    /// The epoch as a typed value.
    pub(crate) fn epoch(&self) -> Epoch {
        Epoch(self.epoch)
    }

    /// The recovery point as a typed value.
    pub(crate) fn recovery_point(&self) -> RecoveryPointId {
        RecoveryPointId(self.recovery_point)
    }
}

/// Contents of `NAME.ferry/state.json`. The last history entry is the
/// committed state; the list is never empty once the file exists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ImageStateFile {
    /// Format version ([`FORMAT`]).
    pub format: u32,
    /// Image name (checked against the directory on load).
    pub image: String,
    /// Retained recovery points, oldest first.
    pub history: Vec<HistoryEntry>,
    /// Points kept beyond the retention, each with a copy
    /// `pinned-<RP>.raw` (see `StandbyStore::pin`); `transition` is unused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pinned: Vec<HistoryEntry>,
    /// Fenced for a failover: no epoch opens or commits any more (see
    /// `StandbyStore::fence`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fenced: bool,
    /// The image file was handed over as a failover's volume (see
    /// `StandbyStore::hand_over`): `DIR/images/NAME.raw` is gone, and only
    /// the pinned copies stay restorable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handed_over: Option<HandedOver>,
}

/// Where and at which point an image file was handed over as a volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HandedOver {
    /// The recovery point the file held.
    pub recovery_point: u64,
    /// Where it is now (the failover's output).
    pub path: std::path::PathBuf,
}

impl ImageStateFile {
    /// The committed (newest) entry.
    pub(crate) fn current(&self) -> Option<&HistoryEntry> {
        self.history.last()
    }
}

/// One image's part in a commit intent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct IntentImage {
    /// Image name.
    pub image: String,
    /// Epoch to commit.
    pub epoch: u64,
    /// Last batch of that epoch.
    pub last_seq: u64,
    /// Image size at the recovery point.
    pub size: u64,
}

impl IntentImage {
    /// The epoch as a typed value.
    pub(crate) fn epoch(&self) -> Epoch {
        Epoch(self.epoch)
    }

    /// The last batch as a typed value.
    pub(crate) fn last_seq(&self) -> SeqNo {
        SeqNo(self.last_seq)
    }
}

/// Contents of `DIR/commits/rp-<ID>.intent`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct IntentFile {
    /// Format version ([`FORMAT`]).
    pub format: u32,
    /// Recovery point id.
    pub recovery_point: u64,
    /// When the primary took it.
    pub created_unix_ms: u64,
    /// Whether it is fuzzy.
    pub fuzzy: bool,
    /// Every image of the recovery point.
    pub images: Vec<IntentImage>,
}

/// Parses a stored image name, reporting a bad one as corruption of `path`.
pub(crate) fn parse_image(name: &str, path: &Path) -> Result<ImageName, StoreError> {
    ImageName::new(name)
        .map_err(|e| StoreError::corrupt(path, format!("invalid image name {name:?}: {e}")))
}

/// Atomically replaces `path` with `value` (tmp file, fsync, rename, fsync dir).
pub(crate) fn write_checksummed<T: Serialize>(path: &Path, value: &T) -> Result<(), StoreError> {
    let json = serde_json::to_vec_pretty(value).map_err(|e| StoreError::Io {
        op: "serialize state",
        path: path.to_path_buf(),
        source: io::Error::other(e),
    })?;
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp_name);
    let crc = crc32c::crc32c(&json);
    let file = store_io::open(&tmp, Create::Truncate)
        .map_err(|e| StoreError::io("create state tmp", &tmp, e))?;
    let header = format!("FERRY1 {crc:08x}\n");
    store_io::write_all_vectored_at(&file, &tmp, &[header.as_bytes(), &json], 0)
        .map_err(|e| StoreError::io("write state tmp", &tmp, e))?;
    store_io::sync_all(&file, &tmp).map_err(|e| StoreError::io("fsync state tmp", &tmp, e))?;
    drop(file);
    store_io::rename(&tmp, path).map_err(|e| StoreError::io("rename state", path, e))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    store_io::sync_dir(dir).map_err(|e| StoreError::io("fsync directory", dir, e))
}

/// Reads and checks a file written by [`write_checksummed`]; `Ok(None)` when
/// it does not exist.
pub(crate) fn read_checksummed<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, StoreError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io("read state", path, e)),
    };
    let line_len = PREFIX.len() + 9;
    if bytes.len() < line_len || !bytes.starts_with(PREFIX) || bytes[line_len - 1] != b'\n' {
        return Err(StoreError::corrupt(path, "missing FERRY1 header line"));
    }
    let hex = std::str::from_utf8(&bytes[PREFIX.len()..line_len - 1])
        .ok()
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .ok_or_else(|| StoreError::corrupt(path, "bad checksum field"))?;
    let json = &bytes[line_len..];
    if crc32c::crc32c(json) != hex {
        return Err(StoreError::corrupt(path, "checksum mismatch"));
    }
    serde_json::from_slice(json)
        .map(Some)
        .map_err(|e| StoreError::corrupt(path, format!("invalid JSON: {e}")))
}

/// Removes `path`, treating "already gone" as success.
pub(crate) fn remove_if_exists(path: &Path) -> Result<(), StoreError> {
    match store_io::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io("remove file", path, e)),
    }
}

/// Whether `path` exists (errors other than "not found" are reported).
pub(crate) fn exists(path: &Path) -> Result<bool, StoreError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(StoreError::io("stat", path, e)),
    }
}

/// Opens `path` for reading and writing.
pub(crate) fn open_rw(path: &Path, op: &'static str) -> Result<File, StoreError> {
    store_io::open(path, Create::No).map_err(|e| StoreError::io(op, path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ImageStateFile {
        ImageStateFile {
            format: FORMAT,
            image: "vm-1.disk".into(),
            pinned: Vec::new(),
            fenced: false,
            handed_over: None,
            history: vec![HistoryEntry {
                recovery_point: 3,
                epoch: 2,
                created_unix_ms: 1_700_000_000_000,
                fuzzy: false,
                size: 1 << 30,
                transition: Transition::Undo,
            }],
        }
    }

    #[test]
    fn roundtrip_missing_and_corrupt() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        assert_eq!(
            read_checksummed::<ImageStateFile>(&path).expect("read"),
            None
        );
        write_checksummed(&path, &sample()).expect("write");
        assert_eq!(
            read_checksummed::<ImageStateFile>(&path).expect("read"),
            Some(sample())
        );
        assert!(!exists(&dir.path().join("state.json.tmp")).expect("stat"));

        let mut bytes = fs::read(&path).expect("read");
        let last = bytes.len() - 3;
        bytes[last] ^= 0x01;
        fs::write(&path, &bytes).expect("write");
        let err = read_checksummed::<ImageStateFile>(&path).expect_err("corrupt");
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    }
}
