//! Crash-injection points of the commit protocol.
//!
//! In test builds a test arms one point for the current thread with
//! [`arm`]; when commit code reaches it, [`hit`] disarms it and returns
//! `StoreError::InjectedCrash`, so the commit stops exactly there, as if the
//! process had died (nothing is cleaned up). In other builds [`hit`] is an
//! empty inline function.

use super::StoreError;

/// A step of the commit protocol where a crash can be simulated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashPoint {
    /// The group's intent file is durable; no image has been touched.
    AfterIntent,
    /// Incremental: the undo log is written (its END record too) but not
    /// yet fsynced; the image is untouched.
    UndoBeforeSync,
    /// Incremental: the undo log is complete and durable; the image is untouched.
    AfterUndoWritten,
    /// Incremental: the journal has been applied to the image, not yet fsynced.
    AfterDataBeforeSync,
    /// Incremental: the applied image is fsynced; `state.json` is not updated.
    AfterDataBeforeState,
    /// Full copy: the old image was renamed into history; the staging file
    /// is not yet in place.
    AfterFullRenameOld,
    /// Full copy: the staging file is now the image; `state.json` is not updated.
    AfterFullRenameNew,
    /// `state.json` names the new point; journal and pruned files remain.
    AfterStateBeforeCleanup,
    /// One image of a group is committed, the next one has not started.
    BetweenImages,
}

#[cfg(test)]
thread_local! {
    static ARMED: std::cell::Cell<Option<CrashPoint>> = const { std::cell::Cell::new(None) };
}

/// Arms `point` for the current thread (one shot).
#[cfg(test)]
pub(crate) fn arm(point: CrashPoint) {
    ARMED.with(|armed| armed.set(Some(point)));
}

/// Disarms any armed point of the current thread.
#[cfg(test)]
pub(crate) fn disarm() {
    ARMED.with(|armed| armed.set(None));
}

/// Returns `InjectedCrash` (once) if `point` is armed on this thread.
#[cfg(test)]
pub(crate) fn hit(point: CrashPoint) -> Result<(), StoreError> {
    ARMED.with(|armed| {
        if armed.get() == Some(point) {
            armed.set(None);
            Err(StoreError::InjectedCrash { point })
        } else {
            Ok(())
        }
    })
}

impl CrashPoint {
    /// Name of the point for the `fail` crate (`FAILPOINTS=name=action`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::AfterIntent => "standby::after-intent",
            Self::UndoBeforeSync => "standby::undo-before-sync",
            Self::AfterUndoWritten => "standby::after-undo-written",
            Self::AfterDataBeforeSync => "standby::after-data-before-sync",
            Self::AfterDataBeforeState => "standby::after-data-before-state",
            Self::AfterFullRenameOld => "standby::after-full-rename-old",
            Self::AfterFullRenameNew => "standby::after-full-rename-new",
            Self::AfterStateBeforeCleanup => "standby::after-state-before-cleanup",
            Self::BetweenImages => "standby::between-images",
        }
    }
}

/// An injected full disk: with the `failpoints` feature and
/// `FAILPOINTS=standby::disk-full=return`, every journal write fails with
/// ENOSPC, as on a full file system. Without the feature, nothing.
#[inline(always)]
pub(crate) fn disk_full() -> std::io::Result<()> {
    #[cfg(all(feature = "failpoints", not(test)))]
    fail::fail_point!("standby::disk-full", |_| Err(
        std::io::Error::from_raw_os_error(libc::ENOSPC)
    ));
    Ok(())
}

/// Outside unit tests: with the `failpoints` feature, a `fail` crate point
/// named [`CrashPoint::name`] (configured by the `FAILPOINTS` environment
/// variable, e.g. `standby::after-data-before-sync=sleep(5000)`), so an
/// end-to-end test can hold a real agent at that step and SIGKILL it there.
/// Without the feature, nothing.
#[cfg(not(test))]
#[inline(always)]
pub(crate) fn hit(point: CrashPoint) -> Result<(), StoreError> {
    #[cfg(feature = "failpoints")]
    {
        if fail::list().iter().any(|(name, _)| name == point.name()) {
            tracing::info!(point = point.name(), "fail point reached");
        }
        fail::fail_point!(point.name());
    }
    let _ = point;
    Ok(())
}
