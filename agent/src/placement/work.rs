//! The tasks that touch a protection group while this agent drives it
//! (its operations, the take-over that resumes it), kept by group so that
//! stopping the group ends every one of them: when a lease ends, nothing
//! this agent started on the group may still run once another agent can
//! start. A task is aborted at its next await (a blocking step it is in
//! runs to its end first); [`GroupWork::end`] returns only once none runs.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;

use crate::sync_util::lock;

struct Entry<K, T> {
    group: K,
    tag: T,
    task: JoinHandle<()>,
}

struct Inner<K, T> {
    next: u64,
    tasks: HashMap<u64, Entry<K, T>>,
}

/// The running tasks of each group (`K`), each with a tag (`T`, e.g. the
/// operation it carries out) that [`GroupWork::end`] returns for those it
/// cut short.
pub struct GroupWork<K, T> {
    inner: Mutex<Inner<K, T>>,
}

impl<K, T> Default for GroupWork<K, T> {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner {
                next: 0,
                tasks: HashMap::new(),
            }),
        }
    }
}

impl<K, T> GroupWork<K, T>
where
    K: Eq + Hash + Copy + Send + 'static,
    T: Copy + Send + 'static,
{
    /// Runs `work` for `group` in the background until it ends or the
    /// group's work is ended.
    pub fn spawn(
        self: &Arc<Self>,
        group: K,
        tag: T,
        work: impl Future<Output = ()> + Send + 'static,
    ) {
        // Registered under the lock the task takes to deregister: a task
        // that ends at once cannot leave a stale entry behind.
        let mut inner = lock(&self.inner);
        let id = inner.next;
        inner.next += 1;
        let me = Arc::downgrade(self);
        let task = tokio::spawn(async move {
            work.await;
            if let Some(me) = me.upgrade() {
                lock(&me.inner).tasks.remove(&id);
            }
        });
        inner.tasks.insert(id, Entry { group, tag, task });
    }

    /// How many tasks of `group` run now.
    pub fn running(&self, group: K) -> usize {
        lock(&self.inner)
            .tasks
            .values()
            .filter(|e| e.group == group)
            .count()
    }

    /// Ends every task of `group` and waits until none runs; returns the
    /// tags of those it cut short (not those that ended on their own).
    pub async fn end(&self, group: K) -> Vec<T> {
        let ending: Vec<Entry<K, T>> = {
            let mut inner = lock(&self.inner);
            let ids: Vec<u64> = inner
                .tasks
                .iter()
                .filter(|(_, e)| e.group == group)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter()
                .filter_map(|id| inner.tasks.remove(&id))
                .collect()
        };
        let mut cut = Vec::new();
        for entry in ending {
            entry.task.abort();
            if entry.task.await.is_err_and(|e| e.is_cancelled()) {
                cut.push(entry.tag);
            }
        }
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ending_a_group_stops_its_tasks_before_it_returns_and_leaves_others() {
        let work: Arc<GroupWork<u32, u32>> = Arc::default();
        let writes = Arc::new([AtomicU32::new(0), AtomicU32::new(0)]);
        for group in 0..2u32 {
            let writes = writes.clone();
            work.spawn(group, 10 + group, async move {
                loop {
                    writes[group as usize].fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            });
        }
        // A task that ends on its own leaves no entry, and is not "cut".
        work.spawn(0, 99, async {});
        while writes[0].load(Ordering::SeqCst) < 3 || work.running(0) > 1 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(work.end(0).await, vec![10]);
        assert_eq!(work.running(0), 0);
        let after_end = writes[0].load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(
            writes[0].load(Ordering::SeqCst),
            after_end,
            "group 0 written after its work ended"
        );
        assert!(writes[1].load(Ordering::SeqCst) > 0);
        assert_eq!(work.running(1), 1, "group 1's task goes on");
        assert_eq!(work.end(1).await, vec![11]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_task_in_a_blocking_step_is_waited_for() {
        let work: Arc<GroupWork<u32, ()>> = Arc::default();
        let done = Arc::new(AtomicU32::new(0));
        let step = done.clone();
        work.spawn(0, (), async move {
            tokio::task::block_in_place(|| std::thread::sleep(Duration::from_millis(50)));
            step.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(60)).await;
            step.fetch_add(1, Ordering::SeqCst);
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        work.end(0).await;
        // The blocking step finished before `end` returned; nothing after
        // the next await ran.
        assert_eq!(done.load(Ordering::SeqCst), 1);
    }
}
