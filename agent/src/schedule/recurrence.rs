//! The recurrence part of a policy schedule: the wall time ([`WallTime`]),
//! weekday and day-of-month sets, and [`Schedule`] with its CLI text form
//! (`daily 02:30`, `weekly mon,thu 23:00`, `monthly 1,15,month-end 01:00`)
//! and its validated JSON form.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use jiff::civil::{Date, Time, Weekday};
use serde::{Deserialize, Serialize};

use super::ScheduleError;

// ---------------------------------------------------------------------------
// Time of day
// ---------------------------------------------------------------------------

/// A wall-clock time of day, minute precision (`HH:MM`, 24-hour).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WallTime {
    hour: u8,
    minute: u8,
}

impl WallTime {
    /// `hour` 0..=23, `minute` 0..=59.
    pub fn new(hour: u8, minute: u8) -> Result<Self, ScheduleError> {
        if hour > 23 || minute > 59 {
            return Err(ScheduleError::BadTimeOfDay {
                input: format!("{hour:02}:{minute:02}"),
            });
        }
        Ok(Self { hour, minute })
    }

    /// The hour, 0..=23.
    pub fn hour(self) -> u8 {
        self.hour
    }

    /// The minute, 0..=59.
    pub fn minute(self) -> u8 {
        self.minute
    }

    /// The same time as a jiff civil time.
    pub fn to_time(self) -> Time {
        // Both fields are range-checked by `new`, so this is a valid time.
        Time::constant(self.hour as i8, self.minute as i8, 0, 0)
    }
}

impl FromStr for WallTime {
    type Err = ScheduleError;

    /// Exactly `HH:MM` (two digits each).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ScheduleError::BadTimeOfDay {
            input: s.to_owned(),
        };
        let b = s.as_bytes();
        if b.len() != 5 || b[2] != b':' {
            return Err(bad());
        }
        let two = |hi: u8, lo: u8| -> Option<u8> {
            (hi.is_ascii_digit() && lo.is_ascii_digit()).then(|| (hi - b'0') * 10 + (lo - b'0'))
        };
        let hour = two(b[0], b[1]).ok_or_else(bad)?;
        let minute = two(b[3], b[4]).ok_or_else(bad)?;
        Self::new(hour, minute).map_err(|_| bad())
    }
}

impl fmt::Display for WallTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.hour, self.minute)
    }
}

impl Serialize for WallTime {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for WallTime {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

// ---------------------------------------------------------------------------
// Weekday and month-day sets
// ---------------------------------------------------------------------------

const WEEKDAY_NAMES: [(&str, &str); 7] = [
    ("mon", "monday"),
    ("tue", "tuesday"),
    ("wed", "wednesday"),
    ("thu", "thursday"),
    ("fri", "friday"),
    ("sat", "saturday"),
    ("sun", "sunday"),
];

fn parse_weekday(s: &str) -> Result<Weekday, ScheduleError> {
    let lower = s.to_ascii_lowercase();
    WEEKDAY_NAMES
        .iter()
        .position(|(short, long)| lower == *short || lower == *long)
        .and_then(|i| Weekday::from_monday_zero_offset(i as i8).ok())
        .ok_or_else(|| ScheduleError::UnknownWeekday {
            input: s.to_owned(),
        })
}

fn weekday_name(w: Weekday) -> &'static str {
    WEEKDAY_NAMES[w.to_monday_zero_offset() as usize].0
}

/// A non-empty set of weekdays. Serialised as `["mon", "thu"]`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct WeekdaySet(u8);

impl WeekdaySet {
    /// A set of the given weekdays (duplicates collapse); empty is an error.
    pub fn new(days: impl IntoIterator<Item = Weekday>) -> Result<Self, ScheduleError> {
        let bits = days
            .into_iter()
            .fold(0u8, |acc, d| acc | 1 << d.to_monday_zero_offset());
        if bits == 0 {
            return Err(ScheduleError::NoWeekdays);
        }
        Ok(Self(bits))
    }

    /// Whether `day` is in the set.
    pub fn contains(self, day: Weekday) -> bool {
        self.0 & (1 << day.to_monday_zero_offset()) != 0
    }

    /// The weekdays, Monday first.
    pub fn iter(self) -> impl Iterator<Item = Weekday> {
        (0..7i8)
            .filter(move |i| self.0 & (1 << i) != 0)
            .filter_map(|i| Weekday::from_monday_zero_offset(i).ok())
    }
}

impl FromStr for WeekdaySet {
    type Err = ScheduleError;

    /// Comma-separated names, e.g. `mon,thu` (case-insensitive, full names
    /// accepted). A name listed twice is an error.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut bits = 0u8;
        for item in s.split(',') {
            let day = parse_weekday(item)?;
            let bit = 1 << day.to_monday_zero_offset();
            if bits & bit != 0 {
                return Err(ScheduleError::Duplicate {
                    item: item.to_owned(),
                    input: s.to_owned(),
                });
            }
            bits |= bit;
        }
        Ok(Self(bits))
    }
}

