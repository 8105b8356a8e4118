//! What tells that an image did not change between two moments: a regular
//! file's (device, inode, size, mtime, ctime), or a block device's kernel
//! counters of sectors written and discarded.

use std::fs;
use std::os::unix::fs::MetadataExt;

use super::types::{FileSource, Fingerprint};

/// The kernel's I/O counters of block device MAJ:MIN: from
/// `/sys/dev/block/MAJ:MIN/stat`, or (where that directory is empty, as in
/// some containers) from the `/sys/class/block/*` entry whose `dev` names it.
fn block_device_stat(major: u64, minor: u64) -> Option<String> {
    if let Ok(text) = fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/stat")) {
        return Some(text);
    }
    let wanted = format!("{major}:{minor}");
    fs::read_dir("/sys/class/block")
        .ok()?
        .flatten()
        .find(|entry| {
            fs::read_to_string(entry.path().join("dev")).is_ok_and(|dev| dev.trim() == wanted)
        })
        .and_then(|entry| fs::read_to_string(entry.path().join("stat")).ok())
}

/// Linux `dev_t` → (major, minor), as glibc's `gnu_dev_major/minor`.
pub(super) fn split_dev(dev: u64) -> (u64, u64) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    (major, minor)
}

impl FileSource {
    pub(super) fn fingerprint(&self) -> Option<Fingerprint> {
        let meta = self.image.metadata().ok()?;
        if self.block_device {
            // The counters move when writes reach the device, not when they
            // enter its page cache, where a scan already sees them: write
            // the dirty pages out first, or a buffered write could look
            // like a change at rest (or escape fuzzy detection).
            self.image.sync_all().ok()?;
            let rdev = meta.rdev();
            let (major, minor) = split_dev(rdev);
            let text = block_device_stat(major, minor)?;
            // Fields: reads, read merges, sectors read, read ticks, writes,
            // write merges, sectors written, write ticks, in flight, io
            // ticks, queue time, discards, discard merges, sectors
            // discarded (4.18+), ...
            let fields: Vec<&str> = text.split_whitespace().collect();
            let sectors_written = fields.get(6)?.parse().ok()?;
            let sectors_discarded = fields.get(13).and_then(|f| f.parse().ok()).unwrap_or(0);
            Some(Fingerprint::BlockDevice {
                rdev,
                sectors_written,
                sectors_discarded,
            })
        } else {
            let nanos =
                |secs: i64, nsec: i64| secs.saturating_mul(1_000_000_000).saturating_add(nsec);
            Some(Fingerprint::File {
                dev: meta.dev(),
                ino: meta.ino(),
                size: meta.len(),
                mtime_ns: nanos(meta.mtime(), meta.mtime_nsec()),
                ctime_ns: nanos(meta.ctime(), meta.ctime_nsec()),
            })
        }
    }
}
