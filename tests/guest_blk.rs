//! virtio-blk in a real guest, once per engine (`aio=off`, `native`, `io_uring`): the guest
//! boots from a copy of the test root image on /dev/vda (`root=/dev/vda rw`, the kernel
//! mounts it and writes its superblock), runs a write-then-verify fio job (crc32c) on a
//! scratch disk (/dev/vdb), and sees a small MBR-partitioned disk read-only (/dev/vdc) with
//! its partition. The fourth replaceable slot (/dev/vdd) is empty: capacity 0. The root
//! drive keeps the defaults (`discard=ignore`, `detect-zeroes=off`): the guest kernel sees no
//! discard and no write-zeroes; the io_uring run's scratch drive has `discard=unmap` and
//! `detect-zeroes=unmap` and the guest sees both. The io_uring run gives the guest two vCPUs
//! and its scratch disk two request queues (`num-queues=2`), one on each of two iothreads
//! (`iothread-vq-mapping=io1:io2`): the guest kernel makes two hardware queues of them (two
//! directories under `/sys/block/vdb/mq/`; the other disks have one), and the fio job runs
//! on that disk. The native run also keeps a QMP client connected, which sees the guest's
//! reboot as `SHUTDOWN`.
//!
//! Each boot takes minutes on a PVM host (the guest kernel is emulated). They need the test
//! guest: `scripts/guest/build.sh` (or `STRATOVIRT_GUEST_DIR`).

#[path = "common/blk.rs"]
mod blk;
mod common;

use std::path::Path;
use std::time::Duration;

use blk::{base_cmdline, copy_rootfs, marker, mbr_disk, mount_count, scratch_disk, Qmp};
use common::{guest_dir, run, scratch_dir, stratovirt};

/// A boot to the ext4 root, the block report, a 1 MiB fio verify job, and the reboot.
const BOOT_TIMEOUT: Duration = Duration::from_secs(25 * 60);
/// The scratch disk for fio.
const SCRATCH_BYTES: u64 = 8 << 20;
/// The read-only disk: 4096 sectors, one partition of 2048 sectors from sector 2048.
const RO_SECTORS: u64 = 4096;
const RO_PART_START: u32 = 2048;
const RO_PART_SECTORS: u32 = 2048;

fn file_sectors(path: &Path) -> String {
    (std::fs::metadata(path).expect("image size").len() / 512).to_string()
}

