//! Positioned reads and writes through io_uring, with a pread/pwrite fallback.
//!
//! [`BlockReader`] splits one large read into pieces (default 4 × 1 MiB) that
//! are in flight together; [`BlockWriter`] does the same for a batch of
//! positioned writes and offers `fdatasync`. Both fall back to plain
//! `pread`/`pwrite` when `io_uring_setup` fails (old kernel, seccomp, the
//! `kernel.io_uring_disabled` sysctl) or when the environment variable
//! [`DISABLE_ENV`] is `1`. [`next_data_offset`] wraps `lseek(SEEK_DATA)` so a
//! scan can skip holes of sparse files without reading them.
//!
//! Memory safety of io_uring rests on one rule that every function here keeps:
//! **no call returns while one of its operations is still in flight**. The
//! buffers and the file descriptor are borrowed for the duration of the call,
//! so the kernel never writes into memory the caller has reclaimed. If the
//! ring itself breaks while operations are in flight (the kernel refusing to
//! wait, which no documented error does for a healthy ring), the process
//! aborts rather than risk memory corruption.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;

use io_uring::{opcode, types, IoUring};

/// Environment variable that forces the pread/pwrite fallback when set to `1`.
pub const DISABLE_ENV: &str = "FERRY_DISABLE_IO_URING";

/// Default number of operations in flight per call.
pub const DEFAULT_QUEUE_DEPTH: usize = 4;

/// Default size of one read or write operation.
pub const DEFAULT_PIECE_SIZE: usize = 1 << 20;

/// Which system interface a [`BlockReader`] or [`BlockWriter`] uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoBackend {
    /// io_uring with several operations in flight.
    IoUring,
    /// Plain `pread(2)`/`pwrite(2)`, one operation at a time.
    Pread,
}

impl IoBackend {
    /// Short name for logs and benchmark reports.
    pub const fn name(self) -> &'static str {
        match self {
            Self::IoUring => "io_uring",
            Self::Pread => "pread",
        }
    }
}

/// How many operations a reader or writer keeps in flight, and how large each is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoShape {
    /// Operations in flight per call (≥ 1).
    pub queue_depth: usize,
    /// Bytes per operation (≥ 4096).
    pub piece_size: usize,
}

impl Default for IoShape {
    fn default() -> Self {
        Self {
            queue_depth: DEFAULT_QUEUE_DEPTH,
            piece_size: DEFAULT_PIECE_SIZE,
        }
    }
}

impl IoShape {
    fn sanitized(self) -> Self {
        Self {
            queue_depth: self.queue_depth.clamp(1, 256),
            // A piece must fit the u32 length field of an SQE.
            piece_size: self.piece_size.clamp(4096, 1 << 30),
        }
    }
}

/// Whether the environment asks for the fallback.
fn uring_disabled_by_env() -> bool {
    std::env::var(DISABLE_ENV)
        .map(|v| v.trim() == "1")
        .unwrap_or(false)
}

/// Creates a ring, or `None` when io_uring is unavailable or disabled.
fn try_ring(shape: IoShape, force_fallback: bool) -> Option<IoUring> {
    if force_fallback || uring_disabled_by_env() {
        return None;
    }
    let entries = u32::try_from(shape.queue_depth.next_power_of_two()).unwrap_or(256);
    match IoUring::new(entries) {
        Ok(ring) => Some(ring),
        Err(error) => {
            tracing::info!(%error, "io_uring unavailable, falling back to pread/pwrite");
            None
        }
    }
}

fn is_retryable(errno: i32) -> bool {
    errno == libc::EINTR || errno == libc::EAGAIN
}

/// Waits until at least one completion is available. Aborts the process if
/// the ring cannot wait while operations are in flight (see the module doc).
fn wait_one(ring: &IoUring) {
    loop {
        match ring.submit_and_wait(1) {
            Ok(_) => return,
            Err(error) => match error.raw_os_error() {
                Some(code)
                    if code == libc::EINTR || code == libc::EAGAIN || code == libc::EBUSY =>
                {
                    continue
                }
                _ => {
                    // Returning now would let the kernel write into buffers the
                    // caller is about to reuse; there is no safe way out.
                    tracing::error!(%error, "io_uring wait failed with operations in flight; aborting");
                    std::process::abort();
                }
            },
        }
    }
}

