//! Tests of the codec: hand-built frames, every rejection rule, the frame
//! cap, and round trips of every message.

use super::*;
use crate::frame::EXTENT_HEADER_WIRE_LEN;
use crate::types::ImageNameError;
use crate::*;
use bytes::{BufMut, Bytes, BytesMut};

const MAX: usize = DEFAULT_MAX_FRAME_LEN;

fn name(s: &str) -> ImageName {
    ImageName::new(s).unwrap()
}

/// A whole frame around `body`, built by hand (not by the encoder).
fn frame(frame_type: u8, body: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    out.put_u32_le(u32::try_from(body.len() + 1).unwrap());
    out.put_u8(frame_type);
    out.put_slice(body);
    out
}

fn decode_one(mut buf: BytesMut) -> Result<Message, DecodeError> {
    let decoder = FrameDecoder::new(MAX);
    let before = buf.clone();
    match decoder.decode(&mut buf) {
        Ok(Some(message)) => {
            assert!(buf.is_empty(), "one frame must be consumed exactly");
            Ok(message)
        }
        Ok(None) => panic!("a whole frame was buffered but decode wants more"),
        Err(err) => {
            assert_eq!(
                buf, before,
                "a failed decode must leave the buffer untouched"
            );
            // decode_frame_body must agree with the streaming decoder.
            let body = before.clone().freeze().slice(FRAME_HEADER_LEN..);
            assert_eq!(decode_frame_body(before[4], body), Err(err.clone()));
            Err(err)
        }
    }
}

/// Raw extent on the wire: offset, length, kind, codec, encoded_len.
type RawExtent = (u64, u32, u8, u8, u32);

/// An ExtentBatch frame built field by field, so invalid batches can be made.
fn raw_batch(
    scan: (u64, u64),
    extents: &[RawExtent],
    count: Option<u32>,
    payload: &[u8],
) -> BytesMut {
    let mut body = BytesMut::new();
    body.put_u8(3);
    body.put_slice(b"vm1");
    body.put_u64_le(7); // epoch
    body.put_u64_le(2); // seq
    body.put_u64_le(scan.0);
    body.put_u64_le(scan.1);
    body.put_u32_le(0xdead_beef);
    body.put_slice(&[0xab; 32]);
    body.put_u32_le(count.unwrap_or(u32::try_from(extents.len()).unwrap()));
    for &(offset, length, kind, codec, encoded_len) in extents {
        body.put_u64_le(offset);
        body.put_u32_le(length);
        body.put_u8(kind);
        body.put_u8(codec);
        body.put_u32_le(encoded_len);
    }
    body.put_slice(payload);
    frame(0x05, &body)
}

const DATA: u8 = 0x01;
const ZERO: u8 = 0x02;
const DISCARD: u8 = 0x03;
const RAW: u8 = 0x00;
const ZSTD: u8 = 0x01;

fn valid_batch() -> ExtentBatch {
    ExtentBatch {
        image: name("vm1"),
        epoch: Epoch(7),
        seq: SeqNo(2),
        scan_start: 0,
        scan_end: 1 << 20,
        payload_crc32c: 0xdead_beef,
        plain_blake3: [0xab; 32],
        extents: vec![
            ExtentHeader {
                offset: 0,
                length: 4,
                kind: ExtentKind::Data,
                codec: Codec::Raw,
                encoded_len: 4,
            },
            ExtentHeader {
                offset: 4096,
                length: 4096,
                kind: ExtentKind::Zero,
                codec: Codec::Raw,
                encoded_len: 0,
            },
            ExtentHeader {
                offset: 8192,
                length: 4096,
                kind: ExtentKind::Data,
                codec: Codec::Zstd,
                encoded_len: 3,
            },
            ExtentHeader {
                offset: 12288,
                length: 512,
                kind: ExtentKind::Discard,
                codec: Codec::Raw,
                encoded_len: 0,
            },
        ],
        payload: Bytes::from_static(b"abcdXYZ"),
    }
}

fn invalid(err: Result<Message, DecodeError>) -> ValidationError {
    match err {
        Err(DecodeError::Invalid(v)) => v,
        other => panic!("expected a validation error, got {other:?}"),
    }
}

