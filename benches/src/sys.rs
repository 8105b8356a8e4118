//! The benchmarks' only `unsafe` code: thin libc wrappers for precise
//! CPU accounting — the calling thread's CPU clock, this process's resource
//! usage, the clock-tick rate, and `wait4` to reap one child with its exact CPU time and peak RSS.

use std::io;
use std::time::Duration;

/// CPU time consumed so far by the calling thread
/// (`clock_gettime(CLOCK_THREAD_CPUTIME_ID)`, nanosecond resolution).
pub fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec owned by this frame;
    // clock_gettime only writes into it. CLOCK_THREAD_CPUTIME_ID always
    // exists on Linux, so the call cannot fail (a failure leaves ts at 0).
    unsafe {
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts);
    }
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// Clock ticks per second of `/proc/<pid>/stat` times (`sysconf(_SC_CLK_TCK)`).
pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf takes an integer and touches no memory of ours.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as u64
    } else {
        100
    }
}

/// CPU time (user + system) and peak RSS of one process or of its reaped children.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    /// User CPU time.
    pub user: Duration,
    /// System CPU time.
    pub system: Duration,
    /// Peak resident set size in bytes (`ru_maxrss`).
    pub max_rss: u64,
}

impl Usage {
    /// User + system CPU time.
    pub fn cpu(&self) -> Duration {
        self.user + self.system
    }

    fn from_rusage(ru: &libc::rusage) -> Self {
        let tv = |t: libc::timeval| {
            Duration::new(
                t.tv_sec.max(0) as u64,
                (t.tv_usec.clamp(0, 999_999) as u32) * 1000,
            )
        };
        Self {
            user: tv(ru.ru_utime),
            system: tv(ru.ru_stime),
            max_rss: (ru.ru_maxrss.max(0) as u64) * 1024,
        }
    }
}

/// `getrusage(RUSAGE_SELF)`: CPU of every thread of this process (live and
/// exited), microsecond resolution.
pub fn self_usage() -> io::Result<Usage> {
    // SAFETY: rusage is plain old data; all-zero is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage owned by this frame.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Usage::from_rusage(&ru))
}

/// Waits for child `pid` to exit (`wait4`) and returns its exit status and
/// its own resource usage (CPU of all its threads, peak RSS). The caller must
/// not also `wait` on the same child through `std::process::Child`.
pub fn wait4(pid: u32) -> io::Result<(i32, Usage)> {
    let pid = libc::pid_t::try_from(pid)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid out of range"))?;
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain old data; all-zero is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `status` and `ru` are valid, writable and owned by this
        // frame; wait4 only writes into them.
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if rc == pid {
            break;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    Ok((code, Usage::from_rusage(&ru)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_clock_advances_with_work() {
        let before = thread_cpu();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(std::hint::black_box(i));
        }
        std::hint::black_box(x);
        assert!(thread_cpu() > before);
    }

    #[test]
    // wait4 below reaps the child; std's wait would then fail with ECHILD.
    #[allow(clippy::zombie_processes)]
    fn wait4_reports_exit_code_and_rss() {
        let child = std::process::Command::new("sh")
            .args(["-c", "exit 3"])
            .spawn()
            .unwrap();
        let (code, usage) = wait4(child.id()).unwrap();
        assert_eq!(code, 3);
        assert!(usage.max_rss > 0);
    }
}
