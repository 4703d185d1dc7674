//! A rig for virtio-blk tests: guest RAM, the device's own event-loop thread (an iothread; one
//! per queue with [`Rig::with_queues`]), a block device behind the virtio-mmio register file,
//! and the in-process guest driver on the test's thread. Real files, real engines. Dropping
//! the rig shuts the device down on its threads, then joins them, as the machine does.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use address_space::GuestMemory;
use device_model::virtio::block::request::{VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use device_model::virtio::driver::{Buffer, Completion, Driver, DriverConfig};
use device_model::virtio::{
    Block, BlockBackend, BlockBackendConfig, BlockHandle, VirtioDevice, VirtioMmio,
};
use util::aio::{AioEngine, ErrorAction};
use util::event_loop::EventLoopThread;
use util::testing::{IoThrottle, LoopDevice};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Guest RAM size.
pub const RAM: u64 = 64 << 20;
/// Where the driver keeps its rings.
pub const DRIVER_BASE: u64 = 0x10_0000;
/// Where tests put data buffers.
pub const DATA: u64 = 0x40_0000;
/// How long a test waits for completions.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// Every engine, with every allowed `direct` value.
pub const MODES: [(AioEngine, bool); 7] = [
    (AioEngine::Off, false),
    (AioEngine::Off, true),
    (AioEngine::Threads, false),
    (AioEngine::Threads, true),
    (AioEngine::Native, true),
    (AioEngine::IoUring, false),
    (AioEngine::IoUring, true),
];

/// A disk image in the temporary directory, removed on drop.
pub struct TempDisk {
    pub path: PathBuf,
}

impl TempDisk {
    pub fn new(contents: &[u8]) -> TempDisk {
        TempDisk::new_in(&std::env::temp_dir(), contents)
    }

    /// An image in `dir`: tests that measure rates put theirs in memory
    /// (`/dev/shm`) so that the host disk is never the limit.
    pub fn new_in(dir: &std::path::Path, contents: &[u8]) -> TempDisk {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let path = dir.join(format!(
            "virtio-blk-test-{}-{}.img",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::write(&path, contents).unwrap();
        TempDisk { path }
    }

    pub fn contents(&self) -> Vec<u8> {
        std::fs::read(&self.path).unwrap()
    }

    pub fn config(&self, aio: AioEngine, direct: bool) -> BlockBackendConfig {
        BlockBackendConfig {
            direct,
            aio,
            serial: Some("virtio-test-serial-0123456789".into()),
            werror: ErrorAction::Report,
            ..BlockBackendConfig::new(self.path.clone())
        }
    }
}

impl Drop for TempDisk {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A small deterministic generator (xorshift64*).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

/// A running device with its driver.
pub struct Rig {
    pub driver: Driver,
    pub slot: BlockHandle,
    pub mem: Arc<GuestMemory>,
    pub mmio: Arc<Mutex<VirtioMmio>>,
    pub irq: Arc<EventFd>,
    pub config: DriverConfig,
    /// The thread of queue 0 (of every queue, with one thread).
    pub iothread: EventLoopThread,
    /// The threads of the other queues (see [`Rig::with_queues`]).
    pub other_iothreads: Vec<EventLoopThread>,
}

impl Rig {
    pub fn new(backend: Option<BlockBackend>, config: DriverConfig) -> Rig {
        Rig::with_memory(GuestMemory::new(&[(0, RAM)]).unwrap(), backend, config)
    }

    /// A rig whose guest RAM is `mem`.
    pub fn with_memory(
        mem: GuestMemory,
        backend: Option<BlockBackend>,
        config: DriverConfig,
    ) -> Rig {
        Rig::build(mem, backend, config, 1)
    }

    /// A rig whose device has `config.queues` queues spread over `threads` iothreads (queue q
    /// on thread q mod `threads`), driven on every queue.
    pub fn with_queues(backend: Option<BlockBackend>, config: DriverConfig, threads: usize) -> Rig {
        Rig::build(
            GuestMemory::new(&[(0, RAM)]).unwrap(),
            backend,
            config,
            threads,
        )
    }

    fn build(
        mem: GuestMemory,
        backend: Option<BlockBackend>,
        config: DriverConfig,
        threads: usize,
    ) -> Rig {
        let mem = Arc::new(mem);
        let mut iothreads: Vec<EventLoopThread> = (0..threads.max(1))
            .map(|t| EventLoopThread::spawn(&format!("blk0-iothread{t}")).unwrap())
            .collect();
        let loops = (0..usize::from(config.queues.max(1)))
            .map(|q| iothreads[q % iothreads.len()].event_loop().clone())
            .collect();
        let block = Block::with_queues("blk0".into(), backend, loops).unwrap();
        let iothread = iothreads.remove(0);
        let slot = block.handle();
        let device: Arc<Mutex<dyn VirtioDevice>> = Arc::new(Mutex::new(block));
        let irq = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
        let mmio = Arc::new(Mutex::new(
            VirtioMmio::new(device, mem.clone(), irq.clone()).unwrap(),
        ));
        let driver = Driver::new(mmio.clone(), mem.clone(), irq.clone(), config).unwrap();
        Rig {
            driver,
            slot,
            mem,
            mmio,
            irq,
            config,
            iothread,
            other_iothreads: iothreads,
        }
    }

    /// Every iothread of the device, queue 0's first.
    pub fn iothreads(&self) -> impl Iterator<Item = &EventLoopThread> {
        std::iter::once(&self.iothread).chain(&self.other_iothreads)
    }

    pub fn with_disk(disk: &TempDisk, aio: AioEngine, direct: bool, queue_size: u16) -> Rig {
        let backend = BlockBackend::open(&disk.config(aio, direct)).unwrap();
        Rig::new(Some(backend), DriverConfig::new(DRIVER_BASE, queue_size))
    }

    /// Submits one request, kicks, and waits for its completion.
    pub fn run(&mut self, request_type: u32, sector: u64, data: &[Buffer]) -> Completion {
        let head = self.driver.submit(request_type, sector, data).unwrap();
        self.driver.kick().unwrap();
        self.wait_for(head)
    }

    /// Kicks (unconditionally) and waits for the chain `head`.
    pub fn wait_for(&mut self, head: u16) -> Completion {
        let mut done = Vec::new();
        loop {
            self.driver.wait(1, TIMEOUT, &mut done).unwrap();
            if let Some(c) = done.iter().find(|c| c.head == head) {
                return *c;
            }
        }
    }

    pub fn read(&mut self, sector: u64, len: u32) -> (u8, Vec<u8>) {
        self.mem.write(&vec![0xa5; len as usize], DATA).unwrap();
        let c = self.run(VIRTIO_BLK_T_IN, sector, &[buf(DATA, len, true)]);
        let mut data = vec![0; len as usize];
        self.mem.read(&mut data, DATA).unwrap();
        (c.status.unwrap(), data)
    }

    pub fn write(&mut self, sector: u64, data: &[u8]) -> u8 {
        self.mem.write(data, DATA).unwrap();
        let c = self.run(
            VIRTIO_BLK_T_OUT,
            sector,
            &[buf(DATA, data.len() as u32, false)],
        );
        c.status.unwrap()
    }

    /// Waits until the device has taken all `n` requests posted: each one answered (collected
    /// into `answered`) or owned by the engine. Returns how many the engine owns.
    pub fn wait_taken(&mut self, n: usize, answered: &mut Vec<Completion>) -> usize {
        let deadline = std::time::Instant::now() + TIMEOUT;
        loop {
            let in_flight = self.slot.in_flight().unwrap();
            self.driver.poll(answered).unwrap();
            if in_flight + answered.len() >= n {
                return in_flight;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the device did not take the requests"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.driver
            .read_reg(device_model::virtio::mmio::reg::STATUS)
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let shut = self.slot.shutdown();
        self.iothread.stop();
        for thread in &mut self.other_iothreads {
            thread.stop();
        }
        if !std::thread::panicking() {
            shut.unwrap();
        }
    }
}

/// Throttles the I/O of `rig`'s device threads (and of the `aio=threads` workers) to `device`
/// to `iops` requests per second, until the returned value is dropped; `None` (with the reason
/// printed) where the host has no throttle to offer.
pub fn throttle_device_thread(rig: &Rig, device: &LoopDevice, iops: u32) -> Option<IoThrottle> {
    let made = IoThrottle::new("blk-test", device.device_number().unwrap(), iops)
        .and_then(|mut throttle| {
            for thread in rig.iothreads() {
                throttle.add_thread(thread.tid())?;
            }
            Ok(throttle)
        })
        .map(|mut throttle| {
            // With aio=threads the pool's workers make the system calls. Workers of other
            // tests' engines may join the group too: it limits I/O to this device only, which
            // they do not use, and a worker that has ended meanwhile is skipped.
            for tid in threads_named(util::aio::threads::WORKER_NAME) {
                let _ = throttle.add_thread(tid);
            }
            throttle
        });
    match made {
        Ok(throttle) => Some(throttle),
        Err(e) => {
            eprintln!("requests will not be held in flight: {e}");
            None
        }
    }
}

/// The thread ids of this process whose name starts with `prefix`.
pub fn threads_named(prefix: &str) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let comm = std::fs::read_to_string(path.join("comm")).ok()?;
            comm.starts_with(prefix)
                .then(|| path.file_name()?.to_str()?.parse().ok())?
        })
        .collect()
}

pub fn buf(gpa: u64, len: u32, writable: bool) -> Buffer {
    Buffer { gpa, len, writable }
}
