//! Helpers of the machine's tests: a scratch directory and hand-made kernels.

#![allow(dead_code)] // each test file uses its own subset

use std::io::{BufRead, BufReader, Lines, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Duration;

use machine_manager::config::{BlkDeviceConfig, DriveConfig, VmConfig};
use micro_vm::{VmExit, Vmm, VmmError};
use serde_json::Value;

/// Where tiny kernels are loaded and entered.
pub const LOAD_ADDR: u64 = 0x20_0000;

/// A scratch directory, removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("micro-vm-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    /// A zero-filled image of `bytes` in the directory.
    pub fn disk(&self, name: &str, bytes: u64) -> PathBuf {
        let path = self.0.join(name);
        std::fs::File::create(&path)
            .unwrap()
            .set_len(bytes)
            .unwrap();
        path
    }

    /// An ELF64 x86_64 executable with `code` loaded and entered at [`LOAD_ADDR`].
    pub fn tiny_kernel(&self, name: &str, code: &[u8]) -> PathBuf {
        const CODE_OFFSET: usize = 0x1000;
        let mut elf = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        elf.extend_from_slice(&0x3eu16.to_le_bytes()); // x86_64
        elf.extend_from_slice(&1u32.to_le_bytes());
        elf.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // entry
        elf.extend_from_slice(&64u64.to_le_bytes()); // phoff
        elf.extend_from_slice(&0u64.to_le_bytes()); // shoff
        elf.extend_from_slice(&0u32.to_le_bytes()); // flags
        for half in [64u16, 56, 1, 64, 0, 0] {
            elf.extend_from_slice(&half.to_le_bytes());
        }
        elf.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        elf.extend_from_slice(&5u32.to_le_bytes()); // R+X
        let len = code.len() as u64;
        for word in [CODE_OFFSET as u64, LOAD_ADDR, LOAD_ADDR, len, len, 0x1000] {
            elf.extend_from_slice(&word.to_le_bytes());
        }
        elf.resize(CODE_OFFSET, 0);
        elf.extend_from_slice(code);
        let path = self.0.join(format!("{name}.elf"));
        std::fs::write(&path, elf).unwrap();
        path
    }

    /// A kernel that spins (`jmp $`).
    pub fn spin_kernel(&self) -> PathBuf {
        self.tiny_kernel("spin", &[0xeb, 0xfe])
    }

    /// A machine of 128 MiB that spins, with `drive` as device `b0` on iothread `io0` and a
    /// QMP socket at `qmp`.
    pub fn one_disk_vm(&self, drive: DriveConfig, qmp: PathBuf) -> VmConfig {
        let blk = BlkDeviceConfig::new("b0", &drive.id);
        VmConfig {
            kernel: Some(self.spin_kernel()),
            mem_size: 128 << 20,
            drives: vec![drive],
            blk_devices: vec![BlkDeviceConfig {
                iothread: Some("io0".into()),
                ..blk
            }],
            iothreads: vec!["io0".into()],
            qmp: Some(qmp),
            ..VmConfig::default()
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts and runs `vmm` on a thread of its own, `vmm-main`: `start` confines its caller to the
/// main thread's seccomp filter (and the vCPUs and iothreads to theirs), so it must not be the
/// test's thread, which goes on to remove files, start Python and so on.
pub fn spawn_vmm_main(vmm: Vmm) -> JoinHandle<Result<VmExit, VmmError>> {
    std::thread::Builder::new()
        .name("vmm-main".into())
        .spawn(move || {
            vmm.start()?;
            vmm.run()
        })
        .unwrap()
}

/// The kernel id of this process's thread named `name`.
pub fn thread_named(name: &str) -> Option<i32> {
    std::fs::read_dir("/proc/self/task")
        .ok()?
        .flatten()
        .find(|task| {
            std::fs::read_to_string(task.path().join("comm")).is_ok_and(|c| c.trim() == name)
        })
        .and_then(|task| task.file_name().to_str()?.parse().ok())
}

/// A QMP client over the VMM's socket: one JSON object per line.
pub struct QmpClient {
    lines: Lines<BufReader<UnixStream>>,
    writer: UnixStream,
}

impl QmpClient {
    /// Connects, reads the greeting and negotiates.
    pub fn connect(path: &Path, timeout: Duration) -> QmpClient {
        let stream = UnixStream::connect(path).unwrap();
        stream.set_read_timeout(Some(timeout)).unwrap();
        let writer = stream.try_clone().unwrap();
        let mut client = QmpClient {
            lines: BufReader::new(stream).lines(),
            writer,
        };
        assert!(client.next().unwrap().get("QMP").is_some(), "greeting");
        client.send("qmp_capabilities");
        assert_eq!(client.next().unwrap()["return"], serde_json::json!({}));
        client
    }

    /// Sends `{"execute": command}`.
    pub fn send(&mut self, command: &str) {
        let request = serde_json::json!({ "execute": command });
        self.writer
            .write_all(format!("{request}\n").as_bytes())
            .unwrap();
    }

    /// Runs `command` with `arguments`; returns its reply (`return` or `error`) and the events
    /// that came before it.
    pub fn execute(&mut self, command: &str, arguments: Value) -> (Value, Vec<Value>) {
        let request = serde_json::json!({ "execute": command, "arguments": arguments });
        self.writer
            .write_all(format!("{request}\n").as_bytes())
            .unwrap();
        let mut seen = self.until(|m| m.get("return").is_some() || m.get("error").is_some());
        let reply = seen.pop().unwrap();
        (reply, seen)
    }

    /// Runs `command` with `arguments` and checks that it succeeded; returns the events that
    /// came before its reply.
    pub fn ok(&mut self, command: &str, arguments: Value) -> Vec<Value> {
        let (reply, events) = self.execute(command, arguments.clone());
        assert!(
            reply.get("return").is_some(),
            "{command} {arguments}: {reply}"
        );
        events
    }

    /// The next message, `None` once the VMM closed the socket.
    pub fn next(&mut self) -> Option<Value> {
        let line = self.lines.next()?.ok()?;
        Some(serde_json::from_str(&line).unwrap())
    }

    /// Messages until one satisfies `done` (included); panics if the socket closes first.
    pub fn until(&mut self, mut done: impl FnMut(&Value) -> bool) -> Vec<Value> {
        let mut seen = Vec::new();
        loop {
            let message = self
                .next()
                .unwrap_or_else(|| panic!("QMP closed; received {seen:?}"));
            let last = done(&message);
            seen.push(message);
            if last {
                return seen;
            }
        }
    }
}
