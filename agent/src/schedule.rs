//! Policy schedules: when a protection group's policy creates recovery points.
//!
//! Pure logic, no I/O, no clock: every function takes the instants it needs
//! (`after`, `now`, `last_fired`) as arguments, so the scheduler is driven —
//! and tested — with a controllable clock.
//!
//! # Model
//! A [`PolicySchedule`] is a [`Schedule`] (`daily HH:MM`, `weekly mon,thu
//! HH:MM`, `monthly 1,15,month-end HH:MM`), an IANA time zone ([`TzName`])
//! the wall time is read in, and an effective window. It is stored as JSON
//! (serde); deserialising validates exactly like the constructors do.
//!
//! # Decisions
//! - **Effective window**: `effective_from` is inclusive, `effective_until`
//!   exclusive — a slot exactly at `effective_from` fires, a slot exactly at
//!   `effective_until` does not.
//! - **Day 31 (or 29, 30) in a shorter month**: that month has no slot for
//!   that day; the day is *not* moved to the month's last day. Operators who
//!   want "the last day" say `month-end`. A date that is both a listed day
//!   and the month end (31 in March with `31,month-end`) fires once.
//! - **Spring-forward gap**: a wall time that does not exist that day (02:30
//!   in Europe/Berlin on the last Sunday of March) fires at the first instant
//!   after the gap, i.e. at the transition itself (03:00 CEST = 01:00 UTC).
//! - **Fall-back overlap**: a wall time that exists twice fires once, at the
//!   earlier instant (02:30 CEST, not again at 02:30 CET).
//! - **Missed slots (downtime)**: [`PolicySchedule::due`] fires *once* for the
//!   most recent slot that passed since `last_fired` (a recovery point as soon
//!   as possible after a restart) and reports the older passed slots as
//!   skipped, with their count and range, so the caller logs them. A slot is
//!   never fired twice: the caller persists [`Due::new_last_fired`] (the
//!   slot it fired) as `last_fired`, in the same transaction that records the
//!   recovery point, and `due` only considers slots strictly after it. No catch-up fire happens once the
//!   effective window has closed (`now >= effective_until`): the missed slots
//!   are all reported skipped then.
//! - **Retention** ([`prune`]): keep the newest N (1..=5, [`RetentionCount`])
//!   policy-created recovery points; ties in creation time are broken by id.

use std::fmt;
use std::str::FromStr;

use jiff::civil::{Date, DateTime};
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

// Explicit paths: the fuzz crate compiles this file directly (`#[path]`),
// where implicit child-module lookup would start from the wrong directory.
#[path = "schedule/recurrence.rs"]
mod recurrence;
#[path = "schedule/retention.rs"]
mod retention;
#[cfg(test)]
#[path = "schedule/tests.rs"]
mod tests;

pub use recurrence::{MonthDaySet, Schedule, WallTime, WeekdaySet};
pub use retention::{prune, RetentionCount};

