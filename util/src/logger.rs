//! The `log` backend: one line per record, to stderr or to the file given by `-D FILE`, in
//! StratoVirt's line format, which Kata Containers and StratoVirt's own tooling read:
//!
//! ```text
//! 2024-05-10T12:00:00.123456789: [4242][4243][micro_vm/src/machine.rs:512]:INFO: VM paused
//! ^ local time, nanoseconds        ^pid  ^tid  ^source file and line          ^level ^message
//! ```
//!
//! The level comes from `STRATOVIRT_LOG_LEVEL` (StratoVirt's variable), or `STRATOVIRT_LOG`
//! (this project's earlier name, still read when the first is unset), or the caller's default.
//! Levels are `error`, `warn`, `info`, `debug`, `trace`, in any case; an unknown value falls
//! back to `info`, as in StratoVirt, and says so in the log's first line.
//!
//! [`RateLimit`] bounds the lines a guest or a client can make the VMM write.
//!
//! Invariants:
//! - A line is written with one `write` call, so lines from different threads never
//!   interleave within a line.
//! - Every log line that a guest (or a QMP client) can trigger again and again goes through a
//!   [`RateLimit`], usually with [`log_ratelimited!`](crate::log_ratelimited) or one of its
//!   level shorthands ([`warn_ratelimited!`](crate::warn_ratelimited), ...): the first
//!   [`GUEST_LOG_BURST`] lines of a call site are written in full, then at most one per
//!   [`GUEST_LOG_INTERVAL`], saying how many similar lines were suppressed since the previous
//!   one. A flood thus costs a few kilobytes of log, whatever its length.
//!
//! [`raw_fd`] names the same destination as a bare descriptor, for code that must write a line
//! without taking a lock or allocating (a signal handler).

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::io::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use log::{LevelFilter, Log, Metadata, Record};

/// StratoVirt's variable for the log level.
pub const LEVEL_VAR: &str = "STRATOVIRT_LOG_LEVEL";
/// This project's earlier variable, read when [`LEVEL_VAR`] is unset.
pub const LEGACY_LEVEL_VAR: &str = "STRATOVIRT_LOG";

/// Where log lines go.
enum Sink {
    Stderr,
    File(Mutex<File>),
}

struct Logger {
    sink: Sink,
    level: LevelFilter,
}

/// A broken-down local time with nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LocalTime {
    year: i32,
    month: i32,
    day: i32,
    hour: i32,
    minute: i32,
    second: i32,
    nanos: u32,
}

impl LocalTime {
    /// The wall clock now, in the host's time zone (as StratoVirt prints it).
    fn now() -> LocalTime {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let seconds = libc::time_t::try_from(since_epoch.as_secs()).unwrap_or(0);
        LocalTime::at(seconds, since_epoch.subsec_nanos())
    }

    /// `seconds` since the epoch, broken down in the host's time zone.
    fn at(seconds: libc::time_t, nanos: u32) -> LocalTime {
        // SAFETY: `tm` is plain old data for which all-zero bytes are a valid value.
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers are valid for the duration of the call; localtime_r is the
        // thread-safe variant, writing only into `tm`. On failure `tm` stays zeroed.
        unsafe { libc::localtime_r(&seconds, &mut tm) };
        LocalTime {
            year: tm.tm_year.saturating_add(1900),
            month: tm.tm_mon.saturating_add(1),
            day: tm.tm_mday,
            hour: tm.tm_hour,
            minute: tm.tm_min,
            second: tm.tm_sec,
            nanos,
        }
    }
}

impl std::fmt::Display for LocalTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}",
            self.year, self.month, self.day, self.hour, self.minute, self.second, self.nanos
        )
    }
}

/// The id of the calling thread.
fn gettid() -> i64 {
    // SAFETY: gettid has no arguments and cannot fail.
    i64::from(unsafe { libc::gettid() })
}

/// One log line, newline included.
fn format_line(time: LocalTime, pid: u32, tid: i64, record: &Record) -> String {
    format!(
        "{time}: [{pid}][{tid}][{}:{}]:{}: {}\n",
        record.file().unwrap_or(""),
        record.line().unwrap_or(0),
        record.level(),
        record.args()
    )
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = format_line(LocalTime::now(), std::process::id(), gettid(), record);
        // A log line that cannot be written has nowhere better to go: drop it.
        match &self.sink {
            Sink::Stderr => {
                let _ = std::io::stderr().write_all(line.as_bytes());
            }
            Sink::File(file) => {
                let mut file = file.lock().unwrap_or_else(|e| e.into_inner());
                let _ = file.write_all(line.as_bytes());
            }
        }
    }

    fn flush(&self) {
        if let Sink::File(file) = &self.sink {
            let _ = file.lock().unwrap_or_else(|e| e.into_inner()).flush();
        }
    }
}

