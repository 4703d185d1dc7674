//! Results: one [`Cell`] per (source, engine, backing, pattern, depth), the run's conditions,
//! the Markdown tables and the JSON file.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::backing::Backing;
use crate::workload::Pattern;

/// Who produced a cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The VMM's virtio-blk device, driven by the in-process guest driver.
    Vmm,
    /// fio on the host, on the same file (the ceiling).
    Fio,
    /// QEMU's block layer (`qemu-img bench`) on the same file (the peer).
    Qemu,
}

impl Source {
    /// Its name in the tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Vmm => "vmm",
            Source::Fio => "fio",
            Source::Qemu => "qemu",
        }
    }
}

/// One measured cell.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    /// VMM or fio.
    pub source: Source,
    /// `off`, `threads`, `native`, `io_uring` (`io_uring+prealloc`) for the VMM; `libaio`,
    /// `io_uring` for fio; `native`, `io_uring`, `threads` for QEMU.
    pub engine: String,
    /// The device's request queues (VMM cells; `None` for fio).
    pub queues: Option<u16>,
    /// The file.
    pub backing: Backing,
    /// The access pattern.
    pub pattern: Pattern,
    /// Requests kept in flight.
    pub qd: u16,
    /// Completed requests per second.
    pub iops: f64,
    /// Median latency, µs (NaN, `null` in JSON, where the source reports none: QEMU).
    pub p50_us: f64,
    /// 99th percentile latency, µs.
    pub p99_us: f64,
    /// 99.9th percentile latency, µs.
    pub p999_us: f64,
    /// CPU per I/O, µs: the device thread's for the VMM, fio's for fio, `qemu-img`'s for QEMU.
    pub cpu_us_per_io: f64,
    /// CPU per I/O of the driver's thread (the "guest"), µs.
    pub driver_cpu_us_per_io: Option<f64>,
    /// CPU per I/O of the bench's other threads (io_uring's kernel workers, SQPOLL, the
    /// `aio=threads` pool), µs.
    pub other_cpu_us_per_io: Option<f64>,
    /// Notifications sent per I/O.
    pub kicks_per_io: Option<f64>,
    /// Interrupts taken per I/O.
    pub irqs_per_io: Option<f64>,
    /// Mean time a request spent in the device, µs: from its submission to the host to its
    /// answer (the device's own counters). The rest of its latency is the hand-offs between
    /// the driver and the device.
    pub in_device_us: Option<f64>,
    /// Requests that failed.
    pub errors: u64,
}

/// The conditions of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Meta {
    /// UTC time the run started, `YYYY-MM-DD HH:MM`.
    pub date: String,
    /// `git describe`-style commit of the tree measured (`+dirty` when modified).
    pub commit: String,
    /// The `--label` text.
    pub label: String,
    /// Kernel release.
    pub kernel: String,
    /// Online CPUs.
    pub cpus: usize,
    /// `/proc/loadavg` before the run.
    pub load_before: String,
    /// `/proc/loadavg` after the run.
    pub load_after: String,
    /// Warm-up seconds per cell.
    pub warmup_s: f64,
    /// Measured seconds per cell.
    pub measure_s: f64,
    /// File size, bytes.
    pub size: u64,
    /// Runs per row (the median run of each engine is reported).
    pub repeat: u32,
    /// Whether `VIRTIO_F_RING_EVENT_IDX` was negotiated.
    pub event_idx: bool,
    /// The device thread's `poll-max-ns` (0: it did not poll).
    pub poll_max_ns: u64,
    /// The driver's halt polling, ns (0: it sleeps on the interrupt at once).
    pub halt_poll_ns: u64,
    /// The device's queue counts run (`--queues`), each queue on its own iothread.
    pub queues: Vec<u16>,
    /// The `--drive-options` every device was given (empty: none).
    pub drive_options: String,
    /// Whether the device threads ran under the iothread seccomp filter (and `aio=threads`
    /// workers under theirs).
    pub seccomp: bool,
    /// The command line.
    pub command: String,
}

/// Everything a run produced.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Conditions.
    pub meta: Meta,
    /// Every cell, in run order.
    pub cells: Vec<Cell>,
}

/// Markers around the generated section of a Markdown file.
pub const BEGIN_MARK: &str = "<!-- stratovirt-bench: latest begin -->";
/// The engine label of io_uring with preallocated guest RAM (fixed buffers).
const PREALLOC: &str = "io_uring+prealloc";

/// See [`BEGIN_MARK`].
pub const END_MARK: &str = "<!-- stratovirt-bench: latest end -->";

fn fmt_iops(iops: f64) -> String {
    if iops >= 10_000.0 {
        format!("{:.0}K", iops / 1000.0)
    } else if iops > 0.0 {
        format!("{:.1}K", iops / 1000.0)
    } else {
        "-".into()
    }
}

