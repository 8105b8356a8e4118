//! Deterministic test images of realistic content (random, zero and
//! log-like text pieces) and scattered writes into them, for the demo,
//! the tests and the benchmarks.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use rand::{Rng, RngCore, SeedableRng};

/// Size of the pieces an image is made of.
pub const PIECE: usize = 1024 * 1024;

/// What a piece of a generated image holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Piece {
    /// Incompressible bytes.
    Random,
    /// Zeroes (left as a hole).
    Zero,
    /// Log-like text (compresses ~3-5x).
    Text,
}

/// The piece kind at `index` for a 50 % random / 25 % zero / 25 % text mix.
pub fn piece_kind(seed: u64, index: u64) -> Piece {
    let mut rng =
        rand::rngs::StdRng::seed_from_u64(seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    match rng.gen_range(0..4) {
        0 | 1 => Piece::Random,
        2 => Piece::Zero,
        _ => Piece::Text,
    }
}

fn fill_text(rng: &mut impl RngCore, out: &mut [u8]) {
    const WORDS: [&str; 16] = [
        "INFO",
        "WARN",
        "osd.3",
        "pg 2.1f",
        "scrub ok",
        "client.4121",
        "write",
        "read",
        "latency",
        "ms",
        "object",
        "rbd_data.1a2b",
        "snap",
        "journal",
        "commit",
        "epoch",
    ];
    let mut pos = 0;
    let mut line = String::new();
    while pos < out.len() {
        line.clear();
        line.push_str(&format!(
            "2026-11-22T00:{:02}:{:02}.{:06} ",
            rng.next_u32() % 60,
            rng.next_u32() % 60,
            rng.next_u32() % 1_000_000
        ));
        for _ in 0..(6 + rng.next_u32() % 8) {
            line.push_str(WORDS[(rng.next_u32() % 16) as usize]);
            line.push(' ');
        }
        line.push_str(&format!("{}\n", rng.next_u32()));
        let n = line.len().min(out.len() - pos);
        out[pos..pos + n].copy_from_slice(&line.as_bytes()[..n]);
        pos += n;
    }
}

/// Writes a `size`-byte image of mixed content at `path` (zero pieces stay holes).
pub fn make_image(path: &Path, size: u64, seed: u64) -> std::io::Result<()> {
    let file = File::create(path)?;
    file.set_len(size)?;
    let mut writer = BufWriter::with_capacity(PIECE, &file);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut buf = vec![0u8; PIECE];
    let pieces = size.div_ceil(PIECE as u64);
    use std::io::Seek;
    for index in 0..pieces {
        let len = (size - index * PIECE as u64).min(PIECE as u64) as usize;
        let piece = &mut buf[..len];
        match piece_kind(seed, index) {
            Piece::Random => rng.fill_bytes(piece),
            Piece::Text => fill_text(&mut rng, piece),
            Piece::Zero => {
                writer.flush()?;
                writer.seek(std::io::SeekFrom::Start((index + 1) * PIECE as u64))?;
                continue;
            }
        }
        writer.write_all(piece)?;
    }
    writer.flush()?;
    drop(writer);
    file.sync_all()
}

/// Overwrites `count` randomly placed, 4 KiB-aligned 4 KiB blocks with random
/// data; returns the bytes written.
pub fn scattered_writes(path: &Path, count: u64, seed: u64) -> std::io::Result<u64> {
    let mut file = OpenOptions::new().write(true).open(path)?;
    // Seeking to the end sizes block devices too (their st_size is 0).
    let size = file.seek(SeekFrom::End(0))?;
    let blocks = size / 4096;
    if blocks == 0 {
        return Ok(0);
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut block = [0u8; 4096];
    for _ in 0..count {
        let index = rng.gen_range(0..blocks);
        rng.fill_bytes(&mut block);
        file.write_all_at(&block, index * 4096)?;
    }
    file.sync_all()?;
    Ok(count * 4096)
}

/// Appends `len` bytes of log-like text at `offset` (as a log file would grow).
pub fn write_text(path: &Path, offset: u64, len: usize, seed: u64) -> std::io::Result<()> {
    let file = OpenOptions::new().write(true).open(path)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut buf = vec![0u8; len];
    fill_text(&mut rng, &mut buf);
    file.write_all_at(&buf, offset)?;
    file.sync_all()
}

/// BLAKE3 of a whole file, as hex.
pub fn file_hash(path: &Path) -> std::io::Result<String> {
    let mut hasher = blake3::Hasher::new();
    let mut file = File::open(path)?;
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hasher.finalize().to_hex().to_string())
}