/// The level a variable's value asks for: `Ok(level)`, or `Err(())` for a value that is not
/// a level name (StratoVirt then logs at `info`).
fn parse_level(value: &str) -> Result<LevelFilter, ()> {
    match value.trim().to_ascii_lowercase().as_str() {
        "error" => Ok(LevelFilter::Error),
        "warn" => Ok(LevelFilter::Warn),
        "info" => Ok(LevelFilter::Info),
        "debug" => Ok(LevelFilter::Debug),
        "trace" => Ok(LevelFilter::Trace),
        _ => Err(()),
    }
}

/// The level from the environment: [`LEVEL_VAR`], else [`LEGACY_LEVEL_VAR`], else
/// `default_level`. Also returns the variable and value that were not understood, if any.
fn level_from_env(
    get: impl Fn(&str) -> Option<String>,
    default_level: LevelFilter,
) -> (LevelFilter, Option<(&'static str, String)>) {
    for var in [LEVEL_VAR, LEGACY_LEVEL_VAR] {
        if let Some(value) = get(var) {
            return match parse_level(&value) {
                Ok(level) => (level, None),
                Err(()) => (LevelFilter::Info, Some((var, value))),
            };
        }
    }
    (default_level, None)
}

/// The descriptor of the installed logger's destination (stderr until a logger with a file is
/// installed; the file stays open for the life of the process).
static LOG_FD: AtomicI32 = AtomicI32::new(libc::STDERR_FILENO);

/// The descriptor log lines go to: the `-D` file, else stderr. Async-signal-safe (one atomic
/// load), for handlers that must `write(2)` a last line themselves.
pub fn raw_fd() -> RawFd {
    LOG_FD.load(Ordering::Relaxed)
}

/// Installs the global logger. `path` = `None` logs to stderr. The level comes from the
/// environment (see the module documentation), `default_level` otherwise. Calling it twice
/// keeps the first logger.
pub fn init(path: Option<&Path>, default_level: LevelFilter) -> std::io::Result<()> {
    let (level, unknown) = level_from_env(|var| std::env::var(var).ok(), default_level);
    let sink = match path {
        None => Sink::Stderr,
        Some(path) => Sink::File(Mutex::new(
            OpenOptions::new().create(true).append(true).open(path)?,
        )),
    };
    let fd = match &sink {
        Sink::Stderr => libc::STDERR_FILENO,
        Sink::File(file) => file.lock().unwrap_or_else(|e| e.into_inner()).as_raw_fd(),
    };
    if log::set_boxed_logger(Box::new(Logger { sink, level })).is_ok() {
        // The logger is never dropped, so neither is its file.
        LOG_FD.store(fd, Ordering::Relaxed);
        log::set_max_level(level);
        if let Some((var, value)) = unknown {
            log::warn!(
                "{var}={value:?} is not a log level (error, warn, info, debug, trace): logging at info"
            );
        }
    }
    Ok(())
}

/// Lines of one call site written in full before [`RateLimit`] thins them out.
pub const GUEST_LOG_BURST: u32 = 5;
/// After the burst, the least time between two lines of one call site.
pub const GUEST_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// Decides which of a stream of similar log lines are written: the first `burst` in full,
/// then at most one per `interval`, which carries the number of lines suppressed since the
/// previous one written. Thread-safe; cheap (one uncontended lock, and a clock read only
/// once the burst is spent).
#[derive(Debug)]
pub struct RateLimit {
    burst: u32,
    interval: Duration,
    state: Mutex<RateState>,
}

#[derive(Debug)]
struct RateState {
    /// Lines written so far, counted up to `burst`.
    written: u32,
    /// When the last line after the burst (or the burst's last line) was written.
    last: Option<Instant>,
    /// Lines dropped since the last one written.
    suppressed: u64,
}

impl RateLimit {
    /// A limit of `burst` lines, then one per `interval`.
    pub const fn new(burst: u32, interval: Duration) -> Self {
        RateLimit {
            burst,
            interval,
            state: Mutex::new(RateState {
                written: 0,
                last: None,
                suppressed: 0,
            }),
        }
    }

    /// The limit for guest-triggered lines: [`GUEST_LOG_BURST`], then one per
    /// [`GUEST_LOG_INTERVAL`].
    pub const fn guest() -> Self {
        RateLimit::new(GUEST_LOG_BURST, GUEST_LOG_INTERVAL)
    }

    /// Decides about one line: `Some(n)` to write it now (`n` lines were suppressed since the
    /// previous one written; see [`Suppressed`]), `None` to drop it (it is counted).
    pub fn admit(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.written < self.burst {
            state.written += 1;
            if state.written == self.burst {
                state.last = Some(Instant::now());
            }
            return Some(0);
        }
        self.admit_at(&mut state, Instant::now())
    }

    fn admit_at(&self, state: &mut RateState, now: Instant) -> Option<u64> {
        match state.last {
            Some(last) if now.saturating_duration_since(last) < self.interval => {
                state.suppressed += 1;
                None
            }
            _ => {
                state.last = Some(now);
                Some(std::mem::take(&mut state.suppressed))
            }
        }
    }
}

/// Displays the note a rate-limited line carries: nothing when no line was suppressed,
/// ` (N similar messages suppressed)` otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Suppressed(pub u64);

impl fmt::Display for Suppressed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => Ok(()),
            1 => write!(f, " (1 similar message suppressed)"),
            n => write!(f, " ({n} similar messages suppressed)"),
        }
    }
}

