//! The machine's lifecycle on real KVM with a tiny hand-made kernel: start paused (`-S`),
//! resume, pause, quit; and a guest that writes 0xFE to the i8042 command port ends the VM
//! as a guest reset.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use machine_manager::config::VmConfig;
use micro_vm::{MicroVm, VmExit, VmState};

use common::Scratch;

/// These tests drive the machine from the test's own thread, which `MicroVm::start` would
/// confine to the main thread's seccomp filter: they run without it (the sandbox is tested
/// with the VMM on a thread of its own in `shutdown.rs` and `io_errors.rs`, and in the
/// binary's tests).
fn config(kernel: PathBuf, start_paused: bool) -> VmConfig {
    VmConfig {
        kernel: Some(kernel),
        mem_size: 128 << 20,
        start_paused,
        disable_seccomp: true,
        ..VmConfig::default()
    }
}

#[test]
fn paused_start_resume_pause_and_quit() {
    let dir = Scratch::new("spin");
    let kernel = dir.spin_kernel();
    let vm = Arc::new(MicroVm::new(&config(kernel, true)).unwrap());
    assert_eq!(vm.state(), VmState::Created);
    assert_eq!(vm.vcpu_count(), 1);
    vm.start().unwrap();
    assert_eq!(vm.state(), VmState::Paused, "-S starts paused");
    assert!(vm.pause().is_err(), "already paused");
    vm.resume().unwrap();
    assert_eq!(vm.state(), VmState::Running);
    assert!(vm.resume().is_err(), "already running");
    vm.pause().unwrap();
    assert_eq!(vm.state(), VmState::Paused);
    vm.resume().unwrap();
    assert!(vm.start().is_err(), "starts once");

    let runner = vm.clone();
    let thread = std::thread::spawn(move || runner.run());
    std::thread::sleep(Duration::from_millis(100));
    vm.shutdown();
    let started = Instant::now();
    let exit = thread.join().unwrap().unwrap();
    assert_eq!(exit, VmExit::HostQuit);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(vm.state(), VmState::Shutdown);
}

#[test]
fn i8042_reset_command_ends_the_vm_as_a_guest_reset() {
    // mov al, 0xfe; out 0x64, al; jmp $
    let dir = Scratch::new("reset");
    let kernel = dir.tiny_kernel("reset", &[0xb0, 0xfe, 0xe6, 0x64, 0xeb, 0xfe]);
    let vm = MicroVm::new(&config(kernel, false)).unwrap();
    vm.start().unwrap();
    assert_eq!(vm.run().unwrap(), VmExit::GuestReset);
}

#[test]
fn guest_command_line_lists_the_users_words_first() {
    let dir = Scratch::new("cmdline");
    let kernel = dir.spin_kernel();
    let mut cfg = config(kernel, true);
    cfg.cmdline = "console=ttyS0 quiet".into();
    let vm = MicroVm::new(&cfg).unwrap();
    assert_eq!(vm.guest_cmdline(), "", "composed at start");
    vm.start().unwrap();
    assert!(vm.guest_cmdline().starts_with("console=ttyS0 quiet"));
    vm.shutdown();
    assert_eq!(vm.run().unwrap(), VmExit::HostQuit);
}
