//! The lease task of one protection group: runs its [`LeaseMachine`]
//! against a [`LeaseBackend`] (the store's lock, records and blocklist —
//! RADOS in a multi-agent site) on the real clock, and starts and stops the
//! group's driving ([`Driven`]) as the machine says.
//!
//! Store calls block (librados), so each runs on the blocking pool while
//! the task keeps watching the clock: a renewal that hangs still stops the
//! group at the machine's stop time.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::lease::{Action, Failure, Holder, Input, LeaseMachine, LeaseState, LeaseTimes};
use crate::sync_util::lock;

/// The answer to a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Granted; the holders the lease object records.
    Granted(Vec<Holder>),
    /// Refused; the holder the store lists, if any.
    Refused(Option<Holder>),
}

/// A write prepared while the lease was held, bound to the client that
/// held it; run later (see [`LeaseBackend::prepare_stamp`]).
pub type PreparedWrite = Box<dyn FnOnce() -> Result<(), Failure> + Send>;

/// The store of the leases: blocking calls, each one request.
///
/// A client the store fenced stays fenced: every call fails with
/// [`Failure::Fenced`] until [`LeaseBackend::me`] has connected as a new
/// client, which it does only once no group runs under the old one
/// ([`LeaseBackend::driving`]) — so nothing of a fenced holder reaches the
/// store through a fresh client.
pub trait LeaseBackend: Send + Sync + 'static {
    /// This agent's client now; after a fence, a new client once no group
    /// is driven under the old one (None until then, or while the store
    /// cannot be reached).
    fn me(&self) -> Option<Holder>;
    /// Takes group `group`'s lock for the lease duration.
    fn claim(&self, group: &str) -> Result<Claim, Failure>;
    /// Extends the lock this client holds.
    fn renew(&self, group: &str) -> Result<(), Failure>;
    /// Blocklists `victims`, then records this client as a holder.
    fn fence(&self, group: &str, victims: &[Holder]) -> Result<(), Failure>;
    /// Gives the lock back.
    fn release(&self, group: &str) -> Result<(), Failure>;
    /// Tells the backend that `group` is (or no longer is) driven under the
    /// current client.
    fn driving(&self, group: &str, driving: bool);
    /// The stamp that records in the store that this agent drives `group`:
    /// decided now, while the lease is held, and bound to the current
    /// client; the caller runs it later (the holder's first write).
    fn prepare_stamp(&self, group: &str) -> Result<PreparedWrite, Failure>;
}

/// Why the lease task stops driving a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopCause {
    /// The lease is lost, or must be assumed lost before it can end: once
    /// it ends another agent may take the group, so everything this agent
    /// runs on the group stops now, its operations too (the next holder
    /// finishes them, as it finishes a dead holder's).
    Lost,
    /// Given up on purpose (the group is gone or no longer a primary one,
    /// or the agent shuts down): an operation of the group that is ending
    /// runs to its end.
    Released,
}

/// What the lease starts and stops.
pub trait Driven: Send + Sync + 'static {
    /// Start driving `group` (its cycles and operations).
    fn start(&self, group: &str);
    /// Stop touching `group` (see [`StopCause`]); resolves once nothing of
    /// it that must stop runs.
    fn stop<'a>(
        &'a self,
        group: &'a str,
        cause: StopCause,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>>;
}

/// What `ferry status` shows of a lease.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LeaseView {
    /// Who drives the group: this agent's name when it holds the lease,
    /// else the holder the store last listed (None when unknown or free).
    pub driven_by: Option<String>,
    /// `holding`, `fencing`, `contending`, `lost` or `released`.
    pub lease: &'static str,
}

/// A running lease task. [`LeaseTask::release`] gives the lease up and
/// waits for the task to end; dropping it gives the lease up without waiting.
pub struct LeaseTask {
    release: mpsc::Sender<()>,
    view: Arc<Mutex<LeaseView>>,
    task: JoinHandle<()>,
}

