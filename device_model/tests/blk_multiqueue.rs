//! virtio-blk with two request queues, each on its own iothread with its own engine: the
//! feature and configuration the guest sees, random I/O on both queues at once checked against
//! a model of the disk (every engine), partial-block writes to the same blocks from both
//! queues on 4 KiB-sector storage, hot-replace, reset and shutdown with requests in flight on
//! both queues, and the drive's I/O limits holding for both queues together.

mod common;

use std::time::{Duration, Instant};

use common::{buf, throttle_device_thread, Rig, Rng, TempDisk, DATA, DRIVER_BASE, MODES, TIMEOUT};
use device_model::virtio::block::request::{
    VIRTIO_BLK_S_OK, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use device_model::virtio::block::{config, MAX_QUEUES, QUEUE_SIZE, VIRTIO_BLK_F_MQ};
use device_model::virtio::driver::{Buffer, Completion, DriverConfig};
use device_model::virtio::mmio::reg;
use device_model::virtio::{feature, Block, BlockBackend, BlockBackendConfig, VirtioError};
use util::aio::{AioEngine, Limit, ThrottleConfig};
use util::event_loop::EventLoop;
use util::testing::{LoopDevice, PageCacheState};

const SECTOR: u64 = 512;

fn two_queues(queue_size: u16) -> DriverConfig {
    DriverConfig {
        queues: 2,
        ..DriverConfig::new(DRIVER_BASE, queue_size)
    }
}

/// Nanoseconds thread `tid` of this process has run.
fn cpu_ns(tid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn the_guest_sees_mq_and_the_queue_count() {
    let event_loop = EventLoop::new().unwrap();
    for count in [0, usize::from(MAX_QUEUES) + 1] {
        let loops = vec![event_loop.clone(); count];
        assert!(
            matches!(
                Block::with_queues("bad".into(), None, loops),
                Err(VirtioError::QueueCount { .. })
            ),
            "{count} queues"
        );
    }

    let disk = TempDisk::new(&vec![0; 1 << 20]);
    let backend = BlockBackend::open(&disk.config(AioEngine::IoUring, false)).unwrap();
    let rig = Rig::with_queues(Some(backend), two_queues(64), 2);
    assert_ne!(rig.driver.features() & feature(VIRTIO_BLK_F_MQ), 0);
    assert_eq!(
        rig.driver.read_config::<2>(config::NUM_QUEUES as u64),
        [2, 0]
    );
    assert_eq!(rig.slot.num_queues(), 2);
    for (queue, max) in [
        (0, u32::from(QUEUE_SIZE)),
        (1, u32::from(QUEUE_SIZE)),
        (2, 0),
    ] {
        rig.driver.write_reg(reg::QUEUE_SEL, queue);
        assert_eq!(
            rig.driver.read_reg(reg::QUEUE_NUM_MAX),
            max,
            "queue {queue}"
        );
    }
    // Each queue and its engine belong to one thread: the other thread has none of its
    // handlers. (A call to each queue's thread runs after the activation posted before it.)
    assert_eq!(rig.slot.in_flight().unwrap(), 0);
    let names = |thread: &util::event_loop::EventLoopThread| {
        let mut names = thread.event_loop().handler_names();
        names.sort();
        names
    };
    assert_eq!(
        names(&rig.iothread),
        ["blk0-aio", "blk0-queue0", "blk0-throttle"]
    );
    assert_eq!(
        names(&rig.other_iothreads[0]),
        ["blk0-aio1", "blk0-queue1", "blk0-throttle1"]
    );
    drop(rig);

    // One queue: no MQ, and the configuration says 1.
    let rig = Rig::new(None, DriverConfig::new(DRIVER_BASE, 64));
    assert_eq!(rig.driver.features() & feature(VIRTIO_BLK_F_MQ), 0);
    assert_eq!(
        rig.driver.read_config::<2>(config::NUM_QUEUES as u64),
        [1, 0]
    );
}

/// One request of a round: its queue, what it is, and where its data is.
#[derive(Debug, Clone, Copy)]
struct Op {
    queue: u16,
    write: bool,
    sector: u64,
    sectors: u64,
    at: u64,
}

/// Posts `ops` (each on its queue), kicks both queues and waits for every answer.
fn run_round(rig: &mut Rig, ops: &[Op], rng: &mut Rng) -> Vec<(Op, Completion, Vec<u8>)> {
    let mut posted = Vec::new();
    for op in ops {
        let len = (op.sectors * SECTOR) as usize;
        let data = if op.write {
            rng.bytes(len)
        } else {
            vec![0xee; len]
        };
        rig.mem.write(&data, op.at).unwrap();
        let kind = if op.write {
            VIRTIO_BLK_T_OUT
        } else {
            VIRTIO_BLK_T_IN
        };
        let head = rig
            .driver
            .submit_to(
                op.queue,
                kind,
                op.sector,
                &[buf(op.at, len as u32, !op.write)],
            )
            .unwrap();
        posted.push((*op, head, data));
    }
    rig.driver.kick().unwrap();
    let mut done = Vec::new();
    rig.driver.wait(ops.len(), TIMEOUT, &mut done).unwrap();
    assert_eq!(done.len(), ops.len());
    posted
        .into_iter()
        .map(|(op, head, data)| {
            let c = *done
                .iter()
                .find(|c| c.queue == op.queue && c.head == head)
                .unwrap_or_else(|| panic!("{op:?} not answered on its queue"));
            (op, c, data)
        })
        .collect()
}

/// Rounds of up to 48 requests with disjoint ranges spread over both queues (both busy at
/// once); reads are compared with the model, writes update it; the file at the end.
#[test]
fn two_queues_on_two_threads_match_a_model_on_every_engine() {
    let disk_sectors = 8192u64;
    for (aio, direct) in MODES {
        let mut rng = Rng(0x51 + aio as u64);
        let mut model = rng.bytes((disk_sectors * SECTOR) as usize);
        let disk = TempDisk::new(&model);
        let backend = BlockBackend::open(&disk.config(aio, direct)).unwrap();
        let mut rig = Rig::with_queues(Some(backend), two_queues(128), 2);
        let tids: Vec<i32> = rig.iothreads().map(|t| t.tid()).collect();
        let cpu_before: Vec<u64> = tids.iter().map(|&t| cpu_ns(t)).collect();
        let mut answered_on = [0usize; 2];
        for _round in 0..60 {
            let mut ops: Vec<Op> = Vec::new();
            for i in 0..1 + rng.below(48) {
                let sectors = 1 + rng.below(32);
                let sector = rng.below(disk_sectors - sectors + 1);
                if ops
                    .iter()
                    .any(|o| o.sector < sector + sectors && sector < o.sector + o.sectors)
                {
                    continue;
                }
                ops.push(Op {
                    queue: (rng.below(2)) as u16,
                    write: rng.below(2) == 0,
                    sector,
                    sectors,
                    at: DATA + i * 32 * SECTOR,
                });
            }
            for (op, c, data) in run_round(&mut rig, &ops, &mut rng) {
                assert_eq!(c.status, Some(VIRTIO_BLK_S_OK), "{aio} {op:?}");
                answered_on[usize::from(op.queue)] += 1;
                let start = (op.sector * SECTOR) as usize;
                let len = data.len();
                if op.write {
                    model[start..start + len].copy_from_slice(&data);
                } else {
                    let mut got = vec![0; len];
                    rig.mem.read(&mut got, op.at).unwrap();
                    assert!(
                        got == model[start..start + len],
                        "{aio} direct={direct}: read {op:?} differs"
                    );
                }
            }
        }
        assert!(answered_on.iter().all(|&n| n > 100), "{answered_on:?}");
        // Both queues' threads did the work of their queue.
        for (i, &tid) in tids.iter().enumerate() {
            assert!(cpu_ns(tid) > cpu_before[i], "{aio}: thread {i} never ran");
        }
        let flush = rig.driver.submit_to(1, VIRTIO_BLK_T_FLUSH, 0, &[]).unwrap();
        rig.driver.kick().unwrap();
        let mut done = Vec::new();
        rig.driver.wait(1, TIMEOUT, &mut done).unwrap();
        assert_eq!((done[0].queue, done[0].head), (1, flush));
        assert_eq!(done[0].status, Some(VIRTIO_BLK_S_OK));
        drop(rig);
        assert!(
            disk.contents() == model,
            "{aio} direct={direct}: file differs from model"
        );
    }
}

/// On storage with 4 KiB sectors, writes of single 512-byte sectors are read-modify-writes of
/// their block: several of them to different sectors of the same blocks, from both queues at
/// once, must all land (the device serialises them across queues).
#[test]
fn partial_block_writes_from_both_queues_to_the_same_blocks_all_land() {
    let blocks = 16u64;
    let bytes = (blocks * 4096) as usize;
    for (aio, direct) in MODES.into_iter().filter(|&(_, direct)| direct) {
        let mut rng = Rng(0x4b + aio as u64);
        let mut model = rng.bytes(bytes);
        let disk = TempDisk::new(&model);
        let device = match LoopDevice::attach(&disk.path, Some(4096)) {
            Ok(device) => device,
            Err(e) => {
                eprintln!("no 4 KiB-sector loop device: {e}");
                return;
            }
        };
        let mut config = disk.config(aio, direct);
        config.path = device.path().to_path_buf();
        let backend = BlockBackend::open(&config).unwrap();
        assert_eq!(backend.alignment().offset, 4096, "{aio}");
        let mut rig = Rig::with_queues(Some(backend), two_queues(128), 2);
        for _round in 0..30 {
            // Up to 8 sectors of each of two blocks, each sector written once, alternating
            // between the queues.
            let mut ops = Vec::new();
            for block in [rng.below(blocks), rng.below(blocks)] {
                let mut sectors: Vec<u64> = (0..8).collect();
                for i in 0..1 + rng.below(8) {
                    let pick = sectors.remove(rng.below(sectors.len() as u64) as usize);
                    let sector = block * 8 + pick;
                    if ops.iter().any(|o: &Op| o.sector == sector) {
                        continue;
                    }
                    ops.push(Op {
                        queue: (ops.len() % 2) as u16,
                        write: true,
                        sector,
                        sectors: 1,
                        at: DATA + (ops.len() as u64) * 4096 + (i % 3) * SECTOR,
                    });
                }
            }
            for (op, c, data) in run_round(&mut rig, &ops, &mut rng) {
                assert_eq!(c.status, Some(VIRTIO_BLK_S_OK), "{aio} {op:?}");
                let start = (op.sector * SECTOR) as usize;
                model[start..start + data.len()].copy_from_slice(&data);
            }
        }
        drop(rig);
        drop(device);
        assert!(
            disk.contents() == model,
            "{aio}: a partial write was lost between the queues"
        );
    }
}

/// A disk on a loop device whose I/O from the rig's threads can be throttled, a rig with two
/// queues on two threads in front of it, and 32 writes posted on each queue (kicked).
struct Loaded {
    // Dropped in this order: the device, then the loop device, then the image.
    rig: Rig,
    device: LoopDevice,
    disk: TempDisk,
    expected: Vec<u8>,
    posted: Vec<(u16, u16)>,
    /// Writes the loop device had completed before these were posted.
    writes_before: u64,
}

/// Writes the block device `device` has completed (`/sys/block/<name>/stat`, field 5).
fn device_writes(device: &LoopDevice) -> u64 {
    let name = device.path().file_name().unwrap().to_str().unwrap();
    let stat = std::fs::read_to_string(format!("/sys/block/{name}/stat")).unwrap();
    stat.split_whitespace().nth(4).unwrap().parse().unwrap()
}

const PER_QUEUE: u64 = 32;
const LOADED_SECTORS: u64 = 4096;

fn loaded(aio: AioEngine, direct: bool) -> (Loaded, Option<util::testing::IoThrottle>) {
    loaded_on(aio, direct, &[0, 1])
}

/// [`loaded`], with the writes posted on `queues` only.
fn loaded_on(
    aio: AioEngine,
    direct: bool,
    queues: &[u16],
) -> (Loaded, Option<util::testing::IoThrottle>) {
    let disk = TempDisk::new(&vec![0x11; (LOADED_SECTORS * SECTOR) as usize]);
    let device = LoopDevice::attach(&disk.path, None).unwrap();
    let mut config = disk.config(aio, direct);
    config.path = device.path().to_path_buf();
    let backend = BlockBackend::open(&config).unwrap();
    let rig = Rig::with_queues(Some(backend), two_queues(256), 2);
    let throttle = throttle_device_thread(&rig, &device, 100);
    let mut loaded = Loaded {
        writes_before: device_writes(&device),
        expected: disk.contents(),
        disk,
        device,
        rig,
        posted: Vec::new(),
    };
    let mut rng = Rng(0x10ad);
    for i in 0..PER_QUEUE * queues.len() as u64 {
        let queue = queues[i as usize % queues.len()];
        let data = rng.bytes(4096);
        let at = DATA + i * 4096;
        loaded.rig.mem.write(&data, at).unwrap();
        let sector = i * 64;
        let start = (sector * SECTOR) as usize;
        loaded.expected[start..start + 4096].copy_from_slice(&data);
        let head = loaded
            .rig
            .driver
            .submit_to(queue, VIRTIO_BLK_T_OUT, sector, &[buf(at, 4096, false)])
            .unwrap();
        loaded.posted.push((queue, head));
    }
    loaded.rig.driver.kick().unwrap();
    (loaded, throttle)
}

impl Loaded {
    /// Waits until the device took every posted write; asserts that the asynchronous engines
    /// hold them in flight on both queues when the throttle holds them.
    fn wait_taken(&mut self, aio: AioEngine, direct: bool, throttled: bool) -> Vec<Completion> {
        let mut answered = Vec::new();
        let in_flight = self.rig.wait_taken(self.posted.len(), &mut answered);
        if throttled && direct && aio != AioEngine::Off {
            assert!(
                in_flight >= self.posted.len() / 2,
                "{aio}: only {in_flight} in flight"
            );
        }
        answered
    }

    /// Every posted write was answered OK, on its queue.
    fn check_answered(&mut self, mut answered: Vec<Completion>, what: &str) {
        self.rig.driver.poll(&mut answered).unwrap();
        assert_eq!(
            self.rig.driver.in_flight(),
            0,
            "{what}: a request was not answered"
        );
        for (queue, head) in &self.posted {
            let c = answered
                .iter()
                .find(|c| c.queue == *queue && c.head == *head)
                .unwrap_or_else(|| panic!("{what}: queue {queue} head {head} not answered"));
            assert_eq!(c.status, Some(VIRTIO_BLK_S_OK), "{what}");
        }
    }

    /// Ends the device, then checks that the disk holds every completed write.
    fn check_disk(self, aio: AioEngine) {
        let Loaded {
            disk,
            device,
            rig,
            expected,
            ..
        } = self;
        drop(rig);
        drop(device);
        assert!(
            disk.contents() == expected,
            "{aio}: a completed write was lost"
        );
    }
}

/// A write and a read back on each queue.
fn serves_on_both_queues(rig: &mut Rig, sector: u64, what: &str) {
    for queue in 0..2u16 {
        let data = vec![0x60 + queue as u8; 4096];
        let at = DATA + 0x10_0000;
        rig.mem.write(&data, at).unwrap();
        let write = rig
            .driver
            .submit_to(queue, VIRTIO_BLK_T_OUT, sector, &[buf(at, 4096, false)])
            .unwrap();
        rig.driver.kick().unwrap();
        let mut done = Vec::new();
        rig.driver.wait(1, TIMEOUT, &mut done).unwrap();
        assert_eq!((done[0].queue, done[0].head), (queue, write), "{what}");
        assert_eq!(done[0].status, Some(VIRTIO_BLK_S_OK), "{what}");
        rig.mem.write(&[0u8; 4096], at).unwrap();
        let read: [Buffer; 1] = [buf(at, 4096, true)];
        rig.driver
            .submit_to(1 - queue, VIRTIO_BLK_T_IN, sector, &read)
            .unwrap();
        rig.driver.kick().unwrap();
        done.clear();
        rig.driver.wait(1, TIMEOUT, &mut done).unwrap();
        assert_eq!(done[0].status, Some(VIRTIO_BLK_S_OK), "{what}");
        let mut got = vec![0; 4096];
        rig.mem.read(&mut got, at).unwrap();
        assert!(got == data, "{what}: queue {queue}'s write not read back");
    }
}

#[test]
fn hot_replace_with_writes_in_flight_on_both_queues_answers_them_all() {
    for (aio, direct) in MODES {
        let (mut loaded, throttle) = loaded(aio, direct);
        let observer = std::fs::File::open(loaded.device.path()).unwrap();
        let answered = loaded.wait_taken(aio, direct, throttle.is_some());
        let second = TempDisk::new(&vec![0x22; (LOADED_SECTORS * SECTOR / 2) as usize]);
        let backend = BlockBackend::open(&second.config(aio, direct)).unwrap();
        loaded.rig.slot.replace_backend(Some(backend)).unwrap();
        assert_eq!(loaded.rig.slot.in_flight().unwrap(), 0, "{aio}");
        drop(throttle);
        loaded.check_answered(answered, &format!("{aio} direct={direct} replace"));
        // The old image was flushed once both queues had drained, and holds every write.
        let state = PageCacheState::of(&observer).unwrap();
        assert_eq!((state.dirty, state.writeback), (0, 0), "{aio}: not flushed");
        drop(observer);
        let deadline = Instant::now() + TIMEOUT;
        while loaded.rig.driver.config_interrupts() == 0 {
            assert!(Instant::now() < deadline, "no configuration interrupt");
            loaded
                .rig
                .driver
                .wait_interrupt(Duration::from_millis(50))
                .unwrap();
        }
        assert_eq!(loaded.rig.driver.capacity(), LOADED_SECTORS / 2, "{aio}");
        serves_on_both_queues(&mut loaded.rig, 8, &format!("{aio} after replace"));
        loaded.check_disk(aio);
        assert!(
            second.contents()[8 * 512..9 * 512]
                .iter()
                .all(|&b| b == 0x61),
            "{aio}: the writes after the replace went elsewhere"
        );
    }
}

#[test]
fn reset_with_writes_in_flight_on_both_queues_finishes_when_both_have() {
    // Writes on both queues, then on queue 1 only (queue 0, idle, resets at once: the reset
    // is still not done while queue 1 drains).
    for (aio, direct, queues) in MODES
        .into_iter()
        .flat_map(|(aio, direct)| [(aio, direct, &[0u16, 1][..]), (aio, direct, &[1u16][..])])
    {
        let (mut loaded, throttle) = loaded_on(aio, direct, queues);
        let _ = loaded.wait_taken(aio, direct, throttle.is_some());
        loaded.rig.driver.write_reg(reg::STATUS, 0);
        let deadline = Instant::now() + TIMEOUT;
        while loaded.rig.status() != 0 {
            assert!(Instant::now() < deadline, "{aio}: the reset never finished");
            std::thread::sleep(Duration::from_micros(200));
        }
        if direct {
            // The reset is done only once every queue has drained its engine: by then the
            // disk has completed every write (a queue with writes held by the throttle takes
            // a third of a second; an idle one resets at once).
            let written = device_writes(&loaded.device) - loaded.writes_before;
            assert_eq!(
                written,
                loaded.posted.len() as u64,
                "{aio} {queues:?}: reset done before every queue drained"
            );
        }
        // Done only after every queue forgot its requests.
        assert_eq!(loaded.rig.slot.in_flight().unwrap(), 0, "{aio}");
        drop(throttle);
        let config = loaded.rig.config;
        loaded.rig.driver.reinitialise(config).unwrap();
        serves_on_both_queues(&mut loaded.rig, 8, &format!("{aio} after reset"));
    }
}

#[test]
fn shutdown_with_writes_in_flight_on_both_queues_answers_and_flushes() {
    for (aio, direct) in MODES {
        let (mut loaded, throttle) = loaded(aio, direct);
        let observer = std::fs::File::open(loaded.device.path()).unwrap();
        let answered = loaded.wait_taken(aio, direct, throttle.is_some());
        loaded.rig.slot.shutdown().expect("shutdown");
        assert_eq!(loaded.rig.slot.in_flight().unwrap(), 0, "{aio}");
        drop(throttle);
        loaded.check_answered(answered, &format!("{aio} direct={direct} shutdown"));
        let state = PageCacheState::of(&observer).unwrap();
        assert_eq!((state.dirty, state.writeback), (0, 0), "{aio}: not flushed");
        drop(observer);
        assert!(matches!(
            loaded.rig.slot.replace_backend(None),
            Err(VirtioError::ShutDown { .. })
        ));
        loaded.check_disk(aio);
    }
}

/// The I/O limits are the drive's: two queues on two threads, both kept busy, share one set of
/// buckets. Separate buckets per queue would let twice the limit through; the check allows a
/// generous margin either side (this is not a rate test: `blk_throttle` is).
#[test]
fn io_limits_hold_for_the_device_across_its_queues() {
    let limit = 1000u64;
    let disk = TempDisk::new(&vec![0u8; 4 << 20]);
    let config = BlockBackendConfig {
        throttle: ThrottleConfig {
            iops_total: Limit {
                avg: limit,
                ..Limit::default()
            },
            ..ThrottleConfig::default()
        },
        ..disk.config(AioEngine::IoUring, false)
    };
    let backend = BlockBackend::open(&config).unwrap();
    let mut rig = Rig::with_queues(Some(backend), two_queues(64), 2);
    let (warmup, window) = (Duration::from_millis(300), Duration::from_millis(1500));
    let start = Instant::now();
    let mut counted = [0u64; 2];
    let mut done = Vec::new();
    let mut rng = Rng(0x71);
    loop {
        for queue in 0..2u16 {
            while rig.driver.in_flight_on(queue) < 16 {
                let sector = rng.below(8000) / 8 * 8;
                let at = DATA + u64::from(queue) * 0x10_0000;
                rig.driver
                    .submit_to(queue, VIRTIO_BLK_T_IN, sector, &[buf(at, 4096, true)])
                    .unwrap();
            }
        }
        rig.driver.kick().unwrap();
        done.clear();
        rig.driver.wait(1, TIMEOUT, &mut done).unwrap();
        let elapsed = start.elapsed();
        if elapsed >= warmup + window {
            break;
        }
        if elapsed >= warmup {
            for c in &done {
                assert_eq!(c.status, Some(VIRTIO_BLK_S_OK));
                counted[usize::from(c.queue)] += 1;
            }
        }
    }
    let rate = (counted[0] + counted[1]) as f64 / window.as_secs_f64();
    assert!(
        rate < limit as f64 * 1.4 && rate > limit as f64 * 0.5,
        "{rate:.0} requests per second on two queues against a drive limit of {limit} \
         (per queue: {counted:?})"
    );
    assert!(counted.iter().all(|&n| n > 0), "{counted:?}");
}
