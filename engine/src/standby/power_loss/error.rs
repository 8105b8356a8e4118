//! [`PowerLossError`]: failures of the power-loss log and of its roll-back.

use std::io;
use std::path::PathBuf;

/// A failure recording into, reading or rolling back a power-loss log.
#[derive(Debug, thiserror::Error)]
pub enum PowerLossError {
    /// A file-system call failed.
    #[error("power-loss log: {op} {}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// File or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A record of the log cannot be read.
    #[error("power-loss log {}: record {line} is unreadable: {reason}", path.display())]
    Corrupt {
        /// The records file.
        path: PathBuf,
        /// 1-based line of the bad record.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
}

impl PowerLossError {
    /// An [`PowerLossError::Io`] with its context.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

impl From<PowerLossError> for io::Error {
    fn from(e: PowerLossError) -> Self {
        io::Error::other(e)
    }
}
