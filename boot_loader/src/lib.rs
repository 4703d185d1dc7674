//! x86_64 Linux direct boot: loads a bzImage, an ELF `vmlinux` or a raw `vmlinux.bin` (the flat
//! binary `objcopy -O binary` makes, loaded at 16 MiB as StratoVirt does), an optional initrd and the
//! command line into guest RAM, and writes everything a vCPU needs to enter the kernel's
//! 64-bit entry point: `boot_params` with its e820 map, a GDT, an empty IDT, identity page
//! tables and an MP table for the vCPUs.
//!
//! The guest physical memory map is in [`layout`]; the machine uses [`ram_layout`] to
//! create guest RAM so that the e820 map, derived from the RAM regions, agrees with it.
//!
//! Invariants:
//! - The kernel file's type is decided by content, never by its name: ELF magic, then the
//!   bzImage setup header, then the Linux banner of a raw image (see `raw.rs`).
//! - Every read of a kernel or initrd file is bounds-checked against the file's size, and
//!   every write to guest memory goes through `GuestMemory`: a malformed file is a
//!   [`BootError`], never a panic or a write outside guest RAM.
//! - The initrd sits at the highest page-aligned address below both the kernel's
//!   `initrd_addr_max` and the end of low RAM, and above everything the kernel occupies.
//!
//! The vCPU starts in 64-bit mode with `rip = entry`, `rsi = boot_params`,
//! `rsp = rbp = stack_top`, `cr3 = pml4`, CR0 PE|PG, CR4 PAE, EFER LME|LMA, the GDT at
//! `gdt`/`gdt_limit`, the IDT at `idt`/[`IDT_LIMIT`], and segments from [`boot_segments`].

#![deny(missing_docs)]

mod bootparams;
mod bzimage;
mod elf;
mod error;
mod gdt;
mod image;
mod kernel;
pub mod layout;
mod mptable;
mod paging;
mod raw;

use std::path::PathBuf;

use address_space::GuestMemory;

use bootparams::{e820_map, BootParams, LOADER_TYPE_UNDEFINED};
use error::guest_write;
use image::ImageFile;
use kernel::LoadedKernel;

pub use error::{BootError, Result};
pub use gdt::{
    boot_segments, gdt_entries, BootSegments, SegmentDescriptor, CODE_SELECTOR, DATA_SELECTOR,
    GDT_ENTRY_COUNT, GDT_LIMIT, TSS_SELECTOR,
};
pub use layout::{
    ram_layout, IDT_LIMIT, IOAPIC_BASE, LAPIC_BASE, MMIO_HOLE_START, VIRTIO_MMIO_BASE,
    VIRTIO_MMIO_SIZE,
};
pub use mptable::MAX_CPUS;
pub use raw::{LINUX_BANNER, RAW_KERNEL_ADDR};

use layout::{
    BOOT_PARAMS_ADDR, BOOT_STACK_TOP, CMDLINE_ADDR, CMDLINE_MAX_SIZE, GDT_ADDR, IDT_ADDR,
};

/// Page size used to align the initrd.
const PAGE_SIZE: u64 = 0x1000;

/// What to boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootConfig {
    /// The kernel: a bzImage, an ELF vmlinux or a raw vmlinux.bin.
    pub kernel: PathBuf,
    /// An optional initrd/initramfs image.
    pub initrd: Option<PathBuf>,
    /// The complete kernel command line (virtio-mmio device entries already appended).
    pub cmdline: String,
    /// Number of vCPUs to describe in the MP table (1..=254).
    pub cpu_count: u8,
}

/// The kind of kernel image found in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelKind {
    /// A bzImage (Linux boot protocol), entered at its 64-bit entry point.
    BzImage,
    /// An uncompressed ELF vmlinux, entered at `startup_64`.
    Elf,
    /// A raw `vmlinux.bin` (flat binary), loaded and entered at [`RAW_KERNEL_ADDR`].
    Raw,
}

/// Where the vCPU starts, and where the boot structures are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootLayout {
    /// Kernel entry point (`rip`).
    pub entry: u64,
    /// Guest address of `boot_params` (`rsi`).
    pub boot_params: u64,
    /// Initial stack pointer (`rsp` and `rbp`).
    pub stack_top: u64,
    /// Physical address of the PML4 (`cr3`).
    pub pml4: u64,
    /// Guest address of the GDT.
    pub gdt: u64,
    /// GDT limit.
    pub gdt_limit: u16,
    /// Code segment selector (0x10).
    pub code_selector: u16,
    /// Data segment selector (0x18).
    pub data_selector: u16,
    /// Task register selector.
    pub tss_selector: u16,
    /// Guest address of the IDT (limit [`IDT_LIMIT`]).
    pub idt: u64,
    /// What kind of image was loaded.
    pub kind: KernelKind,
}

