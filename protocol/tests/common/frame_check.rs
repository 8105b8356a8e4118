//! The property the `frame_decoder` fuzz target checks, shared (via
//! `#[path]`) with the `fuzz_corpus` test that replays the committed corpus
//! without cargo-fuzz: decoding any bytes never panics, a failed or
//! incomplete decode consumes nothing, and every decoded frame re-encodes to
//! exactly its input bytes and decodes again to the same message.

use bytes::{Bytes, BytesMut};
use ferry_protocol::{decode_frame_body, FrameDecoder, FRAME_HEADER_LEN};

/// Frame cap used while fuzzing: small enough to reach the limit checks.
pub const MAX_FRAME_LEN: usize = 64 * 1024;

/// Checks the property on one input; panics (a fuzz crash) if it fails.
pub fn check(data: &[u8]) {
    let decoder = FrameDecoder::new(MAX_FRAME_LEN);
    let mut buf = BytesMut::from(data);
    loop {
        let start = data.len() - buf.len();
        let needed = decoder.bytes_needed(&buf);
        match decoder.decode(&mut buf) {
            Ok(Some(message)) => {
                assert_eq!(
                    needed,
                    Ok(0),
                    "a frame decoded though bytes_needed said more were needed"
                );
                let frame = &data[start..data.len() - buf.len()];
                let mut again = BytesMut::new();
                message
                    .encode(&mut again, MAX_FRAME_LEN)
                    .expect("a decoded message must re-encode");
                assert_eq!(
                    &again[..],
                    frame,
                    "re-encoding gave different bytes for {message:?}"
                );
                let body = Bytes::copy_from_slice(&frame[FRAME_HEADER_LEN..]);
                assert_eq!(decode_frame_body(frame[4], body).as_ref(), Ok(&message));
                let redecoded = decoder
                    .decode(&mut again)
                    .expect("a re-encoded frame must decode")
                    .expect("a re-encoded frame is whole");
                assert_eq!(redecoded, message);
                assert!(again.is_empty());
            }
            Ok(None) => {
                assert_eq!(data.len() - buf.len(), start, "Ok(None) consumed bytes");
                assert!(
                    matches!(needed, Ok(n) if n > 0),
                    "Ok(None) but bytes_needed is {needed:?}"
                );
                break;
            }
            Err(err) => {
                assert_eq!(
                    data.len() - buf.len(),
                    start,
                    "a failed decode consumed bytes"
                );
                assert_eq!(
                    decoder.decode(&mut buf),
                    Err(err.clone()),
                    "errors must repeat"
                );
                // Every error must make a sendable Error frame.
                let mut out = BytesMut::new();
                ferry_protocol::Message::Error(err.to_error_frame())
                    .encode(&mut out, MAX_FRAME_LEN)
                    .expect("error frames always encode");
                break;
            }
        }
    }
    // The body decoder on its own, with the first byte as the type.
    if let Some((&frame_type, body)) = data.split_first() {
        let _ = decode_frame_body(frame_type, Bytes::copy_from_slice(body));
    }
}
