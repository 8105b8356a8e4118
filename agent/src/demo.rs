//! `ferry demo`: a guided tour on loopback. Starts a standby agent and a
//! primary, replicates a realistic image, changes it, replicates again, cuts
//! the link in the middle of a sync and lets it resume, verifies, and
//! restores an older recovery point — printing what happened at each step.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use ferry_engine::identity::Identity;
use ferry_engine::netsim::{Impairment, UdpProxy};
use ferry_engine::session::sender::SyncOptions;
use ferry_engine::standby::StandbyStore;
use ferry_engine::transport::TrustStore;
use ferry_protocol::{ImageName, RecoveryPointId};

use crate::cli::sync_verify::{self, SyncRequest};
use crate::config::AgentConfig;
use crate::imagegen;
use crate::units::human_bytes;
use crate::uri::{SourceUri, TargetUri};

/// The report of the single image of a one-image sync, with the group's
/// recovery point and reconnects.
fn image_report(
    group: ferry_engine::session::sender::GroupReport,
) -> Result<ferry_engine::session::sender::SyncReport> {
    let mut report = group
        .images
        .into_iter()
        .next()
        .context("sync reported no image")?;
    report.recovery_point = group.recovery_point;
    report.reconnects = group.reconnects;
    report.seconds = group.seconds;
    Ok(report)
}

/// Runs the demo in `work` (a fresh directory) with an image of `size` bytes.
pub async fn run(work: &Path, size: u64) -> Result<()> {
    let primary_dir = work.join("primary");
    let standby_dir = work.join("standby");
    let image = work.join("vm1.raw");
    println!(
        "ferry demo — everything below runs on loopback in {}",
        work.display()
    );

    let primary = Identity::create(&primary_dir)?;
    let standby = Identity::create(&standby_dir)?;
    println!(
        "1. identities: primary {}…, standby {}…",
        &primary.fingerprint().to_hex()[..16],
        &standby.fingerprint().to_hex()[..16]
    );

    let mut config = AgentConfig::default();
    config.transport.idle_timeout = Duration::from_secs(2);
    let agent = crate::daemon::start_standby(
        &standby_dir,
        "127.0.0.1:0".parse()?,
        TrustStore::new([primary.fingerprint()]),
        &config,
    )
    .await?;
    let proxy =
        UdpProxy::start("127.0.0.1:0".parse()?, agent.addr, 1, Impairment::default()).await?;
    println!(
        "2. standby agent listening on {} (reached through a link simulator on {})",
        agent.addr,
        proxy.listen_addr()
    );
    println!(
        "   (the simulator is a user-space relay and caps throughput; benches/RESULTS.md has direct numbers)"
    );

    let started = Instant::now();
    imagegen::make_image(&image, size, 42)?;
    println!(
        "3. made {} ({}: 50% random, 25% zero, 25% log text) in {:.1}s",
        image.display(),
        human_bytes(size),
        started.elapsed().as_secs_f64()
    );

    let source = SourceUri::File(image.clone());
    let target = TargetUri {
        addr: proxy.listen_addr(),
        image: ImageName::new("vm1")?,
    };
    let tweak = |o: &mut SyncOptions| {
        o.transport.idle_timeout = Duration::from_secs(2);
        o.reconnect_for = Duration::from_secs(60);
    };
    let pairs = [(source.clone(), target.clone())];
    let request = || SyncRequest {
        dir: &primary_dir,
        pairs: &pairs,
        peer: standby.fingerprint(),
        bwlimit: None,
        progress_bar: false,
        tweak: Some(&tweak),
        cluster: None,
        progress: None,
        accept_changes_at_rest: false,
    };

    let first = image_report(sync_verify::sync(request()).await?)?;
    let first_hash = imagegen::file_hash(&image)?;
    println!(
        "4. full sync: scanned {}, {} zero (never sent), {} of data sent as {} on the wire, {:.2}s ({}/s) → recovery point {}",
        human_bytes(first.bytes_scanned),
        human_bytes(first.bytes_zero),
        human_bytes(first.bytes_plain_data),
        human_bytes(first.bytes_sent),
        first.seconds,
        human_bytes((first.bytes_scanned as f64 / first.seconds.max(1e-9)) as u64),
        first.recovery_point
    );

    let written = imagegen::scattered_writes(&image, 2_000, 7)?;
    imagegen::write_text(&image, size / 3, 4 * 1024 * 1024, 8)?;
    let second = image_report(sync_verify::sync(request()).await?)?;
    println!(
        "5. wrote 2000 scattered 4 KiB blocks ({}) and 4 MiB of log text; incremental sync found {} changed and sent {} ({:.2} wire bytes per changed byte) in {:.2}s",
        human_bytes(written),
        human_bytes(second.bytes_changed),
        human_bytes(second.frame_bytes),
        second.frame_bytes as f64 / second.bytes_changed.max(1) as f64,
        second.seconds
    );

    imagegen::scattered_writes(&image, 20_000, 9)?;
    imagegen::write_text(&image, 0, (size / 4) as usize, 10)?;
    let third = sync_through_link_cut(&primary_dir, &source, &target, &standby, &proxy).await?;
    print_resumed_sync(&third);
    ensure!(
        third.reconnects >= 1,
        "the link cut did not force a reconnect"
    );

    let report = sync_verify::verify(
        &primary_dir,
        &source,
        &target,
        standby.fingerprint(),
        &ferry_engine::rbd::ClusterSpec::default(),
    )
    .await?;
    println!(
        "7. verify by hashes: source and standby are {} at recovery point {} ({:.2}s, no data copied)",
        if report.equal { "IDENTICAL" } else { "DIFFERENT" },
        report.recovery_point,
        report.seconds
    );
    ensure!(
        report.equal,
        "verify found differences: {:?}",
        report.mismatches
    );

    // Stop the agent, then restore the first recovery point offline.
    agent.shutdown().await;
    drop(proxy);
    restore_first_point(work, &standby_dir, first.recovery_point, &first_hash)?;
    println!("demo finished: every step checked.");
    Ok(())
}

