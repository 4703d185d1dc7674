//! A guest's ext4 root on an image whose host file system fills up, with `werror=stop`: the
//! guest writes a file larger than the space left, the host answers `ENOSPC`, and the VM
//! pauses (`BLOCK_IO_ERROR` with `nospace`, `STOP`, `query-status` `io-error`) instead of
//! failing the guest's writes. The host then grows the file system and sends `cont`: the
//! guest's write finishes, the guest ends normally, and `e2fsck -fn` finds the root clean.
//!
//! One boot (minutes on a PVM host). Needs the test guest: `scripts/guest/build.sh`.

#[path = "common/blk.rs"]
mod blk;
mod common;

use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::Duration;

use blk::{base64, base_cmdline, copy_rootfs, spawn_with_qmp};
use common::{guest_dir, scratch_dir, stratovirt};
use util::testing::Tmpfs;

const BOOT_TIMEOUT: Duration = Duration::from_secs(25 * 60);
/// Space left on the host file system for the guest's new data.
const SPARE: u64 = 2 << 20;
/// The guest writes this much, more than `SPARE`.
const GUEST_SCRIPT: &str = "echo SV-ENOSPC-WRITING; \
    dd if=/dev/zero of=/sv-enospc bs=64k count=128 conv=fsync 2>/dev/null \
    && echo SV-ENOSPC-WROTE; rm -f /sv-enospc; sync";

#[test]
fn a_full_host_file_system_pauses_the_guest_until_it_grows() {
    let guest = guest_dir();
    let dir = scratch_dir("guest-enospc");
    let template = copy_rootfs(&guest, dir.path());
    // The root image on a tmpfs with its free blocks as holes, then the tmpfs shrunk to what
    // the image uses plus a little: the guest's new data soon has no host space.
    let tmpfs = Tmpfs::mount("guest-enospc", 512 << 20).expect("mount a tmpfs");
    let root = tmpfs.path().join("rootfs.ext4");
    let copied = Command::new("cp")
        .arg("--sparse=always")
        .arg(&template)
        .arg(&root)
        .status()
        .expect("run cp");
    assert!(copied.success(), "cp --sparse=always failed");
    let used = std::fs::metadata(&root).expect("root image").blocks() * 512;
    tmpfs.resize(used + SPARE).expect("shrink the tmpfs");
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
            "id=root,file={},aio=io_uring,werror=stop,if=none",
            root.display()
        ))
        .args([
            "-device",
            "virtio-blk-device,drive=root,id=rootdev,iothread=io0",
        ]);
    let (mut vm, mut qmp) = spawn_with_qmp(cmd, dir.path());

    // The host may run out of space while the guest still boots (its journal and the start
    // of the write share the spare space), and the VM then pauses before the guest's tty has
    // sent out what it printed: wait for the event, not for the console.
    let error = qmp.wait_event("BLOCK_IO_ERROR", BOOT_TIMEOUT);
    assert_eq!(error["data"]["nospace"], true, "{error}");
    assert_eq!(error["data"]["action"], "stop", "{error}");
    assert_eq!(error["data"]["device"], "rootdev", "{error}");
    assert_eq!(error["data"]["node-name"], "root", "{error}");
    qmp.wait_event("STOP", Duration::from_secs(60));
    assert_eq!(qmp.ok("query-status", None)["status"], "io-error");
    assert!(
        !vm.console().contains("SV-ENOSPC-WROTE"),
        "the guest's write finished without space:\n{}",
        vm.report()
    );
    assert!(
        !vm.console().contains("I/O error"),
        "the guest saw an I/O error:\n{}",
        vm.report()
    );

    tmpfs
        .resize(used + SPARE + (64 << 20))
        .expect("grow the tmpfs");
    qmp.ok("cont", None);
    vm.wait_console("SV-ENOSPC-WROTE", Duration::from_secs(600));
    let status = vm.wait_exit(Duration::from_secs(600));
    assert_eq!(status.code(), Some(0), "{}", vm.report());
    assert!(
        vm.console().contains("STRATOVIRT-GUEST-DONE rc=0"),
        "{}",
        vm.report()
    );

    let out = Command::new("e2fsck")
        .args(["-f", "-n"])
        .arg(&root)
        .output()
        .expect("run e2fsck");
    assert!(
        out.status.success(),
        "e2fsck -fn:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
