//! `ferry verify`: proves the standby equals a source by exchanging BLAKE3
//! hashes of granules, without copying data.
//!
//! Coarse pass at 16 MiB granules over the whole image, then a fine pass at
//! 64 KiB inside every coarse granule that differs, so the report says where
//! the images differ to within 64 KiB.

use std::io::{Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use ferry_protocol::{HashRequest, ImageName, Message};

use crate::hashing::hash_granules;
pub use crate::hashing::VerifySource;
use crate::identity::Identity;
use crate::session::framing::FrameReader;
use crate::session::sender::{SyncError, SyncOptions, SyncTarget};
use crate::transport;

/// Coarse granule of the first pass.
pub const COARSE_GRANULE: u32 = 16 * 1024 * 1024;
/// Fine granule inside differing coarse granules.
pub const FINE_GRANULE: u32 = 64 * 1024;
const MAX_GRANULES: u64 = 65_536;
const MAX_REPORTED_RANGES: usize = 1_000;

/// Outcome of a verification.
#[derive(Clone, Debug, serde::Serialize)]
pub struct VerifyReport {
    /// Image name on the standby.
    pub image: String,
    /// Recovery point the standby is at.
    pub recovery_point: u64,
    /// Size of the source.
    pub source_size: u64,
    /// Size of the standby image.
    pub standby_size: u64,
    /// Whether the two are byte-identical.
    pub equal: bool,
    /// Differing ranges `(offset, length)`, at most 1000, 64 KiB resolution.
    pub mismatches: Vec<(u64, u64)>,
    /// Wall-clock seconds.
    pub seconds: f64,
}

async fn remote_hashes(
    reader: &mut FrameReader,
    writer: &mut crate::session::framing::FrameWriter,
    image: &ImageName,
    offset: u64,
    length: u64,
    granularity: u32,
) -> Result<(u64, u64, Vec<[u8; 32]>), SyncError> {
    writer
        .send(&Message::HashRequest(HashRequest {
            image: image.clone(),
            offset,
            length,
            granularity,
        }))
        .await?;
    match reader.next().await? {
        Some(Message::HashAnswer(a)) if a.offset == offset && a.granularity == granularity => {
            Ok((a.recovery_point.get(), a.image_size, a.hashes))
        }
        Some(Message::Error(e)) => Err(e.into()),
        other => Err(SyncError::Protocol(format!(
            "expected HashAnswer, got {other:?}"
        ))),
    }
}

impl VerifySource {
    /// The file or block device at `path`.
    pub fn file(path: &Path) -> Result<Self, SyncError> {
        let mut f = std::fs::File::open(path)
            .map_err(|e| SyncError::Protocol(format!("opening {}: {e}", path.display())))?;
        let size = f
            .seek(SeekFrom::End(0))
            .map_err(|e| SyncError::Protocol(format!("sizing {}: {e}", path.display())))?;
        Ok(Self {
            reader: Arc::new(f),
            size,
            name: path.display().to_string(),
        })
    }
}

fn local_hashes(
    source: &VerifySource,
    size: u64,
    offset: u64,
    length: u64,
    granularity: u32,
) -> Result<Vec<[u8; 32]>, SyncError> {
    hash_granules(source.reader.as_ref(), size, offset, length, granularity)
        .map_err(|e| SyncError::Protocol(format!("reading {}: {e}", source.name)))
}

/// Compares `source` with the standby's copy of `target.image`.
pub async fn verify_image(
    source: VerifySource,
    target: SyncTarget,
    identity: Identity,
    options: SyncOptions,
) -> Result<VerifyReport, SyncError> {
    let started = Instant::now();
    let source_size = source.size;
    let endpoint = transport::client_endpoint(target.addr, &options.transport)?;
    let connection = transport::connect(
        &endpoint,
        target.addr,
        &identity,
        target.peer,
        &options.transport,
    )
    .await?;
    let (send, recv) = connection
        .open_bi()
        .await
        .map_err(|e| transport::explain_connection_error(target.addr, e, identity.fingerprint()))?;
    let mut writer = crate::session::framing::FrameWriter::new(send, options.max_frame_len);
    let mut reader = FrameReader::new(recv, options.max_frame_len);
    let hello = crate::session::receiver::local_hello(identity.fingerprint());
    writer.send(&Message::Hello(hello)).await?;
    match reader.next().await? {
        Some(Message::Hello(_)) => {}
        Some(Message::Error(e)) => return Err(e.into()),
        other => {
            return Err(SyncError::Protocol(format!(
                "expected Hello, got {other:?}"
            )))
        }
    }

    // Learn the standby's size first (hashing zero bytes).
    let (mut recovery_point, standby_size, _) = remote_hashes(
        &mut reader,
        &mut writer,
        &target.image,
        0,
        0,
        COARSE_GRANULE,
    )
    .await?;
    let common = source_size.min(standby_size);
    let mut differing_coarse = Vec::new();
    let mut offset = 0u64;
    let span = MAX_GRANULES * u64::from(COARSE_GRANULE);
    while offset < common {
        let length = span.min(common - offset);
        let src = source.clone();
        let local = tokio::task::spawn_blocking(move || {
            local_hashes(&src, common, offset, length, COARSE_GRANULE)
        });
        let (rp, _, remote) = remote_hashes(
            &mut reader,
            &mut writer,
            &target.image,
            offset,
            length,
            COARSE_GRANULE,
        )
        .await?;
        recovery_point = rp;
        let local = local
            .await
            .map_err(|e| SyncError::Protocol(format!("hashing task failed: {e}")))??;
        for (i, (a, b)) in local.iter().zip(remote.iter()).enumerate() {
            if a != b {
                differing_coarse.push(offset + i as u64 * u64::from(COARSE_GRANULE));
            }
        }
        if local.len() != remote.len() {
            return Err(SyncError::Protocol(format!(
                "the standby answered {} hashes for {} granules",
                remote.len(),
                local.len()
            )));
        }
        offset += length;
    }
    let mut mismatches: Vec<(u64, u64)> = Vec::new();
    let push = |start: u64, len: u64, list: &mut Vec<(u64, u64)>| {
        if let Some(last) = list.last_mut() {
            if last.0 + last.1 == start {
                last.1 += len;
                return;
            }
        }
        if list.len() < MAX_REPORTED_RANGES {
            list.push((start, len));
        }
    };
    for coarse in differing_coarse {
        let length = u64::from(COARSE_GRANULE).min(common - coarse);
        let src = source.clone();
        let local = tokio::task::spawn_blocking(move || {
            local_hashes(&src, common, coarse, length, FINE_GRANULE)
        });
        let (_, _, remote) = remote_hashes(
            &mut reader,
            &mut writer,
            &target.image,
            coarse,
            length,
            FINE_GRANULE,
        )
        .await?;
        let local = local
            .await
            .map_err(|e| SyncError::Protocol(format!("hashing task failed: {e}")))??;
        for (i, (a, b)) in local.iter().zip(remote.iter()).enumerate() {
            if a != b {
                let start = coarse + i as u64 * u64::from(FINE_GRANULE);
                let len = u64::from(FINE_GRANULE).min(common - start);
                push(start, len, &mut mismatches);
            }
        }
    }
    if source_size != standby_size {
        push(
            common,
            source_size.max(standby_size) - common,
            &mut mismatches,
        );
    }
    writer.finish();
    connection.close(quinn::VarInt::from_u32(0), b"done");
    endpoint.wait_idle().await;
    Ok(VerifyReport {
        image: target.image.to_string(),
        recovery_point,
        source_size,
        standby_size,
        equal: mismatches.is_empty(),
        mismatches,
        seconds: started.elapsed().as_secs_f64(),
    })
}
