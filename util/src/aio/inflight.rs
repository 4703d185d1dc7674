//! What every engine keeps for a request it owns, and how a kernel result moves it forward.
//!
//! Invariants:
//! - [`Queue`] is what the asynchronous engines own between `submit` and `reap`; the engines
//!   add only how requests reach their kernel interface.
//! - A request lives in a [`Slab`] entry from submission until its completion is handed out;
//!   the kernel only ever sees the entry's key (`user_data`/`aio_data`), never a pointer to it.
//! - The iovec array the kernel reads is a `Vec`'s heap buffer inside the entry. Moving the
//!   entry (the slab growing) does not move that buffer, and nothing pushes to it while the
//!   request is in the kernel, so the address stays valid until the completion.
//! - [`advance`] is the single place that turns a result into "complete with this value" or
//!   "submit the remainder again", so all engines finish short transfers the same way:
//!   - a short write is resubmitted for the bytes not yet written; a write that makes no
//!     progress completes with `-EIO`;
//!   - a short read is resubmitted for the remainder while the request's unread part starts
//!     before the end of the file; a read that reaches the end of the file has the rest of its
//!     buffers zero-filled and completes with the full length (a disk sized from its image
//!     file reads zeroes past a tail that is not a multiple of the sector size);
//!   - `-EINTR` and `-EAGAIN` results are resubmitted up to [`MAX_RETRIES`] times.
//! - [`Slot::fallocate_mode`] is the one place that picks the `fallocate` mode of a discard or
//!   write-zeroes. Write-zeroes tries `ZERO_RANGE`; on a filesystem without it (`-EOPNOTSUPP`,
//!   e.g. tmpfs) it punches a hole and then allocates the range again, which leaves the
//!   range zeroed and allocated, as `ZERO_RANGE` would.

use std::collections::VecDeque;
use std::os::unix::io::{AsRawFd, RawFd};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{AioCompletion, AioEngine, AioError, AioOpcode, AioRequest, Iovec};

/// How often one request is resubmitted after `-EINTR`/`-EAGAIN` before the error is reported.
pub(crate) const MAX_RETRIES: u32 = 16;

/// A request owned by an engine and how far it has got.
#[derive(Debug)]
pub(crate) struct Slot {
    /// The request as the caller submitted it.
    pub(crate) req: AioRequest,
    /// Bytes already transferred by earlier (short) rounds.
    pub(crate) done: u64,
    /// The part of `req.iovecs` still to transfer once `done > 0`.
    rest: Vec<Iovec>,
    /// Resubmissions after `-EINTR`/`-EAGAIN` so far.
    retries: u32,
    /// Which step of write-zeroes runs next.
    zeroing: ZeroStep,
}

/// The steps of a write-zeroes request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ZeroStep {
    /// `fallocate(ZERO_RANGE | KEEP_SIZE)`.
    ZeroRange,
    /// Fallback, first half: `fallocate(PUNCH_HOLE | KEEP_SIZE)`.
    PunchHole,
    /// Fallback, second half: `fallocate(KEEP_SIZE)` allocates the range again.
    Allocate,
}

impl Slot {
    /// Wraps a request that has not run yet.
    pub(crate) fn new(req: AioRequest) -> Self {
        Slot {
            req,
            done: 0,
            rest: Vec::new(),
            retries: 0,
            zeroing: ZeroStep::ZeroRange,
        }
    }

    /// The `fallocate` mode of the next round of a discard or write-zeroes.
    pub(crate) fn fallocate_mode(&self) -> i32 {
        let keep = libc::FALLOC_FL_KEEP_SIZE;
        match (self.req.opcode, self.zeroing) {
            (AioOpcode::WriteZeroes, ZeroStep::ZeroRange) => libc::FALLOC_FL_ZERO_RANGE | keep,
            (AioOpcode::WriteZeroes, ZeroStep::Allocate) => keep,
            _ => libc::FALLOC_FL_PUNCH_HOLE | keep,
        }
    }

    /// The iovecs of the next round: the whole request, or what a short transfer left.
    pub(crate) fn iovecs(&self) -> &[Iovec] {
        if self.done == 0 {
            &self.req.iovecs
        } else {
            &self.rest
        }
    }

