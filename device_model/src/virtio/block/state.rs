//! The running half of one queue of a block device, owned by that queue's event-loop thread:
//! the queue, its in-flight table and its backend (the queue's own engine on the device's
//! shared file), driven by two event-loop handlers (`<id>-queueN` for the guest's
//! notifications, `<id>-aio` for queue 0's engine completions, `<id>-aioN` for queue N's) and
//! by the messages of the transport and the owner (activate, reset, replace, shut down). A
//! device with one queue has one `BlockState`; with `num-queues=N`, N of them, each on the
//! event loop its queue was given.
//!
//! ```text
//!  notify fd ─► pop every offered chain ─► parse ─┬─ bad / GET_ID / nothing to do: used now
//!                                                 └─ push AioRequest (tag = head) to batch
//!              enable notification (avail_event), re-check, then ONE engine submit
//!  engine fd ─► reap ─► status byte + used entry per completion ─► re-kick the queue
//!  both     ─► publish used.idx once ─► interrupt if used_event (or the ring flag) asks
//! ```
//!
//! Invariants:
//! - Only the thread of `event_loop` locks the state (handlers and messages run there), so
//!   the lock is never contended and nobody waits for it. No queue's thread ever locks another
//!   queue's state: queues reach each other only by posting messages.
//! - `inflight[head]` is `Some` exactly while the chain `head` is owned by the engine.
//! - Every request handed to the engine carries a [`KeepAlive`] of `Active::mem`, so guest
//!   RAM stays mapped while the kernel may use it, even if a drain fails.
//! - The engine handler is registered exactly while the device is active and has a backend.
//! - After [`BlockState::shutdown`] the state has no backend and no handler and ignores every
//!   later message.
//! - Device-wide state lives in [`Shared`] and is reached by every queue's thread under a
//!   short lock held for arithmetic only (never across a system call or a wait): the I/O
//!   limits' buckets (only when limits are set) and the writes tracked for read-modify-write
//!   (only on storage with blocks larger than a sector). A queue that untracks a write another
//!   queue waits for posts that queue a message; it never touches its state.
//! - The file is flushed (`fdatasync`) and closed by the queue that lets go of it last
//!   ([`Arc::into_inner`]): after every queue's engine has been drained, so the flush covers
//!   every completed write of every queue.
//! - Each handler has a poll source beside it (`poll.rs`) for a loop that polls: while the loop
//!   polls, the queue asks the guest not to notify, and `process_queue` leaves `avail_event`
//!   behind; when polling ends the queue asks for notifications again and the loop looks at
//!   the avail index once more before it sleeps.

use std::collections::VecDeque;
use std::ops::Range;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use address_space::GuestMemory;
use util::aio::{
    AioCompletion, AioOpcode, AioRequest, DetectZeroes, ErrorAction, Iovec, KeepAlive,
};
use util::event_loop::{EventLoop, HandlerAction};
use util::logger::{RateLimit, GUEST_LOG_INTERVAL};
use util::timer::nonblocking_timer;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::backend::BlockBackend;
use super::bounce::{blocks, Bounce, Step};
use super::poll::{EnginePoll, QueuePoll};
use super::request::{
    status_address, DiskLimits, Request, RequestKind, Segment, SECTOR_SIZE, SERIAL_LEN,
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK,
};
use super::stats::Kind;
use super::{IoOperation, Shared, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_WRITE_ZEROES};
use crate::virtio::queue::{Descriptor, QueueError, SplitQueue};
use crate::virtio::{device_handler, feature, Interrupt, VirtioError};

/// The most sectors one discard or write-zeroes may cover.
pub const MAX_RANGE_SECTORS: u32 = 1 << 21;

/// Whether a failed request may be kept for a retry (`Stop`), or must be answered now because
/// the backend is going away (hot-replace, shutdown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Policy {
    Apply,
    AnswerAll,
}

/// A chain the engine owns (or that an error policy holds for a retry).
struct InFlight {
    opcode: AioOpcode,
    /// The guest's kind of request, for the counters.
    kind: Kind,
    status: u64,
    /// Bytes the engine must move in the current step.
    expected: u64,
    /// The request's length (what the counters add).
    bytes: u64,
    used_len: u32,
    started: Instant,
    /// The aligned buffer of a request the storage cannot take as sent.
    bounce: Option<Box<Bounce>>,
}

/// A write (or discard, write-zeroes) in flight on storage with blocks larger than a sector,
/// where a partial-block write is read-modified-written.
struct TrackedWrite {
    queue: u16,
    head: u16,
    blocks: Range<u64>,
    read_modify_write: bool,
}

/// The writes in flight on every queue of a device whose blocks a read-modify-write must not
/// overlap (only on storage with blocks larger than a sector), and the queues with writes
/// waiting for one of them. Device-wide: a read-modify-write on one queue and a write to the
/// same block on another would otherwise lose one of them.
#[derive(Default)]
pub(super) struct WriteTracker {
    writes: Vec<TrackedWrite>,
    /// Bit `q` set: queue `q` has writes waiting for a tracked write to finish.
    waiting: u64,
}

impl WriteTracker {
    /// Whether a write over `range` must wait: a read-modify-write must not overlap any
    /// write in flight, nor any write overlap a read-modify-write in flight.
    fn conflicts(&self, range: &Range<u64>, read_modify_write: bool) -> bool {
        self.writes.iter().any(|w| {
            w.blocks.start < range.end
                && range.start < w.blocks.end
                && (read_modify_write || w.read_modify_write)
        })
    }

    /// Forgets the write `head` of `queue`; returns whether it was tracked.
    fn untrack(&mut self, queue: u16, head: u16) -> bool {
        match self
            .writes
            .iter()
            .position(|w| w.queue == queue && w.head == head)
        {
            Some(at) => {
                self.writes.swap_remove(at);
                true
            }
            None => false,
        }
    }

    /// The other queues with waiting writes (cleared: a woken queue sets its bit again if its
    /// writes still conflict).
    fn take_waiters(&mut self, queue: u16) -> u64 {
        let others = self.waiting & !(1 << queue);
        self.waiting &= 1 << queue;
        others
    }
}