fn encode_err(message: impl Into<Message>) -> EncodeError {
    let message = message.into();
    let mut out = BytesMut::from(&b"keep"[..]);
    let err = message.encode(&mut out, MAX).unwrap_err();
    assert_eq!(
        &out[..],
        b"keep",
        "a failed encode must leave the output untouched"
    );
    err
}

#[test]
fn hand_built_valid_batch_decodes_to_the_expected_value() {
    let buf = raw_batch(
        (0, 1 << 20),
        &[
            (0, 4, DATA, RAW, 4),
            (4096, 4096, ZERO, RAW, 0),
            (8192, 4096, DATA, ZSTD, 3),
            (12288, 512, DISCARD, RAW, 0),
        ],
        None,
        b"abcdXYZ",
    );
    assert_eq!(decode_one(buf), Ok(Message::ExtentBatch(valid_batch())));
}

#[test]
fn batch_payload_is_a_zero_copy_slice_of_the_input() {
    let mut buf = BytesMut::new();
    Message::ExtentBatch(valid_batch())
        .encode(&mut buf, MAX)
        .unwrap();
    let payload_at = buf.len() - 7;
    let expected_ptr = buf[payload_at..].as_ptr();
    let Some(Message::ExtentBatch(batch)) = FrameDecoder::new(MAX).decode(&mut buf).unwrap() else {
        panic!("expected a batch");
    };
    assert_eq!(
        batch.payload.as_ptr(),
        expected_ptr,
        "FrameDecoder copied the payload"
    );

    let mut buf = BytesMut::new();
    Message::ExtentBatch(valid_batch())
        .encode(&mut buf, MAX)
        .unwrap();
    let body = buf.freeze().slice(FRAME_HEADER_LEN..);
    let expected_ptr = body[body.len() - 7..].as_ptr();
    let Message::ExtentBatch(batch) = decode_frame_body(0x05, body).unwrap() else {
        panic!("expected a batch");
    };
    assert_eq!(
        batch.payload.as_ptr(),
        expected_ptr,
        "decode_frame_body copied the payload"
    );
}

#[test]
fn encode_header_omits_only_the_payload() {
    let batch = valid_batch();
    let mut whole = BytesMut::new();
    Message::ExtentBatch(batch.clone())
        .encode(&mut whole, MAX)
        .unwrap();
    let mut header = BytesMut::new();
    batch.encode_header(&mut header, MAX).unwrap();
    assert_eq!(header.len(), batch.encoded_header_len());
    assert_eq!(header.len() + batch.payload.len(), whole.len());
    assert_eq!(&whole[..header.len()], &header[..]);
    header.extend_from_slice(&batch.payload);
    assert_eq!(decode_one(header), Ok(Message::ExtentBatch(batch)));
}

#[test]
fn unknown_frame_type_is_rejected() {
    for code in [0x00u8, 0x0C, 0x7E, 0x80, 0xFF] {
        assert_eq!(
            decode_one(frame(code, &[])),
            Err(DecodeError::UnknownFrameType { frame_type: code })
        );
    }
}

#[test]
fn empty_frame_is_rejected() {
    let buf = BytesMut::from(&[0u8, 0, 0, 0][..]);
    let decoder = FrameDecoder::new(MAX);
    let mut copy = buf.clone();
    assert_eq!(decoder.decode(&mut copy), Err(DecodeError::EmptyFrame));
    assert_eq!(copy, buf);
    assert_eq!(decoder.bytes_needed(&buf), Err(DecodeError::EmptyFrame));
}

#[test]
fn oversized_length_is_rejected_from_the_length_field_alone() {
    let decoder = FrameDecoder::new(1000);
    // Only the 4 length bytes are buffered: the decoder must not wait for the body.
    let mut buf = BytesMut::from(&1001u32.to_le_bytes()[..]);
    assert_eq!(
        decoder.decode(&mut buf),
        Err(DecodeError::FrameTooLarge {
            len: 1001,
            max: 1000
        })
    );
    assert_eq!(
        decoder.bytes_needed(&buf),
        Err(DecodeError::FrameTooLarge {
            len: 1001,
            max: 1000
        })
    );
    assert_eq!(buf.len(), 4);
    // Exactly at the cap is fine (and needs the rest of the frame).
    let buf = BytesMut::from(&1000u32.to_le_bytes()[..]);
    assert_eq!(decoder.bytes_needed(&buf), Ok(1000));
    let mut buf = BytesMut::from(&u32::MAX.to_le_bytes()[..]);
    assert!(matches!(
        FrameDecoder::default().decode(&mut buf),
        Err(DecodeError::FrameTooLarge { .. })
    ));
}

