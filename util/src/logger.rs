//! The `log` backend: one line per record, to stderr or to the file given by `-D FILE`; and
//! [`RateLimit`], which bounds the lines a guest or a client can make the VMM write.
//!
//! Invariant: every log line that a guest (or a QMP client) can trigger again and again goes
//! through a [`RateLimit`], usually with [`log_ratelimited!`](crate::log_ratelimited) or one
//! of its level shorthands ([`warn_ratelimited!`](crate::warn_ratelimited), ...): the first
//! [`GUEST_LOG_BURST`] lines of a call site are written in full, then at most one per
//! [`GUEST_LOG_INTERVAL`], saying how many similar lines were suppressed since the previous
//! one. A flood thus costs a few kilobytes of log, whatever its length.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use log::{LevelFilter, Log, Metadata, Record};

/// Where log lines go.
enum Sink {
    Stderr,
    File(Mutex<File>),
}

struct Logger {
    sink: Sink,
    level: LevelFilter,
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let line = format!(
            "{}.{:06} {:5} {}: {}\n",
            now.as_secs(),
            now.subsec_micros(),
            record.level(),
            record.target(),
            record.args()
        );
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

/// Installs the global logger. `path` = `None` logs to stderr. The level comes from the
/// `STRATOVIRT_LOG` environment variable (`error`, `warn`, `info`, `debug`, `trace`),
/// `default_level` otherwise. Calling it twice keeps the first logger.
pub fn init(path: Option<&Path>, default_level: LevelFilter) -> std::io::Result<()> {
    let level = std::env::var("STRATOVIRT_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_level);
    let sink = match path {
        None => Sink::Stderr,
        Some(path) => Sink::File(Mutex::new(
            OpenOptions::new().create(true).append(true).open(path)?,
        )),
    };
    if log::set_boxed_logger(Box::new(Logger { sink, level })).is_ok() {
        log::set_max_level(level);
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