/// One piece of a split read or write: a contiguous part of the caller's buffer.
#[derive(Clone, Copy, Debug)]
struct Piece {
    /// Start of the piece in the caller's buffer.
    buf_start: usize,
    /// Length of the piece.
    len: usize,
    /// Bytes done so far.
    done: usize,
    /// The file ended inside this piece (reads only).
    eof: bool,
}

fn split(total: usize, piece_size: usize) -> Vec<Piece> {
    let mut pieces = Vec::with_capacity(total.div_ceil(piece_size.max(1)));
    let mut start = 0;
    while start < total {
        let len = piece_size.min(total - start);
        pieces.push(Piece {
            buf_start: start,
            len,
            done: 0,
            eof: false,
        });
        start += len;
    }
    pieces
}

/// The ring (or its absence: the positioned-syscall fallback) and the I/O
/// shape shared by [`BlockReader`] and [`BlockWriter`].
struct Ring {
    ring: Option<IoUring>,
    shape: IoShape,
}

impl Ring {
    fn new(shape: IoShape, force_fallback: bool) -> Self {
        let shape = shape.sanitized();
        Self {
            ring: try_ring(shape, force_fallback),
            shape,
        }
    }

    fn backend(&self) -> IoBackend {
        if self.ring.is_some() {
            IoBackend::IoUring
        } else {
            IoBackend::Pread
        }
    }
}

/// Constructors, backend queries, `Debug` and `Default` of a type holding a
/// [`Ring`] in its `io` field.
macro_rules! ring_holder {
    ($name:ident, $what:literal, $force_doc:literal) => {
        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("backend", &self.backend())
                    .field("shape", &self.io.shape)
                    .finish()
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl $name {
            #[doc = concat!($what, " with the default shape, on io_uring when available.")]
            pub fn new() -> Self {
                Self::with_shape(IoShape::default(), false)
            }

            #[doc = concat!($what, " with an explicit shape; ", $force_doc, ".")]
            pub fn with_shape(shape: IoShape, force_fallback: bool) -> Self {
                Self {
                    io: Ring::new(shape, force_fallback),
                }
            }

            /// The backend in use.
            pub fn io_backend(&self) -> IoBackend {
                self.io.backend()
            }

            /// Name of the backend in use: `"io_uring"` or `"pread"` (positioned syscalls).
            pub fn backend(&self) -> &'static str {
                self.io.backend().name()
            }
        }
    };
}

/// Reads large ranges of a file with several reads in flight.
///
/// Failure contract: an `Err` means the range could not be read; the buffer
/// contents are then unspecified. A short count means the file ended.
pub struct BlockReader {
    io: Ring,
}

ring_holder!(BlockReader, "A reader", "`force_pread` skips io_uring");

impl BlockReader {
    /// Fills `buf` from `file` at `offset`, returning how many bytes were
    /// read: `buf.len()` unless the file ends first (then the count of the
    /// bytes before the end). Interrupted and partial reads are retried.
    pub fn read_at(&mut self, file: &File, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        match self.io.ring.as_mut() {
            Some(ring) => uring_read(ring, self.io.shape, file, offset, buf),
            None => pread_full(file, offset, buf),
        }
    }
}

/// Reads with `pread` until `buf` is full or the file ends.
fn pread_full(file: &File, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        }
    }
    Ok(done)
}

