//! The `ferry` CLI as the control tests drive it: a command against the
//! agent whose data dir is given (`ferry --dir DIR …`), its output rendered
//! for a failure message, and `--json` calls that must succeed.

use std::path::Path;
use std::process::Output;

use serde_json::Value;

use crate::ferry;

/// Runs `ferry --dir DIR ARGS…`.
pub fn run(dir: &Path, args: &[&str]) -> Output {
    let d = dir.display().to_string();
    let mut all = vec!["--dir", d.as_str()];
    all.extend_from_slice(args);
    ferry(&all)
}

/// Exit status, stdout and stderr of a finished command, for assertions.
pub fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs a control command with `--json`; it must succeed and print JSON.
pub fn ok(dir: &Path, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let out = run(dir, &all);
    assert!(
        out.status.success(),
        "ferry {args:?} failed: {}",
        text(&out)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)))
}
