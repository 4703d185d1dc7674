//! ELF `vmlinux` loading: an uncompressed x86_64 kernel, entered at its 64-bit `startup_64`.
//!
//! Every `PT_LOAD` segment is copied to its physical address `p_paddr` and the rest of its
//! memory size is zeroed. Segments must lie in guest RAM at or above 1 MiB (below are the boot
//! structures). The entry point is `e_entry`; a kernel-virtual entry (at or above
//! `__START_KERNEL_map`) is translated through the segment that contains it. The setup header
//! is built from scratch, since a vmlinux has none.

use address_space::{ByteValued, GuestMemory};

use crate::bootparams::{SetupHeader, BOOT_FLAG, HDR_MAGIC, LOADED_HIGH, XLF_KERNEL_64};
use crate::error::{guest_write, BootError, Result};
use crate::image::ImageFile;
use crate::kernel::LoadedKernel;
use crate::layout::HIMEM_START;

/// `\x7fELF`.
pub(crate) const ELF_MAGIC: [u8; 4] = [0x7f, b'E', b'L', b'F'];
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EV_CURRENT: u8 = 1;
const ET_EXEC: u16 = 2;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
/// Most program headers accepted (a vmlinux has about five).
const MAX_PHDRS: u16 = 64;
/// Start of the x86_64 kernel text mapping (`__START_KERNEL_map`).
const KERNEL_VIRTUAL_BASE: u64 = 0xffff_ffff_8000_0000;
/// Boot protocol version the synthesized header claims.
const PROTOCOL_VERSION: u16 = 0x020c;
/// x86_64 `COMMAND_LINE_SIZE` (2048) minus the NUL.
const CMDLINE_SIZE: u32 = 2047;
/// Highest initrd address: what the kernel's own header says (`initrd_addr_max`).
const INITRD_ADDR_MAX: u32 = 0x7fff_ffff;
/// `CONFIG_PHYSICAL_ALIGN` default.
const KERNEL_ALIGNMENT: u32 = 0x20_0000;

/// ELF64 file header.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Elf64Header {
    ident: [u8; 16],
    e_type: u16,
    machine: u16,
    version: u32,
    entry: u64,
    phoff: u64,
    shoff: u64,
    flags: u32,
    ehsize: u16,
    phentsize: u16,
    phnum: u16,
    shentsize: u16,
    shnum: u16,
    shstrndx: u16,
}

/// ELF64 program header.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Elf64ProgramHeader {
    p_type: u32,
    flags: u32,
    offset: u64,
    vaddr: u64,
    paddr: u64,
    filesz: u64,
    memsz: u64,
    align: u64,
}

// SAFETY: `repr(C)` with every field at its natural alignment and no padding (sizes and
// offsets asserted in the tests); all fields are integers, valid for every bit pattern.
unsafe impl ByteValued for Elf64Header {}
// SAFETY: as above.
unsafe impl ByteValued for Elf64ProgramHeader {}

fn check_header(header: &Elf64Header) -> Result<()> {
    let unsupported = |what| Err(BootError::UnsupportedElf(what));
    if header.ident[4] != ELFCLASS64 {
        return unsupported("not ELFCLASS64");
    }
    if header.ident[5] != ELFDATA2LSB {
        return unsupported("not little-endian");
    }
    if header.ident[6] != EV_CURRENT {
        return unsupported("unknown ELF version");
    }
    if header.e_type != ET_EXEC {
        return unsupported("not an executable (ET_EXEC)");
    }
    if header.machine != EM_X86_64 {
        return unsupported("machine is not x86_64");
    }
    if usize::from(header.phentsize) != std::mem::size_of::<Elf64ProgramHeader>() {
        return Err(BootError::BadProgramHeaders("e_phentsize is not 56"));
    }
    if header.phnum == 0 || header.phnum > MAX_PHDRS {
        return Err(BootError::BadProgramHeaders("e_phnum is 0 or above 64"));
    }
    Ok(())
}

/// Copies one `PT_LOAD` segment and zeroes its tail.
fn load_segment(file: &ImageFile, mem: &GuestMemory, ph: &Elf64ProgramHeader) -> Result<()> {
    let (paddr, filesz, memsz) = (ph.paddr, ph.filesz, ph.memsz);
    if filesz > memsz {
        return Err(BootError::SegmentFileSize {
            paddr,
            filesz,
            memsz,
        });
    }
    if paddr < HIMEM_START || !mem.contains(paddr, memsz) {
        return Err(BootError::SegmentOutsideRam { paddr, memsz });
    }
    file.copy_to_guest("ELF segment", mem, ph.offset, filesz, paddr)?;
    mem.zero(paddr + filesz, memsz - filesz)
        .map_err(guest_write("ELF segment bss"))
}

