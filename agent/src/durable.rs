//! The agent's durable file writes (`qos.json`, `api.addr`, `metrics.addr`,
//! a migration's plan and volume list) go through the engine's one helper,
//! `ferry_engine::durable::write_durably`: write a temporary file, fsync it,
//! rename it over the target, fsync the directory. A crash at any point
//! leaves either the old file or the new one, never a torn one.

use std::path::Path;

/// Writes `bytes` to `tmp`, fsyncs, renames over `path`, fsyncs the dir;
/// the error is the failed step's I/O error, as the agent's callers report it.
pub fn write_durably(tmp: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    ferry_engine::durable::write_durably(tmp, path, bytes).map_err(std::io::Error::from)
}