#[test]
fn bytes_needed_and_partial_frames() {
    let mut full = BytesMut::new();
    Message::Committed(Committed {
        recovery_point: RecoveryPointId(9),
    })
    .encode(&mut full, MAX)
    .unwrap();
    assert_eq!(full.len(), FRAME_HEADER_LEN + 8);
    let decoder = FrameDecoder::new(MAX);
    for cut in 0..full.len() {
        let mut partial = BytesMut::from(&full[..cut]);
        let expected = if cut < 4 { 4 - cut } else { full.len() - cut };
        assert_eq!(decoder.bytes_needed(&partial), Ok(expected), "cut at {cut}");
        assert_eq!(decoder.decode(&mut partial), Ok(None));
        assert_eq!(
            &partial[..],
            &full[..cut],
            "Ok(None) must leave the buffer untouched"
        );
    }
    assert_eq!(decoder.bytes_needed(&full), Ok(0));
}

#[test]
fn decodes_back_to_back_frames_one_at_a_time() {
    let messages = [
        Message::Committed(Committed {
            recovery_point: RecoveryPointId(1),
        }),
        Message::ExtentBatch(valid_batch()),
        Message::Ack(Ack {
            image: name("a"),
            epoch: Epoch(1),
            durable_seq: SeqNo(2),
        }),
    ];
    let mut buf = BytesMut::new();
    for m in &messages {
        m.encode(&mut buf, MAX).unwrap();
    }
    let decoder = FrameDecoder::new(MAX);
    for m in &messages {
        assert_eq!(decoder.decode(&mut buf).unwrap().as_ref(), Some(m));
    }
    assert!(buf.is_empty());
    assert_eq!(decoder.decode(&mut buf), Ok(None));
}

#[test]
fn truncated_bodies_are_rejected() {
    // Ack: name "a", epoch, durable_seq; cut off inside durable_seq.
    let mut body = vec![1, b'a'];
    body.extend_from_slice(&5u64.to_le_bytes());
    body.extend_from_slice(&[1, 2, 3]);
    assert_eq!(
        decode_one(frame(0x08, &body)),
        Err(DecodeError::Truncated {
            frame: FrameType::Ack,
            field: "durable_seq",
            offset: 10,
            needed: 8,
            available: 3
        })
    );
    // Image name length byte says 9 but 2 bytes follow.
    assert_eq!(
        decode_one(frame(0x03, &[9, b'a', b'b'])),
        Err(DecodeError::Truncated {
            frame: FrameType::ResumeQuery,
            field: "image",
            offset: 1,
            needed: 9,
            available: 2
        })
    );
    // Committed with an empty body.
    assert!(matches!(
        decode_one(frame(0x07, &[])),
        Err(DecodeError::Truncated {
            field: "recovery_point",
            ..
        })
    ));
    // A batch cut inside its extent table.
    let mut buf = raw_batch((0, 10), &[(0, 4, DATA, RAW, 4)], None, b"");
    buf.truncate(buf.len() - 1);
    let len = u32::try_from(buf.len() - 4).unwrap();
    buf[..4].copy_from_slice(&len.to_le_bytes());
    // 17 of the 18 extent bytes are left, so the count check fails first.
    assert!(matches!(
        decode_one(buf),
        Err(DecodeError::CountExceedsBody {
            field: "extents",
            count: 1,
            ..
        })
    ));
}

#[test]
fn trailing_bytes_are_rejected_for_every_fixed_frame() {
    for message in sample_messages() {
        if matches!(message, Message::ExtentBatch(_)) {
            continue; // its tail is the payload
        }
        let mut buf = BytesMut::new();
        message.encode(&mut buf, MAX).unwrap();
        let body_end = buf.len() - FRAME_HEADER_LEN;
        buf.put_u8(0);
        let len = u32::try_from(buf.len() - 4).unwrap();
        buf[..4].copy_from_slice(&len.to_le_bytes());
        assert_eq!(
            decode_one(buf),
            Err(DecodeError::TrailingBytes {
                frame: message.frame_type(),
                offset: body_end,
                len: 1
            }),
            "{message:?}"
        );
    }
}

