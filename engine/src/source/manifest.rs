//! Block-hash manifests: one 16-byte truncated BLAKE3 per 4 KiB block of an
//! image, streamed from disk (never held in memory as a whole).
//!
//! On-disk layout (all integers little-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `FERRYMF\0` |
//! | 8 | 4 | version (1) |
//! | 12 | 4 | block size (4096) |
//! | 16 | 8 | image size in bytes |
//! | 24 | 8 | epoch |
//! | 32 | 8 | block count = ceil(image size / block size) |
//! | 40 | 20 | reserved, zero |
//! | 60 | 4 | CRC-32C of bytes 0..60 |
//! | 64 | 16 × block count | one [`BlockHash`] per block |
//!
//! A block's hash is the first 16 bytes of BLAKE3 over the block's real bytes
//! (the last block of an image whose size is not a multiple of 4 KiB is
//! hashed short). An all-zero block is the all-zero marker
//! [`BlockHash::ZERO`]; a real hash that truncates to all zeroes gets its last
//! byte set to 1 so it can never be mistaken for the marker. A freshly
//! created (sparse) manifest therefore reads as "every block zero".

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use ferry_protocol::Epoch;

/// Change-detection block size.
pub const BLOCK_SIZE: u32 = 4096;

/// Bytes before the first entry.
pub const HEADER_LEN: u64 = 64;

/// Bytes per entry.
pub const ENTRY_LEN: u64 = 16;

/// Magic number at the start of every manifest.
pub const MAGIC: [u8; 8] = *b"FERRYMF\0";

/// Current manifest format version.
pub const VERSION: u32 = 1;

/// Truncated BLAKE3 of one block, or the all-zero marker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct BlockHash(pub [u8; 16]);

impl BlockHash {
    /// The marker of an all-zero block.
    pub const ZERO: BlockHash = BlockHash([0; 16]);

    /// Hash of a block's bytes (the caller has checked it is not all zero;
    /// an all-zero block must be recorded as [`BlockHash::ZERO`]).
    pub fn of_data(block: &[u8]) -> Self {
        let full = blake3::hash(block);
        let mut out = [0u8; 16];
        out.copy_from_slice(&full.as_bytes()[..16]);
        if out == [0; 16] {
            out[15] = 1;
        }
        Self(out)
    }

    /// [`BlockHash::ZERO`] for an all-zero block, else [`BlockHash::of_data`].
    pub fn of_block(block: &[u8]) -> Self {
        if is_zero(block) {
            Self::ZERO
        } else {
            Self::of_data(block)
        }
    }

    /// Whether this is the all-zero marker.
    pub fn is_zero_marker(&self) -> bool {
        *self == Self::ZERO
    }
}

/// Whether every byte of `bytes` is zero (vectorised OR in 256-byte steps).
pub fn is_zero(bytes: &[u8]) -> bool {
    let mut chunks = bytes.chunks_exact(256);
    for chunk in &mut chunks {
        if chunk.iter().fold(0u8, |acc, &b| acc | b) != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|&b| b == 0)
}

/// Number of blocks of an image of `size` bytes.
pub fn block_count(size: u64, block_size: u32) -> u64 {
    size.div_ceil(u64::from(block_size.max(1)))
}

/// The fixed fields of a manifest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ManifestHeader {
    /// Block size (always [`BLOCK_SIZE`] in version 1).
    pub block_size: u32,
    /// Image size the manifest describes.
    pub image_size: u64,
    /// Epoch the manifest belongs to.
    pub epoch: Epoch,
}

impl ManifestHeader {
    /// Number of entries.
    pub fn block_count(&self) -> u64 {
        block_count(self.image_size, self.block_size)
    }

    fn encode(&self) -> [u8; HEADER_LEN as usize] {
        let mut out = [0u8; HEADER_LEN as usize];
        out[0..8].copy_from_slice(&MAGIC);
        out[8..12].copy_from_slice(&VERSION.to_le_bytes());
        out[12..16].copy_from_slice(&self.block_size.to_le_bytes());
        out[16..24].copy_from_slice(&self.image_size.to_le_bytes());
        out[24..32].copy_from_slice(&self.epoch.get().to_le_bytes());
        out[32..40].copy_from_slice(&self.block_count().to_le_bytes());
        let crc = crc32c::crc32c(&out[..60]);
        out[60..64].copy_from_slice(&crc.to_le_bytes());
        out
    }

