//! virtio-blk: one request queue, a backend that can be replaced while the guest runs.
//!
//! - `backend.rs`: [`BlockBackend`], the open file and its engine, and what the host storage
//!   needs of a request ([`Alignment`]).
//! - `bounce.rs`: requests the storage cannot take as sent, through an aligned buffer
//!   (read-modify-write for partial blocks).
//! - `lock.rs`: the image locks (QEMU's protocol) a backend holds on its file.
//! - [`request`]: parsing a request from a descriptor chain (checks only, no I/O).
//! - `state.rs`: the device's running half, owned by its event-loop thread.
//! - `poll.rs`: what a polling event loop looks at (avail index, engine completions).
//!
//! ```text
//!  vCPU (transport)                   device's event-loop thread              main thread
//!  ────────────────                   ──────────────────────────              ───────────
//!  Block::activate ──post──────────►  BlockState::activate
//!  Block::reset ─────post──────────►  BlockState::reset ─► resets_done
//!  Block::read_config ◄── Published ◄── (capacity, features, generation)
//!                                      BlockState::replace_backend ◄─call── BlockHandle
//!                                      BlockState::shutdown        ◄─call── BlockHandle
//! ```
//!
//! Threads: the device's state and its engine belong to one event-loop thread (its iothread,
//! or the main loop), which alone touches them. A vCPU never waits for that thread: it posts
//! activation and reset as messages ([`EventLoop::post`]) and returns; what the transport
//! must show at once (configuration space, features, whether a reset has finished) comes
//! from [`Published`], which the device's thread updates. The main thread's
//! [`BlockHandle`] waits for the device's thread ([`EventLoop::call`]) to hot-replace the
//! backend or shut the device down; an iothread never waits for anyone.
//!
//! Hot-replace: [`BlockHandle::replace_backend`] drains the old backend's in-flight requests
//! and answers them, syncs it, installs the new one (or none: an empty slot is a device of
//! capacity 0), bumps the configuration generation and raises a configuration-change
//! interrupt. Feature bits cannot change under a running driver, so an empty slot offers
//! `DISCARD` and `WRITE_ZEROES`; a later backend whose engine lacks them answers `UNSUPP`,
//! and a read-only backend put in a slot negotiated read-write answers writes with `IOERR`.

mod backend;
mod bounce;
mod lock;
mod poll;
pub mod request;
mod state;
mod stats;
mod throttle;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use util::aio::{ErrorAction, ThrottleConfig};
use util::event_loop::EventLoop;

pub use backend::{Alignment, BlockBackend, BlockBackendConfig, ENGINE_DEPTH};
pub use lock::{lock_bytes, LockConflict};
use request::SECTOR_SIZE;
use state::{lock, BlockState, MAX_RANGE_SECTORS};
pub use stats::BlockStats;

use super::queue::{QueueError, SplitQueue};
use super::{
    feature, Activation, VirtioDevice, VirtioError, VIRTIO_F_RING_EVENT_IDX,
    VIRTIO_F_RING_INDIRECT_DESC, VIRTIO_F_VERSION_1, VIRTIO_ID_BLOCK,
};

/// Feature bit: `size_max` is valid.
pub const VIRTIO_BLK_F_SIZE_MAX: u32 = 1;
/// Feature bit: `seg_max` is valid.
pub const VIRTIO_BLK_F_SEG_MAX: u32 = 2;
/// Feature bit: the disk is read-only.
pub const VIRTIO_BLK_F_RO: u32 = 5;
/// Feature bit: `blk_size` is valid.
pub const VIRTIO_BLK_F_BLK_SIZE: u32 = 6;
/// Feature bit: the topology fields (physical block size, I/O sizes) are valid.
pub const VIRTIO_BLK_F_TOPOLOGY: u32 = 10;
/// Feature bit: flush is supported.
pub const VIRTIO_BLK_F_FLUSH: u32 = 9;
/// Feature bit: discard is supported.
pub const VIRTIO_BLK_F_DISCARD: u32 = 13;
/// Feature bit: write-zeroes is supported.
pub const VIRTIO_BLK_F_WRITE_ZEROES: u32 = 14;

