//! Guest-controlled data that is wrong: every case ends as IOERR / UNSUPP (or the device
//! needing a reset), and the device keeps serving good requests afterwards. Run on every engine.

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

use common::{buf, Rig, TempDisk, DATA, MODES, RAM, TIMEOUT};
use device_model::virtio::block::request::{
    RequestHeader, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
};
use device_model::virtio::block::VIRTIO_BLK_F_RO;
use device_model::virtio::driver::Buffer;
use device_model::virtio::queue::{
    Descriptor, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
};
use device_model::virtio::{feature, BlockBackend, STATUS_DEVICE_NEEDS_RESET};
use util::aio::AioEngine;

const HEADER: u64 = DATA + 0x10_0000;
const STATUS: u64 = DATA + 0x10_0100;
const OUTSIDE: u64 = 0x1_0000_0000;
const DISK_SECTORS: u64 = 256;

fn header(rig: &Rig, at: u64, request_type: u32, sector: u64) {
    let h = RequestHeader {
        request_type,
        reserved: 0,
        sector,
    };
    rig.mem.write_obj(&h, at).unwrap();
}

/// Posts `chain`, whose status byte is at `STATUS`, and returns (status byte, used length).
fn answer(rig: &mut Rig, chain: &[Buffer]) -> (u8, u32) {
    rig.mem.write_obj(&0xeeu8, STATUS).unwrap();
    let head = rig.driver.post(chain).unwrap();
    rig.driver.kick().unwrap();
    let c = rig.wait_for(head);
    (rig.mem.read_obj(STATUS).unwrap(), c.len)
}

fn assert_still_serves(rig: &mut Rig, what: &str) {
    let (status, data) = rig.read(0, 1024);
    assert_eq!(status, VIRTIO_BLK_S_OK, "after {what}");
    assert!(data.iter().all(|&b| b == 0x3c), "after {what}");
}

fn wait_needs_reset(rig: &mut Rig, what: &str, interrupts_before: u64) {
    let deadline = Instant::now() + TIMEOUT;
    while rig.status() & STATUS_DEVICE_NEEDS_RESET == 0
        || rig.driver.config_interrupts() == interrupts_before
    {
        assert!(
            Instant::now() < deadline,
            "{what}: no reset request with a configuration interrupt"
        );
        rig.driver
            .wait_interrupt(Duration::from_millis(50))
            .unwrap();
    }
    let config = rig.config;
    rig.driver.reinitialise(config).unwrap();
    assert_eq!(
        rig.status() & STATUS_DEVICE_NEEDS_RESET,
        0,
        "{what}: reset clears it"
    );
    assert_still_serves(rig, what);
}

