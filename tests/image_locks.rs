//! Who may use an image, seen from the `stratovirt` binary: image locks between two VMMs,
//! between two drives of one VMM and between a running VM and QMP `blockdev-add`; and paths
//! that are not images (FIFO, character device, directory) refused by QMP at once, the VM
//! still answering afterwards. No guest boots: the kernel is a spinning ELF.

#[path = "common/blk.rs"]
mod blk;
mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use blk::{scratch_disk, spawn_with_qmp, LiveVm, Qmp};
use common::{run, scratch_dir, stratovirt, write_tiny_elf, ScratchDir};
use serde_json::{json, Value};

const QUICK: Duration = Duration::from_secs(60);
const DISK_BYTES: u64 = 1 << 20;

/// The command of a VMM on a spinning kernel in `dir`, with `drives` (`-drive` values).
fn vmm(dir: &ScratchDir, drives: &[String]) -> Command {
    let kernel = dir.join("spin.elf");
    if !kernel.exists() {
        write_tiny_elf(&kernel, 0x20_0000, &[0xeb, 0xfe]); // jmp $
    }
    let mut cmd = stratovirt();
    cmd.arg("-kernel").arg(&kernel);
    for drive in drives {
        cmd.arg("-drive").arg(drive);
    }
    cmd
}

/// A running VMM with `drives` and a QMP client; its block devices are open once QMP answers.
fn running(dir: &ScratchDir, name: &str, drives: &[String]) -> (LiveVm, Qmp) {
    let sub = dir.join(name);
    std::fs::create_dir_all(&sub).unwrap();
    spawn_with_qmp(vmm(dir, drives), &sub)
}

fn drive(id: &str, image: &Path, extra: &str) -> String {
    format!("id={id},file={},aio=io_uring{extra}", image.display())
}

fn assert_running(qmp: &mut Qmp) {
    let status = qmp.ok("query-status", None);
    assert_eq!(status["status"], "running", "{status}");
}

fn quit(mut vm: LiveVm, mut qmp: Qmp) {
    qmp.ok("quit", None);
    let status = vm.wait_exit(QUICK);
    assert_eq!(status.code(), Some(0), "{}", vm.report());
}

#[test]
fn a_second_vmm_on_a_written_image_is_refused() {
    let dir = scratch_dir("locks-two-vmms");
    let image = scratch_disk(&dir.join("disk.img"), DISK_BYTES);
    let (vm, mut qmp) = running(&dir, "first", &[drive("disk0", &image, "")]);

    // Writer beside a writer, and a reader beside a writer: refused, one line naming both.
    for extra in ["", ",readonly=on"] {
        let second = run(vmm(&dir, &[drive("disk0", &image, extra)]), QUICK);
        second.assert_one_line_error(&format!(
            "cannot open drive disk0 ({path}): image {path} is locked: another process (or \
             drive) uses it for writing",
            path = image.display()
        ));
    }
    // With file.locking=off the second one neither looks nor locks.
    let unlocked = drive("disk0", &image, ",file.locking=off");
    let (second, mut second_qmp) = running(&dir, "unlocked", &[unlocked]);
    assert_running(&mut second_qmp);
    quit(second, second_qmp);
    assert_running(&mut qmp);
    quit(vm, qmp);

    // Once the first VMM is gone, the image is free.
    let (vm, qmp) = running(&dir, "again", &[drive("disk0", &image, "")]);
    quit(vm, qmp);
}

#[test]
fn readers_share_an_image() {
    let dir = scratch_dir("locks-readers");
    let image = scratch_disk(&dir.join("disk.img"), DISK_BYTES);
    let readonly = drive("disk0", &image, ",readonly=on");
    let (first, mut first_qmp) = running(&dir, "first", std::slice::from_ref(&readonly));
    let (second, mut second_qmp) = running(&dir, "second", &[readonly]);
    assert_running(&mut first_qmp);
    assert_running(&mut second_qmp);
    // A writer is refused beside them.
    run(vmm(&dir, &[drive("disk0", &image, "")]), QUICK)
        .assert_one_line_error("uses it read-only and does not share writing");
    quit(first, first_qmp);
    quit(second, second_qmp);
}

