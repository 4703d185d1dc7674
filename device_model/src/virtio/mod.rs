//! Virtio 1.x over virtio-mmio (version 2), and the virtio-blk device.
//!
//! - [`queue`]: the split virtqueue (descriptor chains, indirect tables, `VIRTIO_F_EVENT_IDX`).
//! - [`mmio`]: the virtio-mmio register file ([`VirtioMmio`]), its status state machine and reset.
//! - [`block`]: virtio-blk ([`Block`]) with a replaceable backend ([`BlockBackend`]) whose
//!   engine (`aio=off|threads|native|io_uring`) is picked per drive.
//! - [`rng`]: virtio-rng ([`Rng`]), entropy read from a host file ([`EntropySource`]), built
//!   in the same two halves as virtio-blk.
//! - [`driver`]: the guest's half of virtio played in-process, for tests and benchmarks.
//!
//! # Threads
//!
//! ```text
//!  vCPU thread                   device's event-loop thread (iothread or main loop)  main thread
//!  ───────────                   ──────────────────────────────────────────────────  ───────────
//!  MMIO exit                     "<id>-queue0" notify fd ─┐                           QMP
//!    │                           "<id>-aio" engine fd ────┤                            │
//!    ▼                           messages (posted) ───────┤                            ▼
//!  Mutex<VirtioMmio>                                       ▼                       BlockHandle
//!   (register file) ──► Block ──post──────────────►  BlockState  ◄──call (waits)──  replace,
//!                        │  activate, reset           (queue, in-flight table,       shutdown
//!                        │                             backend + engine)
//!                        └◄── Published (config space, features, reset done)
//!  KVM ioeventfd ──write──► notify EventFd       │
//!  irqfd ◄──write── Interrupt::signal_* ◄────────┘
//! ```
//!
//! Invariants:
//! - A device's running state and its engine belong to one event-loop thread, which alone
//!   touches them; a block device with several queues has one such state and engine per
//!   queue, each on the thread its queue was given, and only device-wide state (configuration,
//!   counters, the file, the I/O limits) shared between them. A vCPU sends those threads
//!   messages and returns without waiting; the main thread may wait for an iothread
//!   (hot-replace, shutdown); an iothread waits for nobody.
//! - The transport shows what the device published: configuration space, feature bits and
//!   whether a reset has finished (the status register reads 0 only then).
//! - The guest's queue is only touched on the device's thread: requests are popped, parsed,
//!   submitted and completed there, so hot-replace and shutdown see a quiescent queue once
//!   they run and have drained the engine.
//! - A request is in flight from its submission until its completion was written to the used
//!   ring; the head descriptor index is its engine tag, and a head already in flight that the
//!   guest offers again is a guest error (the device then needs a reset).
//! - Guest data never panics the VMM: structural queue errors mark the device
//!   `DEVICE_NEEDS_RESET`; request errors end as `VIRTIO_BLK_S_IOERR` or `VIRTIO_BLK_S_UNSUPP`.
//! - All fields shared with the guest are little-endian (this VMM is x86_64 only).

pub mod block;
pub mod driver;
pub mod mmio;
pub mod queue;
pub mod rng;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};

use address_space::GuestMemory;
use util::event_loop::{Handler, HandlerAction};
use vmm_sys_util::eventfd::EventFd;

pub use block::{
    Block, BlockBackend, BlockBackendConfig, BlockHandle, BlockIoError, ErrorSink, IoOperation,
};
pub use mmio::VirtioMmio;
pub use queue::QueueConfig;
pub use rng::{EntropySource, Rng, RngHandle};

/// Device type of a block device.
pub const VIRTIO_ID_BLOCK: u32 = 2;

/// Feature bit: the driver may use indirect descriptor tables.
pub const VIRTIO_F_RING_INDIRECT_DESC: u32 = 28;
/// Feature bit: `used_event` / `avail_event` notification suppression.
pub const VIRTIO_F_RING_EVENT_IDX: u32 = 29;
/// Feature bit: compliance with virtio 1.x (mandatory for virtio-mmio version 2).
pub const VIRTIO_F_VERSION_1: u32 = 32;

