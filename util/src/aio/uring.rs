//! `aio=io_uring`: the block engine on our own ring ([`crate::io_uring`]).
//!
//! ```text
//!   submit(batch) ─► slab (key per request) ─► pending ─► SQEs (user_data = key)
//!                                                            │ one io_uring_enter per batch
//!   reap(out) ◄─ advance() ◄─ CQ ring ◄─ eventfd (registered)
//!   (with deferred task work, one io_uring_enter(GETEVENTS) per reap posts the completions)
//! ```
//!
//! Invariants:
//! - At most `depth` requests are in the ring (pushed and not yet reaped). The CQ ring has
//!   at least twice as many entries as the SQ ring, so completions never overflow; the rest
//!   waits in `pending`, in order, and is pushed from `reap` once completions make room.
//! - The ring is set up with the first flag set of [`SETUP_FLAGS`] the kernel accepts. With
//!   `IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN` a completion finished by an io-wq
//!   worker (every request on tmpfs, which cannot refuse to block) is queued as task work and
//!   posted when the ring's thread next enters the kernel: one eventfd wake-up per burst of
//!   completions instead of a cross-thread wake-up per completion.
//! - Every ring starts disabled (`IORING_SETUP_R_DISABLED`, Linux 5.10) and, before it is
//!   enabled, registers its eventfd and its restrictions (`IORING_REGISTER_RESTRICTIONS`):
//!   the SQE opcodes of [`SQE_OPS`] (`FALLOCATE` only where the kernel has it), no SQE flag,
//!   and no `io_uring_register` opcode at all once enabled. A request the engine did not
//!   plan for completes with `-EACCES`, whatever the process's seccomp filter allows. The
//!   ring is enabled by the first call that submits (or registers memory after a submission,
//!   which then fails: register memory first, as [`AioContext::register_memory`] says).
//! - A single-issuer ring takes system calls from one thread only. Since it starts disabled,
//!   it can be created on one thread and handed to another; it is bound to the first thread
//!   that submits, and every later call from another thread fails with
//!   [`AioError::WrongThread`] and changes nothing. The VMM creates an engine where the drive
//!   is opened and uses it only on its device's event-loop thread.
//! - With `IORING_SETUP_SUBMIT_ALL` (when the kernel knows it) one failing SQE does not stop
//!   the batch: its error comes back as its CQE. SQEs the kernel
//!   did not consume (`EAGAIN`/`EBUSY` from `io_uring_enter`) stay in the SQ ring and are
//!   submitted again by the next `submit` or `reap`.
//! - Discard and write-zeroes are `IORING_OP_FALLOCATE` (punch hole / zero range, keeping the
//!   size, with the fallback of `inflight`) when the kernel supports the opcode.
//! - With [`AioContext::register_memory`], a read or write whose single iovec lies in one
//!   registered region becomes `READ_FIXED`/`WRITE_FIXED` (regions are registered in pieces of
//!   at most 1 GiB, the kernel's limit per buffer).
//! - [`AioContext::poll_ready`] reads the CQ ring's head and tail and the SQ ring's flags
//!   (`IORING_SQ_TASKRUN`: deferred completions wait to be posted; `IORING_SQ_CQ_OVERFLOW`),
//!   with acquire loads and no system call.
//! - Dropping the context waits for every request in the ring before the ring is unmapped.
//!   Only if that wait fails (`io_uring_enter` fails, or the context is dropped on a thread
//!   that is not the ring's) is the ring closed with requests still in it: the kernel then
//!   finishes or cancels them in the background, so their [`super::KeepAlive`]s are leaked
//!   and their buffers stay mapped, and the error is logged.

use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::thread::{self, ThreadId};

use super::inflight::Queue;
use super::{AioCompletion, AioContext, AioEngine, AioError, AioOpcode, AioRequest, Iovec};
use crate::io_uring::sys::{
    io_uring_restriction, IORING_FSYNC_DATASYNC, IORING_SETUP_DEFER_TASKRUN,
    IORING_SETUP_R_DISABLED, IORING_SETUP_SINGLE_ISSUER, IORING_SETUP_SUBMIT_ALL,
    IORING_SETUP_TASKRUN_FLAG,
};
use crate::io_uring::{io_uring_sqe, IoUring, IoringOp, UringError};

const ENGINE: AioEngine = AioEngine::IoUring;

/// The kernel's limit on one registered buffer.
const MAX_FIXED_BUFFER: u64 = 1 << 30;

/// Bound on the system calls one reap makes to post deferred completions.
const MAX_POST_ROUNDS: usize = 64;