#[doc(hidden)]
pub use log as __log;

/// Logs like `log::log!`, through a [`RateLimit`]: by default one per call site
/// ([`RateLimit::guest`]); `limit: EXPR,` first uses the `&RateLimit` given instead (e.g.
/// one per device). Nothing is counted while the level is disabled.
///
/// ```
/// use log::Level;
/// for offset in 0..1000u64 {
///     util::log_ratelimited!(Level::Warn, "unknown register {offset:#x}");
/// }
/// ```
#[macro_export]
macro_rules! log_ratelimited {
    (limit: $limit:expr, $level:expr, $($arg:tt)+) => {{
        let level: $crate::logger::__log::Level = $level;
        if $crate::logger::__log::log_enabled!(level) {
            let limit: &$crate::logger::RateLimit = $limit;
            if let Some(suppressed) = limit.admit() {
                $crate::logger::__log::log!(
                    level,
                    "{}{}",
                    format_args!($($arg)+),
                    $crate::logger::Suppressed(suppressed)
                );
            }
        }
    }};
    ($level:expr, $($arg:tt)+) => {{
        static LIMIT: $crate::logger::RateLimit = $crate::logger::RateLimit::guest();
        $crate::log_ratelimited!(limit: &LIMIT, $level, $($arg)+)
    }};
}

/// [`log_ratelimited!`](crate::log_ratelimited) at `error` level.
#[macro_export]
macro_rules! error_ratelimited {
    ($($arg:tt)+) => { $crate::log_ratelimited!($crate::logger::__log::Level::Error, $($arg)+) };
}

/// [`log_ratelimited!`](crate::log_ratelimited) at `warn` level.
#[macro_export]
macro_rules! warn_ratelimited {
    ($($arg:tt)+) => { $crate::log_ratelimited!($crate::logger::__log::Level::Warn, $($arg)+) };
}

/// [`log_ratelimited!`](crate::log_ratelimited) at `info` level.
#[macro_export]
macro_rules! info_ratelimited {
    ($($arg:tt)+) => { $crate::log_ratelimited!($crate::logger::__log::Level::Info, $($arg)+) };
}

/// [`log_ratelimited!`](crate::log_ratelimited) at `debug` level.
#[macro_export]
macro_rules! debug_ratelimited {
    ($($arg:tt)+) => { $crate::log_ratelimited!($crate::logger::__log::Level::Debug, $($arg)+) };
}

