//! The data-path harness's faults: what each one is, the name its tally
//! counts it under, and how the primary is held so that a kill or a cut
//! lands on a sync that is still running.

use std::time::Duration;

use ferry_e2e::landing::hold_failpoints;
use ferry_engine::netsim::Impairment;

/// Commit steps a files standby can be held at.
pub const COMMIT_POINTS: &[&str] = &[
    "standby::after-intent",
    "standby::after-undo-written",
    "standby::undo-before-sync",
    "standby::after-data-before-sync",
    "standby::after-data-before-state",
    "standby::after-state-before-cleanup",
    "standby::between-images",
];

/// Commit steps the RBD standby sink has (it applies epochs in place and
/// snapshots at commit: no undo log, no per-image rename).
pub const RBD_COMMIT_POINTS: &[&str] = &[
    "standby::after-intent",
    "standby::after-data-before-sync",
    "standby::after-data-before-state",
];

/// Where a `ferry sync` process is held (`ferry_engine::testpoint`) before
/// the harness kills it: each is a moment with a sync in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrimaryHold {
    /// After its `n`+1-th batch was sent (every image changed, so there are
    /// at least two).
    AfterBatch(u32),
    /// Every batch is durable on the standby; no Commit sent.
    BeforeCommit,
    /// The standby committed; the source has not recorded it.
    AfterCommit,
}

impl PrimaryHold {
    /// The hold point's name.
    pub fn point(self) -> &'static str {
        match self {
            Self::AfterBatch(_) => "sender::after-batch",
            Self::BeforeCommit => "sender::before-commit",
            Self::AfterCommit => "sender::after-commit",
        }
    }

    /// The `FAILPOINTS` value that holds the process there until killed.
    pub fn failpoints(self) -> String {
        let skip = match self {
            Self::AfterBatch(n) => n,
            Self::BeforeCommit | Self::AfterCommit => 0,
        };
        hold_failpoints(self.point(), skip)
    }
}

/// One scenario's fault.
#[derive(Debug, Clone)]
pub enum Fault {
    /// No fault: a control scenario.
    Clean,
    /// A byte of the loop-device source's backing file, behind the device.
    FlipSource,
    /// SIGKILL of the standby held at a commit step.
    KillStandbyAt(&'static str),
    /// SIGKILL of the primary held mid-sync.
    KillPrimaryAt(PrimaryHold),
    /// Both directions cut for longer than the idle timeout, while the
    /// primary pauses after a batch: the sync must reconnect.
    Blackhole { cut: Duration },
    /// Loss, delay, jitter and duplication for a whole sync.
    Lossy(Impairment),
    /// ENOSPC on every standby journal write.
    DiskFull,
    /// A byte of a committed standby image.
    FlipStandbyImage,
    /// A byte of a standby image's `state.json`.
    FlipStandbyState,
    /// A byte of the journal of an epoch held just before its Commit.
    FlipJournal,
}

impl Fault {
    /// The kind the tallies count this fault under.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Clean => "clean (no fault)",
            Self::FlipSource => "flip source at rest",
            Self::KillStandbyAt(_) => "kill standby at a step",
            Self::KillPrimaryAt(_) => "kill primary mid-sync",
            Self::Blackhole { .. } => "link cut",
            Self::Lossy(_) => "lossy link",
            Self::DiskFull => "standby disk full",
            Self::FlipStandbyImage => "flip standby image",
            Self::FlipStandbyState => "flip standby state",
            Self::FlipJournal => "flip pending journal",
        }
    }

    /// Whether the scenario changes every source first (so that the sync
    /// has data in flight for the fault to land on).
    pub fn needs_changes(&self) -> bool {
        !matches!(
            self,
            Self::Clean | Self::FlipSource | Self::FlipStandbyImage | Self::FlipStandbyState
        )
    }
}
