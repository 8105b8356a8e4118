//! Power-loss simulation for crash tests of the files standby store
//! (test builds and the `failpoints` feature only).
//!
//! A SIGKILL keeps the page cache, so it can never reveal a missing
//! fsync/fdatasync. With `FERRY_POWER_LOSS_LOG=DIR` set (and the `failpoints`
//! feature compiled in), every mutating file-system call of the store (see
//! [`crate::standby`]'s `io` seam) first appends an *undo record* to a log in
//! `DIR`: the old bytes of a written, zeroed or truncated range (with the old
//! file size), a created name, a renamed name (the replaced target is kept
//! by a hard link), a removed name (the file is moved into `DIR/kept/`
//! instead of being unlinked). A completed fsync/fdatasync of a file marks
//! that file's earlier data records as covered; a completed fsync of a
//! directory covers the earlier name records of entries in it. After the
//! process was killed, [`simulate`] rolls back every record not covered, in
//! reverse order, leaving the store as a power cut at the moment of the kill
//! could have left it, and empties the log for the next run.
//!
//! Modelled: loss of every write, hole punch, truncation and extension not
//! followed by a completed fsync/fdatasync of that file; loss of every
//! creation, rename and removal of a name not followed by a completed fsync
//! of its parent directory (both directories, for a rename across them) —
//! the strict POSIX reading, stricter than ext4's ordered mode. The layer
//! rolls back *all* unsynced changes: the worst case, not one of the many
//! intermediate outcomes.
//!
//! [`simulate_with`] models milder cuts too ([`Cut`]): some unsynced writes
//! reach the disk in any order ([`Writeback`], per write call: the last of
//! each file, or a seeded random subset), and name changes may all survive
//! (as on ext4, where any fsync commits the journal holding them). These
//! catch a "commit record" written without an fsync barrier after the data
//! it vouches for.
//!
//! Not modelled: torn sectors or torn writes inside a synced range; partial
//! survival inside one write call (page by page); lost or lying flushes (a completed fsync is trusted); metadata-only
//! effects such as timestamps and allocation; a concurrent write and fsync of
//! the same file from two threads (the store never does that: a sync covers
//! the records logged before it started); files changed outside the store's
//! seam (the agent's other files, the RBD standby).
//!
//! Zero cost otherwise: without the feature (and outside unit tests) the
//! seam compiles to the plain system calls.

mod error;
mod log;
mod recorder;
mod simulate;

pub use error::PowerLossError;
pub use simulate::{simulate, simulate_with, Cut, Report, Writeback};

pub(crate) use recorder::Recorder;

use std::sync::Arc;

/// Environment variable naming the log directory; set it on the agent
/// process (a `failpoints` build) to record, then call [`simulate`] on the
/// same directory after killing the process.
pub const LOG_ENV: &str = "FERRY_POWER_LOSS_LOG";

#[cfg(test)]
thread_local! {
    static THREAD: std::cell::RefCell<Option<Arc<Recorder>>> = const { std::cell::RefCell::new(None) };
}

/// The recorder in use: in unit tests one installed for the current thread
/// by [`record_on_this_thread`] (tests run in parallel threads).
#[cfg(test)]
pub(crate) fn active() -> Option<Arc<Recorder>> {
    THREAD.with(|t| t.borrow().clone())
}

/// The recorder in use: the process-wide one opened from [`LOG_ENV`] on first
/// use (none when the variable is unset; an unusable log directory is
/// reported once and disables recording, which a test sees as an empty
/// [`Report`]).
#[cfg(not(test))]
pub(crate) fn active() -> Option<Arc<Recorder>> {
    static GLOBAL: std::sync::OnceLock<Option<Arc<Recorder>>> = std::sync::OnceLock::new();
    GLOBAL
        .get_or_init(|| {
            let dir = std::env::var_os(LOG_ENV)?;
            match Recorder::open(std::path::Path::new(&dir)) {
                Ok(recorder) => {
                    tracing::warn!(log = %std::path::Path::new(&dir).display(), "power-loss recording on (test builds only)");
                    Some(Arc::new(recorder))
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot open the power-loss log; recording off");
                    None
                }
            }
        })
        .clone()
}

/// Records the store's file-system changes made on this thread into the log
/// in `dir` until the returned guard is dropped (unit tests).
#[cfg(test)]
pub(crate) fn record_on_this_thread(
    dir: &std::path::Path,
) -> Result<ThreadRecording, PowerLossError> {
    let recorder = Arc::new(Recorder::open(dir)?);
    THREAD.with(|t| *t.borrow_mut() = Some(recorder));
    Ok(ThreadRecording(()))
}

/// Stops this thread's recording when dropped.
#[cfg(test)]
pub(crate) struct ThreadRecording(());

#[cfg(test)]
impl Drop for ThreadRecording {
    fn drop(&mut self) {
        THREAD.with(|t| *t.borrow_mut() = None);
    }
}

#[cfg(test)]
mod tests;
