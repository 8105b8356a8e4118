//! Small synchronisation helpers shared by the engine (and usable by the
//! agent): a mutex lock that tolerates poisoning, and running a few blocking
//! jobs on scoped threads at once.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, ignoring poisoning. Only for data that stays consistent
/// when a holder panics: every critical section under such a mutex assigns
/// whole values, so a panic leaves either the old value or the new one.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs every job on its own scoped thread and returns their results in
/// job order; a job that panicked panics the caller. For a handful of
/// blocking cluster calls that each wait for round trips (opening, joining
/// or snapshotting the images of one group), which one after the other
/// added up to seconds.
pub fn run_all<T, F>(jobs: Vec<F>) -> Vec<T>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    std::thread::scope(|scope| {
        let handles: Vec<_> = jobs.into_iter().map(|job| scope.spawn(job)).collect();
        handles
            .into_iter()
            .map(|handle| match handle.join() {
                Ok(outcome) => outcome,
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    })
}
