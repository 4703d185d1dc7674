//! One test per command-line rule.

use super::*;
use util::aio::{AioEngine, ErrorAction};
use util::file::Locking;

fn parse(line: &str) -> Result<VmConfig> {
    parse_args(line.split_whitespace().map(String::from))
}

fn parse_err(line: &str) -> ConfigError {
    let err = parse(line).expect_err(line);
    let text = err.to_string();
    assert!(
        !text.contains('\n') && !text.is_empty(),
        "one line: {text:?}"
    );
    err
}

#[test]
fn defaults() {
    let config = parse("").unwrap();
    assert_eq!(config, VmConfig::default());
    assert_eq!(config.machine_type, "microvm");
    assert_eq!(config.mem_size, 256 << 20);
    assert_eq!(config.cpus, 1);
    assert_eq!(config.cpu.model, "host");
    assert!(!config.disable_seccomp, "seccomp is on by default");
    assert!(
        config.kernel.is_none(),
        "-kernel is checked when the machine is built"
    );
}

#[test]
fn a_full_command_line() {
    let args = [
        "-machine", "microvm", "-kernel", "/k/vmlinux", "-append", "console=ttyS0 root=/dev/vda rw",
        "-initrd", "/k/initrd.img", "-m", "1G", "-mem-prealloc", "-smp", "cpus=2", "-cpu", "host,-cx16,+x2apic",
        "-serial", "stdio", "-D", "/tmp/vm.log", "-name", "vm1", "-daemonize", "-pidfile",
        "/tmp/vm.pid", "-S", "-disable-seccomp", "-object", "iothread,id=io0", "-drive",
        "id=rootfs,file=/img/root.ext4,readonly=off,direct=on,aio=io_uring,serial=ROOT1,throttling.iops-total=5000,file.locking=on,if=none,format=raw,werror=stop,rerror=ignore",
        "-device", "virtio-blk-device,drive=rootfs,id=blk0,serial=DEV1,iothread=io0",
        "-qmp", "unix:/tmp/qmp.sock,server,nowait",
    ];
    let config = parse_args(args.iter().map(|s| s.to_string())).unwrap();
    assert_eq!(config.kernel, Some(PathBuf::from("/k/vmlinux")));
    assert_eq!(config.cmdline, "console=ttyS0 root=/dev/vda rw");
    assert_eq!(config.initrd, Some(PathBuf::from("/k/initrd.img")));
    assert_eq!(config.mem_size, 1 << 30);
    assert!(config.mem_prealloc);
    assert_eq!(config.cpus, 2);
    assert_eq!(config.cpu.disabled, vec!["cx16"]);
    assert_eq!(config.cpu.enabled, vec!["x2apic"]);
    assert!(config.serial_stdio);
    assert_eq!(config.log, Some(Some(PathBuf::from("/tmp/vm.log"))));
    assert_eq!(config.name.as_deref(), Some("vm1"));
    assert!(config.daemonize && config.start_paused);
    assert!(config.disable_seccomp);
    assert_eq!(config.pidfile, Some(PathBuf::from("/tmp/vm.pid")));
    assert_eq!(config.iothreads, vec!["io0"]);
    assert_eq!(config.qmp, Some(PathBuf::from("/tmp/qmp.sock")));
    assert_eq!(
        config.drives,
        vec![DriveConfig {
            id: "rootfs".into(),
            path: "/img/root.ext4".into(),
            readonly: false,
            direct: true,
            aio: AioEngine::IoUring,
            serial: Some("ROOT1".into()),
            iops_limit: Some(5000),
            werror: ErrorAction::Stop,
            rerror: ErrorAction::Ignore,
            locking: Locking::On,
        }]
    );
    assert_eq!(
        config.blk_devices,
        vec![BlkDeviceConfig {
            id: "blk0".into(),
            drive: "rootfs".into(),
            serial: Some("DEV1".into()),
            iothread: Some("io0".into()),
        }]
    );
}

#[test]
fn double_dash_spellings_are_accepted() {
    let config = parse("--kernel /k --m 512 --smp 3").unwrap();
    assert_eq!((config.mem_size, config.cpus), (512 << 20, 3));
}

#[test]
fn help_and_version() {
    for flag in ["-h", "-help", "--help"] {
        assert_eq!(parse(flag), Err(ConfigError::Help));
    }
    assert_eq!(parse("-version"), Err(ConfigError::Version));
    assert!(usage().contains("-drive id=ID,file=PATH"));
    assert!(version().starts_with("StratoVirt "));
}

#[test]
fn unknown_options_words_and_missing_values() {
    assert_eq!(
        parse_err("-nographic"),
        ConfigError::UnknownOption("-nographic".into())
    );
    assert_eq!(parse_err("-"), ConfigError::UnexpectedArgument("-".into()));
    assert_eq!(
        parse_err("vmlinux"),
        ConfigError::UnexpectedArgument("vmlinux".into())
    );
    assert_eq!(
        parse_err("-kernel"),
        ConfigError::MissingValue("-kernel".into())
    );
    assert_eq!(
        parse_err("-kernel /a -kernel /b"),
        ConfigError::DuplicateOption("-kernel".into())
    );
    assert_eq!(
        parse_err("-m 256 --m 512"),
        ConfigError::DuplicateOption("-m".into())
    );
    let newline = parse_args(["-kernel\nx".to_string()]).unwrap_err();
    assert!(!newline.to_string().contains('\n'));
}

