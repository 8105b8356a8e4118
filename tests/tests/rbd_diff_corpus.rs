//! Replays the committed `rbd_diff` fuzz corpus (`fuzz/corpus/rbd_diff/`)
//! through the fuzz target's property, so CI checks it without cargo-fuzz.

#[path = "common/rbd_diff_check.rs"]
mod rbd_diff_check;

use std::path::Path;

#[test]
fn rbd_diff_corpus_replays_cleanly() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/rbd_diff");
    let mut replayed = 0;
    for entry in
        std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
    {
        let path = entry.unwrap().path();
        if !path.is_file() || path.extension().is_some_and(|e| e == "md") {
            continue;
        }
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| rbd_diff_check::check(&data));
        assert!(
            outcome.is_ok(),
            "fuzz input {} fails the rbd_diff property",
            path.display()
        );
        replayed += 1;
    }
    assert!(
        replayed >= 5,
        "expected the seed corpus, found {replayed} files"
    );
}
