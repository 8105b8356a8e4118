//! Tests for policy schedules: calendar edges (month-end, leap day, day 31),
//! DST gaps and overlaps in several zones, the effective window, the
//! downtime/restart rules of `due`, parsing, serde and retention.

use super::*;
use jiff::civil::Weekday;
use proptest::prelude::*;

fn ts(s: &str) -> Timestamp {
    s.parse().expect("test timestamp literal")
}

fn policy(spec: &str, tz: &str, from: &str, until: Option<&str>) -> PolicySchedule {
    PolicySchedule::new(
        spec.parse().expect("test schedule literal"),
        TzName::new(tz).expect("test zone"),
        ts(from),
        until.map(ts),
    )
    .expect("valid test policy")
}

/// The next `n` slots after `after`, as RFC 3339 UTC strings.
fn slots(p: &PolicySchedule, after: &str, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut t = ts(after);
    for _ in 0..n {
        match p.next_fire_after(t) {
            Some(s) => {
                out.push(s.to_string());
                t = s;
            }
            None => break,
        }
    }
    out
}

// --- calendar -------------------------------------------------------------

#[test]
fn month_end_across_jan_feb_apr_non_leap() {
    let p = policy(
        "monthly month-end 01:00",
        "UTC",
        "2027-01-01T00:00:00Z",
        None,
    );
    assert_eq!(
        slots(&p, "2027-01-01T00:00:00Z", 5),
        [
            "2027-01-31T01:00:00Z",
            "2027-02-28T01:00:00Z",
            "2027-03-31T01:00:00Z",
            "2027-04-30T01:00:00Z",
            "2027-05-31T01:00:00Z",
        ]
    );
}

#[test]
fn month_end_in_leap_year_is_feb_29() {
    let p = policy(
        "monthly month-end 01:00",
        "UTC",
        "2027-01-01T00:00:00Z",
        None,
    );
    assert_eq!(
        slots(&p, "2028-01-15T00:00:00Z", 3),
        [
            "2028-01-31T01:00:00Z",
            "2028-02-29T01:00:00Z",
            "2028-03-31T01:00:00Z",
        ]
    );
}

#[test]
fn day_29_fires_in_february_only_in_leap_years() {
    let p = policy("monthly 29 12:00", "UTC", "2027-01-01T00:00:00Z", None);
    assert_eq!(
        slots(&p, "2027-01-01T00:00:00Z", 2),
        ["2027-01-29T12:00:00Z", "2027-03-29T12:00:00Z"]
    );
    assert_eq!(
        slots(&p, "2028-02-01T00:00:00Z", 2),
        ["2028-02-29T12:00:00Z", "2028-03-29T12:00:00Z"]
    );
}

#[test]
fn daily_steps_over_leap_day() {
    let p = policy("daily 12:00", "Europe/Berlin", "2027-01-01T00:00:00Z", None);
    assert_eq!(
        slots(&p, "2028-02-28T11:00:00Z", 3),
        [
            "2028-02-29T11:00:00Z",
            "2028-03-01T11:00:00Z",
            "2028-03-02T11:00:00Z",
        ]
    );
}

#[test]
fn day_31_is_skipped_in_short_months() {
    let p = policy("monthly 31 10:00", "UTC", "2027-01-01T00:00:00Z", None);
    assert_eq!(
        slots(&p, "2027-03-01T00:00:00Z", 7),
        [
            "2027-03-31T10:00:00Z",
            "2027-05-31T10:00:00Z", // no April 31, not moved to April 30
            "2027-07-31T10:00:00Z",
            "2027-08-31T10:00:00Z",
            "2027-10-31T10:00:00Z",
            "2027-12-31T10:00:00Z",
            "2028-01-31T10:00:00Z",
        ]
    );
}

