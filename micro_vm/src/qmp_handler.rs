//! QMP for the micro VM: the [`QmpHandler`] that carries commands to the machine, and the
//! server's set-up on the main event loop.
//!
//! Invariants:
//! - Every failure is a QMP error for the client; the VM keeps running.
//! - A node (`blockdev-add`) is opened at once, so a bad file or engine is refused by
//!   `blockdev-add` itself. A node belongs to at most one device; `device_del` closes its file
//!   (draining in-flight requests first) but keeps the node, reopened by the next
//!   `device_add`, until `blockdev-del`.
//! - The handler holds the machine weakly: the event loop that runs the server belongs to
//!   the machine, so a strong reference would be a cycle.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use device_model::virtio::BlockBackend;
use machine_manager::config::{DriveConfig, VmConfig};
use machine_manager::qmp::{
    BlockdevAdd, CpuInfo, DeviceAdd, QmpError, QmpEvent, QmpEventSender, QmpHandler, QmpServer,
    QmpServerError, ShutdownReason, VmRunState,
};

use crate::block_devices::{open_backend, BlockDevices, Occupant};
use crate::{MicroVm, VmExit, VmState};

/// How long the `SHUTDOWN` event of a guest reboot may take to reach the client.
const GUEST_SHUTDOWN_FLUSH: Duration = Duration::from_millis(200);

/// A `blockdev-add` node: its drive description and, while not closed, its open backend.
struct Node {
    drive: DriveConfig,
    backend: Option<BlockBackend>,
}

/// The machine as QMP sees it.
pub struct MachineQmp {
    vm: Weak<MicroVm>,
    blocks: Arc<Mutex<BlockDevices>>,
    nodes: HashMap<String, Node>,
}

impl MachineQmp {
    /// A handler for `vm` and its block slots.
    pub fn new(vm: &Arc<MicroVm>, blocks: Arc<Mutex<BlockDevices>>) -> MachineQmp {
        MachineQmp {
            vm: Arc::downgrade(vm),
            blocks,
            nodes: HashMap::new(),
        }
    }

    fn vm(&self) -> Result<Arc<MicroVm>, QmpError> {
        self.vm
            .upgrade()
            .ok_or_else(|| QmpError::Generic("the VM has ended".into()))
    }

