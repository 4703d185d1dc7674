//! `aio=native`: Linux native AIO on raw system calls (no libaio library).
//!
//! ```text
//!   submit(batch) ─► slab (key per request) ─► pending (FIFO) ─► one io_submit per round
//!                                                   ▲                 │  aio_data = key
//!                       short transfer / EINTR ─────┘                 ▼  IOCB_FLAG_RESFD
//!   reap(out) ◄─ advance() ◄─ io_getevents(min_nr 0, no wait) ◄─ eventfd readable
//! ```
//!
//! Invariants:
//! - At most `depth` requests are in the kernel; the rest wait in `pending`, in submission
//!   order, and go out from `reap` once completions make room.
//! - `io_submit` taking only the first `k` iocbs leaves the others at the front of `pending`;
//!   they are offered again at once, which either submits them or surfaces the error of the
//!   first one. `EINTR` retries; `EAGAIN`/`EBUSY` wait for completions while some request is in
//!   the kernel and otherwise complete the first request with that error, so the queue always
//!   moves. Any other submission error completes the first request with that errno.
//! - Completions that never reached the kernel are queued in `ready` and the eventfd is
//!   written, so they are reaped the same way as the kernel's.
//! - iocbs are copied by the kernel during `io_submit`, so they live in one reused buffer; the
//!   iovec arrays they point to live in the slab until completion.
//! - Linux AIO has no discard or write-zeroes: [`AioContext::supports`] says so, and such
//!   requests complete with `-EOPNOTSUPP`.
//! - [`AioContext::poll_ready`] reads the completion ring's `head` and `tail` in our memory
//!   (acquire loads, no system call); it is used only when the ring's magic word was found at
//!   set-up, so a kernel with another layout merely loses polling.
//! - Dropping the context first waits for every request in the kernel, then `io_destroy`s it.

use std::os::unix::io::RawFd;
use std::sync::atomic::{AtomicU32, Ordering};

use super::abi::{self, aio_context_t, io_event, iocb};
use super::inflight::Queue;
use super::{AioCompletion, AioContext, AioEngine, AioError, AioOpcode, AioRequest, Iovec};

const ENGINE: AioEngine = AioEngine::Native;

/// An `aio_lio_opcode` no kernel implements: `io_submit` fails it with `EINVAL`.
const REJECTED_OPCODE: u16 = u16::MAX;

/// The pointer array `io_submit` reads, rebuilt before each call from `NativeContext::iocbs`.
#[derive(Debug, Default)]
struct IocbPtrs(Vec<*mut iocb>);

// SAFETY: the pointers only ever point into the owning context's `iocbs` buffer, are rebuilt
// right before each `io_submit` and are never dereferenced by us; moving them to another
// thread together with that buffer keeps them meaningful.
unsafe impl Send for IocbPtrs {}

/// A Linux native AIO context bound to one borrowed file descriptor.
#[derive(Debug)]
pub struct NativeContext {
    fd: RawFd,
    ctx: aio_context_t,
    depth: usize,
    queue: Queue,
    in_kernel: usize,
    iocbs: Vec<iocb>,
    ptrs: IocbPtrs,
    events: Vec<io_event>,
    /// The completion ring's header was recognised: `poll_ready` may read it.
    ring_pollable: bool,
}

/// Whether Linux AIO has a command for `opcode` (it has none for discard or write-zeroes).
fn carries(opcode: AioOpcode) -> bool {
    !matches!(opcode, AioOpcode::Discard | AioOpcode::WriteZeroes)
}

fn syscall_error(call: &'static str, source: std::io::Error) -> AioError {
    AioError::Syscall {
        engine: ENGINE,
        call,
        source,
    }
}

