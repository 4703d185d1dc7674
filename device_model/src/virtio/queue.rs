//! The split virtqueue, device side (virtio 1.x §2.7).
//!
//! ```text
//!  descriptor table (16 B each)    avail ring (driver → device)     used ring (device → driver)
//!  ┌──────┬─────┬───────┬──────┐   flags | idx | ring[size] |       flags | idx | {id,len}[size] |
//!  │ addr │ len │ flags │ next │         used_event                      avail_event
//!  └──────┴─────┴───────┴──────┘
//! ```
//!
//! Invariants:
//! - Nothing read from the guest is trusted: every ring and table access is bounds-checked by
//!   [`GuestMemory`], descriptor indexes are checked against their table, and a chain may not be
//!   longer than its table (which catches loops).
//! - The driver's `avail.idx` is read with acquire ordering before the ring entries it covers;
//!   `used.idx` is published with release ordering after the entries it covers; a full fence
//!   separates publishing an index from reading the other side's event index.
//! - While the device polls the avail ring ([`SplitQueue::set_polling`]) the driver is asked not
//!   to notify: `VIRTQ_USED_F_NO_NOTIFY` in the used ring's flags, or with `EVENT_IDX` an
//!   `avail_event` one behind the next chain (already crossed, so no new chain crosses it).
//!   Turning polling off asks for notifications again and is followed by a full fence, so the
//!   caller's next look at `avail.idx` cannot miss a chain the driver offered without a kick.
//! - A queue error is structural (the ring itself is broken): the device must then need a reset.

use std::sync::atomic::{fence, Ordering};

use address_space::{AddressSpaceError, ByteValued, GuestMemory};

/// Descriptor flag: the chain continues at `next`.
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the buffer is device-writable.
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
/// Descriptor flag: the buffer is a table of descriptors.
pub const VIRTQ_DESC_F_INDIRECT: u16 = 4;
/// Avail ring flag: the driver asks for no interrupts (without `EVENT_IDX`).
pub const VIRTQ_AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Used ring flag: the device asks for no notifications (without `EVENT_IDX`).
pub const VIRTQ_USED_F_NO_NOTIFY: u16 = 1;
/// The largest queue this implementation accepts.
pub const MAX_QUEUE_SIZE: u16 = 1024;

/// One entry of a descriptor table, as the guest lays it out.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Descriptor {
    /// Guest physical address of the buffer.
    pub addr: u64,
    /// Length of the buffer in bytes.
    pub len: u32,
    /// `VIRTQ_DESC_F_*` bits.
    pub flags: u16,
    /// Index of the next descriptor when `VIRTQ_DESC_F_NEXT` is set.
    pub next: u16,
}

// SAFETY: `repr(C)` with fields 8 + 4 + 2 + 2 bytes in decreasing alignment: no padding, and
// every bit pattern is a valid value of each integer field.
unsafe impl ByteValued for Descriptor {}

impl Descriptor {
    /// Whether the device may write the buffer.
    pub fn is_write_only(&self) -> bool {
        self.flags & VIRTQ_DESC_F_WRITE != 0
    }
}

/// One entry of the used ring.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsedElem {
    /// Head index of the finished chain.
    pub id: u32,
    /// Bytes the device wrote into the chain.
    pub len: u32,
}

// SAFETY: `repr(C)` with two `u32`: no padding, every bit pattern is valid.
unsafe impl ByteValued for UsedElem {}

/// A queue's registers as the driver programs them through the transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueConfig {
    /// The largest size the device accepts (`QueueNumMax`).
    pub max_size: u16,
    /// The size the driver chose (`QueueNum`).
    pub size: u16,
    /// `QueueReady`.
    pub ready: bool,
    /// Guest address of the descriptor table.
    pub desc_table: u64,
    /// Guest address of the avail ring (the "driver area").
    pub avail_ring: u64,
    /// Guest address of the used ring (the "device area").
    pub used_ring: u64,
}

impl QueueConfig {
    /// A queue of at most `max_size` entries, not yet set up by the driver.
    pub fn new(max_size: u16) -> QueueConfig {
        QueueConfig {
            max_size,
            size: max_size,
            ..QueueConfig::default()
        }
    }
}

