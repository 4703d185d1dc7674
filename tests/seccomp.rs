//! The sandbox of the `stratovirt` binary: every thread of a running VMM (main, vCPUs,
//! iothread, `aio=threads` workers) runs under a seccomp filter, also after QMP hot-plugged
//! drives on every engine, paused and resumed the vCPUs; `-disable-seccomp` leaves every
//! thread unfiltered. No guest boots: the kernel is a spinning ELF. (What a forbidden call
//! does is tested in `micro_vm/tests/seccomp.rs`.)

#[path = "common/blk.rs"]
mod blk;
mod common;

use std::process::Command;
use std::time::Duration;

use blk::{scratch_disk, spawn_with_qmp, LiveVm, Qmp};
use common::{scratch_dir, stratovirt, write_tiny_elf, ScratchDir};
use serde_json::json;

const QUICK: Duration = Duration::from_secs(60);
const DISK_BYTES: u64 = 1 << 20;

/// A VMM on a spinning kernel with two vCPUs, an iothread serving slot 0 (io_uring), a drive
/// on the main loop in slot 1 (native AIO) and one in slot 2 (a thread pool), and a QMP
/// socket.
fn start(dir: &ScratchDir, extra: &[&str]) -> (LiveVm, Qmp) {
    let kernel = dir.join("spin.elf");
    write_tiny_elf(&kernel, 0x20_0000, &[0xeb, 0xfe]); // jmp $
    let disk0 = scratch_disk(&dir.join("disk0.img"), DISK_BYTES);
    let disk1 = scratch_disk(&dir.join("disk1.img"), DISK_BYTES);
    let disk2 = scratch_disk(&dir.join("disk2.img"), DISK_BYTES);
    let mut cmd: Command = stratovirt();
    cmd.arg("-kernel")
        .arg(&kernel)
        .args(["-smp", "2", "-object", "iothread,id=io0"])
        .arg("-drive")
        .arg(format!("id=d0,file={},aio=io_uring", disk0.display()))
        .args(["-device", "virtio-blk-device,drive=d0,id=b0,iothread=io0"])
        .arg("-drive")
        .arg(format!("id=d1,file={},aio=native", disk1.display()))
        .args(["-device", "virtio-blk-device,drive=d1,id=b1"])
        .arg("-drive")
        .arg(format!(
            "id=d2,file={},aio=threads,direct=off",
            disk2.display()
        ))
        .args(["-device", "virtio-blk-device,drive=d2,id=b2"])
        .args(extra);
    spawn_with_qmp(cmd, dir.path())
}

/// Each thread of process `pid`: its name, the `Seccomp`, `Seccomp_filters` and
/// `NoNewPrivs` lines of its status, and its id.
type Thread = (String, String, String, String, String);

fn threads(pid: u32) -> Vec<Thread> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("the VMM's tasks") {
        let task = task.unwrap();
        let tid = task.file_name().to_string_lossy().into_owned();
        let status = std::fs::read_to_string(task.path().join("status")).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        out.push((
            field("Name:"),
            field("Seccomp:"),
            field("Seccomp_filters:"),
            field("NoNewPrivs:"),
            tid,
        ));
    }
    out.sort();
    out
}

fn names(threads: &[Thread]) -> Vec<&str> {
    threads.iter().map(|t| t.0.as_str()).collect()
}

/// Replaces the device of `slot` with a drive on every engine in turn, then puts `image`
/// back as it was: opens, locks, engine set-up and teardown on the slot's thread.
fn hot_replace_on_every_engine(qmp: &mut Qmp, dir: &ScratchDir, device: &str, slot: u32) {
    qmp.ok("device_del", Some(json!({ "id": device })));
    qmp.wait_event("DEVICE_DELETED", QUICK);
    let image = scratch_disk(&dir.join(&format!("hot-{device}.img")), DISK_BYTES);
    for (aio, direct) in [("io_uring", true), ("native", true), ("threads", false)] {
        let node = format!("{device}-{aio}");
        qmp.ok(
            "blockdev-add",
            Some(json!({
                "node-name": node,
                "file": {"driver": "file", "filename": image, "aio": aio},
                "cache": {"direct": direct},
                "read-only": false
            })),
        );
        qmp.ok(
            "device_add",
            Some(json!({"id": node, "driver": "virtio-blk-mmio", "addr": slot})),
        );
        qmp.ok("device_del", Some(json!({ "id": node })));
        qmp.wait_event("DEVICE_DELETED", QUICK);
        qmp.ok("blockdev-del", Some(json!({ "node-name": node })));
    }
}