/// Everything that can be wrong with a schedule, a time zone, an effective
/// window or a retention count. Each variant carries the offending value.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// A time of day that is not `HH:MM` with HH in 00..=23 and MM in 00..=59.
    #[error("bad time of day {input:?}: expected HH:MM with HH 00..=23 and MM 00..=59")]
    BadTimeOfDay {
        /// What was given.
        input: String,
    },
    /// A weekday name that is not one of mon..sun (or the full name).
    #[error("unknown weekday {input:?}: expected mon, tue, wed, thu, fri, sat or sun")]
    UnknownWeekday {
        /// What was given.
        input: String,
    },
    /// A weekly schedule without any weekday.
    #[error("a weekly schedule needs at least one weekday")]
    NoWeekdays,
    /// A day of month that is neither a number nor `month-end`.
    #[error("bad day of month {input:?}: expected a number 1..=31 or month-end")]
    BadMonthDay {
        /// What was given.
        input: String,
    },
    /// A day of month outside 1..=31.
    #[error("day of month {day} is out of range 1..=31")]
    MonthDayOutOfRange {
        /// The day given.
        day: i64,
    },
    /// A monthly schedule with neither a day nor `month-end`.
    #[error("a monthly schedule needs at least one day of month or month-end")]
    NoMonthDays,
    /// The same weekday or day of month listed twice (likely a typo).
    #[error("{item:?} is listed twice in {input:?}")]
    Duplicate {
        /// The repeated item.
        item: String,
        /// The whole list it appeared in.
        input: String,
    },
    /// A schedule that does not start with daily, weekly or monthly.
    #[error("unknown schedule kind {input:?}: expected daily, weekly or monthly")]
    UnknownKind {
        /// What was given.
        input: String,
    },
    /// A schedule with the wrong number of words.
    #[error("bad schedule {input:?}: expected {expected}")]
    Syntax {
        /// The whole schedule text.
        input: String,
        /// The form that was expected.
        expected: &'static str,
    },
    /// A time zone name the tz database does not know.
    #[error("unknown time zone {name:?}")]
    UnknownTimeZone {
        /// The name given.
        name: String,
        /// The tz database's answer.
        #[source]
        source: jiff::Error,
    },
    /// An effective window whose end is not after its start.
    #[error("effective window ends at {until}, which is not after its start {from}")]
    EmptyWindow {
        /// Start of the window (inclusive).
        from: Timestamp,
        /// End of the window (exclusive).
        until: Timestamp,
    },
    /// A retention count that is not a number.
    #[error("bad retention {input:?}: expected a number {min}..={max}", min = RetentionCount::MIN, max = RetentionCount::MAX)]
    BadRetention {
        /// What was given.
        input: String,
    },
    /// A retention count outside 1..=5.
    #[error("retention {value} is out of range {min}..={max}", min = RetentionCount::MIN, max = RetentionCount::MAX)]
    RetentionOutOfRange {
        /// The count given.
        value: i64,
    },
}

// ---------------------------------------------------------------------------
// Time zone
// ---------------------------------------------------------------------------

/// An IANA time zone, validated against the tz database (the system copy,
/// else the copy bundled into the binary). Serialised as its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TzName {
    name: String,
    tz: TimeZone,
}

impl TzName {
    /// Looks `name` up (e.g. `Europe/Berlin`, `UTC`); unknown names are an
    /// error. The stored name is the database's spelling of it.
    pub fn new(name: &str) -> Result<Self, ScheduleError> {
        let tz = jiff::tz::db()
            .get(name)
            .map_err(|source| ScheduleError::UnknownTimeZone {
                name: name.to_owned(),
                source,
            })?;
        let name = tz.iana_name().unwrap_or(name).to_owned();
        Ok(Self { name, tz })
    }

    /// The IANA name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The zone's rules.
    pub fn time_zone(&self) -> &TimeZone {
        &self.tz
    }
}

impl FromStr for TzName {
    type Err = ScheduleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for TzName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl Serialize for TzName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name)
    }
}

impl<'de> Deserialize<'de> for TzName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

// ---------------------------------------------------------------------------
// Policy schedule: schedule + zone + effective window
// ---------------------------------------------------------------------------

/// A policy's complete timing: schedule, time zone and effective window
/// (`effective_from` inclusive, `effective_until` exclusive). Always valid:
/// built by [`PolicySchedule::new`] or deserialised (which validates too).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "PolicyScheduleRepr", into = "PolicyScheduleRepr")]
pub struct PolicySchedule {
    schedule: Schedule,
    tz: TzName,
    effective_from: Timestamp,
    effective_until: Option<Timestamp>,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyScheduleRepr {
    schedule: Schedule,
    tz: TzName,
    effective_from: Timestamp,
    #[serde(default)]
    effective_until: Option<Timestamp>,
}

impl From<PolicySchedule> for PolicyScheduleRepr {
    fn from(p: PolicySchedule) -> Self {
        Self {
            schedule: p.schedule,
            tz: p.tz,
            effective_from: p.effective_from,
            effective_until: p.effective_until,
        }
    }
}

impl TryFrom<PolicyScheduleRepr> for PolicySchedule {
    type Error = ScheduleError;

