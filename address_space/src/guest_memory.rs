//! Guest RAM: anonymous host mappings, one per region, accessed by guest physical address.
//!
//! Every access names a guest physical address (GPA) and a length; the range must lie
//! entirely inside one region, or the access fails with [`AddressSpaceError::OutOfBounds`].
//! Nothing here trusts a GPA: they usually come from the guest.

use std::sync::atomic::AtomicU16;

use crate::{AddressSpaceError, Result};

/// Plain-old-data types that may be copied to and from guest memory byte for byte.
///
/// # Safety
/// Implementors must have no padding and accept every bit pattern as a valid value
/// (integers, and `#[repr(C)]` structs of them without padding).
pub unsafe trait ByteValued: Copy + Default + Send + Sync + 'static {}

// SAFETY: primitive integers have no padding and every bit pattern is a valid value.
unsafe impl ByteValued for u8 {}
// SAFETY: as above.
unsafe impl ByteValued for u16 {}
// SAFETY: as above.
unsafe impl ByteValued for u32 {}
// SAFETY: as above.
unsafe impl ByteValued for u64 {}

/// One contiguous range of guest RAM backed by one host mapping.
#[derive(Debug)]
pub struct RamRegion {
    guest_base: u64,
    size: u64,
    host: *mut u8,
}