/// Entries of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// The largest data segment the driver should build (`size_max`).
pub const SIZE_MAX: u32 = 1 << 20;
/// Bytes of the configuration space (`struct virtio_blk_config` up to `write_zeroes_may_unmap`).
pub const CONFIG_LEN: usize = 60;

/// Offsets of `struct virtio_blk_config` fields.
pub mod config {
    /// `capacity`: u64, in 512-byte sectors.
    pub const CAPACITY: usize = 0;
    /// `size_max`: u32.
    pub const SIZE_MAX: usize = 8;
    /// `seg_max`: u32.
    pub const SEG_MAX: usize = 12;
    /// `blk_size`: u32.
    pub const BLK_SIZE: usize = 20;
    /// `topology.physical_block_exp`: u8, log2 of physical blocks per logical block.
    pub const PHYSICAL_BLOCK_EXP: usize = 24;
    /// `topology.alignment_offset`: u8.
    pub const ALIGNMENT_OFFSET: usize = 25;
    /// `topology.min_io_size`: u16, in logical blocks.
    pub const MIN_IO_SIZE: usize = 26;
    /// `topology.opt_io_size`: u32, in logical blocks.
    pub const OPT_IO_SIZE: usize = 28;
    /// `num_queues`: u16.
    pub const NUM_QUEUES: usize = 34;
    /// `max_discard_sectors`: u32.
    pub const MAX_DISCARD_SECTORS: usize = 36;
    /// `max_discard_seg`: u32.
    pub const MAX_DISCARD_SEG: usize = 40;
    /// `discard_sector_alignment`: u32.
    pub const DISCARD_SECTOR_ALIGNMENT: usize = 44;
    /// `max_write_zeroes_sectors`: u32.
    pub const MAX_WRITE_ZEROES_SECTORS: usize = 48;
    /// `max_write_zeroes_seg`: u32.
    pub const MAX_WRITE_ZEROES_SEG: usize = 52;
    /// `write_zeroes_may_unmap`: u8.
    pub const WRITE_ZEROES_MAY_UNMAP: usize = 56;
}

/// What the device's thread publishes for the threads that may not touch its state: the
/// configuration space's contents and the feature bits that depend on the backend.
#[derive(Debug, Clone, Default)]
pub(super) struct Published {
    pub(super) backend: Option<BlockBackendConfig>,
    pub(super) capacity_sectors: u64,
    /// The logical block size the guest is told (`blk_size`).
    pub(super) block_size: u32,
    /// log2 of physical blocks per logical block (`topology.physical_block_exp`).
    pub(super) physical_block_exp: u8,
    pub(super) discard: bool,
    pub(super) write_zeroes: bool,
    pub(super) zeroes_may_unmap: bool,
    pub(super) config_generation: u32,
}

impl Published {
    fn of(backend: Option<&BlockBackend>, config_generation: u32) -> Published {
        let alignment = backend.map(BlockBackend::alignment);
        let block_size = alignment.map_or(SECTOR_SIZE, |a| a.guest_block_size());
        let physical = alignment.map_or(block_size, |a| a.physical.max(block_size));
        Published {
            backend: backend.map(|b| b.config().clone()),
            capacity_sectors: backend.map_or(0, BlockBackend::capacity_sectors),
            block_size: u32::try_from(block_size).unwrap_or(u32::MAX),
            physical_block_exp: (physical / block_size).max(1).ilog2() as u8,
            // An empty slot offers both: features cannot change under a running driver, and
            // the backend plugged in later decides what the requests do.
            discard: backend.is_none_or(BlockBackend::discards),
            write_zeroes: backend.is_none_or(BlockBackend::writes_zeroes),
            zeroes_may_unmap: backend.is_some_and(BlockBackend::zeroes_may_unmap),
            config_generation,
        }
    }
}

/// Which kind of request failed, as QMP's `BLOCK_IO_ERROR` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoOperation {
    /// A read.
    Read,
    /// A write, flush, discard or write-zeroes (they follow `werror=`).
    Write,
}

/// A request the engine failed, and what the device did with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockIoError {
    /// The device's id.
    pub device: String,
    /// Read or write.
    pub operation: IoOperation,
    /// What the device did: `Report`, `Ignore` or `Stop` (the request is kept until
    /// [`BlockHandle::retry`]).
    pub action: ErrorAction,
    /// The errno the request failed with.
    pub errno: i32,
    /// How many retries the device had made when the request failed: a `Stop` is out of date
    /// once a retry was asked for after it ([`BlockHandle::retried_since`]).
    pub retries_done: u64,
}

