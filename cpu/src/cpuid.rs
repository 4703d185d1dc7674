//! The CPUID table each vCPU sees: KVM's supported set, shaped for our topology, minus the
//! features the user (or the host) hides.
//!
//! Invariants:
//! - Only bits KVM reports as supported are ever set, except the hypervisor bit and the
//!   topology fields, which describe the VM itself ([`Topology`]: sockets of cores of threads,
//!   `-smp`; vCPU `i` has APIC id `i`, threads and cores numbered in the low bits).
//! - Hiding XSAVE also clears OSXSAVE and removes every subleaf of leaf 0xd (the state
//!   components an XSAVE-less guest must not see; an absent leaf reads as zero).
//! - KVM may not honour every hidden bit: a PVM host's KVM ORs the host's own bits back into
//!   leaves 1 and 7. [`unhonoured_features`] compares what KVM kept with what was asked, and
//!   [`linux_clearcpuid`] names them for a Linux guest's `clearcpuid=` parameter instead.
//! - On a PVM host (`/sys/module/kvm_pvm` exists) the features its instruction emulator cannot
//!   execute are hidden automatically, unless the user names them with `+FEATURE`.

use std::path::Path;

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::Kvm;

use crate::{CpuError, Result};

/// A CPUID output register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reg {
    /// EAX.
    Eax,
    /// EBX.
    Ebx,
    /// ECX.
    Ecx,
    /// EDX.
    Edx,
}

/// Where a named feature lives: leaf, subleaf, register and bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureBit {
    /// CPUID leaf (EAX input).
    pub leaf: u32,
    /// CPUID subleaf (ECX input).
    pub subleaf: u32,
    /// Output register.
    pub reg: Reg,
    /// Bit number in the register.
    pub bit: u8,
}

const fn bit(leaf: u32, subleaf: u32, reg: Reg, bit: u8) -> FeatureBit {
    FeatureBit {
        leaf,
        subleaf,
        reg,
        bit,
    }
}