    fn decode(bytes: &[u8; HEADER_LEN as usize], path: &Path) -> Result<Self, ManifestError> {
        let bad = |reason| ManifestError::Corrupt {
            path: path.to_owned(),
            reason,
        };
        let u32_at = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(b)
        };
        if bytes[0..8] != MAGIC {
            return Err(bad("bad magic"));
        }
        if crc32c::crc32c(&bytes[..60]) != u32_at(60) {
            return Err(bad("header checksum mismatch"));
        }
        if u32_at(8) != VERSION {
            return Err(bad("unsupported version"));
        }
        let header = Self {
            block_size: u32_at(12),
            image_size: u64_at(16),
            epoch: Epoch(u64_at(24)),
        };
        if header.block_size != BLOCK_SIZE {
            return Err(bad("unsupported block size"));
        }
        if u64_at(32) != header.block_count() {
            return Err(bad("block count does not match image size"));
        }
        Ok(header)
    }
}

/// Why a manifest cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// An I/O error on the manifest file.
    #[error("manifest {path}: {op} failed")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The manifest.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid manifest.
    #[error("manifest {path} is corrupt: {reason}")]
    Corrupt {
        /// The manifest.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
    /// The manifest is not the one expected (other epoch, other size).
    #[error("manifest {path} does not match: {reason}")]
    Mismatch {
        /// The manifest.
        path: PathBuf,
        /// What differs.
        reason: &'static str,
    },
    /// An entry range past the manifest's end was requested.
    #[error("manifest {path}: blocks {first}..{end} are past its {count} blocks")]
    OutOfRange {
        /// The manifest.
        path: PathBuf,
        /// First block requested.
        first: u64,
        /// End of the requested range.
        end: u64,
        /// Blocks in the manifest.
        count: u64,
    },
}

/// An open manifest file; entries are read and written in place.
#[derive(Debug)]
pub struct Manifest {
    file: File,
    path: PathBuf,
    header: ManifestHeader,
}

