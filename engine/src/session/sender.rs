//! The primary side of a replication session: runs the source pipeline for
//! one image epoch, sends the batches to the standby under the bandwidth
//! limit, keeps every unacknowledged batch until the standby says it is
//! durable (resending on Nack and after a reconnect), and commits the
//! recovery point.
//!
//! Resume rule: within one process a lost connection is re-established and
//! only unacknowledged batches are sent again. A new process resumes the same
//! epoch at `min(standby resume offset, source resumable offset)`, which is
//! the standby's offset: only chunks the pipeline delivered as durable
//! ([`EncodedChunk::durable`]: the source made its bookkeeping through their
//! end durable first) become batches, so the standby never holds durably a
//! batch beyond what the source can resume from, and a `ferry sync` killed at
//! any moment is resumed without a refusal. Below the resume offset the
//! source's manifest describes exactly what the standby received; above it
//! nothing of the killed attempt is durable on the standby (its resume cuts
//! the journal and staging tails past the last durable batch). A source
//! whose progress record still lags the standby (left by a version that
//! synced it less often) is not resumed below it: planning starts the epoch
//! again under the next number, and the standby discards the pending one.
//!
//! A process killed after sending its Commit leaves a standby that commits
//! the epoch while the source has not recorded it. Planning sees that and
//! commits the source's cycle first; if the standby applies the Commit only
//! after the planning query, its refusal of the same epoch number is
//! answered the same way (`roll_forward`): the source's scan of that epoch
//! is complete (a Commit is only sent after it), so its cycle is committed
//! and the image moves on to the next epoch.
//!
//! Here: the public types, planning and the group commit. The connection
//! and its re-establishment are in `sender/links.rs`; one image's epoch
//! (pipeline, batches, acks, resends) in `sender/image.rs`, over the I/O-free
//! window of unacknowledged batches in [`super::send_window`].

mod admission;
mod group_window;
mod image;
mod links;
mod types;

use std::net::SocketAddr;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use ferry_protocol::{
    AgentId, Commit, CommitImage, Epoch, ImageName, Message, OpenImage, RecoveryPointId,
    ResumeQuery,
};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::identity::Identity;
use crate::session::framing::FramingError;
use crate::source::ExtentSource;
use crate::transport::{self, TransportError};
use image::{transfer_image, Planned, Transferred};
use links::{first_link, is_retryable, next_or_lost, open_image_stream_on, LinkState, Links};
pub use types::{
    GroupReport, ImageJob, PathSnapshot, SyncError, SyncOptions, SyncProgress, SyncReport,
    SyncTarget,
};

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Decides epoch and base from what the source and the standby hold.
/// Returns (epoch, base_epoch, commit_base_first): when the last flag is set
/// the standby committed `base_epoch` but the source never heard so; the
/// source must record that commit before starting the new epoch.
fn plan_epoch(
    source_committed: Epoch,
    standby_committed: Epoch,
    source_scan_complete: bool,
) -> (Epoch, Epoch, bool) {
    if standby_committed == source_committed && source_committed != Epoch(0) {
        (source_committed.next(), source_committed, false)
    } else if standby_committed == source_committed.next() && source_scan_complete {
        (standby_committed.next(), standby_committed, true)
    } else {
        // Nothing in common (first sync, lost manifest, standby reset): full copy.
        let epoch = Epoch(source_committed.get().max(standby_committed.get()) + 1);
        (epoch, Epoch(0), false)
    }
}

/// Replicates one cycle of `source` to the standby and commits it as a
/// recovery point. Progress is published on `progress`.
pub async fn sync_image(
    source: Box<dyn ExtentSource>,
    target: SyncTarget,
    identity: Identity,
    options: SyncOptions,
    progress: watch::Sender<SyncProgress>,
) -> Result<SyncReport, SyncError> {
    let job = ImageJob {
        source,
        image: target.image.clone(),
        progress,
    };
    let mut group = sync_group(vec![job], target.addr, target.peer, identity, options).await?;
    let mut report = group
        .images
        .pop()
        .ok_or_else(|| SyncError::Protocol("group sync returned no image".into()))?;
    report.recovery_point = group.recovery_point;
    report.reconnects = group.reconnects;
    report.seconds = group.seconds;
    Ok(report)
}

