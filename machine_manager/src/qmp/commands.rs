//! The commands the server knows and their typed arguments.
//!
//! Parsing is separate from execution: [`Command::parse`] turns a command name and its
//! `arguments` object into a [`Command`] or a [`QmpError`]; nothing runs yet.
//!
//! Invariants:
//! - Every argument object is deserialized into a struct with `deny_unknown_fields`: an
//!   unknown member, a missing required member or a member of the wrong type is a
//!   `GenericError` whose description names the member.
//! - Values are checked here only as far as the protocol defines them (`driver` names, the
//!   `aio` engine name, the `addr` number). Machine rules (slot range, `aio=native` needs
//!   `direct`) belong to the [`super::QmpHandler`].
//! - What StratoVirt's schema accepts is accepted with StratoVirt's meaning, so that Kata
//!   Containers' requests (built by govmm) pass byte for byte: `blockdev-add` takes a top-level
//!   `driver` (`raw`, the only image format) and `file.driver` `file` or `host_device` (both
//!   open regular files and block devices alike); `aio` takes StratoVirt's spellings (`Off`,
//!   `Native`, `IoUring`, `Threads`); `device_add` takes `romfile` (empty only: no option ROMs
//!   here), `serial`, `iothread`, `bus` and `share-rw`.

use std::path::PathBuf;
use std::str::FromStr;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};
use util::aio::{AioEngine, DetectZeroes, Discard, ErrorAction, Limit, ThrottleConfig};
use util::file::Locking;

use super::handler::QmpError;
use crate::config::{default_aio, parse_num_queues, BlkDeviceConfig, DriveConfig, MAX_QUEUES};

/// `blockdev-add`: open a block backend, checked and with its members flattened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockdevAdd {
    /// `node-name`: the backend's name, used by `device_add` and `blockdev-del`.
    pub node_name: String,
    /// `file.filename`: the image path on the host.
    pub filename: PathBuf,
    /// `file.aio`: the engine, or `None` when not given (see [`BlockdevAdd::drive_config`]).
    pub aio: Option<AioEngine>,
    /// `cache.direct`: open with `O_DIRECT`, or `None` when not given (see
    /// [`BlockdevAdd::drive_config`]).
    pub direct: Option<bool>,
    /// `read-only` (default false).
    pub read_only: bool,
    /// `werror`: what a failed write does, `None` for `-drive`'s default (`enospc`).
    pub werror: Option<ErrorAction>,
    /// `rerror`: what a failed read does, `None` for `-drive`'s default (`report`).
    pub rerror: Option<ErrorAction>,
    /// `discard`: `ignore` (default) or `unmap`.
    pub discard: Discard,
    /// `detect-zeroes`: `off` (default), `on` or `unmap`.
    pub detect_zeroes: DetectZeroes,
    /// `throttling`: the I/O limits, members named as `-drive`'s `throttling.*` keys.
    pub throttle: ThrottleConfig,
    /// `file.locking`: `on`, `off` or `auto` (default).
    pub locking: Locking,
}

/// StratoVirt's capitalised `aio` names (its JSON schema accepts both cases) in the spelling
/// [`AioEngine::from_str`] reads; other names pass through unchanged.
fn aio_spelling(name: &str) -> &str {
    match name {
        "Off" => "off",
        "Native" => "native",
        "IoUring" => "iouring",
        "Threads" => "threads",
        other => other,
    }
}

impl BlockdevAdd {
    /// A node `node_name` on `filename` with nothing else given (every option at `-drive`'s
    /// default).
    pub fn new(node_name: &str, filename: impl Into<PathBuf>) -> BlockdevAdd {
        BlockdevAdd {
            node_name: node_name.to_string(),
            filename: filename.into(),
            aio: None,
            direct: None,
            read_only: false,
            werror: None,
            rerror: None,
            discard: Discard::Ignore,
            detect_zeroes: DetectZeroes::Off,
            throttle: ThrottleConfig::default(),
            locking: Locking::Auto,
        }
    }

    /// The backend as a `-drive` would describe it, with `-drive`'s defaults for what was not
    /// given (`direct` on; `aio` native with `direct`, off without). Check it with
    /// [`DriveConfig::validate`], the one place the drive rules live (`aio=native` needs
    /// `direct`).
    pub fn drive_config(&self) -> DriveConfig {
        let direct = self.direct.unwrap_or(true);
        let mut drive = DriveConfig::new(&self.node_name, self.filename.clone());
        drive.direct = direct;
        drive.aio = self.aio.unwrap_or(default_aio(direct));
        drive.readonly = self.read_only;
        drive.discard = self.discard;
        drive.detect_zeroes = self.detect_zeroes;
        drive.throttle = self.throttle;
        drive.werror = self.werror.unwrap_or(drive.werror);
        drive.rerror = self.rerror.unwrap_or(drive.rerror);
        drive.locking = self.locking;
        drive
    }
}