/// The queue of an activated device.
pub(super) struct Active {
    /// This queue's index.
    index: u16,
    queue: SplitQueue,
    mem: Arc<GuestMemory>,
    keep_alive: KeepAlive,
    shared: Arc<Shared>,
    interrupt: Arc<Interrupt>,
    notify: Arc<EventFd>,
    features: u64,
    broken: bool,
    /// The device's limit on guest error lines (shared by all its activations).
    guest_log: Arc<RateLimit>,
    inflight: Vec<Option<InFlight>>,
    /// Heads of failed requests kept for a retry (`werror=stop`/`rerror=stop`).
    held: Vec<u16>,
    /// Writes of this queue in the device's [`WriteTracker`] (only on storage with blocks
    /// larger than a sector): while 0, finishing a request takes no lock.
    tracked: usize,
    /// By head: whether the request is one of those tracked writes (only those take the
    /// tracker's lock when they finish).
    tracked_heads: Vec<bool>,
    /// Heads of writes that wait for an overlapping write to finish, oldest first.
    waiting: VecDeque<u16>,
    /// Reads (0) and writes (1) the limits hold back: head and bytes, oldest first.
    held_back: [VecDeque<(u16, u64)>; 2],
    /// Which kind goes first when both wait (they alternate).
    next_kind: usize,
    /// Fires when the first held-back request may go (`<id>-throttle`, `<id>-throttleN`).
    throttle_timer: TimerFd,
    chain: Vec<Descriptor>,
    segments: Vec<Segment>,
    batch: Vec<AioRequest>,
}

/// The running state of one queue of a device; lives behind a mutex that only its event-loop
/// thread takes.
pub(super) struct BlockState {
    id: String,
    /// The queue's index.
    index: u16,
    shared: Arc<Shared>,
    event_loop: Arc<EventLoop>,
    backend: Option<BlockBackend>,
    backend_generation: u64,
    active: Option<Active>,
    completions: Vec<AioCompletion>,
    engine_registered: Option<std::os::unix::io::RawFd>,
    shut_down: bool,
    /// Limits the lines guest errors cause, across resets and activations.
    guest_log: Arc<RateLimit>,
    this: Weak<Mutex<BlockState>>,
}

pub(super) fn lock(state: &Mutex<BlockState>) -> MutexGuard<'_, BlockState> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Guest request errors of one device logged in full before logging thins out to one line
/// per [`util::logger::GUEST_LOG_INTERVAL`].
const GUEST_ERRORS_LOGGED: u32 = 16;

impl Active {
    /// Logs a refused request; a guest that floods bad requests cannot flood the log.
    fn guest_error(&mut self, id: &str, message: std::fmt::Arguments<'_>) {
        util::log_ratelimited!(
            limit: &self.guest_log,
            log::Level::Warn,
            "virtio-blk {id}: {message}"
        );
    }

    fn break_device(&mut self, id: &str, error: QueueError) {
        util::error_ratelimited!("virtio-blk {id}: queue broken, device needs reset: {error}");
        self.broken = true;
        self.interrupt.set_needs_reset();
    }

    /// Writes `status` and returns the chain to the guest.
    fn finish(
        &mut self,
        head: u16,
        status: u64,
        value: u8,
        used_len: u32,
    ) -> Result<(), QueueError> {
        // The status address was checked to be inside guest RAM when the chain was parsed.
        if let Err(e) = self.mem.write_obj(&value, status) {
            util::error_ratelimited!("virtio-blk: cannot write status at {status:#x}: {e}");
        }
        self.untrack(head);
        self.queue.add_used(&self.mem, head, used_len)
    }

    /// Forgets the write `head` (if tracked): writes waiting for it may start, those of other
    /// queues once their thread has the message this posts.
    fn untrack(&mut self, head: u16) {
        let Some(tracked) = self.tracked_heads.get_mut(usize::from(head)) else {
            return;
        };
        if !std::mem::take(tracked) {
            return;
        }
        let waiters = {
            let mut tracker = self.shared.writes();
            if !tracker.untrack(self.index, head) {
                return;
            }
            tracker.take_waiters(self.index)
        };
        self.tracked -= 1;
        self.shared.wake_writers(waiters);
    }

    /// Forgets every write of this queue (its requests were dropped: a reset) and wakes the
    /// queues that waited for them.
    fn untrack_all(&mut self) {
        if self.tracked == 0 && self.waiting.is_empty() {
            return;
        }
        let waiters = {
            let mut tracker = self.shared.writes();
            tracker.writes.retain(|w| w.queue != self.index);
            tracker.waiting &= !(1 << self.index);
            tracker.take_waiters(self.index)
        };
        self.tracked = 0;
        self.tracked_heads.fill(false);
        self.shared.wake_writers(waiters);
    }

    /// Starts the writes that waited for an overlapping one, in order (those that still
    /// conflict wait again).
    fn start_waiting(
        &mut self,
        id: &str,
        limits: &DiskLimits,
        mut backend: Option<&mut BlockBackend>,
    ) -> Result<(), QueueError> {
        if self.waiting.is_empty() {
            return Ok(());
        }
        // Those that still conflict set the bit again.
        self.shared.writes().waiting &= !(1 << self.index);
        for head in std::mem::take(&mut self.waiting) {
            self.start(id, head, limits, backend.as_deref_mut(), false)?;
        }
        Ok(())
    }

