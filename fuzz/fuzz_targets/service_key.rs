//! Fuzz target: arbitrary text through the service key decoder
//! (`ServiceKey::decode`); accepted keys must survive encode → decode. The
//! decoder's module is compiled here directly (`#[path]`), without
//! ferry-agent. The property lives in
//! `tests/tests/common/service_key_check.rs`, which `cargo test` also runs
//! over the committed corpus.
#![no_main]
#![allow(dead_code, unused_imports)]

#[path = "../shared/agent_control.rs"]
mod control;

#[path = "../../agent/src/service_key.rs"]
mod service_key;

#[path = "../../tests/tests/common/service_key_check.rs"]
mod service_key_check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    service_key_check::check(data);
});