impl fmt::Display for WeekdaySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(weekday_name(d))?;
        }
        Ok(())
    }
}

impl fmt::Debug for WeekdaySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WeekdaySet({self})")
    }
}

impl Serialize for WeekdaySet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter().map(weekday_name))
    }
}

impl<'de> Deserialize<'de> for WeekdaySet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let names = Vec::<String>::deserialize(d)?;
        let days = names
            .iter()
            .map(|n| parse_weekday(n))
            .collect::<Result<Vec<_>, _>>()
            .map_err(serde::de::Error::custom)?;
        Self::new(days).map_err(serde::de::Error::custom)
    }
}

/// A set of days of the month, each 1..=31 (may be empty when a monthly
/// schedule uses only `month-end`). Serialised as `[1, 15]`.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct MonthDaySet(u32);

impl MonthDaySet {
    /// A set of the given days (duplicates collapse); a day outside 1..=31
    /// is an error.
    pub fn new(days: impl IntoIterator<Item = u8>) -> Result<Self, ScheduleError> {
        let mut bits = 0u32;
        for day in days {
            if !(1..=31).contains(&day) {
                return Err(ScheduleError::MonthDayOutOfRange { day: day.into() });
            }
            bits |= 1 << day;
        }
        Ok(Self(bits))
    }

    /// Whether `day` is in the set.
    pub fn contains(self, day: u8) -> bool {
        day < 32 && self.0 & (1 << day) != 0
    }

    /// Whether no day is in the set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The days, ascending.
    pub fn iter(self) -> impl Iterator<Item = u8> {
        (1..=31u8).filter(move |d| self.contains(*d))
    }
}

impl fmt::Debug for MonthDaySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl Serialize for MonthDaySet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for MonthDaySet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let days = Vec::<i64>::deserialize(d)?;
        let days = days
            .into_iter()
            .map(|day| {
                u8::try_from(day)
                    .ok()
                    .filter(|d| (1..=31).contains(d))
                    .ok_or(ScheduleError::MonthDayOutOfRange { day })
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(serde::de::Error::custom)?;
        Self::new(days).map_err(serde::de::Error::custom)
    }
}

// ---------------------------------------------------------------------------
// Schedule (the recurrence and its wall time)
// ---------------------------------------------------------------------------

/// When, in local wall time, a policy fires. Parsed from and displayed as the
/// CLI forms `daily 02:30`, `weekly mon,thu 23:00`,
/// `monthly 1,15,month-end 01:00`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "ScheduleRepr", into = "ScheduleRepr")]
pub enum Schedule {
    /// Every day at `at`.
    Daily {
        /// Local wall time.
        at: WallTime,
    },
    /// On each listed weekday at `at`.
    Weekly {
        /// The weekdays (never empty).
        weekdays: WeekdaySet,
        /// Local wall time.
        at: WallTime,
    },
    /// On each listed day of month, and on the month's last day if
    /// `month_end`, at `at`. A listed day a month does not have (31 in April)
    /// has no slot that month. A date that is both listed and the month end
    /// fires once.
    Monthly {
        /// Days of month 1..=31 (may be empty only if `month_end`).
        days: MonthDaySet,
        /// Also fire on the last day of every month.
        month_end: bool,
        /// Local wall time.
        at: WallTime,
    },
}

/// The JSON shape of [`Schedule`]; converting back validates.
#[derive(Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum ScheduleRepr {
    Daily {
        at: WallTime,
    },
    Weekly {
        weekdays: WeekdaySet,
        at: WallTime,
    },
    Monthly {
        #[serde(default)]
        days: MonthDaySet,
        #[serde(default)]
        month_end: bool,
        at: WallTime,
    },
}

impl From<Schedule> for ScheduleRepr {
    fn from(s: Schedule) -> Self {
        match s {
            Schedule::Daily { at } => ScheduleRepr::Daily { at },
            Schedule::Weekly { weekdays, at } => ScheduleRepr::Weekly { weekdays, at },
            Schedule::Monthly {
                days,
                month_end,
                at,
            } => ScheduleRepr::Monthly {
                days,
                month_end,
                at,
            },
        }
    }
}

impl TryFrom<ScheduleRepr> for Schedule {
    type Error = ScheduleError;

    fn try_from(r: ScheduleRepr) -> Result<Self, ScheduleError> {
        let s = match r {
            ScheduleRepr::Daily { at } => Schedule::Daily { at },
            ScheduleRepr::Weekly { weekdays, at } => Schedule::Weekly { weekdays, at },
            ScheduleRepr::Monthly {
                days,
                month_end,
                at,
            } => Schedule::Monthly {
                days,
                month_end,
                at,
            },
        };
        s.validate()?;
        Ok(s)
    }
}