impl Cell {
    /// A cell of `source` with nothing measured yet: no latencies (NaN), no per-I/O figures
    /// beyond CPU (0), no queues, no errors; callers fill in what their source reports.
    pub fn new(source: Source, engine: &str, backing: Backing, pattern: Pattern, qd: u16) -> Cell {
        Cell {
            source,
            engine: engine.to_string(),
            queues: None,
            backing,
            pattern,
            qd,
            iops: 0.0,
            p50_us: f64::NAN,
            p99_us: f64::NAN,
            p999_us: f64::NAN,
            cpu_us_per_io: 0.0,
            driver_cpu_us_per_io: None,
            other_cpu_us_per_io: None,
            kicks_per_io: None,
            irqs_per_io: None,
            in_device_us: None,
            errors: 0,
        }
    }

    /// The engine as a column names it: with more than one queue, the queue count follows
    /// (`io_uring/2q`).
    pub fn column(&self) -> String {
        match self.queues {
            Some(q) if q > 1 => format!("{}/{q}q", self.engine),
            _ => self.engine.clone(),
        }
    }
}

impl Report {
    /// The cell of `source` and `engine` in a row; a VMM cell also of `queues` queues (fio has
    /// none: its cell belongs to every queue count's row).
    fn find(
        &self,
        source: Source,
        engine: &str,
        (b, p, qd, queues): (Backing, Pattern, u16, u16),
    ) -> Option<&Cell> {
        self.cells.iter().find(|c| {
            c.source == source
                && c.engine == engine
                && c.backing == b
                && c.pattern == p
                && c.qd == qd
                && c.queues.is_none_or(|q| q == queues)
        })
    }

    /// The (backing, pattern, depth) rows, in run order.
    pub fn rows(&self) -> Vec<(Backing, Pattern, u16)> {
        let mut rows: Vec<(Backing, Pattern, u16)> = Vec::new();
        for c in &self.cells {
            let key = (c.backing, c.pattern, c.qd);
            if !rows.contains(&key) {
                rows.push(key);
            }
        }
        rows
    }

    /// Whether the run had devices with other than one queue (the summary then has a row per
    /// queue count).
    fn multi_queue(&self) -> bool {
        self.meta.queues.iter().any(|&q| q != 1)
    }

