//! Fuzz target: the lease machine of a protection group
//! (`agent/src/placement/lease.rs`, compiled here directly) in a simulated
//! site of two or three agents, a store with a lock, holder records and a
//! blocklist, random delays, lost messages and stopped agents. The
//! property lives in `tests/tests/common/lease_check.rs`, which `cargo
//! test` (`tests/tests/lease_world.rs`) also runs over the committed corpus
//! and over random inputs.
#![no_main]

#[path = "../../agent/src/placement/lease.rs"]
mod lease;

mod placement {
    pub(crate) use crate::lease;
}

#[path = "../../tests/tests/common/lease_check.rs"]
mod lease_check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    lease_check::check(data);
});
