//! The console's host side: bytes typed on stdin go to the UART's receive buffer.
//!
//! Invariants:
//! - A terminal on stdin is put in raw mode (the guest does its own line editing and
//!   echo; Ctrl-C goes to the guest) and restored when the [`StdinConsole`] is dropped.
//! - A stdin that epoll cannot watch (a regular file, `/dev/null`) is not an error: the
//!   guest simply gets no input. End of input removes the handler.

use std::os::unix::io::RawFd;
use std::sync::{Arc, Mutex};

use device_model::legacy::Serial;
use util::event_loop::{EventLoop, EventLoopError, HandlerAction};
use vmm_sys_util::epoll::EventSet;

use crate::{MachineError, Result};

const STDIN: RawFd = libc::STDIN_FILENO;

/// Stdin attached to the serial console; restores the terminal when dropped.
pub struct StdinConsole {
    saved_termios: Option<libc::termios>,
}

impl StdinConsole {
    /// Feeds stdin to `serial` from `event_loop`. Returns `None` when stdin cannot be
    /// watched (then it stays untouched).
    pub fn attach(event_loop: &EventLoop, serial: Arc<Mutex<Serial>>) -> Result<Option<Self>> {
        let handler = Box::new(move |_: EventSet| {
            let mut buf = [0u8; 256];
            // SAFETY: reads at most `buf.len()` bytes into a live local buffer.
            let n = unsafe { libc::read(STDIN, buf.as_mut_ptr().cast(), buf.len()) };
            match n {
                0 => {
                    log::info!("stdin closed: the console gets no more input");
                    HandlerAction::Remove
                }
                n if n < 0 => {
                    let err = std::io::Error::last_os_error();
                    if err.kind() == std::io::ErrorKind::Interrupted
                        || err.kind() == std::io::ErrorKind::WouldBlock
                    {
                        HandlerAction::Keep
                    } else {
                        log::warn!("stdin: {err}; the console gets no more input");
                        HandlerAction::Remove
                    }
                }
                n => {
                    let mut serial = serial.lock().unwrap_or_else(|e| e.into_inner());
                    serial.receive(&buf[..n as usize]);
                    HandlerAction::Keep
                }
            }
        });
        match event_loop.add("stdin", STDIN, EventSet::IN, handler) {
            Ok(()) => {}
            Err(EventLoopError::Control { source, .. })
                if source.raw_os_error() == Some(libc::EPERM) =>
            {
                log::info!("stdin cannot be polled (a file or /dev/null): no console input");
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        }
        Ok(Some(StdinConsole {
            saved_termios: set_raw_mode()?,
        }))
    }
}

/// Puts a terminal stdin in raw mode; returns its previous settings (`None`: not a tty).
fn set_raw_mode() -> Result<Option<libc::termios>> {
    // SAFETY: isatty only inspects the descriptor.
    if unsafe { libc::isatty(STDIN) } != 1 {
        return Ok(None);
    }
    // SAFETY: termios is plain data; tcgetattr fills it and its result is checked.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `saved` is a valid termios to fill.
    if unsafe { libc::tcgetattr(STDIN, &mut saved) } != 0 {
        return Err(MachineError::Terminal(std::io::Error::last_os_error()));
    }
    let mut raw = saved;
    // SAFETY: cfmakeraw only edits the struct it is given.
    unsafe { libc::cfmakeraw(&mut raw) };
    // Keep output post-processing so host-side log lines still start at column 0.
    raw.c_oflag |= libc::OPOST;
    // SAFETY: `raw` is a valid termios derived from the terminal's own settings.
    if unsafe { libc::tcsetattr(STDIN, libc::TCSANOW, &raw) } != 0 {
        return Err(MachineError::Terminal(std::io::Error::last_os_error()));
    }
    Ok(Some(saved))
}

impl Drop for StdinConsole {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved_termios {
            // SAFETY: restores settings read from this terminal by `set_raw_mode`.
            if unsafe { libc::tcsetattr(STDIN, libc::TCSANOW, saved) } != 0 {
                log::warn!(
                    "cannot restore the terminal: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}
