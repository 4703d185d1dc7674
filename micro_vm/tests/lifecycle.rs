//! The machine's lifecycle on real KVM with a tiny hand-made kernel: start paused (`-S`),
//! resume, pause, quit; and a guest that writes 0xFE to the i8042 command port ends the VM
//! as a guest reset.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use machine_manager::config::VmConfig;
use micro_vm::{MicroVm, VmExit, VmState};

const LOAD_ADDR: u64 = 0x20_0000;

/// Writes an ELF64 x86_64 executable with `code` loaded and entered at `LOAD_ADDR`.
fn tiny_kernel(name: &str, code: &[u8]) -> PathBuf {
    const CODE_OFFSET: usize = 0x1000;
    let mut elf = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    elf.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // x86_64
    elf.extend_from_slice(&1u32.to_le_bytes());
    elf.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // entry
    elf.extend_from_slice(&64u64.to_le_bytes()); // phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // shoff
    elf.extend_from_slice(&0u32.to_le_bytes()); // flags
    for half in [64u16, 56, 1, 64, 0, 0] {
        elf.extend_from_slice(&half.to_le_bytes());
    }
    elf.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    elf.extend_from_slice(&5u32.to_le_bytes()); // R+X
    let len = code.len() as u64;
    for word in [CODE_OFFSET as u64, LOAD_ADDR, LOAD_ADDR, len, len, 0x1000] {
        elf.extend_from_slice(&word.to_le_bytes());
    }
    elf.resize(CODE_OFFSET, 0);
    elf.extend_from_slice(code);
    let path = std::env::temp_dir().join(format!("micro-vm-{}-{name}.elf", std::process::id()));
    std::fs::write(&path, elf).unwrap();
    path
}

fn config(kernel: PathBuf, start_paused: bool) -> VmConfig {
    VmConfig {
        kernel: Some(kernel),
        mem_size: 128 << 20,
        start_paused,
        ..VmConfig::default()
    }
}

#[test]
fn paused_start_resume_pause_and_quit() {
    let kernel = tiny_kernel("spin", &[0xeb, 0xfe]); // jmp $
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
    let kernel = tiny_kernel("reset", &[0xb0, 0xfe, 0xe6, 0x64, 0xeb, 0xfe]);
    let vm = MicroVm::new(&config(kernel, false)).unwrap();
    vm.start().unwrap();
    assert_eq!(vm.run().unwrap(), VmExit::GuestReset);
}

#[test]
fn guest_command_line_lists_the_users_words_first() {
    let kernel = tiny_kernel("cmdline", &[0xeb, 0xfe]);
    let mut cfg = config(kernel, true);
    cfg.cmdline = "console=ttyS0 quiet".into();
    let vm = MicroVm::new(&cfg).unwrap();
    assert_eq!(vm.guest_cmdline(), "", "composed at start");
    vm.start().unwrap();
    assert!(vm.guest_cmdline().starts_with("console=ttyS0 quiet"));
    vm.shutdown();
    assert_eq!(vm.run().unwrap(), VmExit::HostQuit);
}