fn request_errors(rig: &mut Rig) {
    let status = buf(STATUS, 1, true);
    let cases: Vec<(&str, u32, u64, Vec<Buffer>, u8)> = vec![
        (
            "data outside guest RAM",
            VIRTIO_BLK_T_IN,
            0,
            vec![buf(HEADER, 16, false), buf(OUTSIDE, 512, true), status],
            VIRTIO_BLK_S_IOERR,
        ),
        (
            "data crossing the end of guest RAM",
            VIRTIO_BLK_T_OUT,
            0,
            vec![buf(HEADER, 16, false), buf(RAM - 512, 4096, false), status],
            VIRTIO_BLK_S_IOERR,
        ),
        (
            "header outside guest RAM",
            VIRTIO_BLK_T_IN,
            0,
            vec![buf(OUTSIDE, 16, false), buf(DATA, 512, true), status],
            VIRTIO_BLK_S_IOERR,
        ),
        (
            "short header",
            VIRTIO_BLK_T_IN,
            0,
            vec![buf(HEADER, 8, false), buf(DATA, 512, true), status],
            VIRTIO_BLK_S_IOERR,
        ),
        (
            "read into device-readable data",
            VIRTIO_BLK_T_IN,
            0,
            vec![buf(HEADER, 16, false), buf(DATA, 512, false), status],
            VIRTIO_BLK_S_IOERR,
        ),
        (
            "write from device-writable data",
            VIRTIO_BLK_T_OUT,
            0,
            vec![buf(HEADER, 16, false), buf(DATA, 512, true), status],
            VIRTIO_BLK_S_IOERR,
        ),
        (
            "readable descriptor after a writable one",
            VIRTIO_BLK_T_IN,
            0,
            vec![
                buf(HEADER, 16, false),
                buf(DATA, 512, true),
                buf(DATA + 512, 512, false),
                status,
            ],
            VIRTIO_BLK_S_IOERR,
        ),
        (
            "read past the end of the disk",
            VIRTIO_BLK_T_IN,
            DISK_SECTORS - 1,
            vec![buf(HEADER, 16, false), buf(DATA, 1024, true), status],
            VIRTIO_BLK_S_IOERR,
        ),
        (
            "write past the end of the disk",
            VIRTIO_BLK_T_OUT,
            DISK_SECTORS,
            vec![buf(HEADER, 16, false), buf(DATA, 512, false), status],
            VIRTIO_BLK_S_IOERR,
        ),
        (
            "sector overflowing 64 bits",
            VIRTIO_BLK_T_IN,
            u64::MAX,
            vec![buf(HEADER, 16, false), buf(DATA, 512, true), status],
            VIRTIO_BLK_S_IOERR,
        ),
        (
            "partial sector",
            VIRTIO_BLK_T_IN,
            0,
            vec![buf(HEADER, 16, false), buf(DATA, 100, true), status],
            VIRTIO_BLK_S_IOERR,
        ),
        (
            "unknown request type",
            99,
            0,
            vec![buf(HEADER, 16, false), status],
            VIRTIO_BLK_S_UNSUPP,
        ),
    ];
    for (what, request_type, sector, chain, expected) in cases {
        header(rig, HEADER, request_type, sector);
        let (got, len) = answer(rig, &chain);
        assert_eq!(got, expected, "{what}");
        assert_eq!(len, 1, "{what}: only the status byte was written");
        assert_still_serves(rig, what);
    }

    // A status byte the device may not write: the chain comes back unanswered.
    header(rig, HEADER, VIRTIO_BLK_T_IN, 0);
    let chain = [
        buf(HEADER, 16, false),
        buf(DATA, 512, true),
        buf(STATUS, 1, false),
    ];
    let (got, len) = answer(rig, &chain);
    assert_eq!((got, len), (0xee, 0), "read-only status byte");
    assert_still_serves(rig, "read-only status byte");

    // A status byte outside guest RAM: likewise.
    let head = rig
        .driver
        .post(&[buf(HEADER, 16, false), buf(OUTSIDE, 1, true)])
        .unwrap();
    rig.driver.kick().unwrap();
    assert_eq!(rig.wait_for(head).len, 0, "status outside guest RAM");
    assert_still_serves(rig, "status outside guest RAM");
}

fn desc(addr: u64, len: u32, flags: u16, next: u16) -> Descriptor {
    Descriptor {
        addr,
        len,
        flags,
        next,
    }
}

