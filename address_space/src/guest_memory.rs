//! Guest RAM: anonymous host mappings, one per region, accessed by guest physical address.
//!
//! The mappings and every access to them go through the rust-vmm `vm-memory` crate
//! (`GuestMemoryMmap`, `VolatileSlice`). The guest writes its RAM from other threads while we
//! read it, so no Rust reference to guest RAM is ever made (save the [`AtomicU16`] views, which
//! allow concurrent writers), objects of up to 8 bytes are single volatile accesses, and longer
//! copies are one copy between raw pointers and a private buffer, each byte read once.
//! This module keeps the small API the rest of the VMM was written against: byte slices,
//! [`ByteValued`] objects, an [`AtomicU16`] view for ring indexes, and host addresses for the
//! kernel (KVM memory slots, I/O buffers), which are sound to hand out because Rust never
//! dereferences them and the mappings live as long as the [`GuestMemory`].
//!
//! Every access names a guest physical address (GPA) and a length; the range must lie
//! entirely inside one region, or the access fails with [`AddressSpaceError::OutOfBounds`].
//! An empty range counts as inside a region if it starts inside it or right at its end.
//! Nothing here trusts a GPA: they usually come from the guest.
//!
//! With [`MemoryOptions::prealloc`] every page is made resident when the memory is created
//! (`-mem-prealloc`: io_uring fixed buffers are only registered over resident guest RAM).
//! With [`MemoryOptions::shared`] each region is a memfd mapped `MAP_SHARED`
//! (`-machine mem-share=on`): another process handed the memfd ([`RamRegion::memfd`]), such as a
//! vhost-user backend, maps the same pages. With [`MemoryOptions::exclude_from_core_dump`]
//! (`-machine dump-guest-core=off`) the mappings are marked `MADV_DONTDUMP`.
//!
//! The reasoning behind all of this is in `docs/guest-memory.md`.

use std::fs::File;
use std::io;
use std::os::unix::io::{AsRawFd, FromRawFd, RawFd};
use std::sync::atomic::AtomicU16;

use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap, MemoryRegionAddress, MmapRegion, VolatileMemory, VolatileSlice,
};

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

/// Carries a `T: ByteValued` through vm-memory's object accessors, which want their own
/// `vm_memory::ByteValued` (a foreign trait we cannot implement for every `T` directly).
#[derive(Clone, Copy)]
#[repr(transparent)]
struct Pod<T>(T);

// SAFETY: `Pod<T>` is `repr(transparent)` over `T`: same size, layout and (absence of)
// padding. `T: ByteValued` promises no padding and that every bit pattern is a valid `T`, so a
// `Pod<T>` may be built from any bytes, which is what `vm_memory::ByteValued` requires. `Pod<T>`
// holds no reference, and is `Copy + Send + Sync` because `T` is.
unsafe impl<T: ByteValued> vm_memory::ByteValued for Pod<T> {}

/// How guest RAM is set up. The default is private anonymous memory, resident on first
/// touch, included in core dumps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryOptions {
    /// Make every page resident at creation (`-mem-prealloc`) instead of at the guest's
    /// first touch.
    pub prealloc: bool,
    /// Back each region with a memfd mapped `MAP_SHARED` (`-machine mem-share=on`), so that
    /// another process can map guest RAM through [`RamRegion::memfd`].
    pub shared: bool,
    /// Keep guest RAM out of core dumps of this process (`MADV_DONTDUMP`,
    /// `-machine dump-guest-core=off`).
    pub exclude_from_core_dump: bool,
}

/// One contiguous range of guest RAM backed by one host mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamRegion {
    guest_base: u64,
    size: u64,
    host: u64,
    memfd: Option<RawFd>,
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

    /// Host virtual address of the region's first byte (for KVM memory slots and I/O buffer
    /// registration). The mapping lives as long as the [`GuestMemory`] it came from.
    pub fn host_address(&self) -> u64 {
        self.host
    }

    /// The memfd behind the region when guest RAM is shared ([`MemoryOptions::shared`]); the
    /// region starts at offset 0 of it. The descriptor belongs to the [`GuestMemory`] and is
    /// closed with it: pass it on (e.g. with `SCM_RIGHTS`), never close it.
    pub fn memfd(&self) -> Option<RawFd> {
        self.memfd
    }
}