/// `device_add`: put backend `drive` into virtio-blk slot `slot` as device `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceAdd {
    /// `id`: the device id, used by `device_del` and the `DEVICE_DELETED` event.
    pub id: String,
    /// The backend's node name: `drive` if given, otherwise `id`.
    pub drive: String,
    /// The slot index, from `addr` (`"0x1"`, `"1"` or `1`).
    pub slot: usize,
    /// `serial`: the serial number the guest reads (`VIRTIO_BLK_T_GET_ID`); the device's own,
    /// not kept with the node.
    pub serial: Option<String>,
    /// `iothread`: the iothread that must serve the slot.
    pub iothread: Option<String>,
    /// `num-queues`: the request queues the device must have (1 to
    /// [`crate::config::MAX_QUEUES`]). A slot's queues are fixed when it is created at start,
    /// so this is checked against the slot, not applied.
    pub num_queues: Option<u16>,
    /// `bus`: the bus the client names. The micro VM has one virtio-mmio bus and `addr` picks
    /// the slot, so it only shows in the log (StratoVirt ignores it too).
    pub bus: Option<String>,
    /// `share-rw` (`"on"`/`"off"` or a boolean): whether the client allows the image to be
    /// shared writable with other users; `None` when not given. Image locking decides what
    /// it changes.
    pub share_rw: Option<bool>,
}

impl DeviceAdd {
    /// Backend `drive` into slot `slot` as device `id`, with no optional member.
    pub fn new(id: &str, drive: &str, slot: usize) -> DeviceAdd {
        DeviceAdd {
            id: id.to_string(),
            drive: drive.to_string(),
            slot,
            serial: None,
            iothread: None,
            num_queues: None,
            bus: None,
            share_rw: None,
        }
    }

