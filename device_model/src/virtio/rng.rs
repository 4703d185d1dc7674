//! virtio-rng (virtio device type 4): one request queue whose device-writable buffers the
//! device fills with bytes read from a host entropy file (`-object rng-random,filename=F`).
//!
//! Two halves, as virtio-blk (`block/mod.rs`, `docs/threads.md`):
//!
//! ```text
//!  vCPU (transport)                  device's event-loop thread (the main loop)
//!  ────────────────                  ──────────────────────────────────────────
//!  Rng::activate ──post────────────► RngState::activate: "<id>-queue0" notify handler
//!  Rng::reset ─────post────────────► RngState::reset ─► resets_done
//!                                    notify ─► pop chain ─► read the source ─► used ring
//!                                      source would block ─► "<id>-source" (fd readable)
//!                                      rate spent ─► "<id>-rate" (timerfd)
//! ```
//!
//! Invariants:
//! - The running state (queue, source, rate limit, the chain waiting for bytes) belongs to the
//!   event-loop thread; only messages and that thread's handlers touch it. A vCPU posts and
//!   returns.
//! - Reading the source never blocks the loop: a character device or FIFO is opened
//!   `O_NONBLOCK` and, when it has nothing, the chain waits (in order, at most one) until the
//!   loop sees the file readable; a regular file is read in a loop (rewound at its end), which
//!   suits tests, not entropy.
//! - A chain gets at most [`MAX_REQUEST_BYTES`] bytes, and never more than its writable
//!   buffers hold; bytes are read from the source only once every buffer was checked to lie in
//!   guest RAM, so no entropy is read for a request that cannot take it.
//! - Guest data never panics the VMM: a malformed chain is answered with 0 bytes (a guest
//!   error, logged with a rate limit), a broken ring marks the device `DEVICE_NEEDS_RESET`.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use address_space::GuestMemory;
use util::event_loop::{EventLoop, HandlerAction};
use util::logger::{RateLimit as LogLimit, Suppressed};
use util::timer::nonblocking_timer;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::queue::{Descriptor, QueueError, SplitQueue};
use super::{
    device_handler, feature, Activation, Interrupt, VirtioDevice, VirtioError,
    VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_RING_INDIRECT_DESC, VIRTIO_F_VERSION_1,
};

/// Device type of an entropy device.
pub const VIRTIO_ID_RNG: u32 = 4;
/// Entries of the request queue.
pub const RNG_QUEUE_SIZE: u16 = 256;
/// The most bytes one request gets (the device may return fewer than asked).
pub const MAX_REQUEST_BYTES: usize = 64 << 10;

/// How long to wait before reading a source again that hung up (a FIFO with no writer).
const SOURCE_RETRY: Duration = Duration::from_secs(1);

/// The host file entropy is read from.
pub struct EntropySource {
    file: File,
    path: PathBuf,
    /// A regular file (read in a loop) rather than a device or FIFO (read as it comes).
    regular: bool,
}