#[test]
fn month_end_and_listed_day_on_the_same_date_fire_once() {
    let p = policy(
        "monthly 31,month-end 10:00",
        "UTC",
        "2027-01-01T00:00:00Z",
        None,
    );
    assert_eq!(
        slots(&p, "2027-03-01T00:00:00Z", 4),
        [
            "2027-03-31T10:00:00Z",
            "2027-04-30T10:00:00Z",
            "2027-05-31T10:00:00Z",
            "2027-06-30T10:00:00Z",
        ]
    );
    let p = policy(
        "monthly 30,month-end 10:00",
        "UTC",
        "2027-01-01T00:00:00Z",
        None,
    );
    assert_eq!(
        slots(&p, "2027-03-01T00:00:00Z", 4),
        [
            "2027-03-30T10:00:00Z",
            "2027-03-31T10:00:00Z",
            "2027-04-30T10:00:00Z",
            "2027-05-30T10:00:00Z",
        ]
    );
}

#[test]
fn weekly_across_a_year_boundary() {
    // 2026-12-28 is a Monday, 2027-01-01 a Friday; Berlin is UTC+1 in winter.
    let p = policy(
        "weekly mon,thu 23:00",
        "Europe/Berlin",
        "2026-01-01T00:00:00Z",
        None,
    );
    assert_eq!(
        slots(&p, "2026-12-25T00:00:00Z", 4),
        [
            "2026-12-28T22:00:00Z",
            "2026-12-31T22:00:00Z",
            "2027-01-04T22:00:00Z",
            "2027-01-07T22:00:00Z",
        ]
    );
}

// --- DST --------------------------------------------------------------------

#[test]
fn berlin_spring_gap_fires_at_end_of_gap() {
    // 2026-03-29 02:00 CET -> 03:00 CEST; 02:30 does not exist that day.
    let p = policy("daily 02:30", "Europe/Berlin", "2026-01-01T00:00:00Z", None);
    assert_eq!(
        slots(&p, "2026-03-27T12:00:00Z", 3),
        [
            "2026-03-28T01:30:00Z", // 02:30 CET
            "2026-03-29T01:00:00Z", // 03:00 CEST, the first instant after the gap
            "2026-03-30T00:30:00Z", // 02:30 CEST
        ]
    );
}

#[test]
fn berlin_fall_overlap_fires_once_at_the_earlier_instant() {
    // 2026-10-25 03:00 CEST -> 02:00 CET; 02:30 happens twice.
    let p = policy("daily 02:30", "Europe/Berlin", "2026-01-01T00:00:00Z", None);
    assert_eq!(
        slots(&p, "2026-10-24T12:00:00Z", 2),
        ["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"]
    );
    // Between the two occurrences: the second one is not a slot.
    assert_eq!(
        p.next_fire_after(ts("2026-10-25T00:30:00Z")),
        Some(ts("2026-10-26T01:30:00Z"))
    );
    assert_eq!(
        p.next_fire_after(ts("2026-10-25T01:00:00Z")),
        Some(ts("2026-10-26T01:30:00Z"))
    );
}

#[test]
fn new_york_gap_and_overlap() {
    // 2026-03-08 02:00 EST -> 03:00 EDT.
    let p = policy(
        "daily 02:30",
        "America/New_York",
        "2026-01-01T00:00:00Z",
        None,
    );
    assert_eq!(
        slots(&p, "2026-03-07T00:00:00Z", 3),
        [
            "2026-03-07T07:30:00Z",
            "2026-03-08T07:00:00Z", // 03:00 EDT
            "2026-03-09T06:30:00Z",
        ]
    );
    // 2026-11-01 02:00 EDT -> 01:00 EST; 01:30 happens twice.
    let p = policy(
        "daily 01:30",
        "America/New_York",
        "2026-01-01T00:00:00Z",
        None,
    );
    assert_eq!(
        slots(&p, "2026-10-31T00:00:00Z", 3),
        [
            "2026-10-31T05:30:00Z",
            "2026-11-01T05:30:00Z", // 01:30 EDT, not 01:30 EST
            "2026-11-02T06:30:00Z",
        ]
    );
}

