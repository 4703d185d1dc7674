//! `stratovirt-bench`: device-level benchmarks of the virtio-blk path (see docs/benchmark.md).
//!
//! `stratovirt-bench blk` runs the real virtio-blk device, on its own iothread, against an
//! in-process guest driver that keeps N requests in flight, for every engine × backing ×
//! pattern × queue depth asked for, then fio on the same files; it prints the tables and can
//! write JSON, a PNG plot and the results section of a Markdown file.
//!
//! Modules: [`cli`] (options), [`backing`] (the files), [`rig`] (device + driver),
//! [`workload`] (one cell), [`stats`] (percentiles), [`fio`] (the ceiling), [`report`]
//! (tables, JSON, doc), [`plot`] (gnuplot).

mod backing;
mod cli;
mod drive;
mod fio;
mod plot;
mod qemu;
mod report;
mod rig;
mod stats;
mod workload;

use std::process::Command;

use anyhow::{bail, Context, Result};
use log::LevelFilter;
use util::aio::{probe, AioEngine};

use backing::Backing;
use cli::Options;
use report::{Cell, Meta, Report, Source};
use rig::{Rig, RigConfig};

fn main() {
    let _ = util::logger::init(None, LevelFilter::Warn);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("blk") => cli::parse(&args[1..]).and_then(|opts| run(&opts)),
        _ => {
            eprint!("{}", cli::USAGE);
            std::process::exit(2);
        }
    };
    if let Err(e) = result {
        eprintln!("stratovirt-bench: {e:#}");
        std::process::exit(1);
    }
}

