//! `aio=off`: every request is done inline with preadv/pwritev/fdatasync/fallocate inside
//! [`AioContext::submit`], and completes through the same eventfd path as the other engines.
//!
//! Invariants:
//! - `submit` returns only after every request of the batch has finished; its completions
//!   wait in `ready` and the eventfd is written once per batch, so the caller learns about
//!   them exactly as it would from an asynchronous engine: eventfd readable, then `reap`.
//! - Short transfers are continued in the same call, by the `inflight::advance` rules that
//!   all engines share.
//! - Nothing is ever in the kernel between calls, so dropping the engine needs no draining.

use std::os::unix::io::{AsRawFd, RawFd};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::inflight::{advance, clear_eventfd, immediate, Outcome, Slot};
use super::{AioCompletion, AioContext, AioEngine, AioError, AioOpcode, AioRequest, Iovec};

/// The synchronous engine bound to one borrowed file descriptor.
#[derive(Debug)]
pub struct SyncContext {
    fd: RawFd,
    efd: EventFd,
    ready: Vec<AioCompletion>,
}

impl SyncContext {
    /// Creates the engine for `fd`, which must stay open for the engine's lifetime.
    pub fn new(fd: RawFd) -> Result<Self, AioError> {
        let efd = EventFd::new(EFD_NONBLOCK).map_err(|source| AioError::Syscall {
            engine: AioEngine::Off,
            call: "eventfd",
            source,
        })?;
        Ok(SyncContext {
            fd,
            efd,
            ready: Vec::new(),
        })
    }
}

impl AioContext for SyncContext {
    fn engine(&self) -> AioEngine {
        AioEngine::Off
    }

    fn supports(&self, _opcode: AioOpcode) -> bool {
        true
    }

    unsafe fn submit(&mut self, batch: &mut Vec<AioRequest>) -> Result<(), AioError> {
        if batch.is_empty() {
            return Ok(());
        }
        for req in batch.drain(..) {
            if let Some(result) = immediate(&req, true) {
                self.ready.push(AioCompletion {
                    tag: req.tag,
                    result,
                });
                continue;
            }
            let done = run_to_end(self.fd, &mut Slot::new(req));
            self.ready.push(done);
        }
        self.efd.write(1).map_err(|source| AioError::Syscall {
            engine: AioEngine::Off,
            call: "eventfd write",
            source,
        })
    }

    fn poll_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    fn eventfd(&self) -> RawFd {
        self.efd.as_raw_fd()
    }

    fn reap(&mut self, out: &mut Vec<AioCompletion>) -> Result<usize, AioError> {
        clear_eventfd(&self.efd, AioEngine::Off)?;
        let n = self.ready.len();
        out.append(&mut self.ready);
        Ok(n)
    }

    fn in_flight(&self) -> usize {
        self.ready.len()
    }

    fn drain(&mut self, out: &mut Vec<AioCompletion>) -> Result<(), AioError> {
        self.reap(out).map(|_| ())
    }
}

/// Runs one round of `slot` on `fd` (one system call) and returns the raw result: bytes, or a
/// negative errno.
fn round(fd: RawFd, slot: &Slot) -> i64 {
    let iovecs = slot.iovecs();
    let iov_ptr = iovecs.as_ptr() as *const libc::iovec;
    let iov_cnt = iovecs.len().min(libc::c_int::MAX as usize) as libc::c_int;
    let offset = slot.offset() as libc::off_t;
    let len = slot.req.len as libc::off_t;
    let offset_whole = slot.req.offset as libc::off_t;
    // SAFETY: (all arms) `Iovec` has the layout of `struct iovec`; the array lives in the
    // slot during the call, and the memory it names is valid (writable for reads) by
    // the contract of `AioContext::submit`. The other calls take only integers.
    let ret = unsafe {
        match slot.req.opcode {
            AioOpcode::Read => libc::preadv(fd, iov_ptr, iov_cnt, offset) as i64,
            AioOpcode::Write => libc::pwritev(fd, iov_ptr, iov_cnt, offset) as i64,
            AioOpcode::Flush => i64::from(libc::fdatasync(fd)),
            AioOpcode::Discard | AioOpcode::WriteZeroes => i64::from(libc::fallocate(
                fd,
                slot.fallocate_mode(),
                offset_whole,
                len,
            )),
        }
    };
    if ret < 0 {
        -i64::from(
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
        )
    } else {
        ret
    }
}

/// Runs the request in `slot` on `fd` to its end, round after round by the shared
/// `inflight::advance` rules, in the calling thread, and returns its completion. `aio=off`
/// calls it from `submit`; `aio=threads` from its workers.
pub(super) fn run_to_end(fd: RawFd, slot: &mut Slot) -> AioCompletion {
    loop {
        let res = round(fd, slot);
        if let Outcome::Complete(done) = advance(slot, res, fd) {
            return done;
        }
    }
}

// The cast of `Iovec` arrays to `struct iovec` arrays above relies on identical layouts.
const _: () = {
    assert!(std::mem::size_of::<Iovec>() == std::mem::size_of::<libc::iovec>());
    assert!(std::mem::offset_of!(Iovec, base) == std::mem::offset_of!(libc::iovec, iov_base));
    assert!(std::mem::offset_of!(Iovec, len) == std::mem::offset_of!(libc::iovec, iov_len));
};
