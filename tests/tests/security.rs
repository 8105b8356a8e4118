//! Hostile peers and callers against real agent processes over real QUIC
//! and HTTP on loopback: an unpaired peer, a revoked (service deleted) peer,
//! expired and replayed service keys, a paired peer writing an image its
//! groups do not own, path tricks in image names, a zstd decompression
//! bomb, impossible sizes, and operator API calls without or with a wrong
//! token. Each is refused with a clear error, logged, and nothing is
//! written (the standby's image directory is compared before and after).
//! Also: secrets are private (0600), never logged, never in `--json`
//! output, and the agent refuses to start with readable secrets.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ferry_agent::imagegen;
use ferry_e2e::cli::{ok, run, text};
use ferry_e2e::sites::Sites;
use ferry_e2e::{bin, init_agent, Agent};
use ferry_engine::identity::Identity;
use ferry_engine::session::framing::{FrameReader, FrameWriter};
use ferry_engine::session::receiver::local_hello;
use ferry_engine::transport::{self, TransportSettings};
use ferry_protocol::{
    AgentId, Codec, Commit, CommitImage, Epoch, ErrorCode, ExtentBatch, ExtentHeader, ExtentKind,
    HashRequest, ImageName, Message, OpenImage, RecoveryPointId, SeqNo, DEFAULT_MAX_FRAME_LEN,
};

const MIB: u64 = 1024 * 1024;

// ------------------------------------------------------------------ helpers

/// Every file under `dir` (recursively) with its length and BLAKE3, so a
/// refused request can be shown to have written nothing.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let path = e.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap_or_default();
                out.insert(path, blake3::hash(&bytes).to_hex().to_string());
            }
        }
    }
    out
}

/// The parts of a standby agent's directory a replication stream could
/// write: standby images and their journals/staging.
fn standby_data(agent: &Agent) -> BTreeMap<PathBuf, String> {
    let mut all = snapshot(&agent.dir.join("images"));
    all.extend(snapshot(&agent.dir.join("standby")));
    all.extend(snapshot(&agent.dir.join("journal")));
    all.extend(snapshot(&agent.dir.join("staging")));
    all
}

/// Waits (20 s at most) until the agent's log contains `needle`.
fn wait_for_log(agent: &Agent, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !agent.log_text().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "the agent never logged {needle:?}:\n{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Two agents that trust nobody explicitly, paired through a service key.
fn paired() -> Sites {
    Sites::paired()
}

/// A QUIC connection to `agent` presenting `identity`; the handshake's
/// outcome is returned, not unwrapped.
async fn try_connect(
    agent: &Agent,
    identity: &Identity,
) -> Result<(quinn::Endpoint, quinn::Connection), String> {
    let settings = TransportSettings::default();
    let endpoint = transport::client_endpoint(agent.addr, &settings).map_err(|e| e.to_string())?;
    let expected = AgentId::from_hex(&agent.fingerprint).ok_or("bad fingerprint")?;
    let conn = transport::connect(&endpoint, agent.addr, identity, expected, &settings)
        .await
        .map_err(|e| e.to_string())?;
    Ok((endpoint, conn))
}

/// Sends one byte on a new stream and reads the answer: `Err` when the
/// connection is refused or closed before any answer.
async fn first_exchange(conn: &quinn::Connection) -> Result<Vec<u8>, String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    send.write_all(b"\x01").await.map_err(|e| e.to_string())?;
    let _ = send.finish();
    match tokio::time::timeout(Duration::from_secs(10), recv.read_to_end(1 << 20)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => panic!("the connection neither ended nor answered"),
    }
}

async fn next(reader: &mut FrameReader) -> Message {
    tokio::time::timeout(Duration::from_secs(20), reader.next())
        .await
        .expect("agent answered in time")
        .expect("readable frame")
        .expect("a frame, not end of stream")
}

