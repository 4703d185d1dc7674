//! One virtio-blk device under test: guest RAM, the device's own event-loop threads (one
//! iothread per request queue), the block device behind the virtio-mmio register file, and the
//! in-process guest driver on the caller's thread, driving every queue.
//!
//! ```text
//!  caller's thread (the "guest")            device threads ("iothread" q, one per queue)
//!  ─────────────────────────────            ────────────────────────────────────────────
//!  Driver::submit_to(q) / kick ─notify q──► queue q handler ─► queue q's engine.submit(batch)
//!  Driver::wait_interrupt ◄──irq eventfd─── completion handler ◄─ queue q's engine eventfd
//! ```
//!
//! The device threads run under the VMM's iothread seccomp filter unless `--no-seccomp`.
//! The device threads' CPU time is read from `/proc/self/task/<tid>/schedstat`, so it counts
//! exactly the work the VMM does for the device (the kernel's share of its system calls
//! included), and nothing the driver does.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use address_space::{GuestMemory, MemoryOptions};
use anyhow::{anyhow, Context, Result};
use device_model::virtio::driver::{Driver, DriverConfig};
use device_model::virtio::{
    Block, BlockBackend, BlockBackendConfig, BlockHandle, VirtioDevice, VirtioMmio,
};
use micro_vm::seccomp::{Sandbox, ThreadRole};
use util::event_loop::{EventLoopThread, PollParams};
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
    /// Negotiate `VIRTIO_F_RING_EVENT_IDX` (notification and interrupt suppression).
    pub event_idx: bool,
    /// How the device thread polls (an iothread's `poll-max-ns`, `poll-grow`, `poll-shrink`).
    pub poll: PollParams,
    /// Preallocate guest RAM (`-mem-prealloc`): an io_uring drive then registers it as fixed
    /// buffers.
    pub prealloc: bool,
    /// Request queues of the device (`num-queues`), each on an iothread of its own.
    pub queues: u16,
    /// How long the driver looks at the used rings before it sleeps on the interrupt, as a
    /// vCPU waiting in HLT is kept running by KVM's halt polling (`halt_poll_ns`); 0: it
    /// sleeps at once.
    pub halt_poll_ns: u64,
    /// Confine the device thread to the VMM's iothread seccomp filter, as in the VMM.
    pub seccomp: bool,
}

/// A running device and its driver.
pub struct Rig {
    /// The guest's driver.
    pub driver: Driver,
    /// The driver's halt polling ([`RigConfig::halt_poll_ns`]).
    pub halt_poll: Duration,
    device: BlockHandle,
    iothreads: Vec<EventLoopThread>,
}

impl Rig {
    /// Opens `drive` and brings the device up to `DRIVER_OK`.
    pub fn new(drive: &BlockBackendConfig, config: RigConfig) -> Result<Rig> {
        let options = MemoryOptions {
            prealloc: config.prealloc,
            ..MemoryOptions::default()
        };
        let mem = Arc::new(GuestMemory::with_options(&[(0, RAM)], &options).context("guest RAM")?);
        let sandbox = if config.seccomp {
            Some(Sandbox::new().context("seccomp filters")?)
        } else {
            None
        };
        // The workers of aio=threads run under their filter, as in the VMM.
        let drive = BlockBackendConfig {
            worker_setup: sandbox
                .as_ref()
                .map(Sandbox::worker_setup)
                .unwrap_or_default(),
            ..drive.clone()
        };
        let backend = BlockBackend::open(&drive)
            .with_context(|| format!("drive {} aio={}", drive.path.display(), drive.aio))?;
        let iothreads = (0..config.queues.max(1))
            .map(|q| {
                let name = format!("bench-iothread{q}");
                match sandbox.clone() {
                    Some(sandbox) => EventLoopThread::spawn_with(&name, move || {
                        Ok(sandbox.install(ThreadRole::Iothread)?)
                    }),
                    None => EventLoopThread::spawn(&name),
                }
            })
            .collect::<Result<Vec<_>, _>>()
            .context("device threads")?;
        for iothread in &iothreads {
            iothread.event_loop().set_poll_params(config.poll);
        }
        let loops = iothreads.iter().map(|t| t.event_loop().clone()).collect();
        let block = Block::with_queues("bench0".into(), Some(backend), loops)
            .context("the device's queues")?;
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
            queues: config.queues.max(1),
        };
        let mut rig = Rig {
            driver: Driver::new(mmio, mem, irq, driver_config)
                .map_err(|e| anyhow!(e).context("driver set-up"))?,
            halt_poll: Duration::from_nanos(config.halt_poll_ns),
            device: handle,
            iothreads,
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

    /// Nanoseconds the device threads (every queue's) have run on a CPU so far.
    /// Requests the device answered and the time they spent in it (from their start on the
    /// host to their answer), nanoseconds: its `query-blockstats` counters.
    pub fn device_residency(&self) -> (u64, u64) {
        let s = self.device.stats();
        (
            s.rd_operations + s.wr_operations + s.flush_operations + s.unmap_operations,
            s.rd_total_time_ns + s.wr_total_time_ns + s.flush_total_time_ns + s.unmap_total_time_ns,
        )
    }

    pub fn device_cpu_ns(&self) -> u64 {
        self.iothreads
            .iter()
            .filter_map(|t| u32::try_from(t.tid()).ok().and_then(thread_cpu_ns))
            .sum()
    }
}

impl Drop for Rig {
    /// Shuts the device down on its threads, then joins them (the VMM's order).
    fn drop(&mut self) {
        if let Err(e) = self.device.shutdown() {
            log::error!("bench device: {e}");
        }
        for thread in &mut self.iothreads {
            thread.stop();
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

/// Nanoseconds every live thread of this process has run so far: device, driver, the
/// kernel's io_uring workers (which are threads of the process) and the `aio=threads` pool.
pub fn process_cpu_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(|t| t.ok()?.file_name().to_str()?.parse().ok())
        .filter_map(thread_cpu_ns)
        .sum()
}
