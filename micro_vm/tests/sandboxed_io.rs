//! Features whose system calls run under the seccomp filters, in process on real KVM: every
//! thread of the VMM installs the filter of its role, so a call a path needs and its filter
//! lacks ends this test binary (status 159, one line naming the call and the thread).
//!
//! - `aio=threads` drives: one opened at start (its workers start before the main thread's
//!   filter), one QMP opens after start (`blockdev-add` and `device_add` into a slot with two
//!   queues on two iothreads: two engines, whose workers the filtered main thread starts); the
//!   in-process guest driver writes and reads back through both, on every queue. Every worker
//!   runs under the aio-worker filter (`Seccomp_filters` 2, or 5 under the main thread's).
//! - `aio=off` on an iothread: a read across the end of an image that shrank under the VM
//!   (the engine asks where the file ends and zero-fills the rest).
//! - virtio-rng's rate limit on a loop under the main thread's filter (its timer).

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use address_space::GuestMemory;
use common::{QmpClient, Scratch};
use device_model::virtio::block::request::{
    VIRTIO_BLK_S_OK, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use device_model::virtio::driver::{Buffer, Completion, Driver, DriverConfig};
use device_model::virtio::{EntropySource, Rng, VirtioDevice, VirtioMmio};
use machine_manager::config::{BlkDeviceConfig, DriveConfig, VmConfig};
use micro_vm::seccomp::{Sandbox, ThreadRole};
use micro_vm::{VmExit, Vmm};
use serde_json::json;
use util::aio::threads::WORKER_NAME;
use util::aio::AioEngine;
use util::event_loop::EventLoopThread;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const IMAGE: u64 = 4 << 20;
const DRIVER_BASE: u64 = 64 << 20;
const DATA: u64 = 80 << 20;
const TIMEOUT: Duration = Duration::from_secs(60);

/// This process's threads whose name starts with `prefix`: tid and `Seccomp_filters`.
fn threads_named(prefix: &str) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let Ok(comm) = std::fs::read_to_string(task.path().join("comm")) else {
            continue; // ended meanwhile
        };
        if !comm.trim_end().starts_with(prefix) {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        let filters = status
            .lines()
            .find_map(|l| l.strip_prefix("Seccomp_filters:"))
            .unwrap_or("")
            .trim()
            .to_string();
        let tid = task.file_name().to_str().unwrap().parse().unwrap();
        found.push((tid, filters));
    }
    found
}

fn drive(id: &str, path: &Path, aio: AioEngine) -> DriveConfig {
    let mut drive = DriveConfig::new(id, path.to_path_buf());
    drive.aio = aio;
    drive.direct = false;
    drive
}

/// A block of 4 KiB filled with `fill`, at `gpa`.
fn block(mem: &GuestMemory, gpa: u64, fill: u8) -> Buffer {
    mem.write(&[fill; 4096], gpa).unwrap();
    Buffer {
        gpa,
        len: 4096,
        writable: false,
    }
}

/// Waits for `count` completions and checks every one succeeded.
fn all_ok(driver: &mut Driver, count: usize) -> Vec<Completion> {
    let mut done = Vec::new();
    driver.wait(count, TIMEOUT, &mut done).unwrap();
    assert_eq!(done.len(), count, "{done:?}");
    assert!(
        done.iter().all(|c| c.status == Some(VIRTIO_BLK_S_OK)),
        "{done:?}"
    );
    done
}

/// On each queue of `driver`: writes a block of `fill + queue` at its own sector, flushes,
/// reads it back and compares.
fn write_read_back(driver: &mut Driver, mem: &GuestMemory, queues: u16, fill: u8) {
    for queue in 0..queues {
        let at = DATA + u64::from(queue) * 0x10_0000;
        let sector = 8 * u64::from(queue) + 64;
        let data = block(mem, at, fill + queue as u8);
        driver
            .submit_to(queue, VIRTIO_BLK_T_OUT, sector, &[data])
            .unwrap();
        driver.force_kick_queue(queue).unwrap();
        all_ok(driver, 1);
        driver.submit_to(queue, VIRTIO_BLK_T_FLUSH, 0, &[]).unwrap();
        driver.force_kick_queue(queue).unwrap();
        all_ok(driver, 1);
        let back = Buffer {
            gpa: at + 0x8000,
            len: 4096,
            writable: true,
        };
        mem.zero(back.gpa, 4096).unwrap();
        driver
            .submit_to(queue, VIRTIO_BLK_T_IN, sector, &[back])
            .unwrap();
        driver.force_kick_queue(queue).unwrap();
        all_ok(driver, 1);
        let mut read = vec![0u8; 4096];
        mem.read(&mut read, back.gpa).unwrap();
        assert!(
            read.iter().all(|&b| b == fill + queue as u8),
            "queue {queue}"
        );
    }
}

