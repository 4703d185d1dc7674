//! The register state a vCPU starts with: 64-bit long mode at the kernel's entry point.
//!
//! Segment registers are decoded from the GDT the boot loader wrote into guest memory, so the
//! hidden parts KVM loads (base, limit, attributes) always match what the guest would see if
//! it reloaded the selectors itself.

use address_space::GuestMemory;
use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, Msrs};
use kvm_ioctls::VcpuFd;

use crate::{CpuError, Result};

/// Where the boot loader put the kernel and its boot-time CPU tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BootRegisters {
    /// Kernel entry point (RIP).
    pub entry: u64,
    /// Guest address of the Linux `boot_params` (RSI).
    pub boot_params: u64,
    /// Initial stack pointer (RSP and RBP).
    pub stack_top: u64,
    /// Guest address of the PML4 (CR3).
    pub pml4: u64,
    /// Guest address of the GDT.
    pub gdt: u64,
    /// GDT limit (size - 1).
    pub gdt_limit: u16,
    /// Selector of the 64-bit code segment.
    pub code_selector: u16,
    /// Selector of the data segment (DS, ES, FS, GS, SS).
    pub data_selector: u16,
    /// Selector of the TSS (0: none in the GDT; a flat busy TSS is used).
    pub tss_selector: u16,
    /// Guest address of the IDT.
    pub idt: u64,
    /// IDT limit (size - 1; 0 for an empty IDT).
    pub idt_limit: u16,
}

const CR0_PE: u64 = 1 << 0;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const RFLAGS_RESERVED: u64 = 1 << 1;
const FPU_CONTROL_WORD: u16 = 0x37f;
const MXCSR_DEFAULT: u32 = 0x1f80;
const TSS_TYPE_BUSY_64: u8 = 11;
const LDT_TYPE: u8 = 2;

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MISC_ENABLE_FAST_STRING: u64 = 1;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const APIC_MODE_EXTINT: u32 = 0x7;
const APIC_MODE_NMI: u32 = 0x4;

/// Decodes the segment `selector` from the GDT at `gdt` (limit `gdt_limit`).
/// A system descriptor (TSS) in long mode is 16 bytes: its upper base comes from the second half.
pub fn segment_from_gdt(
    mem: &GuestMemory,
    gdt: u64,
    gdt_limit: u16,
    selector: u16,
) -> Result<kvm_segment> {
    let offset = u64::from(selector & !0x7);
    if offset + 7 > u64::from(gdt_limit) {
        return Err(CpuError::SelectorOutsideGdt {
            selector,
            limit: gdt_limit,
        });
    }
    let read = |addr: u64| {
        mem.read_obj::<u64>(addr)
            .map_err(|source| CpuError::GdtRead { addr, source })
    };
    let desc = read(gdt + offset)?;
    let mut segment = decode_descriptor(desc, selector);
    if segment.s == 0 && offset + 15 <= u64::from(gdt_limit) {
        segment.base |= (read(gdt + offset + 8)? & 0xffff_ffff) << 32;
    }
    Ok(segment)
}

