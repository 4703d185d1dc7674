//! The guest side of one cell: keep `qd` 4 KiB requests in flight against the device for a
//! warm-up, then for the measured window, and count what completes inside that window.
//!
//! ```text
//!  fill qd slots ─► kick ─┐
//!        ┌────────────────┘
//!        ▼
//!  wait interrupt ─► poll used ring ─► per completion: latency, free the slot
//!        ▲                                   │
//!        └──── kick once ◄── resubmit every free slot (one batch)
//! ```
//!
//! With several queues the requests are spread over them round robin (a queue that is full is
//! skipped), and one kick notifies every queue that got new requests.
//!
//! Latency is measured per request, from just before its descriptor was posted to the moment
//! the driver saw it in the used ring. Only requests that complete inside the measured window
//! count, in IOPS and in the latency percentiles. After the window nothing new is posted and
//! the requests still in flight are waited for, so the device is idle when the cell ends.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use device_model::virtio::block::request::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT};
use device_model::virtio::driver::{Buffer, Completion, DriverError};
use serde::Serialize;

use crate::rig::{current_tid, process_cpu_ns, thread_cpu_ns, Rig, DATA_BASE};
use crate::stats::Latencies;

/// Bytes per request.
pub const BLOCK: u64 = 4096;
const SECTORS_PER_BLOCK: u64 = BLOCK / 512;
/// How long the driver waits for an interrupt before declaring the device stuck.
const STALL: Duration = Duration::from_secs(10);

/// The access pattern of a cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Pattern {
    /// 4 KiB random reads.
    #[serde(rename = "randread")]
    Read,
    /// 4 KiB random writes.
    #[serde(rename = "randwrite")]
    Write,
    /// 4 KiB random, 70 % reads and 30 % writes.
    #[serde(rename = "randrw")]
    Mixed,
}

impl Pattern {
    /// Every pattern, in table order.
    pub const ALL: [Pattern; 3] = [Pattern::Read, Pattern::Write, Pattern::Mixed];

    /// The name used on the command line, in tables and by fio.
    pub fn as_str(self) -> &'static str {
        match self {
            Pattern::Read => "randread",
            Pattern::Write => "randwrite",
            Pattern::Mixed => "randrw",
        }
    }

    /// Parses a command-line name.
    pub fn parse(s: &str) -> Option<Pattern> {
        Pattern::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// Percentage of reads.
    pub fn read_percent(self) -> u64 {
        match self {
            Pattern::Read => 100,
            Pattern::Write => 0,
            Pattern::Mixed => 70,
        }
    }
}

/// Deterministic xorshift64* generator for offsets and the read/write mix.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Timing of a cell.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Time before measuring starts.
    pub warmup: Duration,
    /// Length of the measured window.
    pub measure: Duration,
}

/// What one cell measured.
#[derive(Debug, Clone, Default)]
pub struct Measured {
    /// Requests that completed OK inside the window.
    pub ios: u64,
    /// Requests that completed with an error status inside the window.
    pub errors: u64,
    /// Actual length of the window in seconds.
    pub seconds: f64,
    /// Per-request latencies of the window.
    pub latencies: Latencies,
    /// CPU nanoseconds of the device thread inside the window.
    pub device_cpu_ns: u64,
    /// CPU nanoseconds of the driver's thread (the "guest") inside the window.
    pub driver_cpu_ns: u64,
    /// CPU nanoseconds of the whole process (device, driver, kernel workers) in the window.
    pub process_cpu_ns: u64,
    /// Notifications the driver sent inside the window.
    pub kicks: u64,
    /// Interrupts the driver took inside the window.
    pub interrupts: u64,
    /// Requests answered inside the window, per queue.
    pub per_queue: Vec<u64>,
    /// Requests the device answered inside the window, by its own counters.
    pub device_ops: u64,
    /// Nanoseconds those requests spent in the device: from their start on the host (their
    /// submission to the engine) to their answer.
    pub device_ns: u64,
}

struct Snapshot {
    at: Instant,
    device_cpu: u64,
    driver_cpu: u64,
    process_cpu: u64,
    kicks: u64,
    interrupts: u64,
    /// The device's answered requests and their time in it.
    residency: (u64, u64),
}

/// The driver's loop for one cell.
struct Runner<'a> {
    rig: &'a mut Rig,
    pattern: Pattern,
    blocks: u64,
    rng: Rng,
    free_slots: Vec<u16>,
    /// Per queue, per head: the buffer slot and when the request was posted.
    slot_of_head: Vec<Vec<Option<(u16, Instant)>>>,
    /// The queue the next request goes to first.
    next_queue: u16,
    interrupts: u64,
    driver_tid: Option<u32>,
}

