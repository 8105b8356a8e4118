//! Running under a service manager: the systemd notification protocol
//! (`sd_notify`) — readiness, watchdog pings, reload and stop — and the
//! health check that decides whether the watchdog is fed.
//!
//! Everything here is a no-op when the agent was not started by systemd
//! (`NOTIFY_SOCKET` unset). The watchdog is enabled by `WatchdogSec=` in the
//! unit, which sets `WATCHDOG_USEC` and `WATCHDOG_PID`; the agent pings at
//! half that interval from its main loop, and only while [`check_health`] says the
//! engine is alive, so a wedged agent is restarted by systemd.

use std::time::Duration;

use sd_notify::NotifyState;
use tracing::{debug, warn};

/// Why the agent withholds its watchdog ping.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Unhealthy {
    /// The QUIC receiver's accept loop has ended.
    #[error("the replication listener stopped accepting connections")]
    ListenerStopped,
    /// The control store did not answer within the deadline.
    #[error("the control store did not answer within {waited:?}")]
    StoreStuck {
        /// How long the check waited.
        waited: Duration,
    },
    /// A fault-injection test declared the agent unhealthy.
    #[error("declared unhealthy by fail point {name}")]
    Injected {
        /// The fail point.
        name: &'static str,
    },
}

/// The agent's link to systemd (inactive when `NOTIFY_SOCKET` is unset).
#[derive(Clone, Debug)]
pub struct Notifier {
    active: bool,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` and `WATCHDOG_USEC`/`WATCHDOG_PID` from the
    /// environment (without unsetting them).
    pub fn from_env() -> Self {
        let active = std::env::var_os("NOTIFY_SOCKET").is_some_and(|s| !s.is_empty());
        let mut usec = 0;
        let watchdog = (active && sd_notify::watchdog_enabled(false, &mut usec) && usec > 0)
            .then(|| Duration::from_micros(usec));
        Self { active, watchdog }
    }

    /// Whether a service manager listens.
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// How often to ping the watchdog (half its timeout), if it is enabled.
    pub fn watchdog_ping_interval(&self) -> Option<Duration> {
        self.watchdog
            .map(|w| (w / 2).max(Duration::from_millis(10)))
    }

    fn send(&self, what: &str, states: &[NotifyState<'_>]) {
        if !self.active {
            return;
        }
        match sd_notify::notify(false, states) {
            Ok(()) => debug!(message = what, "notified the service manager"),
            Err(error) => warn!(message = what, %error, "could not notify the service manager"),
        }
    }

    /// `READY=1` with a status line: the store is open and every listener bound.
    pub fn ready(&self, status: &str) {
        self.send("READY", &[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// `WATCHDOG=1`: the engine is alive.
    pub fn watchdog(&self) {
        self.send("WATCHDOG", &[NotifyState::Watchdog]);
    }

    /// `STATUS=…` only (e.g. why the watchdog is not fed).
    pub fn status(&self, status: &str) {
        self.send("STATUS", &[NotifyState::Status(status)]);
    }

    /// `RELOADING=1` with the monotonic time systemd ≥ 253 asks for.
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send("RELOADING", &[NotifyState::Reloading, now]),
            Err(_) => self.send("RELOADING", &[NotifyState::Reloading]),
        }
    }

    /// `READY=1` again after a reload.
    pub fn reloaded(&self, status: &str) {
        self.ready(status);
    }

    /// `STOPPING=1`: graceful shutdown has begun.
    pub fn stopping(&self) {
        self.send(
            "STOPPING",
            &[NotifyState::Stopping, NotifyState::Status("shutting down")],
        );
    }
}

/// Checks that the engine can still make progress: the replication listener
/// is accepting, and the control store answers within `deadline` (a store
/// blocked on a hung disk wedges every operation).
pub async fn check_health(
    listener_running: bool,
    store_probe: impl FnOnce() + Send + 'static,
    deadline: Duration,
) -> Result<(), Unhealthy> {
    fail::fail_point!("agent-unhealthy", |_| Err(Unhealthy::Injected {
        name: "agent-unhealthy"
    }));
    if !listener_running {
        return Err(Unhealthy::ListenerStopped);
    }
    let probe = tokio::task::spawn_blocking(store_probe);
    match tokio::time::timeout(deadline, probe).await {
        Ok(_) => Ok(()),
        Err(_) => Err(Unhealthy::StoreStuck { waited: deadline }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stopped_listener_or_stuck_store_is_unhealthy() {
        assert_eq!(
            check_health(false, || {}, Duration::from_secs(5)).await,
            Err(Unhealthy::ListenerStopped)
        );
        assert_eq!(
            check_health(true, || {}, Duration::from_secs(5)).await,
            Ok(())
        );
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let stuck = check_health(
            true,
            move || {
                let _ = rx.recv();
            },
            Duration::from_millis(20),
        )
        .await;
        assert!(
            matches!(stuck, Err(Unhealthy::StoreStuck { .. })),
            "{stuck:?}"
        );
        drop(tx);
    }

    #[test]
    fn inactive_without_notify_socket() {
        // The unit tests never run under systemd with a notify socket for
        // this process's own test harness; if they do, skip the assertion.
        if std::env::var_os("NOTIFY_SOCKET").is_none() {
            let n = Notifier::from_env();
            assert!(!n.is_active());
            assert_eq!(n.watchdog_ping_interval(), None);
        }
    }
}
