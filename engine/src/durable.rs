//! Durable replacement of a small file: write a temporary file, fsync it,
//! rename it over the target, fsync the directory. After a crash the target
//! holds either the old bytes or the new ones, never a mix. The standby
//! store does not use this: its writes go through `standby::io` so the
//! power-loss tests can record them.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

/// The step of [`write_durably`] that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DurableStep {
    /// Creating (truncating) the temporary file.
    Create,
    /// Writing the bytes to the temporary file.
    Write,
    /// Fsyncing the temporary file.
    Sync,
    /// Renaming the temporary file over the target.
    Rename,
    /// Fsyncing the target's directory.
    SyncDir,
}

/// [`write_durably`] failed at `step`.
#[derive(Debug, thiserror::Error)]
#[error("durable write failed at {step:?}: {source}")]
pub struct DurableWriteError {
    /// What failed.
    pub step: DurableStep,
    /// Why.
    #[source]
    pub source: io::Error,
}

impl From<DurableWriteError> for io::Error {
    fn from(e: DurableWriteError) -> Self {
        e.source
    }
}

/// The directory holding `path` (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Writes `bytes` to `tmp`, fsyncs it, renames it over `path` and fsyncs
/// the directory of `path`. `tmp` must be in the same directory as `path`.
pub fn write_durably(tmp: &Path, path: &Path, bytes: &[u8]) -> Result<(), DurableWriteError> {
    let step = |step| move |source| DurableWriteError { step, source };
    let mut file = File::create(tmp).map_err(step(DurableStep::Create))?;
    file.write_all(bytes).map_err(step(DurableStep::Write))?;
    file.sync_all().map_err(step(DurableStep::Sync))?;
    drop(file);
    std::fs::rename(tmp, path).map_err(step(DurableStep::Rename))?;
    crate::sys::fs::sync_dir(parent_dir(path)).map_err(step(DurableStep::SyncDir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let tmp = dir.path().join("state.json.tmp");
        std::fs::write(&path, b"old").unwrap();
        write_durably(&tmp, &path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert!(!tmp.exists());
    }

    #[test]
    fn says_which_step_failed() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-dir");
        let err = write_durably(&missing.join("a.tmp"), &missing.join("a"), b"x").unwrap_err();
        assert_eq!(err.step, DurableStep::Create);
        assert_eq!(err.source.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn a_bare_file_name_lives_in_the_current_directory() {
        assert_eq!(parent_dir(Path::new("x")), Path::new("."));
        assert_eq!(parent_dir(Path::new("/a/x")), Path::new("/a"));
    }
}
