//! Per-drive options that shape what a block device asks of its engine, shared by the
//! command line (`-drive`), QMP (`blockdev-add`, `block_set_io_throttle`) and the device:
//! QEMU's error policy (`werror=`, `rerror=`), `discard=`, `detect-zeroes=` and the I/O
//! limits (`throttling.*`).

use std::fmt;
use std::str::FromStr;

/// What a block device does with a request its engine failed (`werror=`/`rerror=`, QEMU's
/// error policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorAction {
    /// Answer the guest with an I/O error.
    Report,
    /// Answer the guest as if the request had succeeded.
    Ignore,
    /// Keep the request, pause the VM and tell the management; `cont` retries it.
    Stop,
    /// `Stop` when the host is out of space (`ENOSPC`), else `Report`.
    Enospc,
}

impl ErrorAction {
    /// The spelling used on the command line and in QMP.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorAction::Report => "report",
            ErrorAction::Ignore => "ignore",
            ErrorAction::Stop => "stop",
            ErrorAction::Enospc => "enospc",
        }
    }

    /// What to do with a request that failed with `errno`: `Report`, `Ignore` or `Stop`.
    pub fn resolve(self, errno: i32) -> ErrorAction {
        match self {
            ErrorAction::Enospc if errno == libc::ENOSPC => ErrorAction::Stop,
            ErrorAction::Enospc => ErrorAction::Report,
            action => action,
        }
    }
}

impl fmt::Display for ErrorAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ErrorAction {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "report" => Ok(ErrorAction::Report),
            "ignore" => Ok(ErrorAction::Ignore),
            "stop" => Ok(ErrorAction::Stop),
            "enospc" => Ok(ErrorAction::Enospc),
            other => Err(format!(
                "unknown error action {other:?}: expected report, ignore, stop or enospc"
            )),
        }
    }
}

/// Whether the guest may discard blocks (`discard=`, QEMU's and StratoVirt's meaning).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Discard {
    /// No `DISCARD` feature for the guest (the default).
    #[default]
    Ignore,
    /// `DISCARD` offered; a discard punches a hole in the image.
    Unmap,
}

impl Discard {
    /// The spelling used on the command line and in QMP.
    pub fn as_str(self) -> &'static str {
        match self {
            Discard::Ignore => "ignore",
            Discard::Unmap => "unmap",
        }
    }
}

impl FromStr for Discard {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ignore" | "off" => Ok(Discard::Ignore),
            "unmap" | "on" => Ok(Discard::Unmap),
            other => Err(format!(
                "unknown discard mode {other:?}: expected ignore or unmap"
            )),
        }
    }
}

/// Whether writes of zeroes are turned into write-zeroes (`detect-zeroes=`), and whether the
/// guest is offered `WRITE_ZEROES` (StratoVirt offers it unless `off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DetectZeroes {
    /// No detection, no `WRITE_ZEROES` for the guest (the default).
    #[default]
    Off,
    /// All-zero writes become write-zeroes (blocks stay allocated).
    On,
    /// All-zero writes become write-zeroes that may unmap (punch holes) when `discard=unmap`.
    Unmap,
}

impl DetectZeroes {
    /// The spelling used on the command line and in QMP.
    pub fn as_str(self) -> &'static str {
        match self {
            DetectZeroes::Off => "off",
            DetectZeroes::On => "on",
            DetectZeroes::Unmap => "unmap",
        }
    }
}

impl FromStr for DetectZeroes {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(DetectZeroes::Off),
            "on" => Ok(DetectZeroes::On),
            "unmap" => Ok(DetectZeroes::Unmap),
            other => Err(format!(
                "unknown detect-zeroes mode {other:?}: expected off, on or unmap"
            )),
        }
    }
}

/// One I/O limit (QEMU's leaky bucket): an average rate, and optionally a burst rate allowed
/// for a while. Zero means no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Limit {
    /// Units (requests or bytes) per second on average; 0 = no limit.
    pub avg: u64,
    /// Units per second allowed in a burst (`-max`); 0 = no burst beyond the average.
    pub max: u64,
    /// Seconds a burst at `max` may last (`-max-length`, default 1).
    pub max_length: u64,
}

impl Limit {
    /// Whether the limit is set.
    pub fn is_set(&self) -> bool {
        self.avg > 0
    }
}

/// The I/O limits of a drive (`throttling.*` on `-drive`, QEMU's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ThrottleConfig {
    /// `throttling.iops-total`: requests per second, reads and writes together.
    pub iops_total: Limit,
    /// `throttling.iops-read`.
    pub iops_read: Limit,
    /// `throttling.iops-write`.
    pub iops_write: Limit,
    /// `throttling.bps-total`: bytes per second, reads and writes together.
    pub bps_total: Limit,
    /// `throttling.bps-read`.
    pub bps_read: Limit,
    /// `throttling.bps-write`.
    pub bps_write: Limit,
    /// `throttling.iops-size`: a request of this many bytes counts as one for the iops
    /// limits, a bigger one as several; 0 = every request counts as one.
    pub iops_size: u64,
}

