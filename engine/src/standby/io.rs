//! The store's file-system seam: every call that changes a standby store
//! file or directory (data writes through pwrite, pwritev and io_uring, hole
//! punching, size changes, creation, rename, removal) and every
//! fsync/fdatasync of one goes through here.
//!
//! Normally each function is the plain system call. In unit tests and with
//! the `failpoints` feature plus `FERRY_POWER_LOSS_LOG=DIR`, each change is
//! first recorded in the power-loss log (see [`super::power_loss`]), so a
//! test can kill the process and undo what a power cut would have lost.
//! Without the feature the recording branch is a constant `None` and
//! compiles away.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::sys::fs as sysfs;
use crate::sys::uring::BlockWriter;

#[cfg(any(test, feature = "failpoints"))]
use super::power_loss::active as recorder;

/// Stand-in for the recorder when recording is not compiled in.
#[cfg(not(any(test, feature = "failpoints")))]
mod off {
    use std::fs::File;
    use std::io;
    use std::path::Path;

    /// Never constructed: [`recorder`] always returns `None`.
    pub(super) enum NoRecorder {}

    impl NoRecorder {
        pub(super) fn before_write(&self, _: &File, _: &Path, _: u64, _: u64) -> io::Result<()> {
            match *self {}
        }
        pub(super) fn before_zero(&self, _: &File, _: &Path, _: u64, _: u64) -> io::Result<()> {
            match *self {}
        }
        pub(super) fn before_set_len(&self, _: &File, _: &Path, _: u64) -> io::Result<()> {
            match *self {}
        }
        pub(super) fn sync_start(&self) -> u64 {
            match *self {}
        }
        pub(super) fn synced(&self, _: &File, _: &Path, _: u64) -> io::Result<()> {
            match *self {}
        }
        pub(super) fn dir_synced(&self, _: &Path, _: u64) -> io::Result<()> {
            match *self {}
        }
        pub(super) fn before_create(&self, _: &Path, _: bool) -> io::Result<()> {
            match *self {}
        }
        pub(super) fn rename(&self, _: &Path, _: &Path) -> io::Result<()> {
            match *self {}
        }
        pub(super) fn remove(&self, _: &Path) -> io::Result<()> {
            match *self {}
        }
    }

    /// Recording is not compiled in.
    #[inline(always)]
    pub(super) fn recorder() -> Option<NoRecorder> {
        None
    }
}
#[cfg(not(any(test, feature = "failpoints")))]
use off::recorder;

/// How [`open`] treats a missing or existing file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Create {
    /// The file must exist.
    No,
    /// Create it if missing; keep the contents of an existing one.
    Keep,
    /// Create it if missing; truncate an existing one to zero bytes.
    Truncate,
    /// Create it; fail with `AlreadyExists` if it exists.
    New,
}

/// Opens `path` for reading and writing (the recorder reads old bytes
/// through the same descriptor).
pub(crate) fn open(path: &Path, create: Create) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(true);
    if create == Create::No {
        return options.open(path);
    }
    if let Some(rec) = recorder() {
        let existed = exists(path)?;
        if existed && create == Create::New {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, "file exists"));
        }
        if !existed {
            rec.before_create(path, false)?;
        }
        let file = options.create(true).truncate(false).open(path)?;
        if existed && create == Create::Truncate {
            rec.before_set_len(&file, path, 0)?;
            file.set_len(0)?;
        }
        return Ok(file);
    }
    match create {
        Create::New => options.create_new(true),
        Create::Truncate => options.create(true).truncate(true),
        Create::Keep | Create::No => options.create(true).truncate(false),
    };
    options.open(path)
}

fn exists(path: &Path) -> io::Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// `pwrite` of all of `buf` at `offset`.
pub(crate) fn write_all_at(file: &File, path: &Path, buf: &[u8], offset: u64) -> io::Result<()> {
    if let Some(rec) = recorder() {
        rec.before_write(file, path, offset, buf.len() as u64)?;
    }
    file.write_all_at(buf, offset)
}

