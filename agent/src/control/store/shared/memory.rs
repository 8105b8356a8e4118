//! An in-process [`SharedBackend`] for the unit tests of the backend-
//! neutral parts (two stores of one "site" in one test process): the same
//! contract as RADOS — a write lock, a version guard that refuses a stale
//! write whole, notifications to the other handles.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::delta::{Delta, LOG_KEEP};
use super::{RowChanges, SharedBackend, SharedError, Snapshot};

#[derive(Default)]
struct State {
    snapshot: Snapshot,
    /// Each version's changed row keys (the RADOS `log/VERSION` keys),
    /// the newest [`LOG_KEEP`].
    log: BTreeMap<u64, Vec<String>>,
    /// How many full loads the handles made.
    loads: usize,
    locked_by: Option<usize>,
    /// The "changed" flags of every handle, by handle id.
    flags: Vec<Arc<AtomicBool>>,
}

/// One site's shared rows; [`MemorySite::handle`] gives each store its
/// backend.
#[derive(Clone, Default)]
pub struct MemorySite {
    state: Arc<(Mutex<State>, Condvar)>,
}

impl MemorySite {
    /// A backend for one more agent of the site.
    pub fn handle(&self) -> Box<dyn SharedBackend> {
        let flag = Arc::new(AtomicBool::new(false));
        let id = {
            let mut s = self.state.0.lock().expect("state");
            s.flags.push(flag.clone());
            s.flags.len() - 1
        };
        Box::new(MemoryBackend {
            site: self.clone(),
            id,
            flag,
        })
    }

    /// Every shared row now.
    pub fn snapshot(&self) -> Snapshot {
        self.state.0.lock().expect("state").snapshot.clone()
    }

    /// How many times a handle loaded every row.
    pub fn full_loads(&self) -> usize {
        self.state.0.lock().expect("state").loads
    }
}

struct MemoryBackend {
    site: MemorySite,
    id: usize,
    flag: Arc<AtomicBool>,
}

impl SharedBackend for MemoryBackend {
    fn lock(&self) -> Result<(), SharedError> {
        let (m, cv) = &*self.site.state;
        let guard = m.lock().expect("state");
        let (mut guard, timeout) = cv
            .wait_timeout_while(guard, Duration::from_secs(10), |s| {
                s.locked_by.is_some_and(|h| h != self.id)
            })
            .expect("state");
        if timeout.timed_out() {
            return Err(SharedError::LockTimeout {
                waited: Duration::from_secs(10),
            });
        }
        guard.locked_by = Some(self.id);
        Ok(())
    }

    fn unlock(&self) {
        let (m, cv) = &*self.site.state;
        let mut s = m.lock().expect("state");
        if s.locked_by == Some(self.id) {
            s.locked_by = None;
        }
        cv.notify_all();
    }

    fn version(&self) -> Result<u64, SharedError> {
        Ok(self.site.state.0.lock().expect("state").snapshot.version)
    }

    fn load(&self) -> Result<Snapshot, SharedError> {
        let mut s = self.site.state.0.lock().expect("state");
        s.loads += 1;
        Ok(s.snapshot.clone())
    }

    fn changes_since(&self, from: u64) -> Result<Option<Delta>, SharedError> {
        let s = self.site.state.0.lock().expect("state");
        let version = s.snapshot.version;
        if version < from || (from + 1..=version).any(|v| !s.log.contains_key(&v)) {
            return Ok(None);
        }
        let rows = s
            .log
            .range(from + 1..=version)
            .flat_map(|(_, keys)| keys)
            .map(|key| (key.clone(), s.snapshot.rows.get(key).cloned()))
            .collect();
        Ok(Some(Delta {
            version,
            schema: s.snapshot.schema,
            rows,
        }))
    }

    fn publish(&self, expected: u64, schema: u64, changes: &RowChanges) -> Result<(), SharedError> {
        let mut s = self.site.state.0.lock().expect("state");
        if s.snapshot.version != expected {
            return Err(SharedError::Conflict { expected });
        }
        for (key, row) in changes {
            match row {
                Some(row) => s.snapshot.rows.insert(key.clone(), row.clone()),
                None => s.snapshot.rows.remove(key),
            };
        }
        s.snapshot.version = expected + 1;
        s.snapshot.schema = schema;
        s.log
            .insert(expected + 1, changes.keys().cloned().collect());
        if let Some(old) = (expected + 1).checked_sub(LOG_KEEP) {
            s.log.remove(&old);
        }
        Ok(())
    }

    fn notify(&self, _version: u64) {
        let s = self.site.state.0.lock().expect("state");
        for (i, flag) in s.flags.iter().enumerate() {
            if i != self.id {
                flag.store(true, Ordering::SeqCst);
            }
        }
    }

    fn take_changed(&self) -> bool {
        self.flag.swap(false, Ordering::SeqCst)
    }

    fn describe(&self) -> String {
        format!("memory site, handle {}", self.id)
    }
}
