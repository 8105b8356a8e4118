//! A trusted but misbehaving peer, speaking real QUIC to a real agent
//! process: corrupted payloads are rejected (Nack) and never written;
//! malformed and oversized frames get a typed Error frame; the agent stays up.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ferry_engine::identity::Identity;
use ferry_engine::payload_codec::{Encoder, PlainExtent};
use ferry_engine::session::framing::{FrameReader, FrameWriter};
use ferry_engine::session::receiver::local_hello;
use ferry_engine::transport::{self, TransportSettings};
use ferry_protocol::{
    AgentId, Commit, CommitImage, Epoch, ErrorCode, ExtentBatch, ExtentKind, ImageName, Message,
    NackReason, OpenImage, RecoveryPointId, SeqNo, DEFAULT_MAX_FRAME_LEN,
};

struct Peer {
    _tmp: tempfile::TempDir,
    identity: Identity,
    agent: ferry_e2e::Agent,
}

fn start() -> Peer {
    let tmp = tempfile::tempdir().unwrap();
    let identity = Identity::create(&tmp.path().join("client")).unwrap();
    let standby_dir = tmp.path().join("standby");
    let fp = ferry_e2e::init_agent(&standby_dir);
    let agent = ferry_e2e::Agent::start(&standby_dir, &fp, &[&identity.fingerprint().to_hex()]);
    Peer {
        _tmp: tmp,
        identity,
        agent,
    }
}

async fn connect(peer: &Peer) -> (quinn::Endpoint, quinn::Connection) {
    let settings = TransportSettings::default();
    let endpoint = transport::client_endpoint(peer.agent.addr, &settings).unwrap();
    let expected = AgentId::from_hex(&peer.agent.fingerprint).unwrap();
    let conn = transport::connect(
        &endpoint,
        peer.agent.addr,
        &peer.identity,
        expected,
        &settings,
    )
    .await
    .unwrap();
    (endpoint, conn)
}