/// Largest ring the kernel accepts without clamping.
const MAX_ENTRIES: u32 = 32768;

fn errno_of(e: &UringError) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error().unwrap_or(libc::EINVAL))
}

fn uring_error(call: &'static str, e: &UringError) -> AioError {
    AioError::Syscall {
        engine: ENGINE,
        call,
        source: errno_of(e),
    }
}

/// Whether the ring can carry `opcode`; discard and write-zeroes need `IORING_OP_FALLOCATE`.
fn carries(opcode: AioOpcode, fallocate: bool) -> bool {
    match opcode {
        AioOpcode::Read | AioOpcode::Write | AioOpcode::Flush => true,
        AioOpcode::Discard | AioOpcode::WriteZeroes => fallocate,
    }
}

/// Setup flags, best first; a kernel that does not know one answers `EINVAL` and the next is
/// tried (deferred task work needs Linux 6.1, `SUBMIT_ALL` 5.18). Every set starts the ring
/// disabled, so that it takes its restrictions (Linux 5.10).
const SETUP_FLAGS: [u32; 3] = [
    IORING_SETUP_SUBMIT_ALL
        | IORING_SETUP_R_DISABLED
        | IORING_SETUP_SINGLE_ISSUER
        | IORING_SETUP_DEFER_TASKRUN
        | IORING_SETUP_TASKRUN_FLAG,
    IORING_SETUP_SUBMIT_ALL | IORING_SETUP_R_DISABLED,
    IORING_SETUP_R_DISABLED,
];

/// The SQE opcodes an engine's ring accepts: what [`UringContext::sqe_for`] builds for a
/// request (its `NOP` for a key without one, which does not happen, is refused like any other
/// opcode). `FALLOCATE` is allowed only where the kernel supports it.
pub const SQE_OPS: [IoringOp; 6] = [
    IoringOp::Readv,
    IoringOp::Writev,
    IoringOp::ReadFixed,
    IoringOp::WriteFixed,
    IoringOp::Fsync,
    IoringOp::Fallocate,
];

/// The restrictions of an engine's ring: the opcodes of [`SQE_OPS`] the kernel supports
/// (`fallocate`), no SQE flag, no register opcode once enabled.
fn restrictions(fallocate: bool) -> Vec<io_uring_restriction> {
    SQE_OPS
        .iter()
        .filter(|&&op| op != IoringOp::Fallocate || fallocate)
        .map(|&op| io_uring_restriction::sqe_op(op))
        .collect()
}

/// Creates a ring of `entries` with the first of [`SETUP_FLAGS`] the kernel accepts.
fn new_ring(entries: u32) -> Result<IoUring, UringError> {
    let (&last, better) = SETUP_FLAGS.split_last().unwrap_or((&0, &[]));
    for &flags in better {
        match IoUring::new(entries, flags) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => continue,
            result => return result,
        }
    }
    IoUring::new(entries, last)
}

/// Checks that the kernel lets us create a ring that can read, write and flush.
pub(crate) fn probe() -> io::Result<()> {
    let ring = new_ring(4).map_err(|e| errno_of(&e))?;
    let ops = ring.probe().map_err(|e| errno_of(&e))?;
    for op in [IoringOp::Readv, IoringOp::Writev, IoringOp::Fsync] {
        if !ops.supports(op as u8) {
            return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
        }
    }
    Ok(())
}

/// An io_uring block engine bound to one borrowed file descriptor.
pub struct UringContext {
    fd: RawFd,
    ring: IoUring,
    depth: usize,
    fallocate: bool,
    queue: Queue,
    in_ring: usize,
    fixed: Vec<Iovec>,
    /// The thread that enabled the ring (`None`: still disabled); a single-issuer ring is
    /// bound to it.
    owner: Option<ThreadId>,
}

impl std::fmt::Debug for UringContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringContext")
            .field("fd", &self.fd)
            .field("ring_fd", &self.ring.as_raw_fd())
            .field("depth", &self.depth)
            .field("in_ring", &self.in_ring)
            .field("pending", &self.queue.pending.len())
            .field("owner", &self.owner)
            .finish()
    }
}

