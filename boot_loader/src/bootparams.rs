//! The Linux x86 boot protocol structures: the setup header and `boot_params` (the "zero
//! page"), laid out as in the kernel's `arch/x86/include/uapi/asm/bootparam.h`, and the e820
//! memory map derived from the guest's RAM regions.
//!
//! Only the fields this loader fills are named; the rest is padding that stays zero.
//! Layouts are asserted in the tests (size and every offset).

use address_space::{ByteValued, GuestMemory};

use crate::error::{BootError, Result};
use crate::layout::{EBDA_START, HIMEM_START};

/// `boot_flag` value: the legacy boot-sector signature.
pub(crate) const BOOT_FLAG: u16 = 0xaa55;
/// `header` value: "HdrS".
pub(crate) const HDR_MAGIC: u32 = 0x5372_6448;
/// Offset of the setup header in a bzImage file and in `boot_params`.
pub(crate) const SETUP_HEADER_OFFSET: u64 = 0x1f1;
/// `loadflags` bit: the protected-mode code is loaded at 1 MiB.
pub(crate) const LOADED_HIGH: u8 = 0x01;
/// `xloadflags` bit: the kernel has the 64-bit entry point at load address + 0x200.
pub(crate) const XLF_KERNEL_64: u16 = 0x01;
/// `type_of_loader` for a boot loader without an assigned id.
pub(crate) const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// e820 type of usable RAM.
pub(crate) const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub(crate) const E820_RESERVED: u32 = 2;
/// Entries in `boot_params.e820_table`.
const E820_MAX_ENTRIES: usize = 128;

/// The setup header (`struct setup_header`), 0x1f1..0x26c of the zero page.
#[repr(C, packed)]
#[derive(Clone, Copy, Default, Debug)]
pub(crate) struct SetupHeader {
    pub setup_sects: u8,
    pub root_flags: u16,
    pub syssize: u32,
    pub ram_size: u16,
    pub vid_mode: u16,
    pub root_dev: u16,
    pub boot_flag: u16,
    pub jump: u16,
    pub header: u32,
    pub version: u16,
    pub realmode_swtch: u32,
    pub start_sys_seg: u16,
    pub kernel_version: u16,
    pub type_of_loader: u8,
    pub loadflags: u8,
    pub setup_move_size: u16,
    pub code32_start: u32,
    pub ramdisk_image: u32,
    pub ramdisk_size: u32,
    pub bootsect_kludge: u32,
    pub heap_end_ptr: u16,
    pub ext_loader_ver: u8,
    pub ext_loader_type: u8,
    pub cmd_line_ptr: u32,
    pub initrd_addr_max: u32,
    pub kernel_alignment: u32,
    pub relocatable_kernel: u8,
    pub min_alignment: u8,
    pub xloadflags: u16,
    pub cmdline_size: u32,
    pub hardware_subarch: u32,
    pub hardware_subarch_data: u64,
    pub payload_offset: u32,
    pub payload_length: u32,
    pub setup_data: u64,
    pub pref_address: u64,
    pub init_size: u32,
    pub handover_offset: u32,
    pub kernel_info_offset: u32,
}

// SAFETY: packed, so no padding; all fields are integers, valid for every bit pattern.
unsafe impl ByteValued for SetupHeader {}

/// One e820 memory map entry (`struct boot_e820_entry`).
#[repr(C, packed)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub(crate) struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub type_: u32,
}

// SAFETY: packed, so no padding; all fields are integers, valid for every bit pattern.
unsafe impl ByteValued for E820Entry {}

/// `struct boot_params`, the 4 KiB zero page handed to the kernel in `rsi`.
#[repr(C, packed)]
#[derive(Clone, Copy)]
pub(crate) struct BootParams {
    _pad0: [u8; 0x1e8],
    pub e820_entries: u8,
    _pad1: [u8; 0x8],
    pub hdr: SetupHeader,
    _pad2: [u8; 0x64],
    pub e820_table: [E820Entry; E820_MAX_ENTRIES],
    _pad3: [u8; 0x330],
}

impl Default for BootParams {
    fn default() -> Self {
        BootParams {
            _pad0: [0; 0x1e8],
            e820_entries: 0,
            _pad1: [0; 0x8],
            hdr: SetupHeader::default(),
            _pad2: [0; 0x64],
            e820_table: [E820Entry::default(); E820_MAX_ENTRIES],
            _pad3: [0; 0x330],
        }
    }
}

// SAFETY: packed, so no padding; all fields are integers or arrays of integer structs.
unsafe impl ByteValued for BootParams {}

impl BootParams {
    /// Fills the e820 table.
    pub(crate) fn set_e820(&mut self, entries: &[E820Entry]) {
        let n = entries.len().min(E820_MAX_ENTRIES);
        self.e820_table[..n].copy_from_slice(&entries[..n]);
        self.e820_entries = n as u8;
    }
}