#[test]
fn lord_howe_half_hour_dst() {
    // 2026-10-04 02:00 (+10:30) -> 02:30 (+11).
    let p = policy(
        "daily 02:15",
        "Australia/Lord_Howe",
        "2026-01-01T00:00:00Z",
        None,
    );
    assert_eq!(
        slots(&p, "2026-10-02T12:00:00Z", 3),
        [
            "2026-10-02T15:45:00Z",
            "2026-10-03T15:30:00Z", // 02:30 +11
            "2026-10-04T15:15:00Z",
        ]
    );
    // 2026-04-05 02:00 (+11) -> 01:30 (+10:30); 01:45 happens twice.
    let p = policy(
        "daily 01:45",
        "Australia/Lord_Howe",
        "2026-01-01T00:00:00Z",
        None,
    );
    assert_eq!(
        slots(&p, "2026-04-03T12:00:00Z", 3),
        [
            "2026-04-03T14:45:00Z",
            "2026-04-04T14:45:00Z",
            "2026-04-05T15:15:00Z",
        ]
    );
}

#[test]
fn a_calendar_day_the_zone_skipped_fires_at_the_transition() {
    // Samoa skipped 2011-12-30 entirely (-10 -> +14 at local midnight).
    let p = policy("daily 10:00", "Pacific/Apia", "2011-01-01T00:00:00Z", None);
    assert_eq!(
        slots(&p, "2011-12-29T00:00:00Z", 3),
        [
            "2011-12-29T20:00:00Z",
            "2011-12-30T10:00:00Z", // the transition: 2011-12-31 00:00 +14
            "2011-12-30T20:00:00Z", // 2011-12-31 10:00 +14
        ]
    );
    // Just before the transition, the skipped day's slot is still ahead
    // (its local date reads 2011-12-31, so the scan must start a day early).
    assert_eq!(
        p.next_fire_after(ts("2011-12-30T09:59:59.999999999Z")),
        Some(ts("2011-12-30T10:00:00Z"))
    );
}

// --- effective window --------------------------------------------------------

#[test]
fn window_start_is_inclusive_and_end_exclusive() {
    let p = policy(
        "daily 02:00",
        "UTC",
        "2026-05-01T02:00:00Z",
        Some("2026-05-03T02:00:00Z"),
    );
    assert_eq!(
        slots(&p, "2020-01-01T00:00:00Z", 5),
        ["2026-05-01T02:00:00Z", "2026-05-02T02:00:00Z"]
    );
    assert!(p.in_window(ts("2026-05-01T02:00:00Z")));
    assert!(!p.in_window(ts("2026-05-03T02:00:00Z")));
    assert_eq!(p.next_fire_after(ts("2026-05-02T02:00:00Z")), None);
    // A start between slots: the first slot is the next one.
    let p = policy("daily 02:00", "UTC", "2026-05-01T02:00:01Z", None);
    assert_eq!(
        p.next_fire_after(ts("2000-01-01T00:00:00Z")),
        Some(ts("2026-05-02T02:00:00Z"))
    );
}

#[test]
fn empty_or_inverted_window_is_refused() {
    let s: Schedule = "daily 02:00".parse().unwrap();
    let tz = TzName::new("UTC").unwrap();
    let from = ts("2026-05-01T00:00:00Z");
    for until in ["2026-05-01T00:00:00Z", "2026-04-30T00:00:00Z"] {
        match PolicySchedule::new(s, tz.clone(), from, Some(ts(until))) {
            Err(ScheduleError::EmptyWindow { from: f, until: u }) => {
                assert_eq!((f, u), (from, ts(until)));
            }
            other => panic!("expected EmptyWindow, got {other:?}"),
        }
    }
}

// --- due: downtime, restarts, double fire ---------------------------------------

#[test]
fn downtime_of_three_days_fires_once_and_reports_two_skipped() {
    let p = policy("daily 02:00", "UTC", "2026-01-01T00:00:00Z", None);
    let due = p.due(Some(ts("2026-05-01T02:00:00Z")), ts("2026-05-04T10:00:00Z"));
    assert_eq!(
        due,
        Due {
            fire: Some(ts("2026-05-04T02:00:00Z")),
            skipped: 2,
            skipped_range: Some((ts("2026-05-02T02:00:00Z"), ts("2026-05-03T02:00:00Z"))),
            next: Some(ts("2026-05-05T02:00:00Z")),
            new_last_fired: Some(ts("2026-05-04T02:00:00Z")),
        }
    );
}

