//! The command line: a hand-written parser turning StratoVirt's options into a [`VmConfig`].
//!
//! ```text
//! args ──> option table (name, takes a value?) ──> per-option value parser (kv lists)
//!      ──> block resolution (ids, cross-references, short-form devices) ──> VmConfig
//! ```
//!
//! Rules (each one a [`ConfigError`] variant whose message is one line):
//! - Options are `-name` or `--name`; an unknown option, a missing value, or a stray word is
//!   an error. Options other than `-drive`, `-device`, `-object`, `-netdev` and `-chardev` may
//!   appear once.
//! - `-append` takes the next argument and, as StratoVirt does, every following word that does
//!   not start with `-`, joined with spaces (`-append console=ttyS0 root=/dev/vda`).
//! - Devices, backends and options StratoVirt has and this VMM has not built (`virtio-net`,
//!   `vhost-vsock`, `vhost-user-fs`, `virtio-serial`, `-netdev`, `-chardev`, ...) are refused
//!   with one line naming them; nothing is accepted and then ignored, except the options
//!   libvirt passes that StratoVirt ignores as well ([`LIBVIRT_NO_OPS`]) and
//!   `-disable-seccomp` ([`VmConfig::disable_seccomp`]: no seccomp filters).
//! - `-daemonize` with `-serial stdio` is refused, as StratoVirt refuses it.
//! - Structured values are `key=value` lists split on commas (`,,` is a literal comma);
//!   unknown keys, duplicate keys and bad values are errors; numbers never overflow.
//! - `-D` takes a file only if the next argument does not start with `-`.
//! - A missing `-kernel` is not a parse error: the machine refuses to build without one.
//! - Block rules are on [`DriveConfig`] and [`BlkDeviceConfig`]'s module (`drive.rs`):
//!   direct defaults to on, aio to native (off with direct=off), aio=native needs direct=on,
//!   `file.locking` defaults to auto, ids are unique, and a drive no `-device` uses gets its
//!   own device (id `driveN` if none).

mod drive;
mod error;
mod kv;
mod machine;
mod rng;

use std::path::PathBuf;

pub use drive::{
    default_aio, parse_num_queues, BlkDeviceConfig, DriveConfig, IothreadConfig, BLK_DRIVER,
    MAX_QUEUES, MAX_SERIAL_LEN,
};
pub use error::{ConfigError, Result};
pub use machine::{
    CpuConfig, CpuTopology, ACCEL, CPU_MODEL, DEFAULT_MEM_SIZE, LIBVIRT_NO_OPS, MACHINE_TYPE,
    MAX_CPUS, MAX_MEM_SIZE, MIN_MEM_SIZE,
};
pub use rng::{RngConfig, MAX_RNG_BYTES_PER_SEC, MIN_RNG_BYTES_PER_SEC, RNG_DRIVER, RNG_OBJECT};

/// `-device` drivers StratoVirt's micro VM has and this VMM has not built yet: refused with
/// "is not supported yet".
pub const DEVICES_NOT_YET: &[&str] = &[
    "virtio-net-device",
    "vhost-vsock-device",
    "vhost-user-fs-device",
    "virtio-serial-device",
    "virtconsole",
    "virtio-balloon-device",
    "virtio-input-device",
];

