//! The peer: QEMU's block layer, measured by `qemu-img bench` on the same file, queue depth
//! and window as a cell, with each of its engines (`-i native`, `-i io_uring`, `-i threads`).
//!
//! `qemu-img bench` sends a fixed number of reads or writes (no mix, so `randrw` rows have no
//! QEMU cell) at offsets that advance by a fixed step, wrapping at the end of the file. The
//! step here is a prime number of 4 KiB blocks, coprime with the file's block count: every
//! block is visited once per pass, and neighbours in time are far apart on the file, so the
//! host cannot merge them (a step of one block would hand it sequential requests). A first
//! run of [`CALIBRATION`] requests is the warm-up and measures the rate; the measured run
//! then sends about a window's worth. IOPS are the requests over the run time `qemu-img`
//! prints; CPU per I/O is the child's user + system time over its requests (process start
//! included). `qemu-img` reports no latencies.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use crate::workload::{Pattern, Window, BLOCK};

/// The `qemu-img bench` engines, in table order.
pub const ENGINES: [&str; 3] = ["native", "io_uring", "threads"];

/// Requests of the calibration run.
const CALIBRATION: u64 = 20_000;

/// How many times one `qemu-img bench` run is tried when qemu-img dies of a signal.
const CRASH_ATTEMPTS: u32 = 3;

/// What one `qemu-img bench` run measured.
#[derive(Debug, Clone, Copy)]
pub struct QemuResult {
    /// Requests per second.
    pub iops: f64,
    /// The child's CPU time per request, µs.
    pub cpu_us_per_io: f64,
}

/// Whether `qemu-img` (with `bench`) can be run.
pub fn available() -> bool {
    Command::new("qemu-img")
        .args(["bench", "--help"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether `engine` can run on a file opened with or without `O_DIRECT` (QEMU's native AIO
/// needs `cache=none`).
pub fn runs(engine: &str, direct: bool) -> bool {
    direct || engine != "native"
}

/// The step between two requests: a prime number of blocks coprime with the file's.
fn step(size: u64) -> u64 {
    let blocks = size / BLOCK;
    let prime = [7919u64, 7907, 7901, 7883]
        .into_iter()
        .find(|p| !blocks.is_multiple_of(*p))
        .unwrap_or(1);
    prime * BLOCK
}

/// Runs `qemu-img bench` once: `count` requests; returns (seconds it reports, CPU seconds).
fn bench_once(
    path: &Path,
    size: u64,
    direct: bool,
    engine: &str,
    write: bool,
    qd: u16,
    count: u64,
) -> Result<(f64, f64)> {
    let mut cmd = Command::new("qemu-img");
    cmd.args(["bench", "-f", "raw"])
        .args(["-t", if direct { "none" } else { "writeback" }])
        .args(["-i", engine])
        .args(["-d", &qd.to_string()])
        .args(["-c", &count.to_string()])
        .args(["-s", &BLOCK.to_string()])
        .args(["-S", &step(size).to_string()]);
    if write {
        cmd.arg("-w");
    }
    cmd.arg(path);
    let mut attempt = 1;
    let (output, cpu) = loop {
        let before = children_cpu();
        let output = cmd.output().context("cannot run qemu-img")?;
        let cpu = children_cpu() - before;
        // qemu-img itself sometimes crashes (SIGSEGV seen with `-i io_uring -t writeback` at
        // depth 1); a crash says nothing about the block layer's speed, so it runs again.
        match output.status.signal() {
            Some(signal) if attempt < CRASH_ATTEMPTS => {
                eprintln!(
                    "stratovirt-bench: qemu-img bench -i {engine} died of signal {signal}; \
                     running it again"
                );
                attempt += 1;
            }
            _ => break (output, cpu),
        }
    };
    if !output.status.success() {
        bail!(
            "qemu-img bench -i {engine} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let seconds = parse(&String::from_utf8_lossy(&output.stdout))
        .with_context(|| format!("qemu-img bench -i {engine}"))?;
    Ok((seconds, cpu))
}

/// Runs QEMU's block layer with `engine` on `path` for one cell; `None` for a pattern
/// `qemu-img bench` cannot send (`randrw`).
pub fn run(
    path: &Path,
    size: u64,
    direct: bool,
    engine: &str,
    pattern: Pattern,
    qd: u16,
    window: Window,
) -> Result<Option<QemuResult>> {
    let write = match pattern {
        Pattern::Read => false,
        Pattern::Write => true,
        Pattern::Mixed => return Ok(None),
    };
    let (seconds, _) = bench_once(path, size, direct, engine, write, qd, CALIBRATION)?;
    let rate = CALIBRATION as f64 / seconds.max(1e-3);
    let count = (rate * window.measure.as_secs_f64()).max(f64::from(qd) * 100.0) as u64;
    let (seconds, cpu) = bench_once(path, size, direct, engine, write, qd, count)?;
    let seconds = seconds.max(1e-3);
    Ok(Some(QemuResult {
        iops: count as f64 / seconds,
        cpu_us_per_io: cpu * 1e6 / count as f64,
    }))
}

/// The run time in `Run completed in 1.234 seconds.`
fn parse(stdout: &str) -> Result<f64> {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("Run completed in "))
        .and_then(|rest| rest.strip_suffix(" seconds."))
        .and_then(|s| s.parse::<f64>().ok())
        .ok_or_else(|| anyhow!("no run time in qemu-img's output: {stdout:?}"))
}

/// User + system time of the finished children of this process, seconds.
fn children_cpu() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `usage` is a valid, writable `rusage`; RUSAGE_CHILDREN only fills it in.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, usage.as_mut_ptr()) };
    if rc != 0 {
        return 0.0;
    }
    // SAFETY: getrusage succeeded, so it initialised the struct (and zeroed is valid anyway).
    let usage = unsafe { usage.assume_init() };
    let secs = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64).as_secs_f64() + t.tv_usec as f64 / 1e6
    };
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_run_time() {
        let out = "Sending 20000 read requests, 4096 bytes each, 32 in parallel \
                   (starting at offset 0, step size 32436224)\nRun completed in 0.088 seconds.\n";
        assert_eq!(parse(out).unwrap(), 0.088);
        assert!(parse("qemu-img: error").is_err());
    }

    #[test]
    fn the_step_visits_every_block() {
        for size in [1u64 << 30, 256 << 20, 7919 * 4096 * 3] {
            let (blocks, step) = (size / BLOCK, step(size) / BLOCK);
            let gcd = |mut a: u64, mut b: u64| {
                while b != 0 {
                    (a, b) = (b, a % b);
                }
                a
            };
            assert_eq!(gcd(blocks, step), 1, "size {size}");
            assert!(step > 1);
        }
    }

    /// The real tool on a real file: a short read run completes and is measured.
    #[test]
    fn qemu_img_bench_runs() {
        assert!(
            available(),
            "qemu-img is missing: scripts/setup-host.sh installs qemu-utils"
        );
        let path = std::env::temp_dir().join(format!("sv-bench-qemu-{}.img", std::process::id()));
        std::fs::write(&path, vec![0u8; 4 << 20]).unwrap();
        let window = Window {
            warmup: Duration::ZERO,
            measure: Duration::from_millis(100),
        };
        let r = run(&path, 4 << 20, false, "threads", Pattern::Read, 8, window)
            .unwrap()
            .unwrap();
        assert!(r.iops > 0.0 && r.cpu_us_per_io > 0.0, "{r:?}");
        assert!(
            run(&path, 4 << 20, false, "threads", Pattern::Mixed, 8, window)
                .unwrap()
                .is_none()
        );
        std::fs::remove_file(&path).unwrap();
    }
}