#[test]
fn bad_image_names_are_rejected() {
    let cases: [(&[u8], ImageNameError); 4] = [
        (b"", ImageNameError::Empty),
        (b"../etc", ImageNameError::BadFirstCharacter),
        (
            b"a/b",
            ImageNameError::BadCharacter {
                byte: b'/',
                position: 1,
            },
        ),
        (
            b"a\0",
            ImageNameError::BadCharacter {
                byte: 0,
                position: 1,
            },
        ),
    ];
    for (raw, why) in cases {
        let mut body = vec![u8::try_from(raw.len()).unwrap()];
        body.extend_from_slice(raw);
        body.extend_from_slice(&1u64.to_le_bytes());
        assert_eq!(
            decode_one(frame(0x03, &body)),
            Err(DecodeError::BadImageName {
                frame: FrameType::ResumeQuery,
                field: "image",
                offset: 0,
                source: why
            })
        );
    }
    let mut body = vec![200u8];
    body.extend_from_slice(&[b'a'; 200]);
    body.extend_from_slice(&1u64.to_le_bytes());
    assert!(matches!(
        decode_one(frame(0x03, &body)),
        Err(DecodeError::BadImageName {
            source: ImageNameError::TooLong { len: 200 },
            ..
        })
    ));
}

#[test]
fn unknown_kind_codec_and_nack_reason_are_rejected() {
    let buf = raw_batch(
        (0, 10),
        &[(0, 4, DATA, RAW, 4), (8, 1, 0x04, RAW, 0)],
        None,
        b"abcd",
    );
    assert_eq!(
        decode_one(buf),
        Err(DecodeError::UnknownExtentKind {
            index: 1,
            code: 0x04
        })
    );
    let buf = raw_batch((0, 10), &[(0, 4, DATA, 0x02, 4)], None, b"abcd");
    assert_eq!(
        decode_one(buf),
        Err(DecodeError::UnknownCodec {
            index: 0,
            code: 0x02
        })
    );
    let mut body = vec![1, b'a'];
    body.extend_from_slice(&1u64.to_le_bytes());
    body.extend_from_slice(&1u64.to_le_bytes());
    body.push(0x00);
    assert_eq!(
        decode_one(frame(0x09, &body)),
        Err(DecodeError::UnknownNackReason { code: 0 })
    );
    *body.last_mut().unwrap() = 0x04;
    assert_eq!(
        decode_one(frame(0x09, &body)),
        Err(DecodeError::UnknownNackReason { code: 4 })
    );
    *body.last_mut().unwrap() = 0x03;
    assert!(decode_one(frame(0x09, &body)).is_ok());
}

#[test]
fn overlapping_and_unordered_extents_are_rejected() {
    let buf = raw_batch(
        (0, 1 << 20),
        &[
            (0, 4096, ZERO, RAW, 0),
            (4096, 4096, ZERO, RAW, 0),
            (6144, 2048, ZERO, RAW, 0),
            (4096, 1, ZERO, RAW, 0),
        ],
        None,
        b"",
    );
    let err = invalid(decode_one(buf));
    assert_eq!(
        err,
        ValidationError::ExtentOverlap {
            index: 2,
            offset: 6144,
            previous: 1,
            previous_end: 8192
        }
    );
    assert_eq!(
        err.to_string(),
        "ExtentBatch: extent 2 overlaps extent 1 (offset 6144 < 8192)"
    );

    let buf = raw_batch(
        (0, 1 << 20),
        &[(8192, 1, ZERO, RAW, 0), (4096, 1, ZERO, RAW, 0)],
        None,
        b"",
    );
    assert_eq!(
        invalid(decode_one(buf)),
        ValidationError::ExtentOutOfOrder {
            index: 1,
            offset: 4096,
            previous: 0,
            previous_offset: 8192
        }
    );
    // Same offset twice is neither ascending nor disjoint.
    let buf = raw_batch(
        (0, 1 << 20),
        &[(0, 1, ZERO, RAW, 0), (0, 1, ZERO, RAW, 0)],
        None,
        b"",
    );
    assert!(matches!(
        invalid(decode_one(buf)),
        ValidationError::ExtentOverlap { index: 1, .. }
    ));
    // Adjacent extents are fine.
    let buf = raw_batch(
        (0, 1 << 20),
        &[(0, 1, ZERO, RAW, 0), (1, 1, ZERO, RAW, 0)],
        None,
        b"",
    );
    assert!(decode_one(buf).is_ok());

    let mut batch = valid_batch();
    batch.extents.swap(1, 3);
    assert!(matches!(
        encode_err(batch),
        EncodeError::Invalid(ValidationError::ExtentOutOfOrder { index: 2, .. })
    ));
}