/// Everything the command line configures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// The machine type (`microvm`).
    pub machine_type: String,
    /// The kernel image (`-kernel`).
    pub kernel: Option<PathBuf>,
    /// The initrd (`-initrd`).
    pub initrd: Option<PathBuf>,
    /// The user's kernel command line (`-append`), before virtio-mmio entries are added.
    pub cmdline: String,
    /// Guest RAM in bytes (`-m`).
    pub mem_size: u64,
    /// Guest RAM is a shared memfd mapping, so that another process (a vhost-user backend)
    /// can map it too (`-machine mem-share=on`; default off: private anonymous memory).
    pub mem_share: bool,
    /// Guest RAM is included in a core dump of this process (`-machine dump-guest-core`,
    /// default on; off marks it `MADV_DONTDUMP`).
    pub dump_guest_core: bool,
    /// Make all guest RAM resident at start (`-mem-prealloc`); io_uring drives then use it
    /// as registered (fixed) buffers.
    pub mem_prealloc: bool,
    /// Number of vCPUs (`-smp`).
    pub cpus: u8,
    /// How the vCPUs are arranged in sockets, cores and threads (`-smp`, completed from its
    /// topology keys); `None`: one socket of `cpus` single-thread cores.
    pub topology: Option<CpuTopology>,
    /// The vCPU model and feature changes (`-cpu`).
    pub cpu: CpuConfig,
    /// A 16550 UART on stdio (`-serial stdio`).
    pub serial_stdio: bool,
    /// `-D`: `None` without it, `Some(None)` for stderr, `Some(Some(file))` for a file.
    pub log: Option<Option<PathBuf>>,
    /// The VM's name (`-name`).
    pub name: Option<String>,
    /// Block backends, in command-line order.
    pub drives: Vec<DriveConfig>,
    /// virtio-blk devices, in the order they take slots.
    pub blk_devices: Vec<BlkDeviceConfig>,
    /// Iothreads (`-object iothread,id=T[,poll-max-ns=N,...]`).
    pub iothreads: Vec<IothreadConfig>,
    /// virtio-rng devices with their entropy files (`-object rng-random` +
    /// `-device virtio-rng-device`), in command-line order.
    pub rngs: Vec<RngConfig>,
    /// The VM's UUID (`-uuid`), lower case.
    pub uuid: Option<String>,
    /// The QMP socket path (`-qmp unix:PATH,server,nowait`).
    pub qmp: Option<PathBuf>,
    /// Detach from the terminal (`-daemonize`).
    pub daemonize: bool,
    /// Write the process id here (`-pidfile`).
    pub pidfile: Option<PathBuf>,
    /// Start with the vCPUs paused (`-S`).
    pub start_paused: bool,
    /// Run without the system-call filters (`-disable-seccomp`); by default every thread of
    /// the VMM runs under the seccomp filter of its role.
    pub disable_seccomp: bool,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            machine_type: MACHINE_TYPE.to_string(),
            kernel: None,
            initrd: None,
            cmdline: String::new(),
            mem_size: DEFAULT_MEM_SIZE,
            mem_share: false,
            dump_guest_core: true,
            mem_prealloc: false,
            cpus: 1,
            topology: None,
            cpu: CpuConfig::default(),
            serial_stdio: false,
            log: None,
            name: None,
            drives: Vec::new(),
            blk_devices: Vec::new(),
            iothreads: Vec::new(),
            rngs: Vec::new(),
            uuid: None,
            qmp: None,
            daemonize: false,
            pidfile: None,
            start_paused: false,
            disable_seccomp: false,
        }
    }
}

/// How an option takes its value.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Arity {
    /// A flag.
    None,
    /// The next argument, always.
    Required,
    /// The next argument, unless it starts with `-`.
    Optional,
    /// The next argument, always, then every following argument that does not start with
    /// `-`, joined with spaces.
    Words,
}

/// The options, their arity, and whether they may repeat.
const OPTIONS: &[(&str, Arity, bool)] = &[
    ("machine", Arity::Required, false),
    ("accel", Arity::Required, false),
    ("kernel", Arity::Required, false),
    ("append", Arity::Words, false),
    ("initrd", Arity::Required, false),
    ("m", Arity::Required, false),
    ("mem-prealloc", Arity::None, false),
    ("smp", Arity::Required, false),
    ("cpu", Arity::Required, false),
    ("serial", Arity::Required, false),
    ("D", Arity::Optional, false),
    ("name", Arity::Required, false),
    ("daemonize", Arity::None, false),
    ("pidfile", Arity::Required, false),
    ("S", Arity::None, false),
    ("disable-seccomp", Arity::None, false),
    ("drive", Arity::Required, true),
    ("device", Arity::Required, true),
    ("object", Arity::Required, true),
    ("netdev", Arity::Required, true),
    ("chardev", Arity::Required, true),
    ("qmp", Arity::Required, false),
    ("uuid", Arity::Optional, false),
    ("h", Arity::None, false),
    ("help", Arity::None, false),
    ("version", Arity::None, false),
];

/// The version printed by `-version`.
pub fn version() -> String {
    format!("StratoVirt {}", env!("CARGO_PKG_VERSION"))
}