/// Loads the kernel, initrd and command line of `config` into `mem` and writes the boot
/// structures; returns the vCPU's starting state.
///
/// `mem` must contain a region at guest address 0 (see [`ram_layout`]).
pub fn load_linux(mem: &GuestMemory, config: &BootConfig) -> Result<BootLayout> {
    let low_end = low_ram_end(mem)?;
    let e820 = e820_map(mem)?;
    mptable::write_mp_table(mem, config.cpu_count)?;
    let kernel_file = ImageFile::open(&config.kernel, "kernel")?;
    let (kind, kernel) = load_kernel(&kernel_file, mem, low_end)?;

    let mut params = BootParams::default();
    params.hdr = kernel.header;
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    write_cmdline(mem, &config.cmdline, u64::from(kernel.header.cmdline_size))?;
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    if let Some(path) = &config.initrd {
        let (addr, size) = load_initrd(mem, path, &kernel, low_end)?;
        params.hdr.ramdisk_image = addr;
        params.hdr.ramdisk_size = size;
    }
    params.set_e820(&e820);
    mem.write_obj(&params, BOOT_PARAMS_ADDR)
        .map_err(guest_write("boot_params"))?;

    write_descriptor_tables(mem)?;
    let pml4 = paging::write_identity_map(mem)?;
    Ok(BootLayout {
        entry: kernel.entry,
        boot_params: BOOT_PARAMS_ADDR,
        stack_top: BOOT_STACK_TOP,
        pml4,
        gdt: GDT_ADDR,
        gdt_limit: GDT_LIMIT,
        code_selector: CODE_SELECTOR,
        data_selector: DATA_SELECTOR,
        tss_selector: TSS_SELECTOR,
        idt: IDT_ADDR,
        kind,
    })
}

/// End of the RAM region that starts at guest address 0.
fn low_ram_end(mem: &GuestMemory) -> Result<u64> {
    mem.regions()
        .iter()
        .find(|r| r.guest_base() == 0)
        .map(|r| r.size())
        .filter(|&size| size > layout::HIMEM_START)
        .ok_or(BootError::NoLowRam)
}

/// Decides the image type by content and loads it.
fn load_kernel(
    file: &ImageFile,
    mem: &GuestMemory,
    low_end: u64,
) -> Result<(KernelKind, LoadedKernel)> {
    let mut magic = [0u8; 4];
    if file.len() >= 4 {
        file.read_exact("magic", &mut magic, 0)?;
    }
    if magic == elf::ELF_MAGIC {
        Ok((KernelKind::Elf, elf::load(file, mem)?))
    } else if bzimage::looks_like_bzimage(file)? {
        Ok((KernelKind::BzImage, bzimage::load(file, mem, low_end)?))
    } else if raw::has_linux_banner(file)? {
        Ok((KernelKind::Raw, raw::load(file, mem, low_end)?))
    } else {
        Err(BootError::NotAKernel {
            path: file.path().to_path_buf(),
        })
    }
}

/// Writes the NUL-terminated command line, checking the kernel's limit `max_len` (without
/// the NUL) and the room below the EBDA.
fn write_cmdline(mem: &GuestMemory, cmdline: &str, max_len: u64) -> Result<()> {
    if cmdline.as_bytes().contains(&0) {
        return Err(BootError::CmdlineHasNul);
    }
    let max = max_len.min(CMDLINE_MAX_SIZE - 1);
    if cmdline.len() as u64 > max {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    let mut bytes = Vec::with_capacity(cmdline.len() + 1);
    bytes.extend_from_slice(cmdline.as_bytes());
    bytes.push(0);
    mem.write(&bytes, CMDLINE_ADDR)
        .map_err(guest_write("kernel command line"))
}

/// Places the initrd at the highest page-aligned address that fits below the kernel's
/// `initrd_addr_max` and the end of low RAM, above the kernel; returns its address and size.
fn load_initrd(
    mem: &GuestMemory,
    path: &std::path::Path,
    kernel: &LoadedKernel,
    low_end: u64,
) -> Result<(u32, u32)> {
    let file = ImageFile::open(path, "initrd")?;
    let size = file.len();
    let limit = (u64::from(kernel.header.initrd_addr_max) + 1).min(low_end);
    let kernel_end = kernel.end.next_multiple_of(PAGE_SIZE);
    let too_large = BootError::InitrdTooLarge {
        size,
        kernel_end,
        limit,
    };
    let addr = limit
        .checked_sub(size)
        .map(|top| top & !(PAGE_SIZE - 1))
        .filter(|&addr| addr >= kernel_end)
        .ok_or(too_large)?;
    file.copy_to_guest("initrd", mem, 0, size, addr)?;
    log::info!("initrd: {size:#x} bytes at {addr:#x}");
    // Both fit in 32 bits: `addr + size <= limit <= 2^32`.
    Ok((addr as u32, size as u32))
}

/// Writes the GDT and the empty IDT.
fn write_descriptor_tables(mem: &GuestMemory) -> Result<()> {
    for (i, entry) in gdt_entries().iter().enumerate() {
        mem.write_obj(entry, GDT_ADDR + 8 * i as u64)
            .map_err(guest_write("GDT"))?;
    }
    mem.write_obj(&0u64, IDT_ADDR).map_err(guest_write("IDT"))
}
