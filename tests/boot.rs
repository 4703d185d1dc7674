//! The `stratovirt` binary end to end: bad input is refused with one line, a faulting guest
//! ends the VMM with the reason, and the test guest boots, reports its CPUs and command line,
//! and reboots (exit status 0).
//!
//! Guest boots are slow on a PVM host (the guest kernel is emulated): each takes minutes.
//! They need the test guest: `scripts/guest/build.sh` (or `STRATOVIRT_GUEST_DIR`).

mod common;

use std::time::Duration;

use common::{guest_dir, run, scratch_dir, stratovirt, write_tiny_elf};

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
    // A directory opens but cannot be read, even as root.
    let dir = scratch_dir("unreadable");
    let path = dir.path().to_str().unwrap();
    quick_failure(&["-kernel", path], path);
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

#[test]
fn elf_vmlinux_boots_to_init_with_two_cpus_and_reboots() {
    boot_and_check_info("vmlinux");
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
fn sigterm_ends_the_vmm_in_order_and_removes_the_pid_file() {
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
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(pid, child.id().to_string());
    std::thread::sleep(Duration::from_millis(300));
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
