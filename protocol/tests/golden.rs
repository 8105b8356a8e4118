//! Golden-byte tests: the exact bytes of one instance of every frame,
//! written out by hand from `PROTOCOL.md`. A change to any layout fails here;
//! if it was intended, it needs a new protocol version, not a new golden.

use bytes::{Bytes, BytesMut};
use ferry_protocol::*;

/// Concatenates hex fragments (whitespace ignored) into bytes.
fn hex(parts: &[&str]) -> Vec<u8> {
    let digits: String = parts
        .concat()
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    assert_eq!(digits.len() % 2, 0, "odd number of hex digits");
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).unwrap())
        .collect()
}

fn name(s: &str) -> ImageName {
    ImageName::new(s).unwrap()
}

const VM1: &str = "03 766d31"; // image name "vm1": len 3, bytes

/// Encodes `message`, compares with `expected`, and decodes `expected` back.
fn check(message: Message, expected: &[u8]) {
    let mut out = BytesMut::new();
    message.encode(&mut out, DEFAULT_MAX_FRAME_LEN).unwrap();
    assert_eq!(
        out.as_ref(),
        expected,
        "{:?} encodes to\n{}\nexpected\n{}",
        message.frame_type(),
        to_hex(&out),
        to_hex(expected)
    );
    let length = u32::from_le_bytes(expected[..4].try_into().unwrap()) as usize;
    assert_eq!(
        length,
        expected.len() - 4,
        "length field counts every byte after it"
    );
    assert_eq!(message.encoded_len(), expected.len());
    let mut buf = BytesMut::from(expected);
    let decoded = FrameDecoder::default().decode(&mut buf).unwrap();
    assert_eq!(decoded, Some(message));
    assert!(buf.is_empty());
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn hello() {
    let message = Message::Hello(Hello {
        min_version: 1,
        max_version: 1,
        agent_id: AgentId([0x11; 32]),
        capabilities: Capabilities(
            Capabilities::ZSTD | Capabilities::DISCARD | Capabilities::VERIFY,
        ),
    });
    let expected = hex(&[
        "2d000000",         // length 45
        "01",               // type Hello
        "0100",             // min_version 1
        "0100",             // max_version 1
        &"11".repeat(32),   // agent_id
        "0700000000000000", // capabilities ZSTD|DISCARD|VERIFY
    ]);
    check(message, &expected);
}

#[test]
fn open_image() {
    let message = Message::OpenImage(OpenImage {
        image: name("vm1"),
        size: 1 << 30,
        block_size: 4096,
        epoch: Epoch(7),
        base_epoch: Epoch(6),
    });
    let expected = hex(&[
        "21000000",         // length 33
        "02",               // type OpenImage
        VM1,                // image
        "0000004000000000", // size 1 GiB
        "00100000",         // block_size 4096
        "0700000000000000", // epoch 7
        "0600000000000000", // base_epoch 6
    ]);
    check(message, &expected);
}

#[test]
fn resume_query() {
    let message = Message::ResumeQuery(ResumeQuery {
        image: name("vm1"),
        epoch: Epoch(7),
    });
    let expected = hex(&["0d000000", "03", VM1, "0700000000000000"]);
    check(message, &expected);
}

#[test]
fn resume_answer() {
    let message = Message::ResumeAnswer(ResumeAnswer {
        image: name("vm1"),
        epoch: Epoch(7),
        committed_epoch: Epoch(6),
        durable_seq: SeqNo(4),
        resume_offset: 1 << 24,
    });
    let expected = hex(&[
        "25000000",         // length 37
        "04",               // type ResumeAnswer
        VM1,                // image
        "0700000000000000", // epoch 7
        "0600000000000000", // committed_epoch 6
        "0400000000000000", // durable_seq 4
        "0000000100000000", // resume_offset 16 MiB
    ]);
    check(message, &expected);
}

fn golden_batch() -> ExtentBatch {
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
        ],
        payload: Bytes::from_static(b"abcdXYZ"),
    }
}

const BATCH_HEADER: &[&str] = &[
    "8a000000",         // length 138 (payload included)
    "05",               // type ExtentBatch
    VM1,                // image
    "0700000000000000", // epoch 7
    "0200000000000000", // seq 2
    "0000000000000000", // scan_start 0
    "0000100000000000", // scan_end 1 MiB
    "efbeadde",         // payload_crc32c 0xdeadbeef
    "abababababababababababababababababababababababababababababababab", // plain_blake3
    "03000000",         // extent count 3
    // offset            length     kind codec encoded_len
    "0000000000000000 04000000 01 00 04000000", // data, raw, 4 bytes
    "0010000000000000 00100000 02 00 00000000", // zero
    "0020000000000000 00100000 01 01 03000000", // data, zstd, 3 bytes
];

#[test]
fn extent_batch() {
    let mut expected = hex(BATCH_HEADER);
    let header_len = expected.len();
    expected.extend_from_slice(b"abcdXYZ"); // payload
    check(Message::ExtentBatch(golden_batch()), &expected);

    let mut header = BytesMut::new();
    golden_batch()
        .encode_header(&mut header, DEFAULT_MAX_FRAME_LEN)
        .unwrap();
    assert_eq!(header.as_ref(), &expected[..header_len]);
}

