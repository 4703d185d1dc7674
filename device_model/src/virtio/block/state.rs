//! The running half of a block device, owned by its event-loop thread: its queue, in-flight
//! table and backend, driven by two event-loop handlers (`<id>-queue0` for the guest's
//! notifications, `<id>-aio` for the engine's completions) and by the messages of the
//! transport and the owner (activate, reset, replace, shut down).
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
//!   the lock is never contended and nobody waits for it.
//! - `inflight[head]` is `Some` exactly while the chain `head` is owned by the engine.
//! - Every request handed to the engine carries a [`KeepAlive`] of `Active::mem`, so guest
//!   RAM stays mapped while the kernel may use it, even if a drain fails.
//! - The engine handler is registered exactly while the device is active and has a backend.
//! - After [`BlockState::shutdown`] the state has no backend and no handler and ignores every
//!   later message.

use std::os::unix::io::AsRawFd;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use address_space::GuestMemory;
use util::aio::{AioCompletion, AioOpcode, AioRequest, Iovec, KeepAlive};
use util::event_loop::{EventLoop, HandlerAction};
use util::logger::{RateLimit, GUEST_LOG_INTERVAL};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::backend::BlockBackend;
use super::request::{
    status_address, DiskLimits, Request, RequestKind, Segment, SERIAL_LEN, VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK,
};
use super::{Shared, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_WRITE_ZEROES};
use crate::virtio::queue::{Descriptor, QueueError, SplitQueue};
use crate::virtio::{feature, Interrupt, VirtioError};

/// The most sectors one discard or write-zeroes may cover.
pub const MAX_RANGE_SECTORS: u32 = 1 << 21;

/// A chain the engine owns.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    status: u64,
    expected: u64,
    used_len: u32,
}

/// The queue of an activated device.
pub(super) struct Active {
    queue: SplitQueue,
    mem: Arc<GuestMemory>,
    keep_alive: KeepAlive,
    interrupt: Arc<Interrupt>,
    notify: Arc<EventFd>,
    features: u64,
    broken: bool,
    /// The device's limit on guest error lines (shared by all its activations).
    guest_log: Arc<RateLimit>,
    inflight: Vec<Option<InFlight>>,
    chain: Vec<Descriptor>,
    segments: Vec<Segment>,
    batch: Vec<AioRequest>,
}

