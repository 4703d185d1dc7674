//! The `stratovirt` binary end to end: bad input is refused with one line, a faulting guest
//! ends the VMM with the reason, a raw flat kernel is entered at 16 MiB, and the test guest
//! boots StratoVirt's quick start (a raw `vmlinux.bin`, the ext4 root on virtio-blk, QMP
//! without negotiation), reports its CPUs, command line and the entropy it reads from
//! `/dev/hwrng`, and reboots (exit status 0).
//!
//! Guest boots are slow on a PVM host (the guest kernel is emulated): each takes minutes.
//! They need the test guest: `scripts/guest/build.sh` (or `STRATOVIRT_GUEST_DIR`).

#[path = "common/blk.rs"]
mod blk;
mod common;

use std::time::{Duration, Instant};

use blk::{base64, base_cmdline, copy_rootfs, LiveVm};
use common::{guest_dir, run, scratch_dir, stratovirt, write_tiny_elf, PlainQmp};

/// Start-up failures happen before any guest code runs.
const QUICK: Duration = Duration::from_secs(60);
/// A Linux boot to init and back under the emulator: 5 minutes on a quiet 2-core PVM host,
/// 14.5 minutes measured with other guest tests running beside it.
const BOOT_TIMEOUT: Duration = Duration::from_secs(25 * 60);

fn quick_failure(args: &[&str], needle: &str) {
    let mut cmd = stratovirt();
    cmd.args(args);
    run(cmd, QUICK).assert_one_line_error(needle);
}

#[test]
fn missing_kernel_file_is_a_one_line_error() {
    quick_failure(&["-kernel", "/nonexistent/vmlinux"], "/nonexistent/vmlinux");
}

#[test]
fn unreadable_kernel_is_a_one_line_error() {
    // A directory is refused before it is opened.
    let dir = scratch_dir("unreadable");
    let path = dir.path().to_str().unwrap();
    quick_failure(&["-kernel", path], path);
    quick_failure(
        &["-kernel", path],
        "is a directory: the kernel must be a regular file",
    );
}

/// A FIFO opened for reading waits for a writer: `-kernel` and `-initrd` on one must fail at
/// once instead (the timeout only catches a hang).
#[test]
fn a_fifo_kernel_or_initrd_is_refused_at_once() {
    let dir = scratch_dir("fifo-kernel");
    let fifo = dir.join("fifo");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let kernel = dir.join("spin.elf");
    write_tiny_elf(&kernel, 0x20_0000, &[0xeb, 0xfe]);
    let fifo = fifo.to_str().unwrap();
    for args in [
        vec!["-kernel", fifo],
        vec!["-kernel", kernel.to_str().unwrap(), "-initrd", fifo],
    ] {
        let mut cmd = stratovirt();
        cmd.args(&args).args(["-m", "128"]);
        let outcome = run(cmd, Duration::from_secs(20));
        outcome.assert_one_line_error(&format!("{fifo} is a FIFO"));
        eprintln!("{args:?} refused after {:?}", outcome.elapsed);
    }
}

#[test]
fn a_file_that_is_not_a_kernel_is_refused() {
    let dir = scratch_dir("not-a-kernel");
    let path = dir.join("notes.txt");
    std::fs::write(&path, "this is not a kernel\n".repeat(200)).unwrap();
    quick_failure(&["-kernel", path.to_str().unwrap()], "not a linux kernel");
}

#[test]
fn memory_size_out_of_range_is_refused() {
    quick_failure(&["-kernel", "/dev/null", "-m", "64"], "-m");
    quick_failure(&["-kernel", "/dev/null", "-m", "1024G"], "-m");
}

#[test]
fn unknown_option_is_refused() {
    quick_failure(&["-kernel", "/dev/null", "-frobnicate"], "-frobnicate");
}

#[test]
fn zero_cpus_are_refused() {
    quick_failure(&["-kernel", "/dev/null", "-smp", "0"], "smp");
}