/// Errors of a virtqueue: the ring itself is broken.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The size is not a power of two within the maximum.
    #[error("queue size {size} is not a power of two in 1..={max}")]
    BadSize {
        /// The size the driver chose.
        size: u16,
        /// `QueueNumMax`.
        max: u16,
    },
    /// A ring or table is misaligned or not inside guest RAM.
    #[error("{area} at {addr:#x} is misaligned or not inside guest RAM")]
    BadArea {
        /// Which area.
        area: &'static str,
        /// Its guest address.
        addr: u64,
    },
    /// The driver's avail index ran more than a queue's worth ahead of the device.
    #[error("avail index {idx} is more than the queue size {size} ahead of {next}")]
    AvailOverrun {
        /// The driver's index.
        idx: u16,
        /// The device's next index.
        next: u16,
        /// The queue size.
        size: u16,
    },
    /// A descriptor index is outside its table.
    #[error("descriptor index {index} outside a table of {table_len}")]
    DescriptorIndex {
        /// The index.
        index: u32,
        /// Entries in the table.
        table_len: u32,
    },
    /// A chain is longer than its table: it loops.
    #[error("descriptor chain longer than {limit} entries (a loop)")]
    ChainLoop {
        /// The table length.
        limit: u32,
    },
    /// An indirect table has a length that is zero, not a multiple of 16, or too big.
    #[error("indirect table of {len} bytes")]
    BadIndirectTable {
        /// Its length in bytes.
        len: u32,
    },
    /// An indirect table refers to another indirect table, or also has `NEXT` set.
    #[error("indirect descriptor inside an indirect table or chained with NEXT")]
    BadIndirectFlags,
    /// A head index the guest offered is already in flight.
    #[error("head {head} offered again while in flight")]
    HeadInFlight {
        /// The head index.
        head: u16,
    },
    /// Reading or writing a ring failed.
    #[error("ring access failed")]
    Memory(#[source] AddressSpaceError),
}

/// The device's view of a split virtqueue the driver has set up.
#[derive(Debug)]
pub struct SplitQueue {
    size: u16,
    desc_table: u64,
    avail_ring: u64,
    used_ring: u64,
    event_idx: bool,
    next_avail: u16,
    next_used: u16,
    signalled_used: u16,
    /// The device polls the avail ring: notifications stay off.
    polling: bool,
}

/// Whether an event index `event` was crossed by moving from `old` to `new` (virtio §2.7.7.2).
pub fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

impl SplitQueue {
    /// Checks the driver's configuration and starts at index 0. With `event_idx`, the device
    /// uses `used_event` / `avail_event` instead of the ring flags.
    pub fn new(
        config: &QueueConfig,
        mem: &GuestMemory,
        event_idx: bool,
    ) -> Result<SplitQueue, QueueError> {
        let size = config.size;
        if size == 0 || !size.is_power_of_two() || size > config.max_size.min(MAX_QUEUE_SIZE) {
            return Err(QueueError::BadSize {
                size,
                max: config.max_size,
            });
        }
        let n = u64::from(size);
        let areas = [
            ("descriptor table", config.desc_table, 16 * n, 16),
            ("avail ring", config.avail_ring, 6 + 2 * n, 2),
            ("used ring", config.used_ring, 6 + 8 * n, 4),
        ];
        for (area, addr, len, align) in areas {
            if !addr.is_multiple_of(align) || !mem.contains(addr, len) {
                return Err(QueueError::BadArea { area, addr });
            }
        }
        Ok(SplitQueue {
            size,
            desc_table: config.desc_table,
            avail_ring: config.avail_ring,
            used_ring: config.used_ring,
            event_idx,
            next_avail: 0,
            next_used: 0,
            signalled_used: 0,
            polling: false,
        })
    }

    /// The number of entries.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// The driver's `avail.idx`, checked to be at most a queue's worth ahead.
    fn avail_idx(&self, mem: &GuestMemory) -> Result<u16, QueueError> {
        let idx = mem
            .atomic_u16(self.avail_ring + 2)
            .map_err(QueueError::Memory)?
            .load(Ordering::Acquire);
        if idx.wrapping_sub(self.next_avail) > self.size {
            return Err(QueueError::AvailOverrun {
                idx,
                next: self.next_avail,
                size: self.size,
            });
        }
        Ok(idx)
    }

