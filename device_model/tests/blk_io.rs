//! virtio-blk I/O through the real device code and every real engine, checked byte for byte
//! against a model of the disk.

mod common;

use std::time::Duration;

use common::{buf, Rig, Rng, TempDisk, DATA, DRIVER_BASE, MODES, TIMEOUT};
use device_model::virtio::block::request::{
    DiscardSegment, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
};
use device_model::virtio::block::{VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_WRITE_ZEROES};
use device_model::virtio::driver::{Buffer, DriverConfig, DriverError};
use device_model::virtio::{feature, BlockBackend, BlockBackendConfig, VIRTIO_F_RING_EVENT_IDX};
use util::aio::{AioEngine, DetectZeroes, Discard};

const SECTOR: u64 = 512;
const MAX_SECTORS: u64 = 64;

#[derive(Debug)]
enum Op {
    Read { sector: u64, sectors: u64, at: u64 },
    Write { sector: u64, sectors: u64, at: u64 },
    Flush,
    GetId { at: u64 },
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.0 + b.1 && b.0 < a.0 + a.1
}

/// Splits `sectors` starting at guest address `at` into 1..=3 buffers at sector boundaries.
fn split(rng: &mut Rng, at: u64, sectors: u64, writable: bool) -> Vec<Buffer> {
    let pieces = 1 + rng.below(3.min(sectors));
    let mut cuts: Vec<u64> = (0..pieces - 1)
        .map(|_| 1 + rng.below(sectors - 1))
        .collect();
    cuts.push(0);
    cuts.push(sectors);
    cuts.sort();
    cuts.dedup();
    cuts.windows(2)
        .map(|w| {
            buf(
                at + w[0] * SECTOR,
                ((w[1] - w[0]) * SECTOR) as u32,
                writable,
            )
        })
        .collect()
}

/// Rounds of up to 24 concurrent requests with disjoint ranges; reads are compared with the
/// model, writes update it when they complete; the file is compared at the end.
fn random_io(aio: AioEngine, direct: bool, features: u64, seed: u64) {
    let disk_sectors = 16384u64;
    let mut rng = Rng(seed);
    let mut model = rng.bytes((disk_sectors * SECTOR) as usize);
    let disk = TempDisk::new(&model);
    let backend = BlockBackend::open(&disk.config(aio, direct)).unwrap();
    let config = DriverConfig {
        features,
        ..DriverConfig::new(DRIVER_BASE, 128)
    };
    let mut rig = Rig::new(Some(backend), config);
    assert_eq!(
        rig.driver.features() & !features,
        0,
        "only the features asked for"
    );
    assert_eq!(rig.driver.capacity(), disk_sectors);
    let serial = b"virtio-test-serial-0";
    for round in 0..160 {
        if round == 80 {
            // The second half through indirect tables, after a device reset.
            let config = DriverConfig {
                indirect: true,
                ..config
            };
            rig.driver.reinitialise(config).unwrap();
        }
        let count = 1 + rng.below(24);
        let mut ops = Vec::new();
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for i in 0..count {
            let at = DATA + i * MAX_SECTORS * SECTOR;
            let pick = rng.below(100);
            let op = if pick < 8 {
                Op::Flush
            } else if pick < 15 {
                Op::GetId { at }
            } else {
                let sectors = 1 + rng.below(MAX_SECTORS);
                let sector = rng.below(disk_sectors - sectors + 1);
                if ranges.iter().any(|&r| overlaps(r, (sector, sectors))) {
                    Op::Flush
                } else {
                    ranges.push((sector, sectors));
                    if pick < 58 {
                        Op::Read {
                            sector,
                            sectors,
                            at,
                        }
                    } else {
                        Op::Write {
                            sector,
                            sectors,
                            at,
                        }
                    }
                }
            };
            ops.push(op);
        }
        let mut heads = Vec::new();
        let mut written = Vec::new();
        for op in &ops {
            let head = match *op {
                Op::Read {
                    sector,
                    sectors,
                    at,
                } => {
                    rig.mem
                        .write(&vec![0xee; (sectors * SECTOR) as usize], at)
                        .unwrap();
                    let bufs = split(&mut rng, at, sectors, true);
                    rig.driver.submit(VIRTIO_BLK_T_IN, sector, &bufs).unwrap()
                }
                Op::Write {
                    sector,
                    sectors,
                    at,
                } => {
                    let data = rng.bytes((sectors * SECTOR) as usize);
                    rig.mem.write(&data, at).unwrap();
                    written.push((sector, data));
                    let bufs = split(&mut rng, at, sectors, false);
                    rig.driver.submit(VIRTIO_BLK_T_OUT, sector, &bufs).unwrap()
                }
                Op::Flush => rig.driver.submit(VIRTIO_BLK_T_FLUSH, 0, &[]).unwrap(),
                Op::GetId { at } => {
                    rig.mem.write(&[0xff; 20], at).unwrap();
                    rig.driver
                        .submit(VIRTIO_BLK_T_GET_ID, 0, &[buf(at, 20, true)])
                        .unwrap()
                }
            };
            heads.push(head);
        }
        rig.driver.kick().unwrap();
        let mut done = Vec::new();
        rig.driver.wait(ops.len(), TIMEOUT, &mut done).unwrap();
        assert_eq!(done.len(), ops.len());
        for (op, head) in ops.iter().zip(&heads) {
            let c = done.iter().find(|c| c.head == *head).unwrap();
            assert_eq!(
                c.status,
                Some(VIRTIO_BLK_S_OK),
                "{aio} direct={direct} {op:?}"
            );
            match *op {
                Op::Read {
                    sector,
                    sectors,
                    at,
                } => {
                    let len = (sectors * SECTOR) as usize;
                    let mut got = vec![0; len];
                    rig.mem.read(&mut got, at).unwrap();
                    let start = (sector * SECTOR) as usize;
                    assert!(
                        got == model[start..start + len],
                        "{aio} read {op:?} differs"
                    );
                    assert_eq!(c.len as usize, len + 1);
                }
                Op::GetId { at } => {
                    assert_eq!(rig.driver.serial_at(at).unwrap(), serial);
                    assert_eq!(c.len, 21);
                }
                _ => assert_eq!(c.len, 1),
            }
        }
        for (sector, data) in written {
            let start = (sector * SECTOR) as usize;
            model[start..start + data.len()].copy_from_slice(&data);
        }
    }
    assert_eq!(
        rig.run(VIRTIO_BLK_T_FLUSH, 0, &[]).status,
        Some(VIRTIO_BLK_S_OK)
    );
    assert!(
        disk.contents() == model,
        "{aio} direct={direct}: file differs from model"
    );
}

