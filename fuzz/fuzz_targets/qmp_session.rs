//! A QMP client session (`Session`): the decoder, the optional negotiation, the request
//! checks and the command parser with its typed arguments, answering through a machine that
//! records calls.
//!
//! Input: one byte that chooses the read sizes, then the client's byte stream.
//!
//! Checked: nothing panics; everything written is lines of one JSON object each, ending in
//! `\r\n`, each a reply (`return` or `error`) or an event; exactly one reply per request
//! (per frame the decoder finds), until a command that ends the VM (`quit`, `system_reset`,
//! `system_powerdown`).

#![no_main]

use std::sync::Mutex;

use libfuzzer_sys::fuzz_target;
use machine_manager::qmp::fuzzing::{AfterReply, JsonStream, Session};
use machine_manager::qmp::{
    BlockInfo, BlockStatsInfo, BlockdevAdd, CpuInfo, DeviceAdd, QmpError, QmpHandler, VmRunState,
};
use serde_json::Value;

/// A machine that accepts what the micro VM's rules allow, without files or vCPUs.
#[derive(Default)]
struct Recorder {
    paused: bool,
    nodes: Vec<String>,
    devices: Vec<(String, usize)>,
}

impl QmpHandler for Recorder {
    fn stop(&mut self) -> Result<(), QmpError> {
        if std::mem::replace(&mut self.paused, true) {
            return Err(QmpError::Generic("already paused".into()));
        }
        Ok(())
    }
    fn cont(&mut self) -> Result<(), QmpError> {
        if !std::mem::replace(&mut self.paused, false) {
            return Err(QmpError::Generic("already running".into()));
        }
        Ok(())
    }
    fn quit(&mut self) {}
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
            thread_id: 1,
        }]
    }
    fn blockdev_add(&mut self, args: BlockdevAdd) -> Result<(), QmpError> {
        args.drive_config()
            .validate()
            .map_err(|e| QmpError::Generic(e.to_string()))?;
        if self.nodes.contains(&args.node_name) {
            return Err(QmpError::Generic("duplicate node".into()));
        }
        self.nodes.push(args.node_name);
        Ok(())
    }
    fn blockdev_del(&mut self, node_name: &str) -> Result<(), QmpError> {
        let before = self.nodes.len();
        self.nodes.retain(|n| n != node_name);
        if self.nodes.len() == before {
            return Err(QmpError::DeviceNotFound(node_name.into()));
        }
        Ok(())
    }
    fn device_add(&mut self, args: DeviceAdd) -> Result<(), QmpError> {
        if args.slot >= 4 || self.devices.iter().any(|(_, s)| *s == args.slot) {
            return Err(QmpError::Generic("slot".into()));
        }
        self.devices.push((args.id, args.slot));
        Ok(())
    }
    fn device_del(&mut self, id: &str) -> Result<(), QmpError> {
        let before = self.devices.len();
        self.devices.retain(|(d, _)| d != id);
        if self.devices.len() == before {
            return Err(QmpError::DeviceNotFound(id.into()));
        }
        Ok(())
    }
    fn block_set_io_throttle(
        &mut self,
        id: &str,
        throttle: util::aio::ThrottleConfig,
    ) -> Result<(), QmpError> {
        throttle.validate().map_err(QmpError::Generic)?;
        if !self.devices.iter().any(|(d, _)| d == id) {
            return Err(QmpError::DeviceNotFound(id.into()));
        }
        Ok(())
    }
    fn query_block(&self) -> Vec<BlockInfo> {
        Vec::new()
    }
    fn query_blockstats(&self) -> Vec<BlockStatsInfo> {
        Vec::new()
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, input)) = data.split_first() else {
        return;
    };
    let recorder = Mutex::new(Recorder::default());
    let handler: &Mutex<dyn QmpHandler> = &recorder;
    let mut session = Session::default();
    let mut out = Vec::new();
    let mut quit = false;
    let read = usize::from(seed % 32) + 1;
    for piece in input.chunks(read) {
        session.push_input(piece);
        if matches!(session.process(handler, &mut out), AfterReply::End(_)) {
            quit = true;
            break;
        }
    }

    let mut frames = 0usize;
    let mut stream = JsonStream::default();
    stream.push(input);
    while stream.next_frame().is_some() {
        frames += 1;
    }

    let text = std::str::from_utf8(&out).expect("output is UTF-8");
    assert!(text.is_empty() || text.ends_with("\r\n"), "{text:?}");
    let mut replies = 0usize;
    for line in text.split_terminator("\r\n") {
        assert!(!line.contains('\n') && !line.contains('\r'), "{line:?}");
        let message: Value = serde_json::from_str(line).expect("each line is JSON");
        let object = message.as_object().expect("each line is an object");
        let reply = object.contains_key("return") || object.contains_key("error");
        assert!(reply != object.contains_key("event"), "{line}");
        if reply {
            replies += 1;
        }
    }
    if quit {
        assert!(replies <= frames, "{replies} replies to {frames} requests");
    } else {
        assert_eq!(replies, frames, "one reply per request");
    }
});