#[test]
fn zero_length_and_overflowing_extents_are_rejected() {
    let buf = raw_batch((0, 10), &[(5, 0, ZERO, RAW, 0)], None, b"");
    assert_eq!(
        invalid(decode_one(buf)),
        ValidationError::ZeroLengthExtent {
            index: 0,
            offset: 5
        }
    );
    let buf = raw_batch((0, 10), &[(u64::MAX - 1, 2, ZERO, RAW, 0)], None, b"");
    assert_eq!(
        invalid(decode_one(buf)),
        ValidationError::ExtentEndOverflow {
            index: 0,
            offset: u64::MAX - 1,
            length: 2
        }
    );
    // Ending exactly at 2^64 - 1 is representable.
    let buf = raw_batch((0, 10), &[(u64::MAX - 2, 2, ZERO, RAW, 0)], None, b"");
    assert!(decode_one(buf).is_ok());

    let mut batch = valid_batch();
    batch.extents[1].length = 0;
    assert!(matches!(
        encode_err(batch),
        EncodeError::Invalid(ValidationError::ZeroLengthExtent { index: 1, .. })
    ));
    let mut batch = valid_batch();
    batch.extents.truncate(3);
    batch.extents[2].offset = u64::MAX - 100;
    assert!(matches!(
        encode_err(batch),
        EncodeError::Invalid(ValidationError::ExtentEndOverflow { index: 2, .. })
    ));
}

#[test]
fn non_data_extents_must_be_raw_and_empty() {
    for (kind, codec, encoded_len) in [
        (ZERO, ZSTD, 0),
        (ZERO, RAW, 1),
        (DISCARD, ZSTD, 0),
        (DISCARD, RAW, 4),
    ] {
        let payload = vec![0u8; encoded_len as usize];
        let buf = raw_batch((0, 10), &[(0, 4, kind, codec, encoded_len)], None, &payload);
        assert!(
            matches!(
                invalid(decode_one(buf)),
                ValidationError::NonDataExtentWithPayload { index: 0, .. }
            ),
            "kind {kind} codec {codec} encoded_len {encoded_len}"
        );
    }
    let mut batch = valid_batch();
    batch.extents[1].codec = Codec::Zstd;
    assert!(matches!(
        encode_err(batch),
        EncodeError::Invalid(ValidationError::NonDataExtentWithPayload { index: 1, .. })
    ));
}

#[test]
fn data_extent_sizes_must_match() {
    let buf = raw_batch((0, 10), &[(0, 4, DATA, RAW, 3)], None, b"abc");
    assert_eq!(
        invalid(decode_one(buf)),
        ValidationError::RawLengthMismatch {
            index: 0,
            length: 4,
            encoded_len: 3
        }
    );
    let buf = raw_batch((0, 10), &[(0, 4, DATA, ZSTD, 0)], None, b"");
    assert_eq!(
        invalid(decode_one(buf)),
        ValidationError::EmptyZstdExtent { index: 0 }
    );
    // A zstd extent may be larger than its plain length (incompressible data).
    let buf = raw_batch((0, 10), &[(0, 4, DATA, ZSTD, 9)], None, b"123456789");
    assert!(decode_one(buf).is_ok());
}

#[test]
fn payload_length_must_equal_the_sum_of_encoded_lengths() {
    let buf = raw_batch((0, 10), &[(0, 4, DATA, RAW, 4)], None, b"abcde");
    assert_eq!(
        invalid(decode_one(buf)),
        ValidationError::PayloadLengthMismatch {
            expected: 4,
            actual: 5
        }
    );
    let buf = raw_batch(
        (0, 10),
        &[(0, 4, DATA, RAW, 4), (4, 4, DATA, ZSTD, 2)],
        None,
        b"abcd",
    );
    assert_eq!(
        invalid(decode_one(buf)),
        ValidationError::PayloadLengthMismatch {
            expected: 6,
            actual: 4
        }
    );
    let buf = raw_batch((0, 10), &[], None, b"x");
    assert_eq!(
        invalid(decode_one(buf)),
        ValidationError::PayloadLengthMismatch {
            expected: 0,
            actual: 1
        }
    );
    // An empty batch (no extents, no payload) only moves scan_end forward.
    assert!(decode_one(raw_batch((0, 10), &[], None, b"")).is_ok());

    let mut batch = valid_batch();
    batch.payload = Bytes::from_static(b"abcdXY");
    assert_eq!(
        encode_err(batch.clone()),
        EncodeError::Invalid(ValidationError::PayloadLengthMismatch {
            expected: 7,
            actual: 6
        })
    );
    let mut out = BytesMut::new();
    assert!(batch.encode_header(&mut out, MAX).is_err());
    assert!(out.is_empty());
}

