//! The agent's one durable file write: write a temporary file, fsync it,
//! rename it over the target, fsync the directory. A crash at any point
//! leaves either the old file or the new one, never a torn one. Used for
//! `qos.json`, `api.addr`, `metrics.addr` and a migration's plan and
//! volume list.

use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `tmp`, fsyncs, renames over `path`, fsyncs the dir.
pub fn write_durably(tmp: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::File::create(tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(tmp, path)?;
    if let Some(parent) = path.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}
