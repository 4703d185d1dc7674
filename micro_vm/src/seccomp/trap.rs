//! The SIGSYS handler: a forbidden call (`SECCOMP_RET_TRAP`) ends the VMM with one log line
//! naming the call and the thread.
//!
//! Everything the handler does is async-signal-safe: it reads the thread's preformatted name
//! from a thread-local filled when the filter was installed, formats into a stack buffer,
//! `write(2)`s the line and calls `_exit(2)`. It takes no lock and allocates nothing, so it
//! cannot deadlock on a lock the trapped call's thread held (a `malloc` arena, the logger).
//!
//! The line has the logger's layout (`util::logger`, StratoVirt's format):
//!
//! ```text
//! 2026-11-30T12:00:00.123456789: [4242][4243][micro_vm/src/seccomp/trap.rs:160]:ERROR: thread 'vcpu0' (vcpu filter) made the forbidden system call openat (257); the VMM ends
//! ```
//!
//! The local time is the wall clock shifted by the host's offset from UTC as it was when a
//! filter was last installed (`localtime_r` takes a lock, so the handler cannot call it): a
//! change of daylight saving time after that shows in the line as the old offset.

use std::cell::Cell;
use std::io;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Once;

use super::{names, ThreadRole};

/// The exit status of a VMM ended by a forbidden system call (128 + SIGSYS, as a shell reports
/// a process killed by that signal).
pub const EXIT_STATUS: i32 = 128 + libc::SIGSYS;

/// `si_code` of a SIGSYS raised by a seccomp filter.
const SYS_SECCOMP: i32 = 1;

/// Room for the thread part of the line: `thread 'NAME' (ROLE filter)`.
const PREFIX_LEN: usize = 96;

/// The host's offset from UTC in seconds, as of the last filter installed.
static UTC_OFFSET: AtomicI64 = AtomicI64::new(0);

thread_local! {
    /// This thread's part of the SIGSYS line, and its length (0: no filter installed here).
    static PREFIX: Cell<([u8; PREFIX_LEN], usize)> = const { Cell::new(([0; PREFIX_LEN], 0)) };
}

/// The `siginfo_t` of a SIGSYS on x86_64 (`_sigsys` member of the union at offset 16).
#[repr(C)]
struct SigsysInfo {
    _signo: i32,
    _errno: i32,
    code: i32,
    _pad: i32,
    _call_addr: *mut libc::c_void,
    syscall: i32,
    _arch: u32,
}

/// Installs the process's SIGSYS handler (once).
pub(super) fn install_handler() -> io::Result<()> {
    static INSTALL: Once = Once::new();
    let mut result = Ok(());
    INSTALL.call_once(|| {
        // SAFETY: sigaction is plain data; zeroed is a valid empty mask and no flags.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_sigsys as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        // SAFETY: `action` is initialised; the handler is async-signal-safe (module docs).
        if unsafe { libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) } != 0 {
            result = Err(io::Error::last_os_error());
        }
    });
    result
}

/// Records the host's current offset from UTC, for the time of the SIGSYS line.
pub(super) fn record_utc_offset() {
    // SAFETY: time with a null pointer only returns the time.
    let now = unsafe { libc::time(std::ptr::null_mut()) };
    // SAFETY: `tm` is plain old data for which all-zero bytes are a valid value.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call; localtime_r writes only into `tm`. The
    // logger has called it before, so the time zone is loaded already (no file is read).
    if !unsafe { libc::localtime_r(&now, &mut tm) }.is_null() {
        UTC_OFFSET.store(tm.tm_gmtoff, Ordering::Relaxed);
    }
}

/// Records the calling thread's part of the SIGSYS line (a long name is cut short, the role
/// is always there).
pub(super) fn name_this_thread(name: &str, role: ThreadRole) {
    let mut line = Line::<PREFIX_LEN>::new();
    line.push(b"thread '");
    let room = PREFIX_LEN - b"thread '' ( filter)".len() - role.as_str().len();
    let mut cut = name.len().min(room);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    line.push(&name.as_bytes()[..cut]);
    line.push(b"' (");
    line.push(role.as_str().as_bytes());
    line.push(b" filter)");
    PREFIX.with(|prefix| prefix.set((line.buf, line.len)));
}