#[test]
fn commit() {
    let message = Message::Commit(Commit {
        recovery_point: RecoveryPointId(3),
        created_unix_ms: 1_700_000_000_000,
        fuzzy: true,
        images: vec![
            CommitImage {
                image: name("vm1"),
                epoch: Epoch(7),
                last_seq: SeqNo(9),
                size: 1 << 30,
            },
            CommitImage {
                image: name("db"),
                epoch: Epoch(2),
                last_seq: SeqNo(0),
                size: 4096,
            },
        ],
    });
    let expected = hex(&[
        "4d000000",         // length 77
        "06",               // type Commit
        "0300000000000000", // recovery_point 3
        "0068e5cf8b010000", // created_unix_ms 1_700_000_000_000
        "01",               // fuzzy true
        "02000000",         // image count 2
        VM1,
        "0700000000000000 0900000000000000 0000004000000000", // epoch 7, last_seq 9, size 1 GiB
        "02 6462",                                            // image "db"
        "0200000000000000 0000000000000000 0010000000000000", // epoch 2, last_seq 0, size 4096
    ]);
    check(message, &expected);
}

#[test]
fn committed() {
    let message = Message::Committed(Committed {
        recovery_point: RecoveryPointId(3),
    });
    check(message, &hex(&["09000000", "07", "0300000000000000"]));
}

#[test]
fn ack() {
    let message = Message::Ack(Ack {
        image: name("vm1"),
        epoch: Epoch(7),
        durable_seq: SeqNo(4),
    });
    check(
        message,
        &hex(&[
            "15000000",
            "08",
            VM1,
            "0700000000000000",
            "0400000000000000",
        ]),
    );
}

#[test]
fn nack() {
    let message = Message::Nack(Nack {
        image: name("vm1"),
        epoch: Epoch(7),
        seq: SeqNo(5),
        reason: NackReason::PlainBlake3,
    });
    check(
        message,
        &hex(&[
            "16000000",
            "09",
            VM1,
            "0700000000000000",
            "0500000000000000",
            "02",
        ]),
    );
}

#[test]
fn hash_request() {
    let message = Message::HashRequest(HashRequest {
        image: name("vm1"),
        offset: 1 << 20,
        length: 1 << 30,
        granularity: 1 << 20,
    });
    let expected = hex(&[
        "19000000",         // length 25
        "0a",               // type HashRequest
        VM1,                // image
        "0000100000000000", // offset 1 MiB
        "0000004000000000", // length 1 GiB
        "00001000",         // granularity 1 MiB
    ]);
    check(message, &expected);
}

#[test]
fn hash_answer() {
    let message = Message::HashAnswer(HashAnswer {
        image: name("vm1"),
        recovery_point: RecoveryPointId(3),
        image_size: 1 << 30,
        offset: 0,
        granularity: 1 << 20,
        hashes: vec![[0x01; 32], [0x02; 32]],
    });
    let expected = hex(&[
        "65000000",         // length 101
        "0b",               // type HashAnswer
        VM1,                // image
        "0300000000000000", // recovery_point 3
        "0000004000000000", // image_size 1 GiB
        "0000000000000000", // offset 0
        "00001000",         // granularity 1 MiB
        "02000000",         // hash count 2
        &"01".repeat(32),
        &"02".repeat(32),
    ]);
    check(message, &expected);
}

#[test]
fn error() {
    let message = Message::Error(ErrorFrame {
        code: ErrorCode::Busy,
        message: "busy".into(),
    });
    check(
        message,
        &hex(&["09000000", "7f", "0800", "0400", "62757379"]),
    );
}

#[test]
fn enum_codes() {
    // Codes carried inside bodies; pinned here so a renumbering fails CI.
    let kinds: Vec<u8> = [ExtentKind::Data, ExtentKind::Zero, ExtentKind::Discard]
        .map(ExtentKind::code)
        .to_vec();
    assert_eq!(kinds, [0x01, 0x02, 0x03]);
    assert_eq!([Codec::Raw.code(), Codec::Zstd.code()], [0x00, 0x01]);
    let reasons = [
        NackReason::PayloadCrc,
        NackReason::PlainBlake3,
        NackReason::Decode,
    ]
    .map(NackReason::code);
    assert_eq!(reasons, [0x01, 0x02, 0x03]);
    let codes = [
        ErrorCode::Malformed,
        ErrorCode::VersionMismatch,
        ErrorCode::NotPermitted,
        ErrorCode::UnknownImage,
        ErrorCode::EpochMismatch,
        ErrorCode::OutOfOrder,
        ErrorCode::Storage,
        ErrorCode::Busy,
        ErrorCode::Internal,
    ]
    .map(ErrorCode::code);
    assert_eq!(codes, [1, 2, 3, 4, 5, 6, 7, 8, 0xff]);
    assert_eq!(PROTOCOL_VERSION, 1);
    assert_eq!(FRAME_HEADER_LEN, 5);
    assert_eq!(DEFAULT_MAX_FRAME_LEN, 8 * 1024 * 1024 + 64 * 1024);
}