/// The text printed by `-help`.
pub fn usage() -> &'static str {
    "\
Usage: stratovirt [OPTIONS]

  -machine [type=]microvm[,dump-guest-core=on|off][,mem-share=on|off][,accel=kvm]
                              machine type (default microvm); dump-guest-core=off keeps
                              guest RAM out of core dumps; mem-share=on backs guest RAM
                              with a shared memfd
  -accel kvm                  accelerator (KVM is the only one)
  -kernel FILE                x86_64 bzImage, ELF vmlinux or raw vmlinux.bin to boot
  -append CMDLINE...          guest kernel command line (one quoted argument, or the
                              words up to the next option)
  -initrd FILE                initramfs/initrd image
  -m N[M|G]                   guest RAM, default unit MiB, 128M..512G (default 256M)
  -mem-prealloc               make guest RAM resident at start (io_uring drives then
                              register it as fixed buffers)
  -smp [cpus=]N[,maxcpus=N][,sockets=S][,cores=C][,threads=T][,dies=1][,clusters=1]
                              vCPUs, 1..254 (default 1), and their topology
  -cpu host[,-FEAT][,+FEAT]   vCPU model and CPUID features to hide or show
  -serial stdio               16550 UART (port 0x3f8, IRQ 4) on stdin/stdout
  -drive id=ID,file=PATH[,readonly=on|off][,direct=on|off]
         [,aio=off|threads|native|io_uring]
         [,serial=S][,file.locking=on|off|auto][,if=none][,format=raw]
         [,werror=report|ignore|stop|enospc][,rerror=report|ignore|stop]
         [,discard=ignore|unmap][,detect-zeroes=off|on|unmap]
         [,throttling.{iops,bps}-{total,read,write}[-max[-length]]=N]
         [,throttling.iops-size=N]
                              block backend (a regular file or a block device);
                              direct defaults to on, aio to native (to off with
                              direct=off); file.locking (default auto) takes QEMU's
                              image locks: one writer or many readers; werror
                              (default enospc) and rerror (default report) say what
                              a failed request does (stop pauses the VM); discard
                              (default ignore) and detect-zeroes (default off) as
                              in QEMU; throttling.* limits requests or bytes per
                              second (0 = no limit), -max a burst rate held for
                              -max-length seconds; a drive no -device uses gets its
                              own virtio-blk device, and may then omit id
  -device virtio-blk-device,drive=ID,id=DEVID[,serial=S][,iothread=T]
         [,num-queues=N][,iothread-vq-mapping=T0:T1...]
                              virtio-mmio block device on drive ID; num-queues (1 to
                              32, default 1) request queues, each with its own engine,
                              run on iothread T (or the main loop), or spread round
                              robin over the iothreads of iothread-vq-mapping (queue q
                              on the (q mod n)-th listed; not with iothread=)
  -object rng-random,id=R,filename=FILE
  -device virtio-rng-device,rng=R[,id=DEVID][,max-bytes=N,period=MS]
                              virtio-mmio entropy device reading FILE
  -object iothread,id=T[,poll-max-ns=N][,poll-grow=G][,poll-shrink=S]
                              an I/O thread for devices; before it sleeps it polls
                              its queues and engines for up to an adaptive window of
                              at most poll-max-ns (default 32768; 0 = no polling),
                              grown by poll-grow (default 0 = x2) and shrunk by
                              poll-shrink (default 0 = to 0), as QEMU's iothreads
  -qmp unix:PATH,server,nowait
                              QMP socket
  -D [FILE]                   log to FILE (to stderr without FILE); the level comes from
                              STRATOVIRT_LOG_LEVEL (error, warn, info, debug, trace)
  -name NAME                  VM name
  -uuid UUID                  VM UUID
  -daemonize                  detach from the terminal (the working directory stays)
  -pidfile FILE               write the process id to FILE
  -S                          start with vCPUs paused (resume with QMP cont)
  -disable-seccomp            run without the system-call filters (by default every
                              thread runs under the seccomp filter of its role)
  -h, -help                   print this help
  -version                    print the version

Accepted and ignored, as StratoVirt does (libvirt passes them): -nodefaults,
-no-user-config, -no-shutdown, -nographic, -usb, -sandbox, -msg, -rtc, -boot,
-display none, -realtime mlock=off, -overcommit mem-lock=off.
"
}

/// Options and words of the command line not tied to one option: the no-op options libvirt
/// passes are recognised by name (see [`LIBVIRT_NO_OPS`]).
fn find_option(name: &str) -> Option<(&'static str, Arity, bool)> {
    OPTIONS
        .iter()
        .find(|(known, _, _)| *known == name)
        .copied()
        .or_else(|| {
            LIBVIRT_NO_OPS
                .iter()
                .find(|known| **known == name)
                .map(|known| (*known, Arity::Optional, false))
        })
}