    /// Whether the driver has offered chains the device has not popped yet.
    pub fn has_avail(&self, mem: &GuestMemory) -> Result<bool, QueueError> {
        Ok(self.avail_idx(mem)? != self.next_avail)
    }

    /// Pops the next chain's head index, if the driver offered one.
    pub fn pop_avail(&mut self, mem: &GuestMemory) -> Result<Option<u16>, QueueError> {
        if self.avail_idx(mem)? == self.next_avail {
            return Ok(None);
        }
        let slot = u64::from(self.next_avail % self.size);
        let head: u16 = mem
            .read_obj(self.avail_ring + 4 + 2 * slot)
            .map_err(QueueError::Memory)?;
        if head >= self.size {
            return Err(QueueError::DescriptorIndex {
                index: u32::from(head),
                table_len: u32::from(self.size),
            });
        }
        self.next_avail = self.next_avail.wrapping_add(1);
        Ok(Some(head))
    }

    /// Reads the chain starting at `head` into `out` (cleared first), following one level of
    /// indirection. Descriptor contents (addresses, lengths, directions) are not checked here.
    pub fn read_chain(
        &self,
        mem: &GuestMemory,
        head: u16,
        out: &mut Vec<Descriptor>,
    ) -> Result<(), QueueError> {
        out.clear();
        let mut table = self.desc_table;
        let mut table_len = u32::from(self.size);
        let mut index = u32::from(head);
        let mut steps = 0u32;
        let mut indirect = false;
        loop {
            if index >= table_len {
                return Err(QueueError::DescriptorIndex { index, table_len });
            }
            if steps >= table_len {
                return Err(QueueError::ChainLoop { limit: table_len });
            }
            steps += 1;
            let desc: Descriptor = mem
                .read_obj(table + 16 * u64::from(index))
                .map_err(QueueError::Memory)?;
            if desc.flags & VIRTQ_DESC_F_INDIRECT != 0 {
                if indirect || desc.flags & VIRTQ_DESC_F_NEXT != 0 {
                    return Err(QueueError::BadIndirectFlags);
                }
                let entries = desc.len / 16;
                if !desc.len.is_multiple_of(16)
                    || entries == 0
                    || entries > u32::from(MAX_QUEUE_SIZE)
                {
                    return Err(QueueError::BadIndirectTable { len: desc.len });
                }
                if !mem.contains(desc.addr, u64::from(desc.len)) {
                    return Err(QueueError::BadArea {
                        area: "indirect table",
                        addr: desc.addr,
                    });
                }
                table = desc.addr;
                table_len = entries;
                index = 0;
                steps = 0;
                indirect = true;
                continue;
            }
            out.push(desc);
            if desc.flags & VIRTQ_DESC_F_NEXT == 0 {
                return Ok(());
            }
            index = u32::from(desc.next);
        }
    }

    /// Writes a used element for chain `head`; the driver sees it after [`Self::publish_used`].
    pub fn add_used(&mut self, mem: &GuestMemory, head: u16, len: u32) -> Result<(), QueueError> {
        let slot = u64::from(self.next_used % self.size);
        let elem = UsedElem {
            id: u32::from(head),
            len,
        };
        mem.write_obj(&elem, self.used_ring + 4 + 8 * slot)
            .map_err(QueueError::Memory)?;
        self.next_used = self.next_used.wrapping_add(1);
        Ok(())
    }

    /// Publishes the used elements added so far and tells whether the driver wants an
    /// interrupt for them (`used_event` with `EVENT_IDX`, else the avail ring's flag).
    pub fn publish_used(&mut self, mem: &GuestMemory) -> Result<bool, QueueError> {
        let new = self.next_used;
        mem.atomic_u16(self.used_ring + 2)
            .map_err(QueueError::Memory)?
            .store(new, Ordering::Release);
        fence(Ordering::SeqCst);
        let old = std::mem::replace(&mut self.signalled_used, new);
        if old == new {
            return Ok(false);
        }
        if self.event_idx {
            let used_event_addr = self.avail_ring + 4 + 2 * u64::from(self.size);
            let event = mem
                .atomic_u16(used_event_addr)
                .map_err(QueueError::Memory)?
                .load(Ordering::Acquire);
            Ok(need_event(event, new, old))
        } else {
            let flags = mem
                .atomic_u16(self.avail_ring)
                .map_err(QueueError::Memory)?
                .load(Ordering::Acquire);
            Ok(flags & VIRTQ_AVAIL_F_NO_INTERRUPT == 0)
        }
    }

