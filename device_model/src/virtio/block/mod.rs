//! virtio-blk: one request queue, a backend that can be replaced while the guest runs.
//!
//! - `backend.rs`: [`BlockBackend`], the open file and its engine.
//! - [`request`]: parsing a request from a descriptor chain (checks only, no I/O).
//! - `state.rs`: the device's running half, owned by its event-loop thread.
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
pub mod request;
mod state;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use util::aio::AioOpcode;
use util::event_loop::EventLoop;

pub use backend::{BlockBackend, BlockBackendConfig, ENGINE_DEPTH};
use request::SECTOR_SIZE;
use state::{lock, BlockState, MAX_RANGE_SECTORS};

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
}

/// What the device's thread publishes for the threads that may not touch its state: the
/// configuration space's contents and the feature bits that depend on the backend.
#[derive(Debug, Clone, Default)]
pub(super) struct Published {
    pub(super) backend: Option<BlockBackendConfig>,
    pub(super) capacity_sectors: u64,
    pub(super) discard: bool,
    pub(super) write_zeroes: bool,
    pub(super) config_generation: u32,
}

impl Published {
    fn of(backend: Option<&BlockBackend>, config_generation: u32) -> Published {
        Published {
            backend: backend.map(|b| b.config().clone()),
            capacity_sectors: backend.map_or(0, BlockBackend::capacity_sectors),
            discard: backend.is_none_or(|b| b.supports(AioOpcode::Discard)),
            write_zeroes: backend.is_none_or(|b| b.supports(AioOpcode::WriteZeroes)),
            config_generation,
        }
    }
}

/// The part of a device every thread may read: its id, what its thread published, and the
/// resets asked for and finished.
pub(super) struct Shared {
    pub(super) id: String,
    published: Mutex<Published>,
    resets_asked: AtomicU64,
    resets_done: AtomicU64,
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

    /// Records that the reset numbered `n` has finished.
    pub(super) fn reset_done(&self, n: u64) {
        self.resets_done.store(n, Ordering::Release);
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
        let capacity = self.shared.published().capacity_sectors;
        let mut space = [0u8; CONFIG_LEN];
        let mut put = |at: usize, bytes: &[u8]| space[at..at + bytes.len()].copy_from_slice(bytes);
        put(config::CAPACITY, &capacity.to_le_bytes());
        put(config::SIZE_MAX, &SIZE_MAX.to_le_bytes());
        put(config::SEG_MAX, &u32::from(QUEUE_SIZE - 2).to_le_bytes());
        put(config::BLK_SIZE, &(SECTOR_SIZE as u32).to_le_bytes());
        put(config::NUM_QUEUES, &1u16.to_le_bytes());
        put(
            config::MAX_DISCARD_SECTORS,
            &MAX_RANGE_SECTORS.to_le_bytes(),
        );
        put(config::MAX_DISCARD_SEG, &1u32.to_le_bytes());
        put(config::DISCARD_SECTOR_ALIGNMENT, &1u32.to_le_bytes());
        put(
            config::MAX_WRITE_ZEROES_SECTORS,
            &MAX_RANGE_SECTORS.to_le_bytes(),
        );
        put(config::MAX_WRITE_ZEROES_SEG, &1u32.to_le_bytes());
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

    /// Requests the engine owns right now (asks the device's thread).
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