impl Runner<'_> {
    /// Posts one request on a free buffer slot; returns false when no slot or descriptor is free.
    fn post_one(&mut self) -> Result<bool> {
        let Some(slot) = self.free_slots.pop() else {
            return Ok(false);
        };
        let sector = (self.rng.next() % self.blocks) * SECTORS_PER_BLOCK;
        let read = self.rng.next() % 100 < self.pattern.read_percent();
        let buffer = Buffer {
            gpa: DATA_BASE + u64::from(slot) * BLOCK,
            len: BLOCK as u32,
            writable: read,
        };
        let request_type = if read {
            VIRTIO_BLK_T_IN
        } else {
            VIRTIO_BLK_T_OUT
        };
        let queues = self.rig.driver.num_queues();
        for attempt in 0..queues {
            let queue = (self.next_queue + attempt) % queues;
            let started = Instant::now();
            match self
                .rig
                .driver
                .submit_to(queue, request_type, sector, &[buffer])
            {
                Ok(head) => {
                    let entry = self
                        .slot_of_head
                        .get_mut(usize::from(queue))
                        .and_then(|heads| heads.get_mut(usize::from(head)))
                        .ok_or_else(|| anyhow!("driver returned head {head} out of range"))?;
                    *entry = Some((slot, started));
                    self.next_queue = (queue + 1) % queues;
                    return Ok(true);
                }
                Err(DriverError::RingFull) => continue,
                Err(e) => return Err(anyhow!(e).context("posting a request")),
            }
        }
        self.free_slots.push(slot);
        Ok(false)
    }

    /// Posts requests until every slot is in flight, then kicks once.
    fn fill(&mut self) -> Result<()> {
        while self.post_one()? {}
        self.rig
            .driver
            .kick()
            .map_err(|e| anyhow!(e).context("kick"))?;
        Ok(())
    }

    /// Waits for an interrupt and collects the completed chains into `done`.
    fn collect(&mut self, done: &mut Vec<Completion>) -> Result<()> {
        done.clear();
        let halt_poll = self.rig.halt_poll;
        let driver = &mut self.rig.driver;
        if driver.poll(done).map_err(|e| anyhow!(e))? == 0 && !halt_poll.is_zero() {
            // A guest's vCPU halted in the kernel keeps running while KVM halt-polls: look
            // at the used rings (memory only) before sleeping.
            let until = Instant::now() + halt_poll;
            while Instant::now() < until {
                if driver.poll(done).map_err(|e| anyhow!(e))? > 0 {
                    return Ok(());
                }
                std::hint::spin_loop();
            }
        }
        if done.is_empty() {
            let asked = Instant::now();
            let bits = driver
                .wait_interrupt(STALL)
                .map_err(|e| anyhow!(e).context("waiting for an interrupt"))?;
            // No bits can also be a late eventfd signal whose status bit an earlier
            // acknowledgement already cleared: only the full wait means a stall.
            if bits == 0 && asked.elapsed() >= STALL {
                bail!("no interrupt from the device within {STALL:?}");
            }
            if bits != 0 {
                self.interrupts += 1;
            }
            driver.poll(done).map_err(|e| anyhow!(e))?;
        }
        Ok(())
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            residency: self.rig.device_residency(),
            at: Instant::now(),
            device_cpu: self.rig.device_cpu_ns(),
            driver_cpu: self.driver_tid.and_then(thread_cpu_ns).unwrap_or(0),
            process_cpu: process_cpu_ns(),
            kicks: self.rig.driver.kicks(),
            interrupts: self.interrupts,
        }
    }
}