    /// Adds a request that succeeded to the device's counters.
    fn count_done(&self, req: &InFlight) {
        let ns = u64::try_from(req.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.shared.stats.done(req.kind, req.bytes, ns);
    }

    /// Answers every request an error policy held, and every write still waiting for an
    /// overlapping one, with an I/O error (the backend is going away).
    fn fail_held(&mut self) -> Result<(), QueueError> {
        for head in std::mem::take(&mut self.held) {
            if let Some(req) = self.inflight[usize::from(head)].take() {
                self.finish(head, req.status, VIRTIO_BLK_S_IOERR, 1)?;
            }
        }
        for head in std::mem::take(&mut self.waiting) {
            // A waiting write never reached the engine; its status address is re-read.
            self.queue.read_chain(&self.mem, head, &mut self.chain)?;
            match status_address(&self.chain, &self.mem) {
                Ok(status) => self.finish(head, status, VIRTIO_BLK_S_IOERR, 1)?,
                Err(_) => self.queue.add_used(&self.mem, head, 0)?,
            }
        }
        Ok(())
    }

    /// Starts the chain `head`: answers it now (returns `true`), or queues it for the engine,
    /// or keeps it for later (throttled, or waiting for an overlapping write). `fresh` is true
    /// for a chain just popped from the ring: only those are measured against the I/O limits
    /// (a restarted one was counted when it first went).
    fn start(
        &mut self,
        id: &str,
        head: u16,
        limits: &DiskLimits,
        backend: Option<&mut BlockBackend>,
        fresh: bool,
    ) -> Result<bool, QueueError> {
        if self.inflight[usize::from(head)].is_some() {
            return Err(QueueError::HeadInFlight { head });
        }
        self.queue.read_chain(&self.mem, head, &mut self.chain)?;
        let status = match status_address(&self.chain, &self.mem) {
            Ok(status) => status,
            Err(e) => {
                self.guest_error(id, format_args!("chain {head} returned unanswered: {e}"));
                self.queue.add_used(&self.mem, head, 0)?;
                return Ok(true);
            }
        };
        let request =
            match Request::parse(&self.chain, status, &self.mem, limits, &mut self.segments) {
                Ok(request) => request,
                Err(e) => {
                    self.guest_error(id, format_args!("request refused: {e}"));
                    self.finish(head, status, e.status(), 1)?;
                    return Ok(true);
                }
            };
        let (mut opcode, kind) = match request.kind {
            RequestKind::GetId => {
                let written = self.write_serial(backend.as_deref());
                self.finish(head, status, VIRTIO_BLK_S_OK, written + 1)?;
                return Ok(true);
            }
            RequestKind::Read => (AioOpcode::Read, Kind::Read),
            RequestKind::Write => (AioOpcode::Write, Kind::Write),
            RequestKind::Flush => (AioOpcode::Flush, Kind::Flush),
            RequestKind::Discard => (AioOpcode::Discard, Kind::Discard),
            RequestKind::WriteZeroes => (AioOpcode::WriteZeroes, Kind::Write),
        };
        let transfer = matches!(opcode, AioOpcode::Read | AioOpcode::Write);
        let Some(backend) = backend.filter(|_| !transfer || request.len > 0) else {
            // An empty slot (capacity 0) only lets flushes and empty transfers through.
            self.finish(head, status, VIRTIO_BLK_S_OK, 1)?;
            return Ok(true);
        };
        if opcode == AioOpcode::Discard && !backend.discards() {
            // `discard=ignore`: discarding is advisory, the request does nothing.
            self.finish(head, status, VIRTIO_BLK_S_OK, 1)?;
            return Ok(true);
        }
        if transfer && fresh && self.throttled(head, opcode == AioOpcode::Write, request.len) {
            return Ok(false);
        }
        let used_len = if opcode == AioOpcode::Read {
            u32::try_from(request.len + 1).unwrap_or(u32::MAX)
        } else {
            1
        };
        let zero_write = opcode == AioOpcode::Write
            && backend.config().detect_zeroes != DetectZeroes::Off
            && self.data_is_zero();
        if zero_write || (opcode == AioOpcode::WriteZeroes && request.unmap) {
            // Zeroes become write-zeroes (`detect-zeroes=`); those that may unmap punch a hole
            // when the drive allows it (`detect-zeroes=unmap`, `discard=unmap`).
            opcode = if backend.zeroes_may_unmap() {
                AioOpcode::Discard
            } else if backend.supports(AioOpcode::WriteZeroes) {
                AioOpcode::WriteZeroes
            } else {
                opcode
            };
        }
        let transfer = matches!(opcode, AioOpcode::Read | AioOpcode::Write);
        // A buffer a finished request gave back: no allocation per request.
        let mut iovecs = backend.engine().iovec_buffer();
        if transfer {
            for seg in &self.segments {
                match self.mem.host_address(seg.gpa, seg.len) {
                    Ok(host) => iovecs.push(Iovec {
                        base: host as u64,
                        len: seg.len,
                    }),
                    Err(e) => {
                        self.guest_error(id, format_args!("{e}"));
                        self.finish(head, status, VIRTIO_BLK_S_IOERR, 1)?;
                        return Ok(true);
                    }
                }
            }
        }
        let alignment = backend.alignment();
        let misaligned = transfer && !alignment.fits(request.offset, request.len, &iovecs);
        let (mut offset, mut len) = (request.offset, request.len);
        if alignment.offset > SECTOR_SIZE && opcode != AioOpcode::Read && opcode != AioOpcode::Flush
        {
            let partial = |offset: u64, len: u64| {
                !offset.is_multiple_of(alignment.offset) || !len.is_multiple_of(alignment.offset)
            };
            match opcode {
                // Discarding is advisory: only whole blocks are discarded.
                AioOpcode::Discard if partial(offset, len) => {
                    let start = offset.next_multiple_of(alignment.offset);
                    let end = (offset + len) / alignment.offset * alignment.offset;
                    if end <= start {
                        self.finish(head, status, VIRTIO_BLK_S_OK, 1)?;
                        return Ok(true);
                    }
                    (offset, len) = (start, end - start);
                }
                AioOpcode::WriteZeroes if partial(offset, len) => {
                    self.guest_error(
                        id,
                        format_args!("write-zeroes of partial {}-byte blocks", alignment.offset),
                    );
                    self.finish(head, status, VIRTIO_BLK_S_IOERR, 1)?;
                    return Ok(true);
                }
                _ => {}
            }
            let range = blocks(offset, len, alignment.offset);
            let read_modify_write =
                opcode == AioOpcode::Write && misaligned && partial(offset, len);
            {
                // One lock for the check and the record: a queue that finishes a write
                // this one waits for sees the bit and wakes this queue.
                let mut tracker = self.shared.writes();
                if tracker.conflicts(&range, read_modify_write) {
                    tracker.waiting |= 1 << self.index;
                    drop(tracker);
                    self.waiting.push_back(head);
                    return Ok(false);
                }
                tracker.writes.push(TrackedWrite {
                    queue: self.index,
                    head,
                    blocks: range,
                    read_modify_write,
                });
            }
            self.tracked += 1;
            self.tracked_heads[usize::from(head)] = true;
        }
        let mut in_flight = InFlight {
            opcode,
            kind,
            status,
            expected: 0,
            bytes: request.len,
            used_len,
            started: Instant::now(),
            bounce: None,
        };
        if misaligned {
            let bounce = Bounce::new(opcode, offset, len, &self.segments, alignment.offset);
            let Some(mut bounce) = bounce else {
                log::error!("virtio-blk {id}: no memory for a {len}-byte bounce buffer");
                self.finish(head, status, VIRTIO_BLK_S_IOERR, 1)?;
                return Ok(true);
            };
            if bounce.step == Step::Write && bounce.copy_from_guest(&self.mem).is_err() {
                self.finish(head, status, VIRTIO_BLK_S_IOERR, 1)?;
                return Ok(true);
            }
            self.batch.push(bounce.request(u64::from(head), iovecs));
            in_flight.expected = bounce.expected();
            in_flight.bounce = Some(Box::new(bounce));
            self.inflight[usize::from(head)] = Some(in_flight);
            return Ok(false);
        }
        let aio = AioRequest {
            opcode,
            offset,
            // Empty unless the request moves data; handed back with the completion either way.
            iovecs,
            len,
            tag: u64::from(head),
            keep_alive: Some(self.keep_alive.clone()),
        };
        in_flight.expected = aio.nbytes();
        self.inflight[usize::from(head)] = Some(in_flight);
        if opcode == AioOpcode::Flush && backend.flush_failed() {
            // Sticky: a flush after a failed one fails without asking the kernel.
            let failed = AioCompletion {
                tag: aio.tag,
                result: -i64::from(libc::EIO),
            };
            return self
                .complete(id, failed, Some(backend), Policy::Apply)
                .map(|()| true);
        }
        self.batch.push(aio);
        Ok(false)
    }

    /// Whether every byte the guest asks to write (the request's segments) is zero.
    fn data_is_zero(&self) -> bool {
        let mut chunk = [0u8; 4096];
        self.segments.iter().all(|seg| {
            let mut at = 0;
            while at < seg.len {
                let n = (seg.len - at).min(chunk.len() as u64) as usize;
                if self.mem.read(&mut chunk[..n], seg.gpa + at).is_err()
                    || chunk[..n].iter().any(|&b| b != 0)
                {
                    return false;
                }
                at += n as u64;
            }
            true
        })
    }

    /// With I/O limits: whether the read (or write) `head` of `bytes` must wait; if so it is
    /// queued, and the timer is set for when the first queued request may go. Requests of one
    /// kind go in order: once one waits, the next of its kind waits behind it.
    fn throttled(&mut self, head: u16, write: bool, bytes: u64) -> bool {
        if !self.shared.limited() {
            return false;
        }
        let queue = &mut self.held_back[usize::from(write)];
        {
            let mut throttle = self.shared.throttle();
            let Some(throttle) = throttle.as_mut() else {
                return false;
            };
            if queue.is_empty() && throttle.wait(Instant::now(), write).is_zero() {
                throttle.account(write, bytes);
                return false;
            }
        }
        let first_waiting = queue.is_empty();
        queue.push_back((head, bytes));
        // Behind others of its kind, it goes after them: the timer is set for the first.
        if first_waiting {
            self.arm_throttle_timer();
        }
        true
    }

    /// Starts the requests the I/O limits now allow, alternating between reads and writes
    /// while both wait, then sets the timer for the next one (if any is left).
    fn release_throttled(
        &mut self,
        id: &str,
        limits: &DiskLimits,
        mut backend: Option<&mut BlockBackend>,
    ) -> Result<(), QueueError> {
        loop {
            let next = {
                let mut throttle = self.shared.throttle();
                let Some(throttle) = throttle.as_mut() else {
                    // The limits were removed: everything held back goes.
                    drop(throttle);
                    self.release_all_throttled(id, limits, backend.as_deref_mut())?;
                    break;
                };
                let now = Instant::now();
                let first = self.next_kind;
                let ready = [first, 1 - first].into_iter().find(|&kind| {
                    !self.held_back[kind].is_empty() && throttle.wait(now, kind == 1).is_zero()
                });
                let Some(kind) = ready else {
                    break;
                };
                let Some((head, bytes)) = self.held_back[kind].pop_front() else {
                    break;
                };
                // The other queues of the device draw on the same buckets.
                throttle.account(kind == 1, bytes);
                self.next_kind = 1 - kind;
                head
            };
            self.start(id, next, limits, backend.as_deref_mut(), false)?;
        }
        self.arm_throttle_timer();
        Ok(())
    }

    /// Starts every request the I/O limits hold back, now (the backend is going away: they
    /// are answered by its drain).
    fn release_all_throttled(
        &mut self,
        id: &str,
        limits: &DiskLimits,
        mut backend: Option<&mut BlockBackend>,
    ) -> Result<(), QueueError> {
        for kind in 0..2 {
            for (head, _) in std::mem::take(&mut self.held_back[kind]) {
                self.start(id, head, limits, backend.as_deref_mut(), false)?;
            }
        }
        Ok(())
    }

    /// Sets the throttle timer for when the first held-back request may go, or disarms it.
    fn arm_throttle_timer(&mut self) {
        let now = Instant::now();
        let wait = if self.held_back.iter().all(VecDeque::is_empty) {
            None
        } else {
            match self.shared.throttle().as_mut() {
                Some(throttle) => (0..2)
                    .filter(|&kind| !self.held_back[kind].is_empty())
                    .map(|kind| throttle.retry_in(now, kind == 1))
                    .min(),
                None => None,
            }
        };
        // A zero duration would disarm the timer: wait at least a microsecond.
        let armed = match wait {
            Some(wait) => self
                .throttle_timer
                .reset(wait.max(Duration::from_micros(1)), None),
            None => self.throttle_timer.clear(),
        };
        if let Err(e) = armed {
            log::error!("virtio-blk: cannot set the throttle timer: {e}");
        }
    }

    /// Writes up to 20 bytes of serial (zero-padded) into the GET_ID buffer; returns the count.
    fn write_serial(&self, backend: Option<&BlockBackend>) -> u32 {
        let mut serial = [0u8; SERIAL_LEN];
        if let Some(text) = backend.and_then(|b| b.config().serial.as_deref()) {
            let n = text.len().min(SERIAL_LEN);
            serial[..n].copy_from_slice(&text.as_bytes()[..n]);
        }
        let mut written = 0usize;
        for seg in &self.segments {
            let n = (seg.len as usize).min(SERIAL_LEN - written);
            if n == 0 {
                break;
            }
            // Segments were checked to be inside guest RAM.
            if self
                .mem
                .write(&serial[written..written + n], seg.gpa)
                .is_err()
            {
                break;
            }
            written += n;
        }
        written as u32
    }

    /// Hands the batch to the engine; what it refuses fails (with the error policy).
    fn submit(
        &mut self,
        id: &str,
        mut backend: Option<&mut BlockBackend>,
    ) -> Result<(), QueueError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let result = match backend.as_deref_mut() {
            // SAFETY: every iovec was built by `host_address` on `self.mem` for a range inside
            // guest RAM, and every request carries a `KeepAlive` of `self.mem`: the engine
            // holds it until the completion is handed out, and leaks it if it cannot drain,
            // so the mapping outlives every use the kernel makes of it.
            Some(backend) => unsafe { backend.engine().submit(&mut self.batch) },
            None => Ok(()),
        };
        if let Err(e) = result {
            util::error_ratelimited!("virtio-blk {id}: submit failed: {e}");
        }
        let refused: Vec<u64> = self.batch.drain(..).map(|r| r.tag).collect();
        for tag in refused {
            let failed = AioCompletion {
                tag,
                result: -i64::from(libc::EIO),
            };
            self.complete(id, failed, backend.as_deref_mut(), Policy::Apply)?;
        }
        Ok(())
    }