impl BlockIoError {
    /// Whether the host ran out of space.
    pub fn nospace(&self) -> bool {
        self.errno == libc::ENOSPC
    }

    /// The errno's text.
    pub fn reason(&self) -> String {
        std::io::Error::from_raw_os_error(self.errno).to_string()
    }
}

/// Where a device reports failed requests (the machine: QMP `BLOCK_IO_ERROR`, and pausing the
/// VM for `Stop`). Called on the device's thread: it must not wait for another thread.
pub type ErrorSink = Arc<dyn Fn(BlockIoError) + Send + Sync>;

/// Reports of `Report`/`Ignore` errors sent in full before they thin out to one in
/// `ERROR_REPORT_EVERY` (a guest can cause them repeatedly); `Stop` errors are always sent.
const ERROR_REPORTS_SENT: u64 = 16;
const ERROR_REPORT_EVERY: u64 = 1024;

/// The part of a device every thread may read: its id, what its thread published, the
/// resets asked for and finished, and where failed requests are reported.
pub(super) struct Shared {
    pub(super) id: String,
    published: Mutex<Published>,
    resets_asked: AtomicU64,
    resets_done: AtomicU64,
    error_sink: OnceLock<ErrorSink>,
    errors_reported: AtomicU64,
    /// Retries of held requests asked for ([`BlockHandle::retry`], any thread) and made (the
    /// device's thread): they tell a report of a held request from one that a retry already
    /// answers.
    retries_asked: AtomicU64,
    pub(super) retries_done: AtomicU64,
    pub(super) stats: stats::Stats,
}

impl Shared {
    pub(super) fn published(&self) -> MutexGuard<'_, Published> {
        self.published.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes what `backend` shows the driver, under a new configuration generation.
    pub(super) fn publish(&self, backend: Option<&BlockBackend>) {
        let mut published = self.published();
        *published = Published::of(backend, published.config_generation.wrapping_add(1));
    }

    /// Publishes the backend's changed configuration (I/O limits), which the guest does not
    /// see: no new configuration generation.
    pub(super) fn publish_config(&self, backend: &BlockBackend) {
        self.published().backend = Some(backend.config().clone());
    }

    /// Records that the reset numbered `n` has finished.
    pub(super) fn reset_done(&self, n: u64) {
        self.resets_done.store(n, Ordering::Release);
    }

    /// Tells the error sink (if any) that a request failed with `errno` and what was done.
    pub(super) fn report_error(&self, operation: IoOperation, action: ErrorAction, errno: i32) {
        let Some(sink) = self.error_sink.get() else {
            return;
        };
        if action != ErrorAction::Stop {
            let n = self.errors_reported.fetch_add(1, Ordering::Relaxed) + 1;
            if n > ERROR_REPORTS_SENT && !n.is_multiple_of(ERROR_REPORT_EVERY) {
                return;
            }
        }
        sink(BlockIoError {
            device: self.id.clone(),
            operation,
            action,
            errno,
            retries_done: self.retries_done.load(Ordering::Acquire),
        });
    }
}

/// A virtio-blk device, the half the transport drives; put it behind a transport with
/// `Arc<Mutex<Block>>`.
pub struct Block {
    shared: Arc<Shared>,
    state: Arc<Mutex<BlockState>>,
    event_loop: Arc<EventLoop>,
}

/// The owner's handle on a block device (the machine, for QMP hot-replace and shutdown).
/// Its calls wait for the device's thread: make them from the main thread, never from a
/// vCPU or an iothread.
#[derive(Clone)]
pub struct BlockHandle {
    shared: Arc<Shared>,
    state: Arc<Mutex<BlockState>>,
    event_loop: Arc<EventLoop>,
}

