//! QMP for the micro VM: the [`QmpHandler`] that carries commands to the machine, and the
//! server's set-up on the main event loop.
//!
//! Invariants:
//! - Every failure is a QMP error for the client; the VM keeps running.
//! - A node (`blockdev-add`) is opened, and its image locked, at once, so a bad file, an image
//!   another user holds or a bad engine is refused by `blockdev-add` itself. A node belongs to at most one device; `device_del` closes its file
//!   (draining in-flight requests first, on the device's thread) but keeps the node, reopened
//!   by the next `device_add`, until `blockdev-del`. The nodes belong to the machine's
//!   [`BlockDevices`], which closes them at shutdown.
//! - The handler holds the machine and its block devices weakly: the event loop that runs the
//!   server belongs to the machine, so a strong reference would be a cycle that keeps every
//!   device (and its thread) alive past shutdown.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use machine_manager::config::{CpuTopology, VmConfig};
use machine_manager::qmp::{
    BlockInfo, BlockStatsCounters, BlockStatsInfo, BlockdevAdd, CpuInfo, DeviceAdd, InsertedImage,
    QmpError, QmpEvent, QmpEventSender, QmpHandler, QmpServer, QmpServerError, ShutdownReason,
    VmRunState,
};
use util::aio::ThrottleConfig;

use crate::block_devices::{BlockDevices, Node, Occupant};
use crate::{MicroVm, VmExit, VmState};

/// How long the machine's last events may take to reach the client.
const EVENT_FLUSH: Duration = Duration::from_millis(200);

/// The machine as QMP sees it: weak references to what the machine owns.
pub struct MachineQmp {
    vm: Weak<MicroVm>,
    blocks: Weak<Mutex<BlockDevices>>,
}

impl MachineQmp {
    /// A handler for `vm` and its block devices.
    pub fn new(vm: &Arc<MicroVm>, blocks: &Arc<Mutex<BlockDevices>>) -> MachineQmp {
        MachineQmp {
            vm: Arc::downgrade(vm),
            blocks: Arc::downgrade(blocks),
        }
    }

    fn vm(&self) -> Result<Arc<MicroVm>, QmpError> {
        self.vm.upgrade().ok_or_else(ended)
    }

    /// Runs `f` on the machine's block devices, locked.
    fn with_blocks<R>(
        &self,
        f: impl FnOnce(&mut BlockDevices) -> Result<R, QmpError>,
    ) -> Result<R, QmpError> {
        let blocks = self.blocks.upgrade().ok_or_else(ended)?;
        let mut blocks = blocks.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut blocks)
    }
}

fn ended() -> QmpError {
    QmpError::Generic("the VM has ended".into())
}

impl QmpHandler for MachineQmp {
    fn stop(&mut self) -> Result<(), QmpError> {
        self.vm()?.pause().map_err(generic)
    }

    fn cont(&mut self) -> Result<(), QmpError> {
        self.vm()?.resume().map_err(generic)?;
        // Requests an error policy held (`werror=stop`) are submitted again.
        if let Some(blocks) = self.blocks.upgrade() {
            blocks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retry_held();
        }
        Ok(())
    }

    fn quit(&mut self) {
        if let Some(vm) = self.vm.upgrade() {
            vm.shutdown();
        }
    }

    fn system_reset(&mut self) {
        if let Some(vm) = self.vm.upgrade() {
            vm.request_exit(VmExit::HostReset);
        }
    }

    fn system_powerdown(&mut self) {
        if let Some(vm) = self.vm.upgrade() {
            vm.request_exit(VmExit::HostPowerdown);
        }
    }

    fn cpu_topology(&self) -> CpuTopology {
        self.vm
            .upgrade()
            .map_or(CpuTopology::flat(1), |vm| vm.cpu_topology())
    }

    fn query_status(&self) -> VmRunState {
        match self.vm.upgrade() {
            Some(vm) if vm.state() == VmState::Running => VmRunState::Running,
            Some(vm) if vm.paused_by_io_error() => VmRunState::IoError,
            _ => VmRunState::Paused,
        }
    }

