//! The micro VM: builds the machine from its configuration and runs it.
//!
//! ```text
//!  VmConfig ─► MicroVm::new ─► (add_mmio_device ...) ─► boot() ─► run() ─► VmExit
//!               KVM VM, RAM,     virtio-mmio slots,      kernel,     vCPU threads +
//!               PIT/PIC/IOAPIC,  GSI 5.. each            cmdline,    the main event loop
//!               serial, i8042                            vCPUs
//! ```
//!
//! - [`machine`]: the [`MicroVm`] and its lifecycle (`pause`, `resume`, `shutdown`, `state`).
//! - [`stdio`]: the console's host side: stdin in raw mode feeding the UART.
//! - [`process`]: `-daemonize` and `-pidfile`.
//! - [`signals`]: SIGTERM/SIGINT/SIGHUP end the VM in order.
//! - [`seccomp`]: the system-call filter of each thread role, and the SIGSYS line.
//! - [`block_devices`]: the virtio-blk slots, boot-time drives, iothreads, KVM wiring.
//! - [`rng_devices`]: the virtio-rng devices (after the block slots).
//! - [`qmp_handler`]: QMP commands carried to the machine.
//! - [`vmm`]: the [`Vmm`], owner of the VM, its block devices and QMP, and the shutdown path.

#![deny(missing_docs)]

pub mod block_devices;
pub mod machine;
pub mod process;
pub mod qmp_handler;
pub mod rng_devices;
pub mod seccomp;
pub mod signals;
pub mod stdio;
pub mod vmm;

use std::path::PathBuf;

pub use machine::{MicroVm, MmioSlot, VmExit, VmState};
pub use vmm::{Vmm, VmmError};

/// Errors of building and running the micro VM.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// Only the `microvm` machine type exists.
    #[error("unsupported machine type {0:?} (only \"microvm\" is supported)")]
    MachineType(String),
    /// No `-kernel` was given.
    #[error("no kernel given (use -kernel FILE)")]
    NoKernel,
    /// A topology whose vCPU count is not the configuration's (the parser never makes one).
    #[error("{cpus} vCPUs cannot be arranged as {topology:?}")]
    Topology {
        /// The vCPU count.
        cpus: u8,
        /// The topology.
        topology: machine_manager::config::CpuTopology,
    },
    /// `/dev/kvm` could not be opened.
    #[error("cannot open /dev/kvm")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// `KVM_CREATE_VM` failed.
    #[error("cannot create the KVM VM")]
    CreateVm(#[source] kvm_ioctls::Error),
    /// A KVM VM set-up ioctl failed.
    #[error("cannot set up the VM: {step}")]
    VmSetup {
        /// The step (ioctl) that failed.
        step: &'static str,
        /// The cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Guest RAM could not be created.
    #[error("cannot create {size} bytes of guest RAM")]
    GuestMemory {
        /// Requested RAM size.
        size: u64,
        /// The cause.
        #[source]
        source: address_space::AddressSpaceError,
    },
    /// A device range could not be put on a bus.
    #[error("cannot map device {device}")]
    Bus {
        /// The device.
        device: &'static str,
        /// The cause.
        #[source]
        source: address_space::AddressSpaceError,
    },
    /// An eventfd could not be created.
    #[error("cannot create an eventfd for {0}")]
    EventFd(&'static str, #[source] std::io::Error),
    /// Binding an eventfd to a guest interrupt failed.
    #[error("cannot bind the interrupt of {device} to GSI {gsi}")]
    Irqfd {
        /// The device.
        device: String,
        /// The guest interrupt line.
        gsi: u32,
        /// The cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Every virtio-mmio slot is taken.
    #[error("too many virtio-mmio devices (at most {0})")]
    TooManyMmioDevices(usize),
    /// The event loop failed.
    #[error("event loop")]
    EventLoop(#[from] util::event_loop::EventLoopError),
    /// Loading the kernel failed.
    #[error("cannot load the kernel")]
    Boot(#[from] boot_loader::BootError),
    /// Setting up or running a vCPU failed.
    #[error(transparent)]
    Cpu(#[from] cpu::CpuError),
    /// A lifecycle request that the VM's state does not allow.
    #[error("the VM is {state:?}: cannot {request}")]
    BadState {
        /// The current state.
        state: VmState,
        /// What was asked.
        request: &'static str,
    },
    /// The seccomp filters could not be built or installed.
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    /// Setting up the termination signals failed.
    #[error("cannot watch termination signals: {step}")]
    Signals {
        /// The step that failed.
        step: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The terminal could not be put in raw mode.
    #[error("cannot put the terminal in raw mode")]
    Terminal(#[source] std::io::Error),
    /// `-daemonize` failed.
    #[error("cannot daemonize: {step}")]
    Daemonize {
        /// The step that failed.
        step: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The pid file could not be written.
    #[error("cannot write the pid file {}", path.display())]
    PidFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The pid file is locked by a running VMM.
    #[error("pid file {} is held by a running VMM ({})", path.display(), held_by(*pid))]
    PidFileHeld {
        /// The file.
        path: PathBuf,
        /// The pid written in it, if it holds one yet.
        pid: Option<u32>,
    },
    /// The pid file's path names a symbolic link (never followed) or something else that is
    /// not a regular file.
    #[error("pid file {} is a {kind}: it must be a regular file (symbolic links are not followed)", path.display())]
    PidFileKind {
        /// The file.
        path: PathBuf,
        /// What the path names.
        kind: util::file::FileKind,
    },
}

fn held_by(pid: Option<u32>) -> String {
    match pid {
        Some(pid) => format!("pid {pid}"),
        None => "its pid is not written yet".to_string(),
    }
}

/// Result of this crate.
pub type Result<T> = std::result::Result<T, MachineError>;