/// Guest RAM: a set of non-overlapping regions, shared by vCPUs and devices.
#[derive(Debug)]
pub struct GuestMemory {
    /// The mappings; they are unmapped when this is dropped.
    mmap: GuestMemoryMmap,
    /// The same regions as plain values, in ascending guest address order.
    regions: Vec<RamRegion>,
    preallocated: bool,
    shared: bool,
}

/// Flags of private guest RAM mappings: anonymous memory, no swap reservation (the kernel
/// commits pages when they are first touched, or at once with preallocation).
const MAP_FLAGS: i32 = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
/// Flags of shared guest RAM mappings (a memfd each); pages are allocated on first touch.
const SHARED_MAP_FLAGS: i32 = libc::MAP_SHARED | libc::MAP_NORESERVE;

/// A memfd of `size` bytes for one shared region.
fn create_memfd(size: u64) -> io::Result<File> {
    // SAFETY: the name is a NUL-terminated string that outlives the call; the flags are valid.
    let fd = unsafe { libc::memfd_create(c"stratovirt-guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a descriptor memfd_create just returned, owned by nothing else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size)?;
    Ok(file)
}

/// Stride of the fallback that touches guest RAM page by page: the smallest page size Linux
/// uses, so every page is touched whatever the host's page size.
const TOUCH_STRIDE: usize = 4096;

/// Zeroes that [`GuestMemory::zero`] copies from.
static ZEROES: [u8; 4096] = [0; 4096];

impl GuestMemory {
    /// Maps guest RAM for `layout`, a list of `(guest_base, size)` ranges, asking the kernel
    /// for transparent huge pages. Pages become resident when first touched.
    pub fn new(layout: &[(u64, u64)]) -> Result<GuestMemory> {
        Self::with_options(layout, &MemoryOptions::default())
    }

    /// Like [`GuestMemory::new`], with `options`. With `prealloc`, every page is resident
    /// when this returns, or it fails with [`AddressSpaceError::Prealloc`].
    pub fn with_options(layout: &[(u64, u64)], options: &MemoryOptions) -> Result<GuestMemory> {
        let sorted = checked_layout(layout)?;
        let mut mapped = Vec::with_capacity(sorted.len());
        let mut regions = Vec::with_capacity(sorted.len());
        for (guest_base, size) in sorted {
            let bad_layout = || AddressSpaceError::BadLayout {
                base: guest_base,
                size,
            };
            let len = usize::try_from(size).map_err(|_| bad_layout())?;
            let (file_offset, flags) = if options.shared {
                let memfd = create_memfd(size)
                    .map_err(|source| AddressSpaceError::Memfd { size, source })?;
                (Some(FileOffset::new(memfd, 0)), SHARED_MAP_FLAGS)
            } else {
                (None, MAP_FLAGS)
            };
            let mapping = MmapRegion::<()>::build(
                file_offset,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
            )
            .map_err(|e| AddressSpaceError::Mmap {
                size,
                source: match e {
                    vm_memory::mmap::MmapRegionError::Mmap(errno) => errno,
                    other => io::Error::other(other),
                },
            })?;
            advise(&mapping, libc::MADV_HUGEPAGE)
                .unwrap_or_else(|e| log::debug!("no transparent huge pages for guest RAM: {e}"));
            if options.exclude_from_core_dump {
                advise(&mapping, libc::MADV_DONTDUMP)
                    .map_err(|source| AddressSpaceError::DontDump { size, source })?;
            }
            if options.prealloc {
                populate(&mapping)
                    .map_err(|source| AddressSpaceError::Prealloc { size, source })?;
            }
            regions.push(RamRegion {
                guest_base,
                size,
                host: mapping.as_ptr() as u64,
                memfd: mapping.file_offset().map(|f| f.file().as_raw_fd()),
            });
            mapped.push(
                GuestRegionMmap::new(mapping, GuestAddress(guest_base)).ok_or_else(bad_layout)?,
            );
        }
        let mmap = if mapped.is_empty() {
            GuestMemoryMmap::new()
        } else {
            // `checked_layout` already refused overlaps, and the list is sorted, so this
            // cannot fail; should vm-memory disagree, the whole layout is reported.
            GuestMemoryMmap::from_regions(mapped).map_err(|_| AddressSpaceError::BadLayout {
                base: regions[0].guest_base,
                size: regions.iter().map(|r| r.size).sum(),
            })?
        };
        Ok(GuestMemory {
            mmap,
            regions,
            preallocated: options.prealloc,
            shared: options.shared,
        })
    }

    /// Whether guest RAM is shared memfds ([`MemoryOptions::shared`]).
    pub fn shared(&self) -> bool {
        self.shared
    }

    /// The regions, in ascending guest address order.
    pub fn regions(&self) -> &[RamRegion] {
        &self.regions
    }

    /// Total bytes of guest RAM.
    pub fn total_size(&self) -> u64 {
        self.regions.iter().map(|r| r.size).sum()
    }

    /// Whether every page was made resident at creation ([`MemoryOptions::prealloc`]).
    pub fn preallocated(&self) -> bool {
        self.preallocated
    }

    /// Whether `gpa..gpa+len` lies inside one region.
    pub fn contains(&self, gpa: u64, len: u64) -> bool {
        self.host_range(gpa, len).is_ok()
    }

    /// Host address of `gpa`, checking that `gpa..gpa+len` lies inside one region.
    ///
    /// The pointer is for handing buffers to the kernel (I/O iovecs). It stays valid while
    /// `self` lives; the guest may change the bytes behind it at any time, so it must not be
    /// turned into a Rust reference (`docs/guest-memory.md`).
    pub fn host_address(&self, gpa: u64, len: u64) -> Result<*mut u8> {
        Ok(self.host_range(gpa, len)? as *mut u8)
    }

    /// Copies guest memory at `gpa` into `buf`.
    pub fn read(&self, buf: &mut [u8], gpa: u64) -> Result<()> {
        let len = buf.len() as u64;
        self.slice(gpa, len)?
            .read_slice(buf, 0)
            .map_err(|_| AddressSpaceError::OutOfBounds { gpa, len })
    }

    /// Copies `buf` into guest memory at `gpa`.
    pub fn write(&self, buf: &[u8], gpa: u64) -> Result<()> {
        let len = buf.len() as u64;
        self.slice(gpa, len)?
            .write_slice(buf, 0)
            .map_err(|_| AddressSpaceError::OutOfBounds { gpa, len })
    }

    /// Reads an object of type `T` at `gpa` (any alignment).
    pub fn read_obj<T: ByteValued>(&self, gpa: u64) -> Result<T> {
        let len = std::mem::size_of::<T>() as u64;
        let host = self.host_range(gpa, len)?;
        if host.is_multiple_of(std::mem::align_of::<T>() as u64) {
            // SAFETY: `host_range` checked that the `size_of::<T>()` bytes at `host` lie inside
            // one mapping owned by `self`, which outlives this call, and `host` is aligned for
            // `T`. The read is volatile: each byte is read once, whatever the guest writes
            // meanwhile, and no reference to guest RAM is made. `T: ByteValued` accepts every
            // bit pattern, so even a read torn by a concurrent guest write is a valid `T`.
            return Ok(unsafe { std::ptr::read_volatile(host as *const T) });
        }
        self.slice(gpa, len)?
            .read_obj::<Pod<T>>(0)
            .map(|pod| pod.0)
            .map_err(|_| AddressSpaceError::OutOfBounds { gpa, len })
    }

    /// Writes `value` at `gpa` (any alignment).
    pub fn write_obj<T: ByteValued>(&self, value: &T, gpa: u64) -> Result<()> {
        let len = std::mem::size_of::<T>() as u64;
        let host = self.host_range(gpa, len)?;
        if host.is_multiple_of(std::mem::align_of::<T>() as u64) {
            // SAFETY: as in `read_obj`: the bytes lie inside a mapping owned by `self` and
            // `host` is aligned for `T`; the write is volatile and makes no reference to guest
            // RAM. `T: ByteValued` has no padding, so every byte written is initialised.
            unsafe { std::ptr::write_volatile(host as *mut T, *value) };
            return Ok(());
        }
        self.slice(gpa, len)?
            .write_obj(Pod(*value), 0)
            .map_err(|_| AddressSpaceError::OutOfBounds { gpa, len })
    }

    /// Fills `len` bytes at `gpa` with zeroes.
    pub fn zero(&self, gpa: u64, len: u64) -> Result<()> {
        let slice = self.slice(gpa, len)?;
        let mut done = 0;
        while done < slice.len() {
            let n = ZEROES.len().min(slice.len() - done);
            slice
                .write_slice(&ZEROES[..n], done)
                .map_err(|_| AddressSpaceError::OutOfBounds { gpa, len })?;
            done += n;
        }
        Ok(())
    }

    /// The 16-bit guest word at `gpa` as an atomic, for ring indexes shared with the guest
    /// (virtqueue `idx` fields need acquire/release ordering).
    pub fn atomic_u16(&self, gpa: u64) -> Result<&AtomicU16> {
        if !gpa.is_multiple_of(2) {
            return Err(AddressSpaceError::Misaligned { gpa, align: 2 });
        }
        let (region, offset) = self.locate(gpa, 2)?;
        // No unsafe needed here; the argument vm-memory makes for `get_atomic_ref` is: the
        // address is in bounds and 2-aligned (checked), `AtomicU16` has the layout of `u16`, and
        // the reference borrows the mapping, which is `self`'s and outlives it. An atomic is the
        // one kind of Rust reference that may point at memory others change under it: the guest
        // (and the kernel) store to the word with the CPU's own instructions, which never tear
        // an aligned 2-byte location, and every access we make to it is an atomic instruction.
        let mapping: &MmapRegion = region;
        mapping
            .get_atomic_ref::<AtomicU16>(offset)
            .map_err(|_| AddressSpaceError::Misaligned { gpa, align: 2 })
    }

    /// The host address of `gpa`, checking that `gpa..gpa+len` lies inside one region (an
    /// empty range may sit right after a region's last byte). The per-access fast path: the
    /// plain region table, searched in order (guest RAM has one or two regions).
    fn host_range(&self, gpa: u64, len: u64) -> Result<u64> {
        let out_of_bounds = AddressSpaceError::OutOfBounds { gpa, len };
        let end = gpa.checked_add(len).ok_or(out_of_bounds)?;
        self.regions
            .iter()
            .find(|r| gpa >= r.guest_base && end <= r.guest_base + r.size)
            .map(|r| r.host + (gpa - r.guest_base))
            .ok_or(AddressSpaceError::OutOfBounds { gpa, len })
    }

    /// The region that holds `gpa..gpa+len`, and the offset of `gpa` in it.
    fn locate(&self, gpa: u64, len: u64) -> Result<(&GuestRegionMmap, usize)> {
        let out_of_bounds = AddressSpaceError::OutOfBounds { gpa, len };
        let Some(end) = gpa.checked_add(len) else {
            return Err(out_of_bounds);
        };
        let region = self.mmap.find_region(GuestAddress(gpa)).or_else(|| {
            // An empty range may sit right after a region's last byte.
            (len == 0)
                .then(|| gpa.checked_sub(1))
                .flatten()
                .and_then(|last| self.mmap.find_region(GuestAddress(last)))
        });
        let Some(region) = region else {
            return Err(out_of_bounds);
        };
        let start = region.start_addr().0;
        if end - start > region.len() {
            return Err(out_of_bounds);
        }
        // The offset is at most the region's size, which came from a `usize`.
        Ok((region, (gpa - start) as usize))
    }

    /// `gpa..gpa+len` as a volatile slice of one region.
    fn slice(&self, gpa: u64, len: u64) -> Result<VolatileSlice<'_>> {
        let (region, offset) = self.locate(gpa, len)?;
        // `locate` checked the range; `len` fits in `usize` as it is at most a region's size.
        region
            .get_slice(MemoryRegionAddress(offset as u64), len as usize)
            .map_err(|_| AddressSpaceError::OutOfBounds { gpa, len })
    }
}

/// `layout` sorted by base, or `BadLayout` naming the first region that is empty, runs past
/// the end of the address space, or overlaps the next one.
fn checked_layout(layout: &[(u64, u64)]) -> Result<Vec<(u64, u64)>> {
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
    Ok(sorted)
}

/// `madvise(advice)` on the whole of `mapping`.
fn advise(mapping: &MmapRegion, advice: i32) -> io::Result<()> {
    // SAFETY: the range is exactly the mapping `mapping` owns, which stays mapped while it is
    // borrowed. The advice values used here (`MADV_HUGEPAGE`, `MADV_POPULATE_WRITE`,
    // `MADV_DONTDUMP`) never change the contents of memory or unmap it: they only choose the
    // page size, fault pages in (as a write of the byte already there would), or leave the
    // range out of core dumps.
    let ret = unsafe { libc::madvise(mapping.as_ptr().cast(), mapping.size(), advice) };
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Makes every page of `mapping` resident and writable, with `MADV_POPULATE_WRITE` (Linux
/// 5.14), or by writing one byte per page where the kernel or a seccomp filter refuses it.
/// `MADV_HUGEPAGE` comes first, so the pages faulted in are huge pages where the host has them.
/// Only the madvise reports a shortage of memory (`ENOMEM`); the fallback meets the OOM
/// killer instead.
fn populate(mapping: &MmapRegion) -> io::Result<()> {
    loop {
        match advise(mapping, libc::MADV_POPULATE_WRITE) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINVAL | libc::EPERM | libc::ENOSYS)
                ) =>
            {
                log::debug!("MADV_POPULATE_WRITE refused ({e}); touching guest RAM page by page");
                return populate_by_touching(mapping);
            }
            // ENOMEM: not enough memory for guest RAM, which is what preallocation is for
            // finding out early.
            Err(e) => return Err(e),
        }
    }
}