/// Device status bit: the guest found the device.
pub const STATUS_ACKNOWLEDGE: u32 = 1;
/// Device status bit: the guest has a driver for it.
pub const STATUS_DRIVER: u32 = 2;
/// Device status bit: the driver is ready to drive the device.
pub const STATUS_DRIVER_OK: u32 = 4;
/// Device status bit: feature negotiation is complete.
pub const STATUS_FEATURES_OK: u32 = 8;
/// Device status bit: the device hit an error only a reset recovers from.
pub const STATUS_DEVICE_NEEDS_RESET: u32 = 64;
/// Device status bit: the driver gave up on the device.
pub const STATUS_FAILED: u32 = 128;

/// Interrupt status bit: a used ring was updated.
pub const INTERRUPT_VRING: u32 = 1;
/// Interrupt status bit: the configuration space changed.
pub const INTERRUPT_CONFIG: u32 = 2;

/// The bit of feature number `bit`.
pub const fn feature(bit: u32) -> u64 {
    1 << bit
}

/// An event-loop handler that runs `on_event` on a device's state while the device lives and
/// removes itself once it is gone. `clear` (a notify eventfd) is read first: an empty one
/// reads `EAGAIN`, which leaves nothing to clear.
fn device_handler<T: Send + 'static>(
    state: Weak<Mutex<T>>,
    clear: Option<Arc<EventFd>>,
    on_event: fn(&mut T),
) -> Handler {
    Box::new(move |_| {
        if let Some(fd) = &clear {
            let _ = fd.read();
        }
        match state.upgrade() {
            Some(state) => {
                on_event(&mut state.lock().unwrap_or_else(|e| e.into_inner()));
                HandlerAction::Keep
            }
            None => HandlerAction::Remove,
        }
    })
}