/// Checks the ELF headers and loads every `PT_LOAD` segment.
pub(crate) fn load(file: &ImageFile, mem: &GuestMemory) -> Result<LoadedKernel> {
    let header: Elf64Header = file.read_obj("ELF header", 0)?;
    check_header(&header)?;
    let phsize = std::mem::size_of::<Elf64ProgramHeader>() as u64;
    file.check_range(
        "ELF program headers",
        header.phoff,
        u64::from(header.phnum) * phsize,
    )?;
    let segments = (0..u64::from(header.phnum))
        .map(|i| {
            file.read_obj::<Elf64ProgramHeader>("ELF program header", header.phoff + i * phsize)
        })
        .filter(|ph| {
            ph.as_ref()
                .map_or(true, |ph| ph.p_type == PT_LOAD && ph.memsz > 0)
        })
        .collect::<Result<Vec<_>>>()?;
    if segments.is_empty() {
        return Err(BootError::NoLoadableSegment);
    }
    for ph in &segments {
        load_segment(file, mem, ph)?;
    }
    let entry = physical_entry(header.entry, &segments)?;
    let end = segments
        .iter()
        .map(|ph| ph.paddr + ph.memsz)
        .max()
        .unwrap_or(HIMEM_START);
    log::info!(
        "ELF kernel: {} segments, entry {entry:#x}, end {end:#x}",
        segments.len()
    );
    Ok(LoadedKernel {
        entry,
        end,
        header: synthesized_header(),
    })
}

/// The physical entry point: `e_entry` if it lies in a segment's physical range, or its
/// translation through the segment whose virtual range holds it.
fn physical_entry(entry: u64, segments: &[Elf64ProgramHeader]) -> Result<u64> {
    let inside = |start: u64, ph: &Elf64ProgramHeader| entry >= start && entry - start < ph.memsz;
    let translated = if entry >= KERNEL_VIRTUAL_BASE {
        segments
            .iter()
            .find(|ph| inside(ph.vaddr, ph))
            .map(|ph| entry - ph.vaddr + ph.paddr)
    } else {
        segments
            .iter()
            .any(|ph| inside(ph.paddr, ph))
            .then_some(entry)
    };
    translated.ok_or(BootError::EntryOutsideKernel(entry))
}

/// A setup header for a kernel that has none, with what the kernel reads from it.
pub(crate) fn synthesized_header() -> SetupHeader {
    SetupHeader {
        boot_flag: BOOT_FLAG,
        header: HDR_MAGIC,
        version: PROTOCOL_VERSION,
        loadflags: LOADED_HIGH,
        xloadflags: XLF_KERNEL_64,
        kernel_alignment: KERNEL_ALIGNMENT,
        cmdline_size: CMDLINE_SIZE,
        initrd_addr_max: INITRD_ADDR_MAX,
        ..SetupHeader::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    #[test]
    fn headers_match_elf_h() {
        assert_eq!(size_of::<Elf64Header>(), 64);
        assert_eq!(offset_of!(Elf64Header, e_type), 16);
        assert_eq!(offset_of!(Elf64Header, machine), 18);
        assert_eq!(offset_of!(Elf64Header, entry), 24);
        assert_eq!(offset_of!(Elf64Header, phoff), 32);
        assert_eq!(offset_of!(Elf64Header, phentsize), 54);
        assert_eq!(offset_of!(Elf64Header, phnum), 56);
        assert_eq!(size_of::<Elf64ProgramHeader>(), 56);
        assert_eq!(offset_of!(Elf64ProgramHeader, offset), 8);
        assert_eq!(offset_of!(Elf64ProgramHeader, paddr), 24);
        assert_eq!(offset_of!(Elf64ProgramHeader, memsz), 40);
    }

    fn segment(vaddr: u64, paddr: u64, memsz: u64) -> Elf64ProgramHeader {
        Elf64ProgramHeader {
            p_type: PT_LOAD,
            vaddr,
            paddr,
            memsz,
            ..Default::default()
        }
    }

    #[test]
    fn entry_translation() {
        let segs = [segment(0xffff_ffff_8100_0000, 0x100_0000, 0x10_0000)];
        assert_eq!(physical_entry(0x100_0000, &segs).unwrap(), 0x100_0000);
        assert_eq!(
            physical_entry(0xffff_ffff_8100_0040, &segs).unwrap(),
            0x100_0040
        );
        assert!(physical_entry(0x200_0000, &segs).is_err());
        assert!(physical_entry(0xffff_ffff_8200_0000, &segs).is_err());
    }
}