impl UringContext {
    /// Sets up a ring for `depth` requests in flight on `fd`, which must stay open for the
    /// engine's lifetime, and registers the engine's eventfd with it.
    pub fn new(fd: RawFd, depth: u32) -> Result<Self, AioError> {
        let depth = depth.clamp(1, MAX_ENTRIES);
        let queue = Queue::new(ENGINE, depth as usize)?;
        let ring = new_ring(depth).map_err(|e| uring_error("io_uring_setup", &e))?;
        ring.register_eventfd(queue.eventfd())
            .map_err(|e| uring_error("io_uring_register(eventfd)", &e))?;
        let fallocate = ring.probe_opcode(IoringOp::Fallocate);
        ring.register_restrictions(&restrictions(fallocate))
            .map_err(|e| uring_error("io_uring_register(restrictions)", &e))?;
        Ok(UringContext {
            fd,
            ring,
            depth: depth as usize,
            fallocate,
            queue,
            in_ring: 0,
            fixed: Vec::new(),
            owner: None,
        })
    }

    fn single_issuer(&self) -> bool {
        self.ring.params().flags & IORING_SETUP_SINGLE_ISSUER != 0
    }

    /// Enables the ring before a system call on it, binding a single-issuer ring to the
    /// calling thread; refuses a single-issuer ring bound to another thread.
    fn bind_to_current_thread(&mut self) -> Result<(), AioError> {
        // An enabled ring any thread may use: no need to ask which thread this is.
        if self.owner.is_some() && !self.single_issuer() {
            return Ok(());
        }
        let me = thread::current().id();
        match self.owner {
            Some(owner) if owner == me || !self.single_issuer() => Ok(()),
            Some(_) => Err(AioError::WrongThread { engine: ENGINE }),
            None => {
                self.ring
                    .enable()
                    .map_err(|e| uring_error("io_uring_register(ENABLE_RINGS)", &e))?;
                self.owner = Some(me);
                Ok(())
            }
        }
    }

    /// The registered buffer holding all of `iov`, if any.
    fn fixed_index(&self, iov: &Iovec) -> Option<u16> {
        if iov.len > u64::from(u32::MAX) {
            return None;
        }
        let end = iov.base.checked_add(iov.len)?;
        let index = self
            .fixed
            .iter()
            .position(|r| iov.base >= r.base && end <= r.base + r.len)?;
        u16::try_from(index).ok()
    }

    /// The SQE for the next round of the request under `key`.
    fn sqe_for(&self, key: usize) -> io_uring_sqe {
        let ud = key as u64;
        let Some(slot) = self.queue.slab.get(key) else {
            return io_uring_sqe::nop(ud);
        };
        let off = slot.offset();
        let iovecs = slot.iovecs();
        let nr = u32::try_from(iovecs.len()).unwrap_or(u32::MAX);
        let fixed = match iovecs {
            [one] => self.fixed_index(one).map(|i| (one, i)),
            _ => None,
        };
        match (slot.req.opcode, fixed) {
            (AioOpcode::Read, Some((iov, i))) => {
                io_uring_sqe::read_fixed(self.fd, iov.base as *mut u8, iov.len as u32, off, i, ud)
            }
            (AioOpcode::Write, Some((iov, i))) => io_uring_sqe::write_fixed(
                self.fd,
                iov.base as *const u8,
                iov.len as u32,
                off,
                i,
                ud,
            ),
            (AioOpcode::Read, None) => {
                io_uring_sqe::readv(self.fd, iovecs.as_ptr().cast(), nr, off, ud)
            }
            (AioOpcode::Write, None) => {
                io_uring_sqe::writev(self.fd, iovecs.as_ptr().cast(), nr, off, ud)
            }
            (AioOpcode::Flush, _) => io_uring_sqe::fsync(self.fd, IORING_FSYNC_DATASYNC, ud),
            (AioOpcode::Discard | AioOpcode::WriteZeroes, _) => io_uring_sqe::fallocate(
                self.fd,
                slot.fallocate_mode(),
                slot.req.offset,
                slot.req.len,
                ud,
            ),
        }
    }

    /// SQEs pushed but not yet consumed by the kernel.
    fn unsubmitted(&self) -> u32 {
        self.ring.sq_entries() - self.ring.sq_space_left()
    }

    /// Pushes as much of `pending` as the ring has room for, then enters the kernel once.
    fn flush_pending(&mut self) -> Result<(), AioError> {
        if self.queue.pending.is_empty() && self.unsubmitted() == 0 {
            return Ok(());
        }
        self.bind_to_current_thread()?;
        while self.in_ring < self.depth {
            let Some(&key) = self.queue.pending.front() else {
                break;
            };
            let sqe = self.sqe_for(key);
            // SAFETY: the SQE names the request's iovec array (inside its slab entry, which
            // stays put until the completion is reaped) or a buffer of it; the caller of
            // `submit` keeps that memory valid until then.
            if unsafe { self.ring.push(&sqe) }.is_err() {
                break;
            }
            self.queue.pending.pop_front();
            self.in_ring += 1;
        }
        if self.unsubmitted() == 0 {
            return Ok(());
        }
        match self.ring.submit() {
            Ok(_) => Ok(()),
            Err(e) => match e.raw_os_error() {
                // The SQEs stay in the ring: submitted again after the next completions.
                Some(libc::EAGAIN | libc::EBUSY) if self.in_ring > self.unsubmitted() as usize => {
                    Ok(())
                }
                _ => Err(uring_error("io_uring_enter", &e)),
            },
        }
    }