/// `pwritev` of every buffer of `bufs`, back to back, at `offset`.
pub(crate) fn write_all_vectored_at(
    file: &File,
    path: &Path,
    bufs: &[&[u8]],
    offset: u64,
) -> io::Result<()> {
    if let Some(rec) = recorder() {
        let len = bufs.iter().map(|b| b.len() as u64).sum();
        rec.before_write(file, path, offset, len)?;
    }
    sysfs::write_all_vectored_at(file, bufs, offset)
}

/// Writes `(offset, bytes)` pairs with several in flight (io_uring).
pub(crate) fn write_blocks(
    writer: &mut BlockWriter,
    file: &File,
    path: &Path,
    writes: &[(u64, &[u8])],
) -> io::Result<()> {
    if let Some(rec) = recorder() {
        for (offset, bytes) in writes {
            rec.before_write(file, path, *offset, bytes.len() as u64)?;
        }
    }
    writer.write_all_at(file, writes)
}

/// Makes `[offset, offset + len)` read as zeroes without changing the size.
pub(crate) fn zero_range(file: &File, path: &Path, offset: u64, len: u64) -> io::Result<()> {
    if let Some(rec) = recorder() {
        rec.before_zero(file, path, offset, len)?;
    }
    sysfs::zero_range(file, offset, len)
}

/// `ftruncate`: sets the size of `file` to `len`.
pub(crate) fn set_len(file: &File, path: &Path, len: u64) -> io::Result<()> {
    if let Some(rec) = recorder() {
        rec.before_set_len(file, path, len)?;
    }
    file.set_len(len)
}

/// `fsync` of `file`.
pub(crate) fn sync_all(file: &File, path: &Path) -> io::Result<()> {
    match recorder() {
        Some(rec) => {
            let upto = rec.sync_start();
            file.sync_all()?;
            rec.synced(file, path, upto)
        }
        None => file.sync_all(),
    }
}

/// `fdatasync` of `file`.
pub(crate) fn sync_data(file: &File, path: &Path) -> io::Result<()> {
    match recorder() {
        Some(rec) => {
            let upto = rec.sync_start();
            file.sync_data()?;
            rec.synced(file, path, upto)
        }
        None => file.sync_data(),
    }
}

/// `fsync` of directory `dir`: makes creations, renames and removals of its
/// entries durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    match recorder() {
        Some(rec) => {
            let upto = rec.sync_start();
            sysfs::sync_dir(dir)?;
            rec.dir_synced(dir, upto)
        }
        None => sysfs::sync_dir(dir),
    }
}

/// `rename(2)`.
pub(crate) fn rename(from: &Path, to: &Path) -> io::Result<()> {
    match recorder() {
        Some(rec) => rec.rename(from, to),
        None => fs::rename(from, to),
    }
}

/// `unlink(2)` of a file.
pub(crate) fn remove_file(path: &Path) -> io::Result<()> {
    match recorder() {
        Some(rec) => rec.remove(path),
        None => fs::remove_file(path),
    }
}

/// Removes a directory and everything in it.
pub(crate) fn remove_dir_all(path: &Path) -> io::Result<()> {
    match recorder() {
        Some(rec) => rec.remove(path),
        None => fs::remove_dir_all(path),
    }
}

/// `mkdir(2)`.
pub(crate) fn create_dir(path: &Path) -> io::Result<()> {
    if let Some(rec) = recorder() {
        if !exists(path)? {
            rec.before_create(path, true)?;
        }
    }
    fs::create_dir(path)
}

/// `mkdir -p`: creates `path` and any missing parents.
pub(crate) fn create_dir_all(path: &Path) -> io::Result<()> {
    let missing: Vec<&Path> = path
        .ancestors()
        .take_while(|p| !p.as_os_str().is_empty() && !p.exists())
        .collect();
    for dir in missing.into_iter().rev() {
        match create_dir(dir) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            other => other?,
        }
    }
    Ok(())
}
