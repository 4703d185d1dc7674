//! The command line of `stratovirt-bench blk`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use util::aio::AioEngine;
use util::event_loop::PollParams;

use crate::backing::Backing;
use crate::drive::DriveOptions;
use crate::workload::{Pattern, Window};

/// The usage text.
pub const USAGE: &str = "\
usage: stratovirt-bench blk [OPTIONS]

Runs the real virtio-blk device (virtio-mmio transport, its own iothread) against an
in-process guest driver that keeps N 4 KiB requests in flight, for every engine, backing,
pattern and queue depth asked for; fio on the same files as the host's ceiling; and QEMU's
block layer (qemu-img bench) on them as the peer.

  --engines LIST    off,threads,native,io_uring  (default: all)
  --backings LIST   shm,disk,buffered            (default: all)
  --patterns LIST   randread,randwrite,randrw    (default: all)
  --depths LIST     queue depths                 (default: 1,8,32,128)
  --seconds N       measured seconds per cell    (default: 2.5)
  --warmup N        warm-up seconds per cell     (default: 0.5)
  --size SIZE       file size, e.g. 1G or 512M   (default: 1G)
  --disk-dir DIR    where the disk files go      (default: /var/tmp)
  --shm-dir DIR     where the tmpfs file goes    (default: /dev/shm)
  --repeat N        run each row N times, interleaved; keep the median (default: 1)
  --queues LIST      request queues of the device (num-queues), each on its own
                    iothread with its own engine; the driver spreads requests
                    round robin; every count is run, interleaved (default: 1)
  --no-event-idx    do not negotiate VIRTIO_F_RING_EVENT_IDX
  --poll-max-ns N   the device thread polls its queue and engine for up to N ns
                    before it sleeps, as an iothread with poll-max-ns=N (0 = off;
                    default 32768, an iothread's default)
  --halt-poll-ns N  the driver (the guest) looks for completions for up to N ns before
                    it sleeps on the interrupt, as KVM's halt polling keeps a halted
                    vCPU running (default 0: it sleeps at once)
  --no-seccomp      run the device threads (and aio=threads workers) without the VMM's
                    seccomp filters
  --mem-prealloc    also run io_uring with guest RAM preallocated, as -mem-prealloc does
                    (registered as fixed buffers), interleaved with the other engines
  --drive-options KEY=VALUE,...
                    -drive keys for every engine's device: throttling.*, discard,
                    detect-zeroes, direct (wins over the backing's), werror, ...
  --no-fio          skip the fio ceiling
  --no-qemu         skip QEMU's block layer (qemu-img bench, reads and writes only)
  --label TEXT      a note stored with the results (e.g. what changed)
  --json PATH       write every cell as JSON
  --plot PATH       draw IOPS by queue depth (PNG, needs gnuplot)
  --doc PATH        replace the latest-results section of a Markdown file
  --quick           QD 32, shm and disk, randread and randwrite, 0.5 + 1.5 s per cell
";

/// Everything `blk` was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// Engines to run.
    pub engines: Vec<AioEngine>,
    /// Files to run on.
    pub backings: Vec<Backing>,
    /// Access patterns.
    pub patterns: Vec<Pattern>,
    /// Queue depths.
    pub depths: Vec<u16>,
    /// Warm-up and measured time per cell.
    pub window: Window,
    /// Bytes per file.
    pub size: u64,
    /// Directory of the disk and buffered files.
    pub disk_dir: PathBuf,
    /// Directory of the tmpfs file.
    pub shm_dir: PathBuf,
    /// Runs of each row; the median-IOPS run of each engine is kept.
    pub repeat: u32,
    /// Negotiate `EVENT_IDX`.
    pub event_idx: bool,
    /// How the device thread polls (`--poll-max-ns`; grow and shrink as an iothread's).
    pub poll: PollParams,
    /// The driver's halt polling, ns (`--halt-poll-ns`).
    pub halt_poll_ns: u64,
    /// The device's queue counts to run (each queue on its own iothread).
    pub queues: Vec<u16>,
    /// Confine the device threads to the iothread seccomp filter (and `aio=threads` workers to
    /// theirs).
    pub seccomp: bool,
    /// Add the `io_uring+prealloc` variant (preallocated guest RAM, fixed buffers).
    pub prealloc: bool,
    /// `-drive` keys every device is given.
    pub drive: DriveOptions,
    /// Run fio as the ceiling.
    pub fio: bool,
    /// Run `qemu-img bench` as the peer.
    pub qemu: bool,
    /// Free text stored with the results.
    pub label: String,
    /// JSON output.
    pub json: Option<PathBuf>,
    /// PNG plot output.
    pub plot: Option<PathBuf>,
    /// Markdown file whose latest-results section is replaced.
    pub doc: Option<PathBuf>,
    /// The `--quick` preset was asked for.
    pub quick: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            engines: AioEngine::ALL.to_vec(),
            backings: Backing::ALL.to_vec(),
            patterns: Pattern::ALL.to_vec(),
            depths: vec![1, 8, 32, 128],
            window: Window {
                warmup: Duration::from_millis(500),
                measure: Duration::from_millis(2500),
            },
            size: 1 << 30,
            disk_dir: PathBuf::from("/var/tmp"),
            shm_dir: PathBuf::from("/dev/shm"),
            repeat: 1,
            event_idx: true,
            poll: PollParams::IOTHREAD_DEFAULT,
            halt_poll_ns: 0,
            queues: vec![1],
            seccomp: true,
            prealloc: false,
            drive: DriveOptions::default(),
            fio: true,
            qemu: true,
            label: String::new(),
            json: None,
            plot: None,
            doc: None,
            quick: false,
        }
    }
}

