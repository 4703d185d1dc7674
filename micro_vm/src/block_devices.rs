//! The machine's virtio-blk devices: the replaceable slots, boot-time drives, the nodes QMP
//! opened, iothreads, and the KVM wiring (ioeventfd per queue, irqfd per slot).
//!
//! ```text
//!  slot:   0        1        2        3       | 4 ...
//!          replaceable (always created)       | user devices beyond the first four
//!          boot-time drives fill them in order (first drive = slot 0 = /dev/vda)
//! ```
//!
//! Invariants:
//! - Every slot is a real virtio-blk device on virtio-mmio; an empty slot has capacity 0.
//! - Each queue's notify eventfd is a KVM ioeventfd at `base + QueueNotify` matching the
//!   queue index (4-byte write), so guest kicks never leave the kernel; the interrupt eventfd
//!   is a KVM irqfd on the slot's GSI.
//! - Every engine the command line uses is probed before any drive is opened, so an engine the
//!   kernel refuses is one start-up error naming it.
//! - Each queue of a device belongs to one event loop: the iothread `iothread-vq-mapping=`
//!   gives it (round robin), else the device's `iothread=`, else the machine's main loop; that
//!   thread alone runs the queue and its engine. A slot's queues and their threads are fixed
//!   when it is created: an empty slot has one queue on the main loop. An iothread installs
//!   the iothread seccomp filter before its loop runs, and every drive is opened through
//!   [`BlockDevices::open`], whose `aio=threads` workers install theirs before their first
//!   request (unless `-disable-seccomp`).
//! - [`BlockDevices::shutdown`] (also run on drop) shuts every device down on its own thread
//!   (in-flight requests answered, images flushed, backends closed there), then stops and joins
//!   the iothreads, then closes the nodes QMP opened. Call it from the main thread once the
//!   vCPUs are stopped.

use std::collections::HashMap;
use std::mem::ManuallyDrop;
use std::os::unix::io::{FromRawFd, RawFd};
use std::sync::{Arc, Mutex};

use device_model::virtio::mmio::reg::QUEUE_NOTIFY;
use device_model::virtio::{
    Block, BlockBackend, BlockBackendConfig, BlockHandle, BlockIoError, ErrorSink, VirtioDevice,
    VirtioError, VirtioMmio,
};
use kvm_ioctls::{IoEventAddress, VmFd};
use machine_manager::config::{DriveConfig, VmConfig};
use util::aio::{AioEngine, AioError, WorkerSetup};
use util::event_loop::{EventLoop, EventLoopError, EventLoopThread};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::seccomp::ThreadRole;
use crate::{MachineError, MicroVm, MmioSlot};

/// Slots created at boot whether or not a drive fills them (the hot-replace slots).
pub const REPLACEABLE_SLOTS: usize = 4;

