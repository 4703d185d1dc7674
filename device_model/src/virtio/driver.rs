//! The guest's half of a virtio device, played in-process: a driver for tests and benchmarks,
//! with one queue or several ([`DriverConfig::queues`]). [`Driver::submit`] builds virtio-blk
//! requests; [`Driver::post`] posts any chain (virtio-rng requests are chains of
//! device-writable buffers); the `_to` and `_queue` forms name the queue, the others use
//! queue 0.
//!
//! It drives a [`VirtioMmio`] exactly as a guest kernel would, with no KVM: it negotiates
//! features through the register file, lays out its queues in the same [`GuestMemory`] the VM
//! uses, posts descriptor chains, kicks the device by writing the eventfd KVM's ioeventfd would
//! signal for that queue, and waits on the eventfd irqfd would inject (one interrupt line for
//! every queue, as virtio-mmio has).
//!
//! Guest memory it uses, from `DriverConfig::base` ([`Driver::memory_needed`] bytes per queue,
//! queue after queue; [`DriverConfig::memory_needed`] for them all):
//!
//! ```text
//!  descriptor table │ avail ring │ used ring │ per-head slot: header(16) status(1) … │ indirect tables
//! ```
//!
//! Each chain is identified by its queue and its head descriptor index, which also picks the
//! header and status slot of [`Driver::submit`]. Data buffers are the caller's (guest
//! addresses). [`Driver::submit`] refuses with [`DriverError::RingFull`] when the queue's
//! descriptors run out: wait for completions, then submit again (that is how N requests are
//! kept in flight).

