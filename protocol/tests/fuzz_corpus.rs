//! Replays the committed fuzz corpus and crash reproducers
//! (`fuzz/corpus/frame_decoder/`, `fuzz/regressions/frame_decoder/`) through
//! the fuzz target's property, so CI checks them without cargo-fuzz.

#[path = "common/frame_check.rs"]
mod frame_check;

use std::path::Path;

fn replay(dir: &Path) -> usize {
    let mut replayed = 0;
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.unwrap().path();
        if !path.is_file() || path.extension().is_some_and(|e| e == "md") {
            continue;
        }
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| frame_check::check(&data));
        assert!(
            outcome.is_ok(),
            "fuzz input {} fails the frame_decoder property",
            path.display()
        );
        replayed += 1;
    }
    replayed
}

#[test]
fn corpus_and_regressions_replay_cleanly() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let corpus = replay(&fuzz.join("corpus/frame_decoder"));
    assert!(
        corpus >= 12,
        "the corpus should hold at least one frame of every type, found {corpus} files"
    );
    replay(&fuzz.join("regressions/frame_decoder"));
}