#[test]
fn unknown_cpu_feature_is_refused() {
    let dir = scratch_dir("cpu-feature");
    let kernel = dir.join("ud2.elf");
    write_tiny_elf(&kernel, 0x20_0000, &[0x0f, 0x0b]);
    quick_failure(
        &[
            "-kernel",
            kernel.to_str().unwrap(),
            "-cpu",
            "host,-warpdrive",
        ],
        "warpdrive",
    );
}

#[test]
fn a_raw_flat_kernel_is_entered_at_16_mib() {
    // A flat image (no ELF or bzImage header): i8042 reset (out 0xfe to port 0x64), then the
    // Linux banner that marks it as a raw kernel image.
    let dir = scratch_dir("raw-kernel");
    let kernel = dir.join("vmlinux.bin");
    let mut image = vec![0xb0, 0xfe, 0xe6, 0x64, 0xeb, 0xfe];
    image.resize(0x100, 0x90);
    image.extend_from_slice(b"Linux version 0.0 (raw image test)");
    std::fs::write(&kernel, image).unwrap();
    let log = dir.join("vmm.log");
    let mut cmd = stratovirt();
    cmd.args(["-kernel", kernel.to_str().unwrap(), "-m", "128", "-D"])
        .arg(&log);
    let outcome = run(cmd, QUICK);
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        outcome.status.and_then(|s| s.code()),
        Some(0),
        "the guest's reset ends the VMM\n{}\n{log}",
        outcome.report()
    );
    assert!(log.contains("Raw kernel loaded, entry 0x1000000"), "{log}");
    assert!(log.contains("GuestReset"), "{log}");
}

#[test]
fn a_guest_that_triple_faults_ends_the_vmm_with_the_reason() {
    let dir = scratch_dir("ud2");
    let kernel = dir.join("ud2.elf");
    // ud2 with an empty IDT: #UD, then #DF, then a triple fault.
    write_tiny_elf(&kernel, 0x20_0000, &[0x0f, 0x0b]);
    let mut cmd = stratovirt();
    cmd.args(["-kernel", kernel.to_str().unwrap(), "-m", "128"]);
    let outcome = run(cmd, QUICK);
    outcome.assert_one_line_error("triple fault");
    assert!(outcome.stderr.contains("RIP 0x"), "{}", outcome.report());
}

/// The guest command line the VMM logged (`-D`): the user's `-append` plus what the VMM adds.
fn logged_cmdline(log: &str) -> Option<String> {
    log.lines().find_map(|line| {
        line.split_once("guest command line: ")
            .map(|(_, cmdline)| cmdline.to_string())
    })
}

/// Boots `kernel` with 2 vCPUs, 512 MiB and the initramfs running `sv.run=info`; checks the
/// guest's report and the VMM's exit status 0 after the guest's `reboot -f`.
fn boot_and_check_info(kernel: &str) {
    let dir = guest_dir();
    let scratch = scratch_dir(&format!("boot-{kernel}"));
    let log_path = scratch.join("vmm.log");
    let user_cmdline = "console=ttyS0 quiet reboot=k panic=-1 sv.run=info";
    let mut cmd = stratovirt();
    cmd.arg("-kernel")
        .arg(dir.join(kernel))
        .arg("-initrd")
        .arg(dir.join("initramfs.cpio.gz"))
        .args([
            "-append",
            user_cmdline,
            "-smp",
            "2",
            "-m",
            "512",
            "-serial",
            "stdio",
        ])
        .arg("-D")
        .arg(&log_path);
    let outcome = run(cmd, BOOT_TIMEOUT);
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    eprintln!(
        "{kernel}: VMM ended after {:.1} s",
        outcome.elapsed.as_secs_f64()
    );
    let report = format!("{}\n--- VMM log ---\n{log}", outcome.report());
    assert!(outcome.status.is_some(), "timed out\n{report}");
    let console = &outcome.stdout;
    assert!(
        console.contains("STRATOVIRT-GUEST-INIT"),
        "no init marker\n{report}"
    );
    assert!(
        console.contains("SV-INFO nproc=2"),
        "guest must see 2 CPUs\n{report}"
    );
    let given = logged_cmdline(&log).unwrap_or_else(|| panic!("VMM logged no cmdline\n{report}"));
    assert!(
        given.starts_with(user_cmdline),
        "the user's -append comes first\n{report}"
    );
    let seen = console
        .lines()
        .find_map(|line| line.trim_end().strip_prefix("SV-INFO cmdline="))
        .unwrap_or_else(|| panic!("no command line report\n{report}"));
    assert_eq!(
        seen, given,
        "the guest sees exactly what the VMM gave\n{report}"
    );
    assert!(console.contains("STRATOVIRT-GUEST-DONE rc=0"), "{report}");
    assert_eq!(outcome.status.and_then(|s| s.code()), Some(0), "{report}");
}