impl LeaseTask {
    /// Starts contending for `group` at once.
    pub fn spawn(
        group: String,
        times: LeaseTimes,
        backend: Arc<dyn LeaseBackend>,
        driven: Arc<dyn Driven>,
    ) -> Result<Self, super::lease::LeaseTimesError> {
        times.validate()?;
        let view = Arc::new(Mutex::new(LeaseView {
            driven_by: None,
            lease: "connecting",
        }));
        let (release, rx) = mpsc::channel(1);
        let runner = Runner {
            group,
            times,
            machine: None,
            backend,
            driven,
            view: view.clone(),
            pending: None,
        };
        let task = tokio::spawn(runner.run(rx));
        Ok(Self {
            release,
            view,
            task,
        })
    }

    /// Who drives the group, as this agent knows it.
    pub fn view(&self) -> LeaseView {
        lock(&self.view).clone()
    }

    /// Stops driving the group, releases the lock and ends the task.
    pub async fn release(self) {
        let _ = self.release.send(()).await;
        let _ = self.task.await;
    }
}

fn view_of(machine: &LeaseMachine) -> LeaseView {
    let me = Some(machine.me().agent.clone());
    match machine.state() {
        LeaseState::Holding { .. } => LeaseView {
            driven_by: me,
            lease: "holding",
        },
        LeaseState::Fencing { .. } => LeaseView {
            driven_by: None,
            lease: "fencing",
        },
        LeaseState::Contending { observed, .. } => LeaseView {
            driven_by: observed.as_ref().map(|(h, _)| h.agent.clone()),
            lease: "contending",
        },
        LeaseState::Lost { .. } => LeaseView {
            driven_by: None,
            lease: "lost",
        },
        LeaseState::Released => LeaseView {
            driven_by: None,
            lease: "released",
        },
    }
}

/// Runs a stamp prepared at the start in the background. It was decided
/// while the lease was held; a holder stopped between that decision and the
/// write (the `lease::before-stamp` fail point stands for it) has the write
/// refused by the store once another agent has fenced its client.
fn run_stamp(group: String, write: PreparedWrite) {
    tokio::task::spawn_blocking(move || {
        ferry_engine::testpoint::reach("lease::before-stamp");
        match write() {
            Ok(()) => tracing::debug!(%group, "driver stamp written"),
            Err(Failure::Fenced) => tracing::error!(
                %group,
                "late write refused: this agent's client is blocklisted (another agent fenced it)"
            ),
            Err(failure) => tracing::warn!(%group, ?failure, "driver stamp not written"),
        }
    });
}

/// How long a runner without a client waits before asking again.
const NO_CLIENT_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

enum Event {
    Answer(Result<Input, tokio::task::JoinError>),
    Clock,
    Release,
}

struct Runner {
    group: String,
    times: LeaseTimes,
    /// None until the backend names this agent's client.
    machine: Option<LeaseMachine>,
    backend: Arc<dyn LeaseBackend>,
    driven: Arc<dyn Driven>,
    view: Arc<Mutex<LeaseView>>,
    pending: Option<JoinHandle<Input>>,
}