impl EntropySource {
    /// Opens `path` for reading: a character device or FIFO without blocking, a regular file
    /// as is (it must not be empty). Directories and other kinds are refused.
    pub fn open(path: &Path) -> Result<EntropySource, VirtioError> {
        let open_error = |source| VirtioError::OpenFile {
            path: path.to_path_buf(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(open_error)?;
        let metadata = file.metadata().map_err(open_error)?;
        let kind = metadata.file_type();
        let regular = kind.is_file();
        if !(regular || kind.is_char_device() || kind.is_fifo()) {
            return Err(VirtioError::EntropySource {
                path: path.to_path_buf(),
                reason: "not a character device, FIFO or regular file",
            });
        }
        if regular && metadata.len() == 0 {
            return Err(VirtioError::EntropySource {
                path: path.to_path_buf(),
                reason: "the file is empty",
            });
        }
        Ok(EntropySource {
            file,
            path: path.to_path_buf(),
            regular,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads up to `buf.len()` bytes: `Ok(0)` only when a device or FIFO has nothing now
    /// (or a FIFO's writer is gone); a regular file is rewound at its end.
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut done = 0;
        let mut rewound = false;
        while done < buf.len() {
            match self.file.read(&mut buf[done..]) {
                Ok(0) if self.regular && !rewound => {
                    self.file.seek(SeekFrom::Start(0))?;
                    rewound = true;
                }
                Ok(0) => break,
                Ok(n) => {
                    done += n;
                    rewound = false;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock && done > 0 => break,
                Err(e) => return Err(e),
            }
            if !self.regular && done > 0 {
                // A device returns what it has; do not wait for more.
                break;
            }
        }
        Ok(done)
    }
}

/// At most `bytes_per_sec` bytes per second, with up to one second's worth in reserve.
#[derive(Debug)]
struct RateLimit {
    bytes_per_sec: u64,
    allowance: u64,
    refilled: Instant,
}

impl RateLimit {
    fn new(bytes_per_sec: u64) -> RateLimit {
        RateLimit {
            bytes_per_sec,
            allowance: bytes_per_sec,
            refilled: Instant::now(),
        }
    }

    /// Bytes that may be served now.
    fn available(&mut self) -> u64 {
        self.available_at(Instant::now())
    }

    /// Bytes that may be served at `now`. Time spent with the reserve full earns nothing: it
    /// is not counted again once bytes are taken.
    fn available_at(&mut self, now: Instant) -> u64 {
        if self.allowance >= self.bytes_per_sec {
            self.refilled = now;
            return self.allowance;
        }
        let earned = now.saturating_duration_since(self.refilled).as_nanos()
            * u128::from(self.bytes_per_sec)
            / 1_000_000_000;
        if earned > 0 {
            self.allowance =
                (u128::from(self.allowance) + earned).min(u128::from(self.bytes_per_sec)) as u64;
            self.refilled = now;
        }
        self.allowance
    }

    fn consume(&mut self, bytes: u64) {
        self.allowance = self.allowance.saturating_sub(bytes);
    }

    /// How long until `bytes` (at most a second's worth) may be served.
    fn wait_for(&mut self, bytes: u64) -> Duration {
        let want = bytes.min(self.bytes_per_sec);
        let missing = want.saturating_sub(self.available());
        let nanos = u128::from(missing) * 1_000_000_000 / u128::from(self.bytes_per_sec);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX)).max(Duration::from_millis(1))
    }
}

/// What every thread may read: the id, the resets asked for and finished, and counters.
struct Shared {
    id: String,
    resets_asked: AtomicU64,
    resets_done: AtomicU64,
    requests: AtomicU64,
    bytes: AtomicU64,
    first_logged: AtomicBool,
}

/// The queue of an activated device.
struct Active {
    queue: SplitQueue,
    mem: Arc<GuestMemory>,
    interrupt: Arc<Interrupt>,
    notify: Arc<EventFd>,
    broken: bool,
    chain: Vec<Descriptor>,
    /// A popped chain that waits for the source or the rate limit.
    waiting: Option<u16>,
}

/// The device's running state, owned by its event-loop thread.
struct RngState {
    shared: Arc<Shared>,
    event_loop: Arc<EventLoop>,
    source: EntropySource,
    limit: Option<RateLimit>,
    active: Option<Active>,
    source_watched: bool,
    /// The source reported a hang-up (a FIFO whose writer left): poll it with the timer.
    source_hung_up: bool,
    timer: Option<TimerFd>,
    buf: Vec<u8>,
    /// Limits the lines a guest's errors log (one per device, across activations).
    guest_log: LogLimit,
    this: Weak<Mutex<RngState>>,
}

fn lock(state: &Mutex<RngState>) -> MutexGuard<'_, RngState> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// How one chain was handled.
enum Outcome {
    /// Answered (with this many bytes).
    Answered,
    /// Not answered: it waits for the source or the rate limit.
    Waiting,
}

impl RngState {
    fn guest_error(&mut self, message: std::fmt::Arguments<'_>) {
        if let Some(suppressed) = self.guest_log.admit() {
            log::warn!(
                "virtio-rng {}: {message}{}",
                self.shared.id,
                Suppressed(suppressed)
            );
        }
    }

    fn activate(
        &mut self,
        queue: SplitQueue,
        mem: Arc<GuestMemory>,
        interrupt: Arc<Interrupt>,
        notify: Arc<EventFd>,
    ) -> Result<(), VirtioError> {
        if self.active.is_some() {
            self.deactivate();
        }
        self.event_loop
            .add(
                &format!("{}-queue0", self.shared.id),
                notify.as_raw_fd(),
                EventSet::IN,
                device_handler(self.this.clone(), Some(notify.clone()), RngState::process),
            )
            .map_err(VirtioError::EventLoop)?;
        let size = usize::from(queue.size());
        self.active = Some(Active {
            queue,
            mem,
            interrupt,
            notify,
            broken: false,
            chain: Vec::with_capacity(size),
            waiting: None,
        });
        // Chains offered before DRIVER_OK are served now.
        self.process();
        Ok(())
    }

    fn reset(&mut self, n: u64) {
        if let Some(active) = self.active.as_ref() {
            active.interrupt.clear_needs_reset();
        }
        self.deactivate();
        self.shared.resets_done.store(n, Ordering::Release);
    }

    /// Stops serving the queue: handlers removed, a waiting chain forgotten (the driver that
    /// reset the device no longer expects it).
    fn deactivate(&mut self) {
        self.unwatch();
        if let Some(active) = self.active.take() {
            if let Err(e) = self.event_loop.remove(active.notify.as_raw_fd()) {
                log::error!("virtio-rng {}: {e}", self.shared.id);
            }
        }
    }

    /// Removes the source's and the timer's handlers (each while its fd is still open).
    fn unwatch(&mut self) {
        self.unwatch_source();
        self.disarm_timer();
    }

    fn unwatch_source(&mut self) {
        if std::mem::take(&mut self.source_watched) {
            if let Err(e) = self.event_loop.remove(self.source.file.as_raw_fd()) {
                log::error!("virtio-rng {}: {e}", self.shared.id);
            }
        }
    }

    fn disarm_timer(&mut self) {
        if let Some(timer) = self.timer.take() {
            if let Err(e) = self.event_loop.remove(timer.as_raw_fd()) {
                log::error!("virtio-rng {}: {e}", self.shared.id);
            }
        }
    }

    /// Serves offered chains in order until the queue is empty or one has to wait.
    fn process(&mut self) {
        let result = self.serve_queue();
        let Some(active) = self.active.as_mut() else {
            return;
        };
        match result {
            Ok(()) => match active.queue.publish_used(&active.mem) {
                Ok(true) => active.interrupt.signal_used_queue(),
                Ok(false) => {}
                Err(e) => self.break_device(e),
            },
            Err(e) => self.break_device(e),
        }
    }

    fn break_device(&mut self, error: QueueError) {
        log::error!(
            "virtio-rng {}: queue broken, device needs reset: {error}",
            self.shared.id
        );
        if let Some(active) = self.active.as_mut() {
            active.broken = true;
            active.waiting = None;
            active.interrupt.set_needs_reset();
        }
        self.unwatch();
    }

    fn serve_queue(&mut self) -> Result<(), QueueError> {
        loop {
            let Some(active) = self.active.as_mut() else {
                return Ok(());
            };
            if active.broken || self.source_watched || self.timer.is_some() {
                return Ok(());
            }
            let head = match active.waiting.take() {
                Some(head) => head,
                None => match active.queue.pop_avail(&active.mem)? {
                    Some(head) => head,
                    None => {
                        if active.queue.enable_notification(&active.mem)? {
                            continue;
                        }
                        return Ok(());
                    }
                },
            };
            if let Outcome::Waiting = self.serve(head)? {
                return Ok(());
            }
        }
    }

    /// Answers chain `head`, or leaves it waiting.
    fn serve(&mut self, head: u16) -> Result<Outcome, QueueError> {
        let Some(active) = self.active.as_mut() else {
            return Ok(Outcome::Answered);
        };
        active
            .queue
            .read_chain(&active.mem, head, &mut active.chain)?;
        let mut room = 0usize;
        let mut bad = None;
        for desc in &active.chain {
            if !desc.is_write_only() {
                bad = Some("a device-readable buffer");
                break;
            }
            if !active.mem.contains(desc.addr, u64::from(desc.len)) {
                bad = Some("a buffer outside guest RAM");
                break;
            }
            room = room.saturating_add(desc.len as usize);
        }
        if let Some(what) = bad {
            active.queue.add_used(&active.mem, head, 0)?;
            self.guest_error(format_args!("request {head} refused: {what}"));
            return Ok(Outcome::Answered);
        }
        let mut want = room.min(MAX_REQUEST_BYTES);
        if want == 0 {
            active.queue.add_used(&active.mem, head, 0)?;
            return Ok(Outcome::Answered);
        }
        if let Some(limit) = self.limit.as_mut() {
            let allowed = limit.available();
            if allowed == 0 {
                let delay = limit.wait_for(want as u64);
                active.waiting = Some(head);
                self.arm_timer(delay);
                return Ok(Outcome::Waiting);
            }
            want = want.min(usize::try_from(allowed).unwrap_or(usize::MAX));
        }
        let read = self.source.read(&mut self.buf[..want]);
        let Some(active) = self.active.as_mut() else {
            return Ok(Outcome::Answered);
        };
        let nothing_now = match &read {
            Ok(0) => !self.source.regular,
            Err(e) => e.kind() == ErrorKind::WouldBlock,
            Ok(_) => false,
        };
        if nothing_now {
            active.waiting = Some(head);
            if self.source_hung_up {
                // Readiness would be reported at once, forever: look again a while later.
                self.arm_timer(SOURCE_RETRY);
            } else {
                self.watch_source();
            }
            return Ok(Outcome::Waiting);
        }
        self.source_hung_up = false;
        let Some(active) = self.active.as_mut() else {
            return Ok(Outcome::Answered);
        };
        let n = match read {
            Ok(n) => n,
            Err(e) => {
                log::error!(
                    "virtio-rng {}: cannot read {}: {e}",
                    self.shared.id,
                    self.source.path.display()
                );
                0
            }
        };
        let mut written = 0usize;
        for desc in &active.chain {
            if written == n {
                break;
            }
            let len = (desc.len as usize).min(n - written);
            // Every buffer was checked to lie in guest RAM.
            if let Err(e) = active
                .mem
                .write(&self.buf[written..written + len], desc.addr)
            {
                log::error!("virtio-rng {}: {e}", self.shared.id);
                break;
            }
            written += len;
        }
        active.queue.add_used(&active.mem, head, written as u32)?;
        if let Some(limit) = self.limit.as_mut() {
            limit.consume(written as u64);
        }
        self.shared.requests.fetch_add(1, Ordering::Relaxed);
        self.shared
            .bytes
            .fetch_add(written as u64, Ordering::Relaxed);
        if !self.shared.first_logged.swap(true, Ordering::Relaxed) {
            log::info!(
                "virtio-rng {}: the guest's first request got {written} bytes from {}",
                self.shared.id,
                self.source.path.display()
            );
        }
        Ok(Outcome::Answered)
    }

    /// Waits for the source to become readable, then serves the waiting chain.
    fn watch_source(&mut self) {
        if self.source_watched {
            return;
        }
        let weak = self.this.clone();
        let added = self.event_loop.add(
            &format!("{}-source", self.shared.id),
            self.source.file.as_raw_fd(),
            EventSet::IN,
            Box::new(move |events: EventSet| {
                let Some(state) = weak.upgrade() else {
                    return HandlerAction::Remove;
                };
                {
                    let mut state = lock(&state);
                    // Unregistered here, not by returning Remove: `process` may watch again.
                    state.unwatch_source();
                    if events.intersects(EventSet::HANG_UP | EventSet::ERROR)
                        && !std::mem::replace(&mut state.source_hung_up, true)
                    {
                        log::warn!(
                            "virtio-rng {}: {} hung up (no writer?); looking again every {:?}",
                            state.shared.id,
                            state.source.path.display(),
                            SOURCE_RETRY
                        );
                    }
                    state.process();
                }
                HandlerAction::Keep
            }),
        );
        match added {
            Ok(()) => self.source_watched = true,
            Err(e) => {
                log::error!(
                    "virtio-rng {}: cannot wait for {}: {e}",
                    self.shared.id,
                    self.source.path.display()
                );
                self.answer_waiting_empty();
            }
        }
    }

    /// Serves the waiting chain once the rate limit allows it.
    fn arm_timer(&mut self, delay: Duration) {
        let armed = nonblocking_timer().and_then(|mut timer| {
            timer.reset(delay, None).map_err(std::io::Error::from)?;
            Ok(timer)
        });
        let timer = match armed {
            Ok(timer) => timer,
            Err(e) => {
                log::error!(
                    "virtio-rng {}: cannot arm the rate timer: {e}",
                    self.shared.id
                );
                self.answer_waiting_empty();
                return;
            }
        };
        let weak = self.this.clone();
        let added = self.event_loop.add(
            &format!("{}-rate", self.shared.id),
            timer.as_raw_fd(),
            EventSet::IN,
            Box::new(move |_| {
                let Some(state) = weak.upgrade() else {
                    return HandlerAction::Remove;
                };
                let mut state = lock(&state);
                // Unregistered before its fd closes, and before `process` may arm another.
                state.disarm_timer();
                state.process();
                HandlerAction::Keep
            }),
        );
        match added {
            Ok(()) => self.timer = Some(timer),
            Err(e) => {
                log::error!(
                    "virtio-rng {}: cannot wait for the rate limit: {e}",
                    self.shared.id
                );
                self.answer_waiting_empty();
            }
        }
    }

    /// The loop cannot wait for us: answer the waiting chain with no bytes rather than never.
    fn answer_waiting_empty(&mut self) {
        if let Some(active) = self.active.as_mut() {
            if let Some(head) = active.waiting.take() {
                if let Err(e) = active.queue.add_used(&active.mem, head, 0) {
                    self.break_device(e);
                }
            }
        }
    }
}

impl Drop for RngState {
    fn drop(&mut self) {
        // Normally the loop's handlers are gone already (the VMM clears its loop last).
        self.unwatch();
        log::info!(
            "virtio-rng {}: served {} requests, {} bytes",
            self.shared.id,
            self.shared.requests.load(Ordering::Relaxed),
            self.shared.bytes.load(Ordering::Relaxed)
        );
    }
}

/// A virtio-rng device, the half the transport drives; put it behind a transport with
/// `Arc<Mutex<Rng>>`.
pub struct Rng {
    shared: Arc<Shared>,
    state: Arc<Mutex<RngState>>,
    event_loop: Arc<EventLoop>,
}

/// What the owner (and tests) can read of a device: its counters.
#[derive(Clone)]
pub struct RngHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RngHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RngHandle")
            .field("id", &self.shared.id)
            .field("requests", &self.requests())
            .field("bytes", &self.bytes())
            .finish()
    }
}

impl RngHandle {
    /// Requests answered with bytes so far.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// Bytes given to the guest so far.
    pub fn bytes(&self) -> u64 {
        self.shared.bytes.load(Ordering::Relaxed)
    }

