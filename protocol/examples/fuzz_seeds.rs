//! Writes one valid encoded frame of every type (plus a multi-frame stream)
//! into a directory, to seed the `frame_decoder` fuzz corpus:
//! `cargo run -p ferry-protocol --example fuzz_seeds -- fuzz/corpus/frame_decoder`.

use std::path::PathBuf;

use bytes::{Bytes, BytesMut};
use ferry_protocol::*;

fn name(s: &str) -> ImageName {
    ImageName::new(s).expect("literal image names are valid")
}

fn samples() -> Vec<Message> {
    let batch = ExtentBatch {
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
    };
    vec![
        Message::Hello(Hello::new(
            AgentId([0x11; 32]),
            Capabilities(Capabilities::ZSTD | Capabilities::DISCARD),
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
        Message::ExtentBatch(batch),
        Message::Commit(Commit {
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
                    image: name("db_2.img"),
                    epoch: Epoch(2),
                    last_seq: SeqNo(0),
                    size: 4096,
                },
            ],
        }),
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
            reason: NackReason::Decode,
        }),
        Message::HashRequest(HashRequest {
            image: name("vm1"),
            offset: 0,
            length: 1 << 30,
            granularity: 1 << 20,
        }),
        Message::HashAnswer(HashAnswer {
            image: name("vm1"),
            recovery_point: RecoveryPointId(3),
            image_size: 1 << 30,
            offset: 0,
            granularity: 1 << 20,
            hashes: vec![[1; 32], [2; 32]],
        }),
        Message::Error(ErrorFrame::new(
            ErrorCode::Busy,
            "image vm1 is held by another session",
        )),
    ]
}

fn main() -> std::io::Result<()> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "fuzz/corpus/frame_decoder".into()),
    );
    std::fs::create_dir_all(&dir)?;
    let mut stream = BytesMut::new();
    for message in samples() {
        let mut frame = BytesMut::new();
        message
            .encode(&mut frame, DEFAULT_MAX_FRAME_LEN)
            .expect("sample messages are valid");
        stream.extend_from_slice(&frame);
        let file = dir.join(format!(
            "seed-{:02x}-{}",
            message.type_code(),
            message.frame_type()
        ));
        std::fs::write(&file, &frame)?;
        println!("{} ({} bytes)", file.display(), frame.len());
    }
    std::fs::write(dir.join("seed-stream-all"), &stream)?;
    Ok(())
}