/// Runs one cell: `qd` requests of `pattern` in flight on a disk of `blocks` 4 KiB blocks.
pub fn run(
    rig: &mut Rig,
    pattern: Pattern,
    qd: u16,
    blocks: u64,
    window: Window,
) -> Result<Measured> {
    if qd == 0 || blocks == 0 {
        bail!("queue depth and disk size must be positive");
    }
    let queue_size = rig.driver.queue_size();
    let queues = usize::from(rig.driver.num_queues());
    let mut runner = Runner {
        rig,
        pattern,
        blocks,
        rng: Rng(0x9e37_79b9_7f4a_7c15 ^ u64::from(qd)),
        free_slots: (0..qd).rev().collect(),
        slot_of_head: vec![vec![None; usize::from(queue_size)]; queues],
        next_queue: 0,
        interrupts: 0,
        driver_tid: current_tid(),
    };
    let begin = Instant::now();
    let measure_from = begin + window.warmup;
    let measure_until = measure_from + window.measure;
    let mut start: Option<Snapshot> = None;
    let mut measured = Measured::default();
    let mut done = Vec::with_capacity(usize::from(queue_size));
    runner.fill()?;
    loop {
        runner.collect(&mut done)?;
        let now = Instant::now();
        if start.is_none() && now >= measure_from {
            start = Some(runner.snapshot());
        }
        let in_window = start.is_some() && now < measure_until;
        for c in &done {
            let (slot, started) = runner
                .slot_of_head
                .get_mut(usize::from(c.queue))
                .and_then(|heads| heads.get_mut(usize::from(c.head)))
                .and_then(Option::take)
                .ok_or_else(|| {
                    anyhow!(
                        "completion for queue {} head {} not in flight",
                        c.queue,
                        c.head
                    )
                })?;
            runner.free_slots.push(slot);
            if in_window {
                measured.per_queue.resize(queues, 0);
                measured.per_queue[usize::from(c.queue)] += 1;
                if c.status == Some(VIRTIO_BLK_S_OK) {
                    measured.ios += 1;
                } else {
                    measured.errors += 1;
                }
                measured.latencies.push(now.duration_since(started));
            }
        }
        if now >= measure_until {
            break;
        }
        runner.fill()?;
    }
    let end = runner.snapshot();
    let start = start.ok_or_else(|| anyhow!("the measured window never started"))?;
    measured.seconds = end.at.duration_since(start.at).as_secs_f64();
    measured.device_cpu_ns = end.device_cpu.saturating_sub(start.device_cpu);
    measured.driver_cpu_ns = end.driver_cpu.saturating_sub(start.driver_cpu);
    measured.process_cpu_ns = end.process_cpu.saturating_sub(start.process_cpu);
    measured.kicks = end.kicks - start.kicks;
    measured.interrupts = end.interrupts - start.interrupts;
    measured.device_ops = end.residency.0.saturating_sub(start.residency.0);
    measured.device_ns = end.residency.1.saturating_sub(start.residency.1);
    // Let the requests still in flight finish, so the next cell starts on an idle device.
    while runner.rig.driver.in_flight() > 0 {
        runner.collect(&mut done)?;
    }
    Ok(measured)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rig::RigConfig;
    use device_model::virtio::BlockBackendConfig;
    use util::aio::{AioEngine, ErrorAction};
    use util::event_loop::PollParams;

    /// A real device, real engines and a real file: a short cell of each pattern completes
    /// requests, counts them and measures the device thread.
    #[test]
    fn short_cells_complete_on_every_engine() {
        let dir = if std::path::Path::new("/dev/shm").is_dir() {
            std::path::PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let path = dir.join(format!("stratovirt-bench-test-{}.img", std::process::id()));
        std::fs::write(&path, vec![0x5au8; 4 << 20]).unwrap();
        let window = Window {
            warmup: Duration::from_millis(50),
            measure: Duration::from_millis(200),
        };
        for (aio, direct, queues) in [
            (AioEngine::Off, false, 1),
            (AioEngine::Threads, true, 1),
            (AioEngine::Native, true, 1),
            (AioEngine::IoUring, true, 1),
            (AioEngine::Native, true, 2),
            (AioEngine::IoUring, true, 2),
        ] {
            for pattern in Pattern::ALL {
                let config = RigConfig {
                    event_idx: pattern != Pattern::Mixed,
                    poll: PollParams::OFF,
                    halt_poll_ns: 0,
                    prealloc: false,
                    queues,
                    seccomp: true,
                };
                let drive = BlockBackendConfig {
                    aio,
                    direct,
                    werror: ErrorAction::Report,
                    ..BlockBackendConfig::new(&path)
                };
                let mut rig = Rig::new(&drive, config).unwrap();
                let mut m = run(&mut rig, pattern, 8, (4 << 20) / BLOCK, window).unwrap();
                assert!(m.ios > 0, "{aio} {pattern:?}: no I/O");
                assert_eq!(m.errors, 0, "{aio} {pattern:?}");
                assert!(m.seconds > 0.15, "{aio} {pattern:?}: window {}", m.seconds);
                assert!(m.latencies.percentile_us(0.5) > 0.0);
                assert!(m.device_cpu_ns > 0 && m.interrupts > 0 && m.kicks > 0);
                assert_eq!(rig.driver.in_flight(), 0, "cell must end idle");
                assert_eq!(rig.driver.num_queues(), queues);
                assert_eq!(m.per_queue.len(), usize::from(queues));
                assert!(m.per_queue.iter().all(|&n| n > 0), "{:?}", m.per_queue);
            }
        }
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn zero_depth_is_refused() {
        let path = std::env::temp_dir().join(format!("sv-bench-zero-{}.img", std::process::id()));
        std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
        let config = RigConfig {
            event_idx: true,
            poll: PollParams::OFF,
            halt_poll_ns: 0,
            prealloc: false,
            queues: 1,
            seccomp: true,
        };
        let drive = BlockBackendConfig {
            aio: AioEngine::Off,
            direct: false,
            ..BlockBackendConfig::new(&path)
        };
        let mut rig = Rig::new(&drive, config).unwrap();
        let window = Window {
            warmup: Duration::ZERO,
            measure: Duration::from_millis(10),
        };
        assert!(run(&mut rig, Pattern::Read, 0, 256, window).is_err());
        drop(rig);
        std::fs::remove_file(&path).unwrap();
    }
}
