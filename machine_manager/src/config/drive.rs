//! `-drive` (a block backend), `-device virtio-blk-device` (the guest-visible disk using it),
//! and the rules that tie them together.
//!
//! - `direct` defaults to on (O_DIRECT). `aio` defaults to `native` when `direct=on` and to
//!   `off` when `direct=off`, as in StratoVirt; `aio=native` with `direct=off` is refused
//!   because Linux AIO completes synchronously on buffered files. `aio=threads` (a pool of
//!   worker threads) and `aio=io_uring` take either `direct` value.
//! - `file.locking=on|off|auto` (QEMU's key, default `auto`) says whether the image is locked.
//! - Drive ids, device ids and iothread ids are each unique.
//! - A drive that no `-device` uses gets its own virtio-blk device (the short form), with the
//!   drive's id as the device id; such a drive may omit `id` and is named `driveN`.
//! - Devices keep command-line order (a short-form device sits where its `-drive` was), which
//!   is the order they fill the virtio-blk slots.
//! - `num-queues=N` (StratoVirt's and QEMU's key, 1 to [`MAX_QUEUES`], default 1) gives a
//!   device N request queues. They run on the device's `iothread=` (or the main loop), or are
//!   spread over several iothreads by `iothread-vq-mapping=T0:T1:...` (QEMU's property name
//!   with its meaning when no queue list is given: queue q runs on the (q mod n)-th iothread
//!   listed; `:` separates them as StratoVirt's `fds=A:B` lists do). The mapping excludes
//!   `iothread=`, names each iothread once, and no more of them than there are queues.

use std::collections::HashSet;
use std::path::PathBuf;

use util::aio::{AioEngine, DetectZeroes, Discard, ErrorAction, ThrottleConfig};
use util::event_loop::PollParams;
use util::file::Locking;

use super::error::{ConfigError, Result};
use super::kv::{parse_u64, KvList};

/// Longest virtio-blk serial number (`VIRTIO_BLK_ID_BYTES`).
pub const MAX_SERIAL_LEN: usize = 20;
/// Driver name of the block device on `-device`.
pub const BLK_DRIVER: &str = "virtio-blk-device";
/// The most request queues a block device may have (`num-queues`), as StratoVirt allows.
pub const MAX_QUEUES: u16 = 32;

/// A block backend: a host file opened with one I/O engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveConfig {
    /// The drive id (`id=`, or `driveN` when omitted in the short form).
    pub id: String,
    /// The host file (`file=`).
    pub path: PathBuf,
    /// Open read-only (`readonly=on`).
    pub readonly: bool,
    /// Open with O_DIRECT (`direct=`, default on).
    pub direct: bool,
    /// The I/O engine (`aio=`).
    pub aio: AioEngine,
    /// Serial number reported to the guest, unless the device sets its own.
    pub serial: Option<String>,
    /// The I/O limits (`throttling.*`, QEMU's names; 0 = no limit).
    pub throttle: ThrottleConfig,
    /// Whether the guest may discard (`discard=ignore|unmap`, default `ignore`).
    pub discard: Discard,
    /// Whether zero writes become write-zeroes (`detect-zeroes=off|on|unmap`, default `off`).
    pub detect_zeroes: DetectZeroes,
    /// What a failed write does (`werror=`, default `enospc`, as in QEMU).
    pub werror: ErrorAction,
    /// What a failed read does (`rerror=`, default `report`, as in QEMU).
    pub rerror: ErrorAction,
    /// Whether the image is locked (`file.locking=`, default `auto`).
    pub locking: Locking,
}

impl DriveConfig {
    /// A drive on `path` with the defaults: read-write, O_DIRECT, `aio=native`, no serial,
    /// no limit, `file.locking=auto`.
    pub fn new(id: &str, path: PathBuf) -> DriveConfig {
        DriveConfig {
            id: id.to_string(),
            path,
            readonly: false,
            direct: true,
            aio: default_aio(true),
            serial: None,
            throttle: ThrottleConfig::default(),
            discard: Discard::Ignore,
            detect_zeroes: DetectZeroes::Off,
            werror: ErrorAction::Enospc,
            rerror: ErrorAction::Report,
            locking: Locking::Auto,
        }
    }

