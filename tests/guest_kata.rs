//! Kata Containers drives this binary unchanged: its StratoVirt driver's amd64 command line
//! (`createParams` with the devices it appends) starts a VM, and its block hot-plug, replayed
//! over QMP with the exact JSON govmm (Kata's QMP client) sends, reaches the guest kernel.
//!
//! - Without a boot: each device Kata may add that this VMM has not built (vhost-vsock,
//!   virtio-net with `-netdev`, vhost-user-fs with `-chardev`, virtio-serial/virtconsole) is
//!   refused with one line naming it.
//! - One boot: the stock test kernel (`vmlinux-stock`) with the pause `/init`, as Kata starts
//!   it with an initrd. govmm negotiates, then `blockdev-add` (`driver: raw`, `file.driver`
//!   `file` for a regular file, `host_device` for a loop device), `device_add` (`romfile: ""`,
//!   slot from the disk's name), `device_del`, `blockdev-del`: the guest's virtio_blk driver
//!   logs each disk's capacity, then 0. The guest kernel's hwrng thread reads the virtio-rng
//!   device meanwhile (the VMM logs its first request).
//!
//! What the test changes in Kata's line, and why: `-serial stdio` and `console=ttyS0` instead
//! of `8250.nr_uarts=0` (the only way to see the guest kernel's messages), this host's
//! `clearcpuid=` and `panic=-1` instead of `panic=1` (HOST.md: the emulated kernel's delay
//! loop), `loglevel=7` after `quiet` (the capacity lines are info messages), `-m 1024` (Kata's
//! `default_memory`, 2048 by default).
//!
//! The boot takes minutes on a PVM host. It needs the test guest: `scripts/guest/build.sh`.

#[path = "common/blk.rs"]
mod blk;
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use blk::{base_cmdline, scratch_disk, LiveVm, Qmp};
use common::{guest_dir, run, scratch_dir, stratovirt};

/// Boot of the stock kernel to `Run /init`.
const BOOT_TIMEOUT: Duration = Duration::from_secs(25 * 60);
/// One interrupt round trip through the emulated guest kernel to its console.
const NOTICE_TIMEOUT: Duration = Duration::from_secs(5 * 60);
const QUICK: Duration = Duration::from_secs(60);
const INIT_LINE: &str = "Run /init as init process";
const FILE_DISK_BYTES: u64 = 8 << 20;
const LOOP_DISK_BYTES: u64 = 4 << 20;

/// Kata's `defaultKernelParames`, `defaultMicroVMParames` and the non-debug parameters, minus
/// `panic=1` and `8250.nr_uarts=0` (see the module documentation).
const KATA_KERNEL_PARAMS: &str = "reboot=k net.ifnames=0 ramdom.trust_cpu=on pci=off \
    iommu=off acpi=off quiet agent.log_vport=1025";

