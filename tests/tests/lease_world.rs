//! The lease machine in a simulated site (`common/lease_check.rs`): two or
//! three agents contend for one group through a store with a lock, holder
//! records and a blocklist, under random delays, lost messages and stopped
//! agents. Runs the committed corpus of the `lease` fuzz target
//! (`fuzz/corpus/lease/`, hand-made scenarios among them) and a few
//! hundred random inputs from fixed seeds.

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};

// The check names the agent's module by crate path, as the fuzz target
// (which compiles the file directly) does.
mod placement {
    pub use ferry_agent::placement::*;
}

#[path = "common/lease_check.rs"]
mod lease_check;

fn inputs(kind: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz")
        .join(kind)
        .join("lease");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("a readable corpus directory").path())
        .filter(|p| p.is_file() && p.extension().is_none_or(|e| e != "md"))
        .collect();
    files.sort();
    files
}

#[test]
fn lease_corpus_keeps_the_lease_properties() {
    let corpus = inputs("corpus");
    assert!(
        corpus.len() >= 5,
        "fuzz/corpus/lease: expected at least 5 seeds, found {}",
        corpus.len()
    );
    for path in corpus.iter().chain(&inputs("regressions")) {
        let data = std::fs::read(path).expect("a readable corpus file");
        let outcome = std::panic::catch_unwind(|| lease_check::check(&data));
        assert!(
            outcome.is_ok(),
            "fuzz input {} fails the lease property",
            path.display()
        );
    }
}

#[test]
fn random_worlds_keep_the_lease_properties() {
    for seed in 0..300u64 {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let len = rng.gen_range(1..200);
        let data: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        let outcome = std::panic::catch_unwind(|| lease_check::check(&data));
        assert!(
            outcome.is_ok(),
            "seed {seed} fails the lease property: input {data:?}"
        );
    }
}
