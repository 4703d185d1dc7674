//! One client's protocol state: request checking and dispatch.
//!
//! ```text
//!   connect ──► greeting ──► [first request not answered yet] ──any reply──► [events flow]
//!                              every command works (no negotiation needed, as StratoVirt);
//!                              qmp_capabilities answers {} whenever it is sent
//! ```
//!
//! Invariants:
//! - Commands work straight after the greeting, as in StratoVirt; `qmp_capabilities` is
//!   optional and answers `{}` each time, so QEMU clients that negotiate keep working.
//! - Events reach a client only once its first request has been answered
//!   ([`Session::ready_for_events`]): a QEMU client's negotiation reads the reply to
//!   `qmp_capabilities` as the next message after the greeting and fails on anything else.
//!   Events raised before that are held for the client, not dropped (see `server.rs`).
//! - Exactly one reply per request object, carrying the request's `id` when it had one.
//! - Malformed input gets an error reply without `id` (none could be read).
//! - The server's own events for a command (`STOP`, `RESUME`, `DEVICE_DELETED`, `POWERDOWN`)
//!   are written before its reply, as QEMU and StratoVirt do; `SHUTDOWN` for `quit`,
//!   `system_reset` and `system_powerdown` after it.

use std::sync::Mutex;

use serde_json::{Map, Value};

use super::commands::{Command, COMMANDS};
use super::decoder::{Frame, JsonStream};
use super::handler::{
    hotpluggable_cpus, CpuInfoReply, KvmInfo, MachineInfo, NameInfo, QmpError, QmpHandler,
    StatusInfo, TargetInfo,
};
use super::message::{self, QmpEvent, ReturnValue, ShutdownReason, Timestamp, Version, EVENTS};
use crate::config::{MACHINE_TYPE, MAX_CPUS};

/// How a request asked the VM to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// `quit`: [`QmpHandler::quit`].
    Quit,
    /// `system_reset`: [`QmpHandler::system_reset`].
    Reset,
    /// `system_powerdown`: [`QmpHandler::system_powerdown`].
    Powerdown,
}

/// What the server must do once the replies of a request are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterReply {
    /// Nothing: read the next request.
    Continue,
    /// Flush the output, then end the VM the way the request asked; ignore further input.
    End(Ending),
}

/// The protocol state of one connection.
#[derive(Debug, Default)]
pub struct Session {
    input: JsonStream,
    answered: bool,
}

impl Session {
    /// Whether the client's first request has been answered, so events may be sent.
    pub(crate) fn ready_for_events(&self) -> bool {
        self.answered
    }

    /// Buffers bytes read from the client.
    pub fn push_input(&mut self, bytes: &[u8]) {
        self.input.push(bytes);
    }

    /// Answers every complete request buffered so far, appending the output to `out`.
    /// Stops early, leaving later input unread, after `quit`.
    pub fn process(&mut self, handler: &Mutex<dyn QmpHandler>, out: &mut Vec<u8>) -> AfterReply {
        while let Some(frame) = self.input.next_frame() {
            let after = match frame {
                Frame::Value(request) => self.handle_request(request, handler, out),
                Frame::Malformed(reason) => {
                    util::warn_ratelimited!("qmp: {reason}");
                    out.extend(message::error(&QmpError::Generic(reason), None));
                    AfterReply::Continue
                }
            };
            self.answered = true;
            if after != AfterReply::Continue {
                return after;
            }
        }
        AfterReply::Continue
    }

    fn handle_request(
        &mut self,
        request: Value,
        handler: &Mutex<dyn QmpHandler>,
        out: &mut Vec<u8>,
    ) -> AfterReply {
        let Value::Object(mut request) = request else {
            out.extend(message::error(
                &QmpError::Generic("QMP input must be a JSON object".into()),
                None,
            ));
            return AfterReply::Continue;
        };
        let id = request.remove("id");
        let result =
            split_request(request).and_then(|(name, arguments)| Command::parse(&name, arguments));
        let command = match result {
            Ok(command) => command,
            Err(e) => {
                util::debug_ratelimited!("qmp: request refused: {e}");
                out.extend(message::error(&e, id.as_ref()));
                return AfterReply::Continue;
            }
        };
        log::debug!("qmp: executing {command:?}");
        let ending = match command {
            Command::Quit => Some(Ending::Quit),
            Command::SystemReset => Some(Ending::Reset),
            Command::SystemPowerdown => Some(Ending::Powerdown),
            _ => None,
        };
        let (result, event) = {
            let mut handler = handler.lock().unwrap_or_else(|e| e.into_inner());
            self.execute(command, &mut *handler)
        };
        if result.is_ok() {
            out.extend(
                event
                    .map(|e| message::event(&e, Timestamp::now()))
                    .unwrap_or_default(),
            );
        }
        match &result {
            Ok(value) => out.extend(message::success(value, id.as_ref())),
            Err(e) => out.extend(message::error(e, id.as_ref())),
        }
        let Some(ending) = ending else {
            return AfterReply::Continue;
        };
        let reason = match ending {
            Ending::Quit | Ending::Powerdown => ShutdownReason::HostQmpQuit,
            Ending::Reset => ShutdownReason::HostQmpSystemReset,
        };
        out.extend(message::event(
            &QmpEvent::Shutdown(reason),
            Timestamp::now(),
        ));
        AfterReply::End(ending)
    }

