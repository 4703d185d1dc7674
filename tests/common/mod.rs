//! Helpers for the `stratovirt` binary's integration tests: running the VMM under a
//! timeout with its output captured, locating the test guest, and hand-made kernels.

#![allow(dead_code)] // each test file uses its own subset

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The binary under test.
pub fn stratovirt() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_stratovirt"));
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// What a finished VMM run left behind.
pub struct Outcome {
    /// Exit status, `None` if the timeout killed it.
    pub status: Option<ExitStatus>,
    /// Everything written to stdout (the guest console).
    pub stdout: String,
    /// Everything written to stderr (errors, logs).
    pub stderr: String,
    /// Wall time of the run.
    pub elapsed: Duration,
}

impl Outcome {
    /// A report of the run for assertion messages: status, time, console and stderr.
    pub fn report(&self) -> String {
        format!(
            "status {:?} after {:.1} s\n--- console ---\n{}\n--- stderr ---\n{}",
            self.status,
            self.elapsed.as_secs_f64(),
            self.stdout,
            self.stderr
        )
    }

    /// Asserts a start-up failure: exit status 1 and exactly one `stratovirt: ...` line on
    /// stderr containing `needle`, no panic.
    pub fn assert_one_line_error(&self, needle: &str) {
        let status = self.status.expect("the VMM must end by itself");
        assert_eq!(status.code(), Some(1), "{}", self.report());
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line on stderr\n{}", self.report());
        assert!(lines[0].starts_with("stratovirt: "), "{}", self.report());
        assert!(
            lines[0].to_lowercase().contains(&needle.to_lowercase()),
            "expected {needle:?} in the message\n{}",
            self.report()
        );
        assert!(!self.stderr.contains("panicked"), "{}", self.report());
    }
}

/// Runs `cmd` to completion, killing it after `timeout`; stdout and stderr are collected
/// while it runs (so a chatty guest cannot block on a full pipe).
pub fn run(mut cmd: Command, timeout: Duration) -> Outcome {
    let start = Instant::now();
    let mut child = cmd.spawn().expect("spawn stratovirt");
    let mut out = child.stdout.take().expect("stdout piped");
    let mut err = child.stderr.take().expect("stderr piped");
    let out_thread = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    });
    let err_thread = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for stratovirt") {
            break Some(status);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    Outcome {
        status,
        stdout: out_thread.join().unwrap_or_default(),
        stderr: err_thread.join().unwrap_or_default(),
        elapsed: start.elapsed(),
    }
}

/// The test guest's directory: `$STRATOVIRT_GUEST_DIR`, or the build script's default cache.
/// Panics (fails the test) with how to build it when it is missing.
pub fn guest_dir() -> PathBuf {
    let dir = std::env::var_os("STRATOVIRT_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("STRATOVIRT_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                        .join(".cache/stratovirt")
                });
            cache.join("guest")
        });
    for file in ["vmlinux", "bzImage", "initramfs.cpio.gz"] {
        assert!(
            dir.join(file).is_file(),
            "test guest missing: {} not found; run scripts/guest/build.sh \
             (or set STRATOVIRT_GUEST_DIR)",
            dir.join(file).display()
        );
    }
    dir
}

/// A scratch directory for one test, removed when dropped.
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// A path inside the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Creates an empty scratch directory named after the test.
pub fn scratch_dir(name: &str) -> ScratchDir {
    let dir = std::env::temp_dir().join(format!("stratovirt-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    ScratchDir(dir)
}

/// Writes a minimal ELF64 x86_64 executable whose single segment holds `code` at physical
/// (and virtual) address `load_addr`, entered at its first byte.
pub fn write_tiny_elf(path: &Path, load_addr: u64, code: &[u8]) {
    const CODE_OFFSET: u64 = 0x1000;
    let mut elf = Vec::new();
    // ELF header.
    elf.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    elf.extend_from_slice(&[0; 8]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // EM_X86_64
    elf.extend_from_slice(&1u32.to_le_bytes()); // EV_CURRENT
    elf.extend_from_slice(&load_addr.to_le_bytes()); // e_entry
    elf.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    for half in [64u16, 56, 1, 64, 0, 0] {
        // e_ehsize, e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx
        elf.extend_from_slice(&half.to_le_bytes());
    }
    // Program header: PT_LOAD, R+X.
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&5u32.to_le_bytes());
    for word in [
        CODE_OFFSET,
        load_addr,
        load_addr,
        code.len() as u64,
        code.len() as u64,
        0x1000,
    ] {
        elf.extend_from_slice(&word.to_le_bytes());
    }
    elf.resize(CODE_OFFSET as usize, 0);
    elf.extend_from_slice(code);
    std::fs::write(path, elf).expect("write the test kernel");
}

/// A QMP connection that never negotiates (StratoVirt's way): commands straight after the
/// greeting.
pub struct PlainQmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl PlainQmp {
    /// Connects to `path` (retrying for a minute while the VMM starts) and reads the greeting.
    pub fn connect(path: &Path) -> PlainQmp {
        let deadline = Instant::now() + Duration::from_secs(60);
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(stream) => break stream,
                Err(e) => {
                    assert!(Instant::now() < deadline, "connect {}: {e}", path.display());
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut plain = PlainQmp {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        };
        assert!(plain.recv().get("QMP").is_some(), "greeting");
        plain
    }

    /// The next message; every message ends with CRLF.
    pub fn recv(&mut self) -> Value {
        let mut line = String::new();
        assert!(self.reader.read_line(&mut line).unwrap() > 0, "QMP closed");
        assert!(line.ends_with("\r\n"), "{line:?}");
        serde_json::from_str(line.trim_end()).unwrap()
    }

    /// Sends `command` (no arguments) and returns its reply, skipping events.
    pub fn execute(&mut self, command: &str) -> Value {
        self.writer
            .write_all(format!("{{\"execute\":\"{command}\"}}\n").as_bytes())
            .unwrap();
        loop {
            let message = self.recv();
            if message.get("event").is_none() {
                return message;
            }
        }
    }
}