/// Replicates one cycle of every image in `jobs` over one connection (up to
/// `max_concurrent_images` at once) and commits them together as one
/// recovery point: the standby applies it only when every image is complete,
/// and atomically across images.
pub async fn sync_group(
    jobs: Vec<ImageJob>,
    addr: SocketAddr,
    peer: AgentId,
    identity: Identity,
    options: SyncOptions,
) -> Result<GroupReport, SyncError> {
    let own = identity.fingerprint();
    sync_group_inner(jobs, addr, peer, identity, options)
        .await
        .map_err(|e| explain_refusal(e, addr, own))
}

/// The epoch the standby committed last for each of `images`, asked on a
/// connection of its own. The agent asks before capturing when a source
/// still holds the capture of a sync that died after the standby's commit
/// but before the source recorded it: the source rolls forward first, so
/// the next capture is taken afresh (for a group: at one instant) instead of
/// image by image while planning.
pub async fn standby_committed_epochs(
    images: &[ImageName],
    addr: SocketAddr,
    peer: AgentId,
    identity: &Identity,
    options: &SyncOptions,
) -> Result<Vec<Epoch>, SyncError> {
    let endpoint = transport::client_endpoint(addr, &options.transport)?;
    let mut link = first_link(&endpoint, addr, peer, identity, options).await?;
    let mut committed = Vec::with_capacity(images.len());
    for image in images {
        let query = ResumeQuery {
            image: image.clone(),
            epoch: Epoch(1),
        };
        link.control_writer
            .send(&Message::ResumeQuery(query))
            .await?;
        let answer =
            next_or_lost(&mut link.control_reader, &link.connection, addr, identity).await?;
        match answer {
            Message::ResumeAnswer(a) if a.image == *image => committed.push(a.committed_epoch),
            Message::Error(e) => return Err(e.into()),
            other => {
                return Err(SyncError::Protocol(format!(
                    "expected ResumeAnswer, got {other:?}"
                )))
            }
        }
    }
    link.connection.close(quinn::VarInt::from_u32(0), b"done");
    Ok(committed)
}

/// In TLS 1.3 the client finishes its handshake before the server has
/// checked the client's certificate, so a standby that does not trust us is
/// often first noticed as a lost stream: say why it was lost.
fn explain_refusal(error: SyncError, addr: SocketAddr, own: AgentId) -> SyncError {
    let lost = match &error {
        SyncError::Framing(FramingError::Write(quinn::WriteError::ConnectionLost(c)))
        | SyncError::Framing(FramingError::Read(quinn::ReadError::ConnectionLost(c))) => c.clone(),
        _ => return error,
    };
    match transport::explain_connection_error(addr, lost, own) {
        refused @ TransportError::Refused { .. } => SyncError::Transport(refused),
        _ => error,
    }
}

