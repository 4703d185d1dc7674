//! Port-I/O and MMIO buses: address ranges mapped to devices.
//!
//! A vCPU exit for port I/O or MMIO carries an address and data; the bus finds the device
//! whose range holds the address and calls it with the offset into that range.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use crate::{AddressSpaceError, Result};

/// A device reachable through a bus.
pub trait BusDevice: Send {
    /// The guest reads `data.len()` bytes at `offset` into the device's range.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// The guest writes `data` at `offset` into the device's range.
    fn write(&mut self, offset: u64, data: &[u8]);
}

struct Mapping {
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// A set of non-overlapping ranges, each served by one device.
#[derive(Default)]
pub struct Bus {
    ranges: RwLock<BTreeMap<u64, Mapping>>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Bus {
        Bus::default()
    }

    /// Maps `base..base+len` to `device`.
    pub fn insert(&self, base: u64, len: u64, device: Arc<Mutex<dyn BusDevice>>) -> Result<()> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(AddressSpaceError::BusOverlap { base, len })?;
        let mut ranges = self.ranges.write().unwrap_or_else(|e| e.into_inner());
        let overlaps_before = ranges
            .range(..end)
            .next_back()
            .is_some_and(|(&b, m)| b + m.len > base);
        if overlaps_before {
            return Err(AddressSpaceError::BusOverlap { base, len });
        }
        ranges.insert(base, Mapping { len, device });
        Ok(())
    }

    /// Dispatches a read; returns `false` if no device serves `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.lookup(addr) {
            Some((device, offset)) => {
                device
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a write; returns `false` if no device serves `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.lookup(addr) {
            Some((device, offset)) => {
                device
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .write(offset, data);
                true
            }
            None => false,
        }
    }

    fn lookup(&self, addr: u64) -> Option<(Arc<Mutex<dyn BusDevice>>, u64)> {
        let ranges = self.ranges.read().unwrap_or_else(|e| e.into_inner());
        let (&base, mapping) = ranges.range(..=addr).next_back()?;
        let offset = addr - base;
        (offset < mapping.len).then(|| (mapping.device.clone(), offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Register {
        last_write: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Register {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last_write.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_range_with_offsets() {
        let bus = Bus::new();
        let dev = Arc::new(Mutex::new(Register::default()));
        bus.insert(0x3f8, 8, dev.clone()).unwrap();
        let mut byte = [0u8; 1];
        assert!(bus.read(0x3fa, &mut byte));
        assert_eq!(byte[0], 2);
        assert!(bus.write(0x3ff, &[9]));
        assert_eq!(dev.lock().unwrap().last_write, vec![(7, vec![9])]);
        assert!(!bus.read(0x400, &mut byte));
        assert!(!bus.read(0x3f7, &mut byte));
    }

    #[test]
    fn overlapping_ranges_are_refused() {
        let bus = Bus::new();
        let dev = Arc::new(Mutex::new(Register::default()));
        bus.insert(0x1000, 0x100, dev.clone()).unwrap();
        assert!(bus.insert(0x10ff, 1, dev.clone()).is_err());
        assert!(bus.insert(0xf00, 0x101, dev.clone()).is_err());
        assert!(bus.insert(0x1100, 0x100, dev.clone()).is_ok());
        assert!(bus.insert(0, 0, dev).is_err(), "empty range");
    }
}