    /// The device's id.
    pub fn id(&self) -> &str {
        &self.shared.id
    }
}

impl Rng {
    /// A device named `id` reading `source`, at most `bytes_per_sec` bytes per second if
    /// given, owned by the thread of `event_loop`.
    pub fn new(
        id: String,
        source: EntropySource,
        bytes_per_sec: Option<u64>,
        event_loop: Arc<EventLoop>,
    ) -> Rng {
        let shared = Arc::new(Shared {
            id,
            resets_asked: AtomicU64::new(0),
            resets_done: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            first_logged: AtomicBool::new(false),
        });
        let state = Arc::new_cyclic(|this| {
            Mutex::new(RngState {
                shared: shared.clone(),
                event_loop: event_loop.clone(),
                source,
                limit: bytes_per_sec.filter(|&b| b > 0).map(RateLimit::new),
                active: None,
                source_watched: false,
                source_hung_up: false,
                timer: None,
                buf: vec![0; MAX_REQUEST_BYTES],
                guest_log: LogLimit::guest(),
                this: this.clone(),
            })
        });
        Rng {
            shared,
            state,
            event_loop,
        }
    }

    /// The owner's handle (counters).
    pub fn handle(&self) -> RngHandle {
        RngHandle {
            shared: self.shared.clone(),
        }
    }

