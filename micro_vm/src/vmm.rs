//! The VMM around one micro VM: it owns the VM, its block devices (with their iothreads and
//! the nodes QMP opened) and the QMP service, and it is the one place where they end.
//!
//! ```text
//!  Vmm::new    MicroVm (KVM, RAM, main loop) ─► BlockDevices (slots, iothreads) ─► virtio-rng
//!              devices (main loop; they go with the VM) ─► QMP server
//!  Vmm::start  vCPUs run
//!  Vmm::run    main loop until the first exit reason (QMP quit, system_reset or
//!              system_powerdown, guest reboot, SIGTERM/SIGINT/SIGHUP, a failed vCPU), then the
//!              shutdown path:
//!                1. stop and join the vCPUs (no more guest requests)
//!                2. tell a QMP client why (SHUTDOWN event)
//!                3. shut every block device down on its own thread: answer in-flight
//!                   requests, fdatasync every writable image, close the backends there
//!                4. stop and join the iothreads
//!                5. drop guest RAM (the VM)
//!                6. drop the main loop's handlers: the QMP socket file goes away
//! ```
//!
//! Invariants:
//! - Only the `Vmm` holds the VM and the block devices strongly; QMP's handler and the event
//!   loops' handlers hold weak references, so nothing keeps a device or a thread alive past
//!   step 5.
//! - The shutdown path runs once, whether `run` returns normally, with an error, or the `Vmm`
//!   is dropped after a failed start.

use std::sync::{Arc, Mutex, Weak};

use device_model::virtio::{BlockIoError, ErrorSink, IoOperation};
use machine_manager::config::VmConfig;
use machine_manager::qmp::{QmpEvent, QmpEventSender};
use util::aio::ErrorAction;
use util::event_loop::EventLoop;

use crate::block_devices::{BlockDevices, BlockDevicesError};
use crate::qmp_handler::QmpService;
use crate::rng_devices::RngDevicesError;
use crate::{MachineError, MicroVm, VmExit};

