//! Fuzz target: feeds arbitrary bytes to `FrameDecoder::decode` frame after
//! frame; every decoded message must re-encode to exactly its input bytes
//! and decode again to the same message. The property lives in
//! `protocol/tests/common/frame_check.rs`, which a normal `cargo test` also
//! runs over the committed corpus.
#![no_main]

#[path = "../../protocol/tests/common/frame_check.rs"]
mod frame_check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    frame_check::check(data);
});
