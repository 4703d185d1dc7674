//! What the server writes: the greeting, replies and events, each one JSON object per line.
//!
//! Invariants:
//! - Every message is serialized from a struct, so members appear in the order the contract
//!   shows (`{"return":..,"id":..}`, `"micro","minor","major"`), never re-sorted.
//! - Every message ends with `"\r\n"`.
//! - A reply carries the request's `id` verbatim when the request had one, and no `id`
//!   member otherwise.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::Value;

use super::handler::{
    CpuInfoReply, HotpluggableCpuReply, KvmInfo, MachineInfo, NameInfo, QmpError, StatusInfo,
    TargetInfo,
};

/// The line terminator of every message the server sends.
const LINE_END: &[u8] = b"\r\n";

/// The QEMU version the greeting claims (what StratoVirt reports, so QEMU clients accept it).
const QEMU_VERSION: VersionTriple = VersionTriple {
    micro: 1,
    minor: 0,
    major: 5,
};

#[derive(Serialize)]
struct Greeting {
    #[serde(rename = "QMP")]
    qmp: GreetingBody,
}

#[derive(Serialize)]
struct GreetingBody {
    version: Version,
    capabilities: Vec<String>,
}

/// The version the greeting and `query-version` report.
#[derive(Debug, Serialize)]
pub(crate) struct Version {
    qemu: VersionTriple,
    package: String,
}

impl Version {
    /// The QEMU version StratoVirt claims and this package's version.
    pub(crate) fn current() -> Version {
        Version {
            qemu: QEMU_VERSION,
            package: format!("StratoVirt-{}", env!("CARGO_PKG_VERSION")),
        }
    }
}

#[derive(Debug, Serialize)]
struct VersionTriple {
    micro: u32,
    minor: u32,
    major: u32,
}

/// `{}`, the return value of commands that return nothing.
#[derive(Debug, Serialize)]
pub(crate) struct Empty {}

/// The `return` member of a successful reply.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub(crate) enum ReturnValue {
    /// `{}`.
    Empty(Empty),
    /// The `query-status` object.
    Status(StatusInfo),
    /// The `query-cpus` list.
    Cpus(Vec<CpuInfoReply>),
    /// Any other reply, already in its JSON shape.
    Json(Value),
    /// The `query-version` object.
    Version(Version),
    /// The `query-commands` and `query-events` lists.
    Names(Vec<NameInfo>),
    /// The `query-target` object.
    Target(TargetInfo),
    /// The `query-kvm` object.
    Kvm(KvmInfo),
    /// The `query-machines` list.
    Machines(Vec<MachineInfo>),
    /// The `query-hotpluggable-cpus` list.
    HotpluggableCpus(Vec<HotpluggableCpuReply>),
}

impl ReturnValue {
    /// The empty return value `{}`.
    pub(crate) fn empty() -> Self {
        ReturnValue::Empty(Empty {})
    }
}

#[derive(Serialize)]
struct SuccessReply<'a> {
    #[serde(rename = "return")]
    value: &'a ReturnValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a Value>,
}

#[derive(Serialize)]
struct ErrorReply<'a> {
    error: ErrorBody<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a Value>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    class: &'static str,
    desc: &'a str,
}

/// Why the VM shut down, as the `SHUTDOWN` event reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownReason {
    /// The `quit` command (`{"guest":false,"reason":"host-qmp-quit"}`).
    HostQmpQuit,
    /// The guest asked for it, e.g. a reboot (`{"guest":true,"reason":"guest-shutdown"}`).
    GuestShutdown,
    /// SIGTERM, SIGINT or SIGHUP (`{"guest":false,"reason":"host-signal"}`).
    HostSignal,
    /// The `system_reset` command, which ends the micro VM
    /// (`{"guest":false,"reason":"host-qmp-system-reset"}`).
    HostQmpSystemReset,
}

/// An asynchronous notification for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QmpEvent {
    /// The vCPUs were paused.
    Stop,
    /// The vCPUs were resumed.
    Resume,
    /// The VM is ending.
    Shutdown(ShutdownReason),
    /// `system_powerdown` asked the machine to power down.
    Powerdown,
    /// A device was removed; `id` is its device id (reported as `device` and `path`).
    DeviceDeleted {
        /// The id given to `device_add` or `-device`.
        id: String,
    },
    /// A block request failed on the host (QEMU's `BLOCK_IO_ERROR`).
    BlockIoError {
        /// The device id.
        device: String,
        /// The node (drive id or `blockdev-add` node name) behind it.
        node_name: String,
        /// `"read"` or `"write"`.
        operation: &'static str,
        /// What was done: `"report"`, `"ignore"` or `"stop"`.
        action: &'static str,
        /// Whether the host ran out of space.
        nospace: bool,
        /// The error's text.
        reason: String,
    },
}

