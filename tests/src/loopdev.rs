//! Loop devices for tests of block-device sources: attach a file with
//! `losetup` (needs root and loop devices; `None`, with the reason printed,
//! where that is impossible), drop the device's page cache, detach on drop.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A loop device over a file, detached on drop.
pub struct LoopDevice(pub PathBuf);

impl LoopDevice {
    /// Attaches `backing` to a free loop device.
    pub fn attach(backing: &Path) -> Option<LoopDevice> {
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(backing)
            .output()
            .ok()?;
        if !out.status.success() {
            println!(
                "no loop device (needs root and loop devices): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        Some(LoopDevice(PathBuf::from(dev)))
    }

    /// Drops the device's page cache, so reads see the backing file.
    pub fn flush_buffers(&self) {
        let out = Command::new("blockdev")
            .arg("--flushbufs")
            .arg(&self.0)
            .output()
            .expect("running blockdev");
        assert!(out.status.success(), "blockdev --flushbufs failed");
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).output();
    }
}