    /// Posts deferred completions, then handles every CQE in the ring; returns how many.
    fn collect(&mut self, out: &mut Vec<AioCompletion>) -> usize {
        // Deferred task work is run even with no request in the ring: the kernel also defers
        // the release of a request an io-wq worker still held, and while that item waits
        // in the list, the next completion added behind it does not signal the eventfd.
        let enabled = self.owner.is_some();
        if (self.ring.defers_completions() && enabled) || self.ring.cq_overflow_pending() {
            self.post_completions();
        }
        let mut n = 0;
        while let Some(cqe) = self.ring.pop_ready() {
            self.in_ring = self.in_ring.saturating_sub(1);
            self.queue
                .finish(cqe.user_data as usize, i64::from(cqe.res), self.fd, out);
            n += 1;
        }
        n
    }

    /// Enters the kernel until no deferred task work is left. The kernel runs a bounded
    /// number of items per call and announces new work on the eventfd only when its list was
    /// empty, so work left behind (`IORING_SQ_TASKRUN` still set) must be run now or it
    /// would wait for a wake-up that never comes.
    fn post_completions(&mut self) {
        for _ in 0..MAX_POST_ROUNDS {
            if let Err(e) = self.ring.flush_completions() {
                log::warn!("aio=io_uring: posting completions: {e}");
                return;
            }
            if !self.ring.taskrun_pending() {
                return;
            }
        }
    }
}

impl AioContext for UringContext {
    fn engine(&self) -> AioEngine {
        ENGINE
    }

    fn supports(&self, opcode: AioOpcode) -> bool {
        carries(opcode, self.fallocate)
    }

    unsafe fn submit(&mut self, batch: &mut Vec<AioRequest>) -> Result<(), AioError> {
        // Refused before the batch is taken: a call from the wrong thread changes nothing.
        self.bind_to_current_thread()?;
        let fallocate = self.fallocate;
        self.queue.accept(batch, |op| carries(op, fallocate))?;
        self.flush_pending()
    }

    fn eventfd(&self) -> RawFd {
        self.queue.eventfd()
    }

    fn reap(&mut self, out: &mut Vec<AioCompletion>) -> Result<usize, AioError> {
        if self.owner.is_some() {
            self.bind_to_current_thread()?;
        }
        self.queue.clear_eventfd()?;
        let before = out.len();
        self.queue.take_ready(out);
        self.collect(out);
        // The completions in `out` must reach the caller even if resubmission fails; the
        // queued requests stay queued and are offered again by the next call.
        if let Err(e) = self.flush_pending() {
            log::error!("{e}");
        }
        Ok(out.len() - before)
    }

    fn in_flight(&self) -> usize {
        self.queue.in_flight()
    }

    fn poll_ready(&self) -> bool {
        // Completions deferred as task work announce themselves with IORING_SQ_TASKRUN (the
        // ring is set up with IORING_SETUP_TASKRUN_FLAG); `reap` then posts them.
        self.queue.has_ready()
            || self.ring.cq_ready() > 0
            || self.ring.cq_overflow_pending()
            || (self.owner.is_some() && self.ring.taskrun_pending())
    }

    fn iovec_buffer(&mut self) -> Vec<Iovec> {
        self.queue.iovec_buffer()
    }

