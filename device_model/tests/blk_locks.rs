//! Image locks and image kinds at `BlockBackend::open`, on real files and a real loop device:
//! two backends on one image in one process (OFD locks conflict between open file
//! descriptions), `file.locking=off`, and QEMU's own tools as the other user (`qemu-io`,
//! `qemu-img` from qemu-utils, which `scripts/setup-host.sh` installs). Paths that are not
//! images (FIFO, character device, directory) are refused without blocking.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio};
use std::sync::{mpsc, Mutex, MutexGuard};
use std::time::Duration;

use common::TempDisk;
use device_model::virtio::block::{lock_bytes, LockConflict};
use device_model::virtio::{BlockBackend, BlockBackendConfig, VirtioError};
use util::aio::AioEngine;
use util::file::{conflicting_lock, FileKind, LockKind, Locking};
use util::testing::LoopDevice;

const IMAGE_BYTES: usize = 1 << 20;

/// Runs the tests of this file one at a time. A child that another test forks (qemu-io,
/// losetup, mkfifo) holds every open file description of the process between its fork and
/// its exec, and with them their OFD locks: a test that checks a lock is gone after a close
/// would see it linger.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn config(disk: &TempDisk, readonly: bool, locking: Locking) -> BlockBackendConfig {
    let mut config = disk.config(AioEngine::Off, false);
    config.readonly = readonly;
    config.locking = locking;
    config
}

fn open(disk: &TempDisk, readonly: bool) -> Result<BlockBackend, VirtioError> {
    BlockBackend::open(&config(disk, readonly, Locking::Auto))
}

/// The conflict that refused `result`, checking that its message names the image.
fn refused(result: Result<BlockBackend, VirtioError>, path: &Path) -> LockConflict {
    match result {
        Err(e @ VirtioError::ImageLocked { .. }) => {
            let text = e.to_string();
            assert!(
                text.starts_with(&format!("image {} is locked: ", path.display())),
                "{text}"
            );
            let VirtioError::ImageLocked { conflict, .. } = e else {
                unreachable!()
            };
            conflict
        }
        other => panic!("expected the image to be locked, got {other:?}"),
    }
}

#[test]
fn readers_share_a_writer_is_alone() {
    let _turn = one_at_a_time();
    let disk = TempDisk::new(&vec![0; IMAGE_BYTES]);
    let path = disk.path.clone();

    // Two readers.
    let reader = open(&disk, true).unwrap();
    assert!(reader.locked());
    let second_reader = open(&disk, true).unwrap();
    // A writer beside readers.
    let conflict = refused(open(&disk, false), &path);
    assert_eq!(conflict, LockConflict::Reader { pid: None });
    assert!(conflict.to_string().contains("read-only"), "{conflict}");
    drop(reader);
    refused(open(&disk, false), &path);
    drop(second_reader);

    // A writer alone, then a second writer and a reader beside it.
    let writer = open(&disk, false).unwrap();
    assert!(writer.locked());
    let conflict = refused(open(&disk, false), &path);
    assert_eq!(conflict, LockConflict::Writer { pid: None });
    assert_eq!(
        conflict.to_string(),
        "another process (or drive) uses it for writing"
    );
    assert_eq!(
        refused(open(&disk, true), &path),
        LockConflict::Writer { pid: None }
    );

    // A refused open keeps no lock: once the writer is gone, a writer gets the image.
    drop(writer);
    let writer = open(&disk, false).unwrap();
    drop(writer);
    open(&disk, true).unwrap();
}

