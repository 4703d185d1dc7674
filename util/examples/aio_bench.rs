//! Host-side benchmark of the block engines: 4 KiB random reads and random writes with
//! O_DIRECT at queue depths 1, 8, 32 and 128, for `aio=off`, `aio=threads`, `aio=native`
//! and `aio=io_uring`.
//!
//! ```text
//! cargo run --release -p util --example aio_bench -- [--file PATH]... [--size MIB]
//!     [--seconds N] [--qd 1,8,32,128] [--engines off,threads,native,io_uring] [--json OUT]
//! ```
//!
//! Without `--file` it uses a 1 GiB file under /var/tmp (disk) and one under /dev/shm (tmpfs),
//! creates them (fully written, not sparse) and removes them at the end. Each cell keeps QD
//! requests in flight for N seconds, driving the engine exactly as the virtio-blk device does:
//! wait for the engine's eventfd, reap, resubmit every finished slot in one batch. Latency is
//! measured per request from the `submit` call that carried it to the `reap` that returned it;
//! CPU time per I/O is the process's user + system time (io_uring workers and the
//! `aio=threads` pool included) over the cell divided by the I/Os completed.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use util::aio::{open_engine, probe, AioCompletion, AioEngine, AioOpcode, AioRequest, Iovec};

const BLOCK: usize = 4096;

struct Options {
    files: Vec<PathBuf>,
    size: u64,
    seconds: f64,
    qds: Vec<u32>,
    engines: Vec<AioEngine>,
    json: Option<PathBuf>,
}

fn usage() -> ! {
    eprintln!(
        "usage: aio_bench [--file PATH]... [--size MIB] [--seconds N] [--qd 1,8,32,128] \
         [--engines off,threads,native,io_uring] [--json OUT]"
    );
    std::process::exit(2)
}

fn parse_args() -> Options {
    let mut opts = Options {
        files: Vec::new(),
        size: 1024 << 20,
        seconds: 2.0,
        qds: vec![1, 8, 32, 128],
        engines: AioEngine::ALL.to_vec(),
        json: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        match arg.as_str() {
            "--file" => opts.files.push(PathBuf::from(value())),
            "--size" => opts.size = value().parse::<u64>().unwrap_or_else(|_| usage()) << 20,
            "--seconds" => opts.seconds = value().parse().unwrap_or_else(|_| usage()),
            "--json" => opts.json = Some(PathBuf::from(value())),
            "--qd" => {
                opts.qds = value()
                    .split(',')
                    .map(|q| q.parse().unwrap_or_else(|_| usage()))
                    .collect()
            }
            "--engines" => {
                opts.engines = value()
                    .split(',')
                    .map(|e| e.parse().unwrap_or_else(|_| usage()))
                    .collect()
            }
            _ => usage(),
        }
    }
    if opts.size < (BLOCK as u64) * 1024 || opts.seconds <= 0.0 || opts.qds.contains(&0) {
        usage();
    }
    opts
}

/// Deterministic xorshift64* generator for offsets.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// `qd` 4 KiB buffers in one page-aligned anonymous mapping.
struct Buffers {
    base: *mut u8,
    len: usize,
}

impl Buffers {
    fn new(qd: usize) -> Buffers {
        let len = qd * BLOCK;
        // SAFETY: a fresh private anonymous mapping overlapping nothing; checked below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED, "mmap of the I/O buffers failed");
        // SAFETY: the mapping is `len` bytes long and writable.
        unsafe { std::ptr::write_bytes(base.cast::<u8>(), 0xa5, len) };
        Buffers {
            base: base.cast(),
            len,
        }
    }

    fn iovec(&self, slot: usize) -> Iovec {
        Iovec {
            base: self.base as u64 + (slot * BLOCK) as u64,
            len: BLOCK as u64,
        }
    }
}

