//! vCPUs: KVM vCPU setup, CPUID, registers and the run loop.

#![deny(missing_docs)]
