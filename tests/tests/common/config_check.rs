//! Property of the `config` fuzz target, shared with the corpus replay in
//! `tests/tests/fuzz_corpus.rs`: the agent's TOML config parser
//! (`AgentConfig::parse`) never panics on any text, answers the same way
//! twice, and every refusal names the file it was given.

use std::path::Path;

use crate::config::AgentConfig;

/// Checks one input (bytes that are not UTF-8 are read lossily, as an
/// operator's editor might have saved them).
pub fn check(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let path = Path::new("fuzz/config.toml");
    let first = AgentConfig::parse(&text, path);
    let second = AgentConfig::parse(&text, path);
    match (&first, &second) {
        (Ok(a), Ok(b)) => assert_eq!(
            format!("{a:?}"),
            format!("{b:?}"),
            "parse is not deterministic"
        ),
        (Err(a), Err(b)) => {
            assert_eq!(a.to_string(), b.to_string(), "refusal is not deterministic");
            assert!(
                a.to_string().contains("fuzz/config.toml"),
                "refusal without the file: {a}"
            );
        }
        _ => panic!("the same text parsed once and was refused once"),
    }
}
