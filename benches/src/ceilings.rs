//! Stage ceilings for the end-to-end harness: every stage of a sync timed
//! alone, single-threaded, on an image's own data (read, zero check, BLAKE3
//! per 4 KiB block and per batch, zstd, CRC-32C, decompress, write + fdatasync),
//! the engine's batch codec for reference, and raw quinn loopback throughput
//! with ferry's transport settings.
//!
//! CPU is the calling thread's CPU clock for single-threaded stages and the
//! whole process's `getrusage` for QUIC (both endpoints live in this process,
//! so that figure is send + receive together).

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use ferry_engine::payload_codec::{Decoder, Encoder, PlainExtent};
use ferry_engine::source::manifest::{is_zero, BlockHash};
use ferry_engine::sys::uring::{next_data_offset, BlockReader};
use ferry_protocol::{Epoch, ExtentBatch, ExtentKind, ImageName, SeqNo};

use crate::sys;

/// Block size of change detection (the manifest's granule).
pub const BLOCK: usize = 4096;
/// Chunk (batch) size of the primary pipeline.
pub const CHUNK: usize = 4 << 20;
/// 4 KiB writes of the harness's incremental phase (128 MiB).
pub const SCATTERED_BLOCKS: u64 = 32768;

/// One stage timed alone.
#[derive(Clone, Debug)]
pub struct Stage {
    /// Short name (`read_pread`, `blake3_4k`, …).
    pub name: &'static str,
    /// Bytes the stage processed.
    pub bytes: u64,
    /// CPU time spent on them.
    pub cpu: Duration,
    /// Wall time.
    pub wall: Duration,
}

impl Stage {
    /// CPU-seconds per GB (10⁹ bytes) processed.
    pub fn cpu_s_per_gb(&self) -> f64 {
        if self.bytes == 0 {
            return 0.0;
        }
        self.cpu.as_secs_f64() / (self.bytes as f64 / 1e9)
    }

    /// GB (10⁹ bytes) per CPU-second.
    pub fn gb_per_cpu_s(&self) -> f64 {
        let s = self.cpu.as_secs_f64();
        if s == 0.0 {
            return f64::INFINITY;
        }
        self.bytes as f64 / 1e9 / s
    }
}

fn timed<T>(name: &'static str, bytes: u64, f: impl FnOnce() -> Result<T>) -> Result<(Stage, T)> {
    let wall = Instant::now();
    let cpu = sys::thread_cpu();
    let out = f().with_context(|| format!("stage {name}"))?;
    let stage = Stage {
        name,
        bytes,
        cpu: sys::thread_cpu().saturating_sub(cpu),
        wall: wall.elapsed(),
    };
    Ok((stage, out))
}

/// Bytes a sync actually reads: the image minus 4 MiB chunks that are
/// entirely holes (the file source skips those with `SEEK_DATA`).
pub fn bytes_read_by_sync(path: &Path) -> Result<u64> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let size = file.metadata()?.len();
    let mut read = 0u64;
    let mut start = 0u64;
    while start < size {
        let end = (start + CHUNK as u64).min(size);
        let data = next_data_offset(&file, start)
            .with_context(|| format!("SEEK_DATA at {start} in {}", path.display()))?;
        if data.is_some_and(|d| d < end) {
            read += end - start;
        }
        start = end;
    }
    Ok(read)
}

/// A changed-extent layout of an image held in memory: per 4 MiB chunk,
/// the runs of non-zero 4 KiB blocks (what a full sync sends as data).
pub struct ImageData {
    /// The whole image.
    pub bytes: Vec<u8>,
    /// `(offset, length)` of each non-zero run, never crossing a chunk boundary.
    pub runs: Vec<(usize, usize)>,
    /// Index into `runs` where each chunk starts (`chunk_starts[i]..chunk_starts[i+1]`).
    pub chunk_starts: Vec<usize>,
}

impl ImageData {
    /// Bytes of non-zero data.
    pub fn nonzero_bytes(&self) -> u64 {
        self.runs.iter().map(|r| r.1 as u64).sum()
    }

    fn chunk_runs(&self, chunk: usize) -> &[(usize, usize)] {
        let end = self
            .chunk_starts
            .get(chunk + 1)
            .copied()
            .unwrap_or(self.runs.len());
        &self.runs[self.chunk_starts[chunk]..end]
    }

    fn chunks(&self) -> usize {
        self.chunk_starts.len()
    }
}

