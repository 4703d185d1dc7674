//! virtio-rng driven by the in-process guest driver over the virtio-mmio register file, with
//! real entropy files: a regular file (known bytes, read in a loop), `/dev/urandom`, and a
//! FIFO that has nothing to give until the test writes to it (the device must wait for it on
//! its event loop, never block the loop). Also the rate limit, malformed chains and a reset
//! while a request waits.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use address_space::GuestMemory;
use device_model::virtio::driver::{Buffer, Completion, Driver, DriverConfig};
use device_model::virtio::rng::{RNG_QUEUE_SIZE, VIRTIO_ID_RNG};
use device_model::virtio::{
    EntropySource, Rng, RngHandle, VirtioDevice, VirtioMmio, STATUS_DEVICE_NEEDS_RESET,
};
use util::event_loop::EventLoopThread;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const RAM: u64 = 16 << 20;
const DRIVER_BASE: u64 = 0x10_0000;
const DATA: u64 = 0x40_0000;
const TIMEOUT: Duration = Duration::from_secs(20);

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("virtio-rng-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The device on its own event-loop thread, its transport, and the guest's driver.
struct Rig {
    driver: Driver,
    handle: RngHandle,
    mem: Arc<GuestMemory>,
    mmio: Arc<Mutex<VirtioMmio>>,
    thread: EventLoopThread,
}

impl Rig {
    fn new(path: &Path, bytes_per_sec: Option<u64>) -> Rig {
        let mem = Arc::new(GuestMemory::new(&[(0, RAM)]).unwrap());
        let thread = EventLoopThread::spawn("rng-test").unwrap();
        let rng = Rng::new(
            "rng0".into(),
            EntropySource::open(path).unwrap(),
            bytes_per_sec,
            thread.event_loop().clone(),
        );
        let handle = rng.handle();
        assert_eq!(rng.device_type(), VIRTIO_ID_RNG);
        assert_eq!(rng.queue_max_sizes(), [RNG_QUEUE_SIZE]);
        let device: Arc<Mutex<dyn VirtioDevice>> = Arc::new(Mutex::new(rng));
        let irq = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
        let mmio = Arc::new(Mutex::new(
            VirtioMmio::new(device, mem.clone(), irq.clone()).unwrap(),
        ));
        let driver = Driver::new(
            mmio.clone(),
            mem.clone(),
            irq,
            DriverConfig::new(DRIVER_BASE, 16),
        )
        .unwrap();
        Rig {
            driver,
            handle,
            mem,
            mmio,
            thread,
        }
    }

    /// Posts one writable buffer per length, at `DATA` upwards, and kicks.
    fn request(&mut self, lens: &[u32]) -> u16 {
        let mut gpa = DATA;
        let chain: Vec<Buffer> = lens
            .iter()
            .map(|&len| {
                let buffer = Buffer {
                    gpa,
                    len,
                    writable: true,
                };
                gpa += u64::from(len);
                buffer
            })
            .collect();
        self.mem.zero(DATA, gpa - DATA).unwrap();
        let head = self.driver.post(&chain).unwrap();
        self.driver.kick().unwrap();
        head
    }

    fn wait_one(&mut self) -> Completion {
        let mut done = Vec::new();
        self.driver.wait(1, TIMEOUT, &mut done).unwrap();
        assert_eq!(done.len(), 1, "{done:?}");
        done[0]
    }

    fn data(&self, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        self.mem.read(&mut buf, DATA).unwrap();
        buf
    }
}

#[test]
fn a_regular_file_is_served_in_order_and_in_a_loop() {
    let dir = Scratch::new("file");
    let path = dir.0.join("entropy");
    let pattern: Vec<u8> = (0..100u8).collect();
    std::fs::write(&path, &pattern).unwrap();
    let mut rig = Rig::new(&path, None);

    // Two buffers in one chain: filled in order.
    let head = rig.request(&[40, 24]);
    let done = rig.wait_one();
    assert_eq!((done.head, done.len), (head, 64));
    assert_eq!(rig.data(64), pattern[..64]);
    // The next request continues, then starts the file again.
    rig.request(&[64]);
    assert_eq!(rig.wait_one().len, 64);
    let expected: Vec<u8> = pattern[64..]
        .iter()
        .chain(&pattern[..28])
        .copied()
        .collect();
    assert_eq!(rig.data(64), expected);
    assert_eq!((rig.handle.requests(), rig.handle.bytes()), (2, 128));
}

#[test]
fn dev_urandom_fills_large_requests_up_to_the_cap() {
    let mut rig = Rig::new(Path::new("/dev/urandom"), None);
    rig.request(&[4096]);
    let done = rig.wait_one();
    assert!(done.len > 0 && done.len <= 4096, "{done:?}");
    let first = rig.data(done.len as usize);
    assert!(first.iter().any(|&b| b != 0), "entropy is not all zero");
    rig.request(&[4096]);
    let len = rig.wait_one().len as usize;
    let second = rig.data(len);
    assert_ne!(first, second);
    // A request larger than the cap gets the cap.
    rig.request(&[(128 << 10) as u32]);
    assert!(rig.wait_one().len as usize <= device_model::virtio::rng::MAX_REQUEST_BYTES);
}

#[test]
fn a_source_with_nothing_to_give_does_not_block_the_loop() {
    let dir = Scratch::new("fifo");
    let fifo = dir.0.join("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    let mut rig = Rig::new(&fifo, None);
    // A writer that has written nothing yet.
    let mut writer = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    let head = rig.request(&[64]);
    let mut done = Vec::new();
    rig.driver
        .wait(0, Duration::from_millis(300), &mut done)
        .unwrap();
    assert!(done.is_empty(), "answered with nothing to give: {done:?}");
    // The loop is free: a call runs on it at once.
    let start = Instant::now();
    rig.thread.event_loop().call(|| ()).unwrap();
    assert!(start.elapsed() < Duration::from_secs(5));
    assert!(rig
        .thread
        .event_loop()
        .handler_names()
        .contains(&"rng0-source".to_string()));
    // Bytes arrive: the waiting request gets them (what is there, not a full buffer).
    writer
        .write_all(b"0123456789abcdefghijklmnopqrstuv")
        .unwrap();
    let done = rig.wait_one();
    assert_eq!((done.head, done.len), (head, 32));
    assert_eq!(rig.data(32), b"0123456789abcdefghijklmnopqrstuv");

    // A reset while a request waits forgets it; the device serves again afterwards.
    rig.request(&[16]);
    std::thread::sleep(Duration::from_millis(100));
    let config = DriverConfig::new(DRIVER_BASE, 16);
    rig.driver.reinitialise(config).unwrap();
    assert!(!rig
        .thread
        .event_loop()
        .handler_names()
        .contains(&"rng0-source".to_string()));
    writer.write_all(b"after reset!").unwrap();
    rig.request(&[16]);
    assert_eq!(rig.wait_one().len, 12);
    assert_eq!(rig.data(12), b"after reset!");
}

#[test]
fn the_rate_limit_spreads_requests_over_time() {
    // 1000 bytes per second, a second's worth in reserve: the first 1000 bytes go at once,
    // what the second request gets is earned at the rate after them. It is answered with what
    // is there once a byte is (sooner when the test thread was slow to ask: a loaded host),
    // never with more than the time since the first request earned.
    let mut rig = Rig::new(Path::new("/dev/urandom"), Some(1000));
    let start = Instant::now();
    rig.request(&[1000]);
    assert_eq!(rig.wait_one().len, 1000);
    let first = start.elapsed();
    rig.request(&[1000]);
    let done = rig.wait_one();
    let second = start.elapsed();
    assert!(done.len > 0 && done.len <= 1000, "{done:?}");
    let earned = 1000.0 * second.as_secs_f64() + 1.0;
    assert!(
        f64::from(done.len) <= earned,
        "{} bytes after {second:?} (the first request after {first:?})",
        done.len
    );
    assert!(rig.handle.bytes() <= 2000);
}

#[test]
fn malformed_chains_get_nothing_and_the_device_goes_on() {
    let dir = Scratch::new("malformed");
    let path = dir.0.join("entropy");
    std::fs::write(&path, [0x5a; 64]).unwrap();
    let mut rig = Rig::new(&path, None);
    // A device-readable buffer: refused with 0 bytes, the file not read.
    let head = rig
        .driver
        .post(&[Buffer {
            gpa: DATA,
            len: 16,
            writable: false,
        }])
        .unwrap();
    rig.driver.kick().unwrap();
    let done = rig.wait_one();
    assert_eq!((done.head, done.len), (head, 0));
    // A buffer outside guest RAM: the same.
    rig.driver
        .post(&[Buffer {
            gpa: RAM - 8,
            len: 16,
            writable: true,
        }])
        .unwrap();
    rig.driver.kick().unwrap();
    assert_eq!(rig.wait_one().len, 0);
    assert_eq!(rig.handle.requests(), 0);
    rig.request(&[8]);
    assert_eq!(rig.wait_one().len, 8);
    assert_eq!(rig.data(8), [0x5a; 8]);
    let status = {
        let mut data = [0u8; 4];
        use address_space::BusDevice;
        rig.mmio
            .lock()
            .unwrap()
            .read(device_model::virtio::mmio::reg::STATUS, &mut data);
        u32::from_le_bytes(data)
    };
    assert_eq!(status & STATUS_DEVICE_NEEDS_RESET, 0);
}
