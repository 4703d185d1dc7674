//! Block options refused at start-up, before any guest code runs: each is one line on
//! stderr naming the drive and what is wrong, and exit status 1. Needs /dev/kvm (the VM is
//! created before drives are opened) but no guest.

mod common;

use std::time::Duration;

use common::{run, scratch_dir, stratovirt};

const QUICK: Duration = Duration::from_secs(60);

fn refused(args: &[&str], needles: &[&str]) {
    let mut cmd = stratovirt();
    cmd.args(["-kernel", "/dev/null"]).args(args);
    let outcome = run(cmd, QUICK);
    for needle in needles {
        outcome.assert_one_line_error(needle);
    }
}

#[test]
fn a_missing_image_names_the_drive_and_the_path() {
    let dir = scratch_dir("cli-missing");
    let path = dir.join("absent.img");
    let drive = format!("id=disk0,file={},aio=io_uring", path.display());
    refused(&["-drive", &drive], &["disk0", path.to_str().unwrap()]);
}

#[test]
fn a_directory_cannot_be_a_drive() {
    let dir = scratch_dir("cli-dir");
    let drive = format!("id=disk1,file={},aio=off,direct=off", dir.path().display());
    refused(
        &["-drive", &drive],
        &[
            "disk1",
            &format!(
                "{} is a directory: only regular files and block devices can be disk images",
                dir.path().display()
            ),
        ],
    );
}

/// A FIFO opened for reading waits for a writer, and a character device is no disk: both are
/// refused at once (the short timeout only catches a hang), read-only or not.
#[test]
fn fifos_and_character_devices_are_refused_at_once() {
    let dir = scratch_dir("cli-fifo");
    let fifo = dir.join("fifo");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    for (path, kind) in [
        (fifo.to_str().unwrap(), "FIFO"),
        ("/dev/zero", "character device"),
    ] {
        for readonly in ["on", "off"] {
            let mut cmd = stratovirt();
            let drive = format!("id=disk5,file={path},readonly={readonly},aio=off,direct=off");
            cmd.args(["-kernel", "/dev/null", "-drive", &drive]);
            let outcome = run(cmd, Duration::from_secs(20));
            outcome.assert_one_line_error(&format!(
                "{path} is a {kind}: only regular files and block devices can be disk images"
            ));
            eprintln!(
                "{path} readonly={readonly} refused after {:?}",
                outcome.elapsed
            );
        }
    }
}

#[test]
fn aio_native_without_direct_is_refused_with_the_reason() {
    let dir = scratch_dir("cli-native");
    let path = dir.join("disk.img");
    std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
    let drive = format!("id=disk2,file={},aio=native,direct=off", path.display());
    refused(&["-drive", &drive], &["disk2", "direct"]);
}

#[test]
fn an_unknown_engine_is_refused() {
    refused(&["-drive", "id=disk3,file=/dev/null,aio=posix"], &["posix"]);
}

#[test]
fn a_device_on_an_unknown_iothread_is_refused() {
    let dir = scratch_dir("cli-iothread");
    let path = dir.join("disk.img");
    std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
    let drive = format!("id=disk4,file={},if=none", path.display());
    refused(
        &[
            "-drive",
            &drive,
            "-device",
            "virtio-blk-device,drive=disk4,id=blk4,iothread=nope",
        ],
        &["nope"],
    );
}

#[test]
fn good_drives_get_past_the_block_set_up() {
    // With valid drives on every engine and an iothread, start-up fails only at the kernel
    // (`/dev/null`, refused as a character device).
    let dir = scratch_dir("cli-good");
    let mut args: Vec<String> = vec!["-object".into(), "iothread,id=io0".into()];
    for (i, aio) in ["off", "threads", "native", "io_uring"].iter().enumerate() {
        let path = dir.join(&format!("disk{i}.img"));
        std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
        args.push("-drive".into());
        args.push(format!("id=d{i},file={},aio={aio},if=none", path.display()));
        args.push("-device".into());
        args.push(format!("virtio-blk-device,drive=d{i},id=b{i},iothread=io0"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    refused(
        &args,
        &["/dev/null is a character device: the kernel must be a regular file"],
    );
}