/// Everything [`measure_stages`] found.
pub struct StageReport {
    /// The stages, in pipeline order, then reference rows.
    pub stages: Vec<Stage>,
    /// Non-zero bytes of the image.
    pub nonzero_bytes: u64,
    /// Bytes after zstd level 1 (random data stored by zstd itself).
    pub compressed_bytes: u64,
    /// Payload bytes the engine's [`Encoder`] produces for the same data.
    pub engine_payload_bytes: u64,
}

impl StageReport {
    /// A stage by name.
    pub fn get(&self, name: &str) -> Option<&Stage> {
        self.stages.iter().find(|s| s.name == name)
    }
}

/// Times every per-byte stage, single-threaded, on the image at `path`;
/// `scratch_dir` (same file system as the standby) receives the write test.
pub fn measure_stages(path: &Path, scratch_dir: &Path) -> Result<StageReport> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let size = file.metadata()?.len();
    let size_usize = usize::try_from(size).context("image larger than memory")?;
    let mut stages = Vec::new();
    let mut buf = vec![0u8; CHUNK];
    time_reads(&file, size, &mut buf, &mut stages)?;
    let image = load_image(&file, path, size_usize, &mut stages)?;
    let nonzero_bytes = image.nonzero_bytes();
    time_hashes(&image, nonzero_bytes, &mut stages)?;
    let compressed_bytes = time_zstd_and_crc(&image, nonzero_bytes, &mut stages)?;
    time_writes(&image, scratch_dir, size, &buf[..BLOCK], &mut stages)?;
    let engine_payload_bytes = time_engine_codec(image, size, nonzero_bytes, &mut stages)?;
    Ok(StageReport {
        stages,
        nonzero_bytes,
        compressed_bytes,
        engine_payload_bytes,
    })
}

/// Read stages: plain pread of 4 MiB, and the engine's io_uring reader.
fn time_reads(file: &File, size: u64, buf: &mut [u8], stages: &mut Vec<Stage>) -> Result<()> {
    let (s, _) = timed("read_pread", size, || {
        let mut off = 0u64;
        while off < size {
            let n = file
                .read_at(buf, off)
                .with_context(|| format!("pread at {off}"))?;
            if n == 0 {
                bail!("unexpected end of file at {off}");
            }
            off += n as u64;
        }
        Ok(())
    })?;
    stages.push(s);
    let mut reader = BlockReader::new();
    let backend = reader.backend();
    let (s, _) = timed("read_io_uring", size, || {
        let mut off = 0u64;
        while off < size {
            let n = reader
                .read_at(file, off, buf)
                .with_context(|| format!("{backend} read at {off}"))?;
            if n == 0 {
                bail!("unexpected end of file at {off}");
            }
            off += n as u64;
        }
        Ok(())
    })?;
    stages.push(Stage {
        name: if backend == "io_uring" {
            "read_io_uring"
        } else {
            "read_blockreader_pread"
        },
        ..s
    });
    Ok(())
}

/// Loads the image (untimed) and finds its non-zero runs with the engine's
/// zero check (timed).
fn load_image(
    mut file: &File,
    path: &Path,
    size_usize: usize,
    stages: &mut Vec<Stage>,
) -> Result<ImageData> {
    let mut bytes = vec![0u8; size_usize];
    file.read_exact(&mut bytes)
        .with_context(|| format!("loading {}", path.display()))?;
    let (s, nonzero) = timed("zero_check", size_usize as u64, || {
        Ok(bytes
            .chunks(BLOCK)
            .map(|b| !is_zero(b))
            .collect::<Vec<bool>>())
    })?;
    stages.push(s);
    let mut runs = Vec::new();
    let mut chunk_starts = Vec::new();
    for (ci, chunk_flags) in nonzero.chunks(CHUNK / BLOCK).enumerate() {
        chunk_starts.push(runs.len());
        let base = ci * CHUNK;
        let mut run: Option<(usize, usize)> = None;
        for (bi, nz) in chunk_flags.iter().enumerate() {
            let off = base + bi * BLOCK;
            let len = BLOCK.min(size_usize - off);
            match (&mut run, nz) {
                (Some(r), true) => r.1 += len,
                (None, true) => run = Some((off, len)),
                (Some(_), false) => runs.extend(run.take()),
                (None, false) => {}
            }
        }
        runs.extend(run);
    }
    Ok(ImageData {
        bytes,
        runs,
        chunk_starts,
    })
}