/// When an event happened, as seconds and microseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Timestamp {
    /// Whole seconds.
    pub seconds: u64,
    /// Microseconds within the second (0..1_000_000).
    pub microseconds: u32,
}

impl Timestamp {
    /// The current wall-clock time (0 if the clock is before 1970).
    pub fn now() -> Self {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp {
            seconds: since_epoch.as_secs(),
            microseconds: since_epoch.subsec_micros(),
        }
    }
}

#[derive(Serialize)]
struct EventMessage<'a> {
    event: &'static str,
    data: EventData<'a>,
    timestamp: Timestamp,
}

#[derive(Serialize)]
#[serde(untagged)]
enum EventData<'a> {
    Empty(Empty),
    Shutdown {
        guest: bool,
        reason: &'static str,
    },
    DeviceDeleted {
        device: &'a str,
        path: &'a str,
    },
    BlockIoError {
        device: &'a str,
        #[serde(rename = "node-name")]
        node_name: &'a str,
        operation: &'static str,
        action: &'static str,
        nospace: bool,
        reason: &'a str,
    },
}

/// Serializes `message` as one line; these types cannot fail to serialize, but if one ever
/// did, the client gets a `GenericError` line rather than nothing.
fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    let mut line = serde_json::to_vec(message).unwrap_or_else(|e| {
        log::error!("qmp: cannot serialize a message: {e}");
        br#"{"error":{"class":"GenericError","desc":"internal error: unserializable reply"}}"#
            .to_vec()
    });
    line.extend_from_slice(LINE_END);
    line
}

/// The greeting sent when a client connects.
pub(crate) fn greeting() -> Vec<u8> {
    encode(&Greeting {
        qmp: GreetingBody {
            version: Version::current(),
            capabilities: Vec::new(),
        },
    })
}

/// A successful reply.
pub(crate) fn success(value: &ReturnValue, id: Option<&Value>) -> Vec<u8> {
    encode(&SuccessReply { value, id })
}

/// An error reply.
pub(crate) fn error(error: &QmpError, id: Option<&Value>) -> Vec<u8> {
    encode(&ErrorReply {
        error: ErrorBody {
            class: error.class(),
            desc: error.desc(),
        },
        id,
    })
}

/// The names of the events the server sends, as `query-events` lists them.
pub(crate) const EVENTS: &[&str] = &[
    "SHUTDOWN",
    "STOP",
    "RESUME",
    "POWERDOWN",
    "DEVICE_DELETED",
    "BLOCK_IO_ERROR",
];

