//! Hot-replace in a real guest over QMP: one boot (root image on /dev/vda, slot 1 empty),
//! then `blockdev-add` + `device_add` of an io_uring disk into slot 1 (the guest kernel logs
//! the capacity change and fio verifies on the new disk), `device_del` (`DEVICE_DELETED`,
//! capacity 0 in the guest), the same with a native-AIO disk, then a series of bad requests
//! on the running VM, each followed by a `query-status` that still answers, and `quit`.
//!
//! The guest side is an `sv.cmd` script: it waits for /dev/vdb to grow, runs the `fio` job on
//! it, waits for it to shrink to 0, twice, then idles until the host quits.
//!
//! The boot takes minutes on a PVM host. It needs the test guest: `scripts/guest/build.sh`.

#[path = "common/blk.rs"]
mod blk;
mod common;

use std::path::Path;
use std::time::Duration;

use blk::{base64, base_cmdline, copy_rootfs, scratch_disk, spawn_with_qmp, LiveVm, Qmp};
use common::{guest_dir, scratch_dir, stratovirt};
use serde_json::json;

/// Boot to the ext4 root and the guest script's first prompt.
const BOOT_TIMEOUT: Duration = Duration::from_secs(25 * 60);
/// One hot-plug round in the guest: notice, fio verify of 1 MiB, removal.
const ROUND_TIMEOUT: Duration = Duration::from_secs(15 * 60);
const DISK_BYTES: u64 = 8 << 20;

/// The guest's side: wait for vdb to grow, fio on it, wait for it to shrink, twice.
const GUEST_SCRIPT: &str = r#"
echo 6 > /proc/sys/kernel/printk
hp_wait() {
	i=0
	while [ $i -lt 1800 ]; do
		read -r s < /sys/block/vdb/size
		if [ "$2" = grow ] && [ "$s" -gt 0 ]; then echo "SV-HP round=$1 size=$s"; return 0; fi
		if [ "$2" = gone ] && [ "$s" -eq 0 ]; then echo "SV-HP round=$1 size=0"; return 0; fi
		sleep 1
		i=$((i + 1))
	done
	echo "SV-HP-TIMEOUT round=$1 $2"
	return 1
}
for round in 1 2; do
	echo "SV-HP-WAIT round=$round"
	hp_wait $round grow || exit 1
	sh /sv/run/fio
	echo "SV-HP-FIO-DONE round=$round rc=$?"
	hp_wait $round gone || exit 1
done
echo "SV-HP-IDLE"
sleep 100000
"#;

fn assert_still_running(qmp: &mut Qmp, after: &str) {
    let status = qmp.ok("query-status", None);
    assert_eq!(status["status"], "running", "after {after}: {status}");
}

/// Plugs `disk` with engine `aio` into slot 1 as node/device `id`, waits for the guest to
/// see it, verify it with fio and see it go after `device_del`.
fn hotplug_round(vm: &mut LiveVm, qmp: &mut Qmp, round: u32, id: &str, aio: &str, disk: &Path) {
    vm.wait_console(&format!("SV-HP-WAIT round={round}"), ROUND_TIMEOUT);
    qmp.ok(
        "blockdev-add",
        Some(json!({
            "node-name": id,
            "file": {"driver": "file", "filename": disk, "aio": aio},
            "cache": {"direct": true},
            "read-only": false
        })),
    );
    let addr = if round == 1 { json!("0x1") } else { json!(1) };
    qmp.ok(
        "device_add",
        Some(json!({"id": id, "driver": "virtio-blk-mmio", "addr": addr})),
    );
    let sectors = DISK_BYTES / 512;
    vm.wait_console(&format!("[vdb] new size: {sectors} "), ROUND_TIMEOUT);
    vm.wait_console(
        &format!("SV-HP round={round} size={sectors}"),
        ROUND_TIMEOUT,
    );
    let console = vm.wait_console(&format!("SV-HP-FIO-DONE round={round}"), ROUND_TIMEOUT);
    let passes = console
        .lines()
        .filter(|l| l.starts_with("SV-FIO-PASS") && l.contains("target=/dev/vdb"))
        .count();
    assert_eq!(
        passes,
        round as usize,
        "fio on the plugged {aio} disk\n{}",
        vm.report()
    );
    assert!(!console.contains("SV-FIO-FAIL"), "{}", vm.report());

    qmp.ok("device_del", Some(json!({ "id": id })));
    let deleted = qmp.wait_event("DEVICE_DELETED", Duration::from_secs(30));
    assert_eq!(deleted["data"]["device"], id, "{deleted}");
    vm.wait_console(&format!("SV-HP round={round} size=0"), ROUND_TIMEOUT);
    let console = vm.console();
    assert_eq!(
        console.matches("[vdb] new size: 0 ").count(),
        round as usize,
        "the guest kernel logs the removal\n{}",
        vm.report()
    );
    // The node outlives its device until blockdev-del.
    qmp.ok("blockdev-del", Some(json!({ "node-name": id })));
    let written = std::fs::read(disk).expect("read the plugged disk");
    assert!(
        written[..1 << 20].iter().any(|&b| b != 0),
        "fio's writes are not in {}",
        disk.display()
    );
}

