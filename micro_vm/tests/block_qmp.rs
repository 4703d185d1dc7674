//! The machine's block slots and its QMP handler on real KVM and real files, without a
//! guest: slot layout at boot, node and device rules of `blockdev-add`/`device_add`/
//! `device_del`/`blockdev-del`, and stop/cont/query-cpus on a spinning vCPU.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};

use machine_manager::config::{BlkDeviceConfig, DriveConfig, VmConfig};
use machine_manager::qmp::{BlockdevAdd, DeviceAdd, QmpError, QmpHandler, VmRunState};
use micro_vm::block_devices::{open_backend, BlockDevices, REPLACEABLE_SLOTS};
use micro_vm::qmp_handler::MachineQmp;
use micro_vm::MicroVm;
use util::aio::{AioEngine, WorkerSetup};

use common::Scratch;

fn drive(id: &str, path: &Path, aio: AioEngine) -> DriveConfig {
    let mut drive = DriveConfig::new(id, path.to_path_buf());
    drive.aio = aio;
    drive
}

fn device(id: &str, drive: &str, iothread: Option<&str>) -> BlkDeviceConfig {
    BlkDeviceConfig {
        iothread: iothread.map(str::to_string),
        ..BlkDeviceConfig::new(id, drive)
    }
}

fn node(name: &str, path: &Path, aio: AioEngine, direct: bool) -> BlockdevAdd {
    BlockdevAdd {
        aio: Some(aio),
        direct: Some(direct),
        ..BlockdevAdd::new(name, path)
    }
}

fn plug(id: &str, slot: usize) -> DeviceAdd {
    DeviceAdd::new(id, id, slot)
}

fn generic(result: Result<(), QmpError>) -> String {
    match result {
        Err(QmpError::Generic(desc)) => desc,
        other => panic!("expected a GenericError, got {other:?}"),
    }
}

#[test]
fn four_replaceable_slots_then_user_devices_in_order() {
    let dir = Scratch::new("layout");
    let kernel = dir.spin_kernel();
    let mut config = VmConfig {
        kernel: Some(kernel),
        mem_size: 128 << 20,
        iothreads: vec!["io0".into()],
        ..VmConfig::default()
    };
    for (i, aio) in AioEngine::ALL.iter().cycle().take(6).enumerate() {
        let path = dir.disk(&format!("d{i}.img"), 1 << 20);
        config.drives.push(drive(&format!("d{i}"), &path, *aio));
        let iothread = (i % 2 == 0).then_some("io0");
        config
            .blk_devices
            .push(device(&format!("b{i}"), &format!("d{i}"), iothread));
    }
    let mut vm = MicroVm::new(&config).unwrap();
    let blocks = BlockDevices::attach(&mut vm, &config).unwrap();
    assert_eq!(
        blocks.slots().len(),
        6,
        "more devices than slots: one slot each"
    );
    assert_eq!(vm.mmio_slots().len(), 6);
    for (i, slot) in blocks.slots().iter().enumerate() {
        assert_eq!(slot.mmio.index, i);
        assert_eq!(slot.mmio, vm.mmio_slots()[i]);
        let occupant = slot.occupant.as_ref().unwrap();
        assert_eq!(occupant.device, format!("b{i}"));
        assert_eq!(occupant.node, format!("d{i}"));
    }

    // With one drive: it takes slot 0 and three empty slots follow.
    let path = dir.disk("only.img", 1 << 20);
    let config = VmConfig {
        kernel: config.kernel.clone(),
        mem_size: 128 << 20,
        drives: vec![drive("only", &path, AioEngine::IoUring)],
        blk_devices: vec![device("only", "only", None)],
        ..VmConfig::default()
    };
    let mut vm = MicroVm::new(&config).unwrap();
    let blocks = BlockDevices::attach(&mut vm, &config).unwrap();
    assert_eq!(blocks.slots().len(), REPLACEABLE_SLOTS);
    assert!(blocks.slots()[0].occupant.is_some());
    assert!(blocks.slots()[1..].iter().all(|s| s.occupant.is_none()));
    assert!(blocks.node_in_use("only"));
}