fn list<T>(value: &str, what: &str, parse: impl Fn(&str) -> Option<T>) -> Result<Vec<T>> {
    let items: Vec<T> = value
        .split(',')
        .map(|s| parse(s.trim()).ok_or_else(|| anyhow!("unknown {what} {s:?}")))
        .collect::<Result<_>>()?;
    if items.is_empty() {
        bail!("empty list of {what}s");
    }
    Ok(items)
}

fn seconds(value: &str) -> Result<Duration> {
    let s: f64 = value
        .parse()
        .with_context(|| format!("bad seconds {value:?}"))?;
    if !(0.0..=3600.0).contains(&s) {
        bail!("seconds out of range: {value}");
    }
    Ok(Duration::from_secs_f64(s))
}

/// Parses `1G`, `512M`, `4096K` or a plain byte count.
pub fn parse_size(value: &str) -> Result<u64> {
    let (digits, shift) = match value.as_bytes().last() {
        Some(b'G' | b'g') => (&value[..value.len() - 1], 30),
        Some(b'M' | b'm') => (&value[..value.len() - 1], 20),
        Some(b'K' | b'k') => (&value[..value.len() - 1], 10),
        _ => (value, 0),
    };
    let n: u64 = digits
        .parse()
        .with_context(|| format!("bad size {value:?}"))?;
    n.checked_shl(shift)
        .filter(|&b| b >> shift == n)
        .ok_or_else(|| anyhow!("size too large: {value}"))
}