fn uring_read(
    ring: &mut IoUring,
    shape: IoShape,
    file: &File,
    offset: u64,
    buf: &mut [u8],
) -> io::Result<usize> {
    let fd = types::Fd(file.as_raw_fd());
    let mut pieces = split(buf.len(), shape.piece_size);
    let base_ptr = buf.as_mut_ptr();
    let mut next = 0usize; // next piece never submitted
    let mut retry: Vec<usize> = Vec::new(); // pieces to resubmit
    let mut in_flight = 0usize;
    let mut first_error: Option<io::Error> = None;
    let mut eof_seen = false;

    loop {
        // Queue work while there is room and nothing failed.
        while first_error.is_none() && in_flight < shape.queue_depth {
            let index = if let Some(index) = retry.pop() {
                index
            } else if next < pieces.len() && !eof_seen {
                next += 1;
                next - 1
            } else {
                break;
            };
            let piece = pieces[index];
            let remaining = piece.len - piece.done;
            // piece_size ≤ 1 GiB (IoShape::sanitized), so this fits in u32.
            let len = u32::try_from(remaining).unwrap_or(u32::MAX);
            // SAFETY: `buf_start + done < buf.len()`, so the pointer stays
            // inside the caller's buffer; the range [ptr, ptr+len) lies inside
            // `buf`, which is exclusively borrowed until this function
            // returns, and the function never returns with operations in
            // flight.
            let ptr = unsafe { base_ptr.add(piece.buf_start + piece.done) };
            let entry = opcode::Read::new(fd, ptr, len)
                .offset(offset + (piece.buf_start + piece.done) as u64)
                .build()
                .user_data(index as u64);
            // SAFETY: the entry references memory and an fd that outlive the
            // operation (see above); pushing cannot overflow because at most
            // `queue_depth` ≤ ring size entries are queued at once.
            let pushed = unsafe { ring.submission().push(&entry) };
            if pushed.is_err() {
                // Queue full: submit what is there, then retry this piece.
                retry.push(index);
                if let Err(error) = ring.submit() {
                    if !error.raw_os_error().is_some_and(is_retryable) {
                        first_error = Some(error);
                    }
                }
                break;
            }
            in_flight += 1;
        }
        if in_flight == 0 {
            break;
        }
        wait_one(ring);
        let completions: Vec<(u64, i32)> = ring
            .completion()
            .map(|cqe| (cqe.user_data(), cqe.result()))
            .collect();
        for (user_data, result) in completions {
            in_flight = in_flight.saturating_sub(1);
            let Some(piece) = usize::try_from(user_data)
                .ok()
                .and_then(|i| pieces.get_mut(i))
            else {
                continue;
            };
            if result > 0 {
                piece.done += result as usize;
                if piece.done < piece.len {
                    retry.push(user_data as usize);
                }
            } else if result == 0 {
                piece.eof = true;
                eof_seen = true;
            } else if is_retryable(-result) {
                retry.push(user_data as usize);
            } else if first_error.is_none() {
                first_error = Some(io::Error::from_raw_os_error(-result));
            }
        }
    }
    if let Some(error) = first_error {
        return Err(error);
    }
    // The bytes read are the contiguous prefix of complete pieces.
    let mut total = 0;
    for piece in &pieces {
        total += piece.done;
        if piece.done < piece.len {
            break;
        }
    }
    Ok(total)
}

/// Writes batches of positioned buffers with several writes in flight, and
/// syncs file data.
///
/// Failure contract: after an `Err` from [`BlockWriter::write_all_at`] some of
/// the writes may have reached the file and others not; the caller must treat
/// the whole batch as not written.
pub struct BlockWriter {
    io: Ring,
}

ring_holder!(BlockWriter, "A writer", "`force_pwrite` skips io_uring");

impl BlockWriter {
    /// Writes every `(offset, bytes)` pair completely. Writes may complete in
    /// any order; overlapping ranges therefore give an unspecified result.
    pub fn write_all_at(&mut self, file: &File, writes: &[(u64, &[u8])]) -> io::Result<()> {
        match self.io.ring.as_mut() {
            Some(ring) => uring_write(ring, self.io.shape, file, writes),
            None => {
                for (offset, bytes) in writes {
                    file.write_all_at(bytes, *offset)?;
                }
                Ok(())
            }
        }
    }

    /// `fdatasync(2)`: makes the file's data (and the metadata needed to read
    /// it back) durable.
    pub fn sync_data(&mut self, file: &File) -> io::Result<()> {
        let Some(ring) = self.io.ring.as_mut() else {
            return file.sync_data();
        };
        let entry = opcode::Fsync::new(types::Fd(file.as_raw_fd()))
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data(0);
        loop {
            // SAFETY: the operation references only the fd, which `file`
            // keeps open until after the completion is reaped below.
            let pushed = unsafe { ring.submission().push(&entry) };
            if pushed.is_err() {
                // The queue is empty between calls; this cannot persist, but
                // fall back to the system call rather than spin.
                return file.sync_data();
            }
            wait_one(ring);
            let result = ring.completion().next().map(|cqe| cqe.result());
            match result {
                Some(r) if r >= 0 => return Ok(()),
                Some(r) if is_retryable(-r) => continue,
                Some(r) => return Err(io::Error::from_raw_os_error(-r)),
                // wait_one returned, so a completion is present; be defensive.
                None => return file.sync_data(),
            }
        }
    }
}

/// One write operation: index of the caller's buffer and the piece of it.
#[derive(Clone, Copy, Debug)]
struct WritePiece {
    buffer: usize,
    piece: Piece,
}

