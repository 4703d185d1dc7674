//! Loads real files (synthetic ELF and bzImage images written to disk, and the project's
//! guest kernel, which `scripts/guest/build.sh` must have built: its absence is a failure)
//! into real guest memory.

use std::path::{Path, PathBuf};

use address_space::GuestMemory;
use boot_loader::{
    load_linux, ram_layout, BootConfig, BootError, KernelKind, LINUX_BANNER, MMIO_HOLE_START,
    RAW_KERNEL_ADDR,
};

const MIB: u64 = 1 << 20;

/// A file in the temporary directory, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, content: &[u8]) -> TempFile {
        let path = std::env::temp_dir().join(format!(
            "boot_loader_{}_{}_{name}",
            std::process::id(),
            std::thread::current()
                .name()
                .unwrap_or("t")
                .replace("::", "_")
        ));
        std::fs::write(&path, content).unwrap();
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn put(buf: &mut Vec<u8>, offset: usize, bytes: &[u8]) {
    if buf.len() < offset + bytes.len() {
        buf.resize(offset + bytes.len(), 0);
    }
    buf[offset..offset + bytes.len()].copy_from_slice(bytes);
}

/// One PT_LOAD segment of a synthetic ELF.
struct Segment {
    vaddr: u64,
    paddr: u64,
    data: Vec<u8>,
    memsz: u64,
}