impl Runner {
    async fn run(mut self, mut release: mpsc::Receiver<()>) {
        let mut releasing = false;
        loop {
            self.renew_machine().await;
            if let Some(machine) = self.machine.as_mut() {
                let actions = machine.poll(Instant::now());
                self.apply(actions).await;
            }
            if releasing && self.pending.is_none() {
                return;
            }
            let wake = match &self.machine {
                Some(m) => m.next_wake().map(tokio::time::Instant::from_std),
                None => Some(tokio::time::Instant::now() + NO_CLIENT_RETRY),
            };
            let event = tokio::select! {
                answer = async {
                    match self.pending.as_mut() {
                        Some(call) => call.await,
                        None => std::future::pending().await,
                    }
                } => Event::Answer(answer),
                _ = async {
                    match wake {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => Event::Clock,
                _ = release.recv(), if !releasing => Event::Release,
            };
            match event {
                Event::Answer(answer) => {
                    self.pending = None;
                    // A panicked store call says nothing about the lock.
                    let input = answer.unwrap_or(Input::Failed(Failure::Transient));
                    let Some(machine) = self.machine.as_mut() else {
                        continue;
                    };
                    match machine.handle(input, Instant::now()) {
                        Ok(actions) => self.apply(actions).await,
                        Err(e) => {
                            tracing::error!(group = %self.group, error = %e, "lease answer refused")
                        }
                    }
                }
                Event::Clock => {}
                Event::Release => {
                    releasing = true;
                    if let Some(machine) = self.machine.as_mut() {
                        let actions = machine.release();
                        self.apply(actions).await;
                    }
                    if self.machine.is_none() {
                        return;
                    }
                }
            }
        }
    }

    /// Makes the machine once the backend names this agent's client, and
    /// makes it afresh for a new client after this one was fenced (the old
    /// machine has stopped the group by then).
    async fn renew_machine(&mut self) {
        let fenced = matches!(
            self.machine.as_ref().map(LeaseMachine::state),
            Some(LeaseState::Lost { fenced: true, .. })
        );
        if (self.machine.is_none() || fenced) && self.pending.is_none() {
            let backend = self.backend.clone();
            let me = tokio::task::spawn_blocking(move || backend.me())
                .await
                .ok()
                .flatten();
            let old = self.machine.as_ref().map(|m| m.me().addr.clone());
            if let Some(me) = me.filter(|me| Some(&me.addr) != old.as_ref()) {
                if fenced {
                    tracing::warn!(group = %self.group, addr = %me.addr, "contending again as a new client after this agent was fenced");
                }
                // Validated when the task was spawned.
                self.machine = LeaseMachine::new(self.times, me, Instant::now()).ok();
            }
        }
        self.publish();
    }

    fn publish(&self) {
        *lock(&self.view) = match &self.machine {
            Some(m) => view_of(m),
            None => LeaseView {
                driven_by: None,
                lease: "connecting",
            },
        };
    }

    async fn apply(&mut self, actions: Vec<Action>) {
        for action in actions {
            let backend = self.backend.clone();
            let group = self.group.clone();
            match action {
                Action::Claim => {
                    self.request(move || {
                        let sent = Instant::now();
                        match backend.claim(&group) {
                            Ok(Claim::Granted(previous)) => Input::Granted { sent, previous },
                            Ok(Claim::Refused(holder)) => Input::Refused { sent, holder },
                            Err(f) => Input::Failed(f),
                        }
                    });
                }
                Action::Renew => self.request(move || {
                    let sent = Instant::now();
                    match backend.renew(&group) {
                        Ok(()) => Input::Renewed { sent },
                        Err(f) => Input::Failed(f),
                    }
                }),
                Action::Fence(victims) => {
                    if !victims.is_empty() {
                        tracing::warn!(group = %self.group, ?victims, "fencing the group's previous holders");
                    }
                    self.request(move || match backend.fence(&group, &victims) {
                        Ok(()) => Input::Fenced,
                        Err(f) => Input::Failed(f),
                    })
                }
                Action::Release => self.request(move || match backend.release(&group) {
                    Ok(()) => Input::Released,
                    Err(f) => Input::Failed(f),
                }),
                Action::Start => {
                    tracing::info!(group = %self.group, "lease held: driving the group");
                    backend.driving(&group, true);
                    self.driven.start(&self.group);
                    match backend.prepare_stamp(&group) {
                        Ok(write) => run_stamp(group, write),
                        Err(failure) => {
                            tracing::warn!(group = %self.group, ?failure, "driver stamp not prepared")
                        }
                    }
                }
                Action::Stop => {
                    let cause = match self.machine.as_ref().map(LeaseMachine::state) {
                        Some(LeaseState::Released) => StopCause::Released,
                        _ => StopCause::Lost,
                    };
                    tracing::warn!(group = %self.group, ?cause, "lease not held: stopping the group");
                    self.driven.stop(&self.group, cause).await;
                    backend.driving(&group, false);
                }
            }
        }
        self.publish();
    }

    fn request(&mut self, call: impl FnOnce() -> Input + Send + 'static) {
        self.pending = Some(tokio::task::spawn_blocking(call));
    }
}

#[cfg(test)]
#[path = "driver_tests.rs"]
mod tests;