use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::atomic::{fence, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use address_space::{BusDevice, GuestMemory};
use vmm_sys_util::eventfd::EventFd;

use super::block::request::{RequestHeader, SERIAL_LEN};
use super::mmio::{reg, VirtioMmio};
use super::queue::{
    need_event, Descriptor, UsedElem, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
    VIRTQ_USED_F_NO_NOTIFY,
};
use super::{
    feature, STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK,
    VIRTIO_F_RING_EVENT_IDX, VIRTIO_F_RING_INDIRECT_DESC, VIRTIO_F_VERSION_1,
};

/// Entries of each indirect table (one per head).
pub const INDIRECT_ENTRIES: u16 = 64;
const SLOT_LEN: u64 = 32;

/// Errors of the test driver.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The device refused the features (FEATURES_OK did not stick).
    #[error("device refused features {0:#x}")]
    FeaturesRefused(u64),
    /// The device has no such queue, or it is smaller than asked.
    #[error("queue size {asked} not available (device maximum {max})")]
    QueueSize {
        /// The size asked for.
        asked: u16,
        /// `QueueNumMax`.
        max: u32,
    },
    /// Not enough free descriptors for the chain.
    #[error("not enough free descriptors")]
    RingFull,
    /// A chain with no descriptors, or more than an indirect table holds.
    #[error("chain of {0} descriptors cannot be posted")]
    BadChain(usize),
    /// A guest memory access failed (the driver's area is not inside guest RAM).
    #[error("driver memory access failed")]
    Memory(#[source] address_space::AddressSpaceError),
    /// Waiting on or reading the interrupt eventfd failed.
    #[error("interrupt eventfd failed")]
    Interrupt(#[source] std::io::Error),
    /// Signalling the queue's notify eventfd failed.
    #[error("kick failed")]
    Kick(#[source] std::io::Error),
    /// No completion arrived in time.
    #[error("no completion within {0:?}")]
    Timeout(Duration),
    /// The device did not finish a reset in time (Status never read 0).
    #[error("the device did not finish its reset within {0:?}")]
    ResetTimeout(Duration),
}

/// How long the driver waits for the device to finish a reset.
const RESET_TIMEOUT: Duration = Duration::from_secs(20);

/// How to set the driver up.
#[derive(Debug, Clone, Copy)]
pub struct DriverConfig {
    /// Guest address of the driver's memory (4 KiB aligned).
    pub base: u64,
    /// Queue size (a power of two up to the device's maximum).
    pub queue_size: u16,
    /// Features to accept when offered; `VERSION_1` is always asked for.
    pub features: u64,
    /// Post every chain through an indirect table (needs `VIRTIO_F_RING_INDIRECT_DESC`).
    pub indirect: bool,
    /// Queues to set up (0 to `queues - 1`, each of `queue_size` entries; at least 1).
    pub queues: u16,
}

impl DriverConfig {
    /// One queue; accepts everything offered, with direct descriptors.
    pub fn new(base: u64, queue_size: u16) -> DriverConfig {
        DriverConfig {
            base,
            queue_size,
            features: u64::MAX,
            indirect: false,
            queues: 1,
        }
    }

    /// Bytes of guest memory the driver uses from its base, for all its queues.
    pub fn memory_needed(&self) -> u64 {
        Driver::memory_needed(self.queue_size) * u64::from(self.queues.max(1))
    }
}

/// One piece of a chain: a guest buffer and its direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buffer {
    /// Guest physical address.
    pub gpa: u64,
    /// Length in bytes.
    pub len: u32,
    /// Device-writable.
    pub writable: bool,
}

/// A returned chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// The queue it was posted on.
    pub queue: u16,
    /// Head index (the value [`Driver::submit`] returned).
    pub head: u16,
    /// Bytes the device says it wrote.
    pub len: u32,
    /// The status byte, for chains posted by [`Driver::submit`].
    pub status: Option<u8>,
}

#[derive(Debug, Clone, Copy)]
struct Posted {
    descriptors: u16,
    has_status_slot: bool,
}

/// One queue as the driver keeps it: where its rings are, and which chains are out.
struct Ring {
    notify_fd: RawFd,
    desc: u64,
    avail: u64,
    used: u64,
    slots: u64,
    tables: u64,
    free: Vec<u16>,
    posted: Vec<Option<Posted>>,
    avail_idx: u16,
    kicked_avail: u16,
    last_used: u16,
}

/// The guest's driver for one virtio-blk device on virtio-mmio.
pub struct Driver {
    mmio: Arc<Mutex<VirtioMmio>>,
    mem: Arc<GuestMemory>,
    irq: Arc<EventFd>,
    features: u64,
    indirect: bool,
    size: u16,
    rings: Vec<Ring>,
    config_interrupts: u64,
    kicks: u64,
    scratch: Vec<Buffer>,
}

fn align(value: u64, to: u64) -> u64 {
    value.div_ceil(to) * to
}

impl Driver {
    /// Bytes of guest memory one queue of `queue_size` entries uses.
    pub fn memory_needed(queue_size: u16) -> u64 {
        let (_, _, _, _, tables) = Self::layout(0, queue_size);
        tables + u64::from(queue_size) * u64::from(INDIRECT_ENTRIES) * 16
    }

    fn layout(base: u64, size: u16) -> (u64, u64, u64, u64, u64) {
        let n = u64::from(size);
        let desc = base;
        let avail = desc + 16 * n;
        let used = align(avail + 6 + 2 * n, 4096);
        let slots = align(used + 6 + 8 * n, 4096);
        let tables = align(slots + SLOT_LEN * n, 4096);
        (desc, avail, used, slots, tables)
    }

    /// Initialises the device like a guest driver: reset, ACKNOWLEDGE, DRIVER, features,
    /// FEATURES_OK, queues 0 to `config.queues - 1` set up, DRIVER_OK.
    pub fn new(
        mmio: Arc<Mutex<VirtioMmio>>,
        mem: Arc<GuestMemory>,
        irq: Arc<EventFd>,
        config: DriverConfig,
    ) -> Result<Driver, DriverError> {
        let notify_fds = mmio
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .queue_notify_fds();
        let queues = usize::from(config.queues.max(1));
        if notify_fds.len() < queues {
            return Err(DriverError::QueueSize {
                asked: config.queue_size,
                max: 0,
            });
        }
        let per_queue = Self::memory_needed(config.queue_size);
        let rings = notify_fds
            .iter()
            .take(queues)
            .enumerate()
            .map(|(q, &(_, notify_fd))| {
                let base = config.base + per_queue * q as u64;
                let (desc, avail, used, slots, tables) = Self::layout(base, config.queue_size);
                Ring {
                    notify_fd,
                    desc,
                    avail,
                    used,
                    slots,
                    tables,
                    free: Vec::new(),
                    posted: Vec::new(),
                    avail_idx: 0,
                    kicked_avail: 0,
                    last_used: 0,
                }
            })
            .collect();
        let mut driver = Driver {
            mmio,
            mem,
            irq,
            features: 0,
            indirect: false,
            size: config.queue_size,
            rings,
            config_interrupts: 0,
            kicks: 0,
            scratch: Vec::new(),
        };
        driver.initialise(config)?;
        Ok(driver)
    }

    fn initialise(&mut self, config: DriverConfig) -> Result<(), DriverError> {
        self.reset()?;
        self.write_reg(reg::STATUS, STATUS_ACKNOWLEDGE);
        self.write_reg(reg::STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        self.write_reg(reg::DEVICE_FEATURES_SEL, 0);
        let low = u64::from(self.read_reg(reg::DEVICE_FEATURES));
        self.write_reg(reg::DEVICE_FEATURES_SEL, 1);
        let high = u64::from(self.read_reg(reg::DEVICE_FEATURES));
        let offered = low | (high << 32);
        let features = offered & (config.features | feature(VIRTIO_F_VERSION_1));
        self.write_reg(reg::DRIVER_FEATURES_SEL, 0);
        self.write_reg(reg::DRIVER_FEATURES, features as u32);
        self.write_reg(reg::DRIVER_FEATURES_SEL, 1);
        self.write_reg(reg::DRIVER_FEATURES, (features >> 32) as u32);
        let ready = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        self.write_reg(reg::STATUS, ready);
        if self.read_reg(reg::STATUS) & STATUS_FEATURES_OK == 0 {
            return Err(DriverError::FeaturesRefused(features));
        }
        self.features = features;
        self.indirect = config.indirect && features & feature(VIRTIO_F_RING_INDIRECT_DESC) != 0;

        let needed = Self::memory_needed(self.size);
        for q in 0..self.rings.len() {
            self.write_reg(reg::QUEUE_SEL, q as u32);
            let max = self.read_reg(reg::QUEUE_NUM_MAX);
            if self.size == 0 || u32::from(self.size) > max || !self.size.is_power_of_two() {
                return Err(DriverError::QueueSize {
                    asked: self.size,
                    max,
                });
            }
            let size = self.size;
            let ring = &mut self.rings[q];
            self.mem
                .zero(ring.desc, needed)
                .map_err(DriverError::Memory)?;
            ring.free = (0..size).rev().collect();
            ring.posted = vec![None; usize::from(size)];
            ring.avail_idx = 0;
            ring.kicked_avail = 0;
            ring.last_used = 0;
            let addresses = [
                (reg::QUEUE_DESC_LOW, ring.desc),
                (reg::QUEUE_DRIVER_LOW, ring.avail),
                (reg::QUEUE_DEVICE_LOW, ring.used),
            ];
            self.write_reg(reg::QUEUE_NUM, u32::from(size));
            for (low, addr) in addresses {
                self.write_reg(low, addr as u32);
                self.write_reg(low + 4, (addr >> 32) as u32);
            }
            self.write_reg(reg::QUEUE_READY, 1);
        }
        self.write_reg(reg::STATUS, ready | STATUS_DRIVER_OK);
        Ok(())
    }

    /// Resets the device and waits, as the virtio spec asks of a driver, until Status reads 0
    /// (the device has finished the reset on its own thread).
    pub fn reset(&mut self) -> Result<(), DriverError> {
        self.write_reg(reg::STATUS, 0);
        let deadline = Instant::now() + RESET_TIMEOUT;
        while self.read_reg(reg::STATUS) != 0 {
            if Instant::now() >= deadline {
                return Err(DriverError::ResetTimeout(RESET_TIMEOUT));
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        Ok(())
    }

    /// Resets the device and sets it up again with the same configuration.
    pub fn reinitialise(&mut self, config: DriverConfig) -> Result<(), DriverError> {
        self.initialise(config)
    }

    /// Reads a register of the transport (as a vCPU's MMIO read would).
    pub fn read_reg(&self, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        self.mmio
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    /// Writes a register of the transport (as a vCPU's MMIO write would).
    pub fn write_reg(&self, offset: u64, value: u32) {
        self.mmio
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write(offset, &value.to_le_bytes());
    }

    /// Reads `N` bytes of the configuration space at `offset`.
    pub fn read_config<const N: usize>(&self, offset: u64) -> [u8; N] {
        let mut data = [0u8; N];
        self.mmio
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .read(reg::CONFIG + offset, &mut data);
        data
    }

    /// The disk's capacity in sectors, read consistently with the configuration generation.
    pub fn capacity(&self) -> u64 {
        loop {
            let before = self.read_reg(reg::CONFIG_GENERATION);
            let capacity = u64::from_le_bytes(self.read_config::<8>(0));
            if self.read_reg(reg::CONFIG_GENERATION) == before {
                return capacity;
            }
        }
    }

    /// The negotiated features.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// The queue size (of each queue).
    pub fn queue_size(&self) -> u16 {
        self.size
    }

    /// How many queues the driver set up.
    pub fn num_queues(&self) -> u16 {
        self.rings.len() as u16
    }

    /// Chains posted on every queue and not yet returned.
    pub fn in_flight(&self) -> usize {
        (0..self.num_queues()).map(|q| self.in_flight_on(q)).sum()
    }

    /// Chains posted on queue `queue` and not yet returned.
    pub fn in_flight_on(&self, queue: u16) -> usize {
        self.rings
            .get(usize::from(queue))
            .map_or(0, |ring| ring.posted.iter().filter(|p| p.is_some()).count())
    }

    fn ring(&mut self, queue: u16) -> Result<&mut Ring, DriverError> {
        let size = self.size;
        self.rings
            .get_mut(usize::from(queue))
            .ok_or(DriverError::QueueSize {
                asked: size,
                max: 0,
            })
    }

    /// Configuration-change interrupts seen so far.
    pub fn config_interrupts(&self) -> u64 {
        self.config_interrupts
    }

    /// Notifications actually sent to the device (after `EVENT_IDX` suppression).
    pub fn kicks(&self) -> u64 {
        self.kicks
    }

    /// Posts a virtio-blk request on queue 0: header (`request_type`, `sector`), `data`
    /// buffers (the caller's), and a status byte; returns the head index. Does not kick.
    pub fn submit(
        &mut self,
        request_type: u32,
        sector: u64,
        data: &[Buffer],
    ) -> Result<u16, DriverError> {
        self.submit_to(0, request_type, sector, data)
    }

    /// Posts a virtio-blk request on queue `queue` (see [`Driver::submit`]).
    pub fn submit_to(
        &mut self,
        queue: u16,
        request_type: u32,
        sector: u64,
        data: &[Buffer],
    ) -> Result<u16, DriverError> {
        let needed = if self.indirect { 1 } else { data.len() + 2 };
        let ring = self.ring(queue)?;
        if ring.free.len() < needed {
            return Err(DriverError::RingFull);
        }
        let head = *ring.free.last().ok_or(DriverError::RingFull)?;
        let slot = ring.slots + SLOT_LEN * u64::from(head);
        let header = RequestHeader {
            request_type,
            reserved: 0,
            sector,
        };
        self.mem
            .write_obj(&header, slot)
            .map_err(DriverError::Memory)?;
        self.mem
            .write_obj(&0xffu8, slot + 16)
            .map_err(DriverError::Memory)?;
        let mut chain = std::mem::take(&mut self.scratch);
        chain.clear();
        chain.push(Buffer {
            gpa: slot,
            len: 16,
            writable: false,
        });
        chain.extend_from_slice(data);
        chain.push(Buffer {
            gpa: slot + 16,
            len: 1,
            writable: true,
        });
        let posted = self.post_to(queue, &chain);
        self.scratch = chain;
        let head = posted?;
        if let Some(posted) = self.ring(queue)?.posted[usize::from(head)].as_mut() {
            posted.has_status_slot = true;
        }
        Ok(head)
    }

    /// Posts any chain of buffers on queue 0 (for malformed-request tests); returns the head
    /// index.
    pub fn post(&mut self, chain: &[Buffer]) -> Result<u16, DriverError> {
        self.post_to(0, chain)
    }

    /// Posts any chain of buffers on queue `queue`; returns the head index.
    pub fn post_to(&mut self, queue: u16, chain: &[Buffer]) -> Result<u16, DriverError> {
        if chain.is_empty() || (self.indirect && chain.len() > usize::from(INDIRECT_ENTRIES)) {
            return Err(DriverError::BadChain(chain.len()));
        }
        let indirect = self.indirect;
        let mem = self.mem.clone();
        let ring = self.ring(queue)?;
        let direct = if indirect { 1 } else { chain.len() };
        if ring.free.len() < direct {
            return Err(DriverError::RingFull);
        }
        let head = *ring.free.last().ok_or(DriverError::RingFull)?;
        let to_desc = |i: usize, b: &Buffer, next: u16| Descriptor {
            addr: b.gpa,
            len: b.len,
            flags: if b.writable { VIRTQ_DESC_F_WRITE } else { 0 }
                | if i + 1 < chain.len() {
                    VIRTQ_DESC_F_NEXT
                } else {
                    0
                },
            next,
        };
        if indirect {
            ring.free.pop();
            let table = ring.tables + u64::from(head) * u64::from(INDIRECT_ENTRIES) * 16;
            for (i, b) in chain.iter().enumerate() {
                write_desc(&mem, table, i as u16, to_desc(i, b, i as u16 + 1))?;
            }
            let len = chain.len() as u32 * 16;
            write_desc(
                &mem,
                ring.desc,
                head,
                Descriptor {
                    addr: table,
                    len,
                    flags: VIRTQ_DESC_F_INDIRECT,
                    next: 0,
                },
            )?;
        } else {
            for (i, b) in chain.iter().enumerate() {
                // The free list is a stack: the next descriptor is the one on top after this.
                let index = ring.free.pop().ok_or(DriverError::RingFull)?;
                let next = ring.free.last().copied().unwrap_or(0);
                write_desc(&mem, ring.desc, index, to_desc(i, b, next))?;
            }
        }
        ring.posted[usize::from(head)] = Some(Posted {
            descriptors: direct as u16,
            has_status_slot: false,
        });
        self.publish_head(queue, head)?;
        Ok(head)
    }

    /// Writes raw descriptors into queue 0's descriptor table and offers `head` (malformed
    /// chains such as loops). The descriptors are not taken from the free list: reinitialise
    /// the device afterwards.
    pub fn post_raw(&mut self, head: u16, table: &[(u16, Descriptor)]) -> Result<(), DriverError> {
        let desc = self.ring(0)?.desc;
        for &(index, d) in table {
            write_desc(&self.mem, desc, index, d)?;
        }
        self.publish_head(0, head)
    }

    /// Sets queue 0's `avail.idx` to any value (to test a driver that runs ahead of the ring).
    pub fn set_avail_idx(&mut self, idx: u16) -> Result<(), DriverError> {
        let mem = self.mem.clone();
        let ring = self.ring(0)?;
        ring.avail_idx = idx;
        mem.atomic_u16(ring.avail + 2)
            .map_err(DriverError::Memory)?
            .store(idx, Ordering::Release);
        Ok(())
    }

    fn publish_head(&mut self, queue: u16, head: u16) -> Result<(), DriverError> {
        let size = self.size;
        let mem = self.mem.clone();
        let ring = self.ring(queue)?;
        let slot = u64::from(ring.avail_idx % size);
        mem.write_obj(&head, ring.avail + 4 + 2 * slot)
            .map_err(DriverError::Memory)?;
        ring.avail_idx = ring.avail_idx.wrapping_add(1);
        mem.atomic_u16(ring.avail + 2)
            .map_err(DriverError::Memory)?
            .store(ring.avail_idx, Ordering::Release);
        Ok(())
    }

    /// Notifies the device of the chains posted on every queue since the last kick, queue by
    /// queue, unless it asked not to be (`avail_event` with `EVENT_IDX`, else the used ring's
    /// flag). Returns whether it kicked any queue.
    pub fn kick(&mut self) -> Result<bool, DriverError> {
        let mut kicked = false;
        for queue in 0..self.num_queues() {
            kicked |= self.kick_queue(queue)?;
        }
        Ok(kicked)
    }

    /// Notifies queue `queue` of the chains posted on it since its last kick, unless it asked
    /// not to be. Returns whether it kicked.
    pub fn kick_queue(&mut self, queue: u16) -> Result<bool, DriverError> {
        fence(Ordering::SeqCst);
        let event_idx = self.features & feature(VIRTIO_F_RING_EVENT_IDX) != 0;
        let size = self.size;
        let ring = self.ring(queue)?;
        if ring.kicked_avail == ring.avail_idx {
            return Ok(false);
        }
        let old = std::mem::replace(&mut ring.kicked_avail, ring.avail_idx);
        let (new, used) = (ring.avail_idx, ring.used);
        let needed = if event_idx {
            let avail_event = self.read_u16(used + 4 + 8 * u64::from(size))?;
            need_event(avail_event, new, old)
        } else {
            self.read_u16(used)? & VIRTQ_USED_F_NO_NOTIFY == 0
        };
        if needed {
            self.force_kick_queue(queue)?;
        }
        Ok(needed)
    }

    /// Notifies queue 0 unconditionally (what KVM's ioeventfd does on a `QueueNotify` write).
    pub fn force_kick(&mut self) -> Result<(), DriverError> {
        self.force_kick_queue(0)
    }

    /// Notifies queue `queue` unconditionally.
    pub fn force_kick_queue(&mut self, queue: u16) -> Result<(), DriverError> {
        let notify_fd = self.ring(queue)?.notify_fd;
        let one = 1u64.to_ne_bytes();
        // SAFETY: `notify_fd` is the transport's eventfd, alive as long as `self.mmio`; the
        // buffer is 8 valid bytes, as an eventfd write requires.
        let n = unsafe { libc::write(notify_fd, one.as_ptr().cast(), one.len()) };
        if n != 8 {
            return Err(DriverError::Kick(std::io::Error::last_os_error()));
        }
        self.kicks += 1;
        Ok(())
    }

    fn read_u16(&self, gpa: u64) -> Result<u16, DriverError> {
        read_u16(&self.mem, gpa)
    }

    /// Collects returned chains of every queue into `out` without waiting; returns how many.
    pub fn poll(&mut self, out: &mut Vec<Completion>) -> Result<usize, DriverError> {
        let mut count = 0;
        for queue in 0..self.num_queues() {
            count += self.poll_queue(queue, out)?;
        }
        Ok(count)
    }

    /// Collects returned chains of queue `queue` into `out` without waiting.
    fn poll_queue(&mut self, queue: u16, out: &mut Vec<Completion>) -> Result<usize, DriverError> {
        let event_idx = self.features & feature(VIRTIO_F_RING_EVENT_IDX) != 0;
        let size = self.size;
        let mem = self.mem.clone();
        let ring = self.ring(queue)?;
        let mut count = 0;
        loop {
            let used_idx = read_u16(&mem, ring.used + 2)?;
            while ring.last_used != used_idx {
                let slot = u64::from(ring.last_used % size);
                let elem: UsedElem = mem
                    .read_obj(ring.used + 4 + 8 * slot)
                    .map_err(DriverError::Memory)?;
                ring.last_used = ring.last_used.wrapping_add(1);
                out.push(ring.recycle(&mem, queue, elem)?);
                count += 1;
            }
            // Ask for an interrupt at the next used entry, then look again (race with the device).
            if event_idx {
                mem.atomic_u16(ring.avail + 4 + 2 * u64::from(size))
                    .map_err(DriverError::Memory)?
                    .store(ring.last_used, Ordering::Release);
            }
            fence(Ordering::SeqCst);
            if read_u16(&mem, ring.used + 2)? == ring.last_used {
                return Ok(count);
            }
        }
    }

    /// Waits for the interrupt eventfd (at most `timeout`), acknowledges the interrupt bits
    /// through the register file, and returns them (0 on timeout).
    pub fn wait_interrupt(&mut self, timeout: Duration) -> Result<u32, DriverError> {
        let mut pfd = libc::pollfd {
            fd: self.irq.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: `pfd` is one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
        if ready < 0 {
            return Err(DriverError::Interrupt(std::io::Error::last_os_error()));
        }
        if ready == 0 {
            return Ok(0);
        }
        // The eventfd may be blocking or not; it is readable here, so this does not block.
        self.irq.read().map_err(DriverError::Interrupt)?;
        let bits = self.read_reg(reg::INTERRUPT_STATUS);
        self.write_reg(reg::INTERRUPT_ACK, bits);
        if bits & super::INTERRUPT_CONFIG != 0 {
            self.config_interrupts += 1;
        }
        Ok(bits)
    }

    /// Collects returned chains into `out`, waiting on interrupts until at least `min` arrived
    /// or `timeout` passed (then [`DriverError::Timeout`]).
    pub fn wait(
        &mut self,
        min: usize,
        timeout: Duration,
        out: &mut Vec<Completion>,
    ) -> Result<usize, DriverError> {
        let deadline = Instant::now() + timeout;
        let mut count = self.poll(out)?;
        while count < min {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(DriverError::Timeout(timeout));
            }
            self.wait_interrupt(left.min(Duration::from_millis(100)))?;
            count += self.poll(out)?;
        }
        Ok(count)
    }

    /// Reads the serial a GET_ID answer wrote at `gpa` (up to the first NUL).
    pub fn serial_at(&self, gpa: u64) -> Result<Vec<u8>, DriverError> {
        let mut raw = [0u8; SERIAL_LEN];
        self.mem.read(&mut raw, gpa).map_err(DriverError::Memory)?;
        let end = raw.iter().position(|&b| b == 0).unwrap_or(SERIAL_LEN);
        Ok(raw[..end].to_vec())
    }
}

impl Ring {
    /// Frees the descriptors of the returned chain `elem` and reads its status byte.
    fn recycle(
        &mut self,
        mem: &GuestMemory,
        queue: u16,
        elem: UsedElem,
    ) -> Result<Completion, DriverError> {
        let head = elem.id as u16;
        let posted = self
            .posted
            .get_mut(usize::from(head))
            .and_then(Option::take);
        let mut status = None;
        if let Some(posted) = posted {
            let mut index = head;
            for i in 0..posted.descriptors {
                self.free.push(index);
                if i + 1 < posted.descriptors {
                    let desc: Descriptor = mem
                        .read_obj(self.desc + 16 * u64::from(index))
                        .map_err(DriverError::Memory)?;
                    index = desc.next;
                }
            }
            if posted.has_status_slot {
                let gpa = self.slots + SLOT_LEN * u64::from(head) + 16;
                status = Some(mem.read_obj(gpa).map_err(DriverError::Memory)?);
            }
        }
        Ok(Completion {
            queue,
            head,
            len: elem.len,
            status,
        })
    }
}

fn read_u16(mem: &GuestMemory, gpa: u64) -> Result<u16, DriverError> {
    Ok(mem
        .atomic_u16(gpa)
        .map_err(DriverError::Memory)?
        .load(Ordering::Acquire))
}

fn write_desc(
    mem: &GuestMemory,
    table: u64,
    index: u16,
    desc: Descriptor,
) -> Result<(), DriverError> {
    mem.write_obj(&desc, table + 16 * u64::from(index))
        .map_err(DriverError::Memory)
}
