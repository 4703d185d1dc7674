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
use util::aio::AioEngine;
use util::file::Locking;

use common::Scratch;

fn drive(id: &str, path: &Path, aio: AioEngine) -> DriveConfig {
    let mut drive = DriveConfig::new(id, path.to_path_buf());
    drive.aio = aio;
    drive
}

fn device(id: &str, drive: &str, iothread: Option<&str>) -> BlkDeviceConfig {
    BlkDeviceConfig {
        id: id.into(),
        drive: drive.into(),
        serial: None,
        iothread: iothread.map(str::to_string),
    }
}

fn node(name: &str, path: &Path, aio: AioEngine, direct: bool) -> BlockdevAdd {
    BlockdevAdd {
        node_name: name.into(),
        filename: path.to_path_buf(),
        aio: Some(aio),
        direct: Some(direct),
        read_only: false,
        werror: None,
        rerror: None,
        locking: Locking::Auto,
    }
}

fn plug(id: &str, slot: usize) -> DeviceAdd {
    DeviceAdd {
        id: id.into(),
        drive: id.into(),
        slot,
    }
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
    for (i, aio) in [AioEngine::Off, AioEngine::Native, AioEngine::IoUring]
        .iter()
        .cycle()
        .take(6)
        .enumerate()
    {
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
    generic(qmp.device_add(DeviceAdd {
        id: "other".into(),
        drive: "a".into(),
        slot: 2,
    })); // the node is in use
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
    assert!(open_backend(&drive("outside", &a, AioEngine::Off)).is_err());
    qmp.device_del("a").unwrap();
    let mut outside = drive("outside", &a, AioEngine::IoUring);
    outside.readonly = true;
    let outsider = open_backend(&outside).unwrap();
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
    qmp.quit();
    assert_eq!(vm.run().unwrap(), micro_vm::VmExit::HostQuit);
}