#[test]
fn never_fires_the_same_slot_twice() {
    let p = policy("daily 02:00", "UTC", "2026-01-01T00:00:00Z", None);
    let now = ts("2026-05-02T02:00:00Z"); // exactly the slot: due (slots are <= now)
    let last = Some(ts("2026-05-01T02:00:00Z"));
    let first = p.due(last, now);
    assert_eq!(first.fire, Some(now));
    assert_eq!(first.skipped, 0);
    // The caller persisted the fired slot; asking again at the same `now`
    // (or a little later, or after a restart) fires nothing.
    for later in ["2026-05-02T02:00:00Z", "2026-05-02T09:00:00Z"] {
        let again = p.due(first.new_last_fired, ts(later));
        assert_eq!(again.fire, None);
        assert_eq!(again.skipped, 0);
        assert_eq!(again.next, Some(ts("2026-05-03T02:00:00Z")));
    }
    // Before the slot nothing is due, and `next` says when to wake up.
    let early = p.due(last, ts("2026-05-02T01:59:59Z"));
    assert_eq!((early.fire, early.skipped), (None, 0));
    assert_eq!(early.next, Some(now));
}

#[test]
fn never_fired_policy_counts_slots_since_window_start() {
    let p = policy("daily 02:00", "UTC", "2026-05-01T00:00:00Z", None);
    let due = p.due(None, ts("2026-05-03T05:00:00Z"));
    assert_eq!(due.fire, Some(ts("2026-05-03T02:00:00Z")));
    assert_eq!(due.skipped, 2);
    // Before the first slot: nothing.
    let due = p.due(None, ts("2026-05-01T01:00:00Z"));
    assert_eq!((due.fire, due.skipped), (None, 0));
    assert_eq!(due.next, Some(ts("2026-05-01T02:00:00Z")));
}

#[test]
fn no_catch_up_fire_after_the_window_closed() {
    let p = policy(
        "daily 02:00",
        "UTC",
        "2026-01-01T00:00:00Z",
        Some("2026-05-03T00:00:00Z"),
    );
    let due = p.due(Some(ts("2026-05-01T02:00:00Z")), ts("2026-05-10T00:00:00Z"));
    assert_eq!(
        due,
        Due {
            fire: None,
            skipped: 1,
            skipped_range: Some((ts("2026-05-02T02:00:00Z"), ts("2026-05-02T02:00:00Z"))),
            next: None,
            new_last_fired: Some(ts("2026-05-02T02:00:00Z")),
        }
    );
    // Once persisted, the skipped slot is not reported again.
    let again = p.due(due.new_last_fired, ts("2026-05-11T00:00:00Z"));
    assert_eq!((again.fire, again.skipped, again.next), (None, 0, None));
    assert_eq!(again.new_last_fired, None);
}

#[test]
fn clock_stepped_back_fires_nothing_until_it_passes_last_fired() {
    let p = policy("daily 02:00", "UTC", "2026-01-01T00:00:00Z", None);
    let due = p.due(Some(ts("2026-05-05T02:00:00Z")), ts("2026-05-04T12:00:00Z"));
    assert_eq!((due.fire, due.skipped), (None, 0));
    assert_eq!(due.next, Some(ts("2026-05-06T02:00:00Z")));
}

