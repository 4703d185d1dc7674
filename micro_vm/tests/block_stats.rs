//! A drive's counters over QMP, read by QEMU's own client library (`qemu.qmp`): after the
//! in-process guest driver has sent a known mix of reads, writes, flushes and one request out
//! of range to a running VM's device on real KVM (io_uring, on an iothread),
//! `query-blockstats` reports exactly those numbers and `query-block` the drive's settings,
//! which `block_set_io_throttle` then changes.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Scratch;
use device_model::virtio::block::request::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use device_model::virtio::driver::{Buffer, Driver, DriverConfig};
use machine_manager::config::DriveConfig;
use micro_vm::{VmExit, Vmm};
use serde_json::Value;
use util::aio::{AioEngine, DetectZeroes, Discard, Limit};
use util::testing::qmp_python;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const IMAGE: u64 = 8 << 20;
const DRIVER_BASE: u64 = 64 << 20;
const DATA: u64 = 80 << 20;
const TIMEOUT: Duration = Duration::from_secs(30);
/// The drive's `throttling.iops-total`.
const IOPS_LIMIT: u64 = 200;

/// The requests the driver sends: (type, sector, bytes); each a separate request.
fn requests() -> Vec<(u32, u64, u32)> {
    let mut list = Vec::new();
    for i in 0..12u64 {
        list.push((VIRTIO_BLK_T_OUT, i * 16, 4096));
    }
    for i in 0..5u64 {
        list.push((VIRTIO_BLK_T_OUT, 512 + i * 32, 16384));
    }
    for i in 0..20u64 {
        list.push((VIRTIO_BLK_T_IN, i * 8, 4096));
    }
    for i in 0..3u64 {
        list.push((VIRTIO_BLK_T_IN, 1024 + i * 128, 65536));
    }
    for _ in 0..4 {
        list.push((VIRTIO_BLK_T_FLUSH, 0, 0));
    }
    list
}