#[test]
fn aio_threads_drives_at_start_and_hot_plugged_serve_io_under_their_filters() {
    let dir = Scratch::new("sandboxed-io");
    let socket = dir.0.join("qmp.sock");
    let shrinking = dir.disk("shrinking.img", IMAGE);
    let config = VmConfig {
        kernel: Some(dir.spin_kernel()),
        mem_size: 128 << 20,
        iothreads: vec!["io0".into(), "io1".into()],
        drives: vec![
            drive("d0", &dir.disk("boot.img", IMAGE), AioEngine::Threads),
            drive("d1", &dir.disk("mq.img", IMAGE), AioEngine::IoUring),
            drive("d2", &shrinking, AioEngine::Off),
        ],
        blk_devices: vec![
            BlkDeviceConfig::new("b0", "d0"),
            BlkDeviceConfig {
                num_queues: 2,
                iothread_vq_mapping: vec!["io0".into(), "io1".into()],
                ..BlkDeviceConfig::new("b1", "d1")
            },
            BlkDeviceConfig {
                iothread: Some("io0".into()),
                ..BlkDeviceConfig::new("b2", "d2")
            },
        ],
        qmp: Some(socket.clone()),
        ..VmConfig::default()
    };
    let vmm = Vmm::new(&config).unwrap();
    let mem = vmm.vm().unwrap().memory().clone();
    let transport = |slot: usize| {
        vmm.blocks().unwrap().lock().unwrap().slots()[slot]
            .transport
            .clone()
    };
    let transports = [transport(0), transport(1), transport(2)];
    // The workers of d0 exist already, each under its own filter only.
    let at_start = threads_named(WORKER_NAME);
    assert!(!at_start.is_empty());
    for (tid, filters) in &at_start {
        assert_eq!(filters, "2", "worker {tid} of the boot drive");
    }
    let boot_workers: HashSet<i32> = at_start.iter().map(|(tid, _)| *tid).collect();
    // Not on this test's thread: `start` confines its caller to the main thread's filter.
    let runner = common::spawn_vmm_main(vmm);
    let mut qmp = QmpClient::connect(&socket, TIMEOUT);
    let [t0, t1, t2] = transports;
    let irq = || Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());

    // aio=threads opened at start, on the main loop.
    let mut boot = Driver::new(t0, mem.clone(), irq(), DriverConfig::new(DRIVER_BASE, 64)).unwrap();
    write_read_back(&mut boot, &mem, 1, 0x10);

    // aio=off on an iothread, across the end of an image that shrank by 100 bytes.
    let mut short = Driver::new(
        t2,
        mem.clone(),
        irq(),
        DriverConfig::new(DRIVER_BASE + 0x10_0000, 64),
    )
    .unwrap();
    let last = IMAGE / 512 - 8;
    let data = block(&mem, DATA, 0x33);
    short.submit(VIRTIO_BLK_T_OUT, last, &[data]).unwrap();
    short.force_kick().unwrap();
    all_ok(&mut short, 1);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&shrinking)
        .unwrap()
        .set_len(IMAGE - 100)
        .unwrap();
    let back = Buffer {
        gpa: DATA + 0x8000,
        len: 4096,
        writable: true,
    };
    mem.write(&[0xff; 4096], back.gpa).unwrap();
    short.submit(VIRTIO_BLK_T_IN, last, &[back]).unwrap();
    short.force_kick().unwrap();
    all_ok(&mut short, 1);
    let mut read = vec![0u8; 4096];
    mem.read(&mut read, back.gpa).unwrap();
    assert!(read[..3996].iter().all(|&b| b == 0x33), "the file's tail");
    assert!(read[3996..].iter().all(|&b| b == 0), "zeroes past its end");

    // aio=threads opened by QMP into the slot with two queues on two iothreads: an engine per
    // queue, whose workers the filtered main thread starts.
    let hot = dir.disk("hot.img", IMAGE);
    let events = qmp.ok("device_del", json!({"id": "b1"}));
    if !events.iter().any(|m| m["event"] == "DEVICE_DELETED") {
        qmp.until(|m| m["event"] == "DEVICE_DELETED");
    }
    qmp.ok(
        "blockdev-add",
        json!({
            "node-name": "n1",
            "file": {"driver": "file", "filename": hot, "aio": "threads"},
            "cache": {"direct": false},
        }),
    );
    qmp.ok(
        "device_add",
        json!({"id": "hot1", "driver": "virtio-blk-mmio", "drive": "n1", "addr": 1}),
    );
    let mut mq = Driver::new(
        t1,
        mem.clone(),
        irq(),
        DriverConfig {
            queues: 2,
            ..DriverConfig::new(DRIVER_BASE + 0x20_0000, 64)
        },
    )
    .unwrap();
    write_read_back(&mut mq, &mem, 2, 0x40);
    let hot_workers: Vec<(i32, String)> = threads_named(WORKER_NAME)
        .into_iter()
        .filter(|(tid, _)| !boot_workers.contains(tid))
        .collect();
    assert_eq!(
        hot_workers.len(),
        2 * at_start.len(),
        "two engines' workers: {hot_workers:?}"
    );
    for (tid, filters) in &hot_workers {
        // The main thread's three and the worker's own two.
        assert_eq!(filters, "5", "hot-plugged worker {tid}");
    }
    // The boot drive still works beside them.
    write_read_back(&mut boot, &mem, 1, 0x60);

    qmp.send("quit");
    assert_eq!(runner.join().unwrap().unwrap(), VmExit::HostQuit);
    drop((boot, short, mq));
    let left: Vec<_> = threads_named(WORKER_NAME)
        .into_iter()
        .filter(|(tid, _)| {
            boot_workers.contains(tid) || hot_workers.iter().any(|(hot, _)| hot == tid)
        })
        .collect();
    assert!(left.is_empty(), "workers left after shutdown: {left:?}");
    let image = std::fs::read(&hot).unwrap();
    assert!(image[64 * 512..][..4096].iter().all(|&b| b == 0x40));
    assert!(image[72 * 512..][..4096].iter().all(|&b| b == 0x41));
}