    fn query_cpus(&self) -> Vec<CpuInfo> {
        let (count, threads) = self.vm.upgrade().map_or((0, Vec::new()), |vm| {
            (usize::from(vm.vcpu_count()), vm.vcpu_thread_ids())
        });
        (0..count)
            .map(|index| CpuInfo {
                index,
                current: index == 0,
                halted: false,
                thread_id: threads.get(index).copied().map_or(0, i64::from),
            })
            .collect()
    }

    fn blockdev_add(&mut self, args: BlockdevAdd) -> Result<(), QmpError> {
        self.with_blocks(|blocks| {
            if blocks.nodes.contains_key(&args.node_name) {
                return Err(QmpError::Generic(format!(
                    "node-name {} already exists",
                    args.node_name
                )));
            }
            let drive = args.drive_config();
            drive.validate().map_err(generic)?;
            let backend = blocks.open(&drive).map_err(generic)?;
            log::info!(
                "qmp: node {} opened: {} aio={} direct={}",
                drive.id,
                drive.path.display(),
                drive.aio,
                drive.direct
            );
            blocks.nodes.insert(
                args.node_name,
                Node {
                    drive,
                    backend: Some(backend),
                },
            );
            Ok(())
        })
    }

    fn blockdev_del(&mut self, node_name: &str) -> Result<(), QmpError> {
        self.with_blocks(|blocks| {
            if !blocks.nodes.contains_key(node_name) {
                return Err(QmpError::DeviceNotFound(format!(
                    "node-name {node_name} not found"
                )));
            }
            if blocks.node_in_use(node_name) {
                return Err(QmpError::Generic(format!(
                    "node-name {node_name} is in use by a device (device_del it first)"
                )));
            }
            blocks.nodes.remove(node_name);
            log::info!("qmp: node {node_name} deleted");
            Ok(())
        })
    }

    fn device_add(&mut self, args: DeviceAdd) -> Result<(), QmpError> {
        self.with_blocks(|blocks| {
            if blocks.find_device(&args.id).is_some() {
                return Err(QmpError::Generic(format!(
                    "device {} already exists",
                    args.id
                )));
            }
            if !blocks.nodes.contains_key(&args.drive) {
                return Err(QmpError::DeviceNotFound(format!(
                    "node-name {} not found",
                    args.drive
                )));
            }
            if blocks.node_in_use(&args.drive) {
                return Err(QmpError::Generic(format!(
                    "node-name {} is already in use by a device",
                    args.drive
                )));
            }
            let slot_count = blocks.slots().len();
            match blocks.slots().get(args.slot) {
                None => {
                    return Err(QmpError::Generic(format!(
                        "no block slot {} (slots 0..{})",
                        args.slot,
                        slot_count.saturating_sub(1)
                    )))
                }
                Some(slot) => {
                    if let Some(occupant) = &slot.occupant {
                        return Err(QmpError::Generic(format!(
                            "block slot {} is in use by device {}",
                            args.slot, occupant.device
                        )));
                    }
                    check_iothread(blocks, &slot.iothreads, &args)?;
                    check_num_queues(slot.iothreads.len(), &args)?;
                }
            }
            let node = blocks
                .nodes
                .get_mut(&args.drive)
                .ok_or_else(|| QmpError::DeviceNotFound(args.drive.clone()))?;
            // The device's serial (GET_ID) is given to the node's backend while the device
            // holds it; the node itself keeps its own (a later device_add without one sees it).
            if let Some(serial) = &args.serial {
                let mut drive = node.drive.clone();
                drive.serial = Some(serial.clone());
                drive.validate().map_err(generic)?;
            }
            let mut backend = match node.backend.take() {
                Some(backend) => backend,
                None => {
                    let drive = node.drive.clone();
                    blocks.open(&drive).map_err(generic)?
                }
            };
            if args.serial.is_some() {
                backend.set_serial(args.serial.clone());
            }
            let slot = blocks
                .slot_mut(args.slot)
                .ok_or_else(|| QmpError::Generic(format!("no block slot {}", args.slot)))?;
            slot.device
                .replace_backend(Some(backend))
                .map_err(generic)?;
            slot.occupant = Some(Occupant {
                device: args.id.clone(),
                node: args.drive.clone(),
            });
            log::info!(
                "qmp: device {} added in slot {} (node {}{}{}{})",
                args.id,
                args.slot,
                args.drive,
                args.serial
                    .as_ref()
                    .map(|s| format!(", serial {s}"))
                    .unwrap_or_default(),
                args.bus
                    .as_ref()
                    .map(|b| format!(", bus {b} (the one virtio-mmio bus)"))
                    .unwrap_or_default(),
                args.share_rw
                    .map(|on| format!(", share-rw={}", if on { "on" } else { "off" }))
                    .unwrap_or_default(),
            );
            Ok(())
        })
    }