/// The device's running state; lives behind a mutex that only its event-loop thread takes.
pub(super) struct BlockState {
    id: String,
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
        self.queue.add_used(&self.mem, head, used_len)
    }

    /// Starts the chain `head`: answers it now (returns `true`) or queues it for the engine.
    fn start(
        &mut self,
        id: &str,
        head: u16,
        limits: &DiskLimits,
        backend: Option<&mut BlockBackend>,
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
        let opcode = match request.kind {
            RequestKind::GetId => {
                let written = self.write_serial(backend.as_deref());
                self.finish(head, status, VIRTIO_BLK_S_OK, written + 1)?;
                return Ok(true);
            }
            RequestKind::Read => AioOpcode::Read,
            RequestKind::Write => AioOpcode::Write,
            RequestKind::Flush => AioOpcode::Flush,
            RequestKind::Discard => AioOpcode::Discard,
            RequestKind::WriteZeroes => AioOpcode::WriteZeroes,
        };
        let transfer = matches!(opcode, AioOpcode::Read | AioOpcode::Write);
        let Some(backend) = backend.filter(|_| !transfer || request.len > 0) else {
            // An empty slot (capacity 0) only lets flushes and empty transfers through.
            self.finish(head, status, VIRTIO_BLK_S_OK, 1)?;
            return Ok(true);
        };
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
        let used_len = if opcode == AioOpcode::Read {
            u32::try_from(request.len + 1).unwrap_or(u32::MAX)
        } else {
            1
        };
        let aio = AioRequest {
            opcode,
            offset: request.offset,
            iovecs,
            len: request.len,
            tag: u64::from(head),
            keep_alive: Some(self.keep_alive.clone()),
        };
        self.inflight[usize::from(head)] = Some(InFlight {
            status,
            expected: aio.nbytes(),
            used_len,
        });
        self.batch.push(aio);
        Ok(false)
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

    /// Hands the batch to the engine; what it refuses fails with IOERR.
    fn submit(&mut self, id: &str, backend: Option<&mut BlockBackend>) -> Result<(), QueueError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let result = match backend {
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
            self.complete(
                id,
                AioCompletion {
                    tag,
                    result: -i64::from(libc::EIO),
                },
            )?;
        }
        Ok(())
    }

    /// Writes the status and used entry of one engine completion.
    fn complete(&mut self, id: &str, done: AioCompletion) -> Result<(), QueueError> {
        let Some(slot) = usize::try_from(done.tag)
            .ok()
            .and_then(|i| self.inflight.get_mut(i))
        else {
            util::error_ratelimited!("virtio-blk {id}: completion for unknown tag {}", done.tag);
            return Ok(());
        };
        let Some(req) = slot.take() else {
            util::error_ratelimited!("virtio-blk {id}: completion for idle tag {}", done.tag);
            return Ok(());
        };
        let ok = u64::try_from(done.result).is_ok_and(|n| n == req.expected);
        let (value, used_len) = if ok {
            (VIRTIO_BLK_S_OK, req.used_len)
        } else {
            // Guests can cause these too (e.g. unaligned buffers with O_DIRECT: EINVAL).
            self.guest_error(
                id,
                format_args!(
                    "request {} failed: result {} of {} bytes",
                    done.tag, done.result, req.expected
                ),
            );
            (VIRTIO_BLK_S_IOERR, 1)
        };
        self.finish(done.tag as u16, req.status, value, used_len)
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
    /// A device `id` with an optional backend, owned by the thread of `event_loop`.
    pub(super) fn new(
        id: String,
        backend: Option<BlockBackend>,
        shared: Arc<Shared>,
        event_loop: Arc<EventLoop>,
    ) -> Arc<Mutex<BlockState>> {
        Arc::new_cyclic(|this| {
            Mutex::new(BlockState {
                id,
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
        let weak = self.this.clone();
        let fd = notify.clone();
        self.event_loop
            .add(
                &format!("{}-queue0", self.id),
                notify.as_raw_fd(),
                EventSet::IN,
                Box::new(move |_| {
                    // An empty eventfd reads EAGAIN: nothing to clear.
                    let _ = fd.read();
                    match weak.upgrade() {
                        Some(state) => {
                            lock(&state).on_notify();
                            HandlerAction::Keep
                        }
                        None => HandlerAction::Remove,
                    }
                }),
            )
            .map_err(VirtioError::EventLoop)?;
        self.active = Some(Active {
            queue,
            keep_alive: KeepAlive::new(mem.clone()),
            mem,
            interrupt,
            notify,
            features,
            broken: false,
            guest_log: self.guest_log.clone(),
            inflight: vec![None; size],
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

    /// The driver reset the device (reset number `n`): stop serving the queue, forget what
    /// is in flight (the driver no longer expects it), then tell the transport it is done.
    pub(super) fn reset(&mut self, n: u64) {
        if let Some(active) = self.active.as_ref() {
            // What the old queue flagged no longer applies to the reset device.
            active.interrupt.clear_needs_reset();
        }
        self.deactivate();
        self.shared.reset_done(n);
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
        if let Some(active) = self.active.take() {
            if let Err(e) = self.event_loop.remove(active.notify.as_raw_fd()) {
                util::error_ratelimited!("virtio-blk {}: {e}", self.id);
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

    /// Drains the engine and answers every drained request in the used ring.
    fn drain_and_answer(&mut self) {
        self.drain_engine();
        let drained = std::mem::take(&mut self.completions);
        if let Some(active) = self.active.as_mut() {
            for done in &drained {
                if let Err(e) = active.complete(&self.id, *done) {
                    active.break_device(&self.id, e);
                }
            }
            active.signal(&self.id);
        }
        self.completions = drained;
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
                &format!("{}-aio", self.id),
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
        Ok(())
    }

    fn detach_engine(&mut self) {
        if let Some(fd) = self.engine_registered.take() {
            if let Err(e) = self.event_loop.remove(fd) {
                util::error_ratelimited!("virtio-blk {}: {e}", self.id);
            }
        }
    }

    /// Takes the backend out after answering its in-flight requests, and makes its completed
    /// writes durable; the backend (and its engine) is closed on this thread.
    fn take_backend(&mut self) -> Result<(), VirtioError> {
        self.drain_and_answer();
        self.detach_engine();
        let Some(old) = self.backend.take() else {
            return Ok(());
        };
        let synced = old.sync();
        log::info!(
            "virtio-blk {}: backend {:?} closed",
            self.id,
            old.config().path
        );
        synced
    }

    /// Puts `backend` in place of the current one: in-flight requests are drained and
    /// answered to the guest first, then completed writes are synced.
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
        self.shared.publish(self.backend.as_ref());
        if let Some(active) = self.active.as_ref() {
            active.interrupt.signal_config_change();
        }
        attached
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
    fn on_notify(&mut self) {
        self.process_queue();
        if let Some(active) = self.active.as_mut() {
            active.signal(&self.id);
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
        if let Some(active) = self.active.as_mut() {
            for done in &self.completions {
                if let Err(e) = active.complete(&self.id, *done) {
                    active.break_device(&self.id, e);
                    break;
                }
            }
        }
        // Chains the guest offered while the engine was busy are picked up now.
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
                active.start(id, head, &limits, self.backend.as_mut())?;
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

    /// Chains the engine owns right now.
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
