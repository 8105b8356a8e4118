//! The `ferry` CLI as the control tests drive it: a command against the
//! agent whose data dir is given (`ferry --dir DIR …`), its output rendered
//! for a failure message, and `--json` calls that must succeed.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

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

/// GET on an agent's operator API with its token (through `ferry`'s
/// library client, the same code the CLI uses); the reply must be a success.
pub fn get(dir: &Path, path: &str) -> Value {
    let conn = ferry_agent::cli::Conn {
        dir: Some(dir.to_path_buf()),
        ..Default::default()
    };
    let (target, token) =
        ferry_agent::cli::resolve_target(&conn).expect("agent API address and token");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let reply = rt
        .block_on(ferry_agent::api::http::call(
            &target,
            ferry_agent::api::http::Method::GET,
            path,
            Some(&token),
            None,
            Duration::from_secs(10),
        ))
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert!(reply.ok(), "{path}: {} {}", reply.status, reply.body);
    reply.body
}
