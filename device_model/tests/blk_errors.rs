//! What the device does when the host fails a request, with real faults set up as root: a
//! size-limited tmpfs that runs out of space (`ENOSPC`), and ext4 without a journal on a loop
//! device whose backing file sits on a full tmpfs (write-back errors, so `fdatasync` fails).
//!
//! - `werror=stop` keeps the failed writes, reports them (`Stop`, `nospace`) and answers
//!   nothing until a retry; once space is freed, the retry completes every write and the file
//!   holds them all. `report` answers `IOERR`, `ignore` answers OK.
//! - A failed flush fails every later flush of the drive (Linux forgets a write-back error
//!   once it has reported it, so a second `fdatasync` would claim that lost data is durable).
//! - A flush really reaches the file: after it, the file has no dirty page left.

mod common;

use std::process::Command;
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{buf, Rig, Rng, TempDisk, DATA, DRIVER_BASE, MODES, TIMEOUT};
use device_model::virtio::block::request::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_OUT,
};
use device_model::virtio::driver::DriverConfig;
use device_model::virtio::{BlockBackend, BlockBackendConfig, BlockIoError, IoOperation};
use util::aio::{AioEngine, ErrorAction};
use util::testing::{LoopDevice, PageCacheState, Tmpfs};

const IMAGE: u64 = 8 << 20;
const WRITES: u64 = 32;

fn config(
    path: &std::path::Path,
    aio: AioEngine,
    direct: bool,
    werror: ErrorAction,
) -> BlockBackendConfig {
    BlockBackendConfig {
        direct,
        aio,
        werror,
        rerror: ErrorAction::Report,
        ..BlockBackendConfig::new(path)
    }
}

/// A rig whose device reports its failed requests into the returned channel.
fn rig_with_errors(config: &BlockBackendConfig) -> (Rig, Receiver<BlockIoError>) {
    let backend = BlockBackend::open(config).unwrap();
    let rig = Rig::new(Some(backend), DriverConfig::new(DRIVER_BASE, 256));
    let (tx, rx) = channel();
    let tx = Mutex::new(tx);
    rig.slot.set_error_sink(Arc::new(move |e| {
        let _ = tx.lock().unwrap().send(e);
    }));
    (rig, rx)
}

/// Posts `WRITES` 4 KiB writes of distinct data at distinct offsets and kicks; returns the
/// image as it must read once they all succeeded.
fn post_writes(rig: &mut Rig, rng: &mut Rng) -> Vec<u8> {
    let mut expected = vec![0u8; IMAGE as usize];
    for i in 0..WRITES {
        let data = rng.bytes(4096);
        let at = DATA + i * 4096;
        rig.mem.write(&data, at).unwrap();
        let sector = i * 64;
        expected[(sector * 512) as usize..][..4096].copy_from_slice(&data);
        rig.driver
            .submit(VIRTIO_BLK_T_OUT, sector, &[buf(at, 4096, false)])
            .unwrap();
    }
    rig.driver.kick().unwrap();
    expected
}