#[test]
fn two_drives_of_one_vmm_on_one_image_are_refused() {
    let dir = scratch_dir("locks-two-drives");
    let image = scratch_disk(&dir.join("disk.img"), DISK_BYTES);
    let outcome = run(
        vmm(
            &dir,
            &[drive("disk0", &image, ""), drive("disk1", &image, "")],
        ),
        QUICK,
    );
    outcome.assert_one_line_error(&format!(
        "cannot open drive disk1 ({path}): image {path} is locked",
        path = image.display()
    ));
}

fn blockdev_add(node: &str, filename: &Path, read_only: bool, file_extra: Value) -> Value {
    let mut file = json!({"driver": "file", "filename": filename, "aio": "io_uring"});
    if let (Some(file), Some(extra)) = (file.as_object_mut(), file_extra.as_object()) {
        file.extend(extra.clone());
    }
    json!({"node-name": node, "file": file, "read-only": read_only})
}

#[test]
fn qmp_cannot_plug_the_running_vms_root_image_again() {
    let dir = scratch_dir("locks-qmp");
    let root = scratch_disk(&dir.join("root.img"), DISK_BYTES);
    let (vm, mut qmp) = running(&dir, "vm", &[drive("root", &root, "")]);

    for read_only in [false, true] {
        let desc = qmp.fails(
            "blockdev-add",
            Some(blockdev_add("again", &root, read_only, json!({}))),
            "GenericError",
        );
        assert!(
            desc.contains(&format!(
                "image {} is locked: another process (or drive) uses it for writing",
                root.display()
            )),
            "{desc}"
        );
        assert_running(&mut qmp);
    }
    // `"file": {"locking": "on"}` is the same here; "off" opens it anyway.
    qmp.fails(
        "blockdev-add",
        Some(blockdev_add(
            "again",
            &root,
            false,
            json!({"locking": "on"}),
        )),
        "GenericError",
    );
    qmp.ok(
        "blockdev-add",
        Some(blockdev_add(
            "again",
            &root,
            true,
            json!({"locking": "off"}),
        )),
    );
    qmp.ok("blockdev-del", Some(json!({"node-name": "again"})));

    // A node QMP opened holds its lock too: a second node on it is refused.
    let other = scratch_disk(&dir.join("other.img"), DISK_BYTES);
    qmp.ok(
        "blockdev-add",
        Some(blockdev_add("n1", &other, false, json!({}))),
    );
    let desc = qmp.fails(
        "blockdev-add",
        Some(blockdev_add("n2", &other, false, json!({}))),
        "GenericError",
    );
    assert!(desc.contains("is locked"), "{desc}");
    assert_running(&mut qmp);
    quit(vm, qmp);
}

#[test]
fn qmp_refuses_paths_that_are_not_images_at_once() {
    let dir = scratch_dir("kinds-qmp");
    let fifo = dir.join("fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let (vm, mut qmp) = running(&dir, "vm", &[]);
    for (path, kind) in [
        (fifo.as_path(), "FIFO"),
        (Path::new("/dev/zero"), "character device"),
        (Path::new("/dev/kvm"), "character device"),
        (dir.path(), "directory"),
    ] {
        // Read-only: a FIFO opened for reading would wait for a writer, in the main loop.
        for read_only in [true, false] {
            let started = std::time::Instant::now();
            let desc = qmp.fails(
                "blockdev-add",
                Some(blockdev_add("n", path, read_only, json!({}))),
                "GenericError",
            );
            eprintln!("{} refused after {:?}", path.display(), started.elapsed());
            assert!(
                desc.contains(&format!(
                    "{} is a {kind}: only regular files and block devices can be disk images",
                    path.display()
                )),
                "{desc}"
            );
            // The main loop still serves QMP.
            assert_running(&mut qmp);
        }
    }
    quit(vm, qmp);
}