    /// Parses the value of one `-drive` on its own, as a tool that opens drives the way the
    /// VMM does needs (the benchmark's `--drive-options`).
    pub fn parse(text: &str) -> Result<DriveConfig> {
        parse_drive(text).map(|arg| arg.config)
    }

    /// Checks the rules every drive obeys, however it was created (command line or QMP
    /// `blockdev-add`).
    pub fn validate(&self) -> Result<()> {
        check_id("-drive", "id", &self.id)?;
        if self.path.as_os_str().is_empty() {
            return Err(invalid("-drive", "file", "", "a path"));
        }
        if self.aio == AioEngine::Native && !self.direct {
            return Err(ConfigError::AioNativeNeedsDirect(self.id.clone()));
        }
        if let Some(serial) = &self.serial {
            check_serial("-drive", serial)?;
        }
        if self.rerror == ErrorAction::Enospc {
            // As in QEMU: a read cannot run out of space.
            return Err(invalid(
                "-drive",
                "rerror",
                "enospc",
                "report, ignore or stop",
            ));
        }
        self.throttle
            .validate()
            .map_err(|reason| ConfigError::Throttling {
                drive: self.id.clone(),
                reason,
            })
    }
}

/// The engine used when `aio=` is not given.
pub fn default_aio(direct: bool) -> AioEngine {
    if direct {
        AioEngine::Native
    } else {
        AioEngine::Off
    }
}

/// A virtio-blk device (on virtio-mmio) using a drive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlkDeviceConfig {
    /// The device id (`id=`).
    pub id: String,
    /// The drive it uses (`drive=`).
    pub drive: String,
    /// Serial number (`serial=`), overriding the drive's.
    pub serial: Option<String>,
    /// The iothread that runs its queues (`iothread=`).
    pub iothread: Option<String>,
    /// Request queues (`num-queues=`, 1 to [`MAX_QUEUES`]).
    pub num_queues: u16,
    /// The iothreads its queues are spread over, round robin (`iothread-vq-mapping=T0:T1`);
    /// empty: every queue runs on `iothread` (or the main loop).
    pub iothread_vq_mapping: Vec<String>,
}

impl BlkDeviceConfig {
    /// Device `id` on drive `drive`, one queue, no serial, on the main loop.
    pub fn new(id: &str, drive: &str) -> BlkDeviceConfig {
        BlkDeviceConfig {
            id: id.to_string(),
            drive: drive.to_string(),
            serial: None,
            iothread: None,
            num_queues: 1,
            iothread_vq_mapping: Vec::new(),
        }
    }

    /// The iothread of each queue, in queue order (`None`: the main loop).
    pub fn queue_iothreads(&self) -> Vec<Option<String>> {
        (0..usize::from(self.num_queues.max(1)))
            .map(|q| match self.iothread_vq_mapping.len() {
                0 => self.iothread.clone(),
                n => Some(self.iothread_vq_mapping[q % n].clone()),
            })
            .collect()
    }
}

/// An iothread (`-object iothread,id=T[,poll-max-ns=N,poll-grow=G,poll-shrink=S]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IothreadConfig {
    /// The iothread id (`id=`).
    pub id: String,
    /// How its loop polls before it sleeps (QEMU's keys and defaults: `poll-max-ns` 32768,
    /// `poll-grow` 0 = double, `poll-shrink` 0 = reset; `poll-max-ns=0` turns polling off).
    pub poll: PollParams,
}

impl From<&str> for IothreadConfig {
    /// An iothread with the default polling.
    fn from(id: &str) -> IothreadConfig {
        IothreadConfig {
            id: id.to_string(),
            poll: PollParams::IOTHREAD_DEFAULT,
        }
    }
}