    /// Writes the status and used entry of one engine completion. A failed request follows
    /// the backend's error policy (`werror=`/`rerror=`): answered with an error, answered as
    /// a success, or (with `policy` `Apply`) kept for a retry; and it is reported.
    fn complete(
        &mut self,
        id: &str,
        done: AioCompletion,
        backend: Option<&mut BlockBackend>,
        policy: Policy,
    ) -> Result<(), QueueError> {
        let Some(slot) = usize::try_from(done.tag)
            .ok()
            .and_then(|i| self.inflight.get_mut(i))
        else {
            util::error_ratelimited!("virtio-blk {id}: completion for unknown tag {}", done.tag);
            return Ok(());
        };
        let Some(mut req) = slot.take() else {
            util::error_ratelimited!("virtio-blk {id}: completion for idle tag {}", done.tag);
            return Ok(());
        };
        let head = done.tag as u16;
        if u64::try_from(done.result).is_ok_and(|n| n == req.expected) {
            let Some(mut bounce) = req.bounce.take() else {
                self.count_done(&req);
                return self.finish(head, req.status, VIRTIO_BLK_S_OK, req.used_len);
            };
            let copied = match bounce.step {
                Step::Read => bounce.copy_to_guest(&self.mem),
                Step::ReadToModify if policy == Policy::Apply => {
                    // The blocks are read: put the guest's data in, then write them back.
                    let copied = bounce.copy_from_guest(&self.mem);
                    if copied.is_ok() {
                        bounce.step = Step::Write;
                        self.batch.push(bounce.request(done.tag, Vec::new()));
                        req.bounce = Some(bounce);
                        self.inflight[usize::from(head)] = Some(req);
                        return Ok(());
                    }
                    copied
                }
                // The backend is going away: the write is not done, say so.
                Step::ReadToModify => {
                    return self.finish(head, req.status, VIRTIO_BLK_S_IOERR, 1);
                }
                Step::Write => Ok(()),
            };
            return match copied {
                Ok(()) => {
                    self.count_done(&req);
                    self.finish(head, req.status, VIRTIO_BLK_S_OK, req.used_len)
                }
                Err(e) => {
                    self.guest_error(
                        id,
                        format_args!("request {head}: bounce copy failed: {e:?}"),
                    );
                    self.finish(head, req.status, VIRTIO_BLK_S_IOERR, 1)
                }
            };
        }
        // A short transfer the engine could not finish counts as an I/O error.
        let errno = i32::try_from(-done.result)
            .ok()
            .filter(|&e| e > 0)
            .unwrap_or(libc::EIO);
        let (operation, configured) = match (req.opcode, backend.as_ref()) {
            (AioOpcode::Read, Some(b)) => (IoOperation::Read, b.config().rerror),
            (AioOpcode::Read, None) => (IoOperation::Read, ErrorAction::Report),
            (_, Some(b)) => (IoOperation::Write, b.config().werror),
            (_, None) => (IoOperation::Write, ErrorAction::Report),
        };
        if req.opcode == AioOpcode::Flush {
            if let Some(backend) = backend {
                if backend.set_flush_failed() {
                    log::error!(
                        "virtio-blk {id}: flush failed ({}); every later flush of this drive \
                         fails until it is reopened",
                        std::io::Error::from_raw_os_error(errno)
                    );
                }
            }
        }
        let action = match (configured.resolve(errno), policy) {
            (ErrorAction::Stop, Policy::AnswerAll) => ErrorAction::Report,
            (action, _) => action,
        };
        self.shared
            .report_error(self.index, operation, action, errno);
        match action {
            ErrorAction::Stop => {
                // The retry starts the request from its chain again.
                req.bounce = None;
                self.untrack(head);
                self.inflight[usize::from(head)] = Some(req);
                self.held.push(head);
                Ok(())
            }
            ErrorAction::Ignore => {
                self.shared.stats.failed(req.kind);
                self.finish(head, req.status, VIRTIO_BLK_S_OK, req.used_len)
            }
            _ => {
                self.shared.stats.failed(req.kind);
                // Guests can cause these too (e.g. unaligned buffers with O_DIRECT: EINVAL).
                self.guest_error(
                    id,
                    format_args!(
                        "request {head} failed: result {} of {} bytes",
                        done.result, req.expected
                    ),
                );
                self.finish(head, req.status, VIRTIO_BLK_S_IOERR, 1)
            }
        }
    }

