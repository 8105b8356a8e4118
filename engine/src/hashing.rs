//! BLAKE3 hashing of byte ranges in fixed granules (used by `ferry verify` on
//! both sides: the primary hashes its source, the standby its committed image,
//! and the two lists are compared granule by granule).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Something hashable by offset: a file, or an RBD image/snapshot.
pub trait ReadAt: Send + Sync {
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl ReadAt for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
}

impl ReadAt for crate::sys::librbd::Image {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.read_at(offset, buf).map_err(io::Error::other)
    }
}

/// The source side of a verification (`ferry verify`): something to hash
/// and its size. Built by the source backends (a file in
/// [`crate::session::verify`], an RBD snapshot in [`crate::rbd::source`]),
/// so it lives here, below both.
#[derive(Clone)]
pub struct VerifySource {
    /// The bytes.
    pub reader: std::sync::Arc<dyn ReadAt>,
    /// How many of them.
    pub size: u64,
    /// Name for messages.
    pub name: String,
}

/// Largest read issued while hashing one granule.
const READ_CHUNK: usize = 1 << 20;

/// BLAKE3 of each `granularity`-byte piece of `[offset, offset + length)` of
/// `file`, clipped to `file_size` (bytes past it are not hashed; the last
/// piece may be short). An empty range gives an empty list.
///
/// Errors: `InvalidInput` when `granularity` is 0; `UnexpectedEof` when the
/// file is shorter than `file_size`; any read error.
pub fn hash_granules<R: ReadAt + ?Sized>(
    file: &R,
    file_size: u64,
    offset: u64,
    length: u64,
    granularity: u32,
) -> io::Result<Vec<[u8; 32]>> {
    if granularity == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "hash granularity must be > 0",
        ));
    }
    let end = offset.saturating_add(length).min(file_size);
    if offset >= end {
        return Ok(Vec::new());
    }
    let granule = u64::from(granularity);
    let count = (end - offset).div_ceil(granule);
    let mut hashes = Vec::with_capacity(usize::try_from(count).unwrap_or(0).min(1 << 20));
    let mut buf = vec![0u8; (granularity as usize).min(READ_CHUNK)];
    let mut start = offset;
    while start < end {
        let stop = start.saturating_add(granule).min(end);
        let mut hasher = blake3::Hasher::new();
        let mut pos = start;
        while pos < stop {
            let n = usize::try_from(stop - pos)
                .unwrap_or(buf.len())
                .min(buf.len());
            file.read_exact_at(&mut buf[..n], pos)?;
            hasher.update(&buf[..n]);
            pos += n as u64;
        }
        hashes.push(*hasher.finalize().as_bytes());
        start = stop;
    }
    Ok(hashes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_with(data: &[u8]) -> (tempfile::NamedTempFile, File) {
        let mut tmp = tempfile::NamedTempFile::new().expect("tempfile");
        tmp.write_all(data).expect("write");
        let file = tmp.reopen().expect("reopen");
        (tmp, file)
    }

    #[test]
    fn granules_match_direct_hashes_and_clip_at_end() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 256) as u8).collect();
        let (_tmp, file) = file_with(&data);
        let hashes = hash_granules(&file, data.len() as u64, 1000, 1_000_000, 4096).expect("hash");
        // [1000, 10000) in 4096-byte pieces: 4096, 4096, 808.
        assert_eq!(hashes.len(), 3);
        assert_eq!(hashes[0], *blake3::hash(&data[1000..5096]).as_bytes());
        assert_eq!(hashes[1], *blake3::hash(&data[5096..9192]).as_bytes());
        assert_eq!(hashes[2], *blake3::hash(&data[9192..]).as_bytes());
    }

    #[test]
    fn granule_larger_than_read_chunk() {
        let data: Vec<u8> = (0..(3 * READ_CHUNK as u32 + 17))
            .map(|i| (i % 253) as u8)
            .collect();
        let (_tmp, file) = file_with(&data);
        let hashes = hash_granules(&file, data.len() as u64, 0, u64::MAX, u32::MAX).expect("hash");
        assert_eq!(hashes, vec![*blake3::hash(&data).as_bytes()]);
    }

    #[test]
    fn empty_and_invalid_requests() {
        let (_tmp, file) = file_with(b"abc");
        assert!(hash_granules(&file, 3, 3, 10, 1).expect("hash").is_empty());
        assert!(hash_granules(&file, 3, 0, 0, 1).expect("hash").is_empty());
        let err = hash_granules(&file, 3, 0, 3, 0).expect_err("zero granularity");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        // A file shorter than the size claimed is an error, not a short hash.
        let err = hash_granules(&file, 10, 0, 10, 4).expect_err("short file");
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