    /// The file offset of the next round.
    pub(crate) fn offset(&self) -> u64 {
        self.req.offset + self.done
    }

    fn completion(&self, result: i64) -> AioCompletion {
        AioCompletion {
            tag: self.req.tag,
            result,
        }
    }

    /// Recomputes `rest` as `req.iovecs` without its first `done` bytes.
    fn skip_done(&mut self) {
        self.rest.clear();
        let mut skip = self.done;
        for iov in &self.req.iovecs {
            if skip >= iov.len {
                skip -= iov.len;
                continue;
            }
            self.rest.push(Iovec {
                base: iov.base + skip,
                len: iov.len - skip,
            });
            skip = 0;
        }
    }
}

/// Requests owned by an engine, keyed by a small integer that is reused after completion.
#[derive(Debug, Default)]
pub(crate) struct Slab {
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    live: usize,
}

impl Slab {
    /// Takes ownership of `req` and returns its key.
    pub(crate) fn insert(&mut self, req: AioRequest) -> usize {
        self.live += 1;
        let slot = Some(Slot::new(req));
        match self.free.pop() {
            Some(key) => {
                self.slots[key] = slot;
                key
            }
            None => {
                self.slots.push(slot);
                self.slots.len() - 1
            }
        }
    }

    /// The request under `key`, if there is one.
    pub(crate) fn get_mut(&mut self, key: usize) -> Option<&mut Slot> {
        self.slots.get_mut(key).and_then(Option::as_mut)
    }

    /// The request under `key`, if there is one.
    pub(crate) fn get(&self, key: usize) -> Option<&Slot> {
        self.slots.get(key).and_then(Option::as_ref)
    }

    /// Gives the request under `key` back and frees the key.
    pub(crate) fn remove(&mut self, key: usize) -> Option<Slot> {
        let slot = self.slots.get_mut(key)?.take()?;
        self.free.push(key);
        self.live -= 1;
        Some(slot)
    }

    /// How many requests the slab holds.
    pub(crate) fn len(&self) -> usize {
        self.live
    }

    /// Empties the slab, leaking what keeps each request's buffers mapped; returns how many
    /// requests it held.
    fn abandon(&mut self) -> usize {
        let n = self.live;
        for slot in self.slots.drain(..).flatten() {
            if let Some(keep_alive) = slot.req.keep_alive {
                keep_alive.leak();
            }
        }
        self.free.clear();
        self.live = 0;
        n
    }
}

/// What an asynchronous engine owns between `submit` and `reap`: the requests (slab), the keys
/// waiting for room in the kernel (FIFO, in submission order), the completions that never
/// reached the kernel, and the eventfd that announces completions of both kinds.
#[derive(Debug)]
pub(crate) struct Queue {
    engine: AioEngine,
    /// Every request not yet handed back.
    pub(crate) slab: Slab,
    /// Keys of requests waiting to be given to the kernel, oldest first.
    pub(crate) pending: VecDeque<usize>,
    /// Completions produced without the kernel, waiting for `reap`.
    ready: Vec<AioCompletion>,
    /// Iovec buffers of finished requests, cleared, for the caller's next requests.
    spares: Spares,
    efd: EventFd,
}

impl Queue {
    /// An empty queue for `engine` sized for `depth` requests in flight, with a fresh eventfd.
    pub(crate) fn new(engine: AioEngine, depth: usize) -> Result<Self, AioError> {
        let efd = EventFd::new(EFD_NONBLOCK).map_err(|source| AioError::Syscall {
            engine,
            call: "eventfd",
            source,
        })?;
        Ok(Queue {
            engine,
            slab: Slab::default(),
            pending: VecDeque::with_capacity(depth),
            ready: Vec::with_capacity(depth),
            spares: Spares::new(depth),
            efd,
        })
    }

    /// A cleared iovec buffer from a finished request, or a new one.
    pub(crate) fn iovec_buffer(&mut self) -> Vec<Iovec> {
        self.spares.take()
    }