#[test]
fn every_thread_of_a_running_vmm_runs_under_a_filter() {
    let dir = scratch_dir("seccomp-on");
    let (mut vm, mut qmp) = start(&dir, &[]);
    // The workers of the boot-time aio=threads drive started before the main thread's filter.
    let boot_workers: Vec<String> = threads(vm.pid())
        .into_iter()
        .filter(|t| t.0.starts_with("aio-worker-"))
        .map(|t| t.4)
        .collect();
    assert!(!boot_workers.is_empty());
    hot_replace_on_every_engine(&mut qmp, &dir, "b0", 0);
    hot_replace_on_every_engine(&mut qmp, &dir, "b1", 1);
    // A thread pool QMP opens stays plugged while the threads are looked at: the filtered
    // main thread starts its workers.
    let image = scratch_disk(&dir.join("pool.img"), DISK_BYTES);
    qmp.ok(
        "blockdev-add",
        Some(json!({
            "node-name": "pool",
            "file": {"driver": "file", "filename": image, "aio": "threads"},
            "cache": {"direct": false}
        })),
    );
    qmp.ok(
        "device_add",
        Some(json!({"id": "pool", "driver": "virtio-blk-mmio", "addr": 3})),
    );
    // stop and cont kick the vCPUs out of KVM_RUN with a signal.
    qmp.ok("stop", None);
    qmp.ok("cont", None);
    let status = qmp.ok("query-status", None);
    assert_eq!(status["status"], "running", "{status}");

    let threads = threads(vm.pid());
    for thread in ["stratovirt", "vcpu0", "vcpu1", "iothread-io0"] {
        assert!(names(&threads).contains(&thread), "{thread}: {threads:?}");
    }
    let mut hot_workers = 0;
    for (name, seccomp, filters, no_new_privs, tid) in &threads {
        assert_eq!(seccomp, "2", "{name}: {threads:?}");
        let expected = if name == "stratovirt" {
            // Its allowlist and its two thread-start filters (clone3, clone).
            "3"
        } else if name.starts_with("aio-worker-") && !boot_workers.contains(tid) {
            // A worker the filtered main thread started: the main thread's three, its own two.
            hot_workers += 1;
            "5"
        } else {
            // The role's allowlist and the filter that refuses new threads.
            "2"
        };
        assert_eq!(filters, expected, "{name}: {threads:?}");
        assert_eq!(no_new_privs, "1", "{name}: {threads:?}");
    }
    assert!(hot_workers > 0, "{threads:?}");

    qmp.ok("quit", None);
    let status = vm.wait_exit(QUICK);
    assert_eq!(status.code(), Some(0), "{}", vm.report());
    let log = std::fs::read_to_string(dir.join("vmm.log")).unwrap();
    assert!(
        log.contains("seccomp: every thread runs under the filter of its role"),
        "{log}"
    );
    assert!(!log.contains("forbidden"), "{log}");
}

#[test]
fn with_disable_seccomp_no_thread_is_filtered() {
    let dir = scratch_dir("seccomp-off");
    let (mut vm, mut qmp) = start(&dir, &["-disable-seccomp"]);
    let threads = threads(vm.pid());
    for thread in ["stratovirt", "vcpu0", "vcpu1", "iothread-io0"] {
        assert!(names(&threads).contains(&thread), "{thread}: {threads:?}");
    }
    for (name, seccomp, _, no_new_privs, _) in &threads {
        assert_eq!(seccomp, "0", "{name}: {threads:?}");
        assert_eq!(no_new_privs, "0", "{name}: {threads:?}");
    }
    qmp.ok("quit", None);
    let status = vm.wait_exit(QUICK);
    assert_eq!(status.code(), Some(0), "{}", vm.report());
    let log = std::fs::read_to_string(dir.join("vmm.log")).unwrap();
    assert!(log.contains("seccomp disabled (-disable-seccomp)"), "{log}");
}
