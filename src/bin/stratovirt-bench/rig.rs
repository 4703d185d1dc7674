//! One virtio-blk device under test: guest RAM, the device's own event-loop thread (an
//! iothread), the block device behind the virtio-mmio register file, and the in-process guest
//! driver on the caller's thread.
//!
//! ```text
//!  caller's thread (the "guest")            device thread ("iothread")
//!  ─────────────────────────────            ──────────────────────────
//!  Driver::submit / kick ──notify eventfd──► queue handler ─► engine.submit(batch)
//!  Driver::wait_interrupt ◄──irq eventfd──── completion handler ◄─ engine eventfd
//! ```
//!
//! The device thread's CPU time is read from `/proc/self/task/<tid>/schedstat`, so it counts
//! exactly the work the VMM does for the device (the kernel's share of its system calls
//! included), and nothing the driver does.

use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use address_space::GuestMemory;
use anyhow::{anyhow, Context, Result};
use device_model::virtio::driver::{Driver, DriverConfig};
use device_model::virtio::{Block, BlockBackend, BlockBackendConfig, VirtioDevice, VirtioMmio};
use util::aio::AioEngine;
use util::event_loop::EventLoop;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Guest RAM of the bench VM.
pub const RAM: u64 = 256 << 20;
/// Guest address of the driver's rings and indirect tables.
pub const DRIVER_BASE: u64 = 0x10_0000;
/// Guest address of the first data buffer (one 4 KiB buffer per request in flight).
pub const DATA_BASE: u64 = 0x100_0000;
/// The queue size the driver asks for (the device's maximum).
pub const QUEUE_SIZE: u16 = device_model::virtio::block::QUEUE_SIZE;

/// How the drive and the driver are set up for one cell.
#[derive(Debug, Clone, Copy)]
pub struct RigConfig {
    /// The engine of the drive.
    pub aio: AioEngine,
    /// Open the file with `O_DIRECT`.
    pub direct: bool,
    /// Negotiate `VIRTIO_F_RING_EVENT_IDX` (notification and interrupt suppression).
    pub event_idx: bool,
}

/// A running device and its driver.
pub struct Rig {
    /// The guest's driver.
    pub driver: Driver,
    event_loop: Arc<EventLoop>,
    thread: Option<JoinHandle<()>>,
    device_tid: Option<u32>,
}

impl Rig {
    /// Opens `path` as the drive and brings the device up to `DRIVER_OK`.
    pub fn new(path: &Path, config: RigConfig) -> Result<Rig> {
        let mem = Arc::new(GuestMemory::new(&[(0, RAM)]).context("guest RAM")?);
        let backend = BlockBackend::open(&BlockBackendConfig {
            path: path.to_path_buf(),
            readonly: false,
            direct: config.direct,
            aio: config.aio,
            serial: None,
        })
        .with_context(|| format!("drive {} aio={}", path.display(), config.aio))?;
        let event_loop = EventLoop::new().context("event loop")?;
        let runner = event_loop.clone();
        let (tid_tx, tid_rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("bench-iothread".into())
            .spawn(move || {
                let _ = tid_tx.send(current_tid());
                if let Err(e) = runner.run() {
                    log::error!("device event loop failed: {e}");
                }
            })
            .context("spawn the device thread")?;
        let device_tid = tid_rx.recv().context("device thread id")?;
        let block = Block::new("bench0".into(), Some(backend), event_loop.clone());
        let device: Arc<Mutex<dyn VirtioDevice>> = Arc::new(Mutex::new(block));
        let irq = Arc::new(EventFd::new(EFD_NONBLOCK).context("irq eventfd")?);
        let mmio = Arc::new(Mutex::new(
            VirtioMmio::new(device, mem.clone(), irq.clone()).context("virtio-mmio")?,
        ));
        let mut features = u64::MAX;
        if !config.event_idx {
            features &=
                !device_model::virtio::feature(device_model::virtio::VIRTIO_F_RING_EVENT_IDX);
        }
        let driver_config = DriverConfig {
            base: DRIVER_BASE,
            queue_size: QUEUE_SIZE,
            features,
            // One descriptor per request, as Linux's virtio-blk driver posts them.
            indirect: true,
        };
        let mut rig = Rig {
            driver: Driver::new(mmio, mem, irq, driver_config)
                .map_err(|e| anyhow!(e).context("driver set-up"))?,
            event_loop,
            thread: Some(thread),
            device_tid,
        };
        rig.check_capacity()?;
        Ok(rig)
    }

    fn check_capacity(&mut self) -> Result<()> {
        if self.driver.capacity() == 0 {
            return Err(anyhow!("the device reports capacity 0"));
        }
        Ok(())
    }

    /// Nanoseconds the device thread has run on a CPU so far.
    pub fn device_cpu_ns(&self) -> u64 {
        self.device_tid.and_then(thread_cpu_ns).unwrap_or(0)
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.event_loop.stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The calling thread's id, from the `/proc/thread-self` link (`<pid>/task/<tid>`).
pub fn current_tid() -> Option<u32> {
    let link = std::fs::read_link("/proc/thread-self").ok()?;
    link.file_name()?.to_str()?.parse().ok()
}

/// Nanoseconds thread `tid` of this process has run (first field of its `schedstat`).
pub fn thread_cpu_ns(tid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// Nanoseconds every live thread of this process has run so far: device, driver, and the
/// kernel's io_uring workers (which are threads of the process).
pub fn process_cpu_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(|t| t.ok()?.file_name().to_str()?.parse().ok())
        .filter_map(thread_cpu_ns)
        .sum()
}
