//! Termination signals (SIGTERM, SIGINT, SIGHUP) as an event-loop source, so that a killed VMM
//! still ends in order: vCPUs stopped, console flushed, terminal restored, pid file removed.
//!
//! Invariant: the signals are blocked in the thread that creates [`TerminationSignals`] before
//! it starts any other thread (every later thread inherits the mask), so they are only ever
//! delivered through the signalfd.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::{MachineError, Result};

const SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// A signalfd receiving the termination signals.
pub struct TerminationSignals {
    fd: OwnedFd,
}

impl TerminationSignals {
    /// Blocks the termination signals in this thread and opens a signalfd for them.
    pub fn new() -> Result<TerminationSignals> {
        let failed = |step| MachineError::Signals {
            step,
            source: std::io::Error::last_os_error(),
        };
        // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid sigset_t owned by this frame.
        unsafe { libc::sigemptyset(&mut set) };
        for signal in SIGNALS {
            // SAFETY: as above; the signal numbers are valid.
            unsafe { libc::sigaddset(&mut set, signal) };
        }
        // SAFETY: changes only this thread's mask, from a valid set.
        if unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) } != 0 {
            return Err(failed("block termination signals"));
        }
        // SAFETY: creates a new descriptor from a valid set; the result is checked.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if fd < 0 {
            return Err(failed("signalfd"));
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(TerminationSignals { fd })
    }

    /// The next pending signal's number, if any.
    pub fn read(&self) -> Option<i32> {
        // SAFETY: signalfd_siginfo is plain data.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reads at most `size` bytes into `info`, which is exactly that large.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size,
            )
        };
        (n == size as isize).then_some(info.ssi_signo as i32)
    }
}

impl AsRawFd for TerminationSignals {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