#[test]
fn reversed_scan_range_is_rejected() {
    let buf = raw_batch((11, 10), &[], None, b"");
    assert_eq!(
        invalid(decode_one(buf)),
        ValidationError::ScanRangeReversed {
            scan_start: 11,
            scan_end: 10
        }
    );
    assert!(decode_one(raw_batch((10, 10), &[], None, b"")).is_ok());
    let mut batch = valid_batch();
    batch.scan_start = batch.scan_end + 1;
    assert!(matches!(
        encode_err(batch),
        EncodeError::Invalid(ValidationError::ScanRangeReversed { .. })
    ));
}

#[test]
fn counts_are_capped_and_checked_against_the_body_before_allocating() {
    let buf = raw_batch((0, 10), &[], Some(65_537), b"");
    assert_eq!(
        invalid(decode_one(buf)),
        ValidationError::TooManyElements {
            frame: FrameType::ExtentBatch,
            field: "extents",
            count: 65_537,
            max: 65_536
        }
    );
    // A count within the cap but larger than the body: refused before allocating.
    let buf = raw_batch((0, 10), &[], Some(65_536), &[0u8; 100]);
    assert!(matches!(
        decode_one(buf),
        Err(DecodeError::CountExceedsBody { count: 65_536, needed, available: 100, .. })
            if needed == 65_536 * EXTENT_HEADER_WIRE_LEN as u64
    ));

    let mut body = Vec::new();
    body.extend_from_slice(&1u64.to_le_bytes());
    body.extend_from_slice(&2u64.to_le_bytes());
    body.push(0);
    body.extend_from_slice(&1025u32.to_le_bytes());
    assert!(matches!(
        invalid(decode_one(frame(0x06, &body))),
        ValidationError::TooManyElements {
            field: "images",
            count: 1025,
            max: 1024,
            ..
        }
    ));
    body.truncate(17);
    body.extend_from_slice(&1u32.to_le_bytes());
    body.extend_from_slice(&[0u8; 25]); // one short of the 26-byte minimum image
    assert!(matches!(
        decode_one(frame(0x06, &body)),
        Err(DecodeError::CountExceedsBody {
            field: "images",
            ..
        })
    ));

    let mut answer = sample_hash_answer();
    answer.hashes = vec![[0; 32]; 65_537];
    assert!(matches!(
        encode_err(answer.clone()),
        EncodeError::Invalid(ValidationError::TooManyElements {
            field: "hashes",
            ..
        })
    ));
    let mut buf = BytesMut::new();
    answer.hashes.truncate(2);
    Message::HashAnswer(answer).encode(&mut buf, MAX).unwrap();
    let count_at = buf.len() - 2 * 32 - 4;
    buf[count_at..count_at + 4].copy_from_slice(&3u32.to_le_bytes());
    assert!(matches!(
        decode_one(buf),
        Err(DecodeError::CountExceedsBody {
            field: "hashes",
            count: 3,
            needed: 96,
            available: 64,
            ..
        })
    ));

    let mut commit = sample_commit();
    commit.images = vec![commit.images[0].clone(); 1025];
    assert!(matches!(
        encode_err(commit),
        EncodeError::Invalid(ValidationError::TooManyElements { .. })
    ));
}