/// The largest value of the iothread's polling keys (QEMU's: a non-negative `int64`).
const MAX_POLL_VALUE: u64 = i64::MAX as u64;

/// A `-drive` as written, before ids are assigned.
#[derive(Debug)]
pub(crate) struct DriveArg {
    /// The id, if given.
    pub id: Option<String>,
    /// Everything else (its `id` is filled in when resolved).
    pub config: DriveConfig,
}

fn invalid(option: &str, key: &str, value: &str, expected: &str) -> ConfigError {
    ConfigError::InvalidValue {
        option: option.to_string(),
        key: key.to_string(),
        value: value.to_string(),
        expected: expected.to_string(),
    }
}

/// Ids start with a letter and continue with letters, digits, `-`, `_` and `.` (as QEMU's).
pub(crate) fn check_id(option: &str, key: &str, id: &str) -> Result<()> {
    let mut chars = id.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        Ok(())
    } else {
        Err(invalid(
            option,
            key,
            id,
            "a letter followed by letters, digits, '-', '_' or '.'",
        ))
    }
}

fn check_serial(option: &str, serial: &str) -> Result<()> {
    if serial.len() <= MAX_SERIAL_LEN && serial.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(invalid(
            option,
            "serial",
            serial,
            "at most 20 printable ASCII characters",
        ))
    }
}

/// Parses the value of one `-drive`.
pub(crate) fn parse_drive(text: &str) -> Result<DriveArg> {
    let mut kv = KvList::parse("-drive", text)?;
    let id = kv.take("id");
    let path = PathBuf::from(kv.require("file")?);
    let readonly = kv.take_bool("readonly")?.unwrap_or(false);
    let direct = kv.take_bool("direct")?.unwrap_or(true);
    let aio = match kv.take("aio") {
        None => default_aio(direct),
        Some(value) => value
            .parse::<AioEngine>()
            .map_err(|_| kv.invalid("aio", &value, "off, threads, native or io_uring"))?,
    };
    let serial = kv.take("serial");
    let mut error_action = |key: &str, default: ErrorAction| match kv.take(key) {
        None => Ok(default),
        Some(value) => value
            .parse::<ErrorAction>()
            .map_err(|_| kv.invalid(key, &value, "report, ignore, stop or enospc")),
    };
    let werror = error_action("werror", ErrorAction::Enospc)?;
    let rerror = error_action("rerror", ErrorAction::Report)?;
    let throttle = parse_throttling(&mut kv)?;
    let discard = match kv.take("discard") {
        None => Discard::Ignore,
        Some(value) => value
            .parse::<Discard>()
            .map_err(|_| kv.invalid("discard", &value, "ignore or unmap"))?,
    };
    let detect_zeroes = match kv.take("detect-zeroes") {
        None => DetectZeroes::Off,
        Some(value) => value
            .parse::<DetectZeroes>()
            .map_err(|_| kv.invalid("detect-zeroes", &value, "off, on or unmap"))?,
    };
    let locking = match kv.take("file.locking") {
        None => Locking::Auto,
        Some(value) => value
            .parse::<Locking>()
            .map_err(|_| kv.invalid("file.locking", &value, "on, off or auto"))?,
    };
    if let Some(value) = kv.take("if") {
        if value != "none" {
            return Err(kv.invalid("if", &value, "none"));
        }
    }
    if let Some(value) = kv.take("format") {
        if value != "raw" {
            return Err(kv.invalid("format", &value, "raw"));
        }
    }
    kv.finish()?;
    // A drive without id is validated under a stand-in id; `resolve` assigns the real one.
    let config = DriveConfig {
        id: id.clone().unwrap_or_else(|| "drive0".to_string()),
        path,
        readonly,
        direct,
        aio,
        serial,
        throttle,
        discard,
        detect_zeroes,
        werror,
        rerror,
        locking,
    };
    config.validate()?;
    Ok(DriveArg { id, config })
}

