//! Raw `vmlinux.bin` loading: the flat binary `objcopy -O binary vmlinux vmlinux.bin` makes of
//! an x86_64 kernel, as StratoVirt's quick start boots it.
//!
//! The file is the kernel's loadable segments laid out from its lowest physical address, which
//! for x86_64 Linux is `CONFIG_PHYSICAL_START` (16 MiB) with `startup_64` at its first byte. It
//! is copied to [`RAW_KERNEL_ADDR`] and entered there, with the setup header synthesized as for
//! an ELF vmlinux (a flat binary has none).
//!
//! A flat binary carries no magic number. So that a file that is not a kernel is still refused
//! rather than executed, a raw image must contain the Linux banner ([`LINUX_BANNER`],
//! `linux_banner` in the kernel's read-only data, which the flat binary keeps). The kernel's
//! `.bss` is not in the file; the kernel clears it itself, and the initrd (placed at the top
//! of low RAM) must lie above the file's end.

use address_space::GuestMemory;

use crate::error::{BootError, Result};
use crate::image::ImageFile;
use crate::kernel::LoadedKernel;

/// Where a raw kernel is loaded and entered: 16 MiB, as StratoVirt loads it.
pub const RAW_KERNEL_ADDR: u64 = 0x100_0000;
/// The text every Linux kernel image carries (`linux_banner`).
pub const LINUX_BANNER: &[u8] = b"Linux version ";

/// Bytes read at a time while looking for the banner.
const SCAN_CHUNK: usize = 1 << 20;

/// Whether the file contains [`LINUX_BANNER`].
pub(crate) fn has_linux_banner(file: &ImageFile) -> Result<bool> {
    let overlap = LINUX_BANNER.len() - 1;
    let mut buf = vec![0u8; SCAN_CHUNK + overlap];
    let mut offset = 0u64;
    let mut carried = 0usize;
    while offset < file.len() {
        let n = (file.len() - offset).min(SCAN_CHUNK as u64) as usize;
        file.read_exact("kernel", &mut buf[carried..carried + n], offset)?;
        let window = &buf[..carried + n];
        if window
            .windows(LINUX_BANNER.len())
            .any(|w| w == LINUX_BANNER)
        {
            return Ok(true);
        }
        // Keep the tail: the banner may straddle two chunks.
        let keep = overlap.min(window.len());
        let tail_start = window.len() - keep;
        buf.copy_within(tail_start..tail_start + keep, 0);
        carried = keep;
        offset += n as u64;
    }
    Ok(false)
}

/// Copies the flat image to [`RAW_KERNEL_ADDR`]; the entry point is its first byte.
pub(crate) fn load(file: &ImageFile, mem: &GuestMemory, low_end: u64) -> Result<LoadedKernel> {
    let size = file.len();
    let end = RAW_KERNEL_ADDR
        .checked_add(size)
        .filter(|&end| end <= low_end)
        .ok_or(BootError::KernelTooLarge {
            load_addr: RAW_KERNEL_ADDR,
            size,
            ram_end: low_end,
        })?;
    file.copy_to_guest("raw kernel", mem, 0, size, RAW_KERNEL_ADDR)?;
    log::info!("raw kernel: {size:#x} bytes at {RAW_KERNEL_ADDR:#x}");
    Ok(LoadedKernel {
        entry: RAW_KERNEL_ADDR,
        end,
        header: crate::elf::synthesized_header(),
    })
}
