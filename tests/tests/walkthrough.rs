//! Runs README.md's operator walk-through exactly as written (the shell
//! block between the `walkthrough:begin/end` markers), with the test's
//! build of the binaries on PATH instead of the `cargo build --release`
//! line, in a temporary directory (`FERRY_TOUR`). Every line must succeed
//! (`bash -e`), so a README that drifts from the CLI fails here. The tour's
//! agents listen on fixed loopback ports 7401/7402 (API 7481/7482).

use std::process::Command;

use ferry_e2e::bin_dir;

#[test]
fn readme_walkthrough_runs_as_written() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let block = readme
        .split_once("<!-- walkthrough:begin -->")
        .and_then(|(_, rest)| rest.split_once("<!-- walkthrough:end -->"))
        .map(|(block, _)| block)
        .expect("README has the walk-through markers");
    let script: Vec<&str> = block
        .lines()
        .filter(|l| !l.starts_with("```"))
        .filter(|l| !l.starts_with("cargo build --release"))
        .collect();
    assert!(
        script.iter().any(|l| l.contains("group migrate")),
        "walk-through lost its migration step"
    );
    let tour = tempfile::tempdir().expect("tempdir");
    let path = format!(
        "{}:{}",
        bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // Agents started by the script are killed at the end, even on failure.
    let wrapped = format!(
        "set -euo pipefail\ntrap 'kill -9 $(jobs -p) 2>/dev/null || true' EXIT\n{}\n",
        script.join("\n")
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(&wrapped)
        .env("PATH", path)
        .env("FERRY_TOUR", tour.path())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running bash");
    let logs = ["a.log", "b.log"]
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(tour.path().join(f)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            format!("--- {f} (last lines, newest first)\n{}", tail.join("\n"))
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        out.status.success(),
        "the walk-through failed ({}):\nstdout:\n{}\nstderr:\n{}\n{logs}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let failover = tour.path().join("site-a/failover/web");
    let files: Vec<String> = std::fs::read_dir(&failover)
        .expect("failover directory")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files.len(), 2, "two failed-over volumes: {files:?}");
}
