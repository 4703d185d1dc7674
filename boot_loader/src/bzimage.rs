//! bzImage loading (Linux boot protocol 2.12 and later, 64-bit entry).
//!
//! ```text
//! file:  [ boot sector + setup header (0x1f1..) | setup code ][ protected-mode kernel ... ]
//!         <------ (setup_sects + 1) * 512 bytes ------------>
//! guest: protected-mode kernel copied to the load address; entry = load address + 0x200
//! ```
//!
//! The load address is `pref_address` (aligned up to `kernel_alignment`) for a relocatable
//! kernel and 1 MiB otherwise; a non-relocatable kernel moves itself to its fixed address,
//! `pref_address`. The image and the `init_size` bytes the kernel needs where it runs (to
//! decompress) must fit in low RAM; the initrd is placed above both.

use address_space::GuestMemory;

use crate::bootparams::{
    SetupHeader, BOOT_FLAG, HDR_MAGIC, LOADED_HIGH, SETUP_HEADER_OFFSET, XLF_KERNEL_64,
};
use crate::error::{BootError, Result};
use crate::image::{as_bytes_mut, ImageFile};
use crate::kernel::LoadedKernel;
use crate::layout::HIMEM_START;

/// Oldest boot protocol accepted: 2.12 introduced `xloadflags`, the only way to know that the
/// 64-bit entry point exists.
const MIN_PROTOCOL: u16 = 0x020c;
/// Offset of the 64-bit entry point from the load address.
const ENTRY_64_OFFSET: u64 = 0x200;
/// `setup_sects` value that old boot loaders treat as 4.
const DEFAULT_SETUP_SECTS: u64 = 4;
/// Offset of the byte giving the setup header's length (the jump's displacement).
const HEADER_END_BASE: u64 = 0x202;

/// Whether the file carries a setup header (boot flag and "HdrS" magic).
pub(crate) fn looks_like_bzimage(file: &ImageFile) -> Result<bool> {
    if file.len() < HEADER_END_BASE + 4 {
        return Ok(false);
    }
    let boot_flag: u16 = file.read_obj("boot flag", 0x1fe)?;
    let magic: u32 = file.read_obj("setup header magic", HEADER_END_BASE)?;
    Ok(boot_flag == BOOT_FLAG && magic == HDR_MAGIC)
}

/// Reads the setup header as the boot protocol says to copy it into `boot_params`: the bytes
/// past the header's own end (`0x202 + byte at 0x201`) are zero.
fn read_setup_header(file: &ImageFile) -> Result<SetupHeader> {
    let mut header = SetupHeader::default();
    let bytes = as_bytes_mut(&mut header);
    file.read_exact("setup header", bytes, SETUP_HEADER_OFFSET)?;
    let end = HEADER_END_BASE + u64::from(bytes[(0x201 - SETUP_HEADER_OFFSET) as usize]);
    let valid = (end - SETUP_HEADER_OFFSET) as usize;
    if let Some(beyond) = bytes.get_mut(valid..) {
        beyond.fill(0);
    }
    Ok(header)
}

/// Checks the header and copies the protected-mode kernel into guest RAM below `low_end`.
pub(crate) fn load(file: &ImageFile, mem: &GuestMemory, low_end: u64) -> Result<LoadedKernel> {
    let header = read_setup_header(file)?;
    let version = header.version;
    if version < MIN_PROTOCOL {
        return Err(BootError::ProtocolTooOld { version });
    }
    if header.loadflags & LOADED_HIGH == 0 {
        return Err(BootError::NotLoadedHigh);
    }
    if header.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(BootError::No64BitEntry);
    }
    let setup_sects = match u64::from(header.setup_sects) {
        0 => DEFAULT_SETUP_SECTS,
        n => n,
    };
    let kernel_offset = (setup_sects + 1) * 512;
    file.check_range("protected-mode kernel", kernel_offset, 1)?;
    let kernel_len = file.len() - kernel_offset;

    let preferred = header.pref_address.max(HIMEM_START);
    // Where the image is copied, and where the kernel decompresses itself (`init_size`
    // bytes): the same place for a relocatable kernel, its fixed `pref_address` otherwise.
    let (load_addr, run_addr) = if header.relocatable_kernel != 0 {
        let align = header.kernel_alignment;
        if !align.is_power_of_two() {
            return Err(BootError::BadAlignment(align));
        }
        let aligned = preferred
            .checked_next_multiple_of(u64::from(align))
            .unwrap_or(u64::MAX);
        (aligned, aligned)
    } else {
        (HIMEM_START, preferred)
    };
    let too_large = |at, size| BootError::KernelTooLarge {
        load_addr: at,
        size,
        ram_end: low_end,
    };
    let image_end = load_addr
        .checked_add(kernel_len)
        .filter(|&end| end <= low_end)
        .ok_or(too_large(load_addr, kernel_len))?;
    let init_size = u64::from(header.init_size);
    let run_end = run_addr
        .checked_add(init_size)
        .filter(|&end| end <= low_end)
        .ok_or(too_large(run_addr, init_size))?;
    let end = image_end.max(run_end);
    file.copy_to_guest(
        "protected-mode kernel",
        mem,
        kernel_offset,
        kernel_len,
        load_addr,
    )?;
    log::info!(
        "bzImage protocol {}.{:02}: {kernel_len:#x} bytes at {load_addr:#x}, runs at {run_addr:#x}",
        version >> 8,
        version & 0xff
    );
    Ok(LoadedKernel {
        entry: load_addr + ENTRY_64_OFFSET,
        end,
        header,
    })
}