fn queue_errors(rig: &mut Rig) {
    header(rig, HEADER, VIRTIO_BLK_T_IN, 0);
    let size = rig.driver.queue_size();

    rig.driver
        .post_raw(
            0,
            &[
                (0, desc(HEADER, 16, VIRTQ_DESC_F_NEXT, 1)),
                (
                    1,
                    desc(DATA, 512, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 0),
                ),
            ],
        )
        .unwrap();
    let before = rig.driver.config_interrupts();
    rig.driver.force_kick().unwrap();
    wait_needs_reset(rig, "a chain that loops", before);

    rig.driver
        .post_raw(0, &[(0, desc(HEADER, 16, VIRTQ_DESC_F_NEXT, size + 3))])
        .unwrap();
    let before = rig.driver.config_interrupts();
    rig.driver.force_kick().unwrap();
    wait_needs_reset(rig, "a next index outside the table", before);

    rig.driver.post_raw(size + 1, &[]).unwrap();
    let before = rig.driver.config_interrupts();
    rig.driver.force_kick().unwrap();
    wait_needs_reset(rig, "a head outside the table", before);

    rig.driver
        .post_raw(0, &[(0, desc(HEADER, 24, VIRTQ_DESC_F_INDIRECT, 0))])
        .unwrap();
    let before = rig.driver.config_interrupts();
    rig.driver.force_kick().unwrap();
    wait_needs_reset(rig, "an indirect table of 24 bytes", before);

    rig.driver
        .post_raw(0, &[(0, desc(OUTSIDE, 64, VIRTQ_DESC_F_INDIRECT, 0))])
        .unwrap();
    let before = rig.driver.config_interrupts();
    rig.driver.force_kick().unwrap();
    wait_needs_reset(rig, "an indirect table outside guest RAM", before);

    rig.driver.set_avail_idx(size + 5).unwrap();
    let before = rig.driver.config_interrupts();
    rig.driver.force_kick().unwrap();
    wait_needs_reset(rig, "avail index beyond a queue's worth", before);

    let head = rig
        .driver
        .submit(VIRTIO_BLK_T_IN, 0, &[buf(DATA, 512, true)])
        .unwrap();
    rig.driver.post_raw(head, &[]).unwrap();
    let before = rig.driver.config_interrupts();
    rig.driver.force_kick().unwrap();
    wait_needs_reset(rig, "a head offered twice", before);
}

#[test]
fn malformed_requests_end_in_error_status_on_every_engine() {
    for (aio, direct) in MODES {
        let disk = TempDisk::new(&vec![0x3c; (DISK_SECTORS * 512) as usize]);
        let mut rig = Rig::with_disk(&disk, aio, direct, 64);
        request_errors(&mut rig);
        assert!(
            disk.contents().iter().all(|&b| b == 0x3c),
            "{aio}: disk unchanged"
        );
    }
}

#[test]
fn broken_queues_need_a_reset_and_the_device_recovers_on_every_engine() {
    for (aio, direct) in MODES {
        let disk = TempDisk::new(&vec![0x3c; (DISK_SECTORS * 512) as usize]);
        let mut rig = Rig::with_disk(&disk, aio, direct, 64);
        queue_errors(&mut rig);
    }
}

/// A read-only backend whose descriptor is open read-write: the kernel would take a write,
/// so only the device's own read-only check can refuse it. It takes no image lock: the
/// hot-replace test opens it while the slot's read-write backend still holds the image.
fn readonly_backend_on_a_writable_fd(
    disk: &TempDisk,
    aio: AioEngine,
    direct: bool,
) -> BlockBackend {
    let mut config = disk.config(aio, direct);
    config.readonly = true;
    config.locking = util::file::Locking::Off;
    let mut options = OpenOptions::new();
    options.read(true).write(true);
    if direct {
        options.custom_flags(libc::O_DIRECT);
    }
    let file = options.open(&disk.path).unwrap();
    BlockBackend::from_file(file, &config).unwrap()
}

/// Writes to a read-only drive are refused by the device, not by the kernel: the backing
/// descriptor is writable. Both ways a drive is read-only to a running guest: offered
/// `VIRTIO_BLK_F_RO` from the start, and hot-replaced into a slot the driver negotiated
/// read-write (the features cannot change under a running driver, so writes get `IOERR`).
#[test]
fn writes_to_a_readonly_disk_fail_on_every_engine() {
    for (aio, direct) in MODES {
        let disk = TempDisk::new(&vec![0x3c; (DISK_SECTORS * 512) as usize]);
        let backend = readonly_backend_on_a_writable_fd(&disk, aio, direct);
        let mut rig = Rig::new(
            Some(backend),
            device_model::virtio::driver::DriverConfig::new(common::DRIVER_BASE, 64),
        );
        assert_ne!(
            rig.driver.features() & feature(VIRTIO_BLK_F_RO),
            0,
            "{aio}: RO offered"
        );
        assert_eq!(rig.write(0, &[0u8; 512]), VIRTIO_BLK_S_IOERR, "{aio}");
        assert_still_serves(&mut rig, "a write to a read-only disk");
        assert!(
            disk.contents().iter().all(|&b| b == 0x3c),
            "{aio}: disk unchanged"
        );
    }
}

