//! Fuzz target: every JSON request body of the control API (operator and
//! peer routes, migrate steps included) through `check_request_body`, the
//! deserialisation and stateless checks the handlers apply. The first byte
//! picks the route. The agent's pure modules are compiled here directly
//! (`#[path]`), without ferry-agent. The property lives in
//! `tests/tests/common/api_bodies_check.rs`, which `cargo test` also runs
//! over the committed corpus.
#![no_main]
#![allow(dead_code, unused_imports)]

#[path = "../shared/agent_control.rs"]
mod control;

#[path = "../../agent/src/schedule.rs"]
mod schedule;

#[path = "../../agent/src/service_key.rs"]
mod service_key;

#[path = "../../agent/src/uri.rs"]
mod uri;

#[path = "../../agent/src/wire/bodies.rs"]
pub mod bodies;

// bodies.rs is `crate::wire::bodies` in the agent, re-exported as
// `crate::api::bodies`; the check names it so.
mod api {
    pub use crate::bodies;
}

#[path = "../../tests/tests/common/api_bodies_check.rs"]
mod api_bodies_check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    api_bodies_check::check(data);
});