    /// The device as a `-device virtio-blk-device` would describe it.
    pub fn blk_device_config(&self) -> BlkDeviceConfig {
        BlkDeviceConfig {
            serial: self.serial.clone(),
            iothread: self.iothread.clone(),
            num_queues: self.num_queues.unwrap_or(1),
            ..BlkDeviceConfig::new(&self.id, &self.drive)
        }
    }
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Command {
    /// `qmp_capabilities`.
    QmpCapabilities,
    /// `quit`.
    Quit,
    /// `stop`.
    Stop,
    /// `cont`.
    Cont,
    /// `query-status`.
    QueryStatus,
    /// `query-cpus`.
    QueryCpus,
    /// `blockdev-add`.
    BlockdevAdd(BlockdevAdd),
    /// `blockdev-del` with its `node-name`.
    BlockdevDel(String),
    /// `device_add`.
    DeviceAdd(DeviceAdd),
    /// `device_del` with its `id`.
    DeviceDel(String),
    /// `block_set_io_throttle`: the device id and its new limits.
    BlockSetIoThrottle(String, ThrottleConfig),
    /// `query-block`.
    QueryBlock,
    /// `query-blockstats`.
    QueryBlockstats,
    /// `system_reset`.
    SystemReset,
    /// `system_powerdown`.
    SystemPowerdown,
    /// `query-version`.
    QueryVersion,
    /// `query-commands`.
    QueryCommands,
    /// `query-events`.
    QueryEvents,
    /// `query-target`.
    QueryTarget,
    /// `query-kvm`.
    QueryKvm,
    /// `query-machines`.
    QueryMachines,
    /// `query-hotpluggable-cpus`.
    QueryHotpluggableCpus,
}

/// Every command the server knows, as `query-commands` lists them.
pub(crate) const COMMANDS: &[&str] = &[
    QMP_CAPABILITIES,
    "quit",
    "stop",
    "cont",
    "system_reset",
    "system_powerdown",
    "query-status",
    "query-cpus",
    "query-hotpluggable-cpus",
    "query-version",
    "query-commands",
    "query-events",
    "query-target",
    "query-kvm",
    "query-machines",
    "blockdev-add",
    "blockdev-del",
    "device_add",
    "device_del",
    "block_set_io_throttle",
    "query-block",
    "query-blockstats",
];

/// Capabilities negotiation: optional here, as in StratoVirt (see `session.rs`).
pub(crate) const QMP_CAPABILITIES: &str = "qmp_capabilities";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoArguments {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CapabilitiesArguments {
    #[serde(default)]
    enable: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct BlockdevAddArguments {
    node_name: String,
    #[serde(default)]
    driver: Option<String>,
    file: FileArguments,
    #[serde(default)]
    cache: Option<CacheArguments>,
    #[serde(default)]
    read_only: Option<bool>,
    #[serde(default)]
    werror: Option<String>,
    #[serde(default)]
    rerror: Option<String>,
    #[serde(default)]
    discard: Option<String>,
    #[serde(default)]
    detect_zeroes: Option<String>,
    #[serde(default)]
    throttling: Option<Map<String, Value>>,
}

/// `block_set_io_throttle`, QEMU's members.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ThrottleArguments {
    #[serde(default)]
    device: Option<String>,
    #[serde(default)]
    id: Option<String>,
    bps: u64,
    bps_rd: u64,
    bps_wr: u64,
    iops: u64,
    iops_rd: u64,
    iops_wr: u64,
    #[serde(default)]
    bps_max: u64,
    #[serde(default)]
    bps_rd_max: u64,
    #[serde(default)]
    bps_wr_max: u64,
    #[serde(default)]
    iops_max: u64,
    #[serde(default)]
    iops_rd_max: u64,
    #[serde(default)]
    iops_wr_max: u64,
    #[serde(default)]
    bps_max_length: u64,
    #[serde(default)]
    bps_rd_max_length: u64,
    #[serde(default)]
    bps_wr_max_length: u64,
    #[serde(default)]
    iops_max_length: u64,
    #[serde(default)]
    iops_rd_max_length: u64,
    #[serde(default)]
    iops_wr_max_length: u64,
    #[serde(default)]
    iops_size: u64,
    #[serde(default)]
    group: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileArguments {
    driver: String,
    filename: String,
    #[serde(default)]
    aio: Option<String>,
    #[serde(default)]
    locking: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheArguments {
    #[serde(default)]
    direct: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct NodeNameArguments {
    node_name: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceAddArguments {
    id: String,
    driver: String,
    addr: Value,
    #[serde(default)]
    drive: Option<String>,
    #[serde(default)]
    romfile: Option<String>,
    #[serde(default)]
    serial: Option<String>,
    #[serde(default)]
    iothread: Option<String>,
    #[serde(default, rename = "num-queues")]
    num_queues: Option<Value>,
    #[serde(default)]
    bus: Option<String>,
    #[serde(default, rename = "share-rw")]
    share_rw: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IdArguments {
    id: String,
}

/// The only `device_add` driver: a virtio-blk slot on the virtio-mmio bus.
const BLOCK_DEVICE_DRIVER: &str = "virtio-blk-mmio";
/// The `blockdev-add` protocol drivers: a host file, or (QEMU's name for) a host block device.
const FILE_DRIVERS: [&str; 2] = ["file", "host_device"];
/// The only `blockdev-add` format driver.
const FORMAT_DRIVER: &str = "raw";

impl Command {
    /// Parses command `name` with its `arguments` object (`None` when the request had none).
    pub(crate) fn parse(
        name: &str,
        arguments: Option<Map<String, Value>>,
    ) -> Result<Command, QmpError> {
        let arguments = arguments.unwrap_or_default();
        match name {
            QMP_CAPABILITIES => {
                let args: CapabilitiesArguments = deserialize(name, arguments)?;
                match args.enable.first() {
                    Some(capability) => Err(QmpError::Generic(format!(
                        "capability '{capability}' is not available: this server offers none"
                    ))),
                    None => Ok(Command::QmpCapabilities),
                }
            }
            "quit" => no_arguments(name, arguments, Command::Quit),
            "stop" => no_arguments(name, arguments, Command::Stop),
            "cont" => no_arguments(name, arguments, Command::Cont),
            "query-status" => no_arguments(name, arguments, Command::QueryStatus),
            "query-cpus" => no_arguments(name, arguments, Command::QueryCpus),
            "blockdev-add" => parse_blockdev_add(deserialize(name, arguments)?),
            "blockdev-del" => {
                let args: NodeNameArguments = deserialize(name, arguments)?;
                Ok(Command::BlockdevDel(non_empty(
                    name,
                    "node-name",
                    args.node_name,
                )?))
            }
            "device_add" => parse_device_add(deserialize(name, arguments)?),
            "device_del" => {
                let args: IdArguments = deserialize(name, arguments)?;
                Ok(Command::DeviceDel(non_empty(name, "id", args.id)?))
            }
            "block_set_io_throttle" => parse_block_set_io_throttle(deserialize(name, arguments)?),
            "query-block" => no_arguments(name, arguments, Command::QueryBlock),
            "query-blockstats" => no_arguments(name, arguments, Command::QueryBlockstats),
            "system_reset" => no_arguments(name, arguments, Command::SystemReset),
            "system_powerdown" => no_arguments(name, arguments, Command::SystemPowerdown),
            "query-version" => no_arguments(name, arguments, Command::QueryVersion),
            "query-commands" => no_arguments(name, arguments, Command::QueryCommands),
            "query-events" => no_arguments(name, arguments, Command::QueryEvents),
            "query-target" => no_arguments(name, arguments, Command::QueryTarget),
            "query-kvm" => no_arguments(name, arguments, Command::QueryKvm),
            "query-machines" => no_arguments(name, arguments, Command::QueryMachines),
            "query-hotpluggable-cpus" => {
                no_arguments(name, arguments, Command::QueryHotpluggableCpus)
            }
            other => Err(QmpError::CommandNotFound(format!(
                "The command {other} has not been found"
            ))),
        }
    }
}

fn deserialize<T: DeserializeOwned>(
    command: &str,
    arguments: Map<String, Value>,
) -> Result<T, QmpError> {
    serde_json::from_value(Value::Object(arguments))
        .map_err(|e| QmpError::Generic(format!("invalid arguments for '{command}': {e}")))
}

fn no_arguments(
    command: &str,
    arguments: Map<String, Value>,
    parsed: Command,
) -> Result<Command, QmpError> {
    let NoArguments {} = deserialize(command, arguments)?;
    Ok(parsed)
}

fn non_empty(command: &str, member: &str, value: String) -> Result<String, QmpError> {
    if value.is_empty() {
        return Err(QmpError::Generic(format!(
            "invalid arguments for '{command}': '{member}' must not be empty"
        )));
    }
    Ok(value)
}

fn parse_blockdev_add(args: BlockdevAddArguments) -> Result<Command, QmpError> {
    const NAME: &str = "blockdev-add";
    let node_name = non_empty(NAME, "node-name", args.node_name)?;
    if let Some(format) = args.driver.filter(|d| d != FORMAT_DRIVER) {
        return Err(QmpError::Generic(format!(
            "invalid arguments for '{NAME}': image format '{format}' is not supported (only '{FORMAT_DRIVER}' images)"
        )));
    }
    if !FILE_DRIVERS.contains(&args.file.driver.as_str()) {
        return Err(QmpError::Generic(format!(
            "invalid arguments for '{NAME}': file driver '{}' is not supported (expected 'file' or 'host_device')",
            args.file.driver
        )));
    }
    let filename = non_empty(NAME, "file.filename", args.file.filename)?;
    let aio = args
        .file
        .aio
        .map(|name| AioEngine::from_str(aio_spelling(&name)))
        .transpose()
        .map_err(|e| QmpError::Generic(format!("invalid arguments for '{NAME}': {e}")))?;
    let error_action = |value: Option<String>| {
        value
            .map(|v| ErrorAction::from_str(&v))
            .transpose()
            .map_err(|e| QmpError::Generic(format!("invalid arguments for '{NAME}': {e}")))
    };
    let locking = args
        .file
        .locking
        .map(|mode| mode.parse::<Locking>())
        .transpose()
        .map_err(|e| {
            QmpError::Generic(format!("invalid arguments for '{NAME}': file.locking: {e}"))
        })?
        .unwrap_or_default();
    let discard = args
        .discard
        .map(|v| Discard::from_str(&v))
        .transpose()
        .map_err(|e| QmpError::Generic(format!("invalid arguments for '{NAME}': {e}")))?
        .unwrap_or_default();
    let detect_zeroes = args
        .detect_zeroes
        .map(|v| DetectZeroes::from_str(&v))
        .transpose()
        .map_err(|e| QmpError::Generic(format!("invalid arguments for '{NAME}': {e}")))?
        .unwrap_or_default();
    let throttle = match args.throttling {
        None => ThrottleConfig::default(),
        Some(members) => parse_throttling(members)
            .map_err(|e| QmpError::Generic(format!("invalid arguments for '{NAME}': {e}")))?,
    };
    Ok(Command::BlockdevAdd(BlockdevAdd {
        node_name,
        filename: PathBuf::from(filename),
        aio,
        direct: args.cache.and_then(|cache| cache.direct),
        read_only: args.read_only.unwrap_or(false),
        werror: error_action(args.werror)?,
        rerror: error_action(args.rerror)?,
        discard,
        detect_zeroes,
        throttle,
        locking,
    }))
}

/// `blockdev-add`'s `throttling` object: members named as `-drive`'s `throttling.*` keys
/// (`iops-total`, `iops-total-max`, `iops-total-max-length`, ..., `iops-size`), numbers.
fn parse_throttling(members: Map<String, Value>) -> Result<ThrottleConfig, String> {
    let mut throttle = ThrottleConfig::default();
    for (key, value) in members {
        let number = value
            .as_u64()
            .ok_or_else(|| format!("throttling.{key} must be a non-negative integer"))?;
        if key == "iops-size" {
            throttle.iops_size = number;
            continue;
        }
        let (name, field) = if let Some(name) = key.strip_suffix("-max-length") {
            (name, 2)
        } else if let Some(name) = key.strip_suffix("-max") {
            (name, 1)
        } else {
            (key.as_str(), 0)
        };
        let limit = throttle
            .limit_mut(name)
            .ok_or_else(|| format!("unknown member throttling.{key}"))?;
        match field {
            0 => limit.avg = number,
            1 => limit.max = number,
            _ => limit.max_length = number,
        }
    }
    throttle.validate()?;
    Ok(throttle)
}

fn parse_block_set_io_throttle(args: ThrottleArguments) -> Result<Command, QmpError> {
    const NAME: &str = "block_set_io_throttle";
    let id = args.id.or(args.device).ok_or_else(|| {
        QmpError::Generic(format!("invalid arguments for '{NAME}': 'id' is missing"))
    })?;
    let id = non_empty(NAME, "id", id)?;
    if args.group.is_some() {
        return Err(QmpError::Generic(format!(
            "invalid arguments for '{NAME}': throttle groups are not supported"
        )));
    }
    let limit = |avg, max, max_length| Limit {
        avg,
        max,
        max_length,
    };
    let throttle = ThrottleConfig {
        iops_total: limit(args.iops, args.iops_max, args.iops_max_length),
        iops_read: limit(args.iops_rd, args.iops_rd_max, args.iops_rd_max_length),
        iops_write: limit(args.iops_wr, args.iops_wr_max, args.iops_wr_max_length),
        bps_total: limit(args.bps, args.bps_max, args.bps_max_length),
        bps_read: limit(args.bps_rd, args.bps_rd_max, args.bps_rd_max_length),
        bps_write: limit(args.bps_wr, args.bps_wr_max, args.bps_wr_max_length),
        iops_size: args.iops_size,
    };
    throttle
        .validate()
        .map_err(|e| QmpError::Generic(format!("invalid arguments for '{NAME}': {e}")))?;
    Ok(Command::BlockSetIoThrottle(id, throttle))
}

fn parse_device_add(args: DeviceAddArguments) -> Result<Command, QmpError> {
    const NAME: &str = "device_add";
    let id = non_empty(NAME, "id", args.id)?;
    if args.driver != BLOCK_DEVICE_DRIVER {
        return Err(QmpError::Generic(format!(
            "invalid arguments for '{NAME}': driver '{}' is not supported (expected '{BLOCK_DEVICE_DRIVER}')",
            args.driver
        )));
    }
    let slot = parse_addr(&args.addr).ok_or_else(|| {
        QmpError::Generic(format!(
            "invalid arguments for '{NAME}': addr {} is not a slot number (e.g. \"0x1\" or \"1\")",
            args.addr
        ))
    })?;
    let drive = match args.drive {
        Some(drive) => non_empty(NAME, "drive", drive)?,
        None => id.clone(),
    };
    if let Some(romfile) = args.romfile.filter(|r| !r.is_empty()) {
        return Err(QmpError::Generic(format!(
            "invalid arguments for '{NAME}': romfile '{romfile}' is not supported (the micro VM has no PCI option ROMs; use \"\" or omit it)"
        )));
    }
    let serial = args
        .serial
        .map(|serial| non_empty(NAME, "serial", serial))
        .transpose()?;
    let iothread = args
        .iothread
        .map(|iothread| non_empty(NAME, "iothread", iothread))
        .transpose()?;
    let num_queues = args
        .num_queues
        .map(|value| {
            value
                .as_u64()
                .and_then(|n| parse_num_queues(&n.to_string()))
                .ok_or_else(|| {
                    QmpError::Generic(format!(
                        "invalid arguments for '{NAME}': num-queues {value} is not a number from 1 to {MAX_QUEUES}"
                    ))
                })
        })
        .transpose()?;
    let share_rw = args
        .share_rw
        .map(|value| match value {
            Value::Bool(on) => Ok(on),
            Value::String(text) if text == "on" => Ok(true),
            Value::String(text) if text == "off" => Ok(false),
            other => Err(QmpError::Generic(format!(
                "invalid arguments for '{NAME}': share-rw {other} is not \"on\", \"off\" or a boolean"
            ))),
        })
        .transpose()?;
    Ok(Command::DeviceAdd(DeviceAdd {
        id,
        drive,
        slot,
        serial,
        iothread,
        num_queues,
        bus: args.bus,
        share_rw,
    }))
}

/// A slot number from `"0x1f"`, `"31"` or `31`.
fn parse_addr(addr: &Value) -> Option<usize> {
    match addr {
        Value::String(text) => match text.strip_prefix("0x").or(text.strip_prefix("0X")) {
            Some(hex) => usize::from_str_radix(hex, 16).ok(),
            None => text.parse().ok(),
        },
        Value::Number(number) => number.as_u64().and_then(|n| usize::try_from(n).ok()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(name: &str, arguments: Value) -> Result<Command, QmpError> {
        match arguments {
            Value::Object(map) => Command::parse(name, Some(map)),
            _ => panic!("test arguments must be an object"),
        }
    }

    fn generic_desc(result: Result<Command, QmpError>) -> String {
        match result {
            Err(QmpError::Generic(desc)) => desc,
            other => panic!("expected a GenericError, got {other:?}"),
        }
    }

    #[test]
    fn blockdev_add_flattens_its_members_and_accepts_both_uring_spellings() {
        for spelling in ["io_uring", "iouring"] {
            let parsed = parse(
                "blockdev-add",
                json!({"node-name": "drive-1",
                       "file": {"driver": "file", "filename": "/tmp/d.img", "aio": spelling,
                                "locking": "off"},
                       "cache": {"direct": false}, "read-only": true,
                       "werror": "stop", "rerror": "ignore"}),
            )
            .unwrap();
            assert_eq!(
                parsed,
                Command::BlockdevAdd(BlockdevAdd {
                    node_name: "drive-1".into(),
                    filename: "/tmp/d.img".into(),
                    aio: Some(AioEngine::IoUring),
                    direct: Some(false),
                    read_only: true,
                    werror: Some(ErrorAction::Stop),
                    rerror: Some(ErrorAction::Ignore),
                    discard: Discard::Ignore,
                    detect_zeroes: DetectZeroes::Off,
                    throttle: ThrottleConfig::default(),
                    locking: Locking::Off,
                })
            );
        }
    }

    #[test]
    fn blockdev_add_takes_the_thread_pool() {
        let parsed = parse(
            "blockdev-add",
            json!({"node-name": "n",
                   "file": {"driver": "file", "filename": "f", "aio": "threads"}}),
        )
        .unwrap();
        let Command::BlockdevAdd(args) = parsed else {
            panic!("not a blockdev-add: {parsed:?}");
        };
        assert_eq!(args.aio, Some(AioEngine::Threads));
    }

    #[test]
    fn blockdev_add_defaults_are_left_to_the_machine() {
        let parsed = parse(
            "blockdev-add",
            json!({"node-name": "n", "file": {"driver": "file", "filename": "f"}}),
        )
        .unwrap();
        assert_eq!(
            parsed,
            Command::BlockdevAdd(BlockdevAdd {
                node_name: "n".into(),
                filename: "f".into(),
                aio: None,
                direct: None,
                read_only: false,
                werror: None,
                rerror: None,
                discard: Discard::Ignore,
                detect_zeroes: DetectZeroes::Off,
                throttle: ThrottleConfig::default(),
                locking: Locking::Auto,
            })
        );
        assert!(parse(
            "blockdev-add",
            json!({"node-name": "n", "file": {"driver": "file", "filename": "f"},
                   "werror": "sometimes"}),
        )
        .is_err());
    }

    #[test]
    fn drive_config_applies_the_drive_defaults_and_keeps_the_rule_in_validate() {
        let mut args = BlockdevAdd {
            node_name: "n".into(),
            filename: "/img".into(),
            aio: None,
            direct: None,
            read_only: true,
            werror: None,
            rerror: None,
            discard: Discard::Ignore,
            detect_zeroes: DetectZeroes::Off,
            throttle: ThrottleConfig::default(),
            locking: Locking::On,
        };
        let drive = args.drive_config();
        assert_eq!(
            (drive.id.as_str(), drive.direct, drive.aio, drive.readonly),
            ("n", true, AioEngine::Native, true)
        );
        assert_eq!(drive.locking, Locking::On);
        assert_eq!(drive.path, PathBuf::from("/img"));
        args.direct = Some(false);
        assert_eq!(args.drive_config().aio, AioEngine::Off);
        args.aio = Some(AioEngine::IoUring);
        assert_eq!(args.drive_config().aio, AioEngine::IoUring);
        args.drive_config().validate().unwrap();
        args.aio = Some(AioEngine::Threads);
        args.drive_config().validate().unwrap();
        args.aio = Some(AioEngine::Native);
        assert!(args.drive_config().validate().is_err());
        let device = DeviceAdd {
            id: "d".into(),
            drive: "n".into(),
            slot: 2,
            serial: Some("S1".into()),
            iothread: None,
            num_queues: Some(2),
            bus: None,
            share_rw: None,
        }
        .blk_device_config();
        assert_eq!((device.id.as_str(), device.drive.as_str()), ("d", "n"));
        assert_eq!(device.serial.as_deref(), Some("S1"));
        assert_eq!(device.num_queues, 2);
    }

    #[test]
    fn unknown_missing_and_mistyped_members_are_named() {
        let desc = generic_desc(parse(
            "blockdev-add",
            json!({"node-name": "n", "file": {"driver": "file", "filename": "f", "bogus": 1}}),
        ));
        assert!(desc.contains("bogus"), "{desc}");
        let desc = generic_desc(parse(
            "blockdev-add",
            json!({"file": {"driver": "file", "filename": "f"}}),
        ));
        assert!(desc.contains("node-name"), "{desc}");
        let desc = generic_desc(parse("device_del", json!({"id": 3})));
        assert!(desc.contains("invalid type"), "{desc}");
        let desc = generic_desc(parse("stop", json!({"now": true})));
        assert!(desc.contains("now"), "{desc}");
    }

    #[test]
    fn bad_values_are_generic_errors() {
        let desc = generic_desc(parse(
            "blockdev-add",
            json!({"node-name": "n", "file": {"driver": "file", "filename": "f", "aio": "posix"}}),
        ));
        assert!(desc.contains("posix"), "{desc}");
        let desc = generic_desc(parse(
            "blockdev-add",
            json!({"node-name": "n", "file": {"driver": "file", "filename": "f", "locking": "yes"}}),
        ));
        assert!(desc.contains("locking") && desc.contains("yes"), "{desc}");
        let desc = generic_desc(parse(
            "blockdev-add",
            json!({"node-name": "n", "file": {"driver": "nbd", "filename": "f"}}),
        ));
        assert!(desc.contains("nbd"), "{desc}");
        let desc = generic_desc(parse(
            "device_add",
            json!({"id": "d", "driver": "virtio-net-mmio", "addr": "0x1"}),
        ));
        assert!(desc.contains("virtio-net-mmio"), "{desc}");
        for addr in [json!("0xg"), json!("-1"), json!(-1), json!(true), json!("")] {
            let desc = generic_desc(parse(
                "device_add",
                json!({"id": "d", "driver": "virtio-blk-mmio", "addr": addr}),
            ));
            assert!(desc.contains("addr"), "{desc}");
        }
        generic_desc(parse("device_del", json!({"id": ""})));
    }

    #[test]
    fn device_add_reads_hex_and_decimal_addr_and_defaults_drive_to_id() {
        for (addr, slot) in [
            (json!("0x1"), 1),
            (json!("0X1f"), 31),
            (json!("12"), 12),
            (json!(3), 3),
        ] {
            let parsed = parse(
                "device_add",
                json!({"id": "drive-1", "driver": "virtio-blk-mmio", "addr": addr}),
            )
            .unwrap();
            assert_eq!(
                parsed,
                Command::DeviceAdd(DeviceAdd::new("drive-1", "drive-1", slot))
            );
        }
        let parsed = parse(
            "device_add",
            json!({"id": "dev", "driver": "virtio-blk-mmio", "addr": "0", "drive": "node"}),
        )
        .unwrap();
        assert_eq!(parsed, Command::DeviceAdd(DeviceAdd::new("dev", "node", 0)));
    }

    #[test]
    fn capabilities_accept_an_empty_enable_list_only() {
        assert_eq!(
            Command::parse(QMP_CAPABILITIES, None).unwrap(),
            Command::QmpCapabilities
        );
        assert_eq!(
            parse(QMP_CAPABILITIES, json!({"enable": []})).unwrap(),
            Command::QmpCapabilities
        );
        let desc = generic_desc(parse(QMP_CAPABILITIES, json!({"enable": ["oob"]})));
        assert!(desc.contains("oob"), "{desc}");
    }

    #[test]
    fn unknown_command_is_command_not_found() {
        assert_eq!(
            Command::parse("query-balloon", None),
            Err(QmpError::CommandNotFound(
                "The command query-balloon has not been found".into()
            ))
        );
    }

    #[test]
    fn every_listed_command_parses() {
        for name in COMMANDS {
            let arguments = match *name {
                "blockdev-add" => {
                    json!({"node-name": "n", "file": {"driver": "file", "filename": "f"}})
                }
                "blockdev-del" => json!({"node-name": "n"}),
                "device_add" => json!({"id": "d", "driver": "virtio-blk-mmio", "addr": "0"}),
                "device_del" => json!({"id": "d"}),
                "block_set_io_throttle" => json!({"id": "d", "bps": 0, "bps_rd": 0,
                    "bps_wr": 0, "iops": 100, "iops_rd": 0, "iops_wr": 0}),
                _ => json!({}),
            };
            parse(name, arguments).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    /// The JSON govmm (Kata Containers' QMP client) sends for a hot-plug, byte for byte: Go's
    /// encoding/json sorts map keys.
    #[test]
    fn katas_hot_plug_requests_parse() {
        for (driver, path) in [
            ("file", "/run/kata/disk.img"),
            ("host_device", "/dev/loop7"),
        ] {
            let request = format!(
                r#"{{"driver":"raw","file":{{"aio":"native","driver":"{driver}","filename":"{path}"}},"node-name":"drive-5f0a","read-only":false}}"#
            );
            let Value::Object(arguments) = serde_json::from_str(&request).unwrap() else {
                panic!("object");
            };
            assert_eq!(
                Command::parse("blockdev-add", Some(arguments)).unwrap(),
                Command::BlockdevAdd(BlockdevAdd {
                    aio: Some(AioEngine::Native),
                    ..BlockdevAdd::new("drive-5f0a", path)
                })
            );
        }
        let Value::Object(arguments) = serde_json::from_str(
            r#"{"addr":"1","drive":"drive-5f0a","driver":"virtio-blk-mmio","id":"drive-5f0a","romfile":""}"#,
        )
        .unwrap() else {
            panic!("object");
        };
        assert_eq!(
            Command::parse("device_add", Some(arguments)).unwrap(),
            Command::DeviceAdd(DeviceAdd::new("drive-5f0a", "drive-5f0a", 1))
        );
    }

    #[test]
    fn stratovirts_aio_spellings_and_device_add_members() {
        for (spelling, engine) in [
            ("off", AioEngine::Off),
            ("Off", AioEngine::Off),
            ("native", AioEngine::Native),
            ("Native", AioEngine::Native),
            ("iouring", AioEngine::IoUring),
            ("IoUring", AioEngine::IoUring),
            ("io_uring", AioEngine::IoUring),
            ("threads", AioEngine::from_str("threads").unwrap()),
            ("Threads", AioEngine::from_str("threads").unwrap()),
        ] {
            let parsed = parse(
                "blockdev-add",
                json!({"node-name": "n", "file": {"driver": "file", "filename": "f", "aio": spelling}}),
            )
            .unwrap();
            let Command::BlockdevAdd(args) = parsed else {
                panic!("{spelling}");
            };
            assert_eq!(args.aio, Some(engine), "{spelling}");
        }
        for bad in ["NATIVE", "iOuring", "Io_uring"] {
            generic_desc(parse(
                "blockdev-add",
                json!({"node-name": "n", "file": {"driver": "file", "filename": "f", "aio": bad}}),
            ));
        }
        let desc = generic_desc(parse(
            "blockdev-add",
            json!({"node-name": "n", "driver": "qcow2", "file": {"driver": "file", "filename": "f"}}),
        ));
        assert!(desc.contains("qcow2") && desc.contains("raw"), "{desc}");

        let parsed = parse(
            "device_add",
            json!({"id": "d", "driver": "virtio-blk-mmio", "addr": "0x2", "drive": "n",
                   "romfile": "", "serial": "SER1", "iothread": "io0", "bus": "virtio-mmio-bus.2",
                   "share-rw": "on", "num-queues": 2}),
        )
        .unwrap();
        assert_eq!(
            parsed,
            Command::DeviceAdd(DeviceAdd {
                id: "d".into(),
                drive: "n".into(),
                slot: 2,
                serial: Some("SER1".into()),
                iothread: Some("io0".into()),
                num_queues: Some(2),
                bus: Some("virtio-mmio-bus.2".into()),
                share_rw: Some(true),
            })
        );
        for (member, value) in [("share-rw", json!(false)), ("share-rw", json!("off"))] {
            let Command::DeviceAdd(args) = parse(
                "device_add",
                json!({"id": "d", "driver": "virtio-blk-mmio", "addr": "0", member: value}),
            )
            .unwrap() else {
                panic!("device_add");
            };
            assert_eq!(args.share_rw, Some(false));
        }
        for (member, value, needle) in [
            ("romfile", json!("efi-virtio.rom"), "romfile"),
            ("share-rw", json!("yes"), "share-rw"),
            ("share-rw", json!(1), "share-rw"),
            ("serial", json!(""), "serial"),
            ("iothread", json!(""), "iothread"),
            ("num-queues", json!(0), "num-queues"),
            ("num-queues", json!(33), "num-queues"),
            ("num-queues", json!("2"), "num-queues"),
            ("num-queues", json!(-1), "num-queues"),
            ("mac", json!("02:00:00:00:00:01"), "mac"),
        ] {
            let desc = generic_desc(parse(
                "device_add",
                json!({"id": "d", "driver": "virtio-blk-mmio", "addr": "0", member: value}),
            ));
            assert!(desc.contains(needle), "{member}: {desc}");
        }
    }
}