impl Block {
    /// A device named `id` (used in handler names and logs) owned by the thread of
    /// `event_loop`; `backend: None` makes an empty slot of capacity 0.
    pub fn new(id: String, backend: Option<BlockBackend>, event_loop: Arc<EventLoop>) -> Block {
        let shared = Arc::new(Shared {
            id: id.clone(),
            published: Mutex::new(Published::of(backend.as_ref(), 0)),
            resets_asked: AtomicU64::new(0),
            resets_done: AtomicU64::new(0),
            error_sink: OnceLock::new(),
            errors_reported: AtomicU64::new(0),
            retries_asked: AtomicU64::new(0),
            retries_done: AtomicU64::new(0),
            stats: stats::Stats::default(),
        });
        Block {
            state: BlockState::new(id, backend, shared.clone(), event_loop.clone()),
            shared,
            event_loop,
        }
    }

    /// The owner's handle (hot-replace, shutdown).
    pub fn handle(&self) -> BlockHandle {
        BlockHandle {
            shared: self.shared.clone(),
            state: self.state.clone(),
            event_loop: self.event_loop.clone(),
        }
    }

    /// Runs `f` on the device's state on its thread, without waiting.
    fn post(&self, f: impl FnOnce(&mut BlockState) + Send + 'static) {
        let state = self.state.clone();
        self.event_loop.post(move || f(&mut lock(&state)));
    }

    fn config_space(&self) -> [u8; CONFIG_LEN] {
        let published = self.shared.published();
        let mut space = [0u8; CONFIG_LEN];
        let mut put = |at: usize, bytes: &[u8]| space[at..at + bytes.len()].copy_from_slice(bytes);
        put(config::CAPACITY, &published.capacity_sectors.to_le_bytes());
        put(config::SIZE_MAX, &SIZE_MAX.to_le_bytes());
        put(config::SEG_MAX, &u32::from(QUEUE_SIZE - 2).to_le_bytes());
        put(config::BLK_SIZE, &published.block_size.to_le_bytes());
        put(config::PHYSICAL_BLOCK_EXP, &[published.physical_block_exp]);
        put(config::MIN_IO_SIZE, &1u16.to_le_bytes());
        put(config::NUM_QUEUES, &1u16.to_le_bytes());
        put(
            config::MAX_DISCARD_SECTORS,
            &MAX_RANGE_SECTORS.to_le_bytes(),
        );
        put(config::MAX_DISCARD_SEG, &1u32.to_le_bytes());
        let block_sectors = published.block_size / SECTOR_SIZE as u32;
        put(
            config::DISCARD_SECTOR_ALIGNMENT,
            &block_sectors.max(1).to_le_bytes(),
        );
        put(
            config::MAX_WRITE_ZEROES_SECTORS,
            &MAX_RANGE_SECTORS.to_le_bytes(),
        );
        put(config::MAX_WRITE_ZEROES_SEG, &1u32.to_le_bytes());
        put(
            config::WRITE_ZEROES_MAY_UNMAP,
            &[u8::from(published.zeroes_may_unmap)],
        );
        space
    }
}