    /// Asks for a notification at the next offered chain (`avail_event` with `EVENT_IDX`) and
    /// returns whether chains arrived meanwhile (then the caller must pop them itself). While
    /// the device polls, notifications stay off and this returns `false`: the poller looks.
    pub fn enable_notification(&mut self, mem: &GuestMemory) -> Result<bool, QueueError> {
        if self.polling {
            return Ok(false);
        }
        if self.event_idx {
            self.set_avail_event(mem, self.next_avail)?;
        }
        fence(Ordering::SeqCst);
        self.has_avail(mem)
    }

    /// Turns polling on (the driver is asked not to notify) or off (notifications back on,
    /// then a full fence). After turning it off the caller must look at the avail ring once
    /// more ([`SplitQueue::has_avail`]): a chain offered while notifications were off came
    /// with no kick.
    pub fn set_polling(&mut self, mem: &GuestMemory, polling: bool) -> Result<(), QueueError> {
        if polling == self.polling {
            return Ok(());
        }
        self.polling = polling;
        if !polling {
            if !self.event_idx {
                self.set_used_flags(mem, 0)?;
            }
            self.enable_notification(mem)?;
            return Ok(());
        }
        if self.event_idx {
            // One behind the next chain: the driver's next index change does not cross it.
            self.set_avail_event(mem, self.next_avail.wrapping_sub(1))
        } else {
            self.set_used_flags(mem, VIRTQ_USED_F_NO_NOTIFY)
        }
    }

    /// Whether the device polls the avail ring (notifications off).
    pub fn polling(&self) -> bool {
        self.polling
    }

    fn set_avail_event(&self, mem: &GuestMemory, value: u16) -> Result<(), QueueError> {
        let avail_event_addr = self.used_ring + 4 + 8 * u64::from(self.size);
        mem.atomic_u16(avail_event_addr)
            .map_err(QueueError::Memory)?
            .store(value, Ordering::Release);
        Ok(())
    }

