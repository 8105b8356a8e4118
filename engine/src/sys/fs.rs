//! Linux file-system calls std does not wrap: hole punching (with a zero-write
//! fallback), vectored positioned writes, `SEEK_DATA`/`SEEK_HOLE`, advisory
//! whole-file locks, directory fsync, and reflinks (`FICLONE`).
//!
//! Every function takes a borrowed [`File`], so the descriptor is valid for the
//! duration of each call; none of them keeps it.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Most iovecs handed to one `pwritev` call (Linux `IOV_MAX`).
const IOV_MAX: usize = 1024;

/// Size of the zero buffer used when hole punching is not supported.
const ZERO_CHUNK: usize = 64 * 1024;

static ZEROES: [u8; ZERO_CHUNK] = [0u8; ZERO_CHUNK];

fn to_off(value: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(value).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "file offset does not fit in off_t",
        )
    })
}

/// Deallocates `[offset, offset + len)` of `file` so it reads as zeroes,
/// keeping the file size (`fallocate(PUNCH_HOLE | KEEP_SIZE)`).
///
/// Returns `Ok(false)` when the file system does not support hole punching
/// (nothing was changed); the caller then writes zeroes, see [`zero_range`].
pub fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<bool> {
    if len == 0 {
        return Ok(true);
    }
    let off = to_off(offset)?;
    let length = to_off(len)?;
    loop {
        // SAFETY: fallocate reads only its integer arguments; the descriptor
        // stays open for the whole call because `file` is borrowed.
        let rc = unsafe {
            libc::fallocate(
                file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off,
                length,
            )
        };
        if rc == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => return Ok(false),
            _ => return Err(err),
        }
    }
}

/// Makes `[offset, offset + len)` read as zeroes without changing the file
/// size: punches a hole, or writes zeroes over the part below end-of-file when
/// hole punching is unsupported (bytes past end-of-file already read as zero
/// once the file grows).
pub fn zero_range(file: &File, offset: u64, len: u64) -> io::Result<()> {
    if punch_hole(file, offset, len)? {
        return Ok(());
    }
    let eof = file.metadata()?.len();
    let end = offset.saturating_add(len).min(eof);
    let mut pos = offset;
    while pos < end {
        let n = usize::try_from(end - pos)
            .unwrap_or(ZERO_CHUNK)
            .min(ZERO_CHUNK);
        file.write_all_at(&ZEROES[..n], pos)?;
        pos += n as u64;
    }
    Ok(())
}

/// Writes every buffer of `bufs`, back to back, at `offset` (`pwritev`, retried
/// on short writes and `EINTR`, at most `IOV_MAX` (1024) buffers per call).
pub fn write_all_vectored_at(file: &File, bufs: &[&[u8]], mut offset: u64) -> io::Result<()> {
    let mut index = 0usize;
    let mut skip = 0usize;
    let mut iov: Vec<libc::iovec> = Vec::with_capacity(bufs.len().min(IOV_MAX));
    while index < bufs.len() {
        if bufs[index].len() == skip {
            index += 1;
            skip = 0;
            continue;
        }
        iov.clear();
        for (n, buf) in bufs[index..].iter().enumerate() {
            if iov.len() == IOV_MAX {
                break;
            }
            let part = if n == 0 { &buf[skip..] } else { &buf[..] };
            if part.is_empty() {
                continue;
            }
            iov.push(libc::iovec {
                iov_base: part.as_ptr() as *mut libc::c_void,
                iov_len: part.len(),
            });
        }
        let off = to_off(offset)?;
        // iov.len() <= IOV_MAX = 1024, which always fits in a c_int.
        let count = iov.len() as libc::c_int;
        // SAFETY: every iovec points into a slice of `bufs`, which is borrowed
        // (alive and unmodified) for this whole call; pwritev only reads them.
        let rc = unsafe { libc::pwritev(file.as_raw_fd(), iov.as_ptr(), count, off) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if rc == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "pwritev wrote no bytes",
            ));
        }
        // rc > 0 was checked above, so the cast is lossless.
        let mut written = rc as usize;
        offset += written as u64;
        while written > 0 && index < bufs.len() {
            let available = bufs[index].len() - skip;
            if written >= available {
                written -= available;
                index += 1;
                skip = 0;
            } else {
                skip += written;
                written = 0;
            }
        }
    }
    Ok(())
}

/// Start of the first data region at or after `from` (`SEEK_DATA`), or `None`
/// when only a hole (or nothing) follows. Moves the descriptor's file offset,
/// which ferry never uses (all its I/O is positioned).
pub fn seek_data(file: &File, from: u64) -> io::Result<Option<u64>> {
    seek(file, from, libc::SEEK_DATA)
}

