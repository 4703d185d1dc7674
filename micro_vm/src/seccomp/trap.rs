//! The SIGSYS handler: a forbidden call (`SECCOMP_RET_TRAP`) ends the VMM with one log line
//! naming the call and the thread.
//!
//! Everything the handler does is async-signal-safe: it reads the thread's preformatted name
//! from a thread-local filled when the filter was installed, formats into a stack buffer,
//! `write(2)`s the line and calls `_exit(2)`. It takes no lock and allocates nothing, so it
//! cannot deadlock on a lock the trapped call's thread held (a `malloc` arena, the logger).

use std::cell::Cell;
use std::io;
use std::sync::Once;

use super::{names, ThreadRole};

/// The exit status of a VMM ended by a forbidden system call (128 + SIGSYS, as a shell reports
/// a process killed by that signal).
pub const EXIT_STATUS: i32 = 128 + libc::SIGSYS;

/// `si_code` of a SIGSYS raised by a seccomp filter.
const SYS_SECCOMP: i32 = 1;

/// Room for the thread part of the line: `thread 'NAME' (ROLE filter)`.
const PREFIX_LEN: usize = 64;

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

/// Records the calling thread's part of the SIGSYS line.
pub(super) fn name_this_thread(name: &str, role: ThreadRole) {
    let mut line = Line::<PREFIX_LEN>::new();
    line.push(b"thread '");
    line.push(name.as_bytes());
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
    let mut line = Line::<256>::new();
    // The logger's layout: seconds.micros LEVEL target: message.
    // SAFETY: timespec is plain data; clock_gettime is async-signal-safe and fills it.
    let mut now: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `now` is a valid timespec owned by this frame.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut now) };
    line.push_number(now.tv_sec as u64, 1);
    line.push(b".");
    line.push_number(now.tv_nsec as u64 / 1000, 6);
    line.push(b" ERROR micro_vm::seccomp: ");
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
        })
        .join()
        .unwrap();
        assert_eq!(PREFIX.with(Cell::get).1, 0, "other threads are untouched");
    }
}