#[test]
fn random_io_matches_the_model_on_every_engine() {
    for (i, (aio, direct)) in MODES.into_iter().enumerate() {
        random_io(aio, direct, u64::MAX, 0x9e37_79b9_7f4a_7c15 ^ i as u64);
    }
}

/// Without EVENT_IDX the device and driver fall back to the ring flags.
#[test]
fn random_io_without_event_idx() {
    let features = !feature(VIRTIO_F_RING_EVENT_IDX);
    random_io(AioEngine::IoUring, true, features, 5);
    random_io(AioEngine::Off, false, features, 6);
}

/// A `QueueNotify` register write (no ioeventfd registered) reaches the device too.
#[test]
fn notify_through_the_register_file() {
    let disk = TempDisk::new(&vec![9u8; 4096]);
    let mut rig = Rig::with_disk(&disk, AioEngine::IoUring, true, 64);
    let head = rig
        .driver
        .submit(VIRTIO_BLK_T_IN, 1, &[buf(DATA, 512, true)])
        .unwrap();
    rig.driver
        .write_reg(device_model::virtio::mmio::reg::QUEUE_NOTIFY, 0);
    assert_eq!(rig.wait_for(head).status, Some(VIRTIO_BLK_S_OK));
    let mut data = [0u8; 512];
    rig.mem.read(&mut data, DATA).unwrap();
    assert_eq!(data, [9u8; 512]);
}

/// Many more requests than the ring holds, keeping it full: 600 writes then 600 reads.
#[test]
fn deep_queue_keeps_the_ring_full_on_every_engine() {
    const REQUESTS: u64 = 600;
    const SECTORS: u64 = 8;
    for (aio, direct) in MODES {
        let mut rng = Rng(42);
        let disk = TempDisk::new(&vec![0u8; (REQUESTS * SECTORS * SECTOR) as usize]);
        let mut rig = Rig::with_disk(&disk, aio, direct, 16);
        let payload: Vec<Vec<u8>> = (0..REQUESTS)
            .map(|_| rng.bytes((SECTORS * SECTOR) as usize))
            .collect();
        let buffer_at = |b: u64| DATA + b * SECTORS * SECTOR;
        for pass in [VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_IN] {
            let mut free_buffers: Vec<u64> = (0..32).collect();
            let mut owner = std::collections::HashMap::new();
            let (mut next, mut finished, mut max_in_flight) = (0u64, 0u64, 0usize);
            let mut done = Vec::new();
            while finished < REQUESTS {
                while next < REQUESTS {
                    let b = *free_buffers.last().unwrap();
                    let len = (SECTORS * SECTOR) as u32;
                    let writable = pass == VIRTIO_BLK_T_IN;
                    if !writable {
                        rig.mem
                            .write(&payload[next as usize], buffer_at(b))
                            .unwrap();
                    }
                    let data = [buf(buffer_at(b), len, writable)];
                    match rig.driver.submit(pass, next * SECTORS, &data) {
                        Ok(head) => {
                            free_buffers.pop();
                            owner.insert(head, (b, next));
                            next += 1;
                        }
                        Err(DriverError::RingFull) => break,
                        Err(e) => panic!("{e}"),
                    }
                }
                max_in_flight = max_in_flight.max(rig.driver.in_flight());
                rig.driver.kick().unwrap();
                done.clear();
                rig.driver.wait(1, TIMEOUT, &mut done).unwrap();
                for c in &done {
                    assert_eq!(c.status, Some(VIRTIO_BLK_S_OK), "{aio} direct={direct}");
                    let (b, index) = owner.remove(&c.head).unwrap();
                    if pass == VIRTIO_BLK_T_IN {
                        let mut got = vec![0; (SECTORS * SECTOR) as usize];
                        rig.mem.read(&mut got, buffer_at(b)).unwrap();
                        assert!(got == payload[index as usize], "{aio}: request {index}");
                    }
                    free_buffers.push(b);
                    finished += 1;
                }
            }
            assert_eq!(
                max_in_flight, 5,
                "a 16-entry ring holds five 3-descriptor chains"
            );
        }
        assert!(disk.contents() == payload.concat());
    }
}