/// Opens the control stream and exchanges Hellos.
async fn hello(conn: &quinn::Connection, identity: &Identity) -> (FrameWriter, FrameReader) {
    let (send, recv) = conn.open_bi().await.unwrap();
    let mut w = FrameWriter::new(send, DEFAULT_MAX_FRAME_LEN);
    let mut r = FrameReader::new(recv, DEFAULT_MAX_FRAME_LEN);
    w.send(&Message::Hello(local_hello(identity.fingerprint())))
        .await
        .unwrap();
    assert!(matches!(next(&mut r).await, Message::Hello(_)));
    (w, r)
}

fn open_image(name: &str, size: u64) -> OpenImage {
    OpenImage {
        image: ImageName::new(name).unwrap(),
        size,
        block_size: 4096,
        epoch: Epoch(1),
        base_epoch: Epoch(0),
    }
}

fn expect_error(message: Message, code: ErrorCode) -> String {
    match message {
        Message::Error(e) => {
            assert_eq!(e.code, code, "{}", e.message);
            e.message
        }
        other => panic!("expected an Error frame {code:?}, got {other:?}"),
    }
}

/// A standby trusting `client` explicitly (`--trust`), for frames that must
/// be refused whoever sends them.
struct Trusted {
    _tmp: tempfile::TempDir,
    client: Identity,
    agent: Agent,
}

fn trusted_standby() -> Trusted {
    let tmp = tempfile::tempdir().unwrap();
    let client = Identity::create(&tmp.path().join("client")).unwrap();
    let dir = tmp.path().join("standby");
    let fp = init_agent(&dir);
    let agent = Agent::start(&dir, &fp, &[&client.fingerprint().to_hex()]);
    Trusted {
        _tmp: tmp,
        client,
        agent,
    }
}

// -------------------------------------------------------------- peers

