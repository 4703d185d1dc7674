//! The drive options that change what the guest may ask and what the device does with it, on
//! real files: `discard=` (the `DISCARD` feature, holes punched in the image), `detect-zeroes=`
//! (`WRITE_ZEROES`, all-zero writes turned into write-zeroes or holes), and the I/O counters
//! (`query-blockstats`) counting exactly what the driver sent.

mod common;

use std::os::unix::fs::MetadataExt;

use common::{buf, Rig, TempDisk, DATA, DRIVER_BASE, MODES};
use device_model::virtio::block::request::{
    DiscardSegment, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use device_model::virtio::block::{VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_WRITE_ZEROES};
use device_model::virtio::driver::DriverConfig;
use device_model::virtio::{feature, BlockBackend, BlockBackendConfig};
use util::aio::{AioEngine, DetectZeroes, Discard};

const IMAGE: usize = 4 << 20;

fn rig(
    disk: &TempDisk,
    aio: AioEngine,
    direct: bool,
    discard: Discard,
    zeroes: DetectZeroes,
) -> Rig {
    let config = BlockBackendConfig {
        discard,
        detect_zeroes: zeroes,
        ..disk.config(aio, direct)
    };
    Rig::new(
        Some(BlockBackend::open(&config).unwrap()),
        DriverConfig::new(DRIVER_BASE, 64),
    )
}

/// Bytes the image file occupies on the host.
fn allocated(disk: &TempDisk) -> u64 {
    std::fs::metadata(&disk.path).unwrap().blocks() * 512
}

fn range_request(rig: &mut Rig, kind: u32, sector: u64, sectors: u32, flags: u32) -> u8 {
    let seg = DiscardSegment {
        sector,
        num_sectors: sectors,
        flags,
    };
    rig.mem.write_obj(&seg, DATA + 0x10000).unwrap();
    rig.run(kind, 0, &[buf(DATA + 0x10000, 16, false)])
        .status
        .unwrap()
}

#[test]
fn the_guest_is_offered_discard_and_write_zeroes_only_when_the_drive_says_so() {
    let disk = TempDisk::new(&vec![0x5au8; IMAGE]);
    for (discard, zeroes, want_discard, want_zeroes) in [
        (Discard::Ignore, DetectZeroes::Off, false, false),
        (Discard::Unmap, DetectZeroes::Off, true, false),
        (Discard::Ignore, DetectZeroes::On, false, true),
        (Discard::Unmap, DetectZeroes::Unmap, true, true),
    ] {
        let rig = rig(&disk, AioEngine::IoUring, true, discard, zeroes);
        let features = rig.driver.features();
        assert_eq!(
            features & feature(VIRTIO_BLK_F_DISCARD) != 0,
            want_discard,
            "discard={discard:?}"
        );
        assert_eq!(
            features & feature(VIRTIO_BLK_F_WRITE_ZEROES) != 0,
            want_zeroes,
            "detect-zeroes={zeroes:?}"
        );
    }
    // Linux AIO cannot discard: no feature whatever the drive says.
    let rig = rig(
        &disk,
        AioEngine::Native,
        true,
        Discard::Unmap,
        DetectZeroes::Unmap,
    );
    assert_eq!(rig.driver.features() & feature(VIRTIO_BLK_F_DISCARD), 0);
}

#[test]
fn discard_unmap_punches_holes_and_zero_writes_become_holes_with_detect_zeroes_unmap() {
    for (aio, direct) in MODES
        .into_iter()
        .filter(|&(aio, _)| aio != AioEngine::Native)
    {
        let disk = TempDisk::new(&vec![0x5au8; IMAGE]);
        let mut rig = rig(&disk, aio, direct, Discard::Unmap, DetectZeroes::Unmap);
        let full = allocated(&disk);
        assert!(full >= IMAGE as u64, "{aio}: the image starts allocated");

        // A discard of 1 MiB punches a hole there.
        assert_eq!(
            range_request(&mut rig, VIRTIO_BLK_T_DISCARD, 0, 2048, 0),
            VIRTIO_BLK_S_OK
        );
        let after_discard = allocated(&disk);
        assert!(
            after_discard <= full - (1 << 20) + 4096,
            "{aio} direct={direct}: the discard left {after_discard} of {full} bytes allocated"
        );
        let (_, data) = rig.read(0, 4096);
        assert!(data.iter().all(|&b| b == 0));

        // A write of 1 MiB of zeroes is detected and becomes a hole too.
        rig.mem.zero(DATA, 1 << 20).unwrap();
        assert_eq!(
            rig.run(
                device_model::virtio::block::request::VIRTIO_BLK_T_OUT,
                2048,
                &[buf(DATA, 1 << 20, false)]
            )
            .status,
            Some(VIRTIO_BLK_S_OK)
        );
        let after_zeroes = allocated(&disk);
        assert!(
            after_zeroes <= after_discard - (1 << 20) + 4096,
            "{aio} direct={direct}: the zero write left {after_zeroes} bytes allocated"
        );
        // A write-zeroes that may unmap, too.
        assert_eq!(
            range_request(
                &mut rig,
                VIRTIO_BLK_T_WRITE_ZEROES,
                4096,
                2048,
                VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
            ),
            VIRTIO_BLK_S_OK
        );
        assert!(allocated(&disk) <= after_zeroes - (1 << 20) + 4096, "{aio}");
        drop(rig);
        let contents = disk.contents();
        assert!(contents[..3 << 20].iter().all(|&b| b == 0), "{aio}");
        assert!(contents[3 << 20..].iter().all(|&b| b == 0x5a), "{aio}");
    }
}

#[test]
fn with_discard_ignore_a_discard_does_nothing_and_detect_zeroes_on_keeps_blocks() {
    let disk = TempDisk::new(&vec![0x5au8; IMAGE]);
    let mut rig = rig(
        &disk,
        AioEngine::IoUring,
        true,
        Discard::Ignore,
        DetectZeroes::On,
    );
    let full = allocated(&disk);
    // The driver was not offered DISCARD, but an empty slot's driver may have been: the
    // request is refused as unsupported here.
    assert_ne!(
        range_request(&mut rig, VIRTIO_BLK_T_DISCARD, 0, 2048, 0),
        VIRTIO_BLK_S_OK
    );
    rig.mem.zero(DATA, 1 << 20).unwrap();
    let status = rig
        .run(
            device_model::virtio::block::request::VIRTIO_BLK_T_OUT,
            0,
            &[buf(DATA, 1 << 20, false)],
        )
        .status;
    assert_eq!(status, Some(VIRTIO_BLK_S_OK));
    assert!(
        allocated(&disk) >= full,
        "detect-zeroes=on keeps blocks allocated"
    );
    let (_, data) = rig.read(0, 4096);
    assert!(data.iter().all(|&b| b == 0));
}

#[test]
fn the_counters_count_exactly_what_the_driver_sent_on_every_engine() {
    for (aio, direct) in MODES {
        let disk = TempDisk::new(&vec![0u8; IMAGE]);
        let mut rig = rig(&disk, aio, direct, Discard::Ignore, DetectZeroes::Off);
        for i in 0..7u64 {
            assert_eq!(rig.write(i * 8, &[i as u8 + 1; 4096]), VIRTIO_BLK_S_OK);
        }
        for i in 0..5u64 {
            assert_eq!(rig.read(i * 8, 1024).0, VIRTIO_BLK_S_OK);
        }
        for _ in 0..3 {
            assert_eq!(
                rig.run(VIRTIO_BLK_T_FLUSH, 0, &[]).status,
                Some(VIRTIO_BLK_S_OK)
            );
        }
        let stats = rig.slot.stats();
        assert_eq!(
            (stats.wr_operations, stats.wr_bytes),
            (7, 7 * 4096),
            "{aio}"
        );
        assert_eq!(
            (stats.rd_operations, stats.rd_bytes),
            (5, 5 * 1024),
            "{aio}"
        );
        assert_eq!(stats.flush_operations, 3, "{aio}");
        assert!(stats.rd_total_time_ns > 0 && stats.wr_total_time_ns > 0);
        assert_eq!(
            (
                stats.failed_rd_operations,
                stats.failed_wr_operations,
                stats.failed_flush_operations
            ),
            (0, 0, 0)
        );
    }
}