#[test]
fn log_file_is_optional() {
    assert_eq!(parse("-D").unwrap().log, Some(None));
    assert_eq!(parse("-D -kernel /k").unwrap().log, Some(None));
    assert_eq!(parse("-D /tmp/l").unwrap().log, Some(Some("/tmp/l".into())));
    assert_eq!(parse("-kernel /k").unwrap().log, None);
    assert_eq!(
        parse_args(["-D".to_string(), String::new()]),
        Err(ConfigError::MissingValue("-D".into()))
    );
}

#[test]
fn memory_and_cpu_ranges() {
    assert_eq!(parse("-m 128").unwrap().mem_size, 128 << 20);
    assert_eq!(parse("-m 2G").unwrap().mem_size, 2 << 30);
    assert_eq!(parse("-smp 254").unwrap().cpus, 254);
    for line in [
        "-m 64",
        "-m 1024G",
        "-m 18446744073709551615G",
        "-m lots",
        "-smp 0",
        "-smp 255",
        "-smp 4,sockets=2",
    ] {
        parse_err(line);
    }
}

#[test]
fn drive_defaults_follow_direct() {
    let config = parse("-drive id=d,file=/a -drive id=e,file=/b,direct=off").unwrap();
    assert_eq!(
        (config.drives[0].direct, config.drives[0].aio),
        (true, AioEngine::Native)
    );
    assert_eq!(
        (config.drives[1].direct, config.drives[1].aio),
        (false, AioEngine::Off)
    );
    assert!(!config.drives[0].readonly);
    assert!(parse("-drive id=d,file=/a,readonly").unwrap().drives[0].readonly);
    let config = parse("-drive id=d,file=/a,aio=iouring,readonly=on").unwrap();
    assert_eq!(config.drives[0].aio, AioEngine::IoUring);
    assert!(config.drives[0].readonly);
    let config = parse("-drive id=d,file=/a,direct=off,aio=io_uring").unwrap();
    assert_eq!(config.drives[0].aio, AioEngine::IoUring);
    // QEMU's error-policy defaults.
    assert_eq!(config.drives[0].werror, ErrorAction::Enospc);
    assert_eq!(config.drives[0].rerror, ErrorAction::Report);
}

#[test]
fn file_locking_is_qemus_key_and_defaults_to_auto() {
    let config = parse("-drive id=d,file=/a -drive id=e,file=/b,file.locking=off").unwrap();
    assert_eq!(config.drives[0].locking, Locking::Auto);
    assert_eq!(config.drives[1].locking, Locking::Off);
    for (value, locking) in [("on", Locking::On), ("auto", Locking::Auto)] {
        let line = format!("-drive id=d,file=/a,file.locking={value}");
        assert_eq!(parse(&line).unwrap().drives[0].locking, locking);
    }
    assert!(matches!(
        parse_err("-drive id=d,file=/a,file.locking=yes"),
        ConfigError::InvalidValue { key, value, .. } if key == "file.locking" && value == "yes"
    ));
    // QEMU's -drive has no top-level `locking` either (it belongs to the file node).
    assert!(matches!(
        parse_err("-drive id=d,file=/a,locking=off"),
        ConfigError::UnknownKey { key, .. } if key == "locking"
    ));
}

#[test]
fn native_aio_needs_direct_io() {
    let err = parse_err("-drive id=d,file=/a,direct=off,aio=native");
    assert_eq!(err, ConfigError::AioNativeNeedsDirect("d".into()));
    let text = err.to_string();
    assert!(
        text.contains("synchronous") && text.contains("direct=on"),
        "{text}"
    );
}

#[test]
fn drive_keys_and_values_are_checked() {
    for line in [
        "-drive id=d",                                      // no file
        "-drive id=d,file=/a,aio=posix",                    // unknown engine
        "-drive id=d,file=/a,readonly=yes-please",          // bad boolean
        "-drive id=d,file=/a,cache=none",                   // unknown key
        "-drive id=d,file=/a,file=/b",                      // duplicate key
        "-drive id=d,file=/a,format=qcow2",                 // only raw
        "-drive id=d,file=/a,if=virtio",                    // only if=none
        "-drive id=d,file=/a,serial=123456789012345678901", // serial too long
        "-drive id=d,file=/a,werror=panic",                 // unknown error action
        "-drive id=d,file=/a,rerror=enospc",                // reads cannot run out of space
        "-drive id=d,file=/a,throttling.iops-total=0",      // zero limit
        "-drive id=d,file=/a,throttling.iops-total=-5",
        "-drive id=d,file=/a,throttling.iops-total=99999999999999999999999",
        "-drive id=1d,file=/a", // id starts with a digit
        "-drive id=d,file=",    // empty path
        "-drive id=d,file=/a,", // empty item
    ] {
        parse_err(line);
    }
    assert!(matches!(
        parse_err("-drive id=d,file=/a,cache=none"),
        ConfigError::UnknownKey { key, .. } if key == "cache"
    ));
    let comma = parse("-drive id=d,file=/a,,b").unwrap();
    assert_eq!(comma.drives[0].path, PathBuf::from("/a,b"));
}

