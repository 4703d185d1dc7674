//! The VMM's shutdown path on real KVM, with a QMP client connected: a spinning guest, one
//! virtio-blk device on an iothread driven by the in-process guest driver with 64 writes in
//! flight (held there by throttling the I/O of the iothread, and of the `aio=threads` workers,
//! to a loop device), then QMP `quit`.
//! Every request is answered, the image is flushed, the iothread is joined, the socket file
//! is gone, nothing is logged at warn or above, and nothing keeps the device, its loop or
//! guest RAM alive. Once per engine.
//!
//! One test in its own binary: it installs the process's logger.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{thread_named, QmpClient, Scratch};
use device_model::virtio::block::request::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_OUT};
use device_model::virtio::driver::{Buffer, Driver, DriverConfig};
use machine_manager::config::DriveConfig;
use micro_vm::{VmExit, Vmm};
use serde_json::Value;
use util::aio::AioEngine;
use util::testing::{IoThrottle, LogCapture, LoopDevice, PageCacheState};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const IMAGE: u64 = 4 << 20;
const WRITES: u64 = 64;
/// The driver's rings and the data buffers, far from the spinning kernel at 2 MiB.
const DRIVER_BASE: u64 = 64 << 20;
const DATA: u64 = 80 << 20;
const TIMEOUT: Duration = Duration::from_secs(30);

/// A QMP client that negotiates, then (on its own thread) sends `quit` and collects every
/// message until the VMM closes the socket.
fn quit_over_qmp(path: &Path) -> Vec<Value> {
    let mut client = QmpClient::connect(path, TIMEOUT);
    client.send("quit");
    std::iter::from_fn(|| client.next()).collect()
}