/// Errors of building and running the VMM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// The machine could not be built, started or run.
    #[error(transparent)]
    Machine(#[from] MachineError),
    /// The block devices could not be set up.
    #[error(transparent)]
    Block(#[from] BlockDevicesError),
    /// The entropy devices could not be set up.
    #[error(transparent)]
    Rng(#[from] RngDevicesError),
    /// The QMP socket could not be set up.
    #[error(transparent)]
    Qmp(#[from] machine_manager::qmp::QmpServerError),
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, VmmError>;

/// The micro VM with everything it owns.
pub struct Vmm {
    vm: Option<Arc<MicroVm>>,
    blocks: Option<Arc<Mutex<BlockDevices>>>,
    qmp: Option<QmpService>,
    main_loop: Arc<EventLoop>,
}

impl Vmm {
    /// Builds the VM of `config`, its block devices and iothreads, and its QMP socket.
    pub fn new(config: &VmConfig) -> Result<Vmm> {
        let mut vm = MicroVm::new(config)?;
        let blocks = BlockDevices::attach(&mut vm, config)?;
        crate::rng_devices::attach(&mut vm, config)?;
        let main_loop = vm.event_loop().clone();
        let vm = Arc::new(vm);
        let blocks = Arc::new(Mutex::new(blocks));
        let mut vmm = Vmm {
            vm: Some(vm.clone()),
            blocks: Some(blocks.clone()),
            qmp: None,
            main_loop,
        };
        vmm.qmp = QmpService::start(config, &vm, &blocks)?;
        let sink = block_error_sink(
            &vmm.main_loop,
            &vm,
            &blocks,
            vmm.qmp.as_ref().map(QmpService::events),
        );
        blocks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set_error_sink(&sink);
        Ok(vmm)
    }

    /// The VM (until the shutdown path drops it).
    pub fn vm(&self) -> Option<&Arc<MicroVm>> {
        self.vm.as_ref()
    }

    /// The block devices (until the shutdown path drops them).
    pub fn blocks(&self) -> Option<&Arc<Mutex<BlockDevices>>> {
        self.blocks.as_ref()
    }

    /// Starts the vCPUs (or leaves them paused with `-S`).
    pub fn start(&self) -> Result<()> {
        match &self.vm {
            Some(vm) => Ok(vm.start()?),
            None => Ok(()),
        }
    }

    /// Runs the VM until it ends, then shuts everything down in order (see the module
    /// documentation); returns why it ended.
    pub fn run(mut self) -> Result<VmExit> {
        let Some(vm) = self.vm.clone() else {
            return Ok(VmExit::HostQuit);
        };
        let exit = vm.run().map_err(VmmError::from);
        drop(vm);
        if let (Ok(exit), Some(qmp), Some(vm)) = (&exit, &self.qmp, &self.vm) {
            qmp.announce_exit(vm, *exit);
        }
        self.shutdown();
        exit
    }

    /// Steps 1 and 3 to 6 of the shutdown path; runs once.
    fn shutdown(&mut self) {
        let Some(vm) = self.vm.take() else {
            return;
        };
        vm.stop_vcpus();
        if let Some(blocks) = self.blocks.take() {
            let failed = blocks.lock().unwrap_or_else(|e| e.into_inner()).shutdown();
            if failed > 0 {
                log::error!("{failed} images could not be flushed");
            }
            if Arc::strong_count(&blocks) > 1 {
                log::error!("block devices are still referenced after shutdown");
            }
        }
        if Arc::strong_count(&vm) > 1 {
            log::error!("the VM is still referenced after shutdown");
        }
        drop(vm);
        self.qmp = None;
        self.main_loop.clear();
        log::info!("shutdown complete");
    }
}

/// Where the block devices report failed requests. Called on a device's thread, it only posts
/// the report to the main loop, which sends QMP `BLOCK_IO_ERROR` and, for `stop`, pauses the
/// VM (`STOP`); QMP `cont` resumes it and the devices retry what they held.
fn block_error_sink(
    main_loop: &Arc<EventLoop>,
    vm: &Arc<MicroVm>,
    blocks: &Arc<Mutex<BlockDevices>>,
    events: Option<QmpEventSender>,
) -> ErrorSink {
    let main_loop = Arc::downgrade(main_loop);
    let vm = Arc::downgrade(vm);
    let blocks = Arc::downgrade(blocks);
    Arc::new(move |error: BlockIoError| {
        let Some(main_loop) = main_loop.upgrade() else {
            return;
        };
        let (vm, blocks, events) = (vm.clone(), blocks.clone(), events.clone());
        main_loop.post(move || on_block_error(&error, &vm, &blocks, events.as_ref()));
    })
}

/// Handles one failed block request on the main thread.
fn on_block_error(
    error: &BlockIoError,
    vm: &Weak<MicroVm>,
    blocks: &Weak<Mutex<BlockDevices>>,
    events: Option<&QmpEventSender>,
) {
    let (node, retried) = blocks
        .upgrade()
        .map(|b| {
            let blocks = b.lock().unwrap_or_else(|e| e.into_inner());
            let node = blocks
                .node_of(&error.device)
                .unwrap_or_default()
                .to_string();
            (node, blocks.retried_since(error))
        })
        .unwrap_or_default();
    let operation = match error.operation {
        IoOperation::Read => "read",
        IoOperation::Write => "write",
    };
    let reason = error.reason();
    log::error!(
        "block device {} (node {node}): {operation} failed: {reason}; action {}",
        error.device,
        error.action
    );
    if let Some(events) = events {
        events.send(QmpEvent::BlockIoError {
            device: error.device.clone(),
            node_name: node,
            operation,
            action: error.action.as_str(),
            nospace: error.nospace(),
            reason,
        });
    }
    // A `cont` that came after the failure already retries the request: pausing now would
    // stop a VM whose requests are all answered.
    if error.action != ErrorAction::Stop || retried {
        return;
    }
    let Some(vm) = vm.upgrade() else {
        return;
    };
    match vm.pause_for_io_error() {
        Ok(true) => {
            log::error!("VM paused by a block I/O error; QMP cont resumes it and retries");
            if let Some(events) = events {
                events.send(QmpEvent::Stop);
            }
        }
        Ok(false) => {}
        Err(e) => log::error!("cannot pause the VM after a block I/O error: {e}"),
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        self.shutdown();
    }
}
