//! The Prometheus alert rules shipped in `contrib/prometheus/`: they parse
//! and their unit tests pass under `promtool` (Debian's `prometheus`
//! package; `scripts/test.sh` installs it), and every ferry series they
//! query is one the agent exports.

use std::path::PathBuf;
use std::process::Command;

use ferry_e2e::prereq::{require, tool_present};

fn contrib() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../contrib/prometheus")
}

fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(contrib())
        .output()
        .expect("running promtool");
    assert!(
        out.status.success(),
        "promtool {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[ignore = "needs promtool (Debian package prometheus); scripts/test.sh runs it"]
fn alert_rules_check_and_their_unit_tests_pass() {
    if !require(
        tool_present("promtool"),
        "promtool (apt-get install prometheus)",
    ) {
        return;
    }
    promtool(&["check", "rules", "ferry-alerts.yml"]);
    promtool(&["test", "rules", "ferry-alerts.test.yml"]);
}

/// Every `ferry_…` name in the rules is a family the agent registers
/// (`agent/src/metrics.rs` and `metrics/places.rs` name each without its
/// `_total` and unit suffix).
#[test]
fn alert_rules_query_only_series_the_agent_exports() {
    let text = std::fs::read_to_string(contrib().join("ferry-alerts.yml")).unwrap();
    let rules: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../agent/src");
    let source = std::fs::read_to_string(root.join("metrics.rs")).unwrap()
        + &std::fs::read_to_string(root.join("metrics/places.rs")).unwrap();
    let mut names = 0;
    for word in rules.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        let Some(rest) = word.strip_prefix("ferry_") else {
            continue;
        };
        let base = format!("ferry_{}", rest.strip_suffix("_total").unwrap_or(rest));
        let registered = [base.as_str()]
            .into_iter()
            .chain(base.strip_suffix("_seconds"))
            .chain(base.strip_suffix("_bytes"))
            .any(|n| source.contains(&format!("\"{n}\"")));
        assert!(
            registered,
            "the alert rules query {word}, which the agent does not export"
        );
        names += 1;
    }
    assert!(names >= 8, "only {names} ferry series found in the rules");
}
