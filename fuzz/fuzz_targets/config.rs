//! Fuzz target: arbitrary text through the agent's TOML config parser
//! (`AgentConfig::parse`). The parser's modules are compiled here directly
//! (`#[path]`) so this crate does not depend on ferry-agent's daemon stack.
//! The property lives in `tests/tests/common/config_check.rs`, which a
//! normal `cargo test` also runs over the committed corpus.
#![no_main]
#![allow(dead_code, unused_imports)]

#[path = "../../agent/src/units.rs"]
mod units;

// The directory, not the file: `config.rs` then loads as an ordinary file
// module and finds its submodule at `config/control.rs` (a `#[path]` file
// would look for `control` beside itself, the agent's control store).
#[path = "../../agent/src"]
mod agent_src {
    pub mod config;
}
use agent_src::config;

#[path = "../../tests/tests/common/config_check.rs"]
mod config_check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    config_check::check(data);
});
