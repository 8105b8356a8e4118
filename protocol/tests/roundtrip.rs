//! Property tests: every valid message survives encode → decode unchanged,
//! whole or fed to the decoder in arbitrary pieces.

mod common;

use bytes::BytesMut;
use ferry_protocol::*;
use proptest::collection::vec;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn encode_then_decode_is_identity(message in common::message()) {
        let mut buf = common::encode(&message);
        prop_assert_eq!(buf.len(), message.encoded_len());
        prop_assert_eq!(buf[4], message.type_code());
        let decoded = FrameDecoder::default().decode(&mut buf).unwrap();
        prop_assert_eq!(decoded.as_ref(), Some(&message));
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn decode_frame_body_agrees_with_the_stream_decoder(message in common::message()) {
        let frame = common::encode(&message).freeze();
        let decoded = decode_frame_body(frame[4], frame.slice(FRAME_HEADER_LEN..)).unwrap();
        prop_assert_eq!(decoded, message);
    }

    #[test]
    fn header_plus_payload_equals_whole_frame(batch in common::extent_batch()) {
        let mut header = BytesMut::new();
        batch.encode_header(&mut header, DEFAULT_MAX_FRAME_LEN).unwrap();
        prop_assert_eq!(header.len(), batch.encoded_header_len());
        header.extend_from_slice(&batch.payload);
        prop_assert_eq!(header, common::encode(&Message::ExtentBatch(batch)));
    }

    #[test]
    fn streaming_decode_across_arbitrary_split_points(
        messages in vec(common::message(), 1..6),
        cuts in vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let mut stream = BytesMut::new();
        for message in &messages {
            stream.extend_from_slice(&common::encode(message));
        }
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
        points.push(0);
        points.push(stream.len());
        points.sort_unstable();
        points.dedup();

        let decoder = FrameDecoder::default();
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        for window in points.windows(2) {
            buf.extend_from_slice(&stream[window[0]..window[1]]);
            loop {
                let before = buf.len();
                match decoder.decode(&mut buf).unwrap() {
                    Some(message) => decoded.push(message),
                    None => {
                        prop_assert_eq!(buf.len(), before, "Ok(None) must not consume");
                        prop_assert!(decoder.bytes_needed(&buf).unwrap() > 0);
                        break;
                    }
                }
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(decoded, messages);
    }

    #[test]
    fn encoding_is_canonical(message in common::message()) {
        // Re-encoding a decoded frame gives the same bytes.
        let first = common::encode(&message);
        let decoded = FrameDecoder::default().decode(&mut first.clone()).unwrap().unwrap();
        prop_assert_eq!(common::encode(&decoded), first);
    }
}
