//! Checksummed record framing shared by epoch journals and undo logs.
//!
//! Every record is a 40-byte header followed by `body_len` body bytes
//! (all integers little-endian):
//!
//! | off | size | field                                                     |
//! |-----|------|-----------------------------------------------------------|
//! | 0   | 4    | magic (per file type)                                     |
//! | 4   | 1    | record kind                                               |
//! | 5   | 3    | reserved, zero                                            |
//! | 8   | 8    | `a` (kind-specific: seq, offset, epoch…)                  |
//! | 16  | 8    | `b` (kind-specific: scan_end, length, base…)              |
//! | 24  | 8    | body_len                                                  |
//! | 32  | 4    | body CRC-32C, seeded with the file's nonce                |
//! | 36  | 4    | header CRC-32C of bytes 0..36, seeded with the nonce      |
//!
//! The nonce is a random 64-bit number chosen when the file is created and
//! stored in its first record (which itself uses nonce 0). Seeding every CRC
//! with it means bytes copied from another ferry file (an image may well hold
//! one) can never pass for a record of this file. A separate header CRC lets a
//! reader reject a garbage length before allocating for it.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Length of a record header in bytes.
pub(crate) const HEADER_LEN: usize = 40;

/// Largest body a record may have (guards allocations against damaged files).
pub(crate) const MAX_BODY_LEN: u64 = 256 << 20;

/// A decoded record header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RecordHeader {
    /// Record kind (file-type specific).
    pub kind: u8,
    /// First kind-specific field.
    pub a: u64,
    /// Second kind-specific field.
    pub b: u64,
    /// Body length in bytes.
    pub body_len: u64,
    /// CRC-32C of the body (nonce-seeded).
    pub body_crc: u32,
}

fn seed(nonce: u64) -> u32 {
    crc32c::crc32c(&nonce.to_le_bytes())
}

/// CRC-32C of `parts` concatenated, seeded with `nonce`.
pub(crate) fn body_crc(nonce: u64, parts: &[&[u8]]) -> u32 {
    parts
        .iter()
        .fold(seed(nonce), |crc, part| crc32c::crc32c_append(crc, part))
}

impl RecordHeader {
    /// Encodes the header for a file with `magic` and `nonce`.
    pub(crate) fn encode(&self, magic: u32, nonce: u64) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..4].copy_from_slice(&magic.to_le_bytes());
        out[4] = self.kind;
        out[8..16].copy_from_slice(&self.a.to_le_bytes());
        out[16..24].copy_from_slice(&self.b.to_le_bytes());
        out[24..32].copy_from_slice(&self.body_len.to_le_bytes());
        out[32..36].copy_from_slice(&self.body_crc.to_le_bytes());
        let crc = crc32c::crc32c_append(seed(nonce), &out[..36]);
        out[36..40].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes a header, or `None` when the magic, reserved bytes or header
    /// CRC do not match.
    pub(crate) fn decode(bytes: &[u8; HEADER_LEN], magic: u32, nonce: u64) -> Option<Self> {
        let u32_at = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let u64_at = |at: usize| {
            let mut raw = [0u8; 8];
            raw.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(raw)
        };
        if u32_at(0) != magic || bytes[5..8] != [0, 0, 0] {
            return None;
        }
        if crc32c::crc32c_append(seed(nonce), &bytes[..36]) != u32_at(36) {
            return None;
        }
        Some(Self {
            kind: bytes[4],
            a: u64_at(8),
            b: u64_at(16),
            body_len: u64_at(24),
            body_crc: u32_at(32),
        })
    }

    /// Builds a header for a body made of `parts`, computing length and CRC.
    pub(crate) fn for_body(kind: u8, a: u64, b: u64, nonce: u64, parts: &[&[u8]]) -> Self {
        Self {
            kind,
            a,
            b,
            body_len: parts.iter().map(|p| p.len() as u64).sum(),
            body_crc: body_crc(nonce, parts),
        }
    }
}

/// Result of reading one record.
#[derive(Debug)]
pub(crate) enum Next {
    /// A valid record starting at `offset`; its body is in [`RecordReader::body`].
    Record {
        /// The header.
        header: RecordHeader,
        /// File offset of the header.
        offset: u64,
    },
    /// Clean end of file.
    End,
    /// The bytes at `offset` are not a valid record (torn or damaged).
    Bad {
        /// Where the bad record starts.
        offset: u64,
        /// What is wrong.
        reason: &'static str,
    },
}

/// Sequential reader of records from a file.
pub(crate) struct RecordReader<'a> {
    file: &'a File,
    magic: u32,
    nonce: u64,
    pos: u64,
    len: u64,
    body: Vec<u8>,
}

impl<'a> RecordReader<'a> {
    /// Reads `file` (of length `len`) from offset 0 with `nonce` (0 for the
    /// first record; call [`set_nonce`](Self::set_nonce) once it is known).
    pub(crate) fn new(file: &'a File, magic: u32, len: u64) -> Self {
        Self {
            file,
            magic,
            nonce: 0,
            pos: 0,
            len,
            body: Vec::new(),
        }
    }

    /// Sets the nonce used for the following records.
    pub(crate) fn set_nonce(&mut self, nonce: u64) {
        self.nonce = nonce;
    }

    /// Offset just past the last record returned.
    pub(crate) fn position(&self) -> u64 {
        self.pos
    }

    /// Body of the record last returned.
    pub(crate) fn body(&self) -> &[u8] {
        &self.body
    }