/// Decodes one 8-byte segment descriptor loaded with `selector`.
pub fn decode_descriptor(desc: u64, selector: u16) -> kvm_segment {
    let base = ((desc >> 16) & 0xff_ffff) | (((desc >> 56) & 0xff) << 24);
    let raw_limit = ((desc & 0xffff) | (((desc >> 48) & 0xf) << 16)) as u32;
    let granular = (desc >> 55) & 1 == 1;
    let present = ((desc >> 47) & 1) as u8;
    kvm_segment {
        base,
        limit: if granular {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector,
        type_: ((desc >> 40) & 0xf) as u8,
        present,
        dpl: ((desc >> 45) & 0x3) as u8,
        db: ((desc >> 54) & 1) as u8,
        s: ((desc >> 44) & 1) as u8,
        l: ((desc >> 53) & 1) as u8,
        g: u8::from(granular),
        avl: ((desc >> 52) & 1) as u8,
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// Puts `vcpu` in 64-bit long mode at `boot.entry` (the boot processor only).
pub fn setup_long_mode(vcpu: &VcpuFd, mem: &GuestMemory, boot: &BootRegisters) -> Result<()> {
    let mut sregs: kvm_sregs = vcpu.get_sregs().map_err(CpuError::GetSregs)?;
    let segment = |selector| segment_from_gdt(mem, boot.gdt, boot.gdt_limit, selector);
    let code = segment(boot.code_selector)?;
    let data = segment(boot.data_selector)?;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = if boot.tss_selector == 0 {
        kvm_segment {
            limit: 0x67,
            type_: TSS_TYPE_BUSY_64,
            present: 1,
            ..Default::default()
        }
    } else {
        let mut tss = segment(boot.tss_selector)?;
        // Loading TR marks the TSS busy.
        tss.type_ = TSS_TYPE_BUSY_64;
        tss
    };
    sregs.ldt = kvm_segment {
        type_: LDT_TYPE,
        present: 1,
        unusable: 1,
        ..Default::default()
    };
    sregs.gdt.base = boot.gdt;
    sregs.gdt.limit = boot.gdt_limit;
    sregs.idt.base = boot.idt;
    sregs.idt.limit = boot.idt_limit;
    sregs.cr0 = CR0_PE | CR0_ET | CR0_PG;
    sregs.cr3 = boot.pml4;
    sregs.cr4 = CR4_PAE;
    sregs.efer = EFER_LME | EFER_LMA;
    vcpu.set_sregs(&sregs).map_err(CpuError::SetSregs)?;

    let regs = kvm_regs {
        rip: boot.entry,
        rsi: boot.boot_params,
        rsp: boot.stack_top,
        rbp: boot.stack_top,
        rflags: RFLAGS_RESERVED,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(CpuError::SetRegs)?;

    let fpu = kvm_fpu {
        fcw: FPU_CONTROL_WORD,
        mxcsr: MXCSR_DEFAULT,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(CpuError::SetFpu)
}

/// Sets the MSRs Linux expects at boot: SYSENTER/SYSCALL targets cleared, TSC at 0, fast
/// strings on.
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<()> {
    let values = [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
    ];
    let entries: Vec<kvm_msr_entry> = values
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|_| CpuError::MsrList)?;
    let written = vcpu.set_msrs(&msrs).map_err(CpuError::SetMsrs)?;
    if written != entries.len() {
        return Err(CpuError::MsrRefused(entries[written].index));
    }
    Ok(())
}

/// Routes LINT0 to the PIC (ExtINT) and LINT1 to NMI, as a PC's BIOS leaves them.
pub fn setup_lapic(vcpu: &VcpuFd) -> Result<()> {
    let mut lapic = vcpu.get_lapic().map_err(CpuError::GetLapic)?;
    for (offset, mode) in [
        (APIC_LVT_LINT0, APIC_MODE_EXTINT),
        (APIC_LVT_LINT1, APIC_MODE_NMI),
    ] {
        let value = read_apic_reg(&lapic.regs, offset);
        write_apic_reg(&mut lapic.regs, offset, (value & !0x700) | (mode << 8));
    }
    vcpu.set_lapic(&lapic).map_err(CpuError::SetLapic)
}

fn read_apic_reg(regs: &[std::os::raw::c_char; 1024], offset: usize) -> u32 {
    let bytes: [u8; 4] = std::array::from_fn(|i| regs[offset + i] as u8);
    u32::from_le_bytes(bytes)
}

fn write_apic_reg(regs: &mut [std::os::raw::c_char; 1024], offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().iter().enumerate() {
        regs[offset + i] = *byte as std::os::raw::c_char;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_code_and_data_descriptors_decode() {
        // 64-bit code: base 0, limit 0xfffff, G, L, P, S, type 0xb (execute/read, accessed).
        let code = decode_descriptor(0x00af_9b00_0000_ffff, 0x10);
        assert_eq!(
            (code.base, code.limit, code.selector),
            (0, 0xffff_ffff, 0x10)
        );
        assert_eq!(
            (code.type_, code.present, code.s, code.l, code.db, code.g),
            (0xb, 1, 1, 1, 0, 1)
        );
        assert_eq!(code.unusable, 0);
        // Data: D/B set, type 3 (read/write, accessed).
        let data = decode_descriptor(0x00cf_9300_0000_ffff, 0x18);
        assert_eq!((data.type_, data.db, data.l, data.dpl), (3, 1, 0, 0));
        // A base split over the descriptor's three base fields.
        let based = decode_descriptor(0x1200_8934_5678_0067, 0x20);
        assert_eq!((based.base, based.limit, based.g), (0x1234_5678, 0x67, 0));
        assert_eq!((based.type_, based.s), (9, 0));
        assert_eq!(decode_descriptor(0, 0).unusable, 1, "null descriptor");
    }

    #[test]
    fn gdt_lookups_are_bounds_checked_and_read_tss_high_base() {
        let mem = GuestMemory::new(&[(0, 0x10000)]).unwrap();
        let gdt = 0x500;
        mem.write_obj(&0x00af_9b00_0000_ffff_u64, gdt + 0x10)
            .unwrap();
        mem.write_obj(&0x0000_8900_0000_0067_u64, gdt + 0x18)
            .unwrap();
        mem.write_obj(&0x0000_0000_0000_0001_u64, gdt + 0x20)
            .unwrap();
        assert_eq!(segment_from_gdt(&mem, gdt, 0x27, 0x10).unwrap().l, 1);
        assert_eq!(
            segment_from_gdt(&mem, gdt, 0x27, 0x18).unwrap().base,
            1 << 32
        );
        assert!(matches!(
            segment_from_gdt(&mem, gdt, 0x17, 0x18),
            Err(CpuError::SelectorOutsideGdt { .. })
        ));
        assert!(
            segment_from_gdt(&mem, 0xfffc, 0xff, 0).is_err(),
            "GDT outside RAM"
        );
    }

    #[test]
    fn apic_registers_round_trip() {
        let mut regs = [0 as std::os::raw::c_char; 1024];
        write_apic_reg(&mut regs, APIC_LVT_LINT0, 0x8765_4321);
        assert_eq!(read_apic_reg(&regs, APIC_LVT_LINT0), 0x8765_4321);
        assert_eq!(regs[APIC_LVT_LINT0] as u8, 0x21);
    }
}
