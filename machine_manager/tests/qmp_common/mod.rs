//! Shared by the QMP integration tests: a test machine implementing `QmpHandler`, a server on
//! a real event-loop thread and a real Unix socket, and a line-oriented raw client.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::thread::JoinHandleExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use machine_manager::qmp::{
    BlockInfo, BlockStatsCounters, BlockStatsInfo, BlockdevAdd, CpuInfo, DeviceAdd, QmpError,
    QmpEventSender, QmpHandler, QmpServer, VmRunState,
};
use serde_json::Value;
use util::aio::ThrottleConfig;
use util::event_loop::EventLoop;

/// Slots of the test machine (the micro VM has 4 hot-replace slots).
pub const SLOTS: usize = 4;

/// An in-memory machine with the micro VM's rules: what the protocol tests drive.
#[derive(Debug)]
pub struct TestVm {
    pub paused: bool,
    pub cpus: usize,
    pub blockdevs: HashMap<String, BlockdevAdd>,
    /// Slot index → (device id, node name).
    pub slots: Vec<Option<(String, String)>>,
    pub quit_calls: usize,
    /// Every handler call, in order.
    pub calls: Vec<String>,
}

impl Default for TestVm {
    fn default() -> Self {
        TestVm {
            paused: false,
            cpus: 2,
            blockdevs: HashMap::new(),
            slots: vec![None; SLOTS],
            quit_calls: 0,
            calls: Vec::new(),
        }
    }
}

impl QmpHandler for TestVm {
    fn stop(&mut self) -> Result<(), QmpError> {
        self.calls.push("stop".into());
        if self.paused {
            return Err(QmpError::Generic("the VM is already paused".into()));
        }
        self.paused = true;
        Ok(())
    }

    fn cont(&mut self) -> Result<(), QmpError> {
        self.calls.push("cont".into());
        if !self.paused {
            return Err(QmpError::Generic("the VM is already running".into()));
        }
        self.paused = false;
        Ok(())
    }

    fn quit(&mut self) {
        self.calls.push("quit".into());
        self.quit_calls += 1;
    }

    fn query_status(&self) -> VmRunState {
        if self.paused {
            VmRunState::Paused
        } else {
            VmRunState::Running
        }
    }

    fn query_cpus(&self) -> Vec<CpuInfo> {
        (0..self.cpus)
            .map(|index| CpuInfo {
                index,
                current: index == 0,
                halted: index % 2 == 1,
                thread_id: 1000 + index as i64,
            })
            .collect()
    }

    fn blockdev_add(&mut self, args: BlockdevAdd) -> Result<(), QmpError> {
        self.calls.push(format!("blockdev_add {}", args.node_name));
        // The drive rules live in one place: the config's validation.
        args.drive_config()
            .validate()
            .map_err(|e| QmpError::Generic(e.to_string()))?;
        if self.blockdevs.contains_key(&args.node_name) {
            return Err(QmpError::Generic(format!(
                "node {} already exists",
                args.node_name
            )));
        }
        self.blockdevs.insert(args.node_name.clone(), args);
        Ok(())
    }

    fn blockdev_del(&mut self, node_name: &str) -> Result<(), QmpError> {
        self.calls.push(format!("blockdev_del {node_name}"));
        if self
            .slots
            .iter()
            .flatten()
            .any(|(_, node)| node == node_name)
        {
            return Err(QmpError::Generic(format!("node {node_name} is in use")));
        }
        self.blockdevs
            .remove(node_name)
            .map(|_| ())
            .ok_or_else(|| QmpError::DeviceNotFound(format!("no block node {node_name}")))
    }

    fn device_add(&mut self, args: DeviceAdd) -> Result<(), QmpError> {
        self.calls
            .push(format!("device_add {} {}", args.id, args.slot));
        if !self.blockdevs.contains_key(&args.drive) {
            return Err(QmpError::DeviceNotFound(format!(
                "no block node {}",
                args.drive
            )));
        }
        match self.slots.get_mut(args.slot) {
            None => Err(QmpError::Generic(format!(
                "slot {} does not exist (0..{SLOTS})",
                args.slot
            ))),
            Some(Some(_)) => Err(QmpError::Generic(format!("slot {} is taken", args.slot))),
            Some(slot) => {
                *slot = Some((args.id, args.drive));
                Ok(())
            }
        }
    }

    fn device_del(&mut self, id: &str) -> Result<(), QmpError> {
        self.calls.push(format!("device_del {id}"));
        let slot = self
            .slots
            .iter_mut()
            .find(|slot| matches!(slot, Some((dev, _)) if dev == id))
            .ok_or_else(|| QmpError::DeviceNotFound(format!("no device {id}")))?;
        *slot = None;
        Ok(())
    }

    fn block_set_io_throttle(
        &mut self,
        id: &str,
        throttle: ThrottleConfig,
    ) -> Result<(), QmpError> {
        self.calls.push(format!(
            "block_set_io_throttle {id} {}",
            throttle.iops_total.avg
        ));
        self.slots
            .iter()
            .flatten()
            .any(|(dev, _)| dev == id)
            .then_some(())
            .ok_or_else(|| QmpError::DeviceNotFound(format!("no device {id}")))
    }

    fn query_block(&self) -> Vec<BlockInfo> {
        self.slots
            .iter()
            .flatten()
            .map(|(dev, node)| BlockInfo {
                device: node.clone(),
                qdev: dev.clone(),
                locked: false,
                removable: false,
                kind: "unknown",
                inserted: None,
            })
            .collect()
    }

    fn query_blockstats(&self) -> Vec<BlockStatsInfo> {
        self.slots
            .iter()
            .flatten()
            .map(|(dev, node)| BlockStatsInfo {
                device: node.clone(),
                qdev: dev.clone(),
                node_name: node.clone(),
                stats: BlockStatsCounters::default(),
            })
            .collect()
    }
}