/// The guest's side of the quick-start boot: the hwrng the kernel chose, 16 bytes read from
/// /dev/hwrng, and how the kernel counts CPU 0's package (`siblings`: logical CPUs,
/// `cpu cores`: cores).
const QUICK_START_SCRIPT: &str = r#"
read -r current < /sys/class/misc/hw_random/rng_current
echo "SV-RNG current=$current"
dd if=/dev/hwrng bs=16 count=1 2>/dev/null | od -An -tx1 | while read -r bytes; do echo "SV-RNG bytes=$bytes"; done
while read -r key rest; do
	[ -z "$key" ] && break
	case "$key $rest" in
	"siblings"*|"cpu cores"*) echo "SV-TOPO $key $rest" ;;
	esac
done < /proc/cpuinfo
"#;

/// StratoVirt's quick start (docs/quickstart.md upstream), option for option:
/// `-machine microvm -kernel vmlinux.bin -smp 1 -m 1024 -append "console=ttyS0 pci=off
/// reboot=k quiet panic=1 root=/dev/vda" -drive file=rootfs.ext4,id=rootfs,readonly=off,
/// direct=off -device virtio-blk-device,drive=rootfs,id=rootfs -qmp
/// unix:stratovirt.sock,server,nowait -serial stdio`, with `vmlinux.bin` made by
/// `objcopy -O binary` from the test guest's vmlinux. Beyond it, so that this one boot covers
/// more: `-append`'s words are given unquoted (joined by the VMM) and carry this host's
/// `clearcpuid=` and the guest script; `-smp 2,sockets=1,cores=1,threads=2` instead of
/// `-smp 1` (two vCPUs, as hyper-threads of one core); a virtio-rng device whose entropy file
/// holds only 0x5a bytes (the guest must read those); `-D` for the log. `spectre_v2_user=off`:
/// with SMT siblings the guest kernel switches STIBP (`SPEC_CTRL`) at context switches, and
/// under this host's PVM emulator its user processes then crash (measured: init and its
/// children segfault; without SMT, or with this parameter, they run), see docs/guest.md.
#[test]
fn stratovirt_quick_start_boots_a_raw_vmlinux_bin() {
    let guest = guest_dir();
    let dir = scratch_dir("quick-start");
    let kernel = dir.join("vmlinux.bin");
    let objcopy = std::process::Command::new("objcopy")
        .args(["-O", "binary"])
        .arg(guest.join("vmlinux"))
        .arg(&kernel)
        .status()
        .expect("run objcopy (binutils)");
    assert!(objcopy.success(), "objcopy -O binary failed");
    let rootfs = copy_rootfs(&guest, dir.path());
    let entropy = dir.join("entropy");
    std::fs::write(&entropy, [0x5a; 4096]).unwrap();
    let socket = dir.join("stratovirt.sock");
    let log_path = dir.join("vmm.log");
    let clearcpuid = base_cmdline(&guest)
        .split_whitespace()
        .find(|w| w.starts_with("clearcpuid="))
        .map(str::to_string);
    let mut append: Vec<String> = "console=ttyS0 pci=off reboot=k quiet panic=1 root=/dev/vda"
        .split_whitespace()
        .map(str::to_string)
        .collect();
    append.extend(clearcpuid);
    append.push("spectre_v2_user=off".into());
    append.push("sv.run=info".into());
    append.push(format!("sv.cmd={}", base64(QUICK_START_SCRIPT.as_bytes())));
    let mut cmd = stratovirt();
    cmd.args(["-machine", "microvm", "-kernel"])
        .arg(&kernel)
        .args([
            "-smp",
            "2,sockets=1,cores=1,threads=2",
            "-m",
            "1024",
            "-append",
        ])
        .args(&append)
        .arg("-drive")
        .arg(format!(
            "file={},id=rootfs,readonly=off,direct=off",
            rootfs.display()
        ))
        .args([
            "-device",
            "virtio-blk-device,drive=rootfs,id=rootfs",
            "-qmp",
        ])
        .arg(format!("unix:{},server,nowait", socket.display()))
        .args(["-serial", "stdio", "-object"])
        .arg(format!(
            "rng-random,id=objrng0,filename={}",
            entropy.display()
        ))
        .args([
            "-device",
            "virtio-rng-device,rng=objrng0,id=virtio-rng0",
            "-D",
        ])
        .arg(&log_path);
    let started = Instant::now();
    let mut vm = LiveVm::spawn(cmd);

    // QMP over a plain socket, no negotiation, while the guest boots.
    let mut qmp = PlainQmp::connect(&socket);
    assert_eq!(qmp.execute("stop"), serde_json::json!({"return": {}}));
    assert_eq!(qmp.execute("query-status")["return"]["status"], "paused");
    assert_eq!(qmp.execute("cont"), serde_json::json!({"return": {}}));
    assert_eq!(qmp.execute("query-status")["return"]["status"], "running");
    drop(qmp);

    vm.wait_console("STRATOVIRT-GUEST-DONE", BOOT_TIMEOUT);
    let status = vm.wait_exit(Duration::from_secs(120));
    eprintln!(
        "quick start (raw vmlinux.bin): VMM ended after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let report = format!("{}\n--- VMM log ---\n{log}", vm.report());
    assert_eq!(
        status.code(),
        Some(0),
        "the guest's reboot ends the VMM\n{report}"
    );
    assert!(!socket.exists(), "socket left behind\n{report}");
    assert!(
        log.contains("Raw kernel loaded, entry 0x1000000"),
        "{report}"
    );
    let console = vm.console();
    assert!(
        console.contains("STRATOVIRT-GUEST-ROOT"),
        "init on the ext4 root\n{report}"
    );
    assert!(console.contains("SV-INFO nproc=2"), "{report}");
    let given = logged_cmdline(&log).unwrap_or_else(|| panic!("no cmdline logged\n{report}"));
    assert!(
        given.starts_with(&append.join(" ")),
        "the unquoted words, joined, come first\n{report}"
    );
    let seen = console
        .lines()
        .find_map(|line| line.trim_end().strip_prefix("SV-INFO cmdline="))
        .unwrap_or_else(|| panic!("no command line report\n{report}"));
    assert_eq!(seen, given, "{report}");
    let marker = |prefix: &str| {
        console
            .lines()
            .find_map(|line| line.trim_end().strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix} line\n{report}"))
            .to_string()
    };
    assert!(
        marker("SV-RNG current=").starts_with("virtio_rng"),
        "{report}"
    );
    let bytes = marker("SV-RNG bytes=");
    let bytes: Vec<&str> = bytes.split_whitespace().collect();
    assert_eq!(bytes, ["5a"; 16], "the bytes of the entropy file\n{report}");
    // CPU 0's package as /proc/cpuinfo counts it: two logical CPUs, one core.
    let topology: Vec<String> = console
        .lines()
        .filter_map(|l| l.trim_end().strip_prefix("SV-TOPO "))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(
        topology,
        ["siblings : 2", "cpu cores : 1"],
        "two threads of one core\n{report}"
    );
    assert!(console.contains("STRATOVIRT-GUEST-DONE rc=0"), "{report}");
}

/// Measured here (see docs/boot.md, "What is tested"): the same guest as a bzImage reached
/// init after 809 s with 1 vCPU; with 2 vCPUs this test passed in 914 s on a busy host (load
/// average about 9), and another run did not reach init within 900 s (the decompressor runs
/// in the CPL0 emulator too). That does not fit the CI budget, so it runs only by hand:
/// `cargo test -p stratovirt --test boot -- --ignored bzimage`.
#[test]
#[ignore = "a bzImage boot takes about 15 min under the PVM emulator; run by hand (docs/boot.md)"]
fn bzimage_boots_to_init_with_two_cpus_and_reboots() {
    boot_and_check_info("bzImage");
}

#[test]
fn sigterm_as_soon_as_the_pid_file_appears_ends_the_vmm_in_order() {
    let dir = scratch_dir("sigterm");
    let kernel = dir.join("spin.elf");
    write_tiny_elf(&kernel, 0x20_0000, &[0xeb, 0xfe]); // jmp $
    let pidfile = dir.join("vm.pid");
    let child = stratovirt()
        .arg("-kernel")
        .arg(&kernel)
        .arg("-pidfile")
        .arg(&pidfile)
        .args(["-m", "128", "-serial", "stdio"])
        .spawn()
        .expect("spawn stratovirt");
    let deadline = std::time::Instant::now() + QUICK;
    let pid = loop {
        if let Ok(text) = std::fs::read_to_string(&pidfile) {
            if text.ends_with('\n') {
                break text.trim().to_string();
            }
        }
        assert!(std::time::Instant::now() < deadline, "no pid file");
        std::thread::sleep(Duration::from_millis(1));
    };
    assert_eq!(pid, child.id().to_string());
    // At once, as a supervisor that reads the pid file may: the VMM is still being built, and
    // the signal waits for its main loop.
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "stderr: {stderr}");
    assert!(stderr.is_empty(), "stderr: {stderr}");
    assert!(!pidfile.exists(), "pid file removed at exit");
}

