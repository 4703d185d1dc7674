//! The command line: a hand-written parser turning StratoVirt's options into a [`VmConfig`].
//!
//! ```text
//! args ──> option table (name, takes a value?) ──> per-option value parser (kv lists)
//!      ──> block resolution (ids, cross-references, short-form devices) ──> VmConfig
//! ```
//!
//! Rules (each one a [`ConfigError`] variant whose message is one line):
//! - Options are `-name` or `--name`; an unknown option, a missing value, or a stray word is
//!   an error. Options other than `-drive`, `-device` and `-object` may appear once.
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

use std::path::PathBuf;

pub use drive::{default_aio, BlkDeviceConfig, DriveConfig, BLK_DRIVER, MAX_SERIAL_LEN};
pub use error::{ConfigError, Result};
pub use machine::{
    CpuConfig, CPU_MODEL, DEFAULT_MEM_SIZE, MACHINE_TYPE, MAX_CPUS, MAX_MEM_SIZE, MIN_MEM_SIZE,
};

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
    /// Make all guest RAM resident at start (`-mem-prealloc`); io_uring drives then use it
    /// as registered (fixed) buffers.
    pub mem_prealloc: bool,
    /// Number of vCPUs (`-smp`).
    pub cpus: u8,
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
    /// Iothread ids (`-object iothread,id=T`).
    pub iothreads: Vec<String>,
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
            mem_prealloc: false,
            cpus: 1,
            cpu: CpuConfig::default(),
            serial_stdio: false,
            log: None,
            name: None,
            drives: Vec::new(),
            blk_devices: Vec::new(),
            iothreads: Vec::new(),
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
}

/// The options, their arity, and whether they may repeat.
const OPTIONS: &[(&str, Arity, bool)] = &[
    ("machine", Arity::Required, false),
    ("kernel", Arity::Required, false),
    ("append", Arity::Required, false),
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
    ("qmp", Arity::Required, false),
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

  -machine [type=]microvm     machine type (default microvm)
  -kernel FILE                x86_64 bzImage or ELF vmlinux to boot
  -append \"CMDLINE\"           guest kernel command line
  -initrd FILE                initramfs/initrd image
  -m N[M|G]                   guest RAM, default unit MiB, 128M..512G (default 256M)
  -mem-prealloc               make guest RAM resident at start (io_uring drives then
                              register it as fixed buffers)
  -smp [cpus=]N               number of vCPUs, 1..254 (default 1)
  -cpu host[,-FEAT][,+FEAT]   vCPU model and CPUID features to hide or show
  -serial stdio               16550 UART (port 0x3f8, IRQ 4) on stdin/stdout
  -drive id=ID,file=PATH[,readonly=on|off][,direct=on|off][,aio=off|native|io_uring]
         [,serial=S][,throttling.iops-total=N][,file.locking=on|off|auto][,if=none]
         [,format=raw][,werror=report|ignore|stop|enospc][,rerror=report|ignore|stop]
                              block backend (a regular file or a block device);
                              direct defaults to on, aio to native (to off with
                              direct=off); file.locking (default auto) takes QEMU's
                              image locks: one writer or many readers; werror
                              (default enospc) and rerror (default report) say what
                              a failed request does (stop pauses the VM); a drive no
                              -device uses gets its own virtio-blk device, and may
                              then omit id
  -device virtio-blk-device,drive=ID,id=DEVID[,serial=S][,iothread=T]
                              virtio-mmio block device on drive ID
  -object iothread,id=T       an I/O thread for devices
  -qmp unix:PATH,server,nowait
                              QMP socket
  -D [FILE]                   log to FILE (to stderr without FILE)
  -name NAME                  VM name
  -daemonize                  detach from the terminal
  -pidfile FILE               write the process id to FILE
  -S                          start with vCPUs paused (resume with QMP cont)
  -disable-seccomp            run without the system-call filters (by default every
                              thread runs under the seccomp filter of its role)
  -h, -help                   print this help
  -version                    print the version
"
}

/// Parses the command line `args` (without the program name).
///
/// `-help` and `-version` come back as [`ConfigError::Help`] and [`ConfigError::Version`]
/// so that the caller prints [`usage`] or [`version`] and exits with status 0.
pub fn parse_args<I: IntoIterator<Item = String>>(args: I) -> Result<VmConfig> {
    let mut config = VmConfig::default();
    let mut block = drive::BlockArgs::default();
    let mut seen: Vec<&str> = Vec::new();
    let mut args = args.into_iter().enumerate().peekable();
    while let Some((position, arg)) = args.next() {
        let name = arg
            .strip_prefix("--")
            .or_else(|| arg.strip_prefix('-'))
            .filter(|name| !name.is_empty())
            .ok_or_else(|| ConfigError::UnexpectedArgument(arg.clone()))?;
        let &(name, arity, repeats) = OPTIONS
            .iter()
            .find(|(known, _, _)| *known == name)
            .ok_or_else(|| ConfigError::UnknownOption(arg.clone()))?;
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
        };
        apply(&mut config, &mut block, position, name, value)?;
    }
    let resolved = drive::resolve(block)?;
    config.drives = resolved.drives;
    config.blk_devices = resolved.devices;
    config.iothreads = resolved.iothreads;
    Ok(config)
}

/// Applies one option to the configuration.
fn apply(
    config: &mut VmConfig,
    block: &mut drive::BlockArgs,
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
        "machine" => config.machine_type = machine::parse_machine(&required(value)?)?,
        "kernel" => config.kernel = Some(PathBuf::from(required(value)?)),
        "append" => config.cmdline = value.unwrap_or_default(),
        "initrd" => config.initrd = Some(PathBuf::from(required(value)?)),
        "m" => config.mem_size = machine::parse_memory(&required(value)?)?,
        "mem-prealloc" => config.mem_prealloc = true,
        "smp" => config.cpus = machine::parse_smp(&required(value)?)?,
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
        "disable-seccomp" => config.disable_seccomp = true,
        "drive" => block
            .drives
            .push((position, drive::parse_drive(&required(value)?)?)),
        "device" => block
            .devices
            .push((position, drive::parse_device(&required(value)?)?)),
        "object" => block
            .iothreads
            .push(drive::parse_object(&required(value)?)?),
        "qmp" => config.qmp = Some(machine::parse_qmp(&required(value)?)?),
        "h" | "help" => return Err(ConfigError::Help),
        "version" => return Err(ConfigError::Version),
        other => return Err(ConfigError::UnknownOption(format!("-{other}"))),
    }
    Ok(())
}

#[cfg(test)]
mod tests;
