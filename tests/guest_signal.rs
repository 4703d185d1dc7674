//! SIGTERM ends a running guest in order: a Linux guest keeps writing files on its ext4 root,
//! an io_uring disk on an iothread; the VMM gets SIGTERM. The connected QMP client receives
//! `SHUTDOWN` with reason `host-signal`, the VMM exits 0 without a warning, the socket file is
//! gone, and the image's file system is consistent: once its journal is replayed (the guest
//! never unmounted it), `e2fsck -fn` finds nothing to fix.
//!
//! One boot (minutes on a PVM host). Needs the test guest: `scripts/guest/build.sh`.

#[path = "common/blk.rs"]
mod blk;
mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use blk::{base64, base_cmdline, copy_rootfs, spawn_with_qmp};
use common::{guest_dir, scratch_dir, stratovirt};

/// The boot to the ext4 root and the first files written.
const BOOT_TIMEOUT: Duration = Duration::from_secs(25 * 60);
/// The guest writes 32 KiB files with fsync, one after the other, until the VM ends.
const GUEST_SCRIPT: &str = "i=0; while :; do \
    dd if=/dev/zero of=/sv-signal-$i bs=4096 count=8 conv=fsync 2>/dev/null; \
    echo SV-SIGNAL-WROTE-$i; i=$((i+1)); done";

/// Runs an e2fsprogs tool on `image`; returns its exit code and output.
fn e2fs(tool: &str, args: &[&str], image: &Path) -> (i32, String) {
    let out = Command::new(tool)
        .args(args)
        .arg(image)
        .output()
        .unwrap_or_else(|e| panic!("run {tool} (e2fsprogs): {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn sigterm_during_guest_writes_shuts_down_in_order() {
    let guest = guest_dir();
    let dir = scratch_dir("guest-signal");
    let root = copy_rootfs(&guest, dir.path());
    let cmdline = format!(
        "{} root=/dev/vda rw sv.cmd={}",
        base_cmdline(&guest),
        base64(GUEST_SCRIPT.as_bytes())
    );
    let mut cmd = stratovirt();
    cmd.arg("-kernel")
        .arg(guest.join("vmlinux"))
        .args(["-append", &cmdline])
        .args(["-object", "iothread,id=io0"])
        .arg("-drive")
        .arg(format!(
            "id=root,file={},aio=io_uring,if=none",
            root.display()
        ))
        .args([
            "-device",
            "virtio-blk-device,drive=root,id=rootdev,iothread=io0",
        ]);
    let (mut vm, mut qmp) = spawn_with_qmp(cmd, dir.path());

    // SIGTERM while the guest is in the middle of its writes.
    vm.wait_console("SV-SIGNAL-WROTE-2", BOOT_TIMEOUT);
    vm.signal("TERM");
    let event = qmp.wait_event("SHUTDOWN", Duration::from_secs(60));
    assert_eq!(event["data"]["reason"], "host-signal", "{event}");
    assert_eq!(event["data"]["guest"], false, "{event}");
    let status = vm.wait_exit(Duration::from_secs(120));
    assert_eq!(status.code(), Some(0), "{}", vm.report());
    assert!(vm.stderr().is_empty(), "{}", vm.report());
    assert!(
        !dir.join("qmp.sock").exists(),
        "the QMP socket file is left behind"
    );
    let log = std::fs::read_to_string(dir.join("vmm.log")).unwrap_or_default();
    assert!(log.contains("shutdown complete"), "{log}");
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(":WARN: ") || l.contains(":ERROR: "))
        .collect();
    assert!(warnings.is_empty(), "{warnings:#?}");

    // The guest never unmounted its root: replay the journal as a mount would, then check.
    let (code, text) = e2fs("e2fsck", &["-E", "journal_only", "-p"], &root);
    assert!(code <= 1, "journal replay failed ({code}):\n{text}");
    let (code, text) = e2fs("e2fsck", &["-f", "-n"], &root);
    assert_eq!(code, 0, "e2fsck -fn found problems:\n{text}");
}