/// Drives the scheduler with a simulated clock (a tick every 37 minutes, with
/// two "restarts" that lose several days) across the Berlin spring-forward
/// change and checks that every slot is either fired exactly once or reported
/// skipped exactly once.
#[test]
fn simulated_clock_fires_or_skips_every_slot_exactly_once() {
    let p = policy("daily 02:30", "Europe/Berlin", "2026-03-01T00:00:00Z", None);
    let start = ts("2026-03-01T00:00:00Z");
    let end = ts("2026-04-30T00:00:00Z");
    let downtime = [
        (ts("2026-03-10T00:00:00Z"), ts("2026-03-13T12:00:00Z")),
        (ts("2026-03-27T00:00:00Z"), ts("2026-03-31T00:00:00Z")),
    ];
    let mut last_fired = None;
    let mut fired = Vec::new();
    let mut skipped = 0u64;
    let mut now = start;
    let mut last_tick = start;
    while now < end {
        last_tick = now;
        if !downtime.iter().any(|(a, b)| now >= *a && now < *b) {
            let due = p.due(last_fired, now);
            skipped += due.skipped;
            if let Some(slot) = due.fire {
                assert!(slot <= now);
                assert_eq!(due.new_last_fired, Some(slot));
                fired.push(slot);
            }
            if due.new_last_fired.is_some() {
                last_fired = due.new_last_fired;
            }
        }
        now = now.checked_add(SignedDuration::from_mins(37)).unwrap();
    }
    let expected: Vec<Timestamp> =
        std::iter::successors(p.next_fire_after(start), |s| p.next_fire_after(*s))
            .take_while(|s| *s <= last_tick)
            .collect();
    // Every fired slot is a real slot and strictly later than the last one.
    assert!(fired.windows(2).all(|w| w[0] < w[1]));
    assert!(fired.iter().all(|f| expected.contains(f)));
    assert_eq!(fired.len() as u64 + skipped, expected.len() as u64);
    // The first outage (Mar 10 00:00 - Mar 13 12:00) missed Mar 10, 11, 12, 13
    // slots: one fires on return, three are skipped. The second (Mar 27 -
    // Mar 31) missed Mar 27, 28, 29 (gap day), 30: one fires, three skipped.
    assert_eq!(skipped, 6);
    assert!(fired.contains(&ts("2026-03-13T01:30:00Z")));
    assert!(fired.contains(&ts("2026-03-30T00:30:00Z")));
}

// --- parsing and display ------------------------------------------------------

#[test]
fn cli_forms_parse_and_round_trip() {
    for (input, canonical) in [
        ("daily 02:30", "daily 02:30"),
        ("weekly mon,thu 23:00", "weekly mon,thu 23:00"),
        ("WEEKLY Thursday,mon 23:00", "weekly mon,thu 23:00"),
        ("weekly sun,sat,fri 00:00", "weekly fri,sat,sun 00:00"),
        (
            "monthly 1,15,month-end 01:00",
            "monthly 1,15,month-end 01:00",
        ),
        (
            "monthly month-end,15,1 01:00",
            "monthly 1,15,month-end 01:00",
        ),
        ("monthly month-end 23:59", "monthly month-end 23:59"),
        ("monthly 31 00:00", "monthly 31 00:00"),
        ("  daily   07:05 ", "daily 07:05"),
    ] {
        let s: Schedule = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
        assert_eq!(s.to_string(), canonical, "{input}");
        assert_eq!(canonical.parse::<Schedule>().unwrap(), s, "{input}");
    }
    let s: Schedule = "monthly 1,15,month-end 01:00".parse().unwrap();
    assert_eq!(
        s,
        Schedule::Monthly {
            days: MonthDaySet::new([1, 15]).unwrap(),
            month_end: true,
            at: WallTime::new(1, 0).unwrap(),
        }
    );
}

