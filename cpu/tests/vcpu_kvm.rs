//! vCPUs on real KVM: a tiny long-mode guest drives port I/O, is paused and resumed, and a
//! guest that faults with no IDT ends in a reported triple fault.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use address_space::{Bus, BusDevice, GuestMemory};
use cpu::{BootRegisters, CpuError, CpuModel, Vcpu, VcpuEvent, VcpuHandle, VcpuState};
use kvm_bindings::{kvm_userspace_memory_region, CpuId};
use kvm_ioctls::{Kvm, VmFd};

const MEM_SIZE: u64 = 0x20_0000;
const GDT: u64 = 0x500;
const PML4: u64 = 0x9000;
const CODE: u64 = 0x1000;
const PORT: u16 = 0x80;

/// Counts the guest's writes to its port and keeps the values written.
struct Counter(Arc<AtomicU64>, Arc<Mutex<Vec<u64>>>);

impl BusDevice for Counter {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, _offset: u64, data: &[u8]) {
        let mut value = [0u8; 8];
        value[..data.len().min(8)].copy_from_slice(&data[..data.len().min(8)]);
        self.1.lock().unwrap().push(u64::from_le_bytes(value));
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

struct TestVm {
    _kvm: Kvm,
    vm: VmFd,
    mem: GuestMemory,
    pio: Arc<Bus>,
    writes: Arc<AtomicU64>,
    values: Arc<Mutex<Vec<u64>>>,
}

/// A VM with 2 MiB of identity-mapped RAM, a flat 64-bit GDT and `code` at `CODE`.
fn test_vm(code: &[u8]) -> TestVm {
    let kvm = Kvm::new().expect("open /dev/kvm");
    let vm = kvm.create_vm().unwrap();
    vm.set_tss_address(0xfffb_d000).unwrap();
    vm.create_irq_chip().unwrap();
    let mem = GuestMemory::new(&[(0, MEM_SIZE)]).unwrap();
    let region = kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: 0,
        memory_size: MEM_SIZE,
        userspace_addr: mem.regions()[0].host_address(),
        flags: 0,
    };
    // SAFETY: the region is a live mapping owned by `mem`, which outlives the VM in `TestVm`
    // (fields drop in declaration order: the VM before the memory).
    unsafe { vm.set_user_memory_region(region).unwrap() };
    mem.write_obj(&0u64, GDT).unwrap();
    mem.write_obj(&0u64, GDT + 8).unwrap();
    mem.write_obj(&0x00af_9b00_0000_ffff_u64, GDT + 0x10)
        .unwrap();
    mem.write_obj(&0x00cf_9300_0000_ffff_u64, GDT + 0x18)
        .unwrap();
    mem.write_obj(&(PML4 + 0x1000 + 3), PML4).unwrap();
    mem.write_obj(&(PML4 + 0x2000 + 3), PML4 + 0x1000).unwrap();
    mem.write_obj(&0x83u64, PML4 + 0x2000).unwrap(); // 2 MiB page at 0, present, writable
    mem.write(code, CODE).unwrap();
    let pio = Arc::new(Bus::new());
    let writes = Arc::new(AtomicU64::new(0));
    let values = Arc::new(Mutex::new(Vec::new()));
    let counter = Counter(writes.clone(), values.clone());
    pio.insert(u64::from(PORT), 4, Arc::new(Mutex::new(counter)))
        .unwrap();
    TestVm {
        vm,
        mem,
        pio,
        writes,
        values,
        _kvm: kvm,
    }
}

fn boot_registers() -> BootRegisters {
    BootRegisters {
        entry: CODE,
        stack_top: 0x8000,
        pml4: PML4,
        gdt: GDT,
        gdt_limit: 0x1f,
        code_selector: 0x10,
        data_selector: 0x18,
        ..Default::default()
    }
}

fn start(vm: &TestVm) -> (VcpuHandle, mpsc::Receiver<VcpuEvent>) {
    let (handle, events, _) = start_with(vm, &[]);
    (handle, events)
}

