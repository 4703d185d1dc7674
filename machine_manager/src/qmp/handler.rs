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
/// after [`QmpHandler::cont`], `SHUTDOWN` (`host-qmp-quit`) before [`QmpHandler::quit`] and
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
