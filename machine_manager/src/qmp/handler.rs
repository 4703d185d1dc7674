//! What the machine implements so that QMP commands reach it: [`QmpHandler`].
//!
//! The server parses and checks every request before calling the handler, so a handler only
//! sees well-formed, typed arguments ([`BlockdevAdd`], [`DeviceAdd`]). Machine rules (a slot
//! index out of range, `aio=native` with `direct=off`, an unknown node name) stay in the
//! handler and come back as a [`QmpError`], which the server turns into the reply's `error`.

use serde::Serialize;

use util::aio::ThrottleConfig;

use super::block::{BlockInfo, BlockStatsInfo};
use super::commands::{BlockdevAdd, DeviceAdd};
use crate::config::{CpuTopology, MAX_CPUS};

/// A failed command, as the client sees it: an error class and a human-readable description.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QmpError {
    /// Class `GenericError`: the command exists but could not be carried out.
    #[error("{0}")]
    Generic(String),
    /// Class `CommandNotFound`: no such command (or not available before negotiation).
    #[error("{0}")]
    CommandNotFound(String),
    /// Class `DeviceNotFound`: the device or node named in the arguments does not exist.
    #[error("{0}")]
    DeviceNotFound(String),
}

impl QmpError {
    /// The QMP error class name (`GenericError`, `CommandNotFound`, `DeviceNotFound`).
    pub fn class(&self) -> &'static str {
        match self {
            QmpError::Generic(_) => "GenericError",
            QmpError::CommandNotFound(_) => "CommandNotFound",
            QmpError::DeviceNotFound(_) => "DeviceNotFound",
        }
    }

    /// The description sent to the client.
    pub fn desc(&self) -> &str {
        match self {
            QmpError::Generic(desc)
            | QmpError::CommandNotFound(desc)
            | QmpError::DeviceNotFound(desc) => desc,
        }
    }
}

/// Whether the guest's vCPUs run, as reported by `query-status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmRunState {
    /// The vCPUs run (`"status":"running"`).
    Running,
    /// The vCPUs are paused by `stop` or `-S` (`"status":"paused"`).
    Paused,
    /// The vCPUs are paused because a block request failed with `werror=stop`/`rerror=stop`
    /// (`"status":"io-error"`, as QEMU); `cont` retries the request.
    IoError,
}

/// One vCPU as reported by `query-cpus`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuInfo {
    /// The vCPU index, 0-based.
    pub index: usize,
    /// Whether this is the "current" CPU of the monitor (QEMU reports `true` for CPU 0).
    pub current: bool,
    /// Whether the vCPU is halted (e.g. after a guest `hlt` with interrupts off).
    pub halted: bool,
    /// The host thread id (`gettid`) of the vCPU thread.
    pub thread_id: i64,
}

/// The machine side of QMP. The server calls these from its event-loop thread, one at a time.
///
/// Events: the server itself emits `STOP` after a successful [`QmpHandler::stop`], `RESUME`
/// after [`QmpHandler::cont`], `SHUTDOWN` (`host-qmp-quit`) before [`QmpHandler::quit`],
/// `SHUTDOWN` (`host-qmp-system-reset`) before [`QmpHandler::system_reset`], `POWERDOWN` and
/// `SHUTDOWN` (`host-qmp-quit`) before [`QmpHandler::system_powerdown`], and
/// `DEVICE_DELETED` after [`QmpHandler::device_del`]. The machine emits only what happens
/// without a command (e.g. `SHUTDOWN` with reason `guest-shutdown`) through a
/// [`super::QmpEventSender`].
pub trait QmpHandler: Send {
    /// Pauses the vCPUs; a [`QmpError::Generic`] if they are already paused.
    fn stop(&mut self) -> Result<(), QmpError>;
    /// Resumes the vCPUs; a [`QmpError::Generic`] if they are already running.
    fn cont(&mut self) -> Result<(), QmpError>;
    /// Ends the VM. Called after the `{"return":{}}` reply and the `SHUTDOWN` event were
    /// written (flushed, with a short timeout if the client does not read).
    fn quit(&mut self);
    /// Whether the vCPUs run.
    fn query_status(&self) -> VmRunState;
    /// The vCPUs, in index order.
    fn query_cpus(&self) -> Vec<CpuInfo>;
    /// Opens a block backend (`blockdev-add`); the machine checks `aio=native` needs direct I/O.
    fn blockdev_add(&mut self, args: BlockdevAdd) -> Result<(), QmpError>;
    /// Closes a block backend that no device uses (`blockdev-del`).
    fn blockdev_del(&mut self, node_name: &str) -> Result<(), QmpError>;
    /// Puts a backend into the virtio-blk slot `args.slot` (`device_add`).
    fn device_add(&mut self, args: DeviceAdd) -> Result<(), QmpError>;
    /// Empties the slot holding device `id` (`device_del`); [`QmpError::DeviceNotFound`] if
    /// no device has that id.
    fn device_del(&mut self, id: &str) -> Result<(), QmpError>;
    /// Changes the I/O limits of device `id` (`block_set_io_throttle`).
    fn block_set_io_throttle(&mut self, id: &str, throttle: ThrottleConfig)
        -> Result<(), QmpError>;
    /// The block devices (`query-block`).
    fn query_block(&self) -> Vec<BlockInfo>;
    /// The block devices' I/O counters (`query-blockstats`).
    fn query_blockstats(&self) -> Vec<BlockStatsInfo>;
    /// `system_reset`: a micro VM does not reboot, it ends (as StratoVirt's micro VM). Called
    /// like [`QmpHandler::quit`], after the reply and the `SHUTDOWN` event were written. By
    /// default it is [`QmpHandler::quit`].
    fn system_reset(&mut self) {
        self.quit();
    }
    /// `system_powerdown`: with no ACPI for the guest to act on, the micro VM ends (as
    /// StratoVirt's micro VM). Called like [`QmpHandler::quit`]. By default it is
    /// [`QmpHandler::quit`].
    fn system_powerdown(&mut self) {
        self.quit();
    }
    /// How the vCPUs are arranged, for `query-hotpluggable-cpus`. By default one socket of
    /// single-thread cores, one per vCPU of [`QmpHandler::query_cpus`].
    fn cpu_topology(&self) -> CpuTopology {
        CpuTopology::flat(u8::try_from(self.query_cpus().len()).unwrap_or(MAX_CPUS))
    }
}

