//! Proptest strategies for arbitrary *valid* messages of every type, shared
//! by the round-trip and robustness tests.

#![allow(dead_code)] // each test binary uses a different subset

use bytes::{Bytes, BytesMut};
use ferry_protocol::*;
use proptest::collection::vec;
use proptest::prelude::*;

pub fn image_name() -> impl Strategy<Value = ImageName> {
    "[A-Za-z0-9_][A-Za-z0-9._-]{0,127}".prop_map(|s| ImageName::new(s).unwrap())
}

pub fn hello() -> impl Strategy<Value = Hello> {
    (any::<u16>(), any::<u16>(), any::<[u8; 32]>(), any::<u64>()).prop_map(
        |(min_version, max_version, id, caps)| Hello {
            min_version,
            max_version,
            agent_id: AgentId(id),
            capabilities: Capabilities(caps),
        },
    )
}

/// What one generated extent is before offsets are laid out.
#[derive(Clone, Debug)]
enum ExtentSpec {
    Raw(Vec<u8>),
    Zstd { length: u32, bytes: Vec<u8> },
    Zero(u32),
    Discard(u32),
}

fn extent_spec() -> impl Strategy<Value = ExtentSpec> {
    prop_oneof![
        vec(any::<u8>(), 1..300).prop_map(ExtentSpec::Raw),
        (1..=u32::MAX, vec(any::<u8>(), 1..64))
            .prop_map(|(length, bytes)| ExtentSpec::Zstd { length, bytes }),
        (1..=u32::MAX).prop_map(ExtentSpec::Zero),
        (1..=u32::MAX).prop_map(ExtentSpec::Discard),
    ]
}

pub fn extent_batch() -> impl Strategy<Value = ExtentBatch> {
    (
        image_name(),
        any::<u64>(),
        any::<u64>(),
        any::<(u64, u64)>(),
        any::<u32>(),
        any::<[u8; 32]>(),
        // Start anywhere, even close to 2^64 (the layout below backs off).
        any::<u64>(),
        vec((0..10_000u64, extent_spec()), 0..40),
    )
        .prop_map(
            |(image, epoch, seq, (a, b), payload_crc32c, plain_blake3, start, specs)| {
                let mut extents = Vec::with_capacity(specs.len());
                let mut payload = BytesMut::new();
                // Total span is below 40 × (10_000 + 2^32), so leave that much headroom.
                let mut offset = start.min(u64::MAX - 40 * (10_000 + (1 << 32)));
                for (gap, spec) in specs {
                    offset += gap;
                    let (length, kind, codec, bytes) = match spec {
                        ExtentSpec::Raw(bytes) => {
                            (bytes.len() as u32, ExtentKind::Data, Codec::Raw, bytes)
                        }
                        ExtentSpec::Zstd { length, bytes } => {
                            (length, ExtentKind::Data, Codec::Zstd, bytes)
                        }
                        ExtentSpec::Zero(length) => {
                            (length, ExtentKind::Zero, Codec::Raw, Vec::new())
                        }
                        ExtentSpec::Discard(length) => {
                            (length, ExtentKind::Discard, Codec::Raw, Vec::new())
                        }
                    };
                    extents.push(ExtentHeader {
                        offset,
                        length,
                        kind,
                        codec,
                        encoded_len: bytes.len() as u32,
                    });
                    payload.extend_from_slice(&bytes);
                    offset += u64::from(length);
                }
                ExtentBatch {
                    image,
                    epoch: Epoch(epoch),
                    seq: SeqNo(seq),
                    scan_start: a.min(b),
                    scan_end: a.max(b),
                    payload_crc32c,
                    plain_blake3,
                    extents,
                    payload: payload.freeze(),
                }
            },
        )
}

