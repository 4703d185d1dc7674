//! The guest physical memory map of the micro VM, shared by the boot loader (e820 table,
//! boot structures) and the machine (RAM regions, device addresses).
//!
//! ```text
//! 0x0000_0000  +--------------------------------+
//!              | real-mode IVT / BDA            |  RAM
//! 0x0000_0500  | GDT (6 entries), IDT at 0x540  |
//! 0x0000_7000  | boot_params (zero page)        |
//! 0x0000_8ff0  | boot stack top (grows down)    |
//! 0x0000_9000  | PML4, PDPT (0xa000),           |
//!              | 4 page directories 0xb000-0xefff|
//! 0x0002_0000  | kernel command line            |
//! 0x0009_fc00  +--------------------------------+
//!              | EBDA: MP table (e820 reserved) |  RAM, reserved for the guest
//! 0x0010_0000  +--------------------------------+
//!              | kernel, ..., initrd (at the top|  RAM
//!              | of low RAM)                    |
//! 0xc000_0000  +--------------------------------+  MMIO_HOLE_START (or end of RAM)
//!              | virtio-mmio 0xd000_0000 + i*4K |  no RAM: devices only
//!              | IOAPIC 0xfec0_0000             |
//!              | LAPIC  0xfee0_0000             |
//! 0x1_0000_0000+--------------------------------+
//!              | the rest of RAM, if any        |  RAM
//!              +--------------------------------+
//! ```
//!
//! Invariant: every boot structure lies below [`EBDA_START`], so none of them overlaps the
//! kernel (loaded at or above [`HIMEM_START`]) or the MP table.

/// First guest address of the 32-bit MMIO hole; low RAM ends here at the latest.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// First guest address after the 32-bit MMIO hole, where RAM beyond the hole resumes.
pub const HIGH_RAM_START: u64 = 0x1_0000_0000;
/// Guest address of the first virtio-mmio device; device `i` lives at `VIRTIO_MMIO_BASE + i * VIRTIO_MMIO_SIZE`.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// Size of one virtio-mmio device's register window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// Guest address of the I/O APIC.
pub const IOAPIC_BASE: u64 = 0xfec0_0000;
/// Guest address of the local APICs.
pub const LAPIC_BASE: u64 = 0xfee0_0000;

/// Start of the extended BIOS data area; the MP table begins here and RAM from here to
/// [`HIMEM_START`] is reported to the guest as reserved.
pub const EBDA_START: u64 = 0x9_fc00;
/// First address above the legacy (real-mode) megabyte; kernels load at or above it.
pub const HIMEM_START: u64 = 0x10_0000;

/// Guest address of the boot GDT.
pub const GDT_ADDR: u64 = 0x500;
/// Guest address of the (empty) boot IDT.
pub const IDT_ADDR: u64 = 0x540;
/// Limit of the boot IDT: one zero 8-byte entry, so any exception before the kernel
/// installs its own IDT is a triple fault rather than a jump to garbage.
pub const IDT_LIMIT: u16 = 7;
/// Guest address of `boot_params` (the "zero page"), handed to the kernel in `rsi`.
pub const BOOT_PARAMS_ADDR: u64 = 0x7000;
/// Initial stack pointer (`rsp` and `rbp`).
pub const BOOT_STACK_TOP: u64 = 0x8ff0;
/// Guest address of the PML4 table (`cr3`).
pub const PML4_ADDR: u64 = 0x9000;
/// Guest address of the page-directory-pointer table.
pub const PDPT_ADDR: u64 = 0xa000;
/// Guest address of the first of the four page directories (2 MiB pages, 4 GiB in all).
pub const PD_ADDR: u64 = 0xb000;
/// Guest address of the kernel command line.
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// Room reserved for the command line, terminating NUL included.
pub const CMDLINE_MAX_SIZE: u64 = EBDA_START - CMDLINE_ADDR;

// Devices live in the hole, and every boot structure below the EBDA, in this order:
// GDT (6 entries) < IDT (8 bytes) < zero page (4 KiB) < stack < page tables (6 pages)
// < command line < EBDA. Checked at compile time.
const _: () = {
    assert!(VIRTIO_MMIO_BASE >= MMIO_HOLE_START);
    assert!(VIRTIO_MMIO_BASE + 64 * VIRTIO_MMIO_SIZE <= IOAPIC_BASE);
    assert!(LAPIC_BASE < HIGH_RAM_START);
    assert!(GDT_ADDR + 6 * 8 <= IDT_ADDR);
    assert!(IDT_ADDR + 8 <= BOOT_PARAMS_ADDR);
    assert!(BOOT_PARAMS_ADDR + 0x1000 <= BOOT_STACK_TOP);
    assert!(BOOT_STACK_TOP < PML4_ADDR);
    assert!(PDPT_ADDR == PML4_ADDR + 0x1000);
    assert!(PD_ADDR == PDPT_ADDR + 0x1000);
    assert!(PD_ADDR + 4 * 0x1000 <= CMDLINE_ADDR);
    assert!(CMDLINE_ADDR + CMDLINE_MAX_SIZE <= EBDA_START);
};

/// The RAM regions `(guest_base, size)` for `mem_size` bytes of guest RAM: low RAM from 0
/// up to [`MMIO_HOLE_START`] at most, and whatever does not fit there from [`HIGH_RAM_START`].
///
/// Pass the result to `GuestMemory::new`; the boot loader derives the e820 table from the
/// regions it finds there.
pub fn ram_layout(mem_size: u64) -> Vec<(u64, u64)> {
    let low = mem_size.min(MMIO_HOLE_START);
    let mut regions = Vec::with_capacity(2);
    if low > 0 {
        regions.push((0, low));
    }
    if mem_size > low {
        regions.push((HIGH_RAM_START, mem_size - low));
    }
    regions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guests_have_one_low_region() {
        assert_eq!(ram_layout(256 << 20), vec![(0, 256 << 20)]);
        assert_eq!(ram_layout(MMIO_HOLE_START), vec![(0, MMIO_HOLE_START)]);
    }

    #[test]
    fn large_guests_continue_above_4g() {
        let size = 8u64 << 30;
        let layout = ram_layout(size);
        assert_eq!(
            layout,
            vec![
                (0, MMIO_HOLE_START),
                (HIGH_RAM_START, size - MMIO_HOLE_START)
            ]
        );
        assert_eq!(layout.iter().map(|r| r.1).sum::<u64>(), size);
    }
}