#[test]
fn entropy_devices_follow_the_block_slots() {
    let dir = Scratch::new("rng-slots");
    let config = VmConfig {
        kernel: Some(dir.spin_kernel()),
        mem_size: 128 << 20,
        rngs: vec![machine_manager::config::RngConfig {
            id: "virtio-rng0".into(),
            object: "objrng0".into(),
            filename: "/dev/urandom".into(),
            bytes_per_sec: None,
        }],
        ..VmConfig::default()
    };
    let mut vm = MicroVm::new(&config).unwrap();
    let blocks = BlockDevices::attach(&mut vm, &config).unwrap();
    let rngs = micro_vm::rng_devices::attach(&mut vm, &config).unwrap();
    assert_eq!(blocks.slots().len(), REPLACEABLE_SLOTS);
    assert_eq!(rngs.len(), 1);
    let (slot, handle) = &rngs[0];
    assert_eq!(slot.index, REPLACEABLE_SLOTS, "after the block slots");
    assert_eq!(vm.mmio_slots().len(), REPLACEABLE_SLOTS + 1);
    assert_eq!(handle.id(), "virtio-rng0");

    let mut missing = config.clone();
    missing.rngs[0].filename = dir.0.join("no-such-entropy");
    let mut vm = MicroVm::new(&missing).unwrap();
    let err = micro_vm::rng_devices::attach(&mut vm, &missing).unwrap_err();
    let mut text = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    assert!(
        text.contains("virtio-rng0") && text.contains("no-such-entropy"),
        "{text}"
    );
}

#[test]
fn qmp_block_commands_follow_the_node_and_slot_rules() {
    let dir = Scratch::new("qmp");
    let root = dir.disk("root.img", 1 << 20);
    let config = VmConfig {
        kernel: Some(dir.spin_kernel()),
        mem_size: 128 << 20,
        drives: vec![drive("root", &root, AioEngine::IoUring)],
        blk_devices: vec![device("rootdev", "root", None)],
        ..VmConfig::default()
    };
    let mut vm = MicroVm::new(&config).unwrap();
    let blocks = Arc::new(Mutex::new(BlockDevices::attach(&mut vm, &config).unwrap()));
    let vm = Arc::new(vm);
    let mut qmp = MachineQmp::new(&vm, &blocks);
    let a = dir.disk("a.img", 2 << 20);
    let b = dir.disk("b.img", 2 << 20);

    // blockdev-add opens at once.
    let missing = dir.0.join("missing.img");
    let desc = generic(qmp.blockdev_add(node("m", &missing, AioEngine::IoUring, true)));
    assert!(desc.contains("missing.img"), "{desc}");
    let desc = generic(qmp.blockdev_add(node("n", &a, AioEngine::Native, false)));
    assert!(desc.contains("direct"), "{desc}");
    qmp.blockdev_add(node("a", &a, AioEngine::IoUring, true))
        .unwrap();
    generic(qmp.blockdev_add(node("a", &b, AioEngine::Off, true)));
    qmp.blockdev_add(node("b", &b, AioEngine::Native, true))
        .unwrap();

    // device_add: the slot must exist and be empty, the node must exist and be free.
    assert!(matches!(
        qmp.device_add(plug("zz", 1)),
        Err(QmpError::DeviceNotFound(_))
    ));
    let desc = generic(qmp.device_add(plug("a", 0)));
    assert!(desc.contains("in use"), "{desc}");
    generic(qmp.device_add(plug("a", 4)));
    qmp.device_add(plug("a", 1)).unwrap();
    generic(qmp.device_add(plug("a", 2))); // the device id exists
    generic(qmp.device_add(DeviceAdd::new("other", "a", 2))); // the node is in use
    generic(qmp.device_add(plug("b", 1))); // slot 1 is taken now
    qmp.device_add(plug("b", 3)).unwrap();
    generic(qmp.blockdev_del("a"));

    // device_del empties the slot; the node stays until blockdev-del and can be plugged again.
    qmp.device_del("a").unwrap();
    assert!(matches!(
        qmp.device_del("a"),
        Err(QmpError::DeviceNotFound(_))
    ));
    assert!(blocks.lock().unwrap().slots()[1].occupant.is_none());
    qmp.device_add(plug("a", 2)).unwrap();
    qmp.device_del("a").unwrap();
    qmp.blockdev_del("a").unwrap();
    assert!(matches!(
        qmp.blockdev_del("a"),
        Err(QmpError::DeviceNotFound(_))
    ));
    // A boot-time device can be removed too.
    qmp.device_del("rootdev").unwrap();
    qmp.device_add(plug("b", 0)).err().unwrap(); // b is still in slot 3
    qmp.device_del("b").unwrap();
    qmp.device_add(plug("b", 0)).unwrap();
}

