//! The guest's physical address space.
//!
//! - [`GuestMemory`]: guest RAM, anonymous host mappings managed by the rust-vmm `vm-memory`
//!   crate; every access is bounds-checked and goes through vm-memory's volatile accessors
//!   (the guest writes its RAM while we read it), and RAM can be preallocated, shared
//!   (memfds) or kept out of core dumps ([`MemoryOptions`]). See `docs/guest-memory.md`.
//! - [`Bus`]: the port-I/O and MMIO buses that devices register address ranges on.

#![deny(missing_docs)]

mod bus;
mod guest_memory;

pub use bus::{Bus, BusDevice};
pub use guest_memory::{ByteValued, GuestMemory, MemoryOptions, RamRegion};

/// Errors of the address space.
#[derive(Debug, thiserror::Error)]
pub enum AddressSpaceError {
    /// Mapping host memory for guest RAM failed.
    #[error("cannot map {size} bytes of guest RAM")]
    Mmap {
        /// Size of the failed mapping.
        size: u64,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
    /// Making preallocated guest RAM resident failed (usually: not enough host memory).
    #[error("cannot preallocate {size} bytes of guest RAM")]
    Prealloc {
        /// Size of the region being preallocated.
        size: u64,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
    /// The memfd behind a shared RAM region could not be created or sized.
    #[error("cannot create a {size}-byte memfd for shared guest RAM")]
    Memfd {
        /// Size of the region.
        size: u64,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
    /// Guest RAM could not be kept out of core dumps (`MADV_DONTDUMP`).
    #[error("cannot exclude {size} bytes of guest RAM from core dumps")]
    DontDump {
        /// Size of the region.
        size: u64,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
    /// A RAM region is empty, overflows, or overlaps another.
    #[error("invalid RAM layout: region at {base:#x} of {size:#x} bytes")]
    BadLayout {
        /// Guest physical base.
        base: u64,
        /// Size in bytes.
        size: u64,
    },
    /// An access falls (partly) outside guest RAM.
    #[error("guest address range {gpa:#x}+{len:#x} is not inside guest RAM")]
    OutOfBounds {
        /// Guest physical address.
        gpa: u64,
        /// Length of the access.
        len: u64,
    },
    /// An atomic access is not naturally aligned.
    #[error("guest address {gpa:#x} is not aligned to {align} bytes")]
    Misaligned {
        /// Guest physical address.
        gpa: u64,
        /// Required alignment.
        align: u64,
    },
    /// A device range overlaps one already on the bus.
    #[error("bus range {base:#x}+{len:#x} overlaps an existing device")]
    BusOverlap {
        /// Base address.
        base: u64,
        /// Length.
        len: u64,
    },
}

/// Result of this crate.
pub type Result<T> = std::result::Result<T, AddressSpaceError>;