/// Writes a zero to the first byte of every page of `mapping`, which is still all zeroes
/// (nothing else has seen it), so only residency changes.
fn populate_by_touching(mapping: &MmapRegion) -> io::Result<()> {
    let all = mapping
        .get_slice(0, mapping.size())
        .map_err(io::Error::other)?;
    for offset in (0..mapping.size()).step_by(TOUCH_STRIDE) {
        all.write_obj(0u8, offset).map_err(io::Error::other)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

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
        assert!(!mem.preallocated());
    }

    #[test]
    fn large_copies_and_zero_round_trip() {
        let mem = GuestMemory::new(&[(0x1000, 0x4000)]).unwrap();
        let data: Vec<u8> = (0..0x2345).map(|i| (i * 7 + 1) as u8).collect();
        mem.write(&data, 0x1003).unwrap();
        let mut back = vec![0u8; data.len()];
        mem.read(&mut back, 0x1003).unwrap();
        assert_eq!(back, data);
        mem.zero(0x1004, 0x2000).unwrap();
        mem.read(&mut back, 0x1003).unwrap();
        assert_eq!(back[0], data[0]);
        assert!(back[1..0x2001].iter().all(|&b| b == 0));
        assert_eq!(back[0x2001..], data[0x2001..]);
    }

    #[test]
    fn regions_describe_the_mappings() {
        let mem = GuestMemory::new(&[(0x100000, 0x1000), (0, 0x2000)]).unwrap();
        let regions = mem.regions();
        assert_eq!(regions.len(), 2);
        assert_eq!((regions[0].guest_base(), regions[0].size()), (0, 0x2000));
        assert_eq!(
            (regions[1].guest_base(), regions[1].size()),
            (0x100000, 0x1000)
        );
        for r in regions {
            assert_eq!(
                mem.host_address(r.guest_base(), r.size()).unwrap() as u64,
                r.host_address()
            );
            assert_eq!(r.host_address() % TOUCH_STRIDE as u64, 0);
        }
        let inside = mem.host_address(0x100010, 4).unwrap();
        assert_eq!(inside as u64, regions[1].host_address() + 0x10);
    }

    fn out_of_bounds<T: std::fmt::Debug>(result: Result<T>, want_gpa: u64, want_len: u64) {
        match result {
            Err(AddressSpaceError::OutOfBounds { gpa, len }) => {
                assert_eq!((gpa, len), (want_gpa, want_len))
            }
            other => panic!("expected OutOfBounds at {want_gpa:#x}+{want_len:#x}, got {other:?}"),
        }
    }

    #[test]
    fn accesses_outside_ram_fail() {
        let mem = GuestMemory::new(&[(0, 0x1000), (0x2000, 0x1000)]).unwrap();
        // Crosses the end of a region.
        out_of_bounds(mem.read_obj::<u64>(0xffc), 0xffc, 8);
        out_of_bounds(mem.write_obj(&0u64, 0xffc), 0xffc, 8);
        out_of_bounds(mem.host_address(0x2000, 0x1001), 0x2000, 0x1001);
        out_of_bounds(mem.zero(0x2fff, 2), 0x2fff, 2);
        // In the hole between the regions, and past the last one.
        out_of_bounds(mem.read_obj::<u8>(0x1800), 0x1800, 1);
        out_of_bounds(mem.read(&mut [0; 4], 0x3000), 0x3000, 4);
        out_of_bounds(mem.atomic_u16(0x1800), 0x1800, 2);
        // Ranges that overflow the address space.
        out_of_bounds(mem.write(&[0; 2], u64::MAX), u64::MAX, 2);
        out_of_bounds(mem.host_address(0x10, u64::MAX), 0x10, u64::MAX);
        assert!(!mem.contains(0x800, 0x1000));
        // A failed write leaves memory alone.
        mem.write_obj(&0x55u8, 0xfff).unwrap();
        assert!(mem.write(&[1, 2], 0xfff).is_err());
        assert_eq!(mem.read_obj::<u8>(0xfff).unwrap(), 0x55);
    }

    #[test]
    fn empty_ranges_at_region_edges() {
        let mem = GuestMemory::new(&[(0x1000, 0x1000)]).unwrap();
        assert!(mem.contains(0x1000, 0));
        assert!(mem.contains(0x2000, 0), "right after the last byte");
        assert!(!mem.contains(0x2001, 0));
        assert!(!mem.contains(0xfff, 0));
        assert!(mem.contains(0x1000, 0x1000));
        mem.read(&mut [], 0x2000).unwrap();
        mem.zero(0x2000, 0).unwrap();
        let end = mem.host_address(0x2000, 0).unwrap() as u64;
        assert_eq!(end, mem.regions()[0].host_address() + 0x1000);
    }

    #[test]
    fn misaligned_atomics_fail() {
        let mem = GuestMemory::new(&[(0, 0x1000)]).unwrap();
        match mem.atomic_u16(0x3) {
            Err(AddressSpaceError::Misaligned { gpa: 3, align: 2 }) => {}
            other => panic!("expected Misaligned, got {other:?}"),
        }
        out_of_bounds(mem.atomic_u16(0x1000), 0x1000, 2);
    }

    #[test]
    fn atomic_view_sees_plain_writes() {
        let mem = GuestMemory::new(&[(0, 0x1000)]).unwrap();
        mem.write_obj(&7u16, 0x10).unwrap();
        assert_eq!(mem.atomic_u16(0x10).unwrap().load(Ordering::Acquire), 7);
        mem.atomic_u16(0xffe).unwrap().store(9, Ordering::Release);
        assert_eq!(mem.read_obj::<u16>(0xffe).unwrap(), 9);
    }

    #[test]
    fn bad_layouts_are_refused() {
        let bad = |layout: &[(u64, u64)], want: (u64, u64)| match GuestMemory::new(layout) {
            Err(AddressSpaceError::BadLayout { base, size }) => assert_eq!((base, size), want),
            other => panic!("{layout:x?}: expected BadLayout, got {other:?}"),
        };
        bad(&[(0, 0)], (0, 0));
        bad(&[(0x1000, 0x1000), (0, 0x2000)], (0, 0x2000));
        bad(&[(u64::MAX, 2)], (u64::MAX, 2));
        bad(&[(u64::MAX, 1)], (u64::MAX, 1));
        // Adjacent regions are fine, and so is no RAM at all.
        GuestMemory::new(&[(0, 0x1000), (0x1000, 0x1000)]).unwrap();
        assert_eq!(GuestMemory::new(&[]).unwrap().total_size(), 0);
    }

    #[test]
    fn concurrent_guest_writes_and_device_reads() {
        // A smoke test: one thread plays the guest and rewrites a page as fast as it can while
        // another reads it the way devices do. The soundness argument is in the docs; this
        // only shows that the accessors hold up (and aligned 8-byte reads are not torn).
        let mem = GuestMemory::new(&[(0, 0x1000)]).unwrap();
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let byte = (i % 251) as u8;
                    mem.write_obj(&(u64::from(byte) * 0x0101_0101_0101_0101), 0x100)
                        .unwrap();
                    mem.write(&[byte; 64], 0x200).unwrap();
                    mem.zero(0x300, 32).unwrap();
                    i += 1;
                }
            });
            let mut buf = [0u8; 64];
            for _ in 0..200_000 {
                let v = mem.read_obj::<u64>(0x100).unwrap();
                assert_eq!(v, (v & 0xff) * 0x0101_0101_0101_0101, "torn read {v:#x}");
                mem.read(&mut buf, 0x200).unwrap();
                let _ = mem.read_obj::<u32>(0x203).unwrap();
            }
            stop.store(true, Ordering::Relaxed);
        });
    }

    /// The `VmFlags` line of the mapping that starts at `address`, from /proc/self/smaps.
    fn vm_flags(address: u64) -> String {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let start = format!("{address:x}-");
        let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&start));
        assert!(lines.next().is_some(), "no mapping at {address:#x}");
        lines
            .find_map(|l| l.strip_prefix("VmFlags:"))
            .unwrap()
            .to_string()
    }

    #[test]
    fn shared_memory_is_a_memfd_another_mapping_sees() {
        use std::os::unix::fs::FileExt;
        let options = MemoryOptions {
            shared: true,
            ..MemoryOptions::default()
        };
        let mem = GuestMemory::with_options(&[(0, 0x10000), (0x100000, 0x2000)], &options).unwrap();
        assert!(mem.shared());
        mem.write(b"guest bytes", 0x100ff8).unwrap();
        let region = mem.regions()[1];
        let fd = region.memfd().expect("a shared region has a memfd");
        // Read through the memfd itself: the same pages, not a copy.
        let borrowed = std::mem::ManuallyDrop::new(
            // SAFETY: `fd` is open while `mem` lives; ManuallyDrop keeps this view from
            // closing it.
            unsafe { File::from_raw_fd(fd) },
        );
        assert_eq!(borrowed.metadata().unwrap().len(), 0x2000);
        let mut seen = [0u8; 11];
        borrowed.read_exact_at(&mut seen, 0xff8).unwrap();
        assert_eq!(&seen, b"guest bytes");
        borrowed.write_all_at(b"peer", 0x10).unwrap();
        let mut back = [0u8; 4];
        mem.read(&mut back, 0x100010).unwrap();
        assert_eq!(&back, b"peer");
        let flags = vm_flags(region.host_address());
        assert!(flags.contains(" sh"), "MAP_SHARED: {flags}");
        assert!(!flags.contains(" dd"), "dumped by default: {flags}");
        let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
        assert!(
            link.to_string_lossy()
                .starts_with("/memfd:stratovirt-guest-ram"),
            "{link:?}"
        );

        let private = GuestMemory::new(&[(0, 0x1000)]).unwrap();
        assert!(!private.shared());
        assert_eq!(private.regions()[0].memfd(), None);
        assert!(!vm_flags(private.regions()[0].host_address()).contains(" sh"));
    }

    #[test]
    fn excluded_memory_is_marked_dontdump() {
        for shared in [false, true] {
            let options = MemoryOptions {
                shared,
                exclude_from_core_dump: true,
                prealloc: shared,
            };
            let mem = GuestMemory::with_options(&[(0, 0x4000)], &options).unwrap();
            let flags = vm_flags(mem.regions()[0].host_address());
            assert!(
                flags.contains(" dd"),
                "MADV_DONTDUMP (shared {shared}): {flags}"
            );
            mem.write_obj(&7u32, 0x3ffc).unwrap();
            assert_eq!(mem.read_obj::<u32>(0x3ffc).unwrap(), 7);
        }
    }

    /// This process's resident set size in bytes.
    fn rss() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        let kib: u64 = line
            .trim_start_matches("VmRSS:")
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .unwrap();
        kib << 10
    }

    #[test]
    fn preallocation_makes_ram_resident() {
        // One test for every measurement, so that no other test here moves the RSS between a
        // measurement's two reads (the others map at most a few pages).
        const SIZE: u64 = 64 << 20;
        const MIB: u64 = 1 << 20;
        let grown = |f: &dyn Fn() -> GuestMemory| {
            let before = rss();
            let mem = f();
            let after = rss();
            (mem, after.saturating_sub(before))
        };

        let (lazy, lazy_growth) = grown(&|| GuestMemory::new(&[(0, SIZE)]).unwrap());
        assert!(!lazy.preallocated());
        drop(lazy);

        let prealloc = MemoryOptions {
            prealloc: true,
            ..MemoryOptions::default()
        };
        let (eager, eager_growth) =
            grown(&|| GuestMemory::with_options(&[(0, SIZE)], &prealloc).unwrap());
        assert!(eager.preallocated());
        // The preallocated memory still works like any other.
        eager.write_obj(&0xabcd_u16, SIZE - 2).unwrap();
        assert_eq!(eager.read_obj::<u16>(SIZE - 2).unwrap(), 0xabcd);
        drop(eager);

        // The fallback for kernels without MADV_POPULATE_WRITE.
        let (touched, touch_growth) = grown(&|| {
            let mem = GuestMemory::new(&[(0, SIZE)]).unwrap();
            let region = mem.mmap.iter().next().unwrap();
            populate_by_touching(region).unwrap();
            mem
        });
        assert_eq!(touched.read_obj::<u64>(0x1000).unwrap(), 0);
        drop(touched);

        eprintln!(
            "RSS growth for {} MiB of guest RAM: lazy {} KiB, MADV_POPULATE_WRITE {} KiB, \
             touching {} KiB",
            SIZE / MIB,
            lazy_growth >> 10,
            eager_growth >> 10,
            touch_growth >> 10
        );
        assert!(lazy_growth < 8 * MIB, "lazy: {lazy_growth} bytes");
        assert!(eager_growth >= 60 * MIB, "prealloc: {eager_growth} bytes");
        assert!(touch_growth >= 60 * MIB, "touching: {touch_growth} bytes");
    }
}