    fn set_used_flags(&self, mem: &GuestMemory, flags: u16) -> Result<(), QueueError> {
        mem.atomic_u16(self.used_ring)
            .map_err(QueueError::Memory)?
            .store(flags, Ordering::Release);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DESC: u64 = 0x1000;
    const AVAIL: u64 = 0x2000;
    const USED: u64 = 0x3000;

    fn setup(size: u16) -> (GuestMemory, SplitQueue) {
        let mem = GuestMemory::new(&[(0, 0x10000)]).unwrap();
        let config = QueueConfig {
            max_size: 256,
            size,
            ready: true,
            desc_table: DESC,
            avail_ring: AVAIL,
            used_ring: USED,
        };
        let queue = SplitQueue::new(&config, &mem, true).unwrap();
        (mem, queue)
    }

    fn put_desc(mem: &GuestMemory, table: u64, index: u16, desc: Descriptor) {
        mem.write_obj(&desc, table + 16 * u64::from(index)).unwrap();
    }

    fn offer(mem: &GuestMemory, slot: u16, head: u16, new_idx: u16) {
        mem.write_obj(&head, AVAIL + 4 + 2 * u64::from(slot))
            .unwrap();
        mem.write_obj(&new_idx, AVAIL + 2).unwrap();
    }

    fn desc(addr: u64, len: u32, flags: u16, next: u16) -> Descriptor {
        Descriptor {
            addr,
            len,
            flags,
            next,
        }
    }

    #[test]
    fn event_index_arithmetic_wraps() {
        assert!(need_event(0, 1, 0));
        assert!(
            !need_event(1, 1, 0),
            "event 1 is crossed only when moving past it"
        );
        assert!(need_event(5, 10, 3));
        assert!(!need_event(10, 10, 3));
        assert!(need_event(0xffff, 2, 0xfffe), "wraps around 0");
        assert!(!need_event(3, 2, 0xfffe));
    }

    #[test]
    fn bad_configurations_are_refused() {
        let mem = GuestMemory::new(&[(0, 0x10000)]).unwrap();
        let mut config = QueueConfig {
            max_size: 256,
            size: 3,
            ready: true,
            desc_table: DESC,
            avail_ring: AVAIL,
            used_ring: USED,
        };
        assert!(matches!(
            SplitQueue::new(&config, &mem, false),
            Err(QueueError::BadSize { .. })
        ));
        config.size = 512;
        assert!(SplitQueue::new(&config, &mem, false).is_err(), "above max");
        config.size = 16;
        config.used_ring = 0xfffe;
        assert!(matches!(
            SplitQueue::new(&config, &mem, false),
            Err(QueueError::BadArea { .. })
        ));
        config.used_ring = USED + 2;
        assert!(SplitQueue::new(&config, &mem, false).is_err(), "misaligned");
    }

    #[test]
    fn chains_direct_and_indirect_are_flattened() {
        let (mem, mut queue) = setup(8);
        put_desc(&mem, DESC, 0, desc(0x5000, 16, VIRTQ_DESC_F_NEXT, 3));
        put_desc(&mem, DESC, 3, desc(0x6000, 1, VIRTQ_DESC_F_WRITE, 0));
        put_desc(&mem, DESC, 1, desc(0x7000, 32, VIRTQ_DESC_F_INDIRECT, 0));
        put_desc(&mem, 0x7000, 0, desc(0x8000, 16, VIRTQ_DESC_F_NEXT, 1));
        put_desc(&mem, 0x7000, 1, desc(0x9000, 1, VIRTQ_DESC_F_WRITE, 0));
        offer(&mem, 0, 0, 1);
        offer(&mem, 1, 1, 2);
        let mut chain = Vec::new();
        let head = queue.pop_avail(&mem).unwrap().unwrap();
        queue.read_chain(&mem, head, &mut chain).unwrap();
        assert_eq!(chain.len(), 2);
        assert_eq!(chain[1].addr, 0x6000);
        let head = queue.pop_avail(&mem).unwrap().unwrap();
        queue.read_chain(&mem, head, &mut chain).unwrap();
        assert_eq!(
            chain.iter().map(|d| d.addr).collect::<Vec<_>>(),
            [0x8000, 0x9000]
        );
        assert_eq!(queue.pop_avail(&mem).unwrap(), None);
    }

    #[test]
    fn broken_chains_are_errors() {
        let (mem, queue) = setup(8);
        let mut chain = Vec::new();
        put_desc(&mem, DESC, 0, desc(0x5000, 16, VIRTQ_DESC_F_NEXT, 1));
        put_desc(&mem, DESC, 1, desc(0x5000, 16, VIRTQ_DESC_F_NEXT, 0));
        assert!(matches!(
            queue.read_chain(&mem, 0, &mut chain),
            Err(QueueError::ChainLoop { limit: 8 })
        ));
        put_desc(&mem, DESC, 2, desc(0x5000, 16, VIRTQ_DESC_F_NEXT, 9));
        assert!(matches!(
            queue.read_chain(&mem, 2, &mut chain),
            Err(QueueError::DescriptorIndex { index: 9, .. })
        ));
        put_desc(&mem, DESC, 3, desc(0x7000, 24, VIRTQ_DESC_F_INDIRECT, 0));
        assert!(matches!(
            queue.read_chain(&mem, 3, &mut chain),
            Err(QueueError::BadIndirectTable { len: 24 })
        ));
        put_desc(&mem, DESC, 4, desc(0x7000, 16, VIRTQ_DESC_F_INDIRECT, 0));
        put_desc(&mem, 0x7000, 0, desc(0x7000, 16, VIRTQ_DESC_F_INDIRECT, 0));
        assert!(matches!(
            queue.read_chain(&mem, 4, &mut chain),
            Err(QueueError::BadIndirectFlags)
        ));
        put_desc(&mem, DESC, 5, desc(0xfff0, 32, VIRTQ_DESC_F_INDIRECT, 0));
        assert!(matches!(
            queue.read_chain(&mem, 5, &mut chain),
            Err(QueueError::BadArea { .. })
        ));
    }

    #[test]
    fn avail_overrun_and_bad_head_are_errors() {
        let (mem, mut queue) = setup(8);
        mem.write_obj(&9u16, AVAIL + 2).unwrap();
        assert!(matches!(
            queue.pop_avail(&mem),
            Err(QueueError::AvailOverrun { .. })
        ));
        offer(&mem, 0, 8, 1);
        assert!(matches!(
            queue.pop_avail(&mem),
            Err(QueueError::DescriptorIndex { index: 8, .. })
        ));
    }

    #[test]
    fn used_ring_and_event_suppression() {
        let (mem, mut queue) = setup(8);
        let used_event = AVAIL + 4 + 2 * 8;
        mem.write_obj(&0u16, used_event).unwrap();
        queue.add_used(&mem, 5, 512).unwrap();
        assert!(queue.publish_used(&mem).unwrap(), "used_event 0 crossed");
        assert_eq!(mem.read_obj::<u16>(USED + 2).unwrap(), 1);
        assert_eq!(
            mem.read_obj::<UsedElem>(USED + 4).unwrap(),
            UsedElem { id: 5, len: 512 }
        );
        assert!(!queue.publish_used(&mem).unwrap(), "nothing new");
        mem.write_obj(&3u16, used_event).unwrap();
        queue.add_used(&mem, 1, 1).unwrap();
        assert!(
            !queue.publish_used(&mem).unwrap(),
            "used idx 2 does not cross event 3"
        );
        queue.add_used(&mem, 2, 1).unwrap();
        queue.add_used(&mem, 3, 1).unwrap();
        assert!(
            queue.publish_used(&mem).unwrap(),
            "used idx 4 crosses event 3"
        );
        offer(&mem, 0, 0, 1);
        assert!(
            queue.enable_notification(&mem).unwrap(),
            "a chain is waiting"
        );
        let avail_event = USED + 4 + 8 * 8;
        assert_eq!(mem.read_obj::<u16>(avail_event).unwrap(), 0);
    }

    #[test]
    fn polling_keeps_avail_event_behind_and_gives_it_back() {
        let (mem, mut queue) = setup(8);
        let avail_event = USED + 4 + 8 * 8;
        offer(&mem, 0, 0, 1);
        assert_eq!(queue.pop_avail(&mem).unwrap(), Some(0));
        queue.set_polling(&mem, true).unwrap();
        assert!(queue.polling());
        let event: u16 = mem.read_obj(avail_event).unwrap();
        // The driver moving avail.idx from 1 to 2, or further, crosses no event: no kick.
        assert!(!need_event(event, 2, 1));
        assert!(!need_event(event, 5, 1));
        // Popping while polling leaves it behind.
        offer(&mem, 1, 1, 2);
        assert_eq!(queue.pop_avail(&mem).unwrap(), Some(1));
        assert!(!queue.enable_notification(&mem).unwrap());
        assert_eq!(mem.read_obj::<u16>(avail_event).unwrap(), event);
        // A chain offered while notifications were off is seen by the look after polling.
        offer(&mem, 2, 2, 3);
        queue.set_polling(&mem, false).unwrap();
        assert_eq!(mem.read_obj::<u16>(avail_event).unwrap(), 2);
        assert!(queue.has_avail(&mem).unwrap());
    }

    #[test]
    fn polling_without_event_idx_sets_the_no_notify_flag() {
        let mem = GuestMemory::new(&[(0, 0x10000)]).unwrap();
        let config = QueueConfig {
            max_size: 256,
            size: 8,
            ready: true,
            desc_table: DESC,
            avail_ring: AVAIL,
            used_ring: USED,
        };
        let mut queue = SplitQueue::new(&config, &mem, false).unwrap();
        queue.set_polling(&mem, true).unwrap();
        assert_eq!(mem.read_obj::<u16>(USED).unwrap(), VIRTQ_USED_F_NO_NOTIFY);
        assert!(!queue.enable_notification(&mem).unwrap());
        assert_eq!(mem.read_obj::<u16>(USED).unwrap(), VIRTQ_USED_F_NO_NOTIFY);
        queue.set_polling(&mem, false).unwrap();
        assert_eq!(mem.read_obj::<u16>(USED).unwrap(), 0);
    }
}
