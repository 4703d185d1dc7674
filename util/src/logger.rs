//! The `log` backend: one line per record, to stderr or to the file given by `-D FILE`.
//!
//! [`raw_fd`] names the same destination as a bare descriptor, for code that must write a line
//! without taking a lock or allocating (a signal handler).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::io::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

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

/// The descriptor of the installed logger's destination (stderr until a logger with a file is
/// installed; the file stays open for the life of the process).
static LOG_FD: AtomicI32 = AtomicI32::new(libc::STDERR_FILENO);

/// The descriptor log lines go to: the `-D` file, else stderr. Async-signal-safe (one atomic
/// load), for handlers that must `write(2)` a last line themselves.
pub fn raw_fd() -> RawFd {
    LOG_FD.load(Ordering::Relaxed)
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
    let fd = match &sink {
        Sink::Stderr => libc::STDERR_FILENO,
        Sink::File(file) => file.lock().unwrap_or_else(|e| e.into_inner()).as_raw_fd(),
    };
    if log::set_boxed_logger(Box::new(Logger { sink, level })).is_ok() {
        // The logger is never dropped, so neither is its file.
        LOG_FD.store(fd, Ordering::Relaxed);
        log::set_max_level(level);
    }
    Ok(())
}