impl NativeContext {
    /// Sets up an AIO context for `depth` requests in flight on `fd`, which must stay open for
    /// the engine's lifetime.
    pub fn new(fd: RawFd, depth: u32) -> Result<Self, AioError> {
        let depth = depth.max(1);
        let queue = Queue::new(ENGINE, depth as usize)?;
        let ctx = abi::io_setup(depth).map_err(|e| syscall_error("io_setup", e))?;
        let depth = depth as usize;
        let mut context = NativeContext {
            fd,
            ctx,
            depth,
            queue,
            in_kernel: 0,
            iocbs: Vec::with_capacity(depth),
            ptrs: IocbPtrs(Vec::with_capacity(depth)),
            events: vec![io_event::default(); depth],
            ring_pollable: false,
        };
        context.ring_pollable = ctx != 0
            && context
                .ring_word(abi::AIO_RING_MAGIC_OFFSET)
                .load(Ordering::Acquire)
                == abi::AIO_RING_MAGIC;
        Ok(context)
    }

    /// A word of the completion ring's header, at `offset` bytes from its start.
    fn ring_word(&self, offset: usize) -> &AtomicU32 {
        debug_assert!(offset <= abi::AIO_RING_MAGIC_OFFSET && offset.is_multiple_of(4));
        // SAFETY: `ctx` is the address where `io_setup` mapped the ring (readable and writable,
        // page-aligned, at least one page, see `abi`); it stays mapped until `io_destroy` in
        // `Drop`, after every borrow of `self`. The header's first words are 4-byte aligned
        // `u32`s inside that page. The kernel updates them concurrently, which is why they are
        // only ever read atomically here.
        unsafe { &*((self.ctx as usize + offset) as *const AtomicU32) }
    }

    /// The iocb for the next round of the request under `key`.
    fn iocb_for(&self, key: usize) -> iocb {
        let mut cb = iocb {
            aio_data: key as u64,
            aio_fildes: self.fd as u32,
            aio_flags: abi::IOCB_FLAG_RESFD,
            aio_resfd: self.queue.eventfd() as u32,
            ..iocb::default()
        };
        let Some(slot) = self.queue.slab.get(key) else {
            cb.aio_lio_opcode = REJECTED_OPCODE;
            return cb;
        };
        let iovecs = slot.iovecs();
        cb.aio_offset = slot.offset() as i64;
        match slot.req.opcode {
            AioOpcode::Read | AioOpcode::Write if iovecs.len() == 1 => {
                let read = slot.req.opcode == AioOpcode::Read;
                cb.aio_lio_opcode = if read {
                    abi::IOCB_CMD_PREAD
                } else {
                    abi::IOCB_CMD_PWRITE
                };
                cb.aio_buf = iovecs[0].base;
                cb.aio_nbytes = iovecs[0].len;
            }
            AioOpcode::Read | AioOpcode::Write => {
                let read = slot.req.opcode == AioOpcode::Read;
                cb.aio_lio_opcode = if read {
                    abi::IOCB_CMD_PREADV
                } else {
                    abi::IOCB_CMD_PWRITEV
                };
                cb.aio_buf = iovecs.as_ptr() as u64;
                cb.aio_nbytes = iovecs.len() as u64;
            }
            AioOpcode::Flush => cb.aio_lio_opcode = abi::IOCB_CMD_FDSYNC,
            // `immediate` completes these before they are queued; should one ever get here,
            // the kernel's EINVAL becomes its completion rather than a false success.
            AioOpcode::Discard | AioOpcode::WriteZeroes => cb.aio_lio_opcode = REJECTED_OPCODE,
        }
        cb
    }