impl ThrottleConfig {
    /// Whether any limit is set.
    pub fn is_set(&self) -> bool {
        self.limits().iter().any(|(_, l)| l.is_set())
    }

    /// The six limits with their `-drive` key names (after `throttling.`).
    pub fn limits(&self) -> [(&'static str, Limit); 6] {
        [
            ("iops-total", self.iops_total),
            ("iops-read", self.iops_read),
            ("iops-write", self.iops_write),
            ("bps-total", self.bps_total),
            ("bps-read", self.bps_read),
            ("bps-write", self.bps_write),
        ]
    }

    /// The limit named `name` (`iops-total`, ...), to change it.
    pub fn limit_mut(&mut self, name: &str) -> Option<&mut Limit> {
        Some(match name {
            "iops-total" => &mut self.iops_total,
            "iops-read" => &mut self.iops_read,
            "iops-write" => &mut self.iops_write,
            "bps-total" => &mut self.bps_total,
            "bps-read" => &mut self.bps_read,
            "bps-write" => &mut self.bps_write,
            _ => return None,
        })
    }

    /// Checks QEMU's rules: a total limit excludes the read and write limits of its kind, a
    /// burst is not below its average, and a burst length needs a burst.
    pub fn validate(&self) -> Result<(), String> {
        for (kind, total, read, write) in [
            ("iops", self.iops_total, self.iops_read, self.iops_write),
            ("bps", self.bps_total, self.bps_read, self.bps_write),
        ] {
            if total.is_set() && (read.is_set() || write.is_set()) {
                return Err(format!(
                    "{kind}-total cannot be set with {kind}-read or {kind}-write"
                ));
            }
        }
        for (name, limit) in self.limits() {
            if limit.max > 0 && limit.max < limit.avg {
                return Err(format!("{name}-max must not be below {name}"));
            }
            if limit.max > 0 && !limit.is_set() {
                return Err(format!("{name}-max needs {name}"));
            }
            if limit.max_length > 1 && limit.max == 0 {
                return Err(format!("{name}-max-length needs {name}-max"));
            }
            if limit.avg > LIMIT_MAX || limit.max > LIMIT_MAX {
                return Err(format!("{name} and {name}-max must be at most {LIMIT_MAX}"));
            }
            if limit.max > 0 && limit.max_length > LIMIT_MAX / limit.max {
                return Err(format!(
                    "{name}-max-length is too long for {name}-max (their product is at most {LIMIT_MAX})"
                ));
            }
        }
        if self.iops_size > LIMIT_MAX {
            return Err(format!("iops-size must be at most {LIMIT_MAX}"));
        }
        Ok(())
    }
}

/// The largest number a limit may hold (QEMU's `THROTTLE_VALUE_MAX`, 10^15).
pub const LIMIT_MAX: u64 = 1_000_000_000_000_000;

#[cfg(test)]
mod tests {
    use super::*;

    fn with(name: &str, limit: Limit) -> ThrottleConfig {
        let mut config = ThrottleConfig::default();
        *config.limit_mut(name).unwrap() = limit;
        config
    }

    #[test]
    fn throttle_rules_are_qemus() {
        let limit = |avg, max, max_length| Limit {
            avg,
            max,
            max_length,
        };
        let good = [
            limit(100, 0, 0),
            limit(100, 200, 10),
            limit(LIMIT_MAX, LIMIT_MAX, 1),
        ];
        for l in good {
            assert_eq!(with("bps-read", l).validate(), Ok(()), "{l:?}");
        }
        let bad = [
            (limit(100, 50, 0), "must not be below"),
            (limit(0, 50, 0), "needs iops-write"),
            (limit(100, 0, 5), "needs iops-write-max"),
            (limit(LIMIT_MAX + 1, 0, 0), "at most"),
            (limit(100, 1_000_000, 1_000_000_000_000), "too long"),
        ];
        for (l, words) in bad {
            let error = with("iops-write", l).validate().unwrap_err();
            assert!(error.contains(words), "{l:?}: {error}");
        }
        let mut both = with("iops-total", limit(10, 0, 0));
        both.iops_read.avg = 5;
        assert!(both.validate().unwrap_err().contains("cannot be set with"));
        let size = ThrottleConfig {
            iops_size: LIMIT_MAX + 1,
            ..ThrottleConfig::default()
        };
        assert!(size.validate().is_err());
    }
}
