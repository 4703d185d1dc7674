//! The boot page tables: an identity map of the first 4 GiB with 2 MiB pages.
//!
//! ```text
//! PML4 (0x9000)  [0] -> PDPT (0xa000)  [0..4] -> PD i (0xb000 + i*0x1000)  [0..512] -> 2 MiB page
//! ```
//!
//! The 64-bit boot protocol requires the kernel image, the zero page and the command line to
//! be identity-mapped; mapping all of the low 4 GiB covers an initrd at the top of low RAM too.
//! The MMIO hole is mapped as well; nothing touches it before the kernel builds its own tables.

use address_space::GuestMemory;

use crate::error::{guest_write, Result};
use crate::layout::{PDPT_ADDR, PD_ADDR, PML4_ADDR};

/// Entry bits: present and writable.
const PRESENT_RW: u64 = 0x3;
/// Page-directory entry bit: this entry maps a 2 MiB page.
const PAGE_SIZE_2M: u64 = 0x80;
/// Page directories, one per GiB.
const PD_COUNT: u64 = 4;
/// Entries per table.
const ENTRIES: u64 = 512;

/// Writes the tables into guest memory; returns the value for `cr3`.
pub(crate) fn write_identity_map(mem: &GuestMemory) -> Result<u64> {
    let what = "boot page tables";
    mem.zero(PML4_ADDR, 0x1000).map_err(guest_write(what))?;
    mem.zero(PDPT_ADDR, 0x1000).map_err(guest_write(what))?;
    mem.write_obj(&(PDPT_ADDR | PRESENT_RW), PML4_ADDR)
        .map_err(guest_write(what))?;
    for gib in 0..PD_COUNT {
        let pd = PD_ADDR + gib * 0x1000;
        mem.write_obj(&(pd | PRESENT_RW), PDPT_ADDR + gib * 8)
            .map_err(guest_write(what))?;
        for i in 0..ENTRIES {
            let page = ((gib * ENTRIES + i) << 21) | PAGE_SIZE_2M | PRESENT_RW;
            mem.write_obj(&page, pd + i * 8)
                .map_err(guest_write(what))?;
        }
    }
    Ok(PML4_ADDR)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks the tables like the MMU for a 2 MiB mapping.
    fn translate(mem: &GuestMemory, cr3: u64, va: u64) -> Option<u64> {
        let table = |base: u64, index: u64| mem.read_obj::<u64>(base + index * 8).unwrap();
        let pml4e = table(cr3, (va >> 39) & 0x1ff);
        let pdpte = table(pml4e & !0xfff, (va >> 30) & 0x1ff);
        let pde = table(pdpte & !0xfff, (va >> 21) & 0x1ff);
        let present = [pml4e, pdpte, pde].iter().all(|e| e & 1 == 1);
        (present && pde & PAGE_SIZE_2M != 0).then(|| (pde & !0x1f_ffff) + (va & 0x1f_ffff))
    }

    #[test]
    fn maps_the_low_4g_one_to_one() {
        let mem = GuestMemory::new(&[(0, 0x10_0000)]).unwrap();
        let cr3 = write_identity_map(&mem).unwrap();
        assert_eq!(cr3, PML4_ADDR);
        for va in [0, 0x7000, 0x100_0000 + 0x200, 0xbfff_f123, 0xffff_ffff] {
            assert_eq!(translate(&mem, cr3, va), Some(va), "{va:#x}");
        }
        assert_eq!(translate(&mem, cr3, 0x1_0000_0000), None);
    }
}