/// A minimal x86_64 ELF64 executable with the given segments; segment data starts at 0x1000.
fn elf(entry: u64, segments: &[Segment]) -> Vec<u8> {
    let mut f = vec![0u8; 0x1000];
    put(&mut f, 0, &[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    put(&mut f, 16, &2u16.to_le_bytes()); // ET_EXEC
    put(&mut f, 18, &62u16.to_le_bytes()); // EM_X86_64
    put(&mut f, 20, &1u32.to_le_bytes());
    put(&mut f, 24, &entry.to_le_bytes());
    put(&mut f, 32, &64u64.to_le_bytes()); // e_phoff
    put(&mut f, 52, &64u16.to_le_bytes()); // e_ehsize
    put(&mut f, 54, &56u16.to_le_bytes()); // e_phentsize
    put(&mut f, 56, &(segments.len() as u16).to_le_bytes());
    let mut offset = 0x1000u64;
    for (i, s) in segments.iter().enumerate() {
        let ph = 64 + 56 * i;
        put(&mut f, ph, &1u32.to_le_bytes()); // PT_LOAD
        put(&mut f, ph + 4, &7u32.to_le_bytes());
        put(&mut f, ph + 8, &offset.to_le_bytes());
        put(&mut f, ph + 16, &s.vaddr.to_le_bytes());
        put(&mut f, ph + 24, &s.paddr.to_le_bytes());
        put(&mut f, ph + 32, &(s.data.len() as u64).to_le_bytes());
        put(&mut f, ph + 40, &s.memsz.to_le_bytes());
        put(&mut f, ph + 48, &0x1000u64.to_le_bytes());
        put(&mut f, offset as usize, &s.data);
        offset += (s.data.len() as u64).next_multiple_of(0x1000);
    }
    f
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn kernel_segment() -> Segment {
    Segment {
        vaddr: 0xffff_ffff_8100_0000,
        paddr: 0x100_0000,
        data: pattern(0x1800, 1),
        memsz: 0x4000,
    }
}

/// Setup header fields of a synthetic bzImage.
struct BzHeader {
    setup_sects: u8,
    version: u16,
    loadflags: u8,
    xloadflags: u16,
    relocatable: u8,
    kernel_alignment: u32,
    pref_address: u64,
    init_size: u32,
    cmdline_size: u32,
    initrd_addr_max: u32,
}

impl Default for BzHeader {
    fn default() -> Self {
        BzHeader {
            setup_sects: 4,
            version: 0x020f,
            loadflags: 0x01,
            xloadflags: 0x1,
            relocatable: 1,
            kernel_alignment: 0x20_0000,
            pref_address: 0x100_0000,
            init_size: 0x40_0000,
            cmdline_size: 2047,
            initrd_addr_max: 0x7fff_ffff,
        }
    }
}

fn bzimage(h: &BzHeader, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 0x200];
    put(&mut f, 0x1f1, &[h.setup_sects]);
    put(&mut f, 0x1fe, &0xaa55u16.to_le_bytes());
    put(&mut f, 0x200, &[0xeb, 0x6a]); // jmp over the header, which ends at 0x26c
    put(&mut f, 0x202, b"HdrS");
    put(&mut f, 0x206, &h.version.to_le_bytes());
    put(&mut f, 0x211, &[h.loadflags]);
    put(&mut f, 0x214, &0x10_0000u32.to_le_bytes());
    put(&mut f, 0x22c, &h.initrd_addr_max.to_le_bytes());
    put(&mut f, 0x230, &h.kernel_alignment.to_le_bytes());
    put(&mut f, 0x234, &[h.relocatable]);
    put(&mut f, 0x236, &h.xloadflags.to_le_bytes());
    put(&mut f, 0x238, &h.cmdline_size.to_le_bytes());
    put(&mut f, 0x258, &h.pref_address.to_le_bytes());
    put(&mut f, 0x260, &h.init_size.to_le_bytes());
    put(&mut f, 0x26c, &[0xcc; 4]); // setup code right after the header
    let sects = if h.setup_sects == 0 {
        4
    } else {
        h.setup_sects as usize
    };
    put(&mut f, (sects + 1) * 512, payload);
    f
}

fn guest(size: u64) -> GuestMemory {
    GuestMemory::new(&ram_layout(size)).unwrap()
}

fn config(kernel: &Path, initrd: Option<&Path>, cmdline: &str) -> BootConfig {
    BootConfig {
        kernel: kernel.to_path_buf(),
        initrd: initrd.map(Path::to_path_buf),
        cmdline: cmdline.to_string(),
        cpu_count: 2,
    }
}

fn read_bytes(mem: &GuestMemory, gpa: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    mem.read(&mut buf, gpa).unwrap();
    buf
}

fn u32_at(mem: &GuestMemory, gpa: u64) -> u32 {
    mem.read_obj(gpa).unwrap()
}

/// Checks what every boot fills in the same way.
fn check_common(mem: &GuestMemory, cmdline: &str) {
    let zp = 0x7000;
    assert_eq!(mem.read_obj::<u16>(zp + 0x1fe).unwrap(), 0xaa55);
    assert_eq!(&read_bytes(mem, zp + 0x202, 4), b"HdrS");
    assert_eq!(
        mem.read_obj::<u8>(zp + 0x210).unwrap(),
        0xff,
        "type_of_loader"
    );
    assert_eq!(u32_at(mem, zp + 0x228), 0x2_0000, "cmd_line_ptr");
    let mut expected = cmdline.as_bytes().to_vec();
    expected.push(0);
    assert_eq!(read_bytes(mem, 0x2_0000, expected.len()), expected);
    assert_eq!(mem.read_obj::<u8>(zp + 0x1e8).unwrap(), 3, "e820 entries");
    // Third e820 entry: RAM from 1 MiB.
    assert_eq!(mem.read_obj::<u64>(zp + 0x2d0 + 40).unwrap(), 0x10_0000);
    assert_eq!(u32_at(mem, zp + 0x2d0 + 56), 1);
    assert_eq!(
        mem.read_obj::<u64>(0x500 + 0x10).unwrap(),
        0x00af_9b00_0000_ffff
    );
    assert_eq!(mem.read_obj::<u64>(0x9000).unwrap(), 0xa003);
    assert_eq!(&read_bytes(mem, 0x9fc00, 4), b"_MP_");
}

#[test]
fn elf_vmlinux_loads_at_its_physical_addresses() {
    let seg = kernel_segment();
    let data = seg.data.clone();
    let file = TempFile::new("vmlinux", &elf(0x100_0000, &[seg]));
    let mem = guest(256 * MIB);
    mem.write(&[0xaa; 0x100], 0x100_3000).unwrap(); // must be zeroed as bss
    let cmdline = "console=ttyS0 panic=-1";
    let layout = load_linux(&mem, &config(&file.0, None, cmdline)).unwrap();
    assert_eq!(layout.kind, KernelKind::Elf);
    assert_eq!(layout.entry, 0x100_0000);
    assert_eq!(
        (layout.boot_params, layout.stack_top, layout.pml4),
        (0x7000, 0x8ff0, 0x9000)
    );
    assert_eq!(
        (
            layout.code_selector,
            layout.data_selector,
            layout.tss_selector
        ),
        (0x10, 0x18, 0x20)
    );
    assert_eq!(read_bytes(&mem, 0x100_0000, data.len()), data);
    assert_eq!(read_bytes(&mem, 0x100_1800, 0x2800), vec![0; 0x2800]);
    check_common(&mem, cmdline);
    assert_eq!(u32_at(&mem, 0x7000 + 0x218), 0, "no initrd");
}

/// A flat image: `code` at its start, the Linux banner `banner_at` bytes in.
fn raw_image(code: &[u8], banner_at: usize, len: usize) -> Vec<u8> {
    let mut image = vec![0u8; len];
    image[..code.len()].copy_from_slice(code);
    image[banner_at..banner_at + LINUX_BANNER.len()].copy_from_slice(LINUX_BANNER);
    image
}

#[test]
fn raw_vmlinux_bin_loads_at_16_mib_with_an_initrd_above_it() {
    // The banner straddles the 1 MiB boundary of the scan, as it may in a real image.
    let image = raw_image(&[0xf4, 0xeb, 0xfd], (1 << 20) - 5, 3 << 20);
    let kernel = TempFile::new("vmlinux.bin", &image);
    let initrd = TempFile::new("initrd", &[0x5a; 0x3000]);
    let mem = guest(256 * MIB);
    let cmdline = "console=ttyS0 root=/dev/vda";
    let layout = load_linux(&mem, &config(&kernel.0, Some(&initrd.0), cmdline)).unwrap();
    assert_eq!(layout.kind, KernelKind::Raw);
    assert_eq!((layout.entry, RAW_KERNEL_ADDR), (0x100_0000, 0x100_0000));
    assert_eq!(read_bytes(&mem, RAW_KERNEL_ADDR, image.len()), image);
    check_common(&mem, cmdline);
    let ramdisk = u64::from(u32_at(&mem, 0x7000 + 0x218));
    assert!(
        ramdisk >= RAW_KERNEL_ADDR + image.len() as u64,
        "{ramdisk:#x}"
    );
    assert_eq!(read_bytes(&mem, ramdisk, 16), vec![0x5a; 16]);
}

#[test]
fn raw_images_must_carry_the_banner_and_fit() {
    let no_banner = TempFile::new("flat.bin", &[0x90; 0x10000]);
    let mem = guest(256 * MIB);
    let err = load_linux(&mem, &config(&no_banner.0, None, "")).unwrap_err();
    assert!(matches!(err, BootError::NotAKernel { .. }), "{err}");
    // 128 MiB of RAM ends before a 120 MiB image loaded at 16 MiB does.
    let huge = TempFile::new("huge.bin", &raw_image(&[0xf4], 100, 120 << 20));
    let mem = guest(128 * MIB);
    let err = load_linux(&mem, &config(&huge.0, None, "")).unwrap_err();
    assert!(
        matches!(
            err,
            BootError::KernelTooLarge {
                load_addr: 0x100_0000,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn elf_virtual_entry_is_translated() {
    let file = TempFile::new("vmlinux", &elf(0xffff_ffff_8100_0100, &[kernel_segment()]));
    let mem = guest(256 * MIB);
    let layout = load_linux(&mem, &config(&file.0, None, "")).unwrap();
    assert_eq!(layout.entry, 0x100_0100);
}

#[test]
fn bzimage_loads_at_pref_address_with_initrd_on_top() {
    let payload = pattern(0x3000, 7);
    let kernel = TempFile::new("bzImage", &bzimage(&BzHeader::default(), &payload));
    let initrd_data = pattern(0x2345, 9);
    let initrd = TempFile::new("initrd", &initrd_data);
    let mem = guest(256 * MIB);
    let cmdline = "root=/dev/vda rw";
    let layout = load_linux(&mem, &config(&kernel.0, Some(&initrd.0), cmdline)).unwrap();
    assert_eq!(layout.kind, KernelKind::BzImage);
    assert_eq!(layout.entry, 0x100_0200);
    assert_eq!(read_bytes(&mem, 0x100_0000, payload.len()), payload);
    check_common(&mem, cmdline);
    // The header is copied from the image up to its end (0x26c); the setup code after it is not.
    assert_eq!(mem.read_obj::<u16>(0x7000 + 0x206).unwrap(), 0x020f);
    assert_eq!(u32_at(&mem, 0x7000 + 0x260), 0x40_0000, "init_size");
    let ramdisk_image = u64::from(u32_at(&mem, 0x7000 + 0x218));
    let ramdisk_size = u32_at(&mem, 0x7000 + 0x21c);
    assert_eq!(ramdisk_size as usize, initrd_data.len());
    assert_eq!(ramdisk_image, (256 * MIB - 0x2345) & !0xfff);
    assert_eq!(
        read_bytes(&mem, ramdisk_image, initrd_data.len()),
        initrd_data
    );
}

#[test]
fn bzimage_alignment_and_zero_setup_sects() {
    let header = BzHeader {
        setup_sects: 0,
        pref_address: 0x110_0000,
        kernel_alignment: 0x100_0000,
        ..BzHeader::default()
    };
    let kernel = TempFile::new("bzImage", &bzimage(&header, &pattern(0x1000, 3)));
    let mem = guest(256 * MIB);
    let layout = load_linux(&mem, &config(&kernel.0, None, "")).unwrap();
    assert_eq!(
        layout.entry, 0x200_0200,
        "pref_address aligned up to 16 MiB"
    );
    assert_eq!(read_bytes(&mem, 0x200_0000, 0x1000), pattern(0x1000, 3));

    let fixed = BzHeader {
        relocatable: 0,
        ..BzHeader::default()
    };
    let kernel = TempFile::new("bzImage-fixed", &bzimage(&fixed, &pattern(0x1000, 3)));
    let layout = load_linux(&mem, &config(&kernel.0, None, "")).unwrap();
    assert_eq!(
        layout.entry, 0x10_0200,
        "non-relocatable kernels load at 1 MiB"
    );
    // ... but run (and decompress) at pref_address: init_size must fit there.
    let huge = BzHeader {
        relocatable: 0,
        init_size: 0x0f00_1000,
        ..BzHeader::default()
    };
    let kernel = TempFile::new("bzImage-huge", &bzimage(&huge, &pattern(0x1000, 3)));
    let err = load_linux(&mem, &config(&kernel.0, None, "")).unwrap_err();
    assert!(
        matches!(
            err,
            BootError::KernelTooLarge {
                load_addr: 0x100_0000,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn initrd_respects_initrd_addr_max_and_the_hole() {
    let header = BzHeader {
        initrd_addr_max: 0x3fff_ffff,
        ..BzHeader::default()
    };
    let kernel = TempFile::new("bzImage", &bzimage(&header, &pattern(0x1000, 1)));
    let initrd = TempFile::new("initrd", &pattern(0x1000, 2));
    let mem = guest(MMIO_HOLE_START + 512 * MIB);
    load_linux(&mem, &config(&kernel.0, Some(&initrd.0), "")).unwrap();
    assert_eq!(u32_at(&mem, 0x7000 + 0x218), 0x3fff_f000);
    assert_eq!(
        mem.read_obj::<u8>(0x7000 + 0x1e8).unwrap(),
        4,
        "e820 has RAM above 4 GiB"
    );

    let elf_kernel = TempFile::new("vmlinux", &elf(0x100_0000, &[kernel_segment()]));
    let small = guest(128 * MIB);
    load_linux(&small, &config(&elf_kernel.0, Some(&initrd.0), "")).unwrap();
    assert_eq!(
        u64::from(u32_at(&small, 0x7000 + 0x218)),
        128 * MIB - 0x1000
    );
}

fn load_err(kernel: &[u8], initrd: Option<&[u8]>, cmdline: &str, mem_size: u64) -> BootError {
    let kernel = TempFile::new("kernel", kernel);
    let initrd = initrd.map(|data| TempFile::new("initrd", data));
    let mem = guest(mem_size);
    let cfg = config(&kernel.0, initrd.as_ref().map(|f| f.0.as_path()), cmdline);
    let err = load_linux(&mem, &cfg).unwrap_err();
    assert!(!err.to_string().contains('\n'), "one-line message: {err}");
    err
}

#[test]
fn files_that_are_not_kernels_are_refused() {
    let err = load_err(b"#!/bin/sh\necho hello\n", None, "", 256 * MIB);
    assert!(matches!(err, BootError::NotAKernel { .. }), "{err}");
    assert!(err
        .to_string()
        .contains("not a Linux kernel (bzImage, ELF vmlinux, or raw vmlinux.bin"));
    assert!(matches!(
        load_err(b"", None, "", 256 * MIB),
        BootError::NotAKernel { .. }
    ));
    let mut bad_magic = bzimage(&BzHeader::default(), &[1; 16]);
    bad_magic[0x202] = b'X';
    assert!(matches!(
        load_err(&bad_magic, None, "", 256 * MIB),
        BootError::NotAKernel { .. }
    ));
    let missing = TempFile("/nonexistent/boot_loader/vmlinux".into());
    let mem = guest(256 * MIB);
    let err = load_linux(&mem, &config(&missing.0, None, "")).unwrap_err();
    assert!(matches!(err, BootError::Open { .. }), "{err}");
}

/// Runs `load_linux` on another thread, failing if it has not returned within 5 s (a FIFO
/// opened for reading would wait for a writer forever).
fn load_within_seconds(kernel: &Path, initrd: Option<&Path>) -> BootError {
    let cfg = config(kernel, initrd, "");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mem = guest(256 * MIB);
        let _ = tx.send(load_linux(&mem, &cfg).map(|_| ()));
    });
    match rx.recv_timeout(std::time::Duration::from_secs(5)) {
        Ok(result) => result.expect_err("loaded a kernel that is not a regular file"),
        Err(_) => panic!("load_linux blocked on {}", kernel.display()),
    }
}

#[test]
fn only_regular_files_are_kernels_and_initrds() {
    let kernel = TempFile::new("kernel", &elf(0x100_0000, &[kernel_segment()]));
    let fifo = TempFile(kernel.0.with_extension("fifo"));
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo.0)
        .status()
        .unwrap();
    assert!(made.success());
    for (kernel, initrd, path, what, kind) in [
        (&fifo.0, None, &fifo.0, "kernel", "FIFO"),
        (&kernel.0, Some(&fifo.0), &fifo.0, "initrd", "FIFO"),
        (
            &PathBuf::from("/dev/zero"),
            None,
            &PathBuf::from("/dev/zero"),
            "kernel",
            "character device",
        ),
    ] {
        let err = load_within_seconds(kernel, initrd.map(PathBuf::as_path));
        assert!(matches!(err, BootError::NotAFile { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            format!(
                "{} is a {kind}: the {what} must be a regular file",
                path.display()
            )
        );
    }
    let dir = std::env::temp_dir();
    let err = load_within_seconds(&dir, None);
    assert!(err.to_string().contains("is a directory"), "{err}");
}

#[test]
fn malformed_elf_files_are_refused() {
    let good = elf(0x100_0000, &[kernel_segment()]);
    let size = 256 * MIB;
    for cut in [10, 63, 64 + 20, 0x1000 + 0x10] {
        let err = load_err(&good[..cut], None, "", size);
        assert!(
            matches!(err, BootError::Truncated { .. }),
            "cut at {cut}: {err}"
        );
    }
    let mut class32 = good.clone();
    class32[4] = 1;
    assert!(matches!(
        load_err(&class32, None, "", size),
        BootError::UnsupportedElf(_)
    ));
    let mut arm = good.clone();
    arm[18] = 183; // EM_AARCH64
    let err = load_err(&arm, None, "", size);
    assert!(err.to_string().contains("x86_64"), "{err}");
    let mut big_endian = good.clone();
    big_endian[5] = 2;
    assert!(matches!(
        load_err(&big_endian, None, "", size),
        BootError::UnsupportedElf(_)
    ));
    let mut phentsize = good.clone();
    phentsize[54] = 32;
    assert!(matches!(
        load_err(&phentsize, None, "", size),
        BootError::BadProgramHeaders(_)
    ));
    let mut huge_phoff = good.clone();
    huge_phoff[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(
        load_err(&huge_phoff, None, "", size),
        BootError::Truncated { .. }
    ));
    let mut filesz = good;
    filesz[64 + 32..64 + 40].copy_from_slice(&0x10_0000u64.to_le_bytes());
    filesz[64 + 40..64 + 48].copy_from_slice(&0x10u64.to_le_bytes());
    assert!(matches!(
        load_err(&filesz, None, "", size),
        BootError::SegmentFileSize { .. }
    ));
}

#[test]
fn elf_segments_outside_ram_are_refused() {
    let size = 256 * MIB;
    let place = |paddr: u64, memsz: u64| {
        let seg = Segment {
            vaddr: paddr,
            paddr,
            data: vec![1; 0x10],
            memsz,
        };
        load_err(&elf(paddr, &[seg]), None, "", size)
    };
    for (paddr, memsz) in [
        (size - 0x8, 0x10),      // crosses the end of RAM
        (MMIO_HOLE_START, 0x10), // in the hole
        (0x8000, 0x10),          // over the boot structures
        (u64::MAX - 4, 0x10),    // wraps around
        (0x100_0000, u64::MAX),  // absurd memory size
    ] {
        let err = place(paddr, memsz);
        assert!(
            matches!(err, BootError::SegmentOutsideRam { .. }),
            "{paddr:#x}: {err}"
        );
    }
    let no_load = elf(0x100_0000, &[]);
    let err = load_err(&no_load, None, "", size);
    assert!(matches!(err, BootError::BadProgramHeaders(_)), "{err}");
    let err = load_err(&elf(0x300_0000, &[kernel_segment()]), None, "", size);
    assert!(
        matches!(err, BootError::EntryOutsideKernel(0x300_0000)),
        "{err}"
    );
}

#[test]
fn malformed_bzimages_are_refused() {
    let size = 256 * MIB;
    let image = |h: BzHeader| bzimage(&h, &pattern(0x1000, 5));
    let err = load_err(
        &image(BzHeader {
            version: 0x0206,
            ..Default::default()
        }),
        None,
        "",
        size,
    );
    assert!(
        matches!(err, BootError::ProtocolTooOld { version: 0x0206 }),
        "{err}"
    );
    assert!(err.to_string().contains("2.06"), "{err}");
    let err = load_err(
        &image(BzHeader {
            xloadflags: 0,
            ..Default::default()
        }),
        None,
        "",
        size,
    );
    assert!(matches!(err, BootError::No64BitEntry), "{err}");
    let err = load_err(
        &image(BzHeader {
            loadflags: 0,
            ..Default::default()
        }),
        None,
        "",
        size,
    );
    assert!(matches!(err, BootError::NotLoadedHigh), "{err}");
    let err = load_err(
        &image(BzHeader {
            kernel_alignment: 0x30_0000,
            ..Default::default()
        }),
        None,
        "",
        size,
    );
    assert!(matches!(err, BootError::BadAlignment(0x30_0000)), "{err}");
    // setup_sects claims more setup code than the file holds.
    let mut lying = image(BzHeader::default());
    lying[0x1f1] = 200;
    let err = load_err(&lying, None, "", size);
    assert!(matches!(err, BootError::Truncated { .. }), "{err}");
    // Header cut short.
    let full = image(BzHeader::default());
    let err = load_err(&full[..0x230], None, "", size);
    assert!(matches!(err, BootError::Truncated { .. }), "{err}");
    // Decompression room beyond the end of RAM.
    let err = load_err(
        &image(BzHeader {
            init_size: 0x1000_0000,
            ..Default::default()
        }),
        None,
        "",
        size,
    );
    assert!(matches!(err, BootError::KernelTooLarge { .. }), "{err}");
}

#[test]
fn command_line_limits() {
    let kernel = elf(0x100_0000, &[kernel_segment()]);
    let size = 256 * MIB;
    let longest = "x".repeat(2047);
    let file = TempFile::new("vmlinux", &kernel);
    let mem = guest(size);
    load_linux(&mem, &config(&file.0, None, &longest)).unwrap();
    let err = load_err(&kernel, None, &"x".repeat(2048), size);
    assert!(
        matches!(
            err,
            BootError::CmdlineTooLong {
                len: 2048,
                max: 2047
            }
        ),
        "{err}"
    );
    let err = load_err(&kernel, None, "a\0b", size);
    assert!(matches!(err, BootError::CmdlineHasNul), "{err}");
    let short = bzimage(
        &BzHeader {
            cmdline_size: 255,
            ..Default::default()
        },
        &[1; 0x100],
    );
    let err = load_err(&short, None, &"y".repeat(256), size);
    assert!(
        matches!(err, BootError::CmdlineTooLong { max: 255, .. }),
        "{err}"
    );
}

#[test]
fn initrd_too_large_and_bad_cpu_counts() {
    let kernel = elf(0x100_0000, &[kernel_segment()]);
    let initrd = vec![0u8; (120 * MIB) as usize];
    let err = load_err(&kernel, Some(&initrd), "", 128 * MIB);
    assert!(matches!(err, BootError::InitrdTooLarge { .. }), "{err}");

    let file = TempFile::new("vmlinux", &kernel);
    let mem = guest(256 * MIB);
    let mut cfg = config(&file.0, None, "");
    cfg.cpu_count = 0;
    assert!(matches!(
        load_linux(&mem, &cfg),
        Err(BootError::CpuCount(0))
    ));
    cfg.cpu_count = 255;
    assert!(matches!(
        load_linux(&mem, &cfg),
        Err(BootError::CpuCount(255))
    ));
}

/// The test guest's directory, found as the integration tests find it:
/// `$STRATOVIRT_GUEST_DIR`, else `${STRATOVIRT_CACHE:-$HOME/.cache/stratovirt}/guest`.
fn guest_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("STRATOVIRT_GUEST_DIR") {
        return Some(dir.into());
    }
    let cache = std::env::var_os("STRATOVIRT_CACHE")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache/stratovirt"))
        })?;
    Some(cache.join("guest"))
}

/// Where the test guest must be, or the reason the test fails: the guest is built by
/// `scripts/guest/build.sh` before the tests run (as `scripts/test-all.sh` does).
fn required_guest_file(name: &str) -> PathBuf {
    let Some(dir) = guest_dir() else {
        panic!(
            "no test guest: neither STRATOVIRT_GUEST_DIR nor HOME is set; build the guest with \
             scripts/guest/build.sh and point STRATOVIRT_GUEST_DIR at it"
        );
    };
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "test guest kernel {} not found: build it with scripts/guest/build.sh (it caches the \
         guest in ${{STRATOVIRT_CACHE:-~/.cache/stratovirt}}/guest) or set \
         STRATOVIRT_GUEST_DIR to a directory holding vmlinux and bzImage",
        path.display()
    );
    path
}

/// The project's guest kernel (built by `scripts/guest/build.sh`; a missing one is a
/// failure): the ELF, the bzImage and the raw image made from the ELF load, and agree with
/// what their own headers say.
#[test]
fn real_guest_kernels_load() {
    let vmlinux = required_guest_file("vmlinux");
    let bzimage = required_guest_file("bzImage");
    // The quick start's raw image: `objcopy -O binary vmlinux vmlinux.bin` (binutils, which
    // the guest build needs too).
    let raw = TempFile::new("vmlinux.bin", &[]);
    let objcopy = std::process::Command::new("objcopy")
        .args(["-O", "binary"])
        .arg(&vmlinux)
        .arg(&raw.0)
        .status();
    assert!(
        matches!(objcopy, Ok(status) if status.success()),
        "objcopy -O binary {}: {objcopy:?}",
        vmlinux.display()
    );
    for (name, kind, path) in [
        ("vmlinux", KernelKind::Elf, vmlinux.clone()),
        ("bzImage", KernelKind::BzImage, bzimage),
        ("vmlinux.bin", KernelKind::Raw, raw.0.clone()),
    ] {
        let mem = guest(512 * MIB);
        let mut cfg = config(&path, None, "console=ttyS0 panic=-1");
        cfg.cpu_count = 4;
        let layout = load_linux(&mem, &cfg).unwrap();
        assert_eq!(layout.kind, kind);
        let image = std::fs::read(&path).unwrap();
        match kind {
            KernelKind::Elf => {
                // ELF vmlinux: entry is phys_startup_64, the physical e_entry.
                let e_entry = u64::from_le_bytes(image[24..32].try_into().unwrap());
                assert_eq!(layout.entry, e_entry);
            }
            KernelKind::Raw => {
                // The flat image starts at CONFIG_PHYSICAL_START with startup_64, which is
                // where the ELF's e_entry points.
                let elf = std::fs::read(&vmlinux).unwrap();
                let e_entry = u64::from_le_bytes(elf[24..32].try_into().unwrap());
                assert_eq!(layout.entry, e_entry);
                assert_eq!(read_bytes(&mem, RAW_KERNEL_ADDR, 4096), image[..4096]);
            }
            KernelKind::BzImage => {
                let pref = u64::from_le_bytes(image[0x258..0x260].try_into().unwrap());
                let load = if image[0x234] != 0 { pref } else { 0x10_0000 };
                assert_eq!(layout.entry, load + 0x200, "relocatable: {}", image[0x234]);
                let sects = match image[0x1f1] {
                    0 => 4,
                    n => usize::from(n),
                };
                let payload = &image[(sects + 1) * 512..];
                assert_eq!(read_bytes(&mem, load, 4096), payload[..4096]);
                assert_eq!(
                    mem.read_obj::<u16>(0x7000 + 0x206).unwrap(),
                    u16::from_le_bytes([image[0x206], image[0x207]])
                );
            }
        }
        check_common(&mem, "console=ttyS0 panic=-1");
        eprintln!("{name}: entry {:#x}", layout.entry);
    }
}