    /// Runs `command`; returns its result and the event the server emits before its reply on
    /// success (the `SHUTDOWN` of a request that ends the VM comes after the reply).
    fn execute(
        &mut self,
        command: Command,
        handler: &mut dyn QmpHandler,
    ) -> (Result<ReturnValue, QmpError>, Option<QmpEvent>) {
        let empty = |result: Result<(), QmpError>| result.map(|()| ReturnValue::empty());
        let names = |list: &[&'static str]| {
            ReturnValue::Names(list.iter().map(|&name| NameInfo { name }).collect())
        };
        match command {
            // Optional, and answered each time, as StratoVirt does.
            Command::QmpCapabilities => (Ok(ReturnValue::empty()), None),
            Command::Quit | Command::SystemReset => (Ok(ReturnValue::empty()), None),
            Command::SystemPowerdown => (Ok(ReturnValue::empty()), Some(QmpEvent::Powerdown)),
            Command::QueryVersion => (Ok(ReturnValue::Version(Version::current())), None),
            Command::QueryCommands => (Ok(names(COMMANDS)), None),
            Command::QueryEvents => (Ok(names(EVENTS)), None),
            Command::QueryTarget => (Ok(ReturnValue::Target(TargetInfo { arch: "x86_64" })), None),
            Command::QueryKvm => (
                Ok(ReturnValue::Kvm(KvmInfo {
                    enabled: true,
                    present: true,
                })),
                None,
            ),
            Command::QueryMachines => (
                Ok(ReturnValue::Machines(vec![MachineInfo {
                    hotpluggable_cpus: false,
                    name: MACHINE_TYPE,
                    numa_mem_supported: false,
                    cpu_max: MAX_CPUS,
                    deprecated: false,
                }])),
                None,
            ),
            Command::QueryHotpluggableCpus => (
                Ok(ReturnValue::HotpluggableCpus(hotpluggable_cpus(
                    handler.cpu_topology(),
                ))),
                None,
            ),
            Command::Stop => (empty(handler.stop()), Some(QmpEvent::Stop)),
            Command::Cont => (empty(handler.cont()), Some(QmpEvent::Resume)),
            Command::QueryStatus => (
                Ok(ReturnValue::Status(StatusInfo::from(
                    handler.query_status(),
                ))),
                None,
            ),
            Command::QueryCpus => (
                Ok(ReturnValue::Cpus(
                    handler
                        .query_cpus()
                        .into_iter()
                        .map(CpuInfoReply::from)
                        .collect(),
                )),
                None,
            ),
            Command::BlockdevAdd(args) => (empty(handler.blockdev_add(args)), None),
            Command::BlockdevDel(node_name) => (empty(handler.blockdev_del(&node_name)), None),
            Command::DeviceAdd(args) => (empty(handler.device_add(args)), None),
            Command::DeviceDel(id) => {
                let result = empty(handler.device_del(&id));
                (result, Some(QmpEvent::DeviceDeleted { id }))
            }
            Command::BlockSetIoThrottle(id, throttle) => {
                (empty(handler.block_set_io_throttle(&id, throttle)), None)
            }
            Command::QueryBlock => (json(&handler.query_block()), None),
            Command::QueryBlockstats => (json(&handler.query_blockstats()), None),
        }
    }
}

/// A reply value from a serializable one.
fn json<T: serde::Serialize>(value: &T) -> Result<ReturnValue, QmpError> {
    serde_json::to_value(value)
        .map(ReturnValue::Json)
        .map_err(|e| QmpError::Generic(format!("cannot encode the reply: {e}")))
}

