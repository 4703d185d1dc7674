//! A `log` backend for tests that keeps every line, so a test can assert what was (or was
//! not) logged at warn or above.

use std::sync::{Mutex, OnceLock};

use log::{Level, LevelFilter, Log, Metadata, Record};

/// One captured record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapturedLine {
    /// Its level.
    pub level: Level,
    /// `target: message`.
    pub text: String,
}

/// The process's log, captured. Install it once with [`LogCapture::install`].
#[derive(Debug, Default)]
pub struct LogCapture {
    lines: Mutex<Vec<CapturedLine>>,
}

static CAPTURE: OnceLock<LogCapture> = OnceLock::new();

impl LogCapture {
    /// Makes the capture this process's logger (at every level) and returns it; later calls
    /// return the same capture. Fails only if another logger was installed first.
    pub fn install() -> Result<&'static LogCapture, log::SetLoggerError> {
        let mut first = false;
        let capture = CAPTURE.get_or_init(|| {
            first = true;
            LogCapture::default()
        });
        if first {
            log::set_logger(capture)?;
            log::set_max_level(LevelFilter::Trace);
        }
        Ok(capture)
    }

    /// Every line captured so far.
    pub fn lines(&self) -> Vec<CapturedLine> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The lines at warn or error level.
    pub fn warnings(&self) -> Vec<CapturedLine> {
        self.lines()
            .into_iter()
            .filter(|l| l.level <= Level::Warn)
            .collect()
    }
}

impl Log for LogCapture {
    fn enabled(&self, _: &Metadata) -> bool {
        true
    }

    fn log(&self, record: &Record) {
        let line = CapturedLine {
            level: record.level(),
            text: format!("{}: {}", record.target(), record.args()),
        };
        self.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(line);
    }

    fn flush(&self) {}
}
