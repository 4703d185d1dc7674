//! The Intel MultiProcessor Specification 1.4 table that describes the vCPUs, the ISA bus
//! and the I/O APIC to a guest without ACPI.
//!
//! ```text
//! EBDA_START (0x9fc00)  floating pointer "_MP_" (16 bytes) -> physptr
//!                       configuration table "PCMP" (44-byte header), then its entries:
//!                         processor x N   (APIC id i, BSP flag on cpu 0, enabled)
//!                         bus             (id 0, "ISA   ")
//!                         I/O APIC        (id N, at IOAPIC_BASE)
//!                         I/O interrupt x 24  (ISA IRQ i -> I/O APIC pin i)
//!                         local interrupt x 2 (LINT0 ExtINT, LINT1 NMI, all CPUs)
//! ```
//!
//! IRQ `i` is wired to pin `i` for every pin, IRQ 0 included: without a GSI routing table,
//! KVM's in-kernel I/O APIC delivers GSI `n` on pin `n` (the PIT ticks on pin 0), so the
//! "IRQ 0 on pin 2" override of real chipsets would lose the timer. Pins 16-23 are listed
//! too (on the ISA bus, as Linux accepts), for virtio-mmio devices with IRQs above 15.
//! Linux finds the floating pointer by scanning 639 KiB..640 KiB; for 254 CPUs the table
//! runs past 0xa0000, which is still RAM marked reserved in the e820 map.
//! Both checksums make their structure's bytes sum to zero modulo 256.

use address_space::{ByteValued, GuestMemory};

use crate::error::{guest_write, BootError, Result};
use crate::image::{as_bytes, checksum};
use crate::layout::{EBDA_START, IOAPIC_BASE, LAPIC_BASE};

/// Most vCPUs one table can describe (APIC ids 0..=253; 255 is the broadcast id).
pub const MAX_CPUS: u8 = 254;
/// I/O APIC pins listed in the table.
const IOAPIC_PINS: u8 = 24;
/// MP specification revision 1.4.
const SPEC_REV: u8 = 4;
/// Local APIC version of KVM's in-kernel APIC.
const LAPIC_VERSION: u8 = 0x14;
/// I/O APIC version of KVM's in-kernel I/O APIC.
const IOAPIC_VERSION: u8 = 0x11;
/// CPU signature: family 6.
const CPU_SIGNATURE: u32 = 6 << 8;
/// CPUID.1:EDX feature flags: FPU and APIC.
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);
/// Processor flag: usable.
const CPU_ENABLED: u8 = 1;
/// Processor flag: bootstrap processor.
const CPU_BOOTSTRAP: u8 = 2;
/// Interrupt type: vectored interrupt from the I/O APIC.
const INT_VECTORED: u8 = 0;
/// Interrupt type: NMI.
const INT_NMI: u8 = 1;
/// Interrupt type: external (8259-style) interrupt.
const INT_EXTINT: u8 = 3;
/// Polarity and trigger mode: those of the bus.
const IRQ_FLAGS_BUS_DEFAULT: u16 = 0;
/// Id of the single (ISA) bus.
const ISA_BUS_ID: u8 = 0;
/// Destination local APIC id meaning "every CPU".
const ALL_LAPICS: u8 = 0xff;

/// MP floating pointer structure.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FloatingPointer {
    signature: [u8; 4],
    physptr: u32,
    length: u8,
    spec_rev: u8,
    checksum: u8,
    feature1: u8,
    feature2: u8,
    feature3: [u8; 3],
}

/// MP configuration table header.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct ConfigHeader {
    signature: [u8; 4],
    length: u16,
    spec_rev: u8,
    checksum: u8,
    oem_id: [u8; 8],
    product_id: [u8; 12],
    oem_table: u32,
    oem_table_size: u16,
    entry_count: u16,
    lapic_addr: u32,
    ext_table_length: u16,
    ext_table_checksum: u8,
    reserved: u8,
}

/// Processor entry (type 0).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct ProcessorEntry {
    entry_type: u8,
    lapic_id: u8,
    lapic_version: u8,
    cpu_flags: u8,
    cpu_signature: u32,
    feature_flags: u32,
    reserved: [u32; 2],
}

/// Bus entry (type 1).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct BusEntry {
    entry_type: u8,
    bus_id: u8,
    bus_type: [u8; 6],
}

/// I/O APIC entry (type 2).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct IoApicEntry {
    entry_type: u8,
    id: u8,
    version: u8,
    flags: u8,
    address: u32,
}