    /// Gives up every request still owned after a drain failed: the kernel may still use their
    /// buffers, so what keeps those mapped is leaked, never released.
    pub(crate) fn abandon(&mut self) {
        self.pending.clear();
        let n = self.slab.abandon();
        if n > 0 {
            log::error!(
                "aio={}: {n} requests abandoned in the kernel; their buffers stay mapped",
                self.engine
            );
        }
    }

    /// Keeps the iovec buffer of a finished request for [`Queue::iovec_buffer`].
    fn recycle(&mut self, req: AioRequest) {
        self.spares.keep(req);
    }

    /// The eventfd completions are announced on.
    pub(crate) fn eventfd(&self) -> RawFd {
        self.efd.as_raw_fd()
    }

    fn signal(&self) -> Result<(), AioError> {
        self.efd.write(1).map_err(|source| AioError::Syscall {
            engine: self.engine,
            call: "eventfd write",
            source,
        })
    }

    /// Takes the whole `batch`: requests that need no system call complete at once (see
    /// [`immediate`]), the others join `pending` in order.
    pub(crate) fn accept(
        &mut self,
        batch: &mut Vec<AioRequest>,
        supports: impl Fn(AioOpcode) -> bool,
    ) -> Result<(), AioError> {
        let mut signal = false;
        for req in batch.drain(..) {
            if let Some(result) = immediate(&req, supports(req.opcode)) {
                self.ready.push(AioCompletion {
                    tag: req.tag,
                    result,
                });
                self.recycle(req);
                signal = true;
                continue;
            }
            let key = self.slab.insert(req);
            self.pending.push_back(key);
        }
        if signal {
            self.signal()?;
        }
        Ok(())
    }

    /// Completes the first pending request with `-errno` without the kernel.
    pub(crate) fn fail_front(&mut self, errno: i32) -> Result<(), AioError> {
        if let Some(slot) = self
            .pending
            .pop_front()
            .and_then(|key| self.slab.remove(key))
        {
            self.ready.push(slot.completion(-i64::from(errno)));
            self.recycle(slot.req);
            self.signal()?;
        }
        Ok(())
    }

    /// Moves the request under `key` forward by the kernel's result `res`: its completion goes
    /// to `out`, or it joins `pending` again for its next round.
    pub(crate) fn finish(&mut self, key: usize, res: i64, fd: RawFd, out: &mut Vec<AioCompletion>) {
        let Some(slot) = self.slab.get_mut(key) else {
            log::warn!(
                "aio={}: completion for unknown request key {key}",
                self.engine
            );
            return;
        };
        match advance(slot, res, fd) {
            Outcome::Complete(done) => {
                if let Some(slot) = self.slab.remove(key) {
                    self.recycle(slot.req);
                }
                out.push(done);
            }
            Outcome::Again => self.pending.push_back(key),
        }
    }

    /// Moves the completions produced without the kernel to `out`.
    pub(crate) fn take_ready(&mut self, out: &mut Vec<AioCompletion>) {
        out.append(&mut self.ready);
    }

    /// Whether completions made without the kernel wait for `reap`.
    pub(crate) fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Resets the eventfd before completions are collected.
    pub(crate) fn clear_eventfd(&self) -> Result<(), AioError> {
        clear_eventfd(&self.efd, self.engine)
    }

    /// Requests accepted and not yet handed back.
    pub(crate) fn in_flight(&self) -> usize {
        self.slab.len() + self.ready.len()
    }
}

/// The iovec buffers of finished requests, cleared, kept for the caller's next requests
/// ([`super::AioContext::iovec_buffer`]): in a steady stream of requests none allocates.
#[derive(Debug)]
pub(crate) struct Spares(Vec<Vec<Iovec>>);

impl Spares {
    /// Room for up to `depth` buffers (one per request the engine is sized for).
    pub(crate) fn new(depth: usize) -> Self {
        Spares(Vec::with_capacity(depth))
    }

    /// A cleared buffer from a finished request, or a new (unallocated) one.
    pub(crate) fn take(&mut self) -> Vec<Iovec> {
        self.0.pop().unwrap_or_default()
    }