#[test]
fn disks_are_hot_replaced_over_qmp_while_the_guest_runs() {
    let guest = guest_dir();
    let dir = scratch_dir("guest-hotplug");
    let root = copy_rootfs(&guest, dir.path());
    let uring_disk = scratch_disk(&dir.join("uring.img"), DISK_BYTES);
    let native_disk = scratch_disk(&dir.join("native.img"), DISK_BYTES);
    let spare_disk = scratch_disk(&dir.join("spare.img"), DISK_BYTES);
    let cmdline = format!(
        "{} root=/dev/vda rw sv.dev=/dev/vdb sv.size=1M sv.engine=libaio sv.cmd={}",
        base_cmdline(&guest),
        base64(GUEST_SCRIPT.as_bytes())
    );
    let mut cmd = stratovirt();
    cmd.arg("-kernel")
        .arg(guest.join("vmlinux"))
        .args(["-append", &cmdline])
        .arg("-drive")
        .arg(format!("id=root,file={},aio=io_uring", root.display()));
    let (mut vm, mut qmp) = spawn_with_qmp(cmd, dir.path());

    // Lifecycle while the guest boots.
    let cpus = qmp.ok("query-cpus", None);
    let tid = cpus[0]["thread_id"].as_i64().unwrap_or(0);
    assert!(tid > 0, "query-cpus: {cpus}");
    assert!(
        Path::new(&format!("/proc/self/task/{tid}")).exists()
            || Path::new(&format!("/proc/{tid}")).exists(),
        "vCPU thread {tid} does not exist"
    );
    qmp.ok("stop", None);
    qmp.wait_event("STOP", Duration::from_secs(10));
    assert_eq!(qmp.ok("query-status", None)["status"], "paused");
    qmp.fails("stop", None, "GenericError");
    qmp.ok("cont", None);
    qmp.wait_event("RESUME", Duration::from_secs(10));
    qmp.fails("cont", None, "GenericError");
    assert_still_running(&mut qmp, "cont");

    vm.wait_console("SV-HP-WAIT round=1", BOOT_TIMEOUT);
    hotplug_round(&mut vm, &mut qmp, 1, "hp-uring", "io_uring", &uring_disk);
    hotplug_round(&mut vm, &mut qmp, 2, "hp-native", "native", &native_disk);
    vm.wait_console("SV-HP-IDLE", ROUND_TIMEOUT);

    // Bad requests: each is a QMP error and the VM goes on.
    qmp.fails("frobnicate", None, "CommandNotFound");
    assert_still_running(&mut qmp, "an unknown command");
    qmp.fails(
        "blockdev-add",
        Some(json!({"node-name": "x"})),
        "GenericError",
    );
    assert_still_running(&mut qmp, "a missing argument");
    let desc = qmp.fails(
        "blockdev-add",
        Some(json!({"node-name": "x", "file": {"driver": "file",
            "filename": dir.join("no-such.img"), "aio": "io_uring"}})),
        "GenericError",
    );
    assert!(desc.contains("no-such.img"), "{desc}");
    assert_still_running(&mut qmp, "a missing file");
    let desc = qmp.fails(
        "blockdev-add",
        Some(json!({"node-name": "x", "file": {"driver": "file",
            "filename": spare_disk, "aio": "native"}, "cache": {"direct": false}})),
        "GenericError",
    );
    assert!(desc.contains("direct"), "{desc}");
    assert_still_running(&mut qmp, "aio=native with direct off");
    qmp.ok(
        "blockdev-add",
        Some(json!({"node-name": "spare", "file": {"driver": "file",
            "filename": spare_disk, "aio": "iouring"}})),
    );
    qmp.fails(
        "blockdev-add",
        Some(json!({"node-name": "spare", "file": {"driver": "file",
            "filename": spare_disk, "aio": "io_uring"}})),
        "GenericError",
    );
    assert_still_running(&mut qmp, "a duplicate node-name");
    let desc = qmp.fails(
        "device_add",
        Some(json!({"id": "spare", "driver": "virtio-blk-mmio", "addr": "0x0"})),
        "GenericError",
    );
    assert!(desc.contains("in use"), "{desc}");
    assert_still_running(&mut qmp, "a slot in use");
    qmp.fails(
        "device_add",
        Some(json!({"id": "nosuch", "driver": "virtio-blk-mmio", "addr": "0x2"})),
        "DeviceNotFound",
    );
    assert_still_running(&mut qmp, "an unknown node-name");
    qmp.fails(
        "device_add",
        Some(json!({"id": "spare", "driver": "virtio-blk-mmio", "addr": "0x40"})),
        "GenericError",
    );
    assert_still_running(&mut qmp, "a slot that does not exist");
    qmp.fails(
        "device_del",
        Some(json!({"id": "nosuch"})),
        "DeviceNotFound",
    );
    assert_still_running(&mut qmp, "device_del of an unknown device");
    qmp.ok(
        "device_add",
        Some(json!({"id": "spare", "driver": "virtio-blk-mmio", "addr": "0x2"})),
    );
    qmp.fails(
        "blockdev-del",
        Some(json!({"node-name": "spare"})),
        "GenericError",
    );
    assert_still_running(&mut qmp, "blockdev-del of a node in use");
    let reply = qmp.raw("{\"execute\": \"query-status\",, }\n");
    assert_eq!(reply["error"]["class"], "GenericError", "{reply}");
    assert_still_running(&mut qmp, "malformed JSON");

    qmp.ok("quit", None);
    let shutdown = qmp.wait_event("SHUTDOWN", Duration::from_secs(10));
    assert_eq!(shutdown["data"]["reason"], "host-qmp-quit", "{shutdown}");
    let status = vm.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "{}", vm.report());
    drop(vm);
}
