//! Replays the committed corpora of the agent-input and receiver fuzz
//! targets (`fuzz/corpus/{config,service_key,api_bodies,receiver_frames}/`) and any crash
//! reproducers (`fuzz/regressions/<target>/`) through the same properties
//! the fuzz targets check, against the real `ferry_agent` modules — so a
//! regression fails a plain `cargo test`, without cargo-fuzz or nightly.
//! The properties include documented limits and round trips of accepted
//! inputs (`common/config_check.rs`, `common/api_bodies_check.rs`), so the
//! corpus files that once broke them stay regression tests.

use std::path::{Path, PathBuf};

// The check modules name the agent's modules by crate path, as the fuzz
// targets (which compile those files directly) do.
mod config {
    pub use ferry_agent::config::*;
}
mod service_key {
    pub use ferry_agent::service_key::*;
}
mod api {
    pub mod bodies {
        pub use ferry_agent::api::bodies::*;
    }
}
mod control {
    pub use ferry_agent::control::*;
}
mod schedule {
    pub use ferry_agent::schedule::*;
}
mod uri {
    pub use ferry_agent::uri::*;
}

#[path = "common/api_bodies_check.rs"]
mod api_bodies_check;
#[path = "common/config_check.rs"]
mod config_check;
#[path = "common/receiver_frames_check.rs"]
mod receiver_frames_check;
#[path = "common/service_key_check.rs"]
mod service_key_check;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// Every input file of `fuzz/<kind>/<target>/` (READMEs skipped).
fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = fuzz_dir().join(kind).join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.extension().is_none_or(|e| e != "md"))
        .collect();
    files.sort();
    files
}

/// Replays corpus and reproducers of `target` through `check`; the corpus
/// must hold at least `min_seeds` files.
fn replay(target: &str, min_seeds: usize, check: fn(&[u8])) {
    let corpus = inputs("corpus", target);
    assert!(
        corpus.len() >= min_seeds,
        "fuzz/corpus/{target}: expected at least {min_seeds} seeds, found {}",
        corpus.len()
    );
    for path in corpus.iter().chain(&inputs("regressions", target)) {
        let data = std::fs::read(path).unwrap();
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(
            outcome.is_ok(),
            "fuzz input {} fails the {target} property",
            path.display()
        );
    }
}

#[test]
fn config_corpus_replays_cleanly() {
    replay("config", 5, config_check::check);
}

#[test]
fn service_key_corpus_replays_cleanly() {
    replay("service_key", 5, service_key_check::check);
}

#[test]
fn api_bodies_corpus_replays_cleanly() {
    replay("api_bodies", 19, api_bodies_check::check);
}

#[test]
fn receiver_frames_corpus_replays_cleanly() {
    replay("receiver_frames", 5, receiver_frames_check::check);
}