    /// Keeps the iovec buffer of the finished `req` while there is room, and releases the rest
    /// of the request (its `KeepAlive`).
    pub(crate) fn keep(&mut self, req: AioRequest) {
        let mut iovecs = req.iovecs;
        if self.0.len() < self.0.capacity() && iovecs.capacity() > 0 {
            iovecs.clear();
            self.0.push(iovecs);
        }
    }
}

/// Reads (and so resets) a non-blocking eventfd; an eventfd that was not signalled is fine.
pub(crate) fn clear_eventfd(efd: &EventFd, engine: AioEngine) -> Result<(), AioError> {
    match efd.read() {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
        Err(source) => Err(AioError::Syscall {
            engine,
            call: "eventfd read",
            source,
        }),
    }
}

/// What to do with a request after one of its rounds returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The request is finished: hand this completion to the caller.
    Complete(AioCompletion),
    /// Submit the request again (from [`Slot::offset`] with [`Slot::iovecs`]).
    Again,
}

/// A completion that needs no system call: unsupported opcodes (`-EOPNOTSUPP`), ranges the
/// kernel's signed offsets cannot express (`-EINVAL`; io_uring would read an offset of -1 as
/// "the file position"), and requests of zero bytes other than flushes (0).
pub(crate) fn immediate(req: &AioRequest, supported: bool) -> Option<i64> {
    if !supported {
        return Some(-i64::from(libc::EOPNOTSUPP));
    }
    let end = req.offset.checked_add(req.nbytes());
    if end.is_none_or(|end| end > i64::MAX as u64) {
        return Some(-i64::from(libc::EINVAL));
    }
    match req.opcode {
        AioOpcode::Flush => None,
        _ if req.nbytes() == 0 => Some(0),
        _ => None,
    }
}

/// Moves `slot` forward by the result `res` of its latest round on `fd`.
pub(crate) fn advance(slot: &mut Slot, res: i64, fd: RawFd) -> Outcome {
    if res == -i64::from(libc::EINTR) || res == -i64::from(libc::EAGAIN) {
        if slot.retries < MAX_RETRIES {
            slot.retries += 1;
            return Outcome::Again;
        }
        return Outcome::Complete(slot.completion(res));
    }
    if slot.req.opcode == AioOpcode::WriteZeroes {
        let next = match slot.zeroing {
            ZeroStep::ZeroRange if res == -i64::from(libc::EOPNOTSUPP) => Some(ZeroStep::PunchHole),
            ZeroStep::PunchHole if res >= 0 => Some(ZeroStep::Allocate),
            _ => None,
        };
        if let Some(step) = next {
            slot.zeroing = step;
            return Outcome::Again;
        }
    }
    if res < 0 {
        return Outcome::Complete(slot.completion(res));
    }
    let total = slot.req.nbytes();
    match slot.req.opcode {
        AioOpcode::Flush => Outcome::Complete(slot.completion(0)),
        AioOpcode::Discard | AioOpcode::WriteZeroes => {
            Outcome::Complete(slot.completion(total as i64))
        }
        AioOpcode::Read | AioOpcode::Write => {
            slot.done = (slot.done + res as u64).min(total);
            if slot.done == total {
                return Outcome::Complete(slot.completion(total as i64));
            }
            if slot.req.opcode == AioOpcode::Write {
                if res == 0 {
                    return Outcome::Complete(slot.completion(-i64::from(libc::EIO)));
                }
            } else if res == 0 || at_or_past_eof(fd, slot.offset()) {
                slot.skip_done();
                zero_fill(&slot.rest);
                return Outcome::Complete(slot.completion(total as i64));
            }
            slot.skip_done();
            Outcome::Again
        }
    }
}

/// Whether `offset` is at or beyond the end of `fd`; `false` when the size cannot be learned,
/// so that the read is retried and the kernel has the last word.
fn at_or_past_eof(fd: RawFd, offset: u64) -> bool {
    // SAFETY: lseek on a borrowed fd touches no memory. The engines only use positional I/O,
    // so moving the file offset changes nothing they rely on. SEEK_END also sizes block devices.
    let end = unsafe { libc::lseek(fd, 0, libc::SEEK_END) };
    end >= 0 && offset >= end as u64
}