/// Parses the command line `args` (without the program name).
///
/// `-help` and `-version` come back as [`ConfigError::Help`] and [`ConfigError::Version`]
/// so that the caller prints [`usage`] or [`version`] and exits with status 0.
pub fn parse_args<I: IntoIterator<Item = String>>(args: I) -> Result<VmConfig> {
    let mut config = VmConfig::default();
    let mut block = drive::BlockArgs::default();
    let mut devices = DeviceArgs::default();
    let mut seen: Vec<&str> = Vec::new();
    let mut args = args.into_iter().enumerate().peekable();
    while let Some((position, arg)) = args.next() {
        let name = arg
            .strip_prefix("--")
            .or_else(|| arg.strip_prefix('-'))
            .filter(|name| !name.is_empty())
            .ok_or_else(|| ConfigError::UnexpectedArgument(arg.clone()))?;
        let (name, arity, repeats) =
            find_option(name).ok_or_else(|| ConfigError::UnknownOption(arg.clone()))?;
        if !repeats && seen.contains(&name) {
            return Err(ConfigError::DuplicateOption(format!("-{name}")));
        }
        seen.push(name);
        let value = match arity {
            Arity::None => None,
            Arity::Required => Some(
                args.next()
                    .map(|(_, value)| value)
                    .ok_or_else(|| ConfigError::MissingValue(format!("-{name}")))?,
            ),
            Arity::Optional => args
                .next_if(|(_, next)| !next.starts_with('-'))
                .map(|(_, value)| value),
            Arity::Words => {
                let mut words = args
                    .next()
                    .map(|(_, value)| value)
                    .ok_or_else(|| ConfigError::MissingValue(format!("-{name}")))?;
                while let Some((_, word)) = args.next_if(|(_, next)| !next.starts_with('-')) {
                    words.push(' ');
                    words.push_str(&word);
                }
                Some(words)
            }
        };
        if LIBVIRT_NO_OPS.contains(&name) {
            machine::check_no_op(name, value.as_deref())?;
            continue;
        }
        apply(&mut config, &mut block, &mut devices, position, name, value)?;
    }
    let resolved = drive::resolve(block)?;
    config.drives = resolved.drives;
    config.blk_devices = resolved.devices;
    config.iothreads = resolved.iothreads;
    for object in &devices.rng_objects {
        if config.iothreads.iter().any(|t| t.id == object.id)
            || devices
                .rng_objects
                .iter()
                .filter(|o| o.id == object.id)
                .count()
                > 1
        {
            return Err(ConfigError::DuplicateObjectId(object.id.clone()));
        }
    }
    config.rngs = rng::resolve(&devices.rng_objects, devices.rngs)?;
    for rng in &config.rngs {
        if config.blk_devices.iter().any(|d| d.id == rng.id)
            || config.rngs.iter().filter(|r| r.id == rng.id).count() > 1
        {
            return Err(ConfigError::DuplicateDeviceId(rng.id.clone()));
        }
    }
    if config.daemonize && config.serial_stdio {
        return Err(ConfigError::DaemonizeWithStdio);
    }
    Ok(config)
}

/// Devices and objects other than the block ones, in command-line order.
#[derive(Default)]
struct DeviceArgs {
    rng_objects: Vec<rng::RngObject>,
    rngs: Vec<rng::RngDeviceArg>,
}

/// The first word of a `key=value` list (a `-device` driver, an `-object` type), or its value
/// under `key`.
fn kind_of(option: &str, key: &str, text: &str) -> Result<String> {
    let mut kv = kv::KvList::parse(option, text)?;
    kv.take_implied(key)?.ok_or_else(|| kv.missing(key))
}

/// `-device DRIVER,...`: virtio-blk or virtio-rng; the devices StratoVirt has that are not
/// built here are refused by name.
fn parse_device(
    block: &mut drive::BlockArgs,
    devices: &mut DeviceArgs,
    position: usize,
    text: &str,
) -> Result<()> {
    let driver = kind_of("-device", "driver", text)?;
    match driver.as_str() {
        BLK_DRIVER => block.devices.push((position, drive::parse_device(text)?)),
        RNG_DRIVER => devices.rngs.push(rng::parse_device(text)?),
        other if DEVICES_NOT_YET.contains(&other) => {
            return Err(ConfigError::NotSupportedYet {
                option: "-device".into(),
                what: other.into(),
            })
        }
        other => {
            return Err(ConfigError::InvalidValue {
                option: "-device".into(),
                key: "driver".into(),
                value: other.into(),
                expected: format!("{BLK_DRIVER} or {RNG_DRIVER}"),
            })
        }
    }
    Ok(())
}