/// A unique socket path in the temp directory.
pub fn socket_path(name: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    std::env::temp_dir().join(format!(
        "qmp-test-{}-{}-{name}.sock",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    ))
}

/// A QMP server on its own event-loop thread, stopped and joined when dropped.
pub struct Harness {
    pub path: PathBuf,
    pub vm: Arc<Mutex<TestVm>>,
    pub events: QmpEventSender,
    pub event_loop: Arc<EventLoop>,
    thread: Option<JoinHandle<()>>,
}

impl Harness {
    pub fn start(name: &str) -> Self {
        Self::with_vm(name, TestVm::default())
    }

    pub fn with_vm(name: &str, vm: TestVm) -> Self {
        let path = socket_path(name);
        let vm = Arc::new(Mutex::new(vm));
        let handler: Arc<Mutex<dyn QmpHandler>> = vm.clone();
        let server = QmpServer::new(&path, handler).expect("QMP server");
        let event_loop = EventLoop::new().expect("event loop");
        let events = server.register(&event_loop).expect("register");
        let runner = event_loop.clone();
        let thread = std::thread::Builder::new()
            .name("qmp-test-loop".into())
            .spawn(move || runner.run().expect("event loop run"))
            .expect("spawn the event-loop thread");
        Harness {
            path,
            vm,
            events,
            event_loop,
            thread: Some(thread),
        }
    }

    /// A connected client that has read the greeting.
    pub fn connect(&self) -> Client {
        let mut client = Client::connect(&self.path);
        let greeting = client.recv();
        assert!(greeting.get("QMP").is_some(), "not a greeting: {greeting}");
        client
    }

    /// A connected client in command mode.
    pub fn negotiated(&self) -> Client {
        let mut client = self.connect();
        assert_eq!(
            client.execute(r#"{"execute":"qmp_capabilities"}"#),
            serde_json::json!({"return": {}})
        );
        client
    }

    /// CPU time (user + system) the server's event-loop thread has used so far.
    pub fn server_cpu_time(&self) -> Duration {
        let thread = self.thread.as_ref().expect("the event loop runs");
        let mut clock: libc::clockid_t = 0;
        // SAFETY: the pthread_t belongs to a thread that is not joined yet (its JoinHandle is
        // held by `self`), and `clock` is a valid place for the result.
        let rc = unsafe { libc::pthread_getcpuclockid(thread.as_pthread_t(), &mut clock) };
        assert_eq!(rc, 0, "pthread_getcpuclockid failed: {rc}");
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `clock` is the CPU-time clock of a live thread, `now` a valid timespec.
        let rc = unsafe { libc::clock_gettime(clock, &mut now) };
        assert_eq!(rc, 0, "clock_gettime: {}", std::io::Error::last_os_error());
        Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
    }

    pub fn vm(&self) -> std::sync::MutexGuard<'_, TestVm> {
        self.vm.lock().unwrap()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.event_loop.stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A raw client reading `\r\n`-terminated lines.
pub struct Client {
    pub stream: UnixStream,
    pending: Vec<u8>,
}

impl Client {
    pub fn connect(path: &Path) -> Self {
        let stream = UnixStream::connect(path).expect("connect to the QMP socket");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Client {
            stream,
            pending: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send to the server");
    }

    /// The next line, without its `\r\n` (which every server message must end with).
    pub fn recv_line(&mut self) -> String {
        loop {
            if let Some(end) = self.pending.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.pending.drain(..end + 2).collect();
                return String::from_utf8(line[..end].to_vec()).expect("UTF-8 line");
            }
            let mut buf = [0u8; 65536];
            let n = self.stream.read(&mut buf).expect("read from the server");
            assert!(
                n > 0,
                "server closed the connection; unterminated bytes: {:?}",
                String::from_utf8_lossy(&self.pending)
            );
            self.pending.extend_from_slice(&buf[..n]);
        }
    }

    /// The next message as JSON; it must be one object on one line.
    pub fn recv(&mut self) -> Value {
        let line = self.recv_line();
        assert!(!line.contains('\n'), "message spans lines: {line:?}");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad JSON {line:?}: {e}"))
    }

    /// Sends `request` and returns the next message.
    pub fn execute(&mut self, request: &str) -> Value {
        self.send(request.as_bytes());
        self.recv()
    }

    /// Asserts that nothing arrives within `wait`.
    pub fn expect_silence(&mut self, wait: Duration) {
        assert!(self.pending.is_empty(), "unread: {:?}", self.pending);
        self.stream.set_read_timeout(Some(wait)).unwrap();
        let mut buf = [0u8; 1024];
        match self.stream.read(&mut buf) {
            Ok(n) => panic!("unexpected bytes: {:?}", String::from_utf8_lossy(&buf[..n])),
            Err(e) => assert!(
                matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
                "{e}"
            ),
        }
        self.stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
    }

    /// Asserts that the server closes the connection (after any bytes still unread).
    pub fn expect_closed(&mut self) -> Vec<u8> {
        let mut rest = std::mem::take(&mut self.pending);
        if let Err(e) = self.stream.read_to_end(&mut rest) {
            panic!(
                "the server did not close the connection ({e}); {} bytes read",
                rest.len()
            );
        }
        rest
    }
}

/// The error class of a reply, panicking if it is not an error.
pub fn error_class(reply: &Value) -> &str {
    reply["error"]["class"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error reply: {reply}"))
}

/// The error description of a reply.
pub fn error_desc(reply: &Value) -> &str {
    reply["error"]["desc"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error reply: {reply}"))
}
