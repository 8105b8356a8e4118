//! Positioned reads and writes through io_uring, with a pread/pwrite fallback.