    fn try_from(r: PolicyScheduleRepr) -> Result<Self, ScheduleError> {
        PolicySchedule::new(r.schedule, r.tz, r.effective_from, r.effective_until)
    }
}

/// What the scheduler should do now; the result of [`PolicySchedule::due`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Due {
    /// The slot to fire now (create a recovery point labelled with this
    /// scheduled instant), or `None`. After firing, persist it as the new
    /// `last_fired`.
    pub fire: Option<Timestamp>,
    /// How many older slots passed without firing (downtime) and never will.
    pub skipped: u64,
    /// The oldest and newest skipped slot, for the log line (`None` when
    /// `skipped == 0`).
    pub skipped_range: Option<(Timestamp, Timestamp)>,
    /// The first slot strictly after `now` (and after `last_fired`): when to
    /// wake up next. `None` once the effective window has no more slots.
    pub next: Option<Timestamp>,
    /// The newest slot this step dealt with (fired or skipped): persist it
    /// as `last_fired` after acting on `fire` and logging the skipped slots,
    /// so they are neither fired nor reported again. Equals `fire` when that
    /// is `Some`; `None` when no slot passed (keep the old `last_fired`).
    pub new_last_fired: Option<Timestamp>,
}

/// Upper bound on local dates scanned for one slot. Every valid schedule has
/// a slot within 62 consecutive dates: the sparsest is `monthly 31`, whose
/// longest gap is 61 days (e.g. March 31 → May 31). Twice that is ample, even
/// with the one extra date the scan starts early and a calendar day a zone
/// skipped entirely.
const MAX_SCAN_DAYS: usize = 124;

impl PolicySchedule {
    /// A validated policy schedule. `tz` is a [`TzName`] (parse it from the
    /// operator's string). Errors: the schedule is invalid, or
    /// `effective_until <= effective_from`.
    pub fn new(
        schedule: Schedule,
        tz: TzName,
        effective_from: Timestamp,
        effective_until: Option<Timestamp>,
    ) -> Result<Self, ScheduleError> {
        schedule.validate()?;
        if let Some(until) = effective_until {
            if until <= effective_from {
                return Err(ScheduleError::EmptyWindow {
                    from: effective_from,
                    until,
                });
            }
        }
        Ok(Self {
            schedule,
            tz,
            effective_from,
            effective_until,
        })
    }

    /// The recurrence and wall time.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// The zone the wall time is read in.
    pub fn tz(&self) -> &TzName {
        &self.tz
    }

    /// Start of the effective window (inclusive).
    pub fn effective_from(&self) -> Timestamp {
        self.effective_from
    }

    /// End of the effective window (exclusive), if any.
    pub fn effective_until(&self) -> Option<Timestamp> {
        self.effective_until
    }

    /// Whether `t` lies inside the effective window.
    pub fn in_window(&self, t: Timestamp) -> bool {
        t >= self.effective_from && self.effective_until.is_none_or(|u| t < u)
    }