    fn lock_blocks(&self) -> MutexGuard<'_, BlockDevices> {
        self.blocks.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl QmpHandler for MachineQmp {
    fn stop(&mut self) -> Result<(), QmpError> {
        self.vm()?.pause().map_err(generic)
    }

    fn cont(&mut self) -> Result<(), QmpError> {
        self.vm()?.resume().map_err(generic)
    }

    fn quit(&mut self) {
        if let Some(vm) = self.vm.upgrade() {
            vm.shutdown();
        }
    }

    fn query_status(&self) -> VmRunState {
        match self.vm.upgrade().map(|vm| vm.state()) {
            Some(VmState::Running) => VmRunState::Running,
            _ => VmRunState::Paused,
        }
    }

    fn query_cpus(&self) -> Vec<CpuInfo> {
        let count = self
            .vm
            .upgrade()
            .map_or(0, |vm| usize::from(vm.vcpu_count()));
        let threads = vcpu_thread_ids();
        (0..count)
            .map(|index| CpuInfo {
                index,
                current: index == 0,
                halted: false,
                thread_id: threads.get(&index).copied().unwrap_or(0),
            })
            .collect()
    }

    fn blockdev_add(&mut self, args: BlockdevAdd) -> Result<(), QmpError> {
        if self.nodes.contains_key(&args.node_name) {
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
        self.nodes.insert(
            args.node_name,
            Node {
                drive,
                backend: Some(backend),
            },
        );
        Ok(())
    }

    fn blockdev_del(&mut self, node_name: &str) -> Result<(), QmpError> {
        if !self.nodes.contains_key(node_name) {
            return Err(QmpError::DeviceNotFound(format!(
                "node-name {node_name} not found"
            )));
        }
        if self.lock_blocks().node_in_use(node_name) {
            return Err(QmpError::Generic(format!(
                "node-name {node_name} is in use by a device (device_del it first)"
            )));
        }
        self.nodes.remove(node_name);
        log::info!("qmp: node {node_name} deleted");
        Ok(())
    }

    fn device_add(&mut self, args: DeviceAdd) -> Result<(), QmpError> {
        let mut blocks = self.blocks.lock().unwrap_or_else(|e| e.into_inner());
        if blocks.find_device(&args.id).is_some() {
            return Err(QmpError::Generic(format!(
                "device {} already exists",
                args.id
            )));
        }
        let node = self.nodes.get_mut(&args.drive).ok_or_else(|| {
            QmpError::DeviceNotFound(format!("node-name {} not found", args.drive))
        })?;
        if blocks.node_in_use(&args.drive) {
            return Err(QmpError::Generic(format!(
                "node-name {} is already in use by a device",
                args.drive
            )));
        }
        let slot_count = blocks.slots().len();
        let slot = blocks.slot_mut(args.slot).ok_or_else(|| {
            QmpError::Generic(format!(
                "no block slot {} (slots 0..{})",
                args.slot,
                slot_count.saturating_sub(1)
            ))
        })?;
        if let Some(occupant) = &slot.occupant {
            return Err(QmpError::Generic(format!(
                "block slot {} is in use by device {}",
                args.slot, occupant.device
            )));
        }
        let backend = match node.backend.take() {
            Some(backend) => backend,
            None => open_backend(&node.drive).map_err(generic)?,
        };
        slot.slot.replace_backend(Some(backend)).map_err(generic)?;
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
    }

    fn device_del(&mut self, id: &str) -> Result<(), QmpError> {
        let mut blocks = self.lock_blocks();
        let slot = blocks
            .find_device(id)
            .ok_or_else(|| QmpError::DeviceNotFound(format!("device {id} not found")))?;
        slot.slot.replace_backend(None).map_err(generic)?;
        slot.occupant = None;
        log::info!("qmp: device {id} removed from slot {}", slot.mmio.index);
        Ok(())
    }
}

/// The QMP server of a running machine, for what happens after the VM ends.
pub struct QmpService {
    events: QmpEventSender,
}

impl QmpService {
    /// Listens on `config.qmp` (if given) with a [`MachineQmp`] for `vm`, served by the
    /// machine's main event loop.
    pub fn start(
        config: &VmConfig,
        vm: &Arc<MicroVm>,
        blocks: Arc<Mutex<BlockDevices>>,
    ) -> Result<Option<QmpService>, QmpServerError> {
        let Some(path) = &config.qmp else {
            return Ok(None);
        };
        let handler: Arc<Mutex<dyn QmpHandler>> = Arc::new(Mutex::new(MachineQmp::new(vm, blocks)));
        let server = QmpServer::new(path, handler)?;
        let events = server.register(vm.event_loop())?;
        Ok(Some(QmpService { events }))
    }

    /// After [`MicroVm::run`]: tells a connected client that the guest ended the VM
    /// (`SHUTDOWN`, `guest-shutdown`), best effort within a short delay.
    pub fn announce_exit(&self, vm: &MicroVm, exit: VmExit) {
        if !matches!(exit, VmExit::GuestReset | VmExit::GuestShutdown) {
            return;
        }
        self.events
            .send(QmpEvent::Shutdown(ShutdownReason::GuestShutdown));
        let deadline = Instant::now() + GUEST_SHUTDOWN_FLUSH;
        while Instant::now() < deadline {
            if let Err(e) = vm.event_loop().run_once(20) {
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

/// Host thread ids of the vCPU threads (named `vcpuN`), by index, from `/proc/self/task`.
fn vcpu_thread_ids() -> HashMap<usize, i64> {
    let mut ids = HashMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return ids;
    };
    for task in tasks.flatten() {
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<i64>().ok())
        else {
            continue;
        };
        let Ok(comm) = std::fs::read_to_string(task.path().join("comm")) else {
            continue;
        };
        if let Some(index) = comm
            .trim()
            .strip_prefix("vcpu")
            .and_then(|i| i.parse::<usize>().ok())
        {
            ids.insert(index, tid);
        }
    }
    ids
}