/// Errors of the virtio devices and transport.
#[derive(Debug, thiserror::Error)]
pub enum VirtioError {
    /// Opening a drive's file failed.
    #[error("cannot open drive file {path:?}")]
    OpenFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A drive's path names something other than a regular file or a block device (checked
    /// without opening it for I/O).
    #[error(
        "{} is a {kind}: only regular files and block devices can be disk images",
        path.display()
    )]
    NotAnImage {
        /// The path.
        path: PathBuf,
        /// What it names.
        kind: util::file::FileKind,
    },
    /// Another user (process or drive) holds the image in a way this drive cannot share.
    #[error("image {} is locked: {conflict}", path.display())]
    ImageLocked {
        /// The image.
        path: PathBuf,
        /// Who holds it, and how.
        conflict: block::LockConflict,
    },
    /// The image could not be locked (`file.locking=on` on a file system without OFD locks,
    /// or an unexpected error of the lock call).
    #[error("cannot lock image {} (file.locking={locking})", path.display())]
    Lock {
        /// The image.
        path: PathBuf,
        /// The locking mode asked for.
        locking: util::file::Locking,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Finding the size of a drive's file failed.
    #[error("cannot find the size of drive file {path:?}")]
    FileSize {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `aio=native` was asked for with `direct=off`.
    #[error(
        "drive {path:?}: aio=native needs direct=on (Linux AIO is synchronous on buffered files)"
    )]
    NativeNeedsDirect {
        /// The file.
        path: PathBuf,
    },
    /// Setting up the drive's engine failed.
    #[error("drive {path:?}: cannot set up aio={engine}")]
    Engine {
        /// The file.
        path: PathBuf,
        /// The engine.
        engine: util::aio::AioEngine,
        /// The cause.
        #[source]
        source: util::aio::AioError,
    },
    /// Making a drive's completed writes durable (`fdatasync`) failed.
    #[error("cannot flush drive file {path:?}")]
    Flush {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An earlier flush of the drive failed, so its data may be lost whatever a new
    /// `fdatasync` says.
    #[error("drive file {path:?}: an earlier flush failed; data written before it may be lost")]
    FlushFailedBefore {
        /// The file.
        path: PathBuf,
    },
    /// The device has no backend (an empty slot).
    #[error("block device {id} has no backend")]
    NoBackend {
        /// The device.
        id: String,
    },
    /// A device asked for with no request queue, or more than it may have.
    #[error("{count} request queues asked for: a device has 1 to {max}")]
    QueueCount {
        /// The number asked for.
        count: usize,
        /// The most allowed.
        max: u16,
    },
    /// The device was shut down and takes no more backends.
    #[error("block device {id} is shut down")]
    ShutDown {
        /// The device.
        id: String,
    },
    /// Creating an eventfd failed.
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
    /// Creating a timer (I/O limits) failed.
    #[error("cannot create a timer")]
    Timer(#[source] std::io::Error),
    /// Registering a handler in the event loop failed.
    #[error("cannot register a handler in the event loop")]
    EventLoop(#[source] util::event_loop::EventLoopError),
    /// The guest set a queue up badly.
    #[error("queue {index} is unusable")]
    Queue {
        /// The queue index.
        index: usize,
        /// The cause.
        #[source]
        source: queue::QueueError,
    },
    /// An entropy file (`-object rng-random,filename=`) that cannot serve.
    #[error("entropy source {path:?}: {reason}")]
    EntropySource {
        /// The file.
        path: PathBuf,
        /// Why it cannot serve.
        reason: &'static str,
    },
}

/// Everything a device needs to start serving its queues (the driver set `DRIVER_OK`).
pub struct Activation {
    /// Guest RAM.
    pub mem: Arc<GuestMemory>,
    /// The device's interrupt line.
    pub interrupt: Arc<Interrupt>,
    /// The features both sides agreed on.
    pub features: u64,
    /// For each queue the driver made ready: its index, configuration and notify eventfd.
    pub queues: Vec<(usize, QueueConfig, Arc<EventFd>)>,
}

/// A virtio device behind a transport.
pub trait VirtioDevice: Send {
    /// The virtio device type (2 for block).
    fn device_type(&self) -> u32;
    /// The maximum size of each of the device's queues.
    fn queue_max_sizes(&self) -> Vec<u16>;
    /// The feature bits the device offers.
    fn device_features(&self) -> u64;
    /// Reads the device-specific configuration space at `offset`; bytes past its end read 0.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// The driver writes the configuration space (ignored where read-only).
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Changes whenever the configuration space changes (the `ConfigGeneration` register).
    fn config_generation(&self) -> u32;
    /// Starts serving the queues. Called on a vCPU thread: a device with a thread of its own
    /// checks what it can at once and finishes the work there, without waiting.
    fn activate(&mut self, activation: Activation) -> Result<(), VirtioError>;
    /// Stops serving the queues and forgets in-flight work; the device is then as new. Called
    /// on a vCPU thread, it may return before the device has finished: see
    /// [`VirtioDevice::reset_pending`].
    fn reset(&mut self);
    /// Whether a reset asked for has not finished yet (the status register reads non-zero
    /// until then, as the virtio spec allows).
    fn reset_pending(&self) -> bool {
        false
    }
}

/// A device's interrupt line: the `InterruptStatus` bits, the irqfd that injects them, and
/// the device-side `DEVICE_NEEDS_RESET` flag. Shared by the transport and the device.
pub struct Interrupt {
    irq: Arc<EventFd>,
    status: AtomicU32,
    needs_reset: AtomicBool,
}

impl Interrupt {
    /// An interrupt line injected by writing `irq` (KVM's irqfd).
    pub fn new(irq: Arc<EventFd>) -> Interrupt {
        Interrupt {
            irq,
            status: AtomicU32::new(0),
            needs_reset: AtomicBool::new(false),
        }
    }

    /// Tells the driver that a used ring changed.
    pub fn signal_used_queue(&self) {
        self.raise(INTERRUPT_VRING);
    }

    /// Tells the driver that the configuration space (or the device status) changed.
    pub fn signal_config_change(&self) {
        self.raise(INTERRUPT_CONFIG);
    }

    /// Marks the device as needing a reset and tells the driver.
    pub fn set_needs_reset(&self) {
        self.needs_reset.store(true, Ordering::SeqCst);
        self.signal_config_change();
    }

    /// Withdraws `DEVICE_NEEDS_RESET` (the device was reset since it was raised).
    pub fn clear_needs_reset(&self) {
        self.needs_reset.store(false, Ordering::SeqCst);
    }

    /// Whether the device needs a reset.
    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    /// The `InterruptStatus` register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// The driver acknowledges the interrupt bits in `bits`.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Clears every bit and flag (device reset).
    pub fn reset(&self) {
        self.status.store(0, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
    }

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        if let Err(e) = self.irq.write(1) {
            util::error_ratelimited!("virtio: cannot inject an interrupt: {e}");
        }
    }
}
