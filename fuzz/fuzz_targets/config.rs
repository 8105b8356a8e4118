//! Fuzz target: arbitrary text through the agent's TOML config parser
//! (`AgentConfig::parse`). The parser's modules are compiled here directly
//! (`#[path]`) so this crate does not depend on ferry-agent's daemon stack.
//! The property lives in `tests/tests/common/config_check.rs`, which a
//! normal `cargo test` also runs over the committed corpus.
#![no_main]
#![allow(dead_code, unused_imports)]

#[path = "../../agent/src/units.rs"]
mod units;

#[path = "../../agent/src/config.rs"]
mod config;

#[path = "../../tests/tests/common/config_check.rs"]
mod config_check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    config_check::check(data);
});
