//! Fuzz target: arbitrary bytes through the rbd diff parser
//! (`ferry_engine::rbddiff::Parser`). It must never panic, must give the
//! same result whole or in pieces, and every accepted stream must re-encode
//! through the writer and parse back to the same events. The property lives
//! in `tests/tests/common/rbd_diff_check.rs`, which `cargo test` also runs
//! over the committed corpus.
#![no_main]

#[path = "../../tests/tests/common/rbd_diff_check.rs"]
mod rbd_diff_check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    rbd_diff_check::check(data);
});