impl Manifest {
    /// Creates (or replaces) a manifest whose entries all read as
    /// [`BlockHash::ZERO`] (the file is sparse), and makes it durable.
    pub fn create(path: &Path, header: ManifestHeader) -> Result<Self, ManifestError> {
        let io = |op| {
            let path = path.to_owned();
            move |source| ManifestError::Io { op, path, source }
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(io("create"))?;
        file.write_all_at(&header.encode(), 0)
            .map_err(io("write header"))?;
        file.set_len(HEADER_LEN + ENTRY_LEN * header.block_count())
            .map_err(io("set length"))?;
        file.sync_all().map_err(io("sync"))?;
        Ok(Self {
            file,
            path: path.to_owned(),
            header,
        })
    }

    /// Opens an existing manifest (read-write when `writable`) and checks its
    /// header and length.
    pub fn open(path: &Path, writable: bool) -> Result<Self, ManifestError> {
        let io = |op| {
            let path = path.to_owned();
            move |source| ManifestError::Io { op, path, source }
        };
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(io("open"))?;
        let mut bytes = [0u8; HEADER_LEN as usize];
        file.read_exact_at(&mut bytes, 0).map_err(|source| {
            if source.kind() == std::io::ErrorKind::UnexpectedEof {
                ManifestError::Corrupt {
                    path: path.to_owned(),
                    reason: "shorter than its header",
                }
            } else {
                ManifestError::Io {
                    op: "read header",
                    path: path.to_owned(),
                    source,
                }
            }
        })?;
        let header = ManifestHeader::decode(&bytes, path)?;
        let len = file.metadata().map_err(io("stat"))?.len();
        if len != HEADER_LEN + ENTRY_LEN * header.block_count() {
            return Err(ManifestError::Corrupt {
                path: path.to_owned(),
                reason: "file length does not match the block count",
            });
        }
        Ok(Self {
            file,
            path: path.to_owned(),
            header,
        })
    }

    /// The manifest's header.
    pub fn header(&self) -> ManifestHeader {
        self.header
    }

    /// The manifest's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends to `out` the entries of blocks `first..first + count`,
    /// clamped to the manifest's blocks (callers treat missing entries as
    /// "not in this manifest").
    pub fn read_entries(
        &self,
        first: u64,
        count: u64,
        out: &mut Vec<BlockHash>,
    ) -> Result<(), ManifestError> {
        let end = first.saturating_add(count).min(self.header.block_count());
        if first >= end {
            return Ok(());
        }
        let n = (end - first) as usize;
        let mut bytes = vec![0u8; n * ENTRY_LEN as usize];
        self.file
            .read_exact_at(&mut bytes, HEADER_LEN + first * ENTRY_LEN)
            .map_err(|source| ManifestError::Io {
                op: "read entries",
                path: self.path.clone(),
                source,
            })?;
        let (entries, _) = bytes.as_chunks::<16>();
        out.extend(entries.iter().map(|e| BlockHash(*e)));
        Ok(())
    }

    /// Writes entries for blocks `first..first + hashes.len()`.
    pub fn write_entries(&self, first: u64, hashes: &[BlockHash]) -> Result<(), ManifestError> {
        let end = first.saturating_add(hashes.len() as u64);
        if end > self.header.block_count() {
            return Err(ManifestError::OutOfRange {
                path: self.path.clone(),
                first,
                end,
                count: self.header.block_count(),
            });
        }
        let mut bytes = Vec::with_capacity(hashes.len() * ENTRY_LEN as usize);
        for hash in hashes {
            bytes.extend_from_slice(&hash.0);
        }
        self.file
            .write_all_at(&bytes, HEADER_LEN + first * ENTRY_LEN)
            .map_err(|source| ManifestError::Io {
                op: "write entries",
                path: self.path.clone(),
                source,
            })
    }

    /// `fdatasync`: every entry written so far is durable.
    pub fn sync(&self) -> Result<(), ManifestError> {
        self.file.sync_data().map_err(|source| ManifestError::Io {
            op: "sync",
            path: self.path.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_sparse_zero_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest-3.bin");
        let header = ManifestHeader {
            block_size: BLOCK_SIZE,
            image_size: 10 * 4096 + 100,
            epoch: Epoch(3),
        };
        let manifest = Manifest::create(&path, header).unwrap();
        assert_eq!(header.block_count(), 11);
        let hashes: Vec<BlockHash> = (0..4u8)
            .map(|i| BlockHash::of_data(&[i + 1; 4096]))
            .collect();
        manifest.write_entries(5, &hashes).unwrap();
        manifest.sync().unwrap();
        drop(manifest);

        let manifest = Manifest::open(&path, false).unwrap();
        assert_eq!(manifest.header(), header);
        let mut out = Vec::new();
        manifest.read_entries(0, 100, &mut out).unwrap();
        assert_eq!(out.len(), 11, "clamped to the block count");
        assert!(out[..5].iter().all(BlockHash::is_zero_marker));
        assert_eq!(&out[5..9], &hashes[..]);
        assert!(out[9..].iter().all(BlockHash::is_zero_marker));
        assert!(manifest.write_entries(10, &hashes).is_err());
    }

    #[test]
    fn corrupt_header_and_length_are_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m");
        let header = ManifestHeader {
            block_size: BLOCK_SIZE,
            image_size: 8192,
            epoch: Epoch(1),
        };
        drop(Manifest::create(&path, header).unwrap());
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[0xFF], 20).unwrap();
        assert!(matches!(
            Manifest::open(&path, false),
            Err(ManifestError::Corrupt { .. })
        ));
        drop(Manifest::create(&path, header).unwrap());
        file.set_len(HEADER_LEN + 16).unwrap();
        assert!(matches!(
            Manifest::open(&path, false),
            Err(ManifestError::Corrupt { .. })
        ));
        std::fs::write(&path, b"short").unwrap();
        assert!(matches!(
            Manifest::open(&path, false),
            Err(ManifestError::Corrupt { .. })
        ));
    }

    #[test]
    fn hashes_never_collide_with_the_zero_marker() {
        assert_eq!(BlockHash::of_block(&[0u8; 4096]), BlockHash::ZERO);
        assert_ne!(BlockHash::of_block(&[0u8, 1]), BlockHash::ZERO);
        // A short zero block is still the marker (exact last-block handling).
        assert_eq!(BlockHash::of_block(&[0u8; 100]), BlockHash::ZERO);
        assert!(is_zero(&[0u8; 1000]));
        let mut v = vec![0u8; 1000];
        v[999] = 1;
        assert!(!is_zero(&v));
        v[999] = 0;
        v[3] = 1;
        assert!(!is_zero(&v));
    }
}
