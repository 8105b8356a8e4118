//! The sender's unacknowledged-batch window (`session::send_window`) checked
//! against a model (`common/send_window_check.rs`, the property of the
//! `send_window` fuzz target): over random operation sequences, and over the
//! committed fuzz corpus and crash reproducers (`fuzz/corpus/send_window/`,
//! `fuzz/regressions/send_window/`), so a regression fails a plain
//! `cargo test`, without cargo-fuzz or nightly.

use std::path::{Path, PathBuf};

use proptest::prelude::*;

#[path = "common/send_window_check.rs"]
mod send_window_check;

/// Every input file of `fuzz/<kind>/send_window/` (READMEs skipped).
fn inputs(kind: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz")
        .join(kind)
        .join("send_window");
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

#[test]
fn send_window_corpus_replays_cleanly() {
    let corpus = inputs("corpus");
    assert!(
        corpus.len() >= 5,
        "fuzz/corpus/send_window: expected at least 5 seeds, found {}",
        corpus.len()
    );
    for path in corpus.iter().chain(&inputs("regressions")) {
        let data = std::fs::read(path).unwrap();
        let outcome = std::panic::catch_unwind(|| send_window_check::check(&data));
        assert!(
            outcome.is_ok(),
            "fuzz input {} fails the send_window property",
            path.display()
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn send_window_matches_its_model(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        send_window_check::check(&data);
    }
}
