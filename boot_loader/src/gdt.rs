//! The boot GDT and the segment registers the vCPU starts with.
//!
//! ```text
//! selector  entry               descriptor
//! 0x00      0                   null
//! 0x08      0                   unused (the boot protocol puts code at 0x10)
//! 0x10      flags 0xa09b        64-bit code: present, DPL 0, execute/read, L=1, G=1, flat
//! 0x18      flags 0xc093        data: present, DPL 0, read/write, D/B=1, G=1, flat
//! 0x20      flags 0x008b        TSS (busy), base 0, limit 0x67; 16 bytes in long mode,
//! 0x28      0                   so its upper half is the zero entry here
//! ```
//!
//! "flags" packs the descriptor's high nibble (G, D/B, L, AVL) above the access byte
//! (P, DPL, S, type), as in `flags = (G<<15)|(DB<<14)|(L<<13)|(AVL<<12)|(P<<7)|(DPL<<5)|(S<<4)|type`.
//! The kernel installs its own GDT at once; these entries only need to be consistent with the
//! hidden segment state KVM is given, which [`SegmentDescriptor::decode`] derives from them.

/// Selector of the 64-bit code segment (`cs`).
pub const CODE_SELECTOR: u16 = 0x10;
/// Selector of the data segment (`ds`, `es`, `fs`, `gs`, `ss`).
pub const DATA_SELECTOR: u16 = 0x18;
/// Selector of the task state segment (`tr`).
pub const TSS_SELECTOR: u16 = 0x20;
/// Number of 8-byte GDT entries.
pub const GDT_ENTRY_COUNT: usize = 6;
/// GDT limit (size in bytes minus one).
pub const GDT_LIMIT: u16 = (GDT_ENTRY_COUNT * 8 - 1) as u16;

/// Builds one descriptor from its flags (see the module docs), base and 20-bit limit.
const fn descriptor(flags: u16, base: u32, limit: u32) -> u64 {
    let base = base as u64;
    let limit = limit as u64;
    let flags = flags as u64;
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// The boot GDT, entry `i` at selector `i * 8`.
pub fn gdt_entries() -> [u64; GDT_ENTRY_COUNT] {
    [
        0,
        0,
        descriptor(0xa09b, 0, 0xfffff),
        descriptor(0xc093, 0, 0xfffff),
        descriptor(0x008b, 0, 0x67),
        0,
    ]
}

/// A segment register's visible selector and hidden state, field for field what
/// `kvm_segment` wants (with `unusable = 0`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentDescriptor {
    /// Selector loaded into the register.
    pub selector: u16,
    /// Base address.
    pub base: u64,
    /// Limit in bytes (already scaled by 4 KiB when `g` is set), as KVM expects.
    pub limit: u32,
    /// Type field (4 bits).
    pub type_: u8,
    /// Present bit.
    pub present: u8,
    /// Descriptor privilege level.
    pub dpl: u8,
    /// Default operation size (D/B) bit.
    pub db: u8,
    /// Descriptor type bit: 1 for code/data, 0 for system segments.
    pub s: u8,
    /// 64-bit code segment bit.
    pub l: u8,
    /// Granularity bit.
    pub g: u8,
    /// Available-for-software bit.
    pub avl: u8,
}

impl SegmentDescriptor {
    /// Decodes the 8-byte descriptor `entry` for a register loaded with `selector`.
    pub fn decode(selector: u16, entry: u64) -> SegmentDescriptor {
        let bit = |n: u32| ((entry >> n) & 1) as u8;
        let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
        let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
        let g = bit(55);
        SegmentDescriptor {
            selector,
            base,
            limit: if g == 1 {
                (raw_limit << 12) | 0xfff
            } else {
                raw_limit
            },
            type_: ((entry >> 40) & 0xf) as u8,
            s: bit(44),
            dpl: ((entry >> 45) & 0x3) as u8,
            present: bit(47),
            avl: bit(52),
            l: bit(53),
            db: bit(54),
            g,
        }
    }
}

/// The segment registers the boot vCPU starts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootSegments {
    /// `cs`.
    pub code: SegmentDescriptor,
    /// `ds`, `es`, `fs`, `gs` and `ss`.
    pub data: SegmentDescriptor,
    /// `tr`.
    pub tss: SegmentDescriptor,
}

/// The boot segments, decoded from [`gdt_entries`].
pub fn boot_segments() -> BootSegments {
    let gdt = gdt_entries();
    let at = |selector: u16| SegmentDescriptor::decode(selector, gdt[usize::from(selector >> 3)]);
    BootSegments {
        code: at(CODE_SELECTOR),
        data: at(DATA_SELECTOR),
        tss: at(TSS_SELECTOR),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_have_the_textbook_encodings() {
        let gdt = gdt_entries();
        assert_eq!(gdt[2], 0x00af_9b00_0000_ffff);
        assert_eq!(gdt[3], 0x00cf_9300_0000_ffff);
        assert_eq!(gdt[4], 0x0000_8b00_0000_0067);
        assert_eq!(gdt[0], 0);
        assert_eq!(GDT_LIMIT, 47);
    }

    #[test]
    fn decoded_segments_are_flat_long_mode() {
        let s = boot_segments();
        assert_eq!(
            s.code,
            SegmentDescriptor {
                selector: 0x10,
                base: 0,
                limit: 0xffff_ffff,
                type_: 0xb,
                present: 1,
                dpl: 0,
                db: 0,
                s: 1,
                l: 1,
                g: 1,
                avl: 0,
            }
        );
        assert_eq!(
            (s.data.selector, s.data.type_, s.data.db, s.data.l),
            (0x18, 3, 1, 0)
        );
        assert_eq!(s.data.limit, 0xffff_ffff);
        assert_eq!(
            (s.tss.selector, s.tss.type_, s.tss.s, s.tss.limit),
            (0x20, 0xb, 0, 0x67)
        );
    }

    #[test]
    fn decode_splits_base_and_limit() {
        let d = SegmentDescriptor::decode(8, descriptor(0x4093, 0x1234_5678, 0xabcde));
        assert_eq!((d.base, d.limit, d.g, d.db), (0x1234_5678, 0xabcde, 0, 1));
    }
}