/// The pid file is locked: a second VMM given it is refused with the first one's pid, and a
/// stale one (left by a VMM that was killed, so nobody holds its lock) is taken over.
#[test]
fn a_pid_file_held_by_a_running_vmm_is_refused() {
    let dir = scratch_dir("pidfile-held");
    let kernel = dir.join("spin.elf");
    write_tiny_elf(&kernel, 0x20_0000, &[0xeb, 0xfe]); // jmp $
    let pidfile = dir.join("vm.pid");
    std::fs::write(&pidfile, "4194303\n").unwrap();
    let vmm = || {
        let mut cmd = stratovirt();
        cmd.arg("-kernel")
            .arg(&kernel)
            .arg("-pidfile")
            .arg(&pidfile)
            .args(["-m", "128"]);
        cmd
    };
    let mut first = vmm().spawn().expect("spawn stratovirt");
    let deadline = std::time::Instant::now() + QUICK;
    let first_pid = first.id().to_string();
    loop {
        let text = std::fs::read_to_string(&pidfile).unwrap_or_default();
        if text == format!("{first_pid}\n") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the stale pid file was not taken over: {text:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let second = run(vmm(), QUICK);
    second.assert_one_line_error(&format!(
        "pid file {} is held by a running VMM (pid {first_pid})",
        pidfile.display()
    ));
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap(),
        format!("{first_pid}\n"),
        "the holder's pid file is untouched"
    );
    assert_eq!(first.try_wait().unwrap(), None, "the first VMM still runs");

    let killed = std::process::Command::new("kill")
        .args(["-TERM", &first_pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let output = first.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0));
    assert!(!pidfile.exists(), "pid file removed at exit");
}
