//! How the control commands print an answer for a person: an operation as
//! one line (plus the volumes a drill makes), a service key alone, anything else as pretty JSON, and
//! `ferry status` as a table with progress bars.

use serde_json::Value;

/// Prints an API answer for a person (`--json` prints it raw instead).
pub(super) fn print_human(v: &Value) {
    if let Some(op) = v.get("operation") {
        let id = op.get("id").and_then(Value::as_i64).unwrap_or(0);
        let kind = op.get("kind").and_then(Value::as_str).unwrap_or("?");
        let state = op
            .pointer("/state/state")
            .and_then(Value::as_str)
            .unwrap_or("?");
        println!("operation {id} ({kind}): {state}");
        // A drill names the volumes it makes (or made).
        for v in op
            .pointer("/params/volumes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let get = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("?");
            println!("  {}  ({})", get("volume"), get("resource"));
        }
        return;
    }
    if let Some(key) = v.get("key").and_then(Value::as_str) {
        println!("{key}");
        return;
    }
    match serde_json::to_string_pretty(v) {
        Ok(text) => println!("{text}"),
        Err(_) => println!("{v}"),
    }
}

fn bar(done: u64, total: u64) -> String {
    const WIDTH: u64 = 24;
    let filled = done
        .saturating_mul(WIDTH)
        .checked_div(total)
        .unwrap_or(WIDTH)
        .min(WIDTH);
    format!(
        "[{}{}]",
        "#".repeat(filled as usize),
        "-".repeat((WIDTH - filled) as usize)
    )
}

/// Prints `ferry status` for a person.
pub(super) fn print_status(v: &Value) {
    use crate::units::human_bytes;
    let s = |p: &str| {
        v.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("-")
            .to_owned()
    };
    println!(
        "agent {}  endpoint {}  api {}",
        &s("/agent/fingerprint")[..16.min(s("/agent/fingerprint").len())],
        s("/agent/endpoint"),
        s("/agent/api")
    );
    let groups = v
        .get("groups")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if groups.is_empty() {
        println!("no groups");
    }
    for g in groups {
        let gs = |p: &str| {
            g.pointer(p)
                .map(|x| x.to_string().trim_matches('"').to_owned())
                .unwrap_or_else(|| "-".into())
        };
        println!(
            "group {} ({} {}): {} resources, {} recovery points",
            gs("/name"),
            gs("/role"),
            gs("/state"),
            gs("/resources"),
            gs("/recovery_points")
        );
        if let Some(line) = driven_line(&g) {
            println!("  {line}");
        }
        let Some(p) = g.get("progress").filter(|p| !p.is_null()) else {
            continue;
        };
        let num = |x: &Value, k: &str| x.get(k).and_then(Value::as_u64).unwrap_or(0);
        println!(
            "  {}  cycles {}  last rp {}  rpo lag {}  remaining {}  rate {}/s{}",
            p.get("state").and_then(Value::as_str).unwrap_or("-"),
            num(p, "cycles"),
            p.get("last_recovery_point")
                .map(|x| x.to_string())
                .unwrap_or_default(),
            p.get("rpo_lag_secs")
                .and_then(Value::as_f64)
                .map(|x| format!("{x:.1}s"))
                .unwrap_or_else(|| "-".into()),
            human_bytes(num(p, "bytes_remaining")),
            human_bytes(num(p, "rate")),
            p.get("last_error")
                .and_then(Value::as_str)
                .map(|e| format!("  last error: {e}"))
                .unwrap_or_default()
        );
        for r in p
            .get("resources")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
        {
            let total = num(&r, "bytes_total");
            let remaining = num(&r, "bytes_remaining");
            println!(
                "    {} {} {} {}/s  {}",
                bar(total.saturating_sub(remaining), total),
                r.get("image").and_then(Value::as_str).unwrap_or("-"),
                human_bytes(remaining),
                human_bytes(num(&r, "rate")),
                r.get("phase").and_then(Value::as_str).unwrap_or("-"),
            );
        }
    }
}

/// "driven by AGENT (api ADDR, lease STATE)" for a group of a multi-agent
/// site (`None` for a single-agent site's groups: this agent drives them).
pub(super) fn driven_line(group_or_detail: &Value) -> Option<String> {
    let d = group_or_detail.get("driven_by").filter(|d| !d.is_null())?;
    let text = |k: &str| d.get(k).and_then(Value::as_str);
    let lease = text("lease")?;
    if lease == "none" {
        return None;
    }
    Some(format!(
        "driven by {} (api {}, lease {lease})",
        text("agent").unwrap_or("no agent yet"),
        text("api").unwrap_or("-"),
    ))
}
