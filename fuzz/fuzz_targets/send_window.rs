//! Fuzz target: the sender's unacknowledged-batch window (`SendWindow`, the
//! same code `transfer_image` runs, with no I/O) fed sequences of pushes,
//! acks, Nacks and reopens after a reconnect. The property lives in
//! `engine/tests/common/send_window_check.rs`, which `cargo test` also runs
//! over the committed corpus and over random inputs.
#![no_main]

#[path = "../../engine/tests/common/send_window_check.rs"]
mod send_window_check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    send_window_check::check(data);
});