/// Feature names accepted by `-cpu host,-NAME` (QEMU's spelling) and their CPUID bits.
const FEATURES: &[(&str, FeatureBit)] = &[
    ("sse3", bit(1, 0, Reg::Ecx, 0)),
    ("pclmulqdq", bit(1, 0, Reg::Ecx, 1)),
    ("monitor", bit(1, 0, Reg::Ecx, 3)),
    ("ssse3", bit(1, 0, Reg::Ecx, 9)),
    ("fma", bit(1, 0, Reg::Ecx, 12)),
    ("cx16", bit(1, 0, Reg::Ecx, 13)),
    ("pcid", bit(1, 0, Reg::Ecx, 17)),
    ("sse4.1", bit(1, 0, Reg::Ecx, 19)),
    ("sse4.2", bit(1, 0, Reg::Ecx, 20)),
    ("x2apic", bit(1, 0, Reg::Ecx, 21)),
    ("movbe", bit(1, 0, Reg::Ecx, 22)),
    ("popcnt", bit(1, 0, Reg::Ecx, 23)),
    ("tsc-deadline", bit(1, 0, Reg::Ecx, 24)),
    ("aes", bit(1, 0, Reg::Ecx, 25)),
    ("xsave", bit(1, 0, Reg::Ecx, 26)),
    ("osxsave", bit(1, 0, Reg::Ecx, 27)),
    ("avx", bit(1, 0, Reg::Ecx, 28)),
    ("f16c", bit(1, 0, Reg::Ecx, 29)),
    ("rdrand", bit(1, 0, Reg::Ecx, 30)),
    ("fsgsbase", bit(7, 0, Reg::Ebx, 0)),
    ("bmi1", bit(7, 0, Reg::Ebx, 3)),
    ("avx2", bit(7, 0, Reg::Ebx, 5)),
    ("smep", bit(7, 0, Reg::Ebx, 7)),
    ("bmi2", bit(7, 0, Reg::Ebx, 8)),
    ("erms", bit(7, 0, Reg::Ebx, 9)),
    ("invpcid", bit(7, 0, Reg::Ebx, 10)),
    ("avx512f", bit(7, 0, Reg::Ebx, 16)),
    ("rdseed", bit(7, 0, Reg::Ebx, 18)),
    ("adx", bit(7, 0, Reg::Ebx, 19)),
    ("smap", bit(7, 0, Reg::Ebx, 20)),
    ("clflushopt", bit(7, 0, Reg::Ebx, 23)),
    ("clwb", bit(7, 0, Reg::Ebx, 24)),
    ("sha-ni", bit(7, 0, Reg::Ebx, 29)),
    ("umip", bit(7, 0, Reg::Ecx, 2)),
    ("pku", bit(7, 0, Reg::Ecx, 3)),
    ("vaes", bit(7, 0, Reg::Ecx, 9)),
    ("rdpid", bit(7, 0, Reg::Ecx, 22)),
    ("md-clear", bit(7, 0, Reg::Edx, 10)),
    ("spec-ctrl", bit(7, 0, Reg::Edx, 26)),
    ("arch-capabilities", bit(7, 0, Reg::Edx, 29)),
    ("ssbd", bit(7, 0, Reg::Edx, 31)),
    ("lahf-lm", bit(0x8000_0001, 0, Reg::Ecx, 0)),
    ("abm", bit(0x8000_0001, 0, Reg::Ecx, 5)),
    ("mwaitx", bit(0x8000_0001, 0, Reg::Ecx, 29)),
    ("pdpe1gb", bit(0x8000_0001, 0, Reg::Edx, 26)),
    ("rdtscp", bit(0x8000_0001, 0, Reg::Edx, 27)),
    ("kvmclock", bit(KVM_FEATURES_LEAF, 0, Reg::Eax, 0)),
    ("kvm-nopiodelay", bit(KVM_FEATURES_LEAF, 0, Reg::Eax, 1)),
    ("kvmclock2", bit(KVM_FEATURES_LEAF, 0, Reg::Eax, 3)),
    ("kvm-asyncpf", bit(KVM_FEATURES_LEAF, 0, Reg::Eax, 4)),
    ("kvm-steal-time", bit(KVM_FEATURES_LEAF, 0, Reg::Eax, 5)),
    ("kvm-pv-eoi", bit(KVM_FEATURES_LEAF, 0, Reg::Eax, 6)),
    ("kvm-pv-unhalt", bit(KVM_FEATURES_LEAF, 0, Reg::Eax, 7)),
    ("kvm-pv-tlb-flush", bit(KVM_FEATURES_LEAF, 0, Reg::Eax, 9)),
    (
        "kvm-asyncpf-vmexit",
        bit(KVM_FEATURES_LEAF, 0, Reg::Eax, 10),
    ),
    ("kvm-pv-ipi", bit(KVM_FEATURES_LEAF, 0, Reg::Eax, 11)),
    ("kvm-poll-control", bit(KVM_FEATURES_LEAF, 0, Reg::Eax, 12)),
    (
        "kvm-pv-sched-yield",
        bit(KVM_FEATURES_LEAF, 0, Reg::Eax, 13),
    ),
    ("kvm-asyncpf-int", bit(KVM_FEATURES_LEAF, 0, Reg::Eax, 14)),
];

/// KVM's paravirtual feature leaf.
const KVM_FEATURES_LEAF: u32 = 0x4000_0001;

/// Features hidden automatically on a PVM host: its instruction emulator cannot execute them
/// at CPL0 (measured; see `docs/boot.md`).
pub const PVM_HIDDEN: &[&str] = &[
    "cx16",
    "popcnt",
    "xsave",
    "osxsave",
    "rdrand",
    "rdseed",
    "rdtscp",
    "rdpid",
    "fsgsbase",
    "smap",
    "clflushopt",
    "clwb",
    "arch-capabilities",
    // KVM hypercalls (vmcall/vmmcall at CPL0) never complete on a PVM host: the vCPU spins on
    // the instruction. Linux uses them for PV IPIs, PV spinlock kicks and PV yields.
    "kvm-pv-ipi",
    "kvm-pv-unhalt",
    "kvm-pv-sched-yield",
];