#[test]
fn strings_must_be_utf8_and_short() {
    let mut body = vec![0x01, 0x00, 0x02, 0x00, 0xff, 0xfe];
    assert!(matches!(
        decode_one(frame(0x7F, &body)),
        Err(DecodeError::BadUtf8 {
            frame: FrameType::Error,
            field: "message",
            offset: 2,
            ..
        })
    ));
    body.truncate(2);
    body.extend_from_slice(&4097u16.to_le_bytes());
    body.extend_from_slice(&[b'x'; 4097]);
    assert_eq!(
        invalid(decode_one(frame(0x7F, &body))),
        ValidationError::StringTooLong {
            frame: FrameType::Error,
            field: "message",
            len: 4097,
            max: 4096
        }
    );
    let err = encode_err(ErrorFrame {
        code: ErrorCode::Internal,
        message: "x".repeat(4097),
    });
    assert!(matches!(
        err,
        EncodeError::Invalid(ValidationError::StringTooLong { len: 4097, .. })
    ));
    // ErrorFrame::new cuts at a character boundary so the frame always encodes.
    let frame_ = ErrorFrame::new(ErrorCode::Internal, "é".repeat(3000));
    assert_eq!(frame_.message.len(), 4096);
    let mut out = BytesMut::new();
    Message::Error(frame_).encode(&mut out, MAX).unwrap();
    let frame_ = ErrorFrame::new(ErrorCode::Internal, format!("x{}", "é".repeat(3000)));
    assert_eq!(frame_.message.len(), 4095);
}

#[test]
fn booleans_must_be_zero_or_one() {
    let mut body = Vec::new();
    body.extend_from_slice(&1u64.to_le_bytes());
    body.extend_from_slice(&2u64.to_le_bytes());
    body.push(2);
    body.extend_from_slice(&0u32.to_le_bytes());
    assert_eq!(
        decode_one(frame(0x06, &body)),
        Err(DecodeError::BadBool {
            frame: FrameType::Commit,
            field: "fuzzy",
            offset: 16,
            value: 2
        })
    );
    body[16] = 1;
    assert!(matches!(
        decode_one(frame(0x06, &body)),
        Ok(Message::Commit(Commit { fuzzy: true, .. }))
    ));
}

#[test]
fn hash_request_rules() {
    let request = |offset: u64, length: u64, granularity: u32| {
        let mut body = vec![1, b'a'];
        body.extend_from_slice(&offset.to_le_bytes());
        body.extend_from_slice(&length.to_le_bytes());
        body.extend_from_slice(&granularity.to_le_bytes());
        decode_one(frame(0x0A, &body))
    };
    assert_eq!(
        invalid(request(0, 10, 0)),
        ValidationError::ZeroGranularity {
            frame: FrameType::HashRequest
        }
    );
    assert_eq!(
        invalid(request(u64::MAX, 1, 1)),
        ValidationError::HashRangeOverflow {
            offset: u64::MAX,
            length: 1
        }
    );
    assert!(matches!(
        invalid(request(0, 65_537, 1)),
        ValidationError::TooManyGranules {
            granules: 65_537,
            ..
        }
    ));
    assert!(request(0, 65_536, 1).is_ok());
    assert!(request(0, 65_536 * 4096, 4096).is_ok());
    assert!(invalid(request(0, 65_536 * 4096 + 1, 4096))
        .to_string()
        .contains("65537 hashes"));
    assert!(request(0, 0, 1).is_ok());

    let mut answer = sample_hash_answer();
    answer.granularity = 0;
    assert!(matches!(
        encode_err(answer),
        EncodeError::Invalid(ValidationError::ZeroGranularity { .. })
    ));
}

#[test]
fn error_codes_must_be_canonical_to_encode() {
    let err = encode_err(ErrorFrame {
        code: ErrorCode::Unknown(0x0002),
        message: String::new(),
    });
    assert_eq!(
        err,
        EncodeError::Invalid(ValidationError::NonCanonicalErrorCode { code: 2 })
    );
    let mut out = BytesMut::new();
    let unknown = Message::Error(ErrorFrame {
        code: ErrorCode::Unknown(0x1234),
        message: "later".into(),
    });
    unknown.encode(&mut out, MAX).unwrap();
    assert_eq!(decode_one(out), Ok(unknown));
}

