//! Helpers for the block-device guest tests: disk images (copies of the guest root, scratch
//! disks, an MBR-partitioned disk), the guest's marker lines, a VMM whose console is watched
//! while it runs, and a small QMP client.

#![allow(dead_code)] // each test file uses its own subset

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Adds 256 MiB of RAM, the console on stdio, a QMP socket (`qmp.sock`) and the VMM log
/// (`vmm.log`) in `dir` to `cmd`, starts it and connects to its QMP socket.
pub fn spawn_with_qmp(mut cmd: Command, dir: &Path) -> (LiveVm, Qmp) {
    let socket = dir.join("qmp.sock");
    cmd.args(["-m", "256", "-serial", "stdio"])
        .arg("-qmp")
        .arg(format!("unix:{},server,nowait", socket.display()))
        .arg("-D")
        .arg(dir.join("vmm.log"));
    let vm = LiveVm::spawn(cmd);
    let qmp = Qmp::connect(&socket, Duration::from_secs(30));
    (vm, qmp)
}

/// The guest's base command line (`cmdline` in the guest directory, from the build script).
pub fn base_cmdline(guest: &Path) -> String {
    std::fs::read_to_string(guest.join("cmdline"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| {
            "console=ttyS0 quiet reboot=k panic=-1 clearcpuid=cx16,popcnt,xsave,xsaveopt,rdrand,\
             rdseed,rdtscp,rdpid,fsgsbase,smap,clflushopt,clwb,arch_capabilities"
                .to_string()
        })
}

/// A private copy of the guest's ext4 root image (the guest writes to it).
pub fn copy_rootfs(guest: &Path, dir: &Path) -> PathBuf {
    let source = guest.join("rootfs.ext4");
    assert!(
        source.is_file(),
        "{} missing; run scripts/guest/build.sh",
        source.display()
    );
    let copy = dir.join("rootfs.ext4");
    std::fs::copy(&source, &copy).expect("copy rootfs.ext4");
    copy
}

/// `data` in base64 (for the guest's `sv.cmd=`).
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A zero-filled disk image of `bytes`.
pub fn scratch_disk(path: &Path, bytes: u64) -> PathBuf {
    let file = std::fs::File::create(path).expect("create a scratch disk");
    file.set_len(bytes).expect("size the scratch disk");
    path.to_path_buf()
}

/// A disk of `sectors` 512-byte sectors with an MBR holding one Linux partition from sector
/// `start` for `count` sectors; the partition's first sector holds `marker`.
pub fn mbr_disk(path: &Path, sectors: u64, start: u32, count: u32, marker: &[u8]) -> PathBuf {
    let mut image = vec![0u8; (sectors * 512) as usize];
    let entry = &mut image[446..462];
    entry[0] = 0x00; // not bootable
    entry[1..4].copy_from_slice(&[0xfe, 0xff, 0xff]); // CHS start: use LBA
    entry[4] = 0x83; // Linux
    entry[5..8].copy_from_slice(&[0xfe, 0xff, 0xff]); // CHS end: use LBA
    entry[8..12].copy_from_slice(&start.to_le_bytes());
    entry[12..16].copy_from_slice(&count.to_le_bytes());
    image[510] = 0x55;
    image[511] = 0xaa;
    let at = start as usize * 512;
    image[at..at + marker.len()].copy_from_slice(marker);
    std::fs::write(path, image).expect("write the MBR disk");
    path.to_path_buf()
}

/// The ext4 mount count of `image`, from `dumpe2fs -h`.
pub fn mount_count(image: &Path) -> u64 {
    let out = Command::new("dumpe2fs")
        .arg("-h")
        .arg(image)
        .output()
        .expect("run dumpe2fs (e2fsprogs)");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("Mount count:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no mount count in dumpe2fs output:\n{text}"))
}

/// The value of `key=` in a marker line (`SV-BLK dev=vda sectors=N ...`).
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
}

/// The console line starting with `prefix` whose `key` field is `value`.
pub fn marker<'a>(console: &'a str, prefix: &str, key: &str, value: &str) -> Option<&'a str> {
    console
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with(prefix) && field(l, key) == Some(value))
}

/// A running VMM whose stdout (the guest console) and stderr are collected as they come.
pub struct LiveVm {
    child: Child,
    console: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    started: Instant,
}

fn collect(mut from: impl Read + Send + 'static, into: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
}

impl LiveVm {
    /// Spawns `cmd` (stdout and stderr piped).
    pub fn spawn(mut cmd: Command) -> LiveVm {
        let mut child = cmd.spawn().expect("spawn stratovirt");
        let console = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        collect(child.stdout.take().expect("stdout piped"), console.clone());
        collect(child.stderr.take().expect("stderr piped"), stderr.clone());
        LiveVm {
            child,
            console,
            stderr,
            started: Instant::now(),
        }
    }