    /// Publishes the used ring and interrupts the guest if it asked for it.
    fn signal(&mut self, id: &str) {
        match self.queue.publish_used(&self.mem) {
            Ok(true) => self.interrupt.signal_used_queue(),
            Ok(false) => {}
            Err(e) => self.break_device(id, e),
        }
    }

    fn in_flight(&self) -> usize {
        self.inflight.iter().filter(|r| r.is_some()).count()
    }
}

impl BlockState {
    /// Queue `index` of device `id` with an optional backend (this queue's engine), owned by
    /// the thread of `event_loop`.
    pub(super) fn new(
        id: String,
        index: u16,
        backend: Option<BlockBackend>,
        shared: Arc<Shared>,
        event_loop: Arc<EventLoop>,
    ) -> Arc<Mutex<BlockState>> {
        Arc::new_cyclic(|this| {
            Mutex::new(BlockState {
                id,
                index,
                shared,
                event_loop,
                backend,
                backend_generation: 0,
                active: None,
                completions: Vec::new(),
                engine_registered: None,
                shut_down: false,
                guest_log: Arc::new(RateLimit::new(GUEST_ERRORS_LOGGED, GUEST_LOG_INTERVAL)),
                this: this.clone(),
            })
        })
    }

    /// The device's id.
    pub(super) fn id(&self) -> &str {
        &self.id
    }