const PVM_MODULE: &str = "/sys/module/kvm_pvm";
const HYPERVISOR_BIT: u32 = 1 << 31;
const HTT_BIT: u32 = 1 << 28;
const XSAVE_LEAF: u32 = 0xd;

/// The CPUID bits of feature `name`, if we know it.
pub fn feature_bit(name: &str) -> Option<FeatureBit> {
    FEATURES
        .iter()
        .find(|(known, _)| *known == name)
        .map(|&(_, bit)| bit)
}

/// Linux's number for a CPUID feature bit (`X86_FEATURE_*` = capability word * 32 + bit),
/// as its `clearcpuid=` boot parameter takes it. `None` for registers Linux keeps elsewhere.
pub fn linux_feature_number(feature: FeatureBit) -> Option<u32> {
    let word = match (feature.leaf, feature.subleaf, feature.reg) {
        (1, 0, Reg::Edx) => 0,
        (0x8000_0001, 0, Reg::Edx) => 1,
        (1, 0, Reg::Ecx) => 4,
        (0x8000_0001, 0, Reg::Ecx) => 6,
        (7, 0, Reg::Ebx) => 9,
        (7, 0, Reg::Ecx) => 16,
        (7, 0, Reg::Edx) => 18,
        _ => return None,
    };
    Some(word * 32 + u32::from(feature.bit))
}

/// The Linux guest parameter hiding `names` from the guest kernel (`clearcpuid=N,...`), for
/// features KVM will not hide through CPUID. `None` if there is nothing to hide.
pub fn linux_clearcpuid(names: &[String]) -> Option<String> {
    let numbers: Vec<String> = names
        .iter()
        .filter_map(|name| feature_bit(name).and_then(linux_feature_number))
        .map(|n| n.to_string())
        .collect();
    (!numbers.is_empty()).then(|| format!("clearcpuid={}", numbers.join(",")))
}

/// Whether `/dev/kvm` is served by KVM's PVM backend.
pub fn host_is_pvm() -> bool {
    Path::new(PVM_MODULE).exists()
}

/// The guest CPU model: which features to hide from KVM's supported set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuModel {
    hidden: Vec<FeatureBit>,
    hidden_names: Vec<String>,
}

impl CpuModel {
    /// Builds the model for `-cpu MODEL[,-FEATURE][,+FEATURE]`. Only `host` is a model.
    /// `pvm_host` adds [`PVM_HIDDEN`] minus the features listed in `enabled`.
    pub fn new(
        model: &str,
        disabled: &[String],
        enabled: &[String],
        pvm_host: bool,
    ) -> Result<CpuModel> {
        if model != "host" {
            return Err(CpuError::UnknownModel(model.to_string()));
        }
        for name in disabled.iter().chain(enabled) {
            if feature_bit(name).is_none() {
                return Err(CpuError::UnknownFeature(name.clone()));
            }
        }
        let mut names: Vec<String> = disabled.to_vec();
        if pvm_host {
            let automatic: Vec<&str> = PVM_HIDDEN
                .iter()
                .copied()
                .filter(|name| !enabled.iter().any(|e| e == name))
                .collect();
            log::info!(
                "PVM host detected: hiding CPU features its emulator cannot run: {}",
                automatic.join(",")
            );
            names.extend(automatic.iter().map(|s| s.to_string()));
        }
        // Hiding XSAVE means the OS cannot enable it either.
        if names.iter().any(|n| n == "xsave") {
            names.push("osxsave".to_string());
        }
        names.sort();
        names.dedup();
        let hidden = names.iter().filter_map(|n| feature_bit(n)).collect();
        Ok(CpuModel {
            hidden,
            hidden_names: names,
        })
    }