    fn block_set_io_throttle(
        &mut self,
        id: &str,
        throttle: ThrottleConfig,
    ) -> Result<(), QmpError> {
        self.with_blocks(|blocks| {
            // QEMU's `id` names the device, its `device` the drive: either finds it.
            let slot = blocks
                .slots()
                .iter()
                .find(|s| {
                    s.occupant
                        .as_ref()
                        .is_some_and(|o| o.device == id || o.node == id)
                })
                .ok_or_else(|| QmpError::DeviceNotFound(format!("device {id} not found")))?;
            slot.device.set_throttle(throttle).map_err(generic)?;
            log::info!("qmp: device {id}: I/O limits changed");
            Ok(())
        })
    }

    fn query_block(&self) -> Vec<BlockInfo> {
        self.with_blocks(|blocks| {
            Ok(blocks
                .slots()
                .iter()
                .map(|slot| {
                    let occupant = slot.occupant.as_ref();
                    let inserted = slot.device.backend_config().map(|config| {
                        InsertedImage::raw(
                            config.path.clone(),
                            occupant.map(|o| o.node.clone()).unwrap_or_default(),
                            config.readonly,
                            config.direct,
                            config.aio,
                            config.detect_zeroes,
                            &config.throttle,
                            slot.device.capacity_sectors() * 512,
                        )
                    });
                    BlockInfo {
                        device: occupant.map(|o| o.node.clone()).unwrap_or_default(),
                        qdev: occupant
                            .map(|o| o.device.clone())
                            .unwrap_or_else(|| slot.device.id()),
                        locked: false,
                        removable: false,
                        kind: "unknown",
                        inserted,
                    }
                })
                .collect())
        })
        .unwrap_or_default()
    }

    fn query_blockstats(&self) -> Vec<BlockStatsInfo> {
        self.with_blocks(|blocks| {
            Ok(blocks
                .slots()
                .iter()
                .map(|slot| {
                    let occupant = slot.occupant.as_ref();
                    let s = slot.device.stats();
                    let node = occupant.map(|o| o.node.clone()).unwrap_or_default();
                    BlockStatsInfo {
                        device: node.clone(),
                        qdev: occupant
                            .map(|o| o.device.clone())
                            .unwrap_or_else(|| slot.device.id()),
                        node_name: node,
                        stats: BlockStatsCounters {
                            rd_bytes: s.rd_bytes,
                            wr_bytes: s.wr_bytes,
                            unmap_bytes: s.unmap_bytes,
                            rd_operations: s.rd_operations,
                            wr_operations: s.wr_operations,
                            flush_operations: s.flush_operations,
                            unmap_operations: s.unmap_operations,
                            rd_total_time_ns: s.rd_total_time_ns,
                            wr_total_time_ns: s.wr_total_time_ns,
                            flush_total_time_ns: s.flush_total_time_ns,
                            unmap_total_time_ns: s.unmap_total_time_ns,
                            failed_rd_operations: s.failed_rd_operations,
                            failed_wr_operations: s.failed_wr_operations,
                            failed_flush_operations: s.failed_flush_operations,
                            failed_unmap_operations: s.failed_unmap_operations,
                            account_failed: true,
                        },
                    }
                })
                .collect())
        })
        .unwrap_or_default()
    }

    fn device_del(&mut self, id: &str) -> Result<(), QmpError> {
        self.with_blocks(|blocks| {
            let slot = blocks
                .find_device(id)
                .ok_or_else(|| QmpError::DeviceNotFound(format!("device {id} not found")))?;
            slot.device.replace_backend(None).map_err(generic)?;
            slot.occupant = None;
            log::info!("qmp: device {id} removed from slot {}", slot.mmio.index);
            Ok(())
        })
    }
}