/// BLAKE3 per 4 KiB block (the manifest's change detection) and per batch
/// (the end-to-end check; each side does it once).
fn time_hashes(image: &ImageData, nonzero_bytes: u64, stages: &mut Vec<Stage>) -> Result<()> {
    // BLAKE3 per 4 KiB block (the manifest's change detection).
    let (s, _) = timed("blake3_4k", nonzero_bytes, || {
        let mut acc = 0u8;
        for &(off, len) in &image.runs {
            for block in image.bytes[off..off + len].chunks(BLOCK) {
                acc ^= BlockHash::of_data(block).0[0];
            }
        }
        std::hint::black_box(acc);
        Ok(())
    })?;
    stages.push(s);

    // BLAKE3 per batch (the end-to-end check; each side does it once).
    let (s, _) = timed("blake3_batch", nonzero_bytes, || {
        let mut acc = 0u8;
        for c in 0..image.chunks() {
            let mut hasher = blake3::Hasher::new();
            for &(off, len) in image.chunk_runs(c) {
                hasher.update(&image.bytes[off..off + len]);
            }
            acc ^= hasher.finalize().as_bytes()[0];
        }
        std::hint::black_box(acc);
        Ok(())
    })?;
    stages.push(s);
    Ok(())
}

/// zstd level 1, CRC-32C of the compressed payload and zstd decompress;
/// returns the compressed bytes.
fn time_zstd_and_crc(
    image: &ImageData,
    nonzero_bytes: u64,
    stages: &mut Vec<Stage>,
) -> Result<u64> {
    // zstd level 1 of every non-zero run into a pre-touched arena.
    let bound: usize = image
        .runs
        .iter()
        .map(|r| zstd::zstd_safe::compress_bound(r.1))
        .sum();
    let mut arena = vec![1u8; bound];
    let mut frames: Vec<(usize, usize, usize)> = Vec::with_capacity(image.runs.len());
    let mut compressor = zstd::bulk::Compressor::new(1).context("zstd context")?;
    let (s, used) = timed("zstd1_compress", nonzero_bytes, || {
        let mut used = 0usize;
        for &(off, len) in &image.runs {
            let n = compressor
                .compress_to_buffer(&image.bytes[off..off + len], &mut arena[used..])
                .with_context(|| format!("compressing run at {off}"))?;
            frames.push((used, n, len));
            used += n;
        }
        Ok(used)
    })?;
    stages.push(s);
    let compressed_bytes = used as u64;

    // CRC-32C of the compressed payload (each side does it once).
    let (s, _) = timed("crc32c", compressed_bytes, || {
        std::hint::black_box(crc32c::crc32c(&arena[..used]));
        Ok(())
    })?;
    stages.push(s);

    // zstd decompress of every frame into a reused buffer.
    let mut decompressor = zstd::bulk::Decompressor::new().context("zstd context")?;
    let mut out = vec![0u8; CHUNK];
    let (s, _) = timed("zstd_decompress", nonzero_bytes, || {
        for &(start, n, len) in &frames {
            let got = decompressor
                .decompress_to_buffer(&arena[start..start + n], &mut out[..len])
                .with_context(|| format!("decompressing frame at arena offset {start}"))?;
            if got != len {
                bail!("frame at arena offset {start} decoded to {got} bytes, expected {len}");
            }
        }
        Ok(())
    })?;
    stages.push(s);
    drop(arena);
    Ok(compressed_bytes)
}