    /// Runs `f` on the device's state on its thread, without waiting.
    fn post(&self, f: impl FnOnce(&mut RngState) + Send + 'static) {
        let state = self.state.clone();
        self.event_loop.post(move || f(&mut lock(&state)));
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![RNG_QUEUE_SIZE]
    }

    fn device_features(&self) -> u64 {
        feature(VIRTIO_F_VERSION_1)
            | feature(VIRTIO_F_RING_INDIRECT_DESC)
            | feature(VIRTIO_F_RING_EVENT_IDX)
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // virtio-rng has no configuration space.
        data.fill(0);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        log::debug!(
            "virtio-rng {}: ignored {}-byte write to the (empty) config space at {offset:#x}",
            self.shared.id,
            data.len()
        );
    }

    fn config_generation(&self) -> u32 {
        0
    }

    fn activate(&mut self, activation: Activation) -> Result<(), VirtioError> {
        let Some((index, config, notify)) = activation.queues.into_iter().find(|(i, _, _)| *i == 0)
        else {
            return Err(VirtioError::Queue {
                index: 0,
                source: QueueError::BadSize {
                    size: 0,
                    max: RNG_QUEUE_SIZE,
                },
            });
        };
        let event_idx = activation.features & feature(VIRTIO_F_RING_EVENT_IDX) != 0;
        let queue = SplitQueue::new(&config, &activation.mem, event_idx)
            .map_err(|source| VirtioError::Queue { index, source })?;
        let (mem, interrupt) = (activation.mem, activation.interrupt);
        self.post(move |state| {
            if let Err(e) = state.activate(queue, mem, interrupt.clone(), notify) {
                log::error!("virtio-rng {}: activation failed: {e}", state.shared.id);
                interrupt.set_needs_reset();
            }
        });
        Ok(())
    }