fn text_of(cmd: &mut Command) -> String {
    cmd.output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn utc_now() -> String {
    text_of(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M"]))
}

fn meta(opts: &Options) -> Meta {
    Meta {
        date: utc_now(),
        commit: text_of(Command::new("git").args(["rev-parse", "--short", "HEAD"])),
        label: opts.label.clone(),
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_before: loadavg(),
        load_after: String::new(),
        warmup_s: opts.window.warmup.as_secs_f64(),
        measure_s: opts.window.measure.as_secs_f64(),
        size: opts.size,
        repeat: opts.repeat,
        event_idx: opts.event_idx,
        poll_max_ns: opts.poll.max_ns,
        halt_poll_ns: opts.halt_poll_ns,
        queues: opts.queues.clone(),
        drive_options: opts.drive.text.clone(),
        seccomp: opts.seccomp,
        command: std::iter::once("stratovirt-bench".to_string())
            .chain(std::env::args().skip(1))
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// A VMM column: an engine, and whether guest RAM is preallocated (fixed buffers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct VmmEngine {
    aio: AioEngine,
    prealloc: bool,
}

impl VmmEngine {
    /// The label of the column (`io_uring+prealloc` for the variant).
    fn label(self) -> String {
        if self.prealloc {
            format!("{}+prealloc", self.aio)
        } else {
            self.aio.to_string()
        }
    }
}

/// Runs one VMM cell, on a device with `queues` request queues.
fn vmm_cell(
    opts: &Options,
    path: &std::path::Path,
    engine: VmmEngine,
    queues: u16,
    backing: Backing,
    pattern: workload::Pattern,
    qd: u16,
) -> Result<Cell> {
    let mut rig = Rig::new(
        &opts.drive.backend(path, engine.aio, backing),
        RigConfig {
            event_idx: opts.event_idx,
            poll: opts.poll,
            prealloc: engine.prealloc,
            queues,
            halt_poll_ns: opts.halt_poll_ns,
            seccomp: opts.seccomp,
        },
    )?;
    let mut m = workload::run(
        &mut rig,
        pattern,
        qd,
        opts.size / workload::BLOCK,
        opts.window,
    )
    .with_context(|| {
        format!(
            "{} {} qd={qd} aio={} queues={queues}",
            backing.as_str(),
            pattern.as_str(),
            engine.label()
        )
    })?;
    let all = (m.ios + m.errors).max(1) as f64;
    let per_io_us = |ns: u64| ns as f64 / 1000.0 / all;
    Ok(Cell {
        source: Source::Vmm,
        engine: engine.label(),
        queues: Some(queues),
        backing,
        pattern,
        qd,
        iops: m.ios as f64 / m.seconds,
        p50_us: m.latencies.percentile_us(0.50),
        p99_us: m.latencies.percentile_us(0.99),
        p999_us: m.latencies.percentile_us(0.999),
        cpu_us_per_io: per_io_us(m.device_cpu_ns),
        driver_cpu_us_per_io: Some(per_io_us(m.driver_cpu_ns)),
        other_cpu_us_per_io: Some(per_io_us(
            m.process_cpu_ns
                .saturating_sub(m.device_cpu_ns + m.driver_cpu_ns),
        )),
        kicks_per_io: Some(m.kicks as f64 / all),
        irqs_per_io: Some(m.interrupts as f64 / all),
        in_device_us: (m.device_ops > 0).then(|| m.device_ns as f64 / 1000.0 / m.device_ops as f64),
        errors: m.errors,
    })
}

fn progress(c: &Cell) {
    eprintln!(
        "{:<8} {:<9} qd={:<3} {:<3} {:<11} {:>9.0} IOPS  p50 {:>7.1} µs  p99 {:>7.1} µs  cpu {:>5.2} µs/IO{}",
        c.backing.as_str(),
        c.pattern.as_str(),
        c.qd,
        c.source.as_str(),
        c.column(),
        c.iops,
        c.p50_us,
        c.p99_us,
        c.cpu_us_per_io,
        if c.errors > 0 { format!("  {} ERRORS", c.errors) } else { String::new() }
    );
}

fn qemu_cell(
    opts: &Options,
    path: &std::path::Path,
    engine: &str,
    backing: Backing,
    pattern: workload::Pattern,
    qd: u16,
) -> Result<Option<Cell>> {
    let direct = opts.drive.direct(backing);
    let Some(r) = qemu::run(path, opts.size, direct, engine, pattern, qd, opts.window)? else {
        return Ok(None);
    };
    Ok(Some(Cell {
        iops: r.iops,
        cpu_us_per_io: r.cpu_us_per_io,
        ..Cell::new(Source::Qemu, engine, backing, pattern, qd)
    }))
}

fn fio_cell(
    opts: &Options,
    path: &std::path::Path,
    engine: &str,
    backing: Backing,
    pattern: workload::Pattern,
    qd: u16,
) -> Result<Cell> {
    let r = fio::run(
        path,
        opts.size,
        opts.drive.direct(backing),
        engine,
        pattern,
        qd,
        opts.window,
    )?;
    Ok(Cell {
        iops: r.iops,
        p50_us: r.p50_us,
        p99_us: r.p99_us,
        p999_us: r.p999_us,
        cpu_us_per_io: r.cpu_us_per_io,
        errors: r.errors,
        ..Cell::new(Source::Fio, engine, backing, pattern, qd)
    })
}

/// The programs run beside the VMM on the same files.
#[derive(Debug, Clone, Copy)]
struct Peers {
    /// fio, the host's ceiling.
    fio: bool,
    /// `qemu-img bench`, QEMU's block layer.
    qemu: bool,
}

/// One row (backing, pattern, depth): every engine at every queue count, the fio ceiling and
/// QEMU's block layer, `opts.repeat` rounds interleaved (all of them, then all again),
/// keeping each one's
/// median-IOPS run.
fn run_row(
    opts: &Options,
    peers: Peers,
    path: &std::path::Path,
    backing: Backing,
    pattern: workload::Pattern,
    qd: u16,
) -> Result<Vec<Cell>> {
    // Linux AIO on a buffered file is synchronous; the VMM refuses it.
    let mut kinds: Vec<VmmEngine> = opts
        .engines
        .iter()
        .filter(|&&e| opts.drive.direct(backing) || e != AioEngine::Native)
        .map(|&aio| VmmEngine {
            aio,
            prealloc: false,
        })
        .collect();
    if opts.prealloc && opts.engines.contains(&AioEngine::IoUring) {
        kinds.push(VmmEngine {
            aio: AioEngine::IoUring,
            prealloc: true,
        });
    }
    let engines: Vec<(VmmEngine, u16)> = opts
        .queues
        .iter()
        .flat_map(|&queues| kinds.iter().map(move |&engine| (engine, queues)))
        .collect();
    let fio_engines: &[&str] = if peers.fio { &fio::ENGINES } else { &[] };
    let qemu_engines: Vec<&str> = qemu::ENGINES
        .into_iter()
        .filter(|e| peers.qemu && qemu::runs(e, opts.drive.direct(backing)))
        .collect();
    let mut runs: Vec<Vec<Cell>> =
        vec![Vec::new(); engines.len() + fio_engines.len() + qemu_engines.len()];
    for _ in 0..opts.repeat {
        for (i, &(engine, queues)) in engines.iter().enumerate() {
            let cell = vmm_cell(opts, path, engine, queues, backing, pattern, qd)?;
            progress(&cell);
            runs[i].push(cell);
        }
        for (i, engine) in fio_engines.iter().enumerate() {
            let cell = fio_cell(opts, path, engine, backing, pattern, qd)?;
            progress(&cell);
            runs[engines.len() + i].push(cell);
        }
        for (i, engine) in qemu_engines.iter().enumerate() {
            // A peer that fails leaves its cell out of this run (shown as `-`); ours end it.
            match qemu_cell(opts, path, engine, backing, pattern, qd) {
                Ok(Some(cell)) => {
                    progress(&cell);
                    runs[engines.len() + fio_engines.len() + i].push(cell);
                }
                Ok(None) => {}
                Err(e) => eprintln!("stratovirt-bench: {e:#}; the QEMU cell is left out"),
            }
        }
    }
    Ok(runs.into_iter().filter_map(median_run).collect())
}

/// The run with the median IOPS (the lower middle one for an even count).
fn median_run(mut runs: Vec<Cell>) -> Option<Cell> {
    runs.sort_by(|a, b| a.iops.total_cmp(&b.iops));
    let middle = runs.len().checked_sub(1)? / 2;
    Some(runs.swap_remove(middle))
}

fn run(opts: &Options) -> Result<()> {
    for &engine in &opts.engines {
        probe(engine).with_context(|| format!("aio={engine}"))?;
    }
    let fio = opts.fio && fio::available();
    if opts.fio && !fio {
        log::warn!("fio not found: running without the host ceiling (apt-get install fio)");
    }
    let qemu = opts.qemu && qemu::available();
    if opts.qemu && !qemu {
        log::warn!(
            "qemu-img not found: running without QEMU's block layer (apt-get install qemu-utils)"
        );
    }
    let peers = Peers { fio, qemu };
    let mut report = Report {
        meta: meta(opts),
        cells: Vec::new(),
    };
    for &backing in &opts.backings {
        let path = backing.path(&opts.disk_dir, &opts.shm_dir);
        backing::prepare(&path, opts.size, backing)?;
        for &pattern in &opts.patterns {
            for &qd in &opts.depths {
                report
                    .cells
                    .extend(run_row(opts, peers, &path, backing, pattern, qd)?);
            }
        }
    }
    report.meta.load_after = loadavg();
    println!("{}\n", report.conditions());
    println!("{}", report.summary_table());
    if !opts.quick {
        println!("{}", report.detail_table());
    }
    if let Some(json) = &opts.json {
        report.write_json(json)?;
    }
    let mut plot_name = None;
    if let Some(png) = &opts.plot {
        plot::draw(&report, png)?;
        plot_name = png.file_name().map(|n| n.to_string_lossy().into_owned());
    }
    if let Some(doc) = &opts.doc {
        let rel = plot_name.map(|n| format!("bench/{n}"));
        report.update_doc(doc, rel.as_deref())?;
    }
    if report.cells.iter().any(|c| c.errors > 0) {
        bail!("some requests failed (see the tables)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(iops: f64) -> Cell {
        Cell {
            queues: Some(1),
            iops,
            p50_us: 0.0,
            p99_us: 0.0,
            p999_us: 0.0,
            ..Cell::new(
                Source::Vmm,
                "native",
                Backing::Shm,
                workload::Pattern::Read,
                32,
            )
        }
    }

    #[test]
    fn median_run_keeps_the_middle_one() {
        assert!(median_run(Vec::new()).is_none());
        let iops = |runs: &[f64]| {
            median_run(runs.iter().map(|&i| cell(i)).collect())
                .unwrap()
                .iops
        };
        assert_eq!(iops(&[5.0]), 5.0);
        assert_eq!(iops(&[9.0, 1.0, 5.0]), 5.0);
        assert_eq!(iops(&[4.0, 1.0, 3.0, 2.0]), 2.0);
    }
}
