//! Human tables of the list commands (`service list`, `group list`,
//! `group show`, `group rpo-history`, `rp list`, `policy list`, `op list`,
//! `qos show`), drawn
//! with comfy-table, and times as RFC 3339 in the local zone or the one
//! given with `--tz`. They read the same JSON `--json` prints (which stays
//! as it is: times in ms since the epoch), so a field the agent adds
//! later never breaks them: a missing one prints as `-`.

use comfy_table::{presets, Table};
use jiff::tz::TimeZone;
use serde_json::Value;

use crate::units::{human_bytes, human_duration, human_rate};

/// Which list an answer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum View {
    /// `GET /v1/services`.
    Services,
    /// `GET /v1/groups`.
    Groups,
    /// `GET /v1/groups/{group}`.
    GroupDetail,
    /// `GET /v1/groups/{group}/recovery-points`.
    RecoveryPoints,
    /// `GET /v1/policies`.
    Policies,
    /// `GET /v1/operations`.
    Operations,
    /// `GET /v1/qos`.
    Qos,
    /// `GET /v1/groups/{group}/rpo-history`.
    RpoHistory,
}

/// The zone times are shown in: `--tz NAME`, else the system's.
pub(super) fn time_zone(tz: Option<&str>) -> anyhow::Result<TimeZone> {
    match tz {
        Some(name) => TimeZone::get(name).map_err(|e| {
            anyhow::anyhow!("--tz {name}: {e} (an IANA name such as Europe/Berlin, or UTC)")
        }),
        None => Ok(TimeZone::system()),
    }
}

/// `ms` since the epoch as RFC 3339 in `tz` (seconds precision), e.g.
/// `2026-12-07T03:04:05+01:00`.
pub(super) fn rfc3339(ms: i64, tz: &TimeZone) -> String {
    match jiff::Timestamp::from_millisecond(ms) {
        Ok(t) => t
            .to_zoned(tz.clone())
            .strftime("%Y-%m-%dT%H:%M:%S%:z")
            .to_string(),
        Err(_) => ms.to_string(),
    }
}

/// Renders `v` as `view` for a person.
pub(super) fn render(view: View, v: &Value, tz: &TimeZone) -> String {
    match view {
        View::Services => services(v, tz),
        View::Groups => groups(v, tz),
        View::GroupDetail => group_detail(v, tz),
        View::RecoveryPoints => recovery_points(v, tz),
        View::Policies => policies(v, tz),
        View::Operations => operations(v, tz),
        View::Qos => qos(v),
        View::RpoHistory => rpo_history(v, tz),
    }
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING);
    t.set_header(header.iter().copied());
    t
}

fn finish(t: Table, empty: &str) -> String {
    if t.row_count() == 0 {
        format!("{empty}\n")
    } else {
        // Every line without the preset's padding at the ends.
        let text = t.to_string();
        let lines: Vec<&str> = text.lines().map(|l| l.trim_end()).collect();
        let cut = lines
            .iter()
            .map(|l| l.len() - l.trim_start().len())
            .min()
            .unwrap_or(0);
        lines
            .iter()
            .map(|l| format!("{}\n", l.get(cut..).unwrap_or(l)))
            .collect()
    }
}