    /// The name of this queue's handler `what` in the event loop: `<id>-what` for queue 0 (as
    /// a one-queue device has always named it), `<id>-whatN` for queue N.
    fn handler_name(&self, what: &str) -> String {
        match self.index {
            0 => format!("{}-{what}", self.id),
            n => format!("{}-{what}{n}", self.id),
        }
    }

    fn limits(&self) -> DiskLimits {
        let features = self.active.as_ref().map_or(0, |a| a.features);
        let backend = self.backend.as_ref();
        let supports = |op| backend.is_some_and(|b| b.supports(op));
        DiskLimits {
            capacity_sectors: backend.map_or(0, |b| b.capacity_sectors()),
            readonly: backend.is_some_and(|b| b.config().readonly),
            discard: features & feature(VIRTIO_BLK_F_DISCARD) != 0 && supports(AioOpcode::Discard),
            write_zeroes: features & feature(VIRTIO_BLK_F_WRITE_ZEROES) != 0
                && supports(AioOpcode::WriteZeroes),
            max_range_sectors: MAX_RANGE_SECTORS,
        }
    }

    /// Starts serving `queue` after the driver set `DRIVER_OK`.
    pub(super) fn activate(
        &mut self,
        queue: SplitQueue,
        mem: Arc<GuestMemory>,
        interrupt: Arc<Interrupt>,
        notify: Arc<EventFd>,
        features: u64,
    ) -> Result<(), VirtioError> {
        if self.shut_down {
            return Ok(());
        }
        if self.active.is_some() {
            self.deactivate();
        }
        let size = usize::from(queue.size());
        self.event_loop
            .add(
                &format!("{}-queue{}", self.id, self.index),
                notify.as_raw_fd(),
                EventSet::IN,
                device_handler(
                    self.this.clone(),
                    Some(notify.clone()),
                    BlockState::on_notify,
                ),
            )
            .map_err(VirtioError::EventLoop)?;
        let queue_poll = QueuePoll {
            state: self.this.clone(),
        };
        if let Err(e) = self
            .event_loop
            .add_poll(notify.as_raw_fd(), Box::new(queue_poll))
        {
            if let Err(e) = self.event_loop.remove(notify.as_raw_fd()) {
                log::error!("virtio-blk {}: {e}", self.id);
            }
            return Err(VirtioError::EventLoop(e));
        }
        let throttle_timer = match self.add_throttle_timer() {
            Ok(timer) => timer,
            Err(e) => {
                if let Err(e) = self.event_loop.remove(notify.as_raw_fd()) {
                    log::error!("virtio-blk {}: {e}", self.id);
                }
                return Err(e);
            }
        };
        self.active = Some(Active {
            index: self.index,
            queue,
            keep_alive: KeepAlive::new(mem.clone()),
            shared: self.shared.clone(),
            mem,
            interrupt,
            notify,
            features,
            broken: false,
            guest_log: self.guest_log.clone(),
            inflight: std::iter::repeat_with(|| None).take(size).collect(),
            held: Vec::new(),
            tracked: 0,
            tracked_heads: vec![false; size],
            waiting: VecDeque::new(),
            held_back: [VecDeque::new(), VecDeque::new()],
            next_kind: 0,
            throttle_timer,
            chain: Vec::with_capacity(size),
            segments: Vec::with_capacity(size),
            batch: Vec::with_capacity(size),
        });
        if let Err(e) = self.attach_engine() {
            self.deactivate();
            return Err(e);
        }
        Ok(())
    }

    /// A timer for the I/O limits, registered as `<id>-throttle` (`<id>-throttleN` for queue N).
    fn add_throttle_timer(&self) -> Result<TimerFd, VirtioError> {
        // Non-blocking: the timer is read also when it has not fired (new limits).
        let timer = nonblocking_timer().map_err(VirtioError::Timer)?;
        self.event_loop
            .add(
                &self.handler_name("throttle"),
                timer.as_raw_fd(),
                EventSet::IN,
                device_handler(self.this.clone(), None, BlockState::on_throttle_timer),
            )
            .map_err(VirtioError::EventLoop)?;
        Ok(timer)
    }

    /// The throttle timer fired, or the limits changed: start what the limits allow now.
    pub(super) fn on_throttle_timer(&mut self) {
        if let Some(active) = self.active.as_mut() {
            // Reading clears the expiry count; a timer re-armed meanwhile reads 0.
            let _ = active.throttle_timer.wait();
        }
        self.resume(Active::release_throttled);
    }