pub fn commit() -> impl Strategy<Value = Commit> {
    let image = (image_name(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
        |(image, epoch, last_seq, size)| CommitImage {
            image,
            epoch: Epoch(epoch),
            last_seq: SeqNo(last_seq),
            size,
        },
    );
    (any::<u64>(), any::<u64>(), any::<bool>(), vec(image, 0..16)).prop_map(
        |(rp, created_unix_ms, fuzzy, images)| Commit {
            recovery_point: RecoveryPointId(rp),
            created_unix_ms,
            fuzzy,
            images,
        },
    )
}

pub fn hash_request() -> impl Strategy<Value = HashRequest> {
    (image_name(), 1..=u32::MAX, any::<u64>(), any::<u64>()).prop_map(
        |(image, granularity, l, o)| {
            let max_length = u64::from(granularity) * MAX_HASHES_PER_ANSWER as u64;
            let length = l % (max_length + 1);
            // Any offset that keeps offset + length <= u64::MAX.
            let room = u64::MAX - length;
            let offset = if room == u64::MAX { o } else { o % (room + 1) };
            HashRequest {
                image,
                offset,
                length,
                granularity,
            }
        },
    )
}

pub fn hash_answer() -> impl Strategy<Value = HashAnswer> {
    (
        image_name(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        1..=u32::MAX,
        vec(any::<[u8; 32]>(), 0..40),
    )
        .prop_map(
            |(image, rp, image_size, offset, granularity, hashes)| HashAnswer {
                image,
                recovery_point: RecoveryPointId(rp),
                image_size,
                offset,
                granularity,
                hashes,
            },
        )
}

pub fn error_code() -> impl Strategy<Value = ErrorCode> {
    any::<u16>().prop_map(ErrorCode::from_code)
}

pub fn error_frame() -> impl Strategy<Value = ErrorFrame> {
    (error_code(), prop_oneof![".{0,64}", "\\PC{0,1100}"])
        .prop_map(|(code, message)| ErrorFrame::new(code, message))
}

pub fn nack_reason() -> impl Strategy<Value = NackReason> {
    prop_oneof![
        Just(NackReason::PayloadCrc),
        Just(NackReason::PlainBlake3),
        Just(NackReason::Decode)
    ]
}

/// Any valid message of any type.
pub fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        hello().prop_map(Message::Hello),
        (
            image_name(),
            any::<u64>(),
            any::<u32>(),
            any::<u64>(),
            any::<u64>()
        )
            .prop_map(|(image, size, block_size, epoch, base)| Message::OpenImage(
                OpenImage {
                    image,
                    size,
                    block_size,
                    epoch: Epoch(epoch),
                    base_epoch: Epoch(base),
                }
            )),
        (image_name(), any::<u64>()).prop_map(|(image, epoch)| Message::ResumeQuery(ResumeQuery {
            image,
            epoch: Epoch(epoch)
        })),
        (image_name(), any::<[u64; 4]>()).prop_map(|(image, [e, c, d, r])| Message::ResumeAnswer(
            ResumeAnswer {
                image,
                epoch: Epoch(e),
                committed_epoch: Epoch(c),
                durable_seq: SeqNo(d),
                resume_offset: r,
            }
        )),
        extent_batch().prop_map(Message::ExtentBatch),
        commit().prop_map(Message::Commit),
        any::<u64>().prop_map(|rp| Message::Committed(Committed {
            recovery_point: RecoveryPointId(rp)
        })),
        (image_name(), any::<u64>(), any::<u64>()).prop_map(|(image, e, d)| Message::Ack(Ack {
            image,
            epoch: Epoch(e),
            durable_seq: SeqNo(d),
        })),
        (image_name(), any::<u64>(), any::<u64>(), nack_reason()).prop_map(
            |(image, e, s, reason)| {
                Message::Nack(Nack {
                    image,
                    epoch: Epoch(e),
                    seq: SeqNo(s),
                    reason,
                })
            }
        ),
        hash_request().prop_map(Message::HashRequest),
        hash_answer().prop_map(Message::HashAnswer),
        error_frame().prop_map(Message::Error),
    ]
}

/// `message` encoded with the default cap.
pub fn encode(message: &Message) -> BytesMut {
    let mut out = BytesMut::new();
    message
        .encode(&mut out, DEFAULT_MAX_FRAME_LEN)
        .expect("generated messages are valid");
    out
}

/// The payload of a batch message, if any (to compare zero-copy identity).
pub fn payload(message: &Message) -> Option<&Bytes> {
    match message {
        Message::ExtentBatch(batch) => Some(&batch.payload),
        _ => None,
    }
}
