//! Fuzz target: the receiver's step machine (`FrameMachine`, the same code
//! the standby's image streams run) over a real file-backed standby store
//! in a temporary directory, fed sequences of batches — intact, damaged,
//! resent, past a gap, raw frame bytes — with fsyncs, stream failures and
//! commits (some with impossible sizes). The property lives in
//! `tests/tests/common/receiver_frames_check.rs`, which `cargo test` also
//! runs over the committed corpus.
#![no_main]

#[path = "../../tests/tests/common/receiver_frames_check.rs"]
mod receiver_frames_check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    receiver_frames_check::check(data);
});