fn items(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// A field as text (`-` when absent or null).
fn s(v: &Value, pointer: &str) -> String {
    match v.pointer(pointer) {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(x) => x.to_string(),
    }
}

/// A time field (ms since the epoch) in `tz`.
fn time(v: &Value, pointer: &str, tz: &TimeZone) -> String {
    v.pointer(pointer)
        .and_then(Value::as_i64)
        .map_or_else(|| "-".into(), |ms| rfc3339(ms, tz))
}

fn thresholds(g: &Value) -> String {
    let one = |p: &str| {
        g.pointer(p)
            .and_then(Value::as_u64)
            .map_or_else(|| "-".into(), human_duration)
    };
    format!("{}/{}", one("/rpo/warn_secs"), one("/rpo/crit_secs"))
}

fn services(v: &Value, tz: &TimeZone) -> String {
    let mut t = table(&[
        "ID",
        "NAME",
        "LOCAL ENDPOINT",
        "REMOTE ENDPOINT",
        "REMOTE FINGERPRINT",
        "CREATED",
    ]);
    for x in items(v) {
        let fp = s(x, "/remote_fingerprint");
        t.add_row(vec![
            s(x, "/id"),
            s(x, "/name"),
            s(x, "/local_endpoint"),
            s(x, "/remote_endpoint"),
            fp.get(..16).map_or(fp.clone(), |f| format!("{f}…")),
            time(x, "/created_at", tz),
        ]);
    }
    finish(t, "no services")
}

fn groups(v: &Value, tz: &TimeZone) -> String {
    let mut t = table(&[
        "ID",
        "NAME",
        "ROLE",
        "STATE",
        "POLICY",
        "RPO WARN/CRIT",
        "CREATED",
    ]);
    for g in items(v) {
        let role = match g.get("new_primary") {
            Some(Value::Bool(true)) => "new primary".into(),
            _ => s(g, "/role"),
        };
        let policy = match g.get("policy") {
            Some(p) if !p.is_null() => {
                format!("{} (keep {})", s(p, "/policy_id"), s(p, "/retention"))
            }
            _ => "-".into(),
        };
        t.add_row(vec![
            s(g, "/id"),
            s(g, "/name"),
            role,
            s(g, "/state"),
            policy,
            thresholds(g),
            time(g, "/created_at", tz),
        ]);
    }
    finish(t, "no groups")
}

fn recovery_points(v: &Value, tz: &TimeZone) -> String {
    let mut t = table(&["NAME", "KIND", "STATE", "ENGINE RP", "CREATED"]);
    for rp in items(v) {
        let mut state = s(rp, "/state");
        if rp.get("pending_remote_delete") == Some(&Value::Bool(true)) {
            state.push_str(" (standby delete pending)");
        }
        t.add_row(vec![
            s(rp, "/name"),
            s(rp, "/kind"),
            state,
            s(rp, "/engine_rp"),
            time(rp, "/created_at", tz),
        ]);
    }
    finish(t, "no recovery points")
}

fn policies(v: &Value, tz: &TimeZone) -> String {
    let mut t = table(&["NAME", "SCHEDULE", "TZ", "FROM", "UNTIL", "CREATED"]);
    for p in items(v) {
        let parsed: Option<crate::schedule::PolicySchedule> = p
            .get("schedule")
            .and_then(|x| serde_json::from_value(x.clone()).ok());
        let (schedule, zone, from, until) = match &parsed {
            Some(ps) => (
                ps.schedule().to_string(),
                ps.tz().to_string(),
                rfc3339(ps.effective_from().as_millisecond(), tz),
                ps.effective_until()
                    .map_or_else(|| "-".into(), |u| rfc3339(u.as_millisecond(), tz)),
            ),
            None => (s(p, "/schedule"), "-".into(), "-".into(), "-".into()),
        };
        t.add_row(vec![
            s(p, "/name"),
            schedule,
            zone,
            from,
            until,
            time(p, "/created_at", tz),
        ]);
    }
    finish(t, "no policies")
}

fn operations(v: &Value, tz: &TimeZone) -> String {
    let mut t = table(&[
        "ID", "GROUP", "KIND", "STATE", "STARTED", "FINISHED", "REASON",
    ]);
    for op in items(v) {
        t.add_row(vec![
            s(op, "/id"),
            s(op, "/group_name"),
            s(op, "/kind"),
            s(op, "/state/state"),
            time(op, "/started_at", tz),
            time(op, "/finished_at", tz),
            s(op, "/state/reason"),
        ]);
    }
    finish(t, "no operations")
}

fn rpo_history(v: &Value, tz: &TimeZone) -> String {
    let mut t = table(&["AT", "RPO LAG"]);
    for sample in v.get("samples").map(items).unwrap_or_default() {
        let lag = sample
            .get("lag_secs")
            .and_then(Value::as_f64)
            .map_or_else(|| "-".into(), |x| human_duration(x.round() as u64));
        t.add_row([time(sample, "/at", tz), lag]);
    }
    finish(t, "no samples yet (one every 10 s while the agent runs)")
}

fn qos(v: &Value) -> String {
    let limit = |k: &str| human_rate(v.get(k).and_then(Value::as_u64));
    format!(
        "receive limit: {}\nsend limit:    {}\n",
        limit("receive_limit"),
        limit("send_limit")
    )
}

fn group_detail(v: &Value, tz: &TimeZone) -> String {
    let g = v.get("group").unwrap_or(&Value::Null);
    let mut out = format!(
        "group {} (id {}): {} {}, created {}, RPO warn/crit {}\n",
        s(g, "/name"),
        s(g, "/id"),
        s(g, "/role"),
        s(g, "/state"),
        time(g, "/created_at", tz),
        thresholds(g)
    );
    if let Some(line) = super::render::driven_line(v) {
        out.push_str(&line);
        out.push('\n');
    }
    if let Some(p) = v.get("progress").filter(|p| !p.is_null()) {
        out.push_str(&format!(
            "replication: {}, {} cycles, standby holds writes before {}, RPO lag {}, rate {}{}\n",
            s(p, "/state"),
            s(p, "/cycles"),
            time(p, "/standby_holds_writes_before", tz),
            p.get("rpo_lag_secs")
                .and_then(Value::as_f64)
                .map_or_else(|| "-".into(), |x| human_duration(x.round() as u64)),
            match p.get("rate").and_then(Value::as_u64) {
                Some(r) if r > 0 => human_rate(Some(r)),
                _ => "idle".into(),
            },
            p.get("last_error")
                .and_then(Value::as_str)
                .map(|e| format!("\n  last error: {e}"))
                .unwrap_or_default()
        ));
    }
    if let Some(d) = v.get("drill").filter(|d| !d.is_null()) {
        out.push_str(&format!(
            "drill: {} at {} since {}\n",
            s(d, "/phase"),
            s(d, "/recovery_point"),
            time(d, "/started_at", tz)
        ));
    }
    let mut t = table(&[
        "RESOURCE",
        "KIND",
        "SIZE",
        "STANDBY IMAGE",
        "STATE",
        "VOLUME",
    ]);
    for r in items(v.get("resources").unwrap_or(&Value::Null)) {
        let kind = match r.pointer("/kind/vm").and_then(Value::as_str) {
            Some(vm) => format!(
                "vm {vm}{}",
                if r.pointer("/kind/boot") == Some(&Value::Bool(true)) {
                    " (boot)"
                } else {
                    ""
                }
            ),
            None => "volume".into(),
        };
        t.add_row(vec![
            s(r, "/uri"),
            kind,
            r.get("size_bytes")
                .and_then(Value::as_u64)
                .map_or_else(|| "-".into(), human_bytes),
            s(r, "/standby_target"),
            s(r, "/state"),
            s(r, "/volume"),
        ]);
    }
    out.push('\n');
    out.push_str(&finish(t, "no resources"));
    out.push('\n');
    out.push_str(&recovery_points(
        v.get("recovery_points").unwrap_or(&Value::Null),
        tz,
    ));
    out.push('\n');
    out.push_str(&operations(v.get("operations").unwrap_or(&Value::Null), tz));
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn utc() -> TimeZone {
        TimeZone::UTC
    }

    #[test]
    fn times_are_rfc3339_in_the_zone_asked() {
        // 2026-12-07T03:04:05Z
        let ms = 1_796_612_645_000;
        assert_eq!(rfc3339(ms, &utc()), "2026-12-07T03:04:05+00:00");
        let berlin = time_zone(Some("Europe/Berlin")).unwrap();
        assert_eq!(rfc3339(ms, &berlin), "2026-12-07T04:04:05+01:00");
        let parsed: jiff::Timestamp = rfc3339(ms, &berlin).parse().unwrap();
        assert_eq!(parsed.as_millisecond(), ms, "round trip");
        assert!(time_zone(Some("Mars/Olympus")).is_err());
    }

    #[test]
    fn a_list_is_a_table_with_one_row_per_item() {
        let ops = json!([
            { "id": 3, "group_name": "web", "kind": "start_sync", "state": { "state": "succeeded" },
              "started_at": 1_796_612_645_000i64, "finished_at": 1_796_612_646_000i64 },
            { "id": 4, "group_name": "web", "kind": "failover",
              "state": { "state": "failed", "reason": "fence: busy" },
              "started_at": 1_796_612_647_000i64, "finished_at": null },
        ]);
        let text = render(View::Operations, &ops, &utc());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("ID"), "{text}");
        let words: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(
            words,
            ["ID", "GROUP", "KIND", "STATE", "STARTED", "FINISHED", "REASON"]
        );
        let row: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(
            row,
            [
                "4",
                "web",
                "failover",
                "failed",
                "2026-12-07T03:04:07+00:00",
                "-",
                "fence:",
                "busy"
            ]
        );
        assert_eq!(
            render(View::Operations, &json!([]), &utc()),
            "no operations\n"
        );
    }

    #[test]
    fn groups_show_thresholds_and_policy() {
        let groups = json!([
            { "id": 1, "name": "web", "role": "primary", "new_primary": false, "state": "syncing",
              "policy": { "policy_id": 2, "retention": 3 }, "created_at": 0,
              "rpo": { "warn_secs": 300, "crit_secs": 3600 } },
            { "id": 2, "name": "db", "role": "standby", "new_primary": true, "state": "failed_over",
              "policy": null, "created_at": 0 },
        ]);
        let text = render(View::Groups, &groups, &utc());
        assert!(text.contains("5m/1h"), "{text}");
        assert!(text.contains("2 (keep 3)"), "{text}");
        assert!(text.contains("new primary"), "{text}");
        assert!(text.contains("-/-"), "{text}");
    }

    #[test]
    fn rpo_history_prints_one_row_per_sample() {
        let v = json!({ "group": "web", "interval_secs": 10, "samples": [
            { "at": 0, "lag_secs": null },
            { "at": 10_000, "lag_secs": 95.4 },
        ]});
        let text = render(View::RpoHistory, &v, &utc());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[1].starts_with("1970-01-01T00:00:00") && lines[1].ends_with('-'));
        assert!(
            lines[2].contains("00:00:10") && lines[2].ends_with("1m35s"),
            "{text}"
        );
        let empty = render(View::RpoHistory, &json!({ "samples": [] }), &utc());
        assert!(empty.starts_with("no samples yet"), "{empty}");
    }

    #[test]
    fn qos_prints_what_qos_set_reads() {
        let text = render(
            View::Qos,
            &json!({ "receive_limit": null, "send_limit": 20_971_520 }),
            &utc(),
        );
        assert_eq!(
            text,
            "receive limit: unlimited\nsend limit:    20.00 MiB/s\n"
        );
        let send = text.lines().nth(1).unwrap().split(':').nth(1).unwrap();
        assert_eq!(crate::units::parse_rate(send).unwrap(), Some(20_971_520));
    }
}
