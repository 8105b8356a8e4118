//! Small helpers around `std::sync` shared by the agent's modules.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, taking over a poisoned lock: a panic in another holder (a
/// task that died mid-update) must not wedge the agent; the data behind
/// every agent mutex stays usable after a partial update (progress,
/// loop handles, caches).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}
