//! One client's protocol state: capabilities negotiation, request checking and dispatch.
//!
//! ```text
//!   connect ──► greeting ──► [negotiating] ──qmp_capabilities──► [command mode]
//!                               │ any other command: CommandNotFound
//!                               │ (events are not sent in this state)
//! ```
//!
//! Invariants:
//! - Exactly one reply per request object, carrying the request's `id` when it had one.
//! - Malformed input gets an error reply without `id` (none could be read).
//! - The server's own events for a command (`STOP`, `RESUME`, `DEVICE_DELETED`) are written
//!   before its reply, as QEMU and StratoVirt do; `SHUTDOWN` for `quit` after it.

use std::sync::Mutex;

use serde_json::{Map, Value};

use super::commands::{Command, QMP_CAPABILITIES};
use super::decoder::{Frame, JsonStream};
use super::handler::{CpuInfoReply, QmpError, QmpHandler, StatusInfo};
use super::message::{self, QmpEvent, ReturnValue, ShutdownReason, Timestamp};

/// What the server must do once the replies of a request are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterReply {
    /// Nothing: read the next request.
    Continue,
    /// Flush the output, then call [`QmpHandler::quit`]; ignore further input.
    Quit,
}

/// The protocol state of one connection.
#[derive(Debug, Default)]
pub struct Session {
    input: JsonStream,
    negotiated: bool,
}

impl Session {
    /// Whether `qmp_capabilities` succeeded, so events may be sent.
    pub fn negotiated(&self) -> bool {
        self.negotiated
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
            if after == AfterReply::Quit {
                return AfterReply::Quit;
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
        let result = split_request(request).and_then(|(name, arguments)| {
            self.check_mode(&name)?;
            Command::parse(&name, arguments)
        });
        let command = match result {
            Ok(command) => command,
            Err(e) => {
                util::debug_ratelimited!("qmp: request refused: {e}");
                out.extend(message::error(&e, id.as_ref()));
                return AfterReply::Continue;
            }
        };
        log::debug!("qmp: executing {command:?}");
        let is_quit = command == Command::Quit;
        let (result, event) = {
            let mut handler = handler.lock().unwrap_or_else(|e| e.into_inner());
            self.execute(command, &mut *handler)
        };
        let mut event_line = match (&result, event) {
            (Ok(_), Some(event)) => Some(message::event(&event, Timestamp::now())),
            _ => None,
        };
        if !is_quit {
            out.extend(event_line.take().unwrap_or_default());
        }
        match &result {
            Ok(value) => out.extend(message::success(value, id.as_ref())),
            Err(e) => out.extend(message::error(e, id.as_ref())),
        }
        if is_quit {
            out.extend(event_line.unwrap_or_default());
            return AfterReply::Quit;
        }
        AfterReply::Continue
    }

    /// Before negotiation only `qmp_capabilities` exists; after it, it is refused (as QEMU).
    fn check_mode(&self, name: &str) -> Result<(), QmpError> {
        match (self.negotiated, name == QMP_CAPABILITIES) {
            (false, false) => Err(QmpError::CommandNotFound(
                "Expecting capabilities negotiation with 'qmp_capabilities'".into(),
            )),
            (true, true) => Err(QmpError::CommandNotFound(
                "Capabilities negotiation is already complete, command ignored".into(),
            )),
            _ => Ok(()),
        }
    }

    /// Runs `command`; returns its result and the event the server emits on success.
    fn execute(
        &mut self,
        command: Command,
        handler: &mut dyn QmpHandler,
    ) -> (Result<ReturnValue, QmpError>, Option<QmpEvent>) {
        let empty = |result: Result<(), QmpError>| result.map(|()| ReturnValue::empty());
        match command {
            Command::QmpCapabilities => {
                self.negotiated = true;
                (Ok(ReturnValue::empty()), None)
            }
            Command::Quit => (
                Ok(ReturnValue::empty()),
                Some(QmpEvent::Shutdown(ShutdownReason::HostQmpQuit)),
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
        }
    }
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
    fn only_qmp_capabilities_is_accepted_before_negotiation() {
        let mut session = Session::default();
        let handler = Mutex::new(Recorder::default());
        let (lines, _) = run(&mut session, &handler, r#"{"execute":"stop","id":1}"#);
        assert_eq!(lines[0]["error"]["class"], "CommandNotFound");
        assert_eq!(lines[0]["id"], 1);
        assert!(handler.lock().unwrap().calls.is_empty());
        assert!(!session.negotiated());
        let (lines, _) = run(
            &mut session,
            &handler,
            r#"{"execute":"qmp_capabilities","id":"a"}{"execute":"qmp_capabilities","id":"b"}"#,
        );
        assert_eq!(lines[0], json!({"return": {}, "id": "a"}));
        assert_eq!(lines[1]["error"]["class"], "CommandNotFound");
        assert_eq!(lines[1]["id"], "b");
        assert!(session.negotiated());
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
        assert_eq!(after, AfterReply::Quit);
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