/// Starts vCPU 0 with `hidden` features; also returns the CPUID table KVM applies.
fn start_with(vm: &TestVm, hidden: &[String]) -> (VcpuHandle, mpsc::Receiver<VcpuEvent>, CpuId) {
    let kvm = Kvm::new().unwrap();
    let supported = cpu::supported_cpuid(&kvm).unwrap();
    let model = CpuModel::new("host", hidden, &[], cpu::host_is_pvm()).unwrap();
    let cpuid = cpu::vcpu_cpuid(&supported, &model, 0, &cpu::Topology::flat(1)).unwrap();
    let vcpu = Vcpu::new(&vm.vm, 0, &cpuid, vm.pio.clone(), Arc::new(Bus::new())).unwrap();
    vcpu.set_boot_registers(&vm.mem, &boot_registers()).unwrap();
    let effective = vcpu.effective_cpuid().unwrap();
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let handle = vcpu
        .spawn(Arc::new(move |_, event| {
            let _ = tx.lock().unwrap().send(event);
        }))
        .unwrap();
    (handle, rx, effective)
}

fn wait_for_writes(writes: &AtomicU64, above: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n = writes.load(Ordering::SeqCst);
        if n > above {
            return n;
        }
        assert!(
            Instant::now() < deadline,
            "guest made no progress past {above} writes"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn pause_stops_the_guest_and_resume_restarts_it() {
    // mov dx, 0x80; loop: out dx, al; jmp loop
    let vm = test_vm(&[0x66, 0xba, 0x80, 0x00, 0xee, 0xeb, 0xfd]);
    let (mut handle, events) = start(&vm);
    assert_eq!(handle.state(), VcpuState::Created);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        vm.writes.load(Ordering::SeqCst),
        0,
        "a Created vCPU does not run"
    );
    assert!(handle.pause().is_err(), "cannot pause before running");

    handle.resume().unwrap();
    assert_eq!(handle.state(), VcpuState::Running);
    let running = wait_for_writes(&vm.writes, 10);
    assert!(handle.resume().is_err(), "already running");

    handle.pause().unwrap();
    assert_eq!(handle.state(), VcpuState::Paused);
    let paused_at = vm.writes.load(Ordering::SeqCst);
    assert!(paused_at >= running);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        vm.writes.load(Ordering::SeqCst),
        paused_at,
        "a paused vCPU does not run"
    );

    handle.resume().unwrap();
    wait_for_writes(&vm.writes, paused_at + 10);

    handle.join();
    assert_eq!(handle.state(), VcpuState::Stopping);
    assert!(events.try_recv().is_err(), "a stop is not a guest event");
}

#[test]
fn a_fault_without_idt_is_a_reported_triple_fault() {
    let vm = test_vm(&[0x0f, 0x0b]); // ud2
    let (handle, events) = start(&vm);
    handle.resume().unwrap();
    let event = events
        .recv_timeout(Duration::from_secs(60))
        .expect("the vCPU reports the fault");
    match event {
        VcpuEvent::Failed(CpuError::GuestFailed { index, reason, rip }) => {
            assert_eq!(index, 0);
            assert!(reason.contains("triple fault"), "{reason}");
            assert!(rip.is_some());
        }
        other => panic!("expected a triple fault, got {other:?}"),
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while handle.state() != VcpuState::Stopping {
        assert!(Instant::now() < deadline, "the thread ends after the fault");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn the_guest_sees_the_cpuid_kvm_reports() {
    let vm = test_vm(&[
        0xb8, 0x01, 0x00, 0x00, 0x00, // mov eax, 1
        0x0f, 0xa2, // cpuid
        0x89, 0xc8, // mov eax, ecx
        0x66, 0xba, 0x80, 0x00, // mov dx, 0x80
        0xef, // out dx, eax
        0xeb, 0xfe, // jmp $
    ]);
    let (mut handle, _events, effective) = start_with(&vm, &["cx16".into()]);
    handle.resume().unwrap();
    wait_for_writes(&vm.writes, 0);
    handle.join();
    let ecx = vm.values.lock().unwrap()[0] as u32;
    assert_ne!(ecx & (1 << 31), 0, "hypervisor bit: {ecx:#x}");
    assert_eq!(ecx & (1 << 13), 0, "cx16 hidden: {ecx:#x}");
    let reported = effective
        .as_slice()
        .iter()
        .find(|e| e.function == 1)
        .expect("leaf 1")
        .ecx;
    // OSXSAVE (bit 27) mirrors CR4.OSXSAVE, which the guest has not set.
    let osxsave = 1 << 27;
    assert_eq!(
        ecx & !osxsave,
        reported & !osxsave,
        "KVM_GET_CPUID2 tells the truth"
    );
    let model = CpuModel::new("host", &["cx16".into()], &[], cpu::host_is_pvm()).unwrap();
    let kept = cpu::unhonoured_features(&model, &effective);
    assert!(!kept.contains(&"cx16".to_string()));
}
