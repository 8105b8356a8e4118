//! One budget of unacknowledged batch bytes for all the images of a group
//! sync, beside each image's own [`SendWindow`] cap.
//!
//! Every image of a group sync that has much to send fills its own window
//! (64 MiB) while the standby applies: five large images at once held
//! ~320 MiB of encoded payloads waiting for acks, most of a 20-volume full
//! sync's 808 MiB peak (session 16's heap profile, `benches/RESULTS.md`).
//! What the link needs in flight does not grow with the number of images, so
//! the group's images share one budget: an image may send a new batch while
//! the group's unacknowledged bytes are under the budget, and always when it
//! has nothing unacknowledged itself. That floor means an image never waits
//! on budget that only its own acks would free (the others' acks come
//! without any new send from them: the standby syncs and acknowledges when a
//! stream goes quiet), so no image starves and none deadlocks; the group
//! can overshoot the budget by at most one batch per image.
//!
//! [`SendWindow`]: crate::session::send_window::SendWindow

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::futures::Notified;
use tokio::sync::Notify;

/// The unacknowledged bytes of one group sync's images together.
#[derive(Debug)]
pub struct GroupWindow {
    budget: u64,
    unacked: AtomicU64,
    freed: Notify,
}

impl GroupWindow {
    /// A group budget of `budget` unacknowledged bytes.
    pub fn new(budget: u64) -> Self {
        Self {
            budget,
            unacked: AtomicU64::new(0),
            freed: Notify::new(),
        }
    }

    /// Whether an image holding `own_unacked` bytes may send a new batch.
    pub fn admits(&self, own_unacked: u64) -> bool {
        own_unacked == 0 || self.unacked.load(Ordering::Acquire) < self.budget
    }

    /// Resolves once some image gives bytes back. Create it before checking
    /// [`Self::admits`]: a release between the check and the wait still
    /// wakes it.
    pub fn freed(&self) -> Notified<'_> {
        self.freed.notified()
    }

    /// The group's unacknowledged bytes now.
    #[cfg(test)]
    pub fn unacked(&self) -> u64 {
        self.unacked.load(Ordering::Acquire)
    }

    fn add(&self, bytes: u64) {
        self.unacked.fetch_add(bytes, Ordering::AcqRel);
    }

    fn release(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        // Only a share's own bytes come back, so this never goes below 0.
        self.unacked.fetch_sub(bytes, Ordering::AcqRel);
        self.freed.notify_waiters();
    }
}

/// One image's part of a [`GroupWindow`]: follows the image's window and
/// gives back whatever it still holds when dropped (an image that failed or
/// finished).
#[derive(Debug)]
pub struct WindowShare<'a> {
    group: &'a GroupWindow,
    held: u64,
}

impl<'a> WindowShare<'a> {
    /// A share holding nothing yet.
    pub fn new(group: &'a GroupWindow) -> Self {
        Self { group, held: 0 }
    }

    /// Sets what the image holds to its window's `unacked` bytes.
    pub fn follow(&mut self, unacked: u64) {
        if unacked > self.held {
            self.group.add(unacked - self.held);
        } else {
            self.group.release(self.held - unacked);
        }
        self.held = unacked;
    }

    /// The group this share is part of.
    pub fn group(&self) -> &'a GroupWindow {
        self.group
    }
}

impl Drop for WindowShare<'_> {
    fn drop(&mut self) {
        self.group.release(self.held);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn an_image_with_nothing_in_flight_is_always_admitted() {
        let group = GroupWindow::new(10);
        let mut a = WindowShare::new(&group);
        a.follow(50);
        assert!(!group.admits(50), "over the budget");
        assert!(group.admits(0), "the floor: one batch for an idle image");
        a.follow(5);
        assert!(group.admits(5));
        assert_eq!(group.unacked(), 5);
    }

    #[test]
    fn a_dropped_share_gives_back_what_it_held() {
        let group = GroupWindow::new(100);
        let mut a = WindowShare::new(&group);
        let mut b = WindowShare::new(&group);
        a.follow(60);
        b.follow(70);
        assert_eq!(group.unacked(), 130);
        assert!(!group.admits(1));
        drop(a);
        assert_eq!(group.unacked(), 70);
        assert!(group.admits(1));
        b.follow(0);
        assert_eq!(group.unacked(), 0);
    }

    #[tokio::test]
    async fn a_release_wakes_a_waiter_that_checked_before_it() {
        let group = Arc::new(GroupWindow::new(10));
        let holder = {
            let mut share = WindowShare::new(&group);
            share.follow(20);
            std::mem::forget(share);
            20
        };
        let waiter = {
            let group = group.clone();
            tokio::spawn(async move {
                let freed = group.freed();
                if !group.admits(4) {
                    freed.await;
                }
                group.admits(4)
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "waits while the budget is full");
        group.release(holder);
        let admitted = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken by the release")
            .expect("the waiter ran");
        assert!(admitted);
    }
}