/// `-object TYPE,...`: an iothread or an rng-random entropy source.
fn parse_object(block: &mut drive::BlockArgs, devices: &mut DeviceArgs, text: &str) -> Result<()> {
    let kind = kind_of("-object", "qom-type", text)?;
    match kind.as_str() {
        "iothread" => block.iothreads.push(drive::parse_object(text)?),
        RNG_OBJECT => devices.rng_objects.push(rng::parse_object(text)?),
        "memory-backend-ram" | "memory-backend-file" | "memory-backend-memfd" => {
            return Err(ConfigError::NotSupportedYet {
                option: "-object".into(),
                what: kind,
            })
        }
        other => {
            return Err(ConfigError::InvalidValue {
                option: "-object".into(),
                key: "qom-type".into(),
                value: other.into(),
                expected: format!("iothread or {RNG_OBJECT}"),
            })
        }
    }
    Ok(())
}

/// `-netdev TYPE,...` and `-chardev TYPE,...`: refused by name (no virtio-net, no character
/// devices yet).
/// The backend is named as given when it is a plain name (`tap`), else quoted like every other
/// argument an error repeats, so that a newline in it cannot break the line.
fn not_supported_yet(option: &str, text: &str) -> ConfigError {
    let kind = kind_of(option, "type", text).unwrap_or_else(|_| text.to_string());
    let plain = !kind.is_empty()
        && kind
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    ConfigError::NotSupportedYet {
        option: option.into(),
        what: if plain { kind } else { format!("{kind:?}") },
    }
}

/// Applies one option to the configuration.
fn apply(
    config: &mut VmConfig,
    block: &mut drive::BlockArgs,
    devices: &mut DeviceArgs,
    position: usize,
    name: &str,
    value: Option<String>,
) -> Result<()> {
    let required = |value: Option<String>| {
        value
            .filter(|v| !v.is_empty())
            .ok_or_else(|| ConfigError::MissingValue(format!("-{name}")))
    };
    match name {
        "machine" => {
            let (machine_type, options) = machine::parse_machine(&required(value)?)?;
            config.machine_type = machine_type;
            config.mem_share = options.mem_share;
            config.dump_guest_core = options.dump_guest_core;
        }
        "accel" => machine::parse_accel(&required(value)?)?,
        "kernel" => config.kernel = Some(PathBuf::from(required(value)?)),
        "append" => config.cmdline = value.unwrap_or_default(),
        "initrd" => config.initrd = Some(PathBuf::from(required(value)?)),
        "m" => config.mem_size = machine::parse_memory(&required(value)?)?,
        "mem-prealloc" => config.mem_prealloc = true,
        "smp" => {
            let (cpus, topology) = machine::parse_smp(&required(value)?)?;
            config.cpus = cpus;
            config.topology = Some(topology);
        }
        "cpu" => config.cpu = machine::parse_cpu(&required(value)?)?,
        "serial" => config.serial_stdio = machine::parse_serial(&required(value)?)?,
        "D" => {
            if value.as_deref() == Some("") {
                return Err(ConfigError::MissingValue("-D".to_string()));
            }
            config.log = Some(value.map(PathBuf::from));
        }
        "name" => config.name = Some(required(value)?),
        "daemonize" => config.daemonize = true,
        "pidfile" => config.pidfile = Some(PathBuf::from(required(value)?)),
        "S" => config.start_paused = true,
        "drive" => block
            .drives
            .push((position, drive::parse_drive(&required(value)?)?)),
        "device" => parse_device(block, devices, position, &required(value)?)?,
        "object" => parse_object(block, devices, &required(value)?)?,
        "netdev" | "chardev" => {
            return Err(not_supported_yet(&format!("-{name}"), &required(value)?))
        }
        "qmp" => config.qmp = Some(machine::parse_qmp(&required(value)?)?),
        "uuid" => config.uuid = value.as_deref().map(machine::parse_uuid).transpose()?,
        "disable-seccomp" => config.disable_seccomp = true,
        "h" | "help" => return Err(ConfigError::Help),
        "version" => return Err(ConfigError::Version),
        other => return Err(ConfigError::UnknownOption(format!("-{other}"))),
    }
    Ok(())
}

#[cfg(test)]
mod tests;
