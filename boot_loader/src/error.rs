//! Errors of the boot loader: one variant per failing step, carrying its cause.

use std::path::PathBuf;

use address_space::AddressSpaceError;

/// Why the kernel, initrd or boot structures could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel or initrd file could not be opened or its size read.
    #[error("cannot open {}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
    /// The kernel or initrd path names something other than a regular file (checked without
    /// opening it for reading, so a FIFO or a device is never waited on).
    #[error("{} is a {kind}: the {what} must be a regular file", path.display())]
    NotAFile {
        /// The path.
        path: PathBuf,
        /// `"kernel"` or `"initrd"`.
        what: &'static str,
        /// What it names.
        kind: util::file::FileKind,
    },
    /// Reading the kernel or initrd file failed.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The errno.
        #[source]
        source: std::io::Error,
    },
    /// The file is shorter than its own headers say.
    #[error("{} is truncated: {what} at offset {offset:#x} needs {len:#x} bytes, the file has {file_len:#x}", path.display())]
    Truncated {
        /// The file.
        path: PathBuf,
        /// What was being read.
        what: &'static str,
        /// File offset of the read.
        offset: u64,
        /// Length of the read.
        len: u64,
        /// Size of the file.
        file_len: u64,
    },
    /// The kernel file is neither a bzImage, an ELF vmlinux nor a raw vmlinux.bin.
    #[error("{} is not a Linux kernel (bzImage, ELF vmlinux, or raw vmlinux.bin with the Linux banner)", path.display())]
    NotAKernel {
        /// The file.
        path: PathBuf,
    },
    /// The bzImage speaks a boot protocol older than 2.12 (which announces the 64-bit entry).
    #[error("bzImage boot protocol {}.{:02} is too old: 2.12 or later is needed", version >> 8, version & 0xff)]
    ProtocolTooOld {
        /// The version from the setup header.
        version: u16,
    },
    /// The bzImage has no 64-bit entry point (`XLF_KERNEL_64` clear).
    #[error("bzImage has no 64-bit entry point (not an x86_64 kernel?)")]
    No64BitEntry,
    /// The bzImage does not load its protected-mode part at 1 MiB (`LOADED_HIGH` clear).
    #[error("bzImage is not a high-loaded (bzImage) kernel")]
    NotLoadedHigh,
    /// The bzImage's `kernel_alignment` is not a power of two.
    #[error("bzImage kernel_alignment {0:#x} is not a power of two")]
    BadAlignment(u32),
    /// An ELF file that is not a little-endian 64-bit x86_64 executable.
    #[error("ELF kernel is not a little-endian 64-bit x86_64 executable: {0}")]
    UnsupportedElf(&'static str),
    /// The ELF program header table is malformed.
    #[error("ELF program headers are malformed: {0}")]
    BadProgramHeaders(&'static str),
    /// An ELF segment's file part is larger than its memory size.
    #[error("ELF segment at {paddr:#x}: file size {filesz:#x} exceeds memory size {memsz:#x}")]
    SegmentFileSize {
        /// Physical load address.
        paddr: u64,
        /// Bytes in the file.
        filesz: u64,
        /// Bytes in memory.
        memsz: u64,
    },
    /// An ELF segment does not fit in guest RAM, or would cover the boot structures below 1 MiB.
    #[error("ELF segment {paddr:#x}+{memsz:#x} is not inside guest RAM above 1 MiB")]
    SegmentOutsideRam {
        /// Physical load address.
        paddr: u64,
        /// Bytes in memory.
        memsz: u64,
    },
    /// The ELF file has no loadable segment.
    #[error("ELF kernel has no loadable segment")]
    NoLoadableSegment,
    /// The ELF entry point is not inside any loaded segment.
    #[error("ELF entry point {0:#x} is not inside a loaded segment")]
    EntryOutsideKernel(u64),
    /// The bzImage (with the room it needs to decompress) does not fit in low RAM.
    #[error("kernel needs {size:#x} bytes at {load_addr:#x} but low RAM ends at {ram_end:#x}")]
    KernelTooLarge {
        /// Load address.
        load_addr: u64,
        /// Bytes needed.
        size: u64,
        /// End of low RAM.
        ram_end: u64,
    },
    /// The command line (with its NUL) is longer than the kernel accepts.
    #[error("kernel command line is {len} bytes, the kernel accepts at most {max}")]
    CmdlineTooLong {
        /// Length of the command line.
        len: usize,
        /// Longest accepted command line.
        max: u64,
    },
    /// The command line contains a NUL byte.
    #[error("kernel command line contains a NUL byte")]
    CmdlineHasNul,
    /// The initrd does not fit between the kernel and the top of low RAM.
    #[error("initrd of {size:#x} bytes does not fit between the kernel end {kernel_end:#x} and {limit:#x}")]
    InitrdTooLarge {
        /// Size of the initrd.
        size: u64,
        /// First address above the kernel.
        kernel_end: u64,
        /// Highest address the initrd may reach.
        limit: u64,
    },
    /// The vCPU count is outside 1..=254.
    #[error("{0} vCPUs cannot be described: 1 to 254 are supported")]
    CpuCount(u8),
    /// Guest RAM has no region at address 0, or it is too small to boot from.
    #[error("guest RAM must start at address 0 and extend beyond 1 MiB")]
    NoLowRam,
    /// Writing to guest memory failed.
    #[error("cannot write {what} to guest memory")]
    GuestMemory {
        /// What was being written.
        what: &'static str,
        /// The cause.
        #[source]
        source: AddressSpaceError,
    },
}

/// Result of this crate.
pub type Result<T> = std::result::Result<T, BootError>;

/// Attaches "what was being written" to a guest memory error.
pub(crate) fn guest_write(what: &'static str) -> impl FnOnce(AddressSpaceError) -> BootError {
    move |source| BootError::GuestMemory { what, source }
}