    fn reset(&mut self) {
        let n = self.shared.resets_asked.fetch_add(1, Ordering::AcqRel) + 1;
        self.post(move |state| state.reset(n));
    }

    fn reset_pending(&self) -> bool {
        self.shared.resets_done.load(Ordering::Acquire)
            != self.shared.resets_asked.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_refills_up_to_one_second() {
        let mut limit = RateLimit::new(1000);
        assert_eq!(limit.available(), 1000);
        limit.consume(1000);
        assert_eq!(limit.allowance, 0);
        // Half a second later about 500 bytes are back; never more than a second's worth.
        limit.refilled -= Duration::from_millis(500);
        let back = limit.available();
        assert!((499..=600).contains(&back), "{back}");
        limit.refilled -= Duration::from_secs(10);
        assert_eq!(limit.available(), 1000);
        limit.consume(1000);
        let wait = limit.wait_for(250);
        assert!(
            wait <= Duration::from_millis(250) && wait >= Duration::from_millis(200),
            "{wait:?}"
        );
        assert!(limit.wait_for(5000) <= Duration::from_secs(1));
    }

    #[test]
    fn time_with_a_full_reserve_earns_nothing() {
        // The reserve is full from the start; the first bytes are taken 0.9 ms later, the
        // next asked for 0.6 ms after that: 0.6 ms at 1000 bytes/s earns nothing yet (the
        // 0.9 ms before the first request do not count again).
        let start = Instant::now();
        let mut limit = RateLimit::new(1000);
        limit.refilled = start;
        assert_eq!(limit.available_at(start + Duration::from_micros(900)), 1000);
        limit.consume(1000);
        assert_eq!(limit.available_at(start + Duration::from_micros(1500)), 0);
        assert_eq!(limit.available_at(start + Duration::from_micros(2000)), 1);
    }

    #[test]
    fn sources_refuse_directories_and_empty_files() {
        let dir = std::env::temp_dir().join(format!("rng-source-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(matches!(
            EntropySource::open(&dir),
            Err(VirtioError::EntropySource { .. })
        ));
        let empty = dir.join("empty");
        std::fs::write(&empty, b"").unwrap();
        assert!(matches!(
            EntropySource::open(&empty),
            Err(VirtioError::EntropySource { .. })
        ));
        assert!(matches!(
            EntropySource::open(&dir.join("missing")),
            Err(VirtioError::OpenFile { .. })
        ));
        let small = dir.join("small");
        std::fs::write(&small, b"abc").unwrap();
        let mut source = EntropySource::open(&small).unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(source.read(&mut buf).unwrap(), 8);
        assert_eq!(&buf, b"abcabcab", "a regular file is read in a loop");
        let mut urandom = EntropySource::open(Path::new("/dev/urandom")).unwrap();
        assert!(!urandom.regular);
        let mut buf = [0u8; 64];
        assert!(urandom.read(&mut buf).unwrap() > 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