#[test]
fn enospc_with_werror_stop_keeps_the_writes_until_a_retry_on_every_engine() {
    for (n, (aio, direct)) in MODES.into_iter().enumerate() {
        let tmpfs = Tmpfs::mount(&format!("blk-enospc-{n}"), 4 << 20).unwrap();
        let image = tmpfs.path().join("disk.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(IMAGE)
            .unwrap();
        // `enospc` (the default) stops on ENOSPC as `stop` does; check both.
        let werror = if n % 2 == 0 {
            ErrorAction::Stop
        } else {
            ErrorAction::Enospc
        };
        let (mut rig, errors) = rig_with_errors(&config(&image, aio, direct, werror));
        tmpfs.fill("filler").unwrap();
        let expected = post_writes(&mut rig, &mut Rng(n as u64 + 1));

        // Every write fails for want of space and is held: reported, not answered.
        let mut reported = Vec::new();
        while reported.len() < WRITES as usize {
            reported.push(
                errors
                    .recv_timeout(TIMEOUT)
                    .unwrap_or_else(|_| panic!("{aio}: only {} errors", reported.len())),
            );
        }
        assert!(reported.iter().all(|e| e.action == ErrorAction::Stop
            && e.nospace()
            && e.operation == IoOperation::Write
            && e.device == "blk0"));
        let mut done = Vec::new();
        std::thread::sleep(Duration::from_millis(50));
        rig.driver.poll(&mut done).unwrap();
        assert!(
            done.is_empty(),
            "{aio}: a held write was answered: {done:?}"
        );
        assert_eq!(
            rig.slot.in_flight().unwrap(),
            WRITES as usize,
            "{aio}: the device still owns every write"
        );

        // A retry while the disk is still full: every write fails and is held again. The
        // first reports are out of date once the retry is asked for (the machine must not
        // pause the VM for them again); the new ones are not.
        assert!(reported.iter().all(|e| !rig.slot.retried_since(e)));
        rig.slot.retry();
        assert!(reported.iter().all(|e| rig.slot.retried_since(e)));
        for _ in 0..WRITES {
            let again = errors
                .recv_timeout(TIMEOUT)
                .unwrap_or_else(|_| panic!("{aio}: a retried write did not fail again"));
            assert!(again.nospace() && !rig.slot.retried_since(&again));
        }

        // Space again, then the retry a QMP `cont` would ask for.
        tmpfs.resize(64 << 20).unwrap();
        rig.slot.retry();
        rig.driver
            .wait(WRITES as usize, TIMEOUT, &mut done)
            .unwrap();
        assert_eq!(done.len(), WRITES as usize);
        assert!(
            done.iter().all(|c| c.status == Some(VIRTIO_BLK_S_OK)),
            "{aio} direct={direct}: {done:?}"
        );
        drop(rig);
        assert!(
            std::fs::read(&image).unwrap() == expected,
            "{aio}: a write was lost"
        );
    }
}

#[test]
fn werror_report_answers_ioerr_and_ignore_answers_ok() {
    for (action, status) in [
        (ErrorAction::Report, VIRTIO_BLK_S_IOERR),
        (ErrorAction::Ignore, VIRTIO_BLK_S_OK),
    ] {
        let tmpfs = Tmpfs::mount(&format!("blk-werror-{action}"), 4 << 20).unwrap();
        let image = tmpfs.path().join("disk.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(IMAGE)
            .unwrap();
        let (mut rig, errors) = rig_with_errors(&config(&image, AioEngine::IoUring, true, action));
        tmpfs.fill("filler").unwrap();
        post_writes(&mut rig, &mut Rng(9));
        let mut done = Vec::new();
        rig.driver
            .wait(WRITES as usize, TIMEOUT, &mut done)
            .unwrap();
        assert!(
            done.iter().all(|c| c.status == Some(status)),
            "{action}: {done:?}"
        );
        // A guest can make errors like these without end: the first 16 are reported, then
        // one in 1024.
        let reported: Vec<BlockIoError> = errors.try_iter().collect();
        assert_eq!(reported.len(), 16, "{action}");
        assert!(reported.iter().all(|e| e.action == action && e.nospace()));
    }
}

/// ext4 without a journal on a loop device over `backing`, mounted on `dir`.
struct Ext4 {
    dir: std::path::PathBuf,
    _device: LoopDevice,
}

impl Ext4 {
    fn new(backing: &std::path::Path, dir: &std::path::Path) -> Ext4 {
        let device = LoopDevice::attach(backing, None).unwrap();
        let run = |cmd: &mut Command| {
            let out = cmd.output().unwrap();
            assert!(out.status.success(), "{cmd:?}: {out:?}");
        };
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-O", "^has_journal"])
            .arg(device.path()));
        std::fs::create_dir_all(dir).unwrap();
        run(Command::new("mount").arg(device.path()).arg(dir));
        Ext4 {
            dir: dir.to_path_buf(),
            _device: device,
        }
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

#[test]
fn a_failed_flush_fails_every_later_flush() {
    for aio in [AioEngine::Off, AioEngine::IoUring] {
        let tmpfs = Tmpfs::mount(&format!("blk-flush-{aio}"), 64 << 20).unwrap();
        let backing = tmpfs.path().join("ext4.img");
        std::fs::File::create(&backing)
            .unwrap()
            .set_len(48 << 20)
            .unwrap();
        let ext4 = Ext4::new(&backing, &tmpfs.path().join("mnt"));
        let image = ext4.dir.join("disk.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(IMAGE)
            .unwrap();
        let (mut rig, errors) = rig_with_errors(&config(&image, aio, false, ErrorAction::Report));
        // The loop device cannot grow its backing file any more: write-back will fail.
        tmpfs.fill("filler").unwrap();
        post_writes(&mut rig, &mut Rng(5));
        let mut done = Vec::new();
        rig.driver
            .wait(WRITES as usize, TIMEOUT, &mut done)
            .unwrap();
        assert!(
            done.iter().all(|c| c.status == Some(VIRTIO_BLK_S_OK)),
            "{aio}: buffered writes reach the page cache"
        );
        let flushes: Vec<u8> = (0..3)
            .map(|_| rig.run(VIRTIO_BLK_T_FLUSH, 0, &[]).status.unwrap())
            .collect();
        assert_eq!(
            flushes,
            vec![VIRTIO_BLK_S_IOERR; 3],
            "{aio}: a flush after a failed one must fail too"
        );
        let reported: Vec<BlockIoError> = errors.try_iter().collect();
        assert!(
            !reported.is_empty(),
            "{aio}: the failed flush was not reported"
        );
        // The final flush at shutdown fails too, and says why.
        let err = rig.slot.shutdown().unwrap_err().to_string();
        assert!(err.contains("earlier flush failed"), "{err}");
        drop(rig);
        drop(ext4);
    }
}

#[test]
fn a_flush_leaves_no_dirty_page_on_every_buffered_engine() {
    for (aio, direct) in MODES.into_iter().filter(|&(_, direct)| !direct) {
        let disk = TempDisk::new(&vec![0u8; IMAGE as usize]);
        let observer = std::fs::File::open(&disk.path).unwrap();
        // Make sure the file starts clean.
        observer.sync_all().unwrap();
        let (mut rig, _errors) =
            rig_with_errors(&config(&disk.path, aio, direct, ErrorAction::Report));
        post_writes(&mut rig, &mut Rng(3));
        let mut done = Vec::new();
        rig.driver
            .wait(WRITES as usize, TIMEOUT, &mut done)
            .unwrap();
        let before = PageCacheState::of(&observer).unwrap();
        assert!(
            before.dirty > 0,
            "{aio}: the writes left no dirty page to flush"
        );
        assert_eq!(
            rig.run(VIRTIO_BLK_T_FLUSH, 0, &[]).status,
            Some(VIRTIO_BLK_S_OK)
        );
        let after = PageCacheState::of(&observer).unwrap();
        assert_eq!(
            (after.dirty, after.writeback),
            (0, 0),
            "{aio}: FLUSH answered OK but dirty pages remain"
        );
    }
}