/// An event line stamped with `timestamp`.
pub(crate) fn event(event: &QmpEvent, timestamp: Timestamp) -> Vec<u8> {
    let (name, data) = match event {
        QmpEvent::Stop => ("STOP", EventData::Empty(Empty {})),
        QmpEvent::Resume => ("RESUME", EventData::Empty(Empty {})),
        QmpEvent::Powerdown => ("POWERDOWN", EventData::Empty(Empty {})),
        QmpEvent::Shutdown(ShutdownReason::HostQmpQuit) => (
            "SHUTDOWN",
            EventData::Shutdown {
                guest: false,
                reason: "host-qmp-quit",
            },
        ),
        QmpEvent::Shutdown(ShutdownReason::GuestShutdown) => (
            "SHUTDOWN",
            EventData::Shutdown {
                guest: true,
                reason: "guest-shutdown",
            },
        ),
        QmpEvent::Shutdown(ShutdownReason::HostSignal) => (
            "SHUTDOWN",
            EventData::Shutdown {
                guest: false,
                reason: "host-signal",
            },
        ),
        QmpEvent::BlockIoError {
            device,
            node_name,
            operation,
            action,
            nospace,
            reason,
        } => (
            "BLOCK_IO_ERROR",
            EventData::BlockIoError {
                device,
                node_name,
                operation,
                action,
                nospace: *nospace,
                reason,
            },
        ),
        QmpEvent::Shutdown(ShutdownReason::HostQmpSystemReset) => (
            "SHUTDOWN",
            EventData::Shutdown {
                guest: false,
                reason: "host-qmp-system-reset",
            },
        ),
        QmpEvent::DeviceDeleted { id } => (
            "DEVICE_DELETED",
            EventData::DeviceDeleted {
                device: id,
                path: id,
            },
        ),
    };
    encode(&EventMessage {
        event: name,
        data,
        timestamp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(line: Vec<u8>) -> String {
        String::from_utf8(line).unwrap()
    }

    #[test]
    fn greeting_matches_the_contract_byte_for_byte() {
        let expected = format!(
            "{{\"QMP\":{{\"version\":{{\"qemu\":{{\"micro\":1,\"minor\":0,\"major\":5}},\
             \"package\":\"StratoVirt-{}\"}},\"capabilities\":[]}}}}\r\n",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(text(greeting()), expected);
    }

    #[test]
    fn replies_put_return_or_error_before_id_and_omit_a_missing_id() {
        let id = serde_json::json!({"b": 1, "a": [true]});
        assert_eq!(
            text(success(&ReturnValue::empty(), Some(&id))),
            "{\"return\":{},\"id\":{\"a\":[true],\"b\":1}}\r\n"
        );
        assert_eq!(
            text(success(&ReturnValue::empty(), None)),
            "{\"return\":{}}\r\n"
        );
        let err = QmpError::DeviceNotFound("no such device".into());
        assert_eq!(
            text(error(&err, Some(&Value::from(7)))),
            "{\"error\":{\"class\":\"DeviceNotFound\",\"desc\":\"no such device\"},\"id\":7}\r\n"
        );
    }

    #[test]
    fn events_have_data_and_timestamp() {
        let ts = Timestamp {
            seconds: 12,
            microseconds: 34,
        };
        assert_eq!(
            text(event(&QmpEvent::Stop, ts)),
            "{\"event\":\"STOP\",\"data\":{},\"timestamp\":{\"seconds\":12,\"microseconds\":34}}\r\n"
        );
        assert_eq!(
            text(event(
                &QmpEvent::Shutdown(ShutdownReason::GuestShutdown),
                ts
            )),
            "{\"event\":\"SHUTDOWN\",\"data\":{\"guest\":true,\"reason\":\"guest-shutdown\"},\
             \"timestamp\":{\"seconds\":12,\"microseconds\":34}}\r\n"
        );
        assert_eq!(
            text(event(&QmpEvent::Shutdown(ShutdownReason::HostSignal), ts)),
            "{\"event\":\"SHUTDOWN\",\"data\":{\"guest\":false,\"reason\":\"host-signal\"},\
             \"timestamp\":{\"seconds\":12,\"microseconds\":34}}\r\n"
        );
        let error = QmpEvent::BlockIoError {
            device: "b0".into(),
            node_name: "d0".into(),
            operation: "write",
            action: "stop",
            nospace: true,
            reason: "No space left on device".into(),
        };
        assert_eq!(
            text(event(&error, ts)),
            "{\"event\":\"BLOCK_IO_ERROR\",\"data\":{\"device\":\"b0\",\"node-name\":\"d0\",\
             \"operation\":\"write\",\"action\":\"stop\",\"nospace\":true,\
             \"reason\":\"No space left on device\"},\
             \"timestamp\":{\"seconds\":12,\"microseconds\":34}}\r\n"
        );
        assert_eq!(
            text(event(
                &QmpEvent::Shutdown(ShutdownReason::HostQmpSystemReset),
                ts
            )),
            "{\"event\":\"SHUTDOWN\",\"data\":{\"guest\":false,\"reason\":\"host-qmp-system-reset\"},\
             \"timestamp\":{\"seconds\":12,\"microseconds\":34}}\r\n"
        );
        assert_eq!(
            text(event(&QmpEvent::Powerdown, ts)),
            "{\"event\":\"POWERDOWN\",\"data\":{},\"timestamp\":{\"seconds\":12,\"microseconds\":34}}\r\n"
        );
        assert_eq!(
            text(event(&QmpEvent::DeviceDeleted { id: "d1".into() }, ts)),
            "{\"event\":\"DEVICE_DELETED\",\"data\":{\"device\":\"d1\",\"path\":\"d1\"},\
             \"timestamp\":{\"seconds\":12,\"microseconds\":34}}\r\n"
        );
    }

    #[test]
    fn timestamp_microseconds_stay_below_one_second() {
        let now = Timestamp::now();
        assert!(now.microseconds < 1_000_000);
        assert!(now.seconds > 1_600_000_000);
    }
}