    /// Starts the requests `release` lets go, then any new ones of the queue; a failure
    /// breaks the device. The driver is signalled if anything completed.
    fn resume(
        &mut self,
        release: fn(
            &mut Active,
            &str,
            &DiskLimits,
            Option<&mut BlockBackend>,
        ) -> Result<(), QueueError>,
    ) {
        let limits = self.limits();
        let id = self.id.as_str();
        let Some(active) = self.active.as_mut() else {
            return;
        };
        if active.broken {
            return;
        }
        let result = release(active, id, &limits, self.backend.as_mut())
            .and_then(|()| active.submit(id, self.backend.as_mut()));
        if let Err(e) = result {
            active.break_device(id, e);
        }
        active.signal(id);
    }

    /// The driver reset the device: stop serving the queue, forget what is in flight (the
    /// driver no longer expects it), then tell the transport this queue is done (the reset is
    /// done once every queue is).
    pub(super) fn reset(&mut self) {
        if let Some(active) = self.active.as_ref() {
            // What the old queue flagged no longer applies to the reset device.
            active.interrupt.clear_needs_reset();
        }
        self.deactivate();
        self.shared.queue_reset_done();
    }

    /// Stops serving the queue; in-flight requests are waited for and dropped.
    fn deactivate(&mut self) {
        let drained = self.drain_engine();
        if drained > 0 {
            util::info_ratelimited!(
                "virtio-blk {}: reset dropped {drained} finished requests",
                self.id
            );
        }
        self.detach_engine();
        if let Some(mut active) = self.active.take() {
            // Its writes were dropped: other queues may wait for them no longer.
            active.untrack_all();
            for fd in [active.notify.as_raw_fd(), active.throttle_timer.as_raw_fd()] {
                if let Err(e) = self.event_loop.remove(fd) {
                    util::error_ratelimited!("virtio-blk {}: {e}", self.id);
                }
            }
        }
    }

    /// Waits for the engine's in-flight requests; returns how many completions it produced
    /// (left in `self.completions`, for the caller to answer or drop).
    fn drain_engine(&mut self) -> usize {
        self.completions.clear();
        if let Some(backend) = self.backend.as_mut() {
            if backend.engine().in_flight() > 0 {
                if let Err(e) = backend.engine().drain(&mut self.completions) {
                    util::error_ratelimited!("virtio-blk {}: drain failed: {e}", self.id);
                }
            }
        }
        self.completions.len()
    }

    /// Drains the engine and answers every drained request, and every request an error
    /// policy held, in the used ring.
    fn drain_and_answer(&mut self) {
        // What the I/O limits hold back goes now, to be answered by the drain.
        let limits = self.limits();
        if let Some(active) = self.active.as_mut() {
            let released = active
                .release_all_throttled(&self.id, &limits, self.backend.as_mut())
                .and_then(|()| active.submit(&self.id, self.backend.as_mut()));
            if let Err(e) = released {
                active.break_device(&self.id, e);
            }
        }
        self.drain_engine();
        let drained = std::mem::take(&mut self.completions);
        if let Some(active) = self.active.as_mut() {
            for done in &drained {
                if let Err(e) =
                    active.complete(&self.id, *done, self.backend.as_mut(), Policy::AnswerAll)
                {
                    active.break_device(&self.id, e);
                }
            }
            if let Err(e) = active.fail_held() {
                active.break_device(&self.id, e);
            }
            active.signal(&self.id);
        }
        self.completions = drained;
    }

    /// Submits the requests an error policy held, again (QMP `cont`).
    pub(super) fn retry_held(&mut self) {
        // Counted first: a request held from here on is not part of this retry.
        self.shared.retries_done[usize::from(self.index)].fetch_add(1, Ordering::AcqRel);
        let limits = self.limits();
        let id = self.id.as_str();
        let Some(active) = self.active.as_mut() else {
            return;
        };
        if active.held.is_empty() || active.broken {
            return;
        }
        let held = std::mem::take(&mut active.held);
        log::info!("virtio-blk {id}: retrying {} requests", held.len());
        let result = (|| {
            for head in held {
                active.inflight[usize::from(head)] = None;
                active.start(id, head, &limits, self.backend.as_mut(), false)?;
            }
            active.submit(id, self.backend.as_mut())
        })();
        if let Err(e) = result {
            active.break_device(id, e);
        }
        active.signal(id);
    }

    /// Registers the engine's eventfd if the device is active and has a backend; offers guest
    /// RAM to the engine as fixed buffers only where it is already resident by the user's
    /// choice (preallocated), so activation never pins or populates guest RAM by itself.
    fn attach_engine(&mut self) -> Result<(), VirtioError> {
        let (Some(backend), Some(active)) = (self.backend.as_mut(), self.active.as_ref()) else {
            return Ok(());
        };
        if active.mem.preallocated() {
            let regions: Vec<Iovec> = active
                .mem
                .regions()
                .iter()
                .map(|r| Iovec {
                    base: r.host_address(),
                    len: r.size(),
                })
                .collect();
            backend.register_memory(&regions);
        }
        let fd = backend.engine().eventfd();
        let weak = self.this.clone();
        let generation = self.backend_generation;
        self.event_loop
            .add(
                &self.handler_name("aio"),
                fd,
                EventSet::IN,
                Box::new(move |_| {
                    let Some(state) = weak.upgrade() else {
                        return HandlerAction::Remove;
                    };
                    let mut state = lock(&state);
                    if state.backend_generation != generation {
                        return HandlerAction::Remove;
                    }
                    state.on_completions();
                    HandlerAction::Keep
                }),
            )
            .map_err(VirtioError::EventLoop)?;
        self.engine_registered = Some(fd);
        let engine_poll = EnginePoll {
            state: self.this.clone(),
            generation,
        };
        self.event_loop
            .add_poll(fd, Box::new(engine_poll))
            .map_err(VirtioError::EventLoop)
    }

    fn detach_engine(&mut self) {
        if let Some(fd) = self.engine_registered.take() {
            if let Err(e) = self.event_loop.remove(fd) {
                util::error_ratelimited!("virtio-blk {}: {e}", self.id);
            }
        }
    }