/// The e820 map for the guest's RAM regions: RAM below the EBDA, the EBDA and BIOS area
/// reserved up to 1 MiB, RAM from 1 MiB to the end of the low region, and every other region
/// (above 4 GiB) as RAM.
pub(crate) fn e820_map(mem: &GuestMemory) -> Result<Vec<E820Entry>> {
    let mut entries = Vec::new();
    for region in mem.regions() {
        let (base, size) = (region.guest_base(), region.size());
        if base == 0 {
            if size <= HIMEM_START {
                return Err(BootError::NoLowRam);
            }
            entries.push(entry(0, EBDA_START, E820_RAM));
            entries.push(entry(EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED));
            entries.push(entry(HIMEM_START, size - HIMEM_START, E820_RAM));
        } else {
            entries.push(entry(base, size, E820_RAM));
        }
    }
    if entries.first().is_none_or(|e| e.addr != 0) {
        return Err(BootError::NoLowRam);
    }
    Ok(entries)
}

fn entry(addr: u64, size: u64, type_: u32) -> E820Entry {
    E820Entry { addr, size, type_ }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{ram_layout, HIGH_RAM_START, MMIO_HOLE_START};
    use std::mem::{offset_of, size_of};

    #[test]
    fn setup_header_matches_bootparam_h() {
        let at = |off: usize| off + SETUP_HEADER_OFFSET as usize;
        assert_eq!(size_of::<SetupHeader>(), 0x26c - 0x1f1);
        assert_eq!(at(offset_of!(SetupHeader, setup_sects)), 0x1f1);
        assert_eq!(at(offset_of!(SetupHeader, syssize)), 0x1f4);
        assert_eq!(at(offset_of!(SetupHeader, vid_mode)), 0x1fa);
        assert_eq!(at(offset_of!(SetupHeader, boot_flag)), 0x1fe);
        assert_eq!(at(offset_of!(SetupHeader, jump)), 0x200);
        assert_eq!(at(offset_of!(SetupHeader, header)), 0x202);
        assert_eq!(at(offset_of!(SetupHeader, version)), 0x206);
        assert_eq!(at(offset_of!(SetupHeader, type_of_loader)), 0x210);
        assert_eq!(at(offset_of!(SetupHeader, loadflags)), 0x211);
        assert_eq!(at(offset_of!(SetupHeader, code32_start)), 0x214);
        assert_eq!(at(offset_of!(SetupHeader, ramdisk_image)), 0x218);
        assert_eq!(at(offset_of!(SetupHeader, ramdisk_size)), 0x21c);
        assert_eq!(at(offset_of!(SetupHeader, heap_end_ptr)), 0x224);
        assert_eq!(at(offset_of!(SetupHeader, cmd_line_ptr)), 0x228);
        assert_eq!(at(offset_of!(SetupHeader, initrd_addr_max)), 0x22c);
        assert_eq!(at(offset_of!(SetupHeader, kernel_alignment)), 0x230);
        assert_eq!(at(offset_of!(SetupHeader, relocatable_kernel)), 0x234);
        assert_eq!(at(offset_of!(SetupHeader, xloadflags)), 0x236);
        assert_eq!(at(offset_of!(SetupHeader, cmdline_size)), 0x238);
        assert_eq!(at(offset_of!(SetupHeader, hardware_subarch_data)), 0x240);
        assert_eq!(at(offset_of!(SetupHeader, setup_data)), 0x250);
        assert_eq!(at(offset_of!(SetupHeader, pref_address)), 0x258);
        assert_eq!(at(offset_of!(SetupHeader, init_size)), 0x260);
        assert_eq!(at(offset_of!(SetupHeader, kernel_info_offset)), 0x268);
    }

    #[test]
    fn boot_params_matches_bootparam_h() {
        assert_eq!(size_of::<BootParams>(), 0x1000);
        assert_eq!(size_of::<E820Entry>(), 20);
        assert_eq!(offset_of!(BootParams, e820_entries), 0x1e8);
        assert_eq!(offset_of!(BootParams, hdr), 0x1f1);
        assert_eq!(offset_of!(BootParams, e820_table), 0x2d0);
        assert_eq!(HDR_MAGIC.to_le_bytes(), *b"HdrS");
    }

    #[test]
    fn e820_reserves_the_ebda_and_bios_area() {
        let mem = GuestMemory::new(&ram_layout(256 << 20)).unwrap();
        let map = e820_map(&mem).unwrap();
        assert_eq!(
            map,
            vec![
                entry(0, 0x9fc00, E820_RAM),
                entry(0x9fc00, 0x100000 - 0x9fc00, E820_RESERVED),
                entry(0x100000, (256 << 20) - 0x100000, E820_RAM),
            ]
        );
    }

    #[test]
    fn e820_covers_ram_above_4g() {
        let size = MMIO_HOLE_START + (1 << 30);
        let mem = GuestMemory::new(&ram_layout(size)).unwrap();
        let map = e820_map(&mem).unwrap();
        assert_eq!(map.len(), 4);
        assert_eq!(
            map[2],
            entry(0x100000, MMIO_HOLE_START - 0x100000, E820_RAM)
        );
        assert_eq!(map[3], entry(HIGH_RAM_START, 1 << 30, E820_RAM));
        let ram: u64 = map
            .iter()
            .filter(|e| e.type_ == E820_RAM)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram + (0x100000 - 0x9fc00), size);
    }

    #[test]
    fn e820_needs_low_ram() {
        let tiny = GuestMemory::new(&[(0, 0x100000)]).unwrap();
        assert!(matches!(e820_map(&tiny), Err(BootError::NoLowRam)));
        let high_only = GuestMemory::new(&[(HIGH_RAM_START, 0x100000)]).unwrap();
        assert!(matches!(e820_map(&high_only), Err(BootError::NoLowRam)));
    }
}