/// A fixed buffer that drops what does not fit.
struct Line<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> Line<N> {
    fn new() -> Self {
        Line {
            buf: [0; N],
            len: 0,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(N - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }

    /// Appends `value` in decimal, zero-padded to at least `width` digits.
    fn push_number(&mut self, mut value: u64, width: usize) {
        let mut digits = [0u8; 20];
        let mut n = 0;
        while value > 0 || n < width.clamp(1, 20) {
            digits[19 - n] = b'0' + (value % 10) as u8;
            value /= 10;
            n += 1;
            if n == 20 {
                break;
            }
        }
        self.push(&digits[20 - n..]);
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Appends the wall-clock time `seconds` (since the epoch, already shifted to local time)
    /// and `nanos` as the logger writes it: `2026-11-30T12:00:00.123456789`.
    fn push_time(&mut self, seconds: i64, nanos: u64) {
        let (year, month, day) = civil_from_days(seconds.div_euclid(86_400));
        let of_day = seconds.rem_euclid(86_400) as u64;
        self.push_number(year.max(0) as u64, 4);
        self.push(b"-");
        self.push_number(month, 2);
        self.push(b"-");
        self.push_number(day, 2);
        self.push(b"T");
        self.push_number(of_day / 3600, 2);
        self.push(b":");
        self.push_number(of_day / 60 % 60, 2);
        self.push(b":");
        self.push_number(of_day % 60, 2);
        self.push(b".");
        self.push_number(nanos, 9);
    }
}

/// The proleptic Gregorian date (year, month 1-12, day 1-31) of `days` since 1970-01-01
/// (H. Hinnant's `civil_from_days`: integer arithmetic only).
fn civil_from_days(days: i64) -> (i64, u64, u64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u64;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u64;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Writes all of `bytes` to `fd`, ignoring errors (there is nowhere else to report them).
fn write_all(fd: i32, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: `bytes` is a live buffer of that length.
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n <= 0 {
            return;
        }
        bytes = &bytes[n as usize..];
    }
}

extern "C" fn on_sigsys(_signal: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for the signal being handled; for SIGSYS its
    // union holds `_sigsys`, laid out as `SigsysInfo`.
    let info = unsafe { &*info.cast::<SigsysInfo>() };
    let mut line = Line::<320>::new();
    // The logger's layout: TIME: [pid][tid][file:line]:LEVEL: message.
    // SAFETY: timespec is plain data; clock_gettime is async-signal-safe and fills it.
    let mut now: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `now` is a valid timespec owned by this frame.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut now) };
    line.push_time(
        now.tv_sec + UTC_OFFSET.load(Ordering::Relaxed),
        now.tv_nsec as u64,
    );
    line.push(b": [");
    // SAFETY: getpid and gettid have no arguments and cannot fail (both allowed to every role).
    let (pid, tid) = unsafe { (libc::getpid(), libc::gettid()) };
    line.push_number(pid as u64, 1);
    line.push(b"][");
    line.push_number(tid as u64, 1);
    line.push(b"][");
    line.push(file!().as_bytes());
    line.push(b":");
    line.push_number(u64::from(line!()), 1);
    line.push(b"]:ERROR: ");
    let (prefix, len) = PREFIX.with(Cell::get);
    if len == 0 {
        line.push(b"a thread without a filter of its own");
    } else {
        line.push(&prefix[..len]);
    }
    if info.code == SYS_SECCOMP {
        line.push(b" made the forbidden system call ");
        match names::name(info.syscall) {
            Some(name) => line.push(name.as_bytes()),
            None => line.push(b"?"),
        }
        line.push(b" (");
        line.push_number(u64::from(info.syscall as u32), 1);
        line.push(b"); the VMM ends\n");
    } else {
        line.push(b" received a SIGSYS that no filter raised; the VMM ends\n");
    }
    let log = util::logger::raw_fd();
    write_all(log, line.as_bytes());
    if log != libc::STDERR_FILENO {
        write_all(libc::STDERR_FILENO, line.as_bytes());
    }
    // SAFETY: _exit is async-signal-safe and ends the process at once.
    unsafe { libc::_exit(EXIT_STATUS) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_padded_and_lines_truncated() {
        let mut line = Line::<16>::new();
        line.push_number(42, 6);
        line.push(b".");
        line.push_number(0, 1);
        line.push(b".");
        line.push_number(u64::MAX, 1);
        assert_eq!(line.as_bytes(), b"000042.0.1844674");
    }

    #[test]
    fn the_thread_part_names_the_thread_and_its_role() {
        std::thread::spawn(|| {
            name_this_thread("vcpu3", ThreadRole::Vcpu);
            let (prefix, len) = PREFIX.with(Cell::get);
            assert_eq!(&prefix[..len], b"thread 'vcpu3' (vcpu filter)");
            // A name too long for the buffer is cut (at a character), the role stays.
            let long = format!("{}é", "x".repeat(PREFIX_LEN - 32));
            name_this_thread(&long, ThreadRole::AioWorker);
            let (prefix, len) = PREFIX.with(Cell::get);
            let text = std::str::from_utf8(&prefix[..len]).expect("whole characters");
            assert!(text.ends_with("' (aio-worker filter)"), "{text}");
            assert!(text.starts_with("thread 'xxxx"), "{text}");
        })
        .join()
        .unwrap();
        assert_eq!(PREFIX.with(Cell::get).1, 0, "other threads are untouched");
    }

    #[test]
    fn times_are_written_as_the_logger_writes_them() {
        let mut line = Line::<64>::new();
        line.push_time(0, 5);
        assert_eq!(line.as_bytes(), b"1970-01-01T00:00:00.000000005");
        // Every day over four centuries (leap years, 2000, 2100), against the C library.
        for day in (-1000..146_097i64).step_by(7) {
            let seconds = day * 86_400 + 45_296;
            // SAFETY: `tm` is plain old data, valid when zeroed.
            let mut tm: libc::tm = unsafe { std::mem::zeroed() };
            // SAFETY: both pointers are valid; gmtime_r writes only into `tm`.
            assert!(!unsafe { libc::gmtime_r(&seconds, &mut tm) }.is_null());
            let expected = format!(
                "{:04}-{:02}-{:02}T12:34:56.123456789",
                tm.tm_year + 1900,
                tm.tm_mon + 1,
                tm.tm_mday
            );
            let mut line = Line::<64>::new();
            line.push_time(seconds, 123_456_789);
            assert_eq!(std::str::from_utf8(line.as_bytes()).unwrap(), expected);
        }
    }
}
