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

use machine_manager::config::VmConfig;
use machine_manager::qmp::{
    BlockdevAdd, CpuInfo, DeviceAdd, QmpError, QmpEvent, QmpEventSender, QmpHandler, QmpServer,
    QmpServerError, ShutdownReason, VmRunState,
};

use crate::block_devices::{open_backend, BlockDevices, Node, Occupant};
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
            let backend = open_backend(&drive).map_err(generic)?;
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
                }
            }
            let node = blocks
                .nodes
                .get_mut(&args.drive)
                .ok_or_else(|| QmpError::DeviceNotFound(args.drive.clone()))?;
            let backend = match node.backend.take() {
                Some(backend) => backend,
                None => open_backend(&node.drive).map_err(generic)?,
            };
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
                "qmp: device {} added in slot {} (node {})",
                args.id,
                args.slot,
                args.drive
            );
            Ok(())
        })
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
            VmExit::HostQuit => return,
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