async fn next(reader: &mut FrameReader) -> Message {
    tokio::time::timeout(Duration::from_secs(20), reader.next())
        .await
        .expect("agent answered in time")
        .expect("readable frame")
        .expect("a frame, not end of stream")
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupted_batches_are_rejected_and_never_written() {
    let peer = start();
    let (_endpoint, conn) = connect(&peer).await;
    let (send, recv) = conn.open_bi().await.unwrap();
    let mut control_w = FrameWriter::new(send, DEFAULT_MAX_FRAME_LEN);
    let mut control_r = FrameReader::new(recv, DEFAULT_MAX_FRAME_LEN);
    control_w
        .send(&Message::Hello(local_hello(peer.identity.fingerprint())))
        .await
        .unwrap();
    assert!(matches!(next(&mut control_r).await, Message::Hello(_)));

    let image = ImageName::new("victim").unwrap();
    let size = 1024 * 1024u64;
    let (send, recv) = conn.open_bi().await.unwrap();
    let mut w = FrameWriter::new(send, DEFAULT_MAX_FRAME_LEN);
    let mut r = FrameReader::new(recv, DEFAULT_MAX_FRAME_LEN);
    w.send(&Message::OpenImage(OpenImage {
        image: image.clone(),
        size,
        block_size: 4096,
        epoch: Epoch(1),
        base_epoch: Epoch(0),
    }))
    .await
    .unwrap();
    assert!(matches!(next(&mut r).await, Message::ResumeAnswer(_)));

    let data = Bytes::from(vec![0xABu8; 65536]);
    let chunk = Encoder::new(1)
        .encode(
            0,
            size,
            &[PlainExtent {
                offset: 0,
                length: 65536,
                kind: ExtentKind::Data,
                data: Some(data),
            }],
        )
        .unwrap();
    let good = ExtentBatch {
        image: image.clone(),
        epoch: Epoch(1),
        seq: SeqNo(1),
        scan_start: 0,
        scan_end: size,
        payload_crc32c: chunk.payload_crc32c,
        plain_blake3: chunk.plain_blake3,
        extents: chunk.extents.clone(),
        payload: chunk.payload.clone(),
    };

    // 1. A flipped payload bit: CRC-32C mismatch.
    let mut flipped = BytesMut::from(&good.payload[..]);
    flipped[7] ^= 0x01;
    let bad_crc = ExtentBatch {
        payload: flipped.freeze(),
        ..good.clone()
    };
    w.send_batch(&bad_crc).await.unwrap();
    match next(&mut r).await {
        Message::Nack(n) => {
            assert_eq!(n.seq, SeqNo(1));
            assert_eq!(n.reason, NackReason::PayloadCrc);
        }
        other => panic!("expected Nack, got {other:?}"),
    }

    // 2. Payload and CRC replaced consistently, but the data is not what the
    //    BLAKE3 of the plain data promises (end-to-end check).
    let forged_data = Bytes::from(vec![0xCDu8; 65536]);
    let forged = Encoder::new(1)
        .encode(
            0,
            size,
            &[PlainExtent {
                offset: 0,
                length: 65536,
                kind: ExtentKind::Data,
                data: Some(forged_data),
            }],
        )
        .unwrap();
    let bad_hash = ExtentBatch {
        payload: forged.payload.clone(),
        payload_crc32c: forged.payload_crc32c,
        extents: forged.extents.clone(),
        ..good.clone()
    };
    w.send_batch(&bad_hash).await.unwrap();
    match next(&mut r).await {
        Message::Nack(n) => assert_eq!(n.reason, NackReason::PlainBlake3),
        other => panic!("expected Nack, got {other:?}"),
    }

    // 3. The genuine batch is accepted and acknowledged once durable.
    w.send_batch(&good).await.unwrap();
    w.finish();
    let mut acked = SeqNo(0);
    while let Ok(Some(m)) = r.next().await {
        if let Message::Ack(a) = m {
            acked = a.durable_seq;
        }
    }
    assert_eq!(acked, SeqNo(1));
    control_w
        .send(&Message::Commit(Commit {
            recovery_point: RecoveryPointId(1),
            created_unix_ms: 1,
            fuzzy: false,
            images: vec![CommitImage {
                image: image.clone(),
                epoch: Epoch(1),
                last_seq: SeqNo(1),
                size,
            }],
        }))
        .await
        .unwrap();
    assert!(matches!(next(&mut control_r).await, Message::Committed(_)));

    let standby = std::fs::read(peer.agent.image_path("victim")).unwrap();
    assert_eq!(standby.len() as u64, size);
    assert!(
        standby[..65536].iter().all(|b| *b == 0xAB),
        "forged or corrupt bytes reached the image"
    );
    assert!(standby[65536..].iter().all(|b| *b == 0));
    assert!(peer.agent.log_text().contains("rejected a batch"));
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_and_oversized_frames_get_typed_errors_and_the_agent_survives() {
    let peer = start();
    for garbage in [
        // Unknown frame type 0xEE.
        vec![0x05, 0, 0, 0, 0xEE, 1, 2, 3, 4],
        // A length far past the frame cap.
        vec![0xFF, 0xFF, 0xFF, 0x7F, 0x01],
        // A Hello that is cut short inside the frame.
        vec![0x03, 0, 0, 0, 0x01, 0x01, 0x00],
    ] {
        let (_endpoint, conn) = connect(&peer).await;
        let (mut send, recv) = conn.open_bi().await.unwrap();
        send.write_all(&garbage).await.unwrap();
        let mut reader = FrameReader::new(recv, DEFAULT_MAX_FRAME_LEN);
        match next(&mut reader).await {
            Message::Error(e) => assert_eq!(e.code, ErrorCode::Malformed, "{}", e.message),
            other => panic!("expected an Error frame for {garbage:?}, got {other:?}"),
        }
    }
    // Still serving: a proper Hello gets a Hello back.
    let (_endpoint, conn) = connect(&peer).await;
    let (send, recv) = conn.open_bi().await.unwrap();
    let mut w = FrameWriter::new(send, DEFAULT_MAX_FRAME_LEN);
    let mut r = FrameReader::new(recv, DEFAULT_MAX_FRAME_LEN);
    w.send(&Message::Hello(local_hello(peer.identity.fingerprint())))
        .await
        .unwrap();
    assert!(matches!(next(&mut r).await, Message::Hello(_)));
}
