//! The Linux native AIO kernel ABI (`<linux/aio_abi.h>`) and its four system calls.
//!
//! Invariants:
//! - [`iocb`] and [`io_event`] are `#[repr(C)]` copies of the kernel structs for a little-endian
//!   64-bit kernel; `tests/aio_abi_layout.rs` compiles a C program against the installed header
//!   and checks every size, field offset and constant here against it.
//! - An `aio_context_t` is the address at which `io_setup` mapped the context's completion
//!   ring (`struct aio_ring` of the kernel's `fs/aio.c`, not in the header but a stable layout
//!   that user-space reapers such as libaio's read): eight `u32` words `id, nr, head, tail,
//!   magic, compat_features, incompat_features, header_length`, then the events. The mapping
//!   lives until `io_destroy`.
//! - The wrappers below only forward to the kernel; they return the raw count or the errno and
//!   keep no state. Ownership of the memory an `iocb` names is the caller's business.

#![allow(non_camel_case_types)]

use std::io;

/// The kernel's handle of an AIO context (`aio_context_t`, an unsigned long).
pub type aio_context_t = libc::c_ulong;

/// `IOCB_CMD_PREAD`: read into one buffer.
pub const IOCB_CMD_PREAD: u16 = 0;
/// `IOCB_CMD_PWRITE`: write one buffer.
pub const IOCB_CMD_PWRITE: u16 = 1;
/// `IOCB_CMD_FSYNC`: fsync the file.
pub const IOCB_CMD_FSYNC: u16 = 2;
/// `IOCB_CMD_FDSYNC`: fdatasync the file.
pub const IOCB_CMD_FDSYNC: u16 = 3;
/// `IOCB_CMD_NOOP`: does nothing.
pub const IOCB_CMD_NOOP: u16 = 6;
/// `IOCB_CMD_PREADV`: read into an iovec array.
pub const IOCB_CMD_PREADV: u16 = 7;
/// `IOCB_CMD_PWRITEV`: write an iovec array.
pub const IOCB_CMD_PWRITEV: u16 = 8;

/// `IOCB_FLAG_RESFD`: signal the eventfd in `aio_resfd` when this iocb completes.
pub const IOCB_FLAG_RESFD: u32 = 1 << 0;
/// `IOCB_FLAG_IOPRIO`: `aio_reqprio` carries an I/O priority.
pub const IOCB_FLAG_IOPRIO: u32 = 1 << 1;

/// The `magic` word of the completion ring `io_setup` maps into the caller's memory.
pub const AIO_RING_MAGIC: u32 = 0xa10a_10a1;
/// Byte offset of the ring's `head` (the next event to collect) from the context's address.
pub const AIO_RING_HEAD: usize = 8;
/// Byte offset of the ring's `tail` (one past the last event the kernel posted).
pub const AIO_RING_TAIL: usize = 12;
/// Byte offset of the ring's `magic` word.
pub const AIO_RING_MAGIC_OFFSET: usize = 16;

/// One request handed to `io_submit` (`struct iocb`, 64 bytes, little-endian field order).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct iocb {
    /// Returned unchanged in [`io_event::data`]: our slab key.
    pub aio_data: u64,
    /// Set by the kernel at submission.
    pub aio_key: u32,
    /// `RWF_*` flags of a read or write.
    pub aio_rw_flags: i32,
    /// One of the `IOCB_CMD_*` values.
    pub aio_lio_opcode: u16,
    /// Request priority (with [`IOCB_FLAG_IOPRIO`]).
    pub aio_reqprio: i16,
    /// The file descriptor.
    pub aio_fildes: u32,
    /// Buffer address, or iovec array address for the vectored commands.
    pub aio_buf: u64,
    /// Byte count, or iovec count for the vectored commands.
    pub aio_nbytes: u64,
    /// File offset.
    pub aio_offset: i64,
    /// Reserved, must be zero.
    pub aio_reserved2: u64,
    /// `IOCB_FLAG_*`.
    pub aio_flags: u32,
    /// Eventfd signalled on completion with [`IOCB_FLAG_RESFD`].
    pub aio_resfd: u32,
}

/// One completion returned by `io_getevents` (`struct io_event`, 32 bytes).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct io_event {
    /// The `aio_data` of the completed iocb.
    pub data: u64,
    /// The user address of the completed iocb.
    pub obj: u64,
    /// Bytes transferred, or a negative errno.
    pub res: i64,
    /// Secondary result (unused by the commands we issue).
    pub res2: i64,
}

fn check(ret: libc::c_long) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// `io_setup(nr_events, &ctx)`: creates a context able to hold `nr_events` requests.
pub fn io_setup(nr_events: u32) -> io::Result<aio_context_t> {
    let mut ctx: aio_context_t = 0;
    // SAFETY: the kernel writes one aio_context_t to `ctx`, which lives across the call and
    // is zero as the ABI requires.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_io_setup,
            nr_events,
            &mut ctx as *mut aio_context_t,
        )
    };
    check(ret).map(|_| ctx)
}

/// `io_destroy(ctx)`: cancels what it can, waits for the rest, and frees the context.
pub fn io_destroy(ctx: aio_context_t) -> io::Result<()> {
    // SAFETY: passes a handle by value; an invalid one is reported as EINVAL.
    let ret = unsafe { libc::syscall(libc::SYS_io_destroy, ctx) };
    check(ret).map(|_| ())
}

/// `io_submit(ctx, nr, iocbpp)`: returns how many of the leading iocbs the kernel took.
///
/// # Safety
/// Each of the `iocbs.len()` entries must point to a valid [`iocb`] for the duration of the
/// call, and the buffers or iovec arrays those iocbs name must stay valid (writable for reads)
/// until their completions are collected with [`io_getevents`] or the context is destroyed.
pub unsafe fn io_submit(ctx: aio_context_t, iocbs: &[*mut iocb]) -> io::Result<usize> {
    // SAFETY: the slice is valid for `len` pointers; the caller vouches for their targets.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_io_submit,
            ctx,
            iocbs.len() as libc::c_long,
            iocbs.as_ptr(),
        )
    };
    check(ret)
}

/// `io_getevents(ctx, min_nr, events.len(), events, timeout)`: collects completions into the
/// front of `events` and returns their count. `timeout` of `None` blocks until `min_nr` arrive.
pub fn io_getevents(
    ctx: aio_context_t,
    min_nr: usize,
    events: &mut [io_event],
    timeout: Option<&libc::timespec>,
) -> io::Result<usize> {
    let timeout_ptr = timeout.map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `events` is writable for `len` entries, `timeout` is null or points to a live
    // timespec; the kernel writes nothing else.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_io_getevents,
            ctx,
            min_nr as libc::c_long,
            events.len() as libc::c_long,
            events.as_mut_ptr(),
            timeout_ptr,
        )
    };
    check(ret)
}