async fn sync_group_inner(
    jobs: Vec<ImageJob>,
    addr: SocketAddr,
    peer: AgentId,
    identity: Identity,
    options: SyncOptions,
) -> Result<GroupReport, SyncError> {
    let started = Instant::now();
    if jobs.is_empty() {
        return Err(SyncError::Protocol(
            "a group sync needs at least one image".into(),
        ));
    }
    let mut names = std::collections::HashSet::new();
    for job in &jobs {
        if !names.insert(job.image.clone()) {
            return Err(SyncError::Protocol(format!(
                "image {} appears twice in one group",
                job.image
            )));
        }
    }
    let endpoint = transport::client_endpoint(addr, &options.transport)?;
    let link = first_link(&endpoint, addr, peer, &identity, &options).await?;
    let links = std::sync::Arc::new(Links {
        endpoint: endpoint.clone(),
        target_addr: addr,
        peer,
        identity,
        options: options.clone(),
        group_window: group_window::GroupWindow::new(options.transport.group_unacked_bytes),
        state: tokio::sync::Mutex::new(LinkState {
            generation: 0,
            link,
        }),
        reconnects: std::sync::atomic::AtomicU32::new(0),
    });

    let planned = plan_images(&links, jobs).await?;
    let max_concurrent_images = options.transport.max_concurrent_images.max(1) as usize;
    let mut done = transfer_all(&links, planned, max_concurrent_images).await?;

    // Commit every image as one recovery point.
    let recovery_point = RecoveryPointId(
        unix_ms()
            .max(done.iter().map(|t| t.open.epoch.get()).max().unwrap_or(1))
            .max(options.min_recovery_point.saturating_add(1)),
    );
    let fuzzy = done.iter().any(|t| t.fuzzy);
    let commit = Commit {
        recovery_point,
        created_unix_ms: unix_ms(),
        fuzzy,
        images: done
            .iter()
            .map(|t| CommitImage {
                image: t.open.image.clone(),
                epoch: t.open.epoch,
                last_seq: t.last_seq,
                size: t.open.size,
            })
            .collect(),
    };
    // Fault tests: every batch is durable on the standby, no Commit sent.
    crate::testpoint::reach("sender::before-commit");
    commit_group(&links, &commit, &mut done).await?;
    // Fault tests: the standby committed, the source has not recorded it
    // (the next sync must roll it forward).
    crate::testpoint::reach("sender::after-commit");
    let mut report = GroupReport {
        recovery_point: recovery_point.get(),
        fuzzy,
        ..GroupReport::default()
    };
    for t in done {
        let Transferred {
            mut source,
            open,
            report: mut image_report,
            ..
        } = t;
        source.commit_cycle(open.epoch)?;
        image_report.recovery_point = recovery_point.get();
        report.images.push(image_report);
    }
    {
        let mut state = links.state.lock().await;
        let link = &mut state.link;
        report.udp_bytes = link.connection.stats().udp_tx.bytes;
        if let [only] = report.images.as_mut_slice() {
            only.udp_bytes = report.udp_bytes;
        }
        link.control_writer.finish();
        link.connection.close(quinn::VarInt::from_u32(0), b"done");
    }
    report.reconnects = links.reconnects.load(std::sync::atomic::Ordering::Relaxed);
    report.seconds = started.elapsed().as_secs_f64();
    endpoint.wait_idle().await;
    Ok(report)
}

/// Plans every image's epoch against what the standby holds (committing
/// first a source cycle the standby committed but the source never
/// recorded).
async fn plan_images(links: &Links, jobs: Vec<ImageJob>) -> Result<Vec<Planned>, SyncError> {
    let mut planned = Vec::with_capacity(jobs.len());
    for mut job in jobs {
        let info = job.source.info()?;
        let source_committed = job.source.committed_epoch();
        let answer = links
            .ask_across_reconnects(&Message::ResumeQuery(ResumeQuery {
                image: job.image.clone(),
                epoch: source_committed.next(),
            }))
            .await?;
        let answer = match answer {
            Message::ResumeAnswer(a) if a.image == job.image => a,
            Message::Error(e) => return Err(e.into()),
            other => {
                return Err(SyncError::Protocol(format!(
                    "expected ResumeAnswer, got {other:?}"
                )))
            }
        };
        let scan_complete = job.source.resumable_offset(source_committed.next()) >= info.size;
        let (mut epoch, base_epoch, commit_first) =
            plan_epoch(source_committed, answer.committed_epoch, scan_complete);
        if epoch == answer.epoch && answer.resume_offset > job.source.resumable_offset(epoch) {
            // The standby holds more of this epoch than the source can resume
            // from (a progress record from a version that synced it less
            // often): resuming lower would be refused. Start the epoch again
            // under the next number; the standby discards the pending one.
            warn!(image = %job.image, %epoch, standby_offset = answer.resume_offset,
                source_offset = job.source.resumable_offset(epoch),
                "the source cannot resume where the standby is; starting the epoch again");
            epoch = epoch.next();
        }
        if commit_first {
            job.source.commit_cycle(base_epoch)?;
            info!(image = %job.image, epoch = %base_epoch, "the standby had already committed our last epoch; recorded it");
        }
        let open = OpenImage {
            image: job.image.clone(),
            size: info.size,
            block_size: info.block_size,
            epoch,
            base_epoch,
        };
        planned.push(Planned { job, open });
    }
    Ok(planned)
}