#[test]
fn the_locks_are_qemus_bytes_and_go_with_the_file() {
    let _turn = one_at_a_time();
    let disk = TempDisk::new(&vec![0; IMAGE_BYTES]);
    let probe = std::fs::File::open(&disk.path).unwrap();
    let held = |byte| conflicting_lock(&probe, LockKind::Exclusive, byte, 1).unwrap();
    // QEMU's virtio-blk: CONSISTENT_READ (100) and WRITE (101) held, WRITE (201) not shared.
    for (readonly, bytes) in [(false, &[100, 101, 201][..]), (true, &[100, 201][..])] {
        assert_eq!(lock_bytes(readonly), bytes);
        let backend = open(&disk, readonly).unwrap();
        for byte in 0..300 {
            let expected = bytes.contains(&byte);
            assert_eq!(
                held(byte).is_some(),
                expected,
                "byte {byte} readonly={readonly}"
            );
        }
        drop(backend);
        assert!(bytes.iter().all(|&b| held(b).is_none()));
    }
}

#[test]
fn locking_off_takes_and_checks_nothing() {
    let _turn = one_at_a_time();
    let disk = TempDisk::new(&vec![0; IMAGE_BYTES]);
    let writer = open(&disk, false).unwrap();
    // The newcomer does not look...
    let unlocked = BlockBackend::open(&config(&disk, false, Locking::Off)).unwrap();
    assert!(!unlocked.locked());
    drop(writer);
    // ...and the holder without locks is invisible to the next one.
    open(&disk, false).unwrap();
    drop(unlocked);
    // `on` behaves as `auto` where the file system has OFD locks.
    let on = BlockBackend::open(&config(&disk, false, Locking::On)).unwrap();
    assert!(on.locked());
    refused(
        BlockBackend::open(&config(&disk, true, Locking::On)),
        &disk.path,
    );
}

#[test]
fn a_block_device_is_locked_like_a_file() {
    let _turn = one_at_a_time();
    let disk = TempDisk::new(&vec![0; IMAGE_BYTES]);
    let device = LoopDevice::attach(&disk.path, None).unwrap();
    let mut on_device = config(&disk, false, Locking::Auto);
    on_device.path = device.path().to_path_buf();
    let writer = BlockBackend::open(&on_device).unwrap();
    assert!(writer.locked());
    refused(BlockBackend::open(&on_device), device.path());
    drop(writer);
    BlockBackend::open(&on_device).unwrap();
}

fn not_an_image(path: &Path, readonly: bool) -> FileKind {
    let config = BlockBackendConfig {
        readonly,
        direct: false,
        aio: AioEngine::Off,
        ..BlockBackendConfig::new(path)
    };
    // Opened for real, a FIFO would wait for a writer (or reader) forever.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(BlockBackend::open(&config));
    });
    match rx.recv_timeout(Duration::from_secs(5)) {
        Ok(Err(e @ VirtioError::NotAnImage { .. })) => {
            let text = e.to_string();
            assert!(
                text.contains("only regular files and block devices can be disk images"),
                "{text}"
            );
            let VirtioError::NotAnImage { kind, .. } = e else {
                unreachable!()
            };
            kind
        }
        Ok(other) => panic!("{} accepted or wrong error: {other:?}", path.display()),
        Err(_) => panic!("opening {} blocked", path.display()),
    }
}

#[test]
fn fifos_devices_and_directories_are_not_images() {
    let _turn = one_at_a_time();
    let dir = std::env::temp_dir().join(format!("blk-kinds-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("fifo");
    let status = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(status.success());
    for readonly in [true, false] {
        assert_eq!(not_an_image(&fifo, readonly), FileKind::Fifo);
        assert_eq!(
            not_an_image(Path::new("/dev/zero"), readonly),
            FileKind::CharDevice
        );
        assert_eq!(not_an_image(&dir, readonly), FileKind::Directory);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

// QEMU's tools as the other user of the image.

fn qemu(program: &str, args: &[&str], image: &Path) -> Output {
    Command::new(program)
        .args(args)
        .arg(image)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} ({e}): install qemu-utils (scripts/setup-host.sh)")
        })
}

fn assert_fails_with(output: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains(needle),
        "expected failure with {needle:?}: {:?}\n{stderr}",
        output.status
    );
}