#[test]
fn the_entropy_rate_limit_runs_under_the_main_thread_filter() {
    // 16 bytes a second: a byte is earned every 62.5 ms.
    const RATE: u64 = 16;
    let sandbox = Sandbox::new().unwrap();
    // The main loop's thread, confined as `MicroVm::start` confines the main thread.
    let main_loop =
        EventLoopThread::spawn_with("rng-main", move || Ok(sandbox.install(ThreadRole::Main)?))
            .unwrap();
    let mem = Arc::new(GuestMemory::new(&[(0, 128 << 20)]).unwrap());
    let rng = Rng::new(
        "rng0".into(),
        EntropySource::open(Path::new("/dev/urandom")).unwrap(),
        Some(RATE),
        main_loop.event_loop().clone(),
    );
    let device: Arc<Mutex<dyn VirtioDevice>> = Arc::new(Mutex::new(rng));
    let irq = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
    let mmio = Arc::new(Mutex::new(
        VirtioMmio::new(device, mem.clone(), irq.clone()).unwrap(),
    ));
    let mut driver =
        Driver::new(mmio, mem.clone(), irq, DriverConfig::new(DRIVER_BASE, 16)).unwrap();
    // Two requests in one kick: the first takes the second's worth held in reserve, the
    // second (served a microsecond later, with nothing earned) waits for the rate timer.
    let started = Instant::now();
    for (gpa, len) in [(DATA, RATE as u32), (DATA + 4096, 1)] {
        driver
            .post(&[Buffer {
                gpa,
                len,
                writable: true,
            }])
            .unwrap();
    }
    driver.kick().unwrap();
    let mut done = Vec::new();
    driver.wait(2, TIMEOUT, &mut done).unwrap();
    let lens: Vec<u32> = done.iter().map(|c| c.len).collect();
    assert_eq!(lens, [RATE as u32, 1], "{done:?}");
    // The byte was earned at the rate first (a lower bound, which a loaded host lengthens).
    assert!(
        started.elapsed() >= Duration::from_millis(50),
        "{:?}",
        started.elapsed()
    );
    drop(driver);
    drop(main_loop);
}