#[test]
fn writes_to_a_readonly_disk_hot_replaced_into_a_read_write_slot_fail_on_every_engine() {
    for (aio, direct) in MODES {
        let disk = TempDisk::new(&vec![0x3c; (DISK_SECTORS * 512) as usize]);
        let mut rig = Rig::with_disk(&disk, aio, direct, 64);
        assert_eq!(
            rig.driver.features() & feature(VIRTIO_BLK_F_RO),
            0,
            "{aio}: read-write slot"
        );
        assert_eq!(rig.write(4, &[0x11; 512]), VIRTIO_BLK_S_OK, "{aio}");
        let backend = readonly_backend_on_a_writable_fd(&disk, aio, direct);
        rig.slot.replace_backend(Some(backend)).unwrap();
        assert_eq!(rig.write(4, &[0x22; 512]), VIRTIO_BLK_S_IOERR, "{aio}");
        assert_still_serves(&mut rig, "a write to a read-only disk");
        let contents = disk.contents();
        assert!(
            contents[4 * 512..5 * 512].iter().all(|&b| b == 0x11),
            "{aio}: the refused write left no trace"
        );
    }
}

/// Random descriptor tables and avail rings, half plausible and half garbage: every offered
/// chain is answered or the device asks for a reset, and after a reset it serves again.
#[test]
fn random_rings_never_stop_the_device() {
    use common::Rng;
    for (aio, direct) in [
        (util::aio::AioEngine::Off, false),
        (util::aio::AioEngine::IoUring, true),
    ] {
        let disk = TempDisk::new(&vec![0x3c; (DISK_SECTORS * 512) as usize]);
        let mut rig = Rig::with_disk(&disk, aio, direct, 16);
        let mut rng = Rng(0xdead_beef);
        let types = [0u32, 1, 4, 8, 11, 13, 99];
        for round in 0..300 {
            header(
                &rig,
                HEADER,
                types[rng.below(7) as usize],
                rng.below(DISK_SECTORS + 2),
            );
            let table: Vec<(u16, Descriptor)> = (0..16u16)
                .map(|i| {
                    let plausible = rng.below(2) == 0;
                    let addr = match rng.below(4) {
                        0 => HEADER,
                        1 => DATA + rng.below(64) * 512,
                        2 if plausible => STATUS,
                        _ => rng.next() % (2 * RAM),
                    };
                    let len = if plausible {
                        [16, 512, 1, 4096][rng.below(4) as usize]
                    } else {
                        rng.next() as u32
                    };
                    let flags = if plausible {
                        rng.below(4) as u16
                    } else {
                        rng.next() as u16
                    };
                    let next = if plausible {
                        rng.below(16) as u16
                    } else {
                        rng.next() as u16
                    };
                    (i, desc(addr, len, flags, next))
                })
                .collect();
            let offered = 1 + rng.below(4) as usize;
            for k in 0..offered {
                let head = if rng.below(8) == 0 {
                    rng.next() as u16
                } else {
                    rng.below(16) as u16
                };
                let entries: &[(u16, Descriptor)] = if k == 0 { &table } else { &[] };
                rig.driver.post_raw(head, entries).unwrap();
            }
            rig.driver.force_kick().unwrap();
            let deadline = Instant::now() + TIMEOUT;
            let mut answered = 0;
            let mut done = Vec::new();
            loop {
                answered += rig.driver.poll(&mut done).unwrap();
                let reset = rig.status() & STATUS_DEVICE_NEEDS_RESET != 0;
                if answered >= offered || reset {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{aio} round {round}: chains left unanswered"
                );
                rig.driver
                    .wait_interrupt(Duration::from_millis(10))
                    .unwrap();
            }
            let config = rig.config;
            rig.driver.reinitialise(config).unwrap();
            let (status, _) = rig.read(0, 512);
            assert_eq!(
                status, VIRTIO_BLK_S_OK,
                "{aio} round {round}: device still serves"
            );
        }
    }
}