    /// Reads the next record. I/O errors are returned as such; damaged or
    /// incomplete records come back as [`Next::Bad`] without moving on.
    pub(crate) fn next_record(&mut self) -> io::Result<Next> {
        if self.pos >= self.len {
            return Ok(Next::End);
        }
        let offset = self.pos;
        let remaining = self.len - self.pos;
        if remaining < HEADER_LEN as u64 {
            return Ok(Next::Bad {
                offset,
                reason: "incomplete record header",
            });
        }
        let mut raw = [0u8; HEADER_LEN];
        self.file.read_exact_at(&mut raw, offset)?;
        let Some(header) = RecordHeader::decode(&raw, self.magic, self.nonce) else {
            return Ok(Next::Bad {
                offset,
                reason: "record header fails its magic or checksum",
            });
        };
        if header.body_len > MAX_BODY_LEN {
            return Ok(Next::Bad {
                offset,
                reason: "record body length exceeds the limit",
            });
        }
        if header.body_len > remaining - HEADER_LEN as u64 {
            return Ok(Next::Bad {
                offset,
                reason: "incomplete record body",
            });
        }
        // body_len <= MAX_BODY_LEN (256 MiB) always fits in usize.
        self.body.resize(header.body_len as usize, 0);
        self.file
            .read_exact_at(&mut self.body, offset + HEADER_LEN as u64)?;
        if body_crc(self.nonce, &[&self.body]) != header.body_crc {
            return Ok(Next::Bad {
                offset,
                reason: "record body fails its checksum",
            });
        }
        self.pos = offset + HEADER_LEN as u64 + header.body_len;
        Ok(Next::Record { header, offset })
    }
}

/// Reads the body of the record whose header is at `offset` and checks it
/// against `header` (used to re-read a record found by an earlier scan).
pub(crate) fn read_body_at(
    file: &File,
    offset: u64,
    header: &RecordHeader,
    nonce: u64,
    buf: &mut Vec<u8>,
) -> io::Result<bool> {
    if header.body_len > MAX_BODY_LEN {
        return Ok(false);
    }
    // Bounded by MAX_BODY_LEN above.
    buf.resize(header.body_len as usize, 0);
    file.read_exact_at(buf, offset + HEADER_LEN as u64)?;
    Ok(body_crc(nonce, &[buf]) == header.body_crc)
}

/// Little-endian cursor over a record body; `None` when the body is short.
pub(crate) struct BodyCursor<'a> {
    bytes: &'a [u8],
}

impl<'a> BodyCursor<'a> {
    /// Cursor at the start of `bytes`.
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    /// Takes `n` bytes.
    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < n {
            return None;
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Some(head)
    }

    /// Takes a u8.
    pub(crate) fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    /// Takes a little-endian u32.
    pub(crate) fn u32(&mut self) -> Option<u32> {
        let b = self.take(4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Takes a little-endian u64.
    pub(crate) fn u64(&mut self) -> Option<u64> {
        let b = self.take(8)?;
        let mut raw = [0u8; 8];
        raw.copy_from_slice(b);
        Some(u64::from_le_bytes(raw))
    }

    /// Bytes not yet taken.
    pub(crate) fn rest(&self) -> &'a [u8] {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAGIC: u32 = 0x5445_5354;

    fn write_records(file: &File, nonce: u64, bodies: &[&[u8]]) -> u64 {
        let mut pos = 0u64;
        for (i, body) in bodies.iter().enumerate() {
            let header = RecordHeader::for_body(7, i as u64, 99, nonce, &[body]);
            file.write_all_at(&header.encode(MAGIC, nonce), pos)
                .expect("write");
            file.write_all_at(body, pos + HEADER_LEN as u64)
                .expect("write");
            pos += HEADER_LEN as u64 + body.len() as u64;
        }
        pos
    }

    #[test]
    fn roundtrip_and_torn_tail() {
        let tmp = tempfile::tempfile().expect("tempfile");
        let end = write_records(&tmp, 42, &[b"hello", b"", b"world!"]);
        let mut reader = RecordReader::new(&tmp, MAGIC, end);
        reader.set_nonce(42);
        let mut seen = Vec::new();
        while let Next::Record { header, .. } = reader.next_record().expect("read") {
            seen.push((header.a, reader.body().to_vec()));
        }
        assert_eq!(
            seen,
            vec![(0, b"hello".to_vec()), (1, vec![]), (2, b"world!".to_vec())]
        );

        // Cut the last record short: the reader stops at its start.
        let mut reader = RecordReader::new(&tmp, MAGIC, end - 2);
        reader.set_nonce(42);
        let last = loop {
            match reader.next_record().expect("read") {
                Next::Record { .. } => {}
                other => break Some(other),
            }
        };
        let first_two = 2 * HEADER_LEN as u64 + 5;
        assert!(matches!(last, Some(Next::Bad { offset, .. }) if offset == first_two));
        assert_eq!(reader.position(), first_two);
    }

    #[test]
    fn wrong_nonce_or_flipped_bit_is_rejected() {
        let tmp = tempfile::tempfile().expect("tempfile");
        let end = write_records(&tmp, 42, &[b"payload"]);
        let mut reader = RecordReader::new(&tmp, MAGIC, end);
        reader.set_nonce(43);
        assert!(matches!(
            reader.next_record().expect("read"),
            Next::Bad { .. }
        ));

        tmp.write_all_at(b"P", HEADER_LEN as u64).expect("flip");
        let mut reader = RecordReader::new(&tmp, MAGIC, end);
        reader.set_nonce(42);
        assert!(matches!(
            reader.next_record().expect("read"),
            Next::Bad {
                reason: "record body fails its checksum",
                ..
            }
        ));
    }
}
