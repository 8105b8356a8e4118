//! Small synchronisation helpers shared by the engine (and usable by the
//! agent): a mutex lock that tolerates poisoning.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, ignoring poisoning. Only for data that stays consistent
/// when a holder panics: every critical section under such a mutex assigns
/// whole values, so a panic leaves either the old value or the new one.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
