//! Timers for event loops: a `timerfd` on the monotonic clock, created non-blocking and
//! close-on-exec in one system call.
//!
//! Invariants:
//! - Every timer an event loop waits for is made by [`nonblocking_timer`]: reading it never
//!   blocks the loop (a timer read before it fired, or re-armed since, answers `EAGAIN`), and it
//!   is created with exactly `timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC)`, no
//!   `fcntl` afterwards. The VMM's seccomp filters allow `timerfd_create` with those arguments
//!   only, and `timerfd_settime` with no flags (a relative time, as [`TimerFd::reset`] and
//!   [`TimerFd::clear`] set it).

use std::io;
use std::os::unix::io::FromRawFd;

use vmm_sys_util::timerfd::TimerFd;

/// The clock of every timer made here.
pub const TIMER_CLOCK: libc::clockid_t = libc::CLOCK_MONOTONIC;

/// The flags every timer made here is created with.
pub const TIMER_FLAGS: libc::c_int = libc::TFD_NONBLOCK | libc::TFD_CLOEXEC;

/// A disarmed timer on the monotonic clock whose reads never block; arm it with
/// [`TimerFd::reset`], disarm it with [`TimerFd::clear`], read its expiry count (clearing it)
/// with [`TimerFd::wait`].
pub fn nonblocking_timer() -> io::Result<TimerFd> {
    // SAFETY: plain system call with constant arguments; no memory is involved.
    let fd = unsafe { libc::timerfd_create(TIMER_CLOCK, TIMER_FLAGS) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new timerfd this function alone owns; the `TimerFd` takes it over.
    Ok(unsafe { TimerFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::io::AsRawFd;
    use std::time::{Duration, Instant};

    #[test]
    fn reads_never_block_and_expiries_are_counted() {
        let mut timer = nonblocking_timer().unwrap();
        // SAFETY: F_GETFL/F_GETFD on a descriptor the test owns.
        let (status, fd_flags) = unsafe {
            (
                libc::fcntl(timer.as_raw_fd(), libc::F_GETFL),
                libc::fcntl(timer.as_raw_fd(), libc::F_GETFD),
            )
        };
        assert_ne!(status & libc::O_NONBLOCK, 0);
        assert_ne!(fd_flags & libc::FD_CLOEXEC, 0);
        let err = timer
            .wait()
            .expect_err("a disarmed timer has nothing to read");
        assert_eq!(err.errno(), libc::EAGAIN);

        let started = Instant::now();
        timer.reset(Duration::from_millis(5), None).unwrap();
        assert!(timer.is_armed().unwrap());
        let count = loop {
            match timer.wait() {
                Ok(count) => break count,
                Err(e) if e.errno() == libc::EAGAIN => {
                    assert!(started.elapsed() < Duration::from_secs(10), "never fired");
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(count, 1);
        assert!(started.elapsed() >= Duration::from_millis(5));
        timer.reset(Duration::from_secs(60), None).unwrap();
        timer.clear().unwrap();
        assert!(!timer.is_armed().unwrap());
    }
}
