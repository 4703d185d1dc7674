//! What loading a kernel image produces, whatever its format.

use crate::bootparams::SetupHeader;

/// A kernel placed in guest memory.
pub(crate) struct LoadedKernel {
    /// Guest physical address of the 64-bit entry point (`rip`).
    pub entry: u64,
    /// First guest address above everything the kernel occupies or will use while
    /// decompressing; the initrd goes above it.
    pub end: u64,
    /// The setup header for `boot_params`, before the loader's own fields are filled in.
    pub header: SetupHeader,
}