#[test]
fn bad_cli_forms_are_refused_with_the_bad_value() {
    use ScheduleError as E;
    let err = |s: &str| s.parse::<Schedule>().expect_err(s);
    assert!(matches!(err("daily 24:00"), E::BadTimeOfDay { input } if input == "24:00"));
    assert!(matches!(err("daily 02:60"), E::BadTimeOfDay { input } if input == "02:60"));
    assert!(matches!(err("daily 2:30"), E::BadTimeOfDay { input } if input == "2:30"));
    assert!(matches!(err("daily ab:cd"), E::BadTimeOfDay { .. }));
    assert!(matches!(err("daily"), E::Syntax { .. }));
    assert!(matches!(err(""), E::Syntax { .. }));
    assert!(matches!(err("daily 02:00 extra"), E::Syntax { .. }));
    assert!(matches!(err("weekly 23:00"), E::Syntax { .. }));
    assert!(matches!(err("hourly 01:00"), E::UnknownKind { input } if input == "hourly"));
    assert!(matches!(err("weekly mon,xyz 23:00"), E::UnknownWeekday { input } if input == "xyz"));
    assert!(
        matches!(err("weekly mon,,thu 23:00"), E::UnknownWeekday { input } if input.is_empty())
    );
    assert!(matches!(err("weekly mon,MON 23:00"), E::Duplicate { item, .. } if item == "MON"));
    assert!(matches!(
        err("monthly 0 01:00"),
        E::MonthDayOutOfRange { day: 0 }
    ));
    assert!(matches!(
        err("monthly 32 01:00"),
        E::MonthDayOutOfRange { day: 32 }
    ));
    assert!(matches!(
        err("monthly -1 01:00"),
        E::MonthDayOutOfRange { day: -1 }
    ));
    assert!(matches!(err("monthly +5 01:00"), E::BadMonthDay { input } if input == "+5"));
    assert!(matches!(err("monthly x 01:00"), E::BadMonthDay { input } if input == "x"));
    assert!(matches!(err("monthly 1,,2 01:00"), E::BadMonthDay { input } if input.is_empty()));
    assert!(matches!(err("monthly 1,1 01:00"), E::Duplicate { item, .. } if item == "1"));
    assert!(matches!(
        err("monthly month-end,month-end 01:00"),
        E::Duplicate { .. }
    ));
    assert!(matches!(WeekdaySet::new([]), Err(E::NoWeekdays)));
    assert!(matches!(
        MonthDaySet::new([31, 32]),
        Err(E::MonthDayOutOfRange { day: 32 })
    ));
    let empty_monthly = Schedule::Monthly {
        days: MonthDaySet::default(),
        month_end: false,
        at: WallTime::new(1, 0).unwrap(),
    };
    assert!(matches!(empty_monthly.validate(), Err(E::NoMonthDays)));
    assert!(matches!(
        PolicySchedule::new(
            empty_monthly,
            TzName::new("UTC").unwrap(),
            Timestamp::UNIX_EPOCH,
            None
        ),
        Err(E::NoMonthDays)
    ));
}

#[test]
fn unknown_time_zone_is_refused() {
    match TzName::new("Mars/Olympus_Mons") {
        Err(ScheduleError::UnknownTimeZone { name, .. }) => assert_eq!(name, "Mars/Olympus_Mons"),
        other => panic!("expected UnknownTimeZone, got {other:?}"),
    }
    assert_eq!(
        TzName::new("Europe/Berlin").unwrap().name(),
        "Europe/Berlin"
    );
    assert_eq!(TzName::new("UTC").unwrap().to_string(), "UTC");
}

// --- serde ----------------------------------------------------------------------

