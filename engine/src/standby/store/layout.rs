//! Where the store keeps what: the paths of an image's files (image, state,
//! journal, staging, undo log, previous copy, pinned copy) and of commit
//! intents, and the classification of the files found in an image directory.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use ferry_protocol::types::{Epoch, ImageName, RecoveryPointId};

use super::handle::Inner;
use crate::standby::state::exists;
use crate::standby::StoreError;

/// Kinds of files in an image directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum ImageFile {
    Journal(u64),
    Staging(u64),
    Undo(u64),
    Prev(u64),
    /// `pinned-<RP>.raw`: a kept copy of the image at recovery point RP.
    Pinned(u64),
    Tmp,
}

pub(super) fn classify(name: &str) -> Option<ImageFile> {
    let number = |s: &str| s.parse::<u64>().ok();
    if name.ends_with(".tmp") {
        return Some(ImageFile::Tmp);
    }
    if let Some(rest) = name.strip_prefix("epoch-") {
        if let Some(n) = rest.strip_suffix(".journal") {
            return number(n).map(ImageFile::Journal);
        }
        if let Some(n) = rest.strip_suffix(".staging") {
            return number(n).map(ImageFile::Staging);
        }
    }
    if let Some(n) = name
        .strip_prefix("undo-")
        .and_then(|r| r.strip_suffix(".log"))
    {
        return number(n).map(ImageFile::Undo);
    }
    if let Some(n) = name
        .strip_prefix("pinned-")
        .and_then(|r| r.strip_suffix(".raw"))
    {
        return number(n).map(ImageFile::Pinned);
    }
    if let Some(n) = name
        .strip_prefix("prev-")
        .and_then(|r| r.strip_suffix(".raw"))
    {
        return number(n).map(ImageFile::Prev);
    }
    None
}

impl Inner {
    pub(super) fn image_dir(&self, image: &ImageName) -> PathBuf {
        self.images.join(format!("{image}.ferry"))
    }
    pub(super) fn raw(&self, image: &ImageName) -> PathBuf {
        self.images.join(format!("{image}.raw"))
    }
    pub(super) fn state(&self, image: &ImageName) -> PathBuf {
        self.image_dir(image).join("state.json")
    }
    pub(super) fn journal(&self, image: &ImageName, epoch: Epoch) -> PathBuf {
        self.image_dir(image).join(format!("epoch-{epoch}.journal"))
    }
    pub(super) fn staging(&self, image: &ImageName, epoch: Epoch) -> PathBuf {
        self.image_dir(image).join(format!("epoch-{epoch}.staging"))
    }
    pub(super) fn undo(&self, image: &ImageName, epoch: Epoch) -> PathBuf {
        self.image_dir(image).join(format!("undo-{epoch}.log"))
    }
    pub(super) fn prev(&self, image: &ImageName, epoch: Epoch) -> PathBuf {
        self.image_dir(image).join(format!("prev-{epoch}.raw"))
    }
    pub(super) fn pinned(&self, image: &ImageName, rp: RecoveryPointId) -> PathBuf {
        self.image_dir(image).join(format!("pinned-{rp}.raw"))
    }
    pub(super) fn intent(&self, rp: RecoveryPointId, nonce: u32) -> PathBuf {
        self.commits.join(format!("rp-{rp}-{nonce:08x}.intent"))
    }
}

pub(super) fn read_dir(dir: &Path) -> Result<Vec<fs::DirEntry>, StoreError> {
    fs::read_dir(dir)
        .and_then(|entries| entries.collect::<io::Result<Vec<_>>>())
        .map_err(|e| StoreError::io("list directory", dir, e))
}

/// The ferry files of an image directory (state.json and unknown names are
/// not listed).
pub(super) fn list_image_dir(dir: &Path) -> Result<Vec<(ImageFile, PathBuf)>, StoreError> {
    if !exists(dir)? {
        return Ok(Vec::new());
    }
    let mut out: Vec<(ImageFile, PathBuf)> = read_dir(dir)?
        .into_iter()
        .filter_map(|entry| {
            let name = entry.file_name();
            classify(name.to_str()?).map(|kind| (kind, entry.path()))
        })
        .collect();
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_are_classified() {
        assert_eq!(classify("epoch-12.journal"), Some(ImageFile::Journal(12)));
        assert_eq!(classify("epoch-3.staging"), Some(ImageFile::Staging(3)));
        assert_eq!(classify("undo-7.log"), Some(ImageFile::Undo(7)));
        assert_eq!(classify("prev-9.raw"), Some(ImageFile::Prev(9)));
        assert_eq!(classify("state.json.tmp"), Some(ImageFile::Tmp));
        assert_eq!(classify("state.json"), None);
        assert_eq!(classify("epoch-x.journal"), None);
    }
}