fn assert_succeeds(output: &Output) {
    assert!(
        output.status.success(),
        "{:?}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

const QEMU_WRITE: &[&str] = &["-f", "raw", "-c", "write 0 512"];
const QEMU_READ_ONLY: &[&str] = &["-r", "-f", "raw", "-c", "read 0 512"];

#[test]
fn qemu_tools_see_our_locks() {
    let _turn = one_at_a_time();
    let disk = TempDisk::new(&vec![0; IMAGE_BYTES]);
    let image = disk.path.as_path();
    let copy = image.with_extension("copy");
    let convert = |image: &Path| {
        let args = ["convert", "-f", "raw", "-O", "raw", image.to_str().unwrap()];
        qemu("qemu-img", &args, &copy)
    };
    let bench_write = &["bench", "-w", "-c", "1", "-f", "raw"];

    // Beside our writer: QEMU writers are refused, and so are QEMU readers that do not share
    // writing (`qemu-img convert`'s source); readers that share it (`qemu-io -r`) may read.
    let writer = open(&disk, false).unwrap();
    assert_fails_with(
        &qemu("qemu-io", QEMU_WRITE, image),
        "Failed to get \"write\" lock",
    );
    assert_fails_with(
        &qemu("qemu-img", bench_write, image),
        "Failed to get \"write\" lock",
    );
    assert_fails_with(&convert(image), "Failed to get shared \"write\" lock");
    assert_succeeds(&qemu("qemu-io", QEMU_READ_ONLY, image));
    drop(writer);

    // Beside our reader: QEMU readers are fine, writers are refused.
    let reader = open(&disk, true).unwrap();
    assert_succeeds(&qemu("qemu-io", QEMU_READ_ONLY, image));
    assert_succeeds(&convert(image));
    assert_fails_with(
        &qemu("qemu-io", QEMU_WRITE, image),
        "Failed to get \"write\" lock",
    );
    drop(reader);

    // Alone again, QEMU writes.
    assert_succeeds(&qemu("qemu-io", QEMU_WRITE, image));
    assert_succeeds(&qemu("qemu-img", bench_write, image));
    let _ = std::fs::remove_file(&copy);
}

/// `qemu-io` holding `image` open until dropped: it reads its commands from a pipe.
struct QemuIo {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl QemuIo {
    fn open(image: &Path, readonly: bool) -> QemuIo {
        let mut cmd = Command::new("qemu-io");
        if readonly {
            cmd.arg("-r");
        }
        let mut child = cmd
            .args(["-f", "raw"])
            .arg(image)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run qemu-io: install qemu-utils (scripts/setup-host.sh)");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut io = QemuIo {
            child,
            stdin,
            stdout,
        };
        // Once it answers a read, the image is open (and locked).
        io.command("read 0 512", "read 512/512 bytes");
        io
    }

    fn command(&mut self, command: &str, answer: &str) {
        writeln!(self.stdin, "{command}").unwrap();
        let mut seen = String::new();
        loop {
            let mut line = String::new();
            let n = self.stdout.read_line(&mut line).unwrap();
            assert!(n > 0, "qemu-io ended; output so far:\n{seen}");
            seen.push_str(&line);
            if line.contains(answer) {
                return;
            }
        }
    }
}

impl Drop for QemuIo {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.child.wait();
    }
}

#[test]
fn we_see_qemus_locks() {
    let _turn = one_at_a_time();
    let disk = TempDisk::new(&vec![0; IMAGE_BYTES]);

    let qemu_writer = QemuIo::open(&disk.path, false);
    assert_eq!(
        refused(open(&disk, false), &disk.path),
        LockConflict::Writer { pid: None }
    );
    assert_eq!(
        refused(open(&disk, true), &disk.path),
        LockConflict::Writer { pid: None }
    );
    drop(qemu_writer);
    drop(open(&disk, false).unwrap());

    // qemu-io -r holds consistent reads and shares everything: readers and writers go.
    let qemu_reader = QemuIo::open(&disk.path, true);
    drop(open(&disk, true).unwrap());
    drop(open(&disk, false).unwrap());
    drop(qemu_reader);
}