/// `{"name": ...}`, an element of the `query-commands` and `query-events` lists.
#[derive(Debug, Serialize)]
pub(crate) struct NameInfo {
    pub(crate) name: &'static str,
}

/// The `query-target` return value.
#[derive(Debug, Serialize)]
pub(crate) struct TargetInfo {
    pub(crate) arch: &'static str,
}

/// The `query-kvm` return value.
#[derive(Debug, Serialize)]
pub(crate) struct KvmInfo {
    pub(crate) enabled: bool,
    pub(crate) present: bool,
}

/// One machine type in the `query-machines` list, in StratoVirt's member order.
#[derive(Debug, Serialize)]
pub(crate) struct MachineInfo {
    #[serde(rename = "hotpluggable-cpus")]
    pub(crate) hotpluggable_cpus: bool,
    pub(crate) name: &'static str,
    #[serde(rename = "numa-mem-supported")]
    pub(crate) numa_mem_supported: bool,
    #[serde(rename = "cpu-max")]
    pub(crate) cpu_max: u8,
    pub(crate) deprecated: bool,
}

/// Where a vCPU sits, as `query-hotpluggable-cpus` reports it (StratoVirt's x86 members).
#[derive(Debug, Serialize)]
pub(crate) struct CpuProps {
    #[serde(rename = "socket-id")]
    socket_id: usize,
    die_id: usize,
    #[serde(rename = "thread-id")]
    thread_id: usize,
    #[serde(rename = "core-id")]
    core_id: usize,
}

/// One element of the `query-hotpluggable-cpus` list: every vCPU is present (no vCPU
/// hot-plug), so each has its `qom-path`.
#[derive(Debug, Serialize)]
pub(crate) struct HotpluggableCpuReply {
    #[serde(rename = "type")]
    cpu_type: &'static str,
    #[serde(rename = "vcpus-count")]
    vcpus_count: usize,
    props: CpuProps,
    #[serde(rename = "qom-path")]
    qom_path: String,
}

/// The `query-hotpluggable-cpus` list for `topology`, vCPU `i` at socket
/// `i / (cores * threads)`, core `(i / threads) % cores`, thread `i % threads`.
pub(crate) fn hotpluggable_cpus(topology: CpuTopology) -> Vec<HotpluggableCpuReply> {
    let threads = usize::from(topology.threads.max(1));
    let cores = usize::from(topology.cores.max(1));
    let count = usize::from(topology.sockets) * cores * threads;
    (0..count)
        .map(|index| HotpluggableCpuReply {
            cpu_type: "host-x86-cpu",
            vcpus_count: 1,
            props: CpuProps {
                socket_id: index / (cores * threads),
                die_id: 0,
                thread_id: index % threads,
                core_id: (index / threads) % cores,
            },
            qom_path: format!("/machine/unattached/device[{index}]"),
        })
        .collect()
}

/// The `query-status` return value.
#[derive(Debug, Serialize)]
pub(crate) struct StatusInfo {
    running: bool,
    singlestep: bool,
    status: &'static str,
}

impl From<VmRunState> for StatusInfo {
    fn from(state: VmRunState) -> Self {
        StatusInfo {
            running: state == VmRunState::Running,
            singlestep: false,
            status: match state {
                VmRunState::Running => "running",
                VmRunState::Paused => "paused",
                VmRunState::IoError => "io-error",
            },
        }
    }
}

/// One element of the `query-cpus` return value, in QEMU's shape.
#[derive(Debug, Serialize)]
pub(crate) struct CpuInfoReply {
    #[serde(rename = "CPU")]
    cpu: usize,
    current: bool,
    halted: bool,
    qom_path: String,
    thread_id: i64,
}

impl From<CpuInfo> for CpuInfoReply {
    fn from(info: CpuInfo) -> Self {
        CpuInfoReply {
            cpu: info.index,
            current: info.current,
            halted: info.halted,
            qom_path: format!("/machine/unattached/device[{}]", info.index),
            thread_id: info.thread_id,
        }
    }
}