/// I/O interrupt (type 3) and local interrupt (type 4) assignment entries.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct InterruptEntry {
    entry_type: u8,
    irq_type: u8,
    irq_flags: u16,
    source_bus: u8,
    source_irq: u8,
    dest_apic: u8,
    dest_pin: u8,
}

// SAFETY: each struct is `repr(C)` with fields ordered so none needs padding (sizes and
// offsets asserted in the tests); all fields are integers, valid for every bit pattern.
unsafe impl ByteValued for FloatingPointer {}
// SAFETY: as above.
unsafe impl ByteValued for ConfigHeader {}
// SAFETY: as above.
unsafe impl ByteValued for ProcessorEntry {}
// SAFETY: as above.
unsafe impl ByteValued for BusEntry {}
// SAFETY: as above.
unsafe impl ByteValued for IoApicEntry {}
// SAFETY: as above.
unsafe impl ByteValued for InterruptEntry {}

/// Builds the configuration table (header and entries) for `cpus` CPUs.
fn config_table(cpus: u8) -> Vec<u8> {
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    let mut push = |bytes: &[u8]| {
        entries.extend_from_slice(bytes);
        count += 1;
    };
    for cpu in 0..cpus {
        let bootstrap = if cpu == 0 { CPU_BOOTSTRAP } else { 0 };
        push(as_bytes(&ProcessorEntry {
            entry_type: 0,
            lapic_id: cpu,
            lapic_version: LAPIC_VERSION,
            cpu_flags: CPU_ENABLED | bootstrap,
            cpu_signature: CPU_SIGNATURE,
            feature_flags: CPU_FEATURES,
            reserved: [0; 2],
        }));
    }
    push(as_bytes(&BusEntry {
        entry_type: 1,
        bus_id: ISA_BUS_ID,
        bus_type: *b"ISA   ",
    }));
    let ioapic_id = cpus;
    push(as_bytes(&IoApicEntry {
        entry_type: 2,
        id: ioapic_id,
        version: IOAPIC_VERSION,
        flags: 1,
        address: IOAPIC_BASE as u32,
    }));
    for irq in 0..IOAPIC_PINS {
        push(as_bytes(&InterruptEntry {
            entry_type: 3,
            irq_type: INT_VECTORED,
            irq_flags: IRQ_FLAGS_BUS_DEFAULT,
            source_bus: ISA_BUS_ID,
            source_irq: irq,
            dest_apic: ioapic_id,
            dest_pin: irq,
        }));
    }
    for (lint, irq_type) in [(0, INT_EXTINT), (1, INT_NMI)] {
        push(as_bytes(&InterruptEntry {
            entry_type: 4,
            irq_type,
            irq_flags: IRQ_FLAGS_BUS_DEFAULT,
            source_bus: ISA_BUS_ID,
            source_irq: 0,
            dest_apic: ALL_LAPICS,
            dest_pin: lint,
        }));
    }
    let mut header = ConfigHeader {
        signature: *b"PCMP",
        length: (std::mem::size_of::<ConfigHeader>() + entries.len()) as u16,
        spec_rev: SPEC_REV,
        checksum: 0,
        oem_id: *b"STRATO  ",
        product_id: *b"MICROVM     ",
        entry_count: count,
        lapic_addr: LAPIC_BASE as u32,
        ..ConfigHeader::default()
    };
    header.checksum = checksum(&[as_bytes(&header), &entries[..]].concat());
    [as_bytes(&header), &entries[..]].concat()
}

/// Builds the floating pointer and configuration table for `cpus` CPUs as placed at `base`.
fn mp_table(cpus: u8, base: u64) -> Vec<u8> {
    let config_addr = base + std::mem::size_of::<FloatingPointer>() as u64;
    let mut pointer = FloatingPointer {
        signature: *b"_MP_",
        physptr: config_addr as u32,
        length: 1,
        spec_rev: SPEC_REV,
        ..FloatingPointer::default()
    };
    pointer.checksum = checksum(as_bytes(&pointer));
    [as_bytes(&pointer), &config_table(cpus)[..]].concat()
}

