//! virtio-blk on a polling iothread (`poll-max-ns`): requests served with guest notifications
//! off while the loop polls, none lost where polling ends and the loop goes to sleep, and a
//! loop that does not poll behaving as before. Every engine, data checked against a model.
//!
//! Nothing here is timed: the kick counts compare polling with not polling on the same
//! requests, with margins far beyond what scheduling noise can take away.

mod common;

use std::time::{Duration, Instant};

use common::{Rig, Rng, TempDisk, DRIVER_BASE, MODES};
use device_model::virtio::driver::DriverConfig;
use device_model::virtio::{feature, BlockBackend, VIRTIO_F_RING_EVENT_IDX};
use util::aio::AioEngine;
use util::event_loop::{PollParams, PollStats};

const SECTOR: u64 = 512;
const DISK_SECTORS: u64 = 2048;

/// A loop whose window reaches seconds after three waits that outlast it (4 µs, 4 ms, 4 s):
/// once warm, it polls through any gap between two requests of a test.
const EAGER: PollParams = PollParams {
    max_ns: 60_000_000_000,
    grow: 1000,
    shrink: 0,
};

fn rig(
    aio: AioEngine,
    direct: bool,
    event_idx: bool,
    poll: PollParams,
) -> (Rig, TempDisk, Vec<u8>) {
    let mut rng = Rng(0x5eed ^ u64::from(event_idx));
    let model = rng.bytes((DISK_SECTORS * SECTOR) as usize);
    let disk = TempDisk::new(&model);
    let backend = BlockBackend::open(&disk.config(aio, direct)).unwrap();
    let mut features = u64::MAX;
    if !event_idx {
        features &= !feature(VIRTIO_F_RING_EVENT_IDX);
    }
    let config = DriverConfig {
        features,
        ..DriverConfig::new(DRIVER_BASE, 16)
    };
    let rig = Rig::new(Some(backend), config);
    rig.iothread.event_loop().set_poll_params(poll);
    (rig, disk, model)
}

/// One QD 1 request at random: a write of 1..=8 sectors (the model follows) or a read checked
/// against the model.
fn one_request(rig: &mut Rig, rng: &mut Rng, model: &mut [u8], what: &str) {
    let sectors = 1 + rng.below(8);
    let sector = rng.below(DISK_SECTORS - sectors + 1);
    let range = (sector * SECTOR) as usize..((sector + sectors) * SECTOR) as usize;
    if rng.below(2) == 0 {
        let data = rng.bytes(range.len());
        assert_eq!(rig.write(sector, &data), 0, "{what}: write status");
        model[range].copy_from_slice(&data);
    } else {
        let (status, data) = rig.read(sector, range.len() as u32);
        assert_eq!(status, 0, "{what}: read status");
        assert!(
            data == model[range.clone()],
            "{what}: read {range:?} differs"
        );
    }
}

/// Spins for `us` microseconds (a sleep is too coarse to land around a polling window).
fn gap(us: u64) {
    let until = Instant::now() + Duration::from_micros(us);
    while Instant::now() < until {
        std::hint::spin_loop();
    }
}

/// `n` QD 1 requests back to back; returns the kicks the driver had to send and the loop's
/// polling counters.
fn kicks_for(
    aio: AioEngine,
    direct: bool,
    event_idx: bool,
    poll: PollParams,
    n: usize,
    gap: Duration,
) -> (u64, PollStats) {
    let what = format!("aio={aio} direct={direct} event_idx={event_idx} {poll:?}");
    let (mut rig, disk, mut model) = rig(aio, direct, event_idx, poll);
    let mut rng = Rng(42);
    for _ in 0..n {
        one_request(&mut rig, &mut rng, &mut model, &what);
        std::thread::sleep(gap);
    }
    let kicks = rig.driver.kicks();
    let stats = rig.iothread.event_loop().poll_stats();
    drop(rig);
    assert!(
        disk.contents() == model,
        "{what}: file differs from the model"
    );
    (kicks, stats)
}

#[test]
fn a_polling_iothread_serves_requests_without_kicks() {
    const N: usize = 300;
    for (aio, direct) in MODES {
        for event_idx in [true, false] {
            let what = format!("aio={aio} direct={direct} event_idx={event_idx}");
            let (kicks, stats) = kicks_for(aio, direct, event_idx, EAGER, N, Duration::ZERO);
            // Each time polling ends the next request kicks; the window outgrows every gap
            // after a few of those.
            assert!(
                kicks <= N as u64 / 4,
                "{what}: {kicks} kicks for {N} requests while polling"
            );
            assert!(
                stats.found >= N as u64 / 2,
                "{what}: polling found work only {} times",
                stats.found
            );
        }
    }
}

#[test]
fn a_loop_that_does_not_poll_is_kicked_for_every_request() {
    const N: usize = 100;
    const GAP: Duration = Duration::from_millis(2);
    for (aio, direct) in MODES {
        for event_idx in [true, false] {
            let what = format!("aio={aio} direct={direct} event_idx={event_idx}");
            // A request the driver makes while the device thread is still finishing the
            // previous one is found by the thread's last look at the ring, unkicked; the gap
            // lets the thread go to sleep first, so that each request meets a sleeping loop.
            let (kicks, stats) = kicks_for(aio, direct, event_idx, PollParams::OFF, N, GAP);
            assert_eq!(kicks, N as u64, "{what}: every QD 1 request is announced");
            assert_eq!(stats, PollStats::default(), "{what}: the loop polled");
        }
    }
}

#[test]
fn no_request_is_lost_where_polling_ends() {
    // A short window that grows and shrinks with QEMU's defaults, and gaps on both sides of
    // it: requests land while the loop polls, while it turns notifications back on, and while
    // it sleeps. A request offered without a kick and never looked at again would time out.
    const ROUNDS: usize = 400;
    let params = PollParams {
        max_ns: 200_000,
        grow: 0,
        shrink: 0,
    };
    for (aio, direct) in MODES {
        for event_idx in [true, false] {
            let what = format!("aio={aio} direct={direct} event_idx={event_idx}");
            let (mut rig, disk, mut model) = rig(aio, direct, event_idx, params);
            let mut rng = Rng(7 + u64::from(event_idx));
            for _ in 0..ROUNDS {
                gap(match rng.below(4) {
                    0 => 0,
                    1 => rng.below(50),
                    2 => 50 + rng.below(200),
                    _ => 250 + rng.below(750),
                });
                one_request(&mut rig, &mut rng, &mut model, &what);
            }
            let stats = rig.iothread.event_loop().poll_stats();
            let kicks = rig.driver.kicks();
            drop(rig);
            assert!(
                disk.contents() == model,
                "{what}: file differs from the model"
            );
            // The boundary was crossed: polling found work, and phases ended with a sleep.
            assert!(
                stats.found > 0 && stats.ended > 0,
                "{what}: polling never ran its course ({stats:?}, {kicks} kicks)"
            );
        }
    }
}