#[test]
fn json_round_trip_and_shape() {
    let p = policy(
        "monthly 1,15,month-end 01:00",
        "Europe/Berlin",
        "2026-01-01T00:00:00Z",
        Some("2027-01-01T00:00:00Z"),
    );
    let json = serde_json::to_value(&p).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "schedule": {"kind": "monthly", "days": [1, 15], "month_end": true, "at": "01:00"},
            "tz": "Europe/Berlin",
            "effective_from": "2026-01-01T00:00:00Z",
            "effective_until": "2027-01-01T00:00:00Z",
        })
    );
    let back: PolicySchedule = serde_json::from_value(json).unwrap();
    assert_eq!(back, p);

    let w = policy("weekly mon,thu 23:00", "UTC", "2026-01-01T00:00:00Z", None);
    let text = serde_json::to_string(&w).unwrap();
    assert!(text.contains(r#""weekdays":["mon","thu"]"#), "{text}");
    assert_eq!(serde_json::from_str::<PolicySchedule>(&text).unwrap(), w);
}

#[test]
fn invalid_json_is_refused() {
    let base = serde_json::json!({
        "schedule": {"kind": "daily", "at": "02:00"},
        "tz": "UTC",
        "effective_from": "2026-01-01T00:00:00Z",
    });
    assert!(serde_json::from_value::<PolicySchedule>(base.clone()).is_ok());
    let bad = |patch: serde_json::Value| {
        let mut v = base.clone();
        for (k, val) in patch.as_object().unwrap() {
            v[k] = val.clone();
        }
        let e = serde_json::from_value::<PolicySchedule>(v).expect_err("must be refused");
        e.to_string()
    };
    assert!(bad(serde_json::json!({"tz": "Nowhere/Land"})).contains("Nowhere/Land"));
    assert!(
        bad(serde_json::json!({"schedule": {"kind": "daily", "at": "25:00"}})).contains("25:00")
    );
    assert!(bad(
        serde_json::json!({"schedule": {"kind": "weekly", "weekdays": [], "at": "01:00"}})
    )
    .contains("at least one weekday"));
    assert!(
        bad(serde_json::json!({"schedule": {"kind": "monthly", "days": [32], "at": "01:00"}}))
            .contains("32")
    );
    assert!(
        bad(serde_json::json!({"schedule": {"kind": "monthly", "days": [], "at": "01:00"}}))
            .contains("month-end")
    );
    assert!(
        bad(serde_json::json!({"effective_until": "2025-01-01T00:00:00Z"})).contains("not after")
    );
    assert!(
        bad(serde_json::json!({"schedule": {"kind": "hourly", "at": "01:00"}})).contains("hourly")
    );
}

// --- retention ------------------------------------------------------------------

#[test]
fn retention_count_is_1_to_5() {
    for v in 1..=5 {
        assert_eq!(RetentionCount::new(v).unwrap().get() as i64, v);
    }
    for v in [0, 6, -1, 256] {
        assert!(matches!(
            RetentionCount::new(v),
            Err(ScheduleError::RetentionOutOfRange { value }) if value == v
        ));
    }
    assert!(
        matches!("x".parse::<RetentionCount>(), Err(ScheduleError::BadRetention { input }) if input == "x")
    );
    assert_eq!("3".parse::<RetentionCount>().unwrap().get(), 3);
    assert_eq!(
        serde_json::to_string(&RetentionCount::new(4).unwrap()).unwrap(),
        "4"
    );
    assert!(serde_json::from_str::<RetentionCount>("6").is_err());
    assert_eq!(
        serde_json::from_str::<RetentionCount>("5").unwrap().get(),
        5
    );
}

#[test]
fn prune_keeps_the_newest_n() {
    let t = |d: i64| Timestamp::from_second(1_700_000_000 + d * 86_400).unwrap();
    // Unsorted input; ids 3 and 4 share a creation time (tie -> larger id is newer).
    let points = [
        (5u64, t(5)),
        (1, t(1)),
        (3, t(3)),
        (2, t(2)),
        (4, t(3)),
        (6, t(6)),
    ];
    let keep = |n| RetentionCount::new(n).unwrap();
    assert_eq!(prune(keep(3), &points), [1, 2, 3]);
    assert_eq!(prune(keep(1), &points), [1, 2, 3, 4, 5]);
    assert_eq!(prune(keep(5), &points), [1]);
    assert!(prune(keep(5), &points[..5]).is_empty());
    assert!(prune::<u64>(keep(2), &[]).is_empty());
}

// --- property test ------------------------------------------------------------

const ZONES: &[&str] = &[
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Australia/Lord_Howe",
    "America/Santiago",
    "America/Havana",
    "Asia/Tehran",
    "Pacific/Apia",
    "Asia/Kolkata",
];

fn arb_schedule() -> impl Strategy<Value = Schedule> {
    let at = (0u8..24, 0u8..60).prop_map(|(h, m)| WallTime::new(h, m).unwrap());
    prop_oneof![
        at.clone().prop_map(|at| Schedule::Daily { at }),
        (1u8..128, at.clone()).prop_map(|(bits, at)| Schedule::Weekly {
            weekdays: WeekdaySet::new(
                (0..7i8)
                    .filter(|i| bits & (1 << i) != 0)
                    .map(|i| Weekday::from_monday_zero_offset(i).unwrap())
            )
            .unwrap(),
            at
        }),
        (any::<u32>(), any::<bool>(), at).prop_map(|(bits, month_end, at)| {
            let bits = bits & !1;
            Schedule::Monthly {
                days: MonthDaySet::new((1..=31u8).filter(|d| bits & (1 << d) != 0)).unwrap(),
                month_end: month_end || bits == 0,
                at,
            }
        }),
    ]
}

/// Which local date `slot` belongs to, checked independently of `slot_on`:
/// either the slot shows the schedule's wall time (and, in an overlap, is
/// the earlier of the two instants), or it is a zone transition and the wall
/// time lies in the gap it opened.
fn nominal_date(p: &PolicySchedule, slot: Timestamp) -> Option<Date> {
    let tz = p.tz().time_zone();
    let at = p.schedule().at().to_time();
    let local = tz.to_datetime(slot);
    if local.time() == at {
        let dt = local;
        if let AmbiguousOffset::Fold { before, after } = tz.to_ambiguous_timestamp(dt).offset() {
            let earlier = before
                .to_timestamp(dt)
                .ok()?
                .min(after.to_timestamp(dt).ok()?);
            if slot != earlier {
                return None;
            }
        }
        return Some(local.date());
    }
    let prev = tz
        .preceding(slot.checked_add(SignedDuration::from_nanos(1)).ok()?)
        .next()?;
    if prev.timestamp() != slot {
        return None;
    }
    let just_before = tz.to_datetime(slot.checked_sub(SignedDuration::from_nanos(1)).ok()?);
    [local.date(), local.date().yesterday().ok()?]
        .into_iter()
        .find(|d| {
            let wanted = DateTime::from_parts(*d, at);
            just_before < wanted && wanted < local
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn next_fire_after_is_increasing_and_on_schedule(
        schedule in arb_schedule(),
        zone in 0..ZONES.len(),
        after in 0i64..4_102_444_800, // 1970 .. 2100
    ) {
        let p = PolicySchedule::new(
            schedule,
            TzName::new(ZONES[zone]).unwrap(),
            Timestamp::UNIX_EPOCH,
            None,
        ).unwrap();
        let mut t = Timestamp::from_second(after).unwrap();
        let mut prev_date: Option<Date> = None;
        for _ in 0..25 {
            let s = p.next_fire_after(t).expect("unbounded window always has a next slot");
            prop_assert!(s > t, "slot {s} not after {t}");
            let date = nominal_date(&p, s);
            prop_assert!(date.is_some(), "slot {s} of {p} is neither the wall time nor a post-gap instant");
            let date = date.unwrap();
            prop_assert!(p.schedule().fires_on(date), "slot {s} on {date} which the schedule does not include");
            if let Some(pd) = prev_date {
                prop_assert!(pd < date, "dates not increasing: {pd} then {date}");
                // No scheduled date between two consecutive slots was left out.
                let mut d = pd.tomorrow().unwrap();
                while d < date {
                    prop_assert!(!p.schedule().fires_on(d), "{p}: date {d} skipped between {pd} and {date}");
                    d = d.tomorrow().unwrap();
                }
            }
            prev_date = Some(date);
            t = s;
        }
    }

    #[test]
    fn display_parse_round_trip(schedule in arb_schedule()) {
        let text = schedule.to_string();
        prop_assert_eq!(text.parse::<Schedule>().unwrap(), schedule);
        let json = serde_json::to_string(&schedule).unwrap();
        prop_assert_eq!(serde_json::from_str::<Schedule>(&json).unwrap(), schedule);
    }
}

#[test]
fn bundled_tz_database_is_compiled_in() {
    // Hosts without /usr/share/zoneinfo fall back to this copy
    // (`tzdb-bundle-always`); it must know the zones and their rules.
    let db = jiff::tz::TimeZoneDatabase::bundled();
    let berlin = db.get("Europe/Berlin").expect("bundled Europe/Berlin");
    let before = berlin.to_offset(ts("2026-03-29T00:59:59Z"));
    let after = berlin.to_offset(ts("2026-03-29T01:00:00Z"));
    assert_eq!((before.seconds(), after.seconds()), (3600, 7200));
    assert!(db.get("Australia/Lord_Howe").is_ok());
}