/// Parses the arguments after `blk`.
pub fn parse(args: &[String]) -> Result<Options> {
    let mut opts = Options::default();
    let mut it = args.iter();
    // Explicit lists win over --quick, whichever comes first.
    let mut explicit = (false, false, false, false, false);
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .map(String::as_str)
                .ok_or_else(|| anyhow!("{arg} needs a value"))
        };
        match arg.as_str() {
            "--engines" => opts.engines = list(value()?, "engine", |s| s.parse().ok())?,
            "--backings" => {
                opts.backings = list(value()?, "backing", Backing::parse)?;
                explicit.0 = true;
            }
            "--patterns" => {
                opts.patterns = list(value()?, "pattern", Pattern::parse)?;
                explicit.1 = true;
            }
            "--depths" => {
                opts.depths = list(value()?, "depth", |s| s.parse().ok().filter(|&d| d > 0))?;
                explicit.2 = true;
            }
            "--seconds" => {
                opts.window.measure = seconds(value()?)?;
                explicit.3 = true;
            }
            "--warmup" => {
                opts.window.warmup = seconds(value()?)?;
                explicit.4 = true;
            }
            "--size" => opts.size = parse_size(value()?)?,
            "--disk-dir" => opts.disk_dir = PathBuf::from(value()?),
            "--shm-dir" => opts.shm_dir = PathBuf::from(value()?),
            "--repeat" => {
                opts.repeat = value()?
                    .parse()
                    .ok()
                    .filter(|n| (1..=100).contains(n))
                    .ok_or_else(|| anyhow!("--repeat needs a count from 1 to 100"))?
            }
            "--queues" => {
                opts.queues = list(value()?, "queue count", |s| {
                    machine_manager::config::parse_num_queues(s)
                })?
            }
            "--no-event-idx" => opts.event_idx = false,
            "--halt-poll-ns" => {
                opts.halt_poll_ns = value()?
                    .parse()
                    .ok()
                    .filter(|&n: &u64| n <= 1_000_000_000)
                    .ok_or_else(|| anyhow!("--halt-poll-ns needs nanoseconds from 0 to 10^9"))?
            }
            "--poll-max-ns" => {
                opts.poll.max_ns = value()?
                    .parse()
                    .ok()
                    .filter(|&n: &u64| n <= i64::MAX as u64)
                    .ok_or_else(|| anyhow!("--poll-max-ns needs nanoseconds from 0 to 2^63-1"))?
            }
            "--no-seccomp" => opts.seccomp = false,
            "--mem-prealloc" => opts.prealloc = true,
            "--drive-options" => opts.drive = DriveOptions::parse(value()?)?,
            "--no-fio" => opts.fio = false,
            "--no-qemu" => opts.qemu = false,
            "--label" => opts.label = value()?.to_string(),
            "--json" => opts.json = Some(PathBuf::from(value()?)),
            "--plot" => opts.plot = Some(PathBuf::from(value()?)),
            "--doc" => opts.doc = Some(PathBuf::from(value()?)),
            "--quick" => opts.quick = true,
            "-h" | "--help" => bail!("{USAGE}"),
            other => bail!("unknown option {other:?}\n{USAGE}"),
        }
    }
    if opts.quick {
        if !explicit.0 {
            opts.backings = vec![Backing::Shm, Backing::Disk];
        }
        if !explicit.1 {
            opts.patterns = vec![Pattern::Read, Pattern::Write];
        }
        if !explicit.2 {
            opts.depths = vec![32];
        }
        if !explicit.3 {
            opts.window.measure = Duration::from_millis(1500);
        }
        if !explicit.4 {
            opts.window.warmup = Duration::from_millis(500);
        }
    }
    let max_depth = crate::rig::QUEUE_SIZE;
    if let Some(&d) = opts.depths.iter().find(|&&d| d > max_depth) {
        bail!("queue depth {d} is larger than the queue ({max_depth})");
    }
    if opts.window.measure.is_zero() {
        bail!("--seconds must be positive");
    }
    if opts.size < 1 << 20 || opts.size % crate::workload::BLOCK != 0 {
        bail!("--size must be a multiple of 4 KiB and at least 1 MiB");
    }
    Ok(opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn defaults_are_the_full_matrix() {
        let o = parse(&[]).unwrap();
        assert_eq!(o.engines, AioEngine::ALL.to_vec());
        assert_eq!(o.backings.len(), 3);
        assert_eq!(o.patterns.len(), 3);
        assert_eq!(o.depths, vec![1, 8, 32, 128]);
        assert_eq!(o.size, 1 << 30);
        assert_eq!(o.poll, PollParams::IOTHREAD_DEFAULT);
    }

    #[test]
    fn poll_max_ns_sets_the_device_threads_polling() {
        assert_eq!(
            parse(&args("--poll-max-ns 0")).unwrap().poll,
            PollParams::OFF
        );
        let o = parse(&args("--poll-max-ns 100000")).unwrap();
        assert_eq!(o.poll.max_ns, 100_000);
        assert_eq!((o.poll.grow, o.poll.shrink), (0, 0));
    }

    #[test]
    fn quick_keeps_explicit_choices() {
        let o = parse(&args("--depths 8,32 --quick")).unwrap();
        assert_eq!(o.depths, vec![8, 32]);
        assert_eq!(o.backings, vec![Backing::Shm, Backing::Disk]);
        assert_eq!(o.window.measure, Duration::from_millis(1500));
    }

    #[test]
    fn lists_and_sizes() {
        let o = parse(&args(
            "--engines native,io_uring --size 64M --patterns randrw",
        ))
        .unwrap();
        assert_eq!(o.engines, vec![AioEngine::Native, AioEngine::IoUring]);
        assert_eq!(o.size, 64 << 20);
        assert_eq!(o.patterns, vec![Pattern::Mixed]);
        assert_eq!(o.queues, vec![1]);
        assert_eq!(parse(&args("--queues 2,1")).unwrap().queues, vec![2, 1]);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("99999999999999G").is_err());
    }

    #[test]
    fn bad_input_is_an_error() {
        for bad in [
            "--engines aio",
            "--depths 0",
            "--depths 512",
            "--seconds x",
            "--seconds 0",
            "--size 1000",
            "--bogus",
            "--json",
            "--repeat 0",
            "--poll-max-ns -1",
            "--poll-max-ns 1e5",
            "--poll-max-ns",
            "--queues 0",
            "--queues 33",
            "--queues 1,x",
            "--drive-options aio=native",
        ] {
            assert!(parse(&args(bad)).is_err(), "{bad}");
        }
    }
}