/// Start of the first hole at or after `from` (`SEEK_HOLE`; end-of-file counts
/// as a hole), or `None` when `from` is at or past end-of-file.
pub fn seek_hole(file: &File, from: u64) -> io::Result<Option<u64>> {
    seek(file, from, libc::SEEK_HOLE)
}

fn seek(file: &File, from: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    let off = to_off(from)?;
    // SAFETY: lseek reads only its integer arguments; the descriptor stays
    // open for the call because `file` is borrowed.
    let rc = unsafe { libc::lseek(file.as_raw_fd(), off, whence) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ENXIO) {
            return Ok(None);
        }
        return Err(err);
    }
    // rc >= 0 was checked above.
    Ok(Some(rc as u64))
}

/// Takes an exclusive advisory lock on `file` without blocking (`flock`).
/// Returns `Ok(false)` when another open file description holds it. The lock
/// lives as long as the descriptor.
pub fn try_lock_exclusive(file: &File) -> io::Result<bool> {
    loop {
        // SAFETY: flock reads only its integer arguments; the descriptor stays
        // open for the call because `file` is borrowed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => return Ok(false),
            _ => return Err(err),
        }
    }
}

/// Makes the directory entries of `dir` durable (creations, renames and
/// deletions inside it) by fsyncing the directory itself.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Makes `dst` share all of `src`'s data extents (`ioctl(FICLONE)`: a
/// reflink, copy-on-write from then on, no data copied), replacing what
/// `dst` held. `Ok(false)` when the file system cannot (no reflink support,
/// the files on different file systems): nothing was changed, and the
/// caller copies instead.
pub fn reflink(src: &File, dst: &File) -> io::Result<bool> {
    // SAFETY: both descriptors are open for the duration of the call (the
    // files are borrowed); FICLONE takes the source descriptor as its
    // integer argument and keeps no pointer.
    let rc = unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) };
    if rc == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EOPNOTSUPP | libc::ENOTTY | libc::EXDEV | libc::EINVAL | libc::ENOSYS) => {
            Ok(false)
        }
        _ => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;

    fn temp_file() -> (tempfile::TempDir, File) {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("f"))
            .expect("create");
        (dir, file)
    }

    fn read_all(file: &File) -> Vec<u8> {
        let len = file.metadata().expect("metadata").len() as usize;
        let mut out = vec![0u8; len];
        file.read_exact_at(&mut out, 0).expect("read");
        out
    }

    #[test]
    fn vectored_write_handles_many_and_empty_buffers() {
        let (_dir, file) = temp_file();
        let pieces: Vec<Vec<u8>> = (0..3000u32)
            .map(|i| vec![(i % 251) as u8; (i % 7) as usize])
            .collect();
        let refs: Vec<&[u8]> = pieces.iter().map(|p| p.as_slice()).collect();
        write_all_vectored_at(&file, &refs, 10).expect("write");
        let expected: Vec<u8> = std::iter::repeat_n(0u8, 10)
            .chain(pieces.iter().flatten().copied())
            .collect();
        assert_eq!(read_all(&file), expected);
    }

    #[test]
    fn zero_range_keeps_size_and_zeroes() {
        let (_dir, file) = temp_file();
        file.write_all_at(&vec![0xAB; 256 * 1024], 0)
            .expect("write");
        zero_range(&file, 4096, 100_000).expect("zero");
        // A range reaching past end-of-file must not grow the file.
        zero_range(&file, 250 * 1024, 100 * 1024).expect("zero tail");
        let data = read_all(&file);
        assert_eq!(data.len(), 256 * 1024);
        assert!(data[..4096].iter().all(|b| *b == 0xAB));
        assert!(data[4096..104_096].iter().all(|b| *b == 0));
        assert!(data[104_096..250 * 1024].iter().all(|b| *b == 0xAB));
        assert!(data[250 * 1024..].iter().all(|b| *b == 0));
    }

    #[test]
    fn seek_data_finds_data_after_hole() {
        let (_dir, file) = temp_file();
        file.set_len(8 << 20).expect("set_len");
        file.write_all_at(&[1u8; 4096], 4 << 20).expect("write");
        let data = seek_data(&file, 0).expect("seek").expect("some data");
        // File systems may report data at a coarser granularity, never later.
        assert!(data <= 4 << 20);
        let hole = seek_hole(&file, 4 << 20).expect("seek").expect("hole");
        assert!(hole > 4 << 20);
        assert_eq!(seek_data(&file, 8 << 20).expect("seek"), None);
    }

    #[test]
    fn lock_is_exclusive_between_descriptors() {
        let (dir, file) = temp_file();
        assert!(try_lock_exclusive(&file).expect("lock"));
        let other = File::open(dir.path().join("f")).expect("open");
        assert!(!try_lock_exclusive(&other).expect("lock"));
        drop(file);
        assert!(try_lock_exclusive(&other).expect("lock after release"));
        sync_dir(dir.path()).expect("sync dir");
    }
}
