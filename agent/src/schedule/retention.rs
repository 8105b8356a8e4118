//! Retention of policy-created recovery points: the validated count
//! ([`RetentionCount`], 1..=5) and [`prune`], which picks what to delete.

use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::ScheduleError;

// ---------------------------------------------------------------------------
// Retention
// ---------------------------------------------------------------------------

/// How many policy-created recovery points a binding keeps: 1..=5.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "i64", into = "u8")]
pub struct RetentionCount(u8);

impl RetentionCount {
    /// Smallest allowed count.
    pub const MIN: u8 = 1;
    /// Largest allowed count.
    pub const MAX: u8 = 5;

    /// A count in 1..=5; anything else is an error.
    pub fn new(value: i64) -> Result<Self, ScheduleError> {
        u8::try_from(value)
            .ok()
            .filter(|v| (Self::MIN..=Self::MAX).contains(v))
            .map(Self)
            .ok_or(ScheduleError::RetentionOutOfRange { value })
    }

    /// The count.
    pub fn get(self) -> u8 {
        self.0
    }
}

impl TryFrom<i64> for RetentionCount {
    type Error = ScheduleError;

    fn try_from(v: i64) -> Result<Self, ScheduleError> {
        Self::new(v)
    }
}

impl From<RetentionCount> for u8 {
    fn from(r: RetentionCount) -> u8 {
        r.0
    }
}

impl FromStr for RetentionCount {
    type Err = ScheduleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let value = s
            .trim()
            .parse::<i64>()
            .map_err(|_| ScheduleError::BadRetention {
                input: s.to_owned(),
            })?;
        Self::new(value)
    }
}

impl fmt::Display for RetentionCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Which policy-created recovery points to delete so that only the newest
/// `keep` remain. `points` are `(id, created)` of the policy-created points
/// only (manual ones are not subject to retention), in any order. Newest is
/// by `created`, ties broken by the larger id. Returns the ids to delete,
/// oldest first; empty if there are at most `keep`.
pub fn prune<I: Clone + Ord>(keep: RetentionCount, points: &[(I, Timestamp)]) -> Vec<I> {
    let mut sorted: Vec<&(I, Timestamp)> = points.iter().collect();
    sorted.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
    let excess = sorted.len().saturating_sub(keep.get().into());
    sorted[..excess].iter().map(|(id, _)| id.clone()).collect()
}