    /// Takes the backend out after answering its in-flight requests; its engine is closed on
    /// this thread. The queue that lets go of the file last (every other queue has drained its
    /// engine) makes its completed writes durable and closes it, here.
    fn take_backend(&mut self) -> Result<(), VirtioError> {
        self.drain_and_answer();
        self.detach_engine();
        let Some(old) = self.backend.take() else {
            return Ok(());
        };
        let Some(disk) = Arc::into_inner(old.into_disk()) else {
            // Another queue of the device still uses the file.
            return Ok(());
        };
        let synced = disk.sync();
        if let Err(e) = &synced {
            // The management learns of it (QMP `BLOCK_IO_ERROR`): nobody else will.
            let errno = match e {
                VirtioError::Flush { source, .. } => source.raw_os_error(),
                _ => None,
            };
            self.shared.report_error(
                self.index,
                IoOperation::Write,
                ErrorAction::Report,
                errno.unwrap_or(libc::EIO),
            );
        }
        log::info!(
            "virtio-blk {}: backend {:?} closed",
            self.id,
            disk.config().path
        );
        synced
    }

    /// Puts `backend` (this queue's part of the device's new backend) in place of the current
    /// one: in-flight requests are drained and answered to the guest first, then completed
    /// writes are synced (by the last queue to let go of the old file). The owner publishes
    /// the new configuration once every queue has its part ([`super::BlockHandle`]).
    pub(super) fn replace_backend(
        &mut self,
        backend: Option<BlockBackend>,
    ) -> Result<(), VirtioError> {
        if self.shut_down {
            return Err(VirtioError::ShutDown {
                id: self.id.clone(),
            });
        }
        if let Err(e) = self.take_backend() {
            log::error!("virtio-blk {}: {e}", self.id);
        }
        self.backend = backend;
        self.backend_generation += 1;
        let attached = self.attach_engine();
        if attached.is_err() {
            self.backend = None;
        }
        attached
    }

    /// Raises a configuration-change interrupt if this queue is active (the configuration
    /// space changed); returns whether it did.
    pub(super) fn signal_config_change(&self) -> bool {
        match self.active.as_ref() {
            Some(active) => {
                active.interrupt.signal_config_change();
                true
            }
            None => false,
        }
    }

    /// Another queue finished writes this queue's waiting writes may have waited for: start
    /// those that no longer conflict.
    pub(super) fn on_writes_released(&mut self) {
        self.resume(Active::start_waiting);
    }

    /// Ends the device: answers every in-flight request, syncs and closes the backend, stops
    /// serving the queue. Returns the final flush's error, if any.
    pub(super) fn shutdown(&mut self) -> Result<(), VirtioError> {
        if self.shut_down {
            return Ok(());
        }
        self.shut_down = true;
        let synced = self.take_backend();
        self.deactivate();
        log::debug!("virtio-blk {}: shut down", self.id);
        synced
    }

    /// The guest notified the queue.
    pub(super) fn on_notify(&mut self) {
        self.process_queue();
        if let Some(active) = self.active.as_mut() {
            active.signal(&self.id);
        }
    }

    /// Whether the guest offered chains the device has not taken (guest memory only: a
    /// polling loop's look). A ring it cannot read counts as work, so that the handler finds
    /// the error and breaks the device.
    pub(super) fn poll_queue(&self) -> bool {
        self.active
            .as_ref()
            .is_some_and(|a| !a.broken && a.queue.has_avail(&a.mem).unwrap_or(true))
    }

    /// The loop starts or stops polling the queue: guest notifications off, or back on.
    pub(super) fn set_queue_polling(&mut self, polling: bool) {
        if let Some(active) = self.active.as_mut() {
            if let Err(e) = active.queue.set_polling(&active.mem, polling) {
                active.break_device(&self.id, e);
            }
        }
    }

    /// Whether the engine of backend `generation` has completions (no system call).
    pub(super) fn poll_engine(&mut self, generation: u64) -> bool {
        if self.backend_generation != generation {
            return false;
        }
        self.backend
            .as_mut()
            .is_some_and(|b| b.engine().poll_ready())
    }

    /// The engine of backend `generation` has completions (stale generations are ignored).
    pub(super) fn on_completions_of(&mut self, generation: u64) {
        if self.backend_generation == generation {
            self.on_completions();
        }
    }

    /// The engine has completions.
    fn on_completions(&mut self) {
        self.completions.clear();
        if let Some(backend) = self.backend.as_mut() {
            if let Err(e) = backend.engine().reap(&mut self.completions) {
                util::error_ratelimited!("virtio-blk {}: reap failed: {e}", self.id);
            }
        }
        let limits = self.limits();
        if let Some(active) = self.active.as_mut() {
            let result = (|| {
                for done in &self.completions {
                    active.complete(&self.id, *done, self.backend.as_mut(), Policy::Apply)?;
                }
                // Writes that waited for one of these may start now.
                active.start_waiting(&self.id, &limits, self.backend.as_mut())
            })();
            if let Err(e) = result {
                active.break_device(&self.id, e);
            }
        }
        // Chains the guest offered while the engine was busy are picked up now, and go to the
        // engine in one batch with what the completions started (write halves of
        // read-modify-writes, waiting writes).
        self.process_queue();
        if let Some(active) = self.active.as_mut() {
            active.signal(&self.id);
        }
    }

    /// Pops and starts every offered chain, then submits them in one call.
    fn process_queue(&mut self) {
        let limits = self.limits();
        let id = self.id.as_str();
        let Some(active) = self.active.as_mut() else {
            return;
        };
        if active.broken {
            return;
        }
        let result = (|| loop {
            while let Some(head) = active.queue.pop_avail(&active.mem)? {
                active.start(id, head, &limits, self.backend.as_mut(), true)?;
            }
            if !active.queue.enable_notification(&active.mem)? {
                return active.submit(id, self.backend.as_mut());
            }
        })();
        if let Err(e) = result {
            // Chains already started still go to the engine.
            if let Err(e) = active.submit(id, self.backend.as_mut()) {
                util::error_ratelimited!("virtio-blk {id}: {e}");
            }
            active.break_device(id, e);
        }
    }

    /// Chains taken and not answered: in the engine, or held for a retry.
    pub(super) fn in_flight(&self) -> usize {
        self.active.as_ref().map_or(0, Active::in_flight)
    }
}

impl Drop for BlockState {
    fn drop(&mut self) {
        // Normally a no-op: the owner shut the device down on its thread.
        if let Err(e) = self.shutdown() {
            log::error!("virtio-blk {}: {e}", self.id);
        }
    }
}
