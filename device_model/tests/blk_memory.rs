//! What a block device costs in host memory: activating an io_uring disk in front of 1 GiB of
//! guest RAM neither populates nor pins that RAM; only RAM preallocated by the user's choice
//! is registered with the ring as fixed buffers (pinned, already resident).
//!
//! One test in its own binary: it reads this process's `VmRSS` and `VmPin`, which other tests
//! running beside it would disturb.

mod common;

use address_space::{GuestMemory, MemoryOptions};
use common::{Rig, TempDisk, DRIVER_BASE};
use device_model::virtio::block::request::VIRTIO_BLK_S_OK;
use device_model::virtio::driver::DriverConfig;
use device_model::virtio::BlockBackend;
use util::aio::AioEngine;

const GUEST_RAM: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// `VmRSS` and `VmPin` of this process, in bytes.
fn rss_and_pinned() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| -> u64 {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} missing from /proc/self/status"));
        let kib: u64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap();
        kib * 1024
    };
    (field("VmRSS:"), field("VmPin:"))
}

/// Brings an io_uring disk up in front of `mem`, does one write and one read, and returns how
/// much RSS and pinned memory that added (guest RAM itself already counted before).
fn activation_cost(mem: GuestMemory, disk: &TempDisk) -> (u64, u64) {
    let (rss_before, pinned_before) = rss_and_pinned();
    let backend = BlockBackend::open(&disk.config(AioEngine::IoUring, true)).unwrap();
    let mut rig = Rig::with_memory(mem, Some(backend), DriverConfig::new(DRIVER_BASE, 256));
    assert_eq!(rig.write(8, &[0x5a; 4096]), VIRTIO_BLK_S_OK);
    let (status, data) = rig.read(8, 4096);
    assert_eq!(status, VIRTIO_BLK_S_OK);
    assert!(data.iter().all(|&b| b == 0x5a));
    let (rss, pinned) = rss_and_pinned();
    drop(rig);
    (
        rss.saturating_sub(rss_before),
        pinned.saturating_sub(pinned_before),
    )
}

#[test]
fn an_io_uring_disk_never_pins_guest_ram_unless_it_was_preallocated() {
    let disk = TempDisk::new(&vec![0; 1 << 20]);

    let mem = GuestMemory::new(&[(0, GUEST_RAM)]).unwrap();
    let (rss, pinned) = activation_cost(mem, &disk);
    eprintln!(
        "1 GiB guest, not preallocated: +{} KiB RSS, +{} KiB pinned",
        rss / 1024,
        pinned / 1024
    );
    assert!(
        rss <= 16 * MIB,
        "activation made {} MiB resident",
        rss / MIB
    );
    assert!(pinned <= 16 * MIB, "activation pinned {} MiB", pinned / MIB);

    // With -mem-prealloc the RAM is resident already; registering it pins it for the ring's
    // fixed buffers (READ_FIXED/WRITE_FIXED), which is the point of the option.
    let mem = GuestMemory::with_options(
        &[(0, GUEST_RAM)],
        &MemoryOptions {
            prealloc: true,
            ..MemoryOptions::default()
        },
    )
    .unwrap();
    let (rss, pinned) = activation_cost(mem, &disk);
    eprintln!(
        "1 GiB guest, preallocated: +{} KiB RSS, +{} KiB pinned",
        rss / 1024,
        pinned / 1024
    );
    assert!(rss <= 16 * MIB, "RSS grew by {} MiB", rss / MIB);
    assert!(
        pinned >= GUEST_RAM - 16 * MIB,
        "preallocated RAM was not registered ({} MiB pinned)",
        pinned / MIB
    );
}
