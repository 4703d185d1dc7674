//! A stock guest kernel on this host: `vmlinux-stock` (the test kernel without the two
//! system-call patches; only the boot patch 0001 is applied) with `initramfs-pause.cpio`,
//! whose `/init` spins on `pause` and never makes a system call. The kernel reaches init,
//! keeps running while init spins and handles interrupts: a disk plugged over QMP raises a
//! configuration-change interrupt and the guest's virtio_blk driver logs the new size, then
//! logs size 0 after `device_del`. `quit` over QMP ends the VM with exit code 0.
//!
//! The boot takes minutes on a PVM host. It needs the test guest: `scripts/guest/build.sh`.

#[path = "common/blk.rs"]
mod blk;
mod common;

use std::time::Duration;

use blk::{base_cmdline, scratch_disk, spawn_with_qmp, LiveVm};
use common::{guest_dir, scratch_dir, stratovirt};
use serde_json::json;

/// Boot of the stock kernel to `Run /init`.
const BOOT_TIMEOUT: Duration = Duration::from_secs(25 * 60);
/// One interrupt round trip through the emulated guest kernel to its console.
const NOTICE_TIMEOUT: Duration = Duration::from_secs(5 * 60);
const DISK_BYTES: u64 = 4 << 20;
const INIT_LINE: &str = "Run /init as init process";

/// Lines the kernel prints when init dies or the kernel gives up.
const FATAL: [&str; 4] = [
    "Kernel panic",
    "Attempted to kill init",
    "BUG:",
    "general protection fault",
];

fn assert_no_fatal(vm: &LiveVm) {
    let console = vm.console();
    for fatal in FATAL {
        assert!(!console.contains(fatal), "{fatal}\n{}", vm.report());
    }
}

#[test]
fn stock_kernel_keeps_running_a_pause_init_and_quits_over_qmp() {
    let guest = guest_dir();
    let kernel = guest.join("vmlinux-stock");
    let initrd = guest.join("initramfs-pause.cpio");
    for file in [&kernel, &initrd] {
        assert!(
            file.is_file(),
            "{} missing; run scripts/guest/build.sh",
            file.display()
        );
    }
    let dir = scratch_dir("guest-stock");
    let disk = scratch_disk(&dir.join("plugged.img"), DISK_BYTES);
    // loglevel=7 after `quiet`: the kernel's "Run /init" line is at info level.
    let cmdline = format!("{} loglevel=7", base_cmdline(&guest));
    let mut cmd = stratovirt();
    cmd.arg("-kernel")
        .arg(&kernel)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", &cmdline]);
    let (mut vm, mut qmp) = spawn_with_qmp(cmd, dir.path());

    vm.wait_console(INIT_LINE, BOOT_TIMEOUT);
    // Init now spins in user mode; the kernel only runs on interrupts. Give a dying init
    // time to show (a panic reboots the guest, which ends the VM) before asking.
    std::thread::sleep(Duration::from_secs(5));
    assert_no_fatal(&vm);
    assert_eq!(qmp.ok("query-status", None)["status"], "running");

    // Slot 0 is empty (no -drive): the guest sees /dev/vda with capacity 0 until the plug.
    qmp.ok(
        "blockdev-add",
        Some(json!({
            "node-name": "plugged",
            "file": {"driver": "file", "filename": disk, "aio": "io_uring"},
            "cache": {"direct": true}
        })),
    );
    qmp.ok(
        "device_add",
        Some(json!({"id": "plugged", "driver": "virtio-blk-mmio", "addr": "0x0"})),
    );
    let sectors = DISK_BYTES / 512;
    vm.wait_console(&format!("[vda] new size: {sectors} "), NOTICE_TIMEOUT);
    qmp.ok("device_del", Some(json!({"id": "plugged"})));
    let deleted = qmp.wait_event("DEVICE_DELETED", Duration::from_secs(30));
    assert_eq!(deleted["data"]["device"], "plugged", "{deleted}");
    vm.wait_console("[vda] new size: 0 ", NOTICE_TIMEOUT);

    assert_no_fatal(&vm);
    let console = vm.console();
    assert_eq!(console.matches(INIT_LINE).count(), 1, "{}", vm.report());
    assert_eq!(qmp.ok("query-status", None)["status"], "running");

    qmp.ok("quit", None);
    let shutdown = qmp.wait_event("SHUTDOWN", Duration::from_secs(10));
    assert_eq!(shutdown["data"]["reason"], "host-qmp-quit", "{shutdown}");
    let status = vm.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "{}", vm.report());
}