    /// The VMM's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The console so far.
    pub fn console(&self) -> String {
        self.console.lock().unwrap().clone()
    }

    /// Status, time, console and stderr, for assertion messages.
    pub fn report(&self) -> String {
        format!(
            "after {:.1} s\n--- console ---\n{}\n--- stderr ---\n{}",
            self.started.elapsed().as_secs_f64(),
            self.console(),
            self.stderr.lock().unwrap()
        )
    }

    /// Waits until the console holds `needle`, failing with the console after `timeout` or
    /// when the VMM exits first.
    pub fn wait_console(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let console = self.console();
            if console.contains(needle) {
                return console;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(200));
                panic!(
                    "VMM exited ({status}) before {needle:?} appeared\n{}",
                    self.report()
                );
            }
            if Instant::now() > deadline {
                let report = self.report();
                let _ = self.child.kill();
                panic!("timeout waiting for {needle:?}\n{report}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Sends `signal` (`"TERM"`, `"INT"`, ...) to the VMM with kill(1).
    pub fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -{signal} failed");
    }

    /// What the VMM wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits for the VMM to exit; kills it and fails after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(200));
                return status;
            }
            if Instant::now() > deadline {
                let report = self.report();
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("the VMM did not exit in {timeout:?}\n{report}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for LiveVm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A QMP client: one JSON object per line, replies matched in order, events kept aside.
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    /// Events received so far, oldest first.
    pub events: Vec<Value>,
}

impl Qmp {
    /// Connects to `path` (retrying while the VMM starts), reads the greeting and
    /// negotiates capabilities.
    pub fn connect(path: &Path, timeout: Duration) -> Qmp {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(stream) => break stream,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("cannot connect to QMP at {}: {e}", path.display()),
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(120)))
            .expect("read timeout");
        let mut qmp = Qmp {
            reader: BufReader::new(stream.try_clone().expect("clone the socket")),
            writer: stream,
            events: Vec::new(),
        };
        let greeting = qmp.read_message();
        assert!(greeting.get("QMP").is_some(), "greeting: {greeting}");
        let reply = qmp.execute("qmp_capabilities", None);
        assert!(reply.get("return").is_some(), "qmp_capabilities: {reply}");
        qmp
    }

    fn read_message(&mut self) -> Value {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).expect("read from QMP");
        assert!(n > 0, "QMP connection closed");
        assert!(line.ends_with("\r\n"), "QMP line without CRLF: {line:?}");
        serde_json::from_str(line.trim_end())
            .unwrap_or_else(|e| panic!("bad QMP line {line:?}: {e}"))
    }

    /// Sends raw bytes and returns the next reply (`return` or `error`), keeping events.
    pub fn raw(&mut self, text: &str) -> Value {
        self.writer
            .write_all(text.as_bytes())
            .expect("write to QMP");
        loop {
            let message = self.read_message();
            if message.get("event").is_some() {
                self.events.push(message);
            } else {
                return message;
            }
        }
    }

    /// Runs `command` with `arguments` and returns the reply.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Value {
        let mut request = serde_json::json!({ "execute": command });
        if let Some(arguments) = arguments {
            request["arguments"] = arguments;
        }
        self.raw(&format!("{request}\n"))
    }

    /// Runs `command` and asserts it succeeded.
    pub fn ok(&mut self, command: &str, arguments: Option<Value>) -> Value {
        let reply = self.execute(command, arguments.clone());
        assert!(
            reply.get("return").is_some(),
            "{command} {arguments:?} failed: {reply}"
        );
        reply["return"].clone()
    }

    /// Runs `command` and asserts it failed with error class `class`; returns the description.
    pub fn fails(&mut self, command: &str, arguments: Option<Value>, class: &str) -> String {
        let reply = self.execute(command, arguments.clone());
        assert_eq!(
            reply["error"]["class"], class,
            "{command} {arguments:?} should fail with {class}: {reply}"
        );
        reply["error"]["desc"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Waits for event `name` (already received or arriving within `timeout`) and removes it.
    pub fn wait_event(&mut self, name: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(at) = self.events.iter().position(|e| e["event"] == name) {
                return self.events.remove(at);
            }
            assert!(Instant::now() < deadline, "no {name} event in {timeout:?}");
            self.writer
                .set_read_timeout(Some(Duration::from_millis(500)))
                .expect("read timeout");
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) => panic!("QMP connection closed while waiting for {name}"),
                Ok(_) => {
                    let message: Value = serde_json::from_str(line.trim_end())
                        .unwrap_or_else(|e| panic!("bad QMP line {line:?}: {e}"));
                    self.events.push(message);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("QMP read failed: {e}"),
            }
            self.writer
                .set_read_timeout(Some(Duration::from_secs(120)))
                .expect("read timeout");
        }
    }
}