#[test]
fn image_locks_follow_the_backend_through_hot_replace() {
    let dir = Scratch::new("locks");
    let root = dir.disk("root.img", 1 << 20);
    let config = VmConfig {
        kernel: Some(dir.spin_kernel()),
        mem_size: 128 << 20,
        drives: vec![drive("root", &root, AioEngine::IoUring)],
        blk_devices: vec![device("rootdev", "root", None)],
        ..VmConfig::default()
    };
    let mut vm = MicroVm::new(&config).unwrap();
    let blocks = Arc::new(Mutex::new(BlockDevices::attach(&mut vm, &config).unwrap()));
    let vm = Arc::new(vm);
    let mut qmp = MachineQmp::new(&vm, &blocks);
    let locked = |desc: String, path: &Path| {
        assert!(
            desc.contains(&format!("image {} is locked", path.display())),
            "{desc}"
        );
    };

    // The running VM's root image cannot be opened a second time.
    locked(
        generic(qmp.blockdev_add(node("r2", &root, AioEngine::IoUring, true))),
        &root,
    );

    // A plugged node holds its image; device_del lets it go, and the next device_add takes
    // it again, or is refused if someone took it meanwhile (the slot stays empty).
    let a = dir.disk("a.img", 1 << 20);
    qmp.blockdev_add(node("a", &a, AioEngine::IoUring, true))
        .unwrap();
    qmp.device_add(plug("a", 1)).unwrap();
    let unfiltered = WorkerSetup::default();
    assert!(open_backend(&drive("outside", &a, AioEngine::Off), &unfiltered).is_err());
    qmp.device_del("a").unwrap();
    let mut outside = drive("outside", &a, AioEngine::IoUring);
    outside.readonly = true;
    let outsider = open_backend(&outside, &unfiltered).unwrap();
    locked(generic(qmp.device_add(plug("a", 1))), &a);
    assert!(blocks.lock().unwrap().slots()[1].occupant.is_none());
    drop(outsider);
    qmp.device_add(plug("a", 1)).unwrap();

    // Once the root device is gone, its image is free for QMP.
    qmp.device_del("rootdev").unwrap();
    qmp.blockdev_add(node("r2", &root, AioEngine::IoUring, true))
        .unwrap();
}

#[test]
fn qmp_stop_cont_and_cpus_on_a_running_vm() {
    let dir = Scratch::new("lifecycle");
    let config = VmConfig {
        kernel: Some(dir.spin_kernel()),
        mem_size: 128 << 20,
        cpus: 2,
        ..VmConfig::default()
    };
    let mut vm = MicroVm::new(&config).unwrap();
    let blocks = Arc::new(Mutex::new(BlockDevices::attach(&mut vm, &config).unwrap()));
    let vm = Arc::new(vm);
    // The VMM's main thread, where QMP commands run: `start` confines it to the main
    // thread's seccomp filter, so it is not the test's thread (which removes `dir`).
    std::thread::spawn(move || drive_a_running_vm(&vm, &blocks))
        .join()
        .unwrap();
}

fn drive_a_running_vm(vm: &Arc<MicroVm>, blocks: &Arc<Mutex<BlockDevices>>) {
    let mut qmp = MachineQmp::new(vm, blocks);
    assert_eq!(qmp.query_status(), VmRunState::Paused, "not started yet");
    vm.start().unwrap();
    assert_eq!(qmp.query_status(), VmRunState::Running);
    generic(qmp.cont());
    qmp.stop().unwrap();
    assert_eq!(qmp.query_status(), VmRunState::Paused);
    generic(qmp.stop());
    qmp.cont().unwrap();
    let cpus = qmp.query_cpus();
    assert_eq!(cpus.len(), 2);
    for (i, cpu) in cpus.iter().enumerate() {
        assert_eq!(cpu.index, i);
        let comm = std::fs::read_to_string(format!("/proc/self/task/{}/comm", cpu.thread_id))
            .unwrap_or_else(|e| panic!("vCPU {i} thread {}: {e}", cpu.thread_id));
        assert_eq!(comm.trim(), format!("vcpu{i}"));
    }
    assert_eq!(
        qmp.cpu_topology(),
        machine_manager::config::CpuTopology::flat(2)
    );
    qmp.quit();
    assert_eq!(vm.run().unwrap(), micro_vm::VmExit::HostQuit);
}