/// The `throttling.*` keys of a `-drive` (QEMU's names): for each of `iops-total`,
/// `iops-read`, `iops-write`, `bps-total`, `bps-read`, `bps-write`, the average, its `-max`
/// burst and `-max-length`; and `iops-size`.
fn parse_throttling(kv: &mut KvList) -> Result<ThrottleConfig> {
    let mut throttle = ThrottleConfig::default();
    let number = |kv: &mut KvList, key: &str| -> Result<Option<u64>> {
        match kv.take(key) {
            None => Ok(None),
            Some(value) => parse_u64(&value)
                .map(Some)
                .ok_or_else(|| kv.invalid(key, &value, "a number")),
        }
    };
    for (name, _) in ThrottleConfig::default().limits() {
        let mut limit = throttle.limit_mut(name).map(|l| *l).unwrap_or_default();
        if let Some(avg) = number(kv, &format!("throttling.{name}"))? {
            limit.avg = avg;
        }
        if let Some(max) = number(kv, &format!("throttling.{name}-max"))? {
            limit.max = max;
        }
        if let Some(length) = number(kv, &format!("throttling.{name}-max-length"))? {
            limit.max_length = length;
        }
        if let Some(slot) = throttle.limit_mut(name) {
            *slot = limit;
        }
    }
    if let Some(size) = number(kv, "throttling.iops-size")? {
        throttle.iops_size = size;
    }
    Ok(throttle)
}

/// Parses the value of one `-device`.
pub(crate) fn parse_device(text: &str) -> Result<BlkDeviceConfig> {
    let mut kv = KvList::parse("-device", text)?;
    let driver = kv
        .take_implied("driver")?
        .ok_or_else(|| kv.missing("driver"))?;
    if driver != BLK_DRIVER {
        return Err(kv.invalid("driver", &driver, BLK_DRIVER));
    }
    let id = kv.require("id")?;
    check_id(kv.option(), "id", &id)?;
    let drive = kv.require("drive")?;
    let serial = kv.take("serial");
    if let Some(serial) = &serial {
        check_serial("-device", serial)?;
    }
    let iothread = kv.take("iothread");
    let num_queues = match kv.take("num-queues") {
        None => 1,
        Some(value) => parse_num_queues(&value)
            .ok_or_else(|| kv.invalid("num-queues", &value, &format!("1 to {MAX_QUEUES}")))?,
    };
    let iothread_vq_mapping = match kv.take("iothread-vq-mapping") {
        None => Vec::new(),
        Some(value) => {
            let expected = format!(
                "at most {num_queues} different iothread ids (num-queues) separated by ':'"
            );
            let ids: Vec<String> = value.split(':').map(str::to_string).collect();
            let distinct: HashSet<&String> = ids.iter().collect();
            if ids.len() > usize::from(num_queues) || distinct.len() != ids.len() {
                return Err(kv.invalid("iothread-vq-mapping", &value, &expected));
            }
            for id in &ids {
                check_id(kv.option(), "iothread-vq-mapping", id)?;
            }
            if iothread.is_some() {
                return Err(ConfigError::ConflictingKeys {
                    option: kv.option().to_string(),
                    first: "iothread".into(),
                    second: "iothread-vq-mapping".into(),
                    why: "the mapping names the iothread of every queue",
                });
            }
            ids
        }
    };
    kv.finish()?;
    Ok(BlkDeviceConfig {
        id,
        drive,
        serial,
        iothread,
        num_queues,
        iothread_vq_mapping,
    })
}

/// A queue count from 1 to [`MAX_QUEUES`].
pub fn parse_num_queues(value: &str) -> Option<u16> {
    value
        .parse::<u16>()
        .ok()
        .filter(|n| (1..=MAX_QUEUES).contains(n))
}