#[test]
fn query_blockstats_counts_exactly_what_the_driver_sent() {
    let dir = Scratch::new("block-stats");
    let image = dir.disk("disk.img", IMAGE);
    let socket = dir.0.join("qmp.sock");
    let mut drive = DriveConfig::new("d0", image.clone());
    drive.aio = AioEngine::IoUring;
    drive.discard = Discard::Unmap;
    drive.detect_zeroes = DetectZeroes::On;
    // A limit the test's 40 reads and writes exceed: a tenth of a second's worth (20) goes at
    // once, the rest waits for the queue's throttle timer (armed on the iothread, under its
    // seccomp filter). It shows in query-block, and throttled requests are counted like the
    // others.
    drive.throttle.iops_total = Limit {
        avg: IOPS_LIMIT,
        ..Limit::default()
    };
    let config = dir.one_disk_vm(drive, socket.clone());
    let vmm = Vmm::new(&config).unwrap();
    let mem = vmm.vm().unwrap().memory().clone();
    let transport = vmm.blocks().unwrap().lock().unwrap().slots()[0]
        .transport
        .clone();
    let irq = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
    let mut driver = Driver::new(transport, mem, irq, DriverConfig::new(DRIVER_BASE, 256)).unwrap();
    // Not on this test's thread: `start` confines its caller to the main thread's filter.
    let runner = common::spawn_vmm_main(vmm);

    let list = requests();
    let mut at = DATA;
    for &(kind, sector, len) in &list {
        let data: Vec<Buffer> = if len == 0 {
            Vec::new()
        } else {
            vec![Buffer {
                gpa: at,
                len,
                writable: kind == VIRTIO_BLK_T_IN,
            }]
        };
        at += u64::from(len);
        driver.submit(kind, sector, &data).unwrap();
    }
    // One read beyond the end: refused by the device, counted as no read at all.
    let beyond = Buffer {
        gpa: at,
        len: 4096,
        writable: true,
    };
    driver
        .submit(VIRTIO_BLK_T_IN, IMAGE / 512, &[beyond])
        .unwrap();
    let started = Instant::now();
    driver.force_kick().unwrap();
    let mut done = Vec::new();
    driver.wait(list.len() + 1, TIMEOUT, &mut done).unwrap();
    // The limit held requests back: those beyond the first tenth of a second's worth went at
    // no more than the limit's rate (a lower bound, which a loaded host only lengthens).
    let limited = list.iter().filter(|r| r.0 != VIRTIO_BLK_T_FLUSH).count() as u64;
    let least = Duration::from_secs(limited - IOPS_LIMIT / 10 - 1) / IOPS_LIMIT as u32;
    assert!(
        started.elapsed() >= least,
        "{limited} requests in {:?} at {IOPS_LIMIT} IOPS",
        started.elapsed()
    );
    let oks = done
        .iter()
        .filter(|c| c.status == Some(VIRTIO_BLK_S_OK))
        .count();
    assert_eq!(oks, list.len(), "{done:?}");
    assert!(done.iter().any(|c| c.status == Some(VIRTIO_BLK_S_IOERR)));

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/block_stats.py");
    let output = Command::new(qmp_python())
        .arg(&script)
        .arg(&socket)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "block_stats.py failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(runner.join().unwrap().unwrap(), VmExit::HostQuit);
    let answer: Value = serde_json::from_slice(&output.stdout).unwrap();

    let block = &answer["block"][0];
    assert_eq!(block["device"], "d0", "{block}");
    assert_eq!(block["qdev"], "b0", "{block}");
    let inserted = &block["inserted"];
    assert_eq!(inserted["node-name"], "d0", "{block}");
    assert_eq!(inserted["file"], image.to_str().unwrap(), "{block}");
    assert_eq!(inserted["ro"], false, "{block}");
    assert_eq!(inserted["aio"], "io_uring", "{block}");
    assert_eq!(inserted["detect_zeroes"], "on", "{block}");
    assert_eq!(inserted["iops"], IOPS_LIMIT, "{block}");
    assert_eq!(inserted["bps"], 0, "{block}");
    assert_eq!(inserted["cache"]["direct"], true, "{block}");
    assert_eq!(inserted["image"]["virtual-size"], IMAGE, "{block}");

    let after = &answer["block_after"][0]["inserted"];
    assert_eq!(after["iops"], 500, "{after}");
    assert_eq!(after["iops_max"], 1000, "{after}");
    assert_eq!(after["iops_max_length"], 2, "{after}");
    assert_eq!(answer["unknown"], "DeviceNotFound", "{answer}");

    let entry = &answer["blockstats"][0];
    assert_eq!(entry["device"], "d0", "{entry}");
    assert_eq!(entry["node-name"], "d0", "{entry}");
    let stats = &entry["stats"];
    let sum = |kind: u32| -> (u64, u64) {
        let of_kind = list.iter().filter(|r| r.0 == kind);
        (
            of_kind.clone().count() as u64,
            of_kind.map(|r| u64::from(r.2)).sum(),
        )
    };
    let (reads, read_bytes) = sum(VIRTIO_BLK_T_IN);
    let (writes, written) = sum(VIRTIO_BLK_T_OUT);
    let (flushes, _) = sum(VIRTIO_BLK_T_FLUSH);
    let expected = [
        ("rd_operations", reads),
        ("rd_bytes", read_bytes),
        ("wr_operations", writes),
        ("wr_bytes", written),
        ("flush_operations", flushes),
        ("unmap_operations", 0),
        ("failed_rd_operations", 0),
        ("failed_wr_operations", 0),
        ("failed_flush_operations", 0),
    ];
    for (name, value) in expected {
        assert_eq!(stats[name], value, "{name} in {stats}");
    }
    for name in [
        "rd_total_time_ns",
        "wr_total_time_ns",
        "flush_total_time_ns",
    ] {
        assert!(stats[name].as_u64().unwrap() > 0, "{name} in {stats}");
    }
}
