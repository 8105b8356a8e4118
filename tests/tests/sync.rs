//! End-to-end replication through real agent processes over real QUIC on
//! loopback: full and incremental sync, verify, resume after a link cut,
//! QoS bounds, refusal of untrusted peers.

use std::time::{Duration, Instant};

use ferry_agent::imagegen;
use ferry_e2e::{ferry, hash_file, sync_json, Pair};

const MIB: u64 = 1024 * 1024;

#[test]
fn full_then_incremental_sync_sends_only_changes_and_verifies() {
    let pair = Pair::new(None);
    let image = pair.path("vm1.raw");
    imagegen::make_image(&image, 256 * MIB, 11).unwrap();
    let target = pair.standby.target("vm1");
    let dir = pair.primary_dir.clone();
    // Compression pinned on: `auto` may rightly leave it off on a fast
    // loopback, and this test checks that text pieces do compress.
    std::fs::write(
        dir.join("config.toml"),
        "[transport]\ncompression = \"zstd\"\n",
    )
    .unwrap();

    let full = sync_json(&dir, &image, &target, &pair.standby.fingerprint, &[]);
    assert_eq!(full["bytes_scanned"], 256 * MIB);
    assert_eq!(full["fuzzy"], false);
    assert!(full["bytes_zero"].as_u64().unwrap() > 32 * MIB, "{full}");
    // Zero pieces never travel: the payload is at most the non-zero data.
    let plain = full["bytes_plain_data"].as_u64().unwrap();
    assert!(plain <= 256 * MIB - full["bytes_zero"].as_u64().unwrap());
    assert!(
        full["bytes_sent"].as_u64().unwrap() < plain,
        "text pieces must compress: {full}"
    );
    assert_eq!(
        hash_file(&image),
        hash_file(&pair.standby.image_path("vm1"))
    );

    // 1000 scattered 4 KiB writes: only those blocks travel.
    let written = imagegen::scattered_writes(&image, 1000, 12).unwrap();
    let incr = sync_json(&dir, &image, &target, &pair.standby.fingerprint, &[]);
    let changed = incr["bytes_changed"].as_u64().unwrap();
    assert!(changed > 0 && changed <= written, "{incr}");
    let frame_bytes = incr["frame_bytes"].as_u64().unwrap();
    assert!(
        frame_bytes <= 3 * changed,
        "wire bytes per changed byte must be <= 3: {frame_bytes} for {changed}"
    );
    assert!(incr["recovery_point"].as_u64() > full["recovery_point"].as_u64());
    assert_eq!(
        hash_file(&image),
        hash_file(&pair.standby.image_path("vm1"))
    );

    // An unchanged image: nothing but empty progress batches.
    let nothing = sync_json(&dir, &image, &target, &pair.standby.fingerprint, &[]);
    assert_eq!(nothing["bytes_changed"], 0);

    // verify: equal → exit 0; a change on the source → exit 1 naming the offset.
    let src = format!("file:{}", image.display());
    let dir_s = dir.display().to_string();
    let out = ferry(&[
        "verify",
        "--dir",
        &dir_s,
        &src,
        &target,
        "--peer",
        &pair.standby.fingerprint,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    imagegen::write_text(&image, 100 * MIB + 4096, 100, 13).unwrap();
    let out = ferry(&[
        "verify",
        "--dir",
        &dir_s,
        &src,
        &target,
        "--peer",
        &pair.standby.fingerprint,
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("offset {}", 100 * MIB)), "{text}");
}

#[test]
fn image_size_changes_replicate() {
    let pair = Pair::new(None);
    let image = pair.path("grow.raw");
    imagegen::make_image(&image, 10 * MIB + 1234, 21).unwrap();
    let target = pair.standby.target("grow");
    let dir = pair.primary_dir.clone();
    sync_json(&dir, &image, &target, &pair.standby.fingerprint, &[]);
    assert_eq!(
        hash_file(&image),
        hash_file(&pair.standby.image_path("grow"))
    );
    // Grow with data at the end, then shrink to an unaligned size.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap();
    f.set_len(20 * MIB).unwrap();
    drop(f);
    imagegen::write_text(&image, 19 * MIB, 4096, 22).unwrap();
    sync_json(&dir, &image, &target, &pair.standby.fingerprint, &[]);
    assert_eq!(
        hash_file(&image),
        hash_file(&pair.standby.image_path("grow"))
    );
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap();
    f.set_len(5 * MIB + 7).unwrap();
    drop(f);
    sync_json(&dir, &image, &target, &pair.standby.fingerprint, &[]);
    assert_eq!(
        hash_file(&image),
        hash_file(&pair.standby.image_path("grow"))
    );
}

#[test]
fn link_cut_mid_sync_resumes_without_resending_acknowledged_data() {
    let pair = Pair::new(None);
    let image = pair.path("cut.raw");
    imagegen::make_image(&image, 160 * MIB, 31).unwrap();
    // Short idle timeout so the cut kills the connection (and forces a real
    // reconnect + resume) instead of QUIC simply retransmitting.
    std::fs::write(
        pair.primary_dir.join("config.toml"),
        "[transport]\nidle_timeout_secs = 2\n",
    )
    .unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let proxy = runtime
        .block_on(ferry_engine::netsim::UdpProxy::start(
            "127.0.0.1:0".parse().unwrap(),
            pair.standby.addr,
            5,
            ferry_engine::netsim::Impairment::default(),
        ))
        .unwrap();
    let target = format!("quic://{}/cut", proxy.listen_addr());
    let child = ferry_e2e::sync_spawn(
        &pair.primary_dir,
        &image,
        &target,
        &pair.standby.fingerprint,
        &["--bwlimit", "25M"],
    );
    std::thread::sleep(Duration::from_millis(2500));
    proxy.set_blackhole(true);
    std::thread::sleep(Duration::from_secs(4));
    proxy.set_blackhole(false);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "sync across a link cut failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["reconnects"].as_u64().unwrap() >= 1, "{report}");
    // Only batches that were not yet acknowledged may be sent twice: at most
    // the unacknowledged window (64 MiB) on top of the payload.
    let resent = report["bytes_resent"].as_u64().unwrap();
    assert!(
        resent <= 64 * MIB,
        "resent more than the unacknowledged window: {report}"
    );
    assert!(proxy.stats().dropped > 0);
    assert_eq!(
        hash_file(&image),
        hash_file(&pair.standby.image_path("cut"))
    );
    drop(proxy);
    drop(runtime);
}

#[test]
fn sender_bandwidth_limit_is_an_upper_bound() {
    let pair = Pair::new(None);
    let image = pair.path("qos.raw");
    // Random data (incompressible) so wire bytes ≈ data bytes: ~5 s at 12 MiB/s.
    imagegen::make_image(&image, 64 * MIB, 41).unwrap();
    let limit = (12 * MIB) as f64;
    let started = Instant::now();
    let report = sync_json(
        &pair.primary_dir,
        &image,
        &pair.standby.target("qos"),
        &pair.standby.fingerprint,
        &["--bwlimit", "12MiB/s"],
    );
    let seconds = started.elapsed().as_secs_f64();
    let wire = report["frame_bytes"].as_u64().unwrap() as f64;
    assert!(seconds > 2.0, "transfer too short to measure: {seconds}s");
    assert!(
        wire / seconds <= limit * 1.10,
        "sent {wire} bytes in {seconds:.2}s = {:.0} B/s, limit {limit}",
        wire / seconds
    );
    assert_eq!(
        hash_file(&image),
        hash_file(&pair.standby.image_path("qos"))
    );
}

#[test]
fn receiver_write_limit_is_an_upper_bound_and_reloads_on_sighup() {
    let pair = Pair::new(Some("[qos]\nreceive_limit = \"10M\"\n"));
    let image = pair.path("rx.raw");
    imagegen::make_image(&image, 64 * MIB, 51).unwrap();
    let started = Instant::now();
    let report = sync_json(
        &pair.primary_dir,
        &image,
        &pair.standby.target("rx"),
        &pair.standby.fingerprint,
        &[],
    );
    let seconds = started.elapsed().as_secs_f64();
    let plain = report["bytes_plain_data"].as_u64().unwrap() as f64;
    assert!(seconds > 2.0, "{seconds}");
    assert!(
        plain / seconds <= 10e6 * 1.10,
        "{plain} plain bytes in {seconds:.2}s"
    );
    // Raise the limit at run time: the agent reloads its config on SIGHUP.
    std::fs::write(
        pair.standby.dir.join("config.toml"),
        "[qos]\nreceive_limit = \"unlimited\"\n",
    )
    .unwrap();
    pair.standby.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pair.standby.log_text().contains("configuration reloaded") {
        assert!(
            Instant::now() < deadline,
            "no reload logged:\n{}",
            pair.standby.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(hash_file(&image), hash_file(&pair.standby.image_path("rx")));
}

#[test]
fn untrusted_primary_and_wrong_standby_fingerprint_are_refused() {
    let pair = Pair::new(None);
    let image = pair.path("x.raw");
    imagegen::make_image(&image, 4 * MIB, 61).unwrap();
    let stranger = pair.path("stranger");
    ferry_e2e::init_agent(&stranger);
    let src = format!("file:{}", image.display());
    let target = pair.standby.target("x");
    let stranger_s = stranger.display().to_string();
    let out = ferry(&[
        "sync",
        "--dir",
        &stranger_s,
        &src,
        &target,
        "--peer",
        &pair.standby.fingerprint,
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("trust") || err.contains("refused"),
        "unclear refusal: {err}"
    );
    assert!(
        pair.standby.log_text().contains("not trusted")
            || pair.standby.log_text().contains("refused"),
        "refusal not logged:\n{}",
        pair.standby.log_text()
    );
    // The primary itself refuses a standby whose certificate is not --peer.
    let dir_s = pair.primary_dir.display().to_string();
    let wrong = "ab".repeat(32);
    let out = ferry(&["sync", "--dir", &dir_s, &src, &target, "--peer", &wrong]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("fingerprint"), "{err}");
    // Nothing was written for either attempt.
    assert!(!pair.standby.image_path("x").exists());
}

#[test]
fn several_images_over_one_connection_commit_one_recovery_point() {
    let mut pair = Pair::new(None);
    // Two image streams at a time: the third waits for a slot. The group's
    // budget of unacknowledged bytes is its smallest, below one 4 MiB
    // batch: the images take turns sending beyond their first batch, and
    // none waits on itself (session/sender/group_window.rs).
    std::fs::write(
        pair.primary_dir.join("config.toml"),
        "[transport]\nmax_concurrent_images = 2\ngroup_unacked_bytes = \"1MiB\"\n",
    )
    .unwrap();
    let names = ["disk0", "disk1", "disk2"];
    let images: Vec<_> = names
        .iter()
        .map(|n| pair.path(&format!("{n}.raw")))
        .collect();
    for (i, path) in images.iter().enumerate() {
        imagegen::make_image(path, (8 + 4 * i as u64) * MIB, 80 + i as u64).unwrap();
    }
    let dir_s = pair.primary_dir.display().to_string();
    let run = |pair: &Pair| {
        let mut args: Vec<String> = vec!["sync".into(), "--dir".into(), dir_s.clone()];
        for (name, path) in names.iter().zip(&images) {
            args.push(format!("file:{}", path.display()));
            args.push(pair.standby.target(name));
        }
        args.extend([
            "--peer".into(),
            pair.standby.fingerprint.clone(),
            "--json".into(),
        ]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = ferry(&refs);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let first = run(&pair);
    assert_eq!(first["images"].as_array().unwrap().len(), 3, "{first}");
    for (name, path) in names.iter().zip(&images) {
        assert_eq!(hash_file(path), hash_file(&pair.standby.image_path(name)));
    }
    imagegen::scattered_writes(&images[1], 50, 90).unwrap();
    let second = run(&pair);
    assert!(second["recovery_point"].as_u64() > first["recovery_point"].as_u64());
    // Only disk1 changed, but every image is part of the new point.
    let changed: Vec<u64> = second["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["bytes_changed"].as_u64().unwrap())
        .collect();
    assert_eq!(changed.iter().filter(|c| **c > 0).count(), 1, "{second}");
    for (name, path) in names.iter().zip(&images) {
        assert_eq!(hash_file(path), hash_file(&pair.standby.image_path(name)));
    }
    // Every image's current recovery point is the group's.
    pair.standby.stop();
    for name in names {
        let out = std::process::Command::new(ferry_e2e::bin("ferry-agent"))
            .args(["points", "--dir"])
            .arg(&pair.standby.dir)
            .args([name, "--json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let points: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let current = points
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["current"] == true)
            .unwrap();
        assert_eq!(
            current["recovery_point"], second["recovery_point"],
            "{name}: {points}"
        );
    }
}