/// Write stages: the full copy's sequential pwrites and an incremental
/// sync's scattered 4 KiB ones, each ending in fdatasync; `block` is the
/// 4 KiB written at each scattered offset.
fn time_writes(
    image: &ImageData,
    scratch_dir: &Path,
    size: u64,
    block: &[u8],
    stages: &mut Vec<Stage>,
) -> Result<()> {
    let nonzero_bytes = image.nonzero_bytes();
    // Write: pwrite every non-zero run into a new sparse file, then fdatasync.
    let target = scratch_dir.join("stage-write.raw");
    let wfile = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&target)
        .with_context(|| format!("creating {}", target.display()))?;
    wfile.set_len(size)?;
    let (s, _) = timed("write_fdatasync", nonzero_bytes, || {
        for &(off, len) in &image.runs {
            wfile
                .write_all_at(&image.bytes[off..off + len], off as u64)
                .with_context(|| format!("pwrite at {off} in {}", target.display()))?;
        }
        wfile
            .sync_data()
            .with_context(|| format!("fdatasync {}", target.display()))
    })?;
    stages.push(s);
    drop(wfile);
    let _ = std::fs::remove_file(&target);

    // Write as an incremental sync of scattered 4 KiB writes does: the same
    // number of 4 KiB pwrites as `scattered_writes(…, 32768, …)` makes, at
    // random aligned offsets of a copy-sized file, then fdatasync.
    let blocks = (size / BLOCK as u64).max(1);
    let count = SCATTERED_BLOCKS.min(blocks);
    let mut offsets: Vec<u64> = {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        (0..count)
            .map(|_| rng.gen_range(0..blocks) * BLOCK as u64)
            .collect()
    };
    offsets.sort_unstable();
    offsets.dedup();
    let wfile = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&target)
        .with_context(|| format!("creating {}", target.display()))?;
    wfile.set_len(size)?;
    let (s, _) = timed(
        "write_4k_random",
        offsets.len() as u64 * BLOCK as u64,
        || {
            for &off in &offsets {
                wfile
                    .write_all_at(block, off)
                    .with_context(|| format!("pwrite at {off} in {}", target.display()))?;
            }
            wfile
                .sync_data()
                .with_context(|| format!("fdatasync {}", target.display()))
        },
    )?;
    stages.push(s);
    drop(wfile);
    let _ = std::fs::remove_file(&target);
    Ok(())
}

/// Reference rows: the engine's batch codec both ways; consumes the image
/// to keep peak memory as before, returns the engine's payload bytes.
fn time_engine_codec(
    image: ImageData,
    size: u64,
    nonzero_bytes: u64,
    stages: &mut Vec<Stage>,
) -> Result<u64> {
    // Reference rows: the engine's batch codec (probe, zstd or copy, CRC,
    // BLAKE3) both ways, on 4 MiB batches of the same runs.
    let name = ImageName::new("bench").context("image name")?;
    let extents: Vec<Vec<PlainExtent>> = (0..image.chunks())
        .map(|c| {
            image
                .chunk_runs(c)
                .iter()
                .map(|&(off, len)| PlainExtent {
                    offset: off as u64,
                    length: len as u32,
                    kind: ExtentKind::Data,
                    data: Some(Bytes::copy_from_slice(&image.bytes[off..off + len])),
                })
                .collect()
        })
        .collect();
    drop(image);
    let mut encoder = Encoder::new(1);
    // Timed with each payload dropped at once, so the encoder's buffer pool
    // recycles as it does when the sender releases acknowledged batches.
    let (s, _) = timed("engine_encode", nonzero_bytes, || {
        for (c, ex) in extents.iter().enumerate() {
            let start = (c * CHUNK) as u64;
            let end = (start + CHUNK as u64).min(size);
            let chunk = encoder
                .encode(start, end, ex)
                .with_context(|| format!("encoding chunk at {start}"))?;
            std::hint::black_box(chunk.payload_crc32c);
        }
        Ok(())
    })?;
    stages.push(s);
    let mut batches = Vec::with_capacity(extents.len());
    {
        for (c, ex) in extents.iter().enumerate() {
            let start = (c * CHUNK) as u64;
            let end = (start + CHUNK as u64).min(size);
            let chunk = encoder
                .encode(start, end, ex)
                .with_context(|| format!("encoding chunk at {start}"))?;
            batches.push(ExtentBatch {
                image: name.clone(),
                epoch: Epoch(1),
                seq: SeqNo(c as u64 + 1),
                scan_start: chunk.scan_start,
                scan_end: chunk.scan_end,
                payload_crc32c: chunk.payload_crc32c,
                plain_blake3: chunk.plain_blake3,
                extents: chunk.extents,
                payload: chunk.payload,
            });
        }
    }
    drop(extents);
    let mut decoder = Decoder::new();
    let (s, _) = timed("engine_decode", nonzero_bytes, || {
        for b in &batches {
            let n = decoder
                .decode(b)
                .with_context(|| format!("decoding batch {}", b.seq.0))?
                .len();
            std::hint::black_box(n);
        }
        Ok(())
    })?;
    stages.push(s);
    Ok(batches.iter().map(|b| b.payload.len() as u64).sum())
}

/// Result of the raw quinn loopback ceiling.
#[derive(Clone, Copy, Debug)]
pub struct QuicCeiling {
    /// Bytes sent over the stream.
    pub bytes: u64,
    /// Wall time from the first write to the receiver's acknowledgement.
    pub wall: Duration,
    /// CPU of the whole process (sender + receiver) during the transfer.
    pub cpu: Duration,
}