fn shut_down_with_requests_in_flight(aio: AioEngine, direct: bool, log: &LogCapture) {
    let warnings_before = log.warnings().len();
    let dir = Scratch::new(&format!("shutdown-{aio}-{direct}"));
    let image = dir.disk("disk.img", IMAGE);
    let device = LoopDevice::attach(&image, None).unwrap();
    // Held open throughout: closing a block device's last descriptor writes its page cache
    // back by itself, which would hide a missing flush.
    let observer = std::fs::File::open(device.path()).unwrap();
    let socket = dir.0.join("qmp.sock");
    let mut drive = DriveConfig::new("d0", device.path().to_path_buf());
    drive.aio = aio;
    drive.direct = direct;
    let config = dir.one_disk_vm(drive, socket.clone());
    let vmm = Vmm::new(&config).unwrap();
    let vm = vmm.vm().unwrap().clone();
    let (transport, handle, iothread_loop) = {
        let blocks = vmm.blocks().unwrap().lock().unwrap();
        let slot = &blocks.slots()[0];
        (
            slot.transport.clone(),
            slot.device.clone(),
            blocks.iothread_loop("io0").unwrap(),
        )
    };
    let weak_device = Arc::downgrade(&transport.lock().unwrap().device());
    let weak_loop = Arc::downgrade(&iothread_loop);
    let weak_mem = Arc::downgrade(vm.memory());
    drop(iothread_loop);
    let irq = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
    let mut driver = Driver::new(
        transport,
        vm.memory().clone(),
        irq,
        DriverConfig::new(DRIVER_BASE, 256),
    )
    .unwrap();
    drop(vm);

    let throttle =
        IoThrottle::new("vmm-shutdown", device.device_number().unwrap(), 50).and_then(|mut t| {
            t.add_thread(thread_named("iothread-io0").expect("iothread"))?;
            // aio=threads: the pool's workers make the system calls.
            for i in 0..util::aio::threads::MAX_WORKERS {
                let name = format!("{}{i}", util::aio::threads::WORKER_NAME);
                if let Some(tid) = thread_named(&name) {
                    t.add_thread(tid)?;
                }
            }
            Ok(t)
        });
    if let Err(e) = &throttle {
        eprintln!("requests will not be held in flight: {e}");
    }
    let mut expected = vec![0u8; IMAGE as usize];
    let mem = vmm.vm().unwrap().memory().clone();
    // Not on this test's thread: `start` confines its caller to the main thread's filter.
    let vmm_main = common::spawn_vmm_main(vmm);
    for i in 0..WRITES {
        let data = vec![i as u8 + 1; 4096];
        mem.write(&data, DATA + i * 4096).unwrap();
        let sector = i * 16;
        expected[(sector * 512) as usize..][..4096].copy_from_slice(&data);
        driver
            .submit(
                VIRTIO_BLK_T_OUT,
                sector,
                &[Buffer {
                    gpa: DATA + i * 4096,
                    len: 4096,
                    writable: false,
                }],
            )
            .unwrap();
    }
    drop(mem);
    driver.force_kick().unwrap();
    // Wait until the device has taken the whole batch: each write answered or in flight.
    let mut answered = Vec::new();
    let deadline = Instant::now() + TIMEOUT;
    let in_flight = loop {
        let in_flight = handle.in_flight().unwrap();
        driver.poll(&mut answered).unwrap();
        if in_flight + answered.len() >= WRITES as usize {
            break in_flight;
        }
        assert!(Instant::now() < deadline, "{aio}: the batch never went out");
        std::thread::sleep(Duration::from_millis(1));
    };
    if throttle.is_ok() && direct && aio != AioEngine::Off {
        // The asynchronous engines hold the batch in the kernel's throttle queue.
        assert!(
            in_flight >= WRITES as usize / 2,
            "{aio}: only {in_flight} in flight"
        );
    }
    drop(handle);

    let client = {
        let socket = socket.clone();
        std::thread::spawn(move || quit_over_qmp(&socket))
    };
    assert_eq!(vmm_main.join().unwrap().unwrap(), VmExit::HostQuit);
    let messages = client.join().unwrap();
    drop(throttle);

    assert!(
        messages.iter().any(|m| m["event"] == "SHUTDOWN"
            && m["data"]["reason"] == "host-qmp-quit"
            && m["data"]["guest"] == false),
        "{aio}: {messages:?}"
    );
    // `QmpClient::send` sends no id, so the reply to `quit` carries none.
    assert!(
        messages
            .iter()
            .any(|m| m.get("id").is_none() && m["return"] == serde_json::json!({})),
        "{aio}: no reply to quit: {messages:?}"
    );
    assert!(!socket.exists(), "{aio}: the socket file is left behind");
    assert!(
        thread_named("iothread-io0").is_none(),
        "{aio}: the iothread runs on"
    );
    driver.poll(&mut answered).unwrap();
    assert_eq!(
        driver.in_flight(),
        0,
        "{aio} direct={direct}: a request was not answered"
    );
    assert_eq!(answered.len(), WRITES as usize);
    assert!(
        answered.iter().all(|c| c.status == Some(VIRTIO_BLK_S_OK)),
        "{aio}"
    );
    let state = PageCacheState::of(&observer).unwrap();
    assert_eq!((state.dirty, state.writeback), (0, 0), "{aio}: not flushed");
    drop(driver);
    assert!(
        weak_device.upgrade().is_none(),
        "{aio}: the device is still alive"
    );
    assert!(
        weak_loop.upgrade().is_none(),
        "{aio}: the iothread's loop is still alive"
    );
    assert!(
        weak_mem.upgrade().is_none(),
        "{aio}: guest RAM is still mapped"
    );
    drop(observer);
    drop(device);
    assert!(
        std::fs::read(&image).unwrap() == expected,
        "{aio}: a completed write was lost"
    );
    let warnings = log.warnings();
    assert_eq!(
        warnings.len(),
        warnings_before,
        "{aio} direct={direct}: logged {:?}",
        &warnings[warnings_before..]
    );
}

#[test]
fn quit_with_a_qmp_client_drains_flushes_and_frees_everything_on_every_engine() {
    let log = LogCapture::install().unwrap();
    for (aio, direct) in [
        (AioEngine::Off, false),
        (AioEngine::Threads, true),
        (AioEngine::Native, true),
        (AioEngine::IoUring, true),
        (AioEngine::IoUring, false),
    ] {
        shut_down_with_requests_in_flight(aio, direct, log);
    }
}