impl RamRegion {
    /// First guest physical address of the region.
    pub fn guest_base(&self) -> u64 {
        self.guest_base
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Host virtual address of the region's first byte (for KVM memory slots).
    pub fn host_address(&self) -> u64 {
        self.host as u64
    }

    fn contains(&self, gpa: u64, len: u64) -> bool {
        gpa >= self.guest_base
            && gpa
                .checked_add(len)
                .is_some_and(|end| end <= self.guest_base + self.size)
    }
}

/// Guest RAM: a set of non-overlapping regions, shared by vCPUs and devices.
#[derive(Debug)]
pub struct GuestMemory {
    regions: Vec<RamRegion>,
}

// SAFETY: the raw pointers refer to mappings owned by this object for its whole life; all
// access goes through bounds-checked copies, so sharing between threads is as safe as
// sharing the guest's own view of its RAM (which the guest also writes concurrently).
unsafe impl Send for GuestMemory {}
// SAFETY: see `Send` above.
unsafe impl Sync for GuestMemory {}

impl GuestMemory {
    /// Maps guest RAM for `layout`, a list of `(guest_base, size)` ranges, asking the kernel
    /// for transparent huge pages.
    pub fn new(layout: &[(u64, u64)]) -> Result<GuestMemory> {
        let mut sorted = layout.to_vec();
        sorted.sort();
        for (i, &(base, size)) in sorted.iter().enumerate() {
            let end = base.checked_add(size);
            let overlaps_next = sorted
                .get(i + 1)
                .is_some_and(|&(next, _)| end.is_none_or(|end| end > next));
            if size == 0 || end.is_none() || overlaps_next {
                return Err(AddressSpaceError::BadLayout { base, size });
            }
        }
        let mut regions = Vec::with_capacity(sorted.len());
        for (guest_base, size) in sorted {
            let len = usize::try_from(size).map_err(|_| AddressSpaceError::BadLayout {
                base: guest_base,
                size,
            })?;
            // SAFETY: an anonymous private mapping with no address hint touches no existing
            // memory; the result is checked below.
            let host = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                    -1,
                    0,
                )
            };
            if host == libc::MAP_FAILED {
                return Err(AddressSpaceError::Mmap {
                    size,
                    source: std::io::Error::last_os_error(),
                });
            }
            // SAFETY: `host..host+len` is the mapping just created. Huge pages are a hint:
            // failure only costs performance, so the result is ignored.
            unsafe { libc::madvise(host, len, libc::MADV_HUGEPAGE) };
            regions.push(RamRegion {
                guest_base,
                size,
                host: host.cast(),
            });
        }
        Ok(GuestMemory { regions })
    }

    /// The regions, in ascending guest address order.
    pub fn regions(&self) -> &[RamRegion] {
        &self.regions
    }

    /// Total bytes of guest RAM.
    pub fn total_size(&self) -> u64 {
        self.regions.iter().map(|r| r.size).sum()
    }

    /// Whether `gpa..gpa+len` lies inside one region.
    pub fn contains(&self, gpa: u64, len: u64) -> bool {
        self.find(gpa, len).is_some()
    }

    /// Host address of `gpa`, checking that `gpa..gpa+len` lies inside one region.
    /// The pointer is for handing buffers to the kernel (I/O iovecs); dereferencing it is the
    /// caller's responsibility.
    pub fn host_address(&self, gpa: u64, len: u64) -> Result<*mut u8> {
        let region = self
            .find(gpa, len)
            .ok_or(AddressSpaceError::OutOfBounds { gpa, len })?;
        // SAFETY: `find` checked that `gpa - guest_base < size`, so the offset stays inside
        // the region's mapping.
        Ok(unsafe { region.host.add((gpa - region.guest_base) as usize) })
    }

    /// Copies guest memory at `gpa` into `buf`.
    pub fn read(&self, buf: &mut [u8], gpa: u64) -> Result<()> {
        let src = self.host_address(gpa, buf.len() as u64)?;
        // SAFETY: `host_address` checked that `buf.len()` bytes from `src` are inside one
        // mapping owned by `self`; `buf` is a distinct host buffer, so they do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(src, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    /// Copies `buf` into guest memory at `gpa`.
    pub fn write(&self, buf: &[u8], gpa: u64) -> Result<()> {
        let dst = self.host_address(gpa, buf.len() as u64)?;
        // SAFETY: as in `read`, with the roles of source and destination swapped.
        unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr(), dst, buf.len()) };
        Ok(())
    }

    /// Reads an object of type `T` at `gpa` (any alignment).
    pub fn read_obj<T: ByteValued>(&self, gpa: u64) -> Result<T> {
        let src = self.host_address(gpa, std::mem::size_of::<T>() as u64)?;
        // SAFETY: the range is inside guest RAM (checked above) and `T: ByteValued` accepts
        // every bit pattern; `read_unaligned` has no alignment requirement.
        Ok(unsafe { std::ptr::read_unaligned(src.cast::<T>()) })
    }

    /// Writes `value` at `gpa` (any alignment).
    pub fn write_obj<T: ByteValued>(&self, value: &T, gpa: u64) -> Result<()> {
        let dst = self.host_address(gpa, std::mem::size_of::<T>() as u64)?;
        // SAFETY: the range is inside guest RAM (checked above); `T: ByteValued` has no
        // padding, so every byte written is initialised.
        unsafe { std::ptr::write_unaligned(dst.cast::<T>(), *value) };
        Ok(())
    }

    /// Fills `len` bytes at `gpa` with zeroes.
    pub fn zero(&self, gpa: u64, len: u64) -> Result<()> {
        let dst = self.host_address(gpa, len)?;
        // SAFETY: `len` bytes at `dst` are inside one mapping (checked above).
        unsafe { std::ptr::write_bytes(dst, 0, len as usize) };
        Ok(())
    }

    /// The 16-bit guest word at `gpa` as an atomic, for ring indexes shared with the guest
    /// (virtqueue `idx` fields need acquire/release ordering).
    pub fn atomic_u16(&self, gpa: u64) -> Result<&AtomicU16> {
        if !gpa.is_multiple_of(2) {
            return Err(AddressSpaceError::Misaligned { gpa, align: 2 });
        }
        let ptr = self.host_address(gpa, 2)?;
        // SAFETY: the two bytes are inside a mapping that lives as long as `self` (the
        // returned borrow is tied to it), the address is 2-aligned (checked above), and
        // `AtomicU16` has the same layout as `u16`.
        Ok(unsafe { &*ptr.cast::<AtomicU16>() })
    }

    fn find(&self, gpa: u64, len: u64) -> Option<&RamRegion> {
        self.regions.iter().find(|r| r.contains(gpa, len))
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        for region in &self.regions {
            // SAFETY: each region is a mapping created in `new` and unmapped only here.
            unsafe { libc::munmap(region.host.cast(), region.size as usize) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn objects_and_slices_round_trip() {
        let mem = GuestMemory::new(&[(0, 0x10000), (0x100000, 0x1000)]).unwrap();
        mem.write_obj(&0xdead_beef_u32, 0x101).unwrap();
        assert_eq!(mem.read_obj::<u32>(0x101).unwrap(), 0xdead_beef);
        mem.write(b"hello", 0x100ffb).unwrap();
        let mut buf = [0u8; 5];
        mem.read(&mut buf, 0x100ffb).unwrap();
        assert_eq!(&buf, b"hello");
        assert_eq!(mem.total_size(), 0x11000);
    }

    #[test]
    fn accesses_outside_ram_fail() {
        let mem = GuestMemory::new(&[(0, 0x1000), (0x2000, 0x1000)]).unwrap();
        assert!(
            mem.read_obj::<u64>(0xffc).is_err(),
            "crosses the end of a region"
        );
        assert!(mem.read_obj::<u8>(0x1800).is_err(), "in the hole");
        assert!(mem.write(&[0; 2], u64::MAX).is_err(), "overflowing range");
        assert!(mem.host_address(0x2000, 0x1001).is_err());
        assert!(mem.atomic_u16(0x3).is_err(), "misaligned");
    }

    #[test]
    fn atomic_view_sees_plain_writes() {
        let mem = GuestMemory::new(&[(0, 0x1000)]).unwrap();
        mem.write_obj(&7u16, 0x10).unwrap();
        assert_eq!(mem.atomic_u16(0x10).unwrap().load(Ordering::Acquire), 7);
    }

    #[test]
    fn bad_layouts_are_refused() {
        assert!(GuestMemory::new(&[(0, 0)]).is_err());
        assert!(GuestMemory::new(&[(0, 0x2000), (0x1000, 0x1000)]).is_err());
        assert!(GuestMemory::new(&[(u64::MAX, 2)]).is_err());
    }
}