/// Errors of setting the block devices up.
#[derive(Debug, thiserror::Error)]
pub enum BlockDevicesError {
    /// The kernel refuses an engine a drive asks for.
    #[error("drive {drive}: I/O engine check failed")]
    Probe {
        /// The first drive using the engine.
        drive: String,
        /// The cause (names the engine and the errno).
        #[source]
        source: AioError,
    },
    /// A drive could not be opened (missing file, read-only image, O_DIRECT refused...).
    #[error("cannot open drive {drive} ({})", path.display())]
    Open {
        /// The drive id.
        drive: String,
        /// The image path.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: VirtioError,
    },
    /// A device names a drive that does not exist (the parser normally catches this).
    #[error("device {device}: no drive {drive}")]
    UnknownDrive {
        /// The device id.
        device: String,
        /// The drive id.
        drive: String,
    },
    /// A device names an iothread that does not exist.
    #[error("device {device}: no iothread {iothread}")]
    UnknownIothread {
        /// The device id.
        device: String,
        /// The iothread id.
        iothread: String,
    },
    /// A device's queues could not be set up (an engine for each queue).
    #[error("cannot set up device {device}")]
    Device {
        /// The device id.
        device: String,
        /// The cause.
        #[source]
        source: VirtioError,
    },
    /// An iothread could not be started.
    #[error("cannot start iothread {id}")]
    Iothread {
        /// The iothread id.
        id: String,
        /// The cause.
        #[source]
        source: EventLoopError,
    },
    /// The virtio-mmio transport could not be built.
    #[error("block slot {slot}: cannot build the virtio-mmio transport")]
    Transport {
        /// The slot index.
        slot: usize,
        /// The cause.
        #[source]
        source: VirtioError,
    },
    /// An eventfd could not be created.
    #[error("block slot {slot}: cannot create the interrupt eventfd")]
    EventFd {
        /// The slot index.
        slot: usize,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// KVM refused an ioeventfd or an irqfd.
    #[error("block slot {slot}: cannot register the {what} with KVM")]
    Kvm {
        /// The slot index.
        slot: usize,
        /// `"queue notify ioeventfd"` or `"interrupt irqfd"`.
        what: &'static str,
        /// The cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Placing the device in a virtio-mmio slot failed.
    #[error(transparent)]
    Machine(#[from] MachineError),
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, BlockDevicesError>;

/// Who holds a slot: the device id and the drive (node) name behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Occupant {
    /// The device id (`-device id=` or QMP `device_add` `id`).
    pub device: String,
    /// The drive id or QMP node name.
    pub node: String,
}

/// One virtio-blk slot of the machine.
pub struct DeviceSlot {
    /// Where the slot sits (index, MMIO window, GSI).
    pub mmio: MmioSlot,
    /// The device's handle: hot-replace and shutdown, run on the device's thread.
    pub device: BlockHandle,
    /// The transport in front of the device (what the guest's MMIO accesses reach).
    pub transport: Arc<Mutex<VirtioMmio>>,
    /// The device in the slot, `None` when empty (capacity 0).
    pub occupant: Option<Occupant>,
    /// The iothread whose loop serves each of the slot's queues (`None`: the main loop), in
    /// queue order; fixed at start, as is the number of queues.
    pub iothreads: Vec<Option<String>>,
}

/// A `blockdev-add` node: its drive description and, while no device uses it, its open
/// backend (a device's backend is closed by `device_del`; the next `device_add` reopens it).
pub struct Node {
    /// How to open the drive.
    pub drive: DriveConfig,
    /// The open backend while no device holds it.
    pub backend: Option<BlockBackend>,
}

/// The machine's virtio-blk slots, the nodes QMP opened, and the iothreads serving devices.
pub struct BlockDevices {
    slots: Vec<DeviceSlot>,
    iothreads: Vec<(String, EventLoopThread)>,
    /// The nodes QMP opened (`blockdev-add`), by node name.
    pub nodes: HashMap<String, Node>,
    /// What every `aio=threads` worker of the machine's drives runs first (its seccomp
    /// filter, unless `-disable-seccomp`).
    workers: WorkerSetup,
    shut_down: bool,
}

impl BlockDevices {
    /// Probes the engines the drives use, starts the iothreads, opens every boot-time drive
    /// and puts [`REPLACEABLE_SLOTS`] (or more, one per device) virtio-blk devices into `vm`'s
    /// virtio-mmio slots, wired to KVM. Call before [`MicroVm::start`].
    pub fn attach(vm: &mut MicroVm, config: &VmConfig) -> Result<BlockDevices> {
        probe_engines(&config.drives)?;
        let mut devices = BlockDevices {
            slots: Vec::new(),
            iothreads: Vec::new(),
            nodes: HashMap::new(),
            workers: vm.worker_setup(),
            shut_down: false,
        };
        for iothread in &config.iothreads {
            let id = &iothread.id;
            let name = format!("iothread-{id}");
            let thread = match vm.sandbox().cloned() {
                None => EventLoopThread::spawn(&name),
                Some(sandbox) => EventLoopThread::spawn_with(&name, move || {
                    Ok(sandbox.install(ThreadRole::Iothread)?)
                }),
            }
            .map_err(|source| BlockDevicesError::Iothread {
                id: id.clone(),
                source,
            })?;
            thread.event_loop().set_poll_params(iothread.poll);
            log::info!(
                "iothread {id} started (poll-max-ns {}, poll-grow {}, poll-shrink {})",
                iothread.poll.max_ns,
                iothread.poll.grow,
                iothread.poll.shrink
            );
            devices.iothreads.push((id.clone(), thread));
        }
        let drives: HashMap<&str, &DriveConfig> =
            config.drives.iter().map(|d| (d.id.as_str(), d)).collect();
        let count = config.blk_devices.len().max(REPLACEABLE_SLOTS);
        for index in 0..count {
            let iothreads = config
                .blk_devices
                .get(index)
                .map_or(vec![None], |d| d.queue_iothreads());
            let (name, backend, occupant, event_loops) = match config.blk_devices.get(index) {
                None => (
                    format!("slot{index}"),
                    None,
                    None,
                    vec![vm.event_loop().clone()],
                ),
                Some(device) => {
                    let drive = drives.get(device.drive.as_str()).ok_or_else(|| {
                        BlockDevicesError::UnknownDrive {
                            device: device.id.clone(),
                            drive: device.drive.clone(),
                        }
                    })?;
                    let mut drive = (*drive).clone();
                    if device.serial.is_some() {
                        drive.serial = device.serial.clone();
                    }
                    let event_loops = iothreads
                        .iter()
                        .map(|iothread| match iothread {
                            None => Ok(vm.event_loop().clone()),
                            Some(id) => devices.iothread_loop(id).ok_or_else(|| {
                                BlockDevicesError::UnknownIothread {
                                    device: device.id.clone(),
                                    iothread: id.clone(),
                                }
                            }),
                        })
                        .collect::<Result<Vec<_>>>()?;
                    let occupant = Occupant {
                        device: device.id.clone(),
                        node: drive.id.clone(),
                    };
                    (
                        device.id.clone(),
                        Some(devices.open(&drive)?),
                        Some(occupant),
                        event_loops,
                    )
                }
            };
            let (mmio, device, transport) = add_block_device(vm, name, backend, event_loops)?;
            devices.slots.push(DeviceSlot {
                mmio,
                device,
                transport,
                occupant,
                iothreads,
            });
        }
        Ok(devices)
    }

    /// Opens `drive` for this machine (a boot-time drive, QMP `blockdev-add`, or a node
    /// `device_add` reopens): its `aio=threads` workers run under their seccomp filter.
    pub fn open(&self, drive: &DriveConfig) -> Result<BlockBackend> {
        open_backend(drive, &self.workers)
    }

    /// The slots, in index order.
    pub fn slots(&self) -> &[DeviceSlot] {
        &self.slots
    }

    /// The slot at `index`, if it exists.
    pub fn slot_mut(&mut self, index: usize) -> Option<&mut DeviceSlot> {
        self.slots.get_mut(index)
    }

    /// The slot holding device `id`.
    pub fn find_device(&mut self, id: &str) -> Option<&mut DeviceSlot> {
        self.slots
            .iter_mut()
            .find(|s| s.occupant.as_ref().is_some_and(|o| o.device == id))
    }

    /// Whether a device uses the drive or node `node`.
    pub fn node_in_use(&self, node: &str) -> bool {
        self.slots
            .iter()
            .any(|s| s.occupant.as_ref().is_some_and(|o| o.node == node))
    }

    /// The event loop of iothread `id`, while it runs.
    pub fn iothread_loop(&self, id: &str) -> Option<Arc<EventLoop>> {
        self.iothreads
            .iter()
            .find(|(name, _)| name == id)
            .map(|(_, thread)| thread.event_loop().clone())
    }

    /// Sends every device's failed requests to `sink`.
    pub fn set_error_sink(&self, sink: &ErrorSink) {
        for slot in &self.slots {
            slot.device.set_error_sink(sink.clone());
        }
    }

    /// Asks every device to submit again the requests an error policy held (QMP `cont`);
    /// does not wait.
    pub fn retry_held(&self) {
        for slot in &self.slots {
            slot.device.retry();
        }
    }

    /// Whether the device that reported `error` was asked to retry its held requests since
    /// (QMP `cont` came after the failure): the report must not pause the VM again.
    pub fn retried_since(&self, error: &BlockIoError) -> bool {
        self.slots
            .iter()
            .find(|s| s.device.id() == error.device)
            .is_some_and(|s| s.device.retried_since(error))
    }

    /// The node behind device `id`, if a device has that id.
    pub fn node_of(&self, device: &str) -> Option<&str> {
        self.slots
            .iter()
            .filter_map(|s| s.occupant.as_ref())
            .find(|o| o.device == device)
            .map(|o| o.node.as_str())
    }

    /// Shuts every device down on its own thread (answering in-flight requests, flushing and
    /// closing its image there), stops and joins the iothreads, and closes the nodes QMP
    /// opened. Runs once; later calls do nothing. Returns how many images failed to flush
    /// (each is logged).
    pub fn shutdown(&mut self) -> usize {
        if std::mem::replace(&mut self.shut_down, true) {
            return 0;
        }
        let mut failed = 0;
        for slot in &self.slots {
            if let Err(e) = slot.device.shutdown() {
                log::error!("block device {}: {e}", slot.device.id());
                failed += 1;
            }
        }
        for (id, thread) in &mut self.iothreads {
            thread.stop();
            log::info!("iothread {id} stopped");
        }
        self.nodes.clear();
        failed
    }
}

impl Drop for BlockDevices {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Checks once per engine that the kernel provides it, naming the first drive using it.
fn probe_engines(drives: &[DriveConfig]) -> Result<()> {
    let mut probed: Vec<AioEngine> = Vec::new();
    for drive in drives {
        if probed.contains(&drive.aio) {
            continue;
        }
        util::aio::probe(drive.aio).map_err(|source| BlockDevicesError::Probe {
            drive: drive.id.clone(),
            source,
        })?;
        probed.push(drive.aio);
    }
    Ok(())
}

/// How the device opens `drive` (its `-drive` or `blockdev-add` options); the workers of an
/// `aio=threads` engine run `workers` first.
pub fn backend_config(drive: &DriveConfig, workers: &WorkerSetup) -> BlockBackendConfig {
    BlockBackendConfig {
        path: drive.path.clone(),
        readonly: drive.readonly,
        direct: drive.direct,
        aio: drive.aio,
        serial: drive.serial.clone(),
        werror: drive.werror,
        rerror: drive.rerror,
        locking: drive.locking,
        discard: drive.discard,
        detect_zeroes: drive.detect_zeroes,
        throttle: drive.throttle,
        worker_setup: workers.clone(),
    }
}

/// Opens the file of `drive` with its engine, whose `aio=threads` workers run `workers` first
/// (the machine's drives are opened by [`BlockDevices::open`]).
pub fn open_backend(drive: &DriveConfig, workers: &WorkerSetup) -> Result<BlockBackend> {
    BlockBackend::open(&backend_config(drive, workers)).map_err(|source| BlockDevicesError::Open {
        drive: drive.id.clone(),
        path: drive.path.clone(),
        source,
    })
}

/// Builds one virtio-blk device behind virtio-mmio with a queue per event loop of
/// `event_loops`, puts it in the next slot of `vm` and binds its notify (one per queue) and
/// interrupt eventfds in KVM.
fn add_block_device(
    vm: &mut MicroVm,
    name: String,
    backend: Option<BlockBackend>,
    event_loops: Vec<Arc<EventLoop>>,
) -> Result<(MmioSlot, BlockHandle, Arc<Mutex<VirtioMmio>>)> {
    let index = vm.mmio_slots().len();
    let block = Block::with_queues(name.clone(), backend, event_loops).map_err(|source| {
        BlockDevicesError::Device {
            device: name,
            source,
        }
    })?;
    let handle = block.handle();
    let device: Arc<Mutex<dyn VirtioDevice>> = Arc::new(Mutex::new(block));
    let irq =
        Arc::new(
            EventFd::new(EFD_NONBLOCK).map_err(|source| BlockDevicesError::EventFd {
                slot: index,
                source,
            })?,
        );
    let mmio = VirtioMmio::new(device, vm.memory().clone(), irq.clone()).map_err(|source| {
        BlockDevicesError::Transport {
            slot: index,
            source,
        }
    })?;
    let notify = mmio.queue_notify_fds();
    let transport = Arc::new(Mutex::new(mmio));
    let slot = vm.add_mmio_device(transport.clone())?;
    for (queue, fd) in notify {
        register_notify(vm.vm_fd(), fd, slot.base + QUEUE_NOTIFY, queue).map_err(|source| {
            BlockDevicesError::Kvm {
                slot: slot.index,
                what: "queue notify ioeventfd",
                source,
            }
        })?;
    }
    vm.vm_fd()
        .register_irqfd(&irq, slot.gsi)
        .map_err(|source| BlockDevicesError::Kvm {
            slot: slot.index,
            what: "interrupt irqfd",
            source,
        })?;
    Ok((slot, handle, transport))
}

/// Makes a 4-byte guest write of `queue` at `address` signal the eventfd `fd` inside KVM.
pub(crate) fn register_notify(
    vm: &VmFd,
    fd: RawFd,
    address: u64,
    queue: u16,
) -> std::result::Result<(), kvm_ioctls::Error> {
    // SAFETY: `fd` is an open eventfd owned by the transport, which outlives this call; the
    // `ManuallyDrop` keeps this borrowed view from closing it.
    let borrowed = ManuallyDrop::new(unsafe { EventFd::from_raw_fd(fd) });
    vm.register_ioevent(&borrowed, &IoEventAddress::Mmio(address), u32::from(queue))
}