#[tokio::test(flavor = "multi_thread")]
async fn unpaired_peer_is_refused_at_the_handshake_and_nothing_is_written() {
    let s = paired();
    let before = standby_data(&s.b);
    let stranger = Identity::create(&s.tmp.path().join("stranger")).unwrap();
    let refused = match try_connect(&s.b, &stranger).await {
        Err(e) => e,
        // The client side of the handshake may finish before the server's
        // verdict arrives: the first stream then fails instead.
        Ok((_endpoint, conn)) => match first_exchange(&conn).await {
            Err(e) => e,
            Ok(bytes) => panic!("an untrusted peer got an answer: {bytes:?}"),
        },
    };
    assert!(!refused.is_empty());
    wait_for_log(&s.b, "refused or failed handshake");
    assert_eq!(standby_data(&s.b), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn revoked_service_peer_is_refused() {
    let s = paired();
    let a_identity = Identity::load(&s.a.dir).unwrap();
    // While paired, the handshake succeeds.
    let (_endpoint, conn) = try_connect(&s.b, &a_identity).await.unwrap();
    conn.close(quinn::VarInt::from_u32(0), b"done");
    ok(&s.b.dir, &["service", "delete", "dr"]);
    let before = standby_data(&s.b);
    let result = match try_connect(&s.b, &a_identity).await {
        Err(e) => Err(e),
        Ok((_endpoint, conn)) => first_exchange(&conn).await,
    };
    assert!(
        result.is_err(),
        "a revoked peer still reached the receiver: {result:?}"
    );
    wait_for_log(&s.b, "refused or failed handshake");
    assert_eq!(standby_data(&s.b), before);
}

#[test]
fn expired_and_replayed_service_keys_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let a_dir = tmp.path().join("a");
    let b_dir = tmp.path().join("b");
    let a_fp = init_agent(&a_dir);
    let b_fp = init_agent(&b_dir);
    let _a = Agent::start(&a_dir, &a_fp, &[]);
    let _b = Agent::start(&b_dir, &b_fp, &[]);

    // Expired: issued for one second, used after two.
    let out = run(&b_dir, &["service", "key", "--ttl", "1"]);
    assert!(out.status.success(), "{}", text(&out));
    let expired = String::from_utf8(out.stdout).unwrap();
    std::thread::sleep(Duration::from_millis(2100));
    let out = run(&a_dir, &["service", "create", "--key", expired.trim()]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("expired"),
        "{}",
        text(&out)
    );
    assert_eq!(ok(&a_dir, &["service", "list"]), serde_json::json!([]));
    assert_eq!(ok(&b_dir, &["service", "list"]), serde_json::json!([]));

    // Replayed: a key works once; a third agent that captured it is
    // refused by the standby, and nothing is paired twice.
    let out = run(&b_dir, &["service", "key"]);
    let key = String::from_utf8(out.stdout).unwrap();
    ok(&a_dir, &["service", "create", "--key", key.trim()]);
    let c_dir = tmp.path().join("c");
    let c_fp = init_agent(&c_dir);
    let _c = Agent::start(&c_dir, &c_fp, &[]);
    let out = run(&c_dir, &["service", "create", "--key", key.trim()]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already used"),
        "{}",
        text(&out)
    );
    let b_log = std::fs::read_dir(&b_dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .map(|p| std::fs::read_to_string(p).unwrap_or_default())
        .collect::<String>();
    assert!(b_log.contains("refused a pairing request"), "{b_log}");
    // (An expired key is refused by the primary before it calls the standby.)
    assert!(b_log.contains("already used"), "{b_log}");
    assert_eq!(
        ok(&a_dir, &["service", "list"]).as_array().unwrap().len(),
        1
    );
    assert_eq!(
        ok(&b_dir, &["service", "list"]).as_array().unwrap().len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn paired_peer_cannot_touch_images_its_groups_do_not_own() {
    let s = paired();
    let a = s.a.dir.clone();
    let img = s.tmp.path().join("vm1.raw");
    imagegen::make_image(&img, MIB, 5).unwrap();
    let uri = format!("file:{}", img.display());
    ok(&a, &["group", "create", "g1", "--wait"]);
    ok(&a, &["group", "add", "g1", &uri, "--wait"]);
    let resources = ok(&a, &["group", "show", "g1"])["resources"].clone();
    let owned = resources[0]["standby_target"]
        .as_str()
        .expect("a standby target")
        .to_owned();

    let a_identity = Identity::load(&a).unwrap();
    let before = standby_data(&s.b);
    let (_endpoint, conn) = try_connect(&s.b, &a_identity)
        .await
        .expect("a paired peer connects");
    let (mut control_w, mut control_r) = hello(&conn, &a_identity).await;

    // Writing an image no group of the service owns: refused at OpenImage.
    for name in ["intruder", "vm1-other"] {
        let (send, recv) = conn.open_bi().await.unwrap();
        let mut w = FrameWriter::new(send, DEFAULT_MAX_FRAME_LEN);
        let mut r = FrameReader::new(recv, DEFAULT_MAX_FRAME_LEN);
        w.send(&Message::OpenImage(open_image(name, MIB)))
            .await
            .unwrap();
        let why = expect_error(next(&mut r).await, ErrorCode::NotPermitted);
        assert!(why.contains(name), "{why}");
    }
    // Reading someone else's image through the control stream: refused too
    // (and the refusal ends the control stream with a readable reason).
    control_w
        .send(&Message::HashRequest(HashRequest {
            image: ImageName::new("intruder").unwrap(),
            offset: 0,
            length: 4096,
            granularity: 4096,
        }))
        .await
        .unwrap();
    expect_error(next(&mut control_r).await, ErrorCode::NotPermitted);
    wait_for_log(&s.b, "refused access to an image");
    assert_eq!(standby_data(&s.b), before, "a refused stream wrote data");
    assert!(!s.b.image_path("intruder").exists());

    // The image the group owns is still accepted from the same peer.
    let (_endpoint, conn) = try_connect(&s.b, &a_identity).await.unwrap();
    let _control = hello(&conn, &a_identity).await;
    let (send, recv) = conn.open_bi().await.unwrap();
    let mut w = FrameWriter::new(send, DEFAULT_MAX_FRAME_LEN);
    let mut r = FrameReader::new(recv, DEFAULT_MAX_FRAME_LEN);
    w.send(&Message::OpenImage(open_image(&owned, MIB)))
        .await
        .unwrap();
    match next(&mut r).await {
        Message::ResumeAnswer(answer) => assert_eq!(answer.image.as_str(), owned),
        other => panic!("the owned image {owned} was refused: {other:?}"),
    }
}

// --------------------------------------------------------------- frames

/// The bytes of an OpenImage whose name is replaced by `name` (same length
/// as the placeholder) — names the typed API would never let us build.
fn raw_open_image(name: &[u8]) -> BytesMut {
    let placeholder = "x".repeat(name.len());
    let mut buf = BytesMut::new();
    Message::OpenImage(open_image(&placeholder, MIB))
        .encode(&mut buf, DEFAULT_MAX_FRAME_LEN)
        .unwrap();
    let at = buf
        .windows(name.len())
        .position(|w| w == placeholder.as_bytes())
        .expect("placeholder name in the frame");
    buf[at..at + name.len()].copy_from_slice(name);
    buf
}

#[tokio::test(flavor = "multi_thread")]
async fn path_tricks_in_image_names_are_refused_as_malformed() {
    let t = trusted_standby();
    let (_endpoint, conn) = try_connect(&t.agent, &t.client).await.unwrap();
    let _control = hello(&conn, &t.client).await;
    let before = standby_data(&t.agent);
    let outside = t.agent.dir.join("escaped.raw");
    for name in [
        &b"../escaped"[..],
        b"../../../../tmp/ferry-escape",
        b"/etc/passwd",
        b"a/../../escaped",
        b"vm\x001",
        b"vm1\n",
        b".hidden",
    ] {
        let (mut send, recv) = conn.open_bi().await.unwrap();
        send.write_all(&raw_open_image(name)).await.unwrap();
        let mut r = FrameReader::new(recv, DEFAULT_MAX_FRAME_LEN);
        let why = expect_error(next(&mut r).await, ErrorCode::Malformed);
        assert!(why.contains("image name"), "{name:?}: {why}");
    }
    assert!(!outside.exists());
    assert!(!Path::new("/tmp/ferry-escape.raw").exists());
    assert_eq!(standby_data(&t.agent), before);
    assert!(t.agent.log_text().contains("image stream failed"));
}

#[tokio::test(flavor = "multi_thread")]
async fn zstd_bomb_and_impossible_sizes_are_refused_and_never_written() {
    let t = trusted_standby();
    let (_endpoint, conn) = try_connect(&t.agent, &t.client).await.unwrap();
    let (mut control_w, mut control_r) = hello(&conn, &t.client).await;
    let size = MIB;
    let (send, recv) = conn.open_bi().await.unwrap();
    let mut w = FrameWriter::new(send, DEFAULT_MAX_FRAME_LEN);
    let mut r = FrameReader::new(recv, DEFAULT_MAX_FRAME_LEN);
    w.send(&Message::OpenImage(open_image("bomb", size)))
        .await
        .unwrap();
    assert!(matches!(next(&mut r).await, Message::ResumeAnswer(_)));

    // One 64 KiB extent whose zstd frame expands to 256 MiB of 0xAA: a few
    // KiB on the wire, far past the extent (and the batch) cap.
    let bomb = zstd::bulk::compress(&vec![0xAAu8; 256 * MIB as usize], 19).unwrap();
    assert!(bomb.len() < 64 * 1024, "bomb is {} bytes", bomb.len());
    let batch = ExtentBatch {
        image: ImageName::new("bomb").unwrap(),
        epoch: Epoch(1),
        seq: SeqNo(1),
        scan_start: 0,
        scan_end: 65536,
        payload_crc32c: crc32c::crc32c(&bomb),
        plain_blake3: *blake3::hash(&[0xAA; 65536]).as_bytes(),
        extents: vec![ExtentHeader {
            offset: 0,
            length: 65536,
            kind: ExtentKind::Data,
            codec: Codec::Zstd,
            encoded_len: bomb.len() as u32,
        }],
        payload: Bytes::from(bomb),
    };
    w.send_batch(&batch).await.unwrap();
    match next(&mut r).await {
        Message::Nack(n) => assert_eq!(n.seq, SeqNo(1)),
        other => panic!("expected a Nack for the bomb, got {other:?}"),
    }
    w.finish();
    while let Ok(Some(m)) = r.next().await {
        if let Message::Ack(a) = m {
            assert_eq!(a.durable_seq, SeqNo(0), "the bomb was acknowledged");
        }
    }
    wait_for_log(&t.agent, "rejected a batch");

    // A commit of that epoch with a size no file can have: refused, and the
    // agent (and its store) stays usable.
    control_w
        .send(&Message::Commit(Commit {
            recovery_point: RecoveryPointId(1),
            created_unix_ms: 1,
            fuzzy: false,
            images: vec![CommitImage {
                image: ImageName::new("bomb").unwrap(),
                epoch: Epoch(1),
                last_seq: SeqNo(0),
                size: u64::MAX,
            }],
        }))
        .await
        .unwrap();
    let why = expect_error(next(&mut control_r).await, ErrorCode::Malformed);
    assert!(why.contains("size"), "{why}");
    let image = t.agent.image_path("bomb");
    let bytes = std::fs::read(&image).unwrap_or_default();
    assert!(
        bytes.iter().all(|b| *b == 0),
        "bomb bytes reached the image"
    );
    // An image size no file can have is refused at OpenImage, before any
    // file is created.
    let (_endpoint, conn) = try_connect(&t.agent, &t.client).await.unwrap();
    let _control = hello(&conn, &t.client).await;
    let (send, recv) = conn.open_bi().await.unwrap();
    let mut w = FrameWriter::new(send, DEFAULT_MAX_FRAME_LEN);
    let mut r = FrameReader::new(recv, DEFAULT_MAX_FRAME_LEN);
    w.send(&Message::OpenImage(open_image("huge", u64::MAX)))
        .await
        .unwrap();
    let why = expect_error(next(&mut r).await, ErrorCode::Malformed);
    assert!(why.contains("size"), "{why}");
    assert!(!t.agent.image_path("huge").exists());
    assert!(!t.agent.dir.join("images").join("huge").exists());
}

// ------------------------------------------------------------ operator API

/// One HTTP/1.1 request to the agent's operator API; returns (status, body).
fn http(agent_dir: &Path, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let addr = std::fs::read_to_string(agent_dir.join("api.addr")).unwrap();
    let mut stream = std::net::TcpStream::connect(addr.trim()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let body = "{}";
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn api_calls_without_or_with_a_wrong_token_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("agent");
    let fp = init_agent(&dir);
    let agent = Agent::start(&dir, &fp, &[]);
    let token = std::fs::read_to_string(dir.join("api.token")).unwrap();
    let token = token.trim();
    let wrong = format!("{}0", &token[..token.len() - 1]);
    for (method, path) in [
        ("GET", "/v1/status"),
        ("GET", "/v1/groups"),
        ("POST", "/v1/service/key"),
        ("POST", "/v1/groups"),
    ] {
        for given in [None, Some(wrong.as_str()), Some("")] {
            let (status, body) = http(&dir, method, path, given);
            assert_eq!(status, 401, "{method} {path} with {given:?}: {body}");
            assert!(body.contains("API token"), "{body}");
        }
    }
    wait_for_log(&agent, "refused an operator API call without a valid token");
    assert!(
        !agent.log_text().contains(&wrong),
        "a presented token was logged"
    );
    // Nothing was created: no group, and the right token still works.
    let (status, body) = http(&dir, "GET", "/v1/groups", Some(token));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.trim(), "[]");
}

// ----------------------------------------------------------------- secrets

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Starts `ferry-agent run` expecting it to exit non-zero; returns its output.
fn run_expecting_refusal(dir: &Path) -> String {
    let mut child = Command::new(bin("ferry-agent"))
        .args(["run", "--dir"])
        .arg(dir)
        .args(["--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ferry-agent kept running with readable secrets");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn readable_key_or_token_stops_the_agent_from_starting() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("agent");
    init_agent(&dir);
    let key = dir.join("identity/key.pem");
    let token = dir.join("api.token");
    assert_eq!(mode(&key), 0o600);
    assert_eq!(mode(&token), 0o600);
    for (file, bad) in [
        (&key, 0o644),
        (&key, 0o640),
        (&token, 0o644),
        (&token, 0o640),
    ] {
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(bad)).unwrap();
        let out = run_expecting_refusal(&dir);
        assert!(out.contains("chmod 600"), "{}: {out}", file.display());
        assert!(
            out.contains(&file.display().to_string()),
            "{}: {out}",
            file.display()
        );
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

#[test]
fn secrets_are_never_logged_nor_printed_as_json() {
    let s = paired();
    let img = s.tmp.path().join("vm1.raw");
    imagegen::make_image(&img, MIB, 9).unwrap();
    let uri = format!("file:{}", img.display());
    ok(&s.a.dir, &["group", "create", "g1", "--wait"]);
    ok(&s.a.dir, &["group", "add", "g1", &uri, "--wait"]);
    let mut secrets = Vec::new();
    for agent in [&s.a, &s.b] {
        let token = std::fs::read_to_string(agent.dir.join("api.token")).unwrap();
        secrets.push(token.trim().to_owned());
        let key = std::fs::read_to_string(agent.dir.join("identity/key.pem")).unwrap();
        // Every base64 line of the private key is secret material.
        secrets.extend(
            key.lines()
                .filter(|l| !l.starts_with("-----") && l.len() > 16)
                .map(str::to_owned),
        );
        assert_eq!(mode(&agent.dir.join("api.token")), 0o600);
        assert_eq!(mode(&agent.dir.join("identity/key.pem")), 0o600);
    }
    // A fresh key's one-time secret (decoded from the key itself).
    let out = run(&s.b.dir, &["service", "key"]);
    let key = String::from_utf8(out.stdout).unwrap();
    let decoded = ferry_agent::orchestrator::ServiceKey::decode(key.trim()).unwrap();
    secrets.push(decoded.secret.clone());
    let mut printed = Vec::new();
    for (dir, args) in [
        (&s.a.dir, &["status"][..]),
        (&s.a.dir, &["service", "list"]),
        (&s.b.dir, &["service", "list"]),
        (&s.a.dir, &["group", "show", "g1"]),
        (&s.b.dir, &["group", "list"]),
        (&s.a.dir, &["group", "list"]),
        (&s.b.dir, &["status"]),
    ] {
        printed.push((args.join(" "), ok(dir, args).to_string()));
    }
    let out = run(
        &s.a.dir,
        &[
            "service",
            "create",
            "--key",
            key.trim(),
            "--name",
            "second",
            "--json",
        ],
    );
    printed.push((
        "service create --json".into(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ));
    for agent in [&s.a, &s.b] {
        printed.push((format!("log of {}", agent.dir.display()), agent.log_text()));
    }
    for (what, output) in &printed {
        for secret in &secrets {
            assert!(
                !output.contains(secret.as_str()),
                "{what} contains a secret ({}…)",
                &secret[..8]
            );
        }
    }
}