/// Writes the MP table for `cpus` CPUs at [`EBDA_START`].
pub(crate) fn write_mp_table(mem: &GuestMemory, cpus: u8) -> Result<()> {
    if cpus == 0 || cpus > MAX_CPUS {
        return Err(BootError::CpuCount(cpus));
    }
    mem.write(&mp_table(cpus, EBDA_START), EBDA_START)
        .map_err(guest_write("MP table"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    #[test]
    fn structures_match_the_spec() {
        assert_eq!(size_of::<FloatingPointer>(), 16);
        assert_eq!(offset_of!(FloatingPointer, physptr), 4);
        assert_eq!(offset_of!(FloatingPointer, checksum), 10);
        assert_eq!(size_of::<ConfigHeader>(), 44);
        assert_eq!(offset_of!(ConfigHeader, entry_count), 34);
        assert_eq!(offset_of!(ConfigHeader, lapic_addr), 36);
        assert_eq!(size_of::<ProcessorEntry>(), 20);
        assert_eq!(offset_of!(ProcessorEntry, cpu_signature), 4);
        assert_eq!(size_of::<BusEntry>(), 8);
        assert_eq!(size_of::<IoApicEntry>(), 8);
        assert_eq!(offset_of!(IoApicEntry, address), 4);
        assert_eq!(size_of::<InterruptEntry>(), 8);
        assert_eq!(offset_of!(InterruptEntry, source_bus), 4);
    }

    #[test]
    fn checksums_and_layout_for_every_cpu_count() {
        for cpus in [1u8, 2, 4, 64, MAX_CPUS] {
            let table = mp_table(cpus, EBDA_START);
            let (pointer, config) = table.split_at(16);
            assert_eq!(&pointer[..4], b"_MP_");
            assert_eq!(sum(pointer), 0, "floating pointer checksum, {cpus} cpus");
            let physptr = u32::from_le_bytes(pointer[4..8].try_into().unwrap());
            assert_eq!(u64::from(physptr), EBDA_START + 16);
            assert_eq!((pointer[8], pointer[9], pointer[11]), (1, 4, 0));
            assert_eq!(&config[..4], b"PCMP");
            let length = u16::from_le_bytes([config[4], config[5]]) as usize;
            assert_eq!(length, config.len());
            assert_eq!(length, 44 + 20 * cpus as usize + 8 + 8 + 8 * 24 + 8 * 2);
            assert_eq!(sum(config), 0, "config table checksum, {cpus} cpus");
            let count = u16::from_le_bytes([config[34], config[35]]);
            assert_eq!(count as usize, cpus as usize + 1 + 1 + 24 + 2);
        }
    }

    /// Walks the entries like Linux's `smp_read_mpc`.
    #[test]
    fn entries_describe_cpus_bus_ioapic_and_irqs() {
        let cpus = 3u8;
        let table = mp_table(cpus, EBDA_START);
        let mut at = 16 + 44;
        let mut processors = Vec::new();
        let mut routes = Vec::new();
        let mut lints = Vec::new();
        let mut ioapic = None;
        while at < table.len() {
            let e = &table[at..];
            match e[0] {
                0 => {
                    processors.push((e[1], e[3]));
                    at += 20;
                }
                1 => {
                    assert_eq!((e[1], &e[2..8]), (0, &b"ISA   "[..]));
                    at += 8;
                }
                2 => {
                    let addr = u32::from_le_bytes(e[4..8].try_into().unwrap());
                    ioapic = Some((e[1], e[3], addr));
                    at += 8;
                }
                3 => {
                    routes.push((e[1], e[5], e[6], e[7]));
                    at += 8;
                }
                4 => {
                    lints.push((e[1], e[6], e[7]));
                    at += 8;
                }
                other => panic!("unknown entry type {other}"),
            }
        }
        assert_eq!(processors, vec![(0, 3), (1, 1), (2, 1)]);
        assert_eq!(ioapic, Some((cpus, 1, 0xfec0_0000)));
        assert_eq!(routes.len(), 24);
        for (i, &(kind, irq, apic, pin)) in routes.iter().enumerate() {
            assert_eq!(
                (kind, irq, apic, pin),
                (INT_VECTORED, i as u8, cpus, i as u8)
            );
        }
        assert_eq!(lints, vec![(INT_EXTINT, 0xff, 0), (INT_NMI, 0xff, 1)]);
    }

    #[test]
    fn written_to_the_ebda_and_cpu_count_checked() {
        let mem = GuestMemory::new(&[(0, 0x20_0000)]).unwrap();
        write_mp_table(&mem, 2).unwrap();
        let mut sig = [0u8; 4];
        mem.read(&mut sig, 0x9fc00).unwrap();
        assert_eq!(&sig, b"_MP_");
        assert!(matches!(
            write_mp_table(&mem, 0),
            Err(BootError::CpuCount(0))
        ));
        assert!(matches!(
            write_mp_table(&mem, 255),
            Err(BootError::CpuCount(255))
        ));
        write_mp_table(&mem, MAX_CPUS).unwrap();
    }
}