#[test]
fn encoding_respects_the_frame_cap() {
    let message = Message::ExtentBatch(valid_batch());
    let len = message.encoded_len() - 4;
    let mut out = BytesMut::from(&b"keep"[..]);
    assert_eq!(
        message.encode(&mut out, len - 1),
        Err(EncodeError::FrameTooLarge {
            frame: FrameType::ExtentBatch,
            len,
            max: len - 1
        })
    );
    let Message::ExtentBatch(batch) = &message else {
        unreachable!()
    };
    assert!(batch.encode_header(&mut out, len - 1).is_err());
    assert_eq!(&out[..], b"keep");
    message.encode(&mut out, len).unwrap();
    assert_eq!(out.len(), 4 + message.encoded_len());

    let ack = Message::Ack(Ack {
        image: name("a"),
        epoch: Epoch(1),
        durable_seq: SeqNo(1),
    });
    assert!(matches!(
        ack.encode(&mut out, 10),
        Err(EncodeError::FrameTooLarge {
            frame: FrameType::Ack,
            ..
        })
    ));
    // The decoder applies the same cap.
    let mut buf = BytesMut::new();
    message.encode(&mut buf, len).unwrap();
    assert!(matches!(
        FrameDecoder::new(len - 1).decode(&mut buf),
        Err(DecodeError::FrameTooLarge { .. })
    ));
    assert!(FrameDecoder::new(len).decode(&mut buf).unwrap().is_some());
}

#[test]
fn decode_errors_map_to_malformed_error_frames() {
    let err = DecodeError::UnknownFrameType { frame_type: 0x42 };
    let frame_ = err.to_error_frame();
    assert_eq!(frame_.code, ErrorCode::Malformed);
    assert_eq!(frame_.message, "unknown frame type 0x42");
    let mut out = BytesMut::new();
    Message::Error(frame_).encode(&mut out, MAX).unwrap();
}

fn sample_commit() -> Commit {
    Commit {
        recovery_point: RecoveryPointId(3),
        created_unix_ms: 1_700_000_000_000,
        fuzzy: false,
        images: vec![CommitImage {
            image: name("vm1"),
            epoch: Epoch(7),
            last_seq: SeqNo(9),
            size: 1 << 30,
        }],
    }
}

fn sample_hash_answer() -> HashAnswer {
    HashAnswer {
        image: name("vm1"),
        recovery_point: RecoveryPointId(3),
        image_size: 1 << 30,
        offset: 0,
        granularity: 1 << 20,
        hashes: vec![[1; 32], [2; 32]],
    }
}

fn sample_messages() -> Vec<Message> {
    vec![
        Message::Hello(Hello::new(
            AgentId([5; 32]),
            Capabilities(Capabilities::ZSTD),
        )),
        Message::OpenImage(OpenImage {
            image: name("vm1"),
            size: 1 << 30,
            block_size: 4096,
            epoch: Epoch(7),
            base_epoch: Epoch(6),
        }),
        Message::ResumeQuery(ResumeQuery {
            image: name("vm1"),
            epoch: Epoch(7),
        }),
        Message::ResumeAnswer(ResumeAnswer {
            image: name("vm1"),
            epoch: Epoch(7),
            committed_epoch: Epoch(6),
            durable_seq: SeqNo(4),
            resume_offset: 1 << 24,
        }),
        Message::ExtentBatch(valid_batch()),
        Message::Commit(sample_commit()),
        Message::Committed(Committed {
            recovery_point: RecoveryPointId(3),
        }),
        Message::Ack(Ack {
            image: name("vm1"),
            epoch: Epoch(7),
            durable_seq: SeqNo(4),
        }),
        Message::Nack(Nack {
            image: name("vm1"),
            epoch: Epoch(7),
            seq: SeqNo(5),
            reason: NackReason::PlainBlake3,
        }),
        Message::HashRequest(HashRequest {
            image: name("vm1"),
            offset: 0,
            length: 1 << 30,
            granularity: 1 << 20,
        }),
        Message::HashAnswer(sample_hash_answer()),
        Message::Error(ErrorFrame::new(
            ErrorCode::Busy,
            "image vm1 is held by another session",
        )),
    ]
}

#[test]
fn every_sample_round_trips_and_reports_its_type_code() {
    let samples = sample_messages();
    let codes: Vec<u8> = samples.iter().map(Message::type_code).collect();
    assert_eq!(
        codes,
        FrameType::ALL.iter().map(|t| t.code()).collect::<Vec<_>>()
    );
    for message in samples {
        let mut buf = BytesMut::new();
        message.encode(&mut buf, MAX).unwrap();
        assert_eq!(buf.len(), message.encoded_len());
        assert_eq!(buf[4], message.type_code());
        assert_eq!(decode_one(buf), Ok(message));
    }
}
