//! The three io_uring system calls, each through its own syscall number.
//!
//! Invariants: a negative return becomes an `io::Error` carrying the errno, `EINTR`
//! included; nothing here retries, so the caller decides (the ring in `ring.rs` retries
//! `EINTR`, because an interrupted `io_uring_enter` consumed no SQE).

use std::io;
use std::os::unix::io::RawFd;

use super::sys::io_uring_params;

/// Turns a raw syscall return into a non-negative value or the thread's errno.
fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `io_uring_setup(2)`: creates a ring of `entries` SQEs described by `params`
/// (flags in, geometry and features out) and returns its file descriptor.
pub fn io_uring_setup(entries: u32, params: &mut io_uring_params) -> io::Result<RawFd> {
    // SAFETY: `params` is a live, exclusively borrowed `io_uring_params`, the exact struct
    // the kernel reads and writes back; no other memory is touched.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_io_uring_setup,
            libc::c_long::from(entries),
            params as *mut io_uring_params,
        )
    };
    // The kernel returns an fd, which fits in a RawFd.
    check(ret).map(|fd| fd as RawFd)
}

/// `io_uring_enter(2)` without a signal mask: submits `to_submit` SQEs and, with
/// `IORING_ENTER_GETEVENTS` in `flags`, waits until `min_complete` completions are ready.
/// Returns the number of SQEs consumed.
pub fn io_uring_enter(fd: RawFd, to_submit: u32, min_complete: u32, flags: u32) -> io::Result<u32> {
    // SAFETY: the sigset pointer is NULL with size 0, so the kernel dereferences no user
    // memory beyond the ring it owns; a bad `fd` is reported as EBADF/EOPNOTSUPP.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_io_uring_enter,
            fd,
            libc::c_long::from(to_submit),
            libc::c_long::from(min_complete),
            libc::c_long::from(flags),
            std::ptr::null::<libc::sigset_t>(),
            0 as libc::size_t,
        )
    };
    // The count is at most `to_submit`, a u32.
    check(ret).map(|n| n as u32)
}

/// `io_uring_register(2)`: applies register `opcode` (`IORING_REGISTER_*`) with `arg`
/// pointing at `nr_args` elements of the opcode's argument type. Returns the kernel's
/// non-negative result.
///
/// # Safety
/// `arg` must be null or point to memory valid for what `opcode` reads and writes for
/// `nr_args` elements; for buffer registration the buffers must stay valid while registered.
pub unsafe fn io_uring_register(
    fd: RawFd,
    opcode: u32,
    arg: *const libc::c_void,
    nr_args: u32,
) -> io::Result<i32> {
    // SAFETY: the caller guarantees `arg` is valid for `opcode` and `nr_args`.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_io_uring_register,
            fd,
            libc::c_long::from(opcode),
            arg,
            libc::c_long::from(nr_args),
        )
    };
    // Results of register opcodes are small non-negative ints.
    check(ret).map(|n| n as i32)
}
