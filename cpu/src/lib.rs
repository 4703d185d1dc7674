//! vCPUs: KVM vCPU setup, CPUID, registers and the run loop.
//!
//! - [`cpuid`]: the CPUID table (topology, hidden features, the PVM host's automatic list).
//! - [`regs`]: the long-mode register state at the kernel's entry, MSRs, LAPIC pins.
//! - [`vcpu`]: one thread per vCPU, its exits, and its pause/resume/stop state machine.

#![deny(missing_docs)]

pub mod cpuid;
pub mod regs;
pub mod vcpu;

pub use cpuid::{
    host_is_pvm, linux_clearcpuid, supported_cpuid, unhonoured_features, vcpu_cpuid, CpuModel,
    Topology,
};
pub use regs::BootRegisters;
pub use vcpu::{EventCallback, ThreadSetupError, Vcpu, VcpuEvent, VcpuHandle, VcpuState};

/// Errors of vCPU setup and execution.
#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    /// `-cpu` named a model other than `host`.
    #[error("unknown CPU model {0:?} (only \"host\" is supported)")]
    UnknownModel(String),
    /// `-cpu host,-NAME` named a feature we do not know.
    #[error("unknown CPU feature {0:?}")]
    UnknownFeature(String),
    /// `KVM_GET_SUPPORTED_CPUID` failed.
    #[error("cannot read KVM's supported CPUID")]
    SupportedCpuid(#[source] kvm_ioctls::Error),
    /// The CPUID table does not fit KVM's limit.
    #[error("CPUID table of {0} entries is too large")]
    CpuidTooLarge(usize),
    /// `KVM_CREATE_VCPU` failed.
    #[error("cannot create vCPU {0}")]
    Create(u8, #[source] kvm_ioctls::Error),
    /// `KVM_SET_CPUID2` failed.
    #[error("cannot set the vCPU's CPUID")]
    SetCpuid(#[source] kvm_ioctls::Error),
    /// `KVM_GET_CPUID2` failed.
    #[error("cannot read the vCPU's CPUID")]
    GetCpuid(#[source] kvm_ioctls::Error),
    /// The MSR list could not be built.
    #[error("cannot build the MSR list")]
    MsrList,
    /// `KVM_SET_MSRS` failed.
    #[error("cannot set the vCPU's MSRs")]
    SetMsrs(#[source] kvm_ioctls::Error),
    /// KVM refused one MSR.
    #[error("KVM refused to set MSR {0:#x}")]
    MsrRefused(u32),
    /// `KVM_GET_LAPIC` failed.
    #[error("cannot read the vCPU's local APIC")]
    GetLapic(#[source] kvm_ioctls::Error),
    /// `KVM_SET_LAPIC` failed.
    #[error("cannot set the vCPU's local APIC")]
    SetLapic(#[source] kvm_ioctls::Error),
    /// `KVM_GET_SREGS` failed.
    #[error("cannot read the vCPU's special registers")]
    GetSregs(#[source] kvm_ioctls::Error),
    /// `KVM_SET_SREGS` failed.
    #[error("cannot set the vCPU's special registers")]
    SetSregs(#[source] kvm_ioctls::Error),
    /// `KVM_SET_REGS` failed.
    #[error("cannot set the vCPU's registers")]
    SetRegs(#[source] kvm_ioctls::Error),
    /// `KVM_SET_FPU` failed.
    #[error("cannot set the vCPU's FPU state")]
    SetFpu(#[source] kvm_ioctls::Error),
    /// A boot selector points past the GDT's limit.
    #[error("selector {selector:#x} is outside the GDT (limit {limit:#x})")]
    SelectorOutsideGdt {
        /// The selector.
        selector: u16,
        /// The GDT limit.
        limit: u16,
    },
    /// The GDT is not in guest RAM.
    #[error("cannot read the GDT entry at {addr:#x}")]
    GdtRead {
        /// Guest address of the entry.
        addr: u64,
        /// The cause.
        #[source]
        source: address_space::AddressSpaceError,
    },
    /// Installing the kick signal handler failed.
    #[error("cannot install the vCPU kick signal handler")]
    SignalHandler(#[source] std::io::Error),
    /// Starting the vCPU thread failed.
    #[error("cannot start the thread of vCPU {0}")]
    Spawn(u8, #[source] std::io::Error),
    /// The set-up step of the vCPU thread (its seccomp filter) failed; the thread ended.
    #[error("cannot set up the thread of vCPU {0}")]
    ThreadSetup(u8, #[source] Box<dyn std::error::Error + Send + Sync>),
    /// `KVM_RUN` itself failed.
    #[error("vCPU {0}: KVM_RUN failed")]
    Run(u8, #[source] kvm_ioctls::Error),
    /// The guest stopped the vCPU in a way it cannot recover from.
    #[error("vCPU {index}: {reason} at guest RIP {}",
        rip.map_or("unknown".to_string(), |r| format!("{r:#x}")))]
    GuestFailed {
        /// The vCPU.
        index: u8,
        /// What happened.
        reason: String,
        /// The guest instruction pointer, if it could be read.
        rip: Option<u64>,
    },
    /// A state change that the state machine does not allow.
    #[error("vCPU {index}: cannot go from {from:?} to {to:?}")]
    BadTransition {
        /// The vCPU.
        index: u8,
        /// Its current state.
        from: VcpuState,
        /// The requested state.
        to: VcpuState,
    },
    /// A vCPU did not park within the pause timeout.
    #[error("vCPU {0} did not pause in time")]
    PauseTimeout(u8),
}

/// Result of this crate.
pub type Result<T> = std::result::Result<T, CpuError>;
