//! Termination signals (SIGTERM, SIGINT, SIGHUP) as an event-loop source, so that a killed VMM
//! still ends in order: vCPUs stopped, console flushed, terminal restored, pid file removed.
//!
//! Invariant: the signals are blocked in the thread that creates [`TerminationSignals`] before
//! it starts any other thread (every later thread inherits the mask), so they are only ever
//! delivered through the signalfd. The binary blocks them first thing ([`block`]), before it
//! writes its pid file: a signal sent as soon as the pid file names the VMM waits, pending,
//! until the main loop reads it, instead of killing the process before it can clean up.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::{MachineError, Result};

const SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// A signalfd receiving the termination signals.
pub struct TerminationSignals {
    fd: OwnedFd,
}

fn failed(step: &'static str) -> MachineError {
    MachineError::Signals {
        step,
        source: std::io::Error::last_os_error(),
    }
}

/// The set of the termination signals.
fn signal_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t owned by this frame.
    unsafe { libc::sigemptyset(&mut set) };
    for signal in SIGNALS {
        // SAFETY: as above; the signal numbers are valid.
        unsafe { libc::sigaddset(&mut set, signal) };
    }
    set
}

/// Blocks the termination signals in the calling thread (and the threads it starts later);
/// they stay pending until a [`TerminationSignals`] reads them. Blocking them again is
/// harmless.
pub fn block() -> Result<()> {
    let set = signal_set();
    // SAFETY: changes only this thread's mask, from a valid set.
    if unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) } != 0 {
        return Err(failed("block termination signals"));
    }
    Ok(())
}

impl TerminationSignals {
    /// Blocks the termination signals in this thread and opens a signalfd for them (a signal
    /// that arrived since [`block`] is read from it too).
    pub fn new() -> Result<TerminationSignals> {
        block()?;
        let set = signal_set();
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