/// A batch of 32 reads kicked once is answered with a single interrupt (engine off: the whole
/// batch completes in one submit, so one reap and one used-ring update).
#[test]
fn one_interrupt_per_batch_with_event_idx() {
    let disk = TempDisk::new(&vec![7u8; 1 << 20]);
    let mut rig = Rig::with_disk(&disk, AioEngine::Off, false, 128);
    for i in 0..32u64 {
        let at = DATA + i * 4096;
        rig.driver
            .submit(VIRTIO_BLK_T_IN, i * 8, &[buf(at, 4096, true)])
            .unwrap();
    }
    assert!(rig.driver.kick().unwrap());
    let deadline = std::time::Instant::now() + TIMEOUT;
    let mut done = Vec::new();
    while done.len() < 32 {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
        // Poll the used ring without consuming interrupts.
        rig.driver.poll(&mut done).unwrap();
    }
    assert_eq!(rig.driver.in_flight(), 0);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        rig.irq.read().unwrap(),
        1,
        "exactly one interrupt for the batch"
    );
}

#[test]
fn discard_and_write_zeroes_where_the_engine_supports_them() {
    for (aio, direct) in MODES {
        let disk = TempDisk::new(&vec![0x5au8; 1 << 20]);
        let config = BlockBackendConfig {
            discard: Discard::Unmap,
            detect_zeroes: DetectZeroes::On,
            ..disk.config(aio, direct)
        };
        let backend = BlockBackend::open(&config).unwrap();
        let mut rig = Rig::new(Some(backend), DriverConfig::new(DRIVER_BASE, 64));
        let features = rig.driver.features();
        let supported = aio != AioEngine::Native;
        assert_eq!(
            features & feature(VIRTIO_BLK_F_DISCARD) != 0,
            supported,
            "{aio}"
        );
        assert_eq!(
            features & feature(VIRTIO_BLK_F_WRITE_ZEROES) != 0,
            supported,
            "{aio}"
        );
        for (request_type, sector) in [
            (VIRTIO_BLK_T_WRITE_ZEROES, 16u64),
            (VIRTIO_BLK_T_DISCARD, 64),
        ] {
            let seg = DiscardSegment {
                sector,
                num_sectors: 16,
                flags: 0,
            };
            rig.mem.write_obj(&seg, DATA + 0x10000).unwrap();
            let c = rig.run(request_type, 0, &[buf(DATA + 0x10000, 16, false)]);
            if !supported {
                assert_eq!(c.status, Some(VIRTIO_BLK_S_UNSUPP), "{aio}");
                continue;
            }
            assert_eq!(c.status, Some(VIRTIO_BLK_S_OK), "{aio} type {request_type}");
            let (status, data) = rig.read(sector - 1, 18 * 512);
            assert_eq!(status, VIRTIO_BLK_S_OK);
            assert!(
                data[..512].iter().all(|&b| b == 0x5a),
                "{aio}: before the range"
            );
            assert!(
                data[512..17 * 512].iter().all(|&b| b == 0),
                "{aio}: the range"
            );
            assert!(
                data[17 * 512..].iter().all(|&b| b == 0x5a),
                "{aio}: after the range"
            );
        }
    }
}

#[test]
fn backend_open_errors_are_clear() {
    let missing = std::env::temp_dir().join("virtio-blk-test-no-such-file.img");
    let mut config = TempDisk::new(&[0; 512]).config(AioEngine::IoUring, true);
    config.path = missing.clone();
    let err = BlockBackend::open(&config).unwrap_err().to_string();
    assert!(err.contains("virtio-blk-test-no-such-file.img"), "{err}");
    let disk = TempDisk::new(&[0; 4096]);
    let err = BlockBackend::open(&disk.config(AioEngine::Native, false))
        .unwrap_err()
        .to_string();
    assert!(err.contains("aio=native needs direct=on"), "{err}");
    let backend = BlockBackend::open(&disk.config(AioEngine::Native, true)).unwrap();
    assert_eq!(backend.capacity_sectors(), 8);
}