#[test]
fn duplicate_ids_are_refused() {
    assert_eq!(
        parse_err("-drive id=d,file=/a -drive id=d,file=/b"),
        ConfigError::DuplicateDriveId("d".into())
    );
    assert_eq!(
        parse_err("-drive id=a,file=/a -drive id=b,file=/b -device virtio-blk-device,drive=a,id=x -device virtio-blk-device,drive=b,id=x"),
        ConfigError::DuplicateDeviceId("x".into())
    );
    assert_eq!(
        parse_err("-object iothread,id=t -object iothread,id=t"),
        ConfigError::DuplicateIothread("t".into())
    );
    // A short-form device takes its drive's id, which may collide with a named device.
    assert_eq!(
        parse_err("-drive id=a,file=/a -drive id=b,file=/b -device virtio-blk-device,drive=a,id=b"),
        ConfigError::DuplicateDeviceId("b".into())
    );
}

#[test]
fn devices_must_name_existing_drives_and_iothreads() {
    assert_eq!(
        parse_err("-device virtio-blk-device,drive=nope,id=blk0"),
        ConfigError::UnknownDrive {
            device: "blk0".into(),
            drive: "nope".into()
        }
    );
    assert_eq!(
        parse_err("-drive id=d,file=/a -device virtio-blk-device,drive=d,id=x -device virtio-blk-device,drive=d,id=y"),
        ConfigError::DriveUsedTwice("d".into())
    );
    assert_eq!(
        parse_err("-drive id=d,file=/a -device virtio-blk-device,drive=d,id=x,iothread=t"),
        ConfigError::UnknownIothread {
            device: "x".into(),
            iothread: "t".into()
        }
    );
    for line in [
        "-drive id=d,file=/a -device virtio-net-device,drive=d,id=x",
        "-drive id=d,file=/a -device virtio-blk-device,drive=d",
        "-drive id=d,file=/a -device virtio-blk-device,id=x",
        "-drive id=d,file=/a -device virtio-blk-device,drive=d,id=x,bus=pci.0",
        "-object memory-backend-ram,id=m",
        "-object iothread",
    ] {
        parse_err(line);
    }
}

#[test]
fn short_form_drives_get_their_own_devices() {
    let config = parse("-kernel /k -drive file=/disk.img,aio=io_uring").unwrap();
    assert_eq!(config.drives.len(), 1);
    assert_eq!(config.drives[0].id, "drive0");
    assert_eq!(config.drives[0].aio, AioEngine::IoUring);
    assert_eq!(
        config.blk_devices,
        vec![BlkDeviceConfig {
            id: "drive0".into(),
            drive: "drive0".into(),
            serial: None,
            iothread: None,
        }]
    );
}

#[test]
fn automatic_ids_skip_taken_names() {
    let config = parse("-drive file=/a -drive id=drive1,file=/b -drive file=/c").unwrap();
    let ids: Vec<_> = config.drives.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, vec!["drive0", "drive1", "drive2"]);
    let config = parse("-drive file=/a -drive id=drive0,file=/b").unwrap();
    let ids: Vec<_> = config.drives.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, vec!["drive1", "drive0"]);
}

#[test]
fn devices_keep_command_line_order() {
    let config = parse(
        "-drive id=a,file=/a -drive id=b,file=/b -drive file=/c \
         -device virtio-blk-device,drive=b,id=vb -device virtio-blk-device,drive=a,id=va",
    )
    .unwrap();
    let order: Vec<_> = config.blk_devices.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(order, vec!["drive0", "vb", "va"]);
}

#[test]
fn drive_validate_is_shared_with_qmp() {
    let mut drive = DriveConfig::new("drive-1", "/disk.img".into());
    assert_eq!((drive.direct, drive.aio), (true, AioEngine::Native));
    drive.validate().unwrap();
    drive.direct = false;
    assert_eq!(
        drive.validate(),
        Err(ConfigError::AioNativeNeedsDirect("drive-1".into()))
    );
    drive.aio = AioEngine::IoUring;
    drive.validate().unwrap();
    drive.id = String::new();
    assert!(drive.validate().is_err());
    drive.id = "ok".into();
    drive.serial = Some("with space".into());
    assert!(drive.validate().is_err());
}

#[test]
fn machine_serial_and_qmp_values() {
    parse_err("-machine pc");
    parse_err("-serial pty");
    parse_err("-qmp unix:/tmp/q.sock");
    parse_err("-qmp unix:/tmp/q.sock,server");
    parse_err("-cpu max");
    assert_eq!(
        parse("-machine type=microvm").unwrap().machine_type,
        "microvm"
    );
}
