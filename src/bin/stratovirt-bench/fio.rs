//! The host's ceiling: fio run on the same file, pattern, queue depth and timing as a cell,
//! with `ioengine=libaio` and `ioengine=io_uring` (fio's defaults otherwise), its JSON output
//! parsed.
//!
//! Latency percentiles are fio's completion latency (`clat`), submission to completion; for
//! `randrw` they are those of the reads. CPU per I/O is fio's user + system time over the
//! run divided by the I/Os.

use std::path::Path;
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::workload::{Pattern, Window, BLOCK};

/// The fio engines run as the ceiling.
pub const ENGINES: [&str; 2] = ["libaio", "io_uring"];

/// What fio measured for one cell.
#[derive(Debug, Clone, Copy, Default)]
pub struct FioResult {
    /// Reads plus writes per second.
    pub iops: f64,
    /// Median completion latency, µs.
    pub p50_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// 99.9th percentile, µs.
    pub p999_us: f64,
    /// fio's CPU time per I/O, µs.
    pub cpu_us_per_io: f64,
    /// Errors fio reported.
    pub errors: u64,
}

/// Whether a `fio` binary can be run.
pub fn available() -> bool {
    Command::new("fio")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs fio with `engine` on `path` (`size` bytes) for one cell.
pub fn run(
    path: &Path,
    size: u64,
    direct: bool,
    engine: &str,
    pattern: Pattern,
    qd: u16,
    window: Window,
) -> Result<FioResult> {
    let mut cmd = Command::new("fio");
    cmd.arg("--name=ceiling")
        .arg(format!("--filename={}", path.display()))
        .arg(format!("--size={size}"))
        .arg(format!("--rw={}", pattern.as_str()))
        .arg(format!("--rwmixread={}", pattern.read_percent()))
        .arg(format!("--bs={BLOCK}"))
        .arg(format!("--iodepth={qd}"))
        .arg(format!("--ioengine={engine}"))
        .arg(format!("--direct={}", u8::from(direct)))
        .arg("--time_based")
        .arg(format!("--ramp_time={}ms", window.warmup.as_millis()))
        .arg(format!("--runtime={}ms", window.measure.as_millis()))
        .arg("--norandommap")
        .arg("--randrepeat=0")
        .arg("--invalidate=0")
        .arg("--percentile_list=50:99:99.9")
        .arg("--output-format=json");
    let output = cmd.output().context("cannot run fio")?;
    if !output.status.success() {
        bail!(
            "fio {engine} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    parse(&output.stdout).with_context(|| format!("cannot parse fio {engine} output"))
}

fn number(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

/// Reads the one job of fio's JSON report.
fn parse(stdout: &[u8]) -> Result<FioResult> {
    // fio may print notices before the JSON object.
    let start = stdout
        .iter()
        .position(|&b| b == b'{')
        .ok_or_else(|| anyhow!("no JSON in fio's output"))?;
    let report: Value = serde_json::from_slice(&stdout[start..])?;
    let job = &report["jobs"][0];
    if job.is_null() {
        bail!("fio's report has no job");
    }
    let read = &job["read"];
    let write = &job["write"];
    let ios = number(&read["total_ios"]) + number(&write["total_ios"]);
    let side = if number(&read["total_ios"]) > 0.0 {
        read
    } else {
        write
    };
    let pct = |key: &str| number(&side["clat_ns"]["percentile"][key]) / 1000.0;
    let runtime_s = number(&side["runtime"]) / 1000.0;
    let cpu_fraction = (number(&job["usr_cpu"]) + number(&job["sys_cpu"])) / 100.0;
    Ok(FioResult {
        iops: number(&read["iops"]) + number(&write["iops"]),
        p50_us: pct("50.000000"),
        p99_us: pct("99.000000"),
        p999_us: pct("99.900000"),
        cpu_us_per_io: if ios > 0.0 {
            cpu_fraction * runtime_s * 1e6 / ios
        } else {
            0.0
        },
        errors: job["error"].as_u64().unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_randrw_report() {
        let text = br#"note: something
{"jobs":[{"error":0,"usr_cpu":10.0,"sys_cpu":40.0,
 "read":{"total_ios":700,"iops":7000.0,"runtime":100,
   "clat_ns":{"percentile":{"50.000000":2000,"99.000000":9000,"99.900000":12000}}},
 "write":{"total_ios":300,"iops":3000.0,"runtime":100,"clat_ns":{"percentile":{}}}}]}"#;
        let r = parse(text).unwrap();
        assert_eq!(r.iops, 10000.0);
        assert_eq!(r.p50_us, 2.0);
        assert_eq!(r.p99_us, 9.0);
        assert_eq!(r.p999_us, 12.0);
        // 50 % of 0.1 s over 1000 I/Os = 50 µs each.
        assert!((r.cpu_us_per_io - 50.0).abs() < 1e-9);
        assert_eq!(r.errors, 0);
    }

    #[test]
    fn rejects_output_without_a_job() {
        assert!(parse(b"{\"jobs\":[]}").is_err());
        assert!(parse(b"fio: error").is_err());
    }
}