/// Transfers every planned image, at most `max_concurrent_images` with
/// much to send at once and small ones beside them (see
/// `sender/admission.rs`); the first failure aborts the others. Returns
/// them in plan order.
async fn transfer_all(
    links: &std::sync::Arc<Links>,
    planned: Vec<Planned>,
    max_concurrent_images: usize,
) -> Result<Vec<Transferred>, SyncError> {
    let admission = std::sync::Arc::new(admission::Admission::new(max_concurrent_images));
    let mut tasks = tokio::task::JoinSet::new();
    for (index, plan) in planned.into_iter().enumerate() {
        let links = links.clone();
        let admission = admission.clone();
        tasks.spawn(async move {
            let result = match admission.admit(plan).await {
                Ok((plan, _slot)) => transfer_image(&links, plan).await,
                Err(e) => Err(e),
            };
            (index, result)
        });
    }
    let mut done: Vec<Option<Transferred>> = Vec::new();
    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((index, Ok(t))) => {
                if done.len() <= index {
                    done.resize_with(index + 1, || None);
                }
                done[index] = Some(t);
            }
            Ok((_, Err(e))) => {
                if failure.is_none() {
                    failure = Some(e);
                    tasks.abort_all();
                }
            }
            Err(e) if e.is_cancelled() => {}
            Err(e) => {
                failure.get_or_insert(SyncError::Protocol(format!("image task failed: {e}")));
            }
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(done.into_iter().flatten().collect())
}

/// Sends `commit`, re-parking images on a new connection and asking whether
/// the point was already committed when the link fails meanwhile.
async fn commit_group(
    links: &Links,
    commit: &Commit,
    done: &mut [Transferred],
) -> Result<(), SyncError> {
    let deadline = Instant::now() + links.options.reconnect_for;
    let recovery_point = commit.recovery_point;
    loop {
        let (generation, _) = links.current().await;
        let attempt = async {
            let (first_image, first_epoch) = (done[0].open.image.clone(), done[0].open.epoch);
            if done.iter().any(|t| t.parked_on != generation) {
                // The standby may already have committed before the link broke.
                let query = ResumeQuery { image: first_image, epoch: first_epoch };
                let (_, answer) = links.ask(&Message::ResumeQuery(query)).await?;
                if let Message::ResumeAnswer(a) = answer {
                    if a.committed_epoch == first_epoch {
                        return Ok(true);
                    }
                }
            }
            for t in done.iter_mut() {
                if t.parked_on == generation {
                    continue;
                }
                let (gen_now, connection) = links.current().await;
                let target = links.target(&t.open.image);
                let mut again = open_image_stream_on(&connection, &t.open, &target, &links.identity, &links.options).await?;
                if again.answer.durable_seq != t.last_seq {
                    return Err(SyncError::Protocol(format!(
                        "before committing, the standby holds batch {} of {} epoch {} durably, but batch {} was acknowledged",
                        again.answer.durable_seq, t.open.image, t.open.epoch, t.last_seq
                    )));
                }
                again.writer.finish();
                while let Ok(Some(_)) = again.reader.next().await {}
                t.parked_on = gen_now;
            }
            match links.ask(&Message::Commit(commit.clone())).await?.1 {
                Message::Committed(c) if c.recovery_point == recovery_point => Ok(true),
                Message::Error(e) => Err(e.into()),
                other => Err(SyncError::Protocol(format!("expected Committed, got {other:?}"))),
            }
        }
        .await;
        match attempt {
            Ok(_) => return Ok(()),
            Err(e) if is_retryable(&e) && Instant::now() < deadline => {
                links.reconnect(generation, &e).await?;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_planning() {
        // First sync ever.
        assert_eq!(
            plan_epoch(Epoch(0), Epoch(0), false),
            (Epoch(1), Epoch(0), false)
        );
        // Normal incremental.
        assert_eq!(
            plan_epoch(Epoch(3), Epoch(3), false),
            (Epoch(4), Epoch(3), false)
        );
        // Standby committed our epoch 4 but we crashed before recording it.
        assert_eq!(
            plan_epoch(Epoch(3), Epoch(4), true),
            (Epoch(5), Epoch(4), true)
        );
        // Same, but our scan of 4 never completed: cannot trust it, full copy.
        assert_eq!(
            plan_epoch(Epoch(3), Epoch(4), false),
            (Epoch(5), Epoch(0), false)
        );
        // Standby was reset.
        assert_eq!(
            plan_epoch(Epoch(7), Epoch(0), false),
            (Epoch(8), Epoch(0), false)
        );
    }
}
