//! Shutting a running device down, as the machine does at `quit`, SIGTERM or guest reboot:
//! with 64 writes in flight on its iothread (held there by throttling the iothread's I/O to a
//! loop device), every request is answered, the image is flushed, the iothread is joined,
//! nothing is logged at warn or above, and nothing keeps the loop or the device alive.

mod common;

use std::sync::{Arc, Mutex};

use common::{buf, throttle_device_thread, Rig, Rng, TempDisk, DATA, DRIVER_BASE, MODES, TIMEOUT};
use device_model::virtio::block::request::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_OUT};
use device_model::virtio::driver::DriverConfig;
use device_model::virtio::{BlockBackend, VirtioDevice};
use util::aio::AioEngine;
use util::testing::{LogCapture, LoopDevice, PageCacheState};

const SECTORS: u64 = 8192;
const WRITES: u64 = 64;

#[test]
fn shutdown_answers_in_flight_requests_flushes_and_frees_everything_on_every_engine() {
    let log = LogCapture::install().unwrap();
    for (aio, direct) in MODES {
        let warnings_before = log.warnings().len();
        let disk = TempDisk::new(&vec![0; (SECTORS * 512) as usize]);
        let device = LoopDevice::attach(&disk.path, None).unwrap();
        // Held open throughout: closing a block device's last descriptor writes its page cache
        // back by itself, which would hide a missing flush.
        let observer = std::fs::File::open(device.path()).unwrap();
        let mut config = disk.config(aio, direct);
        config.path = device.path().to_path_buf();
        let backend = BlockBackend::open(&config).unwrap();
        let mut rig = Rig::new(Some(backend), DriverConfig::new(DRIVER_BASE, 256));
        let weak_loop = Arc::downgrade(rig.iothread.event_loop());
        let weak_device: std::sync::Weak<Mutex<dyn VirtioDevice>> =
            Arc::downgrade(&rig.mmio.lock().unwrap().device());

        let throttle = throttle_device_thread(&rig, &device, 100);
        let mut rng = Rng(11);
        let mut expected = vec![0u8; (SECTORS * 512) as usize];
        for i in 0..WRITES {
            let data = rng.bytes(4096);
            let at = DATA + i * 4096;
            rig.mem.write(&data, at).unwrap();
            let sector = i * 64;
            let start = (sector * 512) as usize;
            expected[start..start + 4096].copy_from_slice(&data);
            rig.driver
                .submit(VIRTIO_BLK_T_OUT, sector, &[buf(at, 4096, false)])
                .unwrap();
        }
        rig.driver.kick().unwrap();
        let mut answered = Vec::new();
        let in_flight = rig.wait_taken(WRITES as usize, &mut answered);
        if throttle.is_some() && direct && aio != AioEngine::Off {
            // The asynchronous engines hold the batch in the kernel's throttle queue.
            assert!(
                in_flight >= WRITES as usize / 2,
                "{aio}: only {in_flight} in flight"
            );
        } else if !direct {
            // Buffered writes: wait until they reached the page cache, dirty.
            let left = WRITES as usize - answered.len();
            rig.driver.wait(left, TIMEOUT, &mut answered).unwrap();
            let dirty = PageCacheState::of(&observer).unwrap().dirty;
            assert!(dirty > 0, "{aio}: buffered writes left no dirty page");
        }

        rig.slot.shutdown().expect("shutdown");
        let in_flight_after = rig.slot.in_flight().unwrap();
        rig.iothread.stop();
        drop(throttle);

        // Every request was answered (buffered ones may have been collected above).
        let mut done = Vec::new();
        rig.driver.poll(&mut done).unwrap();
        assert_eq!(in_flight_after, 0, "{aio}");
        assert_eq!(
            rig.driver.in_flight(),
            0,
            "{aio}: a request was not answered"
        );
        assert!(
            done.iter().all(|c| c.status == Some(VIRTIO_BLK_S_OK)),
            "{aio} direct={direct}"
        );
        // The image was flushed: no dirty page left in the device's page cache.
        let state = PageCacheState::of(&observer).unwrap();
        assert_eq!(
            (state.dirty, state.writeback),
            (0, 0),
            "{aio} direct={direct}: the image was not flushed"
        );
        drop(rig);
        drop(observer);
        drop(device);
        assert!(
            disk.contents() == expected,
            "{aio}: a completed write was lost"
        );
        assert!(
            weak_loop.upgrade().is_none(),
            "{aio}: the loop is still alive"
        );
        assert!(
            weak_device.upgrade().is_none(),
            "{aio}: the device is still alive"
        );
        let warnings = log.warnings();
        assert_eq!(
            warnings.len(),
            warnings_before,
            "{aio} direct={direct}: logged {:?}",
            &warnings[warnings_before..]
        );
    }
}