impl Schedule {
    /// The local wall time the schedule fires at.
    pub fn at(&self) -> WallTime {
        match *self {
            Schedule::Daily { at } | Schedule::Weekly { at, .. } | Schedule::Monthly { at, .. } => {
                at
            }
        }
    }

    /// Checks the one rule the field types cannot: a monthly schedule needs a
    /// day or `month_end`. (An empty [`WeekdaySet`] cannot be built.)
    pub fn validate(&self) -> Result<(), ScheduleError> {
        match self {
            Schedule::Monthly {
                days, month_end, ..
            } if days.is_empty() && !month_end => Err(ScheduleError::NoMonthDays),
            _ => Ok(()),
        }
    }

    /// Whether the schedule has a slot on local date `date`.
    pub fn fires_on(&self, date: Date) -> bool {
        match self {
            Schedule::Daily { .. } => true,
            Schedule::Weekly { weekdays, .. } => weekdays.contains(date.weekday()),
            Schedule::Monthly {
                days, month_end, ..
            } => {
                // One test per date, so "31,month-end" on March 31 is one slot.
                // `day()` is 1..=31, so the cast is lossless.
                days.contains(date.day() as u8) || (*month_end && date == date.last_of_month())
            }
        }
    }
}

const SCHEDULE_FORMS: &str =
    "`daily HH:MM`, `weekly DAY[,DAY…] HH:MM` or `monthly N|month-end[,…] HH:MM`";

impl FromStr for Schedule {
    type Err = ScheduleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let words: Vec<&str> = s.split_whitespace().collect();
        let syntax = |expected| ScheduleError::Syntax {
            input: s.to_owned(),
            expected,
        };
        let Some(kind) = words.first() else {
            return Err(syntax(SCHEDULE_FORMS));
        };
        let schedule = match kind.to_ascii_lowercase().as_str() {
            "daily" => match words[1..] {
                [at] => Schedule::Daily { at: at.parse()? },
                _ => return Err(syntax("`daily HH:MM`")),
            },
            "weekly" => match words[1..] {
                [days, at] => Schedule::Weekly {
                    weekdays: days.parse()?,
                    at: at.parse()?,
                },
                _ => {
                    return Err(syntax(
                        "`weekly DAY[,DAY…] HH:MM`, e.g. `weekly mon,thu 23:00`",
                    ))
                }
            },
            "monthly" => match words[1..] {
                [list, at] => {
                    let (days, month_end) = parse_month_days(list)?;
                    Schedule::Monthly {
                        days,
                        month_end,
                        at: at.parse()?,
                    }
                }
                _ => {
                    return Err(syntax(
                        "`monthly N|month-end[,…] HH:MM`, e.g. `monthly 1,15,month-end 01:00`",
                    ))
                }
            },
            _ => {
                return Err(ScheduleError::UnknownKind {
                    input: (*kind).to_owned(),
                })
            }
        };
        schedule.validate()?;
        Ok(schedule)
    }
}

/// Parses `1,15,month-end`.
fn parse_month_days(list: &str) -> Result<(MonthDaySet, bool), ScheduleError> {
    let mut days = BTreeSet::new();
    let mut month_end = false;
    let dup = |item: &str| ScheduleError::Duplicate {
        item: item.to_owned(),
        input: list.to_owned(),
    };
    for item in list.split(',') {
        if item.eq_ignore_ascii_case("month-end") {
            if month_end {
                return Err(dup(item));
            }
            month_end = true;
            continue;
        }
        let is_number = !item.is_empty()
            && item
                .strip_prefix('-')
                .unwrap_or(item)
                .bytes()
                .all(|b| b.is_ascii_digit());
        let day: i64 = match item.parse() {
            Ok(d) if is_number => d,
            _ => {
                return Err(ScheduleError::BadMonthDay {
                    input: item.to_owned(),
                })
            }
        };
        let day = u8::try_from(day)
            .ok()
            .filter(|d| (1..=31).contains(d))
            .ok_or(ScheduleError::MonthDayOutOfRange { day })?;
        if !days.insert(day) {
            return Err(dup(item));
        }
    }
    Ok((MonthDaySet::new(days)?, month_end))
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Daily { at } => write!(f, "daily {at}"),
            Schedule::Weekly { weekdays, at } => write!(f, "weekly {weekdays} {at}"),
            Schedule::Monthly {
                days,
                month_end,
                at,
            } => {
                f.write_str("monthly ")?;
                let mut first = true;
                for d in days.iter() {
                    if !first {
                        f.write_str(",")?;
                    }
                    first = false;
                    write!(f, "{d}")?;
                }
                if *month_end {
                    if !first {
                        f.write_str(",")?;
                    }
                    f.write_str("month-end")?;
                }
                write!(f, " {at}")
            }
        }
    }
}