    /// The instant the schedule's wall time falls on local `date`: the
    /// unique instant; the earlier one in a fall-back overlap; the
    /// transition instant (first instant after the gap) in a spring-forward
    /// gap. `None` only at the ends of the representable range.
    pub fn slot_on(&self, date: Date) -> Option<Timestamp> {
        let dt = DateTime::from_parts(date, self.schedule.at().to_time());
        let tz = self.tz.time_zone();
        match tz.to_ambiguous_timestamp(dt).offset() {
            AmbiguousOffset::Unambiguous { offset } => offset.to_timestamp(dt).ok(),
            AmbiguousOffset::Fold { before, after } => {
                let a = before.to_timestamp(dt).ok()?;
                let b = after.to_timestamp(dt).ok()?;
                Some(a.min(b))
            }
            AmbiguousOffset::Gap { before, after } => {
                // With the post-transition offset `dt` maps to an instant
                // before the transition, with the pre-transition offset to
                // one after it; the transition lies in between.
                let lo = after.to_timestamp(dt).ok()?;
                let hi = before.to_timestamp(dt).ok()?;
                let (lo, hi) = (lo.min(hi), lo.max(hi));
                let transition = tz
                    .following(lo)
                    .next()
                    .map(|t| t.timestamp())
                    .filter(|t| *t <= hi);
                // No transition found would mean inconsistent zone data; the
                // later interpretation is still after the gap.
                Some(transition.unwrap_or(hi))
            }
        }
    }

    /// The first slot at or after `t` inside the effective window.
    fn first_slot_from(&self, t: Timestamp) -> Option<Timestamp> {
        let lower = t.max(self.effective_from);
        let tz = self.tz.time_zone();
        // Start one local day early: a slot of the previous date can land on
        // or after `lower` when a gap pushes it across midnight.
        let local = tz.to_datetime(lower).date();
        let mut date = local.yesterday().unwrap_or(local);
        for _ in 0..MAX_SCAN_DAYS {
            if self.schedule.fires_on(date) {
                if let Some(slot) = self.slot_on(date) {
                    if self.effective_until.is_some_and(|u| slot >= u) {
                        return None;
                    }
                    if slot >= lower {
                        return Some(slot);
                    }
                }
            }
            date = date.tomorrow().ok()?;
        }
        None
    }

    /// The first slot strictly after `after`, inside the effective window,
    /// or `None` if the window has no more slots.
    pub fn next_fire_after(&self, after: Timestamp) -> Option<Timestamp> {
        let t = after.checked_add(SignedDuration::from_nanos(1)).ok()?;
        self.first_slot_from(t)
    }

    /// One scheduler step. `last_fired` is the slot fired last (persisted by
    /// the caller), or `None` if the policy never fired — then every slot
    /// since `effective_from` counts as passed; a caller that does not want
    /// a catch-up for slots before binding passes the bind instant instead.
    ///
    /// Considers the slots in `(last_fired, now]`: the newest is fired (if
    /// the window is still open at `now`), the older ones are skipped. A slot
    /// at or before `last_fired` is never returned, so calling again with the
    /// persisted `last_fired` never fires the same slot twice. A `last_fired`
    /// in the future (clock stepped back) fires nothing until `now` passes
    /// it.
    pub fn due(&self, last_fired: Option<Timestamp>, now: Timestamp) -> Due {
        let mut cursor = match last_fired {
            Some(t) => self.next_fire_after(t),
            None => self.first_slot_from(self.effective_from),
        };
        let mut newest = None;
        let mut skipped = 0u64;
        let mut skipped_range: Option<(Timestamp, Timestamp)> = None;
        while let Some(slot) = cursor.filter(|s| *s <= now) {
            if let Some(prev) = newest.replace(slot) {
                skipped += 1;
                skipped_range = Some((skipped_range.map_or(prev, |r| r.0), prev));
            }
            cursor = self.next_fire_after(slot);
        }
        let window_open = self.effective_until.is_none_or(|u| now < u);
        let fire = match newest {
            Some(slot) if !window_open => {
                skipped += 1;
                skipped_range = Some((skipped_range.map_or(slot, |r| r.0), slot));
                None
            }
            other => other,
        };
        Due {
            fire,
            skipped,
            skipped_range,
            next: cursor,
            new_last_fired: newest,
        }
    }
}

impl fmt::Display for PolicySchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} from {}",
            self.schedule, self.tz, self.effective_from
        )?;
        if let Some(u) = self.effective_until {
            write!(f, " until {u}")?;
        }
        Ok(())
    }
}