/// [`log_ratelimited!`](crate::log_ratelimited) at `trace` level.
#[macro_export]
macro_rules! trace_ratelimited {
    ($($arg:tt)+) => { $crate::log_ratelimited!($crate::logger::__log::Level::Trace, $($arg)+) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_have_stratovirt_shape() {
        let time = LocalTime {
            year: 2024,
            month: 5,
            day: 10,
            hour: 12,
            minute: 0,
            second: 7,
            nanos: 123_456_789,
        };
        let args = format_args!("VM paused");
        let record = Record::builder()
            .args(args)
            .level(log::Level::Info)
            .file(Some("micro_vm/src/machine.rs"))
            .line(Some(512))
            .build();
        assert_eq!(
            format_line(time, 4242, 4243, &record),
            "2024-05-10T12:00:07.123456789: [4242][4243][micro_vm/src/machine.rs:512]:INFO: VM paused\n"
        );
        let args = format_args!("x");
        let warn = Record::builder().args(args).level(log::Level::Warn).build();
        assert_eq!(
            format_line(time, 1, 2, &warn),
            "2024-05-10T12:00:07.123456789: [1][2][:0]:WARN: x\n"
        );
    }

    #[test]
    fn local_time_breaks_down_the_epoch() {
        // 86400 * 365 s after the epoch is 1971-01-01 in UTC; any time zone is within a day.
        let t = LocalTime::at(86_400 * 365, 5);
        assert!(
            (t.year == 1971 && t.month == 1 && t.day == 1)
                || (t.year == 1970 && t.month == 12 && t.day == 31),
            "{t}"
        );
        assert_eq!(t.nanos, 5);
        let now = LocalTime::now();
        assert!(now.year >= 2024 && (1..=12).contains(&now.month), "{now}");
        let text = now.to_string();
        assert_eq!(text.len(), "2024-05-10T12:00:00.123456789".len(), "{text}");
    }

    #[test]
    fn level_comes_from_stratovirt_log_level_first() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |var: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == var)
                    .map(|(_, v)| v.to_string())
            }
        };
        let warn = LevelFilter::Warn;
        assert_eq!(level_from_env(env(&[]), warn), (warn, None));
        assert_eq!(
            level_from_env(env(&[(LEVEL_VAR, "info")]), warn),
            (LevelFilter::Info, None)
        );
        assert_eq!(
            level_from_env(
                env(&[(LEVEL_VAR, "DEBUG"), (LEGACY_LEVEL_VAR, "error")]),
                warn
            ),
            (LevelFilter::Debug, None)
        );
        assert_eq!(
            level_from_env(env(&[(LEGACY_LEVEL_VAR, "error")]), warn),
            (LevelFilter::Error, None)
        );
        assert_eq!(
            level_from_env(env(&[(LEVEL_VAR, "loud")]), warn),
            (LevelFilter::Info, Some((LEVEL_VAR, "loud".to_string())))
        );
    }

    #[test]
    fn the_burst_is_written_then_one_line_per_interval_with_the_count() {
        let limit = RateLimit::new(3, Duration::from_secs(5));
        let admitted: Vec<_> = (0..3).map(|_| limit.admit()).collect();
        assert_eq!(admitted, vec![Some(0); 3]);
        // Within the interval after the burst: all dropped and counted.
        assert!((0..1000).all(|_| limit.admit().is_none()));
        let mut state = limit.state.lock().unwrap();
        let start = state.last.unwrap();
        let at = |s: f64| start + Duration::from_secs_f64(s);
        assert_eq!(limit.admit_at(&mut state, at(4.9)), None);
        assert_eq!(limit.admit_at(&mut state, at(5.0)), Some(1001));
        assert_eq!(limit.admit_at(&mut state, at(5.1)), None);
        assert_eq!(limit.admit_at(&mut state, at(9.9)), None);
        assert_eq!(limit.admit_at(&mut state, at(10.0)), Some(2));
        // A quiet spell: the next line goes out at once, with nothing to report.
        assert_eq!(limit.admit_at(&mut state, at(60.0)), Some(0));
    }

    #[test]
    fn no_burst_means_one_line_per_interval_from_the_start() {
        let limit = RateLimit::new(0, Duration::from_secs(3600));
        assert_eq!(limit.admit(), Some(0));
        assert_eq!(limit.admit(), None);
        assert_eq!(limit.admit(), None);
    }

    #[test]
    fn the_note_names_the_suppressed_lines() {
        assert_eq!(Suppressed(0).to_string(), "");
        assert_eq!(Suppressed(1).to_string(), " (1 similar message suppressed)");
        assert_eq!(
            Suppressed(42).to_string(),
            " (42 similar messages suppressed)"
        );
    }
}