/// Writes zeroes over every byte the iovecs name.
fn zero_fill(iovecs: &[Iovec]) {
    for iov in iovecs {
        // SAFETY: these iovecs are a suffix of a read request's buffers. `AioContext::submit`
        // requires its caller to keep them valid and writable until the completion is
        // returned, which has not happened yet.
        unsafe { std::ptr::write_bytes(iov.base as *mut u8, 0, iov.len as usize) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aio::KeepAlive;

    fn read_req(iovecs: Vec<Iovec>) -> AioRequest {
        AioRequest {
            opcode: AioOpcode::Read,
            offset: 4096,
            iovecs,
            len: 0,
            tag: 7,
            keep_alive: None,
        }
    }

    #[test]
    fn abandoned_requests_leak_what_keeps_their_buffers_mapped() {
        let mut queue = Queue::new(AioEngine::IoUring, 4).unwrap();
        let owner = std::sync::Arc::new([0u8; 64]);
        let iov = Iovec {
            base: owner.as_ptr() as u64,
            len: 64,
        };
        let mut held = read_req(vec![iov]);
        held.keep_alive = Some(KeepAlive::new(owner.clone()));
        let mut done = held.clone();
        done.tag = 8;
        queue.accept(&mut vec![held, done], |_| true).unwrap();
        assert_eq!(std::sync::Arc::strong_count(&owner), 3);
        // One request completes and releases its reference; the other is abandoned.
        let key = queue.pending.pop_back().unwrap();
        queue.finish(key, 64, -1, &mut Vec::new());
        assert_eq!(std::sync::Arc::strong_count(&owner), 2);
        queue.abandon();
        assert_eq!(queue.in_flight(), 0);
        assert_eq!(
            std::sync::Arc::strong_count(&owner),
            2,
            "the abandoned request's reference is never released"
        );
    }

    #[test]
    fn finished_requests_give_their_iovec_buffers_back() {
        let mut queue = Queue::new(AioEngine::Native, 4).unwrap();
        let iov = Iovec {
            base: 0x1000,
            len: 512,
        };
        queue
            .accept(&mut vec![read_req(vec![iov; 3])], |_| true)
            .unwrap();
        let key = queue.pending.pop_front().unwrap();
        let mut out = Vec::new();
        queue.finish(key, 3 * 512, -1, &mut out);
        assert_eq!(out.len(), 1);
        let buffer = queue.iovec_buffer();
        assert!(buffer.is_empty());
        assert!(
            buffer.capacity() >= 3,
            "the request's own buffer comes back"
        );
        assert_eq!(
            queue.iovec_buffer().capacity(),
            0,
            "one buffer per finished request"
        );
    }

    #[test]
    fn slab_reuses_keys_and_counts() {
        let mut slab = Slab::default();
        let a = slab.insert(read_req(vec![]));
        let b = slab.insert(read_req(vec![]));
        assert_ne!(a, b);
        assert_eq!(slab.len(), 2);
        assert!(slab.remove(a).is_some());
        assert!(slab.remove(a).is_none());
        assert_eq!(slab.len(), 1);
        assert_eq!(slab.insert(read_req(vec![])), a);
        assert!(slab.get(b).is_some());
        assert!(slab.get_mut(99).is_none());
    }

    #[test]
    fn skip_done_trims_across_iovecs() {
        let mut slot = Slot::new(read_req(vec![
            Iovec {
                base: 1000,
                len: 100,
            },
            Iovec {
                base: 5000,
                len: 50,
            },
            Iovec {
                base: 9000,
                len: 10,
            },
        ]));
        slot.done = 120;
        slot.skip_done();
        assert_eq!(
            slot.iovecs(),
            &[
                Iovec {
                    base: 5020,
                    len: 30
                },
                Iovec {
                    base: 9000,
                    len: 10
                }
            ]
        );
        assert_eq!(slot.offset(), 4096 + 120);
    }

    #[test]
    fn short_write_is_resubmitted_and_stall_is_eio() {
        let buf = [0u8; 64];
        let mut req = read_req(vec![Iovec {
            base: buf.as_ptr() as u64,
            len: 64,
        }]);
        req.opcode = AioOpcode::Write;
        let mut slot = Slot::new(req);
        assert_eq!(advance(&mut slot, 16, -1), Outcome::Again);
        assert_eq!(slot.iovecs()[0].len, 48);
        let eio = AioCompletion {
            tag: 7,
            result: -i64::from(libc::EIO),
        };
        assert_eq!(advance(&mut slot, 0, -1), Outcome::Complete(eio));
    }

    #[test]
    fn eintr_is_retried_a_bounded_number_of_times() {
        let mut slot = Slot::new(read_req(vec![]));
        slot.req.opcode = AioOpcode::Flush;
        let eintr = -i64::from(libc::EINTR);
        for _ in 0..MAX_RETRIES {
            assert_eq!(advance(&mut slot, eintr, -1), Outcome::Again);
        }
        let done = AioCompletion {
            tag: 7,
            result: eintr,
        };
        assert_eq!(advance(&mut slot, eintr, -1), Outcome::Complete(done));
    }

    #[test]
    fn read_hitting_eof_zero_fills_the_rest() {
        let mut buf = [0xaau8; 32];
        let mut slot = Slot::new(read_req(vec![Iovec {
            base: buf.as_mut_ptr() as u64,
            len: 32,
        }]));
        let full = AioCompletion { tag: 7, result: 32 };
        assert_eq!(advance(&mut slot, 8, -1), Outcome::Again);
        assert_eq!(advance(&mut slot, 0, -1), Outcome::Complete(full));
        assert!(buf[..8].iter().all(|&b| b == 0xaa));
        assert!(buf[8..].iter().all(|&b| b == 0));
    }

    #[test]
    fn write_zeroes_falls_back_to_punch_and_allocate() {
        let zeroes = || {
            let req = read_req(vec![]);
            Slot::new(AioRequest {
                opcode: AioOpcode::WriteZeroes,
                len: 4096,
                ..req
            })
        };
        let keep = libc::FALLOC_FL_KEEP_SIZE;
        let eopnotsupp = -i64::from(libc::EOPNOTSUPP);
        let mut slot = zeroes();
        assert_eq!(slot.fallocate_mode(), libc::FALLOC_FL_ZERO_RANGE | keep);
        assert_eq!(advance(&mut slot, eopnotsupp, -1), Outcome::Again);
        assert_eq!(slot.fallocate_mode(), libc::FALLOC_FL_PUNCH_HOLE | keep);
        assert_eq!(advance(&mut slot, 0, -1), Outcome::Again);
        assert_eq!(slot.fallocate_mode(), keep);
        let done = AioCompletion {
            tag: 7,
            result: 4096,
        };
        assert_eq!(advance(&mut slot, 0, -1), Outcome::Complete(done));
        // A filesystem that cannot punch holes either gets the error.
        let mut slot = zeroes();
        assert_eq!(advance(&mut slot, eopnotsupp, -1), Outcome::Again);
        let failed = AioCompletion {
            tag: 7,
            result: eopnotsupp,
        };
        assert_eq!(
            advance(&mut slot, eopnotsupp, -1),
            Outcome::Complete(failed)
        );
    }

    #[test]
    fn immediate_answers() {
        let req = read_req(vec![]);
        assert_eq!(immediate(&req, true), Some(0));
        assert_eq!(immediate(&req, false), Some(-i64::from(libc::EOPNOTSUPP)));
        let mut req = read_req(vec![Iovec { base: 1, len: 1 }]);
        assert_eq!(immediate(&req, true), None);
        req.offset = i64::MAX as u64;
        assert_eq!(immediate(&req, true), Some(-i64::from(libc::EINVAL)));
        req.offset = u64::MAX;
        assert_eq!(immediate(&req, true), Some(-i64::from(libc::EINVAL)));
        let flush = AioRequest {
            opcode: AioOpcode::Flush,
            ..read_req(vec![])
        };
        assert_eq!(immediate(&flush, true), None);
        let discard = AioRequest {
            opcode: AioOpcode::Discard,
            ..read_req(vec![])
        };
        assert_eq!(immediate(&discard, true), Some(0));
    }
}