impl BlockHandle {
    /// Runs `f` on the device's state on its thread and waits for the result (at once when
    /// called on that thread, or when no thread runs its loop).
    fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut BlockState) -> R + Send + 'static,
    ) -> Result<R, VirtioError> {
        let state = self.state.clone();
        self.event_loop
            .call(move || f(&mut lock(&state)))
            .map_err(VirtioError::EventLoop)
    }

    /// Puts `backend` into the slot (`None` empties it) while the VM runs: in-flight requests
    /// of the old backend are drained and answered first (no completed write is lost), the
    /// capacity in the configuration space changes and the driver gets a configuration-change
    /// interrupt. Returns once the device's thread has done it.
    pub fn replace_backend(&self, backend: Option<BlockBackend>) -> Result<(), VirtioError> {
        self.call(move |state| state.replace_backend(backend))?
    }

    /// Shuts the device down on its thread: answers every in-flight request, makes completed
    /// writes durable (`fdatasync`), closes the backend there and stops serving the queue. The
    /// device stays in place, answering nothing; returns the error of the final flush, if any.
    pub fn shutdown(&self) -> Result<(), VirtioError> {
        self.call(BlockState::shutdown)?
    }

    /// Sends the device's failed requests to `sink` from now on (set once; later calls are
    /// ignored).
    pub fn set_error_sink(&self, sink: ErrorSink) {
        let _ = self.shared.error_sink.set(sink);
    }

    /// Submits again the requests an error stopped (`werror=stop`, `rerror=stop`), without
    /// waiting: the machine calls it when the VM resumes (QMP `cont`).
    pub fn retry(&self) {
        self.shared.retries_asked.fetch_add(1, Ordering::AcqRel);
        let state = self.state.clone();
        self.event_loop.post(move || lock(&state).retry_held());
    }

    /// Whether a retry was asked for after `error` was reported: the request it held is (or
    /// will be) submitted again by that retry, so its `Stop` must not pause the VM again. A
    /// report can reach the machine's thread after the `cont` that retries its request.
    pub fn retried_since(&self, error: &BlockIoError) -> bool {
        self.shared.retries_asked.load(Ordering::Acquire) > error.retries_done
    }

    /// Changes the I/O limits of the current backend while the guest runs (QMP
    /// `block_set_io_throttle`); waits for the device's thread. Requests held back by the old
    /// limits are measured against the new ones.
    pub fn set_throttle(&self, throttle: ThrottleConfig) -> Result<(), VirtioError> {
        self.call(move |state| state.set_throttle(throttle))?
    }

    /// The device's I/O counters (QMP `query-blockstats`).
    pub fn stats(&self) -> BlockStats {
        self.shared.stats.snapshot()
    }

    /// The device's id.
    pub fn id(&self) -> String {
        self.shared.id.clone()
    }

    /// The current backend's configuration, `None` for an empty slot.
    pub fn backend_config(&self) -> Option<BlockBackendConfig> {
        self.shared.published().backend.clone()
    }

    /// The current capacity in sectors (0 for an empty slot).
    pub fn capacity_sectors(&self) -> u64 {
        self.shared.published().capacity_sectors
    }

    /// Requests the device has taken and not answered yet: in its engine, or held by an error
    /// policy for a retry (asks the device's thread).
    pub fn in_flight(&self) -> Result<usize, VirtioError> {
        self.call(|state| state.in_flight())
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE]
    }

    fn device_features(&self) -> u64 {
        let published = self.shared.published();
        let mut features = feature(VIRTIO_F_VERSION_1)
            | feature(VIRTIO_F_RING_INDIRECT_DESC)
            | feature(VIRTIO_F_RING_EVENT_IDX)
            | feature(VIRTIO_BLK_F_SIZE_MAX)
            | feature(VIRTIO_BLK_F_SEG_MAX)
            | feature(VIRTIO_BLK_F_BLK_SIZE)
            | feature(VIRTIO_BLK_F_TOPOLOGY)
            | feature(VIRTIO_BLK_F_FLUSH);
        if published.backend.as_ref().is_some_and(|b| b.readonly) {
            features |= feature(VIRTIO_BLK_F_RO);
        }
        if published.discard {
            features |= feature(VIRTIO_BLK_F_DISCARD);
        }
        if published.write_zeroes {
            features |= feature(VIRTIO_BLK_F_WRITE_ZEROES);
        }
        features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let space = self.config_space();
        data.fill(0);
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(CONFIG_LEN);
        let n = (CONFIG_LEN - start).min(data.len());
        data[..n].copy_from_slice(&space[start..start + n]);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        util::warn_ratelimited!(
            "virtio-blk: ignored {}-byte write to read-only config at {offset:#x}",
            data.len()
        );
    }

    fn config_generation(&self) -> u32 {
        self.shared.published().config_generation
    }

    fn activate(&mut self, activation: Activation) -> Result<(), VirtioError> {
        let Some((index, config, notify)) = activation.queues.into_iter().find(|(i, _, _)| *i == 0)
        else {
            return Err(VirtioError::Queue {
                index: 0,
                source: QueueError::BadSize {
                    size: 0,
                    max: QUEUE_SIZE,
                },
            });
        };
        let event_idx = activation.features & feature(VIRTIO_F_RING_EVENT_IDX) != 0;
        let queue = SplitQueue::new(&config, &activation.mem, event_idx)
            .map_err(|source| VirtioError::Queue { index, source })?;
        let (mem, interrupt, features) =
            (activation.mem, activation.interrupt, activation.features);
        self.post(move |state| {
            if let Err(e) = state.activate(queue, mem, interrupt.clone(), notify, features) {
                util::error_ratelimited!("virtio-blk {}: activation failed: {e}", state.id());
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
