//! virtio-blk: one request queue, a backend that can be replaced while the guest runs.
//!
//! - `backend.rs`: [`BlockBackend`], the open file and its engine.
//! - [`request`]: parsing a request from a descriptor chain (checks only, no I/O).
//! - `state.rs`: the queue and completion handlers that run on the device's event loop.
//!
//! Threads: the engine is used only on the device's event-loop thread (an io_uring ring may
//! accept system calls from one thread only), so activation, reset and hot-replace, asked for
//! on a vCPU or the QMP thread, run there through [`EventLoop::call`].
//!
//! Hot-replace: [`BlockSlot::replace_backend`] (any thread) drains the old backend's in-flight
//! requests and answers them, syncs it, installs the new one (or none: an empty slot is a
//! device of capacity 0), bumps the configuration generation and raises a configuration-change
//! interrupt. Feature bits cannot change under a running driver, so an empty slot offers
//! `DISCARD` and `WRITE_ZEROES`; a later backend whose engine lacks them answers `UNSUPP`,
//! and a read-only backend put in a slot negotiated read-write answers writes with `IOERR`.

mod backend;
pub mod request;
mod state;

use std::sync::{Arc, Mutex};

use util::aio::AioOpcode;
use util::event_loop::EventLoop;

pub use backend::{BlockBackend, BlockBackendConfig, ENGINE_DEPTH};
use request::SECTOR_SIZE;
use state::{lock, on_loop, BlockState, MAX_RANGE_SECTORS};

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

/// A virtio-blk device; put it behind a transport with `Arc<Mutex<Block>>`.
pub struct Block {
    state: Arc<Mutex<BlockState>>,
}

/// A handle on a block device's backend, usable from any thread (QMP hot-replace).
#[derive(Clone)]
pub struct BlockSlot {
    state: Arc<Mutex<BlockState>>,
}

impl Block {
    /// A device named `id` (used in handler names and logs) whose queue is served by
    /// `event_loop`; `backend: None` makes an empty slot of capacity 0.
    pub fn new(id: String, backend: Option<BlockBackend>, event_loop: Arc<EventLoop>) -> Block {
        Block {
            state: BlockState::new(id, backend, event_loop),
        }
    }

    /// A handle for replacing the backend while the guest runs.
    pub fn slot(&self) -> BlockSlot {
        BlockSlot {
            state: self.state.clone(),
        }
    }

    /// Same as [`BlockSlot::replace_backend`].
    pub fn replace_backend(&self, backend: Option<BlockBackend>) -> Result<(), VirtioError> {
        self.slot().replace_backend(backend)
    }

    fn config_space(&self) -> [u8; CONFIG_LEN] {
        let state = lock(&self.state);
        let capacity = state.backend.as_ref().map_or(0, |b| b.capacity_sectors());
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

impl BlockSlot {
    /// Puts `backend` into the slot (`None` empties it), callable while the VM runs: in-flight
    /// requests of the old backend are drained and answered first (no completed write is
    /// lost), the capacity in the configuration space changes and the driver gets a
    /// configuration-change interrupt.
    pub fn replace_backend(&self, backend: Option<BlockBackend>) -> Result<(), VirtioError> {
        on_loop(&self.state, move |state| state.replace_backend(backend))?
    }

    /// The device's id.
    pub fn id(&self) -> String {
        lock(&self.state).id.clone()
    }

    /// The current backend's configuration, `None` for an empty slot.
    pub fn backend_config(&self) -> Option<BlockBackendConfig> {
        lock(&self.state)
            .backend
            .as_ref()
            .map(|b| b.config().clone())
    }

    /// The current capacity in sectors (0 for an empty slot).
    pub fn capacity_sectors(&self) -> u64 {
        lock(&self.state)
            .backend
            .as_ref()
            .map_or(0, |b| b.capacity_sectors())
    }

    /// Requests the engine owns right now.
    pub fn in_flight(&self) -> usize {
        lock(&self.state).in_flight()
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
        let state = lock(&self.state);
        let backend = state.backend.as_ref();
        let mut features = feature(VIRTIO_F_VERSION_1)
            | feature(VIRTIO_F_RING_INDIRECT_DESC)
            | feature(VIRTIO_F_RING_EVENT_IDX)
            | feature(VIRTIO_BLK_F_SIZE_MAX)
            | feature(VIRTIO_BLK_F_SEG_MAX)
            | feature(VIRTIO_BLK_F_BLK_SIZE)
            | feature(VIRTIO_BLK_F_FLUSH);
        if backend.is_some_and(|b| b.config().readonly) {
            features |= feature(VIRTIO_BLK_F_RO);
        }
        if backend.is_none_or(|b| b.supports(AioOpcode::Discard)) {
            features |= feature(VIRTIO_BLK_F_DISCARD);
        }
        if backend.is_none_or(|b| b.supports(AioOpcode::WriteZeroes)) {
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
        log::warn!(
            "virtio-blk: ignored {}-byte write to read-only config at {offset:#x}",
            data.len()
        );
    }

    fn config_generation(&self) -> u32 {
        lock(&self.state).config_generation
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
        on_loop(&self.state, move |state| {
            if state.is_active() {
                state.deactivate();
            }
            state.activate(queue, mem, interrupt, notify, features)
        })?
    }

    fn reset(&mut self) {
        if let Err(e) = on_loop(&self.state, BlockState::deactivate) {
            log::error!("virtio-blk: reset: {e}");
        }
    }
}