/// Parses the value of one `-object iothread,...`.
pub(crate) fn parse_object(text: &str) -> Result<IothreadConfig> {
    let mut kv = KvList::parse("-object", text)?;
    let kind = kv
        .take_implied("qom-type")?
        .ok_or_else(|| kv.missing("qom-type"))?;
    if kind != "iothread" {
        return Err(kv.invalid("qom-type", &kind, "iothread"));
    }
    let id = kv.require("id")?;
    check_id(kv.option(), "id", &id)?;
    let mut poll = PollParams::IOTHREAD_DEFAULT;
    for (key, slot) in [
        ("poll-max-ns", &mut poll.max_ns),
        ("poll-grow", &mut poll.grow),
        ("poll-shrink", &mut poll.shrink),
    ] {
        if let Some(value) = kv.take(key) {
            *slot = parse_u64(&value)
                .filter(|&n| n <= MAX_POLL_VALUE)
                .ok_or_else(|| kv.invalid(key, &value, "a whole number from 0 to 2^63-1"))?;
        }
    }
    kv.finish()?;
    Ok(IothreadConfig { id, poll })
}

/// Drives, devices and iothreads in command-line order (`usize` = argument position).
#[derive(Debug, Default)]
pub(crate) struct BlockArgs {
    pub drives: Vec<(usize, DriveArg)>,
    pub devices: Vec<(usize, BlkDeviceConfig)>,
    pub iothreads: Vec<IothreadConfig>,
}

/// The resolved block configuration.
pub(crate) struct Block {
    pub drives: Vec<DriveConfig>,
    pub devices: Vec<BlkDeviceConfig>,
    pub iothreads: Vec<IothreadConfig>,
}

/// Assigns automatic drive ids, checks every cross-reference, and creates the short-form
/// devices.
pub(crate) fn resolve(args: BlockArgs) -> Result<Block> {
    let mut iothread_ids = HashSet::new();
    for iothread in &args.iothreads {
        if !iothread_ids.insert(iothread.id.as_str()) {
            return Err(ConfigError::DuplicateIothread(iothread.id.clone()));
        }
    }

    let mut drive_ids: HashSet<String> = HashSet::new();
    for (_, drive) in &args.drives {
        if let Some(id) = &drive.id {
            if !drive_ids.insert(id.clone()) {
                return Err(ConfigError::DuplicateDriveId(id.clone()));
            }
        }
    }
    let mut drives = Vec::with_capacity(args.drives.len());
    let mut next_auto = 0usize;
    for (position, drive) in args.drives {
        let id = match drive.id {
            Some(id) => id,
            None => loop {
                let candidate = format!("drive{next_auto}");
                next_auto += 1;
                if drive_ids.insert(candidate.clone()) {
                    break candidate;
                }
            },
        };
        drives.push((position, DriveConfig { id, ..drive.config }));
    }

    let mut device_ids = HashSet::new();
    let mut used_drives = HashSet::new();
    for (_, device) in &args.devices {
        if !device_ids.insert(device.id.clone()) {
            return Err(ConfigError::DuplicateDeviceId(device.id.clone()));
        }
        if !drive_ids.contains(&device.drive) {
            return Err(ConfigError::UnknownDrive {
                device: device.id.clone(),
                drive: device.drive.clone(),
            });
        }
        if !used_drives.insert(device.drive.clone()) {
            return Err(ConfigError::DriveUsedTwice(device.drive.clone()));
        }
        for iothread in device.iothread.iter().chain(&device.iothread_vq_mapping) {
            if !iothread_ids.contains(iothread.as_str()) {
                return Err(ConfigError::UnknownIothread {
                    device: device.id.clone(),
                    iothread: iothread.clone(),
                });
            }
        }
    }

    let mut devices = args.devices;
    for (position, drive) in &drives {
        if used_drives.contains(&drive.id) {
            continue;
        }
        if !device_ids.insert(drive.id.clone()) {
            return Err(ConfigError::DuplicateDeviceId(drive.id.clone()));
        }
        devices.push((*position, BlkDeviceConfig::new(&drive.id, &drive.id)));
    }
    devices.sort_by_key(|(position, _)| *position);
    Ok(Block {
        drives: drives.into_iter().map(|(_, d)| d).collect(),
        devices: devices.into_iter().map(|(_, d)| d).collect(),
        iothreads: args.iothreads,
    })
}
