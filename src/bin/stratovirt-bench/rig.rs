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
//! The device thread runs under the VMM's iothread seccomp filter unless `--no-seccomp`.
//! The device thread's CPU time is read from `/proc/self/task/<tid>/schedstat`, so it counts
//! exactly the work the VMM does for the device (the kernel's share of its system calls
//! included), and nothing the driver does.

use std::path::Path;
use std::sync::{Arc, Mutex};

use address_space::{GuestMemory, MemoryOptions};
use anyhow::{anyhow, Context, Result};
use device_model::virtio::driver::{Driver, DriverConfig};
use device_model::virtio::{
    Block, BlockBackend, BlockBackendConfig, BlockHandle, VirtioDevice, VirtioMmio,
};
use micro_vm::seccomp::{Sandbox, ThreadRole};
use util::aio::{AioEngine, ErrorAction};
use util::event_loop::EventLoopThread;
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
    /// Preallocate guest RAM (`-mem-prealloc`): an io_uring drive then registers it as fixed
    /// buffers.
    pub prealloc: bool,
    /// Confine the device thread to the VMM's iothread seccomp filter, as in the VMM.
    pub seccomp: bool,
}

/// A running device and its driver.
pub struct Rig {
    /// The guest's driver.
    pub driver: Driver,
    device: BlockHandle,
    iothread: EventLoopThread,
}

impl Rig {
    /// Opens `path` as the drive and brings the device up to `DRIVER_OK`.
    pub fn new(path: &Path, config: RigConfig) -> Result<Rig> {
        let options = MemoryOptions {
            prealloc: config.prealloc,
        };
        let mem = Arc::new(GuestMemory::with_options(&[(0, RAM)], &options).context("guest RAM")?);
        let backend = BlockBackend::open(&BlockBackendConfig {
            direct: config.direct,
            aio: config.aio,
            werror: ErrorAction::Report,
            ..BlockBackendConfig::new(path)
        })
        .with_context(|| format!("drive {} aio={}", path.display(), config.aio))?;
        let iothread = if config.seccomp {
            let sandbox = Sandbox::new().context("seccomp filters")?;
            EventLoopThread::spawn_with("bench-iothread", move || {
                Ok(sandbox.install(ThreadRole::Iothread)?)
            })
        } else {
            EventLoopThread::spawn("bench-iothread")
        }
        .context("device thread")?;
        let block = Block::new(
            "bench0".into(),
            Some(backend),
            iothread.event_loop().clone(),
        );
        let handle = block.handle();
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
            device: handle,
            iothread,
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
        u32::try_from(self.iothread.tid())
            .ok()
            .and_then(thread_cpu_ns)
            .unwrap_or(0)
    }
}

impl Drop for Rig {
    /// Shuts the device down on its thread, then joins the thread (the VMM's order).
    fn drop(&mut self) {
        if let Err(e) = self.device.shutdown() {
            log::error!("bench device: {e}");
        }
        self.iothread.stop();
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