impl QuicCeiling {
    /// CPU-seconds per GB for send + receive together.
    pub fn cpu_s_per_gb(&self) -> f64 {
        self.cpu.as_secs_f64() / (self.bytes as f64 / 1e9)
    }

    /// Wall throughput in MB/s.
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.wall.as_secs_f64()
    }
}

/// Raw quinn loopback: two in-process endpoints with ferry's
/// [`ferry_engine::transport::TransportSettings`] and mutual TLS, one stream,
/// `total` bytes in 4 MiB writes. `identity_dir` receives two identities.
pub fn quic_ceiling(identity_dir: &Path, total: u64) -> Result<QuicCeiling> {
    use ferry_engine::identity::Identity;
    use ferry_engine::transport::{
        client_endpoint, connect, server_endpoint, TransportSettings, TrustStore,
    };

    let server_id = Identity::create(&identity_dir.join("server")).context("server identity")?;
    let client_id = Identity::create(&identity_dir.join("client")).context("client identity")?;
    let settings = TransportSettings::default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    runtime.block_on(async move {
        let server = server_endpoint(
            "127.0.0.1:0".parse().context("literal address")?,
            &server_id,
            TrustStore::new([client_id.fingerprint()]),
            &settings,
        )
        .context("server endpoint")?;
        let addr = server.local_addr().context("server address")?;
        let receiver = tokio::spawn(async move {
            let conn = server
                .accept()
                .await
                .context("server closed")?
                .await
                .context("accepting")?;
            let (mut send, mut recv) = conn.accept_bi().await.context("accept_bi")?;
            let mut got = 0u64;
            while let Some(chunk) = recv.read_chunk(1 << 20, true).await.context("read_chunk")? {
                got += chunk.bytes.len() as u64;
            }
            send.write_all(&got.to_le_bytes()).await.context("ack")?;
            send.finish().context("finish ack")?;
            // Keep the connection until the client has read the ack.
            let _ = conn.closed().await;
            anyhow::Ok(got)
        });
        let client = client_endpoint(addr, &settings).context("client endpoint")?;
        let conn = connect(
            &client,
            addr,
            &client_id,
            server_id.fingerprint(),
            &settings,
        )
        .await
        .context("connecting")?;
        let (mut send, mut recv) = conn.open_bi().await.context("open_bi")?;
        let block = Bytes::from(vec![0xA5u8; CHUNK]);
        let usage = sys::self_usage()?;
        let wall = Instant::now();
        let mut sent = 0u64;
        while sent < total {
            send.write_chunk(block.clone()).await.context("write")?;
            sent += block.len() as u64;
        }
        send.finish().context("finish")?;
        let ack = recv.read_to_end(8).await.context("reading ack")?;
        let wall = wall.elapsed();
        let cpu = sys::self_usage()?.cpu().saturating_sub(usage.cpu());
        conn.close(0u32.into(), b"done");
        let got = receiver.await.context("receiver task")??;
        let acked = u64::from_le_bytes(ack.as_slice().try_into().context("ack is 8 bytes")?);
        if got != sent || acked != sent {
            bail!("sent {sent} bytes, receiver counted {got}, acknowledged {acked}");
        }
        client.wait_idle().await;
        Ok(QuicCeiling {
            bytes: sent,
            wall,
            cpu,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_run_on_a_small_image() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("img.raw");
        ferry_agent::imagegen::make_image(&path, 24 << 20, 5).unwrap();
        let report = measure_stages(&path, dir.path()).unwrap();
        assert!(report.nonzero_bytes > 0 && report.nonzero_bytes < 24 << 20);
        assert!(report.compressed_bytes < report.nonzero_bytes);
        assert!(report.engine_payload_bytes <= report.nonzero_bytes);
        for name in [
            "read_pread",
            "zero_check",
            "blake3_4k",
            "zstd1_compress",
            "crc32c",
        ] {
            assert!(report.get(name).is_some(), "{name} measured");
        }
        let read = bytes_read_by_sync(&path).unwrap();
        assert!(read >= report.nonzero_bytes && read <= 24 << 20);
    }

    #[test]
    fn quic_loopback_moves_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let q = quic_ceiling(dir.path(), 32 << 20).unwrap();
        assert_eq!(q.bytes, 32 << 20);
        assert!(q.cpu > Duration::ZERO);
    }
}