fn uring_write(
    ring: &mut IoUring,
    shape: IoShape,
    file: &File,
    writes: &[(u64, &[u8])],
) -> io::Result<()> {
    let fd = types::Fd(file.as_raw_fd());
    let mut pieces: Vec<WritePiece> = Vec::new();
    for (buffer, (_, bytes)) in writes.iter().enumerate() {
        pieces.extend(
            split(bytes.len(), shape.piece_size)
                .into_iter()
                .map(|piece| WritePiece { buffer, piece }),
        );
    }
    let mut next = 0usize;
    let mut retry: Vec<usize> = Vec::new();
    let mut in_flight = 0usize;
    let mut first_error: Option<io::Error> = None;
    loop {
        while first_error.is_none() && in_flight < shape.queue_depth {
            let index = if let Some(index) = retry.pop() {
                index
            } else if next < pieces.len() {
                next += 1;
                next - 1
            } else {
                break;
            };
            let WritePiece { buffer, piece } = pieces[index];
            let (file_offset, bytes) = writes[buffer];
            let start = piece.buf_start + piece.done;
            let slice = &bytes[start..piece.buf_start + piece.len];
            let len = u32::try_from(slice.len()).unwrap_or(u32::MAX);
            let entry = opcode::Write::new(fd, slice.as_ptr(), len)
                .offset(file_offset + start as u64)
                .build()
                .user_data(index as u64);
            // SAFETY: `slice` borrows from `writes`, which outlives this call,
            // and the function never returns with operations in flight; the
            // fd is kept open by `file` for the same duration. At most
            // `queue_depth` ≤ ring size entries are queued.
            let pushed = unsafe { ring.submission().push(&entry) };
            if pushed.is_err() {
                retry.push(index);
                if let Err(error) = ring.submit() {
                    if !error.raw_os_error().is_some_and(is_retryable) {
                        first_error = Some(error);
                    }
                }
                break;
            }
            in_flight += 1;
        }
        if in_flight == 0 {
            break;
        }
        wait_one(ring);
        let completions: Vec<(u64, i32)> = ring
            .completion()
            .map(|cqe| (cqe.user_data(), cqe.result()))
            .collect();
        for (user_data, result) in completions {
            in_flight = in_flight.saturating_sub(1);
            let Some(write) = usize::try_from(user_data)
                .ok()
                .and_then(|i| pieces.get_mut(i))
            else {
                continue;
            };
            if result > 0 {
                write.piece.done += result as usize;
                if write.piece.done < write.piece.len {
                    retry.push(user_data as usize);
                }
            } else if result == 0 {
                if first_error.is_none() {
                    first_error = Some(io::Error::from(io::ErrorKind::WriteZero));
                }
            } else if is_retryable(-result) {
                retry.push(user_data as usize);
            } else if first_error.is_none() {
                first_error = Some(io::Error::from_raw_os_error(-result));
            }
        }
    }
    match first_error {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// Where the next data at or after `offset` starts (`lseek(SEEK_DATA)`).
///
/// `Ok(None)`: there is no data at or after `offset` (the rest of the file is
/// a hole, or `offset` is at or past the end). File systems without hole
/// information report everything as data; a file system or device that
/// rejects `SEEK_DATA` (`EINVAL`) yields `Ok(Some(offset))`, i.e. "read it".
pub fn next_data_offset(file: &File, offset: u64) -> io::Result<Option<u64>> {
    // Where SEEK_DATA is unsupported everything counts as data.
    seek_whence(file, offset, libc::SEEK_DATA, Some(offset))
}

/// Start of the first hole at or after `offset` (`lseek(SEEK_HOLE)`; the end
/// of the file counts as a hole). `None` when `offset` is past the end, or
/// when the file system cannot tell (then the caller reads everything).
pub fn next_hole_offset(file: &File, offset: u64) -> io::Result<Option<u64>> {
    seek_whence(file, offset, libc::SEEK_HOLE, None)
}

/// `lseek(offset, whence)`; ENXIO (past the end) is `None`, an unsupported
/// whence gives `unsupported`.
fn seek_whence(
    file: &File,
    offset: u64,
    whence: libc::c_int,
    unsupported: Option<u64>,
) -> io::Result<Option<u64>> {
    let Ok(signed) = i64::try_from(offset) else {
        return Ok(None);
    };
    // SAFETY: lseek has no memory-safety preconditions; the fd is valid for
    // the duration of the call because `file` is borrowed. Moving the file
    // position does not matter: every access in this crate is positioned.
    let result = unsafe { libc::lseek(file.as_raw_fd(), signed, whence) };
    if result >= 0 {
        return Ok(Some(result as u64));
    }
    let error = io::Error::last_os_error();
    match error.raw_os_error() {
        Some(code) if code == libc::ENXIO => Ok(None),
        Some(code) if code == libc::EINVAL || code == libc::EOPNOTSUPP => Ok(unsupported),
        _ => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngCore, SeedableRng};
    use std::io::Write;

    fn random_file(len: usize, seed: u64) -> (tempfile::NamedTempFile, Vec<u8>) {
        let mut data = vec![0u8; len];
        rand_chacha::ChaCha8Rng::seed_from_u64(seed).fill_bytes(&mut data);
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(&data).unwrap();
        file.flush().unwrap();
        (file, data)
    }

    #[test]
    fn uring_and_pread_read_identical_bytes() {
        let len = 5 * (1 << 20) + 12345;
        let (file, data) = random_file(len, 7);
        let shape = IoShape {
            queue_depth: 3,
            piece_size: 256 * 1024,
        };
        let mut uring = BlockReader::with_shape(shape, false);
        let mut pread = BlockReader::with_shape(shape, true);
        assert_eq!(pread.backend(), "pread");
        for (offset, size) in [
            (0u64, len),
            (4096, 1 << 20),
            (len as u64 - 100, 4096),
            (3, 777_777),
        ] {
            let mut a = vec![0xAAu8; size];
            let mut b = vec![0x55u8; size];
            let na = uring.read_at(file.as_file(), offset, &mut a).unwrap();
            let nb = pread.read_at(file.as_file(), offset, &mut b).unwrap();
            let expect = (len - offset as usize).min(size);
            assert_eq!(na, expect, "backend {}", uring.backend());
            assert_eq!(nb, expect);
            assert_eq!(&a[..na], &data[offset as usize..offset as usize + na]);
            assert_eq!(&a[..na], &b[..nb]);
        }
        // Past the end: nothing.
        let mut buf = vec![0u8; 4096];
        assert_eq!(
            uring
                .read_at(file.as_file(), len as u64 + 10, &mut buf)
                .unwrap(),
            0
        );
    }

    #[test]
    fn env_variable_forces_fallback_name() {
        // Not set by the test suite: both backends must at least report a name.
        let reader = BlockReader::new();
        assert!(matches!(reader.backend(), "io_uring" | "pread"));
    }

    #[test]
    fn writer_backends_write_identical_files() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut a = vec![0u8; 3 << 20];
        let mut b = vec![0u8; 100_000];
        rng.fill_bytes(&mut a);
        rng.fill_bytes(&mut b);
        let writes: Vec<(u64, &[u8])> = vec![(0, &a), (10 << 20, &b), (5 << 20, &b[..10])];
        let mut out = Vec::new();
        for force in [false, true] {
            let file = tempfile::tempfile().unwrap();
            let mut writer = BlockWriter::with_shape(
                IoShape {
                    queue_depth: 4,
                    piece_size: 64 * 1024,
                },
                force,
            );
            writer.write_all_at(&file, &writes).unwrap();
            writer.sync_data(&file).unwrap();
            let len = file.metadata().unwrap().len() as usize;
            let mut content = vec![0u8; len];
            pread_full(&file, 0, &mut content).unwrap();
            out.push(content);
        }
        assert_eq!(out[0], out[1]);
        assert_eq!(&out[0][..a.len()], &a[..]);
        assert_eq!(&out[0][10 << 20..], &b[..]);
    }

    #[test]
    fn seek_data_finds_holes() {
        let file = tempfile::tempfile().unwrap();
        file.set_len(64 << 20).unwrap();
        file.write_all_at(&[1u8; 4096], 32 << 20).unwrap();
        // Either the file system knows the hole (tmpfs, ext4, xfs) or it says "data".
        match next_data_offset(&file, 0).unwrap() {
            Some(off) => assert!(off == 0 || off == 32 << 20, "{off}"),
            None => panic!("data exists after offset 0"),
        }
        let after = next_data_offset(&file, (32 << 20) + 8192).unwrap();
        assert!(after.is_none() || after == Some((32 << 20) + 8192));
    }
}