#[test]
fn system_reset_and_powerdown_end_the_micro_vm() {
    for (request, exit) in [
        (
            MachineQmp::system_reset as fn(&mut MachineQmp),
            micro_vm::VmExit::HostReset,
        ),
        (
            MachineQmp::system_powerdown,
            micro_vm::VmExit::HostPowerdown,
        ),
    ] {
        let dir = Scratch::new("system-reset");
        let config = VmConfig {
            kernel: Some(dir.spin_kernel()),
            mem_size: 128 << 20,
            ..VmConfig::default()
        };
        // The VMM's main thread: `start` confines it to the main thread's seccomp filter, so
        // it is not this test's thread (which removes the scratch directory afterwards).
        let ended = std::thread::Builder::new()
            .name("vmm-main".into())
            .spawn(move || {
                let mut vm = MicroVm::new(&config).unwrap();
                let blocks = Arc::new(Mutex::new(BlockDevices::attach(&mut vm, &config).unwrap()));
                let vm = Arc::new(vm);
                let mut qmp = MachineQmp::new(&vm, &blocks);
                vm.start().unwrap();
                request(&mut qmp);
                vm.run().unwrap()
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(ended, exit);
    }
}

#[test]
fn device_add_serial_iothread_bus_and_share_rw() {
    let dir = Scratch::new("device-add-members");
    let boot = dir.disk("boot.img", 1 << 20);
    let config = VmConfig {
        kernel: Some(dir.spin_kernel()),
        mem_size: 128 << 20,
        iothreads: vec!["io0".into(), "io1".into()],
        drives: vec![
            drive("boot", &boot, AioEngine::IoUring),
            drive("two", &dir.disk("two.img", 1 << 20), AioEngine::Native),
        ],
        blk_devices: vec![
            device("bootdev", "boot", Some("io0")),
            BlkDeviceConfig {
                num_queues: 3,
                iothread_vq_mapping: vec!["io1".into(), "io0".into()],
                ..device("mqdev", "two", None)
            },
        ],
        ..VmConfig::default()
    };
    let mut vm = MicroVm::new(&config).unwrap();
    let blocks = Arc::new(Mutex::new(BlockDevices::attach(&mut vm, &config).unwrap()));
    let iothreads = |slot: usize| blocks.lock().unwrap().slots()[slot].iothreads.clone();
    assert_eq!(iothreads(0), vec![Some("io0".to_string())]);
    let mapped = ["io1", "io0", "io1"].map(|t| Some(t.to_string())).to_vec();
    assert_eq!(iothreads(1), mapped);
    assert_eq!(blocks.lock().unwrap().slots()[1].device.num_queues(), 3);
    assert_eq!(iothreads(2), vec![None]);
    let vm = Arc::new(vm);
    let mut qmp = MachineQmp::new(&vm, &blocks);
    let disk = dir.disk("n.img", 1 << 20);
    qmp.blockdev_add(node("n", &disk, AioEngine::IoUring, true))
        .unwrap();

    // serial: the guest's GET_ID answer, from the backend the device gets.
    let with = |serial: Option<&str>, iothread: Option<&str>, slot| DeviceAdd {
        serial: serial.map(str::to_string),
        iothread: iothread.map(str::to_string),
        bus: Some("virtio-mmio-bus.1".into()),
        share_rw: Some(true),
        ..DeviceAdd::new("dev", "n", slot)
    };
    generic(qmp.device_add(with(Some("a serial with spaces"), None, 3)));
    generic(qmp.device_add(with(Some("123456789012345678901"), None, 3)));
    qmp.device_add(with(Some("SER-7"), None, 3)).unwrap();
    let serial = |blocks: &Mutex<BlockDevices>, slot: usize| {
        blocks.lock().unwrap().slots()[slot]
            .device
            .backend_config()
            .and_then(|c| c.serial)
    };
    assert_eq!(serial(&blocks, 3).as_deref(), Some("SER-7"));
    qmp.device_del("dev").unwrap();
    // The serial belonged to the device: the node plugged again without one has none.
    qmp.device_add(with(None, None, 2)).unwrap();
    assert_eq!(serial(&blocks, 2), None);
    qmp.device_del("dev").unwrap();

    // iothread: it must exist, and be the one serving the slot.
    let desc = generic(qmp.device_add(with(None, Some("nope"), 3)));
    assert!(desc.contains("no iothread nope"), "{desc}");
    let desc = generic(qmp.device_add(with(None, Some("io1"), 3)));
    assert!(desc.contains("main loop"), "{desc}");

    // num-queues: the slot's, fixed at start; a slot whose queues run on several iothreads
    // is served by none of them alone.
    let queues = |n, slot| DeviceAdd {
        num_queues: Some(n),
        ..with(None, None, slot)
    };
    let desc = generic(qmp.device_add(queues(2, 3)));
    assert!(
        desc.contains("has 1 queue,") && desc.contains("num-queues 2"),
        "{desc}"
    );
    qmp.device_del("mqdev").unwrap();
    let desc = generic(qmp.device_add(queues(1, 1)));
    assert!(desc.contains("has 3 queues"), "{desc}");
    let desc = generic(qmp.device_add(with(None, Some("io1"), 1)));
    assert!(
        desc.contains("iothread io1, iothread io0, iothread io1 (queue by queue)"),
        "{desc}"
    );
    qmp.device_add(queues(3, 1)).unwrap();
    qmp.device_del("dev").unwrap();
    qmp.device_del("bootdev").unwrap();
    let desc = generic(qmp.device_add(with(None, Some("io1"), 0)));
    assert!(desc.contains("iothread io0"), "{desc}");
    qmp.device_add(with(None, Some("io0"), 0)).unwrap();
    assert!(blocks.lock().unwrap().slots()[0].occupant.is_some());
}