    /// Names of the hidden features, sorted.
    pub fn hidden_names(&self) -> &[String] {
        &self.hidden_names
    }

    fn hides_xsave(&self) -> bool {
        self.hidden_names.iter().any(|n| n == "xsave")
    }
}

/// KVM's supported CPUID set, read once and shaped per vCPU by [`vcpu_cpuid`].
pub fn supported_cpuid(kvm: &Kvm) -> Result<CpuId> {
    kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(CpuError::SupportedCpuid)
}

/// How the vCPUs are arranged: `sockets` packages of `cores` cores of `threads` threads.
///
/// vCPU `i` has APIC id `i`, so the ids must be dense: `threads` is a power of two, and so is
/// `cores` when there is more than one socket (the command line checks this).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topology {
    /// Packages.
    pub sockets: u8,
    /// Cores per package.
    pub cores: u8,
    /// Threads per core.
    pub threads: u8,
}

impl Topology {
    /// One package of `count` single-thread cores.
    pub fn flat(count: u8) -> Topology {
        Topology {
            sockets: 1,
            cores: count.max(1),
            threads: 1,
        }
    }

    /// Bits of APIC id that number the threads of a core.
    fn thread_bits(&self) -> u32 {
        bits_for(u32::from(self.threads))
    }

    /// Bits of APIC id that number the threads of a package (cores and threads).
    fn package_bits(&self) -> u32 {
        self.thread_bits() + bits_for(u32::from(self.cores))
    }

    /// Logical processors per package.
    fn per_package(&self) -> u32 {
        u32::from(self.cores.max(1)) * u32::from(self.threads.max(1))
    }
}

/// The bits needed to number `count` items (0 for one).
fn bits_for(count: u32) -> u32 {
    32 - count.max(1).saturating_sub(1).leading_zeros()
}

/// The CPUID table for vCPU `index` (APIC id `index`) arranged as `topology`, from KVM's
/// `supported` set and `model`.
pub fn vcpu_cpuid(
    supported: &CpuId,
    model: &CpuModel,
    index: u8,
    topology: &Topology,
) -> Result<CpuId> {
    let mut entries: Vec<kvm_cpuid_entry2> = supported.as_slice().to_vec();
    for entry in entries.iter_mut() {
        shape_entry(entry, model, index, topology);
    }
    if model.hides_xsave() {
        // An absent leaf reads as zero. A present one, even zeroed, is not enough on a PVM
        // host: its KVM ORs the host's bits back into every entry of leaves 1, 7 and 0xd.
        // With no XSAVE state components Linux disables XSAVE even if CPUID.1 shows it.
        entries.retain(|e| e.function != XSAVE_LEAF);
    }
    CpuId::from_entries(&entries).map_err(|_| CpuError::CpuidTooLarge(entries.len()))
}

/// The hidden features that KVM's effective table (`effective`, read back with
/// `KVM_GET_CPUID2`) still shows.
pub fn unhonoured_features(model: &CpuModel, effective: &CpuId) -> Vec<String> {
    model
        .hidden_names
        .iter()
        .filter(|name| {
            let Some(feature) = feature_bit(name) else {
                return false;
            };
            effective.as_slice().iter().any(|e| {
                e.function == feature.leaf
                    && e.index == feature.subleaf
                    && register(e, feature.reg) & (1 << feature.bit) != 0
            })
        })
        .cloned()
        .collect()
}

fn register(entry: &kvm_cpuid_entry2, reg: Reg) -> u32 {
    match reg {
        Reg::Eax => entry.eax,
        Reg::Ebx => entry.ebx,
        Reg::Ecx => entry.ecx,
        Reg::Edx => entry.edx,
    }
}