    /// The IOPS summary: every engine side by side with the fio ceiling, QEMU's block layer
    /// and the ratios; with `--mem-prealloc`, also the `io_uring+prealloc` column and its
    /// ratio to `io_uring`.
    pub fn summary_table(&self) -> String {
        let prealloc = self.cells.iter().any(|c| c.engine == PREALLOC);
        let multi = self.multi_queue();
        let mut out = String::from("| backing | pattern | QD |");
        if multi {
            out.push_str(" queues |");
        }
        out.push_str(
            " off | threads | native | io_uring | fio libaio \
             | fio io_uring | qemu native | qemu io_uring | qemu threads | io_uring / native \
             | best VMM / best fio | best VMM / best QEMU |",
        );
        if prealloc {
            out.push_str(" io_uring+prealloc | +prealloc / io_uring |");
        }
        out.push_str("\n|---|---|---:|");
        if multi {
            out.push_str("---:|");
        }
        out.push_str("---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        if prealloc {
            out.push_str("---:|---:|");
        }
        out.push('\n');
        let rows = self
            .rows()
            .into_iter()
            .flat_map(|(b, p, qd)| self.meta.queues.iter().map(move |&q| (b, p, qd, q)));
        for row in rows {
            let (b, p, qd, queues) = row;
            let vmm = |e: &str| self.find(Source::Vmm, e, row).map(|c| c.iops);
            let fio = |e: &str| self.find(Source::Fio, e, row).map(|c| c.iops);
            let qemu = |e: &str| self.find(Source::Qemu, e, row).map(|c| c.iops);
            let cell = |v: Option<f64>| v.map_or("-".to_string(), fmt_iops);
            let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
                _ => "-".into(),
            };
            let best_vmm = ["off", "threads", "native", "io_uring", PREALLOC]
                .iter()
                .filter_map(|e| vmm(e))
                .fold(0.0, f64::max);
            let best_fio = ["libaio", "io_uring"]
                .iter()
                .filter_map(|e| fio(e))
                .fold(0.0, f64::max);
            let best_qemu = crate::qemu::ENGINES
                .iter()
                .filter_map(|e| qemu(e))
                .fold(0.0, f64::max);
            let positive = |v: f64| (v > 0.0).then_some(v);
            let _ = write!(out, "| {} | {} | {qd} |", b.as_str(), p.as_str());
            if multi {
                let _ = write!(out, " {queues} |");
            }
            let _ = write!(
                out,
                " {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                cell(vmm("off")),
                cell(vmm("threads")),
                cell(vmm("native")),
                cell(vmm("io_uring")),
                cell(fio("libaio")),
                cell(fio("io_uring")),
                cell(qemu("native")),
                cell(qemu("io_uring")),
                cell(qemu("threads")),
                ratio(vmm("io_uring"), vmm("native")),
                ratio(positive(best_vmm), positive(best_fio)),
                ratio(positive(best_vmm), positive(best_qemu)),
            );
            if prealloc {
                let _ = write!(
                    out,
                    " {} | {} |",
                    cell(vmm(PREALLOC)),
                    ratio(vmm(PREALLOC), vmm("io_uring"))
                );
            }
            out.push('\n');
        }
        out
    }

    /// Every cell with its latencies and costs.
    pub fn detail_table(&self) -> String {
        let mut out = String::from(
            "| backing | pattern | QD | source | engine | IOPS | p50 µs | p99 µs | p99.9 µs \
             | in device µs | CPU µs/IO | driver µs/IO | workers µs/IO | kicks/IO | irqs/IO |\n\
             |---|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
        let us = |v: f64| {
            if v.is_finite() {
                format!("{v:.1}")
            } else {
                "-".to_string()
            }
        };
        for (b, p, qd) in self.rows() {
            for c in self
                .cells
                .iter()
                .filter(|c| c.backing == b && c.pattern == p && c.qd == qd)
            {
                let _ = writeln!(
                    out,
                    "| {} | {} | {qd} | {} | {} | {:.0} | {} | {} | {} | {} | {:.2} | {} | {} | {} | {} |{}",
                    b.as_str(),
                    p.as_str(),
                    c.source.as_str(),
                    c.column(),
                    c.iops,
                    us(c.p50_us),
                    us(c.p99_us),
                    us(c.p999_us),
                    c.in_device_us.map_or("-".to_string(), us),
                    c.cpu_us_per_io,
                    opt(c.driver_cpu_us_per_io),
                    opt(c.other_cpu_us_per_io),
                    opt(c.kicks_per_io),
                    opt(c.irqs_per_io),
                    if c.errors > 0 { format!(" {} errors", c.errors) } else { String::new() }
                );
            }
        }
        out
    }

    /// One line with the run's conditions.
    pub fn conditions(&self) -> String {
        let m = &self.meta;
        format!(
            "{} UTC, commit {}, kernel {}, {} CPUs, load {} → {}, {:.1} s warm-up + {:.1} s per \
             cell{}, {} MiB files, EVENT_IDX {}, poll-max-ns {}, guest halt-poll {} ns, {}, seccomp {}{}{}",
            m.date,
            m.commit,
            m.kernel,
            m.cpus,
            m.load_before,
            m.load_after,
            m.warmup_s,
            m.measure_s,
            if m.repeat > 1 {
                format!(", median of {} interleaved runs", m.repeat)
            } else {
                String::new()
            },
            m.size >> 20,
            if m.event_idx { "on" } else { "off" },
            m.poll_max_ns,
            m.halt_poll_ns,
            match m.queues.as_slice() {
                [1] => "1 queue".to_string(),
                [q] => format!("{q} queues (an iothread each)"),
                qs => format!(
                    "{} queues (an iothread each)",
                    qs.iter().map(u16::to_string).collect::<Vec<_>>().join(", ")
                ),
            },
            if m.seccomp { "on" } else { "off" },
            if m.drive_options.is_empty() {
                String::new()
            } else {
                format!(", drive options {}", m.drive_options)
            },
            if m.label.is_empty() {
                String::new()
            } else {
                format!(", label: {}", m.label)
            }
        )
    }

    /// The Markdown section written between the markers of a doc.
    pub fn markdown(&self, plot: Option<&str>) -> String {
        let mut out = format!(
            "{BEGIN_MARK}\n\nConditions: {}.\n\nCommand: `{}`\n\n",
            self.conditions(),
            self.meta.command
        );
        if let Some(plot) = plot {
            let _ = write!(out, "![IOPS by queue depth]({plot})\n\n");
        }
        let _ = write!(
            out,
            "IOPS (4 KiB):\n\n{}\nEvery cell:\n\n{}\n{END_MARK}",
            self.summary_table(),
            self.detail_table()
        );
        out
    }

    /// Writes the report as JSON.
    pub fn write_json(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// Replaces the section between the markers of the Markdown file `doc`.
    pub fn update_doc(&self, doc: &Path, plot: Option<&str>) -> Result<()> {
        let text = std::fs::read_to_string(doc)
            .with_context(|| format!("cannot read {}", doc.display()))?;
        let updated = splice(&text, &self.markdown(plot))
            .with_context(|| format!("{} has no latest-results markers", doc.display()))?;
        std::fs::write(doc, updated).with_context(|| format!("cannot write {}", doc.display()))
    }
}

/// Puts `section` (which carries both markers) in place of the marked part of `text`.
fn splice(text: &str, section: &str) -> Result<String> {
    let (Some(begin), Some(end)) = (text.find(BEGIN_MARK), text.find(END_MARK)) else {
        bail!("markers missing");
    };
    if end < begin {
        bail!("markers out of order");
    }
    Ok(format!(
        "{}{}{}",
        &text[..begin],
        section,
        &text[end + END_MARK.len()..]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(source: Source, engine: &str, iops: f64) -> Cell {
        Cell {
            queues: (source == Source::Vmm).then_some(1),
            iops,
            p50_us: 1.0,
            p99_us: 2.0,
            p999_us: 3.0,
            cpu_us_per_io: 4.0,
            ..Cell::new(source, engine, Backing::Shm, Pattern::Read, 32)
        }
    }

    fn report(cells: Vec<Cell>) -> Report {
        Report {
            meta: Meta {
                date: String::new(),
                commit: String::new(),
                label: String::new(),
                kernel: String::new(),
                cpus: 2,
                load_before: String::new(),
                load_after: String::new(),
                warmup_s: 0.5,
                measure_s: 1.0,
                size: 1 << 30,
                repeat: 1,
                event_idx: true,
                poll_max_ns: 32768,
                halt_poll_ns: 0,
                queues: vec![1],
                drive_options: "throttling.iops-total=5000".into(),
                seccomp: true,
                command: String::new(),
            },
            cells,
        }
    }

    #[test]
    fn summary_has_both_ratios() {
        let r = report(vec![
            cell(Source::Vmm, "threads", 60_000.0),
            cell(Source::Vmm, "native", 100_000.0),
            cell(Source::Vmm, "io_uring", 130_000.0),
            cell(Source::Fio, "libaio", 200_000.0),
            cell(Source::Fio, "io_uring", 100_000.0),
            cell(Source::Qemu, "native", 90_000.0),
            cell(Source::Qemu, "io_uring", 104_000.0),
        ]);
        let table = r.summary_table();
        let row = table.lines().nth(2).unwrap();
        assert_eq!(
            row,
            "| shm | randread | 32 | - | 60K | 100K | 130K | 200K | 100K | 90K | 104K | - \
             | 1.30 | 0.65 | 1.25 |"
        );
        let mut qemu = cell(Source::Qemu, "threads", 1.0);
        (qemu.p50_us, qemu.p99_us, qemu.p999_us) = (f64::NAN, f64::NAN, f64::NAN);
        let detail = report(vec![qemu]).detail_table();
        assert!(
            detail.contains("| qemu | threads | 1 | - | - | - |"),
            "{detail}"
        );
    }

    #[test]
    fn queue_counts_get_a_row_each() {
        let mut two = cell(Source::Vmm, "io_uring", 150_000.0);
        two.queues = Some(2);
        let mut r = report(vec![
            cell(Source::Vmm, "io_uring", 130_000.0),
            two,
            cell(Source::Fio, "io_uring", 100_000.0),
        ]);
        r.meta.queues = vec![1, 2];
        let table = r.summary_table();
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("| backing | pattern | QD | queues | off |"));
        assert_eq!(
            lines[2],
            "| shm | randread | 32 | 1 | - | - | - | 130K | - | 100K | - | - | - | - | 1.30 | - |"
        );
        assert_eq!(
            lines[3],
            "| shm | randread | 32 | 2 | - | - | - | 150K | - | 100K | - | - | - | - | 1.50 | - |"
        );
        assert!(r.detail_table().contains("| io_uring/2q | 150000 |"));
        assert!(r.conditions().contains("1, 2 queues (an iothread each)"));
        // One queue: the table keeps its columns.
        r.meta.queues = vec![1];
        assert!(r
            .summary_table()
            .starts_with("| backing | pattern | QD | off |"));
    }

    #[test]
    fn conditions_name_the_drive_options() {
        let r = report(Vec::new());
        assert!(r
            .conditions()
            .contains("drive options throttling.iops-total=5000"));
    }

    #[test]
    fn conditions_and_json_carry_the_polling() {
        let r = report(Vec::new());
        assert!(r.conditions().contains("poll-max-ns 32768"));
        let json: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(json["meta"]["poll_max_ns"], 32768);
    }

    #[test]
    fn splice_replaces_only_the_marked_part() {
        let doc = format!("head\n{BEGIN_MARK}\nold\n{END_MARK}\ntail\n");
        let out = splice(&doc, &format!("{BEGIN_MARK}\nnew\n{END_MARK}")).unwrap();
        assert_eq!(out, format!("head\n{BEGIN_MARK}\nnew\n{END_MARK}\ntail\n"));
        assert!(splice("no markers", "x").is_err());
    }
}