/// Step 6: a sync on a slowed link whose link is cut for 4 s mid-transfer
/// and then restored; the sync's report once it has resumed and committed.
async fn sync_through_link_cut(
    primary_dir: &Path,
    source: &SourceUri,
    target: &TargetUri,
    standby: &Identity,
    proxy: &UdpProxy,
) -> Result<ferry_engine::session::sender::SyncReport> {
    // Slow the link so the cut lands mid-transfer, cut it for 4 s, restore it.
    let sync_task = {
        let (dir, source, target, peer) = (
            primary_dir.to_path_buf(),
            source.clone(),
            target.clone(),
            standby.fingerprint(),
        );
        tokio::spawn(async move {
            let tweak = |o: &mut SyncOptions| {
                o.transport.idle_timeout = Duration::from_secs(2);
                o.reconnect_for = Duration::from_secs(60);
            };
            let pairs = [(source, target)];
            sync_verify::sync(SyncRequest {
                dir: &dir,
                pairs: &pairs,
                peer,
                bwlimit: Some(Some(20_000_000)),
                progress_bar: false,
                tweak: Some(&tweak),
                cluster: None,
                progress: None,
                accept_changes_at_rest: false,
            })
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    proxy.set_blackhole(true);
    println!("6. third sync running at 20 MB/s… link CUT (all packets dropped) for 4 s");
    tokio::time::sleep(Duration::from_secs(4)).await;
    proxy.set_blackhole(false);
    println!("   link restored");
    image_report(sync_task.await.context("sync task")??)
}

/// What the sync across the link cut did.
fn print_resumed_sync(third: &ferry_engine::session::sender::SyncReport) {
    println!(
        "   sync resumed and committed recovery point {}: {} reconnect(s), {} batches sent, {} resent (unacknowledged when the link died), {} changed, {:.2}s",
        third.recovery_point,
        third.reconnects,
        third.batches,
        third.batches_resent,
        human_bytes(third.bytes_changed),
        third.seconds
    );
}

/// Steps 8 and 9, with the agent stopped: lists the standby's recovery
/// points of vm1 and restores `recovery_point`, checking it has `expected_hash`.
fn restore_first_point(
    work: &Path,
    standby_dir: &Path,
    recovery_point: u64,
    expected_hash: &str,
) -> Result<()> {
    let store = StandbyStore::open(
        standby_dir,
        ferry_engine::standby::StoreConfig { retention: 5 },
    )?;
    let points = store.recovery_points(&ImageName::new("vm1")?)?;
    println!("8. standby keeps {} recovery points of vm1:", points.len());
    for p in &points {
        println!(
            "   rp {:>2}  epoch {:>2}  {}  {}{}",
            p.id,
            p.epoch,
            human_bytes(p.size),
            if p.fuzzy { "fuzzy " } else { "" },
            if p.current { "(current)" } else { "" }
        );
    }
    let restored = work.join("vm1-rp1.raw");
    store.restore(
        &ImageName::new("vm1")?,
        RecoveryPointId(recovery_point),
        &restored,
    )?;
    let restored_hash = imagegen::file_hash(&restored)?;
    ensure!(
        restored_hash == expected_hash,
        "restored recovery point differs from the image at the first sync"
    );
    println!(
        "9. restored recovery point {} to {}: identical to the image as it was at the first sync",
        recovery_point,
        restored.display()
    );
    Ok(())
}
