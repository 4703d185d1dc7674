//! Hot-replace on a block slot: empty slots are disks of capacity 0, putting a backend in or
//! taking it out rewrites the configuration space with a configuration-change interrupt, and
//! taking out a backend with requests in flight drains them and loses no completed write.

mod common;

use std::time::{Duration, Instant};

use common::{buf, throttle_device_thread, Rig, Rng, TempDisk, DATA, DRIVER_BASE, MODES, TIMEOUT};
use device_model::virtio::block::request::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_OUT,
};
use device_model::virtio::block::{VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_WRITE_ZEROES};
use device_model::virtio::driver::DriverConfig;
use device_model::virtio::mmio::reg;
use device_model::virtio::{feature, BlockBackend};
use util::testing::LoopDevice;

const SECTORS: u64 = 2048;

fn wait_config_interrupts(rig: &mut Rig, count: u64) {
    let deadline = Instant::now() + TIMEOUT;
    while rig.driver.config_interrupts() < count {
        assert!(
            Instant::now() < deadline,
            "no configuration-change interrupt"
        );
        rig.driver
            .wait_interrupt(Duration::from_millis(50))
            .unwrap();
    }
}

#[test]
fn an_empty_slot_is_a_disk_of_capacity_zero() {
    let mut rig = Rig::new(None, DriverConfig::new(DRIVER_BASE, 64));
    assert_eq!(rig.driver.capacity(), 0);
    let offered = feature(VIRTIO_BLK_F_DISCARD) | feature(VIRTIO_BLK_F_WRITE_ZEROES);
    assert_eq!(rig.driver.features() & offered, offered);
    assert_eq!(rig.read(0, 512).0, VIRTIO_BLK_S_IOERR);
    assert_eq!(rig.write(0, &[1; 512]), VIRTIO_BLK_S_IOERR);
    assert_eq!(
        rig.run(VIRTIO_BLK_T_FLUSH, 0, &[]).status,
        Some(VIRTIO_BLK_S_OK)
    );
    let c = rig.run(VIRTIO_BLK_T_GET_ID, 0, &[buf(DATA, 20, true)]);
    assert_eq!(c.status, Some(VIRTIO_BLK_S_OK));
    assert_eq!(rig.driver.serial_at(DATA).unwrap(), b"");
    assert!(rig.slot.backend_config().is_none());
}

