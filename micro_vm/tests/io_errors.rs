//! QEMU's error policy through the whole VMM on real KVM, with a QMP client: a disk image on a
//! size-limited tmpfs runs out of space under 32 writes of the in-process guest driver
//! (`werror=stop`, io_uring on an iothread). The client sees `BLOCK_IO_ERROR` (operation
//! write, action stop, nospace, the device and its node) and `STOP`; `query-status` says
//! `io-error`; the tmpfs grows, `cont` resumes the VM (`RESUME`) and retries the writes, and
//! every write is acknowledged and in the image.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{QmpClient, Scratch};
use device_model::virtio::block::request::{VIRTIO_BLK_S_OK, VIRTIO_BLK_T_OUT};
use device_model::virtio::driver::{Buffer, Driver, DriverConfig};
use machine_manager::config::DriveConfig;
use micro_vm::{VmExit, Vmm};
use util::aio::{AioEngine, ErrorAction};
use util::testing::Tmpfs;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const IMAGE: u64 = 8 << 20;
const WRITES: u64 = 32;
const DRIVER_BASE: u64 = 64 << 20;
const DATA: u64 = 80 << 20;
const TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn enospc_stops_the_vm_and_cont_retries_every_write() {
    let dir = Scratch::new("io-errors");
    let tmpfs = Tmpfs::mount("vmm-enospc", 4 << 20).unwrap();
    let image = tmpfs.path().join("disk.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(IMAGE)
        .unwrap();
    let socket = dir.0.join("qmp.sock");
    let mut drive = DriveConfig::new("d0", image.clone());
    drive.aio = AioEngine::IoUring;
    drive.werror = ErrorAction::Stop;
    let config = dir.one_disk_vm(drive, socket.clone());
    let vmm = Vmm::new(&config).unwrap();
    let mem = vmm.vm().unwrap().memory().clone();
    let transport = vmm.blocks().unwrap().lock().unwrap().slots()[0]
        .transport
        .clone();
    let irq = Arc::new(EventFd::new(EFD_NONBLOCK).unwrap());
    let mut driver = Driver::new(
        transport,
        mem.clone(),
        irq,
        DriverConfig::new(DRIVER_BASE, 256),
    )
    .unwrap();
    // Not on this test's thread: `start` confines its caller to the main thread's filter.
    let runner = common::spawn_vmm_main(vmm);
    let mut qmp = QmpClient::connect(&socket, TIMEOUT);

    tmpfs.fill("filler").unwrap();
    let mut expected = vec![0u8; IMAGE as usize];
    for i in 0..WRITES {
        let data = vec![0x40 + i as u8; 4096];
        mem.write(&data, DATA + i * 4096).unwrap();
        let sector = i * 64;
        expected[(sector * 512) as usize..][..4096].copy_from_slice(&data);
        let buffer = Buffer {
            gpa: DATA + i * 4096,
            len: 4096,
            writable: false,
        };
        driver.submit(VIRTIO_BLK_T_OUT, sector, &[buffer]).unwrap();
    }
    driver.force_kick().unwrap();

    let events = qmp.until(|m| m["event"] == "STOP");
    let error = events
        .iter()
        .find(|m| m["event"] == "BLOCK_IO_ERROR")
        .unwrap_or_else(|| panic!("no BLOCK_IO_ERROR before STOP: {events:?}"));
    let data = &error["data"];
    assert_eq!(data["device"], "b0", "{error}");
    assert_eq!(data["node-name"], "d0", "{error}");
    assert_eq!(data["operation"], "write", "{error}");
    assert_eq!(data["action"], "stop", "{error}");
    assert_eq!(data["nospace"], true, "{error}");
    assert!(
        data["reason"].as_str().unwrap_or("").contains("space"),
        "{error}"
    );
    qmp.send("query-status");
    let status = qmp.until(|m| m.get("return").is_some());
    let status = &status.last().unwrap()["return"];
    assert_eq!(status["status"], "io-error", "{status}");
    assert_eq!(status["running"], false, "{status}");
    let mut done = Vec::new();
    driver.poll(&mut done).unwrap();
    assert!(done.is_empty(), "a held write was answered: {done:?}");

    tmpfs.resize(64 << 20).unwrap();
    qmp.send("cont");
    let resumed = qmp.until(|m| m.get("return").is_some());
    assert!(
        resumed.iter().any(|m| m["event"] == "RESUME"),
        "{resumed:?}"
    );
    driver.wait(WRITES as usize, TIMEOUT, &mut done).unwrap();
    assert_eq!(done.len(), WRITES as usize);
    assert!(
        done.iter().all(|c| c.status == Some(VIRTIO_BLK_S_OK)),
        "{done:?}"
    );
    qmp.send("query-status");
    let status = qmp.until(|m| m.get("return").is_some());
    assert_eq!(status.last().unwrap()["return"]["status"], "running");

    qmp.send("quit");
    assert_eq!(runner.join().unwrap().unwrap(), VmExit::HostQuit);
    drop(driver);
    assert!(
        std::fs::read(&image).unwrap() == expected,
        "a write was lost"
    );
}