/// The QMP server of a running machine, for what happens after the VM ends.
pub struct QmpService {
    events: QmpEventSender,
}

impl QmpService {
    /// Listens on `config.qmp` (if given) with a [`MachineQmp`] for `vm` and `blocks`, served
    /// by the machine's main event loop.
    pub fn start(
        config: &VmConfig,
        vm: &Arc<MicroVm>,
        blocks: &Arc<Mutex<BlockDevices>>,
    ) -> Result<Option<QmpService>, QmpServerError> {
        let Some(path) = &config.qmp else {
            return Ok(None);
        };
        let handler: Arc<Mutex<dyn QmpHandler>> = Arc::new(Mutex::new(MachineQmp::new(vm, blocks)));
        let server = QmpServer::new(path, handler)?;
        let events = server.register(vm.event_loop())?;
        Ok(Some(QmpService { events }))
    }

    /// A sender of events to the connected client.
    pub fn events(&self) -> QmpEventSender {
        self.events.clone()
    }

    /// After [`MicroVm::run`]: tells a connected client why the VM ended, unless QMP itself
    /// asked for it (`quit` sent its `SHUTDOWN` already): `guest-shutdown` for a guest reboot
    /// or power-off, `host-signal` for SIGTERM, SIGINT or SIGHUP. Turns the main loop until the
    /// event has gone out, for at most a short delay.
    pub fn announce_exit(&self, vm: &MicroVm, exit: VmExit) {
        let reason = match exit {
            VmExit::GuestReset | VmExit::GuestShutdown => ShutdownReason::GuestShutdown,
            VmExit::Signal(_) => ShutdownReason::HostSignal,
            VmExit::HostQuit | VmExit::HostReset | VmExit::HostPowerdown => return,
        };
        self.events.send(QmpEvent::Shutdown(reason));
        let deadline = Instant::now() + EVENT_FLUSH;
        while self.events.pending() > 0 && Instant::now() < deadline {
            if let Err(e) = vm.event_loop().run_once(10) {
                log::warn!("qmp: cannot deliver the SHUTDOWN event: {e}");
                return;
            }
        }
    }
}

/// A `device_add` may name the iothread that serves its slot: it must exist, and be the one
/// the slot's queues were created on at start (a hot-plugged disk runs where its slot runs).
fn check_iothread(
    blocks: &BlockDevices,
    slot_iothreads: &[Option<String>],
    args: &DeviceAdd,
) -> Result<(), QmpError> {
    let Some(asked) = args.iothread.as_deref() else {
        return Ok(());
    };
    if blocks.iothread_loop(asked).is_none() {
        return Err(QmpError::Generic(format!(
            "no iothread {asked} (create it with -object iothread,id={asked})"
        )));
    }
    if slot_iothreads.iter().any(|t| t.as_deref() != Some(asked)) {
        let name = |t: &Option<String>| {
            t.as_ref()
                .map_or("the main loop".to_string(), |t| format!("iothread {t}"))
        };
        let runs_on = match slot_iothreads {
            [] | [None] => "the main loop".to_string(),
            [Some(t)] => format!("iothread {t}"),
            queues => format!(
                "{} (queue by queue)",
                queues.iter().map(name).collect::<Vec<_>>().join(", ")
            ),
        };
        return Err(QmpError::Generic(format!(
            "block slot {} is served by {runs_on}, fixed when the slot was created at start: \
             iothread {asked} cannot serve it",
            args.slot
        )));
    }
    Ok(())
}

/// A `device_add` may say how many queues the device has: it must be the number the slot
/// was created with at start (the guest's driver set the queues up when it found the slot).
fn check_num_queues(slot_queues: usize, args: &DeviceAdd) -> Result<(), QmpError> {
    match args.num_queues {
        Some(asked) if usize::from(asked) != slot_queues => Err(QmpError::Generic(format!(
            "block slot {} has {slot_queues} queue{}, fixed when the slot was created at start \
             (-device ...,num-queues=N): num-queues {asked} cannot be given to it",
            args.slot,
            if slot_queues == 1 { "" } else { "s" },
        ))),
        _ => Ok(()),
    }
}

fn generic(error: impl std::error::Error) -> QmpError {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    QmpError::Generic(message)
}
