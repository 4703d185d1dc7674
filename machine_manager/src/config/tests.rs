//! One test per command-line rule.

use super::*;
use util::aio::{AioEngine, DetectZeroes, Discard, ErrorAction, Limit, ThrottleConfig};
use util::event_loop::PollParams;
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
        "-D", "/tmp/vm.log", "-name", "vm1", "-daemonize", "-pidfile",
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
    assert!(!config.serial_stdio, "a daemon has no console on stdio");
    assert_eq!(config.log, Some(Some(PathBuf::from("/tmp/vm.log"))));
    assert_eq!(config.name.as_deref(), Some("vm1"));
    assert!(config.daemonize && config.start_paused);
    assert!(config.disable_seccomp);
    assert_eq!(config.pidfile, Some(PathBuf::from("/tmp/vm.pid")));
    assert_eq!(config.iothreads, vec![IothreadConfig::from("io0")]);
    assert_eq!(config.iothreads[0].poll, PollParams::IOTHREAD_DEFAULT);
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
            throttle: ThrottleConfig {
                iops_total: Limit {
                    avg: 5000,
                    ..Limit::default()
                },
                ..ThrottleConfig::default()
            },
            discard: Discard::Ignore,
            detect_zeroes: DetectZeroes::Off,
            werror: ErrorAction::Stop,
            rerror: ErrorAction::Ignore,
            locking: Locking::On,
        }]
    );
    assert_eq!(
        config.blk_devices,
        vec![BlkDeviceConfig {
            serial: Some("DEV1".into()),
            iothread: Some("io0".into()),
            ..BlkDeviceConfig::new("blk0", "rootfs")
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
        parse_err("-frobnicate"),
        ConfigError::UnknownOption("-frobnicate".into())
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
        "-smp 4,sockets=3",
        "-smp 4,maxcpus=8",
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
    // QEMU's defaults: no limit (0 too), no discard, no zero detection.
    let config = parse(
        "-drive id=d,file=/a,throttling.iops-total=0,throttling.bps-write=1048576,\
         throttling.bps-write-max=4194304,throttling.bps-write-max-length=3,\
         throttling.iops-size=8192,discard=unmap,detect-zeroes=unmap",
    )
    .unwrap();
    let drive = &config.drives[0];
    assert!(!drive.throttle.iops_total.is_set());
    assert_eq!(
        drive.throttle.bps_write,
        Limit {
            avg: 1 << 20,
            max: 4 << 20,
            max_length: 3
        }
    );
    assert_eq!(drive.throttle.iops_size, 8192);
    assert_eq!(
        (drive.discard, drive.detect_zeroes),
        (Discard::Unmap, DetectZeroes::Unmap)
    );
    let config = parse("-drive id=d,file=/a").unwrap();
    assert_eq!(config.drives[0].throttle, ThrottleConfig::default());
    assert_eq!(config.drives[0].discard, Discard::Ignore);
    assert_eq!(config.drives[0].detect_zeroes, DetectZeroes::Off);
    let config = parse("-drive id=d,file=/a,direct=off,aio=io_uring").unwrap();
    // The thread pool takes either direct value.
    for direct in ["on", "off"] {
        let config = parse(&format!("-drive id=d,file=/a,direct={direct},aio=threads")).unwrap();
        assert_eq!(config.drives[0].aio, AioEngine::Threads, "direct={direct}");
        config.drives[0].validate().unwrap();
    }
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
        "-drive id=d",                                                         // no file
        "-drive id=d,file=/a,aio=posix",                                       // unknown engine
        "-drive id=d,file=/a,readonly=yes-please",                             // bad boolean
        "-drive id=d,file=/a,cache=none",                                      // unknown key
        "-drive id=d,file=/a,file=/b",                                         // duplicate key
        "-drive id=d,file=/a,format=qcow2",                                    // only raw
        "-drive id=d,file=/a,if=virtio",                                       // only if=none
        "-drive id=d,file=/a,serial=123456789012345678901",                    // serial too long
        "-drive id=d,file=/a,werror=panic", // unknown error action
        "-drive id=d,file=/a,rerror=enospc", // reads cannot run out of space
        "-drive id=d,file=/a,throttling.iops-total=9,throttling.iops-read=5", // total with read
        "-drive id=d,file=/a,throttling.bps-read=9,throttling.bps-read-max=5", // burst below average
        "-drive id=d,file=/a,discard=sometimes",
        "-drive id=d,file=/a,detect-zeroes=maybe",
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
        vec![BlkDeviceConfig::new("drive0", "drive0")]
    );
}

#[test]
fn num_queues_and_the_iothread_mapping() {
    let base = "-object iothread,id=io0 -object iothread,id=io1 -drive id=d,file=/a";
    let device = |keys: &str| {
        let config = parse(&format!(
            "{base} -device virtio-blk-device,drive=d,id=x{keys}"
        ))?;
        Ok::<_, ConfigError>(config.blk_devices[0].clone())
    };
    // Default: one queue, on the main loop.
    let one = device("").unwrap();
    assert_eq!(one.num_queues, 1);
    assert_eq!(one.queue_iothreads(), vec![None]);
    // num-queues with iothread=: every queue on it.
    let two = device(",num-queues=2,iothread=io0").unwrap();
    assert_eq!(two.num_queues, 2);
    assert_eq!(
        two.queue_iothreads(),
        vec![Some("io0".to_string()), Some("io0".to_string())]
    );
    // The mapping: round robin over the iothreads listed.
    let spread = device(",num-queues=3,iothread-vq-mapping=io1:io0").unwrap();
    assert_eq!(spread.iothread_vq_mapping, vec!["io1", "io0"]);
    assert_eq!(
        spread.queue_iothreads(),
        ["io1", "io0", "io1"].map(|t| Some(t.to_string())).to_vec()
    );
    assert_eq!(device(",num-queues=32").unwrap().num_queues, 32);
    // Bad values: one line naming the key.
    for (keys, key) in [
        (",num-queues=0", "num-queues"),
        (",num-queues=33", "num-queues"),
        (",num-queues=two", "num-queues"),
        (",num-queues=-1", "num-queues"),
        (
            ",num-queues=2,iothread-vq-mapping=io0:io1:io0",
            "iothread-vq-mapping",
        ),
        (
            ",num-queues=2,iothread-vq-mapping=io0:io0",
            "iothread-vq-mapping",
        ),
        (",iothread-vq-mapping=io0:io1", "iothread-vq-mapping"),
        (
            ",num-queues=2,iothread-vq-mapping=io0:",
            "iothread-vq-mapping",
        ),
        (
            ",num-queues=2,iothread-vq-mapping=io0:io1,iothread=io0",
            "iothread-vq-mapping",
        ),
        (",num-queues=2,iothread-vq-mapping=io0:io9", "io9"),
    ] {
        let error = device(keys).unwrap_err();
        let text = error.to_string();
        assert!(text.contains(key) && !text.contains('\n'), "{keys}: {text}");
    }
    assert!(matches!(
        device(",num-queues=2,iothread-vq-mapping=io0:io1,iothread=io0").unwrap_err(),
        ConfigError::ConflictingKeys { .. }
    ));
    assert_eq!(
        device(",num-queues=2,iothread-vq-mapping=io0:io9").unwrap_err(),
        ConfigError::UnknownIothread {
            device: "x".into(),
            iothread: "io9".into()
        }
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

/// Kata Containers' StratoVirt driver, amd64 (`createParams` and the devices it appends),
/// without the devices this VMM has not built.
const KATA_LINE: &[&str] = &[
    "-name", "sandbox-0123abcd", "-uuid", "0f4d4b2c-5b8e-4c57-9a36-1e2b3c4d5e6f", "-smp", "1",
    "-m", "2048", "-kernel", "/usr/share/kata-containers/vmlinux.container", "-append",
    "reboot=k panic=1 net.ifnames=0 ramdom.trust_cpu=on pci=off iommu=off acpi=off quiet 8250.nr_uarts=0 agent.log_vport=1025",
    "-qmp", "unix:/run/vc/vm/0123abcd/qmp.socket,server,nowait", "-D", "-disable-seccomp",
    "-machine", "type=microvm,dump-guest-core=off,mem-share=on", "-initrd",
    "/usr/share/kata-containers/kata-containers-initrd.img", "-object",
    "rng-random,id=objrng0,filename=/dev/urandom", "-device",
    "virtio-rng-device,rng=objrng0,id=virtio-rng0",
];

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn katas_command_line_is_accepted() {
    let config = parse_args(args(KATA_LINE)).unwrap();
    assert_eq!(config.name.as_deref(), Some("sandbox-0123abcd"));
    assert_eq!(
        config.uuid.as_deref(),
        Some("0f4d4b2c-5b8e-4c57-9a36-1e2b3c4d5e6f")
    );
    assert_eq!(config.mem_size, 2048 << 20);
    assert!(config.disable_seccomp);
    assert!(config.mem_share);
    assert!(!config.dump_guest_core);
    assert_eq!(config.log, Some(None), "-D without a file: stderr");
    assert!(config.cmdline.starts_with("reboot=k panic=1"));
    assert_eq!(
        config.rngs,
        vec![RngConfig {
            id: "virtio-rng0".into(),
            object: "objrng0".into(),
            filename: "/dev/urandom".into(),
            bytes_per_sec: None,
        }]
    );
    // With a root disk instead of an initrd (Kata's blkDevice), and -accel.
    let mut line = args(KATA_LINE);
    line.extend(args(&[
        "-drive",
        "id=rootfs,file=/usr/share/kata-containers/kata-containers.img,readonly=on,direct=off",
        "-device",
        "virtio-blk-device,drive=rootfs,id=virtio-blk0",
        "-accel",
        "kvm",
    ]));
    let config = parse_args(line).unwrap();
    assert_eq!(config.blk_devices[0].id, "virtio-blk0");
    assert_eq!(
        (
            config.drives[0].readonly,
            config.drives[0].direct,
            config.drives[0].aio
        ),
        (true, false, AioEngine::Off)
    );
}

#[test]
fn devices_not_built_yet_are_refused_by_name() {
    for (extra, option, what) in [
        (
            vec![
                "-device",
                "vhost-vsock-device,id=vsock-id,guest-cid=3,vhostfd=3",
            ],
            "-device",
            "vhost-vsock-device",
        ),
        (vec!["-netdev", "tap,id=eth0,fds=3:4"], "-netdev", "tap"),
        (
            vec![
                "-device",
                "virtio-net-device,netdev=eth0,id=eth0,mac=02:42:ac:11:00:02",
            ],
            "-device",
            "virtio-net-device",
        ),
        (
            vec![
                "-chardev",
                "socket,id=virtio_fs,path=/run/vc/vm/x/virtiofs_kata.socket,server,nowait",
            ],
            "-chardev",
            "socket",
        ),
        (
            vec![
                "-device",
                "vhost-user-fs-device,chardev=virtio_fs,tag=kataShared,id=virtio-fs0",
            ],
            "-device",
            "vhost-user-fs-device",
        ),
        (
            vec!["-device", "virtio-serial-device,id=virtio-serial0"],
            "-device",
            "virtio-serial-device",
        ),
        (
            vec![
                "-device",
                "virtconsole,chardev=charconsole0,id=virtio-console0,nr=0",
            ],
            "-device",
            "virtconsole",
        ),
        (
            vec!["-object", "memory-backend-memfd,id=mem0,size=1G"],
            "-object",
            "memory-backend-memfd",
        ),
    ] {
        let mut line = args(KATA_LINE);
        line.extend(args(&extra));
        let err = parse_args(line).unwrap_err();
        assert_eq!(
            err,
            ConfigError::NotSupportedYet {
                option: option.into(),
                what: what.into()
            },
            "{extra:?}"
        );
        let text = err.to_string();
        assert_eq!(text, format!("{option} {what} is not supported yet"));
    }
}

#[test]
fn a_backend_not_supported_yet_is_quoted_unless_it_is_a_plain_name() {
    // Found by the cmdline fuzz target: `-netdev` with a value holding a newline.
    for (value, what) in [
        ("=\n", r#""=\n""#),
        ("tap\nx,id=n", r#""tap\nx""#),
        ("tap,id=n", "tap"),
    ] {
        let err = parse_args(args(&["-kernel", "vmlinux", "-netdev", value])).unwrap_err();
        let text = err.to_string();
        assert_eq!(text, format!("-netdev {what} is not supported yet"));
        assert!(!text.contains('\n'), "{text:?}");
    }
}

#[test]
fn append_joins_unquoted_words_up_to_the_next_option() {
    let config = parse("-append console=ttyS0 root=/dev/vda rw -kernel /k").unwrap();
    assert_eq!(config.cmdline, "console=ttyS0 root=/dev/vda rw");
    assert_eq!(config.kernel, Some(PathBuf::from("/k")));
    let config = parse_args(args(&["-append", "a b", "c"])).unwrap();
    assert_eq!(config.cmdline, "a b c");
    // The first word is taken whatever it looks like, as before.
    assert_eq!(parse("-append -v quiet").unwrap().cmdline, "-v quiet");
    assert_eq!(
        parse_err("-append"),
        ConfigError::MissingValue("-append".into())
    );
    assert_eq!(
        parse_err("-append a -append b"),
        ConfigError::DuplicateOption("-append".into())
    );
}

#[test]
fn daemonize_refuses_a_console_on_stdio() {
    assert_eq!(
        parse_err("-daemonize -serial stdio"),
        ConfigError::DaemonizeWithStdio
    );
    assert!(parse("-daemonize -pidfile /p").unwrap().daemonize);
}

#[test]
fn libvirt_no_ops_uuid_and_seccomp() {
    let config = parse(
        "-nodefaults -no-user-config -no-shutdown -nographic -usb -sandbox on,obsolete=deny \
         -msg timestamp=on -rtc base=utc -boot strict=on -display none \
         -realtime mlock=off -overcommit mem-lock=off -kernel /k",
    )
    .unwrap();
    assert_eq!(config.kernel, Some(PathBuf::from("/k")));
    assert_eq!(
        VmConfig {
            kernel: None,
            ..config
        },
        VmConfig::default(),
        "the no-op options change nothing"
    );
    parse_err("-realtime mlock=on");
    parse_err("-display gtk");
    parse_err("-nodefaults -nodefaults");
    assert!(parse("-uuid").unwrap().uuid.is_none());
    parse_err("-uuid not-a-uuid");
    assert!(parse("-disable-seccomp").unwrap().disable_seccomp);
    assert!(!parse("").unwrap().disable_seccomp);
    parse("-accel kvm").unwrap();
    parse_err("-accel tcg");
}

#[test]
fn rng_devices_need_their_objects_and_unique_ids() {
    let config = parse(
        "-object rng-random,id=r,filename=/dev/random -device virtio-rng-device,rng=r,max-bytes=1024,period=500",
    )
    .unwrap();
    assert_eq!(config.rngs[0].id, "r");
    assert_eq!(config.rngs[0].bytes_per_sec, Some(2048));
    assert_eq!(
        parse_err("-device virtio-rng-device,rng=r,id=x"),
        ConfigError::UnknownRngObject {
            device: "x".into(),
            rng: "r".into()
        }
    );
    assert_eq!(
        parse_err("-object iothread,id=r -object rng-random,id=r,filename=/f"),
        ConfigError::DuplicateObjectId("r".into())
    );
    assert_eq!(
        parse_err("-object rng-random,id=r,filename=/f -object rng-random,id=r,filename=/g"),
        ConfigError::DuplicateObjectId("r".into())
    );
    assert_eq!(
        parse_err(
            "-drive id=d,file=/a -device virtio-blk-device,drive=d,id=x \
             -object rng-random,id=r,filename=/f -device virtio-rng-device,rng=r,id=x"
        ),
        ConfigError::DuplicateDeviceId("x".into())
    );
    parse_err("-device virtio-rng-pci,rng=r");
}

#[test]
fn machine_keys_reach_the_config() {
    let config = parse("-machine microvm,mem-share=on,dump-guest-core=off,accel=kvm").unwrap();
    assert!(config.mem_share && !config.dump_guest_core);
    let config = parse("-smp 4,sockets=2,cores=1,threads=2").unwrap();
    assert_eq!(config.cpus, 4);
    assert_eq!(
        config.topology,
        Some(CpuTopology {
            sockets: 2,
            cores: 1,
            threads: 2
        })
    );
    assert_eq!(
        parse("-smp 3").unwrap().topology,
        Some(CpuTopology::flat(3))
    );
    assert_eq!(parse("").unwrap().topology, None);
}

#[test]
fn iothread_polling_keys_are_qemus() {
    let config = parse("-object iothread,id=a -object iothread,id=b,poll-max-ns=0 -object iothread,id=c,poll-max-ns=100000,poll-grow=4,poll-shrink=2").unwrap();
    let polls: Vec<(&str, PollParams)> = config
        .iothreads
        .iter()
        .map(|t| (t.id.as_str(), t.poll))
        .collect();
    assert_eq!(
        polls,
        vec![
            (
                "a",
                PollParams {
                    max_ns: 32768,
                    grow: 0,
                    shrink: 0
                }
            ),
            (
                "b",
                PollParams {
                    max_ns: 0,
                    grow: 0,
                    shrink: 0
                }
            ),
            (
                "c",
                PollParams {
                    max_ns: 100_000,
                    grow: 4,
                    shrink: 2
                }
            ),
        ]
    );
    assert!(
        !config.iothreads[1].poll.enabled(),
        "poll-max-ns=0 turns polling off"
    );
    let max = parse("-object iothread,id=a,poll-max-ns=9223372036854775807").unwrap();
    assert_eq!(max.iothreads[0].poll.max_ns, i64::MAX as u64);
}

#[test]
fn bad_iothread_polling_values_are_one_line_errors() {
    for (line, key, value) in [
        ("-object iothread,id=a,poll-max-ns=-1", "poll-max-ns", "-1"),
        (
            "-object iothread,id=a,poll-max-ns=32k",
            "poll-max-ns",
            "32k",
        ),
        ("-object iothread,id=a,poll-max-ns=", "poll-max-ns", ""),
        (
            "-object iothread,id=a,poll-max-ns=9223372036854775808",
            "poll-max-ns",
            "9223372036854775808",
        ),
        ("-object iothread,id=a,poll-grow=two", "poll-grow", "two"),
        (
            "-object iothread,id=a,poll-shrink=1.5",
            "poll-shrink",
            "1.5",
        ),
    ] {
        match parse_err(line) {
            ConfigError::InvalidValue {
                key: k, value: v, ..
            } => {
                assert_eq!((k.as_str(), v.as_str()), (key, value), "{line}")
            }
            other => panic!("{line}: {other:?}"),
        }
    }
    assert!(matches!(
        parse_err("-object iothread,id=a,poll-max=5"),
        ConfigError::UnknownKey { .. }
    ));
}