fn boot_with_engine(aio: &str, iothread: bool, watch_qmp: bool) {
    let guest = guest_dir();
    let dir = scratch_dir(&format!("guest-blk-{aio}"));
    let root = copy_rootfs(&guest, dir.path());
    let mounts_before = mount_count(&root);
    let scratch = scratch_disk(&dir.join("scratch.img"), SCRATCH_BYTES);
    let ro = mbr_disk(
        &dir.join("ro.img"),
        RO_SECTORS,
        RO_PART_START,
        RO_PART_SECTORS,
        b"STRATOVIRT-RO-PARTITION",
    );
    let log_path = dir.join("vmm.log");
    let cmdline = format!(
        "{} root=/dev/vda rw sv.run=blk,fio sv.dev=/dev/vdb sv.size=1M sv.engine=libaio",
        base_cmdline(&guest)
    );
    let mut cmd = stratovirt();
    cmd.arg("-kernel")
        .arg(guest.join("vmlinux"))
        .args(["-append", &cmdline, "-m", "256", "-serial", "stdio"])
        .arg("-drive")
        .arg(format!("id=root,file={},aio={aio}", root.display()));
    if iothread {
        // Two vCPUs: Linux uses no more queues than it has CPUs.
        cmd.args(["-smp", "2"])
            .args(["-object", "iothread,id=io1", "-object", "iothread,id=io2"])
            .arg("-drive")
            .arg(format!(
                "id=scratch,file={},aio={aio},if=none,discard=unmap,detect-zeroes=unmap",
                scratch.display()
            ))
            .args([
                "-device",
                "virtio-blk-device,drive=scratch,id=scratchdev,num-queues=2,\
                 iothread-vq-mapping=io1:io2,serial=SCRATCH1",
            ]);
    } else {
        cmd.arg("-drive")
            .arg(format!("id=scratch,file={},aio={aio}", scratch.display()));
    }
    cmd.arg("-drive")
        .arg(format!("id=ro,file={},readonly=on,aio={aio}", ro.display()))
        .arg("-D")
        .arg(&log_path);

    // A QMP client connected through the whole run sees the guest's reboot as SHUTDOWN.
    let watcher = watch_qmp.then(|| {
        let socket = dir.join("qmp.sock");
        cmd.arg("-qmp")
            .arg(format!("unix:{},server,nowait", socket.display()));
        std::thread::spawn(move || {
            let mut qmp = Qmp::connect(&socket, Duration::from_secs(60));
            qmp.wait_event("SHUTDOWN", BOOT_TIMEOUT)
        })
    });
    let outcome = run(cmd, BOOT_TIMEOUT);
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    eprintln!(
        "aio={aio}: VMM ended after {:.1} s",
        outcome.elapsed.as_secs_f64()
    );
    let report = format!("{}\n--- VMM log ---\n{log}", outcome.report());
    assert!(outcome.status.is_some(), "timed out\n{report}");
    let console = &outcome.stdout;

    // Capacities: what the guest sees is each file's size in sectors; the empty slot is 0.
    let disk = |dev: &str| {
        marker(console, "SV-BLK ", "dev", dev)
            .unwrap_or_else(|| panic!("no SV-BLK line for {dev}\n{report}"))
    };
    for (dev, path) in [("vda", &root), ("vdb", &scratch), ("vdc", &ro)] {
        assert_eq!(
            blk::field(disk(dev), "sectors"),
            Some(file_sectors(path).as_str()),
            "{dev} capacity\n{report}"
        );
    }
    assert_eq!(blk::field(disk("vdd"), "sectors"), Some("0"), "{report}");
    // Hardware queues: two for the two-queue disk, one for the others.
    for (dev, queues) in [("vda", "1"), ("vdb", if iothread { "2" } else { "1" })] {
        assert_eq!(blk::field(disk(dev), "mq"), Some(queues), "{dev}\n{report}");
    }
    assert_eq!(blk::field(disk("vda"), "ro"), Some("0"), "{report}");
    assert_eq!(blk::field(disk("vdb"), "ro"), Some("0"), "{report}");
    assert_eq!(blk::field(disk("vdc"), "ro"), Some("1"), "{report}");
    // Discard and write-zeroes only where the drive asks for them.
    assert_eq!(blk::field(disk("vda"), "discard"), Some("0"), "{report}");
    assert_eq!(blk::field(disk("vda"), "wzeroes"), Some("0"), "{report}");
    let offered = |key| blk::field(disk("vdb"), key).is_some_and(|v| v != "0");
    assert_eq!(offered("discard"), iothread, "vdb discard\n{report}");
    assert_eq!(offered("wzeroes"), iothread, "vdb write-zeroes\n{report}");
    if iothread {
        assert_eq!(
            blk::field(disk("vdb"), "serial"),
            Some("SCRATCH1"),
            "{report}"
        );
    }
    let part = marker(console, "SV-BLK-PART ", "dev", "vdc1")
        .unwrap_or_else(|| panic!("the guest did not find vdc1\n{report}"));
    assert_eq!(
        blk::field(part, "sectors"),
        Some(RO_PART_SECTORS.to_string().as_str()),
        "{report}"
    );
    for dev in ["vda", "vdb", "vdc"] {
        let read = marker(console, "SV-BLK-READ ", "dev", dev)
            .unwrap_or_else(|| panic!("no read of {dev}\n{report}"));
        assert_eq!(blk::field(read, "ok"), Some("1"), "{report}");
    }
    // The MBR disk's first sector: 446 zero bytes of boot code, so the head is zeros; the
    // signature is checked through the partition the guest kernel parsed above.

    let fio = console
        .lines()
        .find(|l| l.starts_with("SV-FIO-PASS") || l.starts_with("SV-FIO-FAIL"))
        .unwrap_or_else(|| panic!("fio did not report\n{report}"));
    assert!(fio.starts_with("SV-FIO-PASS"), "{fio}\n{report}");
    assert_eq!(blk::field(fio, "target"), Some("/dev/vdb"), "{report}");
    assert!(
        console.contains("STRATOVIRT-GUEST-DONE rc=0"),
        "guest scripts failed\n{report}"
    );
    assert_eq!(outcome.status.and_then(|s| s.code()), Some(0), "{report}");
    if let Some(watcher) = watcher {
        let event = watcher
            .join()
            .expect("the QMP client saw no SHUTDOWN event");
        assert_eq!(event["data"]["guest"], true, "{event}");
        assert_eq!(event["data"]["reason"], "guest-shutdown", "{event}");
    }

    // fio's pattern reached the scratch file: its first MiB is no longer all zeros.
    let written = std::fs::read(&scratch).expect("read the scratch disk");
    assert!(
        written[..1 << 20].iter().any(|&b| b != 0),
        "fio's writes are not in the scratch file"
    );
    // The guest kernel mounted the root read-write and wrote the superblock back.
    let mounts_after = mount_count(&root);
    assert!(
        mounts_after > mounts_before,
        "mount count {mounts_before} -> {mounts_after}\n{report}"
    );
}

#[test]
fn guest_runs_on_aio_off() {
    boot_with_engine("off", false, false);
}

#[test]
fn guest_runs_on_aio_native() {
    boot_with_engine("native", false, true);
}

#[test]
fn guest_runs_on_aio_io_uring_with_an_iothread() {
    boot_with_engine("io_uring", true, false);
}