    fn drain(&mut self, out: &mut Vec<AioCompletion>) -> Result<(), AioError> {
        if self.in_ring > 0 || self.owner.is_some() {
            self.bind_to_current_thread()?;
        }
        loop {
            self.flush_pending()?;
            self.queue.take_ready(out);
            if self.collect(out) > 0 {
                continue;
            }
            if self.in_ring == 0 && self.queue.pending.is_empty() {
                return Ok(());
            }
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                // Completions are waiting to be reaped (EBUSY) or the kernel is short of
                // memory for a moment (EAGAIN): collect and try again.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EBUSY)) => {}
                Err(e) => return Err(uring_error("io_uring_enter", &e)),
            }
        }
    }

    fn register_memory(&mut self, regions: &[Iovec]) -> Result<bool, AioError> {
        let mut pieces = Vec::new();
        for region in regions {
            let mut at = 0;
            while at < region.len {
                let len = (region.len - at).min(MAX_FIXED_BUFFER);
                pieces.push(Iovec {
                    base: region.base + at,
                    len,
                });
                at += len;
            }
        }
        if pieces.is_empty() || pieces.len() > usize::from(u16::MAX) {
            return Ok(false);
        }
        if pieces == self.fixed {
            return Ok(true);
        }
        if self.owner.is_some() {
            // An enabled single-issuer ring takes registrations from its thread only.
            self.bind_to_current_thread()?;
        }
        register_buffers(&self.ring, &pieces)?;
        self.fixed = pieces;
        Ok(true)
    }
}

fn register_buffers(ring: &IoUring, pieces: &[Iovec]) -> Result<(), AioError> {
    let iovecs: Vec<libc::iovec> = pieces
        .iter()
        .map(|p| libc::iovec {
            iov_base: p.base as *mut libc::c_void,
            iov_len: p.len as usize,
        })
        .collect();
    // SAFETY: the kernel pins the pages of every region during the call and keeps them
    // until the ring is dropped, so fixed-buffer I/O never touches memory that was
    // returned to the system; a caller that unmaps a region only loses coherence.
    unsafe { ring.register_buffers(&iovecs) }
        .map_err(|e| uring_error("io_uring_register(buffers)", &e))
}

impl Drop for UringContext {
    fn drop(&mut self) {
        let mut lost = Vec::new();
        if let Err(e) = self.drain(&mut lost) {
            log::error!("aio=io_uring: draining before teardown failed: {e}");
            self.queue.abandon();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use super::*;
    use crate::io_uring::sys::{IORING_REGISTER_PROBE, IOSQE_IO_DRAIN};

    /// A file in the system's temporary directory, removed on drop.
    struct Scratch(std::path::PathBuf, std::fs::File);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let path =
                std::env::temp_dir().join(format!("util-uring-{name}-{}", std::process::id()));
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .unwrap();
            file.write_all_at(&[7u8; 4096], 0).unwrap();
            Scratch(path, file)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// Runs `sqe` on the engine's own (enabled) ring and returns its result.
    fn run_raw(ctx: &mut UringContext, sqe: io_uring_sqe) -> i32 {
        // SAFETY: the SQE points to no memory.
        unsafe { ctx.ring.push(&sqe) }.unwrap();
        ctx.ring.submit_and_wait(1).unwrap();
        if ctx.ring.defers_completions() {
            ctx.ring.flush_completions().unwrap();
        }
        ctx.ring.pop_ready().expect("a completion").res
    }

    #[test]
    fn an_engines_ring_takes_only_its_own_opcodes_and_no_registration_once_enabled() {
        let scratch = Scratch::new("restricted");
        let mut ctx = UringContext::new(scratch.1.as_raw_fd(), 8).unwrap();
        // A flush enables the ring, as the first request of any kind does.
        let mut batch = vec![AioRequest {
            opcode: AioOpcode::Flush,
            offset: 0,
            iovecs: Vec::new(),
            len: 0,
            tag: 1,
            keep_alive: None,
        }];
        // SAFETY: a flush points to no memory.
        unsafe { ctx.submit(&mut batch) }.unwrap();
        let mut done = Vec::new();
        ctx.drain(&mut done).unwrap();
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].result, 0, "the engine's own opcode runs");

        // Opcodes the engine never builds are refused by the kernel, whatever the caller.
        for sqe in [
            io_uring_sqe::nop(10),
            io_uring_sqe::fsync(ctx.fd, IORING_FSYNC_DATASYNC, 11).with_flags(IOSQE_IO_DRAIN),
        ] {
            assert_eq!(run_raw(&mut ctx, sqe), -libc::EACCES, "{sqe:?}");
        }
        // So is every registration, even a harmless probe.
        match ctx.ring.probe() {
            Err(UringError::Register { opcode, source }) => {
                assert_eq!(opcode, IORING_REGISTER_PROBE);
                assert_eq!(source.raw_os_error(), Some(libc::EACCES));
            }
            other => panic!("probe on an enabled engine ring: {:?}", other.map(|_| ())),
        }
        assert!(restrictions(true).len() == SQE_OPS.len());
        assert!(!restrictions(false)
            .iter()
            .any(|r| r.value() == IoringOp::Fallocate as u8));
    }
}