#[test]
fn replacing_backends_drains_in_flight_writes_on_every_engine() {
    for (aio, direct) in MODES {
        let mut rng = Rng(7);
        let first = TempDisk::new(&vec![0x11; (SECTORS * 512) as usize]);
        let second = TempDisk::new(&vec![0x22; (SECTORS * 512 / 2) as usize]);
        // The first backend is a block device over the first image, so that its I/O can be
        // throttled to keep requests in flight.
        let device = LoopDevice::attach(&first.path, None).unwrap();
        let mut first_config = first.config(aio, direct);
        first_config.path = device.path().to_path_buf();
        let mut rig = Rig::new(None, DriverConfig::new(DRIVER_BASE, 256));
        let generation = rig.driver.read_reg(reg::CONFIG_GENERATION);

        // Put a backend into the empty slot.
        let backend = BlockBackend::open(&first_config).unwrap();
        rig.slot.replace_backend(Some(backend)).unwrap();
        wait_config_interrupts(&mut rig, 1);
        assert_eq!(rig.driver.capacity(), SECTORS, "{aio}");
        assert_ne!(rig.driver.read_reg(reg::CONFIG_GENERATION), generation);
        assert_eq!(rig.write(5, &[0x33; 512]), VIRTIO_BLK_S_OK, "{aio}");
        let (status, data) = rig.read(4, 1536);
        assert_eq!(status, VIRTIO_BLK_S_OK);
        assert!(data[..512].iter().all(|&b| b == 0x11));
        assert!(data[512..1024].iter().all(|&b| b == 0x33));

        // 64 writes in flight when the backend is taken out: the device thread's I/O to the
        // disk is throttled to 100 requests per second.
        let throttle = throttle_device_thread(&rig, &device, 100);
        let mut expected = first.contents();
        expected[5 * 512..6 * 512].fill(0x33);
        let mut heads = Vec::new();
        for i in 0..64u64 {
            let data = rng.bytes(4096);
            let at = DATA + i * 4096;
            rig.mem.write(&data, at).unwrap();
            let sector = 64 + i * 16;
            let start = (sector * 512) as usize;
            expected[start..start + 4096].copy_from_slice(&data);
            heads.push(
                rig.driver
                    .submit(VIRTIO_BLK_T_OUT, sector, &[buf(at, 4096, false)])
                    .unwrap(),
            );
        }
        rig.driver.kick().unwrap();
        let mut done = Vec::new();
        let in_flight = rig.wait_taken(64, &mut done);
        if throttle.is_some() && direct && aio != util::aio::AioEngine::Off {
            // The asynchronous engines hold the batch in the kernel's throttle queue.
            assert!(in_flight >= 32, "{aio}: only {in_flight} in flight");
        }
        rig.slot.replace_backend(None).unwrap();
        assert_eq!(rig.slot.in_flight().unwrap(), 0);
        drop(throttle);
        rig.driver.poll(&mut done).unwrap();
        assert_eq!(done.len(), 64, "{aio}: every drained request was answered");
        assert!(
            done.iter().all(|c| c.status == Some(VIRTIO_BLK_S_OK)),
            "{aio}"
        );
        drop(device);
        assert!(
            first.contents() == expected,
            "{aio}: a completed write was lost"
        );
        wait_config_interrupts(&mut rig, 2);
        assert_eq!(rig.driver.capacity(), 0);
        assert_eq!(rig.read(0, 512).0, VIRTIO_BLK_S_IOERR, "{aio}: empty again");

        // Another backend into the same slot.
        let backend = BlockBackend::open(&second.config(aio, direct)).unwrap();
        rig.slot.replace_backend(Some(backend)).unwrap();
        wait_config_interrupts(&mut rig, 3);
        assert_eq!(rig.driver.capacity(), SECTORS / 2);
        let (status, data) = rig.read(SECTORS / 2 - 1, 512);
        assert_eq!(status, VIRTIO_BLK_S_OK, "{aio}");
        assert!(data.iter().all(|&b| b == 0x22));
        assert_eq!(
            rig.read(SECTORS / 2, 512).0,
            VIRTIO_BLK_S_IOERR,
            "past the new end"
        );
    }
}

/// Swapping backends from another thread (as QMP does) while the guest keeps 32 requests in
/// flight: no deadlock, no lost request, every request answered OK.
#[test]
fn replacing_under_load_answers_every_request() {
    let disks = [
        TempDisk::new(&vec![0x44; (SECTORS * 512) as usize]),
        TempDisk::new(&vec![0x44; (SECTORS * 512) as usize]),
    ];
    let (aio, direct) = (util::aio::AioEngine::IoUring, true);
    let first = BlockBackend::open(&disks[0].config(aio, direct)).unwrap();
    let mut rig = Rig::new(Some(first), DriverConfig::new(DRIVER_BASE, 128));
    let slot = rig.slot.clone();
    let configs = [disks[0].config(aio, direct), disks[1].config(aio, direct)];
    let swapper = std::thread::spawn(move || {
        for i in 0..40 {
            let backend = BlockBackend::open(&configs[(i + 1) % 2]).unwrap();
            slot.replace_backend(Some(backend)).unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    let mut answered = 0;
    let mut done = Vec::new();
    let mut rng = Rng(3);
    while !swapper.is_finished() || rig.driver.in_flight() > 0 {
        while !swapper.is_finished() && rig.driver.in_flight() < 32 {
            let sector = rng.below(SECTORS - 8);
            let request = if rng.below(2) == 0 {
                VIRTIO_BLK_T_OUT
            } else {
                0
            };
            let writable = request == 0;
            let at = DATA + rng.below(64) * 4096;
            if rig
                .driver
                .submit(request, sector, &[buf(at, 4096, writable)])
                .is_err()
            {
                break;
            }
        }
        rig.driver.kick().unwrap();
        done.clear();
        rig.driver.wait(1, TIMEOUT, &mut done).unwrap();
        assert!(done.iter().all(|c| c.status == Some(VIRTIO_BLK_S_OK)));
        answered += done.len();
    }
    swapper.join().unwrap();
    assert!(answered > 0);
    assert_eq!(rig.driver.capacity(), SECTORS);
    assert_eq!(
        rig.slot.backend_config().unwrap().path,
        disks[0].path,
        "40 swaps end on the first"
    );
}
