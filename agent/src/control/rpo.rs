//! A group's RPO thresholds: how old the newest data the standby holds may
//! get before `ferry health` says WARNING or CRITICAL. Each is optional
//! (no check), positive, and the warning one is not above the critical one.
//! Stored per group in the control store (`rpo_warn_secs`,
//! `rpo_crit_secs`), set with `group create/update --rpo-warn/--rpo-crit`.

use serde::{Deserialize, Serialize};

/// Why a pair of thresholds was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RpoError {
    /// A threshold of zero seconds would always fire.
    #[error(
        "an RPO threshold must be at least 1 second ({which} is 0; omit it or say 'off' for none)"
    )]
    Zero {
        /// `warn` or `crit`.
        which: &'static str,
    },
    /// The warning threshold would fire after the critical one.
    #[error("the RPO warning threshold ({warn}s) is above the critical one ({crit}s)")]
    WarnAboveCrit {
        /// Warning threshold, seconds.
        warn: u64,
        /// Critical threshold, seconds.
        crit: u64,
    },
}

/// A group's RPO thresholds, in seconds (`None`: not checked).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RpoThresholds {
    /// RPO lag above this many seconds is a WARNING.
    pub warn_secs: Option<u64>,
    /// RPO lag above this many seconds is CRITICAL.
    pub crit_secs: Option<u64>,
}

impl RpoThresholds {
    /// Checked thresholds.
    pub fn new(warn_secs: Option<u64>, crit_secs: Option<u64>) -> Result<Self, RpoError> {
        if warn_secs == Some(0) {
            return Err(RpoError::Zero { which: "warn" });
        }
        if crit_secs == Some(0) {
            return Err(RpoError::Zero { which: "crit" });
        }
        if let (Some(warn), Some(crit)) = (warn_secs, crit_secs) {
            if warn > crit {
                return Err(RpoError::WarnAboveCrit { warn, crit });
            }
        }
        Ok(Self {
            warn_secs,
            crit_secs,
        })
    }

    /// These thresholds changed by an update where `None` keeps a value
    /// and `Some(0)` removes it; the result is checked.
    pub fn updated(self, warn: Option<u64>, crit: Option<u64>) -> Result<Self, RpoError> {
        let pick = |old: Option<u64>, new: Option<u64>| match new {
            None => old,
            Some(0) => None,
            Some(n) => Some(n),
        };
        Self::new(pick(self.warn_secs, warn), pick(self.crit_secs, crit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_are_positive_and_ordered() {
        assert_eq!(
            RpoThresholds::new(Some(60), Some(300)).unwrap(),
            RpoThresholds {
                warn_secs: Some(60),
                crit_secs: Some(300)
            }
        );
        assert!(RpoThresholds::new(Some(60), None).is_ok());
        assert!(RpoThresholds::new(Some(300), Some(300)).is_ok());
        assert_eq!(
            RpoThresholds::new(Some(301), Some(300)),
            Err(RpoError::WarnAboveCrit {
                warn: 301,
                crit: 300
            })
        );
        assert_eq!(
            RpoThresholds::new(Some(0), None),
            Err(RpoError::Zero { which: "warn" })
        );
    }

    #[test]
    fn an_update_keeps_changes_or_clears() {
        let t = RpoThresholds::new(Some(60), Some(300)).unwrap();
        assert_eq!(t.updated(None, None).unwrap(), t);
        let t2 = t.updated(Some(120), None).unwrap();
        assert_eq!((t2.warn_secs, t2.crit_secs), (Some(120), Some(300)));
        let t3 = t.updated(None, Some(0)).unwrap();
        assert_eq!((t3.warn_secs, t3.crit_secs), (Some(60), None));
        assert!(t.updated(Some(600), None).is_err(), "warn above crit");
    }
}
