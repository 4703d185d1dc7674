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

use std::path::PathBuf;
use std::str::FromStr;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};
use util::aio::{AioEngine, ErrorAction};
use util::file::Locking;

use super::handler::QmpError;
use crate::config::{default_aio, BlkDeviceConfig, DriveConfig};

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
    /// `file.locking`: `on`, `off` or `auto` (default).
    pub locking: Locking,
}

impl BlockdevAdd {
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
}

impl DeviceAdd {
    /// The device as a `-device virtio-blk-device` would describe it (no serial, no iothread).
    pub fn blk_device_config(&self) -> BlkDeviceConfig {
        BlkDeviceConfig {
            id: self.id.clone(),
            drive: self.drive.clone(),
            serial: None,
            iothread: None,
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
}

/// The one command accepted before capabilities negotiation.
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
    file: FileArguments,
    #[serde(default)]
    cache: Option<CacheArguments>,
    #[serde(default)]
    read_only: Option<bool>,
    #[serde(default)]
    werror: Option<String>,
    #[serde(default)]
    rerror: Option<String>,
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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IdArguments {
    id: String,
}

/// The only `device_add` driver: a virtio-blk slot on the virtio-mmio bus.
const BLOCK_DEVICE_DRIVER: &str = "virtio-blk-mmio";
/// The only `blockdev-add` protocol driver: a host file.
const FILE_DRIVER: &str = "file";

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
    if args.file.driver != FILE_DRIVER {
        return Err(QmpError::Generic(format!(
            "invalid arguments for '{NAME}': file driver '{}' is not supported (expected '{FILE_DRIVER}')",
            args.file.driver
        )));
    }
    let filename = non_empty(NAME, "file.filename", args.file.filename)?;
    let aio = args
        .file
        .aio
        .map(|name| AioEngine::from_str(&name))
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
    Ok(Command::BlockdevAdd(BlockdevAdd {
        node_name,
        filename: PathBuf::from(filename),
        aio,
        direct: args.cache.and_then(|cache| cache.direct),
        read_only: args.read_only.unwrap_or(false),
        werror: error_action(args.werror)?,
        rerror: error_action(args.rerror)?,
        locking,
    }))
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
    Ok(Command::DeviceAdd(DeviceAdd { id, drive, slot }))
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
        }
        .blk_device_config();
        assert_eq!((device.id.as_str(), device.drive.as_str()), ("d", "n"));
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
                Command::DeviceAdd(DeviceAdd {
                    id: "drive-1".into(),
                    drive: "drive-1".into(),
                    slot,
                })
            );
        }
        let parsed = parse(
            "device_add",
            json!({"id": "dev", "driver": "virtio-blk-mmio", "addr": "0", "drive": "node"}),
        )
        .unwrap();
        assert_eq!(
            parsed,
            Command::DeviceAdd(DeviceAdd {
                id: "dev".into(),
                drive: "node".into(),
                slot: 0,
            })
        );
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
            Command::parse("query-kvm", None),
            Err(QmpError::CommandNotFound(
                "The command query-kvm has not been found".into()
            ))
        );
    }
}