fn shape_entry(entry: &mut kvm_cpuid_entry2, model: &CpuModel, index: u8, topology: &Topology) {
    let apic_id = u32::from(index);
    let per_package = topology.per_package();
    let threads = u32::from(topology.threads.max(1));
    let cores = u32::from(topology.cores.max(1));
    match entry.function {
        1 => {
            entry.ebx = (entry.ebx & 0x0000_ffff) | (apic_id << 24) | (per_package << 16);
            entry.ecx |= HYPERVISOR_BIT;
            if per_package > 1 {
                entry.edx |= HTT_BIT;
            } else {
                entry.edx &= !HTT_BIT;
            }
        }
        4 => {
            // EAX[31:26]: cores per package - 1; EAX[25:14]: logical CPUs sharing the cache
            // - 1 (levels 1 and 2 belong to a core, the last level to the package).
            let level = (entry.eax >> 5) & 0x7;
            let sharing = if level >= 3 { per_package } else { threads } - 1;
            entry.eax = (entry.eax & 0x3fff) | ((cores - 1) << 26) | (sharing << 14);
        }
        0xb | 0x1f => {
            // Extended topology: level 0 = SMT, level 1 = core (up to the package).
            match entry.index {
                0 => {
                    entry.eax = topology.thread_bits();
                    entry.ebx = threads;
                    entry.ecx = 1 << 8;
                }
                1 => {
                    entry.eax = topology.package_bits();
                    entry.ebx = per_package;
                    entry.ecx = 1 | (2 << 8);
                }
                other => {
                    entry.eax = 0;
                    entry.ebx = 0;
                    entry.ecx = other;
                }
            }
            entry.edx = apic_id;
        }
        0x8000_0008 => {
            // AMD: ECX[15:12] = APIC id bits for the package, ECX[7:0] = threads per
            // package - 1.
            entry.ecx = (entry.ecx & !0xf0ff) | (topology.package_bits() << 12) | (per_package - 1);
        }
        0x8000_001e => {
            // AMD extended APIC id; EBX: core id, threads per core - 1; node 0 of 1.
            entry.eax = apic_id;
            entry.ebx = ((apic_id >> topology.thread_bits()) & 0xff) | ((threads - 1) << 8);
            entry.ecx = 0;
            entry.edx = 0;
        }
        _ => {}
    }
    for feature in &model.hidden {
        if feature.leaf == entry.function && feature.subleaf == entry.index {
            let reg = match feature.reg {
                Reg::Eax => &mut entry.eax,
                Reg::Ebx => &mut entry.ebx,
                Reg::Ecx => &mut entry.ecx,
                Reg::Edx => &mut entry.edx,
            };
            *reg &= !(1u32 << feature.bit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: u32::MAX,
            ebx: u32::MAX,
            ecx: u32::MAX,
            edx: u32::MAX,
            ..Default::default()
        }
    }

    fn shaped(function: u32, index: u32, model: &CpuModel, cpu: u8, count: u8) -> kvm_cpuid_entry2 {
        shaped_in(function, index, model, cpu, Topology::flat(count))
    }

    fn shaped_in(
        function: u32,
        index: u32,
        model: &CpuModel,
        cpu: u8,
        topology: Topology,
    ) -> kvm_cpuid_entry2 {
        let mut e = entry(function, index);
        shape_entry(&mut e, model, cpu, &topology);
        e
    }

    #[test]
    fn names_map_to_the_documented_bits() {
        assert_eq!(feature_bit("cx16"), Some(bit(1, 0, Reg::Ecx, 13)));
        assert_eq!(feature_bit("popcnt"), Some(bit(1, 0, Reg::Ecx, 23)));
        assert_eq!(
            feature_bit("rdtscp"),
            Some(bit(0x8000_0001, 0, Reg::Edx, 27))
        );
        assert_eq!(
            feature_bit("arch-capabilities"),
            Some(bit(7, 0, Reg::Edx, 29))
        );
        assert_eq!(feature_bit("smap"), Some(bit(7, 0, Reg::Ebx, 20)));
        assert_eq!(feature_bit("rdpid"), Some(bit(7, 0, Reg::Ecx, 22)));
        assert_eq!(feature_bit("nonsense"), None);
        for name in PVM_HIDDEN {
            assert!(
                feature_bit(name).is_some(),
                "{name} must be a known feature"
            );
        }
    }

    #[test]
    fn linux_numbers_follow_its_capability_words() {
        let number = |name| linux_feature_number(feature_bit(name).unwrap());
        assert_eq!(number("popcnt"), Some(4 * 32 + 23));
        assert_eq!(number("xsave"), Some(4 * 32 + 26));
        assert_eq!(number("fsgsbase"), Some(9 * 32));
        assert_eq!(number("rdpid"), Some(16 * 32 + 22));
        assert_eq!(number("arch-capabilities"), Some(18 * 32 + 29));
        assert_eq!(number("rdtscp"), Some(32 + 27));
        assert_eq!(
            linux_clearcpuid(&["popcnt".into(), "smap".into()]).as_deref(),
            Some("clearcpuid=151,308")
        );
        assert_eq!(linux_clearcpuid(&[]), None);
    }

    #[test]
    fn models_and_features_are_validated() {
        assert!(matches!(
            CpuModel::new("qemu64", &[], &[], false),
            Err(CpuError::UnknownModel(_))
        ));
        assert!(matches!(
            CpuModel::new("host", &["bogus".into()], &[], false),
            Err(CpuError::UnknownFeature(_))
        ));
        let plain = CpuModel::new("host", &[], &[], false).unwrap();
        assert!(plain.hidden_names().is_empty());
    }

    #[test]
    fn pvm_hides_its_list_unless_enabled() {
        let model = CpuModel::new("host", &[], &["popcnt".into()], true).unwrap();
        assert!(model.hidden_names().iter().any(|n| n == "cx16"));
        assert!(!model.hidden_names().iter().any(|n| n == "popcnt"));
        let leaf1 = shaped(1, 0, &model, 0, 1);
        assert_eq!(leaf1.ecx & (1 << 13), 0, "cx16 hidden");
        assert_ne!(leaf1.ecx & (1 << 23), 0, "popcnt kept");
        assert_eq!(leaf1.ecx & (1 << 26), 0, "xsave hidden");
        assert_eq!(shaped(7, 0, &model, 0, 1).edx & (1 << 29), 0);
        let table = CpuId::from_entries(&[entry(1, 0), entry(0xd, 0), entry(0xd, 1)]).unwrap();
        let shaped = vcpu_cpuid(&table, &model, 0, &Topology::flat(1)).unwrap();
        assert_eq!(shaped.as_slice().len(), 1, "leaf 0xd removed");
    }

    #[test]
    fn hiding_xsave_hides_osxsave_and_leaf_0xd() {
        let model = CpuModel::new("host", &["xsave".into()], &[], false).unwrap();
        assert_eq!(
            model.hidden_names(),
            ["osxsave".to_string(), "xsave".into()].as_slice()
        );
        assert_eq!(shaped(1, 0, &model, 0, 1).ecx & (3 << 26), 0);
        let table = CpuId::from_entries(&[entry(0xd, 0), entry(7, 0)]).unwrap();
        let without = vcpu_cpuid(&table, &model, 0, &Topology::flat(1)).unwrap();
        assert!(without.as_slice().iter().all(|e| e.function != 0xd));
        let plain = CpuModel::new("host", &[], &[], false).unwrap();
        let with = vcpu_cpuid(&table, &plain, 0, &Topology::flat(1)).unwrap();
        assert_eq!(
            with.as_slice()[0].eax,
            u32::MAX,
            "kept when XSAVE is visible"
        );
    }

    #[test]
    fn topology_describes_one_thread_per_core() {
        let model = CpuModel::default();
        let leaf1 = shaped(1, 0, &model, 2, 4);
        assert_eq!(leaf1.ebx >> 24, 2, "APIC id");
        assert_eq!((leaf1.ebx >> 16) & 0xff, 4, "logical count");
        assert_eq!(leaf1.ebx & 0xffff, 0xffff, "CLFLUSH size and brand kept");
        assert_ne!(leaf1.ecx & HYPERVISOR_BIT, 0);
        assert_ne!(leaf1.edx & HTT_BIT, 0);
        let smt = shaped(0xb, 0, &model, 3, 4);
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 3));
        let core = shaped(0xb, 1, &model, 3, 4);
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (2, 4, 0x201, 3));
        let core3 = shaped(0xb, 1, &model, 0, 3);
        assert_eq!(core3.eax, 2, "3 CPUs need 2 bits of APIC id");
        let single = shaped(0xb, 1, &model, 0, 1);
        assert_eq!(single.eax, 0);
        let amd = shaped(0x8000_0008, 0, &model, 1, 4);
        assert_eq!(amd.ecx & 0xf0ff, (2 << 12) | 3, "4 cores, 2 APIC id bits");
        let ext = shaped(0x8000_001e, 0, &model, 3, 4);
        assert_eq!((ext.eax, ext.ebx, ext.ecx), (3, 3, 0));
        let mut l1 = entry(4, 0);
        l1.eax = 0x21; // level 1 data cache
        shape_entry(&mut l1, &model, 0, &Topology::flat(2));
        assert_eq!(l1.eax >> 26, 1);
        assert_eq!((l1.eax >> 14) & 0xfff, 0);
        let mut l3 = entry(4, 3);
        l3.eax = 0x63; // level 3 unified cache
        shape_entry(&mut l3, &model, 0, &Topology::flat(2));
        assert_eq!((l3.eax >> 14) & 0xfff, 1, "shared by both CPUs");
        assert_eq!(l3.eax & 0x3fff, 0x63);
    }

    #[test]
    fn topology_with_sockets_and_threads() {
        // 2 sockets of 2 cores of 2 threads: vCPU 5 is socket 1, core 0, thread 1.
        let model = CpuModel::default();
        let topo = Topology {
            sockets: 2,
            cores: 2,
            threads: 2,
        };
        let leaf1 = shaped_in(1, 0, &model, 5, topo);
        assert_eq!(leaf1.ebx >> 24, 5, "APIC id");
        assert_eq!((leaf1.ebx >> 16) & 0xff, 4, "logical CPUs per package");
        assert_ne!(leaf1.edx & HTT_BIT, 0);
        let smt = shaped_in(0xb, 0, &model, 5, topo);
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (1, 2, 0x100, 5));
        let core = shaped_in(0xb, 1, &model, 5, topo);
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (2, 4, 0x201, 5));
        // The package id is what is left above the package bits: 5 >> 2 = 1.
        assert_eq!(core.edx >> core.eax, 1);
        let mut l1 = entry(4, 0);
        l1.eax = 0x21;
        shape_entry(&mut l1, &model, 5, &topo);
        assert_eq!(l1.eax >> 26, 1, "2 cores per package");
        assert_eq!(
            (l1.eax >> 14) & 0xfff,
            1,
            "L1 shared by the core's 2 threads"
        );
        let mut l3 = entry(4, 3);
        l3.eax = 0x63;
        shape_entry(&mut l3, &model, 5, &topo);
        assert_eq!(
            (l3.eax >> 14) & 0xfff,
            3,
            "L3 shared by the package's 4 threads"
        );
        let amd = shaped_in(0x8000_0008, 0, &model, 5, topo);
        assert_eq!(amd.ecx & 0xf0ff, (2 << 12) | 3);
        let ext = shaped_in(0x8000_001e, 0, &model, 5, topo);
        assert_eq!((ext.eax, ext.ebx & 0xff, ext.ebx >> 8), (5, 2, 1));
        // One socket of 3 single-thread cores (not a power of two) keeps dense ids.
        let three = shaped_in(0xb, 1, &model, 2, Topology::flat(3));
        assert_eq!((three.eax, three.ebx, three.edx), (2, 3, 2));
    }
}