/// Checks the request's members and returns the command name and its arguments.
fn split_request(
    mut request: Map<String, Value>,
) -> Result<(String, Option<Map<String, Value>>), QmpError> {
    let name = match request.remove("execute") {
        Some(Value::String(name)) => name,
        Some(_) => {
            return Err(QmpError::Generic(
                "QMP input member 'execute' must be a string".into(),
            ))
        }
        None => return Err(QmpError::Generic("QMP input lacks member 'execute'".into())),
    };
    let arguments = match request.remove("arguments") {
        Some(Value::Object(arguments)) => Some(arguments),
        Some(_) => {
            return Err(QmpError::Generic(
                "QMP input member 'arguments' must be an object".into(),
            ))
        }
        None => None,
    };
    if let Some(unexpected) = request.keys().next() {
        return Err(QmpError::Generic(format!(
            "QMP input member '{unexpected}' is unexpected"
        )));
    }
    Ok((name, arguments))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qmp::commands::{BlockdevAdd, DeviceAdd};
    use crate::qmp::handler::{CpuInfo, VmRunState};
    use serde_json::json;

    #[derive(Default)]
    struct Recorder {
        paused: bool,
        calls: Vec<String>,
    }

    impl QmpHandler for Recorder {
        fn stop(&mut self) -> Result<(), QmpError> {
            self.calls.push("stop".into());
            if self.paused {
                return Err(QmpError::Generic("already paused".into()));
            }
            self.paused = true;
            Ok(())
        }
        fn cont(&mut self) -> Result<(), QmpError> {
            self.calls.push("cont".into());
            self.paused = false;
            Ok(())
        }
        fn quit(&mut self) {
            self.calls.push("quit".into());
        }
        fn query_status(&self) -> VmRunState {
            if self.paused {
                VmRunState::Paused
            } else {
                VmRunState::Running
            }
        }
        fn query_cpus(&self) -> Vec<CpuInfo> {
            vec![CpuInfo {
                index: 0,
                current: true,
                halted: false,
                thread_id: 42,
            }]
        }
        fn blockdev_add(&mut self, args: BlockdevAdd) -> Result<(), QmpError> {
            self.calls.push(format!("blockdev_add {}", args.node_name));
            Ok(())
        }
        fn blockdev_del(&mut self, node_name: &str) -> Result<(), QmpError> {
            self.calls.push(format!("blockdev_del {node_name}"));
            Ok(())
        }
        fn device_add(&mut self, args: DeviceAdd) -> Result<(), QmpError> {
            self.calls
                .push(format!("device_add {} {}", args.id, args.slot));
            Ok(())
        }
        fn device_del(&mut self, id: &str) -> Result<(), QmpError> {
            Err(QmpError::DeviceNotFound(format!("no device {id}")))
        }
        fn block_set_io_throttle(
            &mut self,
            id: &str,
            _: util::aio::ThrottleConfig,
        ) -> Result<(), QmpError> {
            Err(QmpError::DeviceNotFound(format!("no device {id}")))
        }
        fn query_block(&self) -> Vec<crate::qmp::BlockInfo> {
            Vec::new()
        }
        fn query_blockstats(&self) -> Vec<crate::qmp::BlockStatsInfo> {
            Vec::new()
        }
    }

    /// Feeds `input` and returns the output lines parsed as JSON, and what to do next.
    fn run(
        session: &mut Session,
        handler: &Mutex<Recorder>,
        input: &str,
    ) -> (Vec<Value>, AfterReply) {
        session.push_input(input.as_bytes());
        let mut out = Vec::new();
        let after = session.process(handler, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.is_empty() || text.ends_with("\r\n"), "{text:?}");
        let lines = text
            .split_terminator("\r\n")
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        (lines, after)
    }

    fn negotiated() -> Session {
        let mut session = Session::default();
        let handler = Mutex::new(Recorder::default());
        let (lines, _) = run(&mut session, &handler, r#"{"execute":"qmp_capabilities"}"#);
        assert_eq!(lines, vec![json!({"return": {}})]);
        session
    }

    #[test]
    fn commands_work_without_negotiation_and_capabilities_answer_each_time() {
        let mut session = Session::default();
        let handler = Mutex::new(Recorder::default());
        assert!(!session.ready_for_events());
        let (lines, _) = run(&mut session, &handler, r#"{"execute":"stop","id":1}"#);
        assert_eq!(lines[0]["event"], "STOP");
        assert_eq!(lines[1], json!({"return": {}, "id": 1}));
        assert_eq!(handler.lock().unwrap().calls, ["stop"]);
        assert!(session.ready_for_events());
        let (lines, _) = run(
            &mut session,
            &handler,
            r#"{"execute":"qmp_capabilities","id":"a"}{"execute":"qmp_capabilities","id":"b"}"#,
        );
        assert_eq!(lines[0], json!({"return": {}, "id": "a"}));
        assert_eq!(lines[1], json!({"return": {}, "id": "b"}));
    }

    #[test]
    fn any_reply_makes_the_session_ready_for_events() {
        for input in [
            r#"{"execute":"qmp_capabilities"}"#,
            "{oops}\n",
            r#"{"execute":"nope"}"#,
        ] {
            let mut session = Session::default();
            let handler = Mutex::new(Recorder::default());
            let (lines, _) = run(&mut session, &handler, input);
            assert_eq!(lines.len(), 1, "{input}");
            assert!(session.ready_for_events(), "{input}");
        }
    }

    #[test]
    fn request_shape_errors_are_generic() {
        let mut session = negotiated();
        let handler = Mutex::new(Recorder::default());
        for (input, needle) in [
            (r#"[1]"#, "JSON object"),
            (r#"{"id":5}"#, "lacks member 'execute'"),
            (r#"{"execute":5,"id":5}"#, "must be a string"),
            (
                r#"{"execute":"stop","arguments":[],"id":5}"#,
                "'arguments' must be an object",
            ),
            (
                r#"{"execute":"stop","extra":1,"id":5}"#,
                "'extra' is unexpected",
            ),
        ] {
            let (lines, _) = run(&mut session, &handler, input);
            assert_eq!(lines.len(), 1, "{input}");
            assert_eq!(lines[0]["error"]["class"], "GenericError", "{input}");
            let desc = lines[0]["error"]["desc"].as_str().unwrap();
            assert!(desc.contains(needle), "{input}: {desc}");
        }
    }

    #[test]
    fn stop_emits_stop_before_its_reply_and_errors_emit_nothing() {
        let mut session = negotiated();
        let handler = Mutex::new(Recorder::default());
        let (lines, _) = run(&mut session, &handler, r#"{"execute":"stop","id":1}"#);
        assert_eq!(lines[0]["event"], "STOP");
        assert_eq!(lines[1], json!({"return": {}, "id": 1}));
        let (lines, _) = run(&mut session, &handler, r#"{"execute":"stop","id":2}"#);
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["error"]["class"], "GenericError");
        let (lines, _) = run(
            &mut session,
            &handler,
            r#"{"execute":"device_del","arguments":{"id":"x"}}"#,
        );
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["error"]["class"], "DeviceNotFound");
    }

    #[test]
    fn quit_replies_then_emits_shutdown_and_leaves_later_input() {
        let mut session = negotiated();
        let handler = Mutex::new(Recorder::default());
        let (lines, after) = run(
            &mut session,
            &handler,
            r#"{"execute":"quit","id":9}{"execute":"stop"}"#,
        );
        assert_eq!(after, AfterReply::End(Ending::Quit));
        assert_eq!(lines[0], json!({"return": {}, "id": 9}));
        assert_eq!(lines[1]["event"], "SHUTDOWN");
        assert_eq!(
            lines[1]["data"],
            json!({"guest": false, "reason": "host-qmp-quit"})
        );
        assert_eq!(lines.len(), 2);
        // The handler's quit() is the server's job, after flushing.
        assert!(handler.lock().unwrap().calls.is_empty());
    }

    #[test]
    fn system_reset_and_powerdown_end_the_vm_after_their_reply() {
        let mut session = Session::default();
        let handler = Mutex::new(Recorder::default());
        let (lines, after) = run(
            &mut session,
            &handler,
            r#"{"execute":"system_reset","id":1}"#,
        );
        assert_eq!(after, AfterReply::End(Ending::Reset));
        assert_eq!(lines[0], json!({"return": {}, "id": 1}));
        assert_eq!(lines[1]["event"], "SHUTDOWN");
        assert_eq!(
            lines[1]["data"],
            json!({"guest": false, "reason": "host-qmp-system-reset"})
        );
        let mut session = Session::default();
        let (lines, after) = run(&mut session, &handler, r#"{"execute":"system_powerdown"}"#);
        assert_eq!(after, AfterReply::End(Ending::Powerdown));
        assert_eq!(lines[0]["event"], "POWERDOWN");
        assert_eq!(lines[1], json!({"return": {}}));
        assert_eq!(lines[2]["event"], "SHUTDOWN");
        assert_eq!(
            lines[2]["data"],
            json!({"guest": false, "reason": "host-qmp-quit"})
        );
        // The handler is called by the server once the output is flushed.
        assert!(handler.lock().unwrap().calls.is_empty());
        let (_, after) = run(
            &mut Session::default(),
            &handler,
            r#"{"execute":"system_reset","arguments":{"now":1}}"#,
        );
        assert_eq!(
            after,
            AfterReply::Continue,
            "a refused request ends nothing"
        );
    }

    #[test]
    fn stratovirt_queries_have_stratovirts_replies() {
        let mut session = Session::default();
        let handler = Mutex::new(Recorder::default());
        let (lines, _) = run(
            &mut session,
            &handler,
            concat!(
                r#"{"execute":"query-version"}{"execute":"query-target"}{"execute":"query-kvm"}"#,
                r#"{"execute":"query-machines"}{"execute":"query-hotpluggable-cpus"}"#,
                r#"{"execute":"query-commands"}{"execute":"query-events"}"#
            ),
        );
        assert_eq!(
            lines[0]["return"]["qemu"],
            json!({"micro": 1, "minor": 0, "major": 5})
        );
        assert_eq!(
            lines[0]["return"]["package"],
            format!("StratoVirt-{}", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(lines[1], json!({"return": {"arch": "x86_64"}}));
        assert_eq!(
            lines[2],
            json!({"return": {"enabled": true, "present": true}})
        );
        assert_eq!(
            lines[3],
            json!({"return": [{"hotpluggable-cpus": false, "name": "microvm",
                               "numa-mem-supported": false, "cpu-max": 254,
                               "deprecated": false}]})
        );
        assert_eq!(
            lines[4],
            json!({"return": [{"type": "host-x86-cpu", "vcpus-count": 1,
                               "props": {"socket-id": 0, "die_id": 0, "thread-id": 0,
                                         "core-id": 0},
                               "qom-path": "/machine/unattached/device[0]"}]})
        );
        let names = |line: &Value| -> Vec<String> {
            line["return"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n["name"].as_str().unwrap().to_string())
                .collect()
        };
        let commands = names(&lines[5]);
        for command in [
            "qmp_capabilities",
            "quit",
            "query-hotpluggable-cpus",
            "system_reset",
        ] {
            assert!(
                commands.iter().any(|c| c == command),
                "{command}: {commands:?}"
            );
        }
        assert_eq!(
            names(&lines[6]),
            [
                "SHUTDOWN",
                "STOP",
                "RESUME",
                "POWERDOWN",
                "DEVICE_DELETED",
                "BLOCK_IO_ERROR"
            ]
        );
    }

    #[test]
    fn hotpluggable_cpus_follow_the_topology() {
        let topology = crate::config::CpuTopology {
            sockets: 2,
            cores: 2,
            threads: 2,
        };
        let cpus = serde_json::to_value(hotpluggable_cpus(topology)).unwrap();
        let props: Vec<(u64, u64, u64)> = cpus
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let p = &c["props"];
                (
                    p["socket-id"].as_u64().unwrap(),
                    p["core-id"].as_u64().unwrap(),
                    p["thread-id"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            props,
            [
                (0, 0, 0),
                (0, 0, 1),
                (0, 1, 0),
                (0, 1, 1),
                (1, 0, 0),
                (1, 0, 1),
                (1, 1, 0),
                (1, 1, 1)
            ]
        );
        assert_eq!(cpus[7]["qom-path"], "/machine/unattached/device[7]");
    }

    #[test]
    fn queries_return_qemu_shaped_values() {
        let mut session = negotiated();
        let handler = Mutex::new(Recorder::default());
        let (lines, _) = run(
            &mut session,
            &handler,
            r#"{"execute":"query-status"}{"execute":"query-cpus"}"#,
        );
        assert_eq!(
            lines[0],
            json!({"return": {"running": true, "singlestep": false, "status": "running"}})
        );
        assert_eq!(
            lines[1],
            json!({"return": [{"CPU": 0, "current": true, "halted": false,
                               "qom_path": "/machine/unattached/device[0]", "thread_id": 42}]})
        );
    }
}