    /// Submits as much of `pending` as the context has room for, one `io_submit` per round.
    fn flush_pending(&mut self) -> Result<(), AioError> {
        while !self.queue.pending.is_empty() && self.in_kernel < self.depth {
            let n = self.queue.pending.len().min(self.depth - self.in_kernel);
            self.iocbs.clear();
            for i in 0..n {
                let cb = self.iocb_for(self.queue.pending[i]);
                self.iocbs.push(cb);
            }
            self.ptrs.0.clear();
            self.ptrs
                .0
                .extend(self.iocbs.iter_mut().map(|cb| cb as *mut iocb));
            // SAFETY: every pointer targets `self.iocbs`, alive during the call. The buffers
            // or iovec arrays the iocbs name belong to requests held in the slab until their
            // completion is reaped, and the caller of `submit` keeps the memory valid.
            match unsafe { abi::io_submit(self.ctx, &self.ptrs.0) } {
                Ok(0) if self.in_kernel > 0 => break,
                Ok(0) => self.queue.fail_front(libc::EAGAIN)?,
                Ok(k) => {
                    self.queue.pending.drain(..k);
                    self.in_kernel += k;
                }
                Err(e) => match e.raw_os_error().unwrap_or(libc::EIO) {
                    libc::EINTR => continue,
                    libc::EAGAIN | libc::EBUSY if self.in_kernel > 0 => break,
                    errno => self.queue.fail_front(errno)?,
                },
            }
        }
        Ok(())
    }

    /// Collects up to `depth` kernel completions, waiting for at least `min_nr` of them;
    /// returns how many arrived.
    fn collect(&mut self, min_nr: usize, out: &mut Vec<AioCompletion>) -> Result<usize, AioError> {
        let no_wait = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let timeout = if min_nr == 0 { Some(&no_wait) } else { None };
        let n = loop {
            match abi::io_getevents(self.ctx, min_nr, &mut self.events, timeout) {
                Ok(n) => break n,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) => return Err(syscall_error("io_getevents", e)),
            }
        };
        for i in 0..n {
            let ev = self.events[i];
            self.in_kernel = self.in_kernel.saturating_sub(1);
            self.queue.finish(ev.data as usize, ev.res, self.fd, out);
        }
        Ok(n)
    }
}

impl AioContext for NativeContext {
    fn engine(&self) -> AioEngine {
        ENGINE
    }

    fn supports(&self, opcode: AioOpcode) -> bool {
        carries(opcode)
    }

    unsafe fn submit(&mut self, batch: &mut Vec<AioRequest>) -> Result<(), AioError> {
        self.queue.accept(batch, carries)?;
        self.flush_pending()
    }

    fn eventfd(&self) -> RawFd {
        self.queue.eventfd()
    }

    fn reap(&mut self, out: &mut Vec<AioCompletion>) -> Result<usize, AioError> {
        self.queue.clear_eventfd()?;
        let before = out.len();
        self.queue.take_ready(out);
        while self.in_kernel > 0 {
            if self.collect(0, out)? < self.depth {
                break;
            }
        }
        // The completions in `out` must reach the caller even if resubmission fails; the
        // queued requests stay queued and are offered again by the next call.
        if let Err(e) = self.flush_pending() {
            log::error!("{e}");
        }
        self.queue.take_ready(out);
        Ok(out.len() - before)
    }

    fn in_flight(&self) -> usize {
        self.queue.in_flight()
    }

    fn poll_ready(&self) -> bool {
        if self.queue.has_ready() {
            return true;
        }
        if !self.ring_pollable || self.in_kernel == 0 {
            return false;
        }
        // Acquire pairs with the kernel's barrier before it publishes `tail`.
        let tail = self.ring_word(abi::AIO_RING_TAIL).load(Ordering::Acquire);
        let head = self.ring_word(abi::AIO_RING_HEAD).load(Ordering::Acquire);
        head != tail
    }

    fn iovec_buffer(&mut self) -> Vec<Iovec> {
        self.queue.iovec_buffer()
    }

    fn drain(&mut self, out: &mut Vec<AioCompletion>) -> Result<(), AioError> {
        loop {
            self.flush_pending()?;
            self.queue.take_ready(out);
            if self.in_kernel == 0 && self.queue.pending.is_empty() {
                return Ok(());
            }
            self.collect(1, out)?;
        }
    }
}

impl Drop for NativeContext {
    fn drop(&mut self) {
        let mut lost = Vec::new();
        if let Err(e) = self.drain(&mut lost) {
            log::error!("aio=native: draining before teardown failed: {e}");
            self.queue.abandon();
        }
        if let Err(e) = abi::io_destroy(self.ctx) {
            log::error!("aio=native: io_destroy failed: {e}");
        }
    }
}