impl Drop for Buffers {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`, after every engine using it is gone.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

struct Cell {
    file: String,
    engine: AioEngine,
    workload: &'static str,
    qd: u32,
    ios: u64,
    errors: u64,
    seconds: f64,
    p50_us: f64,
    p99_us: f64,
    cpu_us_per_io: f64,
}

impl Cell {
    fn iops(&self) -> f64 {
        self.ios as f64 / self.seconds
    }
}

/// CPU time (user + system) used so far by the whole process, io_uring workers included.
fn cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes one rusage into the buffer, which is zero-initialised anyway.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn percentile(sorted_ns: &[u64], p: f64) -> f64 {
    if sorted_ns.is_empty() {
        return 0.0;
    }
    let i = ((sorted_ns.len() - 1) as f64 * p).round() as usize;
    sorted_ns[i] as f64 / 1000.0
}

/// Runs one engine × workload × QD cell on `file` for `seconds`.
fn run_cell(
    file: &File,
    blocks: u64,
    engine: AioEngine,
    opcode: AioOpcode,
    qd: u32,
    seconds: f64,
) -> Result<(u64, u64, f64, f64, Vec<u64>), util::aio::AioError> {
    let mut ctx = open_engine(engine, file.as_raw_fd(), qd)?;
    let bufs = Buffers::new(qd as usize);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ u64::from(qd));
    let mut started = vec![Instant::now(); qd as usize];
    let mut latencies = Vec::with_capacity(1 << 20);
    let mut batch: Vec<AioRequest> = Vec::with_capacity(qd as usize);
    let mut done: Vec<AioCompletion> = Vec::with_capacity(qd as usize);
    let request = |slot: usize, rng: &mut Rng| AioRequest {
        opcode,
        offset: (rng.next() % blocks) * BLOCK as u64,
        iovecs: vec![bufs.iovec(slot)],
        len: 0,
        tag: slot as u64,
        keep_alive: None,
    };
    let cpu_begin = cpu_time();
    let begin = Instant::now();
    let deadline = begin + Duration::from_secs_f64(seconds);
    for slot in 0..qd as usize {
        batch.push(request(slot, &mut rng));
    }
    let now = Instant::now();
    started.fill(now);
    // SAFETY: `bufs` outlives `ctx` (dropped first, at the end of this function, which drains).
    unsafe { ctx.submit(&mut batch) }?;
    let (mut ios, mut errors) = (0u64, 0u64);
    let mut pfd = libc::pollfd {
        fd: ctx.eventfd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut pfd, 1, 1000) };
        if ready < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            panic!("poll on the engine eventfd failed");
        }
        done.clear();
        ctx.reap(&mut done)?;
        let now = Instant::now();
        let stop = now >= deadline;
        for c in &done {
            let slot = c.tag as usize;
            latencies.push(now.duration_since(started[slot]).as_nanos() as u64);
            if c.result == BLOCK as i64 {
                ios += 1;
            } else {
                errors += 1;
            }
            if !stop {
                batch.push(request(slot, &mut rng));
            }
        }
        if stop {
            break;
        }
        let now = Instant::now();
        for req in &batch {
            started[req.tag as usize] = now;
        }
        // SAFETY: as above.
        unsafe { ctx.submit(&mut batch) }?;
    }
    let elapsed = begin.elapsed().as_secs_f64();
    let cpu = (cpu_time() - cpu_begin).as_secs_f64();
    done.clear();
    ctx.drain(&mut done)?;
    drop(ctx);
    Ok((ios, errors, elapsed, cpu, latencies))
}

/// Creates (or reuses) a fully written file of `size` bytes; returns whether it was created.
fn prepare_file(path: &PathBuf, size: u64) -> std::io::Result<bool> {
    if std::fs::metadata(path)
        .map(|m| m.len() == size)
        .unwrap_or(false)
    {
        return Ok(false);
    }
    let mut f = File::create(path)?;
    let chunk = vec![0x3cu8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    f.sync_all()?;
    Ok(true)
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn print_table(cells: &[Cell], engines: &[AioEngine]) {
    let mut header = format!("| {:<24} | {:<9} | {:>3} |", "file", "workload", "QD");
    let mut rule = String::from("|---|---|---:|");
    for e in engines {
        let _ = write!(header, " {e} IOPS | p50 µs | p99 µs | CPU µs/IO |");
        rule.push_str("---:|---:|---:|---:|");
    }
    let ratio = engines.contains(&AioEngine::Native) && engines.contains(&AioEngine::IoUring);
    if ratio {
        header.push_str(" io_uring/native |");
        rule.push_str("---:|");
    }
    println!("{header}\n{rule}");
    let mut i = 0;
    while i < cells.len() {
        let row: Vec<&Cell> = cells[i..].iter().take(engines.len()).collect();
        i += engines.len();
        let first = row[0];
        let mut line = format!(
            "| {:<24} | {:<9} | {:>3} |",
            first.file, first.workload, first.qd
        );
        for c in &row {
            let _ = write!(
                line,
                " {:.0} | {:.1} | {:.1} | {:.1} |",
                c.iops(),
                c.p50_us,
                c.p99_us,
                c.cpu_us_per_io
            );
        }
        if ratio {
            let find = |e| row.iter().find(|c| c.engine == e).map(|c| c.iops());
            if let (Some(u), Some(n)) = (find(AioEngine::IoUring), find(AioEngine::Native)) {
                let _ = write!(line, " {:.2} |", u / n);
            }
        }
        println!("{line}");
    }
}

fn main() {
    let opts = parse_args();
    let mut created = Vec::new();
    let mut files = opts.files.clone();
    if files.is_empty() {
        files.push(PathBuf::from("/var/tmp/aio-bench.img"));
        if std::path::Path::new("/dev/shm").is_dir() {
            files.push(PathBuf::from("/dev/shm/aio-bench.img"));
        }
    }
    for e in &opts.engines {
        if let Err(err) = probe(*e) {
            eprintln!("aio_bench: {err}");
            std::process::exit(1);
        }
    }
    let mut cells = Vec::new();
    for path in &files {
        match prepare_file(path, opts.size) {
            Ok(true) => created.push(path.clone()),
            Ok(false) => {}
            Err(e) => {
                eprintln!("aio_bench: cannot prepare {}: {e}", path.display());
                std::process::exit(1);
            }
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .unwrap_or_else(|e| {
                eprintln!(
                    "aio_bench: cannot open {} with O_DIRECT: {e}",
                    path.display()
                );
                std::process::exit(1);
            });
        let blocks = opts.size / BLOCK as u64;
        for (workload, opcode) in [
            ("randread", AioOpcode::Read),
            ("randwrite", AioOpcode::Write),
        ] {
            for &qd in &opts.qds {
                for &engine in &opts.engines {
                    let (ios, errors, seconds, cpu, mut lat) =
                        run_cell(&file, blocks, engine, opcode, qd, opts.seconds).unwrap_or_else(
                            |e| {
                                eprintln!("aio_bench: {e}");
                                std::process::exit(1);
                            },
                        );
                    lat.sort_unstable();
                    let cell = Cell {
                        file: path.display().to_string(),
                        engine,
                        workload,
                        qd,
                        ios,
                        errors,
                        seconds,
                        p50_us: percentile(&lat, 0.50),
                        p99_us: percentile(&lat, 0.99),
                        cpu_us_per_io: cpu * 1e6 / (ios + errors).max(1) as f64,
                    };
                    eprintln!(
                        "{} {workload} qd={qd} aio={engine}: {:.0} IOPS, p50 {:.1} µs, p99 {:.1} µs, CPU {:.1} µs/IO{}",
                        cell.file,
                        cell.iops(),
                        cell.p50_us,
                        cell.p99_us,
                        cell.cpu_us_per_io,
                        if errors > 0 { format!(", {errors} ERRORS") } else { String::new() }
                    );
                    cells.push(cell);
                }
            }
        }
    }
    for path in &created {
        let _ = std::fs::remove_file(path);
    }
    print_table(&cells, &opts.engines);
    if let Some(out) = &opts.json {
        let mut json = format!(
            "{{\n  \"kernel\": {},\n  \"cpus\": {},\n  \"block_size\": {BLOCK},\n  \"seconds_per_cell\": {},\n  \"results\": [\n",
            json_str(&kernel_release()),
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            opts.seconds
        );
        for (i, c) in cells.iter().enumerate() {
            let _ = writeln!(
                json,
                "    {{\"file\": {}, \"engine\": {}, \"workload\": {}, \"qd\": {}, \"ios\": {}, \"errors\": {}, \"seconds\": {:.3}, \"iops\": {:.0}, \"p50_us\": {:.1}, \"p99_us\": {:.1}, \"cpu_us_per_io\": {:.2}}}{}",
                json_str(&c.file),
                json_str(c.engine.as_str()),
                json_str(c.workload),
                c.qd,
                c.ios,
                c.errors,
                c.seconds,
                c.iops(),
                c.p50_us,
                c.p99_us,
                c.cpu_us_per_io,
                if i + 1 < cells.len() { "," } else { "" }
            );
        }
        json.push_str("  ]\n}\n");
        if let Err(e) = std::fs::write(out, json) {
            eprintln!("aio_bench: cannot write {}: {e}", out.display());
            std::process::exit(1);
        }
    }
    if cells.iter().any(|c| c.errors > 0) {
        std::process::exit(1);
    }
}