/// Kata's command line with the supported devices (`createParams`, then `appendRng`); the
/// caller adds `-kernel`, `-initrd`, `-append` and `-qmp`.
fn kata_args(dir: &Path, entropy: &Path) -> Vec<String> {
    let mut args: Vec<String> = [
        "-name",
        "sandbox-5f0a1e2b3c4d",
        "-uuid",
        "0f4d4b2c-5b8e-4c57-9a36-1e2b3c4d5e6f",
        "-smp",
        "1",
        "-m",
        "1024",
        "-D",
        "-disable-seccomp",
        "-machine",
        "type=microvm,dump-guest-core=off,mem-share=on",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend([
        "-object".to_string(),
        format!("rng-random,id=objrng0,filename={}", entropy.display()),
        "-device".to_string(),
        "virtio-rng-device,rng=objrng0,id=virtio-rng0".to_string(),
    ]);
    args.push("-qmp".into());
    args.push(format!(
        "unix:{},server,nowait",
        dir.join("qmp.socket").display()
    ));
    args
}

/// What Kata appends for the devices this VMM has not built, and the option the refusal
/// names.
fn unbuilt_devices() -> Vec<(Vec<&'static str>, &'static str)> {
    vec![
        (
            vec![
                "-device",
                "vhost-vsock-device,id=vsock-id,guest-cid=3,vhostfd=3",
            ],
            "-device vhost-vsock-device is not supported yet",
        ),
        (
            vec![
                "-netdev",
                "tap,id=eth0,fds=4:5",
                "-device",
                "virtio-net-device,netdev=eth0,id=eth0,mac=02:42:ac:11:00:02",
            ],
            "-netdev tap is not supported yet",
        ),
        (
            vec![
                "-device",
                "virtio-net-device,netdev=eth0,id=eth0,mac=02:42:ac:11:00:02",
            ],
            "-device virtio-net-device is not supported yet",
        ),
        (
            vec![
                "-chardev",
                "socket,id=virtio_fs,path=/run/kata/virtiofs_kata.socket,server,nowait",
                "-device",
                "vhost-user-fs-device,chardev=virtio_fs,tag=kataShared,id=virtio-fs0",
            ],
            "-chardev socket is not supported yet",
        ),
        (
            vec![
                "-device",
                "vhost-user-fs-device,chardev=virtio_fs,tag=kataShared,id=virtio-fs0",
            ],
            "-device vhost-user-fs-device is not supported yet",
        ),
        (
            vec![
                "-device",
                "virtio-serial-device,id=virtio-serial0",
                "-chardev",
                "socket,id=charconsole0,path=/run/kata/console.socket,server,nowait",
                "-device",
                "virtconsole,chardev=charconsole0,id=virtio-console0,nr=0",
            ],
            "-device virtio-serial-device is not supported yet",
        ),
        (
            vec![
                "-device",
                "virtconsole,chardev=charconsole0,id=virtio-console0,nr=0",
            ],
            "-device virtconsole is not supported yet",
        ),
    ]
}

/// A loop device over a file, detached when dropped.
struct Loop(String);

impl Loop {
    fn attach(file: &Path) -> Loop {
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(file)
            .output()
            .expect("run losetup (as root)");
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Loop(String::from_utf8(out.stdout).unwrap().trim().to_string())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// govmm's `blockdev-add` (`blockdevAddBaseArgs`): Go's encoding/json sorts map keys.
fn govmm_blockdev_add(file_driver: &str, path: &str, id: &str) -> String {
    format!(
        r#"{{"arguments":{{"driver":"raw","file":{{"aio":"native","driver":"{file_driver}","filename":"{path}"}},"node-name":"{id}","read-only":false}},"execute":"blockdev-add"}}"#
    ) + "\n"
}

/// govmm's `device_add` (`ExecutePCIDeviceAdd` as Kata's StratoVirt driver calls it).
fn govmm_device_add(id: &str, slot: usize) -> String {
    format!(
        r#"{{"arguments":{{"addr":"{slot}","drive":"{id}","driver":"virtio-blk-mmio","id":"{id}","romfile":""}},"execute":"device_add"}}"#
    ) + "\n"
}

fn govmm(qmp: &mut Qmp, request: &str) {
    let reply = qmp.raw(request);
    assert_eq!(reply, serde_json::json!({"return": {}}), "{request}");
}

/// Plugs `path` (a regular file or a block device) as Kata does, waits for the guest kernel
/// to log `sectors`, unplugs it, waits for 0.
fn kata_hot_plug(vm: &mut LiveVm, qmp: &mut Qmp, path: &str, slot: usize, sectors: u64) {
    let is_file = std::fs::metadata(path).unwrap().file_type().is_file();
    let (driver, id) = if is_file {
        ("file", format!("drive-file{slot}"))
    } else {
        ("host_device", format!("drive-dev{slot}"))
    };
    let disk = ["vda", "vdb", "vdc", "vdd"][slot];
    govmm(qmp, &govmm_blockdev_add(driver, path, &id));
    govmm(qmp, &govmm_device_add(&id, slot));
    let started = Instant::now();
    vm.wait_console(&format!("[{disk}] new size: {sectors} "), NOTICE_TIMEOUT);
    eprintln!(
        "{driver} {path}: the guest saw {sectors} sectors after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    govmm(
        qmp,
        &format!(r#"{{"arguments":{{"id":"{id}"}},"execute":"device_del"}}"#),
    );
    let deleted = qmp.wait_event("DEVICE_DELETED", Duration::from_secs(30));
    assert_eq!(deleted["data"]["device"], id.as_str(), "{deleted}");
    vm.wait_console(&format!("[{disk}] new size: 0 "), NOTICE_TIMEOUT);
    govmm(
        qmp,
        &format!(r#"{{"arguments":{{"node-name":"{id}"}},"execute":"blockdev-del"}}"#),
    );
}

#[test]
fn katas_command_line_boots_and_its_block_hot_plug_reaches_the_guest() {
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
    let dir = scratch_dir("guest-kata");
    let entropy: PathBuf = "/dev/urandom".into();
    let cmdline = format!("{} {KATA_KERNEL_PARAMS} loglevel=7", base_cmdline(&guest));
    let kata = |extra: &[&str]| {
        let mut cmd = stratovirt();
        cmd.args(kata_args(dir.path(), &entropy))
            .arg("-kernel")
            .arg(&kernel)
            .arg("-initrd")
            .arg(&initrd)
            .args(["-append", &cmdline])
            .args(extra);
        cmd
    };

    // What this VMM has not built is refused by name, before any guest runs.
    for (extra, refusal) in unbuilt_devices() {
        run(kata(&extra), QUICK).assert_one_line_error(refusal);
    }

    let file_disk = scratch_disk(&dir.join("container.img"), FILE_DISK_BYTES);
    let loop_file = scratch_disk(&dir.join("loop-backing.img"), LOOP_DISK_BYTES);
    let loop_dev = Loop::attach(&loop_file);

    let mut cmd = kata(&["-serial", "stdio"]);
    cmd.env("STRATOVIRT_LOG_LEVEL", "info");
    let boot = Instant::now();
    let mut vm = LiveVm::spawn(cmd);
    // govmm connects and negotiates (QMPStart, then ExecuteQMPCapabilities).
    let mut qmp = Qmp::connect(&dir.join("qmp.socket"), Duration::from_secs(60));
    vm.wait_console(INIT_LINE, BOOT_TIMEOUT);
    eprintln!(
        "Kata's line: init after {:.1} s",
        boot.elapsed().as_secs_f64()
    );
    assert_eq!(qmp.ok("query-status", None)["status"], "running");

    kata_hot_plug(
        &mut vm,
        &mut qmp,
        file_disk.to_str().unwrap(),
        0,
        FILE_DISK_BYTES / 512,
    );
    kata_hot_plug(&mut vm, &mut qmp, &loop_dev.0, 1, LOOP_DISK_BYTES / 512);

    // The guest kernel's hwrng thread reads the virtio-rng device.
    let deadline = Instant::now() + NOTICE_TIMEOUT;
    while !vm
        .stderr()
        .contains("virtio-rng virtio-rng0: the guest's first request got")
    {
        assert!(
            Instant::now() < deadline,
            "the guest never read the virtio-rng device\n{}",
            vm.report()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let console = vm.console();
    for fatal in ["Kernel panic", "Attempted to kill init", "BUG:"] {
        assert!(!console.contains(fatal), "{fatal}\n{}", vm.report());
    }

    qmp.ok("quit", None);
    let status = vm.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "{}", vm.report());
    assert!(!dir.join("qmp.socket").exists(), "socket left behind");
    let log = vm.stderr();
    assert!(
        log.lines()
            .any(|l| l.contains(":INFO: ") && l.contains("[micro_vm/")),
        "Kata reads ':INFO: ' lines\n{log}"
    );
    eprintln!(
        "Kata's line: whole run {:.1} s",
        boot.elapsed().as_secs_f64()
    );
}
