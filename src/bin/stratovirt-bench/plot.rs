//! The PNG plot: one panel per (backing, pattern), IOPS by queue depth, one line per VMM
//! engine (solid) and per fio engine (dashed, the host's ceiling). Drawn by gnuplot, which
//! reads the script and the data from its standard input.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::report::{Report, Source};

/// Lines of the plot: source, engine, title, gnuplot style.
const SERIES: [(Source, &str, &str, &str); 6] = [
    (
        Source::Vmm,
        "off",
        "VMM aio=off",
        "lw 2 pt 7 lc rgb '#7f7f7f'",
    ),
    (
        Source::Vmm,
        "threads",
        "VMM aio=threads",
        "lw 2 pt 7 lc rgb '#2ca02c'",
    ),
    (
        Source::Vmm,
        "native",
        "VMM aio=native",
        "lw 2 pt 7 lc rgb '#1f77b4'",
    ),
    (
        Source::Vmm,
        "io_uring",
        "VMM aio=io\\_uring",
        "lw 2 pt 7 lc rgb '#d62728'",
    ),
    (
        Source::Fio,
        "libaio",
        "fio libaio",
        "lw 1.5 dt 2 pt 6 lc rgb '#1f77b4'",
    ),
    (
        Source::Fio,
        "io_uring",
        "fio io\\_uring",
        "lw 1.5 dt 2 pt 6 lc rgb '#d62728'",
    ),
];

/// The gnuplot script (with its data inline) for `report`.
pub fn script(report: &Report, png: &Path) -> String {
    let mut backings = Vec::new();
    let mut patterns = Vec::new();
    for c in &report.cells {
        if !backings.contains(&c.backing) {
            backings.push(c.backing);
        }
        if !patterns.contains(&c.pattern) {
            patterns.push(c.pattern);
        }
    }
    let (rows, cols) = (backings.len().max(1), patterns.len().max(1));
    let mut s = String::new();
    let _ = writeln!(
        s,
        "set terminal pngcairo size {},{} font 'sans,10'\nset output '{}'",
        420 * cols,
        300 * rows + 60,
        png.display()
    );
    let points = |bi: usize, pi: usize, si: usize| -> Vec<(u16, f64)> {
        let (source, engine, _, _) = SERIES[si];
        report
            .cells
            .iter()
            .filter(|c| {
                c.backing == backings[bi]
                    && c.pattern == patterns[pi]
                    && c.source == source
                    && c.engine == engine
                    // One line per engine: the first queue count asked for.
                    && c.queues.is_none_or(|q| Some(&q) == report.meta.queues.first())
            })
            .map(|c| (c.qd, c.iops / 1000.0))
            .collect()
    };
    for bi in 0..backings.len() {
        for pi in 0..patterns.len() {
            for si in 0..SERIES.len() {
                let data = points(bi, pi, si);
                if data.is_empty() {
                    continue;
                }
                let _ = writeln!(s, "$d{bi}_{pi}_{si} << EOD");
                for (qd, kiops) in data {
                    let _ = writeln!(s, "{qd} {kiops:.1}");
                }
                let _ = writeln!(s, "EOD");
            }
        }
    }
    let _ = writeln!(
        s,
        "set multiplot layout {rows},{cols} title '4 KiB IOPS by queue depth: VMM virtio-blk \
         (solid) vs fio on the host (dashed)  |  {}' font 'sans,11'",
        report.meta.date
    );
    s.push_str(
        "set logscale x 2\nset xrange [0.7:180]\nset xtics (1,8,32,128)\nset yrange [0:*]\n\
         set grid\nset xlabel 'queue depth'\nset ylabel 'kIOPS'\nset key top left font 'sans,8' opaque box lc rgb '#cccccc'\n",
    );
    for (bi, b) in backings.iter().enumerate() {
        for (pi, p) in patterns.iter().enumerate() {
            let _ = writeln!(s, "set title '{} {}'", b.as_str(), p.as_str());
            let lines: Vec<String> = SERIES
                .iter()
                .enumerate()
                .filter(|(si, _)| !points(bi, pi, *si).is_empty())
                .map(|(si, (_, _, title, style))| {
                    format!("$d{bi}_{pi}_{si} using 1:2 with linespoints {style} title '{title}'")
                })
                .collect();
            let _ = writeln!(s, "plot {}", lines.join(", \\\n     "));
        }
    }
    s.push_str("unset multiplot\n");
    s
}

/// Draws the plot of `report` into `png` with gnuplot.
pub fn draw(report: &Report, png: &Path) -> Result<()> {
    let mut child = Command::new("gnuplot")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run gnuplot (apt-get install gnuplot-nox)")?;
    child
        .stdin
        .take()
        .context("gnuplot's stdin")?
        .write_all(script(report, png).as_bytes())
        .context("cannot feed gnuplot")?;
    let output = child.wait_with_output().context("gnuplot")?;
    if !output.status.success() {
        bail!(
            "gnuplot failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}
